"""Automatic versioning of projects, sitemaps, wireframes and style guides.

Every insert records version 1 and every update that changes something records the
next version in version_history: the full row, the changed columns and who changed
them. After each of them the row's own `version` column holds the number just
recorded, and `updated_at` is kept by trigger on every table that has it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from db.acting_user import acting_as
from tests.support import triggers_off

UserFactory = Callable[..., Awaitable[uuid.UUID]]

VERSIONED_TABLES = ["projects", "sitemaps", "wireframes", "style_guides"]
# The three versioned tables that carry their own `version` column (projects do not).
NUMBERED_TABLES = ["sitemaps", "wireframes", "style_guides"]
# A required text column of each table, to make a change users would make.
TITLE_COLUMN = {
    "projects": "name",
    "sitemaps": "title",
    "wireframes": "title",
    "style_guides": "title",
}
CONCURRENT_WRITERS = 20


@dataclass(frozen=True)
class Tree:
    """One project with one sitemap, wireframe and style guide under it."""

    owner: uuid.UUID
    project: uuid.UUID
    sitemap: uuid.UUID
    wireframe: uuid.UUID
    style_guide: uuid.UUID

    def id_of(self, table: str) -> uuid.UUID:
        return {
            "projects": self.project,
            "sitemaps": self.sitemap,
            "wireframes": self.wireframe,
            "style_guides": self.style_guide,
        }[table]


@dataclass(frozen=True)
class Version:
    """One version_history row as a reader of the history sees it."""

    number: int
    user_id: uuid.UUID
    changes: dict[str, Any]
    data: dict[str, Any]
    message: str | None


async def create_tree(
    conn: asyncpg.Connection, owner: uuid.UUID, collaborators: list[uuid.UUID] | None = None
) -> Tree:
    """Create a whole project tree as the gateway (no acting user), like a fresh import."""
    project = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type, collaborators) "
        "VALUES ($1, 'Site', 'website', $2) RETURNING id",
        owner,
        collaborators or [],
    )
    sitemap = await conn.fetchval(
        "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'Map') RETURNING id", project
    )
    wireframe = await conn.fetchval(
        "INSERT INTO wireframes (sitemap_id, title) VALUES ($1, 'Frame') RETURNING id", sitemap
    )
    style_guide = await conn.fetchval(
        "INSERT INTO style_guides (wireframe_id, title) VALUES ($1, 'Guide') RETURNING id",
        wireframe,
    )
    return Tree(owner, project, sitemap, wireframe, style_guide)


async def history(conn: asyncpg.Connection, table: str, entity_id: uuid.UUID) -> list[Version]:
    """The entity's versions, oldest first."""
    rows = await conn.fetch(
        "SELECT version_number, user_id, changes, data, message FROM version_history "
        "WHERE entity_type = $1 AND entity_id = $2 ORDER BY version_number",
        table,
        entity_id,
    )
    return [
        Version(
            number=row["version_number"],
            user_id=row["user_id"],
            changes=json.loads(row["changes"]),
            data=json.loads(row["data"]),
            message=row["message"],
        )
        for row in rows
    ]


async def row_as_json(conn: asyncpg.Connection, table: str, entity_id: uuid.UUID) -> dict[str, Any]:
    """The row as it is stored now, in the same shape version_history.data keeps it."""
    text = await conn.fetchval(f"SELECT to_jsonb(t) FROM {table} t WHERE t.id = $1", entity_id)
    assert text is not None, f"{table} {entity_id} does not exist"
    result: dict[str, Any] = json.loads(text)
    return result


async def row_version(conn: asyncpg.Connection, table: str, entity_id: uuid.UUID) -> int:
    """The `version` column of the row."""
    version: int = await conn.fetchval(f"SELECT version FROM {table} WHERE id = $1", entity_id)
    return version


async def set_title(conn: asyncpg.Connection, table: str, entity_id: uuid.UUID, title: str) -> None:
    """Change the entity's title (a project's name), failing loudly if no row was touched."""
    status = await conn.execute(
        f"UPDATE {table} SET {TITLE_COLUMN[table]} = $1 WHERE id = $2", title, entity_id
    )
    assert status == "UPDATE 1", f"{table} {entity_id} not updated: {status}"


@pytest.fixture
async def tree(conn: asyncpg.Connection, make_user: UserFactory) -> Tree:
    return await create_tree(conn, await make_user())


# --- Inserts -----------------------------------------------------------------------


@pytest.mark.parametrize("table", VERSIONED_TABLES)
async def test_insert_records_version_one(conn: asyncpg.Connection, tree: Tree, table: str) -> None:
    entity_id = tree.id_of(table)

    versions = await history(conn, table, entity_id)

    assert versions == [
        Version(
            number=1,
            user_id=tree.owner,
            changes={},
            data=await row_as_json(conn, table, entity_id),
            message="Created",
        )
    ]


@pytest.mark.parametrize("table", NUMBERED_TABLES)
async def test_insert_sets_row_version_to_one(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    assert await row_version(conn, table, tree.id_of(table)) == 1


async def test_insert_ignores_a_supplied_version(conn: asyncpg.Connection, tree: Tree) -> None:
    sitemap = await conn.fetchval(
        "INSERT INTO sitemaps (project_id, title, version) VALUES ($1, 'Other', 7) RETURNING id",
        tree.project,
    )

    assert await row_version(conn, "sitemaps", sitemap) == 1
    assert [v.number for v in await history(conn, "sitemaps", sitemap)] == [1]


async def test_a_bulk_insert_versions_every_row_without_a_lock_per_row(
    conn: asyncpg.Connection, tree: Tree
) -> None:
    """One statement of many rows, in one transaction: each row at version 1 with its
    history, attributed to the acting user, and no lock taken per row (an advisory lock
    each ran a transaction of ~15,000 rows out of shared memory)."""
    rows = 3_000
    async with acting_as(conn, tree.owner):
        await conn.execute(
            "INSERT INTO wireframes (sitemap_id, title) "
            "SELECT $1, 'Bulk ' || g FROM generate_series(1, $2) g",
            tree.sitemap,
            rows,
        )
        locks = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'"
        )
    assert locks == 0
    versions = await conn.fetch(
        "SELECT w.version, v.version_number, v.user_id, v.message, v.data ->> 'title' AS title "
        "FROM wireframes w JOIN version_history v "
        "ON v.entity_type = 'wireframes' AND v.entity_id = w.id "
        "WHERE w.title LIKE 'Bulk %'"
    )
    assert len(versions) == rows
    assert {(r["version"], r["version_number"], r["user_id"], r["message"]) for r in versions} == {
        (1, 1, tree.owner, "Created")
    }
    assert len({r["title"] for r in versions}) == rows


# --- Updates -----------------------------------------------------------------------


@pytest.mark.parametrize("table", VERSIONED_TABLES)
async def test_update_records_next_version_with_changed_columns(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    entity_id = tree.id_of(table)
    title = TITLE_COLUMN[table]
    before = await row_as_json(conn, table, entity_id)

    await conn.execute(
        f"UPDATE {table} SET {title} = 'Renamed', description = 'Now described' WHERE id = $1",
        entity_id,
    )

    latest = (await history(conn, table, entity_id))[-1]
    assert latest.number == 2
    assert latest.data == await row_as_json(conn, table, entity_id)
    assert latest.changes == {
        title: {"old": before[title], "new": "Renamed"},
        "description": {"old": None, "new": "Now described"},
    }
    assert latest.message is not None
    assert title in latest.message
    assert "description" in latest.message


@pytest.mark.parametrize("table", NUMBERED_TABLES)
async def test_row_version_follows_history(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    entity_id = tree.id_of(table)

    for title in ("Second", "Third", "Fourth"):
        await set_title(conn, table, entity_id, title)

    versions = await history(conn, table, entity_id)
    assert [v.number for v in versions] == [1, 2, 3, 4]
    assert await row_version(conn, table, entity_id) == 4
    assert versions[-1].data["version"] == 4


def _no_change_cases() -> list[tuple[str, str]]:
    """(table, SET clause) pairs whose UPDATE changes nothing a version would record."""
    cases = []
    for table in VERSIONED_TABLES:
        cases.append((table, f"{TITLE_COLUMN[table]} = {TITLE_COLUMN[table]}"))
        cases.append((table, "updated_at = now()"))
        cases.append((table, "updated_at = '2001-01-01T00:00:00Z'"))
    for table in NUMBERED_TABLES:
        cases.append((table, "version = 99"))
        cases.append((table, "version = version + 1"))
    return cases


@pytest.mark.parametrize(("table", "assignment"), _no_change_cases())
async def test_update_without_change_records_no_version(
    conn: asyncpg.Connection, tree: Tree, table: str, assignment: str
) -> None:
    entity_id = tree.id_of(table)
    await set_title(conn, table, entity_id, "Renamed")  # at version 2, unlike a fresh row

    status = await conn.execute(f"UPDATE {table} SET {assignment} WHERE id = $1", entity_id)

    assert status == "UPDATE 1"
    assert [v.number for v in await history(conn, table, entity_id)] == [1, 2]
    if table in NUMBERED_TABLES:
        assert await row_version(conn, table, entity_id) == 2


@pytest.mark.parametrize("table", NUMBERED_TABLES)
@pytest.mark.parametrize("forced", [0, 1, 99])
async def test_update_cannot_set_version_out_of_step(
    conn: asyncpg.Connection, tree: Tree, table: str, forced: int
) -> None:
    entity_id = tree.id_of(table)

    await conn.execute(
        f"UPDATE {table} SET {TITLE_COLUMN[table]} = 'Renamed', version = $1 WHERE id = $2",
        forced,
        entity_id,
    )

    assert [v.number for v in await history(conn, table, entity_id)] == [1, 2]
    assert await row_version(conn, table, entity_id) == 2


# --- Attribution -------------------------------------------------------------------


@pytest.mark.parametrize("table", VERSIONED_TABLES)
async def test_update_attributed_to_acting_collaborator(
    conn: asyncpg.Connection, make_user: UserFactory, table: str
) -> None:
    collaborator = await make_user()
    tree = await create_tree(conn, await make_user(), collaborators=[collaborator])
    entity_id = tree.id_of(table)

    async with acting_as(conn, collaborator):
        await set_title(conn, table, entity_id, "Edited by a collaborator")

    assert (await history(conn, table, entity_id))[-1].user_id == collaborator


async def test_insert_attributed_to_acting_collaborator(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    collaborator = await make_user()
    tree = await create_tree(conn, await make_user(), collaborators=[collaborator])

    async with acting_as(conn, collaborator):
        sitemap = await conn.fetchval(
            "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'Theirs') RETURNING id",
            tree.project,
        )

    assert [(v.number, v.user_id) for v in await history(conn, "sitemaps", sitemap)] == [
        (1, collaborator)
    ]


@pytest.mark.parametrize("table", VERSIONED_TABLES)
async def test_update_without_acting_user_attributed_to_owner(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    entity_id = tree.id_of(table)

    await set_title(conn, table, entity_id, "Edited by the gateway")

    assert (await history(conn, table, entity_id))[-1].user_id == tree.owner


@pytest.mark.parametrize("table", VERSIONED_TABLES)
async def test_update_by_unknown_user_attributed_to_owner(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    entity_id = tree.id_of(table)
    stranger = uuid.uuid4()  # a well-formed token subject with no auth.users row

    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            json.dumps({"sub": str(stranger), "role": "authenticated"}),
        )
        assert await conn.fetchval("SELECT auth.uid()") == stranger
        await set_title(conn, table, entity_id, "Edited by a stranger")

    assert (await history(conn, table, entity_id))[-1].user_id == tree.owner


# --- Concurrency -------------------------------------------------------------------


Writer = Callable[[asyncpg.Connection], Awaitable[object]]


async def wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Return once `count` sessions of this database are blocked on a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while await conn.fetchval(query) < count:
        pass


async def race(
    conn: asyncpg.Connection, database_dsn: str, hold: str, writers: list[Writer]
) -> None:
    """Run each writer on a connection of its own while another connection runs `hold` in
    an open transaction, so that every writer is queued up when it ends and they race,
    rather than running one after another by chance."""
    connections: list[asyncpg.Connection] = []
    try:
        for _ in range(len(writers) + 1):
            connections.append(await asyncpg.connect(database_dsn))
        blocker, *own = connections
        async with blocker.transaction():
            await blocker.execute(hold)
            writes = asyncio.gather(*(write(c) for write, c in zip(writers, own, strict=True)))
            await asyncio.wait_for(wait_for_lock_waiters(conn, len(writers)), timeout=60)
        await asyncio.wait_for(writes, timeout=60)
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))


def title_writer(table: str, entity_id: uuid.UUID, title: str) -> Writer:
    """A writer that sets the entity's title."""
    return lambda writer: set_title(writer, table, entity_id, title)


@pytest.mark.parametrize("table", ["projects", "sitemaps"])
async def test_concurrent_updates_number_versions_without_gaps(
    conn: asyncpg.Connection, database_dsn: str, tree: Tree, table: str
) -> None:
    entity_id = tree.id_of(table)
    titles = [f"Writer {n}" for n in range(CONCURRENT_WRITERS)]

    await race(
        conn,
        database_dsn,
        f"SELECT 1 FROM {table} WHERE id = '{entity_id}' FOR UPDATE",
        [title_writer(table, entity_id, title) for title in titles],
    )

    versions = await history(conn, table, entity_id)
    assert [v.number for v in versions] == list(range(1, CONCURRENT_WRITERS + 2))
    assert {v.data[TITLE_COLUMN[table]] for v in versions[1:]} == set(titles)
    if table in NUMBERED_TABLES:
        assert await row_version(conn, table, entity_id) == CONCURRENT_WRITERS + 1


async def test_concurrent_manual_and_automatic_versions_share_one_numbering(
    conn: asyncpg.Connection, database_dsn: str, tree: Tree
) -> None:
    """Row locks alone serialise updates of one row; manual versions from
    create_version_history take no row lock, so only the numbering itself can keep
    them from colliding with the triggers' versions."""

    def manual(n: int) -> Writer:
        return lambda writer: writer.execute(
            "SELECT create_version_history('sitemaps', $1, $2, '{}', '{}', $3)",
            tree.sitemap,
            tree.owner,
            f"Manual {n}",
        )

    half = CONCURRENT_WRITERS // 2
    writers = [title_writer("sitemaps", tree.sitemap, f"Writer {n}") for n in range(half)]
    writers += [manual(n) for n in range(half)]

    # Holding off every insert into the history lets each writer get as far as it can.
    await race(conn, database_dsn, "LOCK TABLE version_history IN SHARE MODE", writers)

    versions = await history(conn, "sitemaps", tree.sitemap)
    assert [v.number for v in versions] == list(range(1, 2 * half + 2))
    assert sorted(v.message or "" for v in versions if not v.changes) == sorted(
        ["Created", *(f"Manual {n}" for n in range(half))]
    )


# --- updated_at --------------------------------------------------------------------

# Every table with updated_at, and a column of it that an ordinary edit changes.
TOUCHED_COLUMN = {
    "projects": "description",
    "sitemaps": "description",
    "wireframes": "description",
    "style_guides": "description",
    "builder_sessions": "current_step",
}
LONG_AGO = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


async def entity_with_updated_at(conn: asyncpg.Connection, tree: Tree, table: str) -> uuid.UUID:
    """The id of a row of `table`; builder sessions are created here, the rest are in `tree`."""
    if table != "builder_sessions":
        return tree.id_of(table)
    session: uuid.UUID = await conn.fetchval(
        "INSERT INTO builder_sessions (user_id, project_id, session_token) "
        "VALUES ($1, $2, $3) RETURNING id",
        tree.owner,
        tree.project,
        uuid.uuid4().hex,
    )
    return session


async def backdate(conn: asyncpg.Connection, table: str, entity_id: uuid.UUID) -> None:
    """Set updated_at to LONG_AGO with triggers off, since the trigger under test would
    overwrite it."""
    async with triggers_off(conn, table):
        await conn.execute(f"UPDATE {table} SET updated_at = $1 WHERE id = $2", LONG_AGO, entity_id)
    stored = await conn.fetchval(f"SELECT updated_at FROM {table} WHERE id = $1", entity_id)
    assert stored == LONG_AGO


def assert_is_now(updated_at: dt.datetime, now: dt.datetime) -> None:
    """updated_at was stamped by the statement that just ran."""
    assert abs(updated_at - now) < dt.timedelta(seconds=5), (updated_at, now)


@pytest.mark.parametrize("table", list(TOUCHED_COLUMN))
async def test_update_bumps_updated_at(conn: asyncpg.Connection, tree: Tree, table: str) -> None:
    entity_id = await entity_with_updated_at(conn, tree, table)
    await backdate(conn, table, entity_id)

    row = await conn.fetchrow(
        f"UPDATE {table} SET {TOUCHED_COLUMN[table]} = 'changed' WHERE id = $1 "
        "RETURNING updated_at, now() AS now",
        entity_id,
    )

    assert row is not None
    assert_is_now(row["updated_at"], row["now"])


@pytest.mark.parametrize("table", list(TOUCHED_COLUMN))
async def test_updated_at_cannot_be_backdated(
    conn: asyncpg.Connection, tree: Tree, table: str
) -> None:
    entity_id = await entity_with_updated_at(conn, tree, table)

    row = await conn.fetchrow(
        f"UPDATE {table} SET updated_at = $1 WHERE id = $2 RETURNING updated_at, now() AS now",
        LONG_AGO,
        entity_id,
    )

    assert row is not None
    assert_is_now(row["updated_at"], row["now"])
