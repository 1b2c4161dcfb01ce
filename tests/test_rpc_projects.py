"""`project.*` RPCs over a real socket against a real PostgreSQL, per role.

Rows are set up with the superuser connection `conn` (no RLS); every call goes through
the gateway as a signed-in user, and every check of what was written reads the
database itself, so a refusal is only accepted if nothing changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, WsClient, make_project

Frame = dict[str, Any]


async def rpc(client: WsClient, method: str, **params: object) -> Frame:
    return await client.request({"type": "rpc", "method": method, "params": params})


async def ok(client: WsClient, method: str, **params: object) -> Any:
    """The `data` of a successful call (fails the test on an error)."""
    reply = await rpc(client, method, **params)
    assert reply["type"] == "result", reply
    return reply["data"]


async def refused(client: WsClient, code: str, method: str, **params: object) -> Frame:
    reply = await rpc(client, method, **params)
    assert (reply["type"], reply["code"]) == ("error", code), reply
    return reply


async def signed_in(ws_client: Connect, user: UUID) -> WsClient:
    client = await ws_client()
    await client.auth(user)
    return client


async def stored(conn: asyncpg.Connection, project: UUID) -> tuple[Any, int]:
    """The row as the database holds it (None once deleted) and its number of versions."""
    row = await conn.fetchval("SELECT to_jsonb(p)::text FROM projects p WHERE id = $1", project)
    versions = await conn.fetchval(
        "SELECT count(*) FROM version_history WHERE entity_id = $1", project
    )
    return (orjson.loads(row) if row else None), versions


async def invited(conn: asyncpg.Connection, project: UUID) -> set[UUID]:
    """Who has a pending invitation to the project (migration 0016)."""
    rows = await conn.fetch(
        "SELECT user_id FROM project_invitations WHERE project_id = $1", project
    )
    return {r["user_id"] for r in rows}


async def invite(conn: asyncpg.Connection, project: UUID, user: UUID, by: UUID) -> None:
    """An invitation as project.add_collaborator records it."""
    await conn.execute(
        "INSERT INTO project_invitations (project_id, user_id, invited_by) VALUES ($1, $2, $3)",
        project,
        user,
        by,
    )


async def latest_version(conn: asyncpg.Connection, project: UUID) -> asyncpg.Record:
    found = await conn.fetchrow(
        "SELECT version_number, user_id, message, is_major FROM version_history "
        "WHERE entity_id = $1 ORDER BY version_number DESC LIMIT 1",
        project,
    )
    assert found is not None
    return found


@dataclass(frozen=True)
class Cast:
    """Four users around one private project (owner + collaborator) and one public one."""

    owner: UUID
    collaborator: UUID
    reader: UUID
    stranger: UUID
    private: UUID
    public: UUID

    def user(self, role: str) -> UUID:
        user: UUID = getattr(self, role)
        return user

    def project_for(self, role: str) -> UUID:
        """A public reader is tried on the public project, everyone else on the private one."""
        return self.public if role == "reader" else self.private


@pytest.fixture
async def cast(conn: asyncpg.Connection, make_user: UserFactory) -> Cast:
    owner, collaborator, reader, stranger = [await make_user() for _ in range(4)]
    private = await make_project(conn, owner, collaborators=[collaborator], name="Private")
    public = await make_project(conn, owner, collaborators=[collaborator], public=True)
    return Cast(owner, collaborator, reader, stranger, private, public)


# 1. Who may do what

ROLES = ("owner", "collaborator", "reader", "stranger")
OWNER_ONLY = {
    "owner": None,
    "collaborator": "forbidden",
    "reader": "forbidden",
    "stranger": "not_found",
}
MEMBERS = {**OWNER_ONLY, "collaborator": None}
# Method → (its params besides project_id, given the cast; the refusal per role).
WRITES: dict[str, tuple[Callable[[Cast], dict[str, object]], dict[str, str | None]]] = {
    "project.update": (lambda c: {"set": {"name": "Renamed"}}, MEMBERS),
    "project.delete": (lambda c: {}, OWNER_ONLY),
    "project.add_collaborator": (lambda c: {"user_id": str(c.stranger)}, OWNER_ONLY),
    "project.remove_collaborator": (lambda c: {"user_id": str(c.collaborator)}, OWNER_ONLY),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("method", sorted(WRITES))
async def test_each_write_is_allowed_or_refused_per_role(
    method: str, role: str, cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """A refusal writes nothing; an allowed call changes the row (or removes it), or
    records an invitation (add_collaborator)."""
    make_params, refusals = WRITES[method]
    project = cast.project_for(role)
    before = (await stored(conn, project), await invited(conn, project))
    client = await signed_in(ws_client, cast.user(role))

    reply = await rpc(client, method, project_id=str(project), **make_params(cast))

    expected = refusals[role]
    after = (await stored(conn, project), await invited(conn, project))
    if expected is None:
        assert reply["type"] == "result", reply
        assert after != before
    else:
        assert (reply["type"], reply["code"]) == ("error", expected), reply
        assert after == before
    await client.ping()


async def test_list_shows_each_role_what_it_may_read(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    hidden = await make_project(conn, cast.stranger, name="Stranger's own")
    scopes = ("mine", "shared", "public", "all")
    expected = {
        "owner": ({cast.private, cast.public}, set(), {cast.public}, {cast.private, cast.public}),
        "collaborator": (
            set(),
            {cast.private, cast.public},
            {cast.public},
            {cast.private, cast.public},
        ),
        "reader": (set(), set(), {cast.public}, {cast.public}),
        "stranger": ({hidden}, set(), {cast.public}, {hidden, cast.public}),
    }
    for role, wanted in expected.items():
        client = await signed_in(ws_client, cast.user(role))
        for scope, ids in zip(scopes, wanted, strict=True):
            page = await ok(client, "project.list", scope=scope)
            assert {UUID(p["id"]) for p in page["projects"]} == ids, (role, scope)
            assert page["next_cursor"] is None


# 2. project.update


async def test_update_sets_columns_and_merge_patches_json(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    await conn.execute(
        "UPDATE projects SET description = 'old', "
        """data = '{"theme": {"color": "red", "font": "serif"}, "pages": 3}' WHERE id = $1""",
        cast.private,
    )
    client = await signed_in(ws_client, cast.collaborator)
    row = await ok(
        client,
        "project.update",
        project_id=str(cast.private),
        set={"name": "Bakery", "description": None, "status": "active"},
        patch={"data": {"theme": {"color": None, "size": 12}, "logo": "a.png"}},
    )
    assert (row["name"], row["description"], row["status"]) == ("Bakery", None, "active")
    assert row["data"] == {"theme": {"font": "serif", "size": 12}, "pages": 3, "logo": "a.png"}
    assert row["settings"] == {}
    stored_row, _ = await stored(conn, cast.private)
    assert stored_row["data"] == row["data"]
    assert stored_row["name"] == "Bakery"


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({}, "params"),
        ({"set": {}, "patch": {}}, "params"),
        ({"set": {"name": None}}, "set.name"),
        ({"set": {"name": ""}}, "set.name"),
        ({"set": {"owner": "me"}}, "set.owner"),
        ({"patch": {"data": [1, 2]}}, "patch.data"),
        ({"patch": {"name": {"a": 1}}}, "patch.name"),
        (
            {"set": {"name": "A"}, "expected_updated_at": "2026-01-01T00:00:00"},
            "expected_updated_at",
        ),
    ],
)
async def test_update_refuses_malformed_params(
    params: dict[str, object], location: str, cast: Cast, ws_client: Connect
) -> None:
    client = await signed_in(ws_client, cast.owner)
    reply = await refused(
        client, "invalid_params", "project.update", project_id=str(cast.private), **params
    )
    assert location in {error["loc"] for error in reply["details"]["errors"]}


async def test_collaborator_may_not_change_visibility(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """is_public is the owner's to change (the check_owner_columns trigger decides)."""
    before = await stored(conn, cast.private)
    client = await signed_in(ws_client, cast.collaborator)
    await refused(
        client, "forbidden", "project.update", project_id=str(cast.private), set={"is_public": True}
    )
    assert await stored(conn, cast.private) == before


async def test_stale_expected_updated_at_is_a_conflict_and_writes_nothing(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    owner = await signed_in(ws_client, cast.owner)
    member = await signed_in(ws_client, cast.collaborator)
    seen = (await ok(owner, "project.get_with_relations", project_id=str(cast.private)))["project"]
    first = await ok(
        member,
        "project.update",
        project_id=str(cast.private),
        set={"name": "Member's"},
        expected_updated_at=seen["updated_at"],
    )
    before = await stored(conn, cast.private)

    reply = await refused(
        owner,
        "conflict",
        "project.update",
        project_id=str(cast.private),
        set={"name": "Owner's"},
        patch={"data": {"x": 1}},
        expected_updated_at=seen["updated_at"],
    )

    assert reply["details"]["current"] == first
    assert await stored(conn, cast.private) == before
    retried = await ok(
        owner,
        "project.update",
        project_id=str(cast.private),
        set={"name": "Owner's"},
        expected_updated_at=first["updated_at"],
    )
    assert retried["name"] == "Owner's"


async def wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Until `count` backends of this database wait for a lock (bounded)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)


async def test_concurrent_patches_of_different_keys_both_survive(
    cast: Cast, conn: asyncpg.Connection, database_dsn: str, ws_client: Connect
) -> None:
    """Both updates are made to wait on the row, then run one right after the other:
    the second merges its patch into the row the first committed."""
    await conn.execute(
        """UPDATE projects SET data = '{"keep": true}' WHERE id = $1""", cast.private
    )
    editors = [
        await signed_in(ws_client, cast.owner),
        await signed_in(ws_client, cast.collaborator),
    ]
    holder = await asyncio.wait_for(asyncpg.connect(database_dsn), TIMEOUT)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", cast.private)
            for key, editor in zip(("hero", "footer"), editors, strict=True):
                await editor.send(
                    {
                        "type": "rpc",
                        "ref": key,
                        "method": "project.update",
                        "params": {"project_id": str(cast.private), "patch": {"data": {key: key}}},
                    }
                )
            await wait_for_lock_waiters(conn, 2)
    finally:
        await asyncio.wait_for(holder.close(), TIMEOUT)

    for editor in editors:
        assert (await editor.recv_type("result"))["data"]["id"] == str(cast.private)
    row, _ = await stored(conn, cast.private)
    assert row["data"] == {"keep": True, "hero": "hero", "footer": "footer"}


async def test_message_and_is_major_land_on_the_version_of_that_update_only(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    client = await signed_in(ws_client, cast.collaborator)
    await ok(
        client,
        "project.update",
        project_id=str(cast.private),
        set={"name": "Launch"},
        message="Renamed for the launch",
        is_major=True,
    )
    version = await latest_version(conn, cast.private)
    assert (version["version_number"], version["user_id"]) == (2, cast.collaborator)
    assert (version["message"], version["is_major"]) == ("Renamed for the launch", True)

    await ok(client, "project.update", project_id=str(cast.private), set={"name": "Later"})
    version = await latest_version(conn, cast.private)
    assert (version["version_number"], version["user_id"]) == (3, cast.collaborator)
    assert (version["message"], version["is_major"]) == ("Updated name", False)


# 3. project.delete


async def test_delete_returns_the_id_and_removes_the_row(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    client = await signed_in(ws_client, cast.owner)
    assert await ok(client, "project.delete", project_id=str(cast.private)) == {
        "id": str(cast.private)
    }
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE id = $1", cast.private) == 0
    await refused(client, "not_found", "project.delete", project_id=str(cast.private))


# 4. project.list


async def test_list_pages_walk_every_row_once_newest_updated_first(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Ties on updated_at (and rows with none, sorted last) are ordered by id; page
    boundaries fall inside both groups, and no page repeats or skips a row."""
    owner = await make_user()
    tied = datetime(2000, 1, 1, tzinfo=UTC)
    for updated_at in [datetime.now(UTC), *[tied] * 4, *[None] * 3]:
        # An explicit updated_at on INSERT (the set_updated_at trigger fires on UPDATE only).
        await conn.execute(
            "INSERT INTO projects (user_id, name, type, updated_at) "
            "VALUES ($1, 'P', 'website', $2)",
            owner,
            updated_at,
        )
    expected = await conn.fetch(
        "SELECT id FROM projects ORDER BY updated_at DESC NULLS LAST, id DESC"
    )
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE updated_at IS NULL") == 3
    client = await signed_in(ws_client, owner)

    seen: list[UUID] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(len(expected)):
        params: dict[str, object] = {"scope": "mine", "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = await ok(client, "project.list", **params)
        seen += [UUID(p["id"]) for p in page["projects"]]
        sizes.append(len(page["projects"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sizes == [3, 3, 2]
    assert seen == [r["id"] for r in expected]


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"scope": "everyone"}, "scope"),
    ],
)
async def test_list_refuses_malformed_params(
    params: dict[str, object], location: str, make_user: UserFactory, ws_client: Connect
) -> None:
    client = await signed_in(ws_client, await make_user())
    reply = await refused(client, "invalid_params", "project.list", **params)
    assert [error["loc"] for error in reply["details"]["errors"]] == [location]


# 5. Collaborators


async def test_adding_by_email_or_id_invites_and_only_accepting_joins(
    cast: Cast, conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The owner's call leaves the row as it is; the invitee sees the invitation, not the
    project, until they accept it."""
    newcomer = await make_user(email="Newcomer@Example.test")
    owner = await signed_in(ws_client, cast.owner)
    guest = await signed_in(ws_client, newcomer)
    project = str(cast.private)
    before = await stored(conn, cast.private)

    added = await ok(
        owner, "project.add_collaborator", project_id=project, email="newcomer@example.test"
    )

    assert added["collaborators"] == [str(cast.collaborator)]
    assert await stored(conn, cast.private) == before
    assert await invited(conn, cast.private) == {newcomer}
    await refused(guest, "not_found", "project.get_with_relations", project_id=project)
    pending = await ok(guest, "project.invitations")
    assert pending == {
        "invitations": [
            {
                "project_id": project,
                "project_name": "Private",
                "invited_by": str(cast.owner),
                "invited_by_email": f"{cast.owner.hex[:8]}@example.test",
                "invited_at": pending["invitations"][0]["invited_at"],
            }
        ]
    }

    joined = await ok(guest, "project.accept_invitation", project_id=project)

    assert joined["collaborators"] == [str(cast.collaborator), str(newcomer)]
    assert await invited(conn, cast.private) == set()
    assert await ok(guest, "project.invitations") == {"invitations": []}
    seen = await ok(guest, "project.get_with_relations", project_id=project)
    assert seen["project"] == joined
    version = await latest_version(conn, cast.private)
    assert (version["version_number"], version["user_id"]) == (2, newcomer)
    assert version["message"] == "Updated collaborators"

    by_id = await ok(
        owner, "project.remove_collaborator", project_id=project, user_id=str(cast.collaborator)
    )
    assert by_id["collaborators"] == [str(newcomer)]
    by_email = await ok(
        owner, "project.remove_collaborator", project_id=project, email="NEWCOMER@example.test"
    )
    assert by_email["collaborators"] == []
    row, _ = await stored(conn, cast.private)
    assert row["collaborators"] == []


async def test_adding_a_member_or_removing_a_non_member_changes_nothing(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """No write at all: no new version, updated_at untouched, the row as it is."""
    client = await signed_in(ws_client, cast.owner)
    before = await stored(conn, cast.private)
    project = str(cast.private)

    added = await ok(
        client, "project.add_collaborator", project_id=project, user_id=str(cast.collaborator)
    )
    owner_added = await ok(
        client, "project.add_collaborator", project_id=project, user_id=str(cast.owner)
    )
    removed = await ok(
        client, "project.remove_collaborator", project_id=project, user_id=str(cast.reader)
    )

    assert added == owner_added == removed
    assert added["collaborators"] == [str(cast.collaborator)]
    assert await stored(conn, cast.private) == before
    assert await invited(conn, cast.private) == set()


def without_ref(frame: Frame) -> Frame:
    return {key: value for key, value in frame.items() if key != "ref"}


async def test_adding_answers_alike_whether_or_not_there_is_an_account(
    cast: Cast, conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The whole reply, frame for frame: an email or id with an account (which gets an
    invitation), one without, and one already invited."""
    known = await make_user(email="known@example.test")
    client = await signed_in(ws_client, cast.owner)
    project = str(cast.private)
    before = await stored(conn, cast.private)

    replies = [
        await rpc(client, "project.add_collaborator", project_id=project, **params)
        for params in (
            {"email": "known@example.test"},
            {"email": "unknown@example.test"},
            {"email": "KNOWN@example.test"},
            {"user_id": str(known)},
            {"user_id": str(uuid4())},
        )
    ]

    assert replies[0]["type"] == "result", replies[0]
    assert all(without_ref(reply) == without_ref(replies[0]) for reply in replies), replies
    assert replies[0]["data"]["collaborators"] == [str(cast.collaborator)]
    assert await stored(conn, cast.private) == before
    assert await invited(conn, cast.private) == {known}


async def test_removing_answers_alike_for_an_invitee_and_an_unknown_address(
    cast: Cast, conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Removing someone invited withdraws the invitation; they can no longer accept."""
    invitee = await make_user(email="invitee@example.test")
    await invite(conn, cast.private, invitee, cast.owner)
    client = await signed_in(ws_client, cast.owner)
    project = str(cast.private)
    before = await stored(conn, cast.private)

    replies = [
        await rpc(client, "project.remove_collaborator", project_id=project, email=email)
        for email in ("invitee@example.test", "unknown@example.test")
    ]

    assert replies[0]["type"] == "result", replies[0]
    assert without_ref(replies[0]) == without_ref(replies[1])
    assert await stored(conn, cast.private) == before
    assert await invited(conn, cast.private) == set()
    guest = await signed_in(ws_client, invitee)
    await refused(guest, "not_found", "project.accept_invitation", project_id=project)


async def test_the_user_must_be_named_once(cast: Cast, ws_client: Connect) -> None:
    client = await signed_in(ws_client, cast.owner)
    both = {"user_id": str(cast.reader), "email": "x@example.test"}
    for method in ("project.add_collaborator", "project.remove_collaborator"):
        await refused(client, "invalid_params", method, project_id=str(cast.private))
        await refused(client, "invalid_params", method, project_id=str(cast.private), **both)


async def test_only_the_owner_may_invite_account_or_not(
    cast: Cast, conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Non-owners are answered as the ownership check does, account or not, and
    invite nobody."""
    await make_user(email="known@example.test")
    client = await signed_in(ws_client, cast.collaborator)
    for email in ("known@example.test", "unknown@example.test"):
        await refused(
            client,
            "forbidden",
            "project.add_collaborator",
            project_id=str(cast.private),
            email=email,
        )
    assert await invited(conn, cast.private) == set()


async def test_no_function_tells_a_user_whether_an_email_has_an_account(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """0010's lookup (any project owner could ask about any address) is gone."""
    user = await make_user()
    async with acting_as(conn, user):
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await conn.fetchval("SELECT public.collaborator_id(NULL, NULL, 'a@example.test')")


# 6. Invitations, from the invitee's side


async def test_create_with_collaborators_invites_them(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """The new row lists nobody (the owner, named too, is dropped); its version 1 is the
    row as written."""
    client = await signed_in(ws_client, cast.owner)
    created = await ok(
        client,
        "project.create",
        name="Invoice overdue - click here",
        collaborators=[str(cast.stranger), str(cast.owner)],
    )

    project = UUID(created["id"])
    assert created["collaborators"] == []
    assert await invited(conn, project) == {cast.stranger}
    version = await conn.fetchval(
        "SELECT data->'collaborators' FROM version_history WHERE entity_id = $1", project
    )
    assert orjson.loads(version) == []
    stranger = await signed_in(ws_client, cast.stranger)
    page = await ok(stranger, "project.list")
    assert str(project) not in {p["id"] for p in page["projects"]}
    reply = await stranger.request({"type": "subscribe", "project_id": str(project)})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply


async def test_declining_leaves_nothing(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    await invite(conn, cast.private, cast.reader, cast.owner)
    before = await stored(conn, cast.private)
    guest = await signed_in(ws_client, cast.reader)

    declined = await ok(guest, "project.decline_invitation", project_id=str(cast.private))

    assert declined == {"project_id": str(cast.private)}
    assert await invited(conn, cast.private) == set()
    assert await stored(conn, cast.private) == before
    assert await ok(guest, "project.invitations") == {"invitations": []}
    for method in ("project.accept_invitation", "project.decline_invitation"):
        await refused(guest, "not_found", method, project_id=str(cast.private))


async def test_nobody_accepts_an_invitation_they_do_not_have(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """Not someone else's, not one to a project they may read (public), not one whose
    inviter no longer owns the project."""
    await invite(conn, cast.private, cast.reader, cast.owner)
    await invite(conn, cast.public, cast.reader, cast.collaborator)
    before = [await stored(conn, p) for p in (cast.private, cast.public)]

    stranger = await signed_in(ws_client, cast.stranger)
    reader = await signed_in(ws_client, cast.reader)
    await refused(stranger, "not_found", "project.accept_invitation", project_id=str(cast.private))
    await refused(stranger, "not_found", "project.accept_invitation", project_id=str(cast.public))
    await refused(reader, "not_found", "project.accept_invitation", project_id=str(cast.public))
    await refused(reader, "not_found", "project.accept_invitation", project_id=str(uuid4()))

    assert [await stored(conn, p) for p in (cast.private, cast.public)] == before
    pending = await ok(reader, "project.invitations")
    assert [i["project_id"] for i in pending["invitations"]] == [str(cast.private)]


async def test_a_collaborator_leaves_and_the_owner_cannot(
    cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    owner = await signed_in(ws_client, cast.owner)
    member = await signed_in(ws_client, cast.collaborator)
    stranger = await signed_in(ws_client, cast.stranger)
    project = str(cast.private)

    reply = await refused(owner, "forbidden", "project.leave", project_id=project)
    assert "cannot leave" in reply["message"]
    await refused(stranger, "not_found", "project.leave", project_id=project)

    assert await ok(member, "project.leave", project_id=project) == {"project_id": project}

    row, _ = await stored(conn, cast.private)
    assert (row["user_id"], row["collaborators"]) == (str(cast.owner), [])
    version = await latest_version(conn, cast.private)
    assert (version["user_id"], version["message"]) == (cast.collaborator, "Updated collaborators")
    await refused(member, "not_found", "project.get_with_relations", project_id=project)
    await refused(member, "not_found", "project.leave", project_id=project)


# 7. What subscribers see


async def recv_until(client: WsClient, done: Callable[[Frame], bool]) -> list[Frame]:
    """Every frame up to and including the first one `done` accepts (bounded in total)."""
    frames: list[Frame] = []
    async with asyncio.timeout(TIMEOUT):
        while not frames or not done(frames[-1]):
            frames.append(await client.recv())
    return frames


def is_change(frame: Frame, entity: str, name: str | None = None) -> bool:
    if frame.get("type") != "change" or frame["entity"] != entity:
        return False
    return name is None or (frame["new"] or {}).get("name") == name


Write = Callable[[WsClient, Cast], Awaitable[Any]]


async def update_by_member(client: WsClient, cast: Cast) -> Any:
    return await ok(
        client, "project.update", project_id=str(cast.private), patch={"data": {"a": 1}}
    )


async def accept_by_invitee(client: WsClient, cast: Cast) -> Any:
    return await ok(client, "project.accept_invitation", project_id=str(cast.private))


async def leave_by_collaborator(client: WsClient, cast: Cast) -> Any:
    await ok(client, "project.leave", project_id=str(cast.private))
    return None


async def remove_by_owner(client: WsClient, cast: Cast) -> Any:
    return await ok(
        client,
        "project.remove_collaborator",
        project_id=str(cast.private),
        user_id=str(cast.collaborator),
    )


@pytest.mark.parametrize(
    ("write", "role"),
    [
        (update_by_member, "collaborator"),
        (accept_by_invitee, "reader"),
        (leave_by_collaborator, "collaborator"),
        (remove_by_owner, "owner"),
    ],
)
async def test_each_write_reaches_a_subscriber_as_one_change_by_the_caller(
    write: Write, role: str, cast: Cast, conn: asyncpg.Connection, ws_client: Connect
) -> None:
    """The project's change and its version, each once, then the next write's change.
    (The reader has an invitation, which accept_by_invitee uses.)"""
    await invite(conn, cast.private, cast.reader, cast.owner)
    watcher = await signed_in(ws_client, cast.owner)
    await watcher.subscribe(cast.private, snapshot=False)
    caller = await signed_in(ws_client, cast.user(role))

    row = await write(caller, cast)
    await conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", cast.private)

    frames = await recv_until(watcher, lambda f: is_change(f, "project", "marker"))
    entities = [(f["entity"], f["op"]) for f in frames[:-1]]
    assert entities == [("project", "update"), ("version", "insert")]
    assert [f["actor"] for f in frames[:-1]] == [str(cast.user(role))] * 2
    assert row is None or frames[0]["new"] == row


async def test_delete_reaches_a_subscriber_as_one_delete_then_unsubscribed(
    cast: Cast, ws_client: Connect
) -> None:
    watcher = await signed_in(ws_client, cast.collaborator)
    await watcher.subscribe(cast.private, snapshot=False)
    client = await signed_in(ws_client, cast.owner)

    await ok(client, "project.delete", project_id=str(cast.private))

    frames = await recv_until(watcher, lambda f: f["type"] == "unsubscribed")
    assert [(f["type"], f.get("entity"), f.get("op")) for f in frames] == [
        ("change", "project", "delete"),
        ("unsubscribed", None, None),
    ]
    assert frames[0]["actor"] == str(cast.owner)
    await watcher.ping()


async def test_a_removed_collaborator_is_unsubscribed(cast: Cast, ws_client: Connect) -> None:
    member = await signed_in(ws_client, cast.collaborator)
    await member.subscribe(cast.private, snapshot=False)
    client = await signed_in(ws_client, cast.owner)

    await remove_by_owner(client, cast)

    gone = await member.recv_type("unsubscribed")
    assert (gone["project_id"], gone["reason"]) == (str(cast.private), "access_revoked")
    await member.ping()


async def test_a_collaborator_who_leaves_is_unsubscribed_everywhere(
    cast: Cast, ws_client: Connect
) -> None:
    """Their other connection's subscription ends too; the reply comes on this one."""
    watching = await signed_in(ws_client, cast.collaborator)
    await watching.subscribe(cast.private, snapshot=False)
    leaving = await signed_in(ws_client, cast.collaborator)
    await leaving.subscribe(cast.private, snapshot=False)

    params = {"project_id": str(cast.private)}
    await leaving.send({"type": "rpc", "ref": "leave", "method": "project.leave", "params": params})

    # The reply and the end of the subscription, in either order, and nothing else.
    frames = [await leaving.recv(), await leaving.recv()]
    assert sorted(f["type"] for f in frames) == ["result", "unsubscribed"], frames
    assert next(f for f in frames if f["type"] == "result")["data"] == params
    gone = await recv_until(watching, lambda f: f["type"] == "unsubscribed")
    assert (gone[-1]["project_id"], gone[-1]["reason"]) == (str(cast.private), "access_revoked")
    assert all(f["type"] == "unsubscribed" for f in gone), gone
    await watching.ping()
    reply = await watching.request({"type": "subscribe", "project_id": str(cast.private)})
    assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
