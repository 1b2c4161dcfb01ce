"""A user's project list, live (`subscribe_projects`), over real sockets and PostgreSQL.

Every test runs on both change feeds. Negative checks ("nothing more arrives") use a
ping round trip as a barrier, after another client has received the change: the
dispatcher writes a change to every connection it is for before it reads the next one,
and a connection's frames go out in order, so if the ping's reply is the next frame,
nothing of that change was queued for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from gateway.app.server import Gateway
from gateway.core.channels import ProjectListChannel
from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, WsClient, make_project, make_sitemap

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


@pytest.fixture(params=["notify", "replication"])
def feed_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both change feeds: clients must not tell them apart."""
    return str(request.param)


# Helpers


async def connected(ws_client: Connect, user: UUID) -> WsClient:
    client = await ws_client()
    await client.auth(user)
    return client


async def subscribe_projects(client: WsClient) -> list[Frame]:
    """`subscribe_projects`: `ok`, then the `project_list`; its projects."""
    reply = await client.request({"type": "subscribe_projects"})
    assert reply["type"] == "ok", reply
    listed = await client.recv_type("project_list")
    assert listed["reset"] is None, listed
    projects: list[Frame] = listed["projects"]
    return projects


async def following(ws_client: Connect, user: UUID) -> WsClient:
    """A connection of `user` following their project list."""
    client = await connected(ws_client, user)
    await subscribe_projects(client)
    return client


async def recv_until(client: WsClient, done: Predicate, within: float = TIMEOUT) -> list[Frame]:
    """Every frame up to and including the first one `done` accepts (bounded in total)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    frames: list[Frame] = []
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        frames.append(frame)
        if done(frame):
            return frames


def listed(op: str | None = None, project: UUID | None = None) -> Predicate:
    """Accepts list changes (`change` of entity `project` with `list: true`)."""

    def accept(frame: Frame) -> bool:
        if (frame.get("type"), frame.get("entity"), frame.get("list")) != (
            "change",
            "project",
            True,
        ):
            return False
        if op is not None and frame["op"] != op:
            return False
        return project is None or frame["project_id"] == str(project)

    return accept


async def next_list_change(client: WsClient, within: float = TIMEOUT) -> Frame:
    """The next frame, which must be a list change."""
    frame = await client.recv(within)
    assert listed()(frame), frame
    return frame


async def rpc(client: WsClient, method: str, **params: object) -> Any:
    reply = await client.request({"type": "rpc", "method": method, "params": params})
    assert reply["type"] == "result", reply
    return reply["data"]


async def rename(conn: asyncpg.Connection, project: UUID, name: str) -> None:
    await conn.execute("UPDATE projects SET name = $2 WHERE id = $1", project, name)


# The list as of subscribing


async def test_list_holds_owned_and_shared_projects_newest_updated_first(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Not a public project of someone else's, not another user's private one."""
    user, other = await make_user(), await make_user()
    owned = await make_project(conn, user, name="Owned")
    shared = await make_project(conn, other, collaborators=[user], name="Shared")
    await make_project(conn, other, public=True, name="Public")
    await make_project(conn, other, name="Private")
    await rename(conn, owned, "Owned, renamed")  # now the most recently updated
    client = await connected(ws_client, user)

    reply = await client.request({"type": "subscribe_projects"})
    assert (reply["type"], reply["data"]) == ("ok", {}), reply
    snapshot = await client.recv_type("project_list")

    assert snapshot["reset"] is None
    assert [(p["id"], p["name"]) for p in snapshot["projects"]] == [
        (str(owned), "Owned, renamed"),
        (str(shared), "Shared"),
    ]
    # What the list already shows is not sent again, however late the feed brings it.
    await client.ping()


async def test_one_list_subscription_per_connection(
    make_user: UserFactory, ws_client: Connect
) -> None:
    client = await connected(ws_client, await make_user())
    assert await subscribe_projects(client) == []

    again = await client.request({"type": "subscribe_projects"})
    assert (again["type"], again["code"]) == ("error", "already_subscribed"), again
    assert (await client.request({"type": "unsubscribe_projects"}))["type"] == "ok"
    gone = await client.request({"type": "unsubscribe_projects"})
    assert (gone["type"], gone["code"]) == ("error", "not_subscribed"), gone
    assert await subscribe_projects(client) == []
    await client.ping()


# Changes of the list


async def test_a_project_the_user_creates_appears_on_their_other_connection(
    make_user: UserFactory, ws_client: Connect
) -> None:
    """The issue's acceptance: the list of a second connection shows the new project."""
    user, stranger = await make_user(), await make_user()
    dashboard = await following(ws_client, user)
    outsider = await following(ws_client, stranger)
    editor = await connected(ws_client, user)

    created = await rpc(editor, "project.create", name="My New Website")

    change = await next_list_change(dashboard)
    assert (change["op"], change["project_id"]) == ("insert", created["id"])
    assert change["old"] is None
    assert change["new"]["name"] == "My New Website"
    assert change["actor"] == str(user)
    await dashboard.ping()
    await outsider.ping()


async def test_an_invitee_sees_it_appear_on_accepting_and_go_when_removed(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Being added is an invitation: nothing reaches the newcomer's list until they
    accept, which is an `insert` for them; removing is a `delete` (of the row as they
    last saw it); for the owner both are updates."""
    owner, newcomer = await make_user(), await make_user()
    project = await make_project(conn, owner, name="Bakery")
    owner_editor = await connected(ws_client, owner)
    owner_list = await following(ws_client, owner)
    newcomer_editor = await connected(ws_client, newcomer)
    newcomer_list = await following(ws_client, newcomer)

    await rpc(
        owner_editor, "project.add_collaborator", project_id=str(project), user_id=str(newcomer)
    )
    await rename(conn, project, "Bakery, invited")

    assert (await next_list_change(owner_list))["new"]["name"] == "Bakery, invited"
    await newcomer_list.ping()
    refused = await newcomer_editor.request({"type": "subscribe", "project_id": str(project)})
    assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused

    await rpc(newcomer_editor, "project.accept_invitation", project_id=str(project))

    added = await next_list_change(newcomer_list)
    assert (added["op"], added["project_id"], added["old"]) == ("insert", str(project), None)
    assert added["new"]["collaborators"] == [str(newcomer)]
    assert added["actor"] == str(newcomer)
    seen_by_owner = await next_list_change(owner_list)
    assert seen_by_owner["op"] == "update"
    assert (seen_by_owner["old"]["collaborators"], seen_by_owner["new"]["collaborators"]) == (
        [],
        [str(newcomer)],
    )
    assert seen_by_owner["position"] == added["position"]
    await newcomer_editor.subscribe(project, snapshot=False)

    await rpc(
        owner_editor, "project.remove_collaborator", project_id=str(project), user_id=str(newcomer)
    )

    removed = await next_list_change(newcomer_list)
    assert (removed["op"], removed["project_id"], removed["new"]) == ("delete", str(project), None)
    assert removed["old"]["collaborators"] == [str(newcomer)]
    assert (await next_list_change(owner_list))["op"] == "update"
    gone = await newcomer_editor.recv_type("unsubscribed")
    assert gone["reason"] == "access_revoked"

    await rename(conn, project, "Bakery 2")
    assert (await next_list_change(owner_list))["new"]["name"] == "Bakery 2"
    await newcomer_list.ping()


async def test_a_project_created_with_collaborators_reaches_only_its_owners_list(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """The issue's case: `project.create` naming someone puts it on nobody else's list;
    a declined invitation never does; an accepted one does, as an insert."""
    owner, declining, accepting = await make_user(), await make_user(), await make_user()
    owner_list = await following(ws_client, owner)
    lists = {user: await following(ws_client, user) for user in (declining, accepting)}
    editors = {user: await connected(ws_client, user) for user in (owner, declining, accepting)}

    created = await rpc(
        editors[owner],
        "project.create",
        name="Invoice overdue - click here",
        collaborators=[str(declining), str(accepting)],
    )

    change = await next_list_change(owner_list)
    assert (change["op"], change["project_id"]) == ("insert", created["id"])
    assert change["new"]["collaborators"] == []
    for invitee_list in lists.values():
        await invitee_list.ping()

    declined = await rpc(editors[declining], "project.decline_invitation", project_id=created["id"])
    assert declined == {"project_id": created["id"]}
    await rpc(editors[accepting], "project.accept_invitation", project_id=created["id"])

    joined = await next_list_change(lists[accepting])
    assert (joined["op"], joined["project_id"]) == ("insert", created["id"])
    assert joined["new"]["collaborators"] == [str(accepting)]
    assert (await next_list_change(owner_list))["new"]["collaborators"] == [str(accepting)]
    await lists[declining].ping()
    await lists[accepting].ping()


async def test_a_collaborator_who_leaves_sees_it_go(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, member = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member], name="Bakery")
    owner_list, member_list = await following(ws_client, owner), await following(ws_client, member)
    member_editor = await connected(ws_client, member)

    assert await rpc(member_editor, "project.leave", project_id=str(project)) == {
        "project_id": str(project)
    }

    gone = await next_list_change(member_list)
    assert (gone["op"], gone["project_id"], gone["new"]) == ("delete", str(project), None)
    assert gone["actor"] == str(member)
    seen_by_owner = await next_list_change(owner_list)
    assert (seen_by_owner["op"], seen_by_owner["new"]["collaborators"]) == ("update", [])
    await rename(conn, project, "Bakery 2")
    assert (await next_list_change(owner_list))["new"]["name"] == "Bakery 2"
    await member_list.ping()


async def test_rename_reaches_members_lists_once_not_strangers(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """A public project is on its members' lists only, not on its readers'."""
    owner, collaborator, stranger = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator], public=True)
    members = [await following(ws_client, owner), await following(ws_client, collaborator)]
    outsider = await following(ws_client, stranger)

    await rename(conn, project, "Renamed")

    positions = set()
    for member in members:
        change = await next_list_change(member)
        assert (change["op"], change["project_id"]) == ("update", str(project))
        assert (change["old"]["name"], change["new"]["name"]) == ("Site", "Renamed")
        positions.add(change["position"])
        await member.ping()
    assert len(positions) == 1
    await outsider.ping()


async def test_deleted_project_is_a_delete_on_every_members_list(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner, collaborator, stranger = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    await make_sitemap(conn, project)  # its cascaded delete is not a list change
    members = [await following(ws_client, owner), await following(ws_client, collaborator)]
    outsider = await following(ws_client, stranger)

    await conn.execute("DELETE FROM projects WHERE id = $1", project)

    for member in members:
        change = await next_list_change(member)
        assert (change["op"], change["project_id"], change["new"]) == ("delete", str(project), None)
        assert change["old"]["id"] == str(project)
        await member.ping()
    await outsider.ping()


async def test_ownership_moving_is_a_delete_for_the_old_owner_and_an_insert_for_the_new(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    old_owner, new_owner = await make_user(), await make_user()
    project = await make_project(conn, old_owner)
    before, after = await following(ws_client, old_owner), await following(ws_client, new_owner)

    await conn.execute("UPDATE projects SET user_id = $2 WHERE id = $1", project, new_owner)

    gone = await next_list_change(before)
    assert (gone["op"], gone["old"]["user_id"]) == ("delete", str(old_owner))
    came = await next_list_change(after)
    assert (came["op"], came["new"]["user_id"]) == ("insert", str(new_owner))
    await before.ping()
    await after.ping()


async def test_list_and_project_subscription_on_one_connection_are_two_streams(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """A rename reaches a connection following both once per stream: the project
    subscription's change (`list: false`), then the list's (`list: true`), same
    position; the project's content (a sitemap) and versions only on the project
    subscription."""
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await connected(ws_client, owner)
    await client.subscribe(project, snapshot=False)
    await subscribe_projects(client)

    sitemap = await make_sitemap(conn, project)
    await rename(conn, project, "Both")

    frames = await recv_until(
        client,
        lambda f: f.get("entity") == "version" and f["new"]["entity_id"] == str(project),
    )
    project_changes = [f for f in frames if f.get("entity") == "project"]
    assert [(f["op"], f["list"]) for f in project_changes] == [("update", False), ("update", True)]
    assert project_changes[0]["position"] == project_changes[1]["position"]
    assert project_changes[0]["new"] == project_changes[1]["new"]
    sitemaps = [f for f in frames if f.get("entity") == "sitemap"]
    assert [(f["op"], f["new"]["id"]) for f in sitemaps] == [("insert", str(sitemap))]
    await client.ping()


async def test_unsubscribe_projects_stops_deliveries(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    leaving, staying = await following(ws_client, owner), await following(ws_client, owner)

    reply = await leaving.request({"type": "unsubscribe_projects"})
    assert (reply["type"], reply["data"]) == ("ok", {}), reply
    await rename(conn, project, "After")

    assert (await next_list_change(staying))["new"]["name"] == "After"
    await leaving.ping()


async def test_a_closed_connection_leaves_no_list_subscription(
    make_user: UserFactory, gateway: Gateway, ws_client: Connect
) -> None:
    user = await make_user()
    client = await following(ws_client, user)
    gauge = "sitebuilder_project_list_subscriptions"
    channel = ProjectListChannel(user)
    assert gateway.hub.has(channel)
    assert gateway.metrics.registry.get_sample_value(gauge) == 1

    await client.close()

    for _ in range(int(TIMEOUT / 0.01)):  # the server's handler ends just after the close
        if not gateway.hub.has(channel):
            break
        await asyncio.sleep(0.01)
    assert not gateway.hub.has(channel)
    assert gateway.metrics.registry.get_sample_value(gauge) == 0


# The boundary between the list and the stream


async def create_projects(dsn: str, owner: UUID, count: int, started: asyncio.Event) -> None:
    """`count` projects of `owner`, one autocommit insert each, on a connection of its own."""
    writer = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        for n in range(count):
            await make_project(writer, owner, name=f"P{n}")
            if n == count // 4:
                started.set()
    finally:
        await asyncio.wait_for(writer.close(), TIMEOUT)


async def test_list_and_changes_join_without_gap_or_duplicate(
    conn: asyncpg.Connection, database_dsn: str, make_user: UserFactory, ws_client: Connect
) -> None:
    """Subscribing while projects are being created: each is in the list or arrives as an
    insert after it, never both, never neither."""
    owner = await make_user()
    client = await connected(ws_client, owner)
    started = asyncio.Event()
    writers = asyncio.gather(*(create_projects(database_dsn, owner, 40, started) for _ in range(4)))
    try:
        await asyncio.wait_for(started.wait(), 30)
        snapshot = await subscribe_projects(client)
    finally:
        await asyncio.wait_for(writers, 60)
    marker = await make_project(conn, owner, name="marker")

    frames = await recv_until(client, listed("insert", marker), within=30)

    inserted = [f["project_id"] for f in frames if listed("insert")(f)]
    assert all(listed("insert")(f) for f in frames), frames
    in_list = {p["id"] for p in snapshot}
    assert in_list.isdisjoint(inserted), in_list & set(inserted)
    assert len(inserted) == len(set(inserted))
    everything = {
        str(r["id"]) for r in await conn.fetch("SELECT id FROM projects WHERE user_id = $1", owner)
    }
    assert len(everything) == 161
    assert in_list | set(inserted) == everything
    assert 0 < len(in_list) < 161


# Resynchronisation


@pytest.mark.parametrize("feed_kind", ["notify"])
async def test_lost_listen_connection_sends_the_list_again(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """Changes may be lost while NOTIFY reconnects: the list comes again, marked `reset`,
    and changes follow it."""
    owner = await make_user()
    project = await make_project(conn, owner, name="Before")
    client = await following(ws_client, owner)
    listeners = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'"
    )
    assert len(listeners) == 1, listeners

    assert await conn.fetchval("SELECT pg_terminate_backend($1)", listeners[0]["pid"])

    again = await client.recv_type("project_list", timeout=10)
    assert again["reset"] == "feed_interrupted"
    assert [p["id"] for p in again["projects"]] == [str(project)]
    await rename(conn, project, "After")
    assert (await next_list_change(client))["new"]["name"] == "After"


async def test_truncated_projects_send_the_list_again(
    conn: asyncpg.Connection, make_user: UserFactory, ws_client: Connect
) -> None:
    """A truncation has no rows to route: the list comes again (empty), marked `reset`,
    and a project created after it still appears."""
    owner = await make_user()
    await make_project(conn, owner, name="Gone")
    client = await following(ws_client, owner)

    await conn.execute("TRUNCATE projects CASCADE")

    again = await client.recv_type("project_list", timeout=10)
    assert (again["reset"], again["projects"]) == ("truncated", [])
    project = await make_project(conn, owner, name="New")

    def shows_it(frame: Frame) -> bool:
        if frame["type"] == "project_list":
            return str(project) in {p["id"] for p in frame["projects"]}
        return listed("insert", project)(frame)

    # Truncating several tables may send the list more than once; never anything else.
    frames = await recv_until(client, shows_it, within=10)
    assert all(f["type"] == "project_list" for f in frames[:-1]), frames
    assert {f["reset"] for f in frames if f["type"] == "project_list"} <= {"truncated"}
    await client.ping()
