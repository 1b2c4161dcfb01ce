"""Params of the `sitemap.*`, `wireframe.*` and `style_guide.*` RPC methods (the seed's
builderHelpers for a project's content): create, update and delete, one shape for all three.

Per entity there are three column sets: the parent's id plus its plain columns
(`…Set`: replaced outright by `update.set`), its jsonb columns (`…Patch`: changed by
`update.patch` with an RFC 7396 merge patch, applied in SQL so concurrent editors of
different keys both keep their change), and both together for `create`. The `…Set` and
`…Patch` shapes are TypedDicts rather than models so that a key left out is absent, not
None: "leave this column alone" and "set it to null" stay distinct, a NOT NULL column is
typed without null, and the JSON Schema says exactly that.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator, with_config
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before 3.12

from protocol.rows import SitemapRow, StyleGuideRow, WireframeRow
from protocol.rpc_projects import Params

Title = Annotated[str, Field(min_length=1)]
# A merge patch of one jsonb column: these columns hold objects, and a patch that is not
# an object would replace the whole value, which is `create`'s job, not a partial update.
MergePatch = dict[str, JsonValue]
# Column sets refuse unknown keys: a misspelt column must not be silently dropped.
_COLUMNS = ConfigDict(extra="forbid")


class Versioned(Params):
    """What the version this write produces says about itself (its version_history row)."""

    message: str | None = Field(default=None, min_length=1)
    is_major: bool = False


# Sitemaps


@with_config(_COLUMNS)
class SitemapSet(TypedDict, total=False):
    project_id: UUID
    title: Title
    description: str | None


@with_config(_COLUMNS)
class SitemapPatch(TypedDict, total=False):
    pages: MergePatch
    metadata: MergePatch


class SitemapCreate(Versioned):
    """A sitemap of a project the caller may edit; `id` may be chosen by the client."""

    id: UUID | None = None
    project_id: UUID
    title: Title
    description: str | None = None
    pages: JsonValue = Field(default_factory=dict)
    metadata: JsonValue = Field(default_factory=dict)


# Wireframes


@with_config(_COLUMNS)
class WireframeSet(TypedDict, total=False):
    sitemap_id: UUID
    title: Title
    description: str | None
    components: list[str]


@with_config(_COLUMNS)
class WireframePatch(TypedDict, total=False):
    layout: MergePatch
    style_guide: MergePatch


class WireframeCreate(Versioned):
    """A wireframe of a sitemap the caller may edit; `id` may be chosen by the client."""

    id: UUID | None = None
    sitemap_id: UUID
    title: Title
    description: str | None = None
    layout: JsonValue = Field(default_factory=dict)
    style_guide: JsonValue = Field(default_factory=dict)
    components: list[str] = Field(default_factory=list)


# Style guides


@with_config(_COLUMNS)
class StyleGuideSet(TypedDict, total=False):
    wireframe_id: UUID
    title: Title
    description: str | None


@with_config(_COLUMNS)
class StyleGuidePatch(TypedDict, total=False):
    colors: MergePatch
    typography: MergePatch
    spacing: MergePatch
    components: MergePatch
    grid: MergePatch
    breakpoints: MergePatch


class StyleGuideCreate(Versioned):
    """A style guide of a wireframe the caller may edit; `id` may be chosen by the client."""

    id: UUID | None = None
    wireframe_id: UUID
    title: Title
    description: str | None = None
    colors: JsonValue = Field(default_factory=dict)
    typography: JsonValue = Field(default_factory=dict)
    spacing: JsonValue = Field(default_factory=dict)
    components: JsonValue = Field(default_factory=dict)
    grid: JsonValue = Field(default_factory=dict)
    breakpoints: JsonValue = Field(default_factory=dict)


# Update and delete, the same for every entity

SetT = TypeVar("SetT")
PatchT = TypeVar("PatchT")


class Update(Versioned, Generic[SetT, PatchT]):
    """`set` replaces plain columns (the parent's id moves the row), `patch` merges into
    jsonb columns; with `expected_version` a row changed since then is not written."""

    id: UUID
    # {} is a valid value of every total=False TypedDict; mypy cannot know that of a TypeVar.
    set: SetT = Field(default_factory=dict)  # type: ignore[assignment]
    patch: PatchT = Field(default_factory=dict)  # type: ignore[assignment]
    expected_version: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _changes_something(self) -> Update[SetT, PatchT]:
        """An update with nothing in it is a client's mistake, not a no-op to hide."""
        if not self.set and not self.patch:
            raise ValueError("nothing to change: give `set` and/or `patch`")
        return self


class SitemapUpdate(Update[SitemapSet, SitemapPatch]):
    """`set` title, description or project_id (moves it); `patch` pages or metadata."""


class WireframeUpdate(Update[WireframeSet, WireframePatch]):
    """`set` title, description, components or sitemap_id (moves it); `patch` layout
    or style_guide."""


class StyleGuideUpdate(Update[StyleGuideSet, StyleGuidePatch]):
    """`set` title, description or wireframe_id (moves it); `patch` colors, typography,
    spacing, components, grid or breakpoints."""


class Delete(Params):
    """Deletes the row and, by cascade, everything under it."""

    id: UUID
    expected_version: int | None = Field(default=None, ge=1)


class Deleted(BaseModel):
    id: UUID


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "sitemap.create": SitemapCreate,
    "sitemap.update": SitemapUpdate,
    "sitemap.delete": Delete,
    "wireframe.create": WireframeCreate,
    "wireframe.update": WireframeUpdate,
    "wireframe.delete": Delete,
    "style_guide.create": StyleGuideCreate,
    "style_guide.update": StyleGuideUpdate,
    "style_guide.delete": Delete,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "sitemap.create": SitemapRow,
    "sitemap.update": SitemapRow,
    "sitemap.delete": Deleted,
    "wireframe.create": WireframeRow,
    "wireframe.update": WireframeRow,
    "wireframe.delete": Deleted,
    "style_guide.create": StyleGuideRow,
    "style_guide.update": StyleGuideRow,
    "style_guide.delete": Deleted,
}
