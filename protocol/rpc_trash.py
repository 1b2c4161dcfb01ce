"""Params and results of the `trash.*` RPC methods: what was deleted from a project,
and putting it back (migration 0019).

A deleted sitemap, wireframe or style guide is one entry, holding what its deletion
took with it (a sitemap's wireframes and their style guides); restoring the entry puts
all of it back under the same ids, each row as a new version of its history. Entries
are the project's editors' to see and restore, for SITEBUILDER_TRASH_RETENTION_DAYS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from protocol.rpc_projects import Params

TrashedType = Literal["sitemaps", "wireframes", "style_guides"]
TRASH_PAGE_MAX = 200


class TrashList(Params):
    """A project's trash, most recently deleted first; `before` continues a listing from
    the `next_before` of the previous page."""

    project_id: UUID
    limit: int = Field(default=50, ge=1, le=TRASH_PAGE_MAX)
    before: UUID | None = None


class TrashEntry(BaseModel):
    """One deletion: `id` is what `trash.restore` takes; `parent_id` is the project,
    sitemap or wireframe the row was in; `with_wireframes` and `with_style_guides`
    count what was deleted with it (and comes back with it)."""

    id: UUID
    entity_type: TrashedType
    entity_id: UUID
    parent_id: UUID
    title: str
    deleted_at: datetime
    deleted_by: UUID | None
    deleted_by_name: str | None = None
    with_wireframes: int
    with_style_guides: int


class TrashPage(BaseModel):
    """`next_before` is null on the last page."""

    entries: list[TrashEntry]
    next_before: UUID | None


class TrashRestore(Params):
    """The entry's `id` (not the deleted row's): its rows come back, parents first.
    An entry whose parent was deleted since is `conflict` (restore the parent's entry
    first)."""

    id: UUID


class RestoredRow(BaseModel):
    """A row back in its table, under its old id, at the new `version` its restore made."""

    entity_type: TrashedType
    entity_id: UUID
    version: int


class TrashRestored(BaseModel):
    restored: list[RestoredRow]


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "trash.list": TrashList,
    "trash.restore": TrashRestore,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "trash.list": TrashPage,
    "trash.restore": TrashRestored,
}
