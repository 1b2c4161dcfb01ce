"""One change feed per node, shared by the node's workers (`serve --workers N`).

The supervisor reads the node's one replication slot (or LISTEN connection) and hands
every worker the same events over a Unix socket (db.feed_wire): the primary decodes
the WAL once per node instead of once per worker, each event is decoded and encoded
once, and positions are the same in every worker of the node (on the NOTIFY feed too).

The reader keeps the transactions of the last `max_age_seconds` (at most `max_bytes`),
so a worker that starts or restarts catches up from here, not from PostgreSQL: its
history reaches back as far as the node's, and clients that resume from before it
started are replayed to, not reset. The slot is confirmed up to the oldest change that
this buffer or any worker's history still needs.

A worker whose socket falls behind by more than `max_pending_bytes` (it stopped reading)
is disconnected; it reconnects and catches up from the buffer like a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass

from db.feed import (
    ChangeFeed,
    FeedEvent,
    FeedInterrupted,
    FeedResumed,
    Position,
    RowChange,
    RowChanges,
    TransactionEnd,
)
from db.feed_wire import encode_event, parse_position

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
# A worker's lines are a hello and retain positions: a longer one is not from a worker.
MAX_LINE_BYTES = 256


@dataclass(slots=True)
class _Transaction:
    """One committed transaction as every worker receives it (its events' frames)."""

    first: Position
    last: Position
    data: bytes
    at: float


class _Worker:
    """A connected worker: its socket, and the oldest change its history still needs."""

    __slots__ = ("retain", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.retain: Position | None = None


class NodeFeed:
    """Reads `feed` and serves it to the node's workers on the Unix socket `path`."""

    def __init__(
        self,
        feed: ChangeFeed,
        path: str,
        *,
        max_bytes: int,
        max_age_seconds: float,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._feed = feed
        self._path = path
        self._max_bytes = max_bytes
        self._max_age = max_age_seconds
        self._max_pending = max_pending_bytes
        self._buffer: deque[_Transaction] = deque()
        self._buffered_bytes = 0
        self._floor: Position | None = None  # the buffer holds what follows it
        self._connected = False
        self._started = asyncio.Event()  # the feed's first FeedResumed came
        self._listening = asyncio.Event()
        self._workers: set[_Worker] = set()
        self._pending: list[bytes] = []  # the frames of the transaction being read
        self._pending_first: Position | None = None
        self._pending_last: Position | None = None

    @property
    def workers(self) -> int:
        return len(self._workers)

    async def wait_listening(self) -> None:
        await self._listening.wait()

    async def run(self) -> None:
        """Serve until cancelled."""
        server = await asyncio.start_unix_server(
            self._serve_worker, path=self._path, limit=MAX_LINE_BYTES
        )
        self._listening.set()
        try:
            async with aclosing(self._feed.events()) as events:
                async for event in events:
                    self._on_event(event)
        finally:
            server.close()
            for worker in list(self._workers):
                worker.writer.close()
            await server.wait_closed()

    # The feed

    def _on_event(self, event: FeedEvent) -> None:
        if isinstance(event, RowChange | RowChanges):
            # A batch goes to the workers as it came: one frame, pickled once.
            self._pending.append(encode_event(event))
            first, last = _positions(event)
            if self._pending_first is None:
                self._pending_first = first
            self._pending_last = last
            return
        if isinstance(event, TransactionEnd):
            self._end_transaction(event)
            return
        self._discard_pending()
        if isinstance(event, FeedInterrupted):
            self._connected = False
        elif isinstance(event, FeedResumed):
            self._connected = True
            if not event.lossless or not self._started.is_set():
                self._buffer.clear()
                self._buffered_bytes = 0
                self._floor = event.floor
            self._started.set()
        self._broadcast(encode_event(event))

    def _end_transaction(self, end: TransactionEnd) -> None:
        first, last = self._pending_first, self._pending_last
        if first is None or last is None:  # nothing of ours in it
            self._discard_pending()
            return
        self._pending.append(encode_event(end))
        data = b"".join(self._pending)
        self._discard_pending()
        self._buffer.append(_Transaction(first, last, data, time.monotonic()))
        self._buffered_bytes += len(data)
        self._broadcast(data)
        self._trim()
        self._retain()

    def _discard_pending(self) -> None:
        self._pending = []
        self._pending_first = self._pending_last = None

    def _trim(self) -> None:
        oldest_kept = time.monotonic() - self._max_age
        buffer = self._buffer
        while buffer and (self._buffered_bytes > self._max_bytes or buffer[0].at < oldest_kept):
            gone = buffer.popleft()
            self._buffered_bytes -= len(gone.data)
            self._floor = gone.last

    def _retain(self) -> None:
        needed = [worker.retain for worker in self._workers if worker.retain is not None]
        if self._buffer:
            needed.append(self._buffer[0].first)
        self._feed.retain_from(min(needed) if needed else None)

    def _broadcast(self, data: bytes) -> None:
        for worker in list(self._workers):
            self._send(worker, data)

    def _send(self, worker: _Worker, data: bytes) -> None:
        transport = worker.writer.transport
        if transport.get_write_buffer_size() > self._max_pending:
            logger.warning(
                "a worker fell %d bytes behind the node's feed: disconnected (it catches up "
                "from the node's buffer)",
                transport.get_write_buffer_size(),
            )
            self._workers.discard(worker)
            transport.abort()
            return
        worker.writer.write(data)

    # The workers

    async def _serve_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        worker = _Worker(writer)
        try:
            since = _hello(await reader.readline())
            await self._started.wait()
            self._join(worker, since)  # no await from the replay to going live
            while line := await reader.readline():
                kind, _, value = line.decode(errors="replace").strip().partition(" ")
                if kind == "retain":
                    worker.retain = parse_position(value)
                    self._retain()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as error:
            logger.warning("a worker's feed connection ended: %s", error)
        finally:
            self._workers.discard(worker)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _join(self, worker: _Worker, since: Position | None) -> None:
        """Send the worker what it missed (all of the buffer, when it starts afresh or
        the buffer no longer reaches back to `since`), then everything live."""
        floor = self._floor
        assert floor is not None, "set by the first FeedResumed"
        if since is not None and since.epoch == floor.epoch and since >= floor:
            resumed = FeedResumed(since, lossless=True)
            missed = [t.data for t in self._buffer if t.last > since]
        else:
            reason = "a worker started: caught up from the node's feed"
            resumed = FeedResumed(floor, lossless=False, reason=reason)
            missed = [t.data for t in self._buffer]
        worker.writer.write(encode_event(resumed))
        worker.writer.writelines(missed)
        if not self._connected:
            worker.writer.write(encode_event(FeedInterrupted("the node's feed is reconnecting")))
        self._workers.add(worker)


def _positions(event: RowChange | RowChanges) -> tuple[Position, Position]:
    """The first and the last position of a change or a batch of changes."""
    if isinstance(event, RowChange):
        return event.position, event.position
    return event.changes[0].position, event.changes[-1].position


def _hello(line: bytes) -> Position | None:
    kind, _, value = line.decode(errors="replace").strip().partition(" ")
    if kind != "hello":
        raise ValueError(f"expected a hello, got {line[:40]!r}")
    return parse_position(value)
