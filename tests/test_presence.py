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


class View:
    """What a client knows of a project's presence: its state with every diff applied
    leaves-first by connection, as docs/protocol.md tells clients to."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.metas: dict[str, dict[str, Any]] = {}  # connection id -> meta entry
        self.users: dict[str, str] = {}  # connection id -> user id
        self.apply({"joins": state["users"], "leaves": {}})

    def apply(self, diff: dict[str, Any]) -> None:
        for entry in diff["leaves"].values():
            for meta in entry["metas"]:
                self.metas.pop(meta["connection_id"], None)
                self.users.pop(meta["connection_id"], None)
        for user, entry in diff["joins"].items():
            for meta in entry["metas"]:
                self.metas[meta["connection_id"]] = meta
                self.users[meta["connection_id"]] = user

    def connections(self) -> dict[str, set[str]]:
        grouped: dict[str, set[str]] = {}
        for connection, user in self.users.items():
            grouped.setdefault(user, set()).add(connection)
        return grouped

    async def until(self, client: WsClient, expected: dict[str, set[str]]) -> None:
        """Apply the client's diffs until it sees exactly `expected` (bounded)."""

        async def read() -> None:
            while self.connections() != expected:
                self.apply(await client.recv_type("presence.diff"))

        await asyncio.wait_for(read(), TIMEOUT)


async def next_diff(client: WsClient) -> dict[str, Any]:
    """The next frame, which must be a `presence.diff`."""
    return await client.recv_type("presence.diff")


async def joined_diff(client: WsClient, user: UUID) -> dict[str, Any]:
    """The diff in which `user` joined. Diffs of what the client's state already showed
    may come first: one that took its state within a presence interval also gets that
    interval's diff, its own join included (gateway.presence.fanout)."""
    diff, _ = await diff_until(client, lambda d: str(user) in d["joins"])
    return diff


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
    a_view = View(state)

    b1, state = await joined(ws_client, collaborator, project)
    assert connections(state["users"])[str(owner)] == {a_id}
    b1_id = own_connection(state, collaborator, set())
    b1_view = View(state)
    await a_view.until(a, {str(owner): {a_id}, str(collaborator): {b1_id}})

    b2, state = await joined(ws_client, collaborator, project)
    b2_id = own_connection(state, collaborator, {b1_id})
    everyone = {str(owner): {a_id}, str(collaborator): {b1_id, b2_id}}
    assert connections(state["users"]) == everyone
    for view, other in ((a_view, a), (b1_view, b1)):
        await view.until(other, everyone)

    b2.presence = False  # its own join may still be on its way: only the reply matters
    reply = await b2.request({"type": "unsubscribe", "project_id": str(project)})
    assert reply["type"] == "ok"
    for view, other in ((a_view, a), (b1_view, b1)):
        await view.until(other, {str(owner): {a_id}, str(collaborator): {b1_id}})

    await b1.close()
    await a_view.until(a, {str(owner): {a_id}})
    await b2.ping()  # no longer subscribed: it got no diff of b1 leaving


@pytest.mark.parametrize("gateway_overrides", [{"presence_diff_interval_seconds": 2.0}])
async def test_changes_within_an_interval_are_merged(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Editors arriving together cost the others a diff or two, not one each; one that
    came and went meanwhile is gone from what they see."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, state = await joined(ws_client, owner, project)
    a_view = View(state)
    (a_id,) = connections(state["users"])[str(owner)]

    arrivals = await asyncio.gather(*(joined(ws_client, collaborator, project) for _ in range(5)))
    passing, _ = await joined(ws_client, collaborator, project)
    await passing.close()
    ids: set[str] = set()
    for _, arrival_state in arrivals:
        ids |= connections(arrival_state["users"]).get(str(collaborator), set())
    assert len(ids) == 5

    diffs = 0

    async def read() -> None:
        nonlocal diffs
        while a_view.connections() != {str(owner): {a_id}, str(collaborator): ids}:
            a_view.apply(await a.recv_type("presence.diff", timeout=TIMEOUT))
            diffs += 1

    await asyncio.wait_for(read(), 3 * TIMEOUT)
    # 6 joins and a leave: the joins in one diff, the leave after them in another
    # (a third if the arrivals straddled two intervals)
    assert diffs <= 3, f"{diffs} diffs for 7 changes"
    await a.ping()  # nothing else was pending: the reply comes next


async def test_meta_update_reaches_the_others(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    a, _ = await joined(ws_client, owner, project)
    b, state = await joined(ws_client, collaborator, project)
    b.presence = False  # what b hears does not matter here
    b_id = own_connection(state, collaborator, set())
    await joined_diff(a, collaborator)

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
    await joined_diff(a, collaborator)

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

    def updated(diff: dict[str, Any]) -> bool:  # its own update (its join may come first)
        entry = diff["joins"].get(str(owner), {"metas": []})
        return any(meta["meta"] == {"page": "p"} for meta in entry["metas"])

    await diff_until(a, updated)


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
    await joined_diff(a, collaborator)

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
    await joined_diff(a, collaborator)

    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", project)

    async def unsubscribed() -> dict[str, Any]:
        while True:  # diffs sent before the revocation may come first
            frame = await b.recv()
            if frame["type"] != "presence.diff":
                return frame

    gone = await asyncio.wait_for(unsubscribed(), TIMEOUT)
    assert gone["type"] == "unsubscribed"
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
    a, a_state = await joined(ws_client, owner, project)
    a_view = View(a_state)
    (a_id,) = connections(a_state["users"])[str(owner)]
    r, state = await joined(ws_client, reader, project)
    r.presence = False  # what the reader hears does not matter here
    assert set(state["users"]) == {str(owner), str(reader)}
    r_id = own_connection(state, reader, set())
    await a_view.until(a, {str(owner): {a_id}, str(reader): {r_id}})

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
    await joined_diff(a, collaborator)

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
