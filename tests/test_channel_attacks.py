"""Attacks on channels, tokens and identity that once worked, replayed through the real
protocols: each must now be refused or deliver nothing it should not.

1. Several spellings of one project's id as Supabase topics were several channels past
   SITEBUILDER_MAX_SUBSCRIPTIONS, each delivering every change again.
2. A channel of no project was keyed by a UUID derived from its topic; a user who
   created a project with that id could disturb the channel (revocation, presence).
3. A join in flight when its token expired went live anyway and kept delivering.
4. A resume replayed history with today's access (test_gateway_resume has the native
   protocol's case).
5. Presence keys, presence meta and broadcasts carried whatever identity the client
   wrote, so an anonymous reader could appear as, and broadcast into, the owner's editor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID, uuid5

import asyncpg
import pytest

from gateway.app.server import Gateway
from gateway.edge.tokens import mint_anon_key
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    Connect,
    gateway_port,
    make_project,
    make_sitemap,
    make_wireframe,
    open_client,
    token,
)
from tests.phoenix_fixtures import change, expect_subscribed
from tests.test_gateway_feed import change_of, recv_until

# How channels of no project were keyed before: uuid5 of the topic in this namespace.
OLD_CHANNEL_NAMESPACE = UUID("5c0d3a52-7f43-4b5e-9a8e-1f2d3c4b5a69")
SITEMAPS = {"event": "*", "schema": "public", "table": "sitemaps"}
WIREFRAMES = {"event": "*", "schema": "public", "table": "wireframes"}


def spellings(project: UUID) -> list[str]:
    """Ways Python's UUID() reads one id: only the first is the project's topic name."""
    return [
        str(project),
        str(project).upper(),
        project.hex,
        f"{{{project}}}",
        f"urn:uuid:{project}",
    ]


@pytest.mark.parametrize("gateway_overrides", [{"max_subscriptions": 3}])
async def test_spellings_of_a_project_id_are_one_channel_counted_once(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await phx_client(token(owner))
    canonical, *others = spellings(project)
    joined = await client.join(f"project:{canonical}", {"postgres_changes": [SITEMAPS]})
    assert joined["status"] == "ok", joined
    await expect_subscribed(client, f"project:{project}")
    for name in others:
        reply = await client.join(f"project:{name}", {"postgres_changes": [SITEMAPS]})
        assert reply["status"] == "error", (name, reply)
        assert f"project:{project}" in reply["response"]["reason"], (name, reply)
    await make_sitemap(conn, project, "once")
    assert (await change(client))["data"]["record"]["title"] == "once"
    await client.quiet()  # one frame for one channel, whatever was tried

    more = [await make_project(conn, owner) for _ in range(3)]
    assert [(await client.join(f"project:{p}"))["status"] for p in more] == [
        "ok",
        "ok",
        "error",
    ]


async def test_a_project_whose_id_a_channel_was_keyed_by_disturbs_no_channel(
    gateway: Gateway, phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    member, intruder = await make_user(), await make_user()
    room = await phx_client(token(member))
    assert (await room.join("room", {"presence": {"key": "", "enabled": True}}))["status"] == "ok"
    assert (await room.expect("presence_state"))["payload"] == {}
    colliding = uuid5(OLD_CHANNEL_NAMESPACE, "realtime:room")
    await conn.execute(
        "INSERT INTO projects (id, user_id, name, type) VALUES ($1, $2, 'trap', 'website')",
        colliding,
        intruder,
    )
    native = await open_client(f"ws://127.0.0.1:{gateway_port(gateway)}/")
    try:
        native.presence = True
        await native.auth(intruder)
        await native.subscribe(colliding)
        state = await native.recv_type("presence.state")
        assert set(state["users"]) == {str(intruder)}
        await conn.execute("UPDATE projects SET is_public = true WHERE id = $1", colliding)
        await conn.execute("UPDATE projects SET is_public = false WHERE id = $1", colliding)
        # Once the owner has both changes, the gateway has dealt with them.
        for public in (True, False):
            frames = await recv_until(native, change_of("project", "update", colliding))
            assert frames[-1]["new"]["is_public"] is public
    finally:
        await native.close()

    await room.quiet()  # no system error, no phx_close, no presence of the project


async def test_a_join_in_flight_when_its_token_expires_ends_with_the_tokens_error(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection, database_dsn: str
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    client = await phx_client(token(owner))
    short = token(owner, ttl=2)
    expires_at = time.time() + 2
    blocker = await asyncpg.connect(database_dsn)
    try:
        # The join's questions to PostgreSQL wait behind this lock until after exp.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE public.projects IN ACCESS EXCLUSIVE MODE")
        topic = f"realtime:project:{project}"
        ref = client.ref()
        client.join_refs[topic] = ref
        payload = {"config": {"postgres_changes": [SITEMAPS]}, "access_token": short}
        await client.push(topic, "phx_join", payload, ref=ref)
        # Time itself is what the test waits for: the token must expire meanwhile.
        await asyncio.sleep(max(0.0, expires_at + 0.5 - time.time()))
        await transaction.commit()
    finally:
        await blocker.close()

    reply = await client.reply(ref)
    assert reply["status"] == "error", reply
    assert "expired" in reply["response"]["reason"]
    await make_sitemap(conn, project, "after expiry")
    await client.quiet()


async def test_an_anonymous_reader_cannot_take_the_owners_identity_or_broadcast(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner, public=True)
    name = f"project:{project}"
    topic = f"realtime:{name}"
    editor = await phx_client(token(owner))
    presence_on = {"presence": {"key": "", "enabled": True}}
    assert (await editor.join(name, presence_on))["status"] == "ok"
    assert (await editor.expect("presence_state"))["payload"] == {}

    anon = await phx_client(mint_anon_key(SECRET, ttl_seconds=3600))
    posing = await anon.join(name, {"presence": {"key": str(owner), "enabled": True}})
    assert posing["status"] == "error", posing
    assert "presence key" in posing["response"]["reason"]

    assert (await anon.join(name, {**presence_on, "broadcast": {"ack": True}}))["status"] == "ok"
    assert (await anon.expect("presence_state"))["payload"] == {}
    ref = await anon.push(
        topic,
        "presence",
        {"type": "presence", "event": "track", "payload": {"user_id": str(owner), "x": 1}},
    )
    assert (await anon.reply(ref))["status"] == "ok"
    assert (await anon.expect("presence_diff"))["payload"]["joins"]
    joins = (await editor.expect("presence_diff"))["payload"]["joins"]
    assert str(owner) not in joins
    ((_key, entry),) = joins.items()
    (meta,) = entry["metas"]
    assert meta["user_id"] is None
    assert meta["x"] == 1

    ref = await anon.push(
        topic, "broadcast", {"type": "broadcast", "event": "edit", "payload": {"title": "pwned"}}
    )
    refused = await anon.reply(ref)
    assert refused["status"] == "error", refused
    assert "write access" in refused["response"]["reason"]
    await editor.quiet()


async def test_native_presence_meta_cannot_claim_another_user(
    gateway: Gateway, make_user: UserFactory, conn: asyncpg.Connection, phx_client: Any
) -> None:
    owner, reader = await make_user(), await make_user()
    project = await make_project(conn, owner, public=True)
    watcher = await phx_client(token(owner))
    assert (await watcher.join(f"project:{project}", {"presence": {"key": "", "enabled": True}}))[
        "status"
    ] == "ok"
    assert (await watcher.expect("presence_state"))["payload"] == {}
    native = await open_client(f"ws://127.0.0.1:{gateway_port(gateway)}/")
    try:
        await native.auth(reader)
        await native.subscribe(project)
        joined = (await watcher.expect("presence_diff"))["payload"]["joins"]
        assert set(joined) == {str(reader)}
        await native.send(
            {
                "type": "presence.update",
                "project_id": str(project),
                "meta": {"user_id": str(owner), "connection_id": "forged"},
            }
        )
        diff = (await asyncio.wait_for(watcher.expect("presence_diff"), TIMEOUT))["payload"]
    finally:
        await native.close()

    assert set(diff["joins"]) == {str(reader)}
    (meta,) = diff["joins"][str(reader)]["metas"]
    assert meta["user_id"] == str(reader)
    assert meta["connection_id"] != "forged"


async def test_a_supabase_resume_after_gaining_access_replays_nothing_from_before(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """4. A resume replayed history with the access of the moment it was asked for: a
    wireframe written while the project was private reached a reader who could read it
    only later."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    name = f"project:{project}"
    config = {"postgres_changes": [WIREFRAMES]}
    mine = await make_project(conn, stranger)
    own = await phx_client(token(stranger))
    await own.join(f"project:{mine}", config)
    await expect_subscribed(own, f"project:{mine}")
    await make_wireframe(conn, await make_sitemap(conn, mine), "mine")
    position = (await change(own))["data"]["position"]  # positions are global

    await make_wireframe(conn, sitemap, "secret")
    await conn.execute("UPDATE projects SET is_public = true WHERE id = $1", project)
    reader = await phx_client(token(stranger))
    assert (await reader.join(name, {**config, "resume": {"since": position}}))["status"] == "ok"
    await expect_subscribed(reader, name)
    refused = await reader.expect("system")
    assert refused["payload"]["extension"] == "resume"
    assert refused["payload"]["status"] == "error"
    assert "could not read the project" in refused["payload"]["message"]
    await reader.quiet()


async def secret_then_public(conn: asyncpg.Connection, project: UUID, busy: UUID) -> None:
    """A sitemap `secret` while the project is private, then the project made public
    and a sitemap `public`; a large transaction just before (wireframes of sitemap
    `busy`) keeps the gateway busy while these three commit."""
    await conn.execute(
        "INSERT INTO wireframes (sitemap_id, title)"
        " SELECT $1, 'w' || n FROM generate_series(1, 3000) n",
        busy,
    )
    await make_sitemap(conn, project, "secret")
    await conn.execute("UPDATE projects SET is_public = true WHERE id = $1", project)
    await make_sitemap(conn, project, "public")


async def test_a_table_watch_gets_no_change_committed_before_access_was_given(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """4. A table watch asked PostgreSQL, when the change came through, who may read
    its project: a sitemap written while the project was private reached a reader if
    the project was made public before the gateway got to the sitemap."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner)
    busy = await make_sitemap(conn, await make_project(conn, owner))
    watcher = await phx_client(token(stranger))
    await watcher.join("tables", {"postgres_changes": [SITEMAPS]})
    await expect_subscribed(watcher, "tables")
    await secret_then_public(conn, project, busy)

    got = await change(watcher)
    assert got["data"]["record"]["title"] == "public", got
    await watcher.quiet()


@pytest.mark.parametrize("gateway_overrides", [{"access_cache_size": 1}])
async def test_a_table_watch_is_told_when_access_as_of_a_change_cannot_be_known(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """A project whose access list was forgotten is read again from PostgreSQL, where a
    change after the one being delivered may already have made it public: that change
    is not guessed at, and the watch hears that changes may have been missed."""
    owner, stranger = await make_user(), await make_user()
    project = await make_project(conn, owner)
    busy = await make_sitemap(conn, await make_project(conn, owner))  # forgets `project`
    watcher = await phx_client(token(stranger))
    await watcher.join("tables", {"postgres_changes": [SITEMAPS]})
    await expect_subscribed(watcher, "tables")
    await secret_then_public(conn, project, busy)

    told = await watcher.expect("system")
    assert told["payload"]["extension"] == "postgres_changes"
    assert told["payload"]["status"] == "error"
    assert "could not be told" in told["payload"]["message"]
    assert (await change(watcher))["data"]["record"]["title"] == "public"
    await watcher.quiet()


async def test_a_collaborator_removed_and_added_back_gets_nothing_from_between(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """4. Live: whether a subscriber keeps access was asked of PostgreSQL when the
    change came through, which may already show a later change: removed, then added
    back before the gateway got there, a collaborator kept the subscription and got
    what was written while they were out."""
    owner, member = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member])
    sitemap = await make_sitemap(conn, project)
    busy = await make_sitemap(conn, await make_project(conn, owner))
    client = await ws_client()
    await client.auth(member)
    await client.subscribe(project, snapshot=False)

    await conn.execute(
        "INSERT INTO wireframes (sitemap_id, title)"
        " SELECT $1, 'w' || n FROM generate_series(1, 3000) n",
        busy,
    )
    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", project)
    await conn.execute("UPDATE sitemaps SET title = 'while out' WHERE id = $1", sitemap)
    await conn.execute(
        "UPDATE projects SET collaborators = ARRAY[$2::uuid] WHERE id = $1", project, member
    )

    frames = await recv_until(client, lambda f: f.get("type") == "unsubscribed")
    assert frames[-1]["reason"] == "access_revoked"
    assert not [f for f in frames if f.get("type") == "change" and f["entity"] == "sitemap"]
    await client.ping()
