"""`batch.create_project_structure` over a real socket: all of it in one commit, or none."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, WsClient, make_project
from tests.test_rpc import rpc, signed_in

TABLES = ("projects", "sitemaps", "wireframes", "style_guides", "version_history")


def seed_example(user: UUID) -> dict[str, Any]:
    """The seed's "Creating a New Project" example, as written there."""
    return {
        "project": {
            "user_id": str(user),
            "name": "My New Website",
            "type": "website",
            "status": "draft",
        },
        "sitemap": {
            "title": "Main Site Structure",
            "description": "Primary navigation and pages",
            "pages": {
                "home": {"title": "Home", "path": "/"},
                "about": {"title": "About", "path": "/about"},
                "contact": {"title": "Contact", "path": "/contact"},
            },
        },
    }


def full_structure(user: UUID, colors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed's example plus two wireframes and a style guide for the second."""
    return {
        **seed_example(user),
        "wireframes": [
            {"title": "Home", "layout": {"hero": {"size": "large"}}, "components": ["hero"]},
            {"title": "About"},
        ],
        "style_guides": [
            {"wireframe_index": 1, "title": "Warm", "colors": colors or {"primary": "#c0392b"}},
        ],
    }


async def new_user(make_user: UserFactory) -> UUID:
    return await asyncio.wait_for(make_user(), TIMEOUT)


async def create(client: WsClient, structure: dict[str, Any]) -> dict[str, Any]:
    reply = await rpc(client, "batch.create_project_structure", **structure)
    assert reply["type"] == "result", reply
    data = reply["data"]
    assert isinstance(data, dict)
    return data


async def refused(client: WsClient, structure: dict[str, Any], code: str) -> dict[str, Any]:
    reply = await rpc(client, "batch.create_project_structure", **structure)
    assert (reply["type"], reply["code"]) == ("error", code), reply
    return reply


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table}", timeout=TIMEOUT)
        for table in TABLES
    }


NOTHING = dict.fromkeys(TABLES, 0)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


async def test_the_seed_example_creates_the_project_and_its_three_pages(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await new_user(make_user)
    client = await signed_in(ws_client, user)
    data = await create(client, seed_example(user))
    assert (data["project"]["name"], data["project"]["user_id"]) == ("My New Website", str(user))
    assert (data["wireframes"], data["style_guides"]) == ([], [])
    stored = await conn.fetchrow(
        "SELECT s.title, s.pages FROM sitemaps s JOIN projects p ON p.id = s.project_id "
        "WHERE p.user_id = $1",
        user,
        timeout=TIMEOUT,
    )
    assert stored is not None
    assert stored["title"] == "Main Site Structure"
    assert orjson.loads(stored["pages"]) == seed_example(user)["sitemap"]["pages"]
    assert data["sitemap"]["pages"] == seed_example(user)["sitemap"]["pages"]


async def test_the_structure_is_linked_and_a_new_subscriber_gets_all_of_it(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await new_user(make_user)
    data = await create(await signed_in(ws_client, user), full_structure(user))
    sitemap, wireframes, guides = data["sitemap"], data["wireframes"], data["style_guides"]
    assert sitemap["project_id"] == data["project"]["id"]
    assert [w["sitemap_id"] for w in wireframes] == [sitemap["id"]] * 2
    assert (wireframes[0]["layout"], wireframes[0]["components"]) == (
        {"hero": {"size": "large"}},
        ["hero"],
    )
    assert (guides[0]["wireframe_id"], guides[0]["colors"]) == (
        wireframes[1]["id"],
        {"primary": "#c0392b"},
    )
    authors = await conn.fetch("SELECT user_id FROM version_history", timeout=TIMEOUT)
    assert [row["user_id"] for row in authors] == [user] * 5

    _, snapshot = await (await signed_in(ws_client, user)).subscribe(UUID(data["project"]["id"]))
    assert snapshot is not None
    assert snapshot["project"] == data["project"]
    assert ids(snapshot["sitemaps"]) == [sitemap["id"]]
    assert sorted(ids(snapshot["wireframes"])) == sorted(ids(wireframes))
    assert ids(snapshot["style_guides"]) == ids(guides)


async def test_subscribers_get_the_burst_from_one_commit(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Resuming from a position taken before the batch replays the new project's changes:
    every row and its version, all with the same commit in their position."""
    user = await new_user(make_user)
    other = await asyncio.wait_for(make_project(conn, user, name="Earlier"), TIMEOUT)
    _, before = await (await signed_in(ws_client, user)).subscribe(other)
    assert before is not None
    data = await create(await signed_in(ws_client, user), full_structure(user))

    follower = await signed_in(ws_client, user)
    ok = await follower.request(
        {"type": "subscribe", "project_id": data["project"]["id"], "since": before["position"]}
    )
    assert (ok["type"], ok["data"]["resumed"]) == ("ok", True), ok
    changes = [await follower.recv_type("change") for _ in range(2 * 5)]
    await follower.ping()

    created = {"project": [data["project"]], "sitemap": [data["sitemap"]]}
    created |= {"wireframe": data["wireframes"], "style-guide": data["style_guides"]}
    expected = {(entity, row["id"]) for entity, rows in created.items() for row in rows}
    entities = {(c["entity"], c["new"]["id"]) for c in changes if c["entity"] != "version"}
    versioned = {c["new"]["entity_id"] for c in changes if c["entity"] == "version"}
    assert entities == expected
    assert versioned == {row_id for _, row_id in expected}
    assert {c["op"] for c in changes} == {"insert"}
    positions = [c["position"] for c in changes]
    assert positions == sorted(set(positions))
    assert len({position.rsplit(".", 1)[0] for position in positions}) == 1, positions


async def test_a_failure_in_the_last_part_creates_nothing(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """jsonb cannot hold \\u0000: the database rejects the style guide, after the project,
    sitemap and wireframes were inserted in the same transaction."""
    user = await new_user(make_user)
    client = await signed_in(ws_client, user)
    reply = await refused(client, full_structure(user, colors={"primary": "\u0000"}), "invalid")
    assert reply["details"]["sqlstate"].startswith("22")
    assert await row_counts(conn) == NOTHING
    await client.ping()


async def test_another_owner_is_forbidden_and_creates_nothing(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user, someone_else = await new_user(make_user), await new_user(make_user)
    client = await signed_in(ws_client, user)
    await refused(client, full_structure(someone_else), "forbidden")
    assert await row_counts(conn) == NOTHING


async def test_a_style_guide_for_a_missing_wireframe_is_bad_params(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await new_user(make_user)
    client = await signed_in(ws_client, user)
    structure = {**full_structure(user), "wireframes": [{"title": "Only one"}]}
    reply = await refused(client, structure, "invalid_params")
    assert "style_guides.0.wireframe_index 1 names no wireframe" in reply["message"]
    assert await row_counts(conn) == NOTHING
