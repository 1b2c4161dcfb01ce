"""Decoding of the `pgoutput` logical replication plugin's messages (protocol 1-4), no I/O.

The replication feed receives each message as the payload of one XLogData frame; this
module turns it into a dataclass and column values into Python values. Layouts follow
PostgreSQL's src/backend/replication/logical/proto.c: big-endian integers, C strings,
timestamps as microseconds since 2000-01-01 UTC.

Changes inside a streamed transaction (protocol ≥ 2, `streaming` on) carry an xid
before their own fields, and nothing in the message says so; only its position between
Stream Start and Stream Stop does. `Decoder` follows that position, `decode_message`
is told it. That xid is the (sub)transaction's that made the change, not necessarily
the one Stream Start names: a Stream Abort of a subtransaction names it as `subxid`.

Column values stay as the server sent them (`TupleData`) until `row_of` or
`RelationCache.row` converts text by column type, so a consumer that drops a change
never pays for converting it; a consumer that converts every row decodes an Insert
straight into one (`RelationCache.insert`: one pass, no message object). Text values
assume the server's defaults for `DateStyle` (ISO) and `bytea_output` (hex); any
`TimeZone` is fine.

Two-phase commit messages (protocol 3 with `two_phase` on) are not decoded: the feed
never asks for them, so they raise `PgOutputError` like any unknown message.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Final
from uuid import UUID, SafeUUID

import orjson


class PgOutputError(ValueError):
    """A message or value this module cannot decode (malformed, or of an unknown kind)."""


class Unchanged(Enum):
    """A TOASTed value the update did not change: the server does not resend it."""

    VALUE = "unchanged"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.VALUE

# A column as sent: None for NULL, str for text format, bytes for binary format.
ColumnValue = str | bytes | Unchanged | None
TupleData = tuple[ColumnValue, ...]


# Messages


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed from `name`, where it committed at `commit_lsn`."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Part of the replica identity (every column under REPLICA IDENTITY FULL)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """Sent before a relation's first change in a session and again after it changes."""

    relation_id: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Type:
    """Names a non-built-in column type before a relation using it."""

    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """`old` under REPLICA IDENTITY FULL, `key` when an identity column changed, else neither."""

    relation_id: int
    old: TupleData | None
    key: TupleData | None
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """`old` under REPLICA IDENTITY FULL, else `key`: only the identity columns are set."""

    relation_id: int
    old: TupleData | None
    key: TupleData | None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """From pg_logical_emit_message; a non-transactional one arrives outside Begin/Commit."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """`xid` aborted, or only its subtransaction `subxid` when they differ. The abort's
    LSN and time are sent only with `streaming` = parallel (protocol 4)."""

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time: datetime | None = None


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


# Decoding

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_BEGIN: Final = struct.Struct(">QqI")
_COMMIT: Final = struct.Struct(">BQQq")
_COLUMN_TYPE: Final = struct.Struct(">Ii")
_STREAM_START: Final = struct.Struct(">IB")
_STREAM_COMMIT: Final = struct.Struct(">IBQQq")
_STREAM_ABORT: Final = struct.Struct(">II")
_PARALLEL_STREAM_ABORT: Final = struct.Struct(">IIQq")
_TRUNCATE: Final = struct.Struct(">IB")
_MESSAGE: Final = struct.Struct(">BQ")

_TEXT: Final = ord("t")
_NULL: Final = ord("n")
_TOAST: Final = ord("u")
_BINARY: Final = ord("b")
_NEW: Final = ord("N")
_OLD: Final = ord("O")
_KEY: Final = ord("K")


def _pg_time(microseconds: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=microseconds)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


def _namespace(data: bytes, pos: int) -> tuple[str, int]:
    """The server sends pg_catalog as an empty name, to save space."""
    name, pos = _string(data, pos)
    return name or "pg_catalog", pos


def _tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """The hot loop. Slicing `bytes` and decoding the slice is faster than going through
    a memoryview for values of the usual size, so messages stay `bytes` throughout."""
    (count,) = _U16.unpack_from(data, pos)
    pos += 2
    values: list[ColumnValue] = []
    append = values.append
    unpack_length = _U32.unpack_from
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            end = pos + 5 + unpack_length(data, pos + 1)[0]
            append(data[pos + 5 : end].decode())
            pos = end
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOAST:
            append(UNCHANGED)
            pos += 1
        elif kind == _BINARY:
            end = pos + 5 + unpack_length(data, pos + 1)[0]
            append(data[pos + 5 : end])
            pos = end
        else:
            raise PgOutputError(f"unknown tuple column kind {chr(kind)!r}")
    if pos > len(data):
        raise PgOutputError("message truncated: tuple data runs past its end")
    return tuple(values), pos


def _expect_end(data: bytes, pos: int) -> None:
    if pos > len(data):
        raise PgOutputError(f"message truncated: {pos - len(data)} bytes missing")
    if pos < len(data):
        raise PgOutputError(f"{len(data) - pos} unexpected bytes after the message")


def _fixed(layout: struct.Struct, data: bytes) -> tuple[Any, ...]:
    """The fields of a message that is its type byte plus `layout`, exactly."""
    _expect_end(data, 1 + layout.size)
    return layout.unpack_from(data, 1)


def _xid_prefix(data: bytes, in_stream: bool) -> tuple[int | None, int]:
    """The streamed transaction's xid, present inside Stream Start/Stop only."""
    if in_stream:
        return _U32.unpack_from(data, 1)[0], 5
    return None, 1


def _begin(data: bytes, in_stream: bool) -> Begin:
    final_lsn, commit_time, xid = _fixed(_BEGIN, data)
    return Begin(final_lsn, _pg_time(commit_time), xid)


def _commit(data: bytes, in_stream: bool) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = _fixed(_COMMIT, data)
    return Commit(flags, commit_lsn, end_lsn, _pg_time(commit_time))


def _origin(data: bytes, in_stream: bool) -> Origin:
    (commit_lsn,) = _U64.unpack_from(data, 1)
    name, pos = _string(data, 9)
    _expect_end(data, pos)
    return Origin(commit_lsn, name)


def _relation(data: bytes, in_stream: bool) -> Relation:
    xid, pos = _xid_prefix(data, in_stream)
    (relation_id,) = _U32.unpack_from(data, pos)
    namespace, pos = _namespace(data, pos + 4)
    name, pos = _string(data, pos)
    replica_identity = chr(data[pos])
    (count,) = _U16.unpack_from(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column_name, pos = _string(data, pos + 1)
        type_oid, type_modifier = _COLUMN_TYPE.unpack_from(data, pos)
        pos += _COLUMN_TYPE.size
        columns.append(Column(flags, column_name, type_oid, type_modifier))
    _expect_end(data, pos)
    return Relation(relation_id, namespace, name, replica_identity, tuple(columns), xid)


def _type(data: bytes, in_stream: bool) -> Type:
    xid, pos = _xid_prefix(data, in_stream)
    (type_oid,) = _U32.unpack_from(data, pos)
    namespace, pos = _namespace(data, pos + 4)
    name, pos = _string(data, pos)
    _expect_end(data, pos)
    return Type(type_oid, namespace, name, xid)


def _insert(data: bytes, in_stream: bool) -> Insert:
    xid, pos = _xid_prefix(data, in_stream)
    (relation_id,) = _U32.unpack_from(data, pos)
    if data[pos + 4] != _NEW:
        raise PgOutputError(f"insert: expected a new tuple ('N'), got {chr(data[pos + 4])!r}")
    new, pos = _tuple(data, pos + 5)
    _expect_end(data, pos)
    return Insert(relation_id, new, xid)


def _update(data: bytes, in_stream: bool) -> Update:
    xid, pos = _xid_prefix(data, in_stream)
    (relation_id,) = _U32.unpack_from(data, pos)
    pos += 4
    old = key = None
    kind = data[pos]
    if kind == _OLD:
        old, pos = _tuple(data, pos + 1)
    elif kind == _KEY:
        key, pos = _tuple(data, pos + 1)
    if data[pos] != _NEW:
        raise PgOutputError(f"update: expected a new tuple ('N'), got {chr(data[pos])!r}")
    new, pos = _tuple(data, pos + 1)
    _expect_end(data, pos)
    return Update(relation_id, old, key, new, xid)


def _delete(data: bytes, in_stream: bool) -> Delete:
    xid, pos = _xid_prefix(data, in_stream)
    (relation_id,) = _U32.unpack_from(data, pos)
    kind = data[pos + 4]
    if kind not in (_OLD, _KEY):
        raise PgOutputError(f"delete: expected an old tuple or key, got {chr(kind)!r}")
    old, pos = _tuple(data, pos + 5)
    _expect_end(data, pos)
    if kind == _KEY:
        return Delete(relation_id, None, old, xid)
    return Delete(relation_id, old, None, xid)


def _truncate(data: bytes, in_stream: bool) -> Truncate:
    xid, pos = _xid_prefix(data, in_stream)
    count, options = _TRUNCATE.unpack_from(data, pos)
    pos += _TRUNCATE.size
    _expect_end(data, pos + 4 * count)
    relation_ids = struct.unpack_from(f">{count}I", data, pos)
    return Truncate(relation_ids, bool(options & 1), bool(options & 2), xid)


def _message(data: bytes, in_stream: bool) -> LogicalMessage:
    xid, pos = _xid_prefix(data, in_stream)
    flags, lsn = _MESSAGE.unpack_from(data, pos)
    prefix, pos = _string(data, pos + _MESSAGE.size)
    (length,) = _U32.unpack_from(data, pos)
    pos += 4
    _expect_end(data, pos + length)
    return LogicalMessage(bool(flags & 1), lsn, prefix, data[pos:], xid)


def _stream_start(data: bytes, in_stream: bool) -> StreamStart:
    xid, first_segment = _fixed(_STREAM_START, data)
    return StreamStart(xid, first_segment == 1)


def _stream_stop(data: bytes, in_stream: bool) -> StreamStop:
    _expect_end(data, 1)
    return StreamStop()


def _stream_commit(data: bytes, in_stream: bool) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = _fixed(_STREAM_COMMIT, data)
    return StreamCommit(xid, flags, commit_lsn, end_lsn, _pg_time(commit_time))


def _stream_abort(data: bytes, in_stream: bool) -> StreamAbort:
    """Whether the parallel fields follow is known only from the message's length."""
    if len(data) == 1 + _PARALLEL_STREAM_ABORT.size:
        xid, subxid, abort_lsn, abort_time = _fixed(_PARALLEL_STREAM_ABORT, data)
        return StreamAbort(xid, subxid, abort_lsn, _pg_time(abort_time))
    xid, subxid = _fixed(_STREAM_ABORT, data)
    return StreamAbort(xid, subxid)


_PARSERS: Final[dict[int, Callable[[bytes, bool], Message]]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
}


def decode_message(data: bytes, *, in_stream: bool = False) -> Message:
    """One pgoutput message; `in_stream`: it came between Stream Start and Stream Stop."""
    if not data:
        raise PgOutputError("empty pgoutput message")
    parse = _PARSERS.get(data[0])
    if parse is None:
        raise PgOutputError(f"unknown pgoutput message type {chr(data[0])!r}")
    try:
        return parse(data, in_stream)
    except PgOutputError:
        raise
    except (struct.error, IndexError, ValueError) as error:
        raise PgOutputError(f"malformed pgoutput {chr(data[0])!r} message: {error}") from error


class Decoder:
    """Decodes one replication stream's messages in order, following Stream Start/Stop."""

    __slots__ = ("_in_stream",)

    def __init__(self) -> None:
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        """Between a Stream Start and its Stream Stop."""
        return self._in_stream

    def decode(self, data: bytes) -> Message:
        message = decode_message(data, in_stream=self._in_stream)
        if type(message) is StreamStart:
            if self._in_stream:
                raise PgOutputError("stream start inside a stream")
            self._in_stream = True
        elif type(message) is StreamStop:
            if not self._in_stream:
                raise PgOutputError("stream stop outside a stream")
            self._in_stream = False
        return message


# Values

Converter = Callable[[str], Any]

_TIMESTAMP_SPECIAL: Final = {"infinity": datetime.max, "-infinity": datetime.min}
_TIMESTAMPTZ_SPECIAL: Final = {
    "infinity": datetime.max.replace(tzinfo=UTC),
    "-infinity": datetime.min.replace(tzinfo=UTC),
}
_DATE_SPECIAL: Final = {"infinity": date.max, "-infinity": date.min}


def _out_of_range(kind: str, text: str) -> PgOutputError:
    return PgOutputError(f"{kind} {text!r} is not ISO or outside Python's range (years 1-9999)")


def _timestamptz(text: str) -> datetime:
    """Aware, in UTC whatever the session's TimeZone; ±infinity as datetime.max/min (as
    asyncpg does)."""
    try:
        value = datetime.fromisoformat(text)
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    except (ValueError, OverflowError):
        special = _TIMESTAMPTZ_SPECIAL.get(text)
        if special is None:
            raise _out_of_range("timestamptz", text) from None
        return special


def _timestamp(text: str) -> datetime:
    """Naive, as stored; ±infinity as datetime.max/min (as asyncpg does)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        special = _TIMESTAMP_SPECIAL.get(text)
        if special is None:
            raise _out_of_range("timestamp", text) from None
        return special


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        special = _DATE_SPECIAL.get(text)
        if special is None:
            raise _out_of_range("date", text) from None
        return special


def _bytea(text: str) -> bytes:
    if not text.startswith("\\x"):
        raise PgOutputError("bytea is not in hex format (set bytea_output = hex)")
    return bytes.fromhex(text[2:])


_BOOLS: Final = {"t": True, "f": False}
_new_object = object.__new__
_set_attribute = object.__setattr__


# UUIDs made lately, by their text: a parent's id recurs in row after row (a bulk
# insert's wireframes all name one sitemap), so it is made once and, being the same
# object each time, looked up by identity where it is routed.
_UUIDS: dict[str, UUID] = {}
_UUIDS_KEPT: Final = 4096


def _uuid(text: str) -> UUID:
    """`UUID(text)` for the server's canonical form, in half its time (it has no
    braces, `urn:` or case to handle): ids of every row pass here."""
    value = _UUIDS.get(text)
    if value is None:
        digits = text.replace("-", "")
        if len(digits) != 32:
            raise ValueError(f"badly formed uuid {text!r}")
        value = _new_object(UUID)
        _set_attribute(value, "int", int(digits, 16))
        _set_attribute(value, "is_safe", SafeUUID.unknown)
        if len(_UUIDS) >= _UUIDS_KEPT:
            _UUIDS.clear()
        _UUIDS[text] = value
    return value


# Elements are quoted when empty, "NULL", or holding braces, quotes, backslashes,
# commas or whitespace; inside quotes only '"' and '\' are escaped.
_ARRAY_ELEMENT: Final = re.compile(r'"((?:[^"\\]|\\.)*)"|([^,]+)', re.DOTALL)
_ARRAY_TOKEN: Final = re.compile(r'[{}]|"((?:[^"\\]|\\.)*)"|([^,{}]+)', re.DOTALL)
_ARRAY_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)


def parse_array(text: str, element: Converter | None = None) -> list[Any]:
    """An array's text form as a list (nested lists for more dimensions), NULL as None,
    each other element passed through `element` when given."""
    if text == "{}":  # the usual array column's value (a wireframe's components)
        return []
    if text[0] == "[":  # explicit bounds, e.g. '[0:1]={a,b}', when a lower bound is not 1
        text = text[text.index("=") + 1 :]
    if text[0] != "{" or text[-1] != "}":
        raise PgOutputError(f"malformed array {text!r}")
    if text[1] == "{":
        return _nested_array(text, element)
    if '"' in text:
        items = [
            _unquote(quoted) if not bare else None if bare == "NULL" else bare
            for quoted, bare in _ARRAY_ELEMENT.findall(text, 1, len(text) - 1)
        ]
    else:
        inner = text[1:-1]
        if "{" in inner or "}" in inner:
            raise PgOutputError(f"malformed array {text!r}")
        items = [None if item == "NULL" else item for item in inner.split(",") if item]
    if element is None:
        return items
    return [None if item is None else element(item) for item in items]


def _unquote(quoted: str) -> str:
    return _ARRAY_ESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted


def _nested_array(text: str, element: Converter | None) -> list[Any]:
    stack: list[list[Any]] = [[]]
    for match in _ARRAY_TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            inner: list[Any] = []
            stack[-1].append(inner)
            stack.append(inner)
        elif token == "}":
            stack.pop()
        else:
            quoted, bare = match.group(1, 2)
            if quoted is None and bare == "NULL":
                stack[-1].append(None)
                continue
            value = bare if quoted is None else _unquote(quoted)
            stack[-1].append(value if element is None else element(value))
    if len(stack) != 1 or len(stack[0]) != 1 or not isinstance(stack[0][0], list):
        raise PgOutputError(f"malformed array {text!r}")
    result: list[Any] = stack[0][0]
    return result


# Types whose text form is already the value (text, varchar, name, bpchar, inet, cidr,
# and every type not listed) have no converter.
_SCALARS: Final[dict[int, Converter]] = {
    16: _BOOLS.__getitem__,  # bool
    17: _bytea,  # bytea
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    26: int,  # oid
    114: orjson.loads,  # json
    700: float,  # float4
    701: float,  # float8
    1082: _date,  # date
    1114: _timestamp,  # timestamp
    1184: _timestamptz,  # timestamptz
    1700: Decimal,  # numeric
    2950: _uuid,  # uuid
    3802: orjson.loads,  # jsonb
}

# Array type → element type.
_ARRAYS: Final[dict[int, int]] = {
    1000: 16,  # bool[]
    1001: 17,  # bytea[]
    1003: 19,  # name[]
    1016: 20,  # int8[]
    1005: 21,  # int2[]
    1007: 23,  # int4[]
    1009: 25,  # text[]
    1028: 26,  # oid[]
    199: 114,  # json[]
    1021: 700,  # float4[]
    1022: 701,  # float8[]
    651: 650,  # cidr[]
    1041: 869,  # inet[]
    1014: 1042,  # bpchar[]
    1015: 1043,  # varchar[]
    1182: 1082,  # date[]
    1115: 1114,  # timestamp[]
    1185: 1184,  # timestamptz[]
    1231: 1700,  # numeric[]
    2951: 2950,  # uuid[]
    3807: 3802,  # jsonb[]
}


def _array_converter(element_oid: int) -> Converter:
    element = _SCALARS.get(element_oid)
    return lambda text: parse_array(text, element)


_CONVERTERS: Final[dict[int, Converter]] = {
    **_SCALARS,
    **{array_oid: _array_converter(element) for array_oid, element in _ARRAYS.items()},
}

_CONVERSION_ERRORS: Final = (ValueError, LookupError, ArithmeticError)


def convert(type_oid: int, text: str) -> Any:
    """The Python value of a column's text form; the text itself for types not listed."""
    converter = _CONVERTERS.get(type_oid)
    if converter is None:
        return text
    try:
        return converter(text)
    except PgOutputError:
        raise
    except _CONVERSION_ERRORS as error:
        raise PgOutputError(f"type {type_oid}: cannot convert {text!r}: {error}") from error


# Column names, and (name, converter) of the columns whose text needs converting.
_Plan = tuple[tuple[str, ...], tuple[tuple[str, Converter], ...]]
# (name, converter or None) of every column, in order.
_Columns = tuple[tuple[str, Converter | None], ...]


_JSON_TYPES: Final = frozenset({114, 3802})  # json, jsonb


def _plan(relation: Relation, json: Converter | None = None) -> _Plan:
    names = tuple(column.name for column in relation.columns)
    converters = tuple(
        (column.name, converter)
        for column in relation.columns
        if (
            converter := json
            if json is not None and column.type_oid in _JSON_TYPES
            else _CONVERTERS.get(column.type_oid)
        )
        is not None
    )
    return names, converters


def _columns(relation: Relation, plan: _Plan) -> _Columns:
    converters = dict(plan[1])
    return tuple((name, converters.get(name)) for name in plan[0])


def _decoded_row(
    relation: Relation, columns: _Columns, data: bytes, pos: int
) -> tuple[dict[str, Any], bool, int]:
    """`_tuple` then `_row` in one pass: the row, whether a value is UNCHANGED, and the
    position after the tuple (every replicated row passes here)."""
    (count,) = _U16.unpack_from(data, pos)
    if count != len(columns):
        raise PgOutputError(
            f"{relation.name}: {count} values for {len(columns)} columns; "
            "a Relation message was missed"
        )
    pos += 2
    row: dict[str, Any] = {}
    unchanged = False
    unpack_length = _U32.unpack_from
    name = ""
    try:
        for name, converter in columns:
            kind = data[pos]
            if kind == _TEXT:
                end = pos + 5 + unpack_length(data, pos + 1)[0]
                text = data[pos + 5 : end].decode()
                row[name] = text if converter is None else converter(text)
                pos = end
            elif kind == _NULL:
                row[name] = None
                pos += 1
            elif kind == _TOAST:
                row[name] = UNCHANGED
                unchanged = True
                pos += 1
            elif kind == _BINARY:
                end = pos + 5 + unpack_length(data, pos + 1)[0]
                row[name] = data[pos + 5 : end]
                pos = end
            else:
                raise PgOutputError(f"unknown tuple column kind {chr(kind)!r}")
    except PgOutputError as error:
        raise PgOutputError(f"{relation.name}.{name}: {error}") from error
    except _CONVERSION_ERRORS as error:
        raise PgOutputError(f"{relation.name}.{name}: cannot convert: {error}") from error
    if pos > len(data):
        raise PgOutputError("message truncated: tuple data runs past its end")
    return row, unchanged, pos


def _row(relation: Relation, plan: _Plan, values: TupleData) -> dict[str, Any]:
    names, converters = plan
    if len(values) != len(names):
        raise PgOutputError(
            f"{relation.name}: {len(values)} values for {len(names)} columns; "
            "a Relation message was missed"
        )
    row: dict[str, Any] = dict(zip(names, values, strict=True))
    name = ""
    try:
        for name, converter in converters:
            value = row[name]
            if type(value) is str:
                row[name] = converter(value)
    except PgOutputError as error:
        raise PgOutputError(f"{relation.name}.{name}: {error}") from error
    except _CONVERSION_ERRORS as error:
        raise PgOutputError(f"{relation.name}.{name}: cannot convert: {error}") from error
    return row


def row_of(relation: Relation, values: TupleData) -> dict[str, Any]:
    """{column: value}: text converted by column type, binary left as bytes, NULL as None
    and UNCHANGED kept for the caller to fill from what it knows of the row."""
    return _row(relation, _plan(relation), values)


class RelationCache:
    """The relations a stream described so far, each with its converters ready.

    `json`: what json and jsonb values become instead of parsed JSON (e.g. a str
    subclass marking them for a consumer to parse when it needs the values)."""

    __slots__ = ("_columns", "_json", "_plans", "_relations")

    def __init__(self, json: Callable[[str], str] | None = None) -> None:
        self._json = json
        self._relations: dict[int, Relation] = {}
        self._plans: dict[int, _Plan] = {}
        self._columns: dict[int, _Columns] = {}

    def add(self, relation: Relation) -> None:
        """Remember `relation`, replacing what an earlier message said of it."""
        plan = _plan(relation, self._json)
        self._relations[relation.relation_id] = relation
        self._plans[relation.relation_id] = plan
        self._columns[relation.relation_id] = _columns(relation, plan)

    def insert(self, data: bytes) -> tuple[Relation, dict[str, Any], bool]:
        """An Insert message (outside a streamed transaction: no xid) decoded straight
        into its relation, its new row as `row(message.relation_id, message.new)` of
        `decode_message(data)` gives it (errors included), and whether a value in it
        is UNCHANGED."""
        try:
            (relation_id,) = _U32.unpack_from(data, 1)
            if data[5] != _NEW:
                raise PgOutputError(f"insert: expected a new tuple ('N'), got {chr(data[5])!r}")
            relation = self[relation_id]
            row, unchanged, pos = _decoded_row(relation, self._columns[relation_id], data, 6)
        except (struct.error, IndexError) as error:
            raise PgOutputError(f"malformed pgoutput 'I' message: {error}") from error
        _expect_end(data, pos)
        return relation, row, unchanged

    def __getitem__(self, relation_id: int) -> Relation:
        try:
            return self._relations[relation_id]
        except KeyError:
            raise PgOutputError(f"no Relation message for relation {relation_id}") from None

    def row(self, relation_id: int, values: TupleData) -> dict[str, Any]:
        """As `row_of`, for the relation last described with this id."""
        relation = self[relation_id]
        return _row(relation, self._plans[relation_id], values)
