"""The native protocol's connection: authentication, then requests, until it closes.

Its subscriptions are hub channels (gateway.core.hub): a project's, and the user's
project list. Replies and pushes are written synchronously, through the same outbox
as fan-out, in the order they are produced, so a client sees `ok` before its
`snapshot` and the snapshot before the first change that follows it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any
from uuid import UUID

import asyncpg
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from db import queries
from db.errors import DATABASE_ERRORS
from db.feed import Position
from gateway.core.authorization import ANONYMOUS, Acl, Level, level_of, plan_replay
from gateway.core.channels import ProjectChannel, ProjectListChannel
from gateway.core.events import Loss
from gateway.core.hub import Subscription
from gateway.core.origin import request_tag
from gateway.core.snapshots import SharedView
from gateway.edge.connection import Connection, token_error_code
from gateway.edge.services import Services
from gateway.edge.tokens import TokenError, is_anonymous
from gateway.native.presence import state_codec
from gateway.native.snapshots import snapshot_frame
from gateway.native.views import NativeView, Shape
from gateway.presence.model import Meta
from gateway.rpc.call import Call, IdempotencyLimits, call
from gateway.rpc.methods import METHODS
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
    PresenceUpdate,
    ProjectListSnapshot,
    Ref,
    Reset,
    ResetReason,
    Rpc,
    Subscribe,
    SubscribeProjects,
    Unsubscribe,
    Unsubscribed,
    UnsubscribedReason,
    UnsubscribeProjects,
)
from protocol.rows import ProjectRow

logger = logging.getLogger(__name__)

RECONNECT_AFTER_MS = 1000


class Client(Connection):
    """A native-protocol connection: `auth` first, then requests, until it closes."""

    def __init__(self, gateway: Services, ws: ServerConnection, client_id: int) -> None:
        super().__init__(gateway, ws, client_id)
        self._view = NativeView(client_id, ANONYMOUS)
        self._delta_views: dict[Shape, NativeView] | None = None  # made on first use
        self._project_list: Subscription | None = None
        # A read of the project list is in flight; `_list_stale` (a reason) makes it
        # read again.
        self._list_reading = False
        self._list_stale: ResetReason | None = None
        self._stopping = False

    # Lifecycle

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
        super().close(code, reason)

    def _release(self) -> None:
        super()._release()
        if self._project_list is not None:
            self._gateway.hub.unsubscribe(self._project_list)
            self._project_list = None

    # Sending

    def send(self, frame: Frame) -> None:
        if self.can_send():
            self.send_bytes(encode_frame(frame))
            self._metrics.frames_out.labels(type(frame).model_fields["type"].default).inc()

    def _error(self, code: ErrorCode, message: str, ref: str | int | None) -> Error:
        return Error(code=code, message=message, ref=ref)

    # Receiving

    def _decode(self, message: str | bytes) -> ClientFrame | None:
        """The frame, or None after answering a bad or refused one with an `error`."""
        refusal = self._refusal(message)
        if refusal is not None:
            ref = refused_frame_ref(message) if refusal.retry_after_ms else None
            self.send(
                Error(
                    code=refusal.code,
                    message=refusal.message,
                    retry_after_ms=refusal.retry_after_ms,
                    ref=ref,
                )
            )
            if refusal.retry_after_ms is None:
                self._metrics.frames_in.labels("invalid").inc()
            return None
        try:
            frame = decode_client_frame(message, self._settings.max_json_depth)
        except ProtocolError as error:
            self.send(self._error(error.code, error.message, error.ref))
            self._metrics.frames_in.labels("invalid").inc()
            return None
        self._metrics.frames_in.labels(type(frame).model_fields["type"].default).inc()
        return frame

    async def _open(self) -> bool:
        """Wait for `auth` for the auth timeout and up to a quarter more, at random:
        connections opened together (a reconnect wave, or a flood of connections that
        never sign in and come straight back) are then not all closed together, and do
        not return together, which would stall every other connection for as long as
        their handshakes take."""
        loop = asyncio.get_running_loop()
        timeout = self._settings.auth_timeout_seconds * random.uniform(1.0, 1.25)
        deadline = loop.time() + timeout
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
            claims = self._verify(frame.token)
        except TokenError as error:
            code = token_error_code(error)
            self._metrics.auth_failures.labels(code.value).inc()
            self.close(CloseCode.AUTH_FAILED, code.value, self._error(code, str(error), frame.ref))
            return False
        # An anon key: a signed-out visitor, who reads public projects only.
        user_id = ANONYMOUS if is_anonymous(claims) else UUID(claims["sub"])
        name = None
        if user_id != ANONYMOUS:
            name = await self._gateway.names.name(user_id)
        if name is None and user_id != ANONYMOUS:
            self._metrics.auth_failures.labels("unknown_user").inc()
            message = f"user {user_id} does not exist"
            self.close(
                CloseCode.AUTH_FAILED,
                "unknown_user",
                self._error(ErrorCode.UNKNOWN_USER, message, frame.ref),
            )
            return False
        refused = self._admit(user_id)
        if refused is not None:
            self.close(
                CloseCode.TOO_MANY_CONNECTIONS,
                "too_many_connections",
                self._error(ErrorCode.TOO_MANY_CONNECTIONS, refused, frame.ref),
            )
            return False
        self._sign_in(user_id, claims)
        self.display_name = name
        for view in (self._view, *(self._delta_views or {}).values()):
            view.signed_in(user_id)
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

    def _expired(self) -> None:
        self.close(
            CloseCode.AUTH_FAILED,
            "token_expired",
            self._error(ErrorCode.TOKEN_EXPIRED, "token expired: send auth.refresh earlier", None),
        )

    async def _serve(self) -> None:
        async for message in self._frames():
            if not self._closing:
                await self._receive(message)
            del message  # not kept while the next is awaited

    async def _receive(self, message: str | bytes) -> None:
        """One frame from the client: decoded, handled, and let go when done."""
        frame = self._decode(message)
        if frame is None:
            return
        self._busy = True
        try:
            await self._handle(frame)
        except DATABASE_ERRORS as error:
            logger.exception("request %r of user %s failed", frame, self.user_id)
            self.send(self._error(ErrorCode.INTERNAL, f"request failed: {error}", frame.ref))
        finally:
            self._busy = False
        if self._stopping:
            self.close(CloseCode.SERVICE_RESTART, "service restart")

    async def _handle(self, frame: ClientFrame) -> None:
        if self.user_id == ANONYMOUS and not isinstance(frame, _VISITOR_FRAMES):
            message = (
                f"{_kind(frame)} is for signed-in users: an anon key reads public projects "
                "(subscribe, unsubscribe, ping) and nothing more"
            )
            self.send(self._error(ErrorCode.FORBIDDEN, message, frame.ref))
            return
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
            await self._rpc(frame)
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

    async def _rpc(self, frame: Rpc) -> None:
        refused = self._calling_too_fast()
        if refused is not None:
            self.send(
                Error(
                    code=refused.code,
                    message=refused.message,
                    retry_after_ms=refused.retry_after_ms,
                    ref=frame.ref,
                )
            )
            return
        caller = Call(
            self.user_id,
            self.claims(),
            self._gateway.pool,
            frame.ref,
            online=self._gateway.online_users,
            timeout_seconds=self._settings.rpc_timeout_seconds,
            idempotency_limits=IdempotencyLimits(
                self._settings.rpc_idempotency_max_keys_per_user,
                self._settings.rpc_idempotency_max_result_bytes,
            ),
            request_tag=request_tag(self._gateway.instance, self.id, frame.ref),
            origin=self._gateway.sessions.origin(
                self, self.address, self.user_agent, self._show_session
            ),
        )
        self.send(await call(METHODS, frame, caller))

    def _refresh(self, frame: AuthRefresh) -> None:
        try:
            claims = self._verify(frame.token)
        except TokenError as error:
            self._metrics.auth_failures.labels("refresh").inc()
            self.send(self._error(token_error_code(error), str(error), frame.ref))
            return
        if (ANONYMOUS if is_anonymous(claims) else UUID(claims["sub"])) != self.user_id:
            self.send(
                self._error(
                    ErrorCode.USER_MISMATCH,
                    "auth.refresh must carry a token of the same user",
                    frame.ref,
                )
            )
            return
        self._keep_claims(claims)
        self.send(Ok(ref=frame.ref, data={"expires_at": claims["exp"]}))

    # Subscriptions

    async def _subscribe(self, frame: Subscribe) -> None:
        project_id = frame.project_id
        key = ProjectChannel(project_id)
        if key in self._subscriptions:
            message = f"already subscribed to {project_id}"
            self.send(self._error(ErrorCode.ALREADY_SUBSCRIBED, message, frame.ref))
            return
        refused = self._too_many_subscriptions()
        if refused is not None:
            self.send(self._error(ErrorCode.TOO_MANY_SUBSCRIPTIONS, refused, frame.ref))
            return
        refused = self._joining_too_fast()
        if refused is not None:
            self.send(self._error(ErrorCode.RATE_LIMITED, refused, frame.ref))
            return
        if not self._gateway.feed_connected:
            message = "the change feed is reconnecting; retry shortly"
            self.send(self._error(ErrorCode.UNAVAILABLE, message, frame.ref))
            return
        subscription = self._gateway.hub.subscribe(self, key, self._view_for(frame))
        self._subscriptions[key] = subscription
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

    def _view_for(self, frame: Subscribe) -> NativeView:
        """The view the subscription asked for: the connection's, or one of its views
        for `delta` subscriptions (with or without the old row)."""
        if not frame.delta:
            return self._view
        mode = Shape.DELTA_WITH_OLD if frame.old else Shape.DELTA
        if self._delta_views is None:
            self._delta_views = {}
        view = self._delta_views.get(mode)
        if view is None:
            view = self._delta_views[mode] = NativeView(self.id, self.user_id, mode)
        return view

    async def _resume(self, subscription: Subscription, since_text: str, ref: Ref | None) -> bool:
        """Replay what followed `since` that the user could read when it was committed,
        then go live; when the history no longer reaches back that far, or the user
        could not read the project all along, say so with `reset` and send a fresh
        snapshot instead."""
        project_id = _project(subscription)
        history = self._gateway.history
        since = Position.parse(since_text)
        if since is None or not history.covers(project_id, since):
            return await self._send_view(subscription, True, ref, reset=_gap(since_text, since))
        async with self._gateway.pool.acquire() as conn:
            seen, row = await queries.project_access_row(conn, project_id)
        acl = Acl.of(row)
        if level_of(acl, self.user_id) is Level.NONE:
            return False
        if not await self._gateway.fences.passed():
            reset = "the change feed is behind: cannot tell what you could read since then"
            return await self._send_view(subscription, True, ref, reset=reset)
        if self._token_lapsed():
            return True  # its expiry ends the connection (token_expired): nothing goes live
        if not history.covers(project_id, since):  # expired while access was checked
            return await self._send_view(subscription, True, ref, reset=_gap(since_text, since))
        entries = history.after(project_id, since)
        plan = plan_replay(self.user_id, acl, seen, entries)
        if plan.refused is not None:
            return await self._send_view(subscription, True, ref, reset=plan.refused)
        subscription.level = plan.level
        editable = plan.level is Level.WRITE
        self.send(Ok(ref=ref, data=_subscribed(project_id, editable, resumed=True)))
        hub = self._gateway.hub
        for change in plan.entries:
            hub.send_to(subscription, change)
        self._gateway.outbox.flush()
        last = entries[-1].position if entries else since
        hub.go_live(subscription, after=last)
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
        project_id = _project(subscription)
        view = await self._gateway.snapshots.view(
            project_id, self.user_id, with_content=with_snapshot
        )
        if view is None:
            return False
        if self._token_lapsed():
            return True  # its expiry ends the connection (token_expired): nothing goes live
        subscription.level = Level.WRITE if view.editable else Level.READ
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

    def _send_snapshot(self, subscription: Subscription, view: SharedView) -> None:
        """The snapshot frame, its rows encoded once for everyone who shares the view."""
        latest = self._gateway.history.latest
        assert latest is not None, "subscriptions are refused until the feed has started"
        position = self._gateway.hub.snapshot_position(subscription, view.visibility, latest)
        if self.can_send():
            self.send_bytes(snapshot_frame(view, _project(subscription), str(position)))
            self._metrics.frames_out.labels("snapshot").inc()

    def _unsubscribe(self, frame: Unsubscribe) -> None:
        subscription = self._subscriptions.get(ProjectChannel(frame.project_id))
        if subscription is None:
            message = f"not subscribed to {frame.project_id}"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        self._drop(subscription)
        self.send(Ok(ref=frame.ref, data={"project_id": str(frame.project_id)}))

    def _drop(self, subscription: Subscription) -> None:
        self._gateway.hub.unsubscribe(subscription)
        self._leave_presence(subscription)
        if self._subscriptions.get(subscription.key) is subscription:
            del self._subscriptions[subscription.key]

    def ended(self, subscription: Subscription, message: str) -> None:
        """End a subscription the user lost access to; nothing more of it is sent."""
        if self._subscriptions.get(subscription.key) is not subscription:
            return
        self._drop(subscription)
        self.send(
            Unsubscribed(
                project_id=_project(subscription),
                reason=UnsubscribedReason.ACCESS_REVOKED,
                message=message,
            )
        )

    def lost(self, subscription: Subscription, loss: Loss, message: str) -> None:
        """Changes may have been missed: say so, then send a fresh snapshot (or list)
        and go live again."""
        reason = ResetReason(loss.value)
        if subscription is self._project_list:
            self._resync_list(reason)
            return
        if self._subscriptions.get(subscription.key) is not subscription:
            return
        self._gateway.hub.suspend(subscription)
        self.send(Reset(project_id=_project(subscription), reason=reason, message=message))
        self._spawn(self._resnapshot(subscription))

    async def _resnapshot(self, subscription: Subscription) -> None:
        try:
            sent = await self._send_view(subscription, True, None, reply=False)
        except (OSError, ConnectionClosed) as error:
            logger.warning("resync of %s failed: %s", _project(subscription), error)
            sent = None
        if sent is False:
            self.ended(subscription, "the project is no longer shared with you")
        elif sent is None:
            self.close(CloseCode.SERVICE_RESTART, "resync failed")

    # Presence

    async def _join_presence(self, subscription: Subscription) -> None:
        """Join the project's presence and send its `presence.state`; diffs follow."""
        presence = self._gateway.presence
        project_id = _project(subscription)
        key = ProjectChannel(project_id)
        await presence.join(key, self.user_id, self.connection_id, {}, name=self.display_name)

        def receive(state: bytes) -> None:
            if not self._subscribed_to(subscription):
                return
            subscription.joined = subscription.presence = True
            if self.can_send():
                self.send_bytes(state)
                self._metrics.frames_out.labels("presence.state").inc()

        if self._subscribed_to(subscription):
            await self._gateway.presence_states.deliver(
                key, "native", state_codec(project_id), receive
            )
        if not subscription.presence:
            await presence.leave(key, self.connection_id)  # it ended meanwhile

    async def _show_session(self, project_id: UUID, session: Meta | None) -> None:
        channel = ProjectChannel(project_id)
        await self._gateway.presence.set_session(channel, self.connection_id, session)

    def _update_presence(self, frame: PresenceUpdate) -> None:
        key = ProjectChannel(frame.project_id)
        subscription = self._subscriptions.get(key)
        if subscription is None or not subscription.presence:
            message = f"not subscribed to {frame.project_id}"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        refused = self._presence_too_large(frame.meta)
        if refused is not None:
            self.send(self._error(ErrorCode.PRESENCE_TOO_LARGE, refused, frame.ref))
            return
        self.send(Ok(ref=frame.ref, data={"project_id": str(frame.project_id)}))
        self._queue_presence(key, frame.meta)

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
        subscription = self._gateway.hub.subscribe(
            self, ProjectListChannel(self.user_id), self._view, level=Level.WRITE
        )
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
        self, subscription: Subscription
    ) -> tuple[queries.VisibilitySnapshot, list[dict[str, Any]]] | None:
        """The list as of one snapshot, read again while a resync arrives during the
        read; None when the subscription ended meanwhile."""
        self._list_reading = True
        try:
            while True:
                self._list_stale = None
                async with self._gateway.pool.acquire() as conn:
                    read = await queries.project_list(conn, self.user_id)
                if not self._gateway.hub.registered(subscription):
                    return None
                if self._list_stale is None:
                    return read
        finally:
            self._list_reading = False

    def _send_list(
        self,
        subscription: Subscription,
        seen: queries.VisibilitySnapshot,
        rows: list[dict[str, Any]],
        *,
        reset: ResetReason | None,
    ) -> None:
        projects = [ProjectRow.model_validate(row) for row in rows]
        self.send(ProjectListSnapshot(projects=projects, reset=reset))
        self._gateway.hub.go_live(subscription, seen)

    def _unsubscribe_projects(self, frame: UnsubscribeProjects) -> None:
        if self._project_list is None:
            message = "not subscribed to the project list"
            self.send(self._error(ErrorCode.NOT_SUBSCRIBED, message, frame.ref))
            return
        self._drop_list(self._project_list)
        self.send(Ok(ref=frame.ref))

    def _drop_list(self, subscription: Subscription) -> None:
        self._gateway.hub.unsubscribe(subscription)
        if self._project_list is subscription:
            self._project_list = None

    def _resync_list(self, reason: ResetReason) -> None:
        """Hold the list's changes, read it again and send it (`project_list` with
        `reset`), then go live again."""
        subscription = self._project_list
        if subscription is None:
            return
        self._gateway.hub.suspend(subscription)
        if self._list_reading:
            self._list_stale = reason  # the read in flight starts over
            return
        self._list_reading = True  # a second resync before the task starts: one read
        self._spawn(self._resend_list(subscription, reason))

    async def _resend_list(self, subscription: Subscription, reason: ResetReason) -> None:
        try:
            read = await self._read_list(subscription)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionClosed) as error:
            logger.warning("resync of the project list failed: %s", error)
            self.close(CloseCode.SERVICE_RESTART, "resync failed")
            return
        if read is not None:
            self._send_list(subscription, *read, reset=reason)


def _project(subscription: Subscription) -> UUID:
    """The project of a native project subscription."""
    if not isinstance(subscription.key, ProjectChannel):
        raise TypeError(f"native subscription to {subscription.key!r}, not a project")
    return subscription.key.project_id


def _subscribed(project_id: UUID, editable: bool, *, resumed: bool | None) -> dict[str, object]:
    """The `ok` of a subscribe; `resumed` only when the client asked to resume."""
    data: dict[str, object] = {"project_id": str(project_id), "access": Access.of(editable)}
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


# What a signed-out visitor (anon key) may send: reading public projects.
_VISITOR_FRAMES = (Ping, Subscribe, Unsubscribe, AuthRefresh, Auth)


def _kind(frame: ClientFrame) -> str:
    return str(type(frame).model_fields["type"].default)
