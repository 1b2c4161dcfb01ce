"""Fixtures and helpers for tests that drive a real, in-process gateway over websockets.

conftest.py loads this module as a pytest plugin, so every test module can ask for
`gateway`, `ws_client`, `feed_kind`… by name. Override `gateway_overrides` (a fixture
returning a dict of Settings fields) in a test module, or parametrize it, to run the
gateway with other limits; override or parametrize `feed_kind` to pick the feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import orjson
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from db.acting_user import open_pool
from gateway.app.serve import choose_feed, token_verifier
from gateway.app.server import Gateway
from gateway.edge.tokens import mint_token
from gateway.presence.backends import open_presence
from gateway.settings import Settings

SECRET = "test-secret-for-gateway-tests-0123456789"
AUDIENCE = "authenticated"
TIMEOUT = 5.0
CLOSE_TIMEOUT = 10.0


def token(user_id: UUID, ttl: int = 3600, *, secret: str = SECRET, audience: str = AUDIENCE) -> str:
    """A user token the test gateway accepts (unless secret/audience/ttl say otherwise)."""
    return mint_token(secret, user_id, audience=audience, ttl_seconds=ttl)


def gateway_port(gw: Gateway) -> int:
    port: int = gw.server.sockets[0].getsockname()[1]
    return port


def gateway_url(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway_port(gw)}/"


# Settings and the gateway


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    """Settings fields to change for one test; override or parametrize this fixture."""
    return {}


@pytest.fixture
def feed_kind() -> str:
    """The change feed the test gateway runs; parametrize it to run tests on both."""
    return "replication"


def slot_for(dsn: str) -> str:
    """A replication slot prefix of the test's own (slots are per server, not database)."""
    return "gw_" + urlsplit(dsn).path.lstrip("/")


def node_slot(dsn: str) -> str:
    """The slot the default node reads, with the prefix of slot_for."""
    return f"{slot_for(dsn)}_gateway_0"


@pytest.fixture
def gateway_settings(
    tmp_path: Path, database_dsn: str, gateway_overrides: dict[str, Any], feed_kind: str
) -> Settings:
    base = Settings(
        database_url=database_dsn,
        feed=feed_kind,
        replication_slot=slot_for(database_dsn),
        port=0,
        jwt_secret=SecretStr(SECRET),
        data_dir=tmp_path,
        auth_timeout_seconds=1.0,
        shutdown_grace_seconds=5.0,
    )
    return base.model_copy(update=gateway_overrides)


@dataclass
class Pools:
    """A gateway's pools: clients' requests and the core's lookups."""

    requests: asyncpg.Pool
    core: asyncpg.Pool

    async def close(self) -> None:
        await self.core.close()
        await self.requests.close()


async def open_pools(dsn: str, size: int = 5) -> Pools:
    requests = await asyncio.wait_for(open_pool(dsn, max_size=size), TIMEOUT)
    core = await asyncio.wait_for(open_pool(dsn, max_size=2), TIMEOUT)
    return Pools(requests, core)


async def start_gateway(settings: Settings, dsn: str) -> tuple[Gateway, Pools]:
    """A Gateway object (not yet running) and its pools; the caller closes them."""
    feed = await asyncio.wait_for(choose_feed(settings, dsn), TIMEOUT)
    pools = await open_pools(dsn)
    presence = open_presence(settings, dsn)
    verifier = token_verifier(settings)
    gateway = Gateway(settings, pools.requests, feed, verifier, presence, core_pool=pools.core)
    return gateway, pools


@pytest.fixture
async def gateway(gateway_settings: Settings, database_dsn: str) -> AsyncIterator[Gateway]:
    """A running gateway on a free port of 127.0.0.1, shut down after the test."""
    gw, pool = await start_gateway(gateway_settings, database_dsn)
    try:
        async with gw.running():
            yield gw
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)


# Clients


class WsClient:
    """A websocket client speaking the gateway's JSON frames, every wait bounded.

    Presence frames (`presence.state`, `presence.diff`) are skipped unless `presence`
    is set, so tests of other features need not expect them."""

    def __init__(self, ws: ClientConnection, *, presence: bool = False) -> None:
        self.ws = ws
        self.presence = presence
        self._refs = 0

    def _skipped(self, message: str | bytes) -> bool:
        return not self.presence and orjson.loads(message).get("type", "").startswith("presence.")

    async def _next_message(self) -> str | bytes:
        while True:
            message = await self.ws.recv()
            if not self._skipped(message):
                return message

    def next_ref(self) -> str:
        self._refs += 1
        return f"r{self._refs}"

    async def send(self, frame: dict[str, Any]) -> None:
        await asyncio.wait_for(self.ws.send(orjson.dumps(frame).decode()), TIMEOUT)

    async def send_raw(self, message: str | bytes) -> None:
        await asyncio.wait_for(self.ws.send(message), TIMEOUT)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        frame: dict[str, Any] = orjson.loads(await self.recv_raw(timeout))
        return frame

    async def recv_raw(self, timeout: float = TIMEOUT) -> str | bytes:  # noqa: ASYNC109
        """The next frame as it came over the wire (its size is what the client paid)."""
        return await asyncio.wait_for(self._next_message(), timeout)

    async def recv_type(self, frame_type: str, timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        """The next frame, which must be of `frame_type`."""
        frame = await self.recv(timeout)
        assert frame.get("type") == frame_type, f"expected {frame_type!r}, got {frame!r}"
        return frame

    async def expect_error(self, code: str, timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        frame = await self.recv_type("error", timeout)
        assert frame["code"] == code, frame
        return frame

    async def expect_closed(self, timeout: float = TIMEOUT) -> tuple[int, str]:  # noqa: ASYNC109
        """Wait for the server's close (failing on any frame before it): (code, reason)."""

        async def closed() -> tuple[int, str]:
            try:
                message = await self._next_message()
            except ConnectionClosed as exc:
                if exc.rcvd is None:
                    raise AssertionError(f"closed without a close frame: {exc!r}") from exc
                return exc.rcvd.code, exc.rcvd.reason
            raise AssertionError(f"expected the connection to close, got {message!r}")

        return await asyncio.wait_for(closed(), timeout)

    async def request(self, frame: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        """Send `frame` with a fresh ref; the next frame, which must echo that ref."""
        ref = self.next_ref()
        await self.send({**frame, "ref": ref})
        reply = await self.recv(timeout)
        assert reply.get("ref") == ref, reply
        return reply

    async def ping(self) -> dict[str, Any]:
        reply = await self.request({"type": "ping"})
        assert reply["type"] == "ok", reply
        return reply

    async def auth(self, user_id: UUID, ttl: int = 3600) -> dict[str, Any]:
        reply = await self.request({"type": "auth", "token": token(user_id, ttl)})
        assert reply["type"] == "ok", reply
        assert reply["data"]["user_id"] == str(user_id)
        return reply

    async def subscribe(
        self, project_id: UUID, snapshot: bool = True, **options: Any
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Subscribe (`options`: the frame's other fields); (ok, snapshot or None). Fails
        on an error reply."""
        reply = await self.request(
            {"type": "subscribe", "project_id": str(project_id), "snapshot": snapshot, **options}
        )
        assert reply["type"] == "ok", reply
        if not snapshot:
            return reply, None
        return reply, await self.recv_type("snapshot")

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), CLOSE_TIMEOUT)


Connect = Callable[[], Awaitable[WsClient]]


async def open_client(url: str) -> WsClient:
    ws = await asyncio.wait_for(connect(url, open_timeout=TIMEOUT, close_timeout=2), TIMEOUT)
    return WsClient(ws)


@pytest.fixture
async def ws_client(gateway: Gateway) -> AsyncIterator[Connect]:
    """`await ws_client()` opens a connection to the gateway; all are closed afterwards."""
    clients: list[WsClient] = []

    async def open_one() -> WsClient:
        client = await open_client(gateway_url(gateway))
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        await client.close()


# Rows, inserted as the superuser (no RLS)


async def make_project(
    conn: asyncpg.Connection,
    owner: UUID,
    *,
    collaborators: Iterable[UUID] = (),
    public: bool = False,
    name: str = "Site",
) -> UUID:
    project_id: UUID = await conn.fetchval(
        "INSERT INTO projects (user_id, name, type, collaborators, is_public) "
        "VALUES ($1, $2, 'website', $3, $4) RETURNING id",
        owner,
        name,
        list(collaborators),
        public,
    )
    return project_id


async def make_sitemap(conn: asyncpg.Connection, project_id: UUID, title: str = "Map") -> UUID:
    sitemap_id: UUID = await conn.fetchval(
        "INSERT INTO sitemaps (project_id, title) VALUES ($1, $2) RETURNING id",
        project_id,
        title,
    )
    return sitemap_id


async def make_wireframe(conn: asyncpg.Connection, sitemap_id: UUID, title: str = "Frame") -> UUID:
    wireframe_id: UUID = await conn.fetchval(
        "INSERT INTO wireframes (sitemap_id, title) VALUES ($1, $2) RETURNING id",
        sitemap_id,
        title,
    )
    return wireframe_id


async def make_style_guide(
    conn: asyncpg.Connection, wireframe_id: UUID, title: str = "Style"
) -> UUID:
    style_guide_id: UUID = await conn.fetchval(
        "INSERT INTO style_guides (wireframe_id, title) VALUES ($1, $2) RETURNING id",
        wireframe_id,
        title,
    )
    return style_guide_id
