"""Presence across gateway nodes, on both buses: PostgreSQL LISTEN/NOTIFY and Redis.

Several gateways (in this process, each with its own bus connection, or a real
`sitebuilder-gateway serve` subprocess) share the test's database; clients on
different nodes follow one project. Redis is a real `redis-server` started once for
the session on a free port, without persistence; each test has its own channel (and
so its own keys). Every wait is bounded; where "nothing more arrived" matters, a
`ping` round trip is the barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import asyncpg
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from gateway.app.server import Gateway
from gateway.core.channels import ProjectChannel
from gateway.presence.bus import MAX_MESSAGE_BYTES, BusPresence, PresenceTooLarge
from gateway.presence.model import PresenceUnavailable
from gateway.presence.postgres_bus import APPLICATION_PREFIX
from gateway.presence.redis_bus import CLIENT_PREFIX
from gateway.settings import Settings
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    CLOSE_TIMEOUT,
    SECRET,
    TIMEOUT,
    WsClient,
    gateway_port,
    gateway_url,
    make_project,
    open_client,
    start_gateway,
)
from tests.hosted_postgres import free_port
from tests.support import ServeProcess, cli_env, http_get
from tests.test_presence import View, connections, rpc_result
from tests.test_rpc_sessions import backdate, status_of, until_status

Frame = dict[str, Any]
REDIS_START_TIMEOUT = 10.0
NODE_TIMEOUT = 1.0  # short, so a lost node goes within a test's patience
LONG_NODE_TIMEOUT = 60.0  # when a node must go for another reason than silence
GRACE = 0.5


# Redis


def _wait_for_line(process: subprocess.Popen[bytes], text: bytes, timeout: float) -> None:
    """Read the process's output until it contains `text` (bounded)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        seen = b""
        while text not in seen:
            if not selector.select(timeout):
                raise AssertionError(f"redis-server did not start:\n{seen.decode()}")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"redis-server exited:\n{seen.decode()}")
            seen += chunk


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the session, without persistence, stopped at the end."""
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is missing: .ci/run installs it with apt"
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = subprocess.Popen(
        [server, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_line(process, b"Ready to accept connections", REDIS_START_TIMEOUT)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(REDIS_START_TIMEOUT)


# Nodes


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def bus_settings(
    gateway_settings: Settings, backend: str, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """The bus part of the settings, the same on every node of the test."""
    settings: dict[str, Any] = {
        "presence_backend": backend,
        "presence_channel": f"presence_{uuid.uuid4().hex[:12]}",
        "presence_node_timeout_seconds": NODE_TIMEOUT,
        "session_pause_grace_seconds": GRACE,
        "feed": "notify",  # no replication slot per node: presence is what is tested
    }
    if backend == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return settings


def node_settings(base: Settings, bus: dict[str, Any], name: str, **more: Any) -> Settings:
    return base.model_copy(update={**bus, "node_name": name, **more})


@asynccontextmanager
async def running_node(settings: Settings, dsn: str) -> AsyncIterator[Gateway]:
    gw, pool = await start_gateway(settings, dsn)
    try:
        async with gw.running():
            yield gw
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)


@asynccontextmanager
async def running_nodes(
    base: Settings, bus: dict[str, Any], dsn: str, count: int, **more: Any
) -> AsyncIterator[list[Gateway]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                running_node(node_settings(base, bus, f"node_{i}", **more), dsn)
            )
            for i in range(count)
        ]
        for node in nodes:
            await asyncio.wait_for(bus_of(node).wait_settled(), TIMEOUT)
        yield nodes


def bus_of(gw: Gateway) -> BusPresence:
    return cast(BusPresence, gw.presence)


# Clients


class Member:
    """A client in a project's presence, with what it has seen of it."""

    def __init__(self, client: WsClient, state: Frame, own_id: str) -> None:
        self.client = client
        self.state = state
        self.id = own_id
        self.view = View(state)
        self.diffs: list[Frame] = []

    async def until(self, expected: dict[UUID, set[str]]) -> None:
        """Apply diffs until the view shows exactly `expected` (bounded)."""
        wanted = {str(user): ids for user, ids in expected.items()}

        async def read() -> None:
            while self.view.connections() != wanted:
                self.apply(await self.next_diff())

        await asyncio.wait_for(read(), 2 * TIMEOUT)

    async def next_diff(self) -> Frame:
        """The next `presence.diff` (changes of the project are skipped)."""
        while True:
            frame = await self.client.recv()
            if frame["type"] != "change":
                assert frame["type"] == "presence.diff", frame
                return frame

    def apply(self, diff: Frame) -> None:
        self.diffs.append(diff)
        self.view.apply(diff)

    async def barrier(self) -> None:
        """Read every diff sent before now (a ping's reply comes after them)."""
        ref = self.client.next_ref()
        await self.client.send({"type": "ping", "ref": ref})
        frame = await self.client.recv()
        while frame.get("ref") != ref:
            if frame["type"] != "change":
                assert frame["type"] == "presence.diff", frame
                self.apply(frame)
            frame = await self.client.recv()

    def left(self) -> set[str]:
        """Every connection that a diff seen so far had leave (not just change)."""
        gone: set[str] = set()
        for diff in self.diffs:
            gone |= _ids(diff["leaves"]) - _ids(diff["joins"])
        return gone


def _ids(users: dict[str, Any]) -> set[str]:
    return {meta["connection_id"] for entry in users.values() for meta in entry["metas"]}


async def join(url: str, user: UUID, project: UUID, known: set[str] = frozenset()) -> Member:
    """A client of `user` subscribed to `project`; `known`: connection ids of the
    user's other clients, to tell this one's own entry from theirs."""
    client = await open_client(url)
    client.presence = True
    await client.auth(user)
    await client.subscribe(project)
    state = await client.recv_type("presence.state")
    (own,) = connections(state["users"])[str(user)] - set(known)
    return Member(client, state, own)


async def people(conn: asyncpg.Connection, make_user: UserFactory) -> tuple[UUID, UUID, UUID]:
    """An owner, a collaborator, and their project."""
    owner, collaborator = await make_user(), await make_user()
    project = await make_project(conn, owner, collaborators=[collaborator])
    return owner, collaborator, project


# Tests


async def test_clients_on_three_nodes_see_each_other_alike(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    """Whichever node a client is on, it sees everyone, and the same diffs; a user with
    a tab on two nodes is one user with two connections."""
    owner, collaborator, project = await people(conn, make_user)
    async with running_nodes(gateway_settings, bus_settings, database_dsn, 3) as (a, b, c):
        on_a = await join(gateway_url(a), owner, project)
        on_b = await join(gateway_url(b), collaborator, project)
        on_c = await join(gateway_url(c), owner, project, {on_a.id})
        everyone = {owner: {on_a.id, on_c.id}, collaborator: {on_b.id}}
        for member in (on_a, on_b, on_c):
            await member.until(everyone)
        stats = await rpc_result(
            on_b.client, "analytics.get_project_stats", {"project_id": str(project)}
        )
        assert stats["editors_online"] == 2  # the owner is on the other nodes
        ready = await http_get(gateway_port(c), "/readyz")
        assert f"presence={bus_settings['presence_backend']} connected other_nodes=2" in ready.body
        (owner_entry,) = [u for u in on_a.view.users.items() if u[0] == on_c.id]
        assert owner_entry == (on_c.id, str(owner))

        late = await join(gateway_url(b), collaborator, project, {on_b.id})
        assert connections(late.state["users"]) == {
            str(owner): {on_a.id, on_c.id},
            str(collaborator): {on_b.id, late.id},
        }
        for member in (on_a, on_b, on_c):
            await member.until({**everyone, collaborator: {on_b.id, late.id}})
        for member in (on_a, on_b, on_c, late):
            await member.barrier()
            member.diffs.clear()

        meta = {"page": "home"}
        await on_b.client.request(
            {"type": "presence.update", "project_id": str(project), "meta": meta}
        )
        seen = []
        for member in (on_a, on_b, on_c, late):
            diff = await member.client.recv_type("presence.diff")
            (shown,) = diff["joins"][str(collaborator)]["metas"]
            assert (shown["connection_id"], shown["meta"]) == (on_b.id, meta)
            seen.append(diff)
        assert all(diff == seen[0] for diff in seen), "a node's diff differs"

        await on_a.client.close()
        for member in (on_b, on_c, late):
            await member.until({owner: {on_c.id}, collaborator: {on_b.id, late.id}})


async def test_a_late_node_learns_the_presence_there_is(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    owner, collaborator, project = await people(conn, make_user)
    async with running_node(
        node_settings(gateway_settings, bus_settings, "first"), database_dsn
    ) as a:
        on_a = await join(gateway_url(a), owner, project)
        await on_a.client.request(
            {"type": "presence.update", "project_id": str(project), "meta": {"page": "home"}}
        )
        await on_a.until({owner: {on_a.id}})
        await on_a.barrier()
        later = node_settings(gateway_settings, bus_settings, "later")
        async with running_node(later, database_dsn) as b:
            await asyncio.wait_for(bus_of(b).wait_settled(), TIMEOUT)
            on_b = await join(gateway_url(b), collaborator, project)
            # Right in its state: what the first node re-announced when this one came.
            assert connections(on_b.state["users"])[str(owner)] == {on_a.id}
            (shown,) = on_b.state["users"][str(owner)]["metas"]
            assert shown["meta"] == {"page": "home"}
            await on_a.until({owner: {on_a.id}, collaborator: {on_b.id}})


@pytest.mark.parametrize("gateway_overrides", [{"presence_node_timeout_seconds": NODE_TIMEOUT}])
async def test_a_killed_node_leaves_everywhere_and_its_sessions_are_paused(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    backend: str,
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
    tmp_path: Path,
) -> None:
    """A real `serve` process, SIGKILLed: no goodbye, its heartbeats stop. While it
    lives, its builder session is held (no sweep elsewhere pauses it); once it is
    silent for the timeout its client leaves every other node, and its session is
    paused after the grace."""
    owner, collaborator, project = await people(conn, make_user)
    settings = {
        k: str(v)
        for k, v in bus_settings.items()
        if k.startswith(("presence_", "redis_", "session_", "feed"))
    }
    env = cli_env(
        database_url=database_dsn,
        jwt_secret=SECRET,
        data_dir=str(tmp_path / "killed"),
        node_name="killed",
        **settings,
    )
    async with running_node(
        node_settings(gateway_settings, bus_settings, "alive"), database_dsn
    ) as a:
        on_a = await join(gateway_url(a), owner, project)
        killed = await ServeProcess.start(env)
        drain = asyncio.create_task(_drain(killed))
        try:
            builder = await open_client(f"ws://127.0.0.1:{killed.port}/")
            await builder.auth(collaborator)
            await builder.subscribe(project)
            created = await rpc_result(
                builder, "session.create", {"project_id": str(project), "current_step": "a"}
            )
            await until_shown(on_a, collaborator, created["id"])
            (builder_id,) = on_a.view.connections()[str(collaborator)]

            await backdate(conn, created["id"])
            assert await a.sessions.sweep() == 0  # held on the other node
            assert await status_of(conn, created["id"]) == "active"
            # Alive past the timeout: its heartbeats keep it there.
            await asyncio.sleep(NODE_TIMEOUT * 1.5)
            await on_a.barrier()
            assert builder_id not in on_a.left()

            killed.kill()
            await asyncio.wait_for(killed.process.wait(), TIMEOUT)
            await on_a.until({owner: {on_a.id}})
            await until_status(conn, created["id"], "paused")
        finally:
            killed.kill()
            await asyncio.wait_for(killed.process.wait(), TIMEOUT)
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _drain(serving: ServeProcess) -> None:
    """Keep reading the process's log, so its pipe never fills."""
    with contextlib.suppress(AssertionError):  # raised at EOF: the process exited
        await serving.wait_for_log(r"(?!)")


async def until_shown(member: Member, user: UUID, session_id: str) -> None:
    """Until the member sees `user` drive the session in presence."""

    async def read() -> None:
        while True:
            diff = await member.next_diff()
            member.apply(diff)
            for meta in diff["joins"].get(str(user), {"metas": []})["metas"]:
                if (meta["session"] or {}).get("id") == session_id:
                    return

    await asyncio.wait_for(read(), 2 * TIMEOUT)


@pytest.mark.parametrize(
    "gateway_overrides", [{"presence_node_timeout_seconds": LONG_NODE_TIMEOUT}]
)
async def test_a_node_that_stops_cleanly_leaves_at_once(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    """Its goodbye drops it everywhere, long before the timeout would: here the bus of
    a node closes while its client is still connected."""
    owner, collaborator, project = await people(conn, make_user)
    bus = {**bus_settings, "presence_node_timeout_seconds": LONG_NODE_TIMEOUT}
    async with running_nodes(gateway_settings, bus, database_dsn, 2) as (a, b):
        on_a = await join(gateway_url(a), owner, project)
        on_b = await join(gateway_url(b), collaborator, project)
        await on_a.until({owner: {on_a.id}, collaborator: {on_b.id}})
        await b.presence.close()
        await on_a.until({owner: {on_a.id}})
        assert bus_of(a).nodes() == ()


async def drop_bus(gw: Gateway, backend: str, conn: asyncpg.Connection, redis_url: str) -> None:
    """Cut the node's bus connection from the server side, as a network failure would."""
    node = bus_of(gw).node
    if backend == "postgres":
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            APPLICATION_PREFIX + node,
        )
        return
    admin = Redis.from_url(redis_url)
    try:
        for client in await admin.client_list():
            if client["name"] == CLIENT_PREFIX + node.replace("/", "-"):
                await admin.client_kill_filter(_id=client["id"])
    finally:
        await admin.aclose()


@pytest.mark.parametrize(
    "gateway_overrides", [{"presence_node_timeout_seconds": LONG_NODE_TIMEOUT}]
)
async def test_a_node_back_on_the_bus_repairs_what_was_missed_without_flicker(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    backend: str,
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
    request: pytest.FixtureRequest,
) -> None:
    """While a node's bus connection is down, one of its clients leaves (the others
    cannot hear it) and another node's client joins (it cannot hear that). Once it is
    back, everyone agrees again, and what did not change never left anyone's view."""
    owner, collaborator, project = await people(conn, make_user)
    redis_url = bus_settings.get("redis_url", "")
    bus = {**bus_settings, "presence_node_timeout_seconds": LONG_NODE_TIMEOUT}
    async with running_nodes(gateway_settings, bus, database_dsn, 2) as (a, b):
        leaving = await join(gateway_url(a), owner, project)
        staying = await join(gateway_url(a), owner, project, {leaving.id})
        on_b = await join(gateway_url(b), collaborator, project)
        for member in (staying, on_b):
            await member.until({owner: {leaving.id, staying.id}, collaborator: {on_b.id}})

        await drop_bus(a, backend, conn, redis_url)
        await asyncio.wait_for(bus_of(a).wait_disconnected(), TIMEOUT)
        await leaving.client.close()
        newcomer = await join(gateway_url(b), collaborator, project, {on_b.id})
        await asyncio.wait_for(bus_of(a).wait_connected(), TIMEOUT)

        everyone = {owner: {staying.id}, collaborator: {on_b.id, newcomer.id}}
        for member in (staying, on_b, newcomer):
            await member.until(everyone)
            await member.barrier()
            assert member.view.connections() == {str(k): v for k, v in everyone.items()}
        assert staying.id not in on_b.left() | newcomer.left()
        assert on_b.id not in staying.left()


async def test_a_message_too_large_for_the_bus_is_refused(
    gateway_settings: Settings,
    bus_settings: dict[str, Any],
    database_dsn: str,
    conn: asyncpg.Connection,
    make_user: UserFactory,
) -> None:
    """The settings keep every message small; past MAX_MESSAGE_BYTES nothing changes."""
    owner, _, project_id = await people(conn, make_user)
    project = ProjectChannel(project_id)
    async with running_node(
        node_settings(gateway_settings, bus_settings, "one"), database_dsn
    ) as a:
        with pytest.raises(PresenceTooLarge):
            await a.presence.join(project, owner, "x-1", {"text": "x" * MAX_MESSAGE_BYTES})
        assert await a.presence.list(project) == []
        largest = {"text": "x" * (4096 - len('{"text":""}'))}
        await a.presence.join(project, owner, "x-2", largest)
        await a.presence.set_session(
            project,
            "x-2",
            {"id": str(uuid.uuid4()), "status": "active", "current_step": "\0" * 256},
        )
        (entry,) = await a.presence.list(project)
        assert entry.meta == largest


def test_the_bus_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="HEARTBEAT_SECONDS must be shorter"):
        Settings(presence_node_timeout_seconds=1.0, presence_heartbeat_seconds=1.0)
    with pytest.raises(ValidationError, match="needs SITEBUILDER_REDIS_URL"):
        Settings(presence_backend="redis")
    with pytest.raises(ValidationError, match="less than or equal to 4096"):
        Settings(max_presence_meta_bytes=4097)
    assert Settings(presence_node_timeout_seconds=5.0).presence_heartbeat_interval == 1.0


async def test_an_unreachable_redis_stops_the_start(
    gateway_settings: Settings, database_dsn: str
) -> None:
    settings = gateway_settings.model_copy(
        update={"presence_backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    gw, pool = await start_gateway(settings, database_dsn)
    try:
        with pytest.raises(
            PresenceUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0 is unreachable"
        ):
            async with gw.running():
                pass
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
