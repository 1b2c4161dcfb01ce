"""Params and results of the `analytics.*` RPC methods (the seed's builderHelpers.analytics)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from protocol.rpc_projects import Params, ProjectId


class UserAnalyticsParams(Params):
    """Only the window: the user is always the caller, never a parameter (the seed's
    `getUserAnalytics(userId, days)` would let anyone ask about anyone)."""

    days: int = Field(default=30, ge=1, le=365)


class SessionCounts(BaseModel):
    """Builder sessions of the project by status, as far as the caller may see them."""

    active: int
    paused: int
    completed: int
    cancelled: int


class ProjectStats(BaseModel):
    """A dashboard tile's worth of numbers about one project, read in one statement."""

    project_id: UUID
    sitemaps: int
    wireframes: int
    style_guides: int
    versions: int
    sessions: SessionCounts
    editors_online: int
    last_activity: datetime | None


class UserAnalytics(BaseModel):
    """The caller's builder sessions over the last `days` (get_session_analytics)."""

    days: int
    total_sessions: int
    avg_duration: float | None  # seconds, over ended sessions; None when none ended
    completed_sessions: int
    most_common_step: str | None
    sessions_per_day: float


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "analytics.get_project_stats": ProjectId,
    "analytics.get_user_analytics": UserAnalyticsParams,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "analytics.get_project_stats": ProjectStats,
    "analytics.get_user_analytics": UserAnalytics,
}
