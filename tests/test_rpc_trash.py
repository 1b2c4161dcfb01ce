"""`trash.*` over a real socket and a real database: what a delete puts in the trash,
who may see and restore it, what a restore looks like to subscribers and to history,
and how long entries are kept."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from gateway.rpc.trash import expire_trash
from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, WsClient, make_wireframe
from tests.test_rpc import rpc, signed_in
from tests.test_rpc_versions import Site, bounded, build_site, history, refused, result

pytestmark = pytest.mark.hosted_postgres

Frame = dict[str, object]


async def changes_until_quiet(client: WsClient, count: int) -> list[tuple[object, object, object]]:
    """The next `count` change frames, as (entity, op, id of the row), then a ping as a
    barrier: nothing else was queued."""
    frames = [await client.recv_type("change") for _ in range(count)]
    await client.ping()
    return [
        (f["entity"], f["op"], (f["new"] or f["old"])["id"])  # type: ignore[index]
        for f in frames
    ]


def entity_changes(
    changes: list[tuple[object, object, object]],
) -> list[tuple[object, object, object]]:
    return [change for change in changes if change[0] != "version"]


async def test_a_deleted_sitemap_comes_back_whole_for_everyone(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """One window deletes, the other restores from the trash; both see the rows go
    and come back, under their ids, as new versions of the same history."""
    site = await bounded(build_site(conn, make_user, public=False))
    owner = await signed_in(ws_client, site.owner)
    collaborator = await signed_in(ws_client, site.collaborator)
    # Each window's subscription (writers get their changes before their results).
    windows = [await signed_in(ws_client, user) for user in (site.owner, site.collaborator)]
    for window in windows:
        await window.subscribe(site.project)

    result(await rpc(owner, "sitemap.delete", id=str(site.sitemap)))
    gone = [
        ("sitemap", "delete", str(site.sitemap)),
        ("wireframe", "delete", str(site.wireframe)),
        ("style-guide", "delete", str(site.style_guide)),
    ]
    for watcher in windows:
        assert sorted(await changes_until_quiet(watcher, 3)) == sorted(gone)

    page = result(await rpc(collaborator, "trash.list", project_id=str(site.project)))
    (entry,) = page["entries"]
    assert page["next_before"] is None
    assert {k: entry[k] for k in ("entity_type", "entity_id", "parent_id", "title")} == {
        "entity_type": "sitemaps",
        "entity_id": str(site.sitemap),
        "parent_id": str(site.project),
        "title": "Map",
    }
    assert (entry["with_wireframes"], entry["with_style_guides"]) == (1, 1)
    assert entry["deleted_by"] == str(site.owner)
    assert entry["deleted_by_name"]

    restored = result(await rpc(collaborator, "trash.restore", id=entry["id"]))
    assert restored["restored"] == [
        {"entity_type": "sitemaps", "entity_id": str(site.sitemap), "version": 2},
        {"entity_type": "wireframes", "entity_id": str(site.wireframe), "version": 2},
        {"entity_type": "style_guides", "entity_id": str(site.style_guide), "version": 2},
    ]
    back = [
        ("sitemap", "insert", str(site.sitemap)),
        ("wireframe", "insert", str(site.wireframe)),
        ("style-guide", "insert", str(site.style_guide)),
    ]
    for watcher in windows:
        assert entity_changes(await changes_until_quiet(watcher, 6)) == back

    versions = await history(conn, site.wireframe)
    assert [(v["version_number"], v["message"]) for v in versions] == [
        (1, "Created"),
        (2, "Restored from the trash"),
    ]
    assert versions[1]["user_id"] == site.collaborator
    assert orjson.loads(versions[1]["data"])["layout"] == {"blocks": ["hero"]}
    assert result(await rpc(owner, "trash.list", project_id=str(site.project)))["entries"] == []
    refused(await rpc(owner, "trash.restore", id=entry["id"]), "not_found")

    # Deleted again, it is in the trash again.
    result(await rpc(owner, "wireframe.delete", id=str(site.wireframe)))
    page = result(await rpc(owner, "trash.list", project_id=str(site.project)))
    assert [(e["entity_id"], e["with_style_guides"]) for e in page["entries"]] == [
        (str(site.wireframe), 1)
    ]


async def test_only_the_projects_editors_see_and_restore_its_trash(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    site = await bounded(build_site(conn, make_user, public=True))
    await bounded(conn.execute("DELETE FROM wireframes WHERE id = $1", site.wireframe))
    entry = await bounded(
        conn.fetchval("SELECT id FROM trash WHERE entity_id = $1", site.wireframe)
    )
    reader_id = await bounded(make_user())
    reader = await signed_in(ws_client, reader_id)

    refused(await rpc(reader, "trash.list", project_id=str(site.project)), "forbidden")
    refused(await rpc(reader, "trash.restore", id=str(entry)), "not_found")
    await bounded(conn.execute("UPDATE projects SET is_public = false WHERE id = $1", site.project))
    refused(await rpc(reader, "trash.list", project_id=str(site.project)), "not_found")
    assert (
        await bounded(
            conn.fetchval("SELECT count(*) FROM wireframes WHERE id = $1", site.wireframe)
        )
        == 0
    )

    # Nor in SQL, as `authenticated`: the rows are the editors' (row-level security).
    async with acting_as(conn, reader_id):
        assert await bounded(conn.fetchval("SELECT count(*) FROM trash")) == 0


async def test_a_row_whose_parent_was_deleted_since_waits_for_its_parent(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Restoring asks for its parent back first (conflict, naming what to do); a row
    deleted with its parent comes back only with it."""
    site = await bounded(build_site(conn, make_user, public=False))
    second = await bounded(make_wireframe(conn, site.sitemap, "About"))
    await bounded(conn.execute("DELETE FROM wireframes WHERE id = $1", second))
    await bounded(conn.execute("DELETE FROM sitemaps WHERE id = $1", site.sitemap))
    entries: dict[UUID, UUID] = {
        row["entity_id"]: row["id"]
        for row in await bounded(conn.fetch("SELECT entity_id, id FROM trash"))
    }
    client = await signed_in(ws_client, site.owner)

    waits = await rpc(client, "trash.restore", id=str(entries[second]))
    refused(waits, "conflict")
    assert "sitemap" in str(waits["message"])
    refused(await rpc(client, "trash.restore", id=str(entries[site.wireframe])), "conflict")

    listed = result(await rpc(client, "trash.list", project_id=str(site.project), limit=1))
    assert [e["entity_id"] for e in listed["entries"]] == [str(site.sitemap)]
    more = result(
        await rpc(client, "trash.list", project_id=str(site.project), before=listed["next_before"])
    )
    assert ([e["entity_id"] for e in more["entries"]], more["next_before"]) == ([str(second)], None)

    result(await rpc(client, "trash.restore", id=str(entries[site.sitemap])))
    back = result(await rpc(client, "trash.restore", id=str(entries[second])))
    assert back["restored"] == [
        {"entity_type": "wireframes", "entity_id": str(second), "version": 2}
    ]


async def test_a_deleted_projects_trash_goes_with_it_and_old_entries_expire(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    sites: list[Site] = [await bounded(build_site(conn, make_user, public=False)) for _ in range(2)]
    for site in sites:
        await bounded(conn.execute("DELETE FROM style_guides WHERE id = $1", site.style_guide))
    await bounded(conn.execute("DELETE FROM projects WHERE id = $1", sites[1].project))
    await bounded(
        conn.execute(
            "UPDATE trash SET deleted_at = now() - interval '31 days' WHERE entity_id = $1",
            sites[0].style_guide,
        )
    )
    await bounded(conn.execute("DELETE FROM sitemaps WHERE id = $1", sites[0].sitemap))

    assert await bounded(expire_trash(conn, 30 * 86_400)) == 1  # type: ignore[arg-type]
    remaining = await bounded(
        conn.fetch(
            "SELECT entity_id FROM trash WHERE project_id = ANY($1::uuid[])",
            [site.project for site in sites],
        )
    )
    assert {row["entity_id"] for row in remaining} == {sites[0].sitemap, sites[0].wireframe}
