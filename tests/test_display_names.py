"""Display names (migration 0017): a user's profile name, else their email before the
`@`, shown beside their id in presence, `project.members` and version history, and
never looked up by a signed-in user's own query."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, make_project
from tests.test_presence import joined
from tests.test_rpc import rpc, signed_in


async def named(conn: asyncpg.Connection, make_user: UserFactory, meta: dict[str, str]) -> UUID:
    user = await make_user(f"someone.{uuid4().hex[:12]}@example.test")
    await conn.execute(
        "UPDATE auth.users SET raw_user_meta_data = $2::jsonb WHERE id = $1",
        user,
        orjson.dumps(meta).decode(),
    )
    return user


async def test_names_come_from_the_profile_else_the_email(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    full = await named(conn, make_user, {"full_name": "Ada Lovelace", "name": "ada"})
    oauth = await named(conn, make_user, {"name": "Grace Hopper"})
    blank = await named(conn, make_user, {"full_name": "  "})
    plain = await make_user("charles.babbage@example.test")
    rows = await conn.fetch(
        "SELECT user_id, display_name FROM public.display_names($1::uuid[])",
        [full, oauth, blank, plain],
    )
    names = {row["user_id"]: row["display_name"] for row in rows}
    assert names[full] == "Ada Lovelace"
    assert names[oauth] == "Grace Hopper"
    assert names[blank].startswith("someone.")
    assert names[plain] == "charles.babbage"


async def test_a_signed_in_user_cannot_look_names_up(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Names (and email prefixes) are shown only beside what the caller can see."""
    user, other = await make_user(), await make_user()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with acting_as(conn, user) as tx:
            await tx.fetch("SELECT * FROM public.display_names($1::uuid[])", [other])


async def test_presence_shows_each_user_by_name(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await named(conn, make_user, {"full_name": "Owner Name"})
    helper = await make_user("helper.person@example.test")
    project = await make_project(conn, owner, collaborators=[helper])
    await joined(ws_client, owner, project)
    _client, state = await joined(ws_client, helper, project)
    names = {user: entry["metas"][0]["name"] for user, entry in state["users"].items()}
    assert names == {str(owner): "Owner Name", str(helper): "helper.person"}


async def test_members_are_listed_by_name_role_and_whether_online(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await named(conn, make_user, {"full_name": "The Owner"})
    member = await make_user("member.one@example.test")
    stranger = await make_user()
    project = await make_project(conn, owner, collaborators=[member])
    await joined(ws_client, owner, project)  # online

    reply = await rpc(
        await signed_in(ws_client, member), "project.members", project_id=str(project)
    )

    assert reply["type"] == "result", reply
    assert reply["data"] == {
        "members": [
            {"user_id": str(owner), "name": "The Owner", "role": "owner", "online": True},
            {"user_id": str(member), "name": "member.one", "role": "collaborator", "online": False},
        ]
    }
    assert b"@" not in orjson.dumps(reply), "never an email"
    refused = await rpc(
        await signed_in(ws_client, stranger), "project.members", project_id=str(project)
    )
    assert (refused["type"], refused["code"]) == ("error", "not_found")


async def test_version_history_names_each_versions_author(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await named(conn, make_user, {"full_name": "Writer Of Versions"})
    client = await signed_in(ws_client, owner)
    created = await rpc(client, "project.create", name="Named history")
    project = created["data"]["id"]  # type: ignore[index]
    renamed = await rpc(client, "project.update", project_id=project, set={"name": "Renamed"})
    assert renamed["type"] == "result", renamed

    page = await rpc(client, "version.get_by_entity", entity_type="projects", entity_id=project)

    versions = page["data"]["versions"]  # type: ignore[index]
    assert [v["user_name"] for v in versions] == ["Writer Of Versions"] * 2
    one = await rpc(client, "version.get", version_id=versions[0]["id"])
    assert one["data"]["user_name"] == "Writer Of Versions"  # type: ignore[index]
