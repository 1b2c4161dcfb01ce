"""Sharing takes consent (migration 0016), in SQL: what a signed-in user's own
statements (PostgREST's, supabase-js's `.update({collaborators})`) do to
`collaborators`, and what the service role's do not.

Rows are set up and checked through `conn`, the tables' owner (no RLS, no JWT claims:
the service role's way in); only the statement under test runs as a user, inside
`acting_as`. On PostgreSQL 15 the migrations ran as the hosted-shaped non-superuser.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from tests.conftest import UserFactory
from tests.gateway_fixtures import make_project

pytestmark = pytest.mark.hosted_postgres


async def as_user(conn: asyncpg.Connection, user: UUID, sql: str, *args: Any) -> Any:
    """The first value of one statement run as `user`."""
    async with acting_as(conn, user):
        return await conn.fetchval(sql, *args)


async def invitations(conn: asyncpg.Connection) -> set[tuple[UUID, UUID, UUID]]:
    """Every invitation: (project, invitee, inviter)."""
    rows = await conn.fetch("SELECT project_id, user_id, invited_by FROM project_invitations")
    return {(r["project_id"], r["user_id"], r["invited_by"]) for r in rows}


async def collaborators(conn: asyncpg.Connection, project: UUID) -> list[UUID]:
    found: list[UUID] = await conn.fetchval(
        "SELECT collaborators FROM projects WHERE id = $1", project
    )
    return found


async def versions(conn: asyncpg.Connection, project: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT version_number, changes, data, message FROM version_history"
        " WHERE entity_id = $1 ORDER BY version_number",
        project,
    )


async def test_an_owners_update_adding_collaborators_invites_them_and_removes_at_once(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """The row and its version hold the collaborators as written: the one removed is
    gone, the one added is invited; an id with no account is dropped silently."""
    owner, kept, removed, added = [await make_user() for _ in range(4)]
    project = await make_project(conn, owner, collaborators=[kept, removed])

    written = await as_user(
        conn,
        owner,
        "UPDATE projects SET name = 'Renamed', collaborators = $2 WHERE id = $1"
        " RETURNING collaborators",
        project,
        [added, kept, uuid4(), owner],
    )

    assert written == [kept] == await collaborators(conn, project)
    assert await invitations(conn) == {(project, added, owner)}
    latest = (await versions(conn, project))[-1]
    assert latest["version_number"] == 2
    assert orjson.loads(latest["data"])["collaborators"] == [str(kept)]
    changes = orjson.loads(latest["changes"])
    assert changes["collaborators"] == {"old": [str(kept), str(removed)], "new": [str(kept)]}


async def test_an_update_that_only_invites_records_no_version(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner, invitee = await make_user(), await make_user()
    project = await make_project(conn, owner)

    await as_user(
        conn,
        owner,
        "UPDATE projects SET collaborators = array_append(collaborators, $2) WHERE id = $1",
        project,
        invitee,
    )

    assert await collaborators(conn, project) == []
    assert [v["version_number"] for v in await versions(conn, project)] == [1]
    assert await invitations(conn) == {(project, invitee, owner)}


async def test_a_users_insert_with_collaborators_invites_them(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Version 1 is the row as written; the owner, named too, is dropped, not invited."""
    owner, invitee = await make_user(), await make_user()

    project = await as_user(
        conn,
        owner,
        "INSERT INTO projects (user_id, name, type, collaborators)"
        " VALUES ($1, 'Invoice overdue - click here', 'website', $2) RETURNING id",
        owner,
        [invitee, owner, invitee],
    )

    assert await collaborators(conn, project) == []
    assert await invitations(conn) == {(project, invitee, owner)}
    (first,) = await versions(conn, project)
    assert orjson.loads(first["data"])["collaborators"] == []
    visible = await as_user(conn, invitee, "SELECT count(*) FROM projects")
    assert visible == 0


async def test_the_service_roles_writes_are_unchanged(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner, first, second = await make_user(), await make_user(), await make_user()

    project = await make_project(conn, owner, collaborators=[first])
    await conn.execute(
        "UPDATE projects SET collaborators = collaborators || $2 WHERE id = $1", project, [second]
    )

    assert await collaborators(conn, project) == [first, second]
    assert await invitations(conn) == set()


async def test_a_collaborator_adding_someone_is_refused_not_turned_into_an_invitation(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """check_owner_columns fires before the invitation trigger (BEFORE triggers fire by
    name), so a collaborator cannot invite by writing the array."""
    owner, member, friend = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only the owner"):
        await as_user(
            conn,
            member,
            "UPDATE projects SET collaborators = collaborators || $2 WHERE id = $1",
            project,
            [friend],
        )

    assert await collaborators(conn, project) == [member]
    assert await invitations(conn) == set()


async def test_a_collaborator_cannot_take_themselves_off_by_updating_the_row(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Only leave_project may: row-level security refuses the row they would lose."""
    owner, member = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await as_user(
            conn,
            member,
            "UPDATE projects SET collaborators = array_remove(collaborators, $2) WHERE id = $1",
            project,
            member,
        )

    assert await collaborators(conn, project) == [member]


async def test_a_project_is_handed_over_only_to_a_collaborator(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Handing it to anyone else would put it on their list without their consent."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner)

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="handed over only"):
        await as_user(
            conn,
            owner,
            "UPDATE projects SET user_id = $2, collaborators = $3 WHERE id = $1",
            project,
            stranger,
            [owner],
        )

    assert await conn.fetchval("SELECT user_id FROM projects WHERE id = $1", project) == owner


async def test_inserting_over_someone_elses_project_invites_nobody(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """INSERT … ON CONFLICT DO NOTHING with another's id runs the BEFORE triggers but
    writes nothing; it must not leave an invitation to that project behind."""
    owner, attacker, victim = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner)

    await as_user(
        conn,
        attacker,
        "INSERT INTO projects (id, user_id, name, type, collaborators)"
        " VALUES ($1, $2, 'x', 'website', $3) ON CONFLICT DO NOTHING",
        project,
        attacker,
        [victim],
    )

    assert await invitations(conn) == set()


async def test_only_the_invitee_reads_an_invitation_and_nobody_writes_one(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner, invitee = await make_user(), await make_user()
    project = await make_project(conn, owner)
    await as_user(conn, owner, "SELECT public.invite_to_project($1, $2, NULL)", project, invitee)

    assert await as_user(conn, invitee, "SELECT count(*) FROM project_invitations") == 1
    assert await as_user(conn, owner, "SELECT count(*) FROM project_invitations") == 0
    for sql in (
        "INSERT INTO project_invitations (project_id, user_id, invited_by) VALUES ($1, $2, $2)",
        "DELETE FROM project_invitations WHERE project_id = $1 AND user_id = $2",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await as_user(conn, invitee, sql, project, invitee)
    assert await invitations(conn) == {(project, invitee, owner)}


async def test_the_invitee_accepts_through_the_function_as_supabase_js_would(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """`supabase.rpc('accept_project_invitation', …)`: the same function the gateway calls."""
    owner, invitee = await make_user(), await make_user()
    project = await make_project(conn, owner)
    await as_user(conn, owner, "SELECT public.invite_to_project($1, $2, NULL)", project, invitee)

    row = await as_user(
        conn,
        invitee,
        "SELECT to_jsonb(p)::text FROM public.accept_project_invitation($1) p",
        project,
    )

    assert orjson.loads(row)["collaborators"] == [str(invitee)]
    assert await collaborators(conn, project) == [invitee]
    assert await invitations(conn) == set()
    latest = (await versions(conn, project))[-1]
    assert latest["message"] == "Updated collaborators"


async def test_anon_may_call_none_of_the_functions(conn: asyncpg.Connection) -> None:
    functions = [
        "public.invite_to_project(uuid, uuid, text)",
        "public.withdraw_project_invitation(uuid, uuid, text)",
        "public.pending_project_invitations(integer)",
        "public.accept_project_invitation(uuid)",
        "public.decline_project_invitation(uuid)",
        "public.leave_project(uuid)",
    ]
    for function in functions:
        allowed = await conn.fetchval(
            "SELECT array[has_function_privilege('anon', $1, 'EXECUTE'),"
            " has_function_privilege('authenticated', $1, 'EXECUTE')]",
            function,
        )
        assert allowed == [False, True], function
    for internal in (
        "public.invite_added_collaborators()",
        "public.project_owned_by_caller(uuid)",
    ):
        allowed = await conn.fetchval(
            "SELECT has_function_privilege('authenticated', $1, 'EXECUTE')", internal
        )
        assert allowed is False, internal
