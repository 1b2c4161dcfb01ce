"""Every frame of the gateway's websocket protocol, in both directions.

A frame is one JSON object with a `type`. Client requests may carry a `ref`
(string or integer) that the reply echoes, so a client can match replies to
requests. Server pushes (`snapshot`, `change`, …) carry no `ref`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from protocol.errors import ErrorCode
from protocol.rows import (
    ProjectRow,
    Row,
    SessionRow,
    SitemapRow,
    StyleGuideRow,
    VersionRow,
    WireframeRow,
)

Ref = Annotated[str | int, Field(description="Client-chosen id echoed in the reply.")]


class Frame(BaseModel):
    model_config = ConfigDict(frozen=True)


class ClientFrame(Frame):
    """Unknown fields are ignored, so newer clients keep working with this server."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    ref: Ref | None = None


# Client → server


class Auth(ClientFrame):
    """Must be the first frame: a JWT whose `sub` is the user's id."""

    type: Literal["auth"] = "auth"
    token: str = Field(min_length=1)


class AuthRefresh(ClientFrame):
    """Replace the connection's token (same user) before it expires."""

    type: Literal["auth.refresh"] = "auth.refresh"
    token: str = Field(min_length=1)


class Subscribe(ClientFrame):
    """Follow a project: `ok`, then (if `snapshot`) its state, then every change.

    With `since`, resume instead: the changes after that position are replayed, then
    live ones follow; when they can no longer all be replayed, `reset` and a fresh
    snapshot come instead (whatever `snapshot` says)."""

    type: Literal["subscribe"] = "subscribe"
    project_id: UUID
    snapshot: bool = True
    since: str | None = Field(
        None,
        max_length=64,
        description="The `position` of the last change (or snapshot) the client has.",
    )
    delta: bool = Field(
        False,
        description="Updates as `delta` frames (the changed columns and merge patches), "
        "version-history changes without `data` and `changes` (`version.get` has them).",
    )
    old: bool = Field(
        False,
        description="With `delta`: `delta` frames carry the whole previous row too.",
    )


class Unsubscribe(ClientFrame):
    type: Literal["unsubscribe"] = "unsubscribe"
    project_id: UUID


class SubscribeProjects(ClientFrame):
    """Follow the user's project list (owned or shared with them): `ok`, then a
    `project_list`, then every change to it as `change` frames with `list: true`.
    One per connection."""

    type: Literal["subscribe_projects"] = "subscribe_projects"


class UnsubscribeProjects(ClientFrame):
    type: Literal["unsubscribe_projects"] = "unsubscribe_projects"


class Ping(ClientFrame):
    """Application-level liveness check; answered with `ok`."""

    type: Literal["ping"] = "ping"


class Rpc(ClientFrame):
    """Call a method (see protocol/rpc.py and docs/protocol.md); answered with `result`
    or `error`. Methods run in PostgreSQL as the connection's user."""

    type: Literal["rpc"] = "rpc"
    method: str = Field(min_length=1, max_length=64)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description=(
            "Client-chosen, unique per request of this user: a repeat with the same key "
            "(e.g. after a reconnect) is answered with the first request's result and "
            "writes nothing again. Kept for `SITEBUILDER_RPC_IDEMPOTENCY_TTL_SECONDS`."
        ),
    )


class PresenceUpdate(ClientFrame):
    """Replace this connection's presence `meta` in a subscribed project (page or
    wireframe being edited, cursor, selection, builder session and step…); answered
    with `ok`. Rate-limited per connection: excess updates are coalesced to the latest."""

    type: Literal["presence.update"] = "presence.update"
    project_id: UUID
    meta: dict[str, JsonValue] = Field(default_factory=dict)


ClientMessage = Annotated[
    Auth
    | AuthRefresh
    | Subscribe
    | Unsubscribe
    | SubscribeProjects
    | UnsubscribeProjects
    | Ping
    | Rpc
    | PresenceUpdate,
    Field(discriminator="type"),
]
CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    "auth": Auth,
    "auth.refresh": AuthRefresh,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "subscribe_projects": SubscribeProjects,
    "unsubscribe_projects": UnsubscribeProjects,
    "ping": Ping,
    "rpc": Rpc,
    "presence.update": PresenceUpdate,
}


# Server → client


class Access(StrEnum):
    READ_WRITE = "read_write"
    READ_ONLY = "read_only"

    @classmethod
    def of(cls, editable: bool) -> Access:
        return cls.READ_WRITE if editable else cls.READ_ONLY


class Ok(Frame):
    """Success reply to the request with the same `ref`; `data` depends on the request."""

    type: Literal["ok"] = "ok"
    ref: Ref | None = None
    data: dict[str, object] = Field(default_factory=dict)


class Error(Frame):
    """A refused request or frame; the connection stays open unless a close follows."""

    type: Literal["error"] = "error"
    ref: Ref | None = None
    code: ErrorCode
    message: str
    retry_after_ms: int | None = None
    details: dict[str, JsonValue] | None = Field(
        None, description="Machine-readable specifics (e.g. the current row of a conflict)."
    )


class Result(Frame):
    """Success reply to an `rpc`; `data` is the method's result."""

    type: Literal["result"] = "result"
    ref: Ref | None = None
    data: JsonValue


class Snapshot(Frame):
    """A project and everything under it as of one database snapshot; every later
    change follows as `change` frames, none that is already in here."""

    type: Literal["snapshot"] = "snapshot"
    project_id: UUID
    access: Access
    position: str = Field(
        description="Resume point: `subscribe {since: position}` replays what follows it."
    )
    project: ProjectRow
    sitemaps: list[SitemapRow]
    wireframes: list[WireframeRow]
    style_guides: list[StyleGuideRow]
    sessions: list[SessionRow] = Field(description="Active and paused builder sessions.")


class Op(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


RowT = TypeVar("RowT", bound=Row)


class ChangeBase(Frame, Generic[RowT]):
    type: Literal["change"] = "change"
    # Declared here so it serializes right after `type`; each subclass fixes its value.
    entity: str = Field("", description="What changed.")
    project_id: UUID
    op: Op
    new: RowT | None = Field(description="The row after the change; null for a delete.")
    old: RowT | None = Field(description="The row before the change; null for an insert.")
    actor: UUID | None = Field(description="The user who made the change, when known.")
    committed_at: datetime
    position: str = Field(
        description="Opaque; strictly increasing per project (compare as strings)."
    )
    ref: Ref | None = Field(
        None,
        description="The `ref` of the `rpc` that made this change, present only on the "
        "connection that sent it (absent on replays).",
        exclude_if=lambda ref: ref is None,
    )


class ProjectChange(ChangeBase[ProjectRow]):
    entity: Literal["project"] = "project"
    list: bool = Field(
        False,
        description="True: a change of the user's project list (`subscribe_projects`), "
        "where `op` is relative to the user (added: `insert`, removed: `delete`); "
        "false: a change of a subscribed project.",
    )


class SitemapChange(ChangeBase[SitemapRow]):
    entity: Literal["sitemap"] = "sitemap"


class WireframeChange(ChangeBase[WireframeRow]):
    entity: Literal["wireframe"] = "wireframe"


class StyleGuideChange(ChangeBase[StyleGuideRow]):
    entity: Literal["style-guide"] = "style-guide"


class SessionChange(ChangeBase[SessionRow]):
    entity: Literal["session"] = "session"


class VersionChange(ChangeBase[VersionRow]):
    entity: Literal["version"] = "version"


class DeltaBase(Frame, Generic[RowT]):
    """An update, for a subscription made with `delta`: what changed since the row at
    `base_version` (the previous row, for tables without a version)."""

    type: Literal["delta"] = "delta"
    # Declared here so it serializes right after `type`; each subclass fixes its value.
    entity: str = Field("", description="What changed.")
    project_id: UUID
    id: UUID = Field(description="The updated row's id.")
    version: int | None = Field(description="The row's version now; null for tables without.")
    base_version: int | None = Field(
        description="The version the delta applies to: a client holding another version "
        "resubscribes (a fresh snapshot)."
    )
    set: dict[str, JsonValue] = Field(description="Changed columns, their new values whole.")
    patch: dict[str, JsonValue] = Field(
        description="Changed JSON object columns: an RFC 7396 merge patch from the previous "
        "value each (a column is in `set` or in `patch`, never both)."
    )
    old: RowT | None = Field(
        None,
        description="The whole previous row, only for subscriptions made with `old`.",
        exclude_if=lambda old: old is None,
    )
    actor: UUID | None = Field(description="The user who made the change, when known.")
    committed_at: datetime
    position: str = Field(
        description="Opaque; strictly increasing per project (compare as strings)."
    )
    ref: Ref | None = Field(
        None,
        description="The `ref` of the `rpc` that made this change, present only on the "
        "connection that sent it (absent on replays).",
        exclude_if=lambda ref: ref is None,
    )


class ProjectDelta(DeltaBase[ProjectRow]):
    entity: Literal["project"] = "project"


class SitemapDelta(DeltaBase[SitemapRow]):
    entity: Literal["sitemap"] = "sitemap"


class WireframeDelta(DeltaBase[WireframeRow]):
    entity: Literal["wireframe"] = "wireframe"


class StyleGuideDelta(DeltaBase[StyleGuideRow]):
    entity: Literal["style-guide"] = "style-guide"


class SessionDelta(DeltaBase[SessionRow]):
    entity: Literal["session"] = "session"


Delta = Annotated[
    ProjectDelta | SitemapDelta | WireframeDelta | StyleGuideDelta | SessionDelta,
    Field(discriminator="entity"),
]
DELTA_FRAMES: dict[str, type[DeltaBase]] = {  # type: ignore[type-arg]
    "project": ProjectDelta,
    "sitemap": SitemapDelta,
    "wireframe": WireframeDelta,
    "style-guide": StyleGuideDelta,
    "session": SessionDelta,
}

Change = Annotated[
    ProjectChange
    | SitemapChange
    | WireframeChange
    | StyleGuideChange
    | SessionChange
    | VersionChange,
    Field(discriminator="entity"),
]
CHANGE_FRAMES: dict[str, type[ChangeBase]] = {  # type: ignore[type-arg]
    "project": ProjectChange,
    "sitemap": SitemapChange,
    "wireframe": WireframeChange,
    "style-guide": StyleGuideChange,
    "session": SessionChange,
    "version": VersionChange,
}


class UnsubscribedReason(StrEnum):
    ACCESS_REVOKED = "access_revoked"


class Unsubscribed(Frame):
    """The server ended a subscription; nothing more of that project follows."""

    type: Literal["unsubscribed"] = "unsubscribed"
    project_id: UUID
    reason: UnsubscribedReason
    message: str


class ResetReason(StrEnum):
    FEED_INTERRUPTED = "feed_interrupted"
    HISTORY_UNAVAILABLE = "history_unavailable"
    TRUNCATED = "truncated"


class ProjectListSnapshot(Frame):
    """The projects the user owns or collaborates on, newest `updated_at` first, as of
    one database snapshot: replaces the client's list. Every later change of the list
    follows as a `change` with `list: true`, none that is already in here."""

    type: Literal["project_list"] = "project_list"
    projects: list[ProjectRow]
    reset: ResetReason | None = Field(
        None,
        description="Null after `subscribe_projects`; else why the list is sent again "
        "(changes may have been missed).",
    )


class Reset(Frame):
    """Changes may have been missed: discard local state; a fresh `snapshot` follows."""

    type: Literal["reset"] = "reset"
    project_id: UUID
    reason: ResetReason
    message: str


class Closing(Frame):
    """The server is going away (deploy, restart); reconnect after the delay."""

    type: Literal["closing"] = "closing"
    reason: str
    reconnect_after_ms: int


class PresenceMeta(Frame):
    """One connection of a user in a project's presence."""

    connection_id: str = Field(description="Opaque, unique per connection and gateway.")
    name: str | None = Field(
        None,
        description="The user's display name: their profile's full name, else their "
        "email before the `@` (set by the server; null for an anonymous viewer).",
    )
    meta: dict[str, JsonValue]
    session: dict[str, JsonValue] | None = Field(
        None,
        description="The builder session this connection drives: {id, current_step, status}.",
    )
    joined_at: datetime
    last_active: datetime


class PresenceUser(Frame):
    metas: list[PresenceMeta] = Field(description="One per connection of the user.")


class PresenceState(Frame):
    """Who is in the project now, by user; sent after a subscribe's `ok` (and snapshot)."""

    type: Literal["presence.state"] = "presence.state"
    project_id: UUID
    users: dict[UUID, PresenceUser]


class PresenceDiff(Frame):
    """Connections that joined or left the project's presence since the last frame; an
    update of a connection's meta is a leave (old meta) and a join (new meta)."""

    type: Literal["presence.diff"] = "presence.diff"
    project_id: UUID
    joins: dict[UUID, PresenceUser]
    leaves: dict[UUID, PresenceUser]


ServerMessage = Annotated[
    Ok
    | Error
    | Result
    | Snapshot
    | Change
    | Delta
    | ProjectListSnapshot
    | Unsubscribed
    | Reset
    | Closing
    | PresenceState
    | PresenceDiff,
    Field(discriminator="type"),
]
