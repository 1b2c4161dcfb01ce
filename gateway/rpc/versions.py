"""`version.*` methods: builderHelpers.version over the socket, as the calling user.

Reading is plain SQL under row-level security (members read an entity's history).
Checkpoint and revert call the SQL functions of migration 0011, which write the
entity as the caller so row-level security and the versioning triggers decide, as
for any edit: users never write version_history themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from db import queries
from db.acting_user import Conn
from gateway.rpc.call import Call, Handlers, RpcError
from protocol.errors import ErrorCode
from protocol.rpc_versions import (
    Checkpoint,
    EntityType,
    Revert,
    VersionEntry,
    VersionId,
    VersionPage,
    VersionsByEntity,
)

handles = Handlers()

# Rows are read as entries straight away (the author's name is added by a copy, not
# by dumping and validating each row's snapshot again).
_VERSIONS: TypeAdapter[list[VersionEntry]] = TypeAdapter(list[VersionEntry])

# Why the caller may not read an entity's history, or NULL. Not found for whoever
# cannot see the entity (saying more would reveal that it exists); forbidden for a
# public project's readers, who see the entity but not its history (members only).
# Table names come from EntityType (a closed set), never from the client's text.
_REFUSAL = {
    entity_type: f"""
        SELECT CASE
            WHEN NOT EXISTS (SELECT 1 FROM public.{entity_type} WHERE id = $1) THEN 'not_found'
            WHEN NOT public.can_edit_entity('{entity_type}', $1) THEN 'forbidden'
        END
    """
    for entity_type in get_args(EntityType)
}

_PAGE = """
    SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY v.version_number DESC), '[]')::text
    FROM (
        SELECT * FROM public.version_history
        WHERE entity_type = $1 AND entity_id = $2 AND ($3::integer IS NULL OR version_number < $3)
        ORDER BY version_number DESC
        LIMIT $4
    ) v
"""

_GET = "SELECT to_jsonb(v)::text FROM public.version_history v WHERE v.id = $1"
_CHECKPOINT = "SELECT to_jsonb(public.checkpoint_version($1, $2, $3, $4))::text"
_REVERT = "SELECT to_jsonb(public.revert_to_version($1, $2))::text"


@handles("version.get_by_entity", writes=False)
async def get_by_entity(call: Call, params: VersionsByEntity) -> VersionPage:
    """Reads one row past the page, so the client learns whether to ask for more."""
    async with call.as_user() as conn:
        refusal = await members_only(conn, params.entity_type, params.entity_id)
        if refusal is not None:
            raise _history_refused(refusal, params)
        rows = _VERSIONS.validate_json(
            await conn.fetchval(
                _PAGE, params.entity_type, params.entity_id, params.before_version, params.limit + 1
            )
        )
    page, more = rows[: params.limit], len(rows) > params.limit
    return VersionPage(
        versions=await _named(call, page),
        next_before_version=page[-1].version_number if more else None,
    )


async def members_only(conn: Conn, entity_type: EntityType, entity_id: UUID) -> ErrorCode | None:
    """Why the caller (on `conn`, as themselves) may not read what only the entity's
    project members read (its history, the project's trash), or None."""
    refusal: str | None = await conn.fetchval(_REFUSAL[entity_type], entity_id)
    return None if refusal is None else ErrorCode(refusal)


async def display_names(call: Call, users: Iterable[UUID | None]) -> dict[UUID, str]:
    """Display names of users whose rows the caller could read: looked up by the
    gateway (names are not the users' to query)."""
    known = list({user for user in users if user is not None})
    if not known:
        return {}
    async with call.pool.acquire() as conn:
        return await queries.display_names(conn, known)


async def _named(call: Call, rows: list[VersionEntry]) -> list[VersionEntry]:
    """The rows with their authors' display names."""
    names = await display_names(call, (row.user_id for row in rows))
    return [
        row.model_copy(update={"user_name": names.get(row.user_id) if row.user_id else None})
        for row in rows
    ]


def _history_refused(code: ErrorCode, params: VersionsByEntity) -> RpcError:
    if code == ErrorCode.NOT_FOUND:
        return RpcError(code, f"no {params.entity_type} {params.entity_id} visible to you")
    return RpcError(code, "version history is readable by the project's members only")


@handles("version.get", writes=False)
async def get(call: Call, params: VersionId) -> VersionEntry:
    async with call.as_user() as conn:
        row = await conn.fetchval(_GET, params.version_id)
    if row is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no version {params.version_id} visible to you")
    (entry,) = await _named(call, [VersionEntry.model_validate_json(row)])
    return entry


@handles("version.checkpoint")
async def checkpoint(call: Call, params: Checkpoint) -> VersionEntry:
    return await _write_version(
        call, _CHECKPOINT, params.entity_type, params.entity_id, params.message, params.is_major
    )


@handles("version.revert")
async def revert(call: Call, params: Revert) -> VersionEntry:
    return await _write_version(call, _REVERT, params.version_id, params.message)


async def _write_version(call: Call, statement: str, *args: object) -> VersionEntry:
    """Runs a version-writing function of 0011; its no_data_found (the entity or version
    is not visible to the caller) is the client's not_found, its 42501 is mapped to
    forbidden centrally like any refusal of row-level security."""
    try:
        async with call.as_user() as conn:
            row = await conn.fetchval(statement, *args)
    except asyncpg.NoDataFoundError as error:
        raise RpcError(ErrorCode.NOT_FOUND, error.message) from error
    (entry,) = await _named(call, [VersionEntry.model_validate_json(row)])
    return entry
