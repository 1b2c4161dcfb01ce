"""What every websocket connection has, whichever protocol it speaks.

The native protocol (gateway.native.client) and Supabase's (gateway.supabase.client)
differ in framing and channel semantics only: both sign in with the same tokens,
count against the same per-user limit, hold hub subscriptions (counted against one
limit, by canonical channel), join presence under a connection id, are refused frames
by the same size and rate limits, write through the one outbox, are closed as slow
consumers, and answer the hub's hooks (gateway.core.hub.Subscriber) when a
subscription ends (`ended`) or may have missed changes (`lost`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from pydantic import JsonValue
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.core.authorization import ANONYMOUS
from gateway.core.channels import ChannelKey, PresenceKey, ProjectChannel, TopicChannel
from gateway.core.events import Loss
from gateway.core.hub import Subscription
from gateway.edge.expiries import Expiry
from gateway.edge.limits import ByteBudget, TokenBucket
from gateway.edge.services import Services
from gateway.edge.tokens import TokenError, TokenExpired
from protocol.errors import CloseCode, ErrorCode

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A frame refused before it was read (too large, too many)."""

    code: ErrorCode
    message: str
    retry_after_ms: int | None = None


def frame_size(message: str | bytes) -> int:
    """A frame's bytes on the wire (before masking). ASCII text, the common case, is
    not encoded again to be measured: a 1 MiB frame was copied once more only for that."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode())


def token_error_code(error: TokenError) -> ErrorCode:
    return ErrorCode.TOKEN_EXPIRED if isinstance(error, TokenExpired) else ErrorCode.INVALID_TOKEN


class Connection:
    """A connection's state. Bounded: its subscriptions are capped by a setting.

    Slots: past 30 attributes an instance's dict is no longer shared with its class's
    other instances and costs each connection another 1.5 KB."""

    __slots__ = (
        "_admitted",
        "_bucket",
        "_busy",
        "_claims",
        "_closing",
        "_expires",
        "_expiry",
        "_gateway",
        "_ingress",
        "_join_bucket",
        "_last_read",
        "_metrics",
        "_pinged_at",
        "_pinging",
        "_pong",
        "_presence_bucket",
        "_presence_pending",
        "_presence_timer",
        "_rpc_bucket",
        "_settings",
        "_subscriptions",
        "_tasks",
        "_unauthenticated",
        "address",
        "display_name",
        "id",
        "user_agent",
        "user_id",
        "ws",
    )

    def __init__(self, gateway: Services, ws: ServerConnection, client_id: int) -> None:
        self.id = client_id
        self.ws = ws
        self.user_id: UUID = ANONYMOUS
        # The user's display name, read at sign-in (None: anonymous).
        self.display_name: str | None = None
        # The token's claims as JSON (`claims()`): a dict of them cost 0.6 KB a connection.
        self._claims = "{}"
        self._gateway = gateway
        self._settings = gateway.settings
        self._metrics = gateway.metrics
        self._bucket = TokenBucket(self._settings.messages_per_second, self._settings.message_burst)
        self._join_bucket = TokenBucket(self._settings.joins_per_second, self._settings.join_burst)
        self._rpc_bucket = TokenBucket(self._settings.rpcs_per_second, self._settings.rpc_burst)
        self._ingress = ByteBudget(self._settings.max_bytes_per_second, self._settings.byte_burst)
        self._subscriptions: dict[ChannelKey, Subscription] = {}
        rate = self._settings.presence_updates_per_second
        self._presence_bucket = TokenBucket(rate, max(1, math.ceil(rate)))
        # The latest meta of each project whose update waits for the rate limit.
        self._presence_pending: dict[PresenceKey, dict[str, JsonValue]] = {}
        self._presence_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: Expiry | None = None
        self._expires: float | None = None  # the token's `exp`
        self._admitted = False
        self._closing = False
        # A frame is being handled (reading waits meanwhile), and when one was last read.
        self._busy = False
        self._last_read = time.monotonic()
        # Keepalive (`keep_alive`): the last ping, its pong while awaited.
        self._pinged_at = self._last_read
        self._pinging = False
        self._pong: asyncio.Future[float] | None = None
        # Where it came from, read once from the handshake (`arrived`), whose headers
        # are then let go: kept for the connection's life, they were its largest part.
        self.address: str | None = None
        self.user_agent: str | None = None
        # Counted against the connections not signed in yet until it signs in.
        self._unauthenticated = False

    # Lifecycle

    async def run(self) -> None:
        """Serve the connection until it closes, then release all it holds."""
        try:
            if await self._open():
                await self._serve()
        except ConnectionClosed:
            pass
        finally:
            self._release()
            await self._wait_for_tasks()

    def keep_alive(self, now: float) -> None:
        """The gateway's keepalive tick (one task for every connection: a task and a
        timer of its own cost each connection a kilobyte). Ping every interval; close
        the connection when no pong came within the timeout while the gateway has read
        all it was sent. websockets' own keepalive closes with 1011 a client whose
        frames wait to be handled (reading pauses past websockets' `max_queue`, and its
        pongs wait behind them): such a client is alive, the gateway is the slow side,
        and it waits for the pong as long as it is handling the client's frames."""
        if self._closing or self._pinging:
            return
        timeout = self._settings.ping_timeout_seconds
        if self._pong is not None and not self._pong.done():
            if now - self._pinged_at >= timeout and not self._behind(timeout):
                self._metrics.ping_timeouts.inc()
                self.close(CloseCode.PING_TIMEOUT, "keepalive ping timeout")
            return
        self._pong = None
        if now - self._pinged_at >= self._settings.ping_interval_seconds:
            self._pinging = True
            self._pinged_at = now
            self._spawn(self._ping())

    async def _ping(self) -> None:
        try:
            self._pong = asyncio.ensure_future(await self.ws.ping())
        except ConnectionClosed:
            pass
        finally:
            self._pinging = False

    def _behind(self, window: float) -> bool:
        """Whether the gateway handled one of the client's frames in the last `window`
        seconds, or is handling one: it may not have read the pong yet."""
        return self._busy or time.monotonic() - self._last_read < window

    async def _open(self) -> bool:
        """The protocol's handshake; False when the connection was refused (closed)."""
        raise NotImplementedError

    async def _serve(self) -> None:
        """Read and handle frames until the connection closes."""
        raise NotImplementedError

    def shut_down(self) -> None:
        """The server is going away: close once in-flight work is done."""
        raise NotImplementedError

    def close(self, code: CloseCode, reason: str) -> None:
        """Stop delivering to this connection and close it (without awaiting)."""
        if self._closing:
            return
        self._closing = True
        self._release()
        self._spawn(self.ws.close(code, reason))

    def _release(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for subscription in self._subscriptions.values():
            self._gateway.hub.unsubscribe(subscription)
            self._leave_presence(subscription)
        self._subscriptions.clear()
        if self._presence_timer is not None:
            self._presence_timer.cancel()
            self._presence_timer = None
        if self._admitted:
            self._gateway.forget(self)
        self._signed_in()
        self._gateway.sessions.detach(self)

    async def _wait_for_tasks(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Sending

    def send_bytes(self, data: bytes) -> None:
        """One frame, through the outbox (after anything queued before it)."""
        if self.can_send():
            self._gateway.outbox.send(self.ws, data)

    def can_send(self) -> bool:
        if self._closing:
            return False
        if self.ws.transport.get_write_buffer_size() > self._settings.max_outbound_bytes:
            self.close_slow_consumer("outbound buffer over SITEBUILDER_MAX_OUTBOUND_BYTES")
            return False
        return True

    def close_slow_consumer(self, reason: str) -> None:
        if self._closing:
            return
        logger.warning("closing slow consumer %s (user %s): %s", self.id, self.user_id, reason)
        self._metrics.slow_consumer_closes.inc()
        self.close(CloseCode.SLOW_CONSUMER, "slow_consumer")

    # Receiving

    async def _frames(self) -> AsyncIterator[str | bytes]:
        """The client's frames, read at most SITEBUILDER_MAX_BYTES_PER_SECOND: past the
        budget the connection is not read until it refills. websockets then queues a few
        frames and stops reading the socket, so TCP slows the client: its frames wait,
        none is refused or lost, and the gateway's CPU goes to clients within budget."""
        async for message in self.ws:
            size = frame_size(message)
            yield message
            del message  # not kept while the next is awaited
            await self._pace(size)

    async def _pace(self, size: int) -> None:
        wait = self._ingress.spend(size)
        if not wait:
            return
        self._metrics.ingress_paused_seconds.inc(wait)
        # Busy meanwhile: the keepalive waits for a pong queued behind unread frames.
        self._busy = True
        try:
            await asyncio.sleep(wait)
        finally:
            self._busy = False

    def _refusal(self, message: str | bytes) -> Refusal | None:
        """Why a frame is refused unread (size, then rate), or None to read it."""
        self._last_read = time.monotonic()
        size = frame_size(message)
        if size > self._settings.max_frame_bytes:
            self._metrics.rate_limited.labels("max_frame_bytes").inc()
            return Refusal(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {size} bytes is over the limit of "
                f"{self._settings.max_frame_bytes} (SITEBUILDER_MAX_FRAME_BYTES)",
            )
        wait = self._bucket.take()
        if wait:
            self._metrics.rate_limited.labels("messages_per_second").inc()
            return Refusal(
                ErrorCode.RATE_LIMITED,
                "too many frames: the frame was not processed; slow down",
                max(1, round(wait * 1000)),
            )
        return None

    def _joining_too_fast(self, cost: int = 1) -> str | None:
        """The refusal of a subscribe over the rate, or None (the subscribe is counted,
        as `cost` subscribes: a Supabase join counts its bindings)."""
        wait = self._join_bucket.take(cost)
        if not wait:
            return None
        self._metrics.rate_limited.labels("joins_per_second").inc()
        return (
            f"more than {self._settings.joins_per_second:g} subscribes per second "
            f"(SITEBUILDER_JOINS_PER_SECOND): retry in {wait:.1f} s"
        )

    def _calling_too_fast(self) -> Refusal | None:
        """The refusal of an RPC over the rate, or None (the call is counted)."""
        wait = self._rpc_bucket.take()
        if not wait:
            return None
        self._metrics.rate_limited.labels("rpcs_per_second").inc()
        return Refusal(
            ErrorCode.RATE_LIMITED,
            f"more than {self._settings.rpcs_per_second:g} RPCs per second "
            "(SITEBUILDER_RPCS_PER_SECOND): the call was not made; slow down",
            max(1, round(wait * 1000)),
        )

    def _too_many_subscriptions(self) -> str | None:
        """The refusal of one more subscription, or None while under the limit."""
        if len(self._subscriptions) < self._settings.max_subscriptions:
            return None
        self._metrics.rate_limited.labels("max_subscriptions").inc()
        return (
            f"at most {self._settings.max_subscriptions} subscriptions per connection "
            "(SITEBUILDER_MAX_SUBSCRIPTIONS)"
        )

    # Signing in

    def _verify(self, token: str) -> dict[str, Any]:
        """The claims of a user token or an anon key (`is_anonymous` tells which);
        TokenError when it is neither one this gateway accepts."""
        return self._gateway.verifier.verify_key(token)

    def _admit(self, user_id: UUID) -> str | None:
        """Count the connection against its user's limit (instead of the one it was
        counted against); the refusal when over it."""
        if not self._gateway.admit(self, user_id):
            limit = self._gateway.connection_limit(user_id)
            if user_id == ANONYMOUS:
                return (
                    f"already {limit} anonymous connections (SITEBUILDER_MAX_ANONYMOUS_CONNECTIONS)"
                )
            return f"user already has {limit} connections (SITEBUILDER_MAX_CONNECTIONS_PER_USER)"
        if self._admitted and user_id != self.user_id:
            self._gateway.forget(self)
        self._admitted = True
        self._signed_in()
        return None

    def arrived(self, address: str | None, user_agent: str | None) -> None:
        """The gateway admitted the socket from `address`: counted against the
        connections not signed in yet until it signs in."""
        self.address = address
        self.user_agent = user_agent
        self._unauthenticated = True

    def _signed_in(self) -> None:
        """No longer one of the connections not signed in yet."""
        if self._unauthenticated:
            self._unauthenticated = False
            self._gateway.unauthenticated.release(self.address)

    def _sign_in(self, user_id: UUID, claims: dict[str, Any]) -> None:
        self.user_id = user_id
        self._keep_claims(claims)

    def _keep_claims(self, claims: dict[str, Any]) -> None:
        """Keep a verified token's claims, and close the connection when it expires."""
        # As text: orjson's bytes keep the 4 KB buffer they were written in.
        self._claims = orjson.dumps(claims).decode()
        self._expires = float(claims["exp"])
        self._expire_at(self._expires)

    def claims(self) -> dict[str, Any]:
        """The signed-in token's claims (what an RPC tells the database)."""
        claims: dict[str, Any] = orjson.loads(self._claims)
        return claims

    def _expire_at(self, exp: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        when = asyncio.get_running_loop().time() + max(0.0, exp - time.time())
        self._expiry = self._gateway.expiries.at(when, self)

    def _token_lapsed(self) -> bool:
        """Whether the token's `exp` has passed: checked again where a subscription goes
        live after an await, which the expiry callback may not have run behind yet."""
        return self._expires is not None and time.time() >= self._expires

    def token_expired(self) -> None:
        self._expiry = None
        self._metrics.auth_failures.labels("token_expired").inc()
        self._expired()

    def _expired(self) -> None:
        """The token expired: tell the client (in its protocol) and close."""
        raise NotImplementedError

    # The hub's hooks (gateway.core.hub.Subscriber)

    def ended(self, subscription: Subscription, message: str) -> None:
        """End a subscription the user lost access to; nothing more of it is sent."""
        raise NotImplementedError

    def lost(self, subscription: Subscription, loss: Loss, message: str) -> None:
        """Changes to the subscription's channel may have been missed."""
        raise NotImplementedError

    # Presence

    @property
    def connection_id(self) -> str:
        """Unique across gateways (a presence backend may be shared by several)."""
        return f"{self._gateway.instance}-{self.id}"

    def _subscribed_to(self, subscription: Subscription) -> bool:
        current = self._subscriptions.get(subscription.key)
        return not self._closing and current is subscription

    def _leave_presence(self, subscription: Subscription) -> None:
        key = subscription.key
        if not isinstance(key, ProjectChannel | TopicChannel):
            return
        self._presence_pending.pop(key, None)
        if subscription.joined:
            subscription.joined = False
            self._spawn(self._gateway.presence.leave(key, self.connection_id))

    def _presence_too_large(self, meta: dict[str, JsonValue]) -> str | None:
        size = len(orjson.dumps(meta))
        limit = self._settings.max_presence_meta_bytes
        if size <= limit:
            return None
        self._metrics.rate_limited.labels("max_presence_meta_bytes").inc()
        return (
            f"presence meta of {size} bytes is over the limit of {limit} "
            "(SITEBUILDER_MAX_PRESENCE_META_BYTES)"
        )

    def _queue_presence(self, channel: PresenceKey, meta: dict[str, JsonValue]) -> None:
        """Update the connection's meta in the channel's presence, at the rate allowed."""
        if channel in self._presence_pending or self._presence_timer is not None:
            self._metrics.rate_limited.labels("presence_updates_per_second").inc()
        self._presence_pending[channel] = meta
        if self._presence_timer is None:
            self._flush_presence()

    def _flush_presence(self) -> None:
        """Apply pending updates while the bucket allows; the rest (at most one per
        project, the latest) when it next does."""
        self._presence_timer = None
        while self._presence_pending and not self._closing:
            wait = self._presence_bucket.take()
            if wait:
                loop = asyncio.get_running_loop()
                self._presence_timer = loop.call_later(wait, self._flush_presence)
                return
            channel = next(iter(self._presence_pending))
            meta = self._presence_pending.pop(channel)
            self._spawn(self._gateway.presence.update(channel, self.connection_id, meta))
