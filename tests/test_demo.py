"""Demo mode: off unless asked for; with it, demo users sign in through `/demo/token`.

The token endpoint hands a user's token to anyone who reaches the port, so the
important half is that a gateway without `--demo` answers none of the demo's paths,
while every gateway serves the browser client for front ends to import.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.app.demo import DEMO_PROJECT_ID, DEMO_USERS, DEMO_WIREFRAME_ID, Demo, seed_demo
from gateway.app.server import Gateway
from gateway.settings import Settings
from tests.gateway_fixtures import (
    AUDIENCE,
    CLOSE_TIMEOUT,
    SECRET,
    gateway_port,
    gateway_url,
    open_client,
    open_pools,
    start_gateway,
)
from tests.support import http_get


async def test_without_demo_the_demo_paths_are_not_found(gateway: Gateway) -> None:
    port = gateway_port(gateway)
    for path in ("/demo/token?user=alice", "/demo/users", "/", "/demo.js"):
        response = await http_get(port, path)
        assert response.status == 404, (path, response)


async def test_every_http_answer_says_the_connection_closes(gateway: Gateway) -> None:
    """websockets closes the connection after any answer but an upgrade: an HTTP client
    told otherwise (keep-alive, HTTP/1.1's default) may send its next request on the
    closed connection and wait for an answer that never comes (Node's fetch did)."""
    port = gateway_port(gateway)
    for path in ("/healthz", "/readyz", "/metrics", "/sitebuilder-client.js", "/nowhere"):
        response = await http_get(port, path)
        assert response.headers.get("connection") == "close", (path, response)


async def test_every_gateway_serves_the_client_and_its_types(gateway: Gateway) -> None:
    port = gateway_port(gateway)
    script = await http_get(port, "/sitebuilder-client.js")
    assert script.status == 200
    assert "export function connect(" in script.body
    types = await http_get(port, "/sitebuilder-client.d.ts")
    assert types.status == 200
    assert "export declare function connect(" in types.body


@pytest.fixture
async def demo_gateway(gateway_settings: Settings, database_dsn: str) -> AsyncIterator[Gateway]:
    """A gateway with the demo seeded and its routes on, as `serve --demo` runs it."""
    gw, pool = await start_gateway(gateway_settings.model_copy(update={"demo": True}), database_dsn)
    await asyncio.wait_for(seed_demo(pool.requests), 10)
    gw.demo = Demo(SECRET, AUDIENCE)
    try:
        async with gw.running():
            yield gw
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)


async def test_a_demo_token_signs_in_as_that_user_who_can_edit_the_demo_project(
    demo_gateway: Gateway,
) -> None:
    port = gateway_port(demo_gateway)
    listing = orjson.loads((await http_get(port, "/demo/users")).body)
    assert [u["key"] for u in listing["users"]] == [u.key for u in DEMO_USERS]
    reply = await http_get(port, "/demo/token?user=bob&ttl=30")
    assert reply.status == 200
    issued = orjson.loads(reply.body)
    assert issued["project_id"] == listing["project_id"] == str(DEMO_PROJECT_ID)

    client = await open_client(gateway_url(demo_gateway))
    try:
        ok = await client.request({"type": "auth", "token": issued["token"]})
        assert ok["data"] == {
            "user_id": issued["user_id"],
            "expires_at": issued["expires_at"],
            "node": "gateway_0",
        }
        subscribed, snapshot = await client.subscribe(DEMO_PROJECT_ID)
        assert subscribed["data"]["access"] == "read_write"
        assert snapshot is not None
        assert snapshot["project"]["name"] == "Corner Bakery"
        assert "home" in snapshot["sitemaps"][0]["pages"]
        assert snapshot["wireframes"][0]["layout"]["hero"]["title"]
        assert snapshot["style_guides"][0]["colors"]["primary"]
    finally:
        await client.close()


async def test_a_demo_token_for_nobody_is_refused(demo_gateway: Gateway) -> None:
    reply = await http_get(gateway_port(demo_gateway), "/demo/token?user=mallory")
    assert reply.status == 404
    assert "alice" in orjson.loads(reply.body)["error"]


async def test_the_demo_editor_is_served_at_the_root(demo_gateway: Gateway) -> None:
    page = await http_get(gateway_port(demo_gateway), "/")
    assert page.status == 200
    assert '<script type="module" src="/demo.js">' in page.body


async def test_seeding_again_leaves_a_deleted_demo_row_in_the_trash(database_dsn: str) -> None:
    """`serve --demo` seeds at every start: a demo wireframe deleted since stays in the
    trash for the page to restore (its id may not be used again), and the start works."""
    pools = await open_pools(database_dsn, size=1)
    try:
        await asyncio.wait_for(seed_demo(pools.requests), 10)
        await pools.requests.execute("DELETE FROM wireframes WHERE id = $1", DEMO_WIREFRAME_ID)
        await asyncio.wait_for(seed_demo(pools.requests), 10)
        found = await pools.requests.fetchrow(
            "SELECT (SELECT count(*) FROM wireframes) AS live,"
            " (SELECT count(*) FROM trash WHERE entity_id = $1) AS trashed",
            DEMO_WIREFRAME_ID,
            timeout=10,
        )
    finally:
        await asyncio.wait_for(pools.close(), CLOSE_TIMEOUT)
    assert (found["live"], found["trashed"]) == (0, 1)
