"""Resuming across real gateway processes: killed or stopped mid-burst, then restarted.

`sitebuilder-gateway serve` runs as a subprocess on the test's database and its own
replication slot. Browser-like clients follow a project while writers commit a burst
of sitemap edits on their own connections; the gateway is killed (SIGKILL) or stopped
(SIGTERM) while the burst runs, a new process starts on the same database and slot,
and every client reconnects and resumes from the last position it holds. What each
client has in the end, before and after the restart together, must be exactly what
was committed: every version of every row once, in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from protocol.rows import ProjectRow, SitemapRow
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    WsClient,
    make_project,
    make_sitemap,
    open_client,
    slot_for,
)
from tests.support import ServeProcess, cli_env

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]

SITEMAPS = 4
WRITERS = 4
BURST = 2000  # sitemap updates committed by the writers (each also writes a version)
TAIL = 50  # updates committed after every client resumed: they must arrive live
SEEN_BEFORE_STOP = 40  # sitemap updates each connected client has before the gateway goes
RESTART_TIMEOUT = 30.0  # a new process, its feed waiting for the slot to be released
DELIVERY_TIMEOUT = 45.0  # the whole burst, replayed and live


# Processes


@dataclass
class Gateway:
    """A serve process, its stderr drained in the background (the pipe must not fill)."""

    serving: ServeProcess
    drain: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.serving.port}/"

    @property
    def pid(self) -> int:
        return self.serving.process.pid

    def log(self) -> str:
        return "".join(self.serving.log)


async def _drain(serving: ServeProcess) -> None:
    with contextlib.suppress(AssertionError):  # raised at EOF: the process exited
        await serving.wait_for_log(r"(?!)")  # matches nothing: keeps every line


async def start_gateway(env: dict[str, str]) -> Gateway:
    serving = await asyncio.wait_for(ServeProcess.start(env), RESTART_TIMEOUT)
    return Gateway(serving, asyncio.create_task(_drain(serving)))


async def kill_gateway(gateway: Gateway) -> int:
    """SIGKILL, and wait until the process is gone (its sockets closed by the kernel)."""
    gateway.serving.kill()
    status = await asyncio.wait_for(gateway.serving.process.wait(), TIMEOUT)
    await asyncio.wait_for(gateway.drain, TIMEOUT)
    return status


async def stop_gateway(gateway: Gateway) -> int:
    """SIGTERM, and wait for a graceful exit."""
    gateway.drain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gateway.drain
    return await gateway.serving.stop(signal.SIGTERM)


async def discard(gateway: Gateway | None) -> None:
    """For finally blocks: whatever happened, the process is gone afterwards."""
    if gateway is None:
        return
    gateway.serving.kill()
    with contextlib.suppress(TimeoutError, ProcessLookupError):
        await asyncio.wait_for(gateway.serving.process.wait(), TIMEOUT)
    gateway.drain.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, AssertionError):
        await asyncio.wait_for(gateway.drain, TIMEOUT)


async def wait_slot_released(dsn: str, slot: str) -> None:
    """Until PostgreSQL no longer counts a walsender on `slot` (bounded)."""
    conn = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        for _ in range(100):
            active = await asyncio.wait_for(
                conn.fetchval("SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot),
                TIMEOUT,
            )
            if not active:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"slot {slot} still active 5 s after its gateway died")
    finally:
        await asyncio.wait_for(conn.close(), TIMEOUT)


def serve_env(tmp_path: Path, database_dsn: str, **settings: str) -> dict[str, str]:
    return cli_env(
        database_url=database_dsn,
        data_dir=str(tmp_path),
        jwt_secret=SECRET,
        feed="replication",
        replication_slot=slot_for(database_dsn),
        **settings,
    )


# Clients


def is_change(frame: Frame, entity: str, op: str | None = None) -> bool:
    return (
        frame.get("type") == "change"
        and frame.get("entity") == entity
        and (op is None or frame.get("op") == op)
    )


def project_named(name: str) -> Predicate:
    return lambda f: is_change(f, "project", "update") and f["new"]["name"] == name


@dataclass
class Tab:
    """One browser tab following the project, across connections and gateway processes."""

    name: str
    user: UUID
    project: UUID
    snapshot: Frame | None = None
    changes: list[Frame] = field(default_factory=list)  # every change, all connections
    others: list[Frame] = field(default_factory=list)  # frames besides changes and replies
    closes: list[int] = field(default_factory=list)  # close code of each lost connection
    client: WsClient | None = None
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    updates_before_stop: int = 0
    committed_at_resume: int = 0
    resume_reply: Frame | None = None

    @property
    def position(self) -> str:
        """Where to resume: the last change received, else the snapshot."""
        if self.changes:
            return str(self.changes[-1]["position"])
        assert self.snapshot is not None
        return str(self.snapshot["position"])

    def sitemap_updates(self) -> list[Frame]:
        return [f for f in self.changes if is_change(f, "sitemap", "update")]

    async def open(self, url: str) -> WsClient:
        self.client = await open_client(url)
        await self.client.auth(self.user)
        return self.client

    async def subscribe(self, url: str) -> None:
        client = await self.open(url)
        _, self.snapshot = await client.subscribe(self.project)

    async def resume(self, url: str, committed: Callable[[], int]) -> Frame:
        """Reconnect and subscribe from `position`; retries while the feed reconnects."""
        client = await self.open(url)
        for _ in range(100):
            reply = await client.request(
                {"type": "subscribe", "project_id": str(self.project), "since": self.position}
            )
            if reply["type"] == "error" and reply["code"] == "unavailable":
                await asyncio.sleep(0.1)  # the new process's feed is not streaming yet
                continue
            assert reply["type"] == "ok", reply
            self.committed_at_resume = committed()
            self.resume_reply = reply
            return reply
        raise AssertionError(f"{self.name}: the feed stayed unavailable for 10 s")

    async def follow(self, until: Predicate, within: float) -> str:
        """Collect frames until one `until` accepts ("done") or the connection is lost
        ("closed"); the whole wait is bounded by `within`."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                frame = await self.client.recv(max(0.01, deadline - loop.time()))
            except ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd is not None else 1006)
                return "closed"
            if frame.get("type") == "change":
                self.changes.append(frame)
                if len(self.sitemap_updates()) >= SEEN_BEFORE_STOP:
                    self.enough.set()
            else:
                self.others.append(frame)
            if until(frame):
                return "done"

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
                await self.client.close()


# Writers


@dataclass
class Ledger:
    """Every committed sitemap update: (sitemap id, version, title), per row in order."""

    rows: list[tuple[str, int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def versions_of(self, sitemap: str) -> list[tuple[int, str]]:
        return sorted((v, t) for s, v, t in self.rows if s == sitemap)


async def retitle(conn: asyncpg.Connection, sitemap: UUID, title: str, ledger: Ledger) -> None:
    version = await asyncio.wait_for(
        conn.fetchval(
            "UPDATE sitemaps SET title = $2 WHERE id = $1 RETURNING version", sitemap, title
        ),
        TIMEOUT,
    )
    ledger.rows.append((str(sitemap), version, title))


async def write(dsn: str, sitemaps: list[UUID], writer: int, count: int, ledger: Ledger) -> None:
    """`count` autocommit updates on the writer's own connection, round-robin over rows."""
    conn = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        for n in range(count):
            target = sitemaps[(writer + n) % len(sitemaps)]
            await retitle(conn, target, f"w{writer}-{n}", ledger)
    finally:
        await asyncio.wait_for(conn.close(), TIMEOUT)


# Checks


def assert_exactly_the_commits(tab: Tab, ledger: Ledger, snapshot_versions: dict[str, int]) -> None:
    """The tab's changes are the ledger: every version of every row once, in order."""
    positions = [f["position"] for f in tab.changes]
    regressions = [(a, b) for a, b in itertools.pairwise(positions) if not a < b]
    assert not regressions, f"{tab.name}: positions not strictly increasing: {regressions[:5]}"
    assert all(p > tab.snapshot["position"] for p in positions[:1]), tab.name  # type: ignore[index]
    updates = tab.sitemap_updates()
    assert len(updates) == len(ledger), (
        f"{tab.name}: {len(updates)} sitemap updates received, {len(ledger)} committed"
    )
    for sitemap, first in snapshot_versions.items():
        got = [(f["new"]["version"], f["new"]["title"]) for f in updates if f["new"]["id"] == sitemap]
        expected = ledger.versions_of(sitemap)
        assert [v for v, _ in expected] == list(range(first + 1, first + 1 + len(expected)))
        assert got == expected, f"{tab.name}: sitemap {sitemap} differs from its commits"
    # Each update's version record follows it, in the same transaction.
    versions = [
        (f["new"]["entity_id"], f["new"]["version_number"])
        for f in tab.changes
        if is_change(f, "version", "insert") and f["new"]["entity_type"] == "sitemaps"
    ]
    assert versions == [(f["new"]["id"], f["new"]["version"]) for f in updates], tab.name


# 1 and 3. A burst, the gateway goes away in the middle, a new one takes over


async def _follow_all(tabs: list[Tab], until: Predicate, within: float) -> list[asyncio.Task[str]]:
    return [asyncio.create_task(tab.follow(until, within)) for tab in tabs]


async def _gather(tasks: list[asyncio.Task[str]], within: float) -> list[str]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks), within))


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_gateway_gone_mid_burst_clients_resume_with_exactly_the_commits(
    tmp_path: Path,
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
    how: str,
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator], name="Bakery")
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(SITEMAPS)]
    env = serve_env(tmp_path, database_dsn)
    live = [Tab("owner", owner, project), Tab("owner-2", owner, project)]
    live.append(Tab("collaborator", collaborator, project))
    offline = Tab("offline", owner, project)  # subscribed, then closed before the burst
    tabs = [*live, offline]
    ledger = Ledger()
    first: Gateway | None = None
    second: Gateway | None = None
    writers: asyncio.Future[list[None]] | None = None
    readers: list[asyncio.Task[str]] = []
    try:
        first = await start_gateway(env)
        for tab in tabs:
            await tab.subscribe(first.url)
        await offline.close()
        snapshot_versions = {s["id"]: s["version"] for s in live[0].snapshot["sitemaps"]}  # type: ignore[index]
        assert all(
            {s["id"]: s["version"] for s in tab.snapshot["sitemaps"]} == snapshot_versions  # type: ignore[index]
            for tab in tabs
        )

        readers = await _follow_all(live, project_named("marker"), DELIVERY_TIMEOUT)
        writers = asyncio.gather(
            *(
                write(database_dsn, sitemaps, w, BURST // WRITERS, ledger)
                for w in range(WRITERS)
            )
        )
        await asyncio.wait_for(asyncio.gather(*(t.enough.wait() for t in live)), 30)
        committed_at_stop = len(ledger)
        for tab in live:
            tab.updates_before_stop = len(tab.sitemap_updates())
        if how == "SIGKILL":
            assert await kill_gateway(first) == -signal.SIGKILL
        else:
            assert await stop_gateway(first) == 0, first.log()
        assert await _gather(readers, TIMEOUT) == ["closed"] * len(live)
        committed_while_down = len(ledger)
        assert committed_at_stop < BURST, "the writers were done before the gateway went"
        if how == "SIGKILL":
            assert all(tab.closes == [1006] for tab in live), [t.closes for t in live]
        else:
            assert all(tab.closes == [1012] for tab in live), [t.closes for t in live]
            assert all(
                [f["type"] for f in tab.others] == ["closing"] for tab in live
            ), [t.others for t in live]
        await wait_slot_released(database_dsn, slot_for(database_dsn))

        second = await start_gateway(env)
        restarted_at = len(ledger)
        for tab in tabs:
            reply = await tab.resume(second.url, ledger.__len__)
            assert reply["data"]["resumed"] is True, (tab.name, tab.position, second.log())
        readers = await _follow_all(tabs, project_named("marker"), DELIVERY_TIMEOUT)
        await asyncio.wait_for(writers, DELIVERY_TIMEOUT)
        for n in range(TAIL):  # after every resume: these go out live
            await retitle(conn, sitemaps[n % SITEMAPS], f"tail-{n}", ledger)
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project), TIMEOUT
        )
        assert await _gather(readers, DELIVERY_TIMEOUT) == ["done"] * len(tabs)
    finally:
        for reader in readers:
            reader.cancel()
        if writers is not None:
            writers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writers, TIMEOUT)
        for tab in tabs:
            await tab.close()
        await discard(first)
        await discard(second)

    assert len(ledger) == BURST + TAIL
    for tab in tabs:
        assert not [f for f in tab.others if f["type"] in ("reset", "snapshot")], tab.name
        assert_exactly_the_commits(tab, ledger, snapshot_versions)
    print(
        f"\n{how}: {committed_at_stop} of {BURST} committed when the gateway went, "
        f"{committed_while_down} when it was gone, {restarted_at} when the new one listened"
    )
    for tab in tabs:
        missed = tab.committed_at_resume - tab.updates_before_stop
        print(
            f"  {tab.name}: {tab.updates_before_stop} updates before, "
            f"{missed} committed meanwhile (replayed), {len(tab.sitemap_updates())} in all"
        )


# 2. Older than the history: an honest reset and a true snapshot


def sitemaps_as_stored(text: str) -> list[dict[str, Any]]:
    return [SitemapRow.model_validate(row).model_dump(mode="json") for row in orjson.loads(text)]


async def assert_true_snapshot(snapshot: Frame, conn: asyncpg.Connection, project: UUID) -> None:
    stored = await asyncio.wait_for(
        conn.fetchval(
            "SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.id), '[]')::text"
            " FROM sitemaps s WHERE s.project_id = $1",
            project,
        ),
        TIMEOUT,
    )
    received = [SitemapRow.model_validate(r).model_dump(mode="json") for r in snapshot["sitemaps"]]
    assert received == sitemaps_as_stored(stored)
    row = await asyncio.wait_for(
        conn.fetchval("SELECT to_jsonb(p)::text FROM projects p WHERE p.id = $1", project), TIMEOUT
    )
    assert ProjectRow.model_validate(snapshot["project"]) == ProjectRow.model_validate(
        orjson.loads(row)
    )


async def expect_reset_and_snapshot(
    tab: Tab, url: str, conn: asyncpg.Connection, since: str
) -> Frame:
    client = await tab.open(url)
    reply = await client.request(
        {"type": "subscribe", "project_id": str(tab.project), "since": since}
    )
    assert reply["type"] == "ok", reply
    assert reply["data"]["resumed"] is False, reply
    reset = await client.recv_type("reset")
    assert (reset["project_id"], reset["reason"]) == (str(tab.project), "history_unavailable")
    snapshot = await client.recv_type("snapshot")
    await assert_true_snapshot(snapshot, conn, tab.project)
    await client.ping()  # and nothing else was queued
    return snapshot


async def test_position_older_than_the_history_gets_reset_and_a_true_snapshot_across_restart(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemaps = [await make_sitemap(conn, project, f"S{i}") for i in range(2)]
    env = serve_env(tmp_path, database_dsn, history_max_per_project="5")
    ledger = Ledger()
    old, watcher = Tab("old", owner, project), Tab("watcher", owner, project)
    first: Gateway | None = None
    second: Gateway | None = None
    try:
        first = await start_gateway(env)
        await old.subscribe(first.url)
        await old.close()
        await watcher.subscribe(first.url)
        for n in range(50):
            await retitle(conn, sitemaps[n % 2], f"t{n}", ledger)
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project), TIMEOUT
        )
        # Once the watcher has the marker, the gateway has recorded (and forgotten) it all.
        assert await watcher.follow(project_named("marker"), 30) == "done"
        assert len(watcher.sitemap_updates()) == 50

        assert old.snapshot is not None
        fresh = await expect_reset_and_snapshot(
            Tab("again", owner, project), first.url, conn, old.snapshot["position"]
        )
        assert fresh["project"]["name"] == "marker"

        assert await kill_gateway(first) == -signal.SIGKILL
        await wait_slot_released(database_dsn, slot_for(database_dsn))
        second = await start_gateway(env)
        # The rebuilt history is bounded the same way: still a reset, still the truth.
        await expect_reset_and_snapshot(
            Tab("after-restart", owner, project), second.url, conn, old.snapshot["position"]
        )
        # While the newest position the watcher holds resumes with nothing to replay.
        latest = Tab("latest", owner, project, changes=list(watcher.changes))
        reply = await latest.resume(second.url, ledger.__len__)
        assert reply["data"]["resumed"] is True, (latest.position, second.log())
        assert latest.client is not None
        await latest.client.ping()
        await latest.close()
    finally:
        for tab in (old, watcher):
            await tab.close()
        await discard(first)
        await discard(second)
