"""Who may read and write a project, as of any position of the change stream.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from db.feed import Position
from db.queries import VisibilitySnapshot


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

    def level(self, user_id: UUID) -> Level:
        """`user_id`'s access (gateway.access.ANONYMOUS, no user, reads public ones)."""
        if user_id == self.owner or user_id in self.collaborators:
            return Level.WRITE
        return Level.READ if self.public else Level.NONE


def level_of(acl: Acl | None, user_id: UUID) -> Level:
    return Level.NONE if acl is None else acl.level(user_id)


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
    at_start = level_of(acl, user_id)
    acl = acl_seen
    for index, entry in enumerate(entries):
        if seen_flags[index]:
            continue
        if entry.acl is not None:
            acl = entry.acl.after
        levels[index] = level_of(acl, user_id)
    final = levels[-1] if entries else level_of(acl_seen, user_id)
    if at_start is Level.NONE or Level.NONE in levels:
        return ReplayPlan([], final, "you could not read the project all along since then")
    sent = [
        entry
        for entry, level in zip(entries, levels, strict=True)
        if level is Level.WRITE or not entry.members_only
    ]
    return ReplayPlan(sent, final)
