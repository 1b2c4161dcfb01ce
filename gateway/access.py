"""Who may read which project, remembered for table-wide `postgres_changes` bindings.

A Supabase client binds to a table, not a project, so each change is checked against
the reader: owner, collaborator or (public project) anyone, as PostgreSQL decides
(`queries.project_access`, as the user; the anonymous reader: `is_public`). Answers
are kept per project and user, the least recently used projects forgotten past a
bound. A transaction that changes a project's owner, collaborators or visibility
makes the dispatcher forget that project before the change is delivered; the next
question about it waits until that transaction is visible, so a revoked reader gets
nothing after it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final
from uuid import UUID

import asyncpg

from db import queries

ANONYMOUS: Final = UUID(int=0)
# None: may not read; False: may read; True: may also edit (sees members-only rows).
Access = bool | None


class AccessCache:
    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self._pool = pool
        self._capacity = capacity
        self._projects: OrderedDict[UUID, dict[UUID, Access]] = OrderedDict()
        # Projects whose access changed in a transaction not yet asked about.
        self._changed: dict[UUID, int] = {}

    def known(self, user_id: UUID, project_id: UUID) -> bool:
        return user_id in self._projects.get(project_id, {})

    def get(self, user_id: UUID, project_id: UUID) -> Access:
        """The remembered answer (None also when nothing is remembered)."""
        readers = self._projects.get(project_id)
        return None if readers is None else readers.get(user_id)

    def put(self, user_id: UUID, project_id: UUID, access: Access) -> None:
        readers = self._projects.get(project_id)
        if readers is None:
            readers = self._projects[project_id] = {}
            if len(self._projects) > self._capacity:
                self._projects.popitem(last=False)
        self._projects.move_to_end(project_id)
        readers[user_id] = access

    def forget(self, project_id: UUID, xid: int | None = None) -> None:
        """Access to the project changed (in transaction `xid`, when given)."""
        self._projects.pop(project_id, None)
        if xid is not None:
            self._changed[project_id] = xid

    async def resolve(
        self, project_id: UUID, users: Iterable[UUID], before_query: Callable[[], None]
    ) -> None:
        """Ask about the users not remembered for the project; `before_query` runs
        before the first question (which yields to the event loop)."""
        missing = [user for user in set(users) if not self.known(user, project_id)]
        if not missing:
            return
        before_query()
        async with self._pool.acquire() as conn:
            xid = self._changed.pop(project_id, None)
            if xid is not None:
                await queries.wait_until_visible(conn, xid)
            for user_id in missing:
                if user_id == ANONYMOUS:
                    access: Access = (
                        False if await queries.project_is_public(conn, project_id) else None
                    )
                else:
                    access = await queries.project_access(conn, user_id, project_id)
                self.put(user_id, project_id, access)
