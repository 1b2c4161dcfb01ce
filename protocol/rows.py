"""Rows of the six tables as clients receive them: the schema document's columns, typed.

Both change feeds hand over rows as loosely typed mappings (JSON from a trigger,
text from the replication stream); validating them through these models gives
every client the same canonical JSON whatever the feed: UUIDs as strings,
timestamps in ISO 8601 UTC, jsonb as JSON.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, JsonValue

Json = JsonValue


class Entity(StrEnum):
    """What a change is about; the names the schema document's `payload.type` uses."""

    PROJECT = "project"
    SITEMAP = "sitemap"
    WIREFRAME = "wireframe"
    STYLE_GUIDE = "style-guide"
    SESSION = "session"
    VERSION = "version"


class Row(BaseModel):
    """Extra columns (added by a later migration) pass through rather than break delivery."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ProjectRow(Row):
    id: UUID
    created_at: datetime | None = None
    updated_at: datetime | None = None
    user_id: UUID
    name: str
    description: str | None = None
    type: str
    status: str
    data: Json | None = None
    settings: Json | None = None
    collaborators: list[UUID] | None = None
    is_public: bool | None = None


class SitemapRow(Row):
    id: UUID
    created_at: datetime | None = None
    updated_at: datetime | None = None
    project_id: UUID
    title: str
    description: str | None = None
    pages: Json | None = None
    metadata: Json | None = None
    version: int


class WireframeRow(Row):
    id: UUID
    created_at: datetime | None = None
    updated_at: datetime | None = None
    sitemap_id: UUID
    title: str
    description: str | None = None
    layout: Json | None = None
    style_guide: Json | None = None
    components: list[str] | None = None
    version: int


class StyleGuideRow(Row):
    id: UUID
    created_at: datetime | None = None
    updated_at: datetime | None = None
    wireframe_id: UUID
    title: str
    description: str | None = None
    colors: Json | None = None
    typography: Json | None = None
    spacing: Json | None = None
    components: Json | None = None
    grid: Json | None = None
    breakpoints: Json | None = None
    version: int


class SessionRow(Row):
    """A builder session. `session_token` is never sent to collaborators: it is the
    owner's key for resuming the session, so it is dropped from every row."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: UUID
    created_at: datetime | None = None
    updated_at: datetime | None = None
    user_id: UUID
    project_id: UUID | None = None
    status: Literal["active", "paused", "completed", "cancelled"]
    current_step: str
    step_data: Json | None = None
    progress: Json | None = None
    metadata: Json | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: int | None = None
    ip_address: str | None = None
    user_agent: str | None = None


class VersionRow(Row):
    id: UUID
    created_at: datetime | None = None
    entity_type: str
    entity_id: UUID
    version_number: int
    user_id: UUID
    changes: Json | None = None
    data: Json | None = None
    message: str | None = None
    is_major: bool | None = None


AnyRow = ProjectRow | SitemapRow | WireframeRow | StyleGuideRow | SessionRow | VersionRow

TABLE_ENTITIES: dict[str, Entity] = {
    "projects": Entity.PROJECT,
    "sitemaps": Entity.SITEMAP,
    "wireframes": Entity.WIREFRAME,
    "style_guides": Entity.STYLE_GUIDE,
    "builder_sessions": Entity.SESSION,
    "version_history": Entity.VERSION,
}

ENTITY_ROWS: dict[Entity, type[Row]] = {
    Entity.PROJECT: ProjectRow,
    Entity.SITEMAP: SitemapRow,
    Entity.WIREFRAME: WireframeRow,
    Entity.STYLE_GUIDE: StyleGuideRow,
    Entity.SESSION: SessionRow,
    Entity.VERSION: VersionRow,
}
