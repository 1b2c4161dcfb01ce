"""Presence: who is connected to each project right now, and what they are doing.

`Presence` is the interface the rest of the gateway uses: join, leave, update, list,
and subscribe to diffs. Its methods are coroutines and its diffs arrive through a
listener, because a backend may share the state with other gateway processes over a
bus (gateway/presence_bus.py: PostgreSQL LISTEN/NOTIFY or Redis): nothing outside
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

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from pydantic import JsonValue
from websockets.asyncio.server import ServerConnection

from gateway.access import ANONYMOUS
from gateway.channels import ChannelKey
from gateway.hub import Hub, PhoenixTopic
from gateway.metrics import Metrics
from gateway.wire import write_text
from protocol import phoenix as phx
from protocol.codec import encode_frame
from protocol.frames import PresenceDiff, PresenceMeta, PresenceUser

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

    @property
    def phx_ref(self) -> str:
        """Phoenix's ref of this meta: new with every new meta (Supabase clients apply a
        diff's joins before its leaves, matching metas by ref)."""
        return f"{self.connection_id}.{int(self.last_active.timestamp() * 1_000_000)}"


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """What changed in one project's presence, as one diff."""

    project_id: ChannelKey
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
        project_id: ChannelKey,
        user_id: UUID,
        connection_id: str,
        meta: Meta,
        key: str | None = None,
    ) -> None:
        """Add (or replace) the connection in the project's presence."""
        ...

    async def leave(self, project_id: ChannelKey, connection_id: str) -> None:
        """Remove the connection; nothing happens when it is not there."""
        ...

    async def update(self, project_id: ChannelKey, connection_id: str, meta: Meta) -> None:
        """Replace the connection's meta (and `last_active`); ignored when it left."""
        ...

    async def set_session(
        self, project_id: ChannelKey, connection_id: str, session: Meta | None
    ) -> None:
        """Show (None: stop showing) the builder session the connection drives, beside
        the client's own meta; ignored when the connection is not there."""
        ...

    async def list(self, project_id: ChannelKey) -> list[PresenceEntry]:
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
        self._projects: dict[ChannelKey, dict[str, PresenceEntry]] = {}
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
        project_id: ChannelKey,
        user_id: UUID,
        connection_id: str,
        meta: Meta,
        key: str | None = None,
    ) -> None:
        at = now()
        entry = PresenceEntry(user_id, connection_id, meta, at, at, key=key)
        entries = self._projects.setdefault(project_id, {})
        old = entries.get(connection_id)
        entries[connection_id] = entry
        self._emit(PresenceChange(project_id, (entry,), () if old is None else (old,)))

    async def leave(self, project_id: ChannelKey, connection_id: str) -> None:
        entries = self._projects.get(project_id)
        if entries is None or connection_id not in entries:
            return
        old = entries.pop(connection_id)
        if not entries:
            del self._projects[project_id]
        self._emit(PresenceChange(project_id, (), (old,)))

    async def update(self, project_id: ChannelKey, connection_id: str, meta: Meta) -> None:
        entries = self._projects.get(project_id)
        old = None if entries is None else entries.get(connection_id)
        if entries is None or old is None:
            return
        new = replace(old, meta=meta, last_active=now())
        entries[connection_id] = new
        self._emit(PresenceChange(project_id, (new,), (old,)))

    async def set_session(
        self, project_id: ChannelKey, connection_id: str, session: Meta | None
    ) -> None:
        entries = self._projects.get(project_id)
        old = None if entries is None else entries.get(connection_id)
        if entries is None or old is None:
            return
        new = replace(old, session=session, last_active=now())
        entries[connection_id] = new
        self._emit(PresenceChange(project_id, (new,), (old,)))

    async def list(self, project_id: ChannelKey) -> list[PresenceEntry]:
        return list(self._projects.get(project_id, {}).values())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, change: PresenceChange) -> None:
        for listener in list(self._listeners):
            listener(change)


def group_by_user(entries: Iterable[PresenceEntry]) -> dict[UUID, PresenceUser]:
    """The wire shape: `{user_id: {metas: [...]}}`, connections in join order."""
    metas: dict[UUID, list[PresenceMeta]] = {}
    for entry in sorted(entries, key=lambda e: (e.joined_at, e.connection_id)):
        metas.setdefault(entry.user_id, []).append(
            PresenceMeta(
                connection_id=entry.connection_id,
                meta=entry.meta,
                session=entry.session,
                joined_at=entry.joined_at,
                last_active=entry.last_active,
            )
        )
    return {user_id: PresenceUser(metas=m) for user_id, m in metas.items()}


# Fields of a Supabase meta that the gateway writes: a client's own values for them
# are dropped, so nobody can show as someone else.
SERVER_META_FIELDS = frozenset({"phx_ref", "user_id", "connection_id", "session"})


def phoenix_state(entries: Iterable[PresenceEntry]) -> dict[str, JsonValue]:
    """Supabase's shape: `{key: {metas: [{phx_ref, ...meta}]}}`. Every meta carries the
    token's `user_id` (null for an anonymous connection) over whatever the client set;
    a native-protocol connection shows under its user id, with its `connection_id` (and
    `session`, when it drives one) too."""
    state: dict[str, list[JsonValue]] = {}
    for entry in sorted(entries, key=lambda e: (e.joined_at, e.connection_id)):
        meta: dict[str, JsonValue] = {
            k: v for k, v in entry.meta.items() if k not in SERVER_META_FIELDS
        }
        meta["phx_ref"] = entry.phx_ref
        meta["user_id"] = None if entry.user_id == ANONYMOUS else str(entry.user_id)
        if entry.key is None:
            meta["connection_id"] = entry.connection_id
            if entry.session is not None:
                meta["session"] = entry.session
        state.setdefault(entry.key or str(entry.user_id), []).append(meta)
    return {key: {"metas": metas} for key, metas in state.items()}


def presence_key_problem(key: str, user_id: UUID) -> str | None:
    """Why a Supabase client may not use `key` as its presence key, or None.

    A key is the client's to choose, except that a key naming a user (a UUID) must
    name the token's: nobody can appear under another user's id."""
    try:
        named = UUID(key)
    except ValueError:
        return None
    if named == user_id and user_id != ANONYMOUS:
        return None
    return f"presence key {key!r} is another user's id: use your own id or a key of no user"


@dataclass(slots=True)
class _Segment:
    """Changes merged into one diff. Leaves apply before joins, so a change may join
    the segment unless it undoes one of its joins (a leave, or a new meta, of a
    connection that joined in it): that must follow as a diff of its own."""

    joins: dict[str, PresenceEntry]
    leaves: dict[str, PresenceEntry]

    def takes(self, change: PresenceChange) -> bool:
        return not any(
            entry.connection_id in self.joins for entry in (*change.leaves, *change.joins)
        )

    def add(self, change: PresenceChange) -> None:
        for entry in change.leaves:
            self.leaves.setdefault(entry.connection_id, entry)
        for entry in change.joins:
            self.joins[entry.connection_id] = entry


class PresenceFanout:
    """Listener that writes a project's presence changes to its subscribers on this
    gateway that already have its `presence.state`, at most once per interval.

    A diff per change costs a write to every subscriber: a thousand editors coming
    back at once after a deploy made a million writes. Changes within one interval
    are merged into as few diffs as stay correct when applied leaves-first (usually
    one), each encoded once. A subscriber that took its `presence.state` during the
    interval gets those diffs too; applying again what its state already shows
    leaves it unchanged, and the last word on every connection is the latest.
    """

    def __init__(self, hub: Hub, metrics: Metrics, interval_seconds: float) -> None:
        self._hub = hub
        self._metrics = metrics
        self._interval = interval_seconds
        self._pending: dict[ChannelKey, list[_Segment]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, change: PresenceChange) -> None:
        segments = self._pending.setdefault(change.project_id, [])
        if not segments or not segments[-1].takes(change):
            segments.append(_Segment({}, {}))
        segments[-1].add(change)
        if self._interval <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Send every pending diff now (also on shutdown, before the last goodbye)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for project_id, segments in pending.items():
            self._send(project_id, segments)

    def _send(self, project_id: ChannelKey, segments: list[_Segment]) -> None:
        targets: list[ServerConnection] = []
        phoenix: dict[PhoenixTopic, list[ServerConnection]] = {}
        for subscription in self._hub.subscriptions_of(project_id):
            if subscription.presence and subscription.subscriber.can_send():
                if subscription.phoenix is None:
                    targets.append(subscription.subscriber.ws)
                else:
                    phoenix.setdefault(subscription.phoenix, []).append(subscription.subscriber.ws)
        for topic, connections in phoenix.items():
            self._send_phoenix(topic, connections, segments)
        if not targets:
            return
        for segment in segments:
            frame = PresenceDiff(
                project_id=project_id,
                joins=group_by_user(segment.joins.values()),
                leaves=group_by_user(segment.leaves.values()),
            )
            write_text(targets, encode_frame(frame))
            self._metrics.frames_out.labels("presence.diff").inc(len(targets))

    def _send_phoenix(
        self, topic: PhoenixTopic, targets: list[ServerConnection], segments: list[_Segment]
    ) -> None:
        for segment in segments:
            diff = {
                "joins": phoenix_state(segment.joins.values()),
                "leaves": phoenix_state(segment.leaves.values()),
            }
            message = phx.Message(topic.topic, phx.Event.PRESENCE_DIFF, diff)
            write_text(targets, phx.encode(message, topic.vsn))
            self._metrics.frames_out.labels("presence_diff").inc(len(targets))
