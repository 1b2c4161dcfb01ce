"""`bench feed`: how fast bulk writes go from commit to the subscribers' sockets, and
how fast PostgreSQL takes versioned inserts.

One project with `--subscribers` editors. A writer inserts `--rows` wireframes into its
sitemap in transactions of `--batch-rows` (one multi-row INSERT each), as fast as the
database takes them; with the versioning triggers on (the default) every row also adds
its version_history row, so each row is two changes to deliver; `--no-versioning`
switches the triggers off for the writer's session (`session_replication_role =
replica`, which takes a superuser: the embedded server's) to measure the feed alone.
`--prefill N` first inserts N wireframes the same way (not measured, then waited for
until the gateway has read past them), so the write path is measured on a table that
already holds data.

Figures: the writer's rows/s, the gateway's row changes/s per subscriber from the
first commit to the last change on a socket, the lag at the end (the last change's
arrival after the writer's last commit), commit→socket latency, and CPU per process.
The editors' one process reads every subscriber's copy, so with many subscribers it,
not the gateway, sets the arrival rate (the run is then marked client-bound); the
gateway's own rate is read from its `/metrics` (loopback sees them): `handed_per_s`,
changes per subscriber written to the sockets per second from the first commit until
all were, and `handed_lag_s`, when that was after the last commit. A gateway started
for the run lets a connection queue 1 GiB unsent (SITEBUILDER_MAX_OUTBOUND_BYTES,
unless `--gateway-env` says otherwise): a 1,000-row transaction is 2.6 MB for every
subscriber in one write, and the default 8 MiB would close slower-reading editors as
slow consumers, which measures the editors.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
from websockets.asyncio.client import connect

from loadtest.deployment import Deployment
from loadtest.options import Options
from loadtest.population import layout
from loadtest.report import Report, Run
from loadtest.scenarios import config_of, one_project, target
from loadtest.streams import STEP_TIMEOUT, connect_failures, open_stream, result_figures

INSERT = (
    "INSERT INTO wireframes (sitemap_id, title, layout) "
    "SELECT $1, $2 || g, $3::jsonb FROM generate_series(1, $4) g"
)
CATCH_UP_TIMEOUT = 600.0
OUTBOUND_LIMIT = 1 << 30
METRICS_POLL_SECONDS = 0.1
METRICS_TIMEOUT = 5.0
_DELIVERED = re.compile(rb"^sitebuilder_events_delivered_total (\S+)$", re.MULTILINE)


async def bulk_insert(
    conn: asyncpg.Connection,
    sitemap: uuid.UUID,
    rows: int,
    batch: int,
    tag: str,
    layout_bytes: int,
) -> float:
    """Insert `rows` wireframes in transactions of `batch`; the seconds it took."""
    body = orjson.dumps(layout(0, layout_bytes)).decode()
    started = time.perf_counter()
    for first in range(0, rows, batch):
        await conn.execute(INSERT, sitemap, f"{tag} {first}+", body, min(batch, rows - first))
    return time.perf_counter() - started


async def writer(deployment: Deployment, owner: uuid.UUID, versioning: bool) -> asyncpg.Connection:
    """A connection writing as the project's owner (a signed-in editor's claims)."""
    conn = await asyncpg.connect(deployment.database_url)
    claims = orjson.dumps({"sub": str(owner), "role": "authenticated"}).decode()
    await conn.execute("SELECT set_config('request.jwt.claims', $1, false)", claims)
    if not versioning:
        await conn.execute("SET session_replication_role = replica")
    return conn


async def caught_up(
    deployment: Deployment,
    token: str,
    project_id: str,
    conn: asyncpg.Connection,
    sitemap: uuid.UUID,
) -> float:
    """Wait until the gateway has read everything committed so far: a probe subscribes,
    a marker wireframe is committed, and the gateway reads the log in order, so when the
    marker reaches the probe so has everything before it. The seconds it took."""
    started = time.perf_counter()
    async with connect(deployment.url, max_size=None, compression=None) as probe:
        for frame in (
            {"type": "auth", "token": token, "ref": "a"},
            {"type": "subscribe", "project_id": project_id, "snapshot": False, "ref": "s"},
        ):
            await probe.send(orjson.dumps(frame).decode())
            async with asyncio.timeout(STEP_TIMEOUT):
                while orjson.loads(await probe.recv()).get("ref") != frame["ref"]:
                    pass
        marker = await conn.fetchval(
            "INSERT INTO wireframes (sitemap_id, title) VALUES ($1, 'caught up') RETURNING id",
            sitemap,
        )
        async with asyncio.timeout(CATCH_UP_TIMEOUT):
            while True:
                frame = orjson.loads(await probe.recv())
                if frame.get("type") == "change" and (frame.get("new") or {}).get("id") == str(
                    marker
                ):
                    break
    return time.perf_counter() - started


async def delivered_total(url: str) -> float | None:
    """The gateway's count of change frames handed to subscribers' sockets, from its
    `/metrics`; None when they cannot be read (a gateway elsewhere)."""
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    request = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(METRICS_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request.encode())
                response = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    found = _DELIVERED.search(response)
    return float(found[1]) if found else None


async def handed_out(url: str, total: float) -> float | None:
    """The time the gateway's count of change frames written reached `total` (polled
    every 0.1 s), or None when its metrics cannot be read."""
    while True:
        await asyncio.sleep(METRICS_POLL_SECONDS)
        now = await delivered_total(url)
        if now is None:
            return None
        if now >= total:
            return time.time()


async def outcome(task: asyncio.Task[float | None] | None) -> float | None:
    """What the task found by now (None if nothing yet); it is stopped."""
    if task is None:
        return None
    found = task.result() if task.done() else None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return found


async def sitemap_of(conn: asyncpg.Connection, project_id: str) -> uuid.UUID:
    found: uuid.UUID = await conn.fetchval(
        "SELECT id FROM sitemaps WHERE project_id = $1 ORDER BY created_at LIMIT 1",
        uuid.UUID(project_id),
    )
    return found


async def feed(options: Options) -> Report:
    report = Report(
        "feed",
        config_of(
            options, "subscribers", "rows", "batch_rows", "prefill", "versioning", "client_procs"
        ),
    )
    if not options.url:
        env = {"SITEBUILDER_MAX_OUTBOUND_BYTES": str(OUTBOUND_LIMIT), **options.gateway_env}
        options = replace(options, gateway_env=env)
    async with target(options) as deployment:
        projects, editors, owner = await one_project(deployment, options)
        project_id = projects[0].id
        conn = await writer(deployment, owner, options.versioning)
        try:
            sitemap = await sitemap_of(conn, project_id)
            prefill: dict[str, Any] = {}
            if options.prefill:
                seconds = await bulk_insert(
                    conn,
                    sitemap,
                    options.prefill,
                    options.batch_rows,
                    "prefill",
                    options.layout_bytes,
                )
                prefill = {
                    "prefill_rows_per_s": round(options.prefill / seconds),
                    "prefill_read_by_gateway_s": round(
                        await caught_up(deployment, editors[0]["token"], project_id, conn, sitemap),
                        2,
                    ),
                }
            report.runs.append(await measured(deployment, editors, conn, sitemap, options))
            report.runs[-1].figures.update(prefill)
        finally:
            await conn.close()
    return report


async def measured(
    deployment: Deployment,
    editors: list[dict[str, Any]],
    conn: asyncpg.Connection,
    sitemap: uuid.UUID,
    options: Options,
) -> Run:
    processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
    stream, ready = await open_stream(
        "gateway", deployment.url, "gateway", editors, options, processes
    )
    changes_each = options.rows * (2 if options.versioning else 1)
    before = await delivered_total(deployment.url)
    gateway_side = (
        asyncio.create_task(handed_out(deployment.url, before + changes_each * len(editors)))
        if before is not None
        else None
    )
    stream.start_usage()
    started = time.time()
    seconds = await stream.progress.during(
        bulk_insert(conn, sitemap, options.rows, options.batch_rows, "bulk", options.layout_bytes)
    )
    written = time.time()
    usage = stream.usage_figures()
    command = {
        "cmd": "finish",
        "expected": {},
        "drain_seconds": options.drain_seconds,
        "changes_each": changes_each,
    }
    results = await stream.progress.during(
        stream.pool.gather(command, "result", options.drain_seconds + STEP_TIMEOUT)
    )
    stream.progress.done()
    handed = await outcome(gateway_side)
    figures, latency, series = result_figures(results, started)
    last = max(r["last_arrival"] for r in results)
    per_subscriber = figures["deliveries"] / max(1, len(editors))
    figures = {
        "editors": len(editors),
        "connect_failures": connect_failures(ready),
        "writer_rows_per_s": round(options.rows / seconds),
        "changes_per_subscriber": round(per_subscriber),
        "expected_per_subscriber": changes_each,
        "gateway_changes_per_s": round(per_subscriber / max(1e-6, last - started)),
        "lag_at_end_s": round(max(0.0, last - written), 2),
        **(
            {
                "handed_per_s": round(changes_each / max(1e-6, handed - started)),
                "handed_lag_s": round(max(0.0, handed - written), 2),
            }
            if handed is not None
            else {}
        ),
        **{k: v for k, v in figures.items() if k != "deliveries_per_s"},
        "deliveries_per_s": round(figures["deliveries"] / max(1e-6, last - started)),
        **usage,
    }
    return Run("gateway", figures, latency, series)
