"""The display names of users signing in, looked up together.

Every sign-in looks up its user's name (migration 0017), which also tells that the user
exists. One lookup per sign-in is one pool connection and one query each: in a storm of
5,000 sign-ins, 5,000 queries queued behind each other. Here the sign-ins that arrive
while a lookup waits for its pool connection join it, and one query answers them all
(`display_names`). A sign-in on a quiet gateway is looked up at once, alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from db.queries import display_names
from gateway.core.owned import OwnedTasks, settle


@dataclass(eq=False)
class _Lookup:
    users: set[UUID] = field(default_factory=set)
    done: asyncio.Future[dict[UUID, str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class NameLookups:
    """Lookups of users' display names, joined while they wait for the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._open: _Lookup | None = None
        self._tasks = OwnedTasks()

    async def close(self) -> None:
        """Shutdown, once every connection has ended: cancel what is still being read."""
        await self._tasks.close()

    async def name(self, user_id: UUID) -> str | None:
        """The user's display name; None when there is no such user."""
        lookup = self._open
        if lookup is None:
            lookup = self._open = _Lookup()
            self._tasks.start(self._run(lookup))
        lookup.users.add(user_id)
        names = await asyncio.shield(lookup.done)
        return names.get(user_id)

    async def _run(self, lookup: _Lookup) -> None:
        try:
            await settle(lookup.done, self._query(lookup))
        finally:
            if self._open is lookup:
                self._open = None

    async def _query(self, lookup: _Lookup) -> dict[UUID, str]:
        """Take a pool connection, close the lookup to later sign-ins, query once."""
        async with self._pool.acquire() as conn:
            if self._open is lookup:
                self._open = None
            return await display_names(conn, list(lookup.users))
