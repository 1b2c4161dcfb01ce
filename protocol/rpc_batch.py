"""Params and result of `batch.create_project_structure` (the seed's
builderHelpers.batch.createProjectStructure): a project and its first content at once."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, Field, JsonValue, model_validator

from protocol.rows import ProjectRow, SitemapRow, StyleGuideRow, WireframeRow
from protocol.rpc_projects import Params, ProjectCreate


class BatchSitemap(Params):
    title: str = Field(min_length=1)
    description: str | None = None
    pages: JsonValue = Field(default_factory=dict)
    metadata: JsonValue = Field(default_factory=dict)


class BatchWireframe(Params):
    """A wireframe of the batch's sitemap."""

    title: str = Field(min_length=1)
    description: str | None = None
    layout: JsonValue = Field(default_factory=dict)
    style_guide: JsonValue = Field(default_factory=dict)
    components: list[str] = Field(default_factory=list)


class BatchStyleGuide(Params):
    """A style guide of the batch's `wireframes[wireframe_index]`: the wireframe has no id
    yet when the client writes the request."""

    wireframe_index: int = Field(ge=0)
    title: str = Field(min_length=1)
    description: str | None = None
    colors: JsonValue = Field(default_factory=dict)
    typography: JsonValue = Field(default_factory=dict)
    spacing: JsonValue = Field(default_factory=dict)
    components: JsonValue = Field(default_factory=dict)
    grid: JsonValue = Field(default_factory=dict)
    breakpoints: JsonValue = Field(default_factory=dict)


class ProjectStructure(Params):
    project: ProjectCreate
    sitemap: BatchSitemap
    wireframes: list[BatchWireframe] = Field(default_factory=list)
    style_guides: list[BatchStyleGuide] = Field(default_factory=list)

    @model_validator(mode="after")
    def _style_guides_name_a_wireframe(self) -> Self:
        """A dangling index is the client's mistake: refuse it before touching the database."""
        for position, guide in enumerate(self.style_guides):
            if guide.wireframe_index >= len(self.wireframes):
                raise ValueError(
                    f"style_guides.{position}.wireframe_index {guide.wireframe_index} names no "
                    f"wireframe ({len(self.wireframes)} given)"
                )
        return self


class ProjectStructureCreated(BaseModel):
    """Every row the batch created, in request order, as stored."""

    project: ProjectRow
    sitemap: SitemapRow
    wireframes: list[WireframeRow]
    style_guides: list[StyleGuideRow]


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "batch.create_project_structure": ProjectStructure,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "batch.create_project_structure": ProjectStructureCreated,
}
