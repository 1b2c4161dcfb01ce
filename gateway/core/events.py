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
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

from db.feed import Position
from gateway.core.authorization import AclChange
from gateway.core.origin import Origin
from protocol.rows import ENTITY_ROWS, Entity, Row

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


class Change:
    """One committed row change, as it concerns one project.

    `acl`: for a change of the project row, what it did to access (a resume needs it
    to tell who could read what when: gateway.core.authorization). `listed`: the
    change as a member's project list shows it (its `op` is what happened to the
    list: a project added to it is an insert there, whatever the row change was).

    Once published, the history keeps the event for replays: `settle` then trades its
    row objects (parsed JSON, many small objects the garbage collector would walk for
    as long as the history keeps them) for the rows' JSON text, and keeps only the
    encodings (bytes) of its memo; `new` and `old` are read back from the text on
    demand."""

    __slots__ = (
        "_memo",
        "_new",
        "_old",
        "_settled",
        "acl",
        "actor",
        "committed_at",
        "entity",
        "listed",
        "members_only",
        "op",
        "origin",
        "position",
        "project_id",
        "table",
        "xid",
    )

    def __init__(
        self,
        *,
        project_id: UUID,
        entity: Entity,
        table: str,
        op: Op,
        new: Row | None,
        old: Row | None,
        actor: UUID | None,
        committed_at: datetime,
        position: Position,
        xid: int,
        origin: Origin | None = None,
        acl: AclChange | None = None,
        listed: bool = False,
    ) -> None:
        self.project_id = project_id
        self.entity = entity
        self.table = table
        self.op = op
        self.actor = actor
        self.committed_at = committed_at
        self.position = position
        self.xid = xid
        self.origin = origin
        self.acl = acl
        self.listed = listed
        self.members_only = entity in MEMBERS_ONLY
        self._new = new
        self._old = old
        self._settled: tuple[bytes | None, bytes | None] | None = None
        self._memo: dict[str, Any] = {}

    @property
    def new(self) -> Row | None:
        return self._row(self._new, 0)

    @property
    def old(self) -> Row | None:
        return self._row(self._old, 1)

    def _row(self, row: Row | None, index: int) -> Row | None:
        kept = self._settled[index] if self._settled is not None else None
        if kept is None:
            return row
        return ENTITY_ROWS[self.entity].model_validate_json(kept)

    @property
    def row(self) -> Row:
        """The row as it is now, or as it was for a delete."""
        row = self.old if self.op is Op.DELETE else self.new
        assert row is not None, "an insert or update has a new row, a delete an old one"
        return row

    def values(self) -> Mapping[str, Any]:
        """`row`'s Python values (what row filters compare)."""
        return self.memo("values", lambda change: change.row.model_dump())

    def memo(self, key: str, make: Callable[[Change], T]) -> T:
        """`make(self)`, computed once per key for the life of the event (once settled,
        only encodings are kept)."""
        try:
            value: T = self._memo[key]
        except KeyError:
            value = make(self)
            if self._settled is None or isinstance(value, bytes):
                self._memo[key] = value
        return value

    def settle(self) -> None:
        """Keep the rows as JSON text from now on (see the class's docstring)."""
        if self._settled is not None:
            return
        self._settled = (
            self._new.model_dump_json().encode() if self._new is not None else None,
            self._old.model_dump_json().encode() if self._old is not None else None,
        )
        self._new = self._old = None
        self._memo = {k: v for k, v in self._memo.items() if isinstance(v, bytes)}

    def made_by(self, connection_id: int, user_id: UUID) -> bool:
        """Whether the request of this connection, signed in as `user_id`, made it."""
        return (
            self.origin is not None
            and self.origin.connection_id == connection_id
            and self.actor == user_id
        )
