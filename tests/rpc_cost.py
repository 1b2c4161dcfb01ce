"""What each RPC of `bench hostile`'s `rpc` pattern costs, in CPU: the gateway's (this
process: validation, the calls through asyncpg, the result's encoding) and
PostgreSQL's (all its processes), per call. Not part of the suite (no `test_` file
name): run it by name, `python -m pytest tests/rpc_cost.py -s -p no:cacheprovider`.

The calls are the pattern's, made in-process through gateway.rpc.call as a user's
connection makes them (no websocket): `project.get_with_relations` of the user's own
project (two wireframes of 2 KB layouts) and of another's, `project.list`,
`analytics.get_project_stats`, `version.get_by_entity` (limit 5), `wireframe.update`
with a new idempotency key and then the same key. Other users' projects hold history
too (RPC_COST_OTHER_VERSIONS, 1,000), as the editors' does in the bench. CPU time, not
wall time, so a loaded machine slows it without skewing it much. Figures are printed,
never checked.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import psutil

from db.acting_user import acting_as, open_pool
from gateway.rpc.call import Call, call
from gateway.rpc.methods import METHODS
from loadtest.population import layout
from protocol.codec import encode_frame
from protocol.frames import Rpc
from tests.conftest import UserFactory
from tests.gateway_fixtures import make_project, make_sitemap

CALLS = int(os.environ.get("RPC_COST_CALLS", "300"))
OTHER_VERSIONS = int(os.environ.get("RPC_COST_OTHER_VERSIONS", "1000"))
OWN_VERSIONS = 100  # the user's own history before measuring


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def wireframes_of(conn: asyncpg.Connection, sitemap: uuid.UUID, count: int) -> list[str]:
    made = []
    for index in range(count):
        made.append(
            await conn.fetchval(
                "INSERT INTO wireframes (sitemap_id, title, layout) VALUES ($1, $2, $3::jsonb)"
                " RETURNING id::text",
                sitemap,
                f"w{index}",
                orjson.dumps(layout(index)).decode(),
            )
        )
    return made


async def test_rpc_cost(
    database_dsn: str, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
    postmaster = backend.parent()
    assert postmaster is not None
    me, other = await make_user(), await make_user()
    mine, theirs = await make_project(conn, me), await make_project(conn, other)
    own = await wireframes_of(conn, await make_sitemap(conn, mine), 2)
    others = await wireframes_of(conn, await make_sitemap(conn, theirs), 50)
    async with acting_as(conn, other, {}):
        for index in range(OTHER_VERSIONS):
            await conn.execute(
                "UPDATE wireframes SET title = $2 WHERE id = $1",
                uuid.UUID(others[index % len(others)]),
                str(index),
            )
    pool = await open_pool(database_dsn, max_size=4)
    refs = iter(range(1, 10**9))

    async def online(_: uuid.UUID) -> set[uuid.UUID]:
        return set()

    async def one(method: str, params: dict[str, Any], key: str | None = None) -> str:
        frame = Rpc(
            type="rpc", method=method, params=params, ref=str(next(refs)), idempotency_key=key
        )
        caller = Call(me, {"sub": str(me)}, pool, frame.ref, online=online, timeout_seconds=5.0)
        reply = await call(METHODS, frame, caller)
        encode_frame(reply)
        return reply.type

    seq = iter(range(1, 10**9))

    async def update_twice() -> None:
        number = next(seq)
        params = {"id": own[number % 2], "patch": {"layout": {"hostile": number}}}
        assert await one("wireframe.update", params, f"k{number}") == "result"
        assert await one("wireframe.update", params, f"k{number}") == "result"

    project = {"project_id": str(mine)}
    cases: dict[str, tuple[Callable[[], Awaitable[Any]], int]] = {
        "project.get_with_relations (own)": (
            lambda: one("project.get_with_relations", project),
            1,
        ),
        "project.get_with_relations (not found)": (
            lambda: one("project.get_with_relations", {"project_id": str(theirs)}),
            1,
        ),
        "project.list": (lambda: one("project.list", {"limit": 50}), 1),
        "analytics.get_project_stats": (
            lambda: one("analytics.get_project_stats", project),
            1,
        ),
        "version.get_by_entity": (
            lambda: one(
                "version.get_by_entity",
                {"entity_type": "wireframes", "entity_id": own[0], "limit": 5},
            ),
            1,
        ),
        "wireframe.update, new key then same key": (update_twice, 2),
    }
    for _ in range(OWN_VERSIONS):
        await update_twice()
    await conn.execute("ANALYZE")
    lines = []
    for name, (make, calls_each) in cases.items():
        processes = [postmaster, *postmaster.children()]
        gateway, database = time.process_time(), cpu_seconds(processes)
        for _ in range(CALLS // calls_each):
            await make()
        calls = CALLS // calls_each * calls_each
        gateway_ms = (time.process_time() - gateway) / calls * 1000
        database_ms = (cpu_seconds(processes) - database) / calls * 1000
        lines.append(f"{name:42s} gateway {gateway_ms:6.3f} ms  postgres {database_ms:6.3f} ms")
    await pool.close()
    print("\n" + "\n".join(lines))
