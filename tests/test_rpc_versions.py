"""`version.*` over a real socket and a real database: who may read, name and revert
versions, pagination, and what a revert looks like to the history and to subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    Connect,
    WsClient,
    make_project,
    make_sitemap,
    make_style_guide,
)
from tests.test_rpc import rpc, signed_in

pytestmark = pytest.mark.hosted_postgres

T = TypeVar("T")
Frame = dict[str, Any]

ENTITY_TABLES = ("projects", "sitemaps", "wireframes", "style_guides")


async def bounded(awaitable: Awaitable[T]) -> T:
    """Row helpers have no timeout of their own; a hung database must fail the test."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


@dataclass(frozen=True)
class Site:
    """A project with one of everything, an owner and a collaborator."""

    owner: UUID
    collaborator: UUID
    project: UUID
    sitemap: UUID
    wireframe: UUID
    style_guide: UUID

    def entity(self, table: str) -> UUID:
        return {
            "projects": self.project,
            "sitemaps": self.sitemap,
            "wireframes": self.wireframe,
            "style_guides": self.style_guide,
        }[table]


async def build_site(conn: asyncpg.Connection, make_user: UserFactory, public: bool) -> Site:
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator], public=public)
    sitemap = await make_sitemap(conn, project)
    wireframe: UUID = await conn.fetchval(
        "INSERT INTO wireframes (sitemap_id, title, layout) VALUES ($1, 'Home', $2::jsonb) "
        "RETURNING id",
        sitemap,
        orjson.dumps({"blocks": ["hero"]}).decode(),
    )
    style_guide = await make_style_guide(conn, wireframe)
    return Site(owner, collaborator, project, sitemap, wireframe, style_guide)


@pytest.fixture
async def site(conn: asyncpg.Connection, make_user: UserFactory) -> Site:
    return await bounded(build_site(conn, make_user, public=False))


async def edit(conn: asyncpg.Connection, user: UUID, statement: str, *args: object) -> None:
    """One statement in a transaction of its own as `user`, as any editor's write."""

    async def run() -> None:
        async with acting_as(conn, user):
            await conn.execute(statement, *args)

    await bounded(run())


async def history(conn: asyncpg.Connection, entity_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM version_history WHERE entity_id = $1 ORDER BY version_number",
        entity_id,
        timeout=TIMEOUT,
    )
    return rows


async def row_version(conn: asyncpg.Connection, table: str, entity_id: UUID) -> int:
    """The row's own version column (sitemaps, wireframes, style guides)."""
    version: int = await conn.fetchval(
        f"SELECT version FROM {table} WHERE id = $1", entity_id, timeout=TIMEOUT
    )
    return version


def result(reply: Frame) -> Any:
    assert reply["type"] == "result", reply
    return reply["data"]


def refused(reply: Frame, code: str) -> None:
    assert (reply["type"], reply.get("code")) == ("error", code), reply


async def version_id(conn: asyncpg.Connection, entity_id: UUID, number: int) -> UUID:
    found: UUID = await conn.fetchval(
        "SELECT id FROM version_history WHERE entity_id = $1 AND version_number = $2",
        entity_id,
        number,
        timeout=TIMEOUT,
    )
    return found


# Who may do what


@pytest.mark.parametrize("role", ["owner", "collaborator"])
async def test_members_read_name_and_revert(
    ws_client: Connect, site: Site, conn: asyncpg.Connection, role: str
) -> None:
    user = site.owner if role == "owner" else site.collaborator
    client = await signed_in(ws_client, user)
    v1 = await version_id(conn, site.wireframe, 1)

    page = result(
        await rpc(
            client, "version.get_by_entity", entity_type="wireframes", entity_id=str(site.wireframe)
        )
    )
    assert [v["version_number"] for v in page["versions"]] == [1]
    assert page["next_before_version"] is None
    assert result(await rpc(client, "version.get", version_id=str(v1)))["id"] == str(v1)

    named = result(
        await rpc(
            client,
            "version.checkpoint",
            entity_type="wireframes",
            entity_id=str(site.wireframe),
            message="Named",
        )
    )
    reverted = result(await rpc(client, "version.revert", version_id=str(v1)))
    assert [
        (named["version_number"], named["user_id"]),
        (reverted["version_number"], reverted["user_id"]),
    ] == [(2, str(user)), (3, str(user))]


@pytest.mark.parametrize(
    ("public", "expected"),
    [
        # A public project's reader sees the entity, not its history (members only).
        pytest.param(True, ("forbidden", "not_found", "forbidden", "not_found"), id="reader"),
        pytest.param(False, ("not_found",) * 4, id="stranger"),
    ],
)
async def test_non_members_are_refused_and_write_nothing(
    ws_client: Connect,
    conn: asyncpg.Connection,
    make_user: UserFactory,
    public: bool,
    expected: tuple[str, str, str, str],
) -> None:
    site = await bounded(build_site(conn, make_user, public=public))
    outsider = await bounded(make_user())
    client = await signed_in(ws_client, outsider)
    v1 = str(await version_id(conn, site.wireframe, 1))
    target = {"entity_type": "wireframes", "entity_id": str(site.wireframe)}

    replies = [
        await rpc(client, "version.get_by_entity", **target),
        await rpc(client, "version.get", version_id=v1),
        await rpc(client, "version.checkpoint", **target, message="Mine now"),
        await rpc(client, "version.revert", version_id=v1),
    ]

    assert [(r["type"], r.get("code")) for r in replies] == [("error", c) for c in expected]
    assert len(await history(conn, site.wireframe)) == 1
    assert await row_version(conn, "wireframes", site.wireframe) == 1


async def test_other_projects_and_gone_entities_are_not_found(
    ws_client: Connect, site: Site, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Owning some project gives no reach into another's history; an entity that no
    longer exists has no history to revert to, for anyone."""
    other_owner = await bounded(make_user())
    await bounded(make_project(conn, other_owner, name="Mine"))
    outsider = await signed_in(ws_client, other_owner)
    member = await signed_in(ws_client, site.owner)
    v1 = str(await version_id(conn, site.wireframe, 1))

    refused(await rpc(outsider, "version.revert", version_id=v1), "not_found")
    refused(await rpc(member, "version.revert", version_id=str(uuid4())), "not_found")
    refused(
        await rpc(
            member,
            "version.checkpoint",
            entity_type="wireframes",
            entity_id=str(uuid4()),
            message="Nothing",
        ),
        "not_found",
    )
    assert len(await history(conn, site.wireframe)) == 1

    await bounded(conn.execute("DELETE FROM wireframes WHERE id = $1", site.wireframe))
    refused(await rpc(member, "version.revert", version_id=v1), "not_found")


# Listing


async def test_pages_run_newest_first_and_end_with_null(
    ws_client: Connect, site: Site, conn: asyncpg.Connection
) -> None:
    for n in range(2, 8):
        await edit(
            conn,
            site.owner,
            "UPDATE wireframes SET title = $2 WHERE id = $1",
            site.wireframe,
            f"Home {n}",
        )
    client = await signed_in(ws_client, site.collaborator)
    target = {"entity_type": "wireframes", "entity_id": str(site.wireframe)}

    pages: list[list[int]] = []
    before: int | None = None
    while True:
        params = {**target, "limit": 3} | ({"before_version": before} if before else {})
        page = result(await rpc(client, "version.get_by_entity", **params))
        pages.append([v["version_number"] for v in page["versions"]])
        before = page["next_before_version"]
        if before is None:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]

    default = result(await rpc(client, "version.get_by_entity", **target))
    assert [v["version_number"] for v in default["versions"]] == [7, 6, 5, 4, 3, 2, 1]
    assert default["versions"][0]["data"]["title"] == "Home 7"


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        pytest.param({"limit": 0}, "limit", id="limit-0"),
        pytest.param({"limit": 101}, "limit", id="limit-101"),
        pytest.param({"entity_type": "builder_sessions"}, "entity_type", id="sessions"),
        pytest.param({"before_version": 0}, "before_version", id="before-0"),
    ],
)
async def test_listing_params_are_checked(
    ws_client: Connect, site: Site, params: dict[str, object], loc: str
) -> None:
    client = await signed_in(ws_client, site.owner)
    reply = await rpc(
        client,
        "version.get_by_entity",
        **{"entity_type": "wireframes", "entity_id": str(site.wireframe), **params},
    )
    refused(reply, "invalid_params")
    details: Any = reply["details"]
    assert [e["loc"] for e in details["errors"]] == [loc]


# Checkpoints


@pytest.mark.parametrize("table", ENTITY_TABLES)
async def test_checkpoint_names_the_current_state_as_the_next_version(
    ws_client: Connect, site: Site, conn: asyncpg.Connection, table: str
) -> None:
    entity = site.entity(table)
    client = await signed_in(ws_client, site.collaborator)

    named = result(
        await rpc(
            client,
            "version.checkpoint",
            entity_type=table,
            entity_id=str(entity),
            message="Before the redesign",
        )
    )

    stored = await history(conn, entity)
    assert [v["version_number"] for v in stored] == [1, 2]
    assert named["id"] == str(stored[-1]["id"])
    assert (
        named["version_number"],
        named["message"],
        named["is_major"],
        named["user_id"],
        named["changes"],
    ) == (2, "Before the redesign", True, str(site.collaborator), {})
    assert {k: v for k, v in named["data"].items() if k not in ("updated_at", "version")} == {
        k: v
        for k, v in orjson.loads(stored[0]["data"]).items()
        if k not in ("updated_at", "version")
    }
    if table != "projects":
        assert named["data"]["version"] == 2
        assert await row_version(conn, table, entity) == 2


async def test_checkpoint_may_be_minor_and_repeats(
    ws_client: Connect, site: Site, conn: asyncpg.Connection
) -> None:
    client = await signed_in(ws_client, site.owner)
    target = {"entity_type": "wireframes", "entity_id": str(site.wireframe)}

    first = result(await rpc(client, "version.checkpoint", **target, message="a", is_major=False))
    second = result(await rpc(client, "version.checkpoint", **target, message="b"))

    assert [
        (first["version_number"], first["is_major"]),
        (second["version_number"], second["is_major"]),
    ] == [(2, False), (3, True)]
    assert await row_version(conn, "wireframes", site.wireframe) == 3
    refused(await rpc(client, "version.checkpoint", **target, message=""), "invalid_params")


async def test_message_and_forced_version_end_with_the_call(
    site: Site, conn: asyncpg.Connection
) -> None:
    """In the same transaction, a later ordinary update gets its own generated message,
    and one that changes nothing records nothing: the flags do not outlive the call."""

    async def run() -> None:
        async with acting_as(conn, site.owner):
            await conn.fetchval(
                "SELECT public.checkpoint_version('wireframes', $1, 'Named')", site.wireframe
            )
            await conn.execute(
                "UPDATE wireframes SET title = 'Later' WHERE id = $1", site.wireframe
            )
            await conn.execute("UPDATE wireframes SET title = title WHERE id = $1", site.wireframe)

    await bounded(run())
    stored = await history(conn, site.wireframe)
    assert [(v["version_number"], v["message"], v["is_major"]) for v in stored[1:]] == [
        (2, "Named", True),
        (3, "Updated title", False),
    ]
    assert await row_version(conn, "wireframes", site.wireframe) == 3


@pytest.mark.parametrize(
    "function",
    [
        "versioned_write(text, uuid, jsonb, text, boolean)",
        "checkpoint_version(text, uuid, text, boolean)",
        "revert_to_version(uuid, text)",
    ],
)
async def test_only_signed_in_users_may_call_the_version_functions(
    conn: asyncpg.Connection, function: str
) -> None:
    may = await conn.fetchval(
        "SELECT array[has_function_privilege('anon', $1, 'EXECUTE'),"
        " has_function_privilege('authenticated', $1, 'EXECUTE')]",
        f"public.{function}",
        timeout=TIMEOUT,
    )
    assert may == [False, True]


# Reverting


async def test_revert_to_v1_after_three_edits_is_v5_with_v1s_layout(
    ws_client: Connect, site: Site, conn: asyncpg.Connection
) -> None:
    """The issue's acceptance: three edits, a revert by another member, five versions."""
    for n, blocks in enumerate((["hero", "cta"], ["cta"], ["grid"]), start=2):
        await edit(
            conn,
            site.owner,
            "UPDATE wireframes SET layout = $2::jsonb, title = $3 WHERE id = $1",
            site.wireframe,
            orjson.dumps({"blocks": blocks}).decode(),
            f"Home {n}",
        )
    client = await signed_in(ws_client, site.collaborator)
    v1 = await version_id(conn, site.wireframe, 1)

    reverted = result(await rpc(client, "version.revert", version_id=str(v1)))

    assert (reverted["version_number"], reverted["message"], reverted["user_id"]) == (
        5,
        "Revert to v1",
        str(site.collaborator),
    )
    assert reverted["data"]["layout"] == {"blocks": ["hero"]}
    assert reverted["changes"]["layout"] == {
        "old": {"blocks": ["grid"]},
        "new": {"blocks": ["hero"]},
    }
    row = await conn.fetchrow(
        "SELECT * FROM wireframes WHERE id = $1", site.wireframe, timeout=TIMEOUT
    )
    assert row is not None
    assert (orjson.loads(row["layout"]), row["title"], row["version"], row["sitemap_id"]) == (
        {"blocks": ["hero"]},
        "Home",
        5,
        site.sitemap,
    )

    listed = result(
        await rpc(
            client, "version.get_by_entity", entity_type="wireframes", entity_id=str(site.wireframe)
        )
    )
    assert [v["version_number"] for v in listed["versions"]] == [5, 4, 3, 2, 1]
    assert listed["versions"][0]["user_id"] == str(site.collaborator)
    assert [v["data"]["layout"] for v in listed["versions"][1:]] == [
        {"blocks": ["grid"]},
        {"blocks": ["cta"]},
        {"blocks": ["hero", "cta"]},
        {"blocks": ["hero"]},
    ]


async def test_revert_to_the_current_state_still_records_a_version(
    ws_client: Connect, site: Site, conn: asyncpg.Connection
) -> None:
    client = await signed_in(ws_client, site.owner)
    v1 = await version_id(conn, site.wireframe, 1)

    reverted = result(await rpc(client, "version.revert", version_id=str(v1), message="Back"))

    assert (reverted["version_number"], reverted["message"], reverted["changes"]) == (2, "Back", {})
    assert await row_version(conn, "wireframes", site.wireframe) == 2


async def test_project_revert_restores_content_not_sharing(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Collaborators and visibility are not content: a collaborator reverting to a
    version from before they were added keeps their access, and may revert at all.
    (Adding them is an invitation, which they accept: migration 0016.)"""
    owner, collaborator = await bounded(make_user()), await bounded(make_user())
    project = await bounded(make_project(conn, owner, name="First"))
    await edit(
        conn,
        owner,
        "UPDATE projects SET collaborators = $2, is_public = true WHERE id = $1",
        project,
        [collaborator],
    )
    await edit(conn, collaborator, "SELECT public.accept_project_invitation($1)", project)
    await edit(
        conn,
        owner,
        "UPDATE projects SET name = 'Second', data = '{\"a\": 1}' WHERE id = $1",
        project,
    )
    client = await signed_in(ws_client, collaborator)

    reverted = result(
        await rpc(client, "version.revert", version_id=str(await version_id(conn, project, 1)))
    )

    assert (reverted["version_number"], sorted(reverted["changes"])) == (5, ["data", "name"])
    row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", project, timeout=TIMEOUT)
    assert row is not None
    assert (
        row["name"],
        orjson.loads(row["data"]),
        row["collaborators"],
        row["is_public"],
        row["user_id"],
    ) == ("First", {}, [collaborator], True, owner)


async def test_concurrent_checkpoint_and_revert_keep_numbers_and_row_in_step(
    ws_client: Connect, site: Site, conn: asyncpg.Connection
) -> None:
    owner, collaborator = (
        await signed_in(ws_client, site.owner),
        await signed_in(ws_client, site.collaborator),
    )
    v1 = await version_id(conn, site.wireframe, 1)

    replies = await bounded(
        asyncio.gather(
            rpc(
                owner,
                "version.checkpoint",
                entity_type="wireframes",
                entity_id=str(site.wireframe),
                message="Named",
            ),
            rpc(collaborator, "version.revert", version_id=str(v1)),
        )
    )

    assert sorted(result(r)["version_number"] for r in replies) == [2, 3]
    assert [v["version_number"] for v in await history(conn, site.wireframe)] == [1, 2, 3]
    assert await row_version(conn, "wireframes", site.wireframe) == 3


# What subscribers see


async def changes_until_version(client: WsClient) -> list[Frame]:
    """Frames up to the next `version` change (bounded in total)."""
    frames: list[Frame] = []

    async def collect() -> None:
        while not frames or frames[-1].get("entity") != "version":
            frames.append(await client.recv())

    await bounded(collect())
    return frames


@pytest.mark.parametrize("feed_kind", ["notify", "replication"])
async def test_each_write_reaches_a_subscriber_as_one_change_and_one_version(
    ws_client: Connect, site: Site, conn: asyncpg.Connection, feed_kind: str
) -> None:
    """On either feed: the entity's change, then its version, both by the caller."""
    watcher = await signed_in(ws_client, site.owner)
    await watcher.subscribe(site.project)
    client = await signed_in(ws_client, site.collaborator)
    v1 = await version_id(conn, site.wireframe, 1)

    for method, params in (
        (
            "version.checkpoint",
            {"entity_type": "wireframes", "entity_id": str(site.wireframe), "message": "Named"},
        ),
        ("version.revert", {"version_id": str(v1)}),
    ):
        written = result(await rpc(client, method, **params))
        frames = await changes_until_version(watcher)
        assert [(f["type"], f["entity"], f["op"], f["actor"]) for f in frames] == [
            ("change", "wireframe", "update", str(site.collaborator)),
            ("change", "version", "insert", str(site.collaborator)),
        ]
        assert frames[0]["new"]["version"] == written["version_number"]
        assert frames[1]["new"]["id"] == written["id"]
        await watcher.ping()  # the next frame is the ping's reply: nothing else came


# History stays with its project


async def test_the_id_of_a_deleted_entity_cannot_be_taken_to_read_its_history(
    ws_client: Connect, site: Site, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """Versions are granted by (entity_type, entity_id) and outlive the entity: an
    outsider who created a wireframe, or a project, with a deleted one's id read the
    owner's versions, data included. Such an id is refused."""
    owner = await signed_in(ws_client, site.owner)
    for method, params in (
        ("wireframe.delete", {"id": str(site.wireframe)}),
        ("project.delete", {"project_id": str(site.project)}),
    ):
        assert (await rpc(owner, method, **params))["type"] == "result"
    outsider_id = await make_user()
    outsider = await signed_in(ws_client, outsider_id)
    mine = await make_project(conn, outsider_id)
    my_sitemap = await make_sitemap(conn, mine)

    for method, params in (
        (
            "wireframe.create",
            {"id": str(site.wireframe), "sitemap_id": str(my_sitemap), "title": "X"},
        ),
        ("project.create", {"id": str(site.project), "name": "Mine", "type": "website"}),
    ):
        reply = await rpc(outsider, method, **params)
        assert (reply["type"], reply["code"]) == ("error", "invalid"), (method, reply)
        assert reply["details"]["sqlstate"] == "23505"  # type: ignore[index]
        assert "belonged to a deleted row" in str(reply["message"])
    for entity_type, entity_id in (("wireframes", site.wireframe), ("projects", site.project)):
        page = await rpc(
            outsider, "version.get_by_entity", entity_type=entity_type, entity_id=str(entity_id)
        )
        refused(page, "not_found")
    assert await conn.fetchval(
        "SELECT count(*) FROM version_history WHERE entity_id = $1", site.wireframe
    )  # kept, and readable by nobody
