"""Hostile clients: a process of their own (`python -m loadtest.hostile_clients`), driven
over stdio like the editors (loadtest.editors), so their CPU is not the editors'.

Each connection runs one pattern at the gateway's configured limits, with users of its
own (or the anon key), never as a member of the editors' project:

- `filters`: Supabase joins carrying `SITEBUILDER_MAX_BINDINGS_PER_JOIN` bindings on the
  tables the editors' writes touch (wireframes, version_history), each filter
  `SITEBUILDER_MAX_FILTER_CHARS` long: `in` lists of `SITEBUILDER_MAX_FILTER_IN_VALUES`
  ids (indexed by the gateway) and, on version_history in every other channel,
  `SITEBUILDER_MAX_FILTER_CONDITIONS` conditions that hold for the editors' rows (every
  change is checked against those); as many channels as
  `SITEBUILDER_MAX_BINDINGS_PER_CONNECTION` allows, joined in one burst, then the oldest
  left and another joined as fast as `SITEBUILDER_JOINS_PER_SECOND` allows (a join
  counts once per binding); first, each limit probed by one (a binding too many for
  the join or for the connection, a filter a character too long or a condition too
  many, an `in` list a value too long);
- `churn`: join/leave churn at the join rate: native `subscribe` (with snapshot) /
  `unsubscribe` of the user's own project and a `subscribe` of the editors' project
  (refused: not shared); Supabase `phx_join`/`phx_leave` of `project:<own>` (presence
  on), of the editors' project (refused) and of a plain topic;
- `presence`: presence churn with metas of exactly `SITEBUILDER_MAX_PRESENCE_META_BYTES`
  at `SITEBUILDER_MESSAGES_PER_SECOND`: native `presence.update` in a project the
  presence users share, Supabase `track`/`untrack` in its `project:` channel, and
  anon-key `track`/`untrack` in a lobby topic; every 25th meta a byte over the limit;
- `malformed`: at the message rate, on both protocols (Supabase ones with the anon
  key): frames a byte over `SITEBUILDER_MAX_FRAME_BYTES`, bad JSON, unknown types and
  events, fields of the wrong type, non-objects, bad binary frames;
- `rpc`: RPC floods at the message rate: `project.get_with_relations` of its own
  project and of the editors' (not found), `project.list`, `analytics.get_project_stats`,
  `version.get_by_entity`, and `wireframe.update` of its own wireframes with a fresh
  `idempotency_key` (then the same key again: answered from the stored result);
- unauthenticated: native connections that never send `auth`, from an address of their
  own (127.0.0.2 when the gateway is on loopback), up to the per-address cap and a few
  more (refused with 4009); each closed at the auth timeout (4001) comes back.

Every connection keeps at most one second of frames unanswered (it holds back a tick
otherwise: the gateway handles a connection's frames one at a time), sends at most
`SITEBUILDER_MAX_BYTES_PER_SECOND` (burst `SITEBUILDER_BYTE_BURST`: a tick waits for
the budget, as the gateway would stop reading past it; `malformed` is the pattern it
slows, its 1 MiB frames taking most of the budget), reads everything
the gateway sends, answers pings, and counts: frames sent by kind, replies, refusals by
code (`native/<code>`, `phoenix/<reason class>`), pushes, and closes by code.

The first line on stdin is the job (see `Job`); then `{"cmd": "stop"}`. Events on
stdout: `running` (every connection set up: connected, signed in, its initial joins
answered), `result` (the counts, then the process exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from gateway.edge.limits import TokenBucket
from loadtest.editors import commands, emit, wait_until
from loadtest.fragments import Reassembly

CONNECT_TIMEOUT = 30.0
SETUP_TIMEOUT = 120.0  # a burst of max-size joins on a busy gateway
PROBE_EVERY = 25
RECONNECT_DELAY = 1.0
AUTH_TIMEOUT_CLOSE = 4001
PHOENIX_PATH = "/realtime/v1/websocket"

Frame = tuple[str, bytes, bool, bool]  # kind, data, binary, a reply is expected


@dataclass(frozen=True)
class Limits:
    """The gateway's limits the patterns run at (gateway.settings names, lower case)."""

    max_frame_bytes: int = 1_048_576
    messages_per_second: float = 50.0
    message_burst: int = 100
    max_bytes_per_second: int = 1_048_576
    byte_burst: int = 4_194_304
    max_subscriptions: int = 100
    joins_per_second: float = 10.0
    join_burst: int = 100
    max_bindings_per_join: int = 32
    max_bindings_per_connection: int = 100
    max_filter_chars: int = 4096
    max_filter_conditions: int = 4
    max_filter_in_values: int = 100
    presence_updates_per_second: float = 20.0
    max_presence_meta_bytes: int = 2048
    max_unauthenticated_per_address: int = 500
    auth_timeout_seconds: float = 5.0


@dataclass
class Plan:
    """One hostile connection: its pattern, protocol and what it may use."""

    pattern: str
    protocol: str  # "native" | "phoenix"
    token: str  # a user's token, or the anon key
    anonymous: bool = False
    project_id: str = ""  # its user's own project
    wireframes: list[str] = field(default_factory=list)  # of that project
    room: str = ""  # the project the presence users share (presence)


@dataclass
class Job:
    url: str  # the gateway's websocket URL (native protocol)
    limits: dict[str, Any]
    editors_project: str
    connections: list[dict[str, Any]]
    unauthenticated: int = 0  # connections that never sign in (0: none)
    unauthenticated_address: str | None = None  # source address for them


@dataclass
class Tally:
    """What the connections of one pattern did and got."""

    connections: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    replies: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    pushes: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    held_back: int = 0  # ticks skipped: a second of frames still unanswered
    held_for_bytes: int = 0  # ticks delayed: past SITEBUILDER_MAX_BYTES_PER_SECOND
    reconnects: int = 0
    seconds: float = 0.0  # connection-seconds of paced sending, all its connections
    paced: int = 0  # frames sent then (the setup's not counted)
    close_reasons: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "connect_failures": dict(self.connect_failures),
            "frames_sent": sum(self.frames.values()),
            "frames_by_kind": dict(self.frames),
            "mib_sent": round(self.bytes_sent / 2**20, 1),
            "replies": self.replies,
            "refusals": dict(self.refusals.most_common()),
            "pushes": dict(self.pushes.most_common()),
            "closes": dict(self.closes.most_common()),
            "close_reasons": dict(self.close_reasons.most_common(10)),
            "held_back": self.held_back,
            "held_for_bytes": self.held_for_bytes,
            "reconnects": self.reconnects,
            "frames_per_s_each": round(self.paced / self.seconds, 1) if self.seconds else None,
        }


def phoenix_refusal(payload: Any) -> str:
    """A class for a Supabase refusal (its `reason` is prose; the class is the limit or
    the kind of problem it names)."""
    response = payload.get("response", {}) if isinstance(payload, dict) else {}
    if not isinstance(response, dict):
        return "other"
    code = response.get("code")
    if isinstance(code, str):
        return code
    reason = response.get("reason", "")
    return reason_class(reason if isinstance(reason, str) else "")


REASONS = [
    ("SITEBUILDER_JOINS_PER_SECOND", "rate_limited"),
    ("SITEBUILDER_MAX_SUBSCRIPTIONS", "too_many_subscriptions"),
    ("SITEBUILDER_MAX_BINDINGS_PER_JOIN", "too_many_bindings"),
    ("SITEBUILDER_MAX_BINDINGS_PER_CONNECTION", "too_many_bindings_held"),
    ("SITEBUILDER_MAX_FILTER_CHARS", "filter_too_long"),
    ("SITEBUILDER_MAX_FILTER_CONDITIONS", "too_many_conditions"),
    ("SITEBUILDER_MAX_FILTER_IN_VALUES", "too_many_in_values"),
    ("SITEBUILDER_MAX_PRESENCE_META_BYTES", "presence_too_large"),
    ("SITEBUILDER_MAX_PRESENCE_KEY_CHARS", "presence_key_too_long"),
    ("does not exist or is not shared", "forbidden"),
    ("unmatched topic", "unmatched_topic"),
    ("unknown event", "unknown_event"),
    ("payload:", "bad_payload"),
    ("not valid JSON", "bad_json"),
    ("binary", "bad_binary"),
    ("frame", "bad_frame"),
    ("Token has expired", "token_expired"),
    ("Error parsing `filter`", "binding_error"),
    ("Unable to subscribe", "binding_error"),
    ("request failed", "request_failed"),
]


def reason_class(reason: str) -> str:
    for needle, name in REASONS:
        if needle in reason:
            return name
    return "other: " + reason[:60]


class Hostile(WSListener):
    """One hostile connection: sends what its pattern makes, reads and counts the rest."""

    def __init__(self, tally: Tally, protocol: str) -> None:
        self.tally = tally
        self.protocol = protocol
        self.transport: WSTransport | None = None
        self.inflight = 0
        self.closed: asyncio.Future[None] | None = None
        self.leaving = False
        self.close_code: int | None = None
        self.reassembly = Reassembly()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.closed = asyncio.get_running_loop().create_future()
        self.reassembly = Reassembly()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            code: int = frame.get_close_code().value
            self.close_code = code
            self.tally.closes[str(code)] += 1
            reason = frame.get_close_message() or b""
            self.tally.close_reasons[f"{code} {reason.decode(errors='replace')[:80]}"] += 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        message = self.reassembly.feed(frame)
        if message is None:
            return
        if message[0] == WSMsgType.TEXT:
            self.received(message[1])
        else:
            self.tally.pushes["binary"] += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.close_code is None and not self.leaving:
            self.tally.closes["dropped without a close frame"] += 1
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    @property
    def open(self) -> bool:
        return self.closed is not None and not self.closed.done()

    def received(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if self.protocol == "native":
            kind = message.get("type")
            if kind == "error":
                self.answered()
                self.tally.refusals[f"native/{message.get('code')}"] += 1
            elif kind in ("ok", "result"):
                self.answered()
                self.tally.replies += 1
            else:
                self.tally.pushes[str(kind)] += 1
            return
        if isinstance(message, list) and len(message) == 5:
            event, body = message[3], message[4]
        elif isinstance(message, dict):
            event, body = message.get("event"), message.get("payload")
        else:
            self.tally.pushes["?"] += 1
            return
        if event == "phx_reply":
            self.answered()
            if isinstance(body, dict) and body.get("status") == "error":
                self.tally.refusals[f"phoenix/{phoenix_refusal(body)}"] += 1
            else:
                self.tally.replies += 1
        elif event == "system" and isinstance(body, dict) and body.get("status") == "error":
            self.tally.refusals[f"phoenix/{reason_class(str(body.get('message', '')))}"] += 1
        else:
            self.tally.pushes[str(event)] += 1

    def answered(self) -> None:
        self.inflight = max(0, self.inflight - 1)

    def send(self, frame: Frame) -> None:
        kind, data, binary, expects_reply = frame
        if self.transport is None or not self.open:
            return
        self.transport.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, data)
        self.tally.frames[kind] += 1
        self.tally.bytes_sent += len(data)
        if expects_reply:
            self.inflight += 1

    def close(self) -> None:
        self.leaving = True
        if self.transport is not None and self.open:
            self.transport.send_close()
            self.transport.disconnect()


# Frames


class Refs:
    def __init__(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> str:
        return str(next(self._next))


def native(kind: str, frame: dict[str, Any], refs: Refs) -> Frame:
    return (kind, orjson.dumps({**frame, "ref": refs()}), False, True)


def phoenix(
    kind: str, topic: str, event: str, payload: Any, refs: Refs, join_ref: str | None = None
) -> Frame:
    data = orjson.dumps([join_ref, refs(), topic, event, payload])
    return (kind, data, False, True)


def padded(prefix: bytes, suffix: bytes, size: int) -> bytes:
    """`prefix` + x… + `suffix`, `size` bytes in all."""
    return prefix + b"x" * max(0, size - len(prefix) - len(suffix)) + suffix


def meta_of(size: int, seq: int) -> dict[str, Any]:
    """A presence meta of exactly `size` bytes as JSON (as the gateway measures it)."""
    base = {"page": f"p{seq}", "pad": ""}
    room = size - len(orjson.dumps(base))
    return {**base, "pad": "x" * max(0, room)}


TABLE_COLUMNS = {
    # table: (the column of its `in` list, a text column to pad with, an int column)
    "wireframes": ("id", "title", "version"),
    "version_history": ("entity_id", "message", "version_number"),
}


def in_filter(table: str, ids: list[str], limits: Limits, values: int, chars: int) -> str:
    """`column=in.(…)` with `values` ids (as many as fit), padded to `chars` with a
    text condition that holds for nearly every row."""
    column, text, _ = TABLE_COLUMNS[table]
    pool = ids + [str(uuid.uuid4()) for _ in range(max(0, values - len(ids)))]
    chosen = pool[:values]
    while chosen and len(f"{column}=in.({','.join(chosen)})") > chars:
        chosen.pop()
    head = f"{column}=in.({','.join(chosen)})"
    pad = f",{text}=neq."
    if len(head) + len(pad) + 1 <= chars:
        head += pad + "x" * (chars - len(head) - len(pad))
    return head


def conditions_filter(table: str, chars: int, conditions: int) -> str:
    """`conditions` conditions in `chars`, each true for the editors' rows: the gateway
    has no value to index such a binding by."""
    _, text, number = TABLE_COLUMNS[table]
    head = ",".join([f"{number}=gte.0"] * max(0, conditions - 1))
    pad = f"{text}=neq."
    last = pad + "x" * max(1, chars - len(head) - len(pad) - 1)
    return f"{head},{last}" if head else last


def bindings(limits: Limits, ids: list[str], *, scanned: bool) -> list[dict[str, Any]]:
    """A join's `postgres_changes`: the most bindings allowed, the longest filters,
    alternately on wireframes and version_history, `in` lists; `scanned`: those on
    version_history made of conditions only."""
    made = []
    for index in range(limits.max_bindings_per_join):
        table = ("wireframes", "version_history")[index % 2]
        chars = limits.max_filter_chars
        if scanned and index % 2 == 1:
            text = conditions_filter(table, chars, limits.max_filter_conditions)
        else:
            text = in_filter(table, ids, limits, limits.max_filter_in_values, chars)
        made.append({"event": "*", "schema": "public", "table": table, "filter": text})
    return made


# Joins that break one limit by one: `bindings` is refused; the others are joined with
# their one binding refused (a `system` error), and left at once.
PROBES = ("bindings", "chars", "values", "conditions")


def probe_bindings(limits: Limits, ids: list[str], probe: str) -> list[dict[str, Any]]:
    table, chars, values = "wireframes", limits.max_filter_chars, limits.max_filter_in_values
    if probe == "bindings":
        return bindings(limits, ids, scanned=False) + bindings(limits, ids, scanned=False)[:1]
    if probe == "conditions":
        text = conditions_filter(table, chars, limits.max_filter_conditions + 1)
    elif probe == "chars":
        text = in_filter(table, ids, limits, values, chars + 1)
    else:  # room for the values: their number is the problem
        text = in_filter(table, ids, limits, values + 1, max(chars, 40 * (values + 1)))
    return [{"event": "*", "schema": "public", "table": table, "filter": text}]


def join_payload(
    postgres_changes: list[dict[str, Any]], *, presence: bool = False
) -> dict[str, Any]:
    return {
        "config": {
            "broadcast": {"self": False, "ack": False},
            "presence": {"key": "", "enabled": presence},
            "postgres_changes": postgres_changes,
            "private": False,
        },
        "access_token": None,
    }


# Patterns: each yields the frames of one tick (at `rate` ticks per second) after
# sending its `setup` frames at once and waiting for their replies.


class Pattern:
    rate = 1.0

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        self.plan = plan
        self.limits = limits
        self.editors_project = editors_project
        self.index = index
        self.refs = Refs()

    def setup(self) -> list[Frame]:
        if self.plan.protocol == "native":
            return [native("auth", {"type": "auth", "token": self.plan.token}, self.refs)]
        return []

    def ticks(self) -> Iterator[list[Frame]]:
        raise NotImplementedError


class Filters(Pattern):
    """Max-size joins on wireframes and version_history, as many bindings held as
    allowed, churned as fast as the join rate allows; each limit probed by one."""

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        super().__init__(plan, limits, editors_project, index)
        per_join = limits.max_bindings_per_join
        self.rate = limits.joins_per_second / per_join
        self.held = max(
            1, min(limits.max_subscriptions, limits.max_bindings_per_connection // per_join)
        )
        ids = list(plan.wireframes)
        self.indexed = join_payload(bindings(limits, ids, scanned=False))
        self.scanned = join_payload(bindings(limits, ids, scanned=True))
        self.probes = {p: join_payload(probe_bindings(limits, ids, p)) for p in PROBES}
        self.open: deque[tuple[str, str]] = deque()  # (topic, join_ref)
        self.joins = 0

    def _topic(self) -> tuple[str, str]:
        self.joins += 1
        return f"realtime:hostile-{self.index}-{self.joins}", str(self.joins)

    def join(self) -> list[Frame]:
        """Leave the oldest channel when holding all that is allowed; join another."""
        frames: list[Frame] = []
        if len(self.open) >= self.held:
            topic, join_ref = self.open.popleft()
            frames.append(phoenix("phx_leave", topic, "phx_leave", {}, self.refs, join_ref))
        topic, join_ref = self._topic()
        if self.joins % 2:
            payload, kind = self.scanned, "phx_join (filters checked on every change)"
        else:
            payload, kind = self.indexed, "phx_join (indexed in lists)"
        frames.append(phoenix(kind, topic, "phx_join", payload, self.refs, join_ref))
        self.open.append((topic, join_ref))
        return frames

    def probe(self, probe: str) -> list[Frame]:
        topic, join_ref = self._topic()
        kind = f"phx_join over the limit ({probe})"
        frames = [phoenix(kind, topic, "phx_join", self.probes[probe], self.refs, join_ref)]
        if probe != "bindings":  # joined, its binding refused
            frames.append(phoenix("phx_leave", topic, "phx_leave", {}, self.refs, join_ref))
        return frames

    def probe_held(self) -> list[Frame]:
        """One full join more than the connection may hold (refused), when it would be."""
        limits = self.limits
        if (self.held + 1) * limits.max_bindings_per_join <= limits.max_bindings_per_connection:
            return []
        topic, join_ref = self._topic()
        kind = "phx_join over the limit (held)"
        return [phoenix(kind, topic, "phx_join", self.indexed, self.refs, join_ref)]

    def setup(self) -> list[Frame]:
        frames = [frame for probe in PROBES for frame in self.probe(probe)]
        frames += [frame for _ in range(self.held) for frame in self.join()]
        return frames + self.probe_held()

    def ticks(self) -> Iterator[list[Frame]]:
        while True:
            yield self.join()


class Churn(Pattern):
    """Subscribe/unsubscribe (join/leave) at the join rate."""

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        super().__init__(plan, limits, editors_project, index)
        own, theirs = plan.project_id, editors_project
        # (kind, topic, event, payload, join_ref): a native frame when topic is "".
        self.cycle: list[tuple[str, str, str, Any, str]]
        if plan.protocol == "native":
            self.cycle = [
                ("subscribe own (snapshot)", "", "", {"type": "subscribe", "project_id": own}, ""),
                ("unsubscribe own", "", "", {"type": "unsubscribe", "project_id": own}, ""),
                (
                    "subscribe the editors' project",
                    "",
                    "",
                    {"type": "subscribe", "project_id": theirs},
                    "",
                ),
            ]
            joins = 2
        else:
            topic_own = f"realtime:project:{own}"
            topic_theirs = f"realtime:project:{theirs}"
            topic_plain = f"realtime:churn-{index}"
            plain = join_payload([])
            with_presence = join_payload([], presence=True)
            self.cycle = [
                ("phx_join project:own", topic_own, "phx_join", with_presence, "1"),
                ("phx_leave", topic_own, "phx_leave", {}, "1"),
                ("phx_join project:editors'", topic_theirs, "phx_join", plain, "2"),
                ("phx_join topic", topic_plain, "phx_join", plain, "3"),
                ("phx_leave", topic_plain, "phx_leave", {}, "3"),
            ]
            joins = 3
        # Frames per second such that the joins among them come at the join rate.
        self.rate = limits.joins_per_second * len(self.cycle) / joins

    def ticks(self) -> Iterator[list[Frame]]:
        for kind, topic, event, payload, join_ref in itertools.cycle(self.cycle):
            if not topic:
                yield [native(kind, payload, self.refs)]
            else:
                yield [phoenix(kind, topic, event, payload, self.refs, join_ref)]


class Presence(Pattern):
    """Metas of the size limit at the message rate: updates, or track/untrack."""

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        super().__init__(plan, limits, editors_project, index)
        self.rate = limits.messages_per_second
        if plan.protocol == "native":
            self.topic = ""
        elif plan.anonymous:
            self.topic = "realtime:hostile-lobby"
        else:
            self.topic = f"realtime:project:{plan.room}"

    def setup(self) -> list[Frame]:
        if self.plan.protocol == "native":
            subscribe = {"type": "subscribe", "project_id": self.plan.room, "snapshot": False}
            return [*super().setup(), native("subscribe room", subscribe, self.refs)]
        payload = join_payload([], presence=True)
        return [phoenix("phx_join (presence)", self.topic, "phx_join", payload, self.refs, "1")]

    def meta(self, seq: int) -> tuple[str, dict[str, Any]]:
        size = self.limits.max_presence_meta_bytes
        if seq % PROBE_EVERY == 0:
            return "meta over the limit", meta_of(size + 1, seq)
        return "meta at the limit", meta_of(size, seq)

    def ticks(self) -> Iterator[list[Frame]]:
        for seq in itertools.count(1):
            kind, meta = self.meta(seq)
            if self.plan.protocol == "native":
                frame = {"type": "presence.update", "project_id": self.plan.room, "meta": meta}
                yield [native(f"presence.update ({kind})", frame, self.refs)]
            elif seq % 2:
                push = {"type": "presence", "event": "track", "payload": meta}
                yield [phoenix(f"track ({kind})", self.topic, "presence", push, self.refs, "1")]
            else:
                push = {"type": "presence", "event": "untrack"}
                yield [phoenix("untrack", self.topic, "presence", push, self.refs, "1")]


class Malformed(Pattern):
    """Oversized and malformed frames at the message rate."""

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        super().__init__(plan, limits, editors_project, index)
        self.rate = limits.messages_per_second
        over = limits.max_frame_bytes + 1
        if plan.protocol == "native":
            self.cycle: list[Frame] = [
                ("oversized", padded(b'{"type":"ping","pad":"', b'"}', over), False, True),
                ("bad JSON", b'{"type": "ping", "ref": ', False, True),
                ("unknown type", b'{"type": "explode", "ref": "u"}', False, True),
                ("wrong field type", b'{"type": "subscribe", "project_id": 42}', False, True),
                ("wrong field type", b'{"type": "rpc", "method": ["x"], "params": 1}', False, True),
                ("not an object", b"[1, 2, 3]", False, True),
                ("binary frame", bytes(range(64)), True, True),
                (
                    "wrong field type",
                    b'{"type": "presence.update", "project_id": "x", "meta": "y"}',
                    False,
                    True,
                ),
            ]
        else:
            self.cycle = [
                (
                    "oversized",
                    padded(b'[null,"o","phoenix","heartbeat",{"pad":"', b'"}]', over),
                    False,
                    True,
                ),
                ("bad JSON", b'[null, "1", "phoenix", "heartbeat", {', False, True),
                ("not a frame", b'{"topic": "phoenix"}', False, True),
                ("unknown event", b'[null, "2", "phoenix", "explode", {}]', False, True),
                ("unmatched topic", b'["9", "3", "realtime:nowhere", "presence", {}]', False, True),
                (
                    "wrong field type",
                    b'["1", "4", "realtime:malformed", "phx_join", {"config": "x"}]',
                    False,
                    True,
                ),
                ("binary frame", b"\x07" + bytes(range(40)), True, True),
                ("truncated binary frame", b"\x03\x05\x05\x05\x05\x05\x01ab", True, True),
            ]

    def ticks(self) -> Iterator[list[Frame]]:
        for frame in itertools.cycle(self.cycle):
            yield [frame]


class Rpcs(Pattern):
    """Reads and writes with idempotency keys at the message rate."""

    def __init__(self, plan: Plan, limits: Limits, editors_project: str, index: int) -> None:
        super().__init__(plan, limits, editors_project, index)
        self.rate = limits.messages_per_second

    def call(self, kind: str, method: str, params: dict[str, Any], key: str | None = None) -> Frame:
        frame: dict[str, Any] = {"type": "rpc", "method": method, "params": params}
        if key is not None:
            frame["idempotency_key"] = key
        return native(kind, frame, self.refs)

    def ticks(self) -> Iterator[list[Frame]]:
        own = {"project_id": self.plan.project_id}
        wireframes = self.plan.wireframes
        for seq in itertools.count(1):
            wireframe = wireframes[seq % len(wireframes)]
            key = f"hostile-{self.index}-{seq}"
            patch = {"id": wireframe, "patch": {"layout": {"hostile": seq}}}
            by_entity = {"entity_type": "wireframes", "entity_id": wireframe, "limit": 5}
            yield [self.call("get_with_relations own", "project.get_with_relations", own)]
            yield [self.call("wireframe.update (new key)", "wireframe.update", patch, key)]
            theirs = {"project_id": self.editors_project}
            yield [self.call("get_with_relations editors'", "project.get_with_relations", theirs)]
            yield [self.call("wireframe.update (same key)", "wireframe.update", patch, key)]
            yield [self.call("project.list", "project.list", {"limit": 50})]
            yield [self.call("analytics.get_project_stats", "analytics.get_project_stats", own)]
            yield [self.call("version.get_by_entity", "version.get_by_entity", by_entity)]


PATTERNS: dict[str, type[Pattern]] = {
    "filters": Filters,
    "churn": Churn,
    "presence": Presence,
    "malformed": Malformed,
    "rpc": Rpcs,
}


def phoenix_url(url: str, token: str) -> str:
    return f"{url.rstrip('/')}{PHOENIX_PATH}?apikey={token}&vsn=2.0.0"


class Crowd:
    """Every hostile connection of this process."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.limits = Limits(**job.limits)
        self.tallies: dict[str, Tally] = {}
        self.sockets: list[Hostile] = []
        self.patterned: list[Hostile] = []  # the connections running a pattern
        self.tasks: list[asyncio.Task[None]] = []
        self.running = True
        self.ready: list[asyncio.Future[None]] = []
        self.process = psutil.Process()
        self.cpu_start = sum(self.process.cpu_times()[:2])
        self.started = time.monotonic()

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    async def connect(self, socket: Hostile, url: str, **kwargs: Any) -> bool:
        try:
            await asyncio.wait_for(
                ws_connect(lambda: socket, url, max_frame_size=64 << 20, **kwargs),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, RuntimeError, ValueError) as error:
            key = f"{type(error).__name__}: {error}"[:100]
            socket.tally.connect_failures[key] += 1
            return False
        return True

    async def run_one(self, index: int, plan: Plan, ready: asyncio.Future[None]) -> None:
        tally = self.tally(plan.pattern)
        tally.connections += 1
        pattern = PATTERNS[plan.pattern](plan, self.limits, self.job.editors_project, index)
        socket = Hostile(tally, plan.protocol)
        self.sockets.append(socket)
        self.patterned.append(socket)
        url = self.job.url if plan.protocol == "native" else phoenix_url(self.job.url, plan.token)
        try:
            if not await self.connect(socket, url):
                return
            for frame in pattern.setup():
                socket.send(frame)
            await wait_until(lambda: not (socket.inflight and socket.open), SETUP_TIMEOUT)
        finally:
            if not ready.done():
                ready.set_result(None)
        loop = asyncio.get_running_loop()
        interval = 1.0 / pattern.rate
        budget = max(1, int(self.limits.messages_per_second))
        ticks = pattern.ticks()
        # The gateway's byte budget: past it the gateway stops reading (TCP would hold
        # the frames here), so a tick waits for it and the pattern runs at the limit.
        sending = TokenBucket(self.limits.max_bytes_per_second, self.limits.byte_burst)
        pending: list[Frame] | None = None
        began = due = loop.time()
        try:
            while True:
                due += interval
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    due = loop.time()  # this process fell behind: do not burst to catch up
                if not self.running or not socket.open:
                    return
                if socket.inflight >= budget:
                    tally.held_back += 1  # the tick's frames are not even made
                    continue
                pending = pending or next(ticks)
                if sending.take(sum(len(frame[1]) for frame in pending)):
                    tally.held_for_bytes += 1
                    continue
                for frame in pending:
                    socket.send(frame)
                    tally.paced += 1
                pending = None
        finally:
            tally.seconds += loop.time() - began

    async def unauthenticated(self, count: int, address: str | None) -> None:
        tally = self.tally("unauthenticated")
        tally.connections = count

        async def hold() -> None:
            while self.running:
                socket = Hostile(tally, "native")
                self.sockets.append(socket)
                kwargs = {"local_addr": (address, 0)} if address else {}
                connected = await self.connect(socket, self.job.url, **kwargs)
                if connected:
                    assert socket.closed is not None
                    await socket.closed
                self.sockets.remove(socket)
                if not self.running:
                    return
                tally.reconnects += 1
                # Closed at the auth timeout: straight back; refused, or not connected:
                # a pause.
                timed_out = connected and socket.close_code == AUTH_TIMEOUT_CLOSE
                await asyncio.sleep(0.05 if timed_out else RECONNECT_DELAY * random.random())

        await asyncio.gather(*(hold() for _ in range(count)))

    async def start(self) -> None:
        for index, raw in enumerate(self.job.connections):
            ready = asyncio.get_running_loop().create_future()
            self.ready.append(ready)
            self.tasks.append(asyncio.create_task(self.run_one(index, Plan(**raw), ready)))
        if self.job.unauthenticated:
            count = self.job.unauthenticated
            self.tasks.append(
                asyncio.create_task(self.unauthenticated(count, self.job.unauthenticated_address))
            )
        if self.ready:
            await asyncio.wait(self.ready)
        self.started = time.monotonic()
        emit(
            "running",
            connected=sum(1 for s in self.patterned if s.open),
            setup_refusals={k: dict(t.refusals) for k, t in self.tallies.items()},
        )

    async def stop(self) -> None:
        self.running = False
        for socket in list(self.sockets):
            socket.close()
        await asyncio.sleep(0.5)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        emit(
            "result",
            patterns={name: tally.as_json() for name, tally in sorted(self.tallies.items())},
            seconds=time.monotonic() - self.started,  # since every connection was set up
            cpu_seconds=sum(self.process.cpu_times()[:2]) - self.cpu_start,
        )


def source_address(url: str, wanted: str | None) -> str | None:
    """The address unauthenticated connections come from: their own on loopback."""
    host = urlsplit(url).hostname or ""
    return wanted if wanted and host.startswith("127.") else None


async def run() -> None:
    logging.getLogger("picows").setLevel(logging.ERROR)  # its notes on write buffers
    reader = await commands()
    job = Job(**orjson.loads(await reader.readline()))
    job.unauthenticated_address = source_address(job.url, job.unauthenticated_address)
    crowd = Crowd(job)
    try:
        await crowd.start()
        while line := await reader.readline():
            if orjson.loads(line).get("cmd") == "stop":
                break
    finally:
        await crowd.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())
