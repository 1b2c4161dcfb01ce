"""One websocket connection: authentication, then requests, until it closes.

Replies and pushes are written synchronously in the order they are produced
(the same path as fan-out), so a client sees `ok` before its `snapshot` and the
snapshot before the first change that follows it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import orjson
from pydantic import JsonValue
from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from db import queries
from db.feed import Position
from gateway import rpc
from gateway.hub import Subscription
from gateway.limits import TokenBucket
from gateway.presence import Meta, group_by_user
from gateway.project_lists import ListSubscription
from gateway.rpc import Call
from gateway.rpc_methods import METHODS
from gateway.tokens import TokenError, TokenExpired
from protocol.codec import decode_client_frame, encode_frame, refused_frame_ref
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import (
    Access,
    Auth,
    AuthRefresh,
    ClientFrame,
    Closing,
    Error,
    Frame,
    Ok,
    Ping,
    PresenceState,
    PresenceUpdate,
    ProjectListSnapshot,
    Ref,
    Reset,
    ResetReason,
    Rpc,
    Snapshot,
    Subscribe,
    SubscribeProjects,
    Unsubscribe,
    Unsubscribed,
    UnsubscribedReason,
    UnsubscribeProjects,
)
from protocol.rows import ProjectRow, SessionRow, SitemapRow, StyleGuideRow, WireframeRow

if TYPE_CHECKING:
    from gateway.server import Gateway

logger = logging.getLogger(__name__)

RECONNECT_AFTER_MS = 1000


def _token_error_code(error: TokenError) -> ErrorCode:
    return ErrorCode.TOKEN_EXPIRED if isinstance(error, TokenExpired) else ErrorCode.INVALID_TOKEN


class Client:
    """A connection's state. Bounded: its subscriptions are capped by a setting."""

    def __init__(self, gateway: Gateway, ws: ServerConnection, client_id: int) -> None:
        self.id = client_id
        self.ws = ws
        self.user_id: UUID = UUID(int=0)
        self._claims: dict[str, Any] = {}
        self._gateway = gateway
        self._settings = gateway.settings
        self._metrics = gateway.metrics
        self._bucket = TokenBucket(self._settings.messages_per_second, self._settings.message_burst)
        self._subscriptions: dict[UUID, Subscription] = {}
        rate = self._settings.presence_updates_per_second
        self._presence_bucket = TokenBucket(rate, max(1, math.ceil(rate)))
        # The latest meta of each project whose update waits for the rate limit.
        self._presence_pending: dict[UUID, dict[str, JsonValue]] = {}
        self._presence_timer: asyncio.TimerHandle | None = None
        self._project_list: ListSubscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing = False
        self._stopping = False
        self._busy = False

    # Lifecycle

    async def run(self) -> None:
        try:
            if await self._authenticate():
                await self._serve()
        except ConnectionClosed:
            pass
        finally:
            self._release()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def shut_down(self) -> None:
        """Tell the client the server is going away; close once in-flight work is done."""
        if self._closing:
            return
        self.send(Closing(reason="server shutting down", reconnect_after_ms=RECONNECT_AFTER_MS))
        self._stopping = True
        if not self._busy:
            self.close(CloseCode.SERVICE_RESTART, "service restart")

    def close(self, code: CloseCode, reason: str, error: Error | None = None) -> None:
        """Stop delivering to this connection and close it (without awaiting)."""
        if self._closing:
            return
        if error is not None:
            self.send(error)
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
        if self._project_list is not None:
            self._gateway.project_lists.unsubscribe(self._project_list)
            self._project_list = None
        self._gateway.forget(self)
        self._gateway.sessions.detach(self)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Sending

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

    def send(self, frame: Frame) -> None:
        if self.can_send():
            broadcast([self.ws], encode_frame(frame), text=True)
            self._metrics.frames_out.labels(type(frame).model_fields["type"].default).inc()

    def _error(self, code: ErrorCode, message: str, ref: str | int | None) -> Error:
        return Error(code=code, message=message, ref=ref)

    # Receiving

    def _decode(self, message: str | bytes) -> ClientFrame | None:
        """The frame, or None after answering a bad or refused one with an `error`."""
        size = len(message.encode() if isinstance(message, str) else message)
        try:
            if size > self._settings.max_frame_bytes:
                self._metrics.rate_limited.labels("max_frame_bytes").inc()
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {size} bytes is over the limit of "
                    f"{self._settings.max_frame_bytes} (SITEBUILDER_MAX_FRAME_BYTES)",
                )
            wait = self._bucket.take()
            if wait:
                self._metrics.rate_limited.labels("messages_per_second").inc()
                self.send(
                    Error(
                        code=ErrorCode.RATE_LIMITED,
                        message="too many frames: the frame was not processed; slow down",
                        retry_after_ms=max(1, round(wait * 1000)),
                        ref=refused_frame_ref(message),
                    )
                )
                return None
            frame = decode_client_frame(message)
        except ProtocolError as error:
            self.send(self._error(error.code, error.message, error.ref))
            self._metrics.frames_in.labels("invalid").inc()
            return None
        self._metrics.frames_in.labels(type(frame).model_fields["type"].default).inc()
        return frame

    async def _authenticate(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.auth_timeout_seconds
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                self._metrics.auth_failures.labels("timeout").inc()
                self.close(
                    CloseCode.AUTH_TIMEOUT,
                    "auth_timeout",
                    self._error(
                        ErrorCode.AUTH_TIMEOUT,
                        f"no auth frame within {self._settings.auth_timeout_seconds:g}s",
                        None,
                    ),
                )
                return False
            frame = self._decode(message)
            if frame is None:
                continue
            if not isinstance(frame, Auth):
                self.send(
                    self._error(ErrorCode.NOT_AUTHENTICATED, "send an auth frame first", frame.ref)
                )
                continue
            return await self._accept_token(frame)

    async def _accept_token(self, frame: Auth) -> bool:
        try:
            claims = self._gateway.verifier.verify(frame.token)
        except TokenError as error:
            code = _token_error_code(error)
            self._metrics.auth_failures.labels(code.value).inc()
            self.close(CloseCode.AUTH_FAILED, code.value, self._error(code, str(error), frame.ref))
            return False
        user_id = UUID(claims["sub"])
        async with self._gateway.pool.acquire() as conn:
            known = await queries.user_exists(conn, user_id)
        if not known:
            self._metrics.auth_failures.labels("unknown_user").inc()
            message = f"user {user_id} does not exist"
            self.close(
                CloseCode.AUTH_FAILED,
                "unknown_user",
                self._error(ErrorCode.UNKNOWN_USER, message, frame.ref),
            )
            return False
        if not self._gateway.admit(self, user_id):
            limit = self._settings.max_connections_per_user
            self.close(
                CloseCode.TOO_MANY_CONNECTIONS,
                "too_many_connections",
                self._error(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"user already has {limit} connections (SITEBUILDER_MAX_CONNECTIONS_PER_USER)",
                    frame.ref,
                ),
            )
            return False
        self.user_id = user_id
        self._claims = claims
        self._expire_at(float(claims["exp"]))
        self.send(
            Ok(
                ref=frame.ref,
                data={
                    "user_id": str(user_id),
                    "expires_at": claims["exp"],
                    "node": self._gateway.node_id,
                },
            )
        )
        return True

    def _expire_at(self, exp: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + max(0.0, exp - time.time()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._metrics.auth_failures.labels("token_expired").inc()
        self.close(
            CloseCode.AUTH_FAILED,
            "token_expired",
            self._error(ErrorCode.TOKEN_EXPIRED, "token expired: send auth.refresh earlier", None),
        )

    async def _serve(self) -> None:
        async for message in self.ws:
            if self._closing:
                continue
            frame = self._decode(message)
            if frame is None:
                continue
            self._busy = True
            try:
                await self._handle(frame)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.exception("request %r of user %s failed", frame, self.user_id)
                self.send(self._error(ErrorCode.INTERNAL, f"request failed: {error}", frame.ref))
            finally:
                self._busy = False
            if self._stopping:
                self.close(CloseCode.SERVICE_RESTART, "service restart")

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, Ping):
            self.send(Ok(ref=frame.ref))
        elif isinstance(frame, Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, Unsubscribe):
            self._unsubscribe(frame)
        elif isinstance(frame, SubscribeProjects):
            await self._subscribe_projects(frame)
        elif isinstance(frame, UnsubscribeProjects):
            self._unsubscribe_projects(frame)
        elif isinstance(frame, Rpc):
            caller = Call(
                self.user_id,
                self._claims,
                self._gateway.pool,
                frame.ref,
                online=self._gateway.online_users,
                timeout_seconds=self._settings.rpc_timeout_seconds,
                request_tag=rpc.request_tag(self._gateway.instance, self.id, frame.ref),
                origin=self._gateway.sessions.origin(self, self.ws, self._show_session),
            )
            self.send(await rpc.call(METHODS, frame, caller))
        elif isinstance(frame, PresenceUpdate):
            self._update_presence(frame)
        elif isinstance(frame, AuthRefresh):
            self._refresh(frame)
        elif isinstance(frame, Auth):
            self.send(
                self._error(
                    ErrorCode.ALREADY_AUTHENTICATED,
                    "already authenticated; use auth.refresh to replace the token",
                    frame.ref,
                )
            )

    def _refresh(self, frame: AuthRefresh) -> None:
        try:
            claims = self._gateway.verifier.verify(frame.token)
        except TokenError as error:
            self._metrics.auth_failures.labels("refresh").inc()
            self.send(self._error(_token_error_code(error), str(error), frame.ref))
            return
        if UUID(claims["sub"]) != self.user_id:
            self.send(
                self._error(
                    ErrorCode.USER_MISMATCH,
                    "auth.refresh must carry a token of the same user",
                    frame.ref,
                )
            )
            return
        self._claims = claims
        self._expire_at(float(claims["exp"]))
        self.send(Ok(ref=frame.ref, data={"expires_at": claims["exp"]}))

    # Subscriptions

    async def _subscribe(self, frame: Subscribe) -> None:
        project_id = frame.project_id
        if project_id in self._subscriptions:
            message = f"already subscribed to {project_id}"
            self.send(self._error(ErrorCode.ALREADY_SUBSCRIBED, message, frame.ref))
            return
        if len(self._subscriptions) >= self._settings.max_subscriptions:
            self._metrics.rate_limited.labels("max_subscriptions").inc()
            self.send(
                self._error(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"at most {self._settings.max_subscriptions} subscriptions per connection "
                    "(SITEBUILDER_MAX_SUBSCRIPTIONS)",
                    frame.ref,
                )
            )
            return
        if not self._gateway.feed_connected:
            message = "the change feed is reconnecting; retry shortly"
            self.send(self._error(ErrorCode.UNAVAILABLE, message, frame.ref))
            return
        subscription = self._gateway.hub.subscribe(self, project_id)
        self._subscriptions[project_id] = subscription
        try:
            if frame.since is None:
                sent = await self._send_view(subscription, frame.snapshot, frame.ref)
            else:
                sent = await self._resume(subscription, frame.since, frame.ref)
        except BaseException:
            self._drop(subscription)
            raise
        if not sent:
            self._drop(subscription)
            message = f"project {project_id} does not exist or is not shared with you"
            self.send(self._error(ErrorCode.FORBIDDEN, message, frame.ref))
            return
        await self._join_presence(subscription)

    async def _resume(self, subscription: Subscription, since_text: str, ref: Ref | None) -> bool:
        """Replay what followed `since`, then go live; when the history no longer reaches
        back that far, say so with `reset` and send a fresh snapshot instead."""
        project_id = subscription.project_id
        history = self._gateway.history
        since = Position.parse(since_text)
        if since is None or not history.covers(project_id, since):
            return await self._send_view(subscription, True, ref, reset=_gap(since_text, since))
        async with self._gateway.pool.acquire() as conn:
            editable = await queries.project_access(conn, self.user_id, project_id)
        if editable is None:
            return False
        if not history.covers(project_id, since):  # expired while access was checked
            return await self._send_view(subscription, True, ref, reset=_gap(since_text, since))
        subscription.editable = editable
        self.send(Ok(ref=ref, data=_subscribed(project_id, editable, resumed=True)))
        last = since
        for entry in history.after(project_id, since):
            last = entry.position
            if entry.members_only and not editable:
                continue
            if not self.can_send():
                return True
            self._gateway.hub.send_to(subscription, entry.data)
        self._gateway.hub.go_live(subscription, after=last)
        return True

    async def _send_view(
        self,
        subscription: Subscription,
        with_snapshot: bool,
        ref: Ref | None,
        *,
        reply: bool = True,
        reset: str | None = None,
    ) -> bool:
        """Read the project as the user; send `ok` (when replying to a request), `reset`
        (when resuming failed) and the snapshot; then go live. False when the user may
        not see the project."""
        project_id = subscription.project_id
        async with self._gateway.pool.acquire() as conn:
            view = await queries.view_project(
                conn, self.user_id, project_id, with_content=with_snapshot
            )
        if view is None:
            return False
        subscription.editable = view.editable
        if reply:
            resumed = False if reset is not None else None
            self.send(Ok(ref=ref, data=_subscribed(project_id, view.editable, resumed=resumed)))
        if reset is not None:
            reason = ResetReason.HISTORY_UNAVAILABLE
            self.send(Reset(project_id=project_id, reason=reason, message=reset))
        if with_snapshot:
            self._send_snapshot(subscription, view)
        self._gateway.hub.go_live(subscription, view.visibility)
        return True

    def _send_snapshot(self, subscription: Subscription, view: queries.ProjectView) -> None:
        router = self._gateway.router
        for table, rows in (
            ("sitemaps", view.sitemaps),
            ("wireframes", view.wireframes),
            ("style_guides", view.style_guides),
        ):
            for row in rows:
                router.learn(table, row)
        latest = self._gateway.history.latest
        assert latest is not None, "subscriptions are refused until the feed has started"
        position = self._gateway.hub.snapshot_position(subscription, view.visibility, latest)
        self.send(
            Snapshot(
                project_id=subscription.project_id,
                access=_access(view.editable),
                position=str(position),
                project=ProjectRow.model_validate(view.project),
                sitemaps=[SitemapRow.model_validate(r) for r in view.sitemaps],
                wireframes=[WireframeRow.model_validate(r) for r in view.wireframes],
                style_guides=[StyleGuideRow.model_validate(r) for r in view.style_guides],
                sessions=[SessionRow.model_validate(r) for r in view.sessions],
            )
        )

    def _unsubscribe(self, frame: Unsubscribe) -> None:
        subscription = self._subscriptions.get(frame.project_id)
        if subscription is None:
            message = f"not subscribed to {frame.project_id}"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        self._drop(subscription)
        self.send(Ok(ref=frame.ref, data={"project_id": str(frame.project_id)}))

    def _drop(self, subscription: Subscription) -> None:
        self._gateway.hub.unsubscribe(subscription)
        self._leave_presence(subscription)
        if self._subscriptions.get(subscription.project_id) is subscription:
            del self._subscriptions[subscription.project_id]

    def revoke(self, project_id: UUID, message: str) -> None:
        """End a subscription the user lost access to; nothing more of it is sent."""
        subscription = self._subscriptions.get(project_id)
        if subscription is None:
            return
        self._drop(subscription)
        self.send(
            Unsubscribed(
                project_id=project_id, reason=UnsubscribedReason.ACCESS_REVOKED, message=message
            )
        )

    def resync(self, subscription: Subscription, reason: ResetReason, message: str) -> None:
        """Changes may have been lost: say so, then send a fresh snapshot and go live."""
        if self._subscriptions.get(subscription.project_id) is not subscription:
            return
        self._gateway.hub.suspend(subscription)
        self.send(Reset(project_id=subscription.project_id, reason=reason, message=message))
        self._spawn(self._resnapshot(subscription))

    async def _resnapshot(self, subscription: Subscription) -> None:
        try:
            sent = await self._send_view(subscription, True, None, reply=False)
        except (OSError, ConnectionClosed) as error:
            logger.warning("resync of %s failed: %s", subscription.project_id, error)
            sent = None
        if sent is False:
            self.revoke(subscription.project_id, "the project is no longer shared with you")
        elif sent is None:
            self.close(CloseCode.SERVICE_RESTART, "resync failed")

    # Presence

    @property
    def connection_id(self) -> str:
        """Unique across gateways (a presence backend may be shared by several)."""
        return f"{self._gateway.instance}-{self.id}"

    def _subscribed_to(self, subscription: Subscription) -> bool:
        current = self._subscriptions.get(subscription.project_id)
        return not self._closing and current is subscription

    async def _join_presence(self, subscription: Subscription) -> None:
        """Join the project's presence and send its `presence.state`; diffs follow."""
        presence = self._gateway.presence
        project_id = subscription.project_id
        await presence.join(project_id, self.user_id, self.connection_id, {})
        entries = await presence.list(project_id) if self._subscribed_to(subscription) else None
        if entries is None or not self._subscribed_to(subscription):
            await presence.leave(project_id, self.connection_id)  # it ended meanwhile
            return
        subscription.presence = True
        self.send(PresenceState(project_id=project_id, users=group_by_user(entries)))

    def _leave_presence(self, subscription: Subscription) -> None:
        self._presence_pending.pop(subscription.project_id, None)
        if subscription.presence:
            subscription.presence = False
            presence = self._gateway.presence
            self._spawn(presence.leave(subscription.project_id, self.connection_id))

    async def _show_session(self, project_id: UUID, session: Meta | None) -> None:
        await self._gateway.presence.set_session(project_id, self.connection_id, session)

    def _update_presence(self, frame: PresenceUpdate) -> None:
        subscription = self._subscriptions.get(frame.project_id)
        if subscription is None or not subscription.presence:
            message = f"not subscribed to {frame.project_id}"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        size = len(orjson.dumps(frame.meta))
        limit = self._settings.max_presence_meta_bytes
        if size > limit:
            self._metrics.rate_limited.labels("max_presence_meta_bytes").inc()
            message = (
                f"presence meta of {size} bytes is over the limit of {limit} "
                "(SITEBUILDER_MAX_PRESENCE_META_BYTES)"
            )
            self.send(self._error(ErrorCode.PRESENCE_TOO_LARGE, message, frame.ref))
            return
        self.send(Ok(ref=frame.ref, data={"project_id": str(frame.project_id)}))
        if frame.project_id in self._presence_pending or self._presence_timer is not None:
            self._metrics.rate_limited.labels("presence_updates_per_second").inc()
        self._presence_pending[frame.project_id] = frame.meta
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
            project_id = next(iter(self._presence_pending))
            meta = self._presence_pending.pop(project_id)
            presence = self._gateway.presence
            self._spawn(presence.update(project_id, self.connection_id, meta))

    # The project list

    async def _subscribe_projects(self, frame: SubscribeProjects) -> None:
        if self._project_list is not None:
            message = "already subscribed to the project list"
            self.send(self._error(ErrorCode.ALREADY_SUBSCRIBED, message, frame.ref))
            return
        if not self._gateway.feed_connected:
            message = "the change feed is reconnecting; retry shortly"
            self.send(self._error(ErrorCode.UNAVAILABLE, message, frame.ref))
            return
        lists = self._gateway.project_lists
        subscription = lists.subscribe(self)
        self._project_list = subscription
        try:
            read = await self._read_list(subscription)
        except BaseException:
            self._drop_list(subscription)
            raise
        if read is None:
            return  # the connection closed meanwhile
        self.send(Ok(ref=frame.ref))
        self._send_list(subscription, *read, reset=None)

    async def _read_list(
        self, subscription: ListSubscription
    ) -> tuple[queries.VisibilitySnapshot, list[dict[str, Any]]] | None:
        """The list as of one snapshot, read again while a resync arrives during the
        read; None when the subscription ended meanwhile."""
        subscription.reading = True
        try:
            while True:
                subscription.stale = None
                async with self._gateway.pool.acquire() as conn:
                    read = await queries.project_list(conn, self.user_id)
                if not self._gateway.project_lists.registered(subscription):
                    return None
                if subscription.stale is None:
                    return read
        finally:
            subscription.reading = False

    def _send_list(
        self,
        subscription: ListSubscription,
        seen: queries.VisibilitySnapshot,
        rows: list[dict[str, Any]],
        *,
        reset: ResetReason | None,
    ) -> None:
        projects = [ProjectRow.model_validate(row) for row in rows]
        self.send(ProjectListSnapshot(projects=projects, reset=reset))
        self._gateway.project_lists.go_live(subscription, seen)

    def _unsubscribe_projects(self, frame: UnsubscribeProjects) -> None:
        if self._project_list is None:
            message = "not subscribed to the project list"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        self._drop_list(self._project_list)
        self.send(Ok(ref=frame.ref))

    def _drop_list(self, subscription: ListSubscription) -> None:
        self._gateway.project_lists.unsubscribe(subscription)
        if self._project_list is subscription:
            self._project_list = None

    def resync_list(self, reason: ResetReason) -> None:
        """Changes may have been lost: hold the list's changes, read it again and send it
        (`project_list` with `reset`), then go live again."""
        subscription = self._project_list
        if subscription is None:
            return
        self._gateway.project_lists.suspend(subscription)
        if subscription.reading:
            subscription.stale = reason  # the read in flight starts over
            return
        subscription.reading = True  # a second resync before the task starts: one read
        self._spawn(self._resend_list(subscription, reason))

    async def _resend_list(self, subscription: ListSubscription, reason: ResetReason) -> None:
        try:
            read = await self._read_list(subscription)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionClosed) as error:
            logger.warning("resync of the project list failed: %s", error)
            self.close(CloseCode.SERVICE_RESTART, "resync failed")
            return
        if read is not None:
            self._send_list(subscription, *read, reset=reason)


def _access(editable: bool) -> Access:
    return Access.READ_WRITE if editable else Access.READ_ONLY


def _subscribed(project_id: UUID, editable: bool, *, resumed: bool | None) -> dict[str, object]:
    """The `ok` of a subscribe; `resumed` only when the client asked to resume."""
    data: dict[str, object] = {"project_id": str(project_id), "access": _access(editable)}
    if resumed is not None:
        data["resumed"] = resumed
    return data


def _gap(since_text: str, since: Position | None) -> str:
    if since is None:
        return f"{since_text!r} is not a position this gateway gave out: here is a snapshot"
    return (
        f"the changes after {since_text} are no longer all kept "
        "(or were given out before a restart): here is a snapshot"
    )
