"""Presence: who is connected to each project right now, and what they are doing.

`Presence` is the interface the rest of the gateway uses: join, leave, update, list,
and subscribe to diffs. Its methods are coroutines and its diffs arrive through a
listener, because a backend may share the state with other gateway processes over a
bus (gateway/presence/bus.py: PostgreSQL LISTEN/NOTIFY or Redis): nothing outside
this module may assume that every connection of a project lives in this process.
Connection ids are therefore unique across gateways (the client uses
`<gateway instance>-<connection number>`).

Presence also carries what a node must tell the others that is not a database
change: which builder sessions its connections hold (`SessionHolds`), so that a sweep
on any node pauses exactly the sessions no node holds. Nothing else needs the bus:
revocations are decided on every node from the database changes it reads itself
(project, collaborator and deletion changes reach every node's feed), and changes
never travel over it.

`InMemoryPresence` is the single-process backend (`SITEBUILDER_PRESENCE_BACKEND=memory`):
nobody else sees its state. Presence is never written to PostgreSQL tables.

The state is grouped by user, like Phoenix Presence: a user with three tabs is one
user with three connections (`metas`), wherever each tab is connected. An update of a
connection's `meta` is announced as a leave of the old entry and a join of the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from pydantic import JsonValue

from gateway.core.channels import PresenceKey

Meta = dict[str, JsonValue]


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One connection in one project's presence."""

    user_id: UUID
    connection_id: str
    meta: Meta
    joined_at: datetime
    last_active: datetime
    # The builder session this connection drives, set by the server (session.* RPCs).
    session: Meta | None = None
    # Supabase clients' presence key (`config.presence.key`); others' is their user id.
    key: str | None = None
    # The user's display name (migration 0017), as the gateway read it at sign-in;
    # None for an anonymous (anon key) connection.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """What changed in one channel's presence, as one diff (what the hub hands each
    protocol's view to encode: gateway.presence.fanout)."""

    channel: PresenceKey
    joins: tuple[PresenceEntry, ...] = ()
    leaves: tuple[PresenceEntry, ...] = ()


Listener = Callable[[PresenceChange], None]


class SessionHolds(Protocol):
    """Which builder sessions connections of this node hold, told to every node."""

    def hold_session(self, session_id: UUID) -> None:
        """A connection of this node now holds the session (the first one does)."""
        ...

    def release_session(self, session_id: UUID) -> None:
        """No connection of this node holds the session any more."""
        ...

    def sessions_held_elsewhere(self) -> set[UUID]:
        """Sessions that connections of other live nodes hold."""
        ...

    def on_node_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever another node is gone (its holds with it)."""
        ...

    async def wait_settled(self) -> None:
        """Return once this node has heard every live node's state (at start)."""
        ...


class Presence(SessionHolds, Protocol):
    """Per-project presence; diffs go to every listener (of every gateway, for a
    shared backend)."""

    async def start(self) -> None:
        """Connect to the bus, if any (raises `PresenceUnavailable` when it cannot)."""
        ...

    async def close(self) -> None:
        """Say goodbye to the other nodes, stop every task, close the bus connection."""
        ...

    def describe(self) -> str:
        """For /readyz: the backend and, for a bus, its state and the other nodes."""
        ...

    async def join(
        self,
        channel: PresenceKey,
        user_id: UUID,
        connection_id: str,
        meta: Meta,
        key: str | None = None,
        name: str | None = None,
    ) -> None:
        """Add (or replace) the connection in the project's presence."""
        ...

    async def leave(self, channel: PresenceKey, connection_id: str) -> None:
        """Remove the connection; nothing happens when it is not there."""
        ...

    async def update(self, channel: PresenceKey, connection_id: str, meta: Meta) -> None:
        """Replace the connection's meta (and `last_active`); ignored when it left."""
        ...

    async def set_session(
        self, channel: PresenceKey, connection_id: str, session: Meta | None
    ) -> None:
        """Show (None: stop showing) the builder session the connection drives, beside
        the client's own meta; ignored when the connection is not there."""
        ...

    async def list(self, channel: PresenceKey) -> list[PresenceEntry]:
        """Every connection in the project's presence."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every diff from now on; returns the unsubscribe."""
        ...


class PresenceUnavailable(RuntimeError):
    """The presence bus cannot be reached at start."""


def now() -> datetime:
    return datetime.now(UTC)


class InMemoryPresence:
    """The single-process backend: a dict per project, diffs to listeners at once.
    Other processes see none of it, so it is right only for a lone gateway process."""

    def __init__(self) -> None:
        self._projects: dict[PresenceKey, dict[str, PresenceEntry]] = {}
        self._listeners: list[Listener] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return "presence=memory"

    def hold_session(self, session_id: UUID) -> None:
        return None

    def release_session(self, session_id: UUID) -> None:
        return None

    def sessions_held_elsewhere(self) -> set[UUID]:
        return set()

    def on_node_lost(self, callback: Callable[[], None]) -> None:
        return None

    async def wait_settled(self) -> None:
        return None

    async def join(
        self,
        channel: PresenceKey,
        user_id: UUID,
        connection_id: str,
        meta: Meta,
        key: str | None = None,
        name: str | None = None,
    ) -> None:
        at = now()
        entry = PresenceEntry(user_id, connection_id, meta, at, at, key=key, name=name)
        entries = self._projects.setdefault(channel, {})
        old = entries.get(connection_id)
        entries[connection_id] = entry
        self._emit(PresenceChange(channel, (entry,), () if old is None else (old,)))

    async def leave(self, channel: PresenceKey, connection_id: str) -> None:
        entries = self._projects.get(channel)
        if entries is None or connection_id not in entries:
            return
        old = entries.pop(connection_id)
        if not entries:
            del self._projects[channel]
        self._emit(PresenceChange(channel, (), (old,)))

    async def update(self, channel: PresenceKey, connection_id: str, meta: Meta) -> None:
        entries = self._projects.get(channel)
        old = None if entries is None else entries.get(connection_id)
        if entries is None or old is None:
            return
        new = replace(old, meta=meta, last_active=now())
        entries[connection_id] = new
        self._emit(PresenceChange(channel, (new,), (old,)))

    async def set_session(
        self, channel: PresenceKey, connection_id: str, session: Meta | None
    ) -> None:
        entries = self._projects.get(channel)
        old = None if entries is None else entries.get(connection_id)
        if entries is None or old is None:
            return
        new = replace(old, session=session, last_active=now())
        entries[connection_id] = new
        self._emit(PresenceChange(channel, (new,), (old,)))

    async def list(self, channel: PresenceKey) -> list[PresenceEntry]:
        return list(self._projects.get(channel, {}).values())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, change: PresenceChange) -> None:
        for listener in list(self._listeners):
            listener(change)
