"""Presence over real websockets: who is in a project, joins, leaves and meta updates.

Every wait is bounded (the WsClient helpers time out); nothing sleeps to wait for an
event: a `ping` round trip is the barrier where "nothing more arrived" matters.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, WsClient, make_project


async def joined(ws_client: Connect, user: UUID, project: UUID) -> tuple[WsClient, dict[str, Any]]:
    """A client of `user` subscribed to `project`, and the `presence.state` it got."""
    client = await ws_client()
    client.presence = True
    await client.auth(user)
    await client.subscribe(project)
    state = await client.recv_type("presence.state")
    assert state["project_id"] == str(project)
    return client, state


def connections(users: dict[str, Any]) -> dict[str, set[str]]:
    """{user_id: {connection_id, …}} of a state's `users` or a diff's joins/leaves."""
    return {user: {m["connection_id"] for m in entry["metas"]} for user, entry in users.items()}


def own_connection(state: dict[str, Any], user: UUID, known: set[str]) -> str:
    """The connection of `user` in `state` not among `known`: the new client's own."""
    (mine,) = connections(state["users"])[str(user)] - known
    return mine


async def next_diff(client: WsClient) -> dict[str, Any]:
    """The next frame, which must be a `presence.diff`."""
    return await client.recv_type("presence.diff")


async def diff_until(client: WsClient, done: Any) -> tuple[dict[str, Any], int]:
    """Read `presence.diff`s until one satisfies `done`; (that diff, how many were read)."""

    async def read() -> tuple[dict[str, Any], int]:
        count = 0
        while True:
            frame = await client.recv()
            if frame["type"] != "presence.diff":
                continue
            count += 1
            if done(frame):
                return frame, count

    return await asyncio.wait_for(read(), TIMEOUT)


async def test_state_joins_and_leaves_across_three_clients(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """One user with two tabs is one user with two connections."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])

    a, state = await joined(ws_client, owner, project)
    assert list(state["users"]) == [str(owner)]
    (meta,) = state["users"][str(owner)]["metas"]
    assert meta["meta"] == {}
    assert meta["joined_at"]
    assert meta["last_active"]
    a_id = meta["connection_id"]

    b1, state = await joined(ws_client, collaborator, project)
    assert connections(state["users"])[str(owner)] == {a_id}
    b1_id = own_connection(state, collaborator, set())
    diff = await next_diff(a)
    assert diff["project_id"] == str(project)
    assert connections(diff["joins"]) == {str(collaborator): {b1_id}}
    assert diff["leaves"] == {}

    b2, state = await joined(ws_client, collaborator, project)
    b2_id = own_connection(state, collaborator, {b1_id})
    assert connections(state["users"]) == {
        str(owner): {a_id},
        str(collaborator): {b1_id, b2_id},
    }
    for other in (a, b1):
        diff = await next_diff(other)
        assert connections(diff["joins"]) == {str(collaborator): {b2_id}}

    reply = await b2.request({"type": "unsubscribe", "project_id": str(project)})
    assert reply["type"] == "ok"
    for other in (a, b1):
        diff = await next_diff(other)
        assert diff["joins"] == {}
        assert connections(diff["leaves"]) == {str(collaborator): {b2_id}}

    await b1.close()
    diff = await next_diff(a)
    assert connections(diff["leaves"]) == {str(collaborator): {b1_id}}
    await b2.ping()  # no longer subscribed: it got no diff of b1 leaving


async def test_meta_update_reaches_the_others(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, state = await joined(ws_client, collaborator, project)
    b_id = own_connection(state, collaborator, set())
    await next_diff(a)  # b joined

    meta = {"page": "home", "cursor": {"x": 10, "y": 20}, "session": {"step": "wireframe"}}
    reply = await b.request({"type": "presence.update", "project_id": str(project), "meta": meta})
    assert reply == {"type": "ok", "ref": reply["ref"], "data": {"project_id": str(project)}}

    diff = await next_diff(a)
    (joined_meta,) = diff["joins"][str(collaborator)]["metas"]
    (left_meta,) = diff["leaves"][str(collaborator)]["metas"]
    assert joined_meta["connection_id"] == left_meta["connection_id"] == b_id
    assert joined_meta["meta"] == meta
    assert left_meta["meta"] == {}
    assert joined_meta["joined_at"] == left_meta["joined_at"]
    assert joined_meta["last_active"] >= left_meta["last_active"]

    # A later subscriber sees the current meta in its state.
    _, state = await joined(ws_client, owner, project)
    assert state["users"][str(collaborator)]["metas"][0]["meta"] == meta


@pytest.mark.parametrize("gateway_overrides", [{"presence_updates_per_second": 2.0}])
async def test_rate_limited_updates_coalesce_to_the_latest(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Fifty updates at once: every one is answered `ok`, none is an error, the others
    see far fewer diffs, and the last one is the meta they end up with."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, _ = await joined(ws_client, collaborator, project)
    await next_diff(a)  # b joined

    for n in range(50):
        await b.send(
            {"type": "presence.update", "project_id": str(project), "meta": {"n": n}, "ref": n}
        )
    b.presence = False  # only the replies matter here
    for n in range(50):
        reply = await b.recv()
        assert reply == {"type": "ok", "ref": n, "data": {"project_id": str(project)}}

    def last(diff: dict[str, Any]) -> bool:
        metas = diff["joins"].get(str(collaborator), {}).get("metas", [])
        return any(m["meta"] == {"n": 49} for m in metas)

    _, count = await diff_until(a, last)
    assert count < 10, f"{count} diffs for 50 rate-limited updates"
    await b.ping()
    await a.ping()  # nothing after the latest: the barrier reply comes next


@pytest.mark.parametrize("gateway_overrides", [{"max_presence_meta_bytes": 100}])
async def test_oversized_meta_is_refused(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    a, _ = await joined(ws_client, owner, project)
    big = {"selection": "x" * 200}
    await a.send({"type": "presence.update", "project_id": str(project), "meta": big, "ref": "u"})
    error = await a.expect_error("presence_too_large")
    assert error["ref"] == "u"
    assert "SITEBUILDER_MAX_PRESENCE_META_BYTES" in error["message"]
    reply = await a.request(
        {"type": "presence.update", "project_id": str(project), "meta": {"page": "p"}}
    )
    assert reply["type"] == "ok"
    await next_diff(a)  # its own update


async def test_update_of_a_project_not_subscribed_is_refused(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await ws_client()
    await client.auth(owner)
    await client.send({"type": "presence.update", "project_id": str(project), "ref": 1})
    error = await client.expect_error("not_subscribed")
    assert error["ref"] == 1


async def test_abrupt_disconnect_leaves(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, state = await joined(ws_client, collaborator, project)
    b_id = own_connection(state, collaborator, set())
    await next_diff(a)  # b joined

    b.ws.transport.abort()  # no close frame

    diff = await next_diff(a)
    assert connections(diff["leaves"]) == {str(collaborator): {b_id}}
    _, state = await joined(ws_client, owner, project)
    assert list(state["users"]) == [str(owner)]


async def test_revoked_collaborator_leaves(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, state = await joined(ws_client, collaborator, project)
    b_id = own_connection(state, collaborator, set())
    await next_diff(a)  # b joined

    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", project)

    gone = await b.recv_type("unsubscribed")
    assert gone["reason"] == "access_revoked"
    diff, _ = await diff_until(a, lambda d: bool(d["leaves"]))
    assert connections(diff["leaves"]) == {str(collaborator): {b_id}}
    await b.ping()  # nothing of the project after `unsubscribed`


async def test_public_reader_is_in_presence(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Presence shows who is connected, read-only viewers of a public project included."""
    owner, reader = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    a, _ = await joined(ws_client, owner, project)
    r, state = await joined(ws_client, reader, project)
    assert set(state["users"]) == {str(owner), str(reader)}
    r_id = own_connection(state, reader, set())
    diff = await next_diff(a)
    assert connections(diff["joins"]) == {str(reader): {r_id}}

    reply = await r.request(
        {"type": "presence.update", "project_id": str(project), "meta": {"page": "about"}}
    )
    assert reply["type"] == "ok"
    diff = await next_diff(a)
    assert diff["joins"][str(reader)]["metas"][0]["meta"] == {"page": "about"}


async def rpc_result(client: WsClient, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The `result` of an rpc; the changes it causes may come first (with its ref)."""
    ref = client.next_ref()
    await client.send({"type": "rpc", "ref": ref, "method": method, "params": params})

    async def reply() -> dict[str, Any]:
        while True:
            frame = await client.recv()
            if frame.get("ref") == ref and frame["type"] in ("result", "error"):
                return frame

    frame = await asyncio.wait_for(reply(), TIMEOUT)
    assert frame["type"] == "result", frame
    data: dict[str, Any] = frame["data"]
    return data


async def test_builder_session_step_shows_in_its_owners_presence(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The collaborator's `session.update_progress` reaches the owner twice over: as a
    `session` change and in the collaborator's presence, with no extra request."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, state = await joined(ws_client, collaborator, project)
    b_id = own_connection(state, collaborator, set())
    await next_diff(a)  # b joined

    created = await rpc_result(
        b, "session.create", {"project_id": str(project), "current_step": "sitemap-generation"}
    )
    session_id = created["id"]
    await rpc_result(
        b,
        "session.update_progress",
        {
            "id": session_id,
            "current_step": "wireframe-design",
            "progress": {"completed": 25, "total": 100},
        },
    )

    async def until_both() -> tuple[dict[str, Any], dict[str, Any]]:
        change: dict[str, Any] | None = None
        shown: dict[str, Any] | None = None
        while change is None or shown is None:
            frame = await a.recv()
            if frame["type"] == "change" and frame["entity"] == "session":
                if frame["new"]["current_step"] == "wireframe-design":
                    change = frame
            elif frame["type"] == "presence.diff":
                for meta in frame["joins"].get(str(collaborator), {"metas": []})["metas"]:
                    session = meta["session"] or {}
                    if meta["connection_id"] == b_id and session.get("current_step") == (
                        "wireframe-design"
                    ):
                        shown = meta
        return change, shown

    change, shown = await asyncio.wait_for(until_both(), TIMEOUT)
    assert change["new"]["progress"] == {"completed": 25, "total": 100}
    assert "session_token" not in change["new"]
    assert shown["session"] == {
        "id": session_id,
        "current_step": "wireframe-design",
        "status": "active",
    }

    await rpc_result(b, "session.complete", {"id": session_id})
    await diff_until(
        a,
        lambda d: any(
            m["connection_id"] == b_id and m["session"] is None
            for m in d["joins"].get(str(collaborator), {"metas": []})["metas"]
        ),
    )
