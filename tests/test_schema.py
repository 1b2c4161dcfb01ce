"""The migrated schema is the product's schema document, plus a few known additions.

`seed_schema.sql` holds the document's CREATE TABLE and CREATE INDEX statements
verbatim; loaded into a scratch database, its catalog is the reference each
migrated table is compared with, column by column and constraint by constraint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db.feed_triggers import TABLES
from tests.conftest import PUBLICATION

SEED_SCHEMA = Path(__file__).with_name("seed_schema.sql")


# What the migrations add to the document, by table; anything else is drift.
EXTRA_INDEXES: dict[str, dict[str, str]] = {
    "projects": {
        "idx_projects_collaborators": (
            "CREATE INDEX idx_projects_collaborators ON public.projects USING gin (collaborators)"
        ),
    },
    "builder_sessions": {
        "idx_builder_sessions_project_id": (
            "CREATE INDEX idx_builder_sessions_project_id"
            " ON public.builder_sessions USING btree (project_id)"
        ),
    },
    "version_history": {
        "version_history_entity_version_key": (
            "CREATE UNIQUE INDEX version_history_entity_version_key"
            " ON public.version_history USING btree (entity_type, entity_id, version_number)"
        ),
    },
}
EXTRA_UNIQUE_CONSTRAINTS: dict[str, dict[str, str]] = {
    "version_history": {
        "version_history_entity_version_key": "UNIQUE (entity_type, entity_id, version_number)",
    },
}

Column = tuple[str, str, bool, str | None]


@pytest.fixture
async def seed(empty_database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A scratch database holding exactly the schema document's tables and indexes."""
    connection = await asyncpg.connect(empty_database_dsn)
    try:
        await connection.execute(SEED_SCHEMA.read_text(encoding="utf-8"))
        yield connection
    finally:
        await connection.close()


async def columns(conn: asyncpg.Connection, table: str) -> list[Column]:
    """Name, type, NOT NULL and default of each column, in table order.

    Defaults are compared as PostgreSQL prints them back, so `NOW()` and `now()` or
    `'{}'` and `'{}'::uuid[]` written differently still compare equal when they mean
    the same thing.
    """
    rows = await conn.fetch(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        f"public.{table}",
    )
    return [(r["attname"], r["type"], r["attnotnull"], r["default"]) for r in rows]


async def constraints(conn: asyncpg.Connection, table: str, kinds: str) -> dict[str, str]:
    """Constraint name → definition for the constraint kinds given (pg_constraint.contype)."""
    rows = await conn.fetch(
        """
        SELECT conname, pg_get_constraintdef(oid) AS definition
        FROM pg_constraint
        WHERE conrelid = $1::regclass AND contype::text = ANY($2::text[])
        """,
        f"public.{table}",
        list(kinds),
    )
    return {r["conname"]: r["definition"] for r in rows}


async def foreign_keys(conn: asyncpg.Connection, table: str) -> dict[str, tuple[str, str, str]]:
    """Foreign key name → (its columns, the table it references, its ON DELETE action)."""
    rows = await conn.fetch(
        """
        SELECT c.conname,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.n)
                FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum)
                   AS columns,
               c.confrelid::regclass::text AS target,
               CASE c.confdeltype
                   WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                   WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT'
               END AS on_delete
        FROM pg_constraint c
        WHERE c.conrelid = $1::regclass AND c.contype = 'f'
        """,
        f"public.{table}",
    )
    return {r["conname"]: (r["columns"], r["target"], r["on_delete"]) for r in rows}


async def indexes(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Index name → CREATE INDEX statement as PostgreSQL prints it back."""
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
        table,
    )
    return {r["indexname"]: r["indexdef"] for r in rows}


async def test_columns_match_the_document(
    seed: asyncpg.Connection, conn: asyncpg.Connection
) -> None:
    for table in TABLES:
        expected = await columns(seed, table)
        assert expected, f"the seed defines no table {table}"
        assert await columns(conn, table) == expected, table


async def test_check_constraints_match_the_document(
    seed: asyncpg.Connection, conn: asyncpg.Connection
) -> None:
    for table in TABLES:
        assert await constraints(conn, table, "c") == await constraints(seed, table, "c"), table


async def test_foreign_keys_match_the_document(
    seed: asyncpg.Connection, conn: asyncpg.Connection
) -> None:
    for table in TABLES:
        assert await foreign_keys(conn, table) == await foreign_keys(seed, table), table


async def test_unique_constraints_are_the_documents_plus_known_additions(
    seed: asyncpg.Connection, conn: asyncpg.Connection
) -> None:
    for table in TABLES:
        expected = await constraints(seed, table, "pu") | EXTRA_UNIQUE_CONSTRAINTS.get(table, {})
        assert await constraints(conn, table, "pu") == expected, table


async def test_indexes_are_the_documents_plus_known_additions(
    seed: asyncpg.Connection, conn: asyncpg.Connection
) -> None:
    for table in TABLES:
        expected = await indexes(seed, table) | EXTRA_INDEXES.get(table, {})
        assert await indexes(conn, table) == expected, table


async def test_the_seed_holds_the_documents_six_tables_and_thirteen_indexes(
    seed: asyncpg.Connection,
) -> None:
    """Guards the reference itself: a truncated seed would make the comparisons vacuous."""
    tables = await seed.fetchval(
        "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables"
        " WHERE schemaname = 'public'"
    )
    assert set(tables) == set(TABLES)
    document_indexes = await seed.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'idx%'"
    )
    assert document_indexes == 13


async def table_flags(conn: asyncpg.Connection, expression: str) -> dict[str, object]:
    """One pg_class expression for each of the six tables."""
    rows = await conn.fetch(
        f"SELECT relname, {expression} AS value FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace AND relname = ANY($1::text[])",
        list(TABLES),
    )
    return {r["relname"]: r["value"] for r in rows}


async def test_row_level_security_is_enabled_on_every_table(conn: asyncpg.Connection) -> None:
    assert await table_flags(conn, "relrowsecurity") == dict.fromkeys(TABLES, True)


async def test_every_table_has_full_replica_identity(conn: asyncpg.Connection) -> None:
    """Updates and deletes must carry the whole old row to the change feed."""
    assert await table_flags(conn, "relreplident::text") == dict.fromkeys(TABLES, "f")


async def test_the_publication_streams_exactly_the_six_tables(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
        PUBLICATION,
    )
    assert {(r["schemaname"], r["tablename"]) for r in rows} == {("public", t) for t in TABLES}


async def test_set_updated_at_fires_before_update_on_every_table_with_updated_at(
    conn: asyncpg.Connection,
) -> None:
    with_updated_at = set(
        await conn.fetchval(
            "SELECT array_agg(table_name::text) FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'updated_at'"
        )
    )
    assert with_updated_at == set(TABLES) - {"version_history"}
    rows = await conn.fetch(
        "SELECT tgrelid::regclass::text AS table_name, pg_get_triggerdef(oid) AS definition"
        " FROM pg_trigger WHERE tgname = 'set_updated_at' AND NOT tgisinternal"
    )
    assert {r["table_name"]: r["definition"] for r in rows} == {
        table: f"CREATE TRIGGER set_updated_at BEFORE UPDATE ON public.{table}"
        " FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        for table in with_updated_at
    }
