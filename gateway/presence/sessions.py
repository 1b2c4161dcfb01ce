"""Live builder sessions: which connections hold them, pausing the abandoned ones,
and deleting the old ones.

A session created or resumed (`session.create`, `session.resume`) on a connection is
attached to it, in memory. When the last connection attached to a session closes, a
timer pauses it after `SITEBUILDER_SESSION_PAUSE_GRACE_SECONDS`; a `session.resume`
within the grace reattaches it and changes nothing.

Pausing is one guarded UPDATE, as the gateway (not as a user): it pauses a session only
while it is `active` and untouched (`updated_at`, which every write moves) for the
grace period. So a `resume` or `update_progress` that commits just before the timer
fires wins, whatever the interleaving, on whichever node.

Several gateway nodes share one database. Each tells the others, over the presence bus
(`SessionHolds`), which sessions its connections hold, so a node knows every session
held anywhere. A gateway that crashed leaves its sessions `active` with nobody
connected; the sweep pauses every `active` session that no connection of any live node
holds and that was untouched for the grace period. It runs when the gateway starts
(once it has heard every live node's holds), every `SWEEP_SECONDS`, and one grace
period after another node is lost (its holds go with it after
`SITEBUILDER_PRESENCE_NODE_TIMEOUT_SECONDS`): a killed node's sessions are paused like
those of a closed connection, a timeout later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

from db.errors import DATABASE_ERRORS
from gateway.metrics import Metrics
from gateway.presence.model import Meta, SessionHolds
from gateway.settings import Settings
from protocol.rpc_sessions import STEP_MAX_CHARS

logger = logging.getLogger(__name__)

# How often abandoned `active` sessions are looked for, besides at start.
SWEEP_SECONDS = 60.0
USER_AGENT_MAX_CHARS = 512

_PAUSE_ONE = """
    UPDATE public.builder_sessions SET status = 'paused'
    WHERE id = $1 AND status = 'active' AND updated_at <= now() - make_interval(secs => $2)
"""
_SWEEP = """
    UPDATE public.builder_sessions SET status = 'paused'
    WHERE status = 'active' AND updated_at <= now() - make_interval(secs => $1)
      AND NOT (id = ANY($2::uuid[]))
"""
_CLEANUP = "SELECT public.cleanup_old_sessions()"

_DB_ERRORS = DATABASE_ERRORS


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def client_address(
    ws: ServerConnection, *, trust_proxy: bool, headers: Headers | None = None
) -> str | None:
    """The client's IP address: the socket's peer, or behind a trusted proxy the
    address it appended to X-Forwarded-For (of `headers`, else the handshake's)."""
    if headers is None and ws.request is not None:
        headers = ws.request.headers
    if trust_proxy and headers is not None:
        # The last address is the one the proxy in front of us appended; earlier
        # ones come from the client and may be anything.
        forwarded = ",".join(headers.get_all("X-Forwarded-For")).split(",")
        address = _ip(forwarded[-1]) if forwarded[-1].strip() else None
        if address is not None:
            return address
    return _ip(str(ws.remote_address[0])) if ws.remote_address else None


def user_agent(ws: ServerConnection) -> str | None:
    """The handshake's User-Agent, cut to what a session keeps."""
    agent = ws.request.headers.get("User-Agent") if ws.request is not None else None
    return agent[:USER_AGENT_MAX_CHARS] if agent is not None else None


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class Origin:
    """The connection an RPC came on, as `session.*` methods need it."""

    connection: Hashable
    ip_address: str | None
    user_agent: str | None
    sessions: LiveSessions
    # Where the connection's presence shows the session it drives.
    show: Callable[[UUID, Meta | None], Awaitable[None]] | None = None

    def attach(self, session_id: UUID) -> None:
        self.sessions.attach(session_id, self.connection)

    async def show_session(self, session: Mapping[str, Any], *, active: bool = True) -> None:
        """Put the session's step in its owner's presence meta (or take it out).
        A session of no project (its project was deleted: `project_id` is set null)
        shows nowhere."""
        if self.show is None or session.get("project_id") is None:
            return
        shown: Meta | None = (
            {
                "id": str(session["id"]),
                # A row written outside the RPCs may hold a longer step than they take.
                "current_step": str(session.get("current_step"))[:STEP_MAX_CHARS],
                "status": session.get("status"),
            }
            if active
            else None
        )
        await self.show(UUID(str(session["project_id"])), shown)

    def end(self, session_id: UUID) -> None:
        self.sessions.end(session_id)


class LiveSessions:
    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics, holds: SessionHolds
    ) -> None:
        self._pool = pool
        self._holds = holds
        self._grace = settings.session_pause_grace_seconds
        self._settle_timeout = settings.presence_node_timeout_seconds
        self._trust_proxy = settings.trust_proxy_headers
        self._cleanup_interval = settings.session_cleanup_interval_seconds
        self._metrics = metrics
        self._holders: dict[UUID, set[Hashable]] = {}
        self._held: dict[Hashable, set[UUID]] = {}
        self._timers: dict[UUID, asyncio.Task[None]] = {}
        self._late_sweeps: set[asyncio.Task[None]] = set()
        self._closed = False
        holds.on_node_lost(self._node_lost)

    # The handshake

    def origin(
        self,
        connection: Hashable,
        address: str | None,
        agent: str | None,
        show: Callable[[UUID, Meta | None], Awaitable[None]] | None = None,
    ) -> Origin:
        return Origin(connection, address, agent, self, show)

    # Attachments

    def attached(self) -> list[UUID]:
        return list(self._holders)

    def attach(self, session_id: UUID, connection: Hashable) -> None:
        if session_id not in self._holders:
            self._holds.hold_session(session_id)
        self._holders.setdefault(session_id, set()).add(connection)
        self._held.setdefault(connection, set()).add(session_id)
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def end(self, session_id: UUID) -> None:
        """The session completed or was cancelled: nothing to pause any more."""
        if session_id in self._holders:
            self._holds.release_session(session_id)
        for connection in self._holders.pop(session_id, set()):
            held = self._held.get(connection)
            if held is not None:
                held.discard(session_id)
                if not held:
                    del self._held[connection]
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    def detach(self, connection: Hashable) -> None:
        """The connection closed: its sessions no other connection holds are paused
        after the grace period."""
        for session_id in self._held.pop(connection, set()):
            holders = self._holders.get(session_id)
            if holders is None:
                continue
            holders.discard(connection)
            if holders:
                continue
            del self._holders[session_id]
            self._holds.release_session(session_id)
            if not self._closed:
                self._timers[session_id] = asyncio.create_task(
                    self._pause_later(session_id), name=f"session-pause-{session_id}"
                )

    async def _pause_later(self, session_id: UUID) -> None:
        try:
            await asyncio.sleep(self._grace)
            paused = _count(await self._pool.execute(_PAUSE_ONE, session_id, self._grace))
        except _DB_ERRORS as error:
            logger.warning("session %s not paused (the sweep will): %s", session_id, error)
        else:
            if paused:
                logger.info("paused session %s: its last connection left", session_id)
        finally:
            if self._timers.get(session_id) is asyncio.current_task():
                del self._timers[session_id]

    # Sweeps and retention (tasks the gateway owns)

    async def sweep(self) -> int:
        """Pause the abandoned `active` sessions (see the module); how many."""
        held = [*self.attached(), *self._holds.sessions_held_elsewhere()]
        status = await self._pool.execute(_SWEEP, self._grace, held)
        paused = _count(status)
        if paused:
            logger.info("paused %d active sessions no connection holds", paused)
        return paused

    async def _try_sweep(self) -> None:
        try:
            await self.sweep()
        except _DB_ERRORS as error:
            logger.warning("abandoned sessions not paused: %s", error)

    async def run_sweeps(self) -> None:
        try:  # a node's holds not heard yet would look abandoned
            await asyncio.wait_for(self._holds.wait_settled(), self._settle_timeout)
        except TimeoutError:
            logger.warning("presence bus silent: sweeping with the holds known so far")
        while True:
            await self._try_sweep()
            await asyncio.sleep(SWEEP_SECONDS)

    def _node_lost(self) -> None:
        """Another node is gone: sweep once its sessions are untouched for the grace."""
        if self._closed:
            return
        task = asyncio.create_task(self._sweep_later(), name="session-sweep-late")
        self._late_sweeps.add(task)
        task.add_done_callback(self._late_sweeps.discard)

    async def _sweep_later(self) -> None:
        await asyncio.sleep(self._grace)
        await self._try_sweep()

    async def cleanup(self) -> int:
        """Delete completed and cancelled sessions older than 30 days (the seed's
        cleanup_old_sessions()); how many."""
        removed: int = await self._pool.fetchval(_CLEANUP)
        self._metrics.sessions_cleaned.inc(removed)
        logger.info("cleanup_old_sessions() removed %d sessions", removed)
        return removed

    async def run_cleanups(self) -> None:
        if not self._cleanup_interval:
            return
        while True:
            try:
                await self.cleanup()
            except _DB_ERRORS as error:
                logger.warning("old sessions not cleaned up: %s", error)
            await asyncio.sleep(self._cleanup_interval)

    async def close(self) -> None:
        """Shutdown: cancel the pending pauses (the next start's sweep will do them)."""
        self._closed = True
        timers = [*self._timers.values(), *self._late_sweeps]
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer
