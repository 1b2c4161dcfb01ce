"""Joiners of a project within one window share one snapshot read (gateway.core.snapshots)
and its encoding (gateway.native.snapshots), and each still gets exactly its own rows:
editors every row and every builder session, a signed-in reader of a public project
only their own sessions, a signed-out visitor none, an outsider of a private project
nothing; and every change once, in the snapshot or after it."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg

from gateway.app.server import Gateway
from gateway.core.router import Router
from gateway.core.snapshots import SharedView, SnapshotReads
from gateway.edge.tokens import mint_anon_key
from gateway.native.snapshots import snapshot_frame
from protocol.codec import encode_frame
from protocol.frames import Access, Snapshot
from protocol.rows import ProjectRow, SessionRow, SitemapRow, StyleGuideRow, WireframeRow
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    Connect,
    WsClient,
    make_project,
    make_sitemap,
    make_style_guide,
    make_wireframe,
)

# Long enough that the joiners below all wait for the same read.
WINDOW = 1.0
Frame = dict[str, Any]


async def make_session(conn: asyncpg.Connection, user: UUID, project_id: UUID) -> UUID:
    """An active builder session of `user`, started from an address only they may see."""
    session_id: UUID = await conn.fetchval(
        "INSERT INTO builder_sessions (user_id, project_id, session_token, status, ip_address,"
        " user_agent) VALUES ($1, $2, $3, 'active', '203.0.113.7', 'Browser/1') RETURNING id",
        user,
        project_id,
        f"token-{user}",
    )
    return session_id


async def public_project(
    conn: asyncpg.Connection, make_user: UserFactory
) -> tuple[UUID, UUID, UUID, UUID, dict[UUID, UUID]]:
    """A public project with content: (project, owner, collaborator, reader, each one's
    builder session by user). The reader owns a session there too (from when they were
    a collaborator), which only they may see."""
    owner, collaborator, reader = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator], public=True)
    await make_style_guide(conn, await make_wireframe(conn, await make_sitemap(conn, project)))
    sessions = {user: await make_session(conn, user, project) for user in (owner, reader)}
    return project, owner, collaborator, reader, sessions


async def test_a_window_shares_one_view_among_those_shown_the_same_rows(
    conn: asyncpg.Connection, make_user: UserFactory, database_dsn: str
) -> None:
    project, owner, collaborator, reader, sessions = await public_project(conn, make_user)
    outsider = await make_user()
    private = await make_project(conn, owner)
    pool = await asyncio.wait_for(
        asyncpg.create_pool(database_dsn, min_size=1, max_size=4), TIMEOUT
    )
    try:
        reads = SnapshotReads(pool, Router(pool, 100), WINDOW)
        first = await asyncio.wait_for(reads.view(project, owner, with_content=True), TIMEOUT)
        assert first is not None  # read at once; the next joiners wait for the window
        joiners = [owner, collaborator, reader, UUID(int=0), UUID(int=0)]
        views = await asyncio.wait_for(
            asyncio.gather(*(reads.view(project, user, with_content=True) for user in joiners)),
            TIMEOUT + WINDOW,
        )
        for_private = await asyncio.wait_for(
            asyncio.gather(*(reads.view(private, u, with_content=True) for u in (owner, outsider))),
            TIMEOUT + WINDOW,
        )
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT)

    by_owner, by_collaborator, by_reader, by_visitor, by_other_visitor = views
    assert by_owner is not None
    assert by_reader is not None
    assert by_visitor is not None
    # One read for the editors of the window, one for its signed-out visitors; the
    # signed-in reader is read alone.
    assert by_owner is by_collaborator
    assert by_owner is not first
    assert by_visitor is by_other_visitor
    assert by_reader is not by_owner
    assert by_reader is not by_visitor
    assert by_owner.visibility == by_visitor.visibility  # in the same snapshot
    assert (by_owner.editable, by_reader.editable, by_visitor.editable) == (True, False, False)
    assert session_ids(by_owner) == set(sessions.values())
    assert session_ids(by_reader) == {sessions[reader]}
    assert session_ids(by_visitor) == set()
    for view in (by_owner, by_reader, by_visitor):
        assert len(view.view.style_guides) == 1
        for session in view.view.sessions:
            assert (session["ip_address"], session["user_agent"]) == (None, None)
    owners_view, outsiders_view = for_private
    assert owners_view is not None
    assert outsiders_view is None


def session_ids(shared: SharedView) -> set[UUID]:
    return {UUID(session["id"]) for session in shared.view.sessions}


async def test_a_shared_frame_is_the_frame_pydantic_writes_for_each_position(
    conn: asyncpg.Connection, make_user: UserFactory, database_dsn: str
) -> None:
    project, owner, *_ = await public_project(conn, make_user)
    pool = await asyncio.wait_for(
        asyncpg.create_pool(database_dsn, min_size=1, max_size=2), TIMEOUT
    )
    try:
        reads = SnapshotReads(pool, Router(pool, 100), WINDOW)
        shared = await asyncio.wait_for(reads.view(project, owner, with_content=True), TIMEOUT)
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT)
    assert shared is not None
    view = shared.view
    for position in ("0/16B3F28", "0/16B3F29:3", 'odd "position" \u00e9\n'):
        expected = Snapshot(
            project_id=project,
            access=Access.READ_WRITE,
            position=position,
            project=ProjectRow.model_validate(view.project),
            sitemaps=[SitemapRow.model_validate(r) for r in view.sitemaps],
            wireframes=[WireframeRow.model_validate(r) for r in view.wireframes],
            style_guides=[StyleGuideRow.model_validate(r) for r in view.style_guides],
            sessions=[SessionRow.model_validate(r) for r in view.sessions],
        )
        assert snapshot_frame(shared, project, position) == encode_frame(expected)


async def joined(client: WsClient, project: UUID) -> tuple[Frame, Frame]:
    """The `ok` and `snapshot` of a subscribe sent earlier with ref `join`."""
    ok = await client.recv_type("ok")
    assert (ok["ref"], ok["data"]["project_id"]) == ("join", str(project)), ok
    return ok, await client.recv_type("snapshot")


async def frames_until(client: WsClient, title: str) -> list[Frame]:
    """Every frame up to the sitemap change that sets `title`."""
    frames: list[Frame] = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame["type"] == "change" and (frame.get("new") or {}).get("title") == title:
            return frames


async def test_each_joiner_of_a_window_gets_its_rows_and_every_change_once(
    conn: asyncpg.Connection,
    make_user: UserFactory,
    gateway: Gateway,
    ws_client: Connect,
    database_dsn: str,
) -> None:
    project, owner, collaborator, reader, sessions = await public_project(conn, make_user)
    sitemap = await conn.fetchval("SELECT id FROM sitemaps WHERE project_id = $1", project)
    gateway.snapshots = SnapshotReads(gateway.pool, gateway.router, WINDOW)
    first = await ws_client()
    await first.auth(owner)
    await first.subscribe(project)  # read at once: the window starts
    clients = {}
    for user in (collaborator, reader):
        clients[user] = client = await ws_client()
        await client.auth(user)
    clients[UUID(int=0)] = visitor = await ws_client()
    reply = await visitor.request({"type": "auth", "token": mint_anon_key(SECRET, ttl_seconds=600)})
    assert reply["type"] == "ok", reply
    writer = await asyncio.wait_for(asyncpg.connect(database_dsn), TIMEOUT)
    try:
        # In progress while the window's snapshot is taken: it must follow as a change.
        pending = writer.transaction()
        await pending.start()
        await writer.execute("UPDATE sitemaps SET title = 'After' WHERE id = $1", sitemap)
        for client in clients.values():
            await client.send({"type": "subscribe", "project_id": str(project), "ref": "join"})
        # Committed while the joiners wait: in the snapshot or after it, once.
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'During' WHERE id = $1", project), TIMEOUT
        )
        snapshots = {user: await joined(client, project) for user, client in clients.items()}
        await pending.commit()
    finally:
        await asyncio.wait_for(writer.close(), TIMEOUT)
    await conn.execute("UPDATE sitemaps SET title = 'Last' WHERE id = $1", sitemap)

    expected_access = {collaborator: "read_write", reader: "read_only", UUID(int=0): "read_only"}
    expected_sessions = {
        collaborator: set(sessions.values()),
        reader: {sessions[reader]},
        UUID(int=0): set(),
    }
    for user, client in clients.items():
        ok, snapshot = snapshots[user]
        assert ok["data"]["access"] == snapshot["access"] == expected_access[user]
        assert {UUID(s["id"]) for s in snapshot["sessions"]} == expected_sessions[user]
        assert all(s["ip_address"] is None for s in snapshot["sessions"])
        assert [s["title"] for s in snapshot["sitemaps"]] == ["Map"]
        frames = await asyncio.wait_for(frames_until(client, "Last"), TIMEOUT)
        renames = [f for f in frames if f["type"] == "change" and f["entity"] == "project"]
        in_snapshot = snapshot["project"]["name"] == "During"
        assert len(renames) == (0 if in_snapshot else 1), (user, snapshot["project"], frames)
        titles = [f["new"]["title"] for f in frames if f.get("entity") == "sitemap"]
        assert titles == ["After", "Last"], (user, frames)
