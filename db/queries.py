"""SQL the gateway runs. User-facing reads run as the user (RLS decides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from db.acting_user import Conn, acting_as

_NONE_IN_PROGRESS: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class VisibilitySnapshot:
    """A `pg_current_snapshot()`: which transactions were committed as of it. Every
    subscription keeps one until changes pass it (idle ones: for good), so it is small:
    slots, and one shared empty set for the usual no transaction in progress."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> VisibilitySnapshot:
        xmin, xmax, xip = text.split(":")
        in_progress = frozenset(int(x) for x in xip.split(",") if x) or _NONE_IN_PROGRESS
        return cls(int(xmin), int(xmax), in_progress)

    def sees(self, xid: int) -> bool:
        """True when transaction `xid` had committed for this snapshot."""
        if xid < self.xmin:
            return True
        if xid >= self.xmax:
            return False
        return xid not in self.in_progress


@dataclass(frozen=True)
class ProjectView:
    """What a user may do with a project, and optionally its content, at one snapshot."""

    visibility: VisibilitySnapshot
    editable: bool
    project: dict[str, Any]
    sitemaps: list[dict[str, Any]]
    wireframes: list[dict[str, Any]]
    style_guides: list[dict[str, Any]]
    sessions: list[dict[str, Any]]


_PROJECT = "SELECT to_jsonb(p)::text FROM public.projects p WHERE p.id = $1"
_SITEMAPS = """
    SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.id), '[]')::text
    FROM public.sitemaps s WHERE s.project_id = $1
"""
_WIREFRAMES = """
    SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.created_at, w.id), '[]')::text
    FROM public.wireframes w JOIN public.sitemaps s ON s.id = w.sitemap_id
    WHERE s.project_id = $1
"""
_STYLE_GUIDES = """
    SELECT coalesce(jsonb_agg(to_jsonb(g) ORDER BY g.created_at, g.id), '[]')::text
    FROM public.style_guides g
    JOIN public.wireframes w ON w.id = g.wireframe_id
    JOIN public.sitemaps s ON s.id = w.sitemap_id
    WHERE s.project_id = $1
"""
_SESSIONS = """
    SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY b.started_at, b.id), '[]')::text
    FROM public.builder_sessions b
    WHERE b.project_id = $1 AND b.status IN ('active', 'paused')
"""


async def view_project(
    conn: Conn, user_id: UUID | None, project_id: UUID, *, with_content: bool
) -> ProjectView | None:
    """The project as `user_id` (None: a signed-out visitor) sees it in one REPEATABLE
    READ snapshot; None if hidden."""
    async with (
        conn.transaction(isolation="repeatable_read", readonly=True),
        acting_as(conn, user_id),
    ):
        visibility = VisibilitySnapshot.parse(
            await conn.fetchval("SELECT pg_current_snapshot()::text")
        )
        project = await conn.fetchval(_PROJECT, project_id)
        if project is None:
            return None
        editable = bool(await conn.fetchval("SELECT public.can_edit_project($1)", project_id))
        if not with_content:
            return ProjectView(visibility, editable, orjson.loads(project), [], [], [], [])
        # Builder sessions are for members: a signed-out visitor may not read them.
        tables = (_SITEMAPS, _WIREFRAMES, _STYLE_GUIDES) + ((_SESSIONS,) if user_id else ())
        parts = [orjson.loads(await conn.fetchval(sql, project_id)) for sql in tables]
    sitemaps, wireframes, style_guides, *sessions = parts
    return ProjectView(
        visibility,
        editable,
        orjson.loads(project),
        sitemaps,
        wireframes,
        style_guides,
        sessions[0] if sessions else [],
    )


_PROJECT_LIST = """
    SELECT coalesce(
        jsonb_agg(to_jsonb(p) ORDER BY p.updated_at DESC NULLS LAST, p.id DESC), '[]'
    )::text
    FROM public.projects p
    WHERE p.user_id = (SELECT auth.uid()) OR (SELECT auth.uid()) = ANY (p.collaborators)
"""


async def project_list(
    conn: Conn, user_id: UUID
) -> tuple[VisibilitySnapshot, list[dict[str, Any]]]:
    """The projects `user_id` owns or collaborates on (not those merely public), newest
    `updated_at` first, read as the user in one REPEATABLE READ snapshot."""
    async with (
        conn.transaction(isolation="repeatable_read", readonly=True),
        acting_as(conn, user_id),
    ):
        visibility = VisibilitySnapshot.parse(
            await conn.fetchval("SELECT pg_current_snapshot()::text")
        )
        rows = orjson.loads(await conn.fetchval(_PROJECT_LIST))
    return visibility, rows


async def project_access_row(
    conn: Conn, project_id: UUID
) -> tuple[VisibilitySnapshot, dict[str, Any] | None]:
    """Who may access the project (its owner, collaborators and visibility), read as
    the gateway's own role, with the snapshot it was read in; None: no such project."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        visibility = VisibilitySnapshot.parse(
            await conn.fetchval("SELECT pg_current_snapshot()::text")
        )
        row = await conn.fetchrow(
            "SELECT user_id, collaborators, is_public FROM public.projects WHERE id = $1",
            project_id,
        )
    return visibility, None if row is None else dict(row)


async def user_name(conn: Conn, user_id: UUID) -> str | None:
    """The user's display name (migration 0017), or None when there is no such user."""
    names = await display_names(conn, [user_id])
    return names.get(user_id)


async def display_names(conn: Conn, user_ids: list[UUID]) -> dict[UUID, str]:
    """Display names of the users among `user_ids` that exist. The gateway's own query
    (not as a user): call it only for users the caller may already see."""
    rows = await conn.fetch(
        "SELECT user_id, display_name FROM public.display_names($1::uuid[])", user_ids
    )
    return {row["user_id"]: row["display_name"] for row in rows}


async def sitemap_project(conn: Conn, sitemap_id: UUID) -> UUID | None:
    value = await conn.fetchval("SELECT project_id FROM public.sitemaps WHERE id = $1", sitemap_id)
    return value if isinstance(value, UUID) else None


async def wireframe_sitemap(conn: Conn, wireframe_id: UUID) -> UUID | None:
    value = await conn.fetchval(
        "SELECT sitemap_id FROM public.wireframes WHERE id = $1", wireframe_id
    )
    return value if isinstance(value, UUID) else None


async def style_guide_wireframe(conn: Conn, style_guide_id: UUID) -> UUID | None:
    value = await conn.fetchval(
        "SELECT wireframe_id FROM public.style_guides WHERE id = $1", style_guide_id
    )
    return value if isinstance(value, UUID) else None
