"""Fuzzing both protocols against an in-process gateway, time-bounded: sessions drawn
by loadtest.fuzz (random and mutated frames, topics, filters, tokens and RPC params),
each on a connection of its own, with normal clients beside them (loadtest.fuzz_run).

Each example must get only documented frames back, no close but a documented one (never
1011), an answer to the ping that follows it, and leave no ERROR or traceback in the
log; afterwards the bystanders must have every change the writer committed meanwhile,
and every normal client must still answer. Examples are derandomized (the same ones
every run); a failure is shrunk by hypothesis and printed as the session to send again
(with the `@reproduce_failure` blob). `bench fuzz --minutes N` runs the same for
longer, with random seeds.

What the fuzzers found (JSON nested past what can be written back, a token whose
claims JSON cannot carry) is fixed; its regression tests are in test_hostile_inputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from hypothesis import strategies as st

from gateway.app.server import Gateway
from loadtest.fuzz import (
    Known,
    native_sessions,
    phoenix_sessions,
)
from loadtest.fuzz_run import (
    CapturedLog,
    Fuzzer,
    Watches,
    create_world,
    delivery_problems,
    fuzz_settings,
    learn_positions,
    on_loop,
    run_examples,
    watching,
    writing,
)
from tests.gateway_fixtures import AUDIENCE, SECRET, gateway_url

MAX_FRAME_BYTES = 65_536
# Examples per protocol: about 10 s for each test on two shared cores (a Supabase
# session is slower to draw, and is answered with more).
NATIVE_EXAMPLES = 600
SUPABASE_EXAMPLES = 500


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    """Small frames, so that frames over the limit (and over 4 times it) are cheap; and
    room for the many connections the fuzzing user opens one after another."""
    return {
        "max_frame_bytes": MAX_FRAME_BYTES,
        "max_connections_per_user": 10_000,
        "max_unauthenticated_per_address": 10_000,
    }


@dataclass
class Bench:
    known: Known
    fuzzer: Fuzzer
    watches: Watches
    log: CapturedLog


@pytest.fixture
async def bench(
    gateway: Gateway, conn: asyncpg.Connection, database_dsn: str
) -> AsyncIterator[Bench]:
    """The world, the log captured, the normal clients and the writer around the test;
    after it: every change reached the bystanders, and nothing went wrong beside."""
    world = await create_world(conn)
    known = world.known(SECRET, AUDIENCE, MAX_FRAME_BYTES)
    log = CapturedLog()
    log.install()
    try:
        url = gateway_url(gateway)
        async with (
            watching(url, world, known) as watches,
            writing(database_dsn, world.private_wireframe, 0.2) as writer,
        ):
            known = await learn_positions(database_dsn, world, watches, known)
            yield Bench(known, Fuzzer(url, log, MAX_FRAME_BYTES), watches, log)
            await writer.stop()
            problems = await delivery_problems(watches, writer.count)
        assert writer.count > 0
        problems += watches.problems() + log.take()
        assert not problems, problems
    finally:
        log.remove()


async def fuzz(bench: Bench, strategy: st.SearchStrategy[Any], examples: int) -> None:
    """Every example sent and checked; hypothesis (in a thread) shrinks a failing one."""

    async def execute(session: Any) -> None:
        outcome = await bench.fuzzer.run(session)
        assert not outcome.problems, outcome.problems

    started = time.monotonic()
    config = fuzz_settings(examples, derandomize=True, shrink=True)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run_examples, strategy, on_loop(loop, execute), config)
    seconds = time.monotonic() - started
    print(f"{dict(bench.fuzzer.stats)} in {seconds:.1f} s; closes {dict(bench.fuzzer.closes)}")


async def test_native_protocol_fuzz(bench: Bench) -> None:
    await fuzz(bench, native_sessions(bench.known), NATIVE_EXAMPLES)


async def test_supabase_protocol_fuzz(bench: Bench) -> None:
    await fuzz(bench, phoenix_sessions(bench.known), SUPABASE_EXAMPLES)
