"""SQL the gateway runs. User-facing reads run as the user (RLS decides)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


# The project and everything under it as the acting user sees it, in one statement ($2:
# with the content, else only the project and whether the user may edit it). Members'
# adds the builder sessions, which the `anon` role may not even name.
_CONTENT = """
    SELECT
        (SELECT to_jsonb(p)::text FROM public.projects p WHERE p.id = $1),
        public.can_edit_project($1),
        (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.id), '[]')::text
         FROM public.sitemaps s WHERE s.project_id = $1 AND $2),
        (SELECT coalesce(jsonb_agg(to_jsonb(w) ORDER BY w.created_at, w.id), '[]')::text
         FROM public.wireframes w JOIN public.sitemaps s ON s.id = w.sitemap_id
         WHERE s.project_id = $1 AND $2),
        (SELECT coalesce(jsonb_agg(to_jsonb(g) ORDER BY g.created_at, g.id), '[]')::text
         FROM public.style_guides g
         JOIN public.wireframes w ON w.id = g.wireframe_id
         JOIN public.sitemaps s ON s.id = w.sitemap_id
         WHERE s.project_id = $1 AND $2)
"""
_SESSIONS = """,
        (SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY b.started_at, b.id), '[]')::text
         FROM public.builder_sessions b
         WHERE b.project_id = $1 AND b.status IN ('active', 'paused') AND $2)
"""
_CONTENT_OF_MEMBERS = _CONTENT + _SESSIONS
_SNAPSHOT = "SELECT pg_current_snapshot()::text"
# The snapshot and the project's access list in one statement, as the gateway's role.
_ACCESS_AT = """
    SELECT pg_current_snapshot()::text AS seen, p.user_id, p.collaborators, p.is_public
    FROM (VALUES (1)) AS one LEFT JOIN public.projects p ON p.id = $1
"""
_ACCESS_COLUMNS = ("user_id", "collaborators", "is_public")


async def view_project(
    conn: Conn, user_id: UUID | None, project_id: UUID, *, with_content: bool
) -> ProjectView | None:
    """The project as `user_id` (None: a signed-out visitor) sees it in one REPEATABLE
    READ snapshot; None if hidden."""
    async with (
        conn.transaction(isolation="repeatable_read", readonly=True),
        acting_as(conn, user_id),
    ):
        visibility = VisibilitySnapshot.parse(await conn.fetchval(_SNAPSHOT))
        return await _view_as(conn, visibility, user_id, project_id, with_content)


async def _view_as(
    conn: Conn,
    visibility: VisibilitySnapshot,
    user_id: UUID | None,
    project_id: UUID,
    with_content: bool,
) -> ProjectView | None:
    """The project as the acting user (already set on `conn`) sees it, in one statement.
    Builder sessions are for members: a signed-out visitor may not read them."""
    sql = _CONTENT_OF_MEMBERS if user_id is not None else _CONTENT
    row = await conn.fetchrow(sql, project_id, with_content)
    if row is None or row[0] is None:
        return None
    parts = [orjson.loads(text) if text is not None else [] for text in row[2:]]
    sitemaps, wireframes, style_guides, *sessions = parts
    return ProjectView(
        visibility,
        bool(row[1]),
        orjson.loads(row[0]),
        sitemaps,
        wireframes,
        style_guides,
        sessions[0] if sessions else [],
    )


class ProjectReads:
    """Several users' views of one project in one REPEATABLE READ snapshot: the project's
    access list as of it (read as the gateway's own role, first: `as_user` switches the
    transaction to a user's role for good), then each view as its user, row-level
    security deciding every row (`as_user`)."""

    def __init__(
        self, conn: Conn, visibility: VisibilitySnapshot, access: dict[str, Any] | None
    ) -> None:
        self._conn = conn
        self.visibility = visibility
        # Owner, collaborators and visibility (user_id, collaborators, is_public); None:
        # no such project as of the snapshot.
        self.access = access

    async def as_user(
        self, user_id: UUID | None, project_id: UUID, *, with_content: bool
    ) -> ProjectView | None:
        """The project as `user_id` (None: a signed-out visitor) sees it, as of the
        shared snapshot; None if hidden."""
        async with acting_as(self._conn, user_id):
            return await _view_as(self._conn, self.visibility, user_id, project_id, with_content)


@asynccontextmanager
async def project_reads(conn: Conn, project_id: UUID) -> AsyncIterator[ProjectReads]:
    """A read-only REPEATABLE READ transaction on `conn` for `ProjectReads`."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(_ACCESS_AT, project_id)
        assert row is not None, "the statement returns one row"
        access = None if row["user_id"] is None else {key: row[key] for key in _ACCESS_COLUMNS}
        yield ProjectReads(conn, VisibilitySnapshot.parse(row["seen"]), access)


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
        visibility = VisibilitySnapshot.parse(await conn.fetchval(_SNAPSHOT))
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
