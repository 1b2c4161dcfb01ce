"""Presence shared by every gateway process over a bus: each node holds the union.

Every node (one gateway process) keeps the entries of its own connections and a copy
of every other live node's. A local change applies and reaches local listeners at
once, then is published as one small message; a message from another node applies
to the union and reaches local listeners the same way, so `PresenceFanout` sends the
same diffs on every node. The bus is a `Transport`: PostgreSQL LISTEN/NOTIFY
(gateway/presence/postgres_bus.py) or Redis pub/sub with a hash per node
(gateway/presence/redis_bus.py). Everything else (the union, re-announcing, expiry) is
here, so the two differ only in how bytes travel.

Messages are JSON objects (orjson), one change each, tagged with the sending node
(`<node name>/<random>`, new for every process) and a sequence number:

- `put` (project, connection, user, meta, session, joined_at, last_active, key: a
  Supabase client's presence key): the connection's whole entry, joined or changed;
  `leave` (project, connection).
- `hold`, `release` (session_id): a connection of the node holds a builder session,
  or none does any more (gateway/presence/sessions.py pauses the sessions no node holds).
- `beat`: the node is alive. A node no message came from for
  `SITEBUILDER_PRESENCE_NODE_TIMEOUT_SECONDS` is dropped: its entries leave and its
  holds are released, on every other node.
- `sync` (round) … `synced` (round): the node's full state, between these two. A
  receiver marks the node's entries at `sync`, unmarks every one re-announced, and at
  `synced` removes those still marked: whatever it missed is repaired, and what did
  not change produces no diff (no flicker).
- `hello` (to: a node or null): asks for a `sync` round (PostgreSQL only; on Redis
  the state is read from the node hashes instead).
- `bye`: the node stops cleanly; everyone drops it at once.

A node re-announces its state when it connects (a first start or a reconnect: the
others may have missed changes) and answers `hello`s; a node it hears from for the
first time without a `sync` round it asks for one. The largest message is a `put`:
a meta of at most `SITEBUILDER_MAX_PRESENCE_META_BYTES` (4096 at most), a session
(id, status, a step of at most 256 characters) and fixed fields, well under the 8000
bytes NOTIFY takes; a message over `MAX_MESSAGE_BYTES` is refused (`PresenceTooLarge`)
before it changes anything, on every backend alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import orjson

from gateway.core.channels import PresenceKey, key_from_wire, key_to_wire
from gateway.presence.model import (
    Listener,
    Meta,
    PresenceChange,
    PresenceEntry,
    now,
)

logger = logging.getLogger(__name__)

# NOTIFY refuses payloads of 8000 bytes or more.
MAX_MESSAGE_BYTES = 7999
# How long a clean stop waits for its last messages (the bye) to go out.
GOODBYE_TIMEOUT_SECONDS = 2.0
# Reconnecting to the bus: the first wait, doubled up to the last.
# How long a cancelled task may take to end before it is cancelled again.
CANCEL_AGAIN_SECONDS = 0.5
RECONNECT_FIRST_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0

Message = dict[str, Any]
Key = tuple[PresenceKey, str]  # (channel, connection)


class PresenceTooLarge(ValueError):
    """A presence message would not fit the bus."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish, decoded (for the Redis hash) and encoded (for the bus)."""

    message: Message
    payload: bytes


class Transport(Protocol):
    """How messages travel between nodes."""

    name: str

    async def start(self, node: str) -> None:
        """Check the bus can be reached (raises `PresenceUnavailable`); `node` names
        this node's connections, for operators."""
        ...

    async def run(self, bus: BusPresence) -> None:
        """Connect, listen and reconnect forever: `bus.on_connected()` after each connect,
        `bus.receive()` for each message, `bus.on_disconnected()` when it drops."""
        ...

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Publish in order; on failure drop the connection (the run loop reconnects
        and the bus re-announces)."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...


@dataclass(slots=True)
class _Node:
    """What this node knows of another (or itself)."""

    keys: set[Key] = field(default_factory=set)
    sessions: set[UUID] = field(default_factory=set)
    seen: float = 0.0
    round: Any = None  # the `sync` round being received
    stale: set[Key] = field(default_factory=set)
    stale_sessions: set[UUID] = field(default_factory=set)


def _entry_message(channel: PresenceKey, entry: PresenceEntry) -> Message:
    return {
        "type": "put",
        "project": key_to_wire(channel),
        "connection": entry.connection_id,
        "user": str(entry.user_id),
        "meta": entry.meta,
        "session": entry.session,
        "joined_at": entry.joined_at.isoformat(),
        "last_active": entry.last_active.isoformat(),
        "key": entry.key,
        "name": entry.name,
    }


def _entry_of(message: Message) -> tuple[PresenceKey, PresenceEntry]:
    entry = PresenceEntry(
        user_id=UUID(message["user"]),
        connection_id=message["connection"],
        meta=message["meta"],
        joined_at=datetime.fromisoformat(message["joined_at"]),
        last_active=datetime.fromisoformat(message["last_active"]),
        session=message["session"],
        key=message.get("key"),
        name=message.get("name"),
    )
    return key_from_wire(message["project"]), entry


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for its end, cancelling again while it runs on: redis-py
    can swallow a cancellation that lands in its connection handling (the bus task
    then went on to listen, and a node's shutdown waited forever)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_AGAIN_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BusPresence:
    """`Presence` for several gateway processes: the union of every node's entries."""

    def __init__(
        self,
        transport: Transport,
        node_name: str,
        *,
        node_timeout_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        self.node = f"{node_name}/{secrets.token_hex(4)}"
        self._transport = transport
        self._timeout = node_timeout_seconds
        self._heartbeat = heartbeat_seconds
        self._projects: dict[PresenceKey, dict[str, PresenceEntry]] = {}
        self._own = _Node()
        self._nodes: dict[str, _Node] = {}
        self._listeners: list[Listener] = []
        self._lost_listeners: list[Callable[[], None]] = []
        self._seq = itertools.count(1)
        self._rounds = itertools.count(1)
        self._outbox: list[Outgoing] = []
        self._round_queued = False
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._settled = asyncio.Event()
        self._settle_timer: asyncio.TimerHandle | None = None
        self._awaited: set[str] = set()  # peers whose state the start waits for
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # Lifecycle

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def wait_connected(self) -> None:
        await self._up.wait()

    async def wait_disconnected(self) -> None:
        await self._down.wait()

    async def start(self) -> None:
        await self._transport.start(self.node)
        self._tasks = [
            asyncio.create_task(self._transport.run(self), name="presence-bus"),
            asyncio.create_task(self._publish_forever(), name="presence-publish"),
            asyncio.create_task(self._beat_forever(), name="presence-heartbeat"),
        ]

    async def close(self) -> None:
        """Send what is queued and a `bye`, then stop (the others drop us at once)."""
        self._closing = True
        if self.connected and self._tasks:
            self._send({"type": "bye"})
            try:  # the publisher stops after the bye
                await asyncio.wait_for(asyncio.shield(self._tasks[1]), GOODBYE_TIMEOUT_SECONDS)
            except TimeoutError:
                logger.warning("presence bus: goodbye not sent in time")
        self._wake.set()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        await self._transport.close()

    # Presence: this node's connections

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
        self._put_own(channel, entry)

    async def leave(self, channel: PresenceKey, connection_id: str) -> None:
        key = (channel, connection_id)
        if key not in self._own.keys:
            return
        self._send({"type": "leave", "project": key_to_wire(channel), "connection": connection_id})
        self._remove(self._own, key)

    async def update(self, channel: PresenceKey, connection_id: str, meta: Meta) -> None:
        old = self._own_entry(channel, connection_id)
        if old is not None:
            self._put_own(channel, replace(old, meta=meta, last_active=now()))

    async def set_session(
        self, channel: PresenceKey, connection_id: str, session: Meta | None
    ) -> None:
        old = self._own_entry(channel, connection_id)
        if old is not None:
            self._put_own(channel, replace(old, session=session, last_active=now()))

    async def list(self, channel: PresenceKey) -> list[PresenceEntry]:
        return list(self._projects.get(channel, {}).values())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _own_entry(self, channel: PresenceKey, connection_id: str) -> PresenceEntry | None:
        if (channel, connection_id) not in self._own.keys:
            return None
        return self._projects[channel][connection_id]

    def _put_own(self, channel: PresenceKey, entry: PresenceEntry) -> None:
        self._send(_entry_message(channel, entry))  # raises before anything changes
        self._put(self._own, channel, entry)

    # Session holds

    def hold_session(self, session_id: UUID) -> None:
        if session_id not in self._own.sessions:
            self._own.sessions.add(session_id)
            self._send({"type": "hold", "session_id": str(session_id)})

    def release_session(self, session_id: UUID) -> None:
        if session_id in self._own.sessions:
            self._own.sessions.discard(session_id)
            self._send({"type": "release", "session_id": str(session_id)})

    def sessions_held_elsewhere(self) -> set[UUID]:
        held: set[UUID] = set()
        for node in self._nodes.values():
            held |= node.sessions
        return held

    def on_node_lost(self, callback: Callable[[], None]) -> None:
        self._lost_listeners.append(callback)

    async def wait_settled(self) -> None:
        await self._settled.wait()

    def describe(self) -> str:
        state = "connected" if self.connected else "reconnecting"
        return f"presence={self._transport.name} {state} other_nodes={len(self._nodes)}"

    def nodes(self) -> tuple[str, ...]:
        """The other live nodes this node knows."""
        return tuple(sorted(self._nodes))

    # The union

    def _emit(self, change: PresenceChange) -> None:
        for listener in list(self._listeners):
            listener(change)

    def _put(self, node: _Node, channel: PresenceKey, entry: PresenceEntry) -> None:
        key = (channel, entry.connection_id)
        node.stale.discard(key)
        entries = self._projects.setdefault(channel, {})
        old = entries.get(entry.connection_id)
        if old == entry:
            return
        entries[entry.connection_id] = entry
        node.keys.add(key)
        self._emit(PresenceChange(channel, (entry,), () if old is None else (old,)))

    def _pop(self, node: _Node, key: Key) -> PresenceEntry | None:
        node.keys.discard(key)
        node.stale.discard(key)
        channel, connection_id = key
        entries = self._projects.get(channel)
        if entries is None or connection_id not in entries:
            return None
        old = entries.pop(connection_id)
        if not entries:
            del self._projects[channel]
        return old

    def _remove(self, node: _Node, key: Key) -> None:
        old = self._pop(node, key)
        if old is not None:
            self._emit(PresenceChange(key[0], (), (old,)))

    def _remove_all(self, node: _Node, keys: set[Key]) -> None:
        """Remove entries of several projects: one diff per project."""
        leaves: dict[PresenceKey, list[PresenceEntry]] = {}
        for key in list(keys):
            old = self._pop(node, key)
            if old is not None:
                leaves.setdefault(key[0], []).append(old)
        for channel, entries in leaves.items():
            self._emit(PresenceChange(channel, (), tuple(entries)))

    def _drop(self, name: str, why: str) -> None:
        self._heard_in_full(name)
        node = self._nodes.pop(name, None)
        if node is None:
            return
        logger.info("presence: node %s %s: %d connections leave", name, why, len(node.keys))
        self._remove_all(node, node.keys)
        for callback in list(self._lost_listeners):
            callback()

    # Receiving

    def receive(self, payload: bytes | str) -> str | None:
        """Apply a message from the bus; returns the sending node when its state is
        unknown here (first heard of outside a `sync` round), for the transport to
        ask for it."""
        try:
            message = orjson.loads(payload)
            name = message["node"]
            kind = message["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            logger.warning("presence bus: unreadable message skipped (%s)", error)
            return None
        if name == self.node:
            return None
        if kind == "bye":
            self._drop(name, "stopped")
            return None
        if kind == "hello" and message.get("to") in (None, self.node):
            self.reannounce()
        node = self._nodes.get(name)
        fresh = node is None
        if node is None:
            node = self._nodes[name] = _Node()
        node.seen = time.monotonic()
        try:
            self._apply(node, message)
        except (KeyError, ValueError, TypeError) as error:
            logger.warning("presence bus: bad %s message from %s skipped (%s)", kind, name, error)
        if kind == "synced":
            self._heard_in_full(name)
        return name if fresh and kind not in ("sync", "hello") else None

    def _apply(self, node: _Node, message: Message) -> None:
        kind = message["type"]
        if kind == "put":
            channel, entry = _entry_of(message)
            self._put(node, channel, entry)
        elif kind == "leave":
            self._remove(node, (key_from_wire(message["project"]), message["connection"]))
        elif kind == "hold":
            session_id = UUID(message["session_id"])
            node.sessions.add(session_id)
            node.stale_sessions.discard(session_id)
        elif kind == "release":
            session_id = UUID(message["session_id"])
            node.sessions.discard(session_id)
            node.stale_sessions.discard(session_id)
        elif kind == "sync":
            node.round = message["round"]
            node.stale = set(node.keys)
            node.stale_sessions = set(node.sessions)
        elif kind == "synced" and node.round == message["round"]:
            node.round = None
            self._remove_all(node, node.stale)
            node.sessions -= node.stale_sessions
            node.stale_sessions = set()

    def load(self, name: str, payloads: Sequence[bytes]) -> None:
        """Replace a node's state by the one read from the bus's store (Redis)."""
        if name == self.node:
            return
        node = self._nodes.setdefault(name, _Node())
        node.seen = time.monotonic()
        self._apply(node, {"type": "sync", "round": "load"})
        for payload in payloads:
            try:
                self._apply(node, orjson.loads(payload))
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as error:
                logger.warning("presence bus: bad stored entry of %s skipped (%s)", name, error)
        self._apply(node, {"type": "synced", "round": "load"})

    def load_all(self, nodes: Mapping[str, Sequence[bytes]]) -> None:
        """Replace every node's state by the store's; a node absent there is gone."""
        for name in [n for n in self._nodes if n not in nodes]:
            self._drop(name, "has no state on the bus")
        for name, payloads in nodes.items():
            self.load(name, payloads)

    # Connection events (called by the transport)

    def on_connected(self, *, peers: Collection[str] | None) -> None:
        """Connected (again): re-announce this node's state, since others may have
        missed changes. `peers`: the nodes the transport sees listening, to ask for
        their state and wait for it; None when it read their state from its store."""
        self._outbox.clear()
        self._round_queued = False
        self._up.set()
        self._down.clear()
        if peers is not None:
            self._send({"type": "hello", "to": None})
        self.reannounce()
        if self._settled.is_set():
            return
        self._awaited = set(peers or ()) - {self.node}
        if not self._awaited:
            self._settled.set()
        elif self._settle_timer is None:
            # A peer that does not answer within a heartbeat is stuck, or gone.
            self._settle_timer = asyncio.get_running_loop().call_later(
                self._heartbeat, self._settled.set
            )

    def _heard_in_full(self, name: str) -> None:
        self._awaited.discard(name)
        if not self._awaited:
            self._settled.set()

    def on_disconnected(self) -> None:
        if self._up.is_set() and not self._closing:
            logger.warning("presence bus disconnected: reconnecting")
        self._up.clear()
        self._down.set()
        self._outbox.clear()
        self._round_queued = False

    def reannounce(self) -> None:
        """Queue this node's full state as a `sync` round (unless one waits already)."""
        if self._round_queued or not self.connected:
            return
        self._round_queued = True
        round_id = next(self._rounds)
        self._send({"type": "sync", "round": round_id})
        for channel, connection_id in self._own.keys:
            self._send(_entry_message(channel, self._projects[channel][connection_id]))
        for session_id in self._own.sessions:
            self._send({"type": "hold", "session_id": str(session_id)})
        self._send({"type": "synced", "round": round_id})

    def ask(self, name: str) -> None:
        """Ask one node for its state (after hearing from it outside a round)."""
        self._send({"type": "hello", "to": name})

    # Sending

    def _send(self, message: Message) -> None:
        message = {"node": self.node, "seq": next(self._seq), **message}
        payload = orjson.dumps(message)
        if len(payload) > MAX_MESSAGE_BYTES:
            raise PresenceTooLarge(
                f"presence message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}"
            )
        if self.connected:
            self._outbox.append(Outgoing(message, payload))
            self._wake.set()

    async def _publish_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            self._round_queued = False
            if batch:
                await self._transport.publish(batch)
            if self._closing and not self._outbox:  # the bye is out (or cancelling failed)
                return

    async def _beat_forever(self) -> None:
        """Beat every interval; drop nodes silent for the timeout, as soon as they are."""
        next_beat = time.monotonic()
        while True:
            clock = time.monotonic()
            if clock >= next_beat:
                if self.connected:
                    self._send({"type": "beat"})
                next_beat = clock + self._heartbeat
            for name, node in list(self._nodes.items()):
                if clock - node.seen >= self._timeout:
                    self._drop(name, f"silent for {self._timeout:g} s")
            deadlines = [next_beat, *(node.seen + self._timeout for node in self._nodes.values())]
            await asyncio.sleep(max(0.0, min(deadlines) - time.monotonic()))
