"""The session's PostgreSQL servers; a fresh, migrated database per test.

Every test runs on the embedded server (PostgreSQL 18 from the wheel, as its
superuser). Modules marked `pytestmark = pytest.mark.hosted_postgres` run a second
time on Debian's PostgreSQL 15 as a non-superuser role, in a database shaped as
hosted Supabase's (tests/hosted_postgres.py): their `pg_server` is parametrized
`embedded` / `postgres15`, and every fixture below follows it.

The schema is migrated once per server into a template database (on PostgreSQL 15 by
the non-superuser role); each test gets `CREATE DATABASE … TEMPLATE`, a file copy, so
tests never see each other's rows and never pay for migrations. The copies are made
ahead, on a thread of their own (`DatabaseSupply`), while the test before runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg2
import pytest

from db.embedded import EmbeddedPostgres
from db.migrations import Migrator, load_migrations
from tests import hosted_postgres

# Gateway fixtures (gateway, ws_client, feed_kind…) and the Supabase client (phx_client)
# for every test module that asks.
pytest_plugins = ["tests.gateway_fixtures", "tests.phoenix_fixtures"]

TEMPLATE_DATABASE = "sitebuilder_template"
PUBLICATION = "sitebuilder_realtime"
MIGRATION_PARAMETERS = {"sitebuilder.publication": PUBLICATION}


SERVER_KINDS = ("embedded", "postgres15")
# How long ending a walsender may take before its slot is looked at again.
TERMINATE_WAIT_MS = 5000


def _database_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def _copy_clause(owner_clause: str) -> str:
    # FILE_COPY: copying the template's files beats WAL-logging each of its pages
    # for a small database (about 40 ms less per test, creating and dropping).
    return f" TEMPLATE {TEMPLATE_DATABASE} STRATEGY FILE_COPY{owner_clause}"


class DatabaseSupply:
    """Copies of the template made ahead of the tests that take them, and dropped after.

    A copy costs 50 ms on a quiet machine and several hundred under load (two
    checkpoints and 8 MB of files), and nearly every test takes one. A thread of its
    own makes the next copy while the test before runs, mostly waiting on sockets, so
    the test finds its database ready; and it drops the databases of the tests that
    ended (their replication slots already dropped by the test's teardown, so no slot
    outlives its test). At most `AHEAD` copies wait, none touched before a test takes
    it; a copy that fails fails the test that takes it, and those after, with the
    server's error.
    """

    AHEAD = 2
    TAKE_TIMEOUT = 120.0

    def __init__(self, admin_dsn: str, owner_clause: str) -> None:
        self._admin_dsn = admin_dsn
        self._owner_clause = owner_clause
        self._changed = threading.Condition()
        self._ready: deque[str] = deque()
        self._finished: deque[str] = deque()
        self._failure: Exception | None = None
        self._stopping = False
        self.undropped: list[str] = []
        self._thread = threading.Thread(target=self._work, name="database-supply", daemon=True)
        self._thread.start()

    def take(self) -> str:
        """The next database's name (waiting for it to be made, if it is not yet)."""
        with self._changed:
            made = self._changed.wait_for(
                lambda: self._ready or self._failure is not None, self.TAKE_TIMEOUT
            )
            if self._failure is not None:
                raise self._failure
            assert made, f"no test database made in {self.TAKE_TIMEOUT} s"
            self._changed.notify_all()
            return self._ready.popleft()

    def drop_later(self, name: str) -> None:
        """Drop database `name` once no test waits for a copy (it has no slots left)."""
        with self._changed:
            self._finished.append(name)
            self._changed.notify_all()

    def close(self) -> None:
        """Drop every database left, taken or not, then stop."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    def _work(self) -> None:
        try:
            conn = psycopg2.connect(self._admin_dsn)
        except psycopg2.Error as failure:
            self._fail(failure)
            return
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                while (job := self._next_job()) is not None:
                    self._run(cursor, *job)
        finally:
            conn.close()

    def _run(self, cursor: Any, action: str, name: str) -> None:
        if action == "drop":
            try:
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except psycopg2.Error:
                self.undropped.append(name)
            return
        try:
            cursor.execute(f"CREATE DATABASE {name}{_copy_clause(self._owner_clause)}")
        except psycopg2.Error as failure:
            self._fail(failure)
            return
        with self._changed:
            self._ready.append(name)
            self._changed.notify_all()

    def _fail(self, failure: Exception) -> None:
        with self._changed:
            self._failure = failure
            self._changed.notify_all()

    def _has_work(self) -> bool:
        return (
            self._stopping
            or self._failure is not None
            or bool(self._finished)
            or len(self._ready) < self.AHEAD
        )

    def _next_job(self) -> tuple[str, str] | None:
        """("create" or "drop", a database); a copy first when a test may wait for it,
        unless more than `AHEAD` wait to be dropped (fast tests in a row would pile them
        up); None after a failed copy, or once stopping and nothing is left to drop."""
        with self._changed:
            self._changed.wait_for(self._has_work)
            if self._failure is not None:
                return None
            if self._finished and (
                self._ready or self._stopping or len(self._finished) > self.AHEAD
            ):
                return "drop", self._finished.popleft()
            if self._stopping:
                return ("drop", self._ready.popleft()) if self._ready else None
            if len(self._ready) < self.AHEAD:
                return "create", _database_name("test")
            return "drop", self._finished.popleft()


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
    # Copies of the template, made ahead; set once the template is migrated.
    supply: DatabaseSupply | None = None

    def dsn(self, database: str) -> str:
        return self.dsn_of(database)

    def admin_dsn_of(self, database: str) -> str:
        return self.admin_dsn.replace("/postgres?", f"/{database}?", 1)


async def _create_database(server: PostgresServer, name: str) -> None:
    """Create `name`, bare but for the server's own shape."""
    admin = await asyncpg.connect(server.admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}{server.owner_clause}")
    finally:
        await admin.close()
    if server.prepare_sql:
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
    await _create_database(server, TEMPLATE_DATABASE)
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


@contextmanager
def _supplied(server: PostgresServer) -> Iterator[PostgresServer]:
    """The server with its template migrated, copies of it made ahead until the end."""
    asyncio.run(_create_template(server))
    supply = DatabaseSupply(server.admin_dsn, server.owner_clause)
    try:
        yield dataclasses.replace(server, supply=supply)
    finally:
        supply.close()
    assert not supply.undropped, f"test databases left behind: {supply.undropped}"


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The embedded PostgreSQL 18, tests connected as its superuser."""
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "pgdata")
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
        with _supplied(server) as supplied:
            yield supplied
    finally:
        embedded.stop()


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
        with _supplied(server) as supplied:
            yield supplied
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
async def _dropped_after(server: PostgresServer, name: str) -> AsyncIterator[str]:
    """Yield the DSN of database `name`; drop its slots, and it soon after, whatever
    the test did."""
    assert server.supply is not None
    try:
        yield server.dsn(name)
    finally:
        admin = await asyncpg.connect(server.admin_dsn)
        try:
            await drop_replication_slots(admin, name)
        finally:
            await admin.close()
        server.supply.drop_later(name)


@pytest.fixture
async def database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database holding the migrated schema and no rows."""
    assert pg_server.supply is not None
    name = await asyncio.to_thread(pg_server.supply.take)
    async with _dropped_after(pg_server, name) as dsn:
        yield dsn


@pytest.fixture
async def empty_database_dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """DSN of a new database with no migrations applied, for migration tests (on
    PostgreSQL 15 it holds hosted Supabase's auth schema, as a hosted database does)."""
    name = _database_name("bare")
    await _create_database(pg_server, name)
    async with _dropped_after(pg_server, name) as dsn:
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
