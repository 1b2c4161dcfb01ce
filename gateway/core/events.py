"""What the core hands the protocols: protocol-neutral events.

The dispatcher turns each row change of the feed into one `Change` per project it
concerns (typed row values, position, actor, the request that made it). The history
keeps these same objects, and every protocol adapter encodes them in its own shape
(gateway.native.views, gateway.supabase.views), at most once per variant: an
encoding worth reusing (the frame most subscribers share, which replays send again)
is kept on the event (`memo`), the others live for one delivery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import orjson

from db.feed import JsonText, Position
from gateway.core.authorization import AclChange
from gateway.core.origin import Origin
from protocol.rows import ENTITY_ROWS, Entity, Row

T = TypeVar("T")

logger = logging.getLogger(__name__)


class TypedRow:
    """A row the replication feed's decoder typed (UUIDs, datetimes, json and jsonb
    still as PostgreSQL's text, db.feed.JsonText), not built into its model yet.

    Most changes never need the parsed JSON: the frame full subscribers share and the
    history's copy embed PostgreSQL's text as it is (`json`, `written`), so a 2 KB
    layout is not parsed (7-9 µs here) only to be written back. The model, JSON
    parsed, is built when something reads the row's values (deltas, filters, the
    Supabase views)."""

    __slots__ = ("_json", "_model", "_values", "_written")

    def __init__(self, model: type[Row], values: dict[str, Any]) -> None:
        self._model = model
        self._values = values
        # What `written` returns, made once.
        self._written: dict[str, Any] | None = None
        # What `json` returns, made once (b"": it cannot be): the frame and the
        # history's copy both embed these bytes, so the row is encoded once.
        self._json: bytes | None = None

    def build(self) -> Row:
        """`model.model_construct(**values)`, JSON text parsed. A row with exactly the
        model's columns (the usual one) is set up as model_construct would (none of the
        row models has aliases, defaults to fill or private attributes) in a third of
        its time; any other goes through it."""
        model = self._model
        fields = model.__pydantic_fields__
        parsed = {
            name: _parsed(value) if type(value) is JsonText else value
            for name, value in self._values.items()
        }
        if parsed.keys() != fields.keys():
            return model.model_construct(**parsed)
        row = model.__new__(model)
        _set(row, "__dict__", {name: parsed[name] for name in fields})
        _set(row, "__pydantic_fields_set__", set(fields))
        _set(row, "__pydantic_extra__", {} if model.model_config.get("extra") == "allow" else None)
        _set(row, "__pydantic_private__", None)
        return row

    def json(self) -> bytes | None:
        """The row as orjson writes `written` (datetimes with `Z`), made straight from
        the values when they are in the model's order (the decoder's, usually): each
        JSON column goes through `default` as PostgreSQL's text, with no dict made.
        None when `written` is, or for a value orjson does not write (it dumps
        through its model)."""
        if self._json is None:
            values: dict[str, Any] | None = self._values
            if tuple(self._values) != _field_names(self._model):
                values = self.written()
            try:
                self._json = b"" if values is None else _dumps_row(values)
            except TypeError:
                self._json = b""
        return self._json or None

    def written(self) -> dict[str, Any] | None:
        """The values as orjson writes the built row, in the model's order, each JSON
        column an `orjson.Fragment` of PostgreSQL's text: equal in meaning, not in
        bytes (jsonb's text has a space after each `,` and `:`, and its numbers are
        written as PostgreSQL has them). None for a row with columns other than the
        model's (it dumps through its model)."""
        if self._written is None:
            values = self._values
            fields = self._model.__pydantic_fields__
            if values.keys() != fields.keys():
                return None
            self._written = {
                name: orjson.Fragment(str(value)) if type(value) is JsonText else value
                for name in fields
                for value in (values[name],)
            }
        return self._written


_set = object.__setattr__

_ROW_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_UTC_Z
_FIELD_NAMES: dict[type[Row], tuple[str, ...]] = {}


def _field_names(model: type[Row]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(model)
    if names is None:
        names = _FIELD_NAMES[model] = tuple(model.__pydantic_fields__)
    return names


def _json_text(value: object) -> orjson.Fragment:
    """orjson's `default` for a typed row: a JSON column (the only str subclass in one)
    is embedded as it is."""
    if type(value) is JsonText:
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON text")


def _dumps_row(values: dict[str, Any]) -> bytes:
    return orjson.dumps(values, default=_json_text, option=_ROW_OPTIONS)


def _parsed(text: JsonText) -> Any:
    """A JSON column's value. JSON PostgreSQL took and orjson refuses (nested over
    1,024 deep, a number beyond a double's range) is parsed by the json module (which
    keeps such numbers as it can) or, nested past its recursion limit, read as null:
    the row is built lazily, wherever its values are first read, so it must not raise
    (subscribers of the shared frame receive PostgreSQL's text as it is)."""
    try:
        return orjson.loads(str(text))
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except RecursionError:
            logger.error("a JSON value nested too deep to parse is read as null")
            return None


# What `Change.memo` has not made yet.
_UNMADE: Any = object()

# A row, or its typed values to build it from when it is first read.
RowSource = Row | TypedRow

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
        if isinstance(row, TypedRow):
            self._new = row = row.build()
        return row

    @property
    def old(self) -> Row | None:
        if self._settled is not None:
            return self._kept(1)
        row = self._old
        if isinstance(row, TypedRow):
            self._old = row = row.build()
        return row

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
        only encodings are kept). Looked up with `get`: every event misses once per key,
        and a KeyError raised and caught costs more than the lookup."""
        value: T = self._memo.get(key, _UNMADE)
        if value is _UNMADE:
            value = make(self)
            if self._settled is None or isinstance(value, bytes):
                self._memo[key] = value
        return value

    def settle(self) -> None:
        """Keep the rows as JSON text from now on (see the class's docstring)."""
        if self._settled is not None:
            return
        self._settled = (self._settled_row(self._new), self._settled_row(self._old))
        self._new = self._old = None
        self._memo = {k: v for k, v in self._memo.items() if isinstance(v, bytes)}

    def written(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """`new` and `old` as orjson writes them (gateway.native.views): a row not built
        yet with its JSON columns as PostgreSQL's text (`TypedRow.written`), any other
        as its values (extra columns last, as it dumps)."""
        return self._written_row(0), self._written_row(1)

    def written_json(self) -> tuple[Any, Any]:
        """As `written`, a row not built yet as its JSON text (`TypedRow.json`, an
        orjson.Fragment to embed): the bytes `settle` keeps for the history."""
        return self._written_json(0), self._written_json(1)

    def _written_json(self, index: int) -> Any:
        if self._settled is None:
            source = self._new if index == 0 else self._old
            if isinstance(source, TypedRow):
                text = source.json()
                if text is not None:
                    return orjson.Fragment(text)
        return self._written_row(index)

    def _written_row(self, index: int) -> dict[str, Any] | None:
        if self._settled is None:
            source = self._new if index == 0 else self._old
            if isinstance(source, TypedRow):
                written = source.written()
                if written is not None:
                    return written
        row = self.new if index == 0 else self.old
        if row is None:
            return None
        extra = row.__pydantic_extra__
        return {**row.__dict__, **extra} if extra else row.__dict__

    def _settled_row(self, source: RowSource | None) -> bytes | None:
        """A row's JSON text for the history: as the frame embedded it when it was never
        built (`TypedRow.json`: JSON columns as PostgreSQL's text), else from the row."""
        if source is None:
            return None
        if isinstance(source, TypedRow):
            text = source.json()
            if text is not None:
                return text
            source = source.build()
        return _json(source)

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
