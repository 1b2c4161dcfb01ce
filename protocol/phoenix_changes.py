"""`postgres_changes` for Supabase clients: bindings, filters and the change payload.

A binding is `{event, schema, table, filter}` from `phx_join`'s config. Its `filter`
is PostgREST-like, `column=op.value` (a few joined by commas, all must hold), with
`eq, neq, lt, lte, gt, gte` and `in.(a,b,…)`; the value is read as the column's type,
so `version=gt.9` compares numbers and `id=eq.<uuid>` uuids. What Supabase refuses it
reports in the same words (supabase/realtime's `parse_subscription_params`), e.g.
``Error parsing `filter` params: ["foo", "hey"]`` for an unknown operator.

A change is sent as `{ids, data}` where `data` is `{schema, table, commit_timestamp,
type, columns: [{name, type}], record, old_record, errors: null}` (INSERT: `record`
only, DELETE: `old_record` only). `columns[].type` names the PostgreSQL type as
`pg_type.typname` does (int4, bool, jsonb, timestamptz, uuid, _uuid for uuid[]…):
realtime-js's `convertChangeData` converts values by it. `data.position` is our
addition (the change's position in the feed, for `config.resume`); realtime-js
passes unknown fields by.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
from pydantic import JsonValue

SCHEMA = "public"

# The six published tables' columns as clients see them (`session_token` never leaves
# the gateway), with `pg_type.typname` of each: tests compare this with the database.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "projects": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("user_id", "uuid"),
        ("name", "text"),
        ("description", "text"),
        ("type", "text"),
        ("status", "text"),
        ("data", "jsonb"),
        ("settings", "jsonb"),
        ("collaborators", "_uuid"),
        ("is_public", "bool"),
    ),
    "sitemaps": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("project_id", "uuid"),
        ("title", "text"),
        ("description", "text"),
        ("pages", "jsonb"),
        ("metadata", "jsonb"),
        ("version", "int4"),
    ),
    "wireframes": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("sitemap_id", "uuid"),
        ("title", "text"),
        ("description", "text"),
        ("layout", "jsonb"),
        ("style_guide", "jsonb"),
        ("components", "_text"),
        ("version", "int4"),
    ),
    "style_guides": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("wireframe_id", "uuid"),
        ("title", "text"),
        ("description", "text"),
        ("colors", "jsonb"),
        ("typography", "jsonb"),
        ("spacing", "jsonb"),
        ("components", "jsonb"),
        ("grid", "jsonb"),
        ("breakpoints", "jsonb"),
        ("version", "int4"),
    ),
    "builder_sessions": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("user_id", "uuid"),
        ("project_id", "uuid"),
        ("status", "text"),
        ("current_step", "text"),
        ("step_data", "jsonb"),
        ("progress", "jsonb"),
        ("metadata", "jsonb"),
        ("started_at", "timestamptz"),
        ("ended_at", "timestamptz"),
        ("duration", "int4"),
        ("ip_address", "inet"),
        ("user_agent", "text"),
    ),
    "version_history": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("entity_type", "text"),
        ("entity_id", "uuid"),
        ("version_number", "int4"),
        ("user_id", "uuid"),
        ("changes", "jsonb"),
        ("data", "jsonb"),
        ("message", "text"),
        ("is_major", "bool"),
    ),
}
COLUMN_TYPES = {table: dict(columns) for table, columns in COLUMNS.items()}
COLUMNS_JSON: dict[str, list[dict[str, str]]] = {
    table: [{"name": name, "type": kind} for name, kind in columns]
    for table, columns in COLUMNS.items()
}


class ChangeType(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class BindingError(ValueError):
    """A binding the gateway cannot serve: its message is the `system` error's."""


class Op(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: Op
    values: tuple[Any, ...]
    # `in`'s values as a set: a check costs one lookup, however long the list.
    members: frozenset[Any] = frozenset()

    def holds(self, row: Mapping[str, Any]) -> bool:
        value = row.get(self.column)
        if value is None:
            return False  # SQL: a comparison with NULL is not true
        if isinstance(value, float | int) and not isinstance(value, bool):
            value = Decimal(str(value)) if isinstance(self.values[0], Decimal) else value
        first = self.values[0]
        try:
            if self.op is Op.EQ:
                return bool(value == first)
            if self.op is Op.NEQ:
                return bool(value != first)
            if self.op is Op.IN:
                return value in self.members
            if self.op is Op.LT:
                return bool(value < first)
            if self.op is Op.LTE:
                return bool(value <= first)
            if self.op is Op.GT:
                return bool(value > first)
            return bool(value >= first)
        except TypeError:  # an unhashable or incomparable value matches nothing
            return False


@dataclass(frozen=True, slots=True)
class Binding:
    """One `postgres_changes` binding, checked: which tables, which changes, which rows."""

    id: int
    tables: frozenset[str]
    types: frozenset[ChangeType]
    conditions: tuple[Condition, ...]

    def matches(self, table: str, change: ChangeType, row: Mapping[str, Any]) -> bool:
        """`row` is the new row, or the old one of a DELETE."""
        return (
            table in self.tables
            and change in self.types
            and all(c.holds(row) for c in self.conditions)
        )


def binding_id(params: Mapping[str, JsonValue]) -> int:
    """A number (compared with `===` by the client) from the binding's parameters, so
    equal bindings on different connections share an id, and their changes the same
    bytes. Fits in JavaScript's safe integers."""
    key = orjson.dumps(
        [params.get(k) for k in ("event", "schema", "table", "filter")],
    )
    return zlib.crc32(key)


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """What one binding's filter may cost: its length, its conditions, and the values of
    an `in` list (Supabase's own server takes one condition and at most 100 values).
    Parsing is linear in the length, a check of a row costs a step per condition."""

    max_chars: int = 4096
    max_conditions: int = 4
    max_in_values: int = 100


def parse_binding(
    params: Mapping[str, JsonValue], limits: FilterLimits = FilterLimits()
) -> Binding:
    """Check a binding as sent in `phx_join`; BindingError in Supabase's words."""
    event = params.get("event", "*")
    schema = params.get("schema", SCHEMA)
    table = params.get("table")
    filter_text = params.get("filter")
    if not isinstance(event, str) or not isinstance(schema, str):
        raise BindingError(f"bad postgres_changes binding: {_show(params)}")
    if table is not None and not isinstance(table, str):
        raise BindingError(f"bad postgres_changes binding: {_show(params)}")
    if filter_text is not None and not isinstance(filter_text, str):
        raise BindingError(f"bad postgres_changes binding: {_show(params)}")
    wants = _change_types(event)
    if schema not in (SCHEMA, "*") or (table not in (None, "*") and table not in COLUMNS):
        raise BindingError(_unable(event, schema, table or "*", filter_text))
    tables = frozenset(COLUMNS) if table in (None, "*") else frozenset({table})
    conditions: tuple[Condition, ...] = ()
    if filter_text and filter_text.strip():
        if len(filter_text) > limits.max_chars:
            raise BindingError(
                f"filter of {len(filter_text)} characters is over the limit of "
                f"{limits.max_chars} (SITEBUILDER_MAX_FILTER_CHARS)"
            )
        if len(tables) != 1:
            raise BindingError(_unable(event, schema, "*", filter_text[:200]))
        conditions = parse_filter(filter_text, next(iter(tables)), limits)
    return Binding(binding_id(params), tables, wants, conditions)


def _change_types(event: str) -> frozenset[ChangeType]:
    """Supabase reads an event it does not know as `*`."""
    try:
        return frozenset({ChangeType(event.upper())})
    except ValueError:
        return frozenset(ChangeType)


def _show(params: Mapping[str, JsonValue]) -> str:
    return orjson.dumps(dict(params)).decode()


def _unable(event: str, schema: str, table: str, filter_text: str | None) -> str:
    filters = "[]" if not filter_text else f"[{filter_text}]"
    return (
        "Unable to subscribe to changes with given parameters. Please check Realtime is "
        f"enabled for the given connect parameters: [event: {event}, schema: {schema}, "
        f"table: {table}, filters: {filters}, select: nil]"
    )


def _parse_error(parts: list[str]) -> BindingError:
    shown = ", ".join(orjson.dumps(p).decode() for p in parts)
    return BindingError(f"Error parsing `filter` params: [{shown}]")


# A quoted value (`\` escapes; unclosed: to the end), an `in` list's parenthesized
# values, and anything else up to a comma. Each character is read by one branch and
# never again (possessive repeats), so matching is linear in the filter's length.
_QUOTED = r'"(?:[^"\\]++|\\.)*+\\?(?:"|\Z)'
_CONDITION = re.compile(rf'(?:\((?:{_QUOTED}|[^")]++)*+(?:\)|\Z)|{_QUOTED}|[^,"(]++)*+', re.DOTALL)
_LIST_ITEM = re.compile(rf'(?:{_QUOTED}|[^,"]++)*+', re.DOTALL)


def _split(text: str, part: re.Pattern[str], limit: int) -> list[str] | None:
    """`text` cut at the commas between the parts `part` matches; None past `limit`
    parts (before reading further). What no part can hold (an unclosed quote or
    parenthesis) ends the last part, as is."""
    parts: list[str] = []
    position = 0
    while True:
        match = part.match(text, position)
        assert match is not None  # the pattern matches the empty string
        parts.append(match.group())
        position = match.end()
        if position < len(text) and text[position] != ",":
            parts[-1] += text[position:]
            position = len(text)
        elif position < len(text):
            position += 1
            if position == len(text):
                parts.append("")
        if len(parts) > limit:
            return None
        if position >= len(text):
            return parts


def _split_conditions(text: str, max_conditions: int) -> list[str]:
    """Split on the commas between conditions, not those inside `in.(…)`."""
    parts = _split(text, _CONDITION, max_conditions)
    if parts is None:
        raise BindingError(
            f"filter of more than {max_conditions} conditions (SITEBUILDER_MAX_FILTER_CONDITIONS)"
        )
    return parts


def parse_filter(
    text: str, table: str, limits: FilterLimits = FilterLimits()
) -> tuple[Condition, ...]:
    """The conditions of `column=op.value[,…]` on `table`; BindingError when bad."""
    conditions = []
    for part in _split_conditions(text, limits.max_conditions):
        column_rest = part.split("=", 1)
        if len(column_rest) != 2:
            raise _parse_error(column_rest)
        column, rest = column_rest
        op_value = rest.split(".", 1)
        if len(op_value) != 2:
            raise _parse_error(op_value)
        op_text, value = op_value
        try:
            op = Op(op_text)
        except ValueError:
            raise _parse_error(op_value) from None
        conditions.append(_condition(table, column, op, value, limits.max_in_values))
    return tuple(conditions)


def _condition(table: str, column: str, op: Op, value: str, max_in_values: int) -> Condition:
    kind = COLUMN_TYPES[table].get(column)
    if kind is None:
        raise BindingError(
            "Unable to subscribe to changes with given parameters. "
            f"Exception: invalid column for filter {column}"
        )
    if op is Op.IN:
        if not (value.startswith("(") and value.endswith(")")):
            raise BindingError(
                "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
            )
        items = [_unquote(v) for v in _split_list(value[1:-1], max_in_values)]
        values = tuple(coerce(item, kind) for item in items)
        return Condition(column, op, values, frozenset(values))
    return Condition(column, op, (coerce(_unquote(value), kind),))


def _split_list(text: str, max_items: int) -> list[str]:
    """`a,"b,c",d` → three items; BindingError past `max_items` (counted before they
    are split, when none is quoted)."""
    if '"' not in text:
        if text.count(",") >= max_items:
            raise _too_many_values(text.count(",") + 1, max_items)
        return text.split(",")
    items = _split(text, _LIST_ITEM, max_items)
    if items is None:
        raise _too_many_values(max_items + 1, max_items)
    return items


def _too_many_values(count: int, limit: int) -> BindingError:
    return BindingError(
        f"`in` filter of {count} values is over the limit of {limit} "
        "(SITEBUILDER_MAX_FILTER_IN_VALUES)"
    )


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def coerce(value: str, kind: str) -> Any:
    """A filter value read as PostgreSQL would read it into a column of type `kind`."""
    try:
        if kind == "uuid":
            return UUID(value)
        if kind in ("int2", "int4", "int8"):
            return int(value)
        if kind in ("numeric", "float4", "float8"):
            return Decimal(value)
        if kind == "bool":
            return {"true": True, "t": True, "false": False, "f": False}[value.lower()]
        if kind == "timestamptz":
            moment = datetime.fromisoformat(value.replace(" ", "T"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if kind in ("text", "inet"):
            return value
    except (ValueError, KeyError, InvalidOperation):
        raise BindingError(
            "Unable to subscribe to changes with given parameters. "
            f'Exception: invalid input syntax for type {kind}: "{value}"'
        ) from None
    raise BindingError(
        "Unable to subscribe to changes with given parameters. "
        f"Exception: filters on columns of type {kind} are not supported"
    )


def change_data(
    table: str,
    change: ChangeType,
    record: dict[str, JsonValue] | None,
    old_record: dict[str, JsonValue] | None,
    committed_at: datetime,
    position: str,
) -> dict[str, JsonValue]:
    """The `data` of a `postgres_changes` push (rows already in JSON form)."""
    data: dict[str, JsonValue] = {
        "schema": SCHEMA,
        "table": table,
        "commit_timestamp": committed_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "type": change.value,
        "columns": COLUMNS_JSON[table],  # type: ignore[dict-item]
        "errors": None,
        "position": position,
    }
    if change is not ChangeType.DELETE:
        data["record"] = record
    if change is not ChangeType.INSERT:
        data["old_record"] = old_record
    return data
