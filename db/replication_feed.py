"""The logical-replication change feed: pgoutput from a persistent slot.

The slot is the durable log. The server resends, after any reconnect or restart,
every transaction that committed at or after the slot's confirmed position, and the
feed confirms only what its consumer says it no longer needs (`retain_from`), so a
restarted gateway rebuilds its history from the slot and nothing a client may still
resume from is lost. Transactions already yielded are skipped when the server resends
them after a reconnect, which is what makes a reconnect lossless.

A transaction is yielded when its Commit arrives (with `streaming` off the server
sends each transaction whole, after it commits), so all its changes carry the commit
time, the acting user and gateway request (from the once-per-transaction message of
migrations 0008 and 0013) and a position made of the commit LSN and the change's index:
strictly increasing, and comparable across restarts of the gateway and of PostgreSQL.
The position's epoch is the cluster's system identifier, so positions of another
cluster are never mistaken for ours.

Holding the slot back has one cost: a stopping server waits for its replication
clients to confirm everything it sent them (up to `wal_sender_timeout`). So the feed
keeps one ordinary connection open as a sentinel; when the server ends it (a
shutdown terminates ordinary sessions first), the feed confirms everything it has
received. The running gateway loses nothing by it (its history is in memory and the
stream resumes after the last transaction it yielded); only a gateway restart right
after a database restart then finds less to rebuild its history from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from db import pgoutput
from db.errors import DATABASE_ERRORS
from db.feed import (
    ChangeOp,
    FeedEvent,
    FeedInterrupted,
    FeedResumed,
    FenceReached,
    JsonText,
    Position,
    RowChange,
    RowChanges,
    TransactionEnd,
)
from db.replication_stream import (
    ReplicationError,
    ReplicationStream,
    SlotInfo,
    SlotInvalidated,
    drop_slot,
    lsn_to_str,
    slot_status,
)

logger = logging.getLogger(__name__)

_INSERT = ord("I")
ACTOR_PREFIX = "sitebuilder.actor"
FENCE_PREFIX = "sitebuilder.fence"
_OPS = {pgoutput.Insert: ChangeOp.INSERT, pgoutput.Update: ChangeOp.UPDATE}
# Read on every insert: as a constant, not through EnumType's attribute lookup.
_OP_INSERT = ChangeOp.INSERT


@dataclass(slots=True)
class _Transaction:
    begin: pgoutput.Begin
    changes: list[tuple[str, ChangeOp, dict[str, Any] | None, dict[str, Any] | None]] = field(
        default_factory=list
    )
    actor: UUID | None = None
    request: str | None = None
    fences: list[str] = field(default_factory=list)


class ReplicationFeed:
    """Changes from a pgoutput replication slot, over psycopg2 (see replication_stream)."""

    name = "replication"
    # A transaction is decoded whole, then its events are yielded back to back.
    whole_transactions = True

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        status_interval_seconds: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self.slot = slot
        self._publication = publication
        self._status_interval = status_interval_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stream: ReplicationStream | None = None
        self._streaming = asyncio.Event()
        self._epoch = ""
        self._xid_reference = 0
        self._last_commit_lsn = -1
        self._last_end_lsn = 0
        self._relations = pgoutput.RelationCache(json=JsonText)
        self._conn: asyncpg.Connection | None = None
        # The server ended our sentinel session: it is stopping and waits for us to
        # confirm all it sent, so from now on every transaction is confirmed at once.
        self._leaving = False

    # The ChangeFeed interface

    @property
    def connected(self) -> bool:
        return self._streaming.is_set()

    async def wait_connected(self) -> None:
        await self._streaming.wait()

    def retain_from(self, position: Position | None) -> None:
        """Confirm to the server everything before `position` (all that was yielded when
        None): the slot keeps the rest, so a restarted gateway gets it again."""
        if self._stream is None:
            return
        if position is None or position.epoch != self._epoch or self._leaving:
            self._stream.acknowledge(self._last_end_lsn)
        else:
            self._stream.acknowledge(min(position.txn, self._last_end_lsn))

    @staticmethod
    async def fence(conn: asyncpg.Connection, token: str) -> None:
        """A transactional logical message of its own transaction: decoded after every
        transaction whose commit record precedes it in the WAL."""
        await conn.execute("SELECT pg_logical_emit_message(true, $1, $2)", FENCE_PREFIX, token)

    async def lag_bytes(self) -> int | None:
        """WAL the server keeps for this slot beyond its confirmed position."""
        status = await slot_status(self._dsn, self.slot)
        return None if status is None else status.lag_bytes

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        delay = self._backoff_initial
        first = True
        try:
            while True:
                try:
                    stream, info, recreated = await self._open()
                except ReplicationError as error:
                    logger.warning(
                        "replication feed: cannot stream (%s); retrying in %.1fs", error, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff_max)
                    continue
                delay = self._backoff_initial
                self._stream = stream
                floor = Position(self._epoch, info.confirmed_flush_lsn, 0)
                # The same slot resends whatever this feed had not yet yielded.
                lossless = not (first or recreated or info.created)
                first = False
                self._streaming.set()
                yield FeedResumed(floor, lossless=lossless, reason=_why(recreated))
                try:
                    async for event in self._changes(stream):
                        yield event
                    reason = "the replication stream ended"
                except ReplicationError as error:
                    reason = f"lost the replication stream: {error}"
                finally:
                    self._streaming.clear()
                    self._stream = None
                    await stream.close()
                yield FeedInterrupted(reason)
        finally:
            await self._close_conn()

    # Connecting

    async def _open(self) -> tuple[ReplicationStream, SlotInfo, bool]:
        """A started stream, its slot, and whether the slot had to be made anew
        after the server invalidated it."""
        stream = ReplicationStream(
            self._dsn,
            self.slot,
            self._publication,
            status_interval_seconds=self._status_interval,
        )
        try:
            await stream.connect()
            recreated = False
            try:
                info = await stream.ensure_slot()
                logger.debug("replication feed: slot %s", info)
            except SlotInvalidated as error:
                info = await self._recreate_slot(stream, error)
                recreated = True
            await self._learn_cluster()
            stream.acknowledge(max(info.confirmed_flush_lsn, 0))
            try:
                await stream.start(0, logical_messages=True)
            except SlotInvalidated as error:
                await stream.close()
                await stream.connect()
                info = await self._recreate_slot(stream, error)
                recreated = True
                await stream.start(0, logical_messages=True)
        except BaseException:
            await stream.close()
            raise
        if info.created and not recreated:
            logger.info("replication feed: created slot %s", self.slot)
        logger.info(
            "replication feed: streaming slot=%s from %s (pgoutput protocol %d)",
            self.slot,
            lsn_to_str(info.confirmed_flush_lsn),
            stream.proto_version,
        )
        return stream, info, recreated

    def _on_server_leaving(self, conn: object) -> None:
        if self._stream is not None:
            logger.info(
                "replication feed: the server ended our session (shutting down?): "
                "confirming all received WAL so it need not wait for us"
            )
            self._leaving = True
            self._stream.acknowledge(self._last_end_lsn)

    async def _recreate_slot(self, stream: ReplicationStream, error: Exception) -> SlotInfo:
        logger.error(
            "replication feed: slot %s was invalidated by the server (%s): WAL it needed is "
            "gone (max_slot_wal_keep_size); making a new slot, subscribers will get a reset",
            self.slot,
            error,
        )
        await drop_slot(self._dsn, self.slot, terminate=True)
        return await stream.ensure_slot()

    async def _learn_cluster(self) -> None:
        """Open the sentinel connection; learn the epoch (cluster identity) and a full
        64-bit xid to widen pgoutput's 32-bit ones."""
        await self._close_conn()
        self._leaving = False
        try:
            self._conn = await asyncpg.connect(self._dsn)
            self._conn.add_termination_listener(self._on_server_leaving)
            row = await self._conn.fetchrow(
                "SELECT (SELECT system_identifier FROM pg_control_system()) AS system,"
                " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax"
            )
        except DATABASE_ERRORS as error:
            raise ReplicationError(f"cannot identify the database cluster: {error}") from error
        assert row is not None
        self._epoch = f"r{row['system']:016x}"
        self._xid_reference = max(self._xid_reference, int(row["xmax"]))

    # Decoding

    async def _changes(self, stream: ReplicationStream) -> AsyncIterator[FeedEvent]:
        decoder = pgoutput.Decoder()
        self._relations = pgoutput.RelationCache(json=JsonText)
        transaction: _Transaction | None = None
        async for message in stream.messages():
            payload = message.payload
            if payload[0] == _INSERT and transaction is not None and not decoder.in_stream:
                filling = self._insert(transaction, payload)
                if filling is not None:
                    await filling
                continue
            decoded = decoder.decode(payload)
            kind = type(decoded)
            if kind is pgoutput.Begin:
                assert isinstance(decoded, pgoutput.Begin)
                transaction = _Transaction(decoded)
            elif kind is pgoutput.Commit:
                assert isinstance(decoded, pgoutput.Commit)
                if transaction is not None:
                    for event in await self._complete(transaction, decoded):
                        yield event
                transaction = None
            elif kind is pgoutput.Relation:
                assert isinstance(decoded, pgoutput.Relation)
                self._relations.add(decoded)
            elif transaction is not None:
                filling = self._collect(transaction, decoded)
                if filling is not None:
                    await filling

    def _insert(
        self, transaction: _Transaction, payload: bytes
    ) -> Coroutine[Any, Any, None] | None:
        """`_collect` of an Insert, decoded straight into its row (the usual message)."""
        relation, new, unchanged = self._relations.insert(payload)
        transaction.changes.append((relation.name, _OP_INSERT, new, None))
        return self._fill_unchanged(relation, new, None) if unchanged else None

    def _collect(
        self, transaction: _Transaction, message: pgoutput.Message
    ) -> Coroutine[Any, Any, None] | None:
        """Add the message's change to the transaction; what must be awaited to fill in
        its unchanged TOASTed values, if any (rare: most messages cost no coroutine)."""
        if isinstance(message, pgoutput.Insert | pgoutput.Update):
            relation = self._relations[message.relation_id]
            new = self._relations.row(message.relation_id, message.new)
            old_tuple = message.old if isinstance(message, pgoutput.Update) else None
            old = self._relations.row(message.relation_id, old_tuple) if old_tuple else None
            transaction.changes.append((relation.name, _OPS[type(message)], new, old))
            if pgoutput.UNCHANGED in message.new:
                return self._fill_unchanged(relation, new, old)
        elif isinstance(message, pgoutput.Delete):
            relation = self._relations[message.relation_id]
            values = message.old if message.old is not None else message.key
            old = self._relations.row(message.relation_id, values) if values else None
            transaction.changes.append((relation.name, ChangeOp.DELETE, None, old))
        elif isinstance(message, pgoutput.Truncate):
            for relation_id in message.relation_ids:
                name = self._relations[relation_id].name
                transaction.changes.append((name, ChangeOp.TRUNCATE, None, None))
        elif isinstance(message, pgoutput.LogicalMessage) and message.prefix == ACTOR_PREFIX:
            transaction.actor, transaction.request = _origin(message.content)
        elif isinstance(message, pgoutput.LogicalMessage) and message.prefix == FENCE_PREFIX:
            transaction.fences.append(bytes(message.content).decode())
        return None

    async def _complete(
        self, transaction: _Transaction, commit: pgoutput.Commit
    ) -> list[FeedEvent]:
        """The transaction's events (its changes as one batch), or none when it was
        yielded before a reconnect."""
        if commit.commit_lsn <= self._last_commit_lsn:
            return []
        xid = self._widen(transaction.begin.xid)
        epoch, lsn, committed_at = self._epoch, commit.commit_lsn, commit.commit_time
        actor, request = transaction.actor, transaction.request
        changes = [
            RowChange(
                table=table,
                op=op,
                new=new,
                old=old,
                xid=xid,
                # Position(epoch, lsn, index) without its __new__'s Python frame
                position=_new_tuple(Position, (epoch, lsn, index)),
                committed_at=committed_at,
                actor=actor,
                request=request,
                typed=True,
            )
            for index, (table, op, new, old) in enumerate(transaction.changes, start=1)
        ]
        self._last_commit_lsn = commit.commit_lsn
        self._last_end_lsn = commit.end_lsn
        if self._leaving and self._stream is not None:
            self._stream.acknowledge(commit.end_lsn)
        events: list[FeedEvent] = []
        if changes:
            events += (RowChanges(changes), TransactionEnd(xid))
        events.extend(FenceReached(token) for token in transaction.fences)
        return events

    def _widen(self, xid: int) -> int:
        """The 64-bit xid (as pg_current_snapshot() reports them) of a 32-bit one."""
        reference = self._xid_reference
        full = (reference & ~0xFFFFFFFF) | xid
        if full > reference + (1 << 31):
            full -= 1 << 32
        elif full < reference - (1 << 31):
            full += 1 << 32
        self._xid_reference = max(reference, full)
        return full

    # Unchanged TOASTed values

    async def _fill_unchanged(
        self,
        relation: pgoutput.Relation,
        new: dict[str, Any],
        old: dict[str, Any] | None,
    ) -> None:
        """pgoutput leaves out large values an UPDATE did not change; a client must get
        the whole row, so take them from the old row (REPLICA IDENTITY FULL sends it)
        or, failing that, read them from the table."""
        missing = [name for name, value in new.items() if value is pgoutput.UNCHANGED]
        if old is not None:
            for name in list(missing):
                if old.get(name, pgoutput.UNCHANGED) is not pgoutput.UNCHANGED:
                    new[name] = old[name]
                    missing.remove(name)
        if missing:
            fetched = await self._fetch_columns(relation, new.get("id"), missing)
            new.update(fetched)

    async def _fetch_columns(
        self, relation: pgoutput.Relation, row_id: Any, columns: list[str]
    ) -> dict[str, Any]:
        logger.warning(
            "replication feed: %s.%s has no old row with its unchanged values "
            "(REPLICA IDENTITY is not FULL?); reading them from the table",
            relation.namespace,
            relation.name,
        )
        if self._conn is None or self._conn.is_closed():
            raise ReplicationError("lost the connection needed to read unchanged values")
        select = ", ".join(f'to_jsonb("{name}") AS "{name}"' for name in columns)
        row = await self._conn.fetchrow(
            f'SELECT {select} FROM "{relation.namespace}"."{relation.name}" WHERE id = $1',
            row_id,
        )
        if row is None:
            return dict.fromkeys(columns)
        return {name: _from_json(row[name]) for name in columns}

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.remove_termination_listener(self._on_server_leaving)
            if not conn.is_closed():
                conn.terminate()


_new_tuple = tuple.__new__


def _from_json(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def _why(recreated: bool) -> str:
    if recreated:
        return "the replication slot was invalidated and made anew"
    return "the replication stream was interrupted"


def _origin(content: bytes) -> tuple[UUID | None, str | None]:
    """The acting user and gateway request of a transaction, from its logical message:
    JSON {"actor", "request"} (migration 0013), or a bare user id (0008, still found in
    WAL written before the upgrade)."""
    if not content.startswith(b"{"):
        return UUID(content.decode()), None
    origin = orjson.loads(content)
    actor = origin.get("actor")
    request = origin.get("request")
    return (UUID(actor) if actor else None), (request if isinstance(request, str) else None)
