"""What each change feed costs writers and how fast it delivers: `python -m loadtest.feed_cost`.

An embedded PostgreSQL in a temporary directory is migrated and given a user, a few
projects and their sitemaps. The modes:

- none: the triggers of both feeds off and nobody listening (the baseline);
- notify: the NOTIFY triggers on and a db.notify_feed.NotifyFeed draining its events;
- replication: the actor trigger on and a db.replication_feed.ReplicationFeed draining
  its events from a slot of its own, confirming each transaction as it ends.

Commit rate: W writers (a process of their own, one connection each) commit
single-row UPDATEs of their own sitemaps back to back, for N seconds per mode, split
into short windows with the modes' order rotated each round (a shared machine's
speed drifts by tens of percent within a minute; rotation spreads that over all
modes). For a feed, the row changes it yields meanwhile are counted (two per commit:
the sitemap and the version_history row its update adds). Then, per feed, its backlog
drain (the consumer held back while the writers go flat out, then let go) and its
latency: one writer commits at a fixed rate for N seconds and each change's latency
is the time the feed yielded its RowChange minus the time the writer's commit
returned (both CLOCK_MONOTONIC, matched by the row's unique title).

Writers run as the superuser (no row-level security) with request.jwt.claims set for
the session, like a signed-in editor behind PostgREST: the NOTIFY payload then names
the actor and the replication feed's actor trigger writes its logical message in
every transaction (--anonymous: no claims, no message). The server runs with
wal_level=logical and REPLICA IDENTITY FULL in every mode, the baseline included.
Figures on a small shared machine are noisy: they are printed, never checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import secrets
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop

from db.embedded import EmbeddedPostgres
from db.feed import (
    ChangeFeed,
    FeedInterrupted,
    FeedResumed,
    RowChange,
    RowChanges,
    TransactionEnd,
)
from db.feed_triggers import NOTIFY_TRIGGERS, REPLICATION_TRIGGERS, TABLES, use_feed_triggers
from db.migrations import Migrator, load_migrations
from db.notify_feed import NotifyFeed
from db.replication_feed import ReplicationFeed
from db.replication_stream import drop_slot

PUBLICATION = "sitebuilder_realtime"
MODES = ("none", "notify", "replication")
PROJECTS = 4
SITEMAPS_PER_WRITER = 8
UPDATE = "UPDATE public.sitemaps SET title = $2 WHERE id = $1"
FEED_TIMEOUT = 60.0  # longest wait for a feed to deliver what was committed
BURST_SECONDS = 3.0  # flat-out writing while the feed holds back
QUIET_NS = 150_000_000  # no row change for this long: the feed has delivered everything

Job = dict[str, Any]


# The writers: a process of their own, so the feed's Python work in this process
# never competes with theirs for one interpreter (it still competes for the cores).


def _writer_process(pipe: Connection) -> None:
    """Run the jobs the pipe brings until it brings None or closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        while True:
            try:
                job = pipe.recv()
            except EOFError:
                return
            if job is None:
                return
            try:
                result = runner.run(_run_job(job))
            except Exception as error:
                result = {"error": repr(error)}
            pipe.send(result)


async def _run_job(job: Job) -> Job:
    count = job["writers"] if job["kind"] == "flat" else 1
    conns = [await _writer_conn(job["dsn"], job["claims"]) for _ in range(count)]
    try:
        if job["kind"] == "flat":
            return await _flat_out(conns, job["ids"], job["seconds"], job["tag"])
        return await _paced(conns[0], job["ids"], job["rate"], job["seconds"], job["tag"])
    finally:
        for conn in conns:
            await conn.close()


async def _writer_conn(dsn: str, claims: str | None) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    if claims is not None:
        # Session-wide, so every autocommit UPDATE runs as the signed-in user.
        await conn.execute("SELECT set_config('request.jwt.claims', $1, false)", claims)
    return conn


async def _flat_out(
    conns: list[asyncpg.Connection], ids: list[str], seconds: float, tag: str
) -> Job:
    """Every writer commits UPDATEs of its own sitemaps back to back until the deadline."""
    started = time.monotonic_ns()
    deadline = started + int(seconds * 1e9)

    async def write(number: int, conn: asyncpg.Connection) -> tuple[int, int]:
        mine = ids[number :: len(conns)] or ids
        done = 0
        while time.monotonic_ns() < deadline:
            await conn.execute(UPDATE, mine[done % len(mine)], f"{tag}{number}.{done}")
            done += 1
        return done, time.monotonic_ns()

    results = await asyncio.gather(*(write(n, conn) for n, conn in enumerate(conns)))
    return {
        "commits": sum(done for done, _ in results),
        "started_ns": started,
        "ended_ns": max(ended for _, ended in results),
    }


async def _paced(
    conn: asyncpg.Connection, ids: list[str], rate: float, seconds: float, tag: str
) -> Job:
    """One writer commits at `rate` per second; when each commit returned (title = tag + i)."""
    interval = 1e9 / rate
    started = time.monotonic_ns()
    returned: list[int] = []
    for number in range(int(rate * seconds)):
        delay = started + int(number * interval) - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        await conn.execute(UPDATE, ids[number % len(ids)], f"{tag}{number}")
        returned.append(time.monotonic_ns())
    return {"returned_ns": returned, "started_ns": started, "ended_ns": time.monotonic_ns()}


class Writers:
    """The writer process, seen from here."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_writer_process, args=(child,), name="feed_cost-writers", daemon=True
        )
        self._process.start()
        child.close()

    async def run(self, job: Job) -> Job:
        self._pipe.send(job)
        result: Job = await asyncio.to_thread(self._pipe.recv)
        if "error" in result:
            raise RuntimeError(f"writers failed: {result['error']}")
        return result

    def stop(self, *, abort: bool) -> None:
        if not abort and self._process.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send(None)
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._pipe.close()


# The feed's side.


@dataclass
class Tap:
    """What the consumer saw: when each row change came, when each tagged title came,
    and how many of those named another actor than the writers' user."""

    actor: uuid.UUID | None
    prefix: str = "\0"
    wrong_actor: int = 0
    row_ns: list[int] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    expected: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    interruptions: list[str] = field(default_factory=list)
    slot_lag: int | None = None

    def __post_init__(self) -> None:
        self.flowing.set()

    def begin(self, prefix: str) -> None:
        self.prefix = prefix
        self.row_ns = []
        self.seen = {}
        self.expected = 0
        self.complete.clear()

    def expect(self, titles: int) -> None:
        self.expected = titles
        if len(self.seen) >= titles:
            self.complete.set()

    def row(self, change: RowChange) -> None:
        now = time.monotonic_ns()
        self.row_ns.append(now)
        if change.table == "sitemaps" and change.new is not None:
            title = change.new.get("title")
            if isinstance(title, str) and title.startswith(self.prefix):
                self.seen[title] = now
                if change.actor != self.actor:
                    self.wrong_actor += 1
                if self.expected and len(self.seen) >= self.expected:
                    self.complete.set()

    async def delivered(self, titles: int) -> int:
        """Wait for `titles` tagged changes, then for the feed to go quiet; how many
        never came."""
        self.expect(titles)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.complete.wait(), FEED_TIMEOUT)
        if len(self.seen) < titles:
            return titles - len(self.seen)
        while True:
            idle = time.monotonic_ns() - (self.row_ns[-1] if self.row_ns else 0)
            if idle >= QUIET_NS:
                return 0
            await asyncio.sleep((QUIET_NS - idle) / 1e9)


async def _consume(feed: ChangeFeed, tap: Tap, streaming: asyncio.Event) -> None:
    """Drain the feed as a gateway would, minus the dispatching; hold back while
    `tap.flowing` is clear."""
    try:
        async with contextlib.aclosing(feed.events()) as events:
            async for event in events:
                if not tap.flowing.is_set():
                    await tap.flowing.wait()
                if type(event) is RowChanges:
                    for change in event.changes:
                        tap.row(change)
                elif type(event) is RowChange:
                    tap.row(event)
                elif type(event) is TransactionEnd:
                    feed.retain_from(None)
                elif isinstance(event, FeedResumed):
                    streaming.set()
                elif isinstance(event, FeedInterrupted):
                    tap.interruptions.append(event.reason)
    except Exception as error:
        tap.interruptions.append(f"the consumer failed: {error!r}")
        tap.complete.set()
        raise


# The measurements.


@dataclass
class Window:
    """One flat-out window of one mode."""

    commits: int
    seconds: float
    rows: int = 0
    rows_seconds: float = 0.0  # from the writers' start to the feed's last row change
    behind_ms: float | None = None
    missing: int = 0

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


@dataclass
class Result:
    mode: str
    windows: list[Window] = field(default_factory=list)
    backlog_rows: int = 0
    backlog_rate: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    paced_rate: float | None = None
    missing: int = 0
    wrong_actor: int = 0
    slot_lag: int | None = None
    interruptions: list[str] = field(default_factory=list)

    @property
    def commit_rate(self) -> float:
        seconds = sum(w.seconds for w in self.windows)
        return sum(w.commits for w in self.windows) / seconds if seconds else 0.0

    @property
    def live_rate(self) -> float | None:
        seconds = sum(w.rows_seconds for w in self.windows)
        return sum(w.rows for w in self.windows) / seconds if seconds else None

    @property
    def behind_ms(self) -> float | None:
        behind = [w.behind_ms for w in self.windows if w.behind_ms is not None]
        return max(behind) if behind else None


async def _set_triggers(conn: asyncpg.Connection, mode: str) -> None:
    if mode != "none":
        await use_feed_triggers(conn, "notify" if mode == "notify" else "replication")
        return
    async with conn.transaction():
        for table in TABLES:
            for trigger in (*NOTIFY_TRIGGERS, *REPLICATION_TRIGGERS):
                await conn.execute(f'ALTER TABLE public.{table} DISABLE TRIGGER "{trigger}"')


async def _reset(conn: asyncpg.Connection, mode: str) -> None:
    """The same start for every measurement, then the mode's triggers.

    Every UPDATE of a sitemap leaves a dead row version (never a HOT update:
    updated_at and version are indexed) and adds a version_history row, and
    autovacuum (naptime 60 s) does not come by within a run: left alone, the commit
    rate of every mode sinks as they pile up (here by half and more within 30 s), so
    later windows would pay for earlier ones.
    """
    await _set_triggers(conn, "none")  # no feed publishes the truncation
    await conn.execute("TRUNCATE public.version_history")
    await conn.execute("VACUUM public.sitemaps")
    await _set_triggers(conn, mode)


@contextlib.asynccontextmanager
async def _feed_running(
    mode: str, conn: asyncpg.Connection, dsn: str, slot: str, tap: Tap
) -> AsyncIterator[ChangeFeed | None]:
    """The mode's feed, streaming and drained into `tap` (none for `none`). A
    replication feed makes its slot afresh, which is dropped afterwards (the WAL it
    still held noted in `tap.slot_lag`), so no slot holds or decodes WAL while
    another mode is measured."""
    feed: ChangeFeed | None = None
    if mode == "notify":
        feed = NotifyFeed(dsn)
    elif mode == "replication":
        feed = ReplicationFeed(dsn, slot=slot, publication=PUBLICATION)
    if feed is None:
        yield None
        return
    streaming = asyncio.Event()
    consumer = asyncio.create_task(_consume(feed, tap, streaming))
    try:
        waiter = asyncio.create_task(streaming.wait())
        try:
            await asyncio.wait(
                {waiter, consumer}, timeout=FEED_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if not streaming.is_set():
            raise RuntimeError(f"the {mode} feed did not start: {tap.interruptions}")
        yield feed
    finally:
        consumer.cancel()
        await asyncio.wait({consumer})
        if not consumer.cancelled():
            consumer.exception()  # already in tap.interruptions
        if mode == "replication":
            tap.slot_lag = await _slot_lag(conn, slot)
            await _drop_slot(dsn, slot, tap)


async def _slot_lag(conn: asyncpg.Connection, slot: str) -> int | None:
    """WAL the slot holds beyond its confirmed position, once its stream has closed."""
    for _ in range(40):
        row = await conn.fetchrow(
            "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint AS lag"
            " FROM pg_replication_slots WHERE slot_name = $1",
            slot,
        )
        if row is None:
            return None
        if not row["active"]:
            return int(row["lag"])
        await asyncio.sleep(0.05)
    return None


async def _drop_slot(dsn: str, slot: str, tap: Tap) -> None:
    try:
        await asyncio.wait_for(drop_slot(dsn, slot, terminate=True), 10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        tap.interruptions.append(f"could not drop slot {slot}: {error!r}")


@dataclass
class Bench:
    dsn: str
    conn: asyncpg.Connection
    writers: Writers
    ids: list[str]
    args: argparse.Namespace
    claims: str | None
    slot: str
    actor: uuid.UUID | None

    def job(self, kind: str, tag: str, seconds: float, **more: Any) -> Job:
        return {
            "kind": kind,
            "tag": tag,
            "seconds": seconds,
            "dsn": self.dsn,
            "ids": self.ids,
            "claims": self.claims,
            "writers": self.args.writers,
            **more,
        }

    async def window(self, mode: str, tag: str, seconds: float, result: Result) -> None:
        """Writers flat out for `seconds` with the mode's feed (if any) draining."""
        await _reset(self.conn, mode)
        tap = Tap(self.actor)
        async with _feed_running(mode, self.conn, self.dsn, self.slot, tap) as feed:
            tap.begin(tag)
            flat = await self.writers.run(self.job("flat", tag, seconds))
            started, ended = flat["started_ns"], flat["ended_ns"]
            window = Window(flat["commits"], (ended - started) / 1e9)
            if feed is not None:
                window.missing = await tap.delivered(window.commits)
                if tap.row_ns:
                    window.rows = len(tap.row_ns)
                    window.rows_seconds = (tap.row_ns[-1] - started) / 1e9
                    window.behind_ms = (tap.row_ns[-1] - ended) / 1e6
        result.windows.append(window)
        result.missing += window.missing
        result.wrong_actor += tap.wrong_actor
        result.interruptions += tap.interruptions

    async def feed_only(self, mode: str, result: Result) -> None:
        """The feed's backlog drain, then its latency at a paced rate."""
        await _reset(self.conn, mode)
        tap = Tap(self.actor)
        async with _feed_running(mode, self.conn, self.dsn, self.slot, tap):
            # Held back while the writers go flat out, then let go.
            tap.begin(f"{mode}/b/")
            tap.flowing.clear()
            try:
                burst_seconds = min(self.args.seconds, BURST_SECONDS)
                burst = await self.writers.run(self.job("flat", tap.prefix, burst_seconds))
            finally:
                resumed = time.monotonic_ns()
                tap.flowing.set()
            result.missing += await tap.delivered(burst["commits"])
            if tap.row_ns:
                result.backlog_rows = len(tap.row_ns)
                result.backlog_rate = len(tap.row_ns) / ((tap.row_ns[-1] - resumed) / 1e9)

            tap.begin(f"{mode}/p/")
            paced = await self.writers.run(
                self.job("paced", tap.prefix, self.args.seconds, rate=self.args.rate)
            )
            returned: list[int] = paced["returned_ns"]
            elapsed = (paced["ended_ns"] - paced["started_ns"]) / 1e9
            result.paced_rate = len(returned) / elapsed
            result.missing += await tap.delivered(len(returned))
            for number, commit_ns in enumerate(returned):
                received = tap.seen.get(f"{tap.prefix}{number}")
                if received is not None:
                    result.latencies_ms.append((received - commit_ns) / 1e6)
        result.slot_lag = tap.slot_lag
        result.wrong_actor += tap.wrong_actor
        result.interruptions += tap.interruptions


# Setup and report.


async def _populate(conn: asyncpg.Connection, sitemaps: int) -> tuple[uuid.UUID, list[str]]:
    """A user with a few projects and `sitemaps` sitemaps among them; their ids."""
    owner = uuid.uuid4()
    await conn.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, 'feed-cost@example.test')", owner
    )
    ids: list[str] = []
    projects = [
        await conn.fetchval(
            "INSERT INTO projects (user_id, name, type) VALUES ($1, $2, 'website') RETURNING id",
            owner,
            f"Site {number}",
        )
        for number in range(PROJECTS)
    ]
    for number in range(sitemaps):
        sitemap = await conn.fetchval(
            "INSERT INTO sitemaps (project_id, title, pages) VALUES ($1, $2, $3::jsonb) "
            "RETURNING id",
            projects[number % PROJECTS],
            f"Map {number}",
            '{"home": {"children": ["about", "pricing", "blog"]}}',
        )
        ids.append(str(sitemap))
    return owner, ids


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


async def _facts(conn: asyncpg.Connection) -> str:
    rows = await conn.fetch(
        "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
        ["server_version", "fsync", "synchronous_commit", "wal_level", "shared_buffers"],
    )
    settings = {row["name"]: row["setting"] for row in rows}
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores ({usable} usable), {_cpu_model()}; load {load}\n"
        f"server:  PostgreSQL {settings['server_version']}, fsync={settings['fsync']} "
        f"synchronous_commit={settings['synchronous_commit']} "
        f"wal_level={settings['wal_level']} shared_buffers={settings['shared_buffers']}x8kB\n"
        f"client:  Python {platform.python_version()}, uvloop, writers in a separate process"
    )


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _report(results: list[Result], args: argparse.Namespace, claims: str | None) -> None:
    base = next((r.commit_rate for r in results if r.mode == "none"), 0.0)
    who = "signed in (request.jwt.claims set)" if claims else "anonymous (no claims)"
    burst = min(args.seconds, BURST_SECONDS)
    rounds = max(len(r.windows) for r in results)
    print(
        f"writers: {args.writers} flat out, {args.seconds:g} s per mode in {rounds} rotated "
        f"rounds, {who}\n"
        f"feeds:   backlog of {args.writers} writers flat out {burst:g} s with the feed held "
        f"back; latency at 1 writer paced {args.rate:g}/s for {args.seconds:g} s"
    )
    print()
    print(
        f"{'mode':<12} {'commits/s':>10} {'vs none':>8} {'rounds (commits/s)':>22}"
        f" {'live rows/s':>12} {'behind':>8} {'backlog':>8} {'drain rows/s':>13}"
    )
    for r in results:
        ratio = f"{r.commit_rate / base:.2f}" if base else "-"
        spread = " ".join(f"{w.rate:,.0f}" for w in r.windows)
        live = f"{r.live_rate:,.0f}" if r.live_rate is not None else "-"
        behind = f"{r.behind_ms:,.0f} ms" if r.behind_ms is not None else "-"
        backlog = f"{r.backlog_rows:,}" if r.backlog_rate is not None else "-"
        drain = f"{r.backlog_rate:,.0f}" if r.backlog_rate is not None else "-"
        print(
            f"{r.mode:<12} {r.commit_rate:>10,.0f} {ratio:>8} {spread:>22}"
            f" {live:>12} {behind:>8} {backlog:>8} {drain:>13}"
        )
    print()
    print(
        f"{'mode':<12} {'paced/s':>8} {'changes':>8} {'lat min':>9} {'p50':>9} {'p99':>9}"
        f" {'max':>9}"
    )
    for r in results:
        if not r.latencies_ms or r.paced_rate is None:
            continue
        lat = r.latencies_ms
        figures = (min(lat), statistics.median(lat), _percentile(lat, 0.99), max(lat))
        print(
            f"{r.mode:<12} {r.paced_rate:>8.0f} {len(lat):>8,}"
            + "".join(f" {value:>6.2f} ms" for value in figures)
        )
    print()
    print(
        "live rows/s: row changes yielded (2 per commit: sitemaps + version_history) from the\n"
        "  writers' start to the last one; behind: that last one after the writers stopped\n"
        "  (~0: it kept up, its maximum is higher). drain rows/s: the backlog yielded from\n"
        "  the moment the feed is let go (NOTIFY: already received, only decoded; replication:\n"
        "  still in the slot). lat: feed yielded the RowChange - writer's commit returned\n"
        "  (< 0: the feed had it before the writer process got to read its commit reply)."
    )
    for r in results:
        if r.slot_lag is not None:
            print(
                f"{r.mode}: slot held {r.slot_lag:,} bytes beyond its confirmed position at the end"
            )
        if r.missing:
            print(
                f"WARNING {r.mode}: {r.missing} commits never came from the feed "
                f"within {FEED_TIMEOUT:.0f} s"
            )
        if r.wrong_actor:
            print(f"WARNING {r.mode}: {r.wrong_actor} changes did not name the writers' user")
        if r.interruptions:
            print(f"WARNING {r.mode}: feed interrupted: {'; '.join(r.interruptions)}")


async def _start(server: EmbeddedPostgres) -> str:
    """Start the server. Interrupted meanwhile, it still finishes starting (its
    threads cannot be stopped), so that the caller can stop it."""
    starting = asyncio.ensure_future(server.start())
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        print("interrupted while the server starts: stopping it once started", flush=True)
        with contextlib.suppress(Exception):
            await starting
        raise


async def run(args: argparse.Namespace) -> None:
    slot = f"feed_cost_{os.getpid()}_{secrets.token_hex(3)}"
    writers: Writers | None = None
    aborted = True
    with tempfile.TemporaryDirectory(prefix="feed_cost_") as directory:
        server = EmbeddedPostgres(Path(directory) / "pgdata")
        try:
            dsn = await _start(server)
            writers = Writers()
            conn = await asyncpg.connect(dsn)
            try:
                await Migrator(
                    conn, load_migrations(), {"sitebuilder.publication": PUBLICATION}
                ).up()
                owner, ids = await _populate(conn, SITEMAPS_PER_WRITER * args.writers)
                claims = None
                if not args.anonymous:
                    claims = orjson.dumps(
                        {"sub": str(owner), "role": "authenticated", "aud": "authenticated"}
                    ).decode()
                print(await _facts(conn))
                actor = None if args.anonymous else owner
                bench = Bench(dsn, conn, writers, ids, args, claims, slot, actor)
                results = {mode: Result(mode) for mode in args.modes}
                # Warm up the server and the writer process; not measured.
                await _set_triggers(conn, "none")
                await writers.run(bench.job("flat", "warm/", min(1.0, args.seconds)))
                await conn.execute("VACUUM (ANALYZE) public.sitemaps, public.version_history")
                await conn.execute("CHECKPOINT")
                # Commit rates in short windows, the modes' order rotated each round, so a
                # machine that slows down or speeds up meanwhile favours none of them.
                modes = list(dict.fromkeys(args.modes))
                for number in range(args.rounds):
                    turn = number % len(modes)
                    for mode in modes[turn:] + modes[:turn]:
                        tag = f"{mode}/f{number}/"
                        await bench.window(mode, tag, args.seconds / args.rounds, results[mode])
                for mode in modes:
                    if mode != "none":
                        await bench.feed_only(mode, results[mode])
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(drop_slot(dsn, slot, terminate=True), 10)
                await conn.close()
            aborted = False
            _report(list(results.values()), args, claims)
        finally:
            if writers is not None:
                writers.stop(abort=aborted)
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="writing time per mode and measurement"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rotated rounds the commit-rate time is split in"
    )
    parser.add_argument("--writers", type=int, default=4, help="concurrent flat-out writers")
    parser.add_argument("--rate", type=float, default=500.0, help="commits/s of the paced writer")
    parser.add_argument(
        "--anonymous", action="store_true", help="writers set no request.jwt.claims"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to measure"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; the server was stopped")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
