"""gateway.core.authorization: access as of each position, and what a resume may replay.

The rule itself is checked against PostgreSQL's row-level security in
test_rls_agrees_with_the_access_lists; the replay plans are pure and checked here on
made-up histories, then through the protocols in test_gateway_resume and
test_phoenix_gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import pytest

from db.acting_user import acting_as
from db.feed import Position
from db.queries import VisibilitySnapshot
from gateway.core.authorization import ANONYMOUS, Acl, AclChange, Level, plan_replay
from tests.conftest import UserFactory
from tests.gateway_fixtures import make_project

OWNER, MEMBER, READER = uuid4(), uuid4(), uuid4()
PRIVATE = Acl(OWNER, frozenset({MEMBER}), public=False)
PUBLIC = Acl(OWNER, frozenset({MEMBER}), public=True)
WITHOUT_MEMBER = Acl(OWNER, frozenset(), public=False)


@dataclass(frozen=True)
class Made:
    """A history entry as gateway.history.Entry has it."""

    position: Position
    xid: int
    members_only: bool = False
    acl: AclChange | None = None


def history(*kinds: object) -> list[Made]:
    """Entries at transactions 1, 2, 3…: "row", "members" (a version or session) or
    an AclChange (a change of the project row)."""
    made = []
    for txn, kind in enumerate(kinds, start=1):
        position = Position("r0", txn, 1)
        if isinstance(kind, AclChange):
            made.append(Made(position, txn, acl=kind))
        else:
            made.append(Made(position, txn, members_only=kind == "members"))
    return made


SEES_ALL = VisibilitySnapshot(xmin=100, xmax=100, in_progress=frozenset())


def test_a_member_all_along_gets_everything() -> None:
    entries = history("row", "members", "row")
    plan = plan_replay(MEMBER, PRIVATE, SEES_ALL, entries)
    assert (plan.entries, plan.level, plan.refused) == (entries, Level.WRITE, None)


def test_a_public_reader_gets_no_members_only_rows() -> None:
    entries = history("row", "members", "row")
    plan = plan_replay(READER, PUBLIC, SEES_ALL, entries)
    assert plan.entries == [entries[0], entries[2]]
    assert plan.level is Level.READ


def test_who_gained_access_since_gets_nothing_replayed() -> None:
    entries = history("row", AclChange(PRIVATE, PUBLIC), "row")
    plan = plan_replay(READER, PUBLIC, SEES_ALL, entries)
    assert plan.entries == []
    assert plan.refused is not None


def test_who_lost_access_and_got_it_back_gets_nothing_replayed() -> None:
    entries = history(AclChange(PRIVATE, WITHOUT_MEMBER), "row", AclChange(WITHOUT_MEMBER, PRIVATE))
    assert plan_replay(MEMBER, PRIVATE, SEES_ALL, entries).refused is not None


def test_members_only_rows_follow_the_access_at_their_own_position() -> None:
    entries = history("members", AclChange(PUBLIC, Acl(OWNER, frozenset(), True)), "members")
    plan = plan_replay(MEMBER, Acl(OWNER, frozenset(), True), SEES_ALL, entries)
    assert plan.entries == entries[:2]
    assert plan.level is Level.READ


def test_changes_the_snapshot_did_not_see_are_walked_forwards() -> None:
    """The snapshot saw transactions 1 and 2; 3 made the project public after it."""
    entries = history("row", "row", AclChange(PRIVATE, PUBLIC), "row")
    seen = VisibilitySnapshot(xmin=3, xmax=3, in_progress=frozenset())
    assert plan_replay(READER, PRIVATE, seen, entries).refused is not None
    plan = plan_replay(MEMBER, PRIVATE, seen, entries)
    assert (plan.entries, plan.level) == (entries, Level.WRITE)


def test_a_project_created_since_is_replayed_from_its_creation() -> None:
    entries = history(AclChange(None, PRIVATE), "row", "members")
    plan = plan_replay(MEMBER, PRIVATE, SEES_ALL, entries)
    assert (plan.entries, plan.refused) == (entries, None)
    assert plan_replay(READER, PRIVATE, SEES_ALL, entries).refused is not None


def test_a_deleted_project_replays_nothing() -> None:
    entries = history("row", AclChange(PRIVATE, None))
    assert plan_replay(OWNER, None, SEES_ALL, entries).refused is not None


def test_nothing_to_replay_keeps_the_access_of_the_snapshot() -> None:
    plan = plan_replay(READER, PUBLIC, SEES_ALL, [])
    assert (plan.entries, plan.level, plan.refused) == ([], Level.READ, None)


@pytest.mark.parametrize("public", [False, True])
async def test_rls_agrees_with_the_access_lists(
    conn: asyncpg.Connection, make_user: UserFactory, public: bool
) -> None:
    owner, member, stranger = await make_user(), await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[member], public=public)
    row = await conn.fetchrow(
        "SELECT user_id, collaborators, is_public FROM projects WHERE id = $1", project
    )
    acl = Acl.of(dict(row) if row is not None else None)
    assert acl is not None
    for user in (owner, member, stranger):
        assert acl.level(user) is await rls_level(conn, user, project)
    assert acl.level(ANONYMOUS) is (Level.READ if public else Level.NONE)


async def rls_level(conn: asyncpg.Connection, user: UUID, project: UUID) -> Level:
    async with conn.transaction(), acting_as(conn, user):
        if not await conn.fetchval("SELECT public.can_read_project($1)", project):
            return Level.NONE
        editable = await conn.fetchval("SELECT public.can_edit_project($1)", project)
    return Level.WRITE if editable else Level.READ
