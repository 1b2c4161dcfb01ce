"""The gateway: one port for websockets and HTTP, the core, the feed's dispatcher.

Builds the core (gateway.core), hands each connection to its protocol's adapter
(gateway.native or gateway.supabase) with itself as their `Services`, and owns every
long-lived task it starts, cancelling and awaiting them on the way down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers

from db.errors import DATABASE_ERRORS
from db.feed import ChangeFeed
from gateway.app.demo import Demo
from gateway.app.health import OperatorCheck, http_router, operator_check
from gateway.core.authorization import ANONYMOUS, AccessLists
from gateway.core.channels import ProjectChannel
from gateway.core.dispatcher import Core, Dispatcher
from gateway.core.fences import Fences
from gateway.core.history import History
from gateway.core.hub import Hub
from gateway.core.outbox import Outbox
from gateway.core.router import Router
from gateway.core.snapshots import SnapshotReads
from gateway.edge.connection import Connection
from gateway.edge.expiries import Expiries
from gateway.edge.limits import Unauthenticated
from gateway.edge.names import NameLookups
from gateway.edge.services import Admitted
from gateway.edge.tokens import TokenVerifier
from gateway.metrics import Metrics
from gateway.native.client import Client
from gateway.native.views import encoded_size
from gateway.presence.fanout import PresenceFanout
from gateway.presence.model import Presence
from gateway.presence.sessions import LiveSessions, client_address, user_agent
from gateway.presence.states import PresenceStates
from gateway.rpc.call import expire_idempotency_keys
from gateway.rpc.trash import expire_trash
from gateway.settings import Settings
from gateway.supabase.client import PhoenixClient
from protocol.errors import CloseCode

logger = logging.getLogger(__name__)

FEED_START_TIMEOUT_SECONDS = 10.0
# How often expired RPC idempotency keys and trash entries are deleted (at most: every
# idempotency TTL if shorter).
RETENTION_SWEEP_SECONDS = 60.0
# Keepalive ticks per ping interval (or timeout, if shorter): a ping goes out at most
# a tick late, a silent client is closed at most a tick after its timeout.
KEEPALIVE_TICKS = 4
# What every connection's handshake headers are once read (`Gateway._handle`): kept
# for the connection's life, a response's own cost it 1 KB.
_NO_HEADERS = Headers()
# Joiners of a project within this long share one encoded `presence.state`
# (gateway.presence.states); at most the presence diff interval.
PRESENCE_STATE_WINDOW_SECONDS = 0.05


class Gateway:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        feed: ChangeFeed,
        verifier: TokenVerifier,
        presence: Presence,
        demo: Demo | None = None,
        *,
        core_pool: asyncpg.Pool,
        worker_index: int = 0,
        share_port: bool = False,
    ) -> None:
        self.settings = settings
        self.worker_index = worker_index
        # Workers of one node listen on one port (SO_REUSEPORT); a lone gateway does not,
        # so a second one started by mistake fails instead of taking half the traffic.
        self._share_port = share_port
        self.demo = demo
        # Clients' requests (RPCs, snapshots, sign-ins) queue for `pool`; the core's few
        # lookups (a change's project, its access list, fences) have `core_pool`, so a
        # flood of requests never holds up the delivery of changes.
        self.pool = pool
        self.core_pool = core_pool
        self.feed = feed
        self.verifier = verifier
        self.metrics = Metrics()
        # Change frames wait here while the dispatcher handles a transaction.
        self.outbox = Outbox(settings.fragment_bytes)
        # Who may read which project as of the dispatcher's position (table channels).
        self.access_lists = AccessLists(core_pool, settings.access_cache_size)
        self.hub = Hub(self.metrics, settings.max_pending_events, self.outbox)
        self.history = History(
            max_per_project=settings.history_max_per_project,
            max_bytes=settings.history_max_bytes,
            max_age_seconds=settings.history_max_age_seconds,
            # The native frame's size: what most of a kept change's memory is.
            size_of=encoded_size,
        )
        self.router = Router(core_pool, settings.route_cache_size)
        self.snapshots = SnapshotReads(pool, self.router)
        self.names = NameLookups(pool)
        self.fences = Fences(core_pool, feed, settings.resume_fence_timeout_seconds)
        # Built from the settings by gateway.presence.backends; started and closed here.
        self.presence = presence
        self.sessions = LiveSessions(pool, settings, self.metrics, presence)
        self.presence_states = PresenceStates(
            presence, min(settings.presence_diff_interval_seconds, PRESENCE_STATE_WINDOW_SECONDS)
        )
        self.presence_fanout = PresenceFanout(self.hub, settings.presence_diff_interval_seconds)
        self.presence.subscribe(self.presence_fanout)
        # Tells this process's connections from another gateway's in request tags
        # (changes carry the ref of the rpc that made them back to its connection).
        self.instance = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._clients: set[Connection] = set()
        self._by_user: dict[UUID, set[Admitted]] = {}
        self.expiries = Expiries()
        self.unauthenticated = Unauthenticated(
            settings.max_unauthenticated_connections, settings.max_unauthenticated_per_address
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._server: Server | None = None

    @property
    def node_id(self) -> str:
        """This process among every gateway process on the database: node name and
        worker index (stable across restarts of the process, unlike `instance`)."""
        return f"{self.settings.node_name}_{self.worker_index}"

    @property
    def feed_connected(self) -> bool:
        return self.feed.connected

    @property
    def server(self) -> Server:
        assert self._server is not None
        return self._server

    # Connections

    async def _handle(self, ws: ServerConnection) -> None:
        """The native protocol on every path but Supabase Realtime's."""
        address = client_address(ws, trust_proxy=self.settings.trust_proxy_headers)
        refused = self.unauthenticated.admit(address)
        if refused is not None:
            self.metrics.rate_limited.labels("max_unauthenticated").inc()
            await ws.close(CloseCode.TOO_MANY_CONNECTIONS, refused)
            return
        client: Client | PhoenixClient
        if ws.request is not None and PhoenixClient.serves(ws.request.path):
            client = PhoenixClient(self, ws, next(self._ids), ws.request.path)
        else:
            client = Client(self, ws, next(self._ids))
        client.arrived(address, user_agent(ws))
        # Read: the handshake's headers, request and response, are let go for one empty
        # set every connection shares (nothing reads or writes them after the handshake).
        if ws.request is not None:
            ws.request.headers = _NO_HEADERS
        if ws.response is not None:
            ws.response.headers = _NO_HEADERS
        self._clients.add(client)
        self.metrics.connections.inc()
        try:
            await client.run()
        finally:
            self._clients.discard(client)
            self.metrics.connections.dec()

    def admit(self, client: Admitted, user_id: UUID) -> bool:
        """Count the connection against its user's limit (anonymous ones: against
        theirs, together); False when over it."""
        connections = self._by_user.setdefault(user_id, set())
        if len(connections) >= self.connection_limit(user_id):
            return False
        connections.add(client)
        return True

    def connection_limit(self, user_id: UUID) -> int:
        if user_id == ANONYMOUS:
            return self.settings.max_anonymous_connections
        return self.settings.max_connections_per_user

    def forget(self, client: Admitted) -> None:
        connections = self._by_user.get(client.user_id)
        if connections is not None:
            connections.discard(client)
            if not connections:
                del self._by_user[client.user_id]

    async def online_users(self, project_id: UUID) -> set[UUID]:
        """Users subscribed to the project on any gateway node (its presence)."""
        entries = await self.presence.list(ProjectChannel(project_id))
        return {entry.user_id for entry in entries}

    # Health

    async def readiness(self) -> tuple[str | None, list[str]]:
        """What /readyz reports: a problem (or None) and details for operators."""
        details = [
            f"node={self.node_id}",
            f"feed={self.feed.name}",
            f"history_bytes={self.history.size_bytes}",
            self.presence.describe(),
        ]
        if not self.feed.connected:
            return "change feed not connected", details
        try:
            await self.pool.fetchval("SELECT 1")
            lag = await self.feed.lag_bytes()
        except DATABASE_ERRORS as error:
            return f"database unreachable: {error}", details
        if lag is not None:
            self.metrics.slot_lag_bytes.set(lag)
            details.append(f"slot_lag_bytes={lag}")
        return None, details

    async def _watch_feed(self) -> None:
        """Age the history out while no change arrives (so the slot is let go too),
        keep the slot-lag and history gauges current between scrapes, and pass a fence
        now and then, so the access lists of projects first seen know what they may
        trust (gateway.core.authorization.AccessLists): the first as soon as changes flow."""
        await self.feed.wait_connected()
        while True:
            if self.feed.connected:
                try:
                    await self.fences.passed()
                except DATABASE_ERRORS as error:
                    logger.debug("fence not written: %s", error)
            if self.history.started:
                self.history.expire()
                self.feed.retain_from(self.history.oldest())
            self.metrics.history_bytes.set(self.history.size_bytes)
            try:
                lag = await self.feed.lag_bytes()
            except DATABASE_ERRORS as error:
                logger.debug("slot lag unavailable: %s", error)
            else:
                if lag is not None:
                    self.metrics.slot_lag_bytes.set(lag)
            await asyncio.sleep(self.settings.replication_status_interval_seconds)

    async def _keep_alive(self) -> None:
        """Tick every connection's keepalive (gateway.edge.connection) a few times per
        ping interval or timeout, whichever is shorter."""
        settings = self.settings
        tick = min(settings.ping_interval_seconds, settings.ping_timeout_seconds) / KEEPALIVE_TICKS
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for client in list(self._clients):
                client.keep_alive(now)

    async def _expire_retained(self) -> None:
        """Delete RPC idempotency keys and trash entries past their retention, now and
        then."""
        ttl = self.settings.rpc_idempotency_ttl_seconds
        trash_seconds = self.settings.trash_retention_days * 86_400
        while True:
            try:
                keys = await expire_idempotency_keys(self.pool, ttl)
                trashed = await expire_trash(self.pool, trash_seconds)
            except DATABASE_ERRORS as error:
                logger.warning("expired idempotency keys or trash not deleted: %s", error)
            else:
                if keys or trashed:
                    logger.debug("deleted %d idempotency keys, %d trash rows", keys, trashed)
            await asyncio.sleep(min(ttl, RETENTION_SWEEP_SECONDS))

    # Lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Listen and dispatch; on exit, shut down gracefully."""
        await self.presence.start()
        try:
            self._tasks = [
                asyncio.create_task(self._dispatcher().run(), name="dispatcher"),
                asyncio.create_task(self._watch_feed(), name="feed-watch"),
                asyncio.create_task(self._expire_retained(), name="retention-expiry"),
                asyncio.create_task(self._keep_alive(), name="keepalive"),
                asyncio.create_task(self.sessions.run_sweeps(), name="session-sweep"),
                asyncio.create_task(self.sessions.run_cleanups(), name="session-cleanup"),
            ]
            await self._wait_for_feed()
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                process_request=http_router(
                    self.readiness, self._operator_check(), self._render_metrics, self.demo
                ),
                compression="deflate" if self.settings.compression else None,
                backlog=self.settings.listen_backlog,
                reuse_port=self._share_port,
                max_size=self.settings.max_frame_bytes * 4,
                ping_interval=None,  # each connection's own (gateway.edge.connection)
            )
        except BaseException:
            await self._stop_tasks()
            await self.presence.close()
            raise
        try:
            yield self
        finally:
            await self._shut_down()

    def _render_metrics(self) -> bytes:
        """/metrics: what is measured only when asked (outbound buffers), then all."""
        buffered = [client.ws.transport.get_write_buffer_size() for client in self._clients]
        self.metrics.outbound_bytes.set(sum(buffered))
        self.metrics.largest_outbound_bytes.set(max(buffered, default=0))
        return self.metrics.render()

    def _dispatcher(self) -> Dispatcher:
        core = Core(
            hub=self.hub,
            history=self.history,
            router=self.router,
            access_lists=self.access_lists,
            fences=self.fences,
            outbox=self.outbox,
            metrics=self.metrics,
            instance=self.instance,
        )
        return Dispatcher(core, self.feed)

    def _operator_check(self) -> OperatorCheck:
        token = self.settings.metrics_token
        return operator_check(
            token.get_secret_value() if token is not None else None,
            trust_proxy=self.settings.trust_proxy_headers,
        )

    async def _wait_for_feed(self) -> None:
        """Open the port once changes flow, so `ready` follows `listening` at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.feed.wait_connected(), FEED_START_TIMEOUT_SECONDS)
        if self.feed.connected:
            self.metrics.feed_up.set(1)
        else:
            logger.warning("change feed not connected yet: serving, /readyz reports 503")

    async def _shut_down(self) -> None:
        await self.sessions.close()  # sessions of closing connections stay active
        server = self.server
        server.close(close_connections=False)
        for client in list(self._clients):
            client.shut_down()
        try:
            await asyncio.wait_for(server.wait_closed(), self.settings.shutdown_grace_seconds)
        except TimeoutError:
            logger.warning("connections still open after the grace period: aborting them")
            for client in list(self._clients):
                client.ws.transport.abort()
            await server.wait_closed()
        await self.snapshots.close()  # reads and lookups for connections that have gone
        await self.names.close()
        self.presence_fanout.flush()  # every connection is gone: this only stops its timer
        await self.presence.close()  # after every connection's leave: then the goodbye
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
