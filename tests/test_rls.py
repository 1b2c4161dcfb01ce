"""Row-level security as a signed-in user experiences it (migration 0005).

Every rule is checked both ways: the allowed case must visibly return or change
rows, the denied case must return nothing, change nothing or raise. Fixture rows
are written and checked through the superuser `conn`, which RLS does not apply to,
so the verdict never depends on the policies under test; only the statement under
test runs inside `acting_as`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import pytest

from db.acting_user import acting_as
from tests.gateway_fixtures import make_project

UserFactory = Callable[..., Awaitable[UUID]]
Role = Literal["owner", "collaborator", "stranger"]

RLS_REJECTED = "row-level security"
PERMISSION_DENIED = "permission denied"
OWNER_ONLY = "only the owner"


# --- people and rows --------------------------------------------------------------


@dataclass(frozen=True)
class Cast:
    """The three people every rule is about: a project's owner, a collaborator on it
    and a stranger (signed in, but no member of the project)."""

    owner: UUID
    collaborator: UUID
    stranger: UUID

    def __getitem__(self, role: Role) -> UUID:
        return getattr(self, role)


@dataclass(frozen=True)
class Tree:
    """One project with one row in each table under it."""

    project: UUID
    sitemap: UUID
    wireframe: UUID
    style_guide: UUID

    def id_of(self, attribute: str) -> UUID:
        return getattr(self, attribute)


@dataclass(frozen=True)
class Child:
    """A table below projects: its parent column and which Tree ids it uses."""

    table: str
    parent_column: str
    parent: str  # the Tree attribute holding the parent row's id
    own: str  # the Tree attribute holding this table's row id


CHILDREN = [
    pytest.param(Child("sitemaps", "project_id", "project", "sitemap"), id="sitemaps"),
    pytest.param(Child("wireframes", "sitemap_id", "sitemap", "wireframe"), id="wireframes"),
    pytest.param(
        Child("style_guides", "wireframe_id", "wireframe", "style_guide"), id="style_guides"
    ),
]

# (entity_type in version_history, Tree attribute of the entity)
VERSIONED_ENTITIES = [
    pytest.param("projects", "project", id="projects"),
    pytest.param("sitemaps", "sitemap", id="sitemaps"),
    pytest.param("wireframes", "wireframe", id="wireframes"),
    pytest.param("style_guides", "style_guide", id="style_guides"),
]

# (who acts, is the project public, may they?) for reading a project or anything under it.
READ_CASES = [
    pytest.param("owner", False, True, id="owner-private"),
    pytest.param("collaborator", False, True, id="collaborator-private"),
    pytest.param("stranger", False, False, id="stranger-private"),
    pytest.param("stranger", True, True, id="stranger-public"),
]
# The same people writing: a public project is read-only to a stranger.
WRITE_CASES = [
    pytest.param("owner", False, True, id="owner-private"),
    pytest.param("collaborator", False, True, id="collaborator-private"),
    pytest.param("stranger", False, False, id="stranger-private"),
    pytest.param("stranger", True, False, id="stranger-public"),
]
# Members only, whatever the visibility: sessions and version history.
MEMBER_CASES = [
    pytest.param("owner", False, True, id="owner-private"),
    pytest.param("collaborator", False, True, id="collaborator-private"),
    pytest.param("stranger", False, False, id="stranger-private"),
    pytest.param("stranger", True, False, id="stranger-public"),
]


@pytest.fixture
async def cast(make_user: UserFactory) -> Cast:
    return Cast(owner=await make_user(), collaborator=await make_user(), stranger=await make_user())


async def build_tree(conn: asyncpg.Connection, project: UUID) -> Tree:
    """Give `project` a sitemap, wireframe and style guide, so every table has a row
    under it that the rules can be tried on."""
    sitemap = await conn.fetchval(
        "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'original') RETURNING id", project
    )
    wireframe = await conn.fetchval(
        "INSERT INTO wireframes (sitemap_id, title) VALUES ($1, 'original') RETURNING id", sitemap
    )
    style_guide = await conn.fetchval(
        "INSERT INTO style_guides (wireframe_id, title) VALUES ($1, 'original') RETURNING id",
        wireframe,
    )
    return Tree(project, sitemap, wireframe, style_guide)


async def create_tree(conn: asyncpg.Connection, cast: Cast, *, is_public: bool = False) -> Tree:
    """The cast's project (owner plus one collaborator; the stranger is neither) with
    one row in each table below it."""
    project = await make_project(
        conn, cast.owner, collaborators=[cast.collaborator], public=is_public
    )
    return await build_tree(conn, project)


async def create_session(
    conn: asyncpg.Connection, user_id: UUID, project_id: UUID | None = None, **columns: Any
) -> UUID:
    """Insert a builder session as the superuser; `columns` override the defaults."""
    values = {"user_id": user_id, "project_id": project_id, "session_token": uuid.uuid4().hex}
    values.update(columns)
    names = ", ".join(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    session_id: UUID = await conn.fetchval(
        f"INSERT INTO builder_sessions ({names}) VALUES ({placeholders}) RETURNING id",
        *values.values(),
    )
    return session_id


# --- acting as a user -------------------------------------------------------------


async def run_as(conn: asyncpg.Connection, user_id: UUID, sql: str, *args: Any) -> int:
    """Run one statement as `user_id`; return how many rows it affected.

    RLS filters UPDATE and DELETE silently, so the count is what tells a filtered
    statement from one that did its work.
    """
    async with acting_as(conn, user_id):
        status = await conn.execute(sql, *args)
    return int(status.rsplit(" ", 1)[-1])


async def fetch_as(
    conn: asyncpg.Connection, user_id: UUID, sql: str, *args: Any
) -> list[asyncpg.Record]:
    """Run one query as `user_id` and return the rows they are allowed to see."""
    async with acting_as(conn, user_id):
        return await conn.fetch(sql, *args)


async def ids_visible_to(conn: asyncpg.Connection, user_id: UUID, table: str) -> set[UUID]:
    """Every id of `table` the user can see (no WHERE: invisibility, not filtering)."""
    return {row["id"] for row in await fetch_as(conn, user_id, f"SELECT id FROM {table}")}


async def title_of(conn: asyncpg.Connection, table: str, row_id: UUID) -> str | None:
    """A row's title as stored (superuser), or None when the row is gone."""
    title: str | None = await conn.fetchval(f"SELECT title FROM {table} WHERE id = $1", row_id)
    return title


# --- projects ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "is_public", "allowed"), READ_CASES)
async def test_project_select(
    conn: asyncpg.Connection, cast: Cast, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)

    visible = await ids_visible_to(conn, cast[role], "projects")

    assert visible == ({tree.project} if allowed else set())


@pytest.mark.parametrize(("role", "is_public", "allowed"), WRITE_CASES)
async def test_project_update(
    conn: asyncpg.Connection, cast: Cast, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)

    updated = await run_as(
        conn, cast[role], "UPDATE projects SET name = 'renamed' WHERE id = $1", tree.project
    )

    assert updated == (1 if allowed else 0)
    name = await conn.fetchval("SELECT name FROM projects WHERE id = $1", tree.project)
    assert name == ("renamed" if allowed else "Site")


@pytest.mark.parametrize(
    ("role", "is_public", "allowed"),
    [
        pytest.param("owner", False, True, id="owner-private"),
        pytest.param("collaborator", False, False, id="collaborator-private"),
        pytest.param("stranger", False, False, id="stranger-private"),
        pytest.param("stranger", True, False, id="stranger-public"),
    ],
)
async def test_only_owner_deletes_project(
    conn: asyncpg.Connection, cast: Cast, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)

    deleted = await run_as(conn, cast[role], "DELETE FROM projects WHERE id = $1", tree.project)

    assert deleted == (1 if allowed else 0)
    remaining = await conn.fetchval("SELECT count(*) FROM projects WHERE id = $1", tree.project)
    assert remaining == (0 if allowed else 1)


async def test_user_inserts_project_as_themselves(conn: asyncpg.Connection, cast: Cast) -> None:
    inserted = await run_as(
        conn,
        cast.stranger,
        "INSERT INTO projects (user_id, name, type) VALUES ($1, 'mine', 'website')",
        cast.stranger,
    )

    assert inserted == 1
    owner = await conn.fetchval("SELECT user_id FROM projects WHERE name = 'mine'")
    assert owner == cast.stranger


async def test_user_cannot_insert_project_for_someone_else(
    conn: asyncpg.Connection, cast: Cast
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
        await run_as(
            conn,
            cast.stranger,
            "INSERT INTO projects (user_id, name, type) VALUES ($1, 'forged', 'website')",
            cast.owner,
        )

    assert await conn.fetchval("SELECT count(*) FROM projects") == 0


def new_value(column: str, cast: Cast) -> object:
    """A value for `column` that differs from what create_tree stored."""
    return {
        "name": "renamed",
        "collaborators": [cast.collaborator, cast.stranger],
        "is_public": True,
        "user_id": cast.collaborator,
    }[column]


@pytest.mark.parametrize(
    ("column", "allowed"),
    [
        pytest.param("name", True, id="name-allowed"),
        pytest.param("collaborators", False, id="collaborators-denied"),
        pytest.param("is_public", False, id="is_public-denied"),
        pytest.param("user_id", False, id="user_id-denied"),
    ],
)
async def test_collaborator_changes_project_column(
    conn: asyncpg.Connection, cast: Cast, column: str, allowed: bool
) -> None:
    """A collaborator edits the project but cannot change who may see or own it; the
    user_id case passes the update policy (the collaborator would own it), so only
    the check_owner_columns trigger stands in the way."""
    tree = await create_tree(conn, cast)
    before = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", tree.project)
    sql = f"UPDATE projects SET {column} = $2 WHERE id = $1"
    value = new_value(column, cast)

    if allowed:
        assert await run_as(conn, cast.collaborator, sql, tree.project, value) == 1
    else:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=OWNER_ONLY):
            await run_as(conn, cast.collaborator, sql, tree.project, value)

    after = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", tree.project)
    assert after[column] == (value if allowed else before[column])


@pytest.mark.parametrize("column", ["collaborators", "is_public"])
async def test_owner_changes_owner_only_column(
    conn: asyncpg.Connection, cast: Cast, column: str
) -> None:
    """Removing a collaborator applies at once; adding one is an invitation
    (migration 0016, tests/test_invitations.py)."""
    tree = await create_tree(conn, cast)
    value = [] if column == "collaborators" else new_value(column, cast)

    updated = await run_as(
        conn, cast.owner, f"UPDATE projects SET {column} = $2 WHERE id = $1", tree.project, value
    )

    assert updated == 1
    assert (
        await conn.fetchval(f"SELECT {column} FROM projects WHERE id = $1", tree.project) == value
    )


async def test_owner_hands_project_over_and_stays_collaborator(
    conn: asyncpg.Connection, cast: Cast
) -> None:
    """The owner may change user_id; staying a collaborator keeps the new row
    within the update policy, which requires the updater to remain a member."""
    tree = await create_tree(conn, cast)

    updated = await run_as(
        conn,
        cast.owner,
        "UPDATE projects SET user_id = $2, collaborators = $3 WHERE id = $1",
        tree.project,
        cast.collaborator,
        [cast.owner],
    )

    assert updated == 1
    row = await conn.fetchrow(
        "SELECT user_id, collaborators FROM projects WHERE id = $1", tree.project
    )
    assert (row["user_id"], row["collaborators"]) == (cast.collaborator, [cast.owner])


# --- sitemaps, wireframes, style guides -------------------------------------------


@pytest.mark.parametrize(("role", "is_public", "allowed"), READ_CASES)
@pytest.mark.parametrize("child", CHILDREN)
async def test_child_select(
    conn: asyncpg.Connection, cast: Cast, child: Child, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)

    visible = await ids_visible_to(conn, cast[role], child.table)

    assert visible == ({tree.id_of(child.own)} if allowed else set())


@pytest.mark.parametrize(("role", "is_public", "allowed"), WRITE_CASES)
@pytest.mark.parametrize("child", CHILDREN)
async def test_child_insert(
    conn: asyncpg.Connection, cast: Cast, child: Child, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)
    sql = f"INSERT INTO {child.table} ({child.parent_column}, title) VALUES ($1, 'added')"
    parent = tree.id_of(child.parent)

    if allowed:
        assert await run_as(conn, cast[role], sql, parent) == 1
    else:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
            await run_as(conn, cast[role], sql, parent)

    added = await conn.fetchval(f"SELECT count(*) FROM {child.table} WHERE title = 'added'")
    assert added == (1 if allowed else 0)


@pytest.mark.parametrize(("role", "is_public", "allowed"), WRITE_CASES)
@pytest.mark.parametrize("child", CHILDREN)
async def test_child_update(
    conn: asyncpg.Connection, cast: Cast, child: Child, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)
    row_id = tree.id_of(child.own)

    updated = await run_as(
        conn, cast[role], f"UPDATE {child.table} SET title = 'renamed' WHERE id = $1", row_id
    )

    assert updated == (1 if allowed else 0)
    assert await title_of(conn, child.table, row_id) == ("renamed" if allowed else "original")


@pytest.mark.parametrize(("role", "is_public", "allowed"), WRITE_CASES)
@pytest.mark.parametrize("child", CHILDREN)
async def test_child_delete(
    conn: asyncpg.Connection, cast: Cast, child: Child, role: Role, is_public: bool, allowed: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)
    row_id = tree.id_of(child.own)

    deleted = await run_as(conn, cast[role], f"DELETE FROM {child.table} WHERE id = $1", row_id)

    assert deleted == (1 if allowed else 0)
    assert await title_of(conn, child.table, row_id) == (None if allowed else "original")


@pytest.mark.parametrize("child", CHILDREN)
async def test_member_cannot_move_child_into_public_foreign_project(
    conn: asyncpg.Connection, cast: Cast, child: Child
) -> None:
    """The update policy checks the new parent too, or a member could plant rows in
    any project they can see. The target is public, so the member can read it: only
    the update policy's WITH CHECK, not the select policy, stands in the way."""
    tree = await create_tree(conn, cast)
    foreign = await build_tree(conn, await make_project(conn, cast.stranger, public=True))
    row_id = tree.id_of(child.own)
    sql = f"UPDATE {child.table} SET {child.parent_column} = $2 WHERE id = $1"

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
        await run_as(conn, cast.owner, sql, row_id, foreign.id_of(child.parent))

    parent = await conn.fetchval(
        f"SELECT {child.parent_column} FROM {child.table} WHERE id = $1", row_id
    )
    assert parent == tree.id_of(child.parent)


# --- builder sessions -------------------------------------------------------------


@pytest.mark.parametrize(
    "membership",
    [
        pytest.param("none", id="no-project"),
        pytest.param("owner", id="own-project"),
        pytest.param("collaborator", id="collaborated-project"),
    ],
)
async def test_user_inserts_own_session(
    conn: asyncpg.Connection, cast: Cast, membership: str
) -> None:
    tree = await create_tree(conn, cast)
    user = cast.owner if membership == "owner" else cast.collaborator
    project = None if membership == "none" else tree.project

    inserted = await run_as(
        conn,
        user,
        "INSERT INTO builder_sessions (user_id, project_id, session_token) VALUES ($1, $2, 'tok')",
        user,
        project,
    )

    assert inserted == 1
    row = await conn.fetchrow("SELECT user_id, project_id FROM builder_sessions")
    assert (row["user_id"], row["project_id"]) == (user, project)


@pytest.mark.parametrize(
    ("session_user", "project", "is_public"),
    [
        pytest.param("owner", None, False, id="another-users-session"),
        pytest.param("stranger", "project", False, id="private-project-not-member"),
        pytest.param("stranger", "project", True, id="public-project-not-member"),
    ],
)
async def test_stranger_cannot_insert_session(
    conn: asyncpg.Connection,
    cast: Cast,
    session_user: Role,
    project: str | None,
    is_public: bool,
) -> None:
    """Acting as the stranger: a session in someone else's name, or on a project
    they are no member of (public or not), is rejected."""
    tree = await create_tree(conn, cast, is_public=is_public)
    project_id = tree.project if project else None

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
        await run_as(
            conn,
            cast.stranger,
            "INSERT INTO builder_sessions (user_id, project_id, session_token)"
            " VALUES ($1, $2, 'tok')",
            cast[session_user],
            project_id,
        )

    assert await conn.fetchval("SELECT count(*) FROM builder_sessions") == 0


async def test_user_reads_updates_deletes_own_session(conn: asyncpg.Connection, cast: Cast) -> None:
    tree = await create_tree(conn, cast)
    session = await create_session(conn, cast.collaborator, tree.project)

    assert await ids_visible_to(conn, cast.collaborator, "builder_sessions") == {session}
    updated = await run_as(
        conn,
        cast.collaborator,
        "UPDATE builder_sessions SET status = 'paused' WHERE id = $1",
        session,
    )
    assert updated == 1
    status = await conn.fetchval("SELECT status FROM builder_sessions WHERE id = $1", session)
    assert status == "paused"
    deleted = await run_as(
        conn, cast.collaborator, "DELETE FROM builder_sessions WHERE id = $1", session
    )
    assert deleted == 1
    assert await conn.fetchval("SELECT count(*) FROM builder_sessions") == 0


async def test_user_cannot_move_own_session_to_foreign_project(
    conn: asyncpg.Connection, cast: Cast
) -> None:
    tree = await create_tree(conn, cast, is_public=True)
    session = await create_session(conn, cast.stranger)

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
        await run_as(
            conn,
            cast.stranger,
            "UPDATE builder_sessions SET project_id = $2 WHERE id = $1",
            session,
            tree.project,
        )

    project = await conn.fetchval("SELECT project_id FROM builder_sessions WHERE id = $1", session)
    assert project is None


@pytest.mark.parametrize(
    ("reader", "author"),
    [
        pytest.param("owner", "collaborator", id="owner-reads-collaborators"),
        pytest.param("collaborator", "owner", id="collaborator-reads-owners"),
    ],
)
async def test_member_reads_but_cannot_change_others_session(
    conn: asyncpg.Connection, cast: Cast, reader: Role, author: Role
) -> None:
    tree = await create_tree(conn, cast)
    session = await create_session(conn, cast[author], tree.project)

    assert await ids_visible_to(conn, cast[reader], "builder_sessions") == {session}
    updated = await run_as(
        conn,
        cast[reader],
        "UPDATE builder_sessions SET status = 'cancelled' WHERE id = $1",
        session,
    )
    deleted = await run_as(
        conn, cast[reader], "DELETE FROM builder_sessions WHERE id = $1", session
    )

    assert (updated, deleted) == (0, 0)
    status = await conn.fetchval("SELECT status FROM builder_sessions WHERE id = $1", session)
    assert status == "active"


@pytest.mark.parametrize(
    "is_public", [pytest.param(False, id="private"), pytest.param(True, id="public")]
)
async def test_stranger_cannot_see_or_change_project_sessions(
    conn: asyncpg.Connection, cast: Cast, is_public: bool
) -> None:
    tree = await create_tree(conn, cast, is_public=is_public)
    session = await create_session(conn, cast.owner, tree.project)

    assert await ids_visible_to(conn, cast.stranger, "builder_sessions") == set()
    updated = await run_as(
        conn,
        cast.stranger,
        "UPDATE builder_sessions SET status = 'cancelled' WHERE id = $1",
        session,
    )
    deleted = await run_as(
        conn, cast.stranger, "DELETE FROM builder_sessions WHERE id = $1", session
    )

    assert (updated, deleted) == (0, 0)
    status = await conn.fetchval("SELECT status FROM builder_sessions WHERE id = $1", session)
    assert status == "active"


# --- version history --------------------------------------------------------------


async def test_inserting_project_writes_version_one_visible_to_owner(
    conn: asyncpg.Connection, cast: Cast
) -> None:
    async with acting_as(conn, cast.owner):
        project = await conn.fetchval(
            "INSERT INTO projects (user_id, name, type) VALUES ($1, 'mine', 'website')"
            " RETURNING id",
            cast.owner,
        )

    rows = await fetch_as(
        conn,
        cast.owner,
        "SELECT entity_type, entity_id, version_number, user_id FROM version_history",
    )

    assert [tuple(row) for row in rows] == [("projects", project, 1, cast.owner)]


@pytest.mark.parametrize(("role", "is_public", "allowed"), MEMBER_CASES)
@pytest.mark.parametrize(("entity_type", "attribute"), VERSIONED_ENTITIES)
async def test_history_select(
    conn: asyncpg.Connection,
    cast: Cast,
    entity_type: str,
    attribute: str,
    role: Role,
    is_public: bool,
    allowed: bool,
) -> None:
    """History is for members only: a public project shows its content to anyone,
    but not who changed what."""
    tree = await create_tree(conn, cast, is_public=is_public)
    entity_id = tree.id_of(attribute)

    rows = await fetch_as(
        conn,
        cast[role],
        "SELECT entity_id, version_number FROM version_history WHERE entity_type = $1",
        entity_type,
    )

    assert [tuple(row) for row in rows] == ([(entity_id, 1)] if allowed else [])


@pytest.mark.parametrize(
    ("sql", "arguments"),
    [
        pytest.param(
            "INSERT INTO version_history (entity_type, entity_id, version_number, user_id)"
            " VALUES ('projects', $1, 2, $2)",
            ("project", "owner"),
            id="insert",
        ),
        pytest.param(
            "UPDATE version_history SET message = 'forged' WHERE entity_id = $1",
            ("project",),
            id="update",
        ),
        pytest.param("DELETE FROM version_history WHERE entity_id = $1", ("project",), id="delete"),
    ],
)
async def test_owner_cannot_write_history_directly(
    conn: asyncpg.Connection, cast: Cast, sql: str, arguments: tuple[str, ...]
) -> None:
    """Even the owner, who can read the history, only gets it written by triggers."""
    tree = await create_tree(conn, cast)
    names = {"project": tree.project, "owner": cast.owner}
    before = await conn.fetch("SELECT * FROM version_history ORDER BY id")

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=PERMISSION_DENIED):
        await run_as(conn, cast.owner, sql, *(names[name] for name in arguments))

    assert await conn.fetch("SELECT * FROM version_history ORDER BY id") == before


async def test_user_cannot_call_create_version_history(
    conn: asyncpg.Connection, cast: Cast
) -> None:
    tree = await create_tree(conn, cast)
    sql = "SELECT public.create_version_history('projects', $1, $2)"
    count = "SELECT count(*) FROM version_history WHERE entity_id = $1"

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=PERMISSION_DENIED):
        await run_as(conn, cast.owner, sql, tree.project, cast.owner)

    assert await conn.fetchval(count, tree.project) == 1
    # The same call as the server does write a version: the denial above is what kept it out.
    await conn.execute(sql, tree.project, cast.owner)
    assert await conn.fetchval(count, tree.project) == 2


async def test_user_cannot_call_cleanup_old_sessions(conn: asyncpg.Connection, cast: Cast) -> None:
    month_and_a_half_ago = datetime.now(UTC) - timedelta(days=45)
    old = await create_session(
        conn, cast.owner, status="completed", created_at=month_and_a_half_ago
    )

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=PERMISSION_DENIED):
        await run_as(conn, cast.owner, "SELECT public.cleanup_old_sessions()")

    assert await conn.fetchval("SELECT count(*) FROM builder_sessions WHERE id = $1", old) == 1
    # The server's own call removes the session, so it was one cleanup would purge.
    assert await conn.fetchval("SELECT public.cleanup_old_sessions()") == 1


# --- end to end -------------------------------------------------------------------


TREE_TABLES = [
    ("projects", "project"),
    ("sitemaps", "sitemap"),
    ("wireframes", "wireframe"),
    ("style_guides", "style_guide"),
]
NAME_COLUMN = {
    "projects": "name",
    "sitemaps": "title",
    "wireframes": "title",
    "style_guides": "title",
}


async def test_acceptance_private_shared_and_public_projects(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """B owns a private project shared with C, and a public one. A, a stranger, sees
    and changes nothing of the private one and only reads the public one; C works on
    the private one like its owner, short of deleting it or changing who may see it."""
    a = await make_user("a@example.test")
    b = await make_user("b@example.test")
    c = await make_user("c@example.test")
    private = await create_tree(conn, Cast(owner=b, collaborator=c, stranger=a))
    public = await build_tree(conn, await make_project(conn, b, public=True))
    session = await create_session(conn, b, private.project)

    # A sees only the public tree, and no sessions or history at all.
    for table, attribute in TREE_TABLES:
        assert await ids_visible_to(conn, a, table) == {public.id_of(attribute)}, table
    assert await ids_visible_to(conn, a, "builder_sessions") == set()
    assert await ids_visible_to(conn, a, "version_history") == set()

    # A's writes to either tree change nothing.
    for tree in (private, public):
        for table, attribute in TREE_TABLES:
            column = NAME_COLUMN[table]
            sql = f"UPDATE {table} SET {column} = 'by A' WHERE id = $1"
            assert await run_as(conn, a, sql, tree.id_of(attribute)) == 0, table
            sql = f"DELETE FROM {table} WHERE id = $1"
            assert await run_as(conn, a, sql, tree.id_of(attribute)) == 0, table
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_REJECTED):
            await run_as(
                conn,
                a,
                "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'by A')",
                tree.project,
            )
    for table in NAME_COLUMN:
        names = await conn.fetch(f"SELECT {NAME_COLUMN[table]} FROM {table}")
        expected = "Site" if table == "projects" else "original"
        assert [row[0] for row in names] == [expected, expected], table

    # C reads the private tree, B's session on it and its whole history ...
    for table, attribute in TREE_TABLES:
        assert await ids_visible_to(conn, c, table) == {
            private.id_of(attribute),
            public.id_of(attribute),
        }, table
    assert await ids_visible_to(conn, c, "builder_sessions") == {session}
    history = await fetch_as(conn, c, "SELECT entity_id FROM version_history")
    assert {row["entity_id"] for row in history} == {
        private.id_of(attribute) for _, attribute in TREE_TABLES
    }

    # ... edits everything in it and adds to it ...
    for table, attribute in TREE_TABLES:
        sql = f"UPDATE {table} SET {NAME_COLUMN[table]} = 'by C' WHERE id = $1"
        assert await run_as(conn, c, sql, private.id_of(attribute)) == 1, table
    added = await run_as(
        conn, c, "INSERT INTO sitemaps (project_id, title) VALUES ($1, 'by C')", private.project
    )
    assert added == 1
    assert await conn.fetchval("SELECT name FROM projects WHERE id = $1", private.project) == "by C"
    assert await title_of(conn, "style_guides", private.style_guide) == "by C"

    # ... but cannot open it to the public or delete it: those are B's alone.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=OWNER_ONLY):
        await run_as(conn, c, "UPDATE projects SET is_public = true WHERE id = $1", private.project)
    assert await run_as(conn, c, "DELETE FROM projects WHERE id = $1", private.project) == 0
    assert await run_as(conn, b, "DELETE FROM projects WHERE id = $1", private.project) == 1
    assert await conn.fetchval("SELECT count(*) FROM sitemaps") == 1  # only the public one
