"""A logical replication stream of raw pgoutput messages, driven by the asyncio loop.

asyncpg and psycopg 3 cannot stream replication; psycopg2's
`LogicalReplicationConnection` can, and in async mode it never blocks: each command is
sent, then `poll()` is called whenever the loop reports the socket ready. Decoding the
messages is db/pgoutput.py's job; this module moves bytes and WAL positions (LSNs).

Positions: a message's `data_start` is the WAL position it was decoded at, or 0 when
the message precedes another of the same change (Relation and Type messages), and a
Commit's `data_start` is its transaction's end LSN, the position to `acknowledge()`
once the transaction is handled. The slot's `confirmed_flush_lsn` moves only when a status
update reports a flush position, and after a restart the server sends again every
transaction that commits after it: delivery is at least once.

Status updates: by itself psycopg2 sends them only from inside `read_message()`, which
nothing calls while the socket is quiet, so `messages()` wakes at least every
`status_interval_seconds` to send one; without them the server drops the connection
after `wal_sender_timeout` (60 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import asyncpg
import orjson
import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

PLUGIN = "pgoutput"
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
# SQLSTATE classes meaning the session is gone: connection exception, operator
# intervention (pg_terminate_backend, server shutdown or crash).
_CONNECTION_CLASSES = frozenset({"08", "57"})
_TERMINATE_WAIT_MS = 5000
_TURN_EVERY = 256


class ReplicationError(Exception):
    """The stream failed; `pgcode` is the server's SQLSTATE when it sent one."""

    def __init__(self, message: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


class ConnectionLost(ReplicationError):
    """The connection could not be opened or broke; reconnecting (with backoff) may help."""


class SlotInUse(ReplicationError):
    """Another process streams from the slot (after a lost connection, maybe our old one)."""


class SlotMissing(ReplicationError):
    """The slot does not exist (it was dropped)."""


class SlotMismatch(ReplicationError):
    """A slot of that name exists but is not a logical pgoutput slot of this database."""


class SlotInvalidated(ReplicationError):
    """The server gave up the slot's WAL; only a new slot and a resynchronisation help."""


@dataclass(frozen=True, slots=True)
class ReplicationMessage:
    """One pgoutput message as the server sent it.

    For logical decoding the server sends `wal_end` equal to `data_start`; it is not
    the server's current WAL end.
    """

    data_start: int
    wal_end: int
    # The server's timestamp as psycopg2 gives it: a naive local time. `send_time`
    # converts it when asked (2 µs a message, which the feed never asks).
    local_send_time: datetime
    payload: bytes

    @property
    def send_time(self) -> datetime:
        return self.local_send_time.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """The slot `ensure_slot()` checked; `created` when that call created it."""

    name: str
    created: bool
    confirmed_flush_lsn: int
    restart_lsn: int


@dataclass(frozen=True, slots=True)
class SlotStatus:
    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    wal_status: str | None
    lag_bytes: int | None


def lsn_to_str(lsn: int) -> str:
    """PostgreSQL's text form of an LSN, `X/Y` in hex."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"not an LSN: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(text: str) -> int:
    match = _LSN.match(text)
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return int(match[1], 16) << 32 | int(match[2], 16)


# The first server version whose logical slots can be synchronised to standbys.
FAILOVER_SLOTS_SINCE = 170000


def pgoutput_proto_version(server_version: int) -> int:
    """The newest pgoutput protocol the server speaks; without streaming all send the same."""
    if server_version >= 160000:
        return 4
    if server_version >= 150000:
        return 3
    if server_version >= 140000:
        return 2
    return 1


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _translate(error: psycopg2.Error) -> ReplicationError:
    """What a caller can act on, from the SQLSTATE.

    psycopg2 reports failures of the connection itself (refused, reset, the copy
    stream gone) without one; apart from its own usage errors those all mean the
    session is lost.
    """
    message = error.diag.message_primary or str(error).strip()
    code = error.pgcode
    if isinstance(error, psycopg2.errors.ObjectInUse):
        return SlotInUse(message, code)
    if code is None and not isinstance(error, psycopg2.ProgrammingError):
        return ConnectionLost(message, code)
    if code is not None and code[:2] in _CONNECTION_CLASSES:
        return ConnectionLost(message, code)
    return ReplicationError(message, code)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg2.Error as error:
        raise _translate(error) from error


def _invalidation(slot: dict[str, Any]) -> str | None:
    """Why the server gave up the slot, if it did (PostgreSQL 17 names the reason)."""
    reason = slot.get("invalidation_reason")
    if reason:
        return str(reason)
    if slot.get("wal_status") == "lost":
        return "wal_removed"
    return None


def _check_slot(name: str, slot: dict[str, Any], database: str) -> None:
    if slot["slot_type"] != "logical" or slot["plugin"] != PLUGIN:
        kind = f"{slot['slot_type']} slot" + (
            f" of plugin {slot['plugin']}" if slot["plugin"] else ""
        )
        raise SlotMismatch(
            f"replication slot {name!r} is a {kind}, not a logical {PLUGIN} slot; "
            "drop it or choose another slot name"
        )
    if slot["database"] != database:
        raise SlotMismatch(
            f"replication slot {name!r} belongs to database {slot['database']!r}, "
            f"not {database!r}; choose another slot name"
        )
    reason = _invalidation(slot)
    if reason is not None:
        raise SlotInvalidated(
            f"replication slot {name!r} has been invalidated ({reason}); "
            "drop it, create it again and resynchronise"
        )


def _open(dsn: str) -> psycopg2.extras.LogicalReplicationConnection:
    # The connection factory adds `replication=database` to the DSN.
    return psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, async_=True
    )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ReplicationStream:
    """One replication connection streaming one slot's changes for one publication.

    Use: `connect()`, `ensure_slot()`, `start()`, then iterate `messages()` (one
    consumer) and `acknowledge()` each handled Commit; `close()` at the end. After
    `close()` the same object may `connect()` again; acknowledgements are kept.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        *,
        status_interval_seconds: float = 10.0,
    ) -> None:
        if status_interval_seconds <= 0:
            raise ValueError("status_interval_seconds must be positive")
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._status_interval = status_interval_seconds
        self._conn: psycopg2.extras.LogicalReplicationConnection | None = None
        self._cursor: psycopg2.extras.ReplicationCursor | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._watched: tuple[int, bool] | None = None
        self._next_status = 0.0
        self._received = 0
        self._acknowledged = 0

    async def __aenter__(self) -> ReplicationStream:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def server_version(self) -> int:
        """The server's version number, e.g. 180001."""
        return int(self._connected().server_version)

    @property
    def proto_version(self) -> int:
        """The pgoutput protocol version `start()` asks for."""
        return pgoutput_proto_version(self.server_version)

    @property
    def acknowledged(self) -> int:
        """The highest LSN acknowledged: what status updates may report as flushed."""
        return self._acknowledged

    async def connect(self) -> None:
        if self._conn is not None:
            raise ReplicationError("the replication connection is already open")
        with _translated():
            # In a thread: libpq resolves the host name before connecting, blocking.
            self._conn = await asyncio.to_thread(_open, self._dsn)
        try:
            with _translated():
                await self._until_ready(self._conn)
        except BaseException:
            self._release(report=False)
            raise

    async def ensure_slot(self) -> SlotInfo:
        """Create the slot as a persistent logical pgoutput slot unless it exists; check it.

        On PostgreSQL 17 and later the slot is a failover slot (made one if an older
        version created it): a standby with `sync_replication_slots = on` keeps a copy,
        so after a switchover to it the gateway resumes from the copy instead of
        starting over with a new slot."""
        database, slot = await self._slot_row()
        created = False
        if slot is None:
            created = await self._create_slot()
            database, slot = await self._slot_row()
            if slot is None:
                raise SlotMissing(f"replication slot {self._slot!r} was dropped as it was created")
        _check_slot(self._slot, slot, database)
        if self.server_version >= FAILOVER_SLOTS_SINCE and slot.get("failover") is False:
            await self._query(f"ALTER_REPLICATION_SLOT {_ident(self._slot)} (FAILOVER true)")
        return SlotInfo(
            name=self._slot,
            created=created,
            confirmed_flush_lsn=lsn_from_str(slot["confirmed_flush_lsn"]),
            restart_lsn=lsn_from_str(slot["restart_lsn"]),
        )

    async def start(self, start_lsn: int = 0, *, logical_messages: bool = False) -> None:
        """Start streaming transactions that commit at or after `start_lsn`.

        0, or any position before it, means the slot's `confirmed_flush_lsn`.
        `logical_messages` adds `pg_logical_emit_message()` messages ('M'). Large
        transactions are not streamed while in progress: the server spills them to
        disk and sends them at commit like any other.
        """
        conn = self._idle()
        options = {
            "proto_version": str(self.proto_version),
            "publication_names": _ident(self._publication),
        }
        if logical_messages:
            options["messages"] = "true"
        cursor = conn.cursor()
        try:
            cursor.start_replication(
                slot_name=self._slot,
                decode=False,
                start_lsn=start_lsn,
                options=options,
                # psycopg2 also sends from inside read_message() on a timer of its own
                # (whole seconds); harmless, it reports the same positions.
                status_interval=max(1, math.ceil(self._status_interval)),
            )
            await self._until_ready(conn)
        except psycopg2.errors.UndefinedObject as error:
            raise SlotMissing(
                f"replication slot {self._slot!r} does not exist", error.pgcode
            ) from error
        except psycopg2.errors.ObjectNotInPrerequisiteState as error:
            await self._raise_if_invalidated()
            raise _translate(error) from error
        except psycopg2.Error as error:
            raise _translate(error) from error
        self._cursor = cursor
        self._next_status = time.monotonic() + self._status_interval

    async def messages(self) -> AsyncGenerator[ReplicationMessage, None]:
        """Messages in commit order until `close()`; errors end the stream and close it.

        Each wake drains everything that has arrived before waiting again, giving other
        tasks a turn now and then so a backlog cannot starve the loop. The consumer must
        not hold the iterator for long: status updates are sent from here.
        """
        if self._cursor is None:
            raise ReplicationError("start() the stream before reading its messages")
        in_a_row = 0
        while (cursor := self._cursor) is not None:
            message = self._next(cursor)
            if message is None:
                in_a_row = 0
                wait = max(0.0, self._next_status - time.monotonic())
                await self._ready(self._connected().fileno(), write=False, limit=wait)
                continue
            yield message
            in_a_row += 1
            if in_a_row % _TURN_EVERY == 0:
                await asyncio.sleep(0)

    def acknowledge(self, lsn: int) -> None:
        """Everything before `lsn` is handled and may be reported flushed (monotonic).

        psycopg2 adds one rule: when a keepalive arrives and the last message received
        has been acknowledged, it reports the keepalive's WAL end as flushed, so an
        idle slot does not hold WAL forever and the server can finish a shutdown. The
        server sends keepalives between transactions, or mid-transaction only after
        hearing nothing for half of `wal_sender_timeout`; so acknowledge each Commit
        before reading far past it.
        """
        if lsn <= self._acknowledged:
            return
        self._acknowledged = lsn
        if self._cursor is not None:
            # For the replies psycopg2 sends by itself.
            self._report(self._cursor, send=False)

    async def close(self) -> None:
        """Report the acknowledged position one last time and close; idempotent."""
        self._release(report=True)

    def _connected(self) -> psycopg2.extras.LogicalReplicationConnection:
        if self._conn is None:
            raise ReplicationError("the replication connection is not open")
        return self._conn

    def _idle(self) -> psycopg2.extras.LogicalReplicationConnection:
        """The connection, for a command: it takes none once streaming."""
        if self._cursor is not None:
            raise ReplicationError("the stream has started; slot commands must come before")
        return self._connected()

    def _next(self, cursor: psycopg2.extras.ReplicationCursor) -> ReplicationMessage | None:
        try:
            raw = cursor.read_message()
            if time.monotonic() >= self._next_status:
                self._report(cursor, send=True)
        except psycopg2.Error as error:
            self._release(report=False)
            raise _translate(error) from error
        self._received = max(self._received, cursor.wal_end)
        if raw is None:
            return None
        return ReplicationMessage(
            data_start=raw.data_start,
            wal_end=raw.wal_end,
            local_send_time=raw.send_time,
            payload=raw.payload,
        )

    def _report(self, cursor: psycopg2.extras.ReplicationCursor, *, send: bool) -> None:
        """Give psycopg2 the positions to report (it keeps the highest); `send` sends now."""
        cursor.send_feedback(  # type: ignore[no-untyped-call]
            write_lsn=self._received,
            flush_lsn=self._acknowledged,
            apply_lsn=self._acknowledged,
            force=send,
        )
        if send:
            self._next_status = time.monotonic() + self._status_interval

    async def _until_ready(self, conn: psycopg2.extensions.connection) -> None:
        """Drive the command in progress (or the connection attempt) to its end."""
        while (state := conn.poll()) != psycopg2.extensions.POLL_OK:
            await self._ready(conn.fileno(), write=state == psycopg2.extensions.POLL_WRITE)

    async def _ready(self, fd: int, *, write: bool, limit: float | None = None) -> None:
        """Return once `fd` is ready, `limit` seconds pass or `close()` is called."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        (loop.add_writer if write else loop.add_reader)(fd, functools.partial(_wake, waiter))
        self._waiter, self._watched = waiter, (fd, write)
        try:
            await asyncio.wait({waiter}, timeout=limit)
        finally:
            # close() may have stopped watching already, and the fd may be reused since.
            if self._waiter is waiter:
                self._stop_watching()

    def _stop_watching(self) -> None:
        if self._waiter is None or self._watched is None:
            return
        fd, write = self._watched
        loop = asyncio.get_running_loop()
        (loop.remove_writer if write else loop.remove_reader)(fd)
        self._waiter.cancel()
        self._waiter = self._watched = None

    def _release(self, *, report: bool) -> None:
        conn, self._conn = self._conn, None
        cursor, self._cursor = self._cursor, None
        if conn is None:
            return
        self._stop_watching()
        if report and cursor is not None:
            # A last status update lets a restart skip what was acknowledged since the
            # previous one; the server reads it before the terminate message.
            with contextlib.suppress(psycopg2.Error):
                self._report(cursor, send=True)
        conn.close()

    async def _query(self, sql: str, params: tuple[object, ...] | None = None) -> list[Any]:
        """Run simple SQL or a replication command on the replication connection."""
        conn = self._idle()
        cursor = conn.cursor()
        try:
            with _translated():
                cursor.execute(sql, params)
                await self._until_ready(conn)
                return cursor.fetchall() if cursor.description is not None else []
        finally:
            cursor.close()

    async def _slot_row(self) -> tuple[str, dict[str, Any] | None]:
        """The current database and the slot's pg_replication_slots row, as JSON.

        As JSON because its columns differ between server versions.
        """
        rows = await self._query(
            "SELECT current_database(), (SELECT to_jsonb(s)::text FROM pg_replication_slots s"
            " WHERE s.slot_name = %s)",
            (self._slot,),
        )
        database, slot = rows[0]
        return str(database), orjson.loads(slot) if slot is not None else None

    async def _create_slot(self) -> bool:
        """Create the slot; False when another process created it first."""
        # No snapshot: nothing reads the database as of the slot's start.
        command = f"CREATE_REPLICATION_SLOT {_ident(self._slot)} LOGICAL {PLUGIN}"
        if self.server_version >= FAILOVER_SLOTS_SINCE:
            command += " (SNAPSHOT 'nothing', FAILOVER true)"
        else:
            command += " NOEXPORT_SNAPSHOT"
        try:
            await self._query(command)
        except ReplicationError as error:
            if error.pgcode == psycopg2.errorcodes.DUPLICATE_OBJECT:
                return False
            raise
        return True

    async def _raise_if_invalidated(self) -> None:
        """Raise SlotInvalidated when the catalog says the slot is unusable.

        START_REPLICATION reports an invalidated slot with SQLSTATE 55000, which other
        refusals share and whose message may be translated: the catalog tells reliably.
        """
        _, slot = await self._slot_row()
        reason = None if slot is None else _invalidation(slot)
        if reason is not None:
            raise SlotInvalidated(
                f"replication slot {self._slot!r} has been invalidated ({reason})"
            )


_SLOT_STATUS = """
    SELECT slot_name, plugin, slot_type, database, active, active_pid,
           confirmed_flush_lsn, restart_lsn, wal_status,
           (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint AS lag_bytes
      FROM pg_replication_slots
     WHERE slot_name = $1
"""


async def slot_status(dsn: str, slot: str) -> SlotStatus | None:
    """The slot as pg_replication_slots shows it, or None when it does not exist."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(_SLOT_STATUS, slot)
    finally:
        await conn.close()
    if row is None:
        return None
    return SlotStatus(
        slot_name=row["slot_name"],
        plugin=row["plugin"],
        slot_type=row["slot_type"],
        database=row["database"],
        active=row["active"],
        active_pid=row["active_pid"],
        confirmed_flush_lsn=row["confirmed_flush_lsn"],
        restart_lsn=row["restart_lsn"],
        wal_status=row["wal_status"],
        lag_bytes=row["lag_bytes"],
    )


async def drop_slot(dsn: str, slot: str, *, terminate: bool = False) -> bool:
    """Drop the slot; False when it does not exist.

    An active slot raises SlotInUse unless `terminate`, which first ends the process
    holding it (PostgreSQL 14+: waits up to 5 s for it to exit).
    """
    conn = await asyncpg.connect(dsn)
    try:
        if terminate:
            await conn.execute(
                "SELECT pg_terminate_backend(active_pid, $2) FROM pg_replication_slots"
                " WHERE slot_name = $1 AND active_pid IS NOT NULL",
                slot,
                _TERMINATE_WAIT_MS,
            )
        await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
    except asyncpg.UndefinedObjectError:
        return False
    except asyncpg.ObjectInUseError as error:
        raise SlotInUse(str(error), error.sqlstate) from error
    finally:
        await conn.close()
    return True


_REPLICATION_SETTINGS = """
    SELECT current_setting('wal_level') AS wal_level,
           current_setting('max_replication_slots')::int AS max_replication_slots,
           current_setting('max_wal_senders')::int AS max_wal_senders,
           r.rolname, r.rolsuper, r.rolreplication
      FROM pg_roles r
     WHERE r.rolname = session_user
"""


async def replication_possible(dsn: str) -> tuple[bool, str]:
    """Whether this server and login role can stream logical replication, and why."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(_REPLICATION_SETTINGS)
    finally:
        await conn.close()
    assert row is not None
    if row["wal_level"] != "logical":
        return False, f"wal_level is {row['wal_level']}, not logical (changing it needs a restart)"
    for setting in ("max_replication_slots", "max_wal_senders"):
        if row[setting] == 0:
            return False, f"{setting} is 0"
    role = row["rolname"]
    if row["rolsuper"]:
        return True, f"wal_level is logical and role {role} is a superuser"
    if row["rolreplication"]:
        return True, f"wal_level is logical and role {role} has REPLICATION"
    return False, f"role {role} has neither REPLICATION nor SUPERUSER"
