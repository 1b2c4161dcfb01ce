"""The presence bus on PostgreSQL: LISTEN/NOTIFY on one channel.

One dedicated connection per node listens on the channel and publishes on it: a
batch of messages is one transaction of `pg_notify` calls, delivered to every
listener in order, after the transactions before it. A node that connects (or
reconnects: it may have missed messages) sends `hello` and its own `sync` round;
every other node answers with its own round (see gateway/presence/bus.py). Each
bus connection is named `sitebuilder-presence <node>` in `pg_stat_activity`, which
tells a starting node which peers to wait for before it sweeps builder sessions.

NOTIFY goes through one queue on the server, taken under a lock at every commit that
notifies: each presence change is a small write on the database every node already
uses. Redis takes that traffic off PostgreSQL for bigger clusters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from gateway.presence.bus import (
    RECONNECT_FIRST_SECONDS,
    RECONNECT_MAX_SECONDS,
    BusPresence,
    Outgoing,
)

logger = logging.getLogger(__name__)

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_NOTIFY = "SELECT pg_notify($1, $2)"
# Names every node's bus connection, so a starting node knows whom to wait for.
APPLICATION_PREFIX = "sitebuilder-presence "
_PEERS = """
    SELECT application_name AS name FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND application_name LIKE $1
"""


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class PostgresTransport:
    name = "postgres"

    def __init__(self, dsn: str, channel: str, *, timeout_seconds: float) -> None:
        self._dsn = dsn
        self._channel = channel
        self._timeout = timeout_seconds
        self._conn: asyncpg.Connection | None = None

    async def start(self, node: str) -> None:
        """Nothing to check: the gateway has just reached this database."""

    async def run(self, bus: BusPresence) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._timeout,
                    server_settings={"application_name": APPLICATION_PREFIX + bus.node},
                )
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(self._channel, self._listener(bus))
                peers = await conn.fetch(_PEERS, APPLICATION_PREFIX + "%", timeout=self._timeout)
                self._conn = conn
                bus.on_connected(peers=[p["name"][len(APPLICATION_PREFIX) :] for p in peers])
                delay = RECONNECT_FIRST_SECONDS
                await lost.wait()
            except _DB_ERRORS as error:
                logger.warning("presence bus (PostgreSQL) unavailable: %s", error)
            finally:
                self._conn = None
                bus.on_disconnected()
                if conn is not None:
                    await self._close(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _close(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self._timeout)
        except _DB_ERRORS:
            conn.terminate()

    def _listener(self, bus: BusPresence) -> Callable[[object, int, str, object], None]:
        def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            assert isinstance(payload, str)
            unknown = bus.receive(payload)
            if unknown is not None:
                bus.ask(unknown)

        return on_notify

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        conn = self._conn
        if conn is None:
            return
        rows = [(self._channel, out.payload.decode()) for out in batch]
        try:
            async with conn.transaction():
                await conn.executemany(_NOTIFY, rows, timeout=self._timeout)
        except _DB_ERRORS as error:
            logger.warning("presence bus (PostgreSQL): publish failed, reconnecting: %s", error)
            conn.terminate()

    async def close(self) -> None:
        """Nothing left: the run loop closes its connection when cancelled."""
