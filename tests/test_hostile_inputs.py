"""Inputs whose cost a client chooses, each bounded by a setting and refused with a
typed answer while the connection stays open: Supabase filters, `in` lists and bindings
per join (twelve joins of ~1 MiB, each binding `version=in.(155k values)`, once kept
the gateway busy for seconds), presence keys, and connections that never sign in.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg
import jwt
import pytest
from pydantic import SecretStr

from gateway.app.server import Gateway
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    AUDIENCE,
    SECRET,
    gateway_port,
    gateway_url,
    make_project,
    make_sitemap,
    open_client,
    token,
)
from tests.phoenix_fixtures import change, expect_subscribed


def sitemaps_in(values: list[str], event: str = "*") -> dict[str, Any]:
    return {
        "event": event,
        "schema": "public",
        "table": "sitemaps",
        "filter": f"id=in.({','.join(values)})",
    }


async def refused_binding(client: Any, name: str, binding: dict[str, Any]) -> str:
    """Join with `binding`; the `system` error's message (the join itself is ok)."""
    assert (await client.join(name, {"postgres_changes": [binding]}))["status"] == "ok"
    system = await client.expect("system")
    assert system["payload"]["extension"] == "postgres_changes"
    assert system["payload"]["status"] == "error", system
    message: str = system["payload"]["message"]
    return message


async def test_an_in_list_over_the_limit_is_refused_and_one_at_it_is_served(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await phx_client(token(owner))
    many = [str(uuid4()) for _ in range(101)]  # 101 ids: within the filter length limit

    message = await refused_binding(client, "too-many", sitemaps_in(many))
    assert "101 values is over the limit of 100" in message
    assert "SITEBUILDER_MAX_FILTER_IN_VALUES" in message

    sitemap = await make_sitemap(conn, project, "before")
    at_limit = sitemaps_in([*many[:99], str(sitemap)], "UPDATE")
    await client.join("at-limit", {"postgres_changes": [at_limit]})
    await expect_subscribed(client, "at-limit")
    await conn.execute("UPDATE sitemaps SET title = 'matched' WHERE id = $1", sitemap)
    assert (await change(client))["data"]["record"]["title"] == "matched"
    await client.quiet()


@pytest.mark.parametrize("gateway_overrides", [{"max_filter_chars": 64}])
async def test_a_filter_over_the_length_limit_is_refused(
    phx_client: Any, make_user: UserFactory
) -> None:
    client = await phx_client(token(await make_user()))
    binding = sitemaps_in([str(uuid4()), str(uuid4())])
    assert len(binding["filter"]) > 64

    message = await refused_binding(client, "long", binding)

    assert "over the limit of 64 (SITEBUILDER_MAX_FILTER_CHARS)" in message
    await client.heartbeat()


@pytest.mark.parametrize("gateway_overrides", [{"max_bindings_per_join": 2}])
async def test_a_join_with_more_bindings_than_the_limit_is_refused(
    phx_client: Any, make_user: UserFactory
) -> None:
    client = await phx_client(token(await make_user()))
    binding = {"event": "*", "schema": "public", "table": "sitemaps"}

    reply = await client.join("three", {"postgres_changes": [binding] * 3})
    assert reply["status"] == "error", reply
    assert "at most 2 (SITEBUILDER_MAX_BINDINGS_PER_JOIN)" in reply["response"]["reason"]
    assert (await client.join("two", {"postgres_changes": [binding] * 2}))["status"] == "ok"
    await expect_subscribed(client, "two")


@pytest.mark.parametrize("gateway_overrides", [{"max_filter_conditions": 2}])
async def test_a_filter_of_more_conditions_than_the_limit_is_refused(
    phx_client: Any, make_user: UserFactory
) -> None:
    client = await phx_client(token(await make_user()))
    binding = {"event": "*", "schema": "public", "table": "sitemaps"}
    three = {**binding, "filter": 'version=gt.0,version=lt.9,title=in.(a,"b,c")'}

    message = await refused_binding(client, "three", three)

    assert "more than 2 conditions (SITEBUILDER_MAX_FILTER_CONDITIONS)" in message
    two = {**binding, "filter": 'version=gt.0,title=in.(a,"b,c",d)'}
    assert (await client.join("two", {"postgres_changes": [two]}))["status"] == "ok"
    await expect_subscribed(client, "two")


@pytest.mark.parametrize(
    "gateway_overrides", [{"max_bindings_per_connection": 5, "max_bindings_per_join": 4}]
)
async def test_bindings_are_bounded_across_a_connections_channels(
    phx_client: Any, make_user: UserFactory
) -> None:
    """Each binding is checked on every change of its table: their number on one
    connection is bounded whatever the channels; leaving one frees its bindings."""
    client = await phx_client(token(await make_user()))
    binding = {"event": "*", "schema": "public", "table": "sitemaps"}
    assert (await client.join("a", {"postgres_changes": [binding] * 4}))["status"] == "ok"
    await expect_subscribed(client, "a")

    reply = await client.join("b", {"postgres_changes": [binding] * 2})

    assert reply["status"] == "error", reply
    reason = reply["response"]["reason"]
    assert "beside the 4 of this connection's other channels; at most 5" in reason
    assert "SITEBUILDER_MAX_BINDINGS_PER_CONNECTION" in reason
    assert (await client.join("c", {"postgres_changes": [binding]}))["status"] == "ok"
    await expect_subscribed(client, "c")
    left = await client.push("realtime:a", "phx_leave", {})
    assert (await client.reply(left))["status"] == "ok"
    await client.expect("phx_close", "realtime:a")
    assert (await client.join("b", {"postgres_changes": [binding] * 2}))["status"] == "ok"
    await expect_subscribed(client, "b")


@pytest.mark.parametrize("gateway_overrides", [{"joins_per_second": 0.01, "join_burst": 6}])
async def test_a_join_counts_against_the_join_rate_once_per_binding(
    phx_client: Any, make_user: UserFactory
) -> None:
    """A join's cost is its bindings' (each a filter to parse, a table to watch): a
    burst of 6 takes one join of 4 bindings and one of 2, then refuses even one."""
    client = await phx_client(token(await make_user()))
    binding = {"event": "*", "schema": "public", "table": "sitemaps"}
    assert (await client.join("four", {"postgres_changes": [binding] * 4}))["status"] == "ok"
    await expect_subscribed(client, "four")
    assert (await client.join("two", {"postgres_changes": [binding] * 2}))["status"] == "ok"
    await expect_subscribed(client, "two")

    reply = await client.join("one", {"postgres_changes": [binding]})

    assert reply["status"] == "error", reply
    assert "SITEBUILDER_JOINS_PER_SECOND" in reply["response"]["reason"]
    await client.heartbeat()


async def test_the_megabyte_in_lists_that_stalled_the_gateway_are_refused_at_once(
    gateway: Gateway, phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """The attack as it was made, with the anon key's reach: ~1 MiB joins each binding
    a 155k-value `in` list. Every one is refused; a bystander's ping is answered."""
    user = await make_user()
    attacker = await phx_client(token(user))
    values = [str(n) for n in range(1000, 156_000)]
    binding = {"event": "*", "schema": "public", "table": "wireframes"}
    binding["filter"] = f"version=in.({','.join(values)})"
    for n in range(3):
        message = await refused_binding(attacker, f"attack-{n}", binding)
        assert "SITEBUILDER_MAX_FILTER_CHARS" in message
    bystander = await open_client(f"ws://127.0.0.1:{gateway_port(gateway)}/")
    try:
        await bystander.auth(await make_user())
        await bystander.ping()
    finally:
        await bystander.close()
    await attacker.heartbeat()


async def test_a_presence_key_over_the_limit_is_refused_and_the_socket_stays(
    phx_client: Any, make_user: UserFactory
) -> None:
    """A 7,900-character key once ended in an unhandled error and close 1011 (its
    presence change did not fit the bus)."""
    client = await phx_client(token(await make_user()))

    reply = await client.join("lobby", {"presence": {"key": "k" * 7900, "enabled": True}})

    assert reply["status"] == "error", reply
    assert "(SITEBUILDER_MAX_PRESENCE_KEY_CHARS)" in reply["response"]["reason"]
    assert (await client.join("lobby", {"presence": {"key": "k" * 256, "enabled": True}}))[
        "status"
    ] == "ok"
    assert (await client.expect("presence_state"))["payload"] == {}
    await client.heartbeat()


@pytest.mark.parametrize(
    ("gateway_overrides", "setting"),
    [
        ({"max_unauthenticated_per_address": 2}, "SITEBUILDER_MAX_UNAUTHENTICATED_PER_ADDRESS"),
        ({"max_unauthenticated_connections": 2}, "SITEBUILDER_MAX_UNAUTHENTICATED_CONNECTIONS"),
    ],
    ids=["per-address", "total"],
)
async def test_connections_not_signed_in_are_capped_and_signing_in_frees_a_place(
    gateway: Gateway, make_user: UserFactory, setting: str
) -> None:
    url = f"ws://127.0.0.1:{gateway_port(gateway)}/"
    waiting = [await open_client(url), await open_client(url)]
    try:
        third = await open_client(url)
        code, reason = await third.expect_closed()
        assert code == 4009
        assert setting in reason
        await waiting[0].auth(await make_user())
        waiting.append(await open_client(url))
        await waiting[-1].auth(await make_user())
        await waiting[-1].ping()
    finally:
        for client in waiting:
            await client.close()


async def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """One HTTP GET with `headers`: (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: gateway", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "gateway_overrides",
    [{"trust_proxy_headers": True, "metrics_token": SecretStr("operator-token-0123456789")}],
)
async def test_metrics_and_readiness_details_are_for_operators(gateway: Gateway) -> None:
    """A client elsewhere (here: as a trusted proxy says) gets 403 for /metrics and a
    bare /readyz; loopback and the token's bearer get both."""
    port = gateway_port(gateway)
    remote = {"X-Forwarded-For": "203.0.113.7"}
    bearer = {**remote, "Authorization": "Bearer operator-token-0123456789"}

    assert (await get(port, "/metrics", remote))[0] == 403
    assert await get(port, "/readyz", remote) == (200, "ready\n")
    assert (await get(port, "/metrics", {**remote, "Authorization": "Bearer wrong"}))[0] == 403
    for headers in ({}, bearer):
        status, body = await get(port, "/metrics", headers)
        assert (status, "sitebuilder_" in body) == (200, True)
        # What connections pin, measured when scraped (no websocket is open here).
        for gauge in (
            "sitebuilder_held_changes 0.0",
            "sitebuilder_outbound_buffered_bytes 0.0",
            "sitebuilder_connection_outbound_buffered_bytes_max 0.0",
        ):
            assert gauge in body.splitlines(), gauge
        status, body = await get(port, "/readyz", headers)
        assert status == 200
        assert "feed=" in body


@pytest.mark.parametrize("gateway_overrides", [{"joins_per_second": 0.01, "join_burst": 2}])
async def test_subscribes_over_the_rate_are_refused_on_both_protocols(
    gateway: Gateway, phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    user = await make_user()
    projects = [await make_project(conn, user) for _ in range(3)]
    supabase = await phx_client(token(user))
    assert [(await supabase.join(f"room-{n}"))["status"] for n in range(3)] == [
        "ok",
        "ok",
        "error",
    ]
    native = await open_client(f"ws://127.0.0.1:{gateway_port(gateway)}/")
    try:
        await native.auth(user)
        for project in projects[:2]:
            await native.subscribe(project, snapshot=False)
        refused = await native.request({"type": "subscribe", "project_id": str(projects[2])})
        assert (refused["type"], refused["code"]) == ("error", "rate_limited")
        assert "SITEBUILDER_JOINS_PER_SECOND" in refused["message"]
        await native.ping()
    finally:
        await native.close()
    await supabase.heartbeat()


def nested(depth: int) -> Any:
    """A value `depth` arrays deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_json_nested_past_the_limit_is_refused_on_both_protocols(
    gateway: Gateway, phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """JSON nested 200 to 255 levels deep was read, then failed to be written back or
    stored: a join's echoed binding, a broadcast, a presence diff (every diff of that
    interval lost) and an RPC's row each ended in an error and close 1011."""
    user = await make_user()
    project = await make_project(conn, user)
    native = await open_client(gateway_url(gateway))
    try:
        await native.auth(user)
        await native.send(
            {
                "type": "rpc",
                "ref": "deep",
                "method": "project.create",
                "params": {"name": "x", "data": {"a": nested(100)}},
            }
        )
        refused = await native.expect_error("bad_json")
        assert "SITEBUILDER_MAX_JSON_DEPTH" in refused["message"]
        await native.subscribe(project, snapshot=False)
        await native.send(
            {
                "type": "presence.update",
                "ref": "p",
                "project_id": str(project),
                "meta": {"a": nested(29)},
            }
        )
        assert (await native.recv_type("ok"))[
            "ref"
        ] == "p"  # 31 levels with the frame: within the limit
        await native.ping()
    finally:
        await native.close()

    supabase = await phx_client(token(user))
    binding = {"event": nested(100), "schema": "public", "table": "sitemaps"}
    reply = await supabase.join("deep", {"postgres_changes": [binding]})
    assert reply["status"] == "error", reply
    assert "SITEBUILDER_MAX_JSON_DEPTH" in reply["response"]["reason"]
    assert (await supabase.join("room"))["status"] == "ok"
    ref = await supabase.push(
        "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": nested(100)}
    )
    refused = await supabase.reply(ref)
    assert refused["status"] == "error", refused
    assert "SITEBUILDER_MAX_JSON_DEPTH" in refused["response"]["reason"]
    await supabase.heartbeat()


async def test_a_token_whose_claims_json_cannot_carry_is_refused(
    gateway: Gateway, make_user: UserFactory
) -> None:
    """A token (signed with the gateway's secret) with `exp` past 64 bits signed in, then
    its first RPC ended in close 1011: the claims go to PostgreSQL as JSON."""
    user = await make_user()
    forged = jwt.encode(
        {"sub": str(user), "aud": AUDIENCE, "role": "authenticated", "exp": 2**64},
        SECRET,
        algorithm="HS256",
    )
    native = await open_client(gateway_url(gateway))
    await native.send({"type": "auth", "ref": "a", "token": forged})
    error = await native.expect_error("invalid_token")
    assert "JSON cannot carry" in error["message"]
    assert (await native.expect_closed())[0] == 4003
