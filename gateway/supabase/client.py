"""A Supabase Realtime connection (`/realtime/v1/websocket`): Phoenix channels over
the gateway's own hub, presence, authorization and limits.

The socket URL's `apikey` signs the connection in: a user token (as the native
protocol's `auth`) or an `anon` key, which reads public projects only. A join's
`access_token` and the `access_token` event replace the token (an anonymous
connection may become a user's; a user's stays that user's).

Each joined channel holds a hub subscription (gateway.core.hub) to a project's channel
for a topic named `project:<uuid>` (so it shares that project's presence with native
subscribers, and ends when access is revoked), otherwise to the topic's channel, which
no project can equal; its view (gateway.supabase.views) shows presence diffs and
broadcasts, not changes. `postgres_changes` bindings are subscriptions to table
channels, one per table they name, fed by the same dispatcher, hub and outbox; the
hub delivers a change only to those who could read its project when it was committed.
Broadcasts go to the channel's other Phoenix members (and the sender with `self`); in a
project's channel only from those who may edit it.
Every problem is answered on the channel (an error reply or a `system` push); the
socket is closed only for a bad key, a slow consumer or shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import orjson
from websockets.asyncio.server import ServerConnection

from db import queries
from db.errors import DATABASE_ERRORS
from db.feed import Position
from gateway.core.authorization import ANONYMOUS, Acl, Level, level_of, plan_replay
from gateway.core.channels import PresenceKey, ProjectChannel, TableChannel, TopicChannel
from gateway.core.events import Change, Loss
from gateway.core.hub import Subscription
from gateway.edge.connection import Connection, Refusal
from gateway.edge.services import Services
from gateway.edge.tokens import TokenError, TokenExpired, is_anonymous
from gateway.supabase.presence import STATE_CODEC, presence_key_problem
from gateway.supabase.views import Broadcast, ChannelView, TableView
from protocol import phoenix as phx
from protocol.errors import CloseCode
from protocol.jsontext import REFUSED_DECODE_BYTES
from protocol.phoenix import Event, Message, PhoenixError, Vsn
from protocol.phoenix_changes import (
    Binding,
    BindingError,
    FilterLimits,
    binding_id,
    parse_binding,
)

logger = logging.getLogger(__name__)

PATH = "/realtime/v1/websocket"
SUBSCRIBED = "Subscribed to PostgreSQL"
KNOWN_EVENTS = frozenset(e.value for e in Event)


@dataclass(frozen=True)
class ResumeBasis:
    """What a join decides access from, and a resume what it may replay: the project's
    access list as of `seen`."""

    seen: queries.VisibilitySnapshot
    acl: Acl | None


@dataclass(eq=False)
class Channel:
    topic: str
    join_ref: phx.Ref
    key: PresenceKey
    config: phx.JoinConfig
    # Presence and broadcasts of the project's or the topic's channel.
    subscription: Subscription
    presence_key: str
    # The `postgres_changes` bindings: one subscription per table channel they name.
    tables: list[Subscription] = field(default_factory=list)
    bindings: int = 0  # how many (none when they were refused)


class PhoenixClient(Connection):
    @staticmethod
    def serves(path: str) -> bool:
        return urlsplit(path).path.rstrip("/") == PATH

    def __init__(self, gateway: Services, ws: ServerConnection, client_id: int, path: str) -> None:
        super().__init__(gateway, ws, client_id)
        query = parse_qs(urlsplit(path).query)
        self._vsn_param = query.get("vsn", [None])[-1]
        self._apikey = query.get("apikey", [None])[-1]
        self.vsn = Vsn.V1
        self._channels: dict[str, Channel] = {}
        self._token: str | None = None
        self._token_expired = False
        self._stopping = False
        settings = gateway.settings
        self._filter_limits = FilterLimits(
            settings.max_filter_chars, settings.max_filter_conditions, settings.max_filter_in_values
        )

    # Lifecycle

    def shut_down(self) -> None:
        """Phoenix has no goodbye: close once in-flight work is done (realtime-js
        reconnects and joins its channels again)."""
        self._stopping = True
        if not self._busy:
            self.close(CloseCode.SERVICE_RESTART, "service restart")

    def _release(self) -> None:
        for channel in self._channels.values():
            for subscription in channel.tables:
                self._gateway.hub.unsubscribe(subscription)
        self._channels.clear()
        super()._release()

    async def _open(self) -> bool:
        try:
            self.vsn = phx.parse_vsn(self._vsn_param)
        except PhoenixError as error:
            self.close(CloseCode.UNSUPPORTED, str(error)[:120])
            return False
        if not self._apikey:
            self._metrics.auth_failures.labels("invalid_token").inc()
            self.close(CloseCode.AUTH_FAILED, "missing apikey")
            return False
        refusal = await self._authenticate(self._apikey)
        if refusal is not None:
            code, problem = refusal
            self.close(code, problem[:120])
            return False
        return True

    async def _authenticate(self, token: str) -> tuple[CloseCode, str] | None:
        """Sign the connection in with `token`; the close code and problem when it may
        not (the socket is closed only when it has not signed in yet)."""
        try:
            claims = self._verify(token)
        except TokenError as error:
            self._metrics.auth_failures.labels("phoenix").inc()
            return CloseCode.AUTH_FAILED, _token_problem(error)
        user_id = ANONYMOUS if is_anonymous(claims) else UUID(claims["sub"])
        if self._token is not None and user_id != self.user_id and self.user_id != ANONYMOUS:
            problem = "access_token must be of the same user: open a new connection for another"
            return CloseCode.AUTH_FAILED, problem
        if user_id != self.user_id or not self._admitted:
            name = None
            if user_id != ANONYMOUS:
                async with self._gateway.pool.acquire() as conn:
                    name = await queries.user_name(conn, user_id)
                if name is None:
                    self._metrics.auth_failures.labels("unknown_user").inc()
                    return CloseCode.AUTH_FAILED, f"user {user_id} does not exist"
            self.display_name = name
            refused = self._admit(user_id)
            if refused is not None:
                return CloseCode.TOO_MANY_CONNECTIONS, refused
        self._sign_in(user_id, claims)
        self._token = token
        self._token_expired = False
        return None

    def _expired(self) -> None:
        """Each channel gets Supabase's `system` error, then `phx_close`; joins need a
        fresh `access_token` from now on."""
        self._token_expired = True
        for channel in list(self._channels.values()):
            self._shut_channel(channel, "system", "Token has expired 0 seconds ago")

    # Sending

    def _send(self, message: Message) -> None:
        if self.can_send():
            self.send_bytes(phx.encode(message, self.vsn))
            self._metrics.frames_out.labels(_label(message.event)).inc()

    def _reply_ok(self, request: Message, response: Any = None) -> None:
        self._send(phx.reply(request, "ok", {} if response is None else response))

    def _reply_error(self, request: Message, reason: str) -> None:
        self._send(phx.error_reply(request, reason))

    def _system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        self._send(
            phx.system(
                channel.topic,
                channel.join_ref,
                extension=extension,
                status="ok" if status == "ok" else "error",
                message=message,
            )
        )

    # Receiving

    async def _serve(self) -> None:
        async for raw in self._frames():
            if not self._closing:
                await self._receive(raw)
            del raw  # not kept while the next is awaited

    async def _receive(self, raw: str | bytes) -> None:
        """One message from the client: read, handled, and let go when done."""
        message = self._read(raw)
        if message is None:
            return
        self._busy = True
        try:
            await self._handle(message)
        except DATABASE_ERRORS as error:
            logger.exception("%s of user %s failed", message.event, self.user_id)
            self._reply_error(message, f"request failed: {error}")
        finally:
            self._busy = False
        if self._stopping:
            self.close(CloseCode.SERVICE_RESTART, "service restart")

    def _read(self, raw: str | bytes) -> Message | None:
        """The message, or None after answering a bad or refused one."""
        refusal = self._refusal(raw)
        if refusal is not None:
            self._refuse(raw, refusal)
            return None
        try:
            if isinstance(raw, bytes):
                message = phx.decode_binary(raw, self._settings.max_json_depth)
            else:
                message = phx.decode_text(raw, self.vsn, self._settings.max_json_depth)
        except PhoenixError as error:
            self._metrics.frames_in.labels("invalid").inc()
            if error.request is not None:
                self._reply_error(error.request, str(error))
            else:
                self._send(Message(phx.HEARTBEAT_TOPIC, Event.REPLY, _error(str(error))))
            return None
        self._metrics.frames_in.labels(_label(message.event)).inc()
        return message

    def _refuse(self, raw: str | bytes, refusal: Refusal) -> None:
        """Answer a frame refused unread by its ref when its envelope can be found
        cheaply (protocol.phoenix.refused_envelope), else on topic `phoenix`."""
        response: dict[str, Any] = {"reason": refusal.message, "code": refusal.code.value}
        if refusal.retry_after_ms is not None:
            response["retry_after_ms"] = refusal.retry_after_ms
        else:
            self._metrics.frames_in.labels("invalid").inc()
        request = (
            _refused_binary(raw) if isinstance(raw, bytes) else phx.refused_envelope(raw, self.vsn)
        )
        if request is not None:
            self._send(phx.reply(request, "error", response))
        else:
            self._send(
                Message(phx.HEARTBEAT_TOPIC, Event.REPLY, {"status": "error", "response": response})
            )

    async def _handle(self, message: Message) -> None:
        if message.topic == phx.HEARTBEAT_TOPIC:
            if message.event == Event.HEARTBEAT:
                self._reply_ok(message)
            else:
                self._reply_error(message, f"unknown event {message.event!r} on topic phoenix")
            return
        if message.event == Event.JOIN:
            await self._join(message)
            return
        channel = self._channels.get(message.topic)
        if channel is None:
            self._reply_error(message, "unmatched topic")
            return
        try:
            if message.event == Event.LEAVE:
                self._drop(channel)
                self._reply_ok(message)
                self._send(phx.close(channel.topic, channel.join_ref))
            elif message.event == Event.ACCESS_TOKEN:
                await self._refresh(channel, message)
            elif message.event == Event.BROADCAST:
                self._broadcast(channel, message)
            elif message.event == Event.PRESENCE:
                await self._presence(channel, message)
            else:
                self._reply_error(message, f"unknown event {message.event!r}")
        except PhoenixError as error:
            self._reply_error(message, str(error))

    # Channels

    async def _join(self, message: Message) -> None:
        topic = message.topic
        if not topic.startswith(phx.TOPIC_PREFIX):
            self._reply_error(message, f"topics start with {phx.TOPIC_PREFIX!r}")
            return
        try:
            payload = phx.parse_payload(phx.JoinPayload, message.payload, "phx_join")
        except PhoenixError as error:
            self._reply_error(message, str(error))
            return
        existing = self._channels.get(topic)
        if existing is not None:  # a rejoin (new join_ref): the old channel ends
            self._drop(existing)
            self._send(phx.close(topic, existing.join_ref))
        token = payload.access_token
        if token is not None and (token != self._token or self._token_expired):
            refusal = await self._authenticate(token)
            if refusal is not None:
                self._reply_error(message, refusal[1])
                return
        if self._token_expired:
            self._reply_error(message, "Token has expired: join with a fresh access_token")
            return
        try:
            project_id = _project_of(topic)
        except PhoenixError as error:
            self._reply_error(message, str(error))
            return
        key_problem = self._presence_key_refusal(payload.config.presence.key)
        if key_problem is not None:
            self._reply_error(message, key_problem)
            return
        refused = (
            self._too_many_subscriptions()
            or self._too_many_bindings(payload)
            or self._joining_too_fast(max(1, len(payload.config.postgres_changes)))
        )
        if refused is not None:
            self._reply_error(message, refused)
            return
        bindings, binding_error = _bindings(payload.config.postgres_changes, self._filter_limits)
        level = Level.NONE  # a topic of no project: broadcast and presence only
        basis: ResumeBasis | None = None
        if project_id is not None:
            read = await self._project_access(project_id)
            level = level_of(read.acl, self.user_id)
            if level is Level.NONE:
                reason = f"project {project_id} does not exist or is not shared with you"
                self._reply_error(message, reason)
                return
            if payload.config.resume is not None and bindings:
                basis = read if await self._gateway.fences.passed() else None
            if self._closing or topic in self._channels:
                return
        if self._token_expired or self._token_lapsed():  # it expired while we waited
            self._reply_error(message, "Token has expired: join with a fresh access_token")
            return
        channel = self._open_channel(message, payload.config, project_id, level)
        self._reply_ok(
            message,
            {
                "postgres_changes": [
                    {**raw, "id": binding_id(raw)} for raw in payload.config.postgres_changes
                ]
            },
        )
        if binding_error is not None:
            self._system(channel, "postgres_changes", "error", binding_error)
        elif bindings:
            self._watch(channel, bindings, project_id, basis)
        wants_presence = payload.config.presence.enabled
        if wants_presence is None:
            wants_presence = self._settings.supabase_presence_default
        if wants_presence:
            await self._send_presence_state(channel)

    def _presence_key_refusal(self, key: str) -> str | None:
        """Why the join may not use `key` as its presence key ("": the default), or None."""
        if not key:
            return None
        limit = self._settings.max_presence_key_chars
        if len(key) > limit:
            self._metrics.rate_limited.labels("max_presence_key_chars").inc()
            return (
                f"presence key of {len(key)} characters is over the limit of {limit} "
                "(SITEBUILDER_MAX_PRESENCE_KEY_CHARS)"
            )
        return presence_key_problem(key, self.user_id)

    def _too_many_bindings(self, payload: phx.JoinPayload) -> str | None:
        """The refusal of a join's bindings over the limit of one join or of all the
        connection's channels (each binding is checked on every change of its table)."""
        count, limit = len(payload.config.postgres_changes), self._settings.max_bindings_per_join
        if count > limit:
            self._metrics.rate_limited.labels("max_bindings_per_join").inc()
            return (
                f"{count} postgres_changes bindings; at most {limit} "
                "(SITEBUILDER_MAX_BINDINGS_PER_JOIN)"
            )
        held = sum(channel.bindings for channel in self._channels.values())
        limit = self._settings.max_bindings_per_connection
        if held + count > limit:
            self._metrics.rate_limited.labels("max_bindings_per_connection").inc()
            return (
                f"{count} postgres_changes bindings beside the {held} of this connection's "
                f"other channels; at most {limit} (SITEBUILDER_MAX_BINDINGS_PER_CONNECTION)"
            )
        return None

    def _open_channel(
        self, message: Message, config: phx.JoinConfig, project_id: UUID | None, level: Level
    ) -> Channel:
        topic = message.topic
        key: PresenceKey = ProjectChannel(project_id) if project_id else TopicChannel(topic)
        hub = self._gateway.hub
        view = ChannelView(topic, self.vsn, self.id, self_broadcast=config.broadcast.self_)
        subscription = hub.subscribe(self, key, view, level=level)
        hub.go_live(subscription)
        presence_key = config.presence.key or (
            self.connection_id if self.user_id == ANONYMOUS else str(self.user_id)
        )
        channel = Channel(topic, message.join_ref, key, config, subscription, presence_key)
        self._channels[topic] = channel
        self._subscriptions[key] = subscription
        return channel

    def _watch(
        self,
        channel: Channel,
        bindings: tuple[Binding, ...],
        project_id: UUID | None,
        basis: ResumeBasis | None,
    ) -> None:
        """Start the channel's changes (after replaying the history, when asked to
        resume): nothing awaits between the replay and going live, so nothing is
        missed or sent twice."""
        resume = channel.config.resume
        replay: list[Change] = []
        after: Position | None = None
        resumed: str | None = None
        if resume is not None:
            if project_id is None:
                resumed = "resume needs a channel named project:<uuid>"
            else:
                replay, after, resumed = self._replay(project_id, resume.since, basis)
        hub = self._gateway.hub
        channel.bindings = len(bindings)
        by_table: dict[str, Subscription] = {}
        for table in sorted(frozenset().union(*(b.tables for b in bindings))):
            view = TableView(channel.topic, self.vsn, table, bindings)
            subscription = hub.subscribe(
                self, TableChannel(table), view, index_keys=view.index_keys()
            )
            hub.go_live(subscription, after=after)
            channel.tables.append(subscription)
            by_table[table] = subscription
        self._system(channel, "postgres_changes", "ok", SUBSCRIBED)
        if resume is not None:
            if resumed is not None:
                self._system(channel, "resume", "error", resumed)
            else:
                self._system(channel, "resume", "ok", f"resumed after {resume.since}")
        for change in replay:
            if change.table in by_table:
                hub.send_to(by_table[change.table], change)
        self._gateway.outbox.flush()

    def _replay(
        self, project_id: UUID, since_text: str, basis: ResumeBasis | None
    ) -> tuple[list[Change], Position | None, str | None]:
        """The project's changes after `since` that the user could read when each was
        committed, and the position the history reached (what live delivery continues
        after), or why none can be replayed."""
        history = self._gateway.history
        since = Position.parse(since_text)
        if since is None:
            return [], None, f"{since_text!r} is not a position this gateway gave out"
        if not history.covers(project_id, since):
            return (
                [],
                None,
                (
                    f"the changes after {since_text} are no longer all kept "
                    "(or were given out before a restart)"
                ),
            )
        if basis is None:
            return (
                [],
                None,
                ("the change feed is behind: cannot tell what you could read since then"),
            )
        entries = history.after(project_id, since)
        plan = plan_replay(self.user_id, basis.acl, basis.seen, entries)
        if plan.refused is not None:
            return [], None, plan.refused
        return plan.entries, entries[-1].position if entries else None, None

    async def _project_access(self, project_id: UUID) -> ResumeBasis:
        """The project's access list, and the snapshot it was read in (what a resume
        decides from, once a fence shows the history holds all that snapshot saw)."""
        async with self._gateway.pool.acquire() as conn:
            seen, row = await queries.project_access_row(conn, project_id)
        return ResumeBasis(seen, Acl.of(row))

    async def _send_presence_state(self, channel: Channel) -> None:
        """The channel's state, shared with its other joiners of the window; only the
        message around it (topic, join_ref) is this channel's."""

        def receive(state: bytes) -> None:
            if self._channels.get(channel.topic) is not channel:
                return
            channel.subscription.presence = True
            payload = orjson.Fragment(state)
            self._send(
                Message(channel.topic, Event.PRESENCE_STATE, payload, None, channel.join_ref)
            )

        states = self._gateway.presence_states
        await states.deliver(channel.key, "phoenix", STATE_CODEC, receive)

    def _drop(self, channel: Channel) -> None:
        for subscription in channel.tables:
            self._gateway.hub.unsubscribe(subscription)
        self._gateway.hub.unsubscribe(channel.subscription)
        self._leave_presence(channel.subscription)
        if self._channels.get(channel.topic) is channel:
            del self._channels[channel.topic]
        if self._subscriptions.get(channel.key) is channel.subscription:
            del self._subscriptions[channel.key]

    def _shut_channel(self, channel: Channel, extension: str, message: str) -> None:
        """End a channel as Supabase does: a `system` error, then `phx_close`."""
        self._drop(channel)
        self._system(channel, extension, "error", message)
        self._send(phx.close(channel.topic, channel.join_ref))

    # The hub's hooks

    def ended(self, subscription: Subscription, message: str) -> None:
        for channel in list(self._channels.values()):
            if channel.subscription is subscription:
                self._shut_channel(channel, "system", message)

    def lost(self, subscription: Subscription, loss: Loss, message: str) -> None:
        """Supabase has no way to say so but a `system` message: changes may be missing
        (a channel's presence subscription misses nothing: presence is not a change)."""
        if not isinstance(subscription.key, TableChannel):
            return
        for channel in self._channels.values():
            if subscription in channel.tables:
                text = (
                    f"changes to {subscription.key.table} may have been missed "
                    f"({loss.value}): {message}"
                )
                self._system(channel, "postgres_changes", "error", text)

    # Events

    async def _refresh(self, channel: Channel, message: Message) -> None:
        token = phx.parse_payload(phx.AccessTokenPayload, message.payload, "access_token")
        if token.access_token == self._token and not self._token_expired:
            return
        refusal = await self._authenticate(token.access_token)
        if refusal is not None:
            self._shut_channel(channel, "system", refusal[1])

    def _broadcast(self, channel: Channel, message: Message) -> None:
        sent = phx.parse_payload(phx.Broadcast, message.payload, "broadcast")
        if isinstance(channel.key, ProjectChannel) and channel.subscription.level < Level.WRITE:
            # What reaches a project's editors comes from those who may edit it.
            self._reply_error(message, "broadcast in a project's channel needs write access")
            return
        item = Broadcast(channel.topic, self.id, sent)
        self._gateway.hub.announce(channel.key, item)
        if channel.config.broadcast.ack:
            self._reply_ok(message)

    async def _presence(self, channel: Channel, message: Message) -> None:
        push = phx.parse_payload(phx.PresencePush, message.payload, "presence")
        subscription = channel.subscription
        if push.event == "untrack":
            self._leave_presence(subscription)
            self._reply_ok(message)
            return
        refused = self._presence_too_large(push.payload)
        if refused is not None:
            self._reply_error(message, refused)
            return
        if subscription.joined:
            self._queue_presence(channel.key, push.payload)
            self._reply_ok(message)
            return
        presence = self._gateway.presence
        subscription.joined = True
        await presence.join(
            channel.key,
            self.user_id,
            self.connection_id,
            push.payload,
            key=channel.presence_key,
            name=self.display_name,
        )
        if self._channels.get(channel.topic) is not channel or not subscription.joined:
            await presence.leave(channel.key, self.connection_id)  # it ended meanwhile
            return
        self._reply_ok(message)


def _label(event: str) -> str:
    """A metrics label: the event's name when it is one of the protocol's."""
    return event if event in KNOWN_EVENTS else "unknown"


def _refused_binary(raw: bytes) -> Message | None:
    """A refused binary broadcast's envelope, when it is small enough to decode."""
    if len(raw) > REFUSED_DECODE_BYTES:
        return None
    try:
        return phx.decode_binary(raw)
    except PhoenixError:
        return None


def _error(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


def _token_problem(error: TokenError) -> str:
    if isinstance(error, TokenExpired):
        return "Token has expired 0 seconds ago"
    return f"Received an invalid access token from client: {error}"


def _project_of(topic: str) -> UUID | None:
    """The project a topic names (None: a channel of no project).

    Raises PhoenixError for a `project:` topic that does not spell a project's id the
    one way PostgreSQL writes it: other spellings (upper case, no hyphens, braces,
    `urn:uuid:`) would be other topics, and so other channels, of one project."""
    name = phx.channel_name(topic)
    if not name.startswith(phx.PROJECT_CHANNEL_PREFIX):
        return None
    spelled = name.removeprefix(phx.PROJECT_CHANNEL_PREFIX)
    try:
        project_id = UUID(spelled)
    except ValueError:
        raise PhoenixError(
            f"{name!r}: a project channel is named project:<the project's id>"
        ) from None
    if str(project_id) != spelled:
        raise PhoenixError(
            f"{name!r}: name the project by its id as PostgreSQL writes it: "
            f"{phx.PROJECT_CHANNEL_PREFIX}{project_id}"
        )
    return project_id


def _bindings(
    params: list[dict[str, Any]], limits: FilterLimits
) -> tuple[tuple[Binding, ...], str | None]:
    """The channel's bindings, or (none and) the first one's problem: Supabase serves
    a channel's bindings all or none."""
    bindings = []
    for raw in params:
        try:
            bindings.append(parse_binding(raw, limits))
        except BindingError as error:
            return (), str(error)
    return tuple(bindings), None
