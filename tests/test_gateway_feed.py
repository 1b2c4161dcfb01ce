"""The change feed end to end: real PostgreSQL writes reach real websocket subscribers.

Writes are made like psql would make them (the superuser `conn`, or separate
connections), and every assertion is about frames a client actually receives.
Negative checks ("nothing more arrives") use a ping round trip as a barrier: the
gateway writes frames in order, so if the reply to a ping is the next frame, nothing
was queued before it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.app.server import Gateway
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    gateway_url,
    make_project,
    make_sitemap,
    make_style_guide,
    make_wireframe,
)

pytestmark = pytest.mark.hosted_postgres


@pytest.fixture(params=["notify", "replication"])
def feed_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both change feeds: clients must not tell them apart."""
    return str(request.param)


Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


# Helpers


async def recv_until(client: WsClient, done: Predicate, within: float = TIMEOUT) -> list[Frame]:
    """Every frame up to and including the first one `done` accepts (bounded in total)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    frames: list[Frame] = []
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        frames.append(frame)
        if done(frame):
            return frames


def change_of(entity: str, op: str | None = None, row_id: UUID | None = None) -> Predicate:
    """Accepts `change` frames of `entity` (and `op`, and the row `row_id`, if given)."""

    def accept(frame: Frame) -> bool:
        if frame.get("type") != "change" or frame.get("entity") != entity:
            return False
        if op is not None and frame["op"] != op:
            return False
        if row_id is not None:
            row = frame["new"] or frame["old"]
            return bool(row["id"] == str(row_id))
        return True

    return accept


def changes(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.get("type") == "change"]


def row_id(frame: Frame) -> str:
    row = frame["new"] or frame["old"]
    return str(row["id"])


def assert_positions_increase(frames: list[Frame]) -> None:
    positions = [f["position"] for f in changes(frames)]
    assert all(a < b for a, b in itertools.pairwise(positions)), positions


async def connected(ws_client: Connect, user: UUID) -> WsClient:
    client = await ws_client()
    await client.auth(user)
    return client


async def subscribe_forbidden(client: WsClient, project_id: UUID) -> None:
    reply = await client.request({"type": "subscribe", "project_id": str(project_id)})
    assert reply["type"] == "error", reply
    assert reply["code"] == "forbidden", reply


async def make_session(conn: asyncpg.Connection, user: UUID, project_id: UUID) -> UUID:
    session_id: UUID = await conn.fetchval(
        "INSERT INTO builder_sessions (user_id, project_id, session_token) "
        "VALUES ($1, $2, $3) RETURNING id",
        user,
        project_id,
        f"secret-{uuid4().hex}",
    )
    return session_id


async def rename_project(conn: asyncpg.Connection, project_id: UUID, name: str) -> None:
    await conn.execute("UPDATE projects SET name = $2 WHERE id = $1", project_id, name)


def project_named(name: str) -> Predicate:
    return lambda f: change_of("project", "update")(f) and f["new"]["name"] == name


# 1. Delivery and access


async def test_update_reaches_owner_and_collaborator_not_stranger(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Both members see the edit (then its version); a non-member may not subscribe."""
    owner, collaborator, stranger = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    wireframe = await make_wireframe(conn, await make_sitemap(conn, project), title="Before")
    members = [await connected(ws_client, owner), await connected(ws_client, collaborator)]
    for member in members:
        ok, _ = await member.subscribe(project, snapshot=False)
        assert ok["data"]["access"] == "read_write"
    outsider = await connected(ws_client, stranger)
    await subscribe_forbidden(outsider, project)

    await conn.execute("UPDATE wireframes SET title = 'After' WHERE id = $1", wireframe)

    for member in members:
        frames = await recv_until(
            member,
            lambda f: change_of("version")(f) and f["new"]["entity_id"] == str(wireframe),
        )
        updates = [i for i, f in enumerate(frames) if change_of("wireframe", "update")(f)]
        assert len(updates) == 1, frames
        update = frames[updates[0]]
        assert update["project_id"] == str(project)
        assert update["old"]["title"] == "Before"
        assert update["new"]["title"] == "After"
        assert updates[0] < len(frames) - 1, "the version arrived before the wireframe change"
    await outsider.ping()


async def test_public_project_streams_read_only_to_strangers(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Anyone may follow a public project, read-only."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    sitemap = await make_sitemap(conn, project)
    reader = await connected(ws_client, stranger)
    ok, snapshot = await reader.subscribe(project)
    assert ok["data"]["access"] == "read_only"
    assert snapshot is not None
    assert snapshot["access"] == "read_only"

    await conn.execute("UPDATE sitemaps SET title = 'Public edit' WHERE id = $1", sitemap)

    frames = await recv_until(reader, change_of("sitemap", "update", sitemap))
    assert frames[-1]["new"]["title"] == "Public edit"


async def test_public_reader_gets_only_rows_it_may_read(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Sessions and versions are members-only in PostgreSQL; the stream must agree."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    reader = await connected(ws_client, stranger)
    _, snapshot = await reader.subscribe(project)
    assert snapshot is not None

    await make_session(conn, owner, project)
    sitemap = await make_sitemap(conn, project)
    await rename_project(conn, project, "marker")

    frames = await recv_until(reader, project_named("marker"))
    assert any(change_of("sitemap", "insert", sitemap)(f) for f in frames)
    leaked = [f for f in changes(frames) if f["entity"] in ("session", "version")]
    assert leaked == [], leaked


# 2. Snapshots


async def test_subscribe_with_snapshot_sends_ok_then_full_state(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The snapshot holds the project's whole tree and its active sessions only."""
    owner = await make_user()
    project = await make_project(conn, owner, name="Snap")
    sitemap = await make_sitemap(conn, project)
    wireframe = await make_wireframe(conn, sitemap)
    style_guide = await make_style_guide(conn, wireframe)
    active = await make_session(conn, owner, project)
    finished = await make_session(conn, owner, project)
    await conn.execute("UPDATE builder_sessions SET status = 'completed' WHERE id = $1", finished)
    client = await connected(ws_client, owner)

    ok, snapshot = await client.subscribe(project)

    assert ok["data"] == {"project_id": str(project), "access": "read_write"}
    assert snapshot is not None
    assert snapshot["project_id"] == str(project)
    assert snapshot["project"]["name"] == "Snap"
    assert [s["id"] for s in snapshot["sitemaps"]] == [str(sitemap)]
    assert [w["id"] for w in snapshot["wireframes"]] == [str(wireframe)]
    assert [g["id"] for g in snapshot["style_guides"]] == [str(style_guide)]
    assert [s["id"] for s in snapshot["sessions"]] == [str(active)]
    assert all("session_token" not in s for s in snapshot["sessions"])
    await client.ping()


async def test_subscribe_without_snapshot_sends_only_ok(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """`snapshot: false` means no snapshot frame at all."""
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await connected(ws_client, owner)

    ok, snapshot = await client.subscribe(project, snapshot=False)

    assert ok["data"]["access"] == "read_write"
    assert snapshot is None
    await client.ping()


# 3. Revocation


async def test_removed_collaborator_is_unsubscribed_and_gets_nothing_more(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Losing access ends the subscription before the change that revoked it."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    sitemap = await make_sitemap(conn, project)
    owner_client = await connected(ws_client, owner)
    member = await connected(ws_client, collaborator)
    await owner_client.subscribe(project, snapshot=False)
    await member.subscribe(project, snapshot=False)

    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", project)

    gone = await member.recv_type("unsubscribed", timeout=2.0)
    assert gone["project_id"] == str(project)
    assert gone["reason"] == "access_revoked"
    await recv_until(owner_client, change_of("project", "update", project))
    await conn.execute("UPDATE sitemaps SET title = 'After revoke' WHERE id = $1", sitemap)
    await recv_until(owner_client, change_of("sitemap", "update", sitemap))
    await member.ping()


async def test_public_reader_is_unsubscribed_when_project_goes_private(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Turning `is_public` off revokes strangers' read access at once."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    sitemap = await make_sitemap(conn, project)
    owner_client = await connected(ws_client, owner)
    reader = await connected(ws_client, stranger)
    await owner_client.subscribe(project, snapshot=False)
    await reader.subscribe(project, snapshot=False)

    await conn.execute("UPDATE projects SET is_public = false WHERE id = $1", project)

    gone = await reader.recv_type("unsubscribed", timeout=2.0)
    assert gone["reason"] == "access_revoked"
    await recv_until(owner_client, change_of("project", "update", project))
    await conn.execute("UPDATE sitemaps SET title = 'Private now' WHERE id = $1", sitemap)
    await recv_until(owner_client, change_of("sitemap", "update", sitemap))
    await reader.ping()


async def test_project_delete_sends_delete_then_unsubscribed(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Subscribers learn of the delete itself before their subscription ends."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    clients = [await connected(ws_client, owner), await connected(ws_client, collaborator)]
    for client in clients:
        await client.subscribe(project, snapshot=False)

    await conn.execute("DELETE FROM projects WHERE id = $1", project)

    for client in clients:
        frames = await recv_until(client, lambda f: f["type"] == "unsubscribed")
        deletes = [f for f in frames if change_of("project", "delete", project)(f)]
        assert len(deletes) == 1, frames
        assert frames[-1]["reason"] == "access_revoked"
        await client.ping()


# 4. Routing


async def test_every_table_routes_to_its_project_only(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Children name only their parent; each still reaches its project's subscriber."""
    owner, other_owner = await make_user(), await make_user()
    project = await make_project(conn, owner)
    other = await make_project(conn, other_owner)
    watcher = await connected(ws_client, owner)
    bystander = await connected(ws_client, other_owner)
    await watcher.subscribe(project, snapshot=False)
    await bystander.subscribe(other, snapshot=False)

    sitemap = await make_sitemap(conn, project)
    wireframe = await make_wireframe(conn, sitemap)
    style_guide = await make_style_guide(conn, wireframe)
    session = await make_session(conn, owner, project)
    await conn.execute("UPDATE sitemaps SET title = 'S2' WHERE id = $1", sitemap)
    await conn.execute("UPDATE wireframes SET title = 'W2' WHERE id = $1", wireframe)
    await conn.execute("UPDATE style_guides SET title = 'G2' WHERE id = $1", style_guide)
    await conn.execute("UPDATE builder_sessions SET current_step = 'x' WHERE id = $1", session)
    await conn.execute("DELETE FROM builder_sessions WHERE id = $1", session)
    await conn.execute("DELETE FROM style_guides WHERE id = $1", style_guide)
    await conn.execute("DELETE FROM wireframes WHERE id = $1", wireframe)
    await conn.execute("DELETE FROM sitemaps WHERE id = $1", sitemap)
    await rename_project(conn, project, "marker")

    frames = await recv_until(watcher, project_named("marker"))
    seen = {(f["entity"], f["op"], row_id(f)) for f in changes(frames)}
    for entity, row in (
        ("sitemap", sitemap),
        ("wireframe", wireframe),
        ("style-guide", style_guide),
        ("session", session),
    ):
        for op in ("insert", "update", "delete"):
            assert (entity, op, str(row)) in seen, (entity, op, seen)
    versioned = {f["new"]["entity_id"] for f in changes(frames) if f["entity"] == "version"}
    assert {str(sitemap), str(wireframe), str(style_guide)} <= versioned
    assert all(f["project_id"] == str(project) for f in changes(frames))
    for frame in changes(frames):
        if frame["entity"] == "session":
            for row in (frame["new"], frame["old"]):
                assert row is None or "session_token" not in row, frame
    assert_positions_increase(frames)
    await bystander.ping()


# 5. Cascades


async def test_cascaded_delete_reaches_subscriber_for_every_child(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Children's parents are gone when their deletes arrive; they must still be routed."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps, wireframes, style_guides = [], [], []
    for _ in range(2):
        sitemaps.append(await make_sitemap(conn, project))
        for _ in range(2):
            wireframes.append(await make_wireframe(conn, sitemaps[-1]))
            style_guides.append(await make_style_guide(conn, wireframes[-1]))
    client = await connected(ws_client, owner)
    await client.subscribe(project)

    await conn.execute("DELETE FROM projects WHERE id = $1", project)

    frames = await recv_until(client, lambda f: f["type"] == "unsubscribed")
    deleted = {(f["entity"], row_id(f)) for f in changes(frames) if f["op"] == "delete"}
    expected = {("project", str(project))}
    expected |= {("sitemap", str(s)) for s in sitemaps}
    expected |= {("wireframe", str(w)) for w in wireframes}
    expected |= {("style-guide", str(g)) for g in style_guides}
    assert expected <= deleted, expected - deleted
    await client.ping()


# 6. Moves


async def test_moving_a_sitemap_deletes_it_here_and_inserts_it_there(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """A row that changes project is a delete for the old one, an insert for the new."""
    owner = await make_user()
    source, target = await make_project(conn, owner), await make_project(conn, owner)
    sitemap = await make_sitemap(conn, source)
    old_side, new_side = await connected(ws_client, owner), await connected(ws_client, owner)
    await old_side.subscribe(source, snapshot=False)
    await new_side.subscribe(target, snapshot=False)

    await conn.execute("UPDATE sitemaps SET project_id = $2 WHERE id = $1", sitemap, target)

    removed = await recv_until(old_side, change_of("sitemap", row_id=sitemap))
    assert removed[-1]["op"] == "delete"
    assert removed[-1]["project_id"] == str(source)
    added = await recv_until(new_side, change_of("sitemap", row_id=sitemap))
    assert added[-1]["op"] == "insert"
    assert added[-1]["project_id"] == str(target)
    assert added[-1]["new"]["project_id"] == str(target)


async def test_after_a_move_children_follow_the_sitemap(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Once moved, a sitemap's wireframes and versions belong to the new project only."""
    owner = await make_user()
    source, target = await make_project(conn, owner), await make_project(conn, owner)
    sitemap = await make_sitemap(conn, source)
    wireframe = await make_wireframe(conn, sitemap)
    old_side, new_side = await connected(ws_client, owner), await connected(ws_client, owner)
    await old_side.subscribe(source, snapshot=False)
    await new_side.subscribe(target, snapshot=False)

    await conn.execute("UPDATE sitemaps SET project_id = $2 WHERE id = $1", sitemap, target)
    await conn.execute("UPDATE wireframes SET title = 'Moved' WHERE id = $1", wireframe)
    await rename_project(conn, target, "marker")

    frames = await recv_until(new_side, project_named("marker"))
    assert any(change_of("wireframe", "update", wireframe)(f) for f in frames), frames
    assert any(change_of("version")(f) and f["new"]["entity_id"] == str(sitemap) for f in frames), (
        frames
    )
    await recv_until(old_side, change_of("sitemap", "delete", sitemap))
    await old_side.ping()


# 7-8. Ordering under concurrent writers


async def write_titles(
    dsn: str, sitemaps: list[UUID], writer: int, count: int, started: asyncio.Event
) -> None:
    """`count` single-row autocommit updates on its own connection, as a client app would."""
    writer_conn = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        for n in range(count):
            target = sitemaps[(writer + n) % len(sitemaps)]
            await writer_conn.execute(
                "UPDATE sitemaps SET title = $2 WHERE id = $1", target, f"w{writer}-{n}"
            )
            if n == count // 5:
                started.set()
    finally:
        await writer_conn.close()


async def run_writers(
    dsn: str, sitemaps: list[UUID], writers: int, each: int
) -> asyncio.Future[list[None]]:
    started = asyncio.Event()
    tasks = asyncio.gather(*(write_titles(dsn, sitemaps, w, each, started) for w in range(writers)))
    await asyncio.wait_for(started.wait(), 30)
    return tasks


async def test_snapshot_and_stream_join_without_gap_or_duplicate(
    conn: asyncpg.Connection,
    database_dsn: str,
    make_user: UserFactory,
    ws_client: Connect,
) -> None:
    """A subscriber joining mid-write sees every version exactly once: in the snapshot
    or as a change, never both, never neither."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(4)]
    client = await connected(ws_client, owner)

    writers = await run_writers(database_dsn, sitemaps, writers=4, each=50)
    _, snapshot = await client.subscribe(project)
    await asyncio.wait_for(writers, 60)
    await conn.execute("UPDATE sitemaps SET title = 'marker' WHERE id = $1", sitemaps[0])

    frames = await recv_until(
        client,
        lambda f: change_of("sitemap", "update", sitemaps[0])(f) and f["new"]["title"] == "marker",
        within=30,
    )
    assert snapshot is not None
    start = {s["id"]: s["version"] for s in snapshot["sitemaps"]}
    final = dict(
        await conn.fetch("SELECT id::text, version FROM sitemaps WHERE project_id = $1", project)
    )
    for sitemap in map(str, sitemaps):
        streamed = [
            f["new"]["version"]
            for f in changes(frames)
            if change_of("sitemap")(f) and row_id(f) == sitemap
        ]
        run = [start[sitemap], *streamed]
        assert run == list(range(start[sitemap], final[sitemap] + 1)), (sitemap, run)
    assert_positions_increase(frames)


async def test_concurrent_updates_reach_every_subscriber_once_in_one_order(
    conn: asyncpg.Connection,
    database_dsn: str,
    make_user: UserFactory,
    ws_client: Connect,
) -> None:
    """200 updates from 4 writers: each subscriber gets each once, all in the same order."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(4)]
    before = dict(
        await conn.fetch("SELECT id::text, version FROM sitemaps WHERE project_id = $1", project)
    )
    clients = [await connected(ws_client, owner) for _ in range(3)]
    for client in clients:
        await client.subscribe(project, snapshot=False)

    writers = await run_writers(database_dsn, sitemaps, writers=4, each=50)
    await asyncio.wait_for(writers, 60)
    await rename_project(conn, project, "marker")

    received = [await recv_until(c, project_named("marker"), within=30) for c in clients]
    final = dict(
        await conn.fetch("SELECT id::text, version FROM sitemaps WHERE project_id = $1", project)
    )
    expected = {(s, v) for s in map(str, sitemaps) for v in range(before[s] + 1, final[s] + 1)}
    assert len(expected) == 200
    for frames in received:
        updates = [
            (row_id(f), f["new"]["version"])
            for f in changes(frames)
            if change_of("sitemap", "update")(f)
        ]
        assert len(updates) == len(set(updates)) == 200
        assert set(updates) == expected
        assert_positions_increase(frames)
    orders = [
        [(f["entity"], f["position"], row_id(f)) for f in changes(frames)] for frames in received
    ]
    assert orders[0] == orders[1] == orders[2]


# 9. Large rows


async def test_megabyte_style_guide_arrives_intact(
    conn: asyncpg.Connection, make_user: UserFactory, gateway: Gateway
) -> None:
    """Over NOTIFY's 8000-byte limit the change travels via realtime_overflow, in full."""
    owner = await make_user()
    project = await make_project(conn, owner)
    wireframe = await make_wireframe(conn, await make_sitemap(conn, project))
    style_guide = await make_style_guide(conn, wireframe)
    components = {f"component-{i}": {"css": f"{i:08d}" * 125, "n": i} for i in range(1000)}
    assert len(orjson.dumps(components)) > 1_000_000
    ws = await asyncio.wait_for(connect(gateway_url(gateway), max_size=None), TIMEOUT)
    client = WsClient(ws)
    try:
        await client.auth(owner)
        await client.subscribe(project, snapshot=False)

        await conn.execute(
            "UPDATE style_guides SET components = $2::jsonb WHERE id = $1",
            style_guide,
            orjson.dumps(components).decode(),
        )

        frames = await recv_until(client, change_of("style-guide", "update", style_guide))
        assert frames[-1]["new"]["components"] == components
    finally:
        await client.close()


async def large_style_guide(
    conn: asyncpg.Connection, owner: UUID
) -> tuple[UUID, UUID, dict[str, str]]:
    """A project of `owner` with a style guide whose `components` (~110 KB, random, so
    it cannot be compressed below the TOAST threshold) PostgreSQL stores out of line:
    (project, style guide, components)."""
    project = await make_project(conn, owner)
    wireframe = await make_wireframe(conn, await make_sitemap(conn, project))
    style_guide = await make_style_guide(conn, wireframe)
    components = {f"c{i}": secrets.token_hex(64) for i in range(800)}
    assert len(orjson.dumps(components)) > 100_000
    await conn.execute(
        "UPDATE style_guides SET components = $2::jsonb WHERE id = $1",
        style_guide,
        orjson.dumps(components).decode(),
    )
    return project, style_guide, components


async def test_large_value_left_unchanged_by_an_update_arrives_whole(
    conn: asyncpg.Connection, make_user: UserFactory, gateway: Gateway
) -> None:
    """Replication leaves large unchanged (TOASTed) values out of an UPDATE; the
    client still gets the whole row, old and new, with `components` intact."""
    owner = await make_user()
    project, style_guide, components = await large_style_guide(conn, owner)
    ws = await asyncio.wait_for(connect(gateway_url(gateway), max_size=None), TIMEOUT)
    client = WsClient(ws)
    try:
        await client.auth(owner)
        await client.subscribe(project, snapshot=False)

        await conn.execute(
            """UPDATE style_guides SET colors = '{"primary": "#123456"}' WHERE id = $1""",
            style_guide,
        )

        frames = await recv_until(client, change_of("style-guide", "update", style_guide))
        change = frames[-1]
        assert change["new"]["colors"] == {"primary": "#123456"}
        assert change["new"]["components"] == components
        assert change["old"]["components"] == components
    finally:
        await client.close()


async def test_large_project_data_left_unchanged_arrives_whole(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """On `projects` the server really does leave the unchanged value out of the
    replicated row (style guides' versioning trigger rewrites it): filled all the same."""
    owner = await make_user()
    project = await make_project(conn, owner)
    data = {f"k{i}": secrets.token_hex(32) for i in range(200)}  # ~15 KB, random
    await conn.execute(
        "UPDATE projects SET data = $2::jsonb WHERE id = $1", project, orjson.dumps(data).decode()
    )
    client = await connected(ws_client, owner)
    await client.subscribe(project, snapshot=False)

    await rename_project(conn, project, "Renamed")

    frames = await recv_until(client, project_named("Renamed"))
    assert frames[-1]["new"]["data"] == data
    assert frames[-1]["old"]["data"] == data


# 10. Slow consumers


@pytest.mark.parametrize("gateway_overrides", [{"max_outbound_bytes": 65_536}])
async def test_slow_consumer_is_closed_and_others_keep_receiving(
    conn: asyncpg.Connection, make_user: UserFactory, gateway: Gateway, ws_client: Connect
) -> None:
    """A client that stops reading is cut off with 4008 instead of growing memory."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    normal = await connected(ws_client, owner)
    await normal.subscribe(project, snapshot=False)
    slow = WsClient(await asyncio.wait_for(connect(gateway_url(gateway)), TIMEOUT))
    try:
        await slow.auth(owner)
        await slow.subscribe(project, snapshot=False)
        slow.ws.transport.pause_reading()
        closes = "sitebuilder_slow_consumer_closes_total"
        payload = "x" * 100_000
        published = 0
        for round_ in range(60):
            for n in range(5):
                await conn.execute(
                    "UPDATE sitemaps SET title = $2, pages = $3::jsonb WHERE id = $1",
                    sitemap,
                    f"r{round_}-{n}",
                    orjson.dumps({"blob": payload, "n": n}).decode(),
                )
            published += 5
            await recv_until(
                normal,
                lambda f, r=round_: (
                    change_of("sitemap", "update", sitemap)(f) and f["new"]["title"] == f"r{r}-4"
                ),
            )
            if (gateway.metrics.registry.get_sample_value(closes) or 0) >= 1:
                break
        assert (gateway.metrics.registry.get_sample_value(closes) or 0) >= 1, published

        slow.ws.transport.resume_reading()
        code = await asyncio.wait_for(drain_until_closed(slow), 8)
        assert code == 4008

        await conn.execute("UPDATE sitemaps SET title = 'after' WHERE id = $1", sitemap)
        frames = await recv_until(normal, change_of("sitemap", "update", sitemap))
        assert frames[-1]["new"]["title"] == "after"
    finally:
        slow.ws.transport.resume_reading()
        await slow.close()


async def drain_until_closed(client: WsClient) -> int | None:
    """Read whatever was buffered until the close; the close code the server sent."""
    while True:
        try:
            await client.ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


# 11. Feed interruption


@pytest.mark.parametrize("feed_kind", ["notify"])
async def test_lost_listen_connection_resets_subscribers(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Changes may be lost while NOTIFY reconnects: subscribers must start over."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    client = await connected(ws_client, owner)
    await client.subscribe(project)
    listeners = await conn.fetch(
        "SELECT pid, query FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND query ILIKE 'LISTEN%'"
    )
    assert len(listeners) == 1, listeners

    assert await conn.fetchval("SELECT pg_terminate_backend($1)", listeners[0]["pid"])

    reset = await client.recv_type("reset", timeout=10)
    assert reset["project_id"] == str(project)
    assert reset["reason"] == "feed_interrupted"
    snapshot = await client.recv_type("snapshot", timeout=10)
    assert [s["id"] for s in snapshot["sitemaps"]] == [str(sitemap)]
    await conn.execute("UPDATE sitemaps SET title = 'after reset' WHERE id = $1", sitemap)
    frames = await recv_until(client, change_of("sitemap", "update", sitemap))
    assert frames[-1]["new"]["title"] == "after reset"


@pytest.mark.parametrize("feed_kind", ["replication"])
async def test_lost_replication_connection_loses_nothing(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The slot keeps what was committed while the stream reconnects: subscribers see
    every change once, and no reset."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    client = await connected(ws_client, owner)
    await client.subscribe(project)
    senders = await conn.fetch(
        "SELECT active_pid FROM pg_replication_slots WHERE database = current_database()"
    )
    assert len(senders) == 1, senders

    assert await conn.fetchval("SELECT pg_terminate_backend($1)", senders[0]["active_pid"])
    for n in range(5):
        await conn.execute("UPDATE sitemaps SET title = $2 WHERE id = $1", sitemap, f"t{n}")
    await rename_project(conn, project, "marker")

    frames = await recv_until(client, project_named("marker"), within=30)
    assert [f["type"] for f in frames if f["type"] != "change"] == []
    titles = [f["new"]["title"] for f in changes(frames) if change_of("sitemap", "update")(f)]
    assert titles == [f"t{n}" for n in range(5)]
    assert_positions_increase(frames)
