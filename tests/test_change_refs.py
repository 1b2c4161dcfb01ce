"""`change` frames carry the `ref` of the rpc that made them, to its connection only.

An editor reconciles its optimistic UI with the changes its own requests caused: the
connection that sent the rpc (and is subscribed) gets them with the rpc's `ref`;
every other subscriber, the history (replays) and changes made any other way (psql,
another connection that is not subscribed) carry none. On both change feeds.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest

from gateway.app.server import Gateway
from gateway.core.origin import request_tag
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    make_project,
    make_sitemap,
    make_wireframe,
)
from tests.test_rpc import signed_in

Frame = dict[str, Any]


@pytest.fixture(params=["notify", "replication"])
def feed_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def rpc_and_changes(
    client: WsClient, changes: int, method: str, **params: Any
) -> tuple[str, Frame, list[Frame]]:
    """Send an rpc; (its ref, its result, the next `changes` change frames), in
    whatever order the result and the changes arrive."""
    ref = client.next_ref()
    await client.send({"type": "rpc", "ref": ref, "method": method, "params": params})
    result: Frame | None = None
    seen: list[Frame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while result is None or len(seen) < changes:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        if frame["type"] == "change":
            seen.append(frame)
        else:
            assert (frame["type"], frame.get("ref")) == ("result", ref), frame
            result = frame
    await client.ping()  # a barrier: nothing else was queued
    return ref, result, seen


async def next_changes(client: WsClient, count: int) -> list[Frame]:
    frames = [await client.recv_type("change") for _ in range(count)]
    await client.ping()
    return frames


async def project_tree(conn: asyncpg.Connection, owner: UUID, **kw: Any) -> tuple[UUID, UUID]:
    project = await make_project(conn, owner, **kw)
    wireframe = await make_wireframe(conn, await make_sitemap(conn, project))
    return project, wireframe


async def test_the_sender_gets_its_ref_and_the_others_do_not(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project, wireframe = await project_tree(conn, owner, collaborators=[collaborator])
    sender = await signed_in(ws_client, owner)
    same_user = await signed_in(ws_client, owner)
    other_user = await signed_in(ws_client, collaborator)
    for client in (sender, same_user, other_user):
        await client.subscribe(project, snapshot=False)

    ref, result, mine = await rpc_and_changes(
        sender, 2, "wireframe.update", id=str(wireframe), patch={"layout": {"hero": "Hi"}}
    )
    assert result["data"]["version"] == 2
    assert [(f["entity"], f["op"], f["ref"]) for f in mine] == [
        ("wireframe", "update", ref),
        ("version", "insert", ref),
    ]
    for client in (same_user, other_user):
        theirs = await next_changes(client, 2)
        assert all("ref" not in f for f in theirs), theirs
        # The very same change, only without the ref.
        assert [{**f, "ref": ref} for f in theirs] == mine


async def test_integer_refs_come_back_as_integers(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project, wireframe = await project_tree(conn, owner)
    sender = await signed_in(ws_client, owner)
    await sender.subscribe(project, snapshot=False)
    params = {"id": str(wireframe), "set": {"title": "Numbered"}}
    await sender.send({"type": "rpc", "ref": 7, "method": "wireframe.update", "params": params})
    frames = [await sender.recv() for _ in range(3)]
    assert sorted((f["type"], f.get("entity")) for f in frames) == [
        ("change", "version"),
        ("change", "wireframe"),
        ("result", None),
    ]
    assert {type(f["ref"]) for f in frames} == {int}
    assert {f["ref"] for f in frames} == {7}


async def test_psql_writes_and_unsubscribed_senders_carry_no_ref(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project, wireframe = await project_tree(conn, owner, collaborators=[collaborator])
    watcher = await signed_in(ws_client, owner)
    await watcher.subscribe(project, snapshot=False)

    await conn.execute("UPDATE wireframes SET title = 'From psql' WHERE id = $1", wireframe)
    by_psql = await next_changes(watcher, 2)
    assert [f["entity"] for f in by_psql] == ["wireframe", "version"]
    assert by_psql[0]["new"]["title"] == "From psql"
    assert all("ref" not in f for f in by_psql), by_psql

    # Another connection of the same user, not subscribed to the project.
    outsider = await signed_in(ws_client, owner)
    _, result, none = await rpc_and_changes(
        outsider, 0, "wireframe.update", id=str(wireframe), set={"title": "From afar"}
    )
    assert result["type"] == "result"
    assert none == []
    seen = await next_changes(watcher, 2)
    assert [(f["entity"], f["actor"]) for f in seen] == [
        ("wireframe", str(owner)),
        ("version", str(owner)),
    ]
    assert all("ref" not in f for f in seen), seen


async def test_a_batch_reaches_the_senders_project_list_with_its_ref(
    ws_client: Connect, make_user: UserFactory
) -> None:
    user = await make_user()
    sender = await signed_in(ws_client, user)
    other_tab = await signed_in(ws_client, user)
    for client in (sender, other_tab):
        reply = await client.request({"type": "subscribe_projects"})
        assert reply["type"] == "ok", reply
        await client.recv_type("project_list")
    structure = {
        "project": {"user_id": str(user), "name": "Batch", "type": "website"},
        "sitemap": {"title": "Main", "pages": {"home": {"path": "/"}}},
        "wireframes": [{"title": "Home"}, {"title": "About"}],
    }
    ref, result, mine = await rpc_and_changes(
        sender, 1, "batch.create_project_structure", **structure
    )
    project_id = result["data"]["project"]["id"]
    assert [(f["entity"], f["op"], f["list"], f["ref"]) for f in mine] == [
        ("project", "insert", True, ref)
    ]
    assert mine[0]["new"]["id"] == project_id
    (theirs,) = await next_changes(other_tab, 1)
    assert "ref" not in theirs
    assert {**theirs, "ref": ref} == mine[0]


async def test_a_project_update_carries_the_ref_on_subscription_and_list(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project = await make_project(conn, owner)
    sender = await signed_in(ws_client, owner)
    await sender.subscribe(project, snapshot=False)
    reply = await sender.request({"type": "subscribe_projects"})
    assert reply["type"] == "ok", reply
    await sender.recv_type("project_list")
    ref, _, mine = await rpc_and_changes(
        sender, 3, "project.update", project_id=str(project), set={"name": "Renamed"}
    )
    assert sorted((f["entity"], f.get("list", False), f["ref"]) for f in mine) == [
        ("project", False, ref),
        ("project", True, ref),
        ("version", False, ref),
    ]


async def test_replays_carry_no_ref(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project, wireframe = await project_tree(conn, owner)
    sender = await signed_in(ws_client, owner)
    _, snapshot = await sender.subscribe(project)
    assert snapshot is not None
    ref, _, live = await rpc_and_changes(
        sender, 2, "wireframe.update", id=str(wireframe), set={"title": "Live"}
    )
    assert {f["ref"] for f in live} == {ref}

    reply = await sender.request({"type": "unsubscribe", "project_id": str(project)})
    assert reply["type"] == "ok", reply
    reply = await sender.request(
        {"type": "subscribe", "project_id": str(project), "since": snapshot["position"]}
    )
    assert reply["data"]["resumed"] is True, reply
    replayed = await next_changes(sender, 2)
    assert [{**f, "ref": ref} for f in replayed] == live


async def test_a_request_with_an_idempotency_key_carries_its_ref(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Its writes run in the key's one transaction, which is tagged alike."""
    owner = await make_user()
    project, wireframe = await project_tree(conn, owner)
    sender = await signed_in(ws_client, owner)
    await sender.subscribe(project, snapshot=False)
    params = {"id": str(wireframe), "set": {"title": "Keyed"}}
    frame = {"type": "rpc", "method": "wireframe.update", "params": params}
    await sender.send({**frame, "ref": "k1", "idempotency_key": "key-1"})
    frames = [await sender.recv() for _ in range(3)]
    assert sorted((f["type"], f.get("entity"), f["ref"]) for f in frames) == [
        ("change", "version", "k1"),
        ("change", "wireframe", "k1"),
        ("result", None, "k1"),
    ]
    # The repeat writes nothing: its reply, and no change.
    await sender.send({**frame, "ref": "k2", "idempotency_key": "key-1"})
    repeat = await sender.recv_type("result")
    assert repeat["ref"] == "k2"
    await sender.ping()


async def test_a_tag_set_after_an_earlier_statement_still_arrives(
    gateway: Gateway,
    ws_client: Connect,
    make_user: UserFactory,
    conn: asyncpg.Connection,
    feed_kind: str,
) -> None:
    """The replication trigger writes its message again when the tag appears later in
    the transaction (the feed applies the last one to the whole transaction; NOTIFY
    tags each change as it is written). The tag is made here as the gateway makes it."""
    owner = await make_user()
    project, wireframe = await project_tree(conn, owner)
    sender = await signed_in(ws_client, owner)
    await sender.subscribe(project, snapshot=False)
    (connection_id,) = [c.id for c in gateway._clients if c.user_id == owner]
    tag = request_tag(gateway.instance, connection_id, "late")
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            orjson.dumps({"sub": str(owner), "role": "authenticated"}).decode(),
        )
        await conn.execute("UPDATE wireframes SET title = 'One' WHERE id = $1", wireframe)
        await conn.execute("SELECT set_config('sitebuilder.request', $1, true)", tag)
        await conn.execute("UPDATE wireframes SET title = 'Two' WHERE id = $1", wireframe)
    frames = await next_changes(sender, 4)
    assert [(f["entity"], f["actor"]) for f in frames] == [
        ("wireframe", str(owner)),
        ("version", str(owner)),
        ("wireframe", str(owner)),
        ("version", str(owner)),
    ]
    assert frames[2]["new"]["title"] == "Two"
    first = "late" if feed_kind == "replication" else None
    assert [f.get("ref") for f in frames] == [first, first, "late", "late"]
