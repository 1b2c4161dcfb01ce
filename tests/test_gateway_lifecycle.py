"""What a client sees when the network, the gateway or the database goes away.

A silent peer is dropped by the websocket keepalive; a shutdown lets a request
already being served finish; a database that stops makes the gateway unready and
its subscribers are told to resynchronise when it returns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import UUID

import asyncpg
import orjson
import pytest
from pydantic import SecretStr
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.app.server import Gateway
from gateway.settings import Settings
from tests.conftest import RestartablePostgres, UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    Connect,
    gateway_port,
    gateway_url,
    make_project,
    open_client,
    start_gateway,
    token,
)
from tests.support import http_get
from tests.test_gateway_feed import recv_until

# Keepalive


async def silent_peer_close_code(url: str, auth_token: str) -> int | None:
    """Authenticate, then read without ever answering a ping; the close code received.

    Built on websockets' sans-I/O client so the pongs it would send are simply
    never written, as with a browser tab frozen by the operating system.
    """
    protocol = ClientProtocol(parse_uri(url))
    protocol.send_request(protocol.connect())
    host, port = url.removeprefix("ws://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"".join(protocol.data_to_send()))
        while protocol.state is not State.OPEN:
            protocol.receive_data(await reader.read(65536))
            assert protocol.handshake_exc is None, protocol.handshake_exc
        protocol.send_text(orjson.dumps({"type": "auth", "token": auth_token}))
        writer.write(b"".join(protocol.data_to_send()))
        while protocol.close_rcvd is None:
            data = await reader.read(65536)
            if not data:
                break
            protocol.receive_data(data)
            protocol.events_received()
            protocol.data_to_send()  # pongs, dropped
        return None if protocol.close_rcvd is None else protocol.close_rcvd.code
    finally:
        writer.close()


@pytest.mark.parametrize(
    "gateway_overrides", [{"ping_interval_seconds": 0.2, "ping_timeout_seconds": 0.3}]
)
async def test_a_peer_that_stops_answering_pings_is_closed_4010(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    answering = await ws_client()
    await answering.auth(user)
    code = await asyncio.wait_for(silent_peer_close_code(gateway_url(gateway), token(user)), 10)
    assert code == 4010
    # Meanwhile several pings went to the peer that answers them: it is still connected.
    await answering.ping()


async def raw_client(
    url: str, auth_token: str
) -> tuple[ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
    """A signed-in connection on websockets' sans-I/O client: every frame seen."""
    protocol = ClientProtocol(parse_uri(url))
    protocol.send_request(protocol.connect())
    host, port = url.removeprefix("ws://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"".join(protocol.data_to_send()))
    while protocol.state is not State.OPEN:
        protocol.receive_data(await reader.read(65536))
    protocol.events_received()
    protocol.send_text(orjson.dumps({"type": "auth", "token": auth_token}))
    writer.write(b"".join(protocol.data_to_send()))
    return protocol, reader, writer


async def read_frames(
    protocol: ClientProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> list[Frame]:
    """The next frames received (pings answered); AssertionError when closed."""
    data = await reader.read(65536)
    assert data, f"closed: {protocol.close_rcvd}"
    protocol.receive_data(data)
    frames = [event for event in protocol.events_received() if isinstance(event, Frame)]
    assert not any(f.opcode is Opcode.CLOSE for f in frames), f"closed: {protocol.close_rcvd}"
    writer.write(b"".join(protocol.data_to_send()))  # the pongs
    return frames


async def count_pings(url: str, auth_token: str, pings: int) -> None:
    """Return once a connection that answers them has had `pings` pings: a clock
    of the gateway's ping interval."""
    protocol, reader, writer = await raw_client(url, auth_token)
    try:
        seen = 0
        while seen < pings:
            frames = await read_frames(protocol, reader, writer)
            seen += sum(frame.opcode is Opcode.PING for frame in frames)
    finally:
        writer.close()


async def answers_to(url: str, auth_token: str, frames: list[bytes]) -> set[object]:
    """Send `frames` at once, answering every ping; the refs answered, once the last
    frame's is."""
    protocol, reader, writer = await raw_client(url, auth_token)
    try:
        for frame in frames:
            protocol.send_text(frame)
        writer.write(b"".join(protocol.data_to_send()))
        last_ref = orjson.loads(frames[-1])["ref"]
        answered: set[object] = set()
        while last_ref not in answered:
            for frame in await read_frames(protocol, reader, writer):
                if frame.opcode is Opcode.TEXT:
                    answered.add(orjson.loads(frame.data).get("ref"))
        return answered
    finally:
        writer.close()


@pytest.mark.parametrize(
    "gateway_overrides", [{"ping_interval_seconds": 0.2, "ping_timeout_seconds": 0.3}]
)
async def test_a_client_whose_frames_wait_to_be_handled_is_not_closed_for_want_of_a_pong(
    gateway: Gateway, make_user: UserFactory, conn: asyncpg.Connection, database_dsn: str
) -> None:
    """40 subscribes sent at once while the projects table is locked: the gateway
    stops reading past websockets' queue of 16 frames, pongs included, for several
    ping timeouts (5 pings to another client). The client answered every ping: it gets
    every answer, not a close."""
    user = await make_user()
    project = await make_project(conn, user)
    frames = [
        orjson.dumps({"type": "subscribe", "project_id": str(project), "ref": f"s{n}"})
        for n in range(40)
    ]
    url = gateway_url(gateway)
    blocker = await asyncpg.connect(database_dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        client = asyncio.create_task(answers_to(url, token(user), frames))
        await asyncio.wait_for(count_pings(url, token(user), 5), 20)
        assert not client.done(), client
        await transaction.rollback()
        answered = await asyncio.wait_for(client, 20)
    finally:
        await blocker.close()
    assert {f"s{n}" for n in range(40)} <= answered, answered


# Shutdown


async def wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Return once some other backend of this database waits for a lock."""
    query = """
        SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
    """
    # PostgreSQL signals no event when a lock is waited for: poll, bounded by the caller.
    while not await conn.fetchval(query):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def test_shutdown_lets_an_in_flight_subscribe_finish(
    gateway_settings: Settings,
    database_dsn: str,
    make_user: UserFactory,
    conn: asyncpg.Connection,
) -> None:
    """`closing` comes at once; the reply and snapshot still follow, then close 1012."""
    user = await make_user()
    project = await make_project(conn, user)
    gw, pool = await start_gateway(gateway_settings, database_dsn)
    try:
        running = gw.running()
        await asyncio.wait_for(running.__aenter__(), 30)
        client = await open_client(gateway_url(gw))
        await client.auth(user)
        blocker = await asyncpg.connect(database_dsn)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
            await client.send({"type": "subscribe", "project_id": str(project), "ref": "s"})
            await asyncio.wait_for(wait_for_lock_waiter(conn), TIMEOUT)
            stopping = asyncio.create_task(running.__aexit__(None, None, None))
            await client.recv_type("closing")
            await transaction.rollback()
        finally:
            await blocker.close()
        ok = await client.recv_type("ok")
        assert ok["ref"] == "s"
        snapshot = await client.recv_type("snapshot")
        assert snapshot["project"]["id"] == str(project)
        code, _ = await client.expect_closed()
        assert code == 1012
        await asyncio.wait_for(stopping, 30)
    finally:
        await asyncio.wait_for(pool.close(), 10)


# The database goes away and comes back


async def readiness(gw: Gateway) -> int:
    return (await http_get(gateway_port(gw), "/readyz")).status


async def wait_for_readiness(gw: Gateway, status: int) -> None:
    # Readiness is only observable by asking, as a load balancer would: poll, bounded.
    while await readiness(gw) != status:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def write_until_stopped(
    dsn: str, project: UUID, stop: asyncio.Event
) -> tuple[list[str], list[str]]:
    """Rename the project over and over, through outages, as an application would:
    (names that committed, names whose commit was cut off and may or may not have)."""
    committed: list[str] = []
    uncertain: list[str] = []
    n = 0
    while not stop.is_set():
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.05)  # the server is down: retry
            continue
        try:
            while not stop.is_set():
                name = f"n{n}"
                n += 1
                try:
                    await conn.execute("UPDATE projects SET name = $2 WHERE id = $1", project, name)
                except BaseException:
                    uncertain.append(name)
                    raise
                committed.append(name)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # the connection broke mid-statement
        ):
            pass
        finally:
            conn.terminate()
    return committed, uncertain


@pytest.mark.parametrize("feed_kind", ["notify", "replication"])
async def test_readyz_follows_the_database_and_subscribers_recover_after_it_returns(
    restartable_postgres: RestartablePostgres, tmp_path: Path, feed_kind: str
) -> None:
    """Postgres restarts under a writer. /readyz is 503 while it is down. On NOTIFY,
    subscribers get `reset` and a snapshot; on replication, nothing is lost."""
    database = restartable_postgres
    setup = await asyncpg.connect(database.dsn)
    try:
        user = await setup.fetchval(
            "INSERT INTO auth.users (email) VALUES ('o@x.test') RETURNING id"
        )
        project = await make_project(setup, user)
    finally:
        await setup.close()
    settings = Settings(
        database_url=database.dsn,
        feed=feed_kind,
        port=0,
        jwt_secret=SecretStr(SECRET),
        data_dir=tmp_path,
    )
    gw, pool = await start_gateway(settings, database.dsn)
    try:
        async with gw.running():
            client = await open_client(gateway_url(gw))
            await client.auth(user)
            await client.subscribe(project)
            assert await readiness(gw) == 200
            stop = asyncio.Event()
            writer = asyncio.create_task(write_until_stopped(database.dsn, project, stop))

            await asyncio.to_thread(database.stop)  # the gateway runs on meanwhile
            await asyncio.wait_for(wait_for_readiness(gw, 503), 30)
            await database.start()
            await asyncio.wait_for(wait_for_readiness(gw, 200), 30)
            stop.set()
            committed, uncertain = await asyncio.wait_for(writer, 30)
            final = await database_name_of(database.dsn, project)

            frames = await recv_until(
                client,
                lambda f: (
                    (
                        f.get("type") == "change"
                        and f["entity"] == "project"
                        and f["new"]["name"] == final
                    )
                    or (f.get("type") == "snapshot" and f["project"]["name"] == final)
                ),
                within=30,
            )
            names = [
                f["new"]["name"]
                for f in frames
                if f.get("type") == "change" and f["entity"] == "project"
            ]
            if feed_kind == "replication":
                assert [f["type"] for f in frames if f["type"] != "change"] == []
                numbers = [int(name[1:]) for name in names]
                assert numbers == sorted(set(numbers))  # in commit order, none twice
                assert set(committed) <= set(names)  # none lost
                assert set(names) <= set(committed) | set(uncertain)
            else:
                kinds = [f["type"] for f in frames if f["type"] != "change"]
                assert "reset" in kinds, kinds
            await client.close()
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def database_name_of(dsn: str, project: UUID) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        name: str = await conn.fetchval("SELECT name FROM projects WHERE id = $1", project)
    finally:
        await conn.close()
    return name


# The server gives up the replication slot


async def test_invalidated_slot_is_made_anew_and_subscribers_resync(
    restartable_postgres: RestartablePostgres, tmp_path: Path
) -> None:
    """WAL over max_slot_wal_keep_size makes the server drop what the held-back slot
    needed: the gateway makes a new slot, counts it, and resets its subscribers."""
    database = restartable_postgres
    admin = await asyncpg.connect(database.dsn)
    try:
        await admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        await admin.execute("SELECT pg_reload_conf()")
        user = await admin.fetchval(
            "INSERT INTO auth.users (email) VALUES ('o@x.test') RETURNING id"
        )
        project = await make_project(admin, user)
        settings = Settings(
            database_url=database.dsn,
            feed="replication",
            port=0,
            jwt_secret=SecretStr(SECRET),
            data_dir=tmp_path,
        )
        gw, pool = await start_gateway(settings, database.dsn)
        try:
            async with gw.running():
                client = await open_client(gateway_url(gw))
                await client.auth(user)
                await client.subscribe(project)
                await admin.execute("UPDATE projects SET name = 'kept' WHERE id = $1", project)
                # In the history now (with its version), so the slot is held back.
                await recv_until(client, lambda f: f.get("entity") == "version")

                await admin.execute("CREATE TABLE filler (x text)")
                for _ in range(4):
                    await admin.execute("INSERT INTO filler SELECT repeat('x', 1000)")
                    await admin.execute("SELECT pg_switch_wal()")
                await admin.execute("CHECKPOINT")

                reset = await client.recv_type("reset", timeout=30)
                assert reset["reason"] == "feed_interrupted"
                assert "invalidated" in reset["message"]
                await client.recv_type("snapshot", timeout=30)
                resets = gw.metrics.registry.get_sample_value("sitebuilder_feed_resets_total")
                assert resets == 1
                await admin.execute("UPDATE projects SET name = 'after' WHERE id = $1", project)
                frames = await recv_until(client, lambda f: f.get("entity") == "project")
                assert frames[-1]["new"]["name"] == "after"
                await client.close()
        finally:
            await asyncio.wait_for(pool.close(), 10)
    finally:
        await admin.close()
