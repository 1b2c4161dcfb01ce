"""Tasks started for several callers end with the gateway: cancelled and awaited."""

from __future__ import annotations

import asyncio

from gateway.core.owned import OwnedTasks

TIMEOUT = 5.0


async def test_close_cancels_what_still_runs_and_forgets_what_ended() -> None:
    tasks = OwnedTasks()
    started = asyncio.Event()
    finished: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            finished.append("forever")

    async def quick() -> None:
        finished.append("quick")

    tasks.start(forever())
    tasks.start(quick())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await asyncio.wait_for(tasks.close(), TIMEOUT)
    assert sorted(finished) == ["forever", "quick"]
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
