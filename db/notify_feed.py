"""The LISTEN/NOTIFY change feed (migration 0007 installs the triggers).

One dedicated connection LISTENs; notifications arrive after commit, in commit
order, each transaction's together. NOTIFY has no transaction-end marker, so one
is inferred: a notification of another transaction, or a short quiet period,
closes the current one. Large changes are fetched from `realtime_overflow` on the
same connection, in order. If the connection drops, `FeedInterrupted` is yielded,
the feed reconnects with backoff and yields `FeedResumed` once listening again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from db.errors import DATABASE_ERRORS
from db.feed import (
    ChangeOp,
    FeedEvent,
    FeedInterrupted,
    FeedResumed,
    FenceReached,
    Position,
    RowChange,
    TransactionEnd,
)

logger = logging.getLogger(__name__)

CHANNEL = "sitebuilder_changes"
OVERFLOW_RETENTION = "15 minutes"
OVERFLOW_SWEEP_SECONDS = 60.0
_INTERRUPTED = object()


class NotifyFeed:
    """Changes from the NOTIFY triggers, over one asyncpg connection."""

    name = "notify"
    # Each notification is awaited from a queue (with a timeout: a task of its own).
    whole_transactions = False

    def __init__(
        self,
        dsn: str,
        *,
        quiet_seconds: float = 0.05,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._quiet_seconds = quiet_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None
        self._last_sweep = 0.0
        self._listening = asyncio.Event()
        self._epoch = ""
        self._txn = 0
        self._index = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def wait_connected(self) -> None:
        await self._listening.wait()

    @property
    def backlog(self) -> int:
        """Notifications received and not yet yielded."""
        return self._queue.qsize()

    def retain_from(self, position: Position | None) -> None:
        """Nothing to do: NOTIFY keeps nothing for a listener that goes away."""

    async def lag_bytes(self) -> int | None:
        """NOTIFY holds no WAL for anyone."""
        return None

    @staticmethod
    async def fence(conn: asyncpg.Connection, token: str) -> None:
        """A notification of its own transaction: PostgreSQL delivers notifications in
        commit order, so it arrives after every change committed before it."""
        await conn.execute(
            "SELECT pg_notify($1, $2)", CHANNEL, orjson.dumps({"fence": token}).decode()
        )

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        try:
            while True:
                await self._connect()
                yield FeedResumed(Position(self._epoch, 0, 0))
                async for event in self._listen():
                    yield event
                yield FeedInterrupted("lost the LISTEN connection to PostgreSQL")
        finally:
            await self._close()

    async def _connect(self) -> None:
        delay = self._backoff_initial
        while True:
            self._queue = asyncio.Queue()
            try:
                conn = await asyncpg.connect(self._dsn)
                conn.add_termination_listener(self._on_terminated)
                await conn.add_listener(CHANNEL, self._on_notification)
            except DATABASE_ERRORS as error:
                logger.warning("change feed: cannot listen (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            self._conn = conn
            # Positions count transactions from here; a new connection starts a new epoch.
            self._epoch = f"n{time.time_ns() // 1_000_000:x}"
            self._txn = 0
            self._listening.set()
            logger.info("change feed: listening on channel %s", CHANNEL)
            return

    async def _close(self) -> None:
        self._listening.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._queue.put_nowait(payload)

    def _on_terminated(self, conn: Any) -> None:
        self._queue.put_nowait(_INTERRUPTED)

    async def _listen(self) -> AsyncIterator[FeedEvent]:
        open_xid: int | None = None
        while True:
            timeout = self._quiet_seconds if open_xid is not None else None
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                assert open_xid is not None
                yield TransactionEnd(open_xid)
                open_xid = None
                await self._sweep_overflow()
                continue
            if item is _INTERRUPTED:
                await self._close()
                return
            try:
                message = await self._decode(str(item))
            except DATABASE_ERRORS as error:
                logger.warning("change feed: cannot fetch an overflow row: %s", error)
                await self._close()
                return
            fence = message.get("fence")
            if fence is not None:
                if open_xid is not None:
                    yield TransactionEnd(open_xid)
                    open_xid = None
                yield FenceReached(str(fence))
                continue
            xid = int(message["xid"])
            if xid != open_xid:
                if open_xid is not None:
                    yield TransactionEnd(open_xid)
                open_xid = xid
                self._txn += 1
                self._index = 0
            self._index += 1
            yield _row_change(message, xid, Position(self._epoch, self._txn, self._index))

    async def _decode(self, payload: str) -> dict[str, Any]:
        """The trigger's message, fetched from `realtime_overflow` when it was too large."""
        message: dict[str, Any] = orjson.loads(payload)
        overflow_id = message.get("overflow")
        if overflow_id is not None:
            assert self._conn is not None
            stored = await self._conn.fetchval(
                "SELECT payload FROM public.realtime_overflow WHERE id = $1", overflow_id
            )
            message = orjson.loads(stored)
        return message

    async def _sweep_overflow(self) -> None:
        """Delete overflow rows every gateway has long read (any node may do it)."""
        now = time.monotonic()
        if now - self._last_sweep < OVERFLOW_SWEEP_SECONDS or self._conn is None:
            return
        self._last_sweep = now
        try:
            await self._conn.execute(
                "DELETE FROM public.realtime_overflow "
                f"WHERE created_at < now() - interval '{OVERFLOW_RETENTION}'"
            )
        except DATABASE_ERRORS as error:
            logger.warning("change feed: overflow sweep failed: %s", error)


def _row_change(message: dict[str, Any], xid: int, position: Position) -> RowChange:
    actor = message.get("actor")
    return RowChange(
        table=message["table"],
        op=ChangeOp(message["op"]),
        new=message.get("new"),
        old=message.get("old"),
        xid=xid,
        position=position,
        committed_at=datetime.fromisoformat(message["at"]),
        actor=UUID(actor) if actor else None,
        request=message.get("request"),
    )
