"""Supabase Realtime's protocol on /realtime/v1/websocket, spoken frame by frame as
@supabase/realtime-js speaks it, against a real gateway and PostgreSQL.

Every wait is bounded; "nothing more arrived" is checked behind a heartbeat round
trip, which the gateway answers in order after everything sent before it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.app.server import Gateway
from gateway.edge.tokens import mint_anon_key
from protocol.phoenix_changes import COLUMNS
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    SECRET,
    TIMEOUT,
    gateway_port,
    make_project,
    make_sitemap,
    make_wireframe,
    open_client,
    token,
)
from tests.phoenix_fixtures import (
    change,
    expect_subscribed,
    url,
    user_broadcast_push,
    wireframes_binding,
)

# Joining


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_join_echoes_bindings_with_numeric_ids_then_says_subscribed(
    phx_client: Any, make_user: UserFactory, vsn: str
) -> None:
    user = await make_user()
    client = await phx_client(token(user), vsn)
    await client.heartbeat()
    bindings = [
        wireframes_binding("sitemap_id=eq.6a1f5c1e-1111-4a4a-8888-000000000001", "UPDATE"),
        {"event": "INSERT", "schema": "public", "table": "sitemaps"},
    ]
    reply = await client.join("room", {"postgres_changes": bindings})
    assert reply["status"] == "ok", reply
    echoed = reply["response"]["postgres_changes"]
    assert [{k: v for k, v in b.items() if k != "id"} for b in echoed] == bindings
    ids = [b["id"] for b in echoed]
    assert all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    assert len(set(ids)) == 2
    await expect_subscribed(client, "room")


@pytest.mark.hosted_postgres
async def test_changes_of_a_filtered_binding_insert_update_delete(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    other_sitemap = await make_sitemap(conn, project, "Other")
    client = await phx_client(token(owner))
    reply = await client.join(
        "frames", {"postgres_changes": [wireframes_binding(f"sitemap_id=eq.{sitemap}")]}
    )
    (binding,) = reply["response"]["postgres_changes"]
    await expect_subscribed(client, "frames")

    await make_wireframe(conn, other_sitemap, "Elsewhere")  # filtered out
    wireframe = await make_wireframe(conn, sitemap, "Home")
    inserted = await change(client)
    assert inserted["ids"] == [binding["id"]]
    data = inserted["data"]
    assert data["type"] == "INSERT"
    assert data["table"] == "wireframes"
    assert data["schema"] == "public"
    assert data["errors"] is None
    assert data["record"]["id"] == str(wireframe)
    assert data["record"]["title"] == "Home"
    assert data["record"]["version"] == 1
    assert data["record"]["components"] == []
    assert "old_record" not in data
    assert data["columns"] == [{"name": n, "type": t} for n, t in COLUMNS["wireframes"]]
    assert data["commit_timestamp"].endswith("Z")
    assert isinstance(data["position"], str)

    await conn.execute("UPDATE wireframes SET title = 'About' WHERE id = $1", wireframe)
    updated = (await change(client))["data"]
    assert updated["type"] == "UPDATE"
    assert updated["record"]["title"] == "About"
    assert updated["old_record"]["title"] == "Home"

    await conn.execute("DELETE FROM wireframes WHERE id = $1", wireframe)
    deleted = (await change(client))["data"]
    assert deleted["type"] == "DELETE"
    assert "record" not in deleted
    assert deleted["old_record"]["id"] == str(wireframe)
    await client.quiet()


async def test_filters_compare_as_the_column_type(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    client = await phx_client(token(owner))
    bindings = [
        wireframes_binding("version=gte.2"),
        wireframes_binding('title=in.(Keep,"A, B")'),
        wireframes_binding("title=neq.Keep"),
    ]
    reply = await client.join("f", {"postgres_changes": bindings})
    gt, in_list, neq = (b["id"] for b in reply["response"]["postgres_changes"])
    await expect_subscribed(client, "f")
    wireframe = await make_wireframe(conn, sitemap, "Keep")
    assert (await change(client))["ids"] == [in_list]
    await conn.execute("UPDATE wireframes SET description = 'd' WHERE id = $1", wireframe)
    assert sorted((await change(client))["ids"]) == sorted([gt, in_list])
    await conn.execute("UPDATE wireframes SET title = 'A, B' WHERE id = $1", wireframe)
    assert sorted((await change(client))["ids"]) == sorted([gt, in_list, neq])
    await client.quiet()


async def test_delete_filters_check_the_old_row(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    wireframe = await make_wireframe(conn, sitemap)
    client = await phx_client(token(owner))
    await client.join(
        "d", {"postgres_changes": [wireframes_binding(f"id=eq.{wireframe}", "DELETE")]}
    )
    await expect_subscribed(client, "d")
    await conn.execute("UPDATE wireframes SET title = 'x' WHERE id = $1", wireframe)
    await conn.execute("DELETE FROM wireframes WHERE id = $1", wireframe)
    deleted = (await change(client))["data"]
    assert deleted["type"] == "DELETE"
    assert deleted["old_record"]["id"] == str(wireframe)


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("title=like.x", 'Error parsing `filter` params: ["like", "x"]'),
        ("undefined", 'Error parsing `filter` params: ["undefined"]'),
        (
            "nope=eq.1",
            "Unable to subscribe to changes with given parameters. "
            "Exception: invalid column for filter nope",
        ),
    ],
)
async def test_a_bad_filter_gets_supabases_system_error(
    phx_client: Any, make_user: UserFactory, flt: str, message: str
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    reply = await client.join("bad", {"postgres_changes": [wireframes_binding(flt)]})
    assert reply["status"] == "ok"
    system = await client.expect("system")
    assert system["payload"] == {
        "extension": "postgres_changes",
        "status": "error",
        "message": message,
        "channel": "bad",
    }
    await client.quiet()


async def test_unfiltered_binding_sees_only_readable_projects_until_revoked(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, reader = await make_user(), await make_user()
    shared = await make_project(conn, owner, collaborators=[reader])
    public = await make_project(conn, owner, public=True)
    private = await make_project(conn, owner)
    maps = {p: await make_sitemap(conn, p) for p in (shared, public, private)}
    client = await phx_client(token(reader))
    await client.join("all", {"postgres_changes": [wireframes_binding()]})
    await expect_subscribed(client, "all")
    for project in (private, shared, public):
        await make_wireframe(conn, maps[project], f"in {project}")
    seen = [(await change(client))["data"]["record"]["sitemap_id"] for _ in range(2)]
    assert seen == [str(maps[shared]), str(maps[public])]

    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", shared)
    await make_wireframe(conn, maps[shared], "after revocation")
    await make_wireframe(conn, maps[public], "still public")
    assert (await change(client))["data"]["record"]["title"] == "still public"
    await client.quiet()


@pytest.mark.hosted_postgres
async def test_anon_key_reads_public_projects_only(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    public = await make_project(conn, owner, public=True)
    private = await make_project(conn, owner)
    client = await phx_client(mint_anon_key(SECRET, ttl_seconds=3600))
    await client.join(
        "anon", {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "sitemaps"}]}
    )
    await expect_subscribed(client, "anon")
    reply = await client.join(f"project:{private}")
    assert reply["status"] == "error"
    assert "not shared" in reply["response"]["reason"]
    await make_sitemap(conn, private, "hidden")
    await make_sitemap(conn, public, "shown")
    assert (await change(client))["data"]["record"]["title"] == "shown"
    await client.quiet()


# Presence


async def test_presence_is_shared_with_native_subscribers_of_the_project(
    gateway: Gateway, phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, editor = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[editor])
    native = await open_client(f"ws://127.0.0.1:{gateway_port(gateway)}/")
    try:
        native.presence = True
        await native.auth(editor)
        await native.subscribe(project)
        native_state = await native.recv_type("presence.state")
        (native_connection,) = native_state["users"][str(editor)]["metas"]

        client = await phx_client(token(owner))
        name = f"project:{project}"
        reply = await client.join(name, {"presence": {"key": "", "enabled": True}})
        assert reply == {"status": "ok", "response": {"postgres_changes": []}}
        state = (await client.expect("presence_state"))["payload"]
        (meta,) = state[str(editor)]["metas"]
        assert meta["connection_id"] == native_connection["connection_id"]
        assert isinstance(meta["phx_ref"], str)

        ref = await client.push(
            f"realtime:{name}",
            "presence",
            {"type": "presence", "event": "track", "payload": {"online_at": "now"}},
        )
        assert (await client.reply(ref))["status"] == "ok"
        diff = await client.expect("presence_diff")
        (mine,) = diff["payload"]["joins"][str(owner)]["metas"]
        assert mine["online_at"] == "now"
        native_diff = await native.recv_type("presence.diff")
        (joined,) = native_diff["joins"][str(owner)]["metas"]
        assert joined["meta"] == {"online_at": "now"}

        ref = await client.push(
            f"realtime:{name}", "presence", {"type": "presence", "event": "untrack"}
        )
        assert (await client.reply(ref))["status"] == "ok"
        left = await client.expect("presence_diff")
        assert left["payload"]["leaves"][str(owner)]["metas"][0]["phx_ref"] == mine["phx_ref"]
        assert str(owner) in (await native.recv_type("presence.diff"))["leaves"]
    finally:
        await native.close()


# Broadcast


async def test_broadcast_self_and_ack_in_both_versions(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    v2 = await phx_client(token(user), "2.0.0")
    v1 = await phx_client(token(user), "1.0.0")
    await v2.join("chat", {"broadcast": {"self": True, "ack": True}})
    await v1.join("chat")
    topic = "realtime:chat"
    # vsn 2.0.0 sends a broadcast as a binary frame
    frame = user_broadcast_push(v2.join_refs[topic], "7", topic, "hello", b'{"n":1}')
    await asyncio.wait_for(v2.ws.send(frame), TIMEOUT)
    own = await v2.recv()
    assert own["binary"]
    assert own["payload"] == {
        "type": "broadcast",
        "event": "hello",
        "payload": {"n": 1},
    }
    assert (await v2.reply("7"))["status"] == "ok"
    other = await v1.expect("broadcast", topic)
    assert other["payload"] == {"type": "broadcast", "event": "hello", "payload": {"n": 1}}

    # vsn 1.0.0 sends it as JSON; no self, no ack
    await v1.push(topic, "broadcast", {"type": "broadcast", "event": "hi", "payload": {"n": 2}})
    got = await v2.recv()
    assert got["payload"]["payload"] == {"n": 2}
    await v1.quiet()


# Heartbeat, tokens, malformed frames


async def test_vsn_1_frames_are_objects(phx_client: Any, make_user: UserFactory) -> None:
    user = await make_user()
    client = await phx_client(token(user), "1.0.0")
    ref = await client.push("phoenix", "heartbeat", {})
    raw = orjson.loads(await asyncio.wait_for(client.ws.recv(), TIMEOUT))
    assert raw == {
        "topic": "phoenix",
        "event": "phx_reply",
        "ref": ref,
        "join_ref": None,
        "payload": {"status": "ok", "response": {}},
    }


async def test_expired_token_gets_system_error_then_phx_close(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    await client.join("room", access_token=token(user, ttl=2))
    system = await client.expect("system", "realtime:room")
    assert system["payload"]["status"] == "error"
    assert system["payload"]["message"].startswith("Token has expired")
    closed = await client.expect("phx_close", "realtime:room")
    assert closed["ref"] == client.join_refs["realtime:room"]
    reply = await client.join("again")
    assert reply["status"] == "error"
    assert "expired" in reply["response"]["reason"]
    assert (await client.join("again", access_token=token(user)))["status"] == "ok"


async def test_invalid_access_token_closes_the_channel(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    await client.join("room")
    await client.push("realtime:room", "access_token", {"access_token": "not.a.jwt"})
    system = await client.expect("system")
    assert system["payload"]["message"].startswith("Received an invalid access token")
    await client.expect("phx_close")
    await client.heartbeat()


async def test_malformed_and_unknown_frames_are_answered(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    await asyncio.wait_for(client.ws.send("{not json"), TIMEOUT)
    bad = await client.expect("phx_reply", "phoenix")
    assert bad["payload"]["status"] == "error"
    ref = await client.push("realtime:nowhere", "broadcast", {})
    assert (await client.reply(ref))["response"] == {"reason": "unmatched topic"}
    await client.join("room")
    ref = await client.push("realtime:room", "dance", {})
    assert (await client.reply(ref))["response"] == {"reason": "unknown event 'dance'"}
    ref = await client.push("realtime:room", "broadcast", {"type": "broadcast"})
    assert (await client.reply(ref))["status"] == "error"
    await client.heartbeat()


async def test_leave_and_rejoin_with_a_new_join_ref(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    topic = "realtime:room"
    await client.join("room")
    first = client.join_refs[topic]
    second = client.ref()
    client.join_refs[topic] = second
    await client.push(topic, "phx_join", {"config": {}}, ref=second)
    assert (await client.expect("phx_close", topic))["ref"] == first
    assert (await client.reply(second))["status"] == "ok"
    await client.expect("presence_state", topic)  # a join that does not say gets presence
    ref = await client.push(topic, "phx_leave", {})
    assert (await client.reply(ref))["status"] == "ok"
    closed = await client.expect("phx_close", topic)
    assert closed["ref"] == second
    assert closed["join_ref"] == second
    ref = await client.push(topic, "broadcast", {"type": "broadcast", "event": "e"})
    assert (await client.reply(ref))["response"] == {"reason": "unmatched topic"}


async def test_column_types_are_the_databases(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT table_name, column_name, udt_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = ANY($1::text[])"
        " ORDER BY table_name, ordinal_position",
        list(COLUMNS),
    )
    database: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if row["column_name"] != "session_token":
            database.setdefault(row["table_name"], []).append((row["column_name"], row["udt_name"]))
    assert database == {table: list(columns) for table, columns in COLUMNS.items()}


async def test_an_anon_connection_signed_in_later_reads_the_users_projects(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    private = await make_project(conn, owner)
    public = await make_project(conn, owner, public=True)
    client = await phx_client(mint_anon_key(SECRET, ttl_seconds=3600))
    await client.join("maps", {"postgres_changes": [{"event": "INSERT", "table": "sitemaps"}]})
    await expect_subscribed(client, "maps")
    await make_sitemap(conn, private, "unseen")
    # A change anon may read, committed after: once it arrives, the gateway has dealt
    # with "unseen" (as anon, who could not read it when it was committed).
    await make_sitemap(conn, public, "public")
    assert (await change(client))["data"]["record"]["title"] == "public"
    await client.push("realtime:maps", "access_token", {"access_token": token(owner)})
    await client.heartbeat()
    await make_sitemap(conn, private, "seen")
    assert (await change(client))["data"]["record"]["title"] == "seen"


async def test_a_project_channel_ends_when_access_is_revoked(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, guest = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[guest])
    client = await phx_client(token(guest))
    assert (await client.join(f"project:{project}"))["status"] == "ok"
    await conn.execute("UPDATE projects SET collaborators = '{}' WHERE id = $1", project)
    system = await client.expect("system")
    assert system["payload"] == {
        "extension": "system",
        "status": "error",
        "message": "the project is no longer shared with you",
        "channel": f"project:{project}",
    }
    await client.expect("phx_close")
    reply = await client.join(f"project:{project}")
    assert reply["response"] == {
        "reason": f"project {project} does not exist or is not shared with you"
    }


@pytest.mark.hosted_postgres
async def test_resume_replays_the_changes_after_a_position(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    name = f"project:{project}"
    config = {"postgres_changes": [wireframes_binding(event="INSERT")]}
    first = await phx_client(token(owner))
    await first.join(name, config)
    await expect_subscribed(first, name)
    await make_wireframe(conn, sitemap, "A")
    position = (await change(first))["data"]["position"]
    await first.close()
    await make_wireframe(conn, sitemap, "B")

    again = await phx_client(token(owner))
    await again.join(name, {**config, "resume": {"since": position}})
    await expect_subscribed(again, name)
    resumed = await again.expect("system")
    assert resumed["payload"]["extension"] == "resume"
    assert resumed["payload"]["status"] == "ok"
    assert (await change(again))["data"]["record"]["title"] == "B"
    await make_wireframe(conn, sitemap, "C")
    assert (await change(again))["data"]["record"]["title"] == "C"
    await again.quiet()

    lost = await phx_client(token(owner))
    await lost.join(name, {**config, "resume": {"since": "nonsense"}})
    await expect_subscribed(lost, name)
    refused = await lost.expect("system")
    assert refused["payload"]["extension"] == "resume"
    assert refused["payload"]["status"] == "error"
    assert refused["payload"]["message"] == "'nonsense' is not a position this gateway gave out"


@pytest.mark.parametrize("gateway_overrides", [{"max_frame_bytes": 300, "max_subscriptions": 1}])
async def test_frame_size_and_channel_limits(phx_client: Any, make_user: UserFactory) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    assert (await client.join("one"))["status"] == "ok"
    reply = await client.join("two")
    assert reply == {
        "status": "error",
        "response": {
            "reason": "at most 1 subscriptions per connection (SITEBUILDER_MAX_SUBSCRIPTIONS)"
        },
    }
    ref = await client.push(
        "realtime:one",
        "broadcast",
        {"type": "broadcast", "event": "e", "payload": {"x": "y" * 400}},
    )
    refused = await client.reply(ref)
    assert refused["status"] == "error"
    assert refused["response"]["code"] == "frame_too_large"
    await client.heartbeat()


@pytest.mark.parametrize("gateway_overrides", [{"max_frame_bytes": 70_000}])
@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_a_large_frame_over_the_limit_is_refused_by_its_ref_unread(
    phx_client: Any, make_user: UserFactory, vsn: str
) -> None:
    """Past 64 KiB a refused frame is not decoded: its topic and refs are read from its
    ends, where realtime-js writes them, so the push still gets its error reply."""
    client = await phx_client(token(await make_user()), vsn)
    assert (await client.join("one"))["status"] == "ok"
    ref = await client.push(
        "realtime:one",
        "broadcast",
        {"type": "broadcast", "event": "e", "payload": {"x": "y" * 100_000}},
    )
    refused = await client.reply(ref)
    assert refused["status"] == "error"
    assert refused["response"]["code"] == "frame_too_large"
    await client.heartbeat()


@pytest.mark.parametrize("gateway_overrides", [{"messages_per_second": 0.01, "message_burst": 2}])
async def test_frames_over_the_rate_are_refused_unprocessed(
    phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    client = await phx_client(token(user))
    await client.heartbeat()
    await client.heartbeat()
    ref = await client.push("phoenix", "heartbeat", {})
    refused = await client.reply(ref)
    assert refused["status"] == "error"
    assert refused["response"]["code"] == "rate_limited"
    assert refused["response"]["retry_after_ms"] > 0


@pytest.mark.parametrize(
    ("key", "vsn", "code"),
    [(None, "2.0.0", 4003), ("not-a-jwt", "2.0.0", 4003), ("x", "9.9.9", 1003)],
)
async def test_a_bad_key_or_version_closes_the_socket(
    gateway: Gateway, key: str | None, vsn: str, code: int
) -> None:
    ws = await asyncio.wait_for(connect(url(gateway, key, vsn), close_timeout=2), TIMEOUT)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


@pytest.mark.hosted_postgres
async def test_versions_and_sessions_reach_members_only(
    phx_client: Any, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    public = await make_project(conn, owner, public=True)
    # (not every table: the project's own insert may still be on its way)
    everything = {
        "postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": "sitemaps"},
            {
                "event": "INSERT",
                "schema": "public",
                "table": "version_history",
                "filter": "entity_type=eq.sitemaps",
            },
        ]
    }
    anon = await phx_client(mint_anon_key(SECRET, ttl_seconds=3600))
    member = await phx_client(token(owner))
    for client in (anon, member):
        await client.join("all", everything)
        await expect_subscribed(client, "all")
    await make_sitemap(conn, public, "versioned")
    member_tables = {(await change(member))["data"]["table"] for _ in range(2)}
    assert member_tables == {"sitemaps", "version_history"}
    assert (await change(anon))["data"]["table"] == "sitemaps"
    await anon.quiet()


@pytest.mark.parametrize("gateway_overrides", [{"max_anonymous_connections": 1}])
async def test_anonymous_connections_share_one_limit(
    gateway: Gateway, phx_client: Any, make_user: UserFactory
) -> None:
    user = await make_user()
    anon_key = mint_anon_key(SECRET, ttl_seconds=3600)
    first = await phx_client(anon_key)
    await first.heartbeat()
    ws = await asyncio.wait_for(connect(url(gateway, anon_key), close_timeout=2), TIMEOUT)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4009
    assert "SITEBUILDER_MAX_ANONYMOUS_CONNECTIONS" in closed.value.rcvd.reason
    assert (await first.join("room", access_token=token(user)))["status"] == "ok"
    second = await phx_client(anon_key)  # the first one is the user's now
    await second.heartbeat()


async def track(client: Any, topic: str, meta: dict[str, Any]) -> None:
    push = {"type": "presence", "event": "track", "payload": meta}
    assert (await client.reply(await client.push(topic, "presence", push)))["status"] == "ok"


@pytest.mark.parametrize(
    ("gateway_overrides", "gets_state"),
    [({}, True), ({"supabase_presence_default": False}, False)],
)
async def test_a_join_that_does_not_say_whether_it_wants_presence_gets_it_by_default(
    phx_client: Any, make_user: UserFactory, gets_state: bool
) -> None:
    """realtime-js before 2.15 sends `config.presence` without `enabled`: it gets the
    channel's presence_state, unless SITEBUILDER_SUPABASE_PRESENCE_DEFAULT is off (then
    as an explicit `enabled: false`: diffs only)."""
    alice, bob = await make_user(), await make_user()
    a = await phx_client(token(alice))
    await a.join("lobby", {"presence": {"key": "alice", "enabled": True}})
    assert (await a.expect("presence_state"))["payload"] == {}
    await track(a, "realtime:lobby", {"x": 1})
    await a.expect("presence_diff")
    old_client = await phx_client(token(bob), "1.0.0")

    reply = await old_client.join("lobby", {"presence": {"key": ""}})

    assert reply["status"] == "ok"
    if gets_state:
        state = (await old_client.expect("presence_state"))["payload"]
        assert list(state) == ["alice"]
    await old_client.quiet()  # nothing else (no state when off)
    explicit = await phx_client(token(bob))
    await explicit.join("lobby", {"presence": {"key": "", "enabled": False}})
    await explicit.quiet()


async def test_presence_in_a_channel_of_no_project_uses_the_configured_key(
    phx_client: Any, make_user: UserFactory
) -> None:
    alice, bob = await make_user(), await make_user()
    a = await phx_client(token(alice))
    b = await phx_client(token(bob), "1.0.0")
    await a.join("lobby", {"presence": {"key": "alice", "enabled": True}})
    assert (await a.expect("presence_state"))["payload"] == {}
    ref = await a.push(
        "realtime:lobby", "presence", {"type": "presence", "event": "track", "payload": {"x": 1}}
    )
    assert (await a.reply(ref))["status"] == "ok"
    (joined,) = (await a.expect("presence_diff"))["payload"]["joins"]["alice"]["metas"]
    assert joined["x"] == 1
    await b.join("lobby", {"presence": {"key": "", "enabled": True}})
    state = (await b.expect("presence_state"))["payload"]
    assert state == {"alice": {"metas": [joined]}}
    ref = await a.push(
        "realtime:lobby", "presence", {"type": "presence", "event": "track", "payload": {"x": 2}}
    )
    assert (await a.reply(ref))["status"] == "ok"
    diff = (await b.expect("presence_diff"))["payload"]
    (new,) = diff["joins"]["alice"]["metas"]
    (old,) = diff["leaves"]["alice"]["metas"]
    assert new["x"] == 2
    assert old["phx_ref"] == joined["phx_ref"] != new["phx_ref"]
