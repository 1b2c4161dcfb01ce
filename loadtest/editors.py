"""Simulated editors: a process of its own (`python -m loadtest.editors`), driven over stdio.

The benchmark's clients must cost as little as possible, or the machine's second core
goes to them instead of the server being measured: picows (a Cython websocket client)
on uvloop, one orjson parse per frame and nothing else per frame but counting.

The driver writes one JSON object per line on stdin and reads one per line on stdout.
The first line is the job (see `Job`); then commands:

- `{"cmd": "interval"}`: report the latency histogram since the last interval (and this
  process's CPU, bytes received and client-bound deliveries since then), reset it;
- `{"cmd": "drop", "fraction": 0.3}`: abort that share of the connections (no close
  frame, as a dropped network does); their editors remember their last position;
- `{"cmd": "resume", "targets": {wireframe_id: seq}}`: reconnect the dropped editors
  with `subscribe {since}` and time how long until each has the given seqs;
- `{"cmd": "arm"}` / `{"cmd": "disarm"}`: open and close the failover window (its
  deliveries' latency is kept apart from the rest);
- `{"cmd": "recovery", "killed_at": t, "node": n, "timeout": s}`: a gateway worker was
  killed at `t` (wall clock): wait until every editor it held (those on node `n`, or
  whichever were cut when the node is unknown) has reconnected and caught up, and
  report how long each took;
- `{"cmd": "finish", "expected": {wireframe_id: commits}, "drain_seconds": s}`: wait
  until every editor has every expected commit (or the drain time passed), close all,
  report the result and exit; with `"changes_each": n`, also until this process's
  editors have n changes each (bulk inserts carry no seqs: `bench feed`).

With `delta` in the job, editors subscribe with `delta: true`: an UPDATE then arrives
as a `delta` frame (the row's `id`, changed columns in `set`, merge patches of changed
jsonb columns in `patch`), counted as a delivery like a `change`.

This process samples its own CPU every second. A delivery that arrived while it used
more than `client_bound_percent` of a core is *client-bound*: it may have waited for
this process rather than for the server, so its latency is partly the client's.

With `follow` in the job, an editor whose connection is cut without its asking
reconnects by itself, as the product's client does (exponential backoff with jitter,
250 ms base), to the same URL, and resumes with `subscribe {since}` from its last
position.

Events (`event` key): `progress` (every half second), `ready` (every editor connected,
authenticated and subscribed, or failed), `interval`, `dropped`, `resumed`, `armed`,
`recovered`, `disarmed`, `result`.
Counting: each wireframe change carries the writer's sequence number in
`new.layout.bench_seq` (a delta: in `patch.layout` or `set.layout`); an editor keeps a
bitmap of the seqs it saw per wireframe, so a repeat is a duplicate, a seq below the
highest seen is out of order, and whatever the writer committed that never arrived is
lost; each is counted per editor as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import picows.api
import psutil
import uvloop
from hdrh.histogram import HdrHistogram
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows.url import WSParsedURL

from loadtest.fragments import Reassembly
from loadtest.options import CLIENT_BOUND_PERCENT

SLOW_CONSUMER_CLOSE = 4008
CHANGE_PREFIX = b'{"type":"change"'
DELTA_PREFIX = b'{"type":"delta"'
SEQ_KEY = b'"bench_seq":'
# Presence frames are counted, not read: a project's state lists every connection, so
# parsing each joiner's would make this process, not the server, the storm's bottleneck.
PRESENCE_PREFIX = b'{"type":"presence.'
DIGITS = frozenset(b"0123456789")
JSON_SPACE = frozenset(b" \t\r\n")
LATENCY_MAX_US = 600_000_000  # ten minutes: anything later is recorded as this
STEP_TIMEOUT = 60.0  # longest wait for one reply (connect, auth, subscribe)
PROGRESS_EVERY = 0.5
CPU_EVERY = 1.0  # seconds per CPU sample (one per second of the deliveries' series)
SHORTEST_SPAN = 0.1  # seconds: a shorter sample says little of a second's load
# The product's client (gateway/app/static/sitebuilder-client.js): base * 2^attempt capped,
# half of it fixed and half random, so a worker's editors do not all return at once.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 10.0
NEW, DUPLICATE, OUT_OF_ORDER = 0, 1, 2


def new_histogram() -> HdrHistogram:
    """Latencies in microseconds, three significant digits."""
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def field_text(payload: bytes, key: bytes) -> str:
    """The string value of the first `key` (which ends in its opening quote), or ""."""
    start = payload.find(key)
    if start < 0:
        return ""
    start += len(key)
    return payload[start : payload.index(b'"', start)].decode()


def last_field_text(payload: bytes, key: bytes) -> str:
    """As `field_text`, searched from the end: `committed_at` and `position` close every
    change and delta frame, after rows that may be hundreds of kilobytes."""
    start = payload.rfind(key)
    if start < 0:
        return ""
    start += len(key)
    return payload[start : payload.index(b'"', start)].decode()


def backoff_delay(attempt: int) -> float:
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2.0**attempt)
    return ceiling / 2 + random.random() * ceiling / 2


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


@dataclass
class Job:
    """What the driver asks for: where to connect and as whom."""

    url: str
    protocol: str  # "gateway": auth + subscribe; "reference": a bare broadcast server
    editors: list[dict[str, Any]]  # {token, project_id}
    snapshot: bool = False
    connect_concurrency: int = 200
    follow: bool = False  # reconnect by itself when the server cuts the connection
    delta: bool = False  # subscribe with `delta: true`
    client_bound_percent: float = CLIENT_BOUND_PERCENT
    receive_buffer_kib: int = 0  # SO_RCVBUF of each editor's socket; 0: the kernel's

    @classmethod
    def parse(cls, line: bytes) -> Job:
        return cls(**orjson.loads(line))


@dataclass
class Tally:
    """Everything the editors of this process received, shared by all of them."""

    started: float = field(default_factory=time.time)
    latency: HdrHistogram = field(default_factory=new_histogram)
    interval: HdrHistogram = field(default_factory=new_histogram)
    # Deliveries while a failover window is open, and the others.
    during: HdrHistogram = field(default_factory=new_histogram)
    outside: HdrHistogram = field(default_factory=new_histogram)
    window_open: bool = False
    per_second: list[int] = field(default_factory=list)
    deliveries: int = 0
    last_arrival: float = 0.0  # epoch seconds of the latest delivery
    presence_bytes: int = 0
    delta_frames: int = 0
    bytes_by_entity: dict[str, int] = field(default_factory=dict)
    frames_by_entity: dict[str, int] = field(default_factory=dict)
    duplicated: int = 0
    out_of_order: int = 0
    resets: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    closes: dict[int, int] = field(default_factory=dict)

    def delivered(self, entity: str, size: int, committed: float) -> float:
        """Count one frame committed at `committed` (epoch seconds); the time it arrived."""
        now = time.time()
        micros = min(max(int((now - committed) * 1e6), 1), LATENCY_MAX_US)
        self.latency.record_value(micros)
        self.interval.record_value(micros)
        (self.during if self.window_open else self.outside).record_value(micros)
        second = int(now - self.started)
        while len(self.per_second) <= second:
            self.per_second.append(0)
        self.per_second[second] += 1
        self.deliveries += 1
        self.last_arrival = now
        self.bytes_by_entity[entity] = self.bytes_by_entity.get(entity, 0) + size
        self.frames_by_entity[entity] = self.frames_by_entity.get(entity, 0) + 1
        return now


@dataclass
class Mark:
    """A moment of this process: wall clock, CPU seconds used so far, deliveries so far."""

    wall: float
    cpu: float
    deliveries: int

    def percent_to(self, later: Mark) -> float:
        """CPU used from this mark to `later`, in % of a core."""
        return 100.0 * (later.cpu - self.cpu) / max(later.wall - self.wall, 1e-6)


class Busy:
    """How busy this process was: its CPU each second, and how many deliveries arrived
    while it was above the threshold (client-bound: their latency includes this process
    catching up, not only the server's). Sampled about once a second (CPU_EVERY), and
    when the driver asks for an interval."""

    def __init__(self, tally: Tally, threshold: float) -> None:
        self.tally = tally
        self.threshold = threshold
        self.per_second: list[float] = []
        self.hot = 0
        self.span = self.mark()
        self.interval = self.span
        self.interval_hot = 0

    def mark(self) -> Mark:
        """Now; CPU from the kernel's per-process clock (ns resolution, where /proc's
        times move in 10 ms ticks: a quiet second would read 0% or 1%)."""
        return Mark(time.time(), time.process_time(), self.tally.deliveries)

    def sample(self) -> None:
        """Close the current span: its CPU % goes to every second it covers (the highest
        when a second has two), its deliveries are hot if it was above the threshold.
        A span too short to measure goes on instead."""
        now = self.mark()
        if now.wall - self.span.wall < SHORTEST_SPAN:
            return
        percent = self.span.percent_to(now)
        if percent > self.threshold:
            self.hot += now.deliveries - self.span.deliveries
        first = round(self.span.wall - self.tally.started)
        last = max(first, round(now.wall - self.tally.started) - 1)
        while len(self.per_second) <= last:
            self.per_second.append(0.0)
        for second in range(first, last + 1):
            self.per_second[second] = max(self.per_second[second], round(percent, 1))
        self.span = now

    def since_interval(self) -> tuple[float, int]:
        """CPU % and hot deliveries since the last call (a ramp step)."""
        self.sample()
        now = self.mark()
        figures = self.interval.percent_to(now), self.hot - self.interval_hot
        self.interval, self.interval_hot = now, self.hot
        return figures

    def delivering_percent(self) -> float:
        """CPU % over the seconds that carried deliveries (the writing, not the setup)."""
        busy = [
            percent
            for percent, count in zip(self.per_second, self.tally.per_second, strict=False)
            if count
        ]
        return round(sum(busy) / len(busy), 1) if busy else 0.0

    async def run(self) -> None:
        """Sample on the second boundaries of the deliveries' series, so that second i's
        CPU and second i's deliveries cover the same time."""
        while True:
            ahead = CPU_EVERY - (time.time() - self.tally.started) % CPU_EVERY
            await asyncio.sleep(ahead if ahead > SHORTEST_SPAN else ahead + CPU_EVERY)
            self.sample()


class Seen:
    """The seqs one editor received of one wireframe: a growable bitmap."""

    __slots__ = ("bits", "count", "highest")

    def __init__(self) -> None:
        self.bits = bytearray(64)
        self.count = 0
        self.highest = 0

    def add(self, seq: int) -> int:
        """NEW, DUPLICATE or OUT_OF_ORDER."""
        byte, bit = divmod(seq, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        if self.bits[byte] >> bit & 1:
            return DUPLICATE
        self.bits[byte] |= 1 << bit
        self.count += 1
        if seq < self.highest:
            return OUT_OF_ORDER
        self.highest = seq
        return NEW

    def has_all(self, upto: int) -> bool:
        """Seqs start at 1: all of 1..upto arrived."""
        return self.count >= upto and self.highest >= upto


class Outage:
    """One editor's latest cut connection and its recovery, in wall-clock seconds.

    Caught up means every change committed before the editor was subscribed again has
    arrived; that is known at the first change committed after it (changes come in
    commit order, which the counting checks), and it happened when the last change
    committed before it arrived."""

    __slots__ = ("attempts", "back_at", "caught_up_at", "cut_at", "last_replayed", "node")

    def __init__(self) -> None:
        self.cut_at: float | None = None
        self.node: str | None = None  # the worker that held the editor when it was cut
        self.back_at: float | None = None
        self.last_replayed = 0.0
        self.caught_up_at: float | None = None
        self.attempts = 0

    def begin(self, node: str | None) -> None:
        self.cut_at = time.time()
        self.node = node
        self.back_at = None
        self.last_replayed = 0.0
        self.caught_up_at = None
        self.attempts = 0

    @property
    def open(self) -> bool:
        return self.cut_at is not None and self.caught_up_at is None

    def delivered(self, committed: float, arrived: float) -> None:
        if self.cut_at is None or self.caught_up_at is not None:
            return
        if self.back_at is None or committed < self.back_at:
            self.last_replayed = arrived
        else:
            self.caught_up_at = max(self.back_at, self.last_replayed)


class Editor(WSListener):
    """One simulated browser tab: one connection at a time, state kept across reconnects."""

    def __init__(self, tally: Tally, token: str, project_id: str, wireframes: list[str]) -> None:
        self.tally = tally
        self.token = token
        self.project_id = project_id
        self.wireframes = wireframes
        self.transport: WSTransport | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.seen: dict[str, Seen] = {}
        self.position: str | None = None
        self.closed: asyncio.Future[int] | None = None
        self.refs = 0
        self.node: str | None = None  # the gateway worker or node serving it, when told
        self.duplicated = 0
        self.out_of_order = 0
        self.leaving = False  # the close or abort was ours
        self.on_cut: Callable[[Editor], None] | None = None
        self.outage = Outage()
        self.reassembly = Reassembly()

    # picows callbacks (run inside the event loop, must not block)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.leaving = False
        self.closed = asyncio.get_running_loop().create_future()
        self.reassembly = Reassembly(PRESENCE_PREFIX, self.count_presence)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            close = frame.get_close_code()
            code: int = close.value
            self.tally.closes[code] = self.tally.closes.get(code, 0) + 1
            transport.send_close(close)
            transport.disconnect()
            return
        message = self.reassembly.feed(frame)
        if message is not None and message[0] == WSMsgType.TEXT:
            self.on_message(message[1])

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(0)
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection closed"))
        self.waiting.clear()
        if not self.leaving and self.on_cut is not None:
            self.on_cut(self)

    def on_message(self, payload: bytes) -> None:
        if payload.startswith(CHANGE_PREFIX):
            self.on_change(payload)
            return
        if payload.startswith(DELTA_PREFIX):
            self.on_delta(payload)
            return
        if payload.startswith(PRESENCE_PREFIX):
            self.count_presence(len(payload))
            return
        message = orjson.loads(payload)
        kind = message.get("type")
        self.note_node(message)
        if kind == "reset":
            self.tally.resets += 1
            self.position = message.get("snapshot", {}).get("position", self.position)
        if kind == "error":
            code = message.get("code", "?")
            self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
        if kind == "snapshot":
            self.position = message.get("position", self.position)
            snapshot = self.waiting.pop("snapshot", None)
            if snapshot is not None and not snapshot.done():
                snapshot.set_result(message)
        ref = message.get("ref")
        waiter = self.waiting.get(f"{ref}:{kind}") or self.waiting.get(f"{ref}:*")
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def count_presence(self, size: int) -> None:
        self.tally.presence_bytes += size

    def on_change(self, payload: bytes) -> None:
        """Read the few fields counted straight from the bytes: a full JSON parse of every
        5 KB frame would make this process, not the server, the bottleneck."""
        if self.arrived(payload) != "wireframe":
            return
        new = payload.find(b'"new":{"id":"')
        if new >= 0:
            self.count_seq(payload[new + 13 : new + 49], payload, payload.find(SEQ_KEY, new))

    def on_delta(self, payload: bytes) -> None:
        """An UPDATE to a delta subscriber: the row is the frame's own `id`, its seq in
        `patch` (or in `set`, when the whole layout was sent)."""
        self.tally.delta_frames += 1
        if self.arrived(payload) != "wireframe":
            return
        at = payload.find(b',"id":"')
        if at >= 0:
            self.count_seq(payload[at + 7 : at + 43], payload, payload.find(SEQ_KEY, at))

    def arrived(self, payload: bytes) -> str:
        """Count a change or delta frame (latency, bytes, this editor's position); its entity."""
        entity = field_text(payload, b'"entity":"')
        committed = datetime.fromisoformat(
            last_field_text(payload, b'"committed_at":"')
        ).timestamp()
        arrived = self.tally.delivered(entity, len(payload), committed)
        self.outage.delivered(committed, arrived)
        position = last_field_text(payload, b'"position":"')
        if position:
            self.position = position
        return entity

    def count_seq(self, row_id: bytes, payload: bytes, seq_at: int) -> None:
        """The wireframe `row_id`'s seq (its digits at `seq_at`, -1: none): new, repeated
        or out of order for this editor."""
        if seq_at < 0:
            return
        start = seq_at + len(SEQ_KEY)
        while payload[start] in JSON_SPACE:  # jsonb's own text writes `"key": value`
            start += 1
        end = start
        while payload[end] in DIGITS:
            end += 1
        wireframe_id = row_id.decode()
        seen = self.seen.get(wireframe_id)
        if seen is None:
            seen = self.seen[wireframe_id] = Seen()
        outcome = seen.add(int(payload[start:end]))
        if outcome == DUPLICATE:
            self.duplicated += 1
            self.tally.duplicated += 1
        elif outcome == OUT_OF_ORDER:
            self.out_of_order += 1
            self.tally.out_of_order += 1

    def note_node(self, message: dict[str, Any]) -> None:
        """Which worker serves this connection: a `node` in a frame or in its `data`."""
        data = message.get("data")
        node = message.get("node") or (data.get("node") if isinstance(data, dict) else None)
        if isinstance(node, (str, int)):
            self.node = str(node)

    def lost(self, expected: dict[str, int]) -> int:
        """What the writer committed to this editor's wireframes that never arrived."""
        missing = 0
        for wireframe_id in self.wireframes:
            seen = self.seen.get(wireframe_id)
            missing += max(0, expected.get(wireframe_id, 0) - (seen.count if seen else 0))
        return missing

    # requests

    def expect_snapshot(self) -> asyncio.Future[dict[str, Any]]:
        """The next snapshot (it follows the subscribe's `ok` and carries no ref)."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting["snapshot"] = waiter
        return waiter

    async def request(self, frame: dict[str, Any], reply: str = "*") -> dict[str, Any]:
        """Send a frame with a fresh ref; the first reply of that kind (or any), or an error."""
        self.refs += 1
        ref = str(self.refs)
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[f"{ref}:{reply}"] = waiter
        if reply != "*":
            self.waiting[f"{ref}:error"] = waiter
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, orjson.dumps({**frame, "ref": ref}))
        try:
            answer = await asyncio.wait_for(waiter, STEP_TIMEOUT)
        finally:
            self.waiting.pop(f"{ref}:{reply}", None)
            self.waiting.pop(f"{ref}:error", None)
        if answer.get("type") == "error":
            raise RuntimeError(f"{frame['type']}: {answer.get('code')}: {answer.get('message')}")
        return dict(answer)

    def abort(self) -> None:
        """Vanish as a dropped network does: no close frame."""
        self.leaving = True
        if self.transport is not None:
            self.transport.underlying_transport.abort()

    def close(self) -> None:
        self.leaving = True
        if self.transport is not None and self.closed is not None and not self.closed.done():
            self.transport.send_close()
            self.transport.disconnect()


@dataclass
class Steps:
    """Per-step timings of connecting editors, in microseconds."""

    connect: HdrHistogram = field(default_factory=new_histogram)
    auth: HdrHistogram = field(default_factory=new_histogram)
    subscribe: HdrHistogram = field(default_factory=new_histogram)
    ready: HdrHistogram = field(default_factory=new_histogram)
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, step: str, error: BaseException) -> None:
        key = f"{step}: {type(error).__name__}: {error}"[:160]
        self.failures[key] = self.failures.get(key, 0) + 1

    def encoded(self) -> dict[str, Any]:
        return {
            "connect": self.connect.encode().decode(),
            "auth": self.auth.encode().decode(),
            "subscribe": self.subscribe.encode().decode(),
            "ready": self.ready.encode().decode(),
            "failures": self.failures,
        }


def receive_buffer_of(kib: int) -> Callable[[WSParsedURL], socket.socket] | None:
    """A picows socket factory: unconnected sockets whose kernel receive buffer is `kib`
    KiB (Linux doubles it); None (0): picows' own sockets, the buffer autotuned.

    The editors' own memory does not need it (BoundedReads bounds it); it is for
    measuring with small TCP windows, or with little kernel memory per socket."""
    if kib <= 0:
        return None

    def factory(url: WSParsedURL) -> socket.socket:
        family = socket.AF_INET6 if ":" in url.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, kib * 1024)
        return sock

    return factory


# The most one socket read brings into an editor's buffer.
READ_BYTES = 64 * 1024


class BoundedReads(picows.api.WSProtocol):  # type: ignore[misc, name-defined]
    """picows' protocol, each read at most READ_BYTES.

    picows doubles a connection's read buffer whenever one read fills most of it and
    never shrinks it; a read takes whatever the kernel holds, which with autotuned
    receive buffers is megabytes once a large presence state or snapshot is on its way.
    So each of 5,000 editors sent an 850 KB state kept a buffer that size (3 GB in
    all). With reads bounded, a buffer grows only to the largest frame, which the
    bench's own gateway fragments (SITEBUILDER_FRAGMENT_BYTES), while the kernel's
    buffers, and so the TCP windows, stay autotuned."""

    def get_buffer(self, size_hint: int) -> memoryview:
        buffer: memoryview = super().get_buffer(size_hint)
        return buffer if len(buffer) <= READ_BYTES else buffer[:READ_BYTES]


# ws_connect makes its protocols from this name (picows.api); editors read through it.
picows.api.WSProtocol = BoundedReads  # type: ignore[attr-defined]


def since(start: float) -> int:
    return max(1, int((time.perf_counter() - start) * 1e6))


async def open_editor(job: Job, editor: Editor, steps: Steps, since_position: str | None) -> bool:
    """Connect, authenticate and subscribe one editor; record each step's time."""
    start = time.perf_counter()
    step = "connect"
    try:
        await asyncio.wait_for(
            ws_connect(
                lambda: editor,
                job.url,
                enable_auto_ping=False,
                max_frame_size=16 << 20,
                socket_factory=receive_buffer_of(job.receive_buffer_kib),
            ),
            STEP_TIMEOUT,
        )
        steps.connect.record_value(since(start))
        if job.protocol == "gateway":
            step = "auth"
            mark = time.perf_counter()
            await editor.request({"type": "auth", "token": editor.token}, "ok")
            steps.auth.record_value(since(mark))
            step = "subscribe"
            mark = time.perf_counter()
            await subscribe(job, editor, since_position)
            steps.subscribe.record_value(since(mark))
    except (OSError, RuntimeError, TimeoutError, ConnectionError) as error:
        steps.failed(step, error)
        editor.close()
        return False
    steps.ready.record_value(since(start))
    return True


async def subscribe(job: Job, editor: Editor, since_position: str | None) -> None:
    frame: dict[str, Any] = {"type": "subscribe", "project_id": editor.project_id}
    if job.delta:
        frame["delta"] = True
    if since_position is not None:
        frame["since"] = since_position
    else:
        frame["snapshot"] = job.snapshot
    if not job.snapshot or since_position is not None:
        await editor.request(frame, "ok")
        return
    snapshot = editor.expect_snapshot()
    await editor.request(frame, "ok")
    await asyncio.wait_for(snapshot, STEP_TIMEOUT)


async def open_all(job: Job, editors: list[Editor], resume: bool) -> Steps:
    steps = Steps()
    gate = asyncio.Semaphore(max(1, job.connect_concurrency))

    async def one(editor: Editor) -> bool:
        async with gate:
            return await open_editor(job, editor, steps, editor.position if resume else None)

    await asyncio.gather(*(one(editor) for editor in editors))
    return steps


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
    """Poll a cheap predicate (the frames arrive through callbacks, not awaitables)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def has_targets(editor: Editor, targets: dict[str, int]) -> bool:
    for wireframe_id, seq in targets.items():
        seen = editor.seen.get(wireframe_id)
        if seq > 0 and (seen is None or not seen.has_all(seq)):
            return False
    return True


class Session:
    """The editors of this process and the commands the driver sends them."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tally = Tally()
        self.busy = Busy(self.tally, job.client_bound_percent)
        self.editors = [
            Editor(self.tally, e.get("token", ""), e.get("project_id", ""), e.get("wireframes", []))
            for e in job.editors
        ]
        self.dropped: list[int] = []
        self.rejoining: dict[int, asyncio.Task[None]] = {}  # by id(editor)
        self.rejoin_steps = Steps()
        self.process = psutil.Process()
        self.cpu_start = sum(self.process.cpu_times()[:2])

    def connected(self) -> int:
        return sum(1 for e in self.editors if e.closed is not None and not e.closed.done())

    async def report_progress(self) -> None:
        while True:
            emit("progress", connected=self.connected(), received=self.tally.deliveries)
            await asyncio.sleep(PROGRESS_EVERY)

    def nodes(self) -> dict[str, int]:
        """How the connected editors spread over the gateway's workers, when they say."""
        spread: dict[str, int] = {}
        for editor in self.editors:
            if editor.node is not None and editor.closed is not None and not editor.closed.done():
                spread[editor.node] = spread.get(editor.node, 0) + 1
        return spread

    async def open(self) -> None:
        started = time.perf_counter()
        steps = await open_all(self.job, self.editors, resume=False)
        if self.job.follow:
            for editor in self.editors:
                editor.on_cut = self.cut
        emit(
            "ready",
            seconds=time.perf_counter() - started,
            connected=self.connected(),
            steps=steps.encoded(),
            nodes=self.nodes(),
        )

    def cut(self, editor: Editor) -> None:
        """The server cut this editor's connection: reconnect it (a cut while it is
        still recovering continues the same outage)."""
        if id(editor) in self.rejoining:
            return
        if not editor.outage.open:
            editor.outage.begin(editor.node)
        self.rejoining[id(editor)] = asyncio.get_running_loop().create_task(self.rejoin(editor))

    async def rejoin(self, editor: Editor) -> None:
        try:
            while True:
                await asyncio.sleep(backoff_delay(editor.outage.attempts))
                editor.outage.attempts += 1
                if await open_editor(self.job, editor, self.rejoin_steps, editor.position):
                    editor.outage.back_at = time.time()
                    return
        finally:
            self.rejoining.pop(id(editor), None)

    async def stop_rejoining(self) -> None:
        tasks = list(self.rejoining.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def window(self, open_: bool) -> None:
        self.tally.window_open = open_
        emit("armed" if open_ else "disarmed")

    async def recovery(self, killed_at: float, node: str | None, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every editor the killed worker held is back and caught up.

        Those are the editors it served (`node`), or, when the gateway does not say
        which worker serves a connection, those cut since the kill."""

        def held() -> list[Editor]:
            if node is None:
                return [e for e in self.editors if (e.outage.cut_at or 0) >= killed_at]
            return [
                e
                for e in self.editors
                if (e.outage.node if (e.outage.cut_at or 0) >= killed_at else e.node) == node
            ]

        def recovered() -> bool:
            editors = held()
            return all(
                (e.outage.cut_at or 0) >= killed_at and not e.outage.open for e in editors
            ) and bool(editors or node is not None)

        await wait_until(recovered, timeout)
        editors = held()
        cut = [e for e in editors if (e.outage.cut_at or 0) >= killed_at]
        back = [e.outage.back_at - killed_at for e in cut if e.outage.back_at is not None]
        caught_up = [
            e.outage.caught_up_at - killed_at for e in cut if e.outage.caught_up_at is not None
        ]
        mine = {id(e) for e in editors}
        others = [
            e for e in self.editors if (e.outage.cut_at or 0) >= killed_at and id(e) not in mine
        ]
        emit(
            "recovered",
            held=len(editors),
            cut=len(cut),
            cut_elsewhere=len(others),
            back_s=back,
            caught_up_s=caught_up,
            attempts=sum(e.outage.attempts for e in cut),
            steps=self.rejoin_steps.encoded(),
            nodes=self.nodes(),
        )

    def interval(self) -> None:
        cpu_percent, hot = self.busy.since_interval()
        emit(
            "interval",
            latency=self.tally.interval.encode().decode(),
            received=self.tally.deliveries,
            bytes=sum(self.tally.bytes_by_entity.values()),
            cpu_percent=round(cpu_percent, 1),
            client_bound_deliveries=hot,
        )
        self.tally.interval.reset()

    def drop(self, fraction: float) -> None:
        count = int(len(self.editors) * fraction)
        self.dropped = random.sample(range(len(self.editors)), count)
        for index in self.dropped:
            self.editors[index].abort()
        emit("dropped", count=count)

    async def resume(self, targets: dict[str, int]) -> None:
        """Reconnect the dropped editors; for each, the time from its reconnecting to
        having every commit the writer had made when the resume began."""
        editors = [self.editors[i] for i in self.dropped]
        started = time.perf_counter()
        steps = Steps()
        catchup = new_histogram()
        gate = asyncio.Semaphore(max(1, self.job.connect_concurrency))

        async def one(editor: Editor) -> None:
            async with gate:
                began = time.perf_counter()
                if not await open_editor(self.job, editor, steps, editor.position):
                    return
            mine = {w: targets.get(w, 0) for w in editor.wireframes}
            if await wait_until(lambda: has_targets(editor, mine), STEP_TIMEOUT):
                catchup.record_value(since(began))

        await asyncio.gather(*(one(editor) for editor in editors))
        emit(
            "resumed",
            count=len(editors),
            steps=steps.encoded(),
            catchup=catchup.encode().decode(),
            seconds=time.perf_counter() - started,
        )

    async def finish(
        self, expected: dict[str, int], drain_seconds: float, changes_each: int = 0
    ) -> None:
        def complete() -> bool:
            return self.tally.deliveries >= changes_each * len(self.editors) and all(
                has_targets(editor, {w: expected.get(w, 0) for w in editor.wireframes})
                for editor in self.editors
                if editor.closed is not None and not editor.closed.done()
            )

        drained = await wait_until(complete, drain_seconds)
        await self.stop_rejoining()
        lost = [editor.lost(expected) for editor in self.editors]
        nodes = self.nodes()
        for editor in self.editors:
            editor.on_cut = None
            editor.close()
        await wait_until(lambda: self.connected() == 0, 5.0)
        self.busy.sample()
        tally = self.tally
        emit(
            "result",
            drained=drained,
            latency=tally.latency.encode().decode(),
            per_second=tally.per_second,
            started=tally.started,
            deliveries=tally.deliveries,
            last_arrival=tally.last_arrival,
            bytes_by_entity=tally.bytes_by_entity,
            frames_by_entity=tally.frames_by_entity,
            delta_frames=tally.delta_frames,
            lost=sum(lost),
            duplicated=tally.duplicated,
            out_of_order=tally.out_of_order,
            editors_lost=sum(1 for count in lost if count),
            editors_duplicated=sum(1 for e in self.editors if e.duplicated),
            editors_out_of_order=sum(1 for e in self.editors if e.out_of_order),
            latency_during=tally.during.encode().decode(),
            latency_outside=tally.outside.encode().decode(),
            nodes=nodes,
            resets=tally.resets,
            errors=tally.errors,
            closes={str(code): n for code, n in tally.closes.items()},
            slow_consumer_closes=tally.closes.get(SLOW_CONSUMER_CLOSE, 0),
            cpu_seconds=sum(self.process.cpu_times()[:2]) - self.cpu_start,
            cpu_per_second=self.busy.per_second,
            cpu_percent_delivering=self.busy.delivering_percent(),
            client_bound_deliveries=self.busy.hot,
            client_bound_percent=self.busy.threshold,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )


async def commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run() -> None:
    reader = await commands()
    session = Session(Job.parse(await reader.readline()))
    progress = asyncio.create_task(session.report_progress())
    sampling = asyncio.create_task(session.busy.run())
    try:
        await session.open()
        while line := await reader.readline():
            command = orjson.loads(line)
            match command["cmd"]:
                case "interval":
                    session.interval()
                case "drop":
                    session.drop(float(command["fraction"]))
                case "resume":
                    await session.resume(command["targets"])
                case "arm" | "disarm":
                    session.window(command["cmd"] == "arm")
                case "recovery":
                    await session.recovery(
                        float(command["killed_at"]), command.get("node"), float(command["timeout"])
                    )
                case "finish":
                    await session.finish(
                        command["expected"],
                        float(command["drain_seconds"]),
                        int(command.get("changes_each", 0)),
                    )
                    return
    finally:
        await session.stop_rejoining()
        for task in (progress, sampling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


if __name__ == "__main__":
    uvloop.run(run())
