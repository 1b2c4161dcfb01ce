"""Params and results of the `project.*` RPC methods (the seed's builderHelpers.project)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before 3.12

from protocol.rows import ProjectRow, SitemapRow, StyleGuideRow, WireframeRow


class Params(BaseModel):
    """Unknown params are refused: a typo must not be silently ignored on a write."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectCreate(Params):
    """The owner is the caller; `user_id` (which the seed's examples send) may only name
    the caller, row-level security refuses anyone else. `id` may be chosen by the
    client (optimistic UI)."""

    id: UUID | None = None
    user_id: UUID | None = None
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


# A merge patch of one jsonb column: these columns hold objects, and a patch that is not
# an object would replace the whole value, which is not a partial update.
MergePatch = dict[str, JsonValue]


# TypedDicts, not models, so that a key left out is absent rather than None: "leave the
# column alone" and "set it to null" stay distinct, NOT NULL columns are typed without
# null, and the JSON Schema says so. Unknown keys are refused like unknown params.
@with_config(ConfigDict(extra="forbid"))
class ProjectSet(TypedDict, total=False):
    """Columns `project.update` replaces outright; a null `description` clears it."""

    name: Annotated[str, Field(min_length=1)]
    description: str | None
    type: str
    status: str
    is_public: bool


@with_config(ConfigDict(extra="forbid"))
class ProjectPatch(TypedDict, total=False):
    """jsonb columns `project.update` changes with an RFC 7396 merge patch, in SQL."""

    data: MergePatch
    settings: MergePatch


class ProjectUpdate(Params):
    """`expected_updated_at` is the `updated_at` the client last saw (optimistic concurrency)."""

    project_id: UUID
    set: ProjectSet = Field(default_factory=lambda: ProjectSet())
    patch: ProjectPatch = Field(default_factory=lambda: ProjectPatch())
    expected_updated_at: AwareDatetime | None = None
    message: str | None = Field(default=None, min_length=1, max_length=1000)
    is_major: bool = False

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        """An update with nothing in it is a client's mistake, not a no-op to hide."""
        if not self.set and not self.patch:
            raise ValueError("nothing to change: give `set` and/or `patch`")
        return self


class ProjectMember(BaseModel):
    """Someone who may edit the project: its owner or a collaborator (who accepted)."""

    user_id: UUID
    name: str = Field(description="Their display name (profile's full name, else email before @).")
    role: Literal["owner", "collaborator"]
    online: bool = Field(description="Subscribed to the project on a gateway right now.")


class ProjectMembers(BaseModel):
    """The owner first, then the collaborators in the order they were added."""

    members: list[ProjectMember]


class ProjectDeleted(BaseModel):
    id: UUID


class ProjectScope(StrEnum):
    """Which of the projects a user may see: owned, shared with them, public, or all three."""

    MINE = "mine"
    SHARED = "shared"
    PUBLIC = "public"
    ALL = "all"


@dataclass(frozen=True)
class ListCursor:
    """Where a page of `project.list` ended: its last row's sort key (keyset pagination).

    Opaque to clients (base64url of JSON), so its content may change between releases.
    """

    updated_at: AwareDatetime | None
    id: UUID

    def encode(self) -> str:
        raw = _CURSOR_KEY.dump_json((self.updated_at, self.id))
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> ListCursor:
        """The cursor `encode` made; ValueError for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return cls(*_CURSOR_KEY.validate_json(raw))
        except ValueError as error:  # binascii.Error and ValidationError are ValueErrors
            raise ValueError("not a cursor this server issued") from error


_CURSOR_KEY: TypeAdapter[tuple[AwareDatetime | None, UUID]] = TypeAdapter(
    tuple[AwareDatetime | None, UUID]
)


class ProjectList(Params):
    """`cursor` is the `next_cursor` of the previous page; without it, the first page."""

    scope: ProjectScope = ProjectScope.ALL
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = None

    @field_validator("cursor")
    @classmethod
    def _issued_here(cls, value: str | None) -> str | None:
        if value is not None:
            ListCursor.decode(value)
        return value

    def after(self) -> ListCursor | None:
        return ListCursor.decode(self.cursor) if self.cursor is not None else None


class ProjectPage(BaseModel):
    """Newest updated first; `next_cursor` is null on the last page."""

    projects: list[ProjectRow]
    next_cursor: str | None


class ProjectCollaborator(Params):
    """The user to invite or remove: by id or by email, exactly one of them."""

    project_id: UUID
    user_id: UUID | None = None
    email: str | None = Field(default=None, min_length=3, max_length=320)

    @model_validator(mode="after")
    def _one_user(self) -> Self:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give exactly one of `user_id` and `email`")
        return self


class ProjectInvitationList(Params):
    """The newest `limit` pending invitations of the caller."""

    limit: int = Field(default=50, ge=1, le=100)


class ProjectInvitation(BaseModel):
    """An invitation to a project the invitee cannot read yet: its name and who sent it."""

    project_id: UUID
    project_name: str
    invited_by: UUID
    invited_by_email: str | None
    invited_at: AwareDatetime


class ProjectInvitations(BaseModel):
    """Newest first."""

    invitations: list[ProjectInvitation]


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "project.create": ProjectCreate,
    "project.get_with_relations": ProjectId,
    "project.update": ProjectUpdate,
    "project.delete": ProjectId,
    "project.list": ProjectList,
    "project.add_collaborator": ProjectCollaborator,
    "project.remove_collaborator": ProjectCollaborator,
    "project.invitations": ProjectInvitationList,
    "project.accept_invitation": ProjectId,
    "project.decline_invitation": ProjectId,
    "project.leave": ProjectId,
    "project.members": ProjectId,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "project.create": ProjectRow,
    "project.get_with_relations": ProjectWithRelations,
    "project.update": ProjectRow,
    "project.delete": ProjectDeleted,
    "project.list": ProjectPage,
    "project.add_collaborator": ProjectRow,
    "project.remove_collaborator": ProjectRow,
    "project.invitations": ProjectInvitations,
    "project.accept_invitation": ProjectRow,
    "project.decline_invitation": ProjectId,
    "project.leave": ProjectId,
    "project.members": ProjectMembers,
}
