"""Supabase Realtime's wire protocol (Phoenix channels), as @supabase/realtime-js speaks it.

Pure: bytes ↔ messages, the `phx_join` payload, and the payloads the server sends.
What was confirmed by reading realtime-js 2.119.1 (src/lib/serializer.ts,
RealtimeChannel.ts, RealtimePresence.ts) and supabase/realtime's channel tests:

- The socket URL carries `vsn`: "1.0.0" (the default when absent) frames are JSON
  objects `{topic, event, payload, ref, join_ref}`; "2.0.0" frames are JSON arrays
  `[join_ref, ref, topic, event, payload]`. Topics are `realtime:<channel name>`;
  the heartbeat goes to topic `phoenix`.
- With vsn 2.0.0 a client `broadcast` whose payload has a string `event` is sent as a
  binary frame, kind 3 ("user broadcast push"): `kind, len(join_ref), len(ref),
  len(topic), len(event), len(metadata), encoding` (one byte each), the five UTF-8
  strings, then the payload (encoding 1: JSON, 0: raw bytes). The server sends
  broadcasts back as kind 4 ("user broadcast"): `kind, len(topic), len(event),
  len(metadata), encoding`, the three strings, the payload; the client turns it into
  `{type: "broadcast", event, payload[, meta]}` on event `broadcast`.
- Replies are event `phx_reply`, payload `{status: "ok"|"error", response}`, echoing
  the request's `ref` and `join_ref`. The join's `ok` response is
  `{postgres_changes: [binding + {id}]}`: the client compares each binding, in order,
  with what it sent (`event` with `===`, schema/table/filter treating null and absent
  alike) and reports CHANNEL_ERROR on a mismatch; change pushes carry `ids` which it
  matches with `includes`, so ids are numbers both times.
- `phx_close` and `phx_error` must carry `ref` = the channel's join_ref (the client
  ignores them otherwise); pushes fanned out to many (changes, presence diffs,
  broadcasts) carry no refs, as Phoenix's fastlane sends them.
- Presence: `presence_state` `{key: {metas: [{phx_ref, ...meta}]}}`, then
  `presence_diff` `{joins, leaves}` of the same shape. The client applies joins
  before leaves, matching metas by `phx_ref`: a new meta must come with a new ref.
- Errors the server reports on a channel are `system` pushes
  `{extension, status, message, channel}` (channel: the name without `realtime:`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from protocol import jsontext
from protocol.jsontext import DEFAULT_MAX_DEPTH, REFUSED_DECODE_BYTES

TOPIC_PREFIX = "realtime:"
HEARTBEAT_TOPIC = "phoenix"
PROJECT_CHANNEL_PREFIX = "project:"

USER_BROADCAST_PUSH = 3
USER_BROADCAST = 4
BINARY_ENCODING = 0
JSON_ENCODING = 1


class Vsn(StrEnum):
    V1 = "1.0.0"
    V2 = "2.0.0"


class Event(StrEnum):
    JOIN = "phx_join"
    LEAVE = "phx_leave"
    REPLY = "phx_reply"
    CLOSE = "phx_close"
    ERROR = "phx_error"
    HEARTBEAT = "heartbeat"
    ACCESS_TOKEN = "access_token"
    BROADCAST = "broadcast"
    PRESENCE = "presence"
    PRESENCE_STATE = "presence_state"
    PRESENCE_DIFF = "presence_diff"
    POSTGRES_CHANGES = "postgres_changes"
    SYSTEM = "system"


Ref = str | int | None


class PhoenixError(ValueError):
    """A frame or payload the server refuses; answered, never a dropped connection.
    `request`: the refused message's envelope (payload left out), when it was read."""

    def __init__(self, reason: str, request: Message | None = None) -> None:
        super().__init__(reason)
        self.request = request


@dataclass(frozen=True, slots=True)
class Message:
    """One Phoenix message. `payload` is JSON, or (a binary broadcast) carries bytes."""

    topic: str
    event: str
    payload: Any
    ref: Ref = None
    join_ref: Ref = None


def parse_vsn(value: str | None) -> Vsn:
    """The protocol version of a socket URL's `vsn` (Phoenix: 1.0.0 when absent)."""
    if value is None:
        return Vsn.V1
    try:
        return Vsn(value)
    except ValueError:
        known = ", ".join(v.value for v in Vsn)
        raise PhoenixError(f"unsupported vsn {value!r}; supported: {known}") from None


# Decoding


def _ref(value: object, what: str) -> Ref:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise PhoenixError(f"{what} must be a string, a number or null")


def decode_text(data: str | bytes, vsn: Vsn, max_depth: int = DEFAULT_MAX_DEPTH) -> Message:
    """A text frame in the socket's version, or PhoenixError saying what is wrong."""
    try:
        obj: Any = jsontext.loads(data, max_depth)
    except orjson.JSONDecodeError as error:
        raise PhoenixError(f"frame is not valid JSON: {error}") from None
    except jsontext.TooDeep as error:
        envelope = _envelope(error.value, vsn)
        raise PhoenixError(f"frame refused: {error}", envelope) from None
    return _envelope(obj, vsn, payload=True)


_STRING = r'"(?:[^"\\]|\\.)*+"'
_REF = rf"(?:null|{_STRING}|-?\d{{1,18}})"
_V2_HEAD = re.compile(
    rf"\s*\[\s*({_REF})\s*,\s*({_REF})\s*,\s*({_STRING})\s*,\s*({_STRING})".encode()
)
_V1_FIELD = {
    name: re.compile(
        rf'"{name}"\s*:\s*({_STRING if name in ("topic", "event") else _REF})'.encode()
    )
    for name in ("topic", "event", "ref", "join_ref")
}


def refused_envelope(data: str | bytes, vsn: Vsn) -> Message | None:
    """The topic, event and refs of a frame refused unread (too large, too many), to
    answer it by its ref: decoded when small, otherwise read from the frame's first and
    last kilobyte (where realtime-js writes them), so refusing costs the same whatever
    the frame holds. None when they cannot be found."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) <= REFUSED_DECODE_BYTES:
        try:
            return _envelope(orjson.loads(raw), vsn)
        except (orjson.JSONDecodeError, PhoenixError):
            return None
    head, tail = raw[:1024], raw[-1024:]
    try:
        if vsn is Vsn.V2:
            match = _V2_HEAD.match(head)
            if match is None:
                return None
            join_ref, ref, topic, event = (orjson.loads(group) for group in match.groups())
        else:
            found = {}
            for name, pattern in _V1_FIELD.items():
                where = pattern.search(head) or pattern.search(tail)
                found[name] = orjson.loads(where.group(1)) if where else None
            topic, event, ref, join_ref = (
                found["topic"],
                found["event"],
                found["ref"],
                found["join_ref"],
            )
        if not isinstance(topic, str) or not isinstance(event, str):
            return None
        return Message(topic, event, {}, _ref(ref, "ref"), _ref(join_ref, "join_ref"))
    except (orjson.JSONDecodeError, PhoenixError):
        return None


def _envelope(obj: Any, vsn: Vsn, *, payload: bool = False) -> Message:
    """The message `obj` is in the socket's version (its payload only with `payload`)."""
    if vsn is Vsn.V2:
        if not isinstance(obj, list) or len(obj) != 5:
            raise PhoenixError("a vsn 2.0.0 frame is [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, body = obj
    else:
        if not isinstance(obj, dict):
            raise PhoenixError("a vsn 1.0.0 frame is {topic, event, payload, ref, join_ref}")
        join_ref, ref = obj.get("join_ref"), obj.get("ref")
        topic, event, body = obj.get("topic"), obj.get("event"), obj.get("payload", {})
    if not isinstance(topic, str) or not isinstance(event, str):
        raise PhoenixError("a frame needs a string topic and event")
    return Message(
        topic, event, body if payload else {}, _ref(ref, "ref"), _ref(join_ref, "join_ref")
    )


def decode_binary(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Message:
    """A binary frame: only the user broadcast push (kind 3) is a client's."""
    if not data:
        raise PhoenixError("empty binary frame")
    if data[0] != USER_BROADCAST_PUSH:
        raise PhoenixError(f"binary frame of kind {data[0]}: only kind 3 (broadcast) is accepted")
    if len(data) < 7:
        raise PhoenixError("binary broadcast frame shorter than its header")
    sizes = data[1:6]
    encoding = data[6]
    offset = 7
    parts: list[str] = []
    for size in sizes:
        chunk = data[offset : offset + size]
        if len(chunk) != size:
            raise PhoenixError("binary broadcast frame shorter than its header says")
        try:
            parts.append(chunk.decode())
        except UnicodeDecodeError:
            raise PhoenixError("binary broadcast frame header is not UTF-8") from None
        offset += size
    join_ref, ref, topic, user_event, metadata = parts
    body = data[offset:]
    payload: dict[str, Any] = {"type": "broadcast", "event": user_event}
    if encoding == JSON_ENCODING:
        try:
            payload["payload"] = jsontext.loads(body, max_depth)
        except orjson.JSONDecodeError:
            raise PhoenixError("binary broadcast payload is not valid JSON") from None
        except jsontext.TooDeep as error:
            raise PhoenixError(f"binary broadcast payload refused: {error}") from None
    elif encoding == BINARY_ENCODING:
        payload["payload"] = bytes(body)
    else:
        raise PhoenixError(f"unknown binary broadcast encoding {encoding}")
    if metadata:
        try:
            payload["meta"] = jsontext.loads(metadata, max_depth)
        except orjson.JSONDecodeError:
            raise PhoenixError("binary broadcast metadata is not valid JSON") from None
        except jsontext.TooDeep as error:
            raise PhoenixError(f"binary broadcast metadata refused: {error}") from None
    return Message(topic, Event.BROADCAST, payload, ref or None, join_ref or None)


# Encoding


def encode(message: Message, vsn: Vsn) -> bytes:
    """A text frame for a socket of version `vsn` (JSON payloads only)."""
    if vsn is Vsn.V2:
        return orjson.dumps(
            [message.join_ref, message.ref, message.topic, message.event, message.payload]
        )
    return orjson.dumps(
        {
            "topic": message.topic,
            "event": message.event,
            "payload": message.payload,
            "ref": message.ref,
            "join_ref": message.join_ref,
        }
    )


def encode_user_broadcast(
    topic: str, event: str, payload: JsonValue | bytes, meta: JsonValue | None = None
) -> bytes:
    """The binary (kind 4) broadcast a vsn 2.0.0 client decodes."""
    topic_bytes, event_bytes = topic.encode(), event.encode()
    meta_bytes = b"" if meta is None else orjson.dumps(meta)
    if isinstance(payload, bytes):
        encoding, body = BINARY_ENCODING, payload
    else:
        encoding, body = JSON_ENCODING, orjson.dumps(payload)
    for name, part in (("topic", topic_bytes), ("event", event_bytes), ("meta", meta_bytes)):
        if len(part) > 255:
            raise PhoenixError(f"broadcast {name} is over 255 bytes")
    header = struct.pack(
        "!BBBBB", USER_BROADCAST, len(topic_bytes), len(event_bytes), len(meta_bytes), encoding
    )
    return header + topic_bytes + event_bytes + meta_bytes + body


def broadcast_message(topic: str, broadcast: Broadcast) -> Message:
    """The text form of a broadcast (vsn 1.0.0 clients), as the fastlane sends it."""
    payload: dict[str, Any] = {
        "type": "broadcast",
        "event": broadcast.event,
        "payload": broadcast.payload,
    }
    if broadcast.meta is not None:
        payload["meta"] = broadcast.meta
    return Message(topic, Event.BROADCAST, payload)


def reply(request: Message, status: Literal["ok", "error"], response: Any) -> Message:
    return Message(
        request.topic,
        Event.REPLY,
        {"status": status, "response": response},
        request.ref,
        request.join_ref,
    )


def error_reply(request: Message, reason: str) -> Message:
    """Phoenix's error reply shape: `{reason}` (realtime-js joins its values)."""
    return reply(request, "error", {"reason": reason})


def system(
    topic: str,
    join_ref: Ref,
    *,
    extension: str,
    status: Literal["ok", "error"],
    message: str,
) -> Message:
    return Message(
        topic,
        Event.SYSTEM,
        {
            "extension": extension,
            "status": status,
            "message": message,
            "channel": channel_name(topic),
        },
        None,
        join_ref,
    )


def close(topic: str, join_ref: Ref) -> Message:
    """The end of a channel: its `ref` is the join_ref, or the client ignores it."""
    return Message(topic, Event.CLOSE, {}, join_ref, join_ref)


def channel_name(topic: str) -> str:
    return topic.removeprefix(TOPIC_PREFIX)


# Client payloads


class Payload(BaseModel):
    """Unknown fields are ignored, so newer clients keep working."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class BroadcastConfig(Payload):
    self_: bool = Field(False, alias="self")
    ack: bool = False


class PresenceConfig(Payload):
    key: str = ""
    # None: the join does not say (realtime-js before 2.15 never does); the gateway's
    # SITEBUILDER_SUPABASE_PRESENCE_DEFAULT decides.
    enabled: bool | None = None


class ResumeConfig(Payload):
    """Our extension (realtime-js has no positions): replay a `project:<uuid>` channel's
    changes after `since`, the `position` of the last change the client has."""

    since: str = Field(max_length=64)


class JoinConfig(Payload):
    broadcast: BroadcastConfig = BroadcastConfig()
    presence: PresenceConfig = PresenceConfig()
    postgres_changes: list[dict[str, JsonValue]] = []
    private: bool = False
    resume: ResumeConfig | None = None


class JoinPayload(Payload):
    config: JoinConfig = JoinConfig()
    access_token: str | None = None


class AccessTokenPayload(Payload):
    access_token: str = Field(min_length=1)


class Broadcast(Payload):
    """A client's broadcast: relayed to the channel's other members (and itself with
    `self`). The payload is JSON, or bytes from a binary frame of encoding 0."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    type: Literal["broadcast"] = "broadcast"
    event: str = Field(min_length=1, max_length=255)
    payload: JsonValue | bytes = None
    meta: JsonValue | None = None


class PresencePush(Payload):
    type: Literal["presence"] = "presence"
    event: Literal["track", "untrack"]
    payload: dict[str, JsonValue] = {}


M = TypeVar("M", bound=Payload)


def parse_payload(model: type[M], payload: object, what: str) -> M:
    """Validate a client payload, or PhoenixError naming the first problem."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        item = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in item["loc"]) or "payload"
        raise PhoenixError(f"bad {what} payload: {where}: {item['msg']}") from None
