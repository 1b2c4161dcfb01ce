"""Authentication and per-connection limits of a real gateway, over real websockets.

Each test states one promise the protocol makes to clients (error codes, close
codes, what keeps a connection open), so a regression names the broken promise.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest

from gateway.app.server import Gateway
from gateway.settings import Settings
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    AUDIENCE,
    SECRET,
    Connect,
    gateway_port,
    gateway_url,
    make_project,
    open_client,
    start_gateway,
    token,
)
from tests.support import http_get

AUTH_FAILURES = "sitebuilder_auth_failures_total"


def forged(claims: dict[str, Any], algorithm: str = "HS256") -> str:
    """A token with the test secret and audience but claims `token()` would not mint."""
    full = {"aud": AUDIENCE, "role": "authenticated", "exp": int(time.time()) + 60, **claims}
    full = {k: v for k, v in full.items() if v is not None}
    return jwt.encode(full, SECRET if algorithm != "none" else None, algorithm=algorithm)


def auth_failures(gw: Gateway, reason: str) -> float:
    value = gw.metrics.registry.get_sample_value(AUTH_FAILURES, {"reason": reason})
    return value or 0.0


# Authentication


async def test_auth_ok_carries_user_id_and_expiry(
    ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await ws_client()
    await client.send({"type": "auth", "token": token(user), "ref": "a1"})
    reply = await client.recv_type("ok")
    assert reply["ref"] == "a1"
    assert reply["data"]["user_id"] == str(user)
    assert isinstance(reply["data"]["expires_at"], int)


@pytest.mark.parametrize("ref", ["p-1", 42, 0])
async def test_ping_echoes_ref(ws_client: Connect, make_user: UserFactory, ref: str | int) -> None:
    """Clients match replies to requests by ref, so its value and JSON type must survive."""
    client = await ws_client()
    await client.auth(await make_user())
    await client.send({"type": "ping", "ref": ref})
    reply = await client.recv_type("ok")
    assert reply["ref"] == ref
    assert type(reply["ref"]) is type(ref)


async def test_no_auth_in_time_closes_4001(gateway: Gateway, ws_client: Connect) -> None:
    client = await ws_client()
    error = await client.recv_type("error", timeout=5)
    assert error["code"] == "auth_timeout"
    code, reason = await client.expect_closed()
    assert code == 4001
    assert reason == "auth_timeout"
    assert auth_failures(gateway, "timeout") == 1


async def test_frames_before_auth_are_refused_not_fatal(
    ws_client: Connect, make_user: UserFactory
) -> None:
    """A client that talks before authenticating is told so and may still authenticate."""
    client = await ws_client()
    await client.send({"type": "ping", "ref": "early"})
    error = await client.expect_error("not_authenticated")
    assert error["ref"] == "early"
    await client.send({"type": "subscribe", "project_id": str(uuid.uuid4()), "ref": 2})
    assert (await client.expect_error("not_authenticated"))["ref"] == 2
    await client.send_raw("{oops")
    await client.expect_error("bad_json")
    await client.auth(await make_user())
    await client.ping()


@pytest.mark.parametrize(
    "bad_token",
    [
        pytest.param(
            lambda user: token(user, secret="not-the-secret-" + "x" * 32), id="bad-signature"
        ),
        pytest.param(lambda user: "garbage", id="garbage"),
        pytest.param(lambda user: "a.b.c", id="three-garbage-parts"),
        pytest.param(lambda user: token(user, audience="anon"), id="wrong-audience"),
        pytest.param(lambda user: forged({"sub": str(user)}, "none"), id="alg-none"),
        pytest.param(lambda user: forged({"sub": "not-a-uuid"}), id="sub-not-uuid"),
        pytest.param(lambda user: forged({"sub": str(user), "exp": None}), id="no-exp"),
    ],
)
async def test_invalid_token_closes_4003(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, bad_token: Any
) -> None:
    client = await ws_client()
    await client.send({"type": "auth", "token": bad_token(await make_user()), "ref": "a"})
    error = await client.expect_error("invalid_token")
    assert error["ref"] == "a"
    code, _ = await client.expect_closed()
    assert code == 4003
    assert auth_failures(gateway, "invalid_token") == 1


async def test_expired_token_closes_4003(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory
) -> None:
    client = await ws_client()
    await client.send({"type": "auth", "token": token(await make_user(), ttl=-60)})
    await client.expect_error("token_expired")
    code, reason = await client.expect_closed()
    assert (code, reason) == (4003, "token_expired")
    assert auth_failures(gateway, "token_expired") == 1


async def test_token_of_unknown_user_closes_4003(gateway: Gateway, ws_client: Connect) -> None:
    """A well-signed token is not enough: its subject must be a row of auth.users."""
    client = await ws_client()
    await client.send({"type": "auth", "token": token(uuid.uuid4())})
    await client.expect_error("unknown_user")
    code, reason = await client.expect_closed()
    assert (code, reason) == (4003, "unknown_user")
    assert auth_failures(gateway, "unknown_user") == 1


async def test_token_expiring_mid_connection_closes_4003(
    ws_client: Connect, make_user: UserFactory
) -> None:
    client = await ws_client()
    await client.auth(await make_user(), ttl=2)
    error = await client.expect_error("token_expired", timeout=5)
    assert error["ref"] is None
    code, _ = await client.expect_closed()
    assert code == 4003


async def test_connections_expire_each_at_its_own_tokens_expiry(
    ws_client: Connect, make_user: UserFactory
) -> None:
    """The gateway keeps every expiry on one timer: a token expiring sooner than those
    before it is still closed on time, and one closed or refreshed meanwhile is not."""
    later, sooner, closed = [await ws_client() for _ in range(3)]
    user = await make_user()
    await later.auth(user, ttl=4)
    await closed.auth(user, ttl=2)
    await sooner.auth(user, ttl=2)
    await closed.close()
    await asyncio.wait_for(sooner.expect_error("token_expired", timeout=5), 5)
    assert (await sooner.expect_closed())[0] == 4003
    await later.ping()  # not yet
    await asyncio.wait_for(later.expect_error("token_expired", timeout=5), 5)
    assert (await later.expect_closed())[0] == 4003


async def test_refresh_keeps_connection_past_old_expiry(
    ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await ws_client()
    first = await client.auth(user, ttl=2)
    reply = await client.request({"type": "auth.refresh", "token": token(user, ttl=3600)})
    assert reply["type"] == "ok", reply
    assert reply["data"]["expires_at"] > first["data"]["expires_at"]
    # Nothing may arrive, in particular no token_expired, while the old expiry passes.
    with pytest.raises(TimeoutError):
        await client.recv(timeout=2.5)
    await client.ping()


async def test_refresh_with_expired_or_bad_token_is_refused_not_fatal(
    ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await ws_client()
    await client.auth(user)
    reply = await client.request({"type": "auth.refresh", "token": token(user, ttl=-60)})
    assert (reply["type"], reply["code"]) == ("error", "token_expired")
    reply = await client.request({"type": "auth.refresh", "token": "garbage"})
    assert (reply["type"], reply["code"]) == ("error", "invalid_token")
    await client.ping()


async def test_refresh_with_other_users_token_is_user_mismatch(
    ws_client: Connect, make_user: UserFactory
) -> None:
    client = await ws_client()
    await client.auth(await make_user())
    other = await make_user()
    reply = await client.request({"type": "auth.refresh", "token": token(other)})
    assert (reply["type"], reply["code"]) == ("error", "user_mismatch")
    await client.ping()


async def test_second_auth_is_already_authenticated(
    ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await ws_client()
    await client.auth(user)
    reply = await client.request({"type": "auth", "token": token(user)})
    assert (reply["type"], reply["code"]) == ("error", "already_authenticated")
    await client.ping()


# Refused frames keep the connection


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('{"type": "publish", "ref": "r"}', "unknown_type"),
        ("{not json", "bad_json"),
        ('["ping"]', "bad_frame"),
        ('{"type": "subscribe", "project_id": "nope", "ref": "r"}', "bad_frame"),
        ('{"type": "unsubscribe", "ref": "r"}', "bad_frame"),
    ],
)
async def test_bad_frames_after_auth_are_typed_errors(
    ws_client: Connect, make_user: UserFactory, raw: str, code: str
) -> None:
    client = await ws_client()
    await client.auth(await make_user())
    await client.send_raw(raw)
    error = await client.expect_error(code)
    if '"ref": "r"' in raw:
        assert error["ref"] == "r"
    await client.ping()


@pytest.mark.parametrize("gateway_overrides", [{"max_frame_bytes": 1024}])
async def test_frame_too_large(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory
) -> None:
    client = await ws_client()
    await client.auth(await make_user())
    await client.send({"type": "ping", "ref": "big", "padding": "x" * 2000})
    error = await client.expect_error("frame_too_large")
    assert "1024" in error["message"]
    await client.ping()
    limited = gateway.metrics.registry.get_sample_value(
        "sitebuilder_rate_limited_total", {"limit": "max_frame_bytes"}
    )
    assert limited == 1


# Limits


@pytest.mark.parametrize("gateway_overrides", [{"messages_per_second": 1, "message_burst": 4}])
async def test_rate_limit(gateway: Gateway, ws_client: Connect, make_user: UserFactory) -> None:
    """Burst 4: the auth frame takes one token, three pings pass, the rest are refused."""
    client = await ws_client()
    await client.auth(await make_user())
    for n in range(6):
        await client.send({"type": "ping", "ref": n})
    replies = [await client.recv() for _ in range(6)]
    assert [(r["type"], r.get("ref")) for r in replies[:3]] == [("ok", 0), ("ok", 1), ("ok", 2)]
    refused = [r for r in replies[3:] if r["type"] == "error"]
    assert refused, replies
    for error in refused:
        assert error["code"] == "rate_limited"
        assert error["retry_after_ms"] > 0
        assert error["ref"] in {3, 4, 5}  # names the request that was dropped
    limited = gateway.metrics.registry.get_sample_value(
        "sitebuilder_rate_limited_total", {"limit": "messages_per_second"}
    )
    assert limited == len(refused)


@pytest.mark.parametrize("gateway_overrides", [{"rpcs_per_second": 0.01, "rpc_burst": 2}])
async def test_rpcs_have_a_rate_of_their_own(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory
) -> None:
    """Each RPC is a transaction: past the RPC burst a call is refused unmade, by its
    ref, while other frames still pass."""
    client = await ws_client()
    await client.auth(await make_user())
    for n in range(3):
        await client.send({"type": "rpc", "ref": n, "method": "project.list", "params": {}})
    replies = [await client.recv() for _ in range(3)]
    assert [(r["type"], r["ref"]) for r in replies[:2]] == [("result", 0), ("result", 1)]
    refused = replies[2]
    assert (refused["type"], refused["code"], refused["ref"]) == ("error", "rate_limited", 2)
    assert "SITEBUILDER_RPCS_PER_SECOND" in refused["message"]
    assert refused["retry_after_ms"] > 0
    await client.ping()
    limited = gateway.metrics.registry.get_sample_value(
        "sitebuilder_rate_limited_total", {"limit": "rpcs_per_second"}
    )
    assert limited == 1


@pytest.mark.parametrize("gateway_overrides", [{"max_connections_per_user": 2}])
async def test_too_many_connections_closes_4009(ws_client: Connect, make_user: UserFactory) -> None:
    user = await make_user()
    first, second = await ws_client(), await ws_client()
    await first.auth(user)
    await second.auth(user)
    third = await ws_client()
    await third.send({"type": "auth", "token": token(user)})
    await third.expect_error("too_many_connections")
    code, reason = await third.expect_closed()
    assert (code, reason) == (4009, "too_many_connections")
    # The limit is per user: another user still gets in, and the first two still work.
    other = await ws_client()
    await other.auth(await make_user())
    await first.ping()
    await second.ping()


@pytest.mark.parametrize("gateway_overrides", [{"max_subscriptions": 1}])
async def test_too_many_subscriptions(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    user = await make_user()
    first = await make_project(conn, user)
    second = await make_project(conn, user, name="Other")
    client = await ws_client()
    await client.auth(user)
    ok, snapshot = await client.subscribe(first)
    assert ok["data"]["project_id"] == str(first)
    assert snapshot is not None
    assert snapshot["project"]["id"] == str(first)
    reply = await client.request({"type": "subscribe", "project_id": str(second)})
    assert (reply["type"], reply["code"]) == ("error", "too_many_subscriptions")
    # Freeing the slot lets the next subscription in.
    reply = await client.request({"type": "unsubscribe", "project_id": str(first)})
    assert reply["type"] == "ok", reply
    await client.subscribe(second, snapshot=False)


# HTTP on the same port


async def test_metrics_endpoint(gateway: Gateway, ws_client: Connect) -> None:
    client = await ws_client()
    await client.send({"type": "auth", "token": "garbage"})
    await client.expect_error("invalid_token")
    await client.expect_closed()
    watcher = await ws_client()
    await watcher.send({"type": "ping", "ref": 1})
    await watcher.expect_error("not_authenticated")  # the server has seen this connection
    response = await http_get(gateway_port(gateway), "/metrics")
    assert response.status == 200
    lines = response.body.splitlines()
    # The watcher is open; the refused one may still be closing on the server's side.
    connections = [line for line in lines if line.startswith("sitebuilder_connections ")]
    assert len(connections) == 1
    assert float(connections[0].split()[1]) >= 1
    assert 'sitebuilder_auth_failures_total{reason="invalid_token"} 1.0' in lines
    assert any(line.startswith("sitebuilder_frames_in_total{") for line in lines)


# Shutdown


async def test_graceful_shutdown_sends_closing_then_1012(
    gateway_settings: Settings, database_dsn: str, make_user: UserFactory
) -> None:
    user = await make_user()
    gw, pool = await start_gateway(gateway_settings, database_dsn)
    try:
        running = gw.running()
        await asyncio.wait_for(running.__aenter__(), 30)
        try:
            client = await open_client(gateway_url(gw))
            await client.auth(user)
        finally:
            await asyncio.wait_for(running.__aexit__(None, None, None), 30)
        closing = await client.recv_type("closing")
        assert closing["reconnect_after_ms"] > 0
        code, _ = await client.expect_closed()
        assert code == 1012
    finally:
        await asyncio.wait_for(pool.close(), 10)
