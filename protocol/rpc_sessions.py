"""Params and results of the `session.*` RPC methods (the seed's builderHelpers.session):
live AI builder sessions, their progress, and their end.

The `session_token` is the owner's key to a session (`get_by_token`, `resume`): it is
returned to the owner in the results of `create`, `get_by_token`, `resume` and `list`,
and never in a `change` frame or a snapshot (`SessionRow` drops it).
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import Field, JsonValue, model_validator

from protocol.rows import SessionRow
from protocol.rpc_projects import Params

Step = str
Token = str
# A step is a name ("wireframe-design"); it is also shown in presence, whose messages
# between gateway nodes must stay small (gateway/presence/bus.py).
STEP_MAX_CHARS = 256


class SessionCreate(Params):
    """A new `active` session of the caller in a project the caller may edit. The token,
    the caller's address and user agent are the server's to fill in."""

    project_id: UUID
    current_step: Step = Field(min_length=1, max_length=STEP_MAX_CHARS)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class SessionToken(Params):
    session_token: Token = Field(min_length=1, max_length=256)


class SessionProgress(Params):
    """Replaces the columns given (at least one); a completed or cancelled session is
    `conflict`."""

    id: UUID
    current_step: Step | None = Field(default=None, min_length=1, max_length=STEP_MAX_CHARS)
    progress: dict[str, JsonValue] | None = None
    step_data: dict[str, JsonValue] | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> SessionProgress:
        if self.current_step is None and self.progress is None and self.step_data is None:
            raise ValueError("nothing to change: give current_step, progress and/or step_data")
        return self


class SessionId(Params):
    id: UUID


SessionStatus = Literal["active", "paused", "completed", "cancelled"]
LIST_MAX = 200


class SessionList(Params):
    """The caller's own sessions (any device's), newest first: of one project or all,
    of the given statuses or all."""

    project_id: UUID | None = None
    status: list[SessionStatus] | None = Field(default=None, min_length=1, max_length=4)
    limit: int = Field(default=50, ge=1, le=LIST_MAX)


class SessionResume(Params):
    """A session by its token (whoever holds it: its owner), or by its id (its owner, on
    any device: `session.list` names them)."""

    session_token: Token | None = Field(default=None, min_length=1, max_length=256)
    id: UUID | None = None

    @model_validator(mode="after")
    def _one_key(self) -> SessionResume:
        if (self.session_token is None) == (self.id is None):
            raise ValueError("give session_token or id (one of them)")
        return self


class OwnedSession(SessionRow):
    """A session as its owner sees it: with its token."""

    session_token: Token


# Method name → params model (the JSON Schema export reads this).
PARAMS: dict[str, type[Params]] = {
    "session.create": SessionCreate,
    "session.get_by_token": SessionToken,
    "session.update_progress": SessionProgress,
    "session.complete": SessionId,
    "session.cancel": SessionId,
    "session.resume": SessionResume,
    "session.list": SessionList,
}

# Method name → result type (the JSON Schema and the `.d.ts` read this).
RESULTS: dict[str, Any] = {
    "session.create": OwnedSession,
    "session.get_by_token": OwnedSession,
    "session.update_progress": SessionRow,
    "session.complete": SessionRow,
    "session.cancel": SessionRow,
    "session.resume": OwnedSession,
    "session.list": list[OwnedSession],
}
