"""`sitemap.*`, `wireframe.*`, `style_guide.*`: create, update, delete as the calling user.

The three entities differ only in their table, parent and columns, so each is one
`Table` description and the handlers are written once. Row-level security decides
who may write; the handlers only tell the refusals apart afterwards (an UPDATE or
DELETE that RLS filters matches nothing, it does not fail).

An update is one statement: `set` columns replaced, `patch` columns merged with
`jsonb_merge_patch` against the row as it is when the UPDATE runs, and
`expected_version` checked in its WHERE. Under concurrent writers PostgreSQL
re-evaluates both on the newest row, so a stale version never overwrites and two
patches of different keys both survive, with no read-modify-write window in Python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from db.acting_user import Conn
from gateway.rpc.call import Call, Handlers, RpcError
from protocol.errors import ErrorCode
from protocol.rows import Row, SitemapRow, StyleGuideRow, WireframeRow
from protocol.rpc_entities import (
    PARAMS,
    Delete,
    Deleted,
    SitemapPatch,
    SitemapSet,
    StyleGuidePatch,
    StyleGuideSet,
    Update,
    Versioned,
    WireframePatch,
    WireframeSet,
)

handles = Handlers()


@dataclass(frozen=True)
class Table:
    """Everything the generic handlers need to know about one entity's table.

    SQL identifiers are only ever taken from here, never from a request.
    """

    entity: str  # the methods' prefix
    name: str
    parent: str  # the column naming the parent row; one of `plain`
    plain: tuple[str, ...]  # columns `update.set` replaces
    jsonb: tuple[str, ...]  # columns `update.patch` merges into
    row: type[Row]

    def __post_init__(self) -> None:
        """The description and the protocol's params of `<entity>.create` must name
        the same columns."""
        assert self.parent in self.plain, self
        create = PARAMS[f"{self.entity}.create"]
        fields = set(create.model_fields) - set(Versioned.model_fields) - {"id"}
        assert fields == {*self.plain, *self.jsonb}, (self.name, fields)


def _keys(columns: type[Mapping[str, Any]]) -> tuple[str, ...]:
    """A TypedDict's keys, in declaration order (the SQL reads better in that order)."""
    return tuple(columns.__annotations__)


TABLES = (
    Table(
        "sitemap",
        "sitemaps",
        "project_id",
        _keys(SitemapSet),
        _keys(SitemapPatch),
        SitemapRow,
    ),
    Table(
        "wireframe",
        "wireframes",
        "sitemap_id",
        _keys(WireframeSet),
        _keys(WireframePatch),
        WireframeRow,
    ),
    Table(
        "style_guide",
        "style_guides",
        "wireframe_id",
        _keys(StyleGuideSet),
        _keys(StyleGuidePatch),
        StyleGuideRow,
    ),
)

SITEMAPS, WIREFRAMES, STYLE_GUIDES = TABLES

# SQL. Values travel as one JSON document per statement and become typed columns
# through jsonb_populate_record, so no per-column type handling is needed here.


def _insert_sql(table: Table) -> str:
    columns = (*table.plain, *table.jsonb)
    return f"""
        INSERT INTO public.{table.name} AS t (id, {", ".join(columns)})
        SELECT coalesce(r.id, uuid_generate_v4()), {", ".join(f"r.{c}" for c in columns)}
        FROM jsonb_populate_record(NULL::public.{table.name}, $1::jsonb) AS r
        RETURNING to_jsonb(t.*)::text
    """


def _update_sql(table: Table, replaced: Mapping[str, Any], patched: Mapping[str, Any]) -> str:
    """$1 id, $2 the `set` values, $3 the `patch`, $4 the expected version or null."""
    assignments = [f"{c} = r.{c}" for c in table.plain if c in replaced] + [
        f"{c} = public.jsonb_merge_patch(t.{c}, patch.doc -> '{c}')"
        for c in table.jsonb
        if c in patched
    ]
    return f"""
        UPDATE public.{table.name} AS t SET {", ".join(assignments)}
        FROM jsonb_populate_record(NULL::public.{table.name}, $2::jsonb) AS r,
             (SELECT $3::jsonb AS doc) AS patch
        WHERE t.id = $1 AND t.version = coalesce($4::integer, t.version)
        RETURNING to_jsonb(t.*)::text
    """


def _delete_sql(table: Table) -> str:
    return f"""
        DELETE FROM public.{table.name} AS t
        WHERE t.id = $1 AND t.version = coalesce($2::integer, t.version)
        RETURNING t.id
    """


def _visible_sql(table: Table) -> str:
    return f"""
        SELECT to_jsonb(t.*)::text AS row, t.version,
               public.can_edit_entity('{table.name}', t.id) AS writable
        FROM public.{table.name} AS t WHERE t.id = $1
    """


# Handlers


async def _note(conn: Conn, params: Versioned) -> None:
    """Give the version this transaction writes the caller's message and weight
    (transaction-local settings the versioning triggers read, see migration 0009)."""
    if params.message is None and not params.is_major:
        return
    await conn.execute(
        "SELECT set_config('sitebuilder.version_message', coalesce($1, ''), true),"
        " set_config('sitebuilder.version_is_major', $2::boolean::text, true)",
        params.message,
        params.is_major,
    )


@asynccontextmanager
async def _writing(call: Call, table: Table) -> AsyncIterator[Conn]:
    """`call.as_user()`, where RLS refusing the written row can only mean one thing:
    its parent is not one the caller may edit (rows the caller may not write are
    filtered out of UPDATE and DELETE instead)."""
    try:
        async with call.as_user() as conn:
            yield conn
    except asyncpg.InsufficientPrivilegeError:
        parent = table.parent.removesuffix("_id")
        message = f"not allowed: the {table.entity} would be in a {parent} you may not edit"
        raise RpcError(ErrorCode.FORBIDDEN, message) from None


async def _refusal(conn: Conn, table: Table, entity_id: UUID) -> RpcError:
    """Why an UPDATE or DELETE of `entity_id` matched nothing, asked in the same
    transaction: the row is not visible (not_found), visible but not writable
    (forbidden), or no longer at the expected version (conflict)."""
    found = await conn.fetchrow(_visible_sql(table), entity_id)
    if found is None:
        return RpcError(ErrorCode.NOT_FOUND, f"no {table.entity} {entity_id} visible to you")
    if not found["writable"]:
        return RpcError(ErrorCode.FORBIDDEN, f"{table.entity} {entity_id} is read-only for you")
    current = table.row.model_validate_json(found["row"]).model_dump(mode="json")
    message = f"{table.entity} {entity_id} has changed: it is at version {found['version']}"
    return RpcError(ErrorCode.CONFLICT, message, {"current": current})


async def insert_row(conn: Conn, table: Table, values: str) -> Row:
    """The INSERT of `X.create`, for any transaction as the user (batch uses it);
    `values` is the row's columns as one JSON object."""
    row = await conn.fetchval(_insert_sql(table), values)
    return table.row.model_validate_json(row)


async def create(table: Table, call: Call, params: Versioned) -> Row:
    values = params.model_dump_json(exclude=set(Versioned.model_fields))
    async with _writing(call, table) as conn:
        await _note(conn, params)
        return await insert_row(conn, table, values)


async def update(table: Table, call: Call, params: Update[Any, Any]) -> Row:
    async with _writing(call, table) as conn:
        await _note(conn, params)
        row = await conn.fetchval(
            _update_sql(table, params.set, params.patch),
            params.id,
            orjson.dumps(params.set).decode(),
            orjson.dumps(params.patch).decode(),
            params.expected_version,
        )
        if row is None:
            raise await _refusal(conn, table, params.id)
    return table.row.model_validate_json(row)


async def delete(table: Table, call: Call, params: Delete) -> Deleted:
    async with call.as_user() as conn:
        deleted = await conn.fetchval(_delete_sql(table), params.id, params.expected_version)
        if deleted is None:
            raise await _refusal(conn, table, params.id)
    return Deleted(id=deleted)


def _register(tables: tuple[Table, ...]) -> None:
    """Each entity's three methods are the generic handlers bound to its table."""
    for table in tables:
        handles.add(f"{table.entity}.create", partial(create, table))
        handles.add(f"{table.entity}.update", partial(update, table))
        handles.add(f"{table.entity}.delete", partial(delete, table))


_register(TABLES)
