"""The replication stream against a real server: slots, raw pgoutput bytes, positions, errors.

Messages are checked by their first byte only (decoding is db/pgoutput.py's job), except
a Commit's LSNs, read from its fixed layout. Whatever the server does in its own time is
waited for by polling its catalog against a deadline; every test body runs under
`asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest

from db.replication_stream import (
    ConnectionLost,
    ReplicationMessage,
    ReplicationStream,
    SlotInUse,
    SlotInvalidated,
    SlotMismatch,
    SlotMissing,
    drop_slot,
    lsn_from_str,
    lsn_to_str,
    pgoutput_proto_version,
    replication_possible,
    slot_status,
)
from tests.conftest import PUBLICATION, PostgresServer, UserFactory

pytestmark = pytest.mark.hosted_postgres

TEST_LIMIT = 60.0
WAIT_LIMIT = 15.0
STATUS_INTERVAL = 0.1
T = TypeVar("T")


class Reader:
    """Reads a stream in a task of its own, as the gateway will; status updates go out then."""

    def __init__(self, stream: ReplicationStream) -> None:
        self._queue: asyncio.Queue[ReplicationMessage] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: ReplicationStream) -> None:
        async for message in stream.messages():
            self._queue.put_nowait(message)

    async def next(self) -> ReplicationMessage:
        get = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            {get, self.task}, timeout=WAIT_LIMIT, return_when=asyncio.FIRST_COMPLETED
        )
        if get in done:
            return get.result()
        get.cancel()
        if self.task in done:
            self.task.result()
            raise AssertionError("the stream ended")
        raise AssertionError(f"no message within {WAIT_LIMIT}s")

    async def transaction(self) -> list[ReplicationMessage]:
        """The messages of the next transaction, Begin to Commit."""
        messages = [await self.next()]
        assert messages[0].payload[:1] == b"B"
        while messages[-1].payload[:1] != b"C":
            messages.append(await self.next())
        return messages


class Streams:
    """Streams on the test's slot; closed, and their readers finished, at teardown."""

    def __init__(self, dsn: str, slot: str) -> None:
        self.dsn = dsn
        self.slot = slot
        self._streams: list[ReplicationStream] = []
        self._readers: list[Reader] = []

    async def open(self, slot: str | None = None) -> ReplicationStream:
        stream = ReplicationStream(
            self.dsn, slot or self.slot, PUBLICATION, status_interval_seconds=STATUS_INTERVAL
        )
        self._streams.append(stream)
        await stream.connect()
        return stream

    async def started(
        self, start_lsn: int = 0, **options: bool
    ) -> tuple[ReplicationStream, Reader]:
        stream = await self.open()
        await stream.ensure_slot()
        await stream.start(start_lsn, **options)
        return stream, self.read(stream)

    def read(self, stream: ReplicationStream) -> Reader:
        reader = Reader(stream)
        self._readers.append(reader)
        return reader

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()
        # Closing ends every reader; one that failed was checked by its test, or not.
        await asyncio.gather(*(reader.task for reader in self._readers), return_exceptions=True)


@pytest.fixture
def slot() -> str:
    return f"rs_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def streams(database_dsn: str, slot: str) -> AsyncIterator[Streams]:
    opened = Streams(database_dsn, slot)
    try:
        yield opened
    finally:
        await asyncio.wait_for(opened.close(), WAIT_LIMIT)


async def until(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], what: str) -> T:
    """Poll `probe` until `accept` takes its value; fail after WAIT_LIMIT."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {WAIT_LIMIT}s")
        await asyncio.sleep(0.02)


async def slot_row(conn: asyncpg.Connection, slot: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM pg_replication_slots WHERE slot_name = $1", slot)


async def confirmed(conn: asyncpg.Connection, slot: str) -> int:
    value = await conn.fetchval(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", slot
    )
    return int(value)


async def walsender(conn: asyncpg.Connection, slot: str) -> asyncpg.Record | None:
    """The slot's walsender as pg_stat_replication shows it (reply_time, flush_lsn)."""
    return await conn.fetchrow(
        """
        SELECT r.pid, r.reply_time, r.flush_lsn FROM pg_stat_replication r
          JOIN pg_replication_slots s ON s.active_pid = r.pid
         WHERE s.slot_name = $1
        """,
        slot,
    )


async def reply_time(conn: asyncpg.Connection, slot: str) -> datetime | None:
    """When the slot's walsender last took a status update."""
    sender = await walsender(conn, slot)
    return None if sender is None else sender["reply_time"]


async def status_update_after(
    conn: asyncpg.Connection, slot: str, before: datetime | None
) -> datetime | None:
    return await until(
        lambda: reply_time(conn, slot),
        lambda taken: taken is not None and taken != before,
        "a new status update",
    )


async def status_updates_processed(conn: asyncpg.Connection, slot: str, count: int = 2) -> None:
    """Return once the walsender has taken `count` more status updates.

    It records an update's time before moving the slot, so after two the first one's
    effect on the slot is visible. `conn` must be a superuser's: PostgreSQL shows a
    walsender's reply_time only to roles with pg_read_all_stats, not to its own role.
    """
    seen = await reply_time(conn, slot)
    for _ in range(count):
        seen = await status_update_after(conn, slot, seen)


async def slot_inactive(conn: asyncpg.Connection, slot: str) -> None:
    await until(
        lambda: slot_row(conn, slot),
        lambda row: row is not None and not row["active"],
        "slot active",
    )


async def insert_project(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    await conn.execute(
        "INSERT INTO projects (user_id, name, type) VALUES ($1, 'Site', 'website')", user_id
    )


def kinds(messages: list[ReplicationMessage]) -> list[bytes]:
    return [message.payload[:1] for message in messages]


def commit_lsn(commit: ReplicationMessage) -> int:
    """Where the commit record starts: a pgoutput Commit is b'C', flags (1), commit LSN (8),
    end LSN (8), timestamp (8)."""
    assert commit.payload[:1] == b"C"
    return int.from_bytes(commit.payload[2:10], "big")


def commit_end_lsn(commit: ReplicationMessage) -> int:
    """Where the commit record ends: the position to acknowledge."""
    assert commit.payload[:1] == b"C"
    return int.from_bytes(commit.payload[10:18], "big")


async def test_the_slot_is_created_when_absent_and_reused(
    streams: Streams, conn: asyncpg.Connection
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        first = await streams.open()
        created = await first.ensure_slot()
        await first.close()
        reused = await (await streams.open()).ensure_slot()
        row = await slot_row(conn, streams.slot)

    assert created.created
    assert not reused.created
    assert reused.confirmed_flush_lsn == created.confirmed_flush_lsn
    assert row is not None
    assert (row["plugin"], row["slot_type"], row["temporary"]) == ("pgoutput", "logical", False)
    assert row["confirmed_flush_lsn"] == created.confirmed_flush_lsn
    assert row["restart_lsn"] == created.restart_lsn


async def test_a_slot_made_before_failover_slots_becomes_one_on_postgresql_17(
    streams: Streams, conn: asyncpg.Connection
) -> None:
    """Made by SQL as older gateways made it; a standby can keep a copy of it afterwards."""
    async with asyncio.timeout(TEST_LIMIT):
        await conn.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", streams.slot
        )
        stream = await streams.open()
        await stream.ensure_slot()
        if stream.server_version < 170000:
            pytest.skip("failover slots are new in PostgreSQL 17")
        failover = await conn.fetchval(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1", streams.slot
        )
    assert failover is True


async def test_the_newest_pgoutput_protocol_of_the_server_is_chosen(
    streams: Streams, pg_server: PostgresServer
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        stream = await streams.open()

    newest = {"embedded": (180000, 4), "postgres15": (150000, 3)}[pg_server.kind]
    assert (stream.server_version // 10000 * 10000, stream.proto_version) == newest


@pytest.mark.parametrize(
    ("server_version", "proto_version"),
    [(130012, 1), (140000, 2), (150004, 3), (160000, 4), (180001, 4)],
)
def test_the_newest_protocol_the_server_speaks_is_chosen(
    server_version: int, proto_version: int
) -> None:
    assert pgoutput_proto_version(server_version) == proto_version


async def test_an_insert_arrives_as_begin_relation_insert_commit(
    streams: Streams, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        user_id = await make_user()
        _, reader = await streams.started()
        await insert_project(conn, user_id)
        transaction = await reader.transaction()

    found = kinds(transaction)
    assert found[0] == b"B"
    assert found[-1] == b"C"
    assert set(found[1:-1]) == {b"R", b"I"}
    assert found.index(b"R") < found.index(b"I")
    assert b"public\x00projects\x00" in transaction[1].payload
    commit = transaction[-1]
    assert commit.data_start == commit_end_lsn(commit)
    assert all(m.wal_end == m.data_start for m in transaction)
    assert abs(datetime.now(UTC) - commit.send_time) < timedelta(minutes=1)


async def test_an_acknowledged_commit_becomes_the_slots_confirmed_position(
    streams: Streams, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        user_id = await make_user()
        stream, reader = await streams.started()
        await insert_project(conn, user_id)
        end = commit_end_lsn((await reader.transaction())[-1])
        stream.acknowledge(end)
        # At least `end`: once everything received is acknowledged, a keepalive's WAL end
        # may be reported too (psycopg2's rule, ReplicationStream.acknowledge), and the
        # cluster's other databases write WAL while the suite runs.
        await until(lambda: confirmed(conn, streams.slot), lambda lsn: lsn >= end, "confirmed")


async def test_the_confirmed_position_never_passes_the_acknowledged_one(
    streams: Streams,
    conn: asyncpg.Connection,
    admin_conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        user_id = await make_user()
        stream, reader = await streams.started()
        await insert_project(conn, user_id)
        await insert_project(conn, user_id)
        first_end = commit_end_lsn((await reader.transaction())[-1])
        second_end = commit_end_lsn((await reader.transaction())[-1])
        stream.acknowledge(first_end)
        await until(
            lambda: confirmed(conn, streams.slot), lambda lsn: lsn == first_end, "confirmed"
        )
        await status_updates_processed(admin_conn, streams.slot)
        position = await confirmed(conn, streams.slot)

    assert first_end < second_end
    assert position == first_end


async def test_an_unacknowledged_transaction_is_never_confirmed(
    streams: Streams,
    conn: asyncpg.Connection,
    admin_conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    """Nothing acknowledged: the slot may only move over WAL the feed skips.

    psycopg2 reports a keepalive's WAL end as flushed while nothing delivered is
    unacknowledged, so the slot can pass the user insert (auth.users is not published)
    but never the project insert's commit; a restart delivers that transaction again.
    """
    async with asyncio.timeout(TEST_LIMIT):
        stream, reader = await streams.started()
        start = await confirmed(conn, streams.slot)
        user_id = await make_user()
        await insert_project(conn, user_id)
        transaction = await reader.transaction()
        await status_updates_processed(admin_conn, streams.slot)
        position = await confirmed(conn, streams.slot)
        await stream.close()
        await slot_inactive(conn, streams.slot)
        _, again = await streams.started()
        redelivered = await again.transaction()

    assert stream.acknowledged == 0
    assert start <= position <= commit_lsn(transaction[-1])
    assert [m.payload for m in redelivered] == [m.payload for m in transaction]


async def test_a_restart_delivers_the_unacknowledged_transactions_again(
    streams: Streams, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        user_id = await make_user()
        stream, reader = await streams.started()
        await insert_project(conn, user_id)
        await insert_project(conn, user_id)
        first_end = commit_end_lsn((await reader.transaction())[-1])
        second_end = commit_end_lsn((await reader.transaction())[-1])
        stream.acknowledge(first_end)
        await until(
            lambda: confirmed(conn, streams.slot), lambda lsn: lsn == first_end, "confirmed"
        )
        await stream.close()
        await slot_inactive(conn, streams.slot)

        await stream.connect()
        await stream.start()
        again_from_slot = commit_end_lsn((await streams.read(stream).transaction())[-1])
        await stream.close()
        await slot_inactive(conn, streams.slot)
        _, from_lsn = await streams.started(first_end)
        again_from_lsn = commit_end_lsn((await from_lsn.transaction())[-1])

    assert again_from_slot == second_end
    assert again_from_lsn == second_end


async def test_an_idle_stream_sends_status_updates_on_schedule(
    streams: Streams, admin_conn: asyncpg.Connection
) -> None:
    """psycopg2 sends none by itself while nothing arrives; the server would ask after 30 s."""
    async with asyncio.timeout(TEST_LIMIT):
        await streams.started()
        await status_updates_processed(admin_conn, streams.slot, count=3)


async def test_a_second_stream_on_an_active_slot_gets_slot_in_use(streams: Streams) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        await streams.started()
        second = await streams.open()
        with pytest.raises(SlotInUse) as raised:
            await second.start()

    assert raised.value.pgcode == "55006"


async def test_a_terminated_walsender_ends_messages_with_connection_lost(
    streams: Streams, conn: asyncpg.Connection
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        stream, reader = await streams.started()
        sender = await until(lambda: walsender(conn, streams.slot), bool, "walsender")
        assert sender is not None
        await conn.execute("SELECT pg_terminate_backend($1)", sender["pid"])
        with pytest.raises(ConnectionLost) as raised:
            await reader.task
        await stream.close()

    assert raised.value.pgcode == "57P01"


async def test_close_ends_messages_and_can_be_repeated(
    streams: Streams, conn: asyncpg.Connection
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        stream, reader = await streams.started()
        await until(lambda: walsender(conn, streams.slot), bool, "walsender")
        await stream.close()
        await reader.task
        await stream.close()
        await slot_inactive(conn, streams.slot)


async def test_starting_a_missing_slot_raises_slot_missing(streams: Streams) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        stream = await streams.open()
        with pytest.raises(SlotMissing):
            await stream.start()


async def test_a_slot_that_is_not_a_pgoutput_slot_of_this_database_is_refused(
    streams: Streams, conn: asyncpg.Connection, pg_server: PostgresServer
) -> None:
    other_plugin, physical, elsewhere = (f"{streams.slot}_{n}" for n in ("td", "ph", "db"))
    admin = await asyncio.wait_for(asyncpg.connect(pg_server.admin_dsn), WAIT_LIMIT)
    try:
        async with asyncio.timeout(TEST_LIMIT):
            await conn.execute(
                "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", other_plugin
            )
            await conn.execute("SELECT pg_create_physical_replication_slot($1)", physical)
            await admin.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", elsewhere
            )
            errors = []
            for name in (other_plugin, physical, elsewhere):
                with pytest.raises(SlotMismatch) as raised:
                    await (await streams.open(name)).ensure_slot()
                errors.append(str(raised.value))
    finally:
        async with asyncio.timeout(WAIT_LIMIT):
            await streams.close()
            for name in (physical, elsewhere):
                await admin.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = $1",
                    name,
                )
            await admin.close()

    assert "test_decoding" in errors[0]
    assert "physical" in errors[1]
    assert "belongs to database 'postgres'" in errors[2]


async def test_an_invalidated_slot_raises_slot_invalidated(
    streams: Streams, admin_conn: asyncpg.Connection, pg_server: PostgresServer
) -> None:
    """PostgreSQL 18 invalidates slots idle longer than idle_replication_slot_timeout.

    The setting is server-wide; nothing else in this session's server holds a slot
    meanwhile (the other server's tests run in this process too, not at the same time).
    """
    if pg_server.kind != "embedded":
        pytest.skip("idle_replication_slot_timeout is new in PostgreSQL 18")
    async with asyncio.timeout(TEST_LIMIT):
        await (await streams.open()).ensure_slot()
        await streams.close()
        await slot_inactive(admin_conn, streams.slot)
        await admin_conn.execute("ALTER SYSTEM SET idle_replication_slot_timeout = 1")
        try:
            await admin_conn.execute("SELECT pg_reload_conf()")
            await until(
                lambda: checkpoint_then_slot(admin_conn, streams.slot),
                lambda row: row is not None and row["invalidation_reason"] is not None,
                "slot not invalidated",
            )
        finally:
            await admin_conn.execute("ALTER SYSTEM RESET idle_replication_slot_timeout")
            await admin_conn.execute("SELECT pg_reload_conf()")
        stream = await streams.open()
        with pytest.raises(SlotInvalidated):
            await stream.ensure_slot()
        with pytest.raises(SlotInvalidated):
            await stream.start()


async def checkpoint_then_slot(conn: asyncpg.Connection, slot: str) -> asyncpg.Record | None:
    """Idle slots are invalidated by checkpoints."""
    await conn.execute("CHECKPOINT")
    return await slot_row(conn, slot)


async def test_slot_status_and_drop_slot(streams: Streams, conn: asyncpg.Connection) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        before = await slot_status(streams.dsn, streams.slot)
        stream = await streams.open()
        info = await stream.ensure_slot()
        await stream.start()
        await until(lambda: walsender(conn, streams.slot), bool, "walsender")
        status = await slot_status(streams.dsn, streams.slot)
        with pytest.raises(SlotInUse):
            await drop_slot(streams.dsn, streams.slot)
        dropped = await drop_slot(streams.dsn, streams.slot, terminate=True)
        after = await slot_status(streams.dsn, streams.slot)
        dropped_again = await drop_slot(streams.dsn, streams.slot)

    assert before is None
    assert status is not None
    assert (status.slot_name, status.plugin, status.slot_type) == (
        streams.slot,
        "pgoutput",
        "logical",
    )
    assert status.database == urlsplit(streams.dsn).path.lstrip("/")
    assert status.active
    assert isinstance(status.active_pid, int)
    assert status.confirmed_flush_lsn is not None
    assert status.confirmed_flush_lsn >= info.confirmed_flush_lsn
    assert status.restart_lsn is not None
    assert status.wal_status == "reserved"
    assert status.lag_bytes is not None
    assert status.lag_bytes >= 0
    assert dropped
    assert after is None
    assert not dropped_again


async def test_replication_is_possible_for_a_superuser_or_replication_role_not_a_plain_one(
    database_dsn: str, admin_conn: asyncpg.Connection, pg_server: PostgresServer
) -> None:
    role = f"rs_role_{uuid.uuid4().hex[:12]}"
    where = urlsplit(database_dsn)
    role_dsn = where._replace(netloc=f"{role}:{role}@{where.netloc.partition('@')[2]}").geturl()
    async with asyncio.timeout(TEST_LIMIT):
        tests_role = await replication_possible(database_dsn)
        await admin_conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}'")
        try:
            plain = await replication_possible(role_dsn)
            await admin_conn.execute(f"ALTER ROLE {role} REPLICATION")
            replicator = await replication_possible(role_dsn)
        finally:
            await admin_conn.execute(f"DROP ROLE {role}")

    assert tests_role[0]
    assert {"embedded": "superuser", "postgres15": "has REPLICATION"}[pg_server.kind] in (
        tests_role[1]
    )
    assert plain == (False, f"role {role} has neither REPLICATION nor SUPERUSER")
    assert replicator[0]
    assert "REPLICATION" in replicator[1]


async def test_logical_messages_arrive_when_asked_for(
    streams: Streams, conn: asyncpg.Connection
) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        _, reader = await streams.started(logical_messages=True)
        await conn.execute("SELECT pg_logical_emit_message(false, 'sitebuilder', 'hello')")
        message = await reader.next()

    assert message.payload[:1] == b"M"
    assert message.payload.endswith(b"sitebuilder\x00\x00\x00\x00\x05hello")


async def test_lsns_are_written_as_postgresql_writes_them(conn: asyncpg.Connection) -> None:
    async with asyncio.timeout(TEST_LIMIT):
        server = await conn.fetchval("SELECT '16/B374D848'::pg_lsn")
        text = await conn.fetchval("SELECT $1::text::pg_lsn::text", "16/0000a0")

    assert lsn_from_str("16/B374D848") == server == 0x16_B374D848
    assert lsn_to_str(server) == "16/B374D848"
    assert lsn_to_str(lsn_from_str("16/0000a0")) == text == "16/A0"
    with pytest.raises(ValueError, match="not an LSN"):
        lsn_from_str("16-B374D848")
