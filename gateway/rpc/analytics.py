"""`analytics.*` methods: builderHelpers.analytics over the socket, as the calling user.

Everything is read under row-level security, so the numbers are what the caller
may see: a public reader gets the content counts but no sessions or versions
(those are members-only), a stranger gets `not_found` rather than zeros, which
would confirm that the project exists.
"""

from __future__ import annotations

from gateway.rpc.call import Call, Handlers, RpcError
from protocol.errors import ErrorCode
from protocol.rpc_analytics import (
    ProjectStats,
    SessionCounts,
    UserAnalytics,
    UserAnalyticsParams,
)
from protocol.rpc_projects import ProjectId

handles = Handlers()

# One statement, so every count comes from the same snapshot; no row when the project
# is invisible. Versions are those of the project's current rows (history of deleted
# rows is not readable by anyone but the server).
#
# Each table is reached through its index by the ids above it (`= ANY (ARRAY(…))`, an
# uncorrelated subquery computed once), never joined: row-level security checks every
# row a scan reads, before any join, so a hash join (the plan while the statistics say
# the tables are small) read all of wireframes and version_history, every project's,
# and called their policies' functions on each row (version_history's: nested SECURITY
# DEFINER functions, tens of microseconds a row). Only the project's rows are read now.
_PROJECT_STATS = """
    WITH project AS (
        SELECT p.id, p.created_at, p.updated_at FROM public.projects p WHERE p.id = $1
    ), sitemaps AS (
        SELECT s.id, s.created_at, s.updated_at FROM public.sitemaps s WHERE s.project_id = $1
    ), wireframes AS (
        SELECT w.id, w.created_at, w.updated_at FROM public.wireframes w
        WHERE w.sitemap_id = ANY (ARRAY(SELECT id FROM sitemaps))
    ), style_guides AS (
        SELECT g.id, g.created_at, g.updated_at FROM public.style_guides g
        WHERE g.wireframe_id = ANY (ARRAY(SELECT id FROM wireframes))
    ), entities AS (
        SELECT 'projects' AS entity_type, * FROM project
        UNION ALL SELECT 'sitemaps', * FROM sitemaps
        UNION ALL SELECT 'wireframes', * FROM wireframes
        UNION ALL SELECT 'style_guides', * FROM style_guides
    ), versions AS (
        SELECT v.created_at
        FROM public.version_history v
        JOIN entities e ON e.entity_type = v.entity_type AND e.id = v.entity_id
        WHERE v.entity_type = ANY ('{projects,sitemaps,wireframes,style_guides}'::text[])
          AND v.entity_id = ANY (ARRAY(SELECT id FROM entities))
    ), sessions AS (
        SELECT b.status FROM public.builder_sessions b WHERE b.project_id = $1
    )
    SELECT
        (SELECT count(*) FROM sitemaps) AS sitemaps,
        (SELECT count(*) FROM wireframes) AS wireframes,
        (SELECT count(*) FROM style_guides) AS style_guides,
        (SELECT count(*) FROM versions) AS versions,
        (SELECT count(*) FROM sessions WHERE status = 'active') AS active,
        (SELECT count(*) FROM sessions WHERE status = 'paused') AS paused,
        (SELECT count(*) FROM sessions WHERE status = 'completed') AS completed,
        (SELECT count(*) FROM sessions WHERE status = 'cancelled') AS cancelled,
        greatest(
            (SELECT max(greatest(e.created_at, e.updated_at)) FROM entities e),
            (SELECT max(v.created_at) FROM versions v)
        ) AS last_activity
    FROM project
"""

# The fixed function is SECURITY INVOKER and refuses any user but auth.uid(), so it
# must run inside the caller's transaction, not on the gateway's own connection.
_USER_ANALYTICS = """
    SELECT total_sessions, avg_duration, completed_sessions, most_common_step, sessions_per_day
    FROM public.get_session_analytics($1, $2)
"""


@handles("analytics.get_project_stats", writes=False)
async def get_project_stats(call: Call, params: ProjectId) -> ProjectStats:
    async with call.as_user() as conn:
        row = await conn.fetchrow(_PROJECT_STATS, params.project_id)
    if row is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no project {params.project_id} visible to you")
    return ProjectStats(
        project_id=params.project_id,
        sitemaps=row["sitemaps"],
        wireframes=row["wireframes"],
        style_guides=row["style_guides"],
        versions=row["versions"],
        sessions=SessionCounts(
            active=row["active"],
            paused=row["paused"],
            completed=row["completed"],
            cancelled=row["cancelled"],
        ),
        editors_online=len(await call.online(params.project_id)),
        last_activity=row["last_activity"],
    )


@handles("analytics.get_user_analytics", writes=False)
async def get_user_analytics(call: Call, params: UserAnalyticsParams) -> UserAnalytics:
    async with call.as_user() as conn:
        row = await conn.fetchrow(_USER_ANALYTICS, call.user_id, params.days)
    assert row is not None, "an aggregate always returns one row"
    return UserAnalytics(days=params.days, **dict(row))
