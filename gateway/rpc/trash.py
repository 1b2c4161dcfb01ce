"""`trash.*` methods: a project's deleted sitemaps, wireframes and style guides, and
restoring them, as the calling user.

The trash is filled by a trigger on every delete, however made (migration 0019);
listing it is plain SQL under row-level security (the project's editors), restoring
is 0019's `restore_from_trash`, which checks the same and inserts the rows again as
the caller, so the change feeds carry them to every subscriber like any insert.
"""

from __future__ import annotations

import asyncpg
from pydantic import TypeAdapter

from gateway.rpc.call import Call, Handlers, RpcError
from gateway.rpc.versions import display_names, members_only
from protocol.errors import ErrorCode
from protocol.rpc_trash import (
    RestoredRow,
    TrashEntry,
    TrashList,
    TrashPage,
    TrashRestore,
    TrashRestored,
)

handles = Handlers()

_ENTRIES: TypeAdapter[list[TrashEntry]] = TypeAdapter(list[TrashEntry])
_RESTORED: TypeAdapter[list[RestoredRow]] = TypeAdapter(list[RestoredRow])

# Entries deleted themselves (not with a parent), newest first, one past the page.
_PAGE = """
    SELECT coalesce(jsonb_agg(to_jsonb(e) ORDER BY e.deleted_at DESC, e.id DESC), '[]')::text
    FROM (
        SELECT t.id, t.entity_type, t.entity_id, t.deleted_at, t.deleted_by,
               (t.data ->> CASE t.entity_type
                   WHEN 'sitemaps' THEN 'project_id'
                   WHEN 'wireframes' THEN 'sitemap_id'
                   ELSE 'wireframe_id'
               END) AS parent_id,
               coalesce(t.data ->> 'title', '') AS title,
               count(*) FILTER (WHERE c.entity_type = 'wireframes' AND c.id <> t.id)
                   AS with_wireframes,
               count(*) FILTER (WHERE c.entity_type = 'style_guides' AND c.id <> t.id)
                   AS with_style_guides
        FROM public.trash t
        JOIN public.trash c ON c.root_id = t.id
        WHERE t.project_id = $1 AND t.root_id = t.id
          AND ($2::uuid IS NULL OR (t.deleted_at, t.id) < (
              SELECT b.deleted_at, b.id FROM public.trash b WHERE b.id = $2
          ))
        GROUP BY t.id
        ORDER BY t.deleted_at DESC, t.id DESC
        LIMIT $3
    ) e
"""

_RESTORE = """
    SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]')::text
    FROM public.restore_from_trash($1) r
"""

_EXPIRE = "DELETE FROM public.trash WHERE deleted_at < now() - make_interval(secs => $1)"


@handles("trash.list", writes=False)
async def list_entries(call: Call, params: TrashList) -> TrashPage:
    """Not found for whoever cannot see the project, forbidden for its public readers:
    a trash holds what only members may read, as history does."""
    async with call.as_user() as conn:
        refusal = await members_only(conn, "projects", params.project_id)
        if refusal is not None:
            raise RpcError(refusal, _refused(refusal, params))
        entries = _ENTRIES.validate_json(
            await conn.fetchval(_PAGE, params.project_id, params.before, params.limit + 1)
        )
    page, more = entries[: params.limit], len(entries) > params.limit
    names = await display_names(call, (entry.deleted_by for entry in page))
    return TrashPage(
        entries=[
            entry.model_copy(update={"deleted_by_name": names.get(entry.deleted_by)})
            if entry.deleted_by
            else entry
            for entry in page
        ],
        next_before=page[-1].id if more else None,
    )


def _refused(code: ErrorCode, params: TrashList) -> str:
    if code == ErrorCode.NOT_FOUND:
        return f"no project {params.project_id} visible to you"
    return "the trash is the project's editors' only"


@handles("trash.restore")
async def restore(call: Call, params: TrashRestore) -> TrashRestored:
    """0019's refusals: no_data_found (not in the trash, or not the caller's to restore)
    is not_found; a parent to restore first (55000) is conflict."""
    try:
        async with call.as_user() as conn:
            rows = await conn.fetchval(_RESTORE, params.id)
    except asyncpg.NoDataFoundError as error:
        raise RpcError(ErrorCode.NOT_FOUND, error.message) from error
    except asyncpg.ObjectNotInPrerequisiteStateError as error:
        raise RpcError(ErrorCode.CONFLICT, error.message) from error
    return TrashRestored(restored=_RESTORED.validate_json(rows))


async def expire_trash(pool: asyncpg.Pool, retention_seconds: float) -> int:
    """Forget what was deleted longer than `retention_seconds` ago; how many rows."""
    status: str = await pool.execute(_EXPIRE, float(retention_seconds))
    return int(status.rsplit(" ", 1)[-1])
