"""`idempotency_key` on `rpc` frames, over real sockets against a real PostgreSQL.

A repeat of a key is answered with the first result and writes nothing, on the same or
a new connection, even while the first is still running; a key reused for another
request is refused; a failed request leaves its key free; keys are per user, private
to their user, and forgotten after the retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from gateway.app.server import Gateway
from gateway.rpc.call import expire_idempotency_keys, params_hash
from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, WsClient, make_project, make_sitemap

Frame = dict[str, Any]


async def keyed(client: WsClient, key: str | None, method: str, **params: object) -> Frame:
    frame: Frame = {"type": "rpc", "method": method, "params": params}
    if key is not None:
        frame["idempotency_key"] = key
    return await client.request(frame)


async def result(client: WsClient, key: str | None, method: str, **params: object) -> Any:
    reply = await keyed(client, key, method, **params)
    assert reply["type"] == "result", reply
    return reply["data"]


async def refused(client: WsClient, code: str, key: str, method: str, **params: object) -> Frame:
    reply = await keyed(client, key, method, **params)
    assert (reply["type"], reply["code"]) == ("error", code), reply
    return reply


async def signed_in(ws_client: Connect, user: UUID) -> WsClient:
    client = await ws_client()
    await client.auth(user)
    return client


async def count(conn: asyncpg.Connection, query: str, *args: object) -> int:
    found: int = await conn.fetchval(query, *args)
    return found


async def keys_of(conn: asyncpg.Connection, user: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT key, method, result FROM rpc_idempotency WHERE user_id = $1 ORDER BY key", user
    )


async def recv_until(client: WsClient, done: Callable[[Frame], bool]) -> list[Frame]:
    """Every frame up to and including the first one `done` accepts (bounded in total)."""
    frames: list[Frame] = []
    async with asyncio.timeout(TIMEOUT):
        while not frames or not done(frames[-1]):
            frames.append(await client.recv())
    return frames


def is_marker(frame: Frame) -> bool:
    return (
        frame.get("type") == "change"
        and frame["entity"] == "project"
        and (frame["new"] or {}).get("name") == "marker"
    )


# 1. A repeat is answered, not run


async def test_a_repeat_gets_the_first_result_and_writes_nothing(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """One sitemap, one version, one change at a subscriber; both replies alike."""
    owner = await make_user()
    project = await make_project(conn, owner)
    watcher = await signed_in(ws_client, owner)
    await watcher.subscribe(project, snapshot=False)
    editor = await signed_in(ws_client, owner)

    params = {"project_id": str(project), "title": "Home", "pages": {"home": {"path": "/"}}}
    first = await keyed(editor, "create-home", "sitemap.create", **params)
    again = await keyed(editor, "create-home", "sitemap.create", **params)
    assert first["type"] == again["type"] == "result", (first, again)
    assert first["ref"] != again["ref"]
    assert again["data"] == first["data"]

    assert await count(conn, "SELECT count(*) FROM sitemaps WHERE project_id = $1", project) == 1
    sitemap = UUID(first["data"]["id"])
    assert (
        await count(conn, "SELECT count(*) FROM version_history WHERE entity_id = $1", sitemap) == 1
    )
    [stored] = await keys_of(conn, owner)
    assert (stored["key"], stored["method"]) == ("create-home", "sitemap.create")
    assert orjson.loads(stored["result"]) == first["data"]

    await conn.execute("UPDATE projects SET name = 'marker' WHERE id = $1", project)
    frames = await recv_until(watcher, is_marker)
    assert [(f["entity"], f["op"]) for f in frames[:-1]] == [
        ("sitemap", "insert"),
        ("version", "insert"),
    ]
    assert frames[0]["new"] == first["data"]


async def test_a_number_past_64_bits_in_a_result_is_stored_and_repeated(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """jsonb keeps `1e20` exactly: it comes back as an integer past 64 bits, which the
    result's stored copy (and a Supabase record) must still hold. It once closed the
    connection with 1011 instead (found by `bench fuzz`)."""
    owner = await make_user()
    project = await make_project(conn, owner)
    editor = await signed_in(ws_client, owner)
    params = {"project_id": str(project), "title": "Big", "pages": {"n": 1e20}}

    first = await keyed(editor, "big-number", "sitemap.create", **params)
    again = await keyed(editor, "big-number", "sitemap.create", **params)

    assert first["type"] == again["type"] == "result", (first, again)
    assert first["data"]["pages"] == {"n": 100000000000000000000}
    assert again["data"] == first["data"]
    await editor.ping()


async def test_a_repeat_on_a_new_connection_gets_the_first_result(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """The reconnect case: the id the server chose comes back, no second project."""
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    created = await result(client, "new-bakery", "project.create", name="Bakery")
    await client.close()

    reconnected = await signed_in(ws_client, owner)
    again = await result(reconnected, "new-bakery", "project.create", name="Bakery")
    assert again == created
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 1


async def test_params_compare_as_json_whatever_their_key_order(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    first = await result(client, "k", "project.create", name="A", data={"x": 1, "y": 2})
    again = await result(client, "k", "project.create", data={"y": 2, "x": 1}, name="A")
    assert again == first
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 1


async def test_a_repeat_while_the_first_runs_waits_for_its_result(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection, database_dsn: str
) -> None:
    """The first holds the key's row until it commits; the repeat waits on it, then
    answers with the committed result: one update, one version."""
    owner = await make_user()
    project = await make_project(conn, owner)
    clients = [await signed_in(ws_client, owner), await signed_in(ws_client, owner)]
    versions_before = await count(
        conn, "SELECT count(*) FROM version_history WHERE entity_id = $1", project
    )
    update = {
        "type": "rpc",
        "method": "project.update",
        "idempotency_key": "rename-once",
        "params": {"project_id": str(project), "patch": {"data": {"n": 1}}},
    }
    holder = await asyncio.wait_for(asyncpg.connect(database_dsn), TIMEOUT)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project)
            await clients[0].send({**update, "ref": "first"})
            await wait_for_lock_waiters(conn, 1)  # the first: on the project row
            await clients[1].send({**update, "ref": "repeat"})
            await wait_for_lock_waiters(conn, 2)  # the repeat: on the key
    finally:
        await asyncio.wait_for(holder.close(), TIMEOUT)

    first, repeat = [await client.recv_type("result") for client in clients]
    assert (first["ref"], repeat["ref"]) == ("first", "repeat")
    assert repeat["data"] == first["data"]
    assert (
        await count(conn, "SELECT count(*) FROM version_history WHERE entity_id = $1", project)
        == versions_before + 1
    )


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


# 2. Refusals


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("project.create", {"name": "Other"}),
        ("project.create", {"name": "First", "type": "portfolio"}),
    ],
    ids=["other-name", "other-type"],
)
async def test_a_key_reused_for_another_request_is_refused(
    method: str,
    params: dict[str, object],
    ws_client: Connect,
    make_user: UserFactory,
    conn: asyncpg.Connection,
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    await result(client, "k", "project.create", name="First")
    reply = await refused(client, "invalid_params", "k", method, **params)
    assert "idempotency key reused for another request" in reply["message"]
    names = await conn.fetch("SELECT name FROM projects WHERE user_id = $1", owner)
    assert [r["name"] for r in names] == ["First"]
    await client.ping()


async def test_keys_are_per_user(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    alice, bob = await make_user(), await make_user()
    for_alice = await result(await signed_in(ws_client, alice), "k", "project.create", name="A")
    for_bob = await result(await signed_in(ws_client, bob), "k", "project.create", name="B")
    assert for_alice["user_id"] == str(alice)
    assert for_bob["user_id"] == str(bob)
    assert for_alice["id"] != for_bob["id"]
    assert [r["key"] for r in await keys_of(conn, alice)] == ["k"]
    assert [r["key"] for r in await keys_of(conn, bob)] == ["k"]


async def test_a_failed_request_leaves_its_key_free(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """A stale expected_version: conflict, nothing kept; corrected, the same key runs
    once, and a repeat of the corrected request is answered from the key."""
    owner = await make_user()
    project = await make_project(conn, owner)
    sitemap = await make_sitemap(conn, project)
    client = await signed_in(ws_client, owner)
    edit = {"id": str(sitemap), "set": {"title": "Renamed"}}

    await refused(client, "conflict", "rename", "sitemap.update", **edit, expected_version=7)
    assert await keys_of(conn, owner) == []

    renamed = await result(client, "rename", "sitemap.update", **edit, expected_version=1)
    assert (renamed["title"], renamed["version"]) == ("Renamed", 2)
    again = await result(client, "rename", "sitemap.update", **edit, expected_version=1)
    assert again == renamed
    assert await count(conn, "SELECT version FROM sitemaps WHERE id = $1", sitemap) == 2


async def test_a_key_without_a_result_is_a_conflict_not_a_second_run(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """A row with no result (never left by the gateway) still stops the request."""
    owner = await make_user()
    await conn.execute(
        "INSERT INTO rpc_idempotency (user_id, key, method, params_hash) VALUES ($1, $2, $3, $4)",
        owner,
        "k",
        "project.create",
        params_hash({"name": "A"}),
    )
    client = await signed_in(ws_client, owner)
    reply = await refused(client, "conflict", "k", "project.create", name="A")
    assert "already applied" in reply["message"]
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 0


async def test_a_malformed_key_is_a_bad_frame(ws_client: Connect, make_user: UserFactory) -> None:
    client = await signed_in(ws_client, await make_user())
    for key in ("", "k" * 129, 17):
        reply = await client.request(
            {"type": "rpc", "method": "project.list", "idempotency_key": key}
        )
        assert (reply["type"], reply["code"]) == ("error", "bad_frame"), reply
    await client.ping()


async def test_a_read_with_a_key_is_never_stored_and_answers_afresh(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Keys are for writes: a read's key is ignored, so reads cannot fill the table
    (30 reads of a 600 KB project once stored 18 MB)."""
    owner = await make_user()
    project = await make_project(conn, owner, name="Site")
    client = await signed_in(ws_client, owner)
    read = await result(client, "k", "project.get_with_relations", project_id=str(project))
    assert read["project"]["name"] == "Site"
    await conn.execute("UPDATE projects SET name = 'Renamed' WHERE id = $1", project)
    again = await result(client, "k", "project.get_with_relations", project_id=str(project))
    assert again["project"]["name"] == "Renamed"
    assert await keys_of(conn, owner) == []


@pytest.mark.parametrize("gateway_overrides", [{"rpc_idempotency_max_keys_per_user": 2}])
async def test_a_user_keeps_at_most_the_limit_of_keys(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    for key in ("a", "b"):
        await result(client, key, "project.create", name=key, type="website")
    over = await refused(client, "rate_limited", "c", "project.create", name="c", type="website")
    assert "SITEBUILDER_RPC_IDEMPOTENCY_MAX_KEYS_PER_USER" in over["message"]
    repeat = await result(client, "a", "project.create", name="a", type="website")
    assert repeat["name"] == "a"  # a repeat of a kept key is still answered
    assert [row["key"] for row in await keys_of(conn, owner)] == ["a", "b"]
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 2


@pytest.mark.parametrize("gateway_overrides", [{"rpc_idempotency_max_result_bytes": 200}])
async def test_a_result_over_the_limit_is_not_kept_and_a_repeat_is_told_so(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    made = await result(client, "big", "project.create", name="x" * 300, type="website")
    assert made["name"] == "x" * 300
    repeat = await refused(
        client, "conflict", "big", "project.create", name="x" * 300, type="website"
    )
    assert "already applied" in repeat["message"]
    (kept,) = await keys_of(conn, owner)
    assert kept["result"] is None
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 1


# 3. In the database


async def test_users_see_and_write_only_their_own_keys(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Row-level security and column grants as PostgREST users would meet them."""
    alice, bob = await make_user(), await make_user()
    await conn.execute(
        "INSERT INTO rpc_idempotency (user_id, key, method, params_hash, result) "
        "VALUES ($1, 'a', 'm', 'h', '1'), ($2, 'b', 'm', 'h', '2')",
        alice,
        bob,
    )
    async with acting_as(conn, alice):
        visible = await conn.fetch("SELECT key FROM rpc_idempotency")
        assert [r["key"] for r in visible] == ["a"]
        updated = await conn.execute("UPDATE rpc_idempotency SET result = '3' WHERE key = 'b'")
        assert updated == "UPDATE 0"
    for statement, args in [
        (
            "INSERT INTO rpc_idempotency (user_id, key, method, params_hash) "
            "VALUES ($1, 'x', 'm', 'h')",
            (bob,),
        ),
        (
            "INSERT INTO rpc_idempotency (user_id, key, method, params_hash, created_at) "
            "VALUES ($1, 'x', 'm', 'h', now() + interval '1 year')",
            (alice,),
        ),
        ("UPDATE rpc_idempotency SET created_at = now() WHERE key = 'a'", ()),
        ("DELETE FROM rpc_idempotency WHERE key = 'a'", ()),
    ]:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with acting_as(conn, alice):
                await conn.execute(statement, *args)
    results = await conn.fetch("SELECT key, result FROM rpc_idempotency ORDER BY key")
    assert [(r["key"], r["result"]) for r in results] == [("a", "1"), ("b", "2")]


# 4. Retention


async def test_expired_keys_are_deleted_and_then_run_again(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    old = await result(client, "old", "project.create", name="Old")
    await result(client, "recent", "project.create", name="Recent")
    await conn.execute(
        "UPDATE rpc_idempotency SET created_at = now() - interval '2 hours' WHERE key = 'old'"
    )

    expired = await asyncio.wait_for(expire_idempotency_keys(gateway.pool, 3600), TIMEOUT)
    assert expired == 1
    assert [r["key"] for r in await keys_of(conn, owner)] == ["recent"]

    rerun = await result(client, "old", "project.create", name="Old")
    assert rerun["id"] != old["id"]
    assert await count(conn, "SELECT count(*) FROM projects WHERE user_id = $1", owner) == 3


@pytest.mark.parametrize("gateway_overrides", [{"rpc_idempotency_ttl_seconds": 0.2}])
async def test_the_gateway_deletes_expired_keys_by_itself(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    await result(client, "k", "project.create", name="A")
    async with asyncio.timeout(TIMEOUT):
        while True:
            if not await keys_of(conn, owner):
                return
            await asyncio.sleep(0.05)
