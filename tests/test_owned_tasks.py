"""Tasks started for several callers end with the gateway: cancelled and awaited."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.owned import OwnedTasks, settle

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


async def test_settle_gives_every_waiter_the_outcome() -> None:
    loop = asyncio.get_running_loop()

    async def answer() -> int:
        return 42

    async def fail() -> int:
        raise ValueError("no such user")

    done: asyncio.Future[int] = loop.create_future()
    await asyncio.wait_for(settle(done, answer()), TIMEOUT)
    assert await asyncio.gather(asyncio.shield(done), asyncio.shield(done)) == [42, 42]

    failed: asyncio.Future[int] = loop.create_future()
    await asyncio.wait_for(settle(failed, fail()), TIMEOUT)
    with pytest.raises(ValueError, match="no such user"):
        await asyncio.shield(failed)

    started = asyncio.Event()

    async def forever() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    cancelled: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(settle(cancelled, forever()))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert cancelled.cancelled()
