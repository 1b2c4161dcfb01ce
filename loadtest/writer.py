"""The writer: commits wireframe updates at a fixed rate, straight to PostgreSQL.

That is where the product's changes come from (the AI builder's backend and editors'
saves); the gateway is only told by its change feed. Each update replaces a
wireframe's layout (~2 KB; `--layout-bytes`) and numbers it (`bench_seq`, 1, 2, … per
wireframe), which the editors check for loss, duplicates and order.

Commits to one wireframe must land in seq order, so each wireframe belongs to one
lane (one connection, one commit at a time), and the lanes run side by side. Each
lane keeps an absolute schedule: if the database falls behind, it commits back to
back until it is on time again, and how far behind it fell is reported.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from hdrh.histogram import HdrHistogram

from loadtest.editors import new_histogram
from loadtest.options import LAYOUT_BYTES
from loadtest.population import layout

UPDATE = "UPDATE public.wireframes SET layout = $2::jsonb WHERE id = $1::uuid"
MAX_LANES = 8


@dataclass
class Writes:
    """What the writer committed: per wireframe, the count (= the last seq)."""

    commits: dict[str, int] = field(default_factory=dict)
    behind_seconds: float = 0.0
    # How long each commit statement took, in microseconds: its share of the latency
    # happens before any change feed can see the change (row work, triggers, WAL flush).
    durations: HdrHistogram = field(default_factory=new_histogram)

    @property
    def total(self) -> int:
        return sum(self.commits.values())


class Writer:
    def __init__(
        self,
        database_url: str,
        wireframes: list[str],
        actor: str,
        layout_bytes: int = LAYOUT_BYTES,
    ) -> None:
        self.database_url = database_url
        self.wireframes = wireframes
        self.layout_bytes = layout_bytes
        self.claims = orjson.dumps({"sub": actor, "role": "authenticated"}).decode()
        self.writes = Writes(commits=dict.fromkeys(wireframes, 0))
        self.lanes: list[asyncpg.Connection] = []

    async def open(self) -> None:
        for _ in range(lane_count(len(self.wireframes))):
            conn = await asyncpg.connect(self.database_url)
            await conn.execute("SELECT set_config('request.jwt.claims', $1, false)", self.claims)
            self.lanes.append(conn)

    async def close(self) -> None:
        for conn in self.lanes:
            await conn.close()
        self.lanes.clear()

    def seqs(self) -> dict[str, int]:
        return dict(self.writes.commits)

    async def run(self, rate: float, seconds: float) -> None:
        """`rate` commits per second over all wireframes, for `seconds`: commit k is due at
        k / rate and goes to wireframe k mod n, made by that wireframe's lane."""
        total = int(rate * seconds)
        lanes = len(self.lanes)
        start = time.monotonic()
        await asyncio.gather(
            *(
                self._lane(conn, range(index, total, lanes), start, rate)
                for index, conn in enumerate(self.lanes)
            )
        )

    async def _lane(
        self, conn: asyncpg.Connection, commits: range, start: float, rate: float
    ) -> None:
        template = layout(0, self.layout_bytes)
        for k in commits:
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.writes.behind_seconds = max(self.writes.behind_seconds, -delay)
            wireframe_id = self.wireframes[k % len(self.wireframes)]
            seq = self.writes.commits[wireframe_id] + 1
            began = time.perf_counter()
            await conn.execute(UPDATE, wireframe_id, _numbered(template, seq))
            self.writes.durations.record_value(max(1, int((time.perf_counter() - began) * 1e6)))
            self.writes.commits[wireframe_id] = seq


def lane_count(wireframes: int) -> int:
    """The most lanes (up to MAX_LANES) that divide the wireframes evenly: commit k goes
    to wireframe k mod n and lane k mod lanes, so each wireframe stays in one lane."""
    return max(n for n in range(1, MAX_LANES + 1) if wireframes % n == 0)


def _numbered(template: dict[str, Any], seq: int) -> str:
    return orjson.dumps({**template, "bench_seq": seq}).decode()
