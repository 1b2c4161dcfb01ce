"""The schema's utility functions: session duration, version numbering, session
analytics and clean-up, and who may call them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from db.acting_user import acting_as

UserFactory = Callable[..., Awaitable[uuid.UUID]]

START = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


async def add_session(
    conn: asyncpg.Connection,
    user_id: uuid.UUID,
    *,
    step: str = "initializing",
    status: str = "active",
    started_at: dt.datetime | None = None,
    ended_at: dt.datetime | None = None,
    duration: int | None = None,
    age: dt.timedelta | None = None,
) -> uuid.UUID:
    """Insert a builder session; `age` backdates created_at, which the windowed
    functions look at."""
    session: uuid.UUID = await conn.fetchval(
        "INSERT INTO builder_sessions "
        "(user_id, session_token, status, current_step, started_at, ended_at, duration, created_at)"
        " VALUES ($1, $2, $3, $4, coalesce($5, now()), $6, $7, now() - coalesce($8, interval '0'))"
        " RETURNING id",
        user_id,
        uuid.uuid4().hex,
        status,
        step,
        started_at,
        ended_at,
        duration,
        age,
    )
    return session


async def duration_of(conn: asyncpg.Connection, session: uuid.UUID) -> int | None:
    """The stored duration of a session, in seconds."""
    duration: int | None = await conn.fetchval(
        "SELECT duration FROM builder_sessions WHERE id = $1", session
    )
    return duration


# --- update_session_duration -------------------------------------------------------

LENGTHS = [dt.timedelta(0), dt.timedelta(minutes=5, seconds=30), dt.timedelta(hours=26, seconds=7)]


@pytest.mark.parametrize("length", LENGTHS, ids=str)
async def test_ending_a_session_computes_its_duration(
    conn: asyncpg.Connection, make_user: UserFactory, length: dt.timedelta
) -> None:
    session = await add_session(conn, await make_user(), started_at=START)
    assert await duration_of(conn, session) is None

    await conn.execute(
        "UPDATE builder_sessions SET ended_at = $1, status = 'completed' WHERE id = $2",
        START + length,
        session,
    )

    assert await duration_of(conn, session) == int(length.total_seconds())


@pytest.mark.parametrize("length", LENGTHS, ids=str)
async def test_inserting_an_ended_session_computes_its_duration(
    conn: asyncpg.Connection, make_user: UserFactory, length: dt.timedelta
) -> None:
    session = await add_session(
        conn, await make_user(), status="completed", started_at=START, ended_at=START + length
    )

    assert await duration_of(conn, session) == int(length.total_seconds())


async def test_correcting_the_end_of_a_session_recomputes_its_duration(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    session = await add_session(
        conn,
        await make_user(),
        status="completed",
        started_at=START,
        ended_at=START + dt.timedelta(seconds=100),
    )

    await conn.execute(
        "UPDATE builder_sessions SET ended_at = $1 WHERE id = $2",
        START + dt.timedelta(seconds=250),
        session,
    )

    assert await duration_of(conn, session) == 250


# --- get_next_version --------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "expected"),
    [([], 1), ([1], 2), ([1, 2, 3], 4), ([1, 5], 6)],
)
async def test_get_next_version_is_one_past_the_highest(
    conn: asyncpg.Connection, make_user: UserFactory, existing: list[int], expected: int
) -> None:
    author = await make_user()
    entity = uuid.uuid4()
    for number in existing:
        await conn.execute(
            "INSERT INTO version_history (entity_type, entity_id, version_number, user_id) "
            "VALUES ('sitemaps', $1, $2, $3)",
            entity,
            number,
            author,
        )

    assert await conn.fetchval("SELECT get_next_version('sitemaps', $1)", entity) == expected
    # Numbering is per entity type: the same id under another type starts afresh.
    assert await conn.fetchval("SELECT get_next_version('wireframes', $1)", entity) == 1


# --- get_session_analytics ---------------------------------------------------------


@dataclass(frozen=True)
class Analytics:
    """One row of get_session_analytics."""

    total_sessions: int
    avg_duration: Decimal | None
    completed_sessions: int
    most_common_step: str | None
    sessions_per_day: Decimal  # to 6 places: the database divides to its own precision


def per_day(sessions: int, days: int) -> Decimal:
    """sessions / days to the 6 places Analytics keeps."""
    return round(Decimal(sessions) / Decimal(days), 6)


async def analytics(conn: asyncpg.Connection, user_id: uuid.UUID, days: Any = 30) -> Analytics:
    """get_session_analytics(user_id, days) as the connection's current caller."""
    row = await conn.fetchrow("SELECT * FROM get_session_analytics($1, $2)", user_id, days)
    assert row is not None
    return Analytics(**{**row, "sessions_per_day": round(row["sessions_per_day"], 6)})


async def analytics_as(
    conn: asyncpg.Connection, actor: uuid.UUID, user_id: uuid.UUID, days: int = 30
) -> Analytics:
    """get_session_analytics(user_id, days) asked by the signed-in user `actor`."""
    async with acting_as(conn, actor):
        return await analytics(conn, user_id, days)


async def test_analytics_summarises_the_users_sessions(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user, other = await make_user(), await make_user()
    # Inserted first, and the only active one: a "first active session" answer would say b.
    await add_session(conn, user, step="b", status="active")
    await add_session(
        conn,
        user,
        step="a",
        status="completed",
        started_at=START,
        ended_at=START + dt.timedelta(seconds=100),
    )
    await add_session(
        conn,
        user,
        step="a",
        status="cancelled",
        started_at=START,
        ended_at=START + dt.timedelta(seconds=300),
    )
    # Not ended, yet carrying a stray duration: must not count towards the average.
    await add_session(conn, user, step="c", status="paused", duration=9999)
    # Another user's sessions and this user's sessions outside the window do not count.
    for _ in range(3):
        await add_session(conn, other, step="c", status="completed")
    await add_session(
        conn,
        user,
        step="c",
        status="completed",
        started_at=START,
        ended_at=START + dt.timedelta(seconds=5000),
        age=dt.timedelta(days=40),
    )

    result = await analytics(conn, user, 30)

    assert result == Analytics(
        total_sessions=4,
        avg_duration=Decimal(200),
        completed_sessions=1,
        most_common_step="a",
        sessions_per_day=per_day(4, 30),
    )


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["a", "a", "b"], "a"),
        (["b", "a", "a"], "a"),
        (["b", "b", "a"], "b"),
        (["a", "b"], "a"),
        (["b", "a"], "a"),
        (["c", "b", "c", "a", "b"], "b"),
    ],
)
async def test_analytics_most_common_step_breaks_ties_alphabetically(
    conn: asyncpg.Connection, make_user: UserFactory, steps: list[str], expected: str
) -> None:
    user = await make_user()
    for step in steps:
        await add_session(conn, user, step=step)

    assert (await analytics(conn, user)).most_common_step == expected


async def test_analytics_of_a_user_without_sessions(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    result = await analytics(conn, await make_user(), 7)

    assert result == Analytics(
        total_sessions=0,
        avg_duration=None,
        completed_sessions=0,
        most_common_step=None,
        sessions_per_day=per_day(0, 7),
    )


@pytest.mark.parametrize(("days", "expected_total"), [(1, 1), (7, 2), (30, 3), (60, 4)])
async def test_analytics_counts_only_sessions_inside_the_window(
    conn: asyncpg.Connection, make_user: UserFactory, days: int, expected_total: int
) -> None:
    user = await make_user()
    for age_in_days in (0, 3, 10, 40):
        await add_session(conn, user, age=dt.timedelta(days=age_in_days, hours=1))

    result = await analytics(conn, user, days)

    assert result.total_sessions == expected_total
    assert result.sessions_per_day == per_day(expected_total, days)


@pytest.mark.parametrize("days", [0, -5, None])
async def test_analytics_rejects_a_window_under_one_day(
    conn: asyncpg.Connection, make_user: UserFactory, days: int | None
) -> None:
    user = await make_user()

    with pytest.raises(asyncpg.InvalidParameterValueError):
        await analytics(conn, user, days)


async def test_signed_in_user_gets_their_own_analytics(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user, other = await make_user(), await make_user()
    await add_session(conn, user, step="a", status="completed")
    await add_session(conn, other, step="b")

    result = await analytics_as(conn, user, user)

    assert (result.total_sessions, result.completed_sessions, result.most_common_step) == (
        1,
        1,
        "a",
    )


async def test_signed_in_user_cannot_get_another_users_analytics(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user, other = await make_user(), await make_user()
    await add_session(conn, other, step="b")

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await analytics_as(conn, user, other)


async def test_gateway_gets_any_users_analytics(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await make_user()
    await add_session(conn, user, step="b")
    await add_session(conn, user, step="b")

    result = await analytics(conn, user)

    assert (result.total_sessions, result.most_common_step) == (2, "b")


# --- cleanup_old_sessions ----------------------------------------------------------

# (age in days, status, removed by the clean-up)
CLEANUP_CASES = [
    (40, "completed", True),
    (31, "cancelled", True),
    (40, "active", False),
    (40, "paused", False),
    (29, "completed", False),
    (10, "cancelled", False),
    (0, "completed", False),
    (0, "active", False),
]


async def test_cleanup_removes_only_old_finished_sessions(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    user = await make_user()
    expected_kept = set()
    for age_in_days, status, removed in CLEANUP_CASES:
        session = await add_session(conn, user, status=status, age=dt.timedelta(days=age_in_days))
        if not removed:
            expected_kept.add(session)

    deleted = await conn.fetchval("SELECT cleanup_old_sessions()")

    kept = {row["id"] for row in await conn.fetch("SELECT id FROM builder_sessions")}
    assert kept == expected_kept
    assert deleted == sum(removed for *_, removed in CLEANUP_CASES)
    assert await conn.fetchval("SELECT cleanup_old_sessions()") == 0


# --- create_version_history and privileges -----------------------------------------


async def test_create_version_history_writes_the_next_number(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type) VALUES ($1, 'Site', 'website') RETURNING id",
        owner,
    )

    version_id = await conn.fetchval(
        "SELECT create_version_history('projects', $1, $2, $3, $4, 'Milestone', true)",
        project,
        owner,
        '{"name": {"old": "a", "new": "b"}}',
        '{"name": "b"}',
    )

    row = await conn.fetchrow(
        "SELECT entity_type, entity_id, version_number, user_id, changes, data, message, is_major "
        "FROM version_history WHERE id = $1",
        version_id,
    )
    assert row is not None
    assert {**row, "changes": json.loads(row["changes"]), "data": json.loads(row["data"])} == {
        "entity_type": "projects",
        "entity_id": project,
        "version_number": 2,
        "user_id": owner,
        "changes": {"name": {"old": "a", "new": "b"}},
        "data": {"name": "b"},
        "message": "Milestone",
        "is_major": True,
    }


async def test_create_version_history_starts_an_unknown_entity_at_one(
    conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    entity = uuid.uuid4()

    version_id = await conn.fetchval(
        "SELECT create_version_history('wireframes', $1, $2)", entity, await make_user()
    )

    assert (
        await conn.fetchval("SELECT version_number FROM version_history WHERE id = $1", version_id)
        == 1
    )


# function -> (its call, how many of (project id, the project's owner) it takes)
SERVER_ONLY_CALLS = {
    "create_version_history": ("SELECT create_version_history('projects', $1, $2)", 2),
    "cleanup_old_sessions": ("SELECT cleanup_old_sessions()", 0),
    "claim_next_version": ("SELECT claim_next_version('projects', $1)", 1),
}


@pytest.mark.parametrize("function", list(SERVER_ONLY_CALLS))
async def test_users_cannot_call_server_only_functions(
    conn: asyncpg.Connection, make_user: UserFactory, function: str
) -> None:
    owner = await make_user()
    project = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type) VALUES ($1, 'Site', 'website') RETURNING id",
        owner,
    )
    await add_session(conn, owner, status="completed", age=dt.timedelta(days=40))
    call, arity = SERVER_ONLY_CALLS[function]

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with acting_as(conn, owner):
            await conn.fetchval(call, *(project, owner)[:arity])

    # Nothing forged, nothing purged.
    assert await conn.fetchval("SELECT count(*) FROM version_history") == 1
    assert await conn.fetchval("SELECT count(*) FROM builder_sessions") == 1


# JSON Merge Patch (RFC 7396), the examples of its appendix A


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
async def test_jsonb_merge_patch(
    conn: asyncpg.Connection, target: object, patch: object, result: object
) -> None:
    merged = await conn.fetchval(
        "SELECT jsonb_merge_patch($1::jsonb, $2::jsonb)::text",
        orjson.dumps(target).decode(),
        orjson.dumps(patch).decode(),
    )
    assert orjson.loads(merged) == result
