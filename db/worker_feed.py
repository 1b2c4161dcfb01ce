"""A worker's change feed: its node's, read from the node's reader (db.node_feed).

The reader sends whole transactions; this feed yields each one's events back to back
(`whole_transactions`), so the dispatcher holds their output until the end as with the
replication feed. Should the connection to the reader drop, the feed says so
(`FeedInterrupted`) and reconnects asking for what followed the last transaction it
yielded: the reader replays it from its buffer (`FeedResumed(lossless=True)`), or, when
its buffer no longer reaches back that far, everything it has (`lossless=False`: the
gateway resynchronises its subscribers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from db.feed import (
    FeedEvent,
    FeedInterrupted,
    FeedResumed,
    Position,
    RowChange,
    RowChanges,
    TransactionEnd,
)
from db.feed_wire import HEADER, MAX_FRAME_BYTES, decode_event, hello, retain

logger = logging.getLogger(__name__)

RECONNECT_DELAY_INITIAL_SECONDS = 0.05
RECONNECT_DELAY_MAX_SECONDS = 2.0

Fence = Callable[[Any, str], Awaitable[None]]
Lag = Callable[[], Awaitable[int | None]]


class WorkerFeed:
    """The node's change feed as worker receives it over the Unix socket `path`.

    `name` is the node feed's kind; `fence` writes that feed's fence (db.feed's
    `ChangeFeed.fence`), `lag` measures the node slot's lag."""

    whole_transactions = True

    def __init__(self, path: str, *, name: str, fence: Fence, lag: Lag) -> None:
        self.name = name
        self._path = path
        self._fence = fence
        self._lag = lag
        self._receiving = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._retain: Position | None = None
        self._since: Position | None = None  # the last transaction yielded whole

    @property
    def connected(self) -> bool:
        return self._receiving.is_set()

    async def wait_connected(self) -> None:
        await self._receiving.wait()

    def retain_from(self, position: Position | None) -> None:
        if position == self._retain:
            return
        self._retain = position
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(retain(position))

    async def lag_bytes(self) -> int | None:
        return await self._lag()

    async def fence(self, conn: Any, token: str) -> None:
        await self._fence(conn, token)

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        delay = RECONNECT_DELAY_INITIAL_SECONDS
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
            except OSError as error:
                logger.warning("cannot reach the node's feed at %s: %s", self._path, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX_SECONDS)
                continue
            writer.write(hello(self._since) + retain(self._retain))
            self._writer = writer
            try:
                async for batch in self._transactions(reader):
                    delay = RECONNECT_DELAY_INITIAL_SECONDS
                    for event in batch:
                        yield event
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as error:
                logger.warning("the node's feed connection ended: %s", error)
            finally:
                self._writer = None
                writer.close()
            if self._receiving.is_set():
                self._receiving.clear()
                yield FeedInterrupted("the connection to the node's feed reader ended")
            await asyncio.sleep(delay)

    async def _transactions(
        self, reader: asyncio.StreamReader
    ) -> AsyncGenerator[list[FeedEvent], None]:
        """The reader's events: a transaction's all together, others one by one."""
        transaction: list[FeedEvent] = []
        while True:
            (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"a frame of {size} bytes from the node's feed")
            event = decode_event(await reader.readexactly(size))
            if isinstance(event, RowChange | RowChanges):
                transaction.append(event)
                continue
            if isinstance(event, TransactionEnd):
                transaction.append(event)
                last = transaction[-2]
                if isinstance(last, RowChanges):
                    last = last.changes[-1]
                assert isinstance(last, RowChange), "the reader sends no empty transactions"
                self._since = last.position
                yield transaction
                transaction = []
                continue
            if isinstance(event, FeedResumed):
                self._receiving.set()
            elif isinstance(event, FeedInterrupted):
                self._receiving.clear()
            yield [event]
