"""The session's PostgreSQL servers; a fresh, migrated database per test.

Every test runs on the embedded server (PostgreSQL 18 from the wheel, as its
superuser). Modules marked `pytestmark = pytest.mark.hosted_postgres` run a second
time on Debian's PostgreSQL 15 as a non-superuser role, in a database shaped as
hosted Supabase's (tests/hosted_postgres.py): their `pg_server` is parametrized
`embedded` / `postgres15`, and every fixture below follows it.

The schema is migrated once per server into a template database (on PostgreSQL 15 by
the non-superuser role); each test gets `CREATE DATABASE … TEMPLATE`, a file copy
that takes a few milliseconds, so tests never see each other's rows and never pay
for migrations.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from db.embedded import EmbeddedPostgres
from db.migrations import Migrator, load_migrations
from tests import hosted_postgres
from tests.support import server_directory

# Gateway fixtures (gateway, ws_client, feed_kind…) and the Supabase client (phx_client)
# for every test module that asks.
pytest_plugins = ["tests.gateway_fixtures", "tests.phoenix_fixtures"]

TEMPLATE_DATABASE = "sitebuilder_template"
PUBLICATION = "sitebuilder_realtime"
MIGRATION_PARAMETERS = {"sitebuilder.publication": PUBLICATION}


SERVER_KINDS = ("embedded", "postgres15")
# How long ending a walsender may take before its slot is looked at again.
TERMINATE_WAIT_MS = 5000


@dataclass(frozen=True)
class PostgresServer:
    """One of the session's servers: what it is and how to reach it.

    `admin_dsn` is a superuser's, for what only the test harness does (create and
    drop databases); `dsn(database)` is the role the tests and the gateway use: the
    superuser on the embedded server, the hosted-shaped non-superuser on PostgreSQL 15.
    """

    kind: str
    pgdata: Path
    admin_dsn: str
    dsn_of: Callable[[str], str]
    # SQL the superuser runs in each new database before the migrations (hosted shape).
    prepare_sql: str = ""
    # CREATE DATABASE clause giving the database to the tests' role.
    owner_clause: str = ""

    def dsn(self, database: str) -> str:
        return self.dsn_of(database)

    def admin_dsn_of(self, database: str) -> str:
        return self.admin_dsn.replace("/postgres?", f"/{database}?", 1)


async def _create_database(server: PostgresServer, name: str, template: str | None) -> None:
    """Create `name` (from `template`, else bare but for the server's own shape)."""
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        # FILE_COPY: copying the template's files beats WAL-logging each of its pages
        # for a small database (about 40 ms less per test, creating and dropping).
        source = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        await admin.execute(f"CREATE DATABASE {name}{source}{server.owner_clause}")
    finally:
        await admin.close()
    if template is None and server.prepare_sql:
        prepared = await asyncpg.connect(server.admin_dsn_of(name))
        try:
            await prepared.execute(server.prepare_sql)
        finally:
            await prepared.close()


async def _create_template(server: PostgresServer) -> None:
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DATABASE}")
    finally:
        await admin.close()
    await _create_database(server, TEMPLATE_DATABASE, None)
    conn = await asyncpg.connect(server.dsn(TEMPLATE_DATABASE))
    try:
        await Migrator(conn, load_migrations(), MIGRATION_PARAMETERS).up()
    finally:
        await conn.close()


async def _without_fsync(admin_dsn: str) -> None:
    """A throwaway server need not survive a power cut: every test creates and drops a
    database, which with fsync costs about 70 ms more (PostgreSQL 15's is started so)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute("ALTER SYSTEM SET fsync = off")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[PostgresServer]:
    """The embedded PostgreSQL 18, tests connected as its superuser."""
    directory = server_directory("sitebuilder-embedded-")
    embedded = EmbeddedPostgres(directory / "pgdata")
    asyncio.run(embedded.start())
    try:
        admin_dsn = embedded.admin_dsn
        asyncio.run(_without_fsync(admin_dsn))
        server = PostgresServer(
            "embedded",
            embedded.pgdata,
            admin_dsn,
            lambda database: admin_dsn.replace("/postgres?", f"/{database}?", 1),
        )
        asyncio.run(_create_template(server))
        yield server
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres15_server() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL 15 shaped as hosted Supabase, tests connected as a role
    that is no superuser."""
    assert hosted_postgres.available(), hosted_postgres.INSTALL_HINT
    cluster = hosted_postgres.start()
    try:
        admin_dsn = cluster.admin_dsn()

        async def prepare_cluster() -> None:
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(hosted_postgres.CLUSTER_SQL)
            finally:
                await admin.close()

        asyncio.run(prepare_cluster())
        server = PostgresServer(
            "postgres15",
            cluster.pgdata,
            admin_dsn,
            cluster.app_dsn,
            prepare_sql=hosted_postgres.DATABASE_SQL,
            owner_clause=f" OWNER {hosted_postgres.APP_ROLE}",
        )
        asyncio.run(_create_template(server))
        yield server
    finally:
        cluster.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hosted_postgres: run the module's tests on the embedded server and again on "
        "Debian's PostgreSQL 15 as a non-superuser role, hosted-Supabase shaped",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_server" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "hosted_postgres"
    ):
        metafunc.parametrize("pg_server", SERVER_KINDS, indirect=True)


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A new directory for a server's data directory, removed after the test: in memory
    where the machine has a tmpfs (tests.support.server_directory), where initdb and a
    start take 1.2 s instead of 2.5-3 s and a stop 0.1 s instead of 1-1.3 s."""
    directory = server_directory("sitebuilder-test-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The server this test runs on (`embedded` unless the module asks for both)."""
    kind = getattr(request, "param", "embedded")
    server: PostgresServer = request.getfixturevalue(f"{kind}_server")
    return server


async def drop_replication_slots(admin: asyncpg.Connection, database: str) -> None:
    """A database with a replication slot cannot be dropped; a test's slots go with it.

    A walsender still streaming a slot is ended and waited for (pg_terminate_backend's
    timeout), so its slot is free to drop at once, without sleeping on a poll."""
    for _ in range(50):
        await admin.execute(
            """
            SELECT pg_terminate_backend(active_pid, $2) FROM pg_replication_slots
             WHERE database = $1 AND active_pid IS NOT NULL
            """,
            database,
            TERMINATE_WAIT_MS,
        )
        slots = await admin.fetch(
            "SELECT slot_name, active FROM pg_replication_slots WHERE database = $1", database
        )
        if not slots:
            return
        for slot in slots:
            if not slot["active"]:
                await admin.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])


@asynccontextmanager
async def _scratch_database(
    server: PostgresServer, name: str, template: str | None
) -> AsyncIterator[str]:
    """Create a database, yield its DSN, drop it whatever the test did."""
    await _create_database(server, name, template)
    try:
        yield server.dsn(name)
    finally:
        admin = await asyncpg.connect(server.admin_dsn)
        try:
            await drop_replication_slots(admin, name)
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database holding the migrated schema and no rows."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    async with _scratch_database(pg_server, name, TEMPLATE_DATABASE) as dsn:
        yield dsn


@pytest.fixture
async def empty_database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database with no migrations applied, for migration tests (on
    PostgreSQL 15 it holds hosted Supabase's auth schema, as a hosted database does)."""
    name = f"bare_{uuid.uuid4().hex[:16]}"
    async with _scratch_database(pg_server, name, None) as dsn:
        yield dsn


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's database as the owner of its tables, so RLS does
    not apply to it (the superuser, or on PostgreSQL 15 the BYPASSRLS role)."""
    connection = await asyncpg.connect(database_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def admin_conn(
    pg_server: PostgresServer, database_dsn: str
) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test's database, for what only the test harness
    does or sees (server settings, other roles, walsender statistics)."""
    database = urlsplit(database_dsn).path.lstrip("/")
    connection = await asyncpg.connect(pg_server.admin_dsn_of(database))
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
async def restartable_postgres(server_tmp_path: Path) -> AsyncIterator[RestartablePostgres]:
    """A migrated database on its own server, stopped after the test (a few seconds to make)."""
    server = RestartablePostgres(server_tmp_path / "private-pgdata")
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
