"""Recent changes of every project, so a client that reconnects gets what it missed.

Every change the dispatcher publishes is kept here, as the protocol-neutral event it
published (gateway.core.events), whether or not anyone subscribes at that moment:
the client that missed it is by definition not subscribed. Memory is bounded three
ways (per project by count, overall by bytes and by age). A project's *floor* is the
newest position it has forgotten; a client resuming from a position at or after the
floor gets exactly the changes after it, from before the floor only a `reset` and a
fresh snapshot are honest.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

from db.feed import Position
from gateway.core.events import Change

# What a kept change costs, in bytes (its usual encoding's size, say).
Sizer = Callable[[Change], int]


@dataclass(slots=True)
class _Project:
    floor: Position
    entries: deque[Change] = field(default_factory=deque)


class _Stored(NamedTuple):
    """A tuple: one is made per change recorded, and a frozen dataclass costs twice
    (made with tuple.__new__: a named tuple's own __new__ is a Python function)."""

    project_id: UUID
    position: Position
    size: int
    stored_at: float


_new_tuple = tuple.__new__


class History:
    def __init__(
        self,
        *,
        max_per_project: int,
        max_bytes: int,
        max_age_seconds: float,
        size_of: Sizer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`size_of`: how many bytes a change counts against `max_bytes`."""
        self._max_per_project = max_per_project
        self._max_bytes = max_bytes
        self._max_age = max_age_seconds
        self._size_of = size_of
        self._clock = clock
        self._floor: Position | None = None
        self._latest: Position | None = None
        self._latest_at = 0.0
        self._projects: dict[UUID, _Project] = {}
        self._order: deque[_Stored] = deque()
        self._bytes = 0

    @property
    def started(self) -> bool:
        return self._floor is not None

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def start(self, floor: Position) -> None:
        """Forget everything: changes after `floor` (exclusive) will be recorded."""
        self._floor = floor
        self._latest = floor
        self._latest_at = self._clock()
        self._projects.clear()
        self._order.clear()
        self._bytes = 0

    def record(self, change: Change) -> None:
        assert self._floor is not None, "History.start() first"
        project_id = change.project_id
        project = self._projects.get(project_id)
        if project is None:
            project = self._projects[project_id] = _Project(self._floor)
        project.entries.append(change)
        size = self._size_of(change)
        now = self._clock()
        position = change.position
        self._order.append(_new_tuple(_Stored, (project_id, position, size, now)))
        self._bytes += size
        # `advance`, the clock read once for all (changes come in order)
        if self._latest is None or position > self._latest:
            self._latest = position
            self._latest_at = now
        if len(project.entries) > self._max_per_project:
            project.floor = project.entries.popleft().position
        if self._bytes > self._max_bytes or self._order[0].stored_at < now - self._max_age:
            self.expire()

    def advance(self, position: Position) -> None:
        """The feed got this far, whether or not the change was for any project."""
        if self._latest is None or position > self._latest:
            self._latest = position
            self._latest_at = self._clock()

    def expire(self) -> None:
        """Drop what is too old or over the byte budget, oldest first."""
        deadline = self._clock() - self._max_age
        while self._order and (
            self._bytes > self._max_bytes or self._order[0].stored_at < deadline
        ):
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        stored = self._order.popleft()
        self._bytes -= stored.size
        self._floor = stored.position
        project = self._projects.get(stored.project_id)
        if project is None:
            return
        if project.entries and project.entries[0].position == stored.position:
            project.entries.popleft()
        if not project.entries:
            del self._projects[stored.project_id]

    def covers(self, project_id: UUID, since: Position) -> bool:
        """Whether every change of the project after `since` is still here."""
        if self._floor is None or self._latest is None or since.epoch != self._floor.epoch:
            return False
        project = self._projects.get(project_id)
        floor = self._floor if project is None else max(project.floor, self._floor)
        return since >= floor

    def after(self, project_id: UUID, since: Position) -> list[Change]:
        project = self._projects.get(project_id)
        if project is None:
            return []
        return [entry for entry in project.entries if entry.position > since]

    @property
    def latest(self) -> Position | None:
        """The newest recorded position (the floor when nothing was recorded since)."""
        return self._latest

    def oldest(self) -> Position | None:
        """From where a durable feed must still be able to replay after a restart: the
        floor, the lowest position `covers` accepts (snapshots and changes were handed
        out at or after it). None once nothing is kept and nothing arrived for longer
        than the age limit: then no position is promised beyond this process."""
        if self._floor is None:
            return None
        if self._order or self._clock() - self._latest_at <= self._max_age:
            return self._floor
        return None
