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

import orjson

from db.feed import Position
from gateway.core.authorization import AclChange
from gateway.core.origin import Origin
from protocol.rows import ENTITY_ROWS, Entity, Row

T = TypeVar("T")

# A row, or what builds it when it is first read (gateway.core.dispatcher: the rows
# whose JSON columns are parsed only when the change is published).
RowSource = Row | Callable[[], Row]

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
    demand. A row given as a source is built when it is first read (`build`)."""

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
        new: RowSource | None,
        old: RowSource | None,
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
        if self._settled is not None:
            return self._kept(0)
        row = self._new
        if callable(row):
            self._new = row = row()
        return row

    @property
    def old(self) -> Row | None:
        if self._settled is not None:
            return self._kept(1)
        row = self._old
        if callable(row):
            self._old = row = row()
        return row

    def build(self) -> None:
        """Build the rows given as sources now: raises what building them raises."""
        _ = self.new, self.old

    def _kept(self, index: int) -> Row | None:
        assert self._settled is not None
        kept = self._settled[index]
        return None if kept is None else ENTITY_ROWS[self.entity].model_validate_json(kept)

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
        new, old = self.new, self.old
        self._settled = (
            _json(new) if new is not None else None,
            _json(old) if old is not None else None,
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


def _json(row: Row) -> bytes:
    """JSON text the row's model reads back to an equal row. orjson writes the declared
    fields' values (UUIDs, datetimes, JSON trees) in a fifth of pydantic's time, and the
    model converts them back as it would its own output; extra columns would stay as
    written (their type is unknown), so a row with any, or with a value orjson does not
    know, is written by pydantic."""
    if not row.__pydantic_extra__:
        try:
            return orjson.dumps(row.__dict__)
        except TypeError:
            pass
    return row.model_dump_json().encode()
