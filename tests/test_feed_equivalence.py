"""Both change feeds, side by side on one database, tell subscribers the same story.

One scripted workload (inserts, updates, deletes, a cascade delete, a move between
projects, multi-row transactions, a rolled-back transaction, a 1 MB jsonb) runs once;
a gateway on the NOTIFY feed and a gateway on the replication feed each have a
subscriber, and both subscribers must receive the same changes (entity, op, project,
new, old) in the same order. Only positions and commit times may differ: they are
the feed's own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from pydantic import SecretStr
from websockets.asyncio.client import connect

from db.feed import ChangeFeed
from db.notify_feed import NotifyFeed
from db.replication_feed import ReplicationFeed
from gateway.app.serve import token_verifier
from gateway.app.server import Gateway
from gateway.presence.backends import open_presence
from gateway.settings import Settings
from tests.conftest import PUBLICATION, UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    WsClient,
    gateway_url,
    make_project,
    make_sitemap,
    make_style_guide,
    make_wireframe,
    open_pools,
    slot_for,
)
from tests.test_gateway_feed import recv_until

Frame = dict[str, Any]


@asynccontextmanager
async def running_gateway(settings: Settings, dsn: str, feed: ChangeFeed) -> AsyncIterator[Gateway]:
    pools = await open_pools(dsn, size=3)
    try:
        presence = open_presence(settings, dsn)
        verifier = token_verifier(settings)
        gateway = Gateway(settings, pools.requests, feed, verifier, presence, core_pool=pools.core)
        async with gateway.running():
            yield gateway
    finally:
        await asyncio.wait_for(pools.close(), 10)


async def subscriber(gateway: Gateway, user: UUID, projects: list[UUID]) -> WsClient:
    ws = await asyncio.wait_for(connect(gateway_url(gateway), max_size=None), TIMEOUT)
    client = WsClient(ws)
    await client.auth(user)
    for project in projects:
        await client.subscribe(project, snapshot=False)
    return client


async def workload(conn: asyncpg.Connection, owner: UUID, first: UUID, second: UUID) -> None:
    """Every kind of change a feed must carry, ending with a marker rename."""
    sitemap = await make_sitemap(conn, first, "Home")
    wireframe = await make_wireframe(conn, sitemap, "Hero")
    style_guide = await make_style_guide(conn, wireframe)
    await conn.execute(
        "UPDATE wireframes SET title = 'Hero v2', components = $2 WHERE id = $1",
        wireframe,
        ["nav", "hero", "footer"],
    )
    async with conn.transaction():  # several rows, several tables, one transaction
        extra = await make_sitemap(conn, first, "About")
        await conn.execute("UPDATE sitemaps SET title = 'Home v2' WHERE id = $1", sitemap)
        await conn.execute("UPDATE projects SET description = 'multi' WHERE id = $1", first)
    rolled_back = conn.transaction()
    await rolled_back.start()
    await conn.execute("UPDATE sitemaps SET title = 'never' WHERE id = $1", sitemap)
    await rolled_back.rollback()
    big = {f"c{i}": secrets.token_hex(512) for i in range(1000)}  # ~1 MB, random
    await conn.execute(
        "UPDATE style_guides SET components = $2::jsonb WHERE id = $1",
        style_guide,
        orjson.dumps(big).decode(),
    )
    await conn.execute("UPDATE sitemaps SET project_id = $2 WHERE id = $1", extra, second)
    await conn.execute("DELETE FROM style_guides WHERE id = $1", style_guide)
    doomed = await make_project(conn, owner)
    doomed_map = await make_sitemap(conn, doomed)
    await make_wireframe(conn, doomed_map)
    await conn.execute("UPDATE sitemaps SET project_id = $2 WHERE id = $1", doomed_map, second)
    await conn.execute("DELETE FROM projects WHERE id = $1", first)  # cascades
    await conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", second)


def story(frames: list[Frame]) -> list[tuple[Any, ...]]:
    """What a client learns from its frames, minus what is each feed's own."""
    return [
        (f["type"], f.get("entity"), f.get("op"), f.get("project_id"), f.get("new"), f.get("old"))
        for f in frames
    ]


def is_marker(frame: Frame) -> bool:
    return (
        frame.get("type") == "change"
        and frame["entity"] == "project"
        and (frame["new"] or {}).get("name") == "marker"
    )


async def test_notify_and_replication_deliver_the_same_changes(
    conn: asyncpg.Connection, database_dsn: str, make_user: UserFactory, tmp_path: Path
) -> None:
    owner = await make_user()
    first = await make_project(conn, owner, name="First")
    second = await make_project(conn, owner, name="Second")
    # The feeds are made here, not by `choose_feed`, so the NOTIFY triggers stay on
    # while the replication feed reads the WAL: both run at once, as in no deployment.
    settings = Settings(
        database_url=database_dsn, port=0, jwt_secret=SecretStr(SECRET), data_dir=tmp_path
    )
    replication = ReplicationFeed(
        database_dsn, slot=slot_for(database_dsn), publication=PUBLICATION
    )
    async with AsyncExitStack() as stack:
        notify_gateway = await stack.enter_async_context(
            running_gateway(settings, database_dsn, NotifyFeed(database_dsn))
        )
        replication_gateway = await stack.enter_async_context(
            running_gateway(settings, database_dsn, replication)
        )
        clients = [
            await subscriber(gateway, owner, [first, second])
            for gateway in (notify_gateway, replication_gateway)
        ]
        await workload(conn, owner, first, second)
        try:
            received = [await recv_until(client, is_marker, within=60) for client in clients]
        finally:
            for client in clients:
                await client.close()

    by_notify, by_replication = (story(frames) for frames in received)
    assert len(by_notify) > 20
    assert {entry[1] for entry in by_notify} >= {"project", "sitemap", "wireframe", "style-guide"}
    assert {entry[2] for entry in by_notify if entry[0] == "change"} == {
        "insert",
        "update",
        "delete",
    }
    assert ("unsubscribed", None, None, str(first), None, None) in by_notify
    assert by_notify == by_replication
