"""One embedded PostgreSQL per test session; a fresh, migrated database per test.

The schema is migrated once into a template database; each test gets
`CREATE DATABASE … TEMPLATE`, a file copy that takes a few milliseconds, so tests
never see each other's rows and never pay for migrations.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from db.embedded import EmbeddedPostgres
from db.migrations import Migrator, load_migrations

# Gateway fixtures (gateway, ws_client, feed_kind…) for every test module that asks.
pytest_plugins = ["tests.gateway_fixtures"]

TEMPLATE_DATABASE = "sitebuilder_template"
PUBLICATION = "sitebuilder_realtime"
MIGRATION_PARAMETERS = {"sitebuilder.publication": PUBLICATION}


@dataclass(frozen=True)
class PostgresServer:
    """The session's embedded server: where it lives and how to reach it."""

    pgdata: Path
    admin_dsn: str

    def dsn(self, database: str) -> str:
        return self.admin_dsn.replace("/postgres?", f"/{database}?", 1)


async def _create_template(server: EmbeddedPostgres, dsn_of: Callable[[str], str]) -> None:
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DATABASE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_of(TEMPLATE_DATABASE))
    try:
        await Migrator(conn, load_migrations(), MIGRATION_PARAMETERS).up()
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "pgdata")
    asyncio.run(embedded.start())
    try:
        server = PostgresServer(embedded.pgdata, embedded.admin_dsn)
        asyncio.run(_create_template(embedded, server.dsn))
        yield server
    finally:
        embedded.stop()


async def drop_replication_slots(admin: asyncpg.Connection, database: str) -> None:
    """A database with a replication slot cannot be dropped; a test's slots go with it."""
    await admin.execute(
        """
        SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
         WHERE database = $1 AND active_pid IS NOT NULL
        """,
        database,
    )
    for _ in range(50):
        slots = await admin.fetch(
            "SELECT slot_name, active FROM pg_replication_slots WHERE database = $1", database
        )
        if not slots:
            return
        for slot in slots:
            if not slot["active"]:
                await admin.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
        await asyncio.sleep(0.1)


@asynccontextmanager
async def _scratch_database(server: PostgresServer, name: str, create: str) -> AsyncIterator[str]:
    """Create a database with `create`, yield its DSN, drop it whatever the test did."""
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(create)
        yield server.dsn(name)
        await drop_replication_slots(admin, name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database holding the migrated schema and no rows."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    create = f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DATABASE}"
    async with _scratch_database(pg_server, name, create) as dsn:
        yield dsn


@pytest.fixture
async def empty_database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database with no migrations applied, for migration tests."""
    name = f"bare_{uuid.uuid4().hex[:16]}"
    async with _scratch_database(pg_server, name, f"CREATE DATABASE {name}") as dsn:
        yield dsn


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test's database (RLS does not apply to it)."""
    connection = await asyncpg.connect(database_dsn)
    try:
        yield connection
    finally:
        await connection.close()


UserFactory = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
def make_user(conn: asyncpg.Connection) -> UserFactory:
    """Create a row in auth.users and return its id."""

    async def create(email: str | None = None) -> uuid.UUID:
        user_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
            user_id,
            email or f"{user_id.hex[:8]}@example.test",
        )
        return user_id

    return create


class RestartablePostgres:
    """A private embedded server for tests that stop and start PostgreSQL under a gateway.

    Its DSN names the socket inside the data directory, so it survives restarts.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server = EmbeddedPostgres(pgdata)
        self.dsn = ""

    async def start(self) -> None:
        self._server = EmbeddedPostgres(self.pgdata)
        self.dsn = await self._server.start()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
async def restartable_postgres(tmp_path: Path) -> AsyncIterator[RestartablePostgres]:
    """A migrated database on its own server, stopped after the test (a few seconds to make)."""
    server = RestartablePostgres(tmp_path / "private-pgdata")
    await server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        try:
            await Migrator(conn, load_migrations(), MIGRATION_PARAMETERS).up()
        finally:
            await conn.close()
        yield server
    finally:
        server.stop()
