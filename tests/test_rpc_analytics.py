"""`analytics.*` over a real socket: numbers per role, presence, the caller's sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
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


async def bounded(awaitable: Awaitable[T]) -> T:
    """Row helpers have no timeout of their own; a hung database must fail the test."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def make_session(
    conn: asyncpg.Connection,
    user: UUID,
    *,
    project: UUID | None = None,
    status: str = "active",
    step: str = "initializing",
    seconds: int | None = None,
    days_ago: int = 0,
) -> None:
    """A builder session, `seconds` long when given (ended), started `days_ago` days ago."""
    await conn.execute(
        """
        INSERT INTO builder_sessions
            (user_id, project_id, session_token, status, current_step, created_at, started_at,
             ended_at)
        SELECT $1, $2, $3, $4, $5, start, start,
               start + make_interval(secs => $6::integer)
        FROM (SELECT now() - make_interval(days => $7) AS start) s
        """,
        user,
        project,
        uuid4().hex,
        status,
        step,
        seconds,
        days_ago,
        timeout=TIMEOUT,
    )


@dataclass(frozen=True)
class Cast:
    """A public project with content and sessions, and one user per role."""

    project: UUID
    users: dict[str, UUID]


@pytest.fixture
async def cast(conn: asyncpg.Connection, make_user: UserFactory) -> Cast:
    owner, collaborator, reader = [await bounded(make_user()) for _ in range(3)]
    project = await bounded(
        make_project(conn, owner, collaborators=[collaborator], public=True, name="Bakery")
    )
    sitemap = await bounded(make_sitemap(conn, project))
    home = await bounded(make_wireframe(conn, sitemap, "Home"))
    await bounded(make_wireframe(conn, sitemap, "About"))
    await bounded(make_style_guide(conn, home))
    await conn.execute(
        "UPDATE wireframes SET title = 'Home v2' WHERE id = $1", home, timeout=TIMEOUT
    )
    for user, status in [
        (owner, "active"),
        (owner, "completed"),
        (collaborator, "paused"),
        (collaborator, "active"),
        (collaborator, "cancelled"),
    ]:
        await make_session(conn, user, project=project, status=status)
    users = {"owner": owner, "collaborator": collaborator, "reader": reader}
    return Cast(project, users)


async def stats(client: WsClient, project: UUID) -> dict[str, Any]:
    reply = await rpc(client, "analytics.get_project_stats", project_id=str(project))
    assert reply["type"] == "result", reply
    data = reply["data"]
    assert isinstance(data, dict)
    return data


async def last_change(conn: asyncpg.Connection) -> datetime:
    """The newest write to the project's content (the fixture has one project)."""
    newest: datetime = await conn.fetchval(
        """
        SELECT max(greatest(created_at, updated_at)) FROM (
            SELECT created_at, updated_at FROM projects
            UNION ALL SELECT created_at, updated_at FROM sitemaps
            UNION ALL SELECT created_at, updated_at FROM wireframes
            UNION ALL SELECT created_at, updated_at FROM style_guides
        ) rows
        """,
        timeout=TIMEOUT,
    )
    return newest


@pytest.mark.parametrize("role", ["owner", "collaborator"])
async def test_members_see_every_count(
    ws_client: Connect, conn: asyncpg.Connection, cast: Cast, role: str
) -> None:
    client = await signed_in(ws_client, cast.users[role])
    data = await stats(client, cast.project)
    assert datetime.fromisoformat(data.pop("last_activity")) == await last_change(conn)
    assert data == {
        "project_id": str(cast.project),
        "sitemaps": 1,
        "wireframes": 2,
        "style_guides": 1,
        # One per insert (5), plus the wireframe's rename.
        "versions": 6,
        "sessions": {"active": 2, "paused": 1, "completed": 1, "cancelled": 1},
        "editors_online": 0,
    }


async def test_public_reader_sees_content_counts_but_no_sessions_or_history(
    ws_client: Connect, conn: asyncpg.Connection, cast: Cast
) -> None:
    client = await signed_in(ws_client, cast.users["reader"])
    data = await stats(client, cast.project)
    assert datetime.fromisoformat(data.pop("last_activity")) == await last_change(conn)
    assert (data["sitemaps"], data["wireframes"], data["style_guides"]) == (1, 2, 1)
    assert data["versions"] == 0
    assert data["sessions"] == {"active": 0, "paused": 0, "completed": 0, "cancelled": 0}


async def test_stranger_gets_not_found_for_a_private_project(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner, stranger = await bounded(make_user()), await bounded(make_user())
    project = await bounded(make_project(conn, owner))
    client = await signed_in(ws_client, stranger)
    reply = await rpc(client, "analytics.get_project_stats", project_id=str(project))
    assert (reply["type"], reply["code"]) == ("error", "not_found")
    missing = await rpc(client, "analytics.get_project_stats", project_id=str(uuid4()))
    assert (missing["type"], missing["code"]) == ("error", "not_found")


async def test_editors_online_counts_each_subscribed_user_once(
    ws_client: Connect, cast: Cast
) -> None:
    owner, collaborator = cast.users["owner"], cast.users["collaborator"]
    asking = await signed_in(ws_client, owner)
    assert (await stats(asking, cast.project))["editors_online"] == 0

    tabs = [await signed_in(ws_client, user) for user in (owner, owner, collaborator)]
    for tab in tabs:
        await tab.subscribe(cast.project, snapshot=False)
    assert (await stats(asking, cast.project))["editors_online"] == 2

    left = await tabs[2].request({"type": "unsubscribe", "project_id": str(cast.project)})
    assert left["type"] == "ok", left
    assert (await stats(asking, cast.project))["editors_online"] == 1


async def test_user_analytics_counts_only_the_callers_sessions_in_the_window(
    ws_client: Connect, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user, other = await bounded(make_user()), await bounded(make_user())
    await make_session(conn, user, status="completed", step="publish", seconds=60)
    await make_session(conn, user, status="completed", step="publish", seconds=120)
    await make_session(conn, user, status="active", step="wireframe-design")
    await make_session(conn, user, status="completed", step="sitemap", seconds=600, days_ago=40)
    await make_session(conn, other, status="completed", step="publish", seconds=5)
    client = await signed_in(ws_client, user)

    month = await rpc(client, "analytics.get_user_analytics")
    assert month["type"] == "result", month
    assert month["data"] == {
        "days": 30,
        "total_sessions": 3,
        "avg_duration": 90.0,
        "completed_sessions": 2,
        "most_common_step": "publish",
        "sessions_per_day": pytest.approx(3 / 30),
    }

    year = await rpc(client, "analytics.get_user_analytics", days=365)
    assert year["type"] == "result", year
    data = year["data"]
    assert isinstance(data, dict)
    assert (data["total_sessions"], data["completed_sessions"], data["avg_duration"]) == (4, 3, 260)


@pytest.mark.parametrize("days", [0, 366, "a week"])
async def test_user_analytics_window_is_validated(
    ws_client: Connect, make_user: UserFactory, days: object
) -> None:
    client = await signed_in(ws_client, await bounded(make_user()))
    reply = await rpc(client, "analytics.get_user_analytics", days=days)
    assert (reply["type"], reply["code"]) == ("error", "invalid_params")
    details = reply["details"]
    assert isinstance(details, dict)
    assert [error["loc"] for error in details["errors"]] == ["days"]
