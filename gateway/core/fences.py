"""Waiting until the dispatcher has handled everything committed before a moment.

A resume decides who could read what from the history (gateway.core.authorization), so
the history must hold every change that the database snapshot it read had seen. A
fence is a marker committed after that snapshot; the feed yields it after every
transaction committed before it, and the dispatcher hands it here.

Resumes come in waves (every client of a restarted gateway at once), so callers share
fences: one that has not started writing yet takes everyone who asks meanwhile, since
it will be committed after each of their snapshots. A wave costs a few fences, not
one per client.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import asyncpg

from db.feed import ChangeFeed
from db.queries import VisibilitySnapshot


@dataclass
class _Fence:
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    # A snapshot taken just before the fence was written: it saw only transactions
    # committed before the fence (gateway.core.authorization.AccessLists uses it).
    seen: VisibilitySnapshot | None = None
    arrived: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Fences:
    def __init__(self, pool: asyncpg.Pool, feed: ChangeFeed, timeout_seconds: float) -> None:
        self._pool = pool
        self._feed = feed
        self._timeout = timeout_seconds
        # The fence not yet being written, which a new caller may still join.
        self._open: _Fence | None = None
        self._written: dict[str, _Fence] = {}

    async def passed(self) -> bool:
        """Wait for the dispatcher to reach a fence committed after this call began:
        True once every transaction committed before the call has been dispatched,
        False when that took longer than the timeout (the feed is down or far behind).
        A database error writing the fence is raised."""
        fence = self._open
        if fence is None:
            fence = self._open = _Fence()
            await self._write(fence)
        try:
            await asyncio.wait_for(asyncio.shield(fence.arrived), self._timeout)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fence.arrived.cancelled() and task is not None and not task.cancelling():
                return False  # its writer was cancelled, not this caller
            raise
        finally:
            if not fence.arrived.done() or fence.arrived.cancelled():
                self._written.pop(fence.token, None)
        return True

    async def _write(self, fence: _Fence) -> None:
        try:
            async with self._pool.acquire() as conn:
                self._open = None  # who asks from now on needs a later fence
                self._written[fence.token] = fence
                fence.seen = VisibilitySnapshot.parse(
                    await conn.fetchval("SELECT pg_current_snapshot()::text")
                )
                await self._feed.fence(conn, fence.token)
        except BaseException as error:
            if self._open is fence:
                self._open = None
            self._written.pop(fence.token, None)
            if fence.arrived.done():
                raise
            if isinstance(error, Exception):
                fence.arrived.set_exception(error)
                fence.arrived.exception()  # retrieved here: each joiner raises it too
            else:
                fence.arrived.cancel()
            raise

    def reached(self, token: str) -> VisibilitySnapshot | None:
        """The dispatcher got to fence `token`: the snapshot taken before it was written
        (None for another gateway's fence, or one nobody waits for any more)."""
        fence = self._written.pop(token, None)
        if fence is None:
            return None
        if not fence.arrived.done():
            fence.arrived.set_result(None)
        return fence.seen
