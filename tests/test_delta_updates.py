"""Subscriptions made with `delta`: an update arrives as what changed, not the whole row.

A client holding the row applies `set` (columns in full) and `patch` (RFC 7396 merge
patches of JSON columns) and has the row every full subscriber receives; version-history
changes come without `data`/`changes` (`version.get` has them); inserts and deletes,
replays and refs behave as for everyone else.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.delta import row_delta
from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, WsClient, make_project, make_sitemap, make_wireframe
from tests.test_change_refs import next_changes
from tests.test_rpc import signed_in

Frame = dict[str, Any]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7396 MergePatch(target, patch), as a client applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def apply(row: Frame, delta: Frame) -> Frame:
    """What a client holding `row` has after `delta`."""
    assert delta["id"] == row["id"]
    assert delta["base_version"] == row.get("version")
    out = {**row, **delta["set"]}
    for column, patch in delta["patch"].items():
        out[column] = merge(row.get(column), patch)
    if delta["version"] is not None:
        out["version"] = delta["version"]
    return out


def page(sections: int = 12) -> dict[str, Any]:
    """A layout of about 2 KB, like a real page's outline."""
    return {
        "title": "Home",
        "sections": {
            f"s{i}": {"kind": "text", "text": "Fresh bread every morning " * 3, "order": i}
            for i in range(sections)
        },
    }


async def page_tree(conn: asyncpg.Connection, owner: UUID, **kw: Any) -> tuple[UUID, UUID]:
    project = await make_project(conn, owner, **kw)
    wireframe = await make_wireframe(conn, await make_sitemap(conn, project))
    await conn.execute(
        "UPDATE wireframes SET layout = $2::jsonb WHERE id = $1",
        wireframe,
        orjson.dumps(page()).decode(),
    )
    return project, wireframe


async def delta_and_full(
    ws_client: Connect, user: UUID, project: UUID, **options: Any
) -> tuple[WsClient, Frame, WsClient]:
    """A delta subscriber (and its snapshot) and a full one, both live on `project`."""
    delta = await signed_in(ws_client, user)
    _, snapshot = await delta.subscribe(project, delta=True, **options)
    assert snapshot is not None
    full = await signed_in(ws_client, user)
    await full.subscribe(project, snapshot=False)
    return delta, snapshot, full


async def test_a_one_key_edit_is_a_few_hundred_bytes_that_rebuild_the_row(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project, wireframe = await page_tree(conn, owner)
    delta_client, snapshot, full_client = await delta_and_full(ws_client, owner, project)
    held = {row["id"]: row for row in snapshot["wireframes"]}[str(wireframe)]

    await conn.execute(
        "UPDATE wireframes SET layout = jsonb_set(layout, '{sections,s3,text}', '\"Rye\"') "
        "WHERE id = $1",
        wireframe,
    )
    raw = [await delta_client.recv_raw() for _ in range(2)]
    update, version = (orjson.loads(message) for message in raw)
    full_update, full_version = await next_changes(full_client, 2)

    assert update["type"] == "delta"
    assert (update["entity"], update["id"], update["project_id"]) == (
        "wireframe",
        str(wireframe),
        str(project),
    )
    assert (update["base_version"], update["version"]) == (held["version"], held["version"] + 1)
    assert update["patch"] == {"layout": {"sections": {"s3": {"text": "Rye"}}}}
    assert set(update["set"]) <= {"updated_at"}
    assert "old" not in update
    assert (update["position"], update["committed_at"]) == (
        full_update["position"],
        full_update["committed_at"],
    )
    assert apply(held, update) == full_update["new"]

    assert (version["type"], version["entity"], version["op"]) == ("change", "version", "insert")
    assert version["new"]["data"] is None
    assert version["new"]["changes"] is None
    assert {**full_version["new"], "data": None, "changes": None} == version["new"]
    # Both frames together: under 1.3 KB, against the full frames' two 2 KB rows and more.
    full_bytes = len(orjson.dumps(full_update)) + len(orjson.dumps(full_version))
    assert sum(map(len, raw)) <= 1300 < full_bytes
    await delta_client.ping()


async def test_version_get_returns_what_the_delta_subscription_left_out(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project, wireframe = await page_tree(conn, owner)
    client = await signed_in(ws_client, owner)
    await client.subscribe(project, snapshot=False, delta=True)
    await conn.execute("UPDATE wireframes SET title = 'Renamed' WHERE id = $1", wireframe)
    update, version = (await client.recv(), await client.recv())
    assert (update["type"], update["set"]["title"], update["patch"]) == ("delta", "Renamed", {})
    reply = await client.request(
        {"type": "rpc", "method": "version.get", "params": {"version_id": version["new"]["id"]}}
    )
    assert reply["type"] == "result", reply
    assert reply["data"]["data"]["title"] == "Renamed"
    assert reply["data"]["data"]["layout"] == page()


@pytest.mark.parametrize("feed_kind", ["notify", "replication"])
async def test_every_kind_of_change_rebuilds_the_row(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection, feed_kind: str
) -> None:
    """Keys removed, values nulled, types changed (1 → true), nulls inside objects (which
    no merge patch can set: the column comes whole), plain columns, on both feeds."""
    owner = await make_user()
    project, wireframe = await page_tree(conn, owner)
    client, snapshot, full = await delta_and_full(ws_client, owner, project)
    held = {row["id"]: row for row in snapshot["wireframes"]}[str(wireframe)]
    edits = [
        "layout = layout - 'title'",
        "layout = jsonb_set(layout, '{sections,s1,order}', 'true')",
        "layout = jsonb_set(layout, '{sections,s2}', '{\"kind\": null}')",
        "layout = '[1, null]', components = ARRAY['hero']",
        "layout = '{\"a\": {\"b\": 1}}', description = 'now described'",
        "layout = NULL, description = NULL",
    ]
    updates = []
    for edit in edits:
        await conn.execute(f"UPDATE wireframes SET {edit} WHERE id = $1", wireframe)
        update = await client.recv_type("delta")
        await client.recv_type("change")  # its version
        expected, _ = await next_changes(full, 2)
        held = apply(held, update)
        assert held == expected["new"], edit
        updates.append(update)
    assert updates[0]["patch"] == {"layout": {"title": None}}
    assert updates[1]["patch"] == {"layout": {"sections": {"s1": {"order": True}}}}
    assert "layout" in updates[2]["set"]  # a null inside an object: the column whole
    assert updates[3]["set"]["components"] == ["hero"]
    assert updates[5]["set"]["layout"] is None


async def test_inserts_and_deletes_are_change_frames_and_old_comes_when_asked(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner = await make_user()
    project, wireframe = await page_tree(conn, owner)
    with_old, snapshot, _ = await delta_and_full(ws_client, owner, project, old=True)
    held = {row["id"]: row for row in snapshot["wireframes"]}[str(wireframe)]
    sitemap = held["sitemap_id"]

    await conn.execute("UPDATE wireframes SET title = 'Again' WHERE id = $1", wireframe)
    update = await with_old.recv_type("delta")
    assert update["old"] == held
    await with_old.recv_type("change")

    added = await make_wireframe(conn, UUID(sitemap), "Added")
    insert = await with_old.recv_type("change")
    assert (insert["entity"], insert["op"], insert["new"]["id"]) == (
        "wireframe",
        "insert",
        str(added),
    )
    await with_old.recv_type("change")
    await conn.execute("DELETE FROM wireframes WHERE id = $1", added)
    delete = await with_old.recv()
    assert (delete["type"], delete["op"], delete["old"]["id"]) == ("change", "delete", str(added))


async def test_the_sender_gets_its_ref_on_the_delta_and_a_resume_replays_deltas(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, collaborator = await make_user(), await make_user()
    project, wireframe = await page_tree(conn, owner, collaborators=[collaborator])
    sender = await signed_in(ws_client, owner)
    _, snapshot = await sender.subscribe(project, delta=True)
    assert snapshot is not None
    other = await signed_in(ws_client, collaborator)
    await other.subscribe(project, snapshot=False, delta=True)

    ref = sender.next_ref()
    params = {"id": str(wireframe), "patch": {"layout": {"title": "Mine"}}}
    await sender.send({"type": "rpc", "ref": ref, "method": "wireframe.update", "params": params})
    mine = {f["type"] + f.get("entity", ""): f for f in [await sender.recv() for _ in range(3)]}
    assert mine["deltawireframe"]["ref"] == ref
    assert mine["deltawireframe"]["patch"] == {"layout": {"title": "Mine"}}
    theirs = await other.recv_type("delta")
    assert "ref" not in theirs
    assert {**theirs, "ref": ref} == mine["deltawireframe"]
    await other.recv_type("change")

    # The collaborator reconnects from before the edit: the replay is the same delta.
    again = await signed_in(ws_client, collaborator)
    reply = await again.request(
        {
            "type": "subscribe",
            "project_id": str(project),
            "since": snapshot["position"],
            "delta": True,
        }
    )
    assert (reply["type"], reply["data"]["resumed"]) == ("ok", True)
    assert await again.recv_type("delta") == theirs
    replayed_version = await again.recv_type("change")
    assert replayed_version["new"]["data"] is None
    await again.ping()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=4)
    ),
    max_leaves=12,
)
rows = st.fixed_dictionaries(
    {"id": st.just("r"), "version": st.integers(1, 5)},
    optional={"title": json_values, "layout": json_values, "meta": json_values},
)


@settings(max_examples=400, deadline=None)
@given(rows, rows)
def test_a_delta_applied_to_the_old_row_is_the_new_row(old: Frame, new: Frame) -> None:
    delta = row_delta(old, new)
    frame = {
        "id": "r",
        "version": new["version"],
        "base_version": old["version"],
        "set": delta.set,
        "patch": delta.patch,
    }
    rebuilt = apply(old, frame)
    rebuilt = {k: v for k, v in rebuilt.items() if not (k not in new and v is None)}
    assert orjson.dumps(rebuilt, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        new, option=orjson.OPT_SORT_KEYS
    )
    assert not set(delta.set) & set(delta.patch)
