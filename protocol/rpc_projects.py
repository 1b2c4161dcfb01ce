"""Params and results of the `project.*` RPC methods (the seed's builderHelpers.project)."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from protocol.rows import ProjectRow, SitemapRow, StyleGuideRow, WireframeRow


class Params(BaseModel):
    """Unknown params are refused: a typo must not be silently ignored on a write."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectCreate(Params):
    """The owner is the caller; `id` may be chosen by the client (optimistic UI)."""

    id: UUID | None = None
    name: str = Field(min_length=1)
    type: str = "website"
    status: str = "draft"
    description: str | None = None
    data: JsonValue = Field(default_factory=dict)
    settings: JsonValue = Field(default_factory=dict)
    collaborators: list[UUID] = Field(default_factory=list)
    is_public: bool = False


class ProjectId(Params):
    project_id: UUID


class ProjectWithRelations(BaseModel):
    project: ProjectRow
    sitemaps: list[SitemapRow]
    wireframes: list[WireframeRow]
    style_guides: list[StyleGuideRow]


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "project.create": ProjectCreate,
    "project.get_with_relations": ProjectId,
}
