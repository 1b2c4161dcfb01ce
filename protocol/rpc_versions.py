"""Params and results of the `version.*` RPC methods (the seed's builderHelpers.version)."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from protocol.rows import VersionRow
from protocol.rpc_projects import Params

# The versioned tables, as version_history.entity_type names them.
EntityType = Literal["projects", "sitemaps", "wireframes", "style_guides"]


class VersionsByEntity(Params):
    """One page of an entity's history, newest first; `before_version` continues a
    listing from the `next_before_version` of the previous page."""

    entity_type: EntityType
    entity_id: UUID
    limit: int = Field(default=20, ge=1, le=100)
    before_version: int | None = Field(default=None, ge=1)


class VersionId(Params):
    version_id: UUID


class Checkpoint(Params):
    """A named version of the entity as it is now; major unless said otherwise, since
    naming a state is what one does before or after a big change."""

    entity_type: EntityType
    entity_id: UUID
    message: str = Field(min_length=1)
    is_major: bool = True


class Revert(Params):
    """`message` replaces the default "Revert to vN" on the new version."""

    version_id: UUID
    message: str | None = Field(default=None, min_length=1)


class VersionEntry(VersionRow):
    """A version as the history shows it: with its author's display name (null when
    no user made it)."""

    user_name: str | None = None


class VersionPage(BaseModel):
    """`next_before_version` is null on the last page."""

    versions: list[VersionEntry]
    next_before_version: int | None


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "version.get_by_entity": VersionsByEntity,
    "version.get": VersionId,
    "version.checkpoint": Checkpoint,
    "version.revert": Revert,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "version.get_by_entity": VersionPage,
    "version.get": VersionEntry,
    "version.checkpoint": VersionEntry,
    "version.revert": VersionEntry,
}
