"""Signed-out visitors (Supabase's anon key) read public projects (migration 0018):
over the native protocol, a read-only snapshot and its changes, without members-only
rows, shown in presence as anonymous viewers and capped by a setting; in SQL, the
`anon` role reads public projects and their content, nothing else."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from db.acting_user import acting_as
from gateway.edge.tokens import mint_anon_key
from tests.conftest import UserFactory
from tests.gateway_fixtures import SECRET, Connect, WsClient, make_project, make_sitemap

NOBODY = "00000000-0000-0000-0000-000000000000"


async def visitor(ws_client: Connect) -> WsClient:
    client = await ws_client()
    reply = await client.request({"type": "auth", "token": mint_anon_key(SECRET, ttl_seconds=600)})
    assert reply["type"] == "ok", reply
    assert reply["data"]["user_id"] == NOBODY
    return client


async def next_change(client: WsClient) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame["type"] == "change":
            return frame


async def test_a_visitor_reads_a_public_project_live_without_members_only_rows(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    public = await make_project(conn, owner, public=True, name="Open bakery")
    private = await make_project(conn, owner)
    await make_sitemap(conn, public, "Home")
    await conn.execute(
        "INSERT INTO builder_sessions (user_id, project_id, session_token, status)"
        " VALUES ($1, $2, 'tok-1', 'active')",
        owner,
        public,
    )
    client = await visitor(ws_client)

    ok, snapshot = await client.subscribe(public)

    assert ok["data"]["access"] == "read_only"
    assert snapshot is not None
    assert snapshot["project"]["name"] == "Open bakery"
    assert [s["title"] for s in snapshot["sitemaps"]] == ["Home"]
    assert snapshot["sessions"] == [], "builder sessions are for members"
    refused = await client.request({"type": "subscribe", "project_id": str(private)})
    assert (refused["type"], refused["code"]) in {("error", "forbidden"), ("error", "not_found")}

    await conn.execute(
        "INSERT INTO builder_sessions (user_id, project_id, session_token, status)"
        " VALUES ($1, $2, 'tok-2', 'active')",
        owner,
        public,
    )
    await conn.execute("UPDATE sitemaps SET title = 'Welcome' WHERE project_id = $1", public)
    change = await next_change(client)
    assert (change["entity"], change["new"]["title"]) == ("sitemap", "Welcome")


async def test_a_visitor_only_reads(ws_client: Connect, make_user: UserFactory) -> None:
    client = await visitor(ws_client)
    for frame in (
        {"type": "rpc", "method": "project.list", "params": {}},
        {"type": "presence.update", "project_id": NOBODY, "meta": {}},
        {"type": "subscribe_projects"},
    ):
        reply = await client.request(frame)
        assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
        assert "signed-in users" in reply["message"]
    await client.ping()


async def test_editors_see_visitors_as_anonymous_viewers(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner, public=True)
    editor = await ws_client()
    editor.presence = True
    await editor.auth(owner)
    await editor.subscribe(project)
    await editor.recv_type("presence.state")
    client = await visitor(ws_client)
    await client.subscribe(project)

    while True:
        diff = await editor.recv_type("presence.diff")
        if NOBODY in diff["joins"]:
            break
    (meta,) = diff["joins"][NOBODY]["metas"]
    assert meta["name"] is None


@pytest.mark.parametrize("gateway_overrides", [{"max_anonymous_connections": 1}])
async def test_visitors_are_capped_together(ws_client: Connect) -> None:
    await visitor(ws_client)
    second = await ws_client()
    await second.send({"type": "auth", "token": mint_anon_key(SECRET, ttl_seconds=600)})
    error = await second.expect_error("too_many_connections")
    assert "SITEBUILDER_MAX_ANONYMOUS_CONNECTIONS" in error["message"]
    assert await second.expect_closed() == (4009, "too_many_connections")


async def test_the_anon_role_reads_public_projects_and_nothing_else(
    make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """What PostgREST serves an anon key (supabase-js `.from(...)`): the same rule."""
    owner = await make_user()
    public = await make_project(conn, owner, public=True)
    private = await make_project(conn, owner)
    await make_sitemap(conn, public, "Shown")
    await make_sitemap(conn, private, "Hidden")
    async with acting_as(conn, None) as anon:
        projects = {row["id"] for row in await anon.fetch("SELECT id FROM projects")}
        titles = {row["title"] for row in await anon.fetch("SELECT title FROM sitemaps")}
    assert public in projects
    assert private not in projects
    assert "Shown" in titles
    assert "Hidden" not in titles
    for table in ("builder_sessions", "version_history"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with acting_as(conn, None) as anon:
                await anon.fetch(f"SELECT * FROM {table}")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with acting_as(conn, None) as anon:
            await anon.execute("UPDATE projects SET name = 'x' WHERE id = $1", public)
