"""`sitemap.*`, `wireframe.*`, `style_guide.*` over a real websocket, against real PostgreSQL.

Who may write what (owner, collaborator, public reader, stranger), optimistic
concurrency and merge patches under genuinely concurrent writers, the version notes,
and the `change` frames each write produces. Concurrency is made deterministic, not
hoped for: a superuser transaction holds the row (or parent) lock until every writer
is seen waiting on it in pg_stat_activity, then lets them race.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import pytest

from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    make_project,
    make_sitemap,
    make_style_guide,
    make_wireframe,
)
from tests.test_rpc import rpc, signed_in

T = TypeVar("T")
Frame = dict[str, Any]


async def bounded(awaitable: Awaitable[T]) -> T:
    """Every wait in these tests ends: a hung database fails the test, not the run."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


@dataclass(frozen=True)
class Kind:
    """One entity as these tests drive it."""

    name: str  # method prefix
    table: str
    parent: str  # the column naming its parent
    change: str  # `entity` of its change frames
    jsonb: str  # one of its jsonb columns, for patches


SITEMAP = Kind("sitemap", "sitemaps", "project_id", "sitemap", "pages")
WIREFRAME = Kind("wireframe", "wireframes", "sitemap_id", "wireframe", "layout")
STYLE_GUIDE = Kind("style_guide", "style_guides", "wireframe_id", "style-guide", "colors")
KINDS = [SITEMAP, WIREFRAME, STYLE_GUIDE]
by_kind = pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])


@dataclass(frozen=True)
class Tree:
    """A project with one row of each entity under it."""

    project: UUID
    sitemap: UUID
    wireframe: UUID
    style_guide: UUID

    def row(self, kind: Kind) -> UUID:
        rows = {SITEMAP: self.sitemap, WIREFRAME: self.wireframe, STYLE_GUIDE: self.style_guide}
        return rows[kind]

    def parent(self, kind: Kind) -> UUID:
        """Where a new row of `kind` goes."""
        parents = {SITEMAP: self.project, WIREFRAME: self.sitemap, STYLE_GUIDE: self.wireframe}
        return parents[kind]


async def make_tree(
    conn: asyncpg.Connection, owner: UUID, collaborators: list[UUID] | None = None, **kw: Any
) -> Tree:
    project = await bounded(make_project(conn, owner, collaborators=collaborators or [], **kw))
    sitemap = await bounded(make_sitemap(conn, project))
    wireframe = await bounded(make_wireframe(conn, sitemap))
    style_guide = await bounded(make_style_guide(conn, wireframe))
    return Tree(project, sitemap, wireframe, style_guide)


async def stored(conn: asyncpg.Connection, kind: Kind, row_id: UUID) -> asyncpg.Record | None:
    query = f"SELECT * FROM {kind.table} WHERE id = $1"
    record: asyncpg.Record | None = await conn.fetchrow(query, row_id, timeout=TIMEOUT)
    return record


def result(reply: Frame) -> Any:
    assert reply["type"] == "result", reply
    return reply["data"]


def refused(reply: Frame, code: str) -> Frame:
    assert (reply["type"], reply.get("code")) == ("error", code), reply
    return reply


# Racing writers


async def send_rpc(client: WsClient, method: str, **params: Any) -> str:
    """Send without waiting for the reply (it may be held up by a lock); its ref."""
    ref = client.next_ref()
    await client.send({"type": "rpc", "ref": ref, "method": method, "params": params})
    return ref


async def reply_to(client: WsClient, ref: str) -> Frame:
    reply = await client.recv()
    assert reply.get("ref") == ref, reply
    return reply


async def lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Until `count` backends of this database wait on a lock (that is, are mid-statement)."""
    query = """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        # Within a transaction the activity view is a snapshot taken once: renew it.
        await conn.execute("SELECT pg_stat_clear_snapshot()", timeout=TIMEOUT)
        if await conn.fetchval(query, timeout=TIMEOUT) >= count:
            return
        assert loop.time() < deadline, f"fewer than {count} writers ever waited on the lock"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def holding(conn: asyncpg.Connection, statement: str, *args: Any) -> AsyncIterator[None]:
    """Run `statement` in a transaction that commits (releasing its locks) on exit."""
    async with conn.transaction():
        await conn.execute(statement, *args, timeout=TIMEOUT)
        yield


# Allowed and denied, per role


@pytest.mark.hosted_postgres
@by_kind
@pytest.mark.parametrize("role", ["owner", "collaborator"])
async def test_members_create_update_and_delete(
    kind: Kind, role: str, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, [collaborator])
    client = await signed_in(ws_client, owner if role == "owner" else collaborator)
    chosen = uuid4()

    created = result(
        await rpc(
            client,
            f"{kind.name}.create",
            **{kind.parent: str(tree.parent(kind))},
            id=str(chosen),
            title="New",
            **{kind.jsonb: {"keep": 1}},
        )
    )
    assert (created["id"], created[kind.parent], created["title"]) == (
        str(chosen),
        str(tree.parent(kind)),
        "New",
    )
    assert (created[kind.jsonb], created["version"]) == ({"keep": 1}, 1)

    updated = result(
        await rpc(
            client,
            f"{kind.name}.update",
            id=str(chosen),
            set={"title": "Renamed", "description": "now described"},
            patch={kind.jsonb: {"added": {"deep": True}}},
            expected_version=1,
        )
    )
    assert (updated["title"], updated["description"], updated["version"]) == (
        "Renamed",
        "now described",
        2,
    )
    assert updated[kind.jsonb] == {"keep": 1, "added": {"deep": True}}

    assert result(await rpc(client, f"{kind.name}.delete", id=str(chosen))) == {"id": str(chosen)}
    assert await stored(conn, kind, chosen) is None


@by_kind
@pytest.mark.parametrize(
    ("public", "code"), [(True, "forbidden"), (False, "not_found")], ids=["reader", "stranger"]
)
async def test_non_members_write_nothing(
    kind: Kind,
    public: bool,
    code: str,
    ws_client: Connect,
    make_user: UserFactory,
    conn: asyncpg.Connection,
) -> None:
    """A public reader sees the row but may not write it (forbidden); a stranger does not
    even learn it exists (not_found). Neither may add rows under it."""
    owner, outsider = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, public=public)
    client = await signed_in(ws_client, outsider)
    target = str(tree.row(kind))

    parent = {kind.parent: str(tree.parent(kind))}
    refused(await rpc(client, f"{kind.name}.create", **parent, title="Mine"), "forbidden")
    refused(await rpc(client, f"{kind.name}.update", id=target, set={"title": "X"}), code)
    refused(await rpc(client, f"{kind.name}.delete", id=target), code)
    refused(await rpc(client, f"{kind.name}.delete", id=str(uuid4())), "not_found")

    row = await stored(conn, kind, tree.row(kind))
    assert row is not None
    assert (row["title"], row["version"]) == (
        {SITEMAP: "Map", WIREFRAME: "Frame", STYLE_GUIDE: "Style"}[kind],
        1,
    )
    count = f"SELECT count(*) FROM {kind.table} WHERE {kind.parent} = $1"
    assert await conn.fetchval(count, tree.parent(kind), timeout=TIMEOUT) == 1


@by_kind
async def test_moving_needs_write_access_to_the_new_parent(
    kind: Kind, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Into another project of the caller's: fine. Into a public project it may only
    read: forbidden, and the row stays where it was."""
    caller, other = await bounded(make_user()), await bounded(make_user())
    home, elsewhere = await make_tree(conn, caller), await make_tree(conn, caller)
    foreign = await make_tree(conn, other, public=True)
    client = await signed_in(ws_client, caller)
    target = str(home.row(kind))

    moved = result(
        await rpc(
            client, f"{kind.name}.update", id=target, set={kind.parent: str(elsewhere.parent(kind))}
        )
    )
    assert (moved[kind.parent], moved["version"]) == (str(elsewhere.parent(kind)), 2)

    into_foreign = {kind.parent: str(foreign.parent(kind))}
    reply = refused(
        await rpc(client, f"{kind.name}.update", id=target, set=into_foreign), "forbidden"
    )
    assert "may not edit" in reply["message"]
    row = await stored(conn, kind, home.row(kind))
    assert row is not None
    assert (row[kind.parent], row["version"]) == (elsewhere.parent(kind), 2)


# Optimistic concurrency and merge patches


@pytest.mark.hosted_postgres
async def test_two_editors_from_the_same_version_exactly_one_wins(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, [collaborator])
    editors = [await signed_in(ws_client, owner), await signed_in(ws_client, collaborator)]
    lock = "SELECT 1 FROM wireframes WHERE id = $1 FOR UPDATE"

    async with holding(conn, lock, tree.wireframe):
        refs = [
            await send_rpc(
                editor,
                "wireframe.update",
                id=str(tree.wireframe),
                set={"title": f"by editor {n}"},
                expected_version=1,
            )
            for n, editor in enumerate(editors)
        ]
        await lock_waiters(conn, 2)
    replies = await asyncio.gather(*(reply_to(e, r) for e, r in zip(editors, refs, strict=True)))

    winners = [reply for reply in replies if reply["type"] == "result"]
    losers = [reply for reply in replies if reply["type"] == "error"]
    assert (len(winners), len(losers)) == (1, 1), replies
    assert losers[0]["code"] == "conflict", losers
    won = winners[0]["data"]
    assert won["version"] == 2
    assert losers[0]["details"]["current"] == won
    row = await stored(conn, WIREFRAME, tree.wireframe)
    assert row is not None
    assert (row["title"], row["version"]) == (won["title"], 2)
    versions = "SELECT count(*) FROM version_history WHERE entity_id = $1"
    assert await conn.fetchval(versions, tree.wireframe, timeout=TIMEOUT) == 2


async def test_concurrent_patches_of_different_keys_both_survive(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, [collaborator])
    await conn.execute(
        """UPDATE wireframes SET layout = '{"grid": 12}' WHERE id = $1""",
        tree.wireframe,
        timeout=TIMEOUT,
    )
    editors = [await signed_in(ws_client, owner), await signed_in(ws_client, collaborator)]
    patches = [{"header": {"logo": "left"}}, {"footer": {"links": ["a", "b"]}}]
    lock = "SELECT 1 FROM wireframes WHERE id = $1 FOR UPDATE"

    async with holding(conn, lock, tree.wireframe):
        refs = [
            await send_rpc(editor, "wireframe.update", id=str(tree.wireframe), patch={"layout": p})
            for editor, p in zip(editors, patches, strict=True)
        ]
        await lock_waiters(conn, 2)
    replies = await asyncio.gather(*(reply_to(e, r) for e, r in zip(editors, refs, strict=True)))

    assert sorted(result(reply)["version"] for reply in replies) == [3, 4]
    row = await stored(conn, WIREFRAME, tree.wireframe)
    assert row is not None
    assert row["version"] == 4
    assert json.loads(row["layout"]) == {
        "grid": 12,
        "header": {"logo": "left"},
        "footer": {"links": ["a", "b"]},
    }


async def test_merge_patch_follows_rfc_7396(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Objects merge key by key at any depth, null removes a key, other values replace."""
    owner = await bounded(make_user())
    tree = await make_tree(conn, owner)
    client = await signed_in(ws_client, owner)
    guide = str(tree.style_guide)
    start = {"primary": {"base": "#000", "hover": "#111"}, "accents": ["#a"], "old": 1}
    result(await rpc(client, "style_guide.update", id=guide, patch={"colors": start}))

    patch = {"primary": {"hover": None, "active": "#222"}, "accents": ["#b"], "old": None}
    patched = result(
        await rpc(client, "style_guide.update", id=guide, patch={"colors": patch, "grid": {"n": 1}})
    )
    assert patched["colors"] == {"primary": {"base": "#000", "active": "#222"}, "accents": ["#b"]}
    assert (patched["grid"], patched["typography"], patched["version"]) == ({"n": 1}, {}, 3)


@pytest.mark.hosted_postgres
async def test_stale_delete_is_a_conflict_and_deletes_nothing(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await bounded(make_user())
    tree = await make_tree(conn, owner)
    client = await signed_in(ws_client, owner)
    sitemap = str(tree.sitemap)
    result(await rpc(client, "sitemap.update", id=sitemap, set={"title": "v2"}))

    stale = refused(await rpc(client, "sitemap.delete", id=sitemap, expected_version=1), "conflict")
    assert (stale["details"]["current"]["title"], stale["details"]["current"]["version"]) == (
        "v2",
        2,
    )
    assert await stored(conn, SITEMAP, tree.sitemap) is not None
    deleted = result(await rpc(client, "sitemap.delete", id=sitemap, expected_version=2))
    assert deleted == {"id": sitemap}
    assert await stored(conn, WIREFRAME, tree.wireframe) is None, "deletes cascade"


# Versions and change events


async def test_version_rows_carry_message_weight_and_the_caller(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """…and a later write without a message gets the generated one: the note is
    transaction-local, never left behind on a pooled connection."""
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, [collaborator])
    client = await signed_in(ws_client, collaborator)
    created = result(
        await rpc(
            client,
            "wireframe.create",
            sitemap_id=str(tree.sitemap),
            title="Home",
            message="First draft",
            is_major=True,
        )
    )
    frame = created["id"]
    result(await rpc(client, "wireframe.update", id=frame, set={"title": "Home 2"}, message="Hero"))
    result(await rpc(client, "wireframe.update", id=frame, set={"components": ["hero", "footer"]}))

    history = await conn.fetch(
        "SELECT version_number, message, is_major, user_id FROM version_history "
        "WHERE entity_id = $1 ORDER BY version_number",
        UUID(frame),
        timeout=TIMEOUT,
    )
    assert [tuple(row) for row in history] == [
        (1, "First draft", True, collaborator),
        (2, "Hero", False, collaborator),
        (3, "Updated components", False, collaborator),
    ]


@pytest.mark.hosted_postgres
@by_kind
async def test_each_write_is_one_change_at_a_subscriber(
    kind: Kind, ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """The entity's change (then its version, for a create or an update), each exactly
    once, attributed to the writer."""
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    tree = await make_tree(conn, owner, [collaborator])
    watcher = await signed_in(ws_client, owner)
    await watcher.subscribe(tree.project, snapshot=False)
    writer = await signed_in(ws_client, collaborator)

    async def write_and_watch(method: str, expected: list[tuple[str, str]], **params: Any) -> Any:
        data = result(await rpc(writer, f"{kind.name}.{method}", **params))
        frames = [await watcher.recv_type("change") for _ in expected]
        await watcher.ping()  # a barrier: nothing else was queued for the watcher
        assert [(f["entity"], f["op"]) for f in frames] == expected
        assert {f["actor"] for f in frames} == {str(collaborator)}
        entity_row = frames[0]["new"] or frames[0]["old"]
        assert entity_row["id"] == data["id"]
        for version in frames[1:]:
            assert version["new"]["entity_id"] == data["id"]
        return data

    created = await write_and_watch(
        "create",
        [(kind.change, "insert"), ("version", "insert")],
        **{kind.parent: str(tree.parent(kind))},
        title="Watched",
    )
    await write_and_watch(
        "update",
        [(kind.change, "update"), ("version", "insert")],
        id=created["id"],
        patch={kind.jsonb: {"k": "v"}},
    )
    await write_and_watch("delete", [(kind.change, "delete")], id=created["id"])


# Refusals


@pytest.mark.parametrize(
    ("method", "params", "locations"),
    [
        ("wireframe.update", {"set": {"colour": "red"}}, {"set.colour"}),
        ("wireframe.update", {"set": {"layout": {}}}, {"set.layout"}),
        ("wireframe.update", {"patch": {"title": "T"}}, {"patch.title"}),
        ("wireframe.update", {"patch": {"layout": [1]}}, {"patch.layout"}),
        (
            "wireframe.update",
            {"set": {"title": None, "components": [1]}, "expected_version": "two"},
            {"set.title", "set.components.0", "expected_version"},
        ),
        ("sitemap.update", {"set": {}, "patch": {}}, {"params"}),
        (
            "style_guide.update",
            {"set": {"wireframe_id": "nope"}, "id": "x"},
            {"set.wireframe_id", "id"},
        ),
        ("sitemap.create", {"title": ""}, {"project_id", "title"}),
        (
            "style_guide.create",
            {"wireframe_id": None, "title": "T", "grid": 1, "x": 0},
            {"wireframe_id", "x"},
        ),
        ("sitemap.delete", {"expected_version": 0}, {"expected_version"}),
    ],
    ids=[
        "unknown-column",
        "jsonb-column-in-set",
        "plain-column-in-patch",
        "patch-not-an-object",
        "wrong-types",
        "nothing-to-change",
        "bad-uuids",
        "missing-parent-empty-title",
        "null-parent-unknown-field",
        "version-below-one",
    ],
)
async def test_malformed_params_are_invalid_params(
    method: str,
    params: dict[str, Any],
    locations: set[str],
    ws_client: Connect,
    make_user: UserFactory,
) -> None:
    client = await signed_in(ws_client, await bounded(make_user()))
    if not method.endswith(".create"):
        params = {"id": str(uuid4()), **params}
    reply = refused(await rpc(client, method, **params), "invalid_params")
    assert {error["loc"] for error in reply["details"]["errors"]} == locations


async def test_duplicate_id_is_invalid(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await bounded(make_user())
    tree = await make_tree(conn, owner)
    client = await signed_in(ws_client, owner)
    again = {"id": str(tree.wireframe), "sitemap_id": str(tree.sitemap), "title": "Twin"}
    reply = refused(await rpc(client, "wireframe.create", **again), "invalid")
    assert reply["details"]["sqlstate"] == "23505"


async def test_parent_deleted_concurrently_is_an_invalid_reference(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    """Row-level security passes (the parent still exists in the insert's snapshot) but
    the foreign key check, which waits for the deleting transaction, does not."""
    owner = await bounded(make_user())
    tree = await make_tree(conn, owner)
    client = await signed_in(ws_client, owner)

    async with holding(conn, "DELETE FROM sitemaps WHERE id = $1", tree.sitemap):
        ref = await send_rpc(client, "wireframe.create", sitemap_id=str(tree.sitemap), title="W")
        await lock_waiters(conn, 1)
    reply = refused(await reply_to(client, ref), "invalid")
    assert reply["details"]["sqlstate"] == "23503"
    await client.ping()
