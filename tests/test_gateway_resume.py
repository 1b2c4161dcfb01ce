"""Resuming a subscription from a position: exactly what was missed, or an honest reset.

A client that lost its connection sends `subscribe {since: <last position>}` on a
new one. The gateway replays the changes after that position from its history and
goes live with no gap and no duplicate; when it cannot (position too old, from an
earlier feed epoch, or not a position at all) it sends `reset` and a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, WsClient, make_project, make_sitemap
from tests.test_gateway_feed import (
    change_of,
    changes,
    connected,
    recv_until,
    rename_project,
    row_id,
    run_writers,
)

pytestmark = pytest.mark.hosted_postgres


@pytest.fixture(params=["notify", "replication"])
def feed_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both change feeds: clients must not tell them apart."""
    return str(request.param)


Frame = dict[str, Any]


async def resume(client: WsClient, project: UUID, since: str) -> Frame:
    reply = await client.request({"type": "subscribe", "project_id": str(project), "since": since})
    assert reply["type"] == "ok", reply
    return reply


def titles(frames: list[Frame]) -> list[str]:
    return [f["new"]["title"] for f in changes(frames) if change_of("sitemap", "update")(f)]


async def retitle(conn: asyncpg.Connection, sitemap: UUID, count: int, prefix: str) -> None:
    for n in range(count):
        await conn.execute("UPDATE sitemaps SET title = $2 WHERE id = $1", sitemap, f"{prefix}{n}")


async def test_resume_after_disconnect_gets_exactly_the_missed_changes(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    first = await connected(ws_client, owner)
    await first.subscribe(project, snapshot=False)
    await retitle(conn, sitemap, 1, "seen-")
    seen = await recv_until(first, change_of("sitemap", "update"))
    last_position = changes(seen)[-1]["position"]
    await first.close()

    await retitle(conn, sitemap, 500, "missed-")
    await rename_project(conn, project, "marker")

    second = await connected(ws_client, owner)
    reply = await resume(second, project, last_position)
    assert reply["data"]["resumed"] is True
    frames = await recv_until(second, change_of("project", "update"), within=30)
    assert titles(frames) == [f"missed-{n}" for n in range(500)]
    positions = [f["position"] for f in changes(frames)]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert positions[0] > last_position
    # And live from there on.
    await retitle(conn, sitemap, 1, "live-")
    live = await recv_until(second, change_of("sitemap", "update"))
    assert titles(live) == ["live-0"]


async def test_resume_from_a_snapshot_position_replays_what_followed_it(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project, "at-snapshot")
    first = await connected(ws_client, owner)
    _, snapshot = await first.subscribe(project)
    assert snapshot is not None
    await first.close()
    await retitle(conn, sitemap, 3, "after-")
    await rename_project(conn, project, "marker")

    second = await connected(ws_client, owner)
    await resume(second, project, snapshot["position"])
    frames = await recv_until(second, change_of("project", "update"))
    assert titles(frames) == ["after-0", "after-1", "after-2"]


async def test_resume_while_writers_commit_has_no_gap_and_no_duplicate(
    conn: asyncpg.Connection,
    database_dsn: str,
    make_user: UserFactory,
    ws_client: Connect,
) -> None:
    """Changes committed while the replay is prepared arrive once: replayed or live."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(4)]
    first = await connected(ws_client, owner)
    _, snapshot = await first.subscribe(project)
    assert snapshot is not None
    await first.close()
    before = dict(
        await conn.fetch("SELECT id::text, version FROM sitemaps WHERE project_id = $1", project)
    )

    writers = await run_writers(database_dsn, sitemaps, writers=4, each=50)
    second = await connected(ws_client, owner)
    await resume(second, project, snapshot["position"])
    await asyncio.wait_for(writers, 60)
    await rename_project(conn, project, "marker")

    frames = await recv_until(second, change_of("project", "update"), within=30)
    updates = [(row_id(f), f["new"]["version"]) for f in changes(frames) if change_of("sitemap")(f)]
    final = dict(
        await conn.fetch("SELECT id::text, version FROM sitemaps WHERE project_id = $1", project)
    )
    expected = {(s, v) for s, start in before.items() for v in range(start + 1, final[s] + 1)}
    assert len(updates) == len(set(updates)) == 200
    assert set(updates) == expected


@pytest.mark.parametrize("gateway_overrides", [{"history_max_per_project": 10}])
async def test_position_older_than_the_history_gets_reset_and_a_true_snapshot(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    first = await connected(ws_client, owner)
    _, snapshot = await first.subscribe(project)
    assert snapshot is not None
    await first.close()
    await retitle(conn, sitemap, 30, "t")
    await rename_project(conn, project, "marker")
    watcher = await connected(ws_client, owner)  # waits until the gateway has it all
    await watcher.subscribe(project, snapshot=False)
    await retitle(conn, sitemap, 1, "final")
    await recv_until(watcher, change_of("sitemap", "update"))

    second = await connected(ws_client, owner)
    reply = await resume(second, project, snapshot["position"])
    assert reply["data"]["resumed"] is False
    reset = await second.recv_type("reset")
    assert (reset["project_id"], reset["reason"]) == (str(project), "history_unavailable")
    fresh = await second.recv_type("snapshot")
    assert fresh["project"]["name"] == "marker"
    stored = await conn.fetch(
        "SELECT id::text, title, version FROM sitemaps WHERE project_id = $1", project
    )
    assert [(s["id"], s["title"], s["version"]) for s in fresh["sitemaps"]] == [
        tuple(row) for row in stored
    ]
    await second.ping()  # nothing else was queued


@pytest.mark.parametrize(
    "since",
    [
        "not-a-position",
        "n19ab5e2f1c0/0000000000000001.000001",  # an epoch this gateway never had
        "r0000000000000001/00000000ffffffff.000001",
    ],
)
async def test_unknown_positions_get_reset_and_snapshot(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect, since: str
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner, name="Now")
    client = await connected(ws_client, owner)
    reply = await resume(client, project, since)
    assert reply["data"] == {"project_id": str(project), "access": "read_write", "resumed": False}
    reset = await client.recv_type("reset")
    assert reset["reason"] == "history_unavailable"
    assert since in reset["message"]
    snapshot = await client.recv_type("snapshot")
    assert snapshot["project"]["name"] == "Now"


async def test_a_position_is_no_key_and_gaining_access_replays_nothing_from_before(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """A stranger resuming gets `forbidden`. Once the project is public, a resume from
    before that gets `reset` and a snapshot: what was written while it was private (a
    secret, even one removed since) is not replayed, in `new` or in `old`."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    member = await connected(ws_client, owner)
    _, snapshot = await member.subscribe(project)
    assert snapshot is not None
    await retitle(conn, sitemap, 1, "secret")
    await conn.execute("UPDATE sitemaps SET title = 'nothing here' WHERE id = $1", sitemap)

    outsider = await connected(ws_client, stranger)
    reply = await outsider.request(
        {"type": "subscribe", "project_id": str(project), "since": snapshot["position"]}
    )
    assert (reply["type"], reply["code"]) == ("error", "forbidden")

    await conn.execute("UPDATE projects SET is_public = true WHERE id = $1", project)
    await recv_until(member, change_of("project", "update"))
    reader = await connected(ws_client, stranger)
    reply = await resume(reader, project, snapshot["position"])
    assert reply["data"]["access"] == "read_only"
    assert reply["data"]["resumed"] is False
    reset = await reader.recv_type("reset")
    assert "could not read the project" in reset["message"]
    fresh = await reader.recv_type("snapshot")
    assert [s["title"] for s in fresh["sitemaps"]] == ["nothing here"]
    await reader.ping()  # nothing else came before the pong


async def test_public_readers_get_no_members_only_changes_replayed(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    sitemap = await make_sitemap(conn, project)
    reader = await connected(ws_client, stranger)
    _, snapshot = await reader.subscribe(project)
    assert snapshot is not None
    await reader.close()
    await retitle(conn, sitemap, 1, "x")
    await rename_project(conn, project, "marker")

    again = await connected(ws_client, stranger)
    reply = await resume(again, project, snapshot["position"])
    assert (reply["data"]["access"], reply["data"]["resumed"]) == ("read_only", True)
    frames = await recv_until(
        again,
        lambda f: (
            f.get("type") == "change" and f["entity"] == "project" and f["new"]["name"] == "marker"
        ),
    )
    assert {f["entity"] for f in changes(frames)} == {"sitemap", "project"}
