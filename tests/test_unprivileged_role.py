"""The gateway as a role that is no superuser, on PostgreSQL 18 (the embedded server's).

Modules marked `hosted_postgres` run on Debian's PostgreSQL 15 as such a role; this
one covers the newest server, where CREATEROLE no longer lets a role grant itself
membership in roles it did not create. A private embedded server (roles are
cluster-wide, so the session's server is left alone) holds each test's database in
one of two shapes, both migrated by the non-superuser role:

- `bare`: a database of the role's own on a server with nothing else; the migrations
  create `anon`, `authenticated` and the `auth` schema, and `migrate down` removes them.
- `hosted`: as hosted Supabase has it: the API roles, granted to the gateway's role
  WITH ADMIN OPTION, and an `auth` schema owned by another role, all made by the
  superuser beforehand; the migrations use them and `migrate down` leaves them.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from websockets.asyncio.client import connect

from db.embedded import EmbeddedPostgres
from db.feed_triggers import use_feed_triggers
from db.migrations import MigrationError, Migrator, load_migrations
from gateway.app.server import Gateway
from tests import hosted_postgres
from tests.conftest import MIGRATION_PARAMETERS, UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    gateway_url,
)
from tests.support import server_directory
from tests.test_gateway_feed import change_of, large_style_guide, recv_until
from tests.test_rpc import rpc

APP_ROLE = "unprivileged_gateway"
# As docs/deployment.md's script for a server one runs makes it: not even BYPASSRLS
# (the Debian PostgreSQL 15 runs use hosted Supabase's role, which has it).
ROLE_ATTRIBUTES = "LOGIN CREATEROLE REPLICATION"
API_ROLES = ("anon", "authenticated", "service_role", "supabase_auth_admin")


class PrivateServer:
    """A private embedded server and the superuser's way in."""

    def __init__(self, pgdata: Path) -> None:
        self.server = EmbeddedPostgres(pgdata)
        self.admin_dsn = ""

    def dsn(self, database: str, role: str | None = None) -> str:
        """The superuser's DSN of `database`, or `role`'s (over the socket, trusted)."""
        where = urlsplit(self.admin_dsn.replace("/postgres?", f"/{database}?", 1))
        return where.geturl() if role is None else where._replace(netloc=f"{role}@").geturl()

    async def admin(self, sql: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(self.dsn(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    directory = server_directory("sitebuilder-unprivileged-")
    server = PrivateServer(directory / "pgdata")
    try:
        asyncio.run(server.server.start())
        server.admin_dsn = server.server.admin_dsn
        asyncio.run(server.admin(f"CREATE ROLE {APP_ROLE} {ROLE_ATTRIBUTES}"))
        yield server
    finally:
        server.server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def cluster_roles(server: PrivateServer) -> set[str]:
    conn = await asyncpg.connect(server.dsn("postgres"))
    try:
        rows = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(API_ROLES)
        )
    finally:
        await conn.close()
    return {row["rolname"] for row in rows}


async def migrate(dsn: str, *, down_to: int | None = None) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        migrator = Migrator(conn, load_migrations(), MIGRATION_PARAMETERS)
        await (migrator.up() if down_to is None else migrator.down(to=down_to))
    finally:
        await conn.close()


async def prepare_hosted(server: PrivateServer, database: str) -> None:
    """What hosted Supabase has before the gateway's first migration."""
    await server.admin(
        hosted_postgres.CLUSTER_SQL.replace(
            f"CREATE ROLE {hosted_postgres.APP_ROLE} LOGIN PASSWORD "
            f"'{hosted_postgres.APP_PASSWORD}' CREATEROLE REPLICATION BYPASSRLS;",
            "",
        )
        + f"GRANT anon, authenticated, service_role TO {APP_ROLE} WITH ADMIN OPTION;"
    )
    await server.admin(f"CREATE DATABASE {database} OWNER {APP_ROLE}")
    await server.admin(
        hosted_postgres.DATABASE_SQL.replace(hosted_postgres.APP_ROLE, APP_ROLE), database
    )


async def drop_everything(server: PrivateServer, database: str) -> None:
    """Leave the cluster as the module found it: no database of the test's, no API role."""
    await server.admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    for role in await cluster_roles(server):
        await server.admin(f"DROP ROLE {role}")


@pytest.fixture(params=["bare", "hosted"])
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def unmigrated_dsn(private_server: PrivateServer, shape: str) -> AsyncIterator[str]:
    """The non-superuser's DSN of a database in `shape`, before any migration."""
    database = f"unprivileged_{secrets.token_hex(6)}"
    assert await cluster_roles(private_server) == set()
    if shape == "hosted":
        await prepare_hosted(private_server, database)
    else:
        await private_server.admin(f"CREATE DATABASE {database} OWNER {APP_ROLE}")
    try:
        yield private_server.dsn(database, APP_ROLE)
    finally:
        await drop_everything(private_server, database)


@pytest.fixture
async def database_dsn(unmigrated_dsn: str) -> str:
    """This module's databases in place of the session's: migrated by the non-superuser,
    which every fixture built on database_dsn (conn, make_user, gateway) then uses."""
    await migrate(unmigrated_dsn)
    return unmigrated_dsn


async def test_migrations_and_their_rollback_as_a_non_superuser(
    private_server: PrivateServer, unmigrated_dsn: str, shape: str
) -> None:
    conn = await asyncpg.connect(unmigrated_dsn)
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()
    before = await cluster_roles(private_server)

    await migrate(unmigrated_dsn)
    created = await cluster_roles(private_server)
    await migrate(unmigrated_dsn, down_to=0)

    conn = await asyncpg.connect(unmigrated_dsn)
    try:
        auth_users = await conn.fetchval("SELECT to_regclass('auth.users')::text")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
    finally:
        await conn.close()
    assert tables == 0
    assert await cluster_roles(private_server) == before
    if shape == "bare":
        assert created == {"anon", "authenticated"}
        assert auth_users is None
    else:
        assert created == set(API_ROLES)
        assert auth_users == "auth.users"


async def test_roles_granted_without_admin_option_stop_the_migration_with_the_fix(
    private_server: PrivateServer,
) -> None:
    """PostgreSQL 16 and later: CREATEROLE alone cannot grant a role one did not create."""
    database = f"unprivileged_{secrets.token_hex(6)}"
    await private_server.admin("CREATE ROLE anon NOLOGIN NOINHERIT")
    await private_server.admin("CREATE ROLE authenticated NOLOGIN NOINHERIT")
    await private_server.admin(f"CREATE DATABASE {database} OWNER {APP_ROLE}")
    try:
        with pytest.raises(MigrationError) as refused:
            await migrate(private_server.dsn(database, APP_ROLE))
    finally:
        await drop_everything(private_server, database)

    message = str(refused.value)
    assert "0001_identity" in message
    assert f"GRANT authenticated TO {APP_ROLE}" in message


async def test_a_client_gets_snapshot_changes_whole_rows_versions_and_resumes(
    conn: asyncpg.Connection, make_user: UserFactory, gateway: Gateway, ws_client: Connect
) -> None:
    owner = await make_user()
    project, style_guide, components = await large_style_guide(conn, owner)
    sitemap = await conn.fetchval("SELECT id FROM sitemaps WHERE project_id = $1", project)
    wireframe = await conn.fetchval("SELECT id FROM wireframes WHERE sitemap_id = $1", sitemap)
    ws = await asyncio.wait_for(connect(gateway_url(gateway), max_size=None), TIMEOUT)
    client = WsClient(ws)
    try:
        await client.auth(owner)
        _, snapshot = await client.subscribe(project)
        assert snapshot is not None
        assert [s["id"] for s in snapshot["sitemaps"]] == [str(sitemap)]

        await conn.execute(
            """UPDATE style_guides SET colors = '{"primary": "#123456"}' WHERE id = $1""",
            style_guide,
        )
        whole = (await recv_until(client, change_of("style-guide", "update", style_guide)))[-1]
        assert whole["new"]["components"] == components

        editor = await ws_client()
        await editor.auth(owner)
        named = await rpc(
            editor,
            "version.checkpoint",
            entity_type="wireframes",
            entity_id=str(wireframe),
            message="Named",
        )
        assert named["type"] == "result", named
        assert named["data"]["user_id"] == str(owner)
        position = (await recv_until(client, change_of("wireframe", "update", wireframe)))[-1][
            "position"
        ]
    finally:
        await client.close()

    await conn.execute("UPDATE sitemaps SET title = 'While away' WHERE id = $1", sitemap)
    again = await ws_client()
    await again.auth(owner)
    reply = await again.request(
        {"type": "subscribe", "project_id": str(project), "since": position}
    )
    assert reply["data"]["resumed"] is True, reply
    missed = (await recv_until(again, change_of("sitemap", "update", sitemap)))[-1]
    assert missed["new"]["title"] == "While away"


async def test_a_role_that_does_not_own_the_tables_serves_with_the_triggers_as_they_are(
    private_server: PrivateServer, database_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Switching the feed's triggers needs the tables' owner: anyone else gets one line
    saying so, and the gateway goes on."""
    other = "not_the_owner"
    await private_server.admin(f"CREATE ROLE {other} LOGIN REPLICATION BYPASSRLS")
    database = urlsplit(database_dsn).path.lstrip("/")
    owner = await asyncpg.connect(database_dsn)
    try:
        await use_feed_triggers(owner, "replication")
    finally:
        await owner.close()
    caplog.clear()
    try:
        conn = await asyncpg.connect(private_server.dsn(database, other))
        try:
            await use_feed_triggers(conn, "notify")
        finally:
            await conn.close()
    finally:
        await private_server.admin(f"DROP ROLE {other}")

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "cannot switch the change feed triggers" in warnings[0]
    assert f"role {other} does not own the tables" in warnings[0]
