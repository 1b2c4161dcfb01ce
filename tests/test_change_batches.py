"""A transaction's changes resolved as a batch: those whose parents the router
remembers without awaiting, the others by asking the database, all published in
commit order (gateway.core.dispatcher); and the router's bounded memory of parents.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from db.feed import Position
from gateway.core.router import BoundedMap
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    make_project,
    make_sitemap,
    make_wireframe,
)

Frame = dict[str, Any]


@pytest.fixture(params=["notify", "replication"])
def feed_kind(request: pytest.FixtureRequest) -> str:
    """The replication feed hands the dispatcher a transaction as one batch; the NOTIFY
    feed one change at a time."""
    return str(request.param)


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    """The router remembers two parents per table, so most of the transaction's
    wireframes must be routed through the database, some from memory."""
    return {"route_cache_size": 2}


async def changes_until_renamed(client: WsClient, name: str) -> list[Frame]:
    """The change frames received up to the project's rename to `name`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    frames: list[Frame] = []
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        if frame.get("type") != "change":
            continue
        frames.append(frame)
        if frame["entity"] == "project" and frame["new"]["name"] == name:
            return frames


async def test_a_batch_routed_partly_from_memory_partly_from_the_database_keeps_commit_order(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(4)]
    wireframes = [await make_wireframe(conn, s, f"W{i}") for i, s in enumerate(sitemaps)]
    client = await ws_client()
    await client.auth(owner)
    await client.subscribe(project, snapshot=False)
    # The last sitemap is remembered (it was routed last), the first ones are not.
    order = [wireframes[3], wireframes[0], wireframes[3], wireframes[1], wireframes[2]]
    async with conn.transaction():
        for number, wireframe in enumerate(order):
            await conn.execute(
                "UPDATE wireframes SET title = $2 WHERE id = $1", wireframe, f"T{number}"
            )
    await conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project)

    received = await changes_until_renamed(client, "marker")

    # From the transaction's first change on (the rows' inserts may come before it).
    first = next(n for n, f in enumerate(received) if f["new"] and f["new"].get("title") == "T0")
    frames = received[first:-1]

    updates = [
        (frame["new"]["id"], frame["new"]["title"])
        for frame in frames
        if frame["entity"] == "wireframe" and frame["op"] == "update"
    ]
    assert updates == [(str(wireframe), f"T{n}") for n, wireframe in enumerate(order)]
    positions = [frame["position"] for frame in frames]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    # The versions the updates recorded are routed through the same parents.
    versions = {f["new"]["entity_id"] for f in frames if f["entity"] == "version"}
    assert versions == {str(w) for w in order}
    await client.close()


def test_the_router_memory_keeps_what_was_used_lately_and_stays_bounded() -> None:
    remembered = BoundedMap(4)
    keys = [uuid4() for _ in range(6)]
    parent = uuid4()
    for key in keys[:2]:
        remembered.put(key, parent)
    assert remembered.get(keys[0]) == parent
    for key in keys[2:]:
        remembered.put(key, parent)
        remembered.get(keys[0])  # in use: never forgotten
    assert len(remembered) <= 4
    assert remembered.get(keys[0]) == parent
    assert remembered.get(keys[-1]) == parent
    assert remembered.get(keys[1]) is None  # neither used nor added since two generations


def test_the_router_memory_updates_a_parent_in_place() -> None:
    remembered = BoundedMap(2)
    key, first, second = uuid4(), uuid4(), uuid4()
    remembered.put(key, first)
    remembered.put(key, second)
    assert remembered.get(key) == second
    assert len(remembered) == 1
    missing: UUID = uuid4()
    assert remembered.get(missing) is None


def test_a_position_s_text_is_its_own_whatever_positions_were_written_before() -> None:
    """Position text reuses its transaction's prefix: never another epoch's."""
    texts = [
        str(Position(epoch, txn, index))
        for epoch, txn, index in [("r1", 5, 1), ("r10", 5, 2), ("r1", 5, 3), ("n1", 6, 0)]
    ]
    assert texts == [
        "r1/0000000000000005.000001",
        "r10/0000000000000005.000002",
        "r1/0000000000000005.000003",
        "n1/0000000000000006.000000",
    ]
    assert [Position.parse(text) for text in texts[:2]] == [
        Position("r1", 5, 1),
        Position("r10", 5, 2),
    ]
