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
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

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


async def bulk_insert(
    conn: asyncpg.Connection, sitemap: uuid.UUID, rows: int, batch: int, tag: str
) -> float:
    """Insert `rows` wireframes in transactions of `batch`; the seconds it took."""
    body = orjson.dumps(layout(0)).decode()
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
    async with target(options) as deployment:
        projects, editors, owner = await one_project(deployment, options)
        project_id = projects[0].id
        conn = await writer(deployment, owner, options.versioning)
        try:
            sitemap = await sitemap_of(conn, project_id)
            prefill: dict[str, Any] = {}
            if options.prefill:
                seconds = await bulk_insert(
                    conn, sitemap, options.prefill, options.batch_rows, "prefill"
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
    stream.start_usage()
    started = time.time()
    seconds = await stream.progress.during(
        bulk_insert(conn, sitemap, options.rows, options.batch_rows, "bulk")
    )
    written = time.time()
    usage = stream.usage_figures()
    changes_each = options.rows * (2 if options.versioning else 1)
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
        **{k: v for k, v in figures.items() if k != "deliveries_per_s"},
        "deliveries_per_s": round(figures["deliveries"] / max(1e-6, last - started)),
        **usage,
    }
    return Run("gateway", figures, latency, series)
