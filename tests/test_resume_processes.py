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
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from db.replication_stream import lsn_from_str
from protocol.rows import ProjectRow, SitemapRow
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    WsClient,
    make_project,
    make_sitemap,
    node_slot,
    open_client,
    slot_for,
)
from tests.support import REPO_ROOT, ServeProcess, cli_env

pytestmark = pytest.mark.hosted_postgres

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]

SITEMAPS = 4
WRITERS = 4
BURST = 2000  # sitemap updates committed by the writers (each also writes a version)
TAIL = 50  # updates committed after every client resumed: they must arrive live
STOP_AT = 400  # the gateway goes once this many updates are committed
SEEN_BEFORE_STOP = 20  # and every client has received at least this many
RESTART_TIMEOUT = 30.0  # a new process, its feed waiting for the slot to be released
DELIVERY_TIMEOUT = 45.0  # the whole burst, replayed and live
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(?P<port>\d+)/")


# Processes


@dataclass
class Gateway:
    """A serve process, its stderr drained in the background (the pipe must not fill)."""

    serving: ServeProcess
    drain: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.serving.port}/"

    def log(self) -> str:
        return "".join(self.serving.log)


async def _drain(serving: ServeProcess) -> None:
    with contextlib.suppress(AssertionError):  # raised at EOF: the process exited
        await serving.wait_for_log(r"(?!)")  # matches nothing: keeps every line


async def start_gateway(env: dict[str, str]) -> Gateway:
    """`serve --port 0`, once it listens; like ServeProcess.start, but the process is
    killed when it does not come up in time."""
    process = await asyncio.wait_for(
        asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.app.cli",
            "serve",
            "--port",
            "0",
            env=env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        ),
        TIMEOUT,
    )
    serving = ServeProcess(process)
    try:
        line = await asyncio.wait_for(serving.wait_for_log(LISTENING.pattern), RESTART_TIMEOUT)
    except BaseException:
        process.kill()
        await asyncio.wait_for(process.wait(), TIMEOUT)
        raise
    match = LISTENING.search(line)
    assert match is not None
    serving.port = int(match["port"])
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
    updates: int = 0  # sitemap updates among `changes`
    updates_before_stop: int = 0
    committed_at_resume: int = 0

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
                if is_change(frame, "sitemap", "update"):
                    self.updates += 1
                    if self.updates >= SEEN_BEFORE_STOP:
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
    stop_at: int = STOP_AT
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # stop_at rows committed

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
    if len(ledger.rows) >= ledger.stop_at:
        ledger.reached.set()


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
    assert tab.snapshot is not None
    assert not positions or positions[0] > tab.snapshot["position"], tab.name
    updates = tab.sitemap_updates()
    assert len(updates) == len(ledger), (
        f"{tab.name}: {len(updates)} sitemap updates received, {len(ledger)} committed"
    )
    for sitemap, first in snapshot_versions.items():
        got = [
            (f["new"]["version"], f["new"]["title"]) for f in updates if f["new"]["id"] == sitemap
        ]
        expected = ledger.versions_of(sitemap)
        assert [v for v, _ in expected] == list(range(first + 1, first + 1 + len(expected)))
        assert got == expected, f"{tab.name}: sitemap {sitemap} differs from its commits"
    # Each update's version record comes right after it, from the same transaction.
    for update, following in itertools.pairwise(tab.changes):
        if is_change(update, "sitemap", "update"):
            assert is_change(following, "version", "insert"), (tab.name, update, following)
            assert (following["new"]["entity_id"], following["new"]["version_number"]) == (
                update["new"]["id"],
                update["new"]["version"],
            )
            assert following["position"].split(".")[0] == update["position"].split(".")[0]


# 1 and 3. A burst, the gateway goes away in the middle, a new one takes over


def _follow_all(tabs: list[Tab], until: Predicate, within: float) -> list[asyncio.Task[str]]:
    return [asyncio.create_task(tab.follow(until, within)) for tab in tabs]


async def stop_following(
    readers: list[asyncio.Task[str]],
    writers: asyncio.Future[list[None]] | None,
    tabs: list[Tab],
) -> None:
    """A test's end, passed or not: readers and writers stopped, every tab closed."""
    for reader in readers:
        reader.cancel()
    if writers is not None:
        writers.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(writers, TIMEOUT)
    for tab in tabs:
        await tab.close()


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
    tabs = [Tab("owner", owner, project), Tab("owner-2", owner, project)]
    tabs.append(Tab("collaborator", collaborator, project))
    ledger = Ledger()
    first: Gateway | None = None
    second: Gateway | None = None
    writers: asyncio.Future[list[None]] | None = None
    readers: list[asyncio.Task[str]] = []
    try:
        first = await start_gateway(env)
        for tab in tabs:
            await tab.subscribe(first.url)
        snapshot_versions = {s["id"]: s["version"] for s in tabs[0].snapshot["sitemaps"]}  # type: ignore[index]
        assert all(
            {s["id"]: s["version"] for s in tab.snapshot["sitemaps"]} == snapshot_versions  # type: ignore[index]
            for tab in tabs
        )

        readers = _follow_all(tabs, project_named("marker"), DELIVERY_TIMEOUT)
        writers = asyncio.gather(
            *(write(database_dsn, sitemaps, w, BURST // WRITERS, ledger) for w in range(WRITERS))
        )
        waits = [ledger.reached.wait(), *(t.enough.wait() for t in tabs)]
        await asyncio.wait_for(asyncio.gather(*waits), 30)
        committed_at_stop = len(ledger)
        assert committed_at_stop < BURST, "the writers were done before the gateway went"
        if how == "SIGKILL":
            assert await kill_gateway(first) == -signal.SIGKILL
        else:
            assert await stop_gateway(first) == 0, first.log()
        assert await _gather(readers, TIMEOUT) == ["closed"] * len(tabs)
        committed_while_down = len(ledger)
        for tab in tabs:
            tab.updates_before_stop = tab.updates
        if how == "SIGKILL":
            assert all(tab.closes == [1006] for tab in tabs), [t.closes for t in tabs]
        else:
            assert all(tab.closes == [1012] for tab in tabs), [t.closes for t in tabs]
            assert all([f["type"] for f in tab.others] == ["closing"] for tab in tabs), [
                t.others for t in tabs
            ]

        second = await start_gateway(env)
        restarted_at = len(ledger)
        for tab in tabs:
            reply = await tab.resume(second.url, ledger.__len__)
            assert reply["data"]["resumed"] is True, (tab.name, tab.position, second.log())
            assert tab.committed_at_resume > tab.updates_before_stop  # it did miss some
        readers = _follow_all(tabs, project_named("marker"), DELIVERY_TIMEOUT)
        await asyncio.wait_for(writers, DELIVERY_TIMEOUT)
        for n in range(TAIL):  # after every resume: these go out live
            await retitle(conn, sitemaps[n % SITEMAPS], f"tail-{n}", ledger)
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project), TIMEOUT
        )
        assert await _gather(readers, DELIVERY_TIMEOUT) == ["done"] * len(tabs)
    finally:
        await stop_following(readers, writers, tabs)
        await discard(first)
        await discard(second)

    assert len(ledger) == BURST + TAIL
    for tab in tabs:
        # No reset, no second snapshot, no error: only SIGTERM's notice.
        assert [f["type"] for f in tab.others] == ([] if how == "SIGKILL" else ["closing"])
        assert_exactly_the_commits(tab, ledger, snapshot_versions)
    print(  # figures, for -s
        f"\n{how}: {committed_at_stop}/{BURST} updates committed when the gateway was told to "
        f"go, {committed_while_down} once it was gone, {restarted_at} when the new one listened"
    )
    retries = sum("cannot stream" in line for line in second.serving.log)
    print(f"  the new gateway waited for the slot {retries} time(s)")
    for tab in tabs:
        missed = tab.committed_at_resume - tab.updates_before_stop
        print(
            f"  {tab.name}: {tab.updates_before_stop} received before, {missed} missed and "
            f"replayed on resume, {tab.updates} in all"
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
        # Once the watcher has the marker's version, the gateway has recorded (and
        # forgotten) it all.
        marker_version = lambda f: (  # noqa: E731
            is_change(f, "version", "insert") and f["new"]["entity_type"] == "projects"
        )
        assert await watcher.follow(marker_version, 30) == "done"
        assert len(watcher.sitemap_updates()) == 50

        assert old.snapshot is not None
        fresh = await expect_reset_and_snapshot(
            Tab("again", owner, project), first.url, conn, old.snapshot["position"]
        )
        assert fresh["project"]["name"] == "marker"

        assert await kill_gateway(first) == -signal.SIGKILL
        second = await start_gateway(env)
        # A change committed now, seen by a new watcher: the new process has read the
        # slot up to it, so its rebuilt history is complete (and bounded) from here on.
        barrier = Tab("barrier", owner, project)
        await barrier.open(second.url)
        await barrier.client.subscribe(project, snapshot=False)  # type: ignore[union-attr]
        await asyncio.wait_for(
            conn.execute("UPDATE projects SET name = 'barrier' WHERE id = $1", project), TIMEOUT
        )
        assert await barrier.follow(project_named("barrier"), 30) == "done"
        await barrier.close()
        # The rebuilt history is bounded the same way: still a reset, still the truth.
        fresh = await expect_reset_and_snapshot(
            Tab("after-restart", owner, project), second.url, conn, old.snapshot["position"]
        )
        assert fresh["project"]["name"] == "barrier"
        # While the newest position the watcher holds resumes with just what followed it.
        latest = Tab("latest", owner, project, changes=list(watcher.changes))
        reply = await latest.resume(second.url, ledger.__len__)
        assert reply["data"]["resumed"] is True, (latest.position, second.log())
        assert await latest.follow(marker_version, 30) == "done"
        replayed = latest.changes[len(watcher.changes) :]
        assert [(f["entity"], f["op"]) for f in replayed] == [
            ("project", "update"),
            ("version", "insert"),
        ]
        assert replayed[0]["new"]["name"] == "barrier"
        assert replayed[0]["position"] > watcher.position
        assert latest.client is not None
        await latest.client.ping()  # and nothing else was queued
        await latest.close()
    finally:
        for tab in (old, watcher):
            await tab.close()
        await discard(first)
        await discard(second)


# A known defect, kept here as its reproduction


async def slot_confirmed(dsn: str, slot: str) -> str:
    conn = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        lsn = await asyncio.wait_for(
            conn.fetchval(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                slot,
            ),
            TIMEOUT,
        )
        return str(lsn)
    finally:
        await asyncio.wait_for(conn.close(), TIMEOUT)


async def test_snapshot_position_resumes_after_a_graceful_restart(
    tmp_path: Path, database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """A tab that got its snapshot, went offline before any change and comes back after
    a restart resumes with exactly the change it missed, or (the known limit below) is
    told to start over with a snapshot that has it: never a silent gap."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    env = serve_env(tmp_path, database_dsn)
    slot = node_slot(database_dsn)
    ledger = Ledger()
    offline, watcher = Tab("offline", owner, project), Tab("watcher", owner, project)
    first: Gateway | None = None
    second: Gateway | None = None
    try:
        first = await start_gateway(env)
        await offline.subscribe(first.url)
        await offline.close()
        await watcher.subscribe(first.url)
        await retitle(conn, sitemap, "after-snapshot", ledger)
        assert await watcher.follow(lambda f: is_change(f, "version"), 30) == "done"
        await watcher.close()
        assert await stop_gateway(first) == 0, first.log()
        confirmed = await slot_confirmed(database_dsn, slot)

        second = await start_gateway(env)
        reply = await offline.resume(second.url, ledger.__len__)
        assert offline.snapshot is not None
        if reply["data"]["resumed"] is False:
            # Known limit (docs/delivery.md): while nothing relevant is pending, the server
            # may confirm the slot past a snapshot position handed out before any change;
            # the restarted gateway then cannot prove nothing was missed and says so.
            snapshot_txn = int(offline.snapshot["position"].split("/")[1].split(".")[0], 16)
            assert lsn_from_str(confirmed) > snapshot_txn, (confirmed, offline.snapshot)
            assert await offline.follow(lambda f: f.get("type") == "snapshot", 30) == "done"
            assert [f["type"] for f in offline.others[-2:]] == ["reset", "snapshot"]
            assert offline.others[-1]["sitemaps"][0]["title"] == "after-snapshot"
            return
        assert await offline.follow(lambda f: is_change(f, "version"), 30) == "done"
        assert [f["new"]["title"] for f in offline.sitemap_updates()] == ["after-snapshot"]
    finally:
        for tab in (offline, watcher):
            await tab.close()
        await discard(first)
        await discard(second)
