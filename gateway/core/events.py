"""What the core hands the protocols: protocol-neutral events.

The dispatcher turns each row change of the feed into one `Change` per project it
concerns (typed row values, position, actor, the request that made it). The history
keeps these same objects, and every protocol adapter encodes them in its own shape
(gateway.native.views, gateway.supabase.views), at most once per variant: an
encoding worth reusing (the frame most subscribers share, which replays send again)
is kept on the event (`memo`), the others live for one delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

from db.feed import Position
from gateway.core.authorization import AclChange
from gateway.core.origin import Origin
from protocol.rows import Entity, Row

T = TypeVar("T")

# What row-level security shows to project members only, never to public readers.
MEMBERS_ONLY = frozenset({Entity.SESSION, Entity.VERSION})


class Op(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Loss(StrEnum):
    """Why a subscriber may have missed changes (it is told, then made whole)."""

    FEED_INTERRUPTED = "feed_interrupted"
    HISTORY_UNAVAILABLE = "history_unavailable"
    TRUNCATED = "truncated"


@dataclass(slots=True, eq=False)
class Change:
    """One committed row change, as it concerns one project.

    `acl`: for a change of the project row, what it did to access (a resume needs it
    to tell who could read what when: gateway.core.authorization). `listed`: the
    change as a member's project list shows it (its `op` is what happened to the
    list: a project added to it is an insert there, whatever the row change was)."""

    project_id: UUID
    entity: Entity
    table: str
    op: Op
    new: Row | None
    old: Row | None
    actor: UUID | None
    committed_at: datetime
    position: Position
    xid: int
    origin: Origin | None = None
    acl: AclChange | None = None
    listed: bool = False
    members_only: bool = field(init=False)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.members_only = self.entity in MEMBERS_ONLY

    @property
    def row(self) -> Row:
        """The row as it is now, or as it was for a delete."""
        row = self.old if self.op is Op.DELETE else self.new
        assert row is not None, "an insert or update has a new row, a delete an old one"
        return row

    def values(self) -> Mapping[str, Any]:
        """`row`'s Python values (what row filters compare), computed once."""
        return self.memo("values", lambda change: change.row.model_dump())

    def memo(self, key: str, make: Callable[[Change], T]) -> T:
        """`make(self)`, computed once per key for the life of the event."""
        try:
            value: T = self._memo[key]
        except KeyError:
            value = self._memo[key] = make(self)
        return value

    def made_by(self, connection_id: int, user_id: UUID) -> bool:
        """Whether the request of this connection, signed in as `user_id`, made it."""
        return (
            self.origin is not None
            and self.origin.connection_id == connection_id
            and self.actor == user_id
        )
