"""The fan-out write path: one frame built once for every plain connection, and the
connections that negotiated compression served by websockets itself, in one broadcast."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect

from gateway.app.server import Gateway
from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, WsClient, gateway_url, make_project


async def next_change(client: WsClient) -> str | bytes:
    """The next change frame exactly as it came off the wire."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await client.ws.recv()
            if orjson.loads(message)["type"] == "change":
                return message


@pytest.mark.parametrize("gateway_overrides", [{"compression": True}])
async def test_compressed_and_plain_subscribers_get_the_same_change(
    gateway: Gateway, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project_id = await make_project(conn, owner, name="Bakery")
    url = gateway_url(gateway)
    compressed = WsClient(await asyncio.wait_for(connect(url, compression="deflate"), TIMEOUT))
    plain = WsClient(await asyncio.wait_for(connect(url, compression=None), TIMEOUT))
    try:
        assert compressed.ws.protocol.extensions, "the server accepted permessage-deflate"
        assert not plain.ws.protocol.extensions
        for client in (compressed, plain):
            await client.auth(owner)
            await client.subscribe(project_id, snapshot=False)
        await conn.execute("UPDATE projects SET name = 'Bakery 2' WHERE id = $1", project_id)
        received: list[list[dict[str, Any]]] = [
            [await client.recv_type("change") for _ in range(2)] for client in (compressed, plain)
        ]
        assert received[0] == received[1]
        project, version = received[0]
        assert (project["entity"], project["new"]["name"]) == ("project", "Bakery 2")
        assert version["entity"] == "version"
        # the stream goes on after shared frames: the next reply still parses
        for client in (compressed, plain):
            await client.ping()
    finally:
        await compressed.close()
        await plain.close()


async def test_many_subscribers_get_identical_bytes(
    gateway: Gateway, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    owner = await make_user()
    project_id = await make_project(conn, owner, name="Bakery")
    url = gateway_url(gateway)
    clients = [
        WsClient(await asyncio.wait_for(connect(url, compression=None), TIMEOUT)) for _ in range(5)
    ]
    try:
        for client in clients:
            await client.auth(owner)
            await client.subscribe(project_id, snapshot=False)
        await conn.execute("UPDATE projects SET name = 'Bakery 2' WHERE id = $1", project_id)
        raw = [await next_change(client) for client in clients]
        assert len(set(raw)) == 1
        assert orjson.loads(raw[0])["entity"] == "project"
    finally:
        for client in clients:
            await client.close()


async def test_members_and_public_readers_of_one_transaction(
    gateway: Gateway, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """One transaction, different frames per subscriber (versions are members-only):
    each connection gets exactly its own frames, in commit order."""
    owner, stranger = await make_user(), await make_user()
    project_id = await make_project(conn, owner, name="Bakery", public=True)
    url = gateway_url(gateway)
    member = WsClient(await asyncio.wait_for(connect(url, compression=None), TIMEOUT))
    reader = WsClient(await asyncio.wait_for(connect(url, compression=None), TIMEOUT))
    try:
        await member.auth(owner)
        await reader.auth(stranger)
        for client in (member, reader):
            await client.subscribe(project_id, snapshot=False)
        for name in ("Bakery 2", "Bakery 3"):
            await conn.execute("UPDATE projects SET name = $2 WHERE id = $1", project_id, name)
        seen_by_member = [await member.recv_type("change") for _ in range(4)]
        assert [(f["entity"], f["new"].get("name")) for f in seen_by_member] == [
            ("project", "Bakery 2"),
            ("version", None),
            ("project", "Bakery 3"),
            ("version", None),
        ]
        seen_by_reader = [await reader.recv_type("change") for _ in range(2)]
        assert [(f["entity"], f["new"]["name"]) for f in seen_by_reader] == [
            ("project", "Bakery 2"),
            ("project", "Bakery 3"),
        ]
        await reader.ping()  # nothing else was queued before the reply
    finally:
        await member.close()
        await reader.close()
