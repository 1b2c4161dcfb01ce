"""Tasks a component starts on behalf of several callers (one shared read for many
joiners): kept until they end, and cancelled and awaited when the gateway stops, so
none outlives the pool it reads from; `settle` hands such a task's outcome to all of
its callers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class OwnedTasks:
    """The running tasks of one component."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel what still runs (its callers have gone) and wait for it to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def settle(done: asyncio.Future[T], work: Awaitable[T]) -> None:
    """Run `work` for everyone awaiting `done` (shielded: each may leave): its result
    or its error becomes theirs; cancelled, so are they."""
    try:
        result = await work
    except Exception as error:
        done.set_exception(error)  # each waiter fails with it, as its own work would
        done.exception()  # retrieved: waiters that left meanwhile do not
        return
    except BaseException:
        done.cancel()
        raise
    done.set_result(result)
