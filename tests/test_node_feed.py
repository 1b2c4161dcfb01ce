"""One feed reader per node (db.node_feed) and its workers' feeds (db.worker_feed).

Workers receive the very same events with the same positions; one that starts late
catches up from the reader's buffer (what it would have read from the slot); one that
reconnects gets exactly what followed the last transaction it had.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

import asyncpg
import pytest

from db.feed import FeedEvent, FeedResumed, RowChange, RowChanges, TransactionEnd
from db.node_feed import NodeFeed
from db.replication_feed import ReplicationFeed
from db.worker_feed import WorkerFeed
from tests.conftest import PUBLICATION, UserFactory
from tests.gateway_fixtures import TIMEOUT, make_project, slot_for

Story = list[tuple[str, str, str]]


async def _no_lag() -> int | None:
    return None


def worker(path: Path) -> WorkerFeed:
    return WorkerFeed(str(path), name="replication", fence=ReplicationFeed.fence, lag=_no_lag)


async def resumed(events: AsyncGenerator[FeedEvent, None]) -> FeedResumed:
    event = await asyncio.wait_for(anext(events), TIMEOUT)
    assert isinstance(event, FeedResumed), event
    return event


async def transactions(events: AsyncGenerator[FeedEvent, None], count: int) -> Story:
    """The next `count` transactions: (position, table, project name) per row change."""
    story: Story = []
    ends = 0
    while ends < count:
        event = await asyncio.wait_for(anext(events), TIMEOUT)
        if isinstance(event, RowChange | RowChanges):
            for change in event.changes if isinstance(event, RowChanges) else [event]:
                assert change.new is not None
                story.append((str(change.position), change.table, str(change.new.get("name"))))
        else:
            assert isinstance(event, TransactionEnd), event
            ends += 1
    return story


@pytest.fixture
async def node(database_dsn: str, tmp_path: Path) -> AsyncGenerator[Path]:
    """A reader of the test database's slot, serving on a socket: its path."""
    feed = ReplicationFeed(database_dsn, slot=slot_for(database_dsn), publication=PUBLICATION)
    path = tmp_path / "feed.sock"
    reader = NodeFeed(feed, str(path), max_bytes=10_000_000, max_age_seconds=60)
    reading = asyncio.create_task(reader.run())
    try:
        await asyncio.wait_for(reader.wait_listening(), TIMEOUT)
        yield path
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(reading, TIMEOUT)


async def projects(conn: asyncpg.Connection, owner: object, *names: str) -> None:
    for name in names:
        await make_project(conn, owner, name=name)  # type: ignore[arg-type]


async def test_workers_share_the_events_late_ones_catch_up_and_reconnects_miss_nothing(
    node: Path, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    first, second, late = worker(node), worker(node), worker(node)
    first_events, second_events = first.events(), second.events()
    floor = (await resumed(first_events)).floor
    assert (await resumed(second_events)).floor == floor

    await projects(conn, owner, "one", "two", "three")
    seen = await transactions(first_events, 3)
    assert [name for _, table, name in seen if table == "projects"] == ["one", "two", "three"]
    assert await transactions(second_events, 3) == seen
    assert first.connected

    # A worker that starts now is given everything the node holds, not just what follows.
    late_events = late.events()
    joined = await resumed(late_events)
    assert (joined.floor, joined.lossless) == (floor, False)
    assert await transactions(late_events, 3) == seen

    # A reconnect asks for what followed the last transaction it had: nothing repeats.
    await first_events.aclose()
    await projects(conn, owner, "four")
    first_events = first.events()
    again = await resumed(first_events)
    assert (str(again.floor), again.lossless) == (seen[-1][0], True)
    caught_up = await transactions(first_events, 1)
    assert [name for _, table, name in caught_up if table == "projects"] == ["four"]
    assert await transactions(second_events, 1) == caught_up
    for events in (first_events, second_events, late_events):
        await events.aclose()
