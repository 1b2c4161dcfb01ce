"""The `rpc` frame itself: lookup, params validation, error mapping, results."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest

from gateway.rpc.call import Call, Handlers, call
from gateway.rpc.methods import METHODS, MethodTableError, bind
from protocol.errors import ErrorCode
from protocol.frames import Error, Rpc
from protocol.rows import ProjectRow, SessionRow
from protocol.rpc_projects import ProjectCreate, ProjectId
from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, WsClient


async def rpc(client: WsClient, method: str, **params: object) -> dict[str, object]:
    return await client.request({"type": "rpc", "method": method, "params": params})


async def signed_in(ws_client: Connect, user: UUID) -> WsClient:
    client = await ws_client()
    await client.auth(user)
    return client


async def test_unknown_method_is_a_typed_error_naming_the_known_ones(
    ws_client: Connect, make_user: UserFactory
) -> None:
    client = await signed_in(ws_client, await make_user())
    reply = await rpc(client, "project.explode")
    assert (reply["type"], reply["code"]) == ("error", "unknown_method")
    assert "project.create" in str(reply["message"])
    await client.ping()


async def test_bad_params_name_each_problem(ws_client: Connect, make_user: UserFactory) -> None:
    client = await signed_in(ws_client, await make_user())
    reply = await rpc(client, "project.create", name="", collaborators=["nope"], colour="red")
    assert (reply["type"], reply["code"]) == ("error", "invalid_params")
    details = reply["details"]
    assert isinstance(details, dict)
    locations = {error["loc"] for error in details["errors"]}
    assert locations == {"name", "collaborators.0", "colour"}
    await client.ping()


async def test_create_then_read_back_as_owner_not_as_stranger(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection
) -> None:
    owner, stranger = await make_user(), await make_user()
    client = await signed_in(ws_client, owner)
    chosen = uuid4()
    created = await rpc(client, "project.create", id=str(chosen), name="Bakery", data={"a": 1})
    assert created["type"] == "result", created
    row = created["data"]
    assert isinstance(row, dict)
    assert (row["id"], row["user_id"], row["name"], row["data"]) == (
        str(chosen),
        str(owner),
        "Bakery",
        {"a": 1},
    )
    stored = await conn.fetchrow("SELECT user_id, name FROM projects WHERE id = $1", chosen)
    assert stored is not None
    assert (stored["user_id"], stored["name"]) == (owner, "Bakery")
    author = await conn.fetchval("SELECT user_id FROM version_history WHERE entity_id = $1", chosen)
    assert author == owner

    read = await rpc(client, "project.get_with_relations", project_id=str(chosen))
    assert read["type"] == "result"
    assert read["data"]["project"]["name"] == "Bakery"  # type: ignore[index]
    other = await signed_in(ws_client, stranger)
    denied = await rpc(other, "project.get_with_relations", project_id=str(chosen))
    assert (denied["type"], denied["code"]) == ("error", "not_found")


async def test_database_refusals_are_typed(ws_client: Connect, make_user: UserFactory) -> None:
    """A constraint violation names its column; the connection carries on."""
    client = await signed_in(ws_client, await make_user())
    first = await rpc(client, "project.create", id=str(uuid4()), name="A")
    assert first["type"] == "result"
    duplicate = await rpc(client, "project.create", id=first["data"]["id"], name="B")  # type: ignore[index]
    assert (duplicate["type"], duplicate["code"]) == ("error", "invalid")
    assert duplicate["details"] == {"sqlstate": "23505", "constraint": "projects_pkey"}
    await client.ping()


@pytest.mark.parametrize("gateway_overrides", [{"rpc_timeout_seconds": 0.5}])
async def test_a_request_stuck_behind_a_lock_times_out_and_writes_nothing(
    ws_client: Connect, make_user: UserFactory, conn: asyncpg.Connection, database_dsn: str
) -> None:
    """SITEBUILDER_RPC_TIMEOUT_SECONDS: a row locked by someone else must not hang the
    connection (its pings, its other requests) for as long as the lock is held."""
    owner = await make_user()
    client = await signed_in(ws_client, owner)
    created = await rpc(client, "project.create", name="Locked")
    project = created["data"]["id"]  # type: ignore[index]
    blocker = await asyncpg.connect(database_dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", UUID(project))
        reply = await rpc(client, "project.update", project_id=project, set={"name": "Late"})
        assert (reply["type"], reply["code"]) == ("error", "timeout")
        await client.ping()
        await transaction.rollback()
    finally:
        await blocker.close()
    assert await conn.fetchval("SELECT name FROM projects WHERE id = $1", UUID(project)) == "Locked"


async def nobody_online(_project_id: UUID) -> set[UUID]:
    return set()


async def test_database_unreachable_is_unavailable_and_retryable(
    database_dsn: str, make_user: UserFactory
) -> None:
    """No traceback and no `internal_error` when the database is gone: `unavailable`."""
    user = await make_user()
    pool = await asyncio.wait_for(asyncpg.create_pool(database_dsn, min_size=0), 10)
    assert pool is not None
    await asyncio.wait_for(pool.close(), 10)
    caller = Call(user, {}, pool, "r1", online=nobody_online)
    frame = Rpc(ref="r1", method="project.create", params={"name": "Offline"})
    reply = await asyncio.wait_for(call(METHODS, frame, caller), 10)
    assert isinstance(reply, Error)
    assert (reply.ref, reply.code) == ("r1", ErrorCode.UNAVAILABLE)


async def read_project(_call: Call, _params: ProjectId) -> None:
    """A stand-in handler: only its registration and annotation matter here."""


async def create_project(_call: Call, _params: ProjectCreate) -> None:
    """A stand-in handler taking other params than `read_project`."""


def test_method_table_binds_protocol_params_to_handlers() -> None:
    group = Handlers()
    group("x.read", writes=False)(read_project)
    method = bind({"x.read": ProjectId}, [group])["x.read"]
    assert (method.params, method.handler, method.writes) == (ProjectId, read_project, False)


def test_method_table_refuses_any_mismatch_with_protocol() -> None:
    """Missing, unknown, doubly handled and mistyped methods are all named at once."""
    first, second = Handlers(), Handlers()
    first("x.twice")(read_project)
    second("x.twice")(read_project)
    second("x.unknown")(read_project)
    second("x.mistyped")(create_project)
    catalog = {"x.twice": ProjectId, "x.missing": ProjectId, "x.mistyped": ProjectId}
    with pytest.raises(MethodTableError) as refused:
        bind(catalog, [first, second])
    message = str(refused.value)
    assert "x.twice: handlers in two groups" in message
    assert "x.missing: no handler" in message
    assert "x.unknown: a handler, but no params in protocol" in message
    assert "x.mistyped: its handler takes ProjectCreate, protocol's params are ProjectId" in message


async def read_project_row(_call: Call, _params: ProjectId) -> ProjectRow:
    """A stand-in handler declaring its result."""
    raise NotImplementedError


def test_method_table_refuses_a_handler_returning_another_result_than_protocols() -> None:
    """The `.d.ts` promises clients protocol's result type: a handler must return it."""
    group = Handlers()
    group("x.read")(read_project_row)
    with pytest.raises(MethodTableError) as refused:
        bind({"x.read": ProjectId}, [group], {"x.read": SessionRow})
    assert "x.read: its handler returns ProjectRow, protocol's result is" in str(refused.value)
    with pytest.raises(MethodTableError, match=r"x\.read: no result type in protocol"):
        bind({"x.read": ProjectId}, [group], {})
    assert (
        bind({"x.read": ProjectId}, [group], {"x.read": ProjectRow})["x.read"].params is ProjectId
    )


def test_a_group_refuses_a_second_handler_for_a_method() -> None:
    group = Handlers()
    group("x.read")(read_project)
    with pytest.raises(ValueError, match=r"two handlers registered for the rpc method 'x\.read'"):
        group("x.read")(create_project)
