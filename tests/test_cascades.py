"""What deleting a user, a project or a sitemap takes with it, and what it leaves."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from db.acting_user import acting_as

UserFactory = Callable[..., Awaitable[uuid.UUID]]


@dataclass(frozen=True)
class Branch:
    """A sitemap with one wireframe and one style guide under it."""

    sitemap: uuid.UUID
    wireframe: uuid.UUID
    style_guide: uuid.UUID


@dataclass(frozen=True)
class Project:
    """A project with one branch of content and one builder session of its owner."""

    owner: uuid.UUID
    id: uuid.UUID
    branch: Branch
    session: uuid.UUID


async def add_branch(conn: asyncpg.Connection, project: uuid.UUID) -> Branch:
    """Create a sitemap → wireframe → style guide chain under `project`."""
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
    return Branch(sitemap, wireframe, style_guide)


async def add_session(
    conn: asyncpg.Connection, user: uuid.UUID, project: uuid.UUID | None
) -> uuid.UUID:
    """Start a builder session of `user`, on `project` if given."""
    session: uuid.UUID = await conn.fetchval(
        "INSERT INTO builder_sessions (user_id, project_id, session_token) "
        "VALUES ($1, $2, $3) RETURNING id",
        user,
        project,
        uuid.uuid4().hex,
    )
    return session


async def add_project(
    conn: asyncpg.Connection, owner: uuid.UUID, collaborators: list[uuid.UUID] | None = None
) -> Project:
    """Create a project of `owner` with content and a session on it."""
    project = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type, collaborators) "
        "VALUES ($1, 'Site', 'website', $2) RETURNING id",
        owner,
        collaborators or [],
    )
    branch = await add_branch(conn, project)
    return Project(owner, project, branch, await add_session(conn, owner, project))


async def exists(conn: asyncpg.Connection, table: str, row_id: uuid.UUID) -> bool:
    """Whether `table` still has the row."""
    found: bool = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)", row_id
    )
    return found


async def branch_rows(conn: asyncpg.Connection, branch: Branch) -> dict[str, bool]:
    """Which rows of the branch still exist, by table."""
    return {
        "sitemaps": await exists(conn, "sitemaps", branch.sitemap),
        "wireframes": await exists(conn, "wireframes", branch.wireframe),
        "style_guides": await exists(conn, "style_guides", branch.style_guide),
    }


ALL_KEPT = {"sitemaps": True, "wireframes": True, "style_guides": True}
ALL_GONE = {"sitemaps": False, "wireframes": False, "style_guides": False}


async def delete_project(conn: asyncpg.Connection, project: Project, by_owner: bool) -> None:
    """Delete the project as its signed-in owner, or as the gateway itself."""
    statement = "DELETE FROM projects WHERE id = $1"
    if by_owner:
        async with acting_as(conn, project.owner):
            status = await conn.execute(statement, project.id)
    else:
        status = await conn.execute(statement, project.id)
    assert status == "DELETE 1"


@pytest.mark.parametrize("by_owner", [False, True], ids=["gateway", "owner"])
async def test_deleting_a_project_deletes_its_content(
    conn: asyncpg.Connection, make_user: UserFactory, by_owner: bool
) -> None:
    owner = await make_user()
    project = await add_project(conn, owner)
    second_branch = await add_branch(conn, project.id)
    untouched = await add_project(conn, owner)

    await delete_project(conn, project, by_owner)

    assert not await exists(conn, "projects", project.id)
    assert await branch_rows(conn, project.branch) == ALL_GONE
    assert await branch_rows(conn, second_branch) == ALL_GONE
    assert await exists(conn, "projects", untouched.id)
    assert await branch_rows(conn, untouched.branch) == ALL_KEPT


@pytest.mark.parametrize("by_owner", [False, True], ids=["gateway", "owner"])
async def test_deleting_a_project_keeps_its_sessions_detached(
    conn: asyncpg.Connection, make_user: UserFactory, by_owner: bool
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project = await add_project(conn, owner, collaborators=[collaborator])
    collaborators_session = await add_session(conn, collaborator, project.id)
    elsewhere = await add_project(conn, owner)

    await delete_project(conn, project, by_owner)

    sessions = {
        row["id"]: row["project_id"]
        for row in await conn.fetch("SELECT id, project_id FROM builder_sessions")
    }
    assert sessions == {
        project.session: None,
        collaborators_session: None,
        elsewhere.session: elsewhere.id,
    }


async def test_deleting_a_user_deletes_their_projects_sessions_and_history(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    leaving, staying = await make_user(), await make_user()
    their_project = await add_project(conn, leaving)
    their_loose_session = await add_session(conn, leaving, None)
    # A project of someone else that the leaving user edited: their versions of it go,
    # the project and its owner's versions stay.
    shared = await add_project(conn, staying, collaborators=[leaving])
    async with acting_as(conn, leaving):
        await conn.execute("UPDATE projects SET name = 'Edited' WHERE id = $1", shared.id)
    their_session_on_shared = await add_session(conn, leaving, shared.id)

    await conn.execute("DELETE FROM auth.users WHERE id = $1", leaving)

    assert not await exists(conn, "projects", their_project.id)
    assert await branch_rows(conn, their_project.branch) == ALL_GONE
    for session in (their_project.session, their_loose_session, their_session_on_shared):
        assert not await exists(conn, "builder_sessions", session)
    assert (
        await conn.fetchval("SELECT count(*) FROM version_history WHERE user_id = $1", leaving) == 0
    )

    assert await exists(conn, "projects", shared.id)
    assert await branch_rows(conn, shared.branch) == ALL_KEPT
    assert await exists(conn, "builder_sessions", shared.session)
    remaining = await conn.fetch(
        "SELECT entity_type, version_number FROM version_history "
        "WHERE user_id = $1 ORDER BY entity_type, version_number",
        staying,
    )
    assert [tuple(row) for row in remaining] == [
        ("projects", 1),
        ("sitemaps", 1),
        ("style_guides", 1),
        ("wireframes", 1),
    ]


async def test_deleting_a_sitemap_deletes_only_its_wireframes_and_style_guides(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    project = await add_project(conn, await make_user())
    sibling = await add_branch(conn, project.id)

    status = await conn.execute("DELETE FROM sitemaps WHERE id = $1", project.branch.sitemap)

    assert status == "DELETE 1"
    assert await branch_rows(conn, project.branch) == ALL_GONE
    assert await branch_rows(conn, sibling) == ALL_KEPT
    assert await exists(conn, "projects", project.id)
    assert (
        await conn.fetchval(
            "SELECT project_id FROM builder_sessions WHERE id = $1", project.session
        )
        == project.id
    )
