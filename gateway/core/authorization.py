"""Who may read and write a project, as of any position of the change stream: the one
place that decides whether a principal may receive a change.

A project's access list (`Acl`: owner, collaborators, public) decides it, by the rule
the database's row-level security applies (migration 0005: `can_read_project`,
`can_edit_project`): the owner and collaborators may read and write and see the
members-only rows (builder sessions, versions); anyone, signed in or not, may read a
public project. Access changes are changes of the project row, which come through the
feed in commit order like every other change; the history keeps each one's access
list before and after (`AclChange`), so the access a user had at any position it
holds is known exactly, not as of the moment someone asks.

`plan_replay` is how a resume uses that: from the access list as of one database
snapshot and the history's changes, it says which changes after the client's position
the user could read when each was committed, or that nothing may be replayed because
the user could not read the project all along (a `reset` and a fresh snapshot are then
the honest answer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Generic, Protocol, TypeVar
from uuid import UUID

import asyncpg

from db.feed import Position
from db.queries import VisibilitySnapshot

# The principal of an `anon` key: no user; reads public projects only.
ANONYMOUS: Final = UUID(int=0)


class Level(IntEnum):
    """What a principal may do with a project: ordered, so `>=` reads as "at least"."""

    NONE = 0
    READ = 1
    WRITE = 2


@dataclass(frozen=True, slots=True)
class Acl:
    owner: UUID
    collaborators: frozenset[UUID]
    public: bool

    @classmethod
    def of(cls, row: Mapping[str, Any] | None) -> Acl | None:
        """The access list of a project row (column → value), None for no row."""
        if row is None:
            return None
        return cls(
            owner=UUID(str(row["user_id"])),
            collaborators=frozenset(UUID(str(c)) for c in row.get("collaborators") or ()),
            public=bool(row.get("is_public")),
        )

    @property
    def members(self) -> frozenset[UUID]:
        """Who may write: the owner and the collaborators (their lists show it)."""
        return self.collaborators | {self.owner}

    def level(self, user_id: UUID) -> Level:
        """`user_id`'s access (ANONYMOUS, no user, reads public ones)."""
        if user_id == self.owner or user_id in self.collaborators:
            return Level.WRITE
        return Level.READ if self.public else Level.NONE


def level_of(acl: Acl | None, user_id: UUID) -> Level:
    return Level.NONE if acl is None else acl.level(user_id)


def required(members_only: bool) -> Level:
    """The access a change needs: members-only rows (builder sessions, versions) need
    write access, any other row read access."""
    return Level.WRITE if members_only else Level.READ


def may_receive(level: Level, members_only: bool) -> bool:
    """Whether a principal with `level` may receive a change."""
    return level >= required(members_only)


@dataclass(frozen=True, slots=True)
class AclChange:
    """A project row's access list just before and just after one change (None: the
    project did not exist then)."""

    before: Acl | None
    after: Acl | None

    @classmethod
    def of(cls, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> AclChange | None:
        """The change a project row change makes to access, None when it makes none."""
        before, after = Acl.of(old), Acl.of(new)
        return None if before == after and old is not None else cls(before, after)


class Replayable(Protocol):
    """What a history entry tells the plan (gateway.history.Entry)."""

    @property
    def position(self) -> Position: ...

    @property
    def xid(self) -> int: ...

    @property
    def members_only(self) -> bool: ...

    @property
    def acl(self) -> AclChange | None: ...


E = TypeVar("E", bound=Replayable)


@dataclass(frozen=True, slots=True)
class ReplayPlan(Generic[E]):
    """What a resume sends: `entries` (those the user could read when committed), or
    nothing and `refused`, the reason a fresh snapshot must be sent instead. `level`:
    the user's access after the last entry (the subscription's from then on)."""

    entries: list[E]
    level: Level
    refused: str | None = None


def plan_replay(
    user_id: UUID, acl_seen: Acl | None, seen: VisibilitySnapshot, entries: Sequence[E]
) -> ReplayPlan[E]:
    """Which of the project's `entries` (in commit order, after the client's position)
    the user may be sent, given the project's access list as of snapshot `seen`.

    Every transaction `seen` saw must be among the entries or before them (the caller
    waited for a fence after taking the snapshot). The access list before each entry
    is worked out backwards from `acl_seen` over the entries the snapshot saw, and
    forwards over those it did not."""
    seen_flags = [seen.sees(entry.xid) for entry in entries]
    levels: list[Level] = [Level.NONE] * len(entries)
    acl = acl_seen
    for index in reversed(range(len(entries))):
        if not seen_flags[index]:
            continue
        levels[index] = level_of(acl, user_id)
        change = entries[index].acl
        if change is not None:
            acl = change.before
    at_start, existed = level_of(acl, user_id), acl is not None
    acl = acl_seen
    for index, entry in enumerate(entries):
        if seen_flags[index]:
            continue
        if entry.acl is not None:
            acl = entry.acl.after
        levels[index] = level_of(acl, user_id)
    final = levels[-1] if entries else level_of(acl_seen, user_id)
    # A project created since has nothing before its creation to keep from anyone.
    if Level.NONE in levels or (existed and at_start is Level.NONE):
        return ReplayPlan([], final, "you could not read the project all along since then")
    sent = [
        entry
        for entry, level in zip(entries, levels, strict=True)
        if level is Level.WRITE or not entry.members_only
    ]
    return ReplayPlan(sent, final)


class Undetermined:
    """The access list as of a position could not be known (see AccessLists.at)."""


UNDETERMINED: Final = Undetermined()


class AccessLists:
    """The access lists of projects as of the dispatcher's position, for deliveries
    that are not to one project's subscribers (table channels). It owns its cache and
    its invalidation: the project-row changes the dispatcher passes it.

    A project-row change in the stream sets its project's list exactly. A project not
    seen since is read from the database, where it may already be newer than the
    dispatcher's position: the row's `xmin` (the transaction that wrote it last) tells.
    When that transaction has been dispatched (a fence that passed had seen it, or it
    was dispatched since), nothing changed the row after the position and the list
    read is the one as of it; otherwise it is UNDETERMINED for this change. The least
    recently used projects are forgotten past `capacity`."""

    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self._pool = pool
        self._capacity = capacity
        self._lists: OrderedDict[UUID, Acl | None] = OrderedDict()
        self._fenced: VisibilitySnapshot | None = None
        # Transactions dispatched that the last fence's snapshot had not seen, by the
        # 32-bit xid a row's xmin shows (the value: the full xid).
        self._dispatched: dict[int, int] = {}

    def changed(self, project_id: UUID, change: AclChange) -> None:
        """A project-row change was dispatched: its list is now `change.after`."""
        self._keep(project_id, change.after)

    def dispatched(self, xid: int) -> None:
        self._dispatched[xid & 0xFFFFFFFF] = xid

    def fence_passed(self, seen: VisibilitySnapshot) -> None:
        """Every transaction `seen` saw has been dispatched."""
        self._fenced = seen
        self._dispatched = {
            short: xid for short, xid in self._dispatched.items() if not seen.sees(xid)
        }

    async def at(self, project_id: UUID) -> Acl | Undetermined | None:
        """The project's access list as of the dispatcher's position (None: no such
        project)."""
        if project_id in self._lists:
            self._lists.move_to_end(project_id)
            return self._lists[project_id]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT user_id, collaborators, is_public, xmin::text::bigint AS written_by"
                " FROM public.projects WHERE id = $1",
                project_id,
            )
        if row is None:
            return None  # its delete was dispatched, or is to come: unreadable either way
        if not self._was_dispatched(int(row["written_by"])):
            return UNDETERMINED
        acl = Acl.of(dict(row))
        self._keep(project_id, acl)
        return acl

    def _was_dispatched(self, xid32: int) -> bool:
        if xid32 in self._dispatched:
            return True
        fenced = self._fenced
        return fenced is not None and fenced.sees(_widen(xid32, fenced.xmax))

    def _keep(self, project_id: UUID, acl: Acl | None) -> None:
        self._lists[project_id] = acl
        self._lists.move_to_end(project_id)
        if len(self._lists) > self._capacity:
            self._lists.popitem(last=False)


def _widen(xid32: int, reference: int) -> int:
    """The 64-bit xid of a 32-bit one (as `xmin` is), near `reference`."""
    full = (reference & ~0xFFFFFFFF) | xid32
    if full > reference + (1 << 31):
        full -= 1 << 32
    return full
