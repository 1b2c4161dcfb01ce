"""What each replication slot costs the primary: `python -m loadtest.wal_cost [--slots N] [--mb M]`.

Every gateway node reads one logical slot, and the primary runs one walsender per
slot that decodes the whole WAL of the database, whatever share of it the node's
clients follow. This measures that walsender's CPU per MB of WAL, the figure that
decides how many nodes one primary carries (docs/deployment.md, "Scaling past one
node").

An embedded PostgreSQL in a temporary directory (or the server of
`SITEBUILDER_DATABASE_URL`, which must run on this host: the walsenders' CPU is read
from /proc) is migrated, N slots are created on the gateway's publication and each is
streamed by a `ReplicationStream` that acknowledges every commit, as a node's feed
does. Writers then commit wireframe saves (a ~2 KB jsonb layout each, with the
version history and the actor message the triggers add) until M MB of WAL are
written. Printed: the WAL written, each walsender's CPU seconds (user + system) from
the first write until it has decoded the last, per MB and per save, and the writers'
own backends' CPU for comparison. CPU seconds, not wall time, so other work on the
machine inflates them less, though it still does (caches, frequency). An external
database keeps the rows written; the slots are dropped either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import psutil

from db.embedded import EmbeddedPostgres
from db.feed_triggers import use_feed_triggers
from db.migrations import Migrator, load_migrations
from db.pgoutput import Commit, decode_message
from db.replication_stream import ReplicationStream, drop_slot
from loadtest.population import layout

PUBLICATION = "sitebuilder_realtime"
WRITERS = 4  # concurrent writer connections, one wireframe each
MB = 1024 * 1024
CATCH_UP_TIMEOUT = 300.0


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextlib.asynccontextmanager
async def _database(url: str | None) -> AsyncIterator[tuple[str, bool]]:
    """The server's DSN and whether it is ours (embedded, removed afterwards)."""
    if url:
        yield url, False
        return
    with tempfile.TemporaryDirectory(prefix="wal_cost_") as directory:
        server = EmbeddedPostgres(Path(directory) / "pgdata")
        try:
            yield await server.start(), True
        finally:
            server.stop()


async def _check_room(conn: asyncpg.Connection, slots: int) -> None:
    """Refuse in one line what PostgreSQL would refuse midway: too few senders or slots."""
    row = await conn.fetchrow(
        "SELECT current_setting('max_wal_senders')::int"
        " - (SELECT count(*) FROM pg_stat_replication) AS senders,"
        " current_setting('max_replication_slots')::int"
        " - (SELECT count(*) FROM pg_replication_slots) AS slots"
    )
    assert row is not None
    room = min(row["senders"], row["slots"])
    if slots > room:
        raise SystemExit(
            f"--slots {slots}: the server has room for {room} more "
            "(max_wal_senders, max_replication_slots)"
        )


async def _wireframes(conn: asyncpg.Connection) -> tuple[str, list[uuid.UUID]]:
    """An owner, a project, a sitemap and one wireframe per writer: the owner's claims
    and the wireframes' ids."""
    owner = uuid.uuid4()
    await conn.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, $2)", owner, f"{owner}@wal-cost.test"
    )
    project = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type) VALUES ($1, 'WAL cost', 'website') "
        "RETURNING id",
        owner,
    )
    sitemap = await conn.fetchval(
        "INSERT INTO sitemaps (project_id, title, pages) VALUES ($1, 'Map', '{}') RETURNING id",
        project,
    )
    wireframes = [
        await conn.fetchval(
            "INSERT INTO wireframes (sitemap_id, title, components, layout) "
            "VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
            sitemap,
            f"Page {number}",
            ["hero", "footer"],
            orjson.dumps(layout(0)).decode(),
        )
        for number in range(WRITERS)
    ]
    claims = orjson.dumps({"sub": str(owner), "role": "authenticated"}).decode()
    return claims, wireframes


async def _read(stream: ReplicationStream) -> None:
    """Stream the slot, acknowledging each commit: the server's side is what is measured,
    so only commits are decoded here."""
    async for message in stream.messages():
        if message.payload[:1] == b"C":
            commit = decode_message(message.payload, in_stream=False)
            assert isinstance(commit, Commit)
            stream.acknowledge(commit.end_lsn)


async def _write(dsn: str, claims: str, wireframe: uuid.UUID, until_lsn: int) -> tuple[int, float]:
    """Save the wireframe, one transaction a save, until the WAL reaches `until_lsn`;
    the saves made and the CPU seconds its backend spent on them."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT set_config('request.jwt.claims', $1, false)", claims)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        before = _cpu_seconds(pid)
        saves = 0
        lsn = 0
        while lsn < until_lsn:
            saves += 1
            await conn.execute(
                "UPDATE wireframes SET layout = $2::jsonb WHERE id = $1",
                wireframe,
                orjson.dumps(layout(saves)).decode(),
            )
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'")
        return saves, _cpu_seconds(pid) - before
    finally:
        await conn.close()


async def _caught_up(conn: asyncpg.Connection, slots: list[str], lsn: int) -> None:
    """Wait until every walsender has decoded the WAL up to `lsn` (its sent position
    passes each record it decodes, and past idle WAL too)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while time.monotonic() < deadline:
        behind = await conn.fetchval(
            "SELECT count(*) FROM pg_replication_slots s"
            " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
            " WHERE s.slot_name = ANY($1::text[])"
            " AND (r.sent_lsn IS NULL OR r.sent_lsn - '0/0' < $2)",
            slots,
            lsn,
        )
        if behind == 0:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the walsenders did not catch up within {CATCH_UP_TIMEOUT:.0f} s")


async def run(slots: int, mb: float, database_url: str | None) -> None:
    names = [f"wal_cost_{os.getpid()}_{index}" for index in range(slots)]
    async with _database(database_url) as (dsn, embedded):
        conn = await asyncpg.connect(dsn)
        streams = [ReplicationStream(dsn, name, PUBLICATION) for name in names]
        readers: list[asyncio.Task[None]] = []
        try:
            await Migrator(conn, load_migrations(), {"sitebuilder.publication": PUBLICATION}).up()
            if embedded:  # an external server keeps the triggers its gateway chose
                await use_feed_triggers(conn, "replication")
            await _check_room(conn, slots)
            claims, wireframes = await _wireframes(conn)
            for stream in streams:
                await stream.connect()
                await stream.ensure_slot()
                await stream.start()
                readers.append(asyncio.create_task(_read(stream)))
            rows = await conn.fetch(
                "SELECT slot_name, active_pid FROM pg_replication_slots"
                " WHERE slot_name = ANY($1::text[])",
                names,
            )
            senders: dict[str, int] = {row["slot_name"]: row["active_pid"] for row in rows}
            before = {name: _cpu_seconds(pid) for name, pid in senders.items()}
            start_lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'")
            started = time.monotonic()
            writes = await asyncio.gather(
                *(_write(dsn, claims, w, start_lsn + int(mb * MB)) for w in wireframes)
            )
            writing = time.monotonic() - started
            end_lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'")
            await _caught_up(conn, names, end_lsn)
            decoding = time.monotonic() - started
            spent = [_cpu_seconds(pid) - before[name] for name, pid in senders.items()]
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for stream in streams:
                await stream.close()
            for name in names:
                with contextlib.suppress(Exception):
                    await drop_slot(dsn, name, terminate=True)
            await conn.close()
    wal_mb = float(end_lsn - start_lsn) / MB
    saves = sum(count for count, _ in writes)
    per_mb = sorted(cpu / wal_mb for cpu in spent)
    figures = [  # name, value, what it is
        ("slots", f"{slots}", ""),
        ("wal_mb", f"{wal_mb:.1f}", f"{saves} saves, {wal_mb * MB / saves / 1024:.1f} KB each"),
        (
            "wal_mb_per_s",
            f"{wal_mb / writing:.2f}",
            f"decoded by all {decoding:.1f} s after the start",
        ),
        ("walsender_cpu_s", " ".join(f"{cpu:.2f}" for cpu in spent), "each slot's"),
        (
            "walsender_cpu_s_per_mb",
            f"{statistics.median(per_mb):.4f}",
            f"median slot; {per_mb[0]:.4f}-{per_mb[-1]:.4f}",
        ),
        (
            "walsender_cpu_us_per_save",
            f"{statistics.median(spent) / saves * 1e6:.0f}",
            "median slot",
        ),
        (
            "writers_cpu_s_per_mb",
            f"{sum(cpu for _, cpu in writes) / wal_mb:.4f}",
            f"the {WRITERS} writers' backends together",
        ),
    ]
    for name, value, note in figures:
        print(f"{name + ':':27} {value:>10}" + (f"  ({note})" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=1, help="logical slots read at once")
    parser.add_argument("--mb", type=float, default=64.0, help="MB of WAL to write")
    args = parser.parse_args()
    if args.slots < 1 or args.mb <= 0:
        parser.error("--slots must be at least 1 and --mb positive")
    asyncio.run(run(args.slots, args.mb, os.environ.get("SITEBUILDER_DATABASE_URL")))


if __name__ == "__main__":
    main()
