"""`session.*` over real websockets against real PostgreSQL: the seed's session example
seen live by a collaborator, pausing on disconnect (after the grace, not before),
resuming, the sweep after a restart, and retention.

Timing is asserted with bounded waits for what must happen (a `change` to `paused`, a
row read until it reads so), never with sleeps standing in for assertions.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect

from db.acting_user import acting_as
from gateway.app.server import Gateway
from gateway.settings import Settings
from protocol.rpc_sessions import STEP_MAX_CHARS
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    CLOSE_TIMEOUT,
    TIMEOUT,
    Connect,
    WsClient,
    gateway_url,
    make_project,
    open_client,
    start_gateway,
)
from tests.support import triggers_off
from tests.test_rpc import rpc, signed_in

Frame = dict[str, Any]
GRACE = 0.5


async def session_change(client: WsClient, timeout: float = TIMEOUT) -> Frame:  # noqa: ASYNC109
    """The next `change` of a session (other frames are skipped); never with a token."""
    while True:
        frame = await client.recv(timeout)
        if frame.get("type") == "change" and frame.get("entity") == "session":
            assert b"session_token" not in orjson.dumps(frame), frame
            return frame


async def result(client: WsClient, method: str, **params: object) -> Frame:
    reply = await rpc(client, method, **params)
    assert reply["type"] == "result", reply
    data = reply["data"]
    assert isinstance(data, dict)
    return data


async def status_of(conn: asyncpg.Connection, session_id: object) -> str:
    status: str = await conn.fetchval(
        "SELECT status FROM builder_sessions WHERE id = $1", UUID(str(session_id))
    )
    return status


async def until_status(conn: asyncpg.Connection, session_id: object, status: str) -> None:
    async def poll() -> None:
        while await status_of(conn, session_id) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), TIMEOUT)


async def insert_session(
    conn: asyncpg.Connection,
    user: UUID,
    project: UUID,
    status: str,
    *,
    age: str = "0 seconds",
) -> UUID:
    """A session written as the superuser, created and last touched `age` ago."""
    session_id: UUID = await conn.fetchval(
        "INSERT INTO builder_sessions (user_id, project_id, session_token, status, created_at,"
        " updated_at, ended_at) VALUES ($1, $2, $3, $4, now() - $5::text::interval,"
        " now() - $5::text::interval,"
        " CASE WHEN $4 IN ('completed', 'cancelled') THEN now() - $5::text::interval END)"
        " RETURNING id",
        user,
        project,
        secrets.token_urlsafe(32),
        status,
        age,
    )
    return session_id


async def backdate(conn: asyncpg.Connection, session_id: object) -> None:
    """Make the session look untouched for an hour (past the trigger moving updated_at)."""
    async with triggers_off(conn, "builder_sessions"):
        await conn.execute(
            "UPDATE builder_sessions SET updated_at = now() - interval '1 hour' WHERE id = $1",
            UUID(str(session_id)),
        )


async def test_the_seed_example_is_seen_live_by_a_collaborator(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    watcher = await signed_in(ws_client, collaborator)
    await watcher.subscribe(project)
    builder = await signed_in(ws_client, owner)

    created = await result(
        builder,
        "session.create",
        project_id=str(project),
        current_step="sitemap-generation",
        metadata={"model": "gpt-4", "source": "wizard"},
    )
    token = created["session_token"]
    assert isinstance(token, str)
    assert len(token) >= 40
    assert (created["status"], created["current_step"]) == ("active", "sitemap-generation")
    assert created["ip_address"] == "127.0.0.1"
    assert "websockets" in created["user_agent"].lower()
    stored = await conn.fetchrow(
        "SELECT host(c.ip_address) AS ip, c.user_agent, s.session_token"
        " FROM builder_sessions s JOIN builder_session_clients c ON c.session_id = s.id"
        " WHERE s.id = $1",
        UUID(created["id"]),
    )
    assert stored is not None
    assert (stored["ip"], stored["user_agent"], stored["session_token"]) == (
        "127.0.0.1",
        created["user_agent"],
        token,
    )
    inserted = await session_change(watcher)
    assert (inserted["op"], inserted["old"], inserted["actor"]) == ("insert", None, str(owner))
    assert inserted["new"]["status"] == "active"
    # The client's address and agent are the owner's: the collaborator never gets them.
    assert (inserted["new"]["ip_address"], inserted["new"]["user_agent"]) == (None, None)

    progress = {"completed": 25, "total": 100}
    updated = await result(
        builder,
        "session.update_progress",
        id=created["id"],
        current_step="wireframe-design",
        progress=progress,
    )
    assert "session_token" not in updated
    assert (updated["current_step"], updated["progress"]) == ("wireframe-design", progress)
    change = await session_change(watcher)
    assert change["old"]["current_step"] == "sitemap-generation"
    assert (change["new"]["current_step"], change["new"]["progress"]) == (
        "wireframe-design",
        progress,
    )

    completed = await result(builder, "session.complete", id=created["id"])
    assert completed["status"] == "completed"
    assert completed["duration"] is not None
    change = await session_change(watcher)
    assert (change["old"]["status"], change["new"]["status"]) == ("active", "completed")
    assert change["new"]["duration"] is not None
    assert change["new"]["ended_at"] is not None

    again = await result(builder, "session.get_by_token", session_token=token)
    assert (again["id"], again["status"], again["session_token"]) == (
        created["id"],
        "completed",
        token,
    )


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_address_only_when_trusted(
    gateway_settings: Settings,
    database_dsn: str,
    make_user: UserFactory,
    conn: asyncpg.Connection,
    trusted: bool,
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    settings = gateway_settings.model_copy(update={"trust_proxy_headers": trusted})
    gw, pool = await start_gateway(settings, database_dsn)
    try:
        async with gw.running():
            ws = await connect(
                gateway_url(gw),
                additional_headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.9"},
                user_agent_header="Builder/1.0",
                open_timeout=TIMEOUT,
            )
            client = WsClient(ws)
            try:
                await client.auth(owner)
                created = await result(
                    client, "session.create", project_id=str(project), current_step="start"
                )
            finally:
                await client.close()
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    expected = "198.51.100.9" if trusted else "127.0.0.1"
    assert (created["ip_address"], created["user_agent"]) == (expected, "Builder/1.0")


async def test_an_ended_session_cannot_change(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator, stranger = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    builder = await signed_in(ws_client, owner)
    created = await result(builder, "session.create", project_id=str(project), current_step="a")
    token = created["session_token"]

    other = await signed_in(ws_client, collaborator)
    refused = await rpc(other, "session.update_progress", id=created["id"], current_step="x")
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    outsider = await signed_in(ws_client, stranger)
    refused = await rpc(outsider, "session.update_progress", id=created["id"], current_step="x")
    assert (refused["type"], refused["code"]) == ("error", "not_found")
    refused = await rpc(outsider, "session.create", project_id=str(project), current_step="a")
    assert (refused["type"], refused["code"]) == ("error", "forbidden")

    cancelled = await result(builder, "session.cancel", id=created["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["duration"] is not None
    for method, params in [
        ("session.update_progress", {"id": created["id"], "progress": {"completed": 1}}),
        ("session.resume", {"session_token": token}),
        ("session.complete", {"id": created["id"]}),
        ("session.cancel", {"id": created["id"]}),
    ]:
        reply = await rpc(builder, method, **params)
        assert (reply["type"], reply["code"]) == ("error", "conflict"), (method, reply)
        assert reply["details"]["status"] == "cancelled"  # type: ignore[index]
        assert "session_token" not in reply["details"]["current"]  # type: ignore[index]
    assert await status_of(conn, created["id"]) == "cancelled"
    empty = await rpc(builder, "session.update_progress", id=created["id"])
    assert (empty["type"], empty["code"]) == ("error", "invalid_params")
    unknown = await rpc(builder, "session.resume", session_token="nope")
    assert (unknown["type"], unknown["code"]) == ("error", "not_found")


async def test_a_session_whose_project_was_deleted_answers_and_the_socket_stays(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Its project_id is set null by the delete; updating it once closed the socket
    with 1011 (`UUID("None")`) after committing."""
    owner = await make_user()
    project = await make_project(conn, owner)
    builder = await signed_in(ws_client, owner)
    created = await result(builder, "session.create", project_id=str(project), current_step="a")
    await conn.execute("DELETE FROM projects WHERE id = $1", project)

    updated = await result(builder, "session.update_progress", id=created["id"], current_step="b")

    assert (updated["project_id"], updated["current_step"]) == (None, "b")
    await builder.ping()


async def test_a_step_name_over_the_limit_is_refused(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    builder = await signed_in(ws_client, owner)
    longest, over = "s" * STEP_MAX_CHARS, "s" * (STEP_MAX_CHARS + 1)
    refused = await rpc(builder, "session.create", project_id=str(project), current_step=over)
    assert (refused["type"], refused["code"]) == ("error", "invalid_params")
    created = await result(builder, "session.create", project_id=str(project), current_step=longest)
    refused = await rpc(builder, "session.update_progress", id=created["id"], current_step=over)
    assert (refused["type"], refused["code"]) == ("error", "invalid_params")
    assert (
        await conn.fetchval(
            "SELECT current_step FROM builder_sessions WHERE id = $1", UUID(created["id"])
        )
        == longest
    )


@pytest.mark.parametrize("gateway_overrides", [{"session_pause_grace_seconds": GRACE}])
async def test_paused_after_the_grace_and_not_before_then_resumed(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    watcher = await signed_in(ws_client, collaborator)
    await watcher.subscribe(project)
    builder = await open_client(gateway_url(gateway))
    await builder.auth(owner)
    created = await result(builder, "session.create", project_id=str(project), current_step="a")
    await session_change(watcher)

    await builder.close()
    closed_at = time.monotonic()
    assert await status_of(conn, created["id"]) == "active"
    paused = await session_change(watcher)
    waited = time.monotonic() - closed_at
    assert (paused["old"]["status"], paused["new"]["status"]) == ("active", "paused")
    assert waited >= GRACE * 0.9, waited
    assert paused["actor"] is None  # the gateway's doing, not a user's

    again = await signed_in(ws_client, owner)
    resumed = await result(again, "session.resume", session_token=created["session_token"])
    assert (resumed["id"], resumed["status"]) == (created["id"], "active")
    change = await session_change(watcher)
    assert (change["old"]["status"], change["new"]["status"]) == ("paused", "active")


@pytest.mark.parametrize("gateway_overrides", [{"session_pause_grace_seconds": 2.0}])
async def test_reconnect_and_resume_within_the_grace_changes_nothing(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    watcher = await signed_in(ws_client, collaborator)
    await watcher.subscribe(project)
    first = await open_client(gateway_url(gateway))
    await first.auth(owner)
    created = await result(first, "session.create", project_id=str(project), current_step="a")
    await session_change(watcher)

    await first.close()
    second = await open_client(gateway_url(gateway))
    await second.auth(owner)
    resumed = await result(second, "session.resume", session_token=created["session_token"])
    assert resumed["status"] == "active"  # never paused
    change = await session_change(watcher)
    assert (change["old"]["status"], change["new"]["status"]) == ("active", "active")

    # The first disconnect's timer is gone: the next pause follows the second one.
    await second.close()
    closed_at = time.monotonic()
    paused = await session_change(watcher)
    assert paused["new"]["status"] == "paused"
    assert time.monotonic() - closed_at >= 2.0 * 0.9


@pytest.mark.parametrize("gateway_overrides", [{"session_pause_grace_seconds": GRACE}])
async def test_the_sweep_pauses_only_abandoned_sessions(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    builder = await signed_in(ws_client, owner)
    held = await result(builder, "session.create", project_id=str(project), current_step="a")
    await backdate(conn, held["id"])
    abandoned = await insert_session(conn, owner, project, "active", age="1 hour")
    fresh = await insert_session(conn, owner, project, "active")

    assert await gateway.sessions.sweep() == 1
    assert await status_of(conn, abandoned) == "paused"
    assert await status_of(conn, held["id"]) == "active"  # its connection is open here
    assert await status_of(conn, fresh) == "active"  # touched within the grace


@pytest.mark.parametrize("gateway_overrides", [{"session_pause_grace_seconds": GRACE}])
async def test_sessions_left_active_are_paused_when_a_gateway_starts(
    gateway_settings: Settings, database_dsn: str, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    gw, pool = await start_gateway(gateway_settings, database_dsn)
    try:
        async with gw.running():
            client = await open_client(gateway_url(gw))
            await client.auth(owner)
            left = await result(client, "session.create", project_id=str(project), current_step="a")
            # The gateway goes away with the connection open: no timer runs, as in a crash.
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    await client.close()
    assert await status_of(conn, left["id"]) == "active"
    await backdate(conn, left["id"])
    fresh = await insert_session(conn, owner, project, "active")

    restarted = gateway_settings.model_copy(
        update={"replication_slot": gateway_settings.replication_slot + "_2"}
    )
    gw, pool = await start_gateway(restarted, database_dsn)
    try:
        async with gw.running():
            await until_status(conn, left["id"], "paused")
            assert await status_of(conn, fresh) == "active"
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)


async def test_cleanup_removes_only_old_ended_sessions(
    gateway: Gateway, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    old = "40 days"
    removed = [
        await insert_session(conn, owner, project, "completed", age=old),
        await insert_session(conn, owner, project, "cancelled", age=old),
    ]
    kept = [
        await insert_session(conn, owner, project, "active", age=old),
        await insert_session(conn, owner, project, "paused", age=old),
        await insert_session(conn, owner, project, "completed", age="1 day"),
        await insert_session(conn, owner, project, "cancelled"),
    ]
    before = gateway.metrics.registry.get_sample_value("sitebuilder_sessions_cleaned_total") or 0
    assert await gateway.sessions.cleanup() == 2
    left = await conn.fetchval("SELECT array_agg(id) FROM builder_sessions")
    assert set(left) == set(kept)
    assert not set(removed) & set(left)
    after = gateway.metrics.registry.get_sample_value("sitebuilder_sessions_cleaned_total")
    assert after == before + 2


async def test_a_sessions_address_and_agent_reach_only_its_owner(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Not in another member's snapshot, RPC result or direct query as `authenticated`;
    the owner gets them back with the token."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    builder = await signed_in(ws_client, owner)
    created = await result(
        builder, "session.create", project_id=str(project), current_step="sitemap-generation"
    )
    assert created["ip_address"] == "127.0.0.1"
    again = await result(builder, "session.get_by_token", session_token=created["session_token"])
    assert (again["ip_address"], again["user_agent"]) == (
        created["ip_address"],
        created["user_agent"],
    )

    member = await signed_in(ws_client, collaborator)
    _, snapshot = await member.subscribe(project)
    assert snapshot is not None
    (shown,) = snapshot["sessions"]
    assert (shown["id"], shown["ip_address"], shown["user_agent"]) == (created["id"], None, None)
    for user, expected in ((collaborator, []), (owner, [("127.0.0.1", created["user_agent"])])):
        async with conn.transaction(), acting_as(conn, user):
            rows = await conn.fetch(
                "SELECT host(ip_address) AS ip, user_agent FROM builder_sessions"
                " WHERE ip_address IS NOT NULL OR user_agent IS NOT NULL"
                " UNION ALL SELECT host(ip_address), user_agent FROM builder_session_clients"
            )
        assert [(r["ip"], r["user_agent"]) for r in rows] == expected


async def test_the_owner_lists_and_resumes_their_sessions_from_another_device(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """`session.list` gives the caller's own sessions (any device's), newest first, with
    their tokens; `session.resume {id}` reattaches one without its token. Another
    member sees neither, and cannot resume it by id."""
    owner, member = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member])
    other_project = await make_project(conn, owner)
    laptop = await signed_in(ws_client, owner)
    first = await result(laptop, "session.create", project_id=str(project), current_step="a")
    second = await result(laptop, "session.create", project_id=str(project), current_step="b")
    elsewhere = await result(
        laptop, "session.create", project_id=str(other_project), current_step="c"
    )
    await result(laptop, "session.complete", id=second["id"])
    mine = await result(
        await signed_in(ws_client, member),
        "session.create",
        project_id=str(project),
        current_step="m",
    )

    phone = await signed_in(ws_client, owner)
    listed = await rpc(phone, "session.list", project_id=str(project))
    assert [row["id"] for row in listed["data"]] == [second["id"], first["id"]]
    assert listed["data"][1]["session_token"] == first["session_token"]
    live = await rpc(phone, "session.list", status=["active", "paused"])
    assert {row["id"] for row in live["data"]} == {first["id"], elsewhere["id"]}
    assert len((await rpc(phone, "session.list", limit=1))["data"]) == 1

    resumed = await result(phone, "session.resume", id=first["id"])
    assert (resumed["id"], resumed["status"]) == (first["id"], "active")
    assert resumed["session_token"] == first["session_token"]
    ended = await rpc(phone, "session.resume", id=second["id"])
    assert (ended["type"], ended["code"]) == ("error", "conflict")
    theirs = await rpc(phone, "session.resume", id=mine["id"])
    assert (theirs["type"], theirs["code"]) == ("error", "forbidden")
    both = await rpc(phone, "session.resume", id=first["id"], session_token="x")
    assert (both["type"], both["code"]) == ("error", "invalid_params")
    member_view = await rpc(await signed_in(ws_client, member), "session.list")
    assert [row["id"] for row in member_view["data"]] == [mine["id"]]
