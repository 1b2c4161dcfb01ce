"""What a row change costs the gateway's own process: `python -m loadtest.change_cost`.

No PostgreSQL and no client: transactions of wireframe inserts (layouts of the size
`bench feed` writes, in jsonb's text form) are made as pgoutput messages in memory,
then run through what a replicated change passes in the gateway: the replication
feed's decoding (db.replication_feed), the dispatcher, the history, the hub, the
native view's encoding and the outbox, to subscribers whose sockets discard what they
are given (the first one's bytes are hashed, so two commits can be compared; not with
`--no-hash`, which leaves the harness's own cost out of the figure). The
figure is the process's CPU time per change, free of the writer's and the
walsender's noise on a shared machine; a real run adds the socket writes and reading
the stream (psycopg2). Figures are printed, never checked.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from websockets.protocol import State

from db.feed import FeedEvent, FeedResumed, Position
from db.replication_feed import ReplicationFeed
from gateway.app.serve import tune_garbage_collector
from gateway.core.authorization import AccessLists, Level
from gateway.core.channels import ProjectChannel
from gateway.core.dispatcher import Core, Dispatcher
from gateway.core.fences import Fences
from gateway.core.history import History
from gateway.core.hub import Hub
from gateway.core.outbox import Outbox
from gateway.core.router import Router
from gateway.metrics import Metrics
from gateway.native.views import NativeView, encoded_size
from loadtest.population import layout

RELATION = 16400
COLUMNS = (
    ("id", 2950),
    ("created_at", 1184),
    ("updated_at", 1184),
    ("sitemap_id", 2950),
    ("title", 25),
    ("description", 25),
    ("layout", 3802),
    ("style_guide", 3802),
    ("components", 1009),
    ("version", 23),
)
PG_EPOCH = 946_684_800
EPOCH = "r0000000000000001"
SITEMAP = uuid.UUID(int=7)
PROJECT = uuid.UUID(int=9)


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _relation() -> bytes:
    columns = b"".join(
        b"\x01" + _cstring(name) + struct.pack(">Ii", oid, -1) for name, oid in COLUMNS
    )
    return (
        b"R"
        + struct.pack(">I", RELATION)
        + _cstring("public")
        + _cstring("wireframes")
        + b"f"
        + struct.pack(">H", len(COLUMNS))
        + columns
    )


def _tuple(values: list[str | None]) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        else:
            data = value.encode()
            out += b"t" + struct.pack(">I", len(data)) + data
    return out


def messages(transactions: int, rows: int, layout_json: str) -> list[bytes]:
    """pgoutput messages of `transactions` transactions of `rows` wireframe inserts."""
    committed = (1_796_600_000 - PG_EPOCH) * 10**6
    out = []
    lsn = 1 << 32
    number = 0
    for xact in range(transactions):
        out.append(b"B" + struct.pack(">QqI", lsn + 100, committed, 1000 + xact))
        if xact == 0:
            out.append(_relation())
        for _ in range(rows):
            number += 1
            values = [
                str(uuid.UUID(int=10**6 + number)),
                "2026-12-06 23:00:00.123456+00",
                "2026-12-06 23:00:00.123456+00",
                str(SITEMAP),
                f"bulk {number}",
                None,
                layout_json,
                "{}",
                "{}",
                "1",
            ]
            out.append(b"I" + struct.pack(">I", RELATION) + b"N" + _tuple(values))
        out.append(b"C" + struct.pack(">BQQq", 0, lsn + 100, lsn + 200, committed))
        lsn += 1000
    return out


class _Message:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class _Stream:
    """The replication stream's interface over messages in memory."""

    def __init__(self, payloads: list[bytes]) -> None:
        self._payloads = payloads

    async def messages(self) -> AsyncIterator[_Message]:
        for number, payload in enumerate(self._payloads):
            yield _Message(payload)
            if number % 256 == 255:
                await asyncio.sleep(0)

    def acknowledge(self, lsn: int) -> None:
        """Nothing to acknowledge to."""


class _Feed:
    """A ChangeFeed whose events are the replication feed's decoding of `stream`."""

    name = "in-memory"
    whole_transactions = True
    connected = True

    def __init__(self, inner: ReplicationFeed, stream: _Stream) -> None:
        self._inner = inner
        self._stream = stream

    async def events(self) -> AsyncIterator[FeedEvent]:
        yield FeedResumed(Position(EPOCH, 0, 0))
        async for event in self._inner._changes(self._stream):  # type: ignore[arg-type]
            yield event

    def retain_from(self, position: Position | None) -> None:
        """Nothing is retained."""


class _Sink:
    """A transport that discards what it is given (hashing it when asked)."""

    def __init__(self, hashed: bool) -> None:
        self.bytes = 0
        self.digest = hashlib.sha256() if hashed else None

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.digest is not None:
            self.digest.update(data)

    def writelines(self, chunks: Iterator[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return 0


class _Protocol:
    state = State.OPEN
    extensions: ClassVar[list[Any]] = []


class _Socket:
    def __init__(self, hashed: bool) -> None:
        self.transport = _Sink(hashed)
        self.protocol = _Protocol()
        self.send_in_progress = None


class _Subscriber:
    def __init__(self, number: int, hashed: bool) -> None:
        self.id = number
        self.user_id = uuid.UUID(int=100 + number)
        self.ws = _Socket(hashed=hashed and number == 0)

    def can_send(self) -> bool:
        return True

    def close_slow_consumer(self, reason: str) -> None:
        raise AssertionError(reason)


async def measure(args: argparse.Namespace) -> None:
    inner = ReplicationFeed("postgresql://unused", slot="unused", publication="unused")
    inner._epoch = EPOCH
    inner._xid_reference = 1000
    # As jsonb's output writes it: a space after each `,` and `:`.
    layout_json = json.dumps(layout(0), separators=(", ", ": "), ensure_ascii=False)
    stream = _Stream(messages(args.transactions, args.rows, layout_json))
    metrics = Metrics()
    outbox = Outbox()
    hub = Hub(metrics, 1000, outbox)
    history = History(
        max_per_project=10_000, max_bytes=256 << 20, max_age_seconds=300, size_of=encoded_size
    )
    router = Router(None, 10_000)  # type: ignore[arg-type]
    router._sitemap_project.put(SITEMAP, PROJECT)
    feed = _Feed(inner, stream)
    core = Core(
        hub=hub,
        history=history,
        router=router,
        access_lists=AccessLists(None, 100),  # type: ignore[arg-type]
        fences=Fences(None, feed, 1),  # type: ignore[arg-type]
        outbox=outbox,
        metrics=metrics,
        instance="change-cost",
    )
    subscribers = [_Subscriber(number, hashed=args.hash) for number in range(args.subscribers)]
    for subscriber in subscribers:
        view = NativeView(subscriber.id, subscriber.user_id)
        subscription = hub.subscribe(
            subscriber,  # type: ignore[arg-type]
            ProjectChannel(PROJECT),
            view,
            level=Level.WRITE,
        )
        hub.go_live(subscription)
    dispatcher = Dispatcher(core, feed)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter(), time.process_time()
    await dispatcher.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    changes = args.transactions * args.rows
    sink = subscribers[0].ws.transport
    digest = "not hashed" if sink.digest is None else f"sha256 {sink.digest.hexdigest()[:16]}"
    print(
        f"{changes:,} changes to {args.subscribers} subscriber(s):"
        f" {cpu / changes * 1e6:.1f} µs CPU a change ({changes / cpu:,.0f}/s),"
        f" {wall / changes * 1e6:.1f} µs wall;"
        f" {sink.bytes:,} bytes to the first, {digest}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--transactions", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1000, help="inserts per transaction")
    parser.add_argument(
        "--no-hash",
        dest="hash",
        action="store_false",
        help="do not hash the first subscriber's bytes (the figure is then the gateway's alone)",
    )
    args = parser.parse_args()
    tune_garbage_collector()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
