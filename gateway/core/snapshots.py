"""One snapshot read of a project for the joiners of a short window.

Every subscriber to a project is sent the project and everything under it as of one
database snapshot. Read for each of N joiners (a reconnect wave after a deploy, a
class of 5,000 opening one project) that is N transactions of the same rows, each
validated and encoded again. Here a joiner of a quiet project is read at once; joiners
that follow within one window of a read share the next one, which starts after all of
them were registered with the hub (held), so every change its snapshot lacks reaches
each of them (gateway.core.hub: `snapshot_position`, `go_live`).

A read is shared only among joiners the database shows the same rows, and row-level
security still decides every row anyone is sent. In one REPEATABLE READ snapshot the
project's access list is read first (as the gateway's role), then the project as one
joiner of each class below, as that joiner; the others of the class get that view:

- editors (the owner and collaborators: `can_edit_project`) see every row under the
  project and all of its builder sessions (migration 0005: a member's own sessions are
  among the project's), with the private columns always withheld (migration 0015);
- signed-out visitors of a public project are one principal (`anon`, no sessions).

Anyone else (a signed-in reader of a public project sees their own sessions only; one
with no access is refused) is read alone, as today. Which class a joiner is in comes
from gateway.core.authorization, the rule the change feed applies to every change, as
of the same snapshot as the rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from uuid import UUID

import asyncpg

from db.queries import ProjectReads, ProjectView, VisibilitySnapshot, project_reads, view_project
from gateway.core.authorization import ANONYMOUS, Acl, Level, level_of
from gateway.core.owned import OwnedTasks, settle
from gateway.core.router import Router

# Joiners within this long after a project's read share the next one.
WINDOW_SECONDS = 0.05
# Past this many projects remembered, those whose window is over are forgotten.
FORGET_PAST = 1024


class Sharing(Enum):
    """The classes of joiners the database shows the same rows."""

    EDITORS = "editors"
    VISITORS = "visitors"


@dataclass(eq=False, slots=True)
class SharedView:
    """A project's view for one or more joiners, and what protocol adapters encoded of it
    (keyed as they choose: each encodes the shared part once)."""

    view: ProjectView
    encoded: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def visibility(self) -> VisibilitySnapshot:
        return self.view.visibility

    @property
    def editable(self) -> bool:
        return self.view.editable


@dataclass(frozen=True, slots=True)
class _Read:
    """What a window's read found: the access list as of its snapshot (None: no such
    project, or nothing read: each joiner is read alone) and a view per class that had
    a joiner."""

    acl: Acl | None
    shared: dict[Sharing, SharedView]


# A window of one joiner: it is read alone, as it would be without windows.
_ALONE = _Read(None, {})


@dataclass(eq=False)
class _Window:
    joiners: list[UUID] = field(default_factory=list)
    with_content: bool = False
    done: asyncio.Future[_Read] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def sharing(level: Level, user_id: UUID) -> Sharing | None:
    """The class of joiners shown the same rows that `user_id` with `level` is in; None:
    read alone."""
    if level is Level.WRITE:
        return Sharing.EDITORS
    if level is Level.READ and user_id == ANONYMOUS:
        return Sharing.VISITORS
    return None


class SnapshotReads:
    """Windows of joiners by project, each read once."""

    def __init__(
        self, pool: asyncpg.Pool, router: Router, window_seconds: float = WINDOW_SECONDS
    ) -> None:
        self._pool = pool
        self._router = router
        self._window = window_seconds
        self._windows: dict[UUID, _Window] = {}
        # When each recently read project may be read again (monotonic).
        self._next: dict[UUID, float] = {}
        self._tasks = OwnedTasks()

    async def close(self) -> None:
        """Shutdown, once every connection has ended: cancel what is still being read."""
        await self._tasks.close()

    async def view(
        self, project_id: UUID, user_id: UUID, *, with_content: bool
    ) -> SharedView | None:
        """The project as `user_id` (ANONYMOUS: a signed-out visitor) sees it, as of a
        snapshot taken after this call began; None when the user may not read it.

        The caller registers its subscription with the hub before calling."""
        window = self._windows.get(project_id)
        if window is None:
            window = self._windows[project_id] = _Window()
            self._tasks.start(self._read(project_id, window))
        window.joiners.append(user_id)
        window.with_content |= with_content
        read = await asyncio.shield(window.done)
        kind = sharing(level_of(read.acl, user_id), user_id)
        shared = read.shared.get(kind) if kind is not None else None
        if shared is not None:
            return shared
        return await self._alone(project_id, user_id, with_content)

    async def _alone(
        self, project_id: UUID, user_id: UUID, with_content: bool
    ) -> SharedView | None:
        async with self._pool.acquire() as conn:
            view = await view_project(conn, _reader(user_id), project_id, with_content=with_content)
        return None if view is None else self._kept(view)

    async def _read(self, project_id: UUID, window: _Window) -> None:
        try:
            await settle(window.done, self._read_window(project_id, window))
        finally:
            if self._windows.get(project_id) is window:
                del self._windows[project_id]

    async def _read_window(self, project_id: UUID, window: _Window) -> _Read:
        """Wait for the project's window to end, close it to later joiners, read once."""
        wait = self._next.get(project_id, 0.0) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        # Every joiner of the window registered before this point; later ones wait for
        # the next window, read after them.
        del self._windows[project_id]
        self._remember(project_id)
        if len(window.joiners) > 1:
            return await self._read_shared(project_id, window)
        return _ALONE

    async def _read_shared(self, project_id: UUID, window: _Window) -> _Read:
        """The access list and one view per class of the window's joiners, in one
        snapshot."""
        async with self._pool.acquire() as conn, project_reads(conn, project_id) as reads:
            acl = Acl.of(reads.access)
            readers: dict[Sharing, UUID] = {}
            for user_id in window.joiners:
                kind = sharing(level_of(acl, user_id), user_id)
                if kind is not None:
                    readers.setdefault(kind, user_id)
            shared: dict[Sharing, SharedView] = {}
            for kind, user_id in readers.items():
                view = await _as(reads, kind, user_id, project_id, window.with_content)
                if view is not None:
                    shared[kind] = self._kept(view)
        return _Read(acl, shared)

    def _kept(self, view: ProjectView) -> SharedView:
        """The view to hand out, its rows' parents noted for routing later changes."""
        for table, rows in (
            ("sitemaps", view.sitemaps),
            ("wireframes", view.wireframes),
            ("style_guides", view.style_guides),
        ):
            for row in rows:
                self._router.learn(table, row)
        return SharedView(view)

    def _remember(self, project_id: UUID) -> None:
        """Note the read: the project's next one waits for the window's end. Projects
        whose window is over are forgotten past FORGET_PAST (they are read at once)."""
        now = time.monotonic()
        if len(self._next) >= FORGET_PAST:
            self._next = {key: end for key, end in self._next.items() if end > now}
        self._next[project_id] = now + self._window


async def _as(
    reads: ProjectReads, kind: Sharing, user_id: UUID, project_id: UUID, with_content: bool
) -> ProjectView | None:
    """The class's view, read as `user_id`, one of its joiners; None when the database
    does not show it as the class expects (then each joiner is read alone)."""
    view = await reads.as_user(_reader(user_id), project_id, with_content=with_content)
    if view is None or view.editable is not (kind is Sharing.EDITORS):
        return None
    return view


def _reader(user_id: UUID) -> UUID | None:
    """Who the database sees reading: the user, or None (the `anon` role) for a
    signed-out visitor."""
    return None if user_id == ANONYMOUS else user_id
