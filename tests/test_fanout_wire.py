"""The fan-out write path: one frame built once for every plain connection, and the
connections that negotiated compression served by websockets itself, in one broadcast."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from gateway.app.server import Gateway
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    TIMEOUT,
    WsClient,
    gateway_url,
    make_project,
    make_sitemap,
    make_wireframe,
    token,
)


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


class RawClient:
    """A websocket client that keeps the frames as they came (websockets' sans-I/O
    protocol, without the asyncio layer's reassembly)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.protocol = ClientProtocol(parse_uri(url))
        self.pending: list[object] = []  # events received, not yet read

    async def open(self) -> None:
        uri = parse_uri(self.url)
        self.reader, self.writer = await asyncio.open_connection(uri.host, uri.port)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        events = await self._events()
        assert isinstance(events[0], Response)
        self.pending = events[1:]

    def send(self, frame: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(frame))
        self._flush()

    async def message(self) -> tuple[list[Frame], dict[str, Any]]:
        """The frames of the next whole message, and the message."""
        parts: list[Frame] = []
        while True:
            if not self.pending:
                self.pending = await self._events()
            event = self.pending.pop(0)
            assert isinstance(event, Frame)
            if event.opcode in (Opcode.PING, Opcode.PONG):
                continue
            parts.append(event)
            if event.fin:
                return parts, orjson.loads(b"".join(part.data for part in parts))

    async def _events(self) -> list[object]:
        async with asyncio.timeout(TIMEOUT):
            while not (events := self.protocol.events_received()):
                data = await self.reader.read(65536)
                assert data, "the gateway closed the connection"
                self.protocol.receive_data(data)
        self._flush()
        return list(events)

    def _flush(self) -> None:
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def next_message_of(client: RawClient, kind: str) -> tuple[list[Frame], dict[str, Any]]:
    while True:
        frames, message = await client.message()
        if message["type"] == kind:
            return frames, message


@pytest.mark.parametrize("gateway_overrides", [{"fragment_bytes": 1024}])
async def test_long_messages_go_out_in_fragments_of_the_setting(
    gateway: Gateway, conn: asyncpg.Connection, make_user: UserFactory
) -> None:
    """A snapshot and a change longer than SITEBUILDER_FRAGMENT_BYTES arrive as frames of
    at most that size (TEXT, then CONTINUATION, FIN on the last), a short reply as one
    frame; a client that reassembles (websockets') reads the same messages."""
    owner = await make_user()
    project_id = await make_project(conn, owner, name="Bakery")
    wireframe_id = await make_wireframe(conn, await make_sitemap(conn, project_id))
    layout = {"blocks": [{"text": f"block {i} " + "x" * 40} for i in range(100)]}
    await conn.execute(
        "UPDATE wireframes SET layout = $2 WHERE id = $1",
        wireframe_id,
        orjson.dumps(layout).decode(),
    )
    url = gateway_url(gateway)
    raw = RawClient(url)
    whole = WsClient(await asyncio.wait_for(connect(url), TIMEOUT))
    await raw.open()
    try:
        raw.send({"type": "auth", "token": token(owner), "ref": "a"})
        frames, reply = await raw.message()
        assert reply["type"] == "ok"
        assert [(f.opcode, f.fin) for f in frames] == [(Opcode.TEXT, True)]
        raw.send({"type": "subscribe", "project_id": str(project_id), "ref": "s"})
        frames, snapshot = await next_message_of(raw, "snapshot")
        assert len(frames) > 5
        assert [f.opcode for f in frames] == [Opcode.TEXT] + [Opcode.CONT] * (len(frames) - 1)
        assert [f.fin for f in frames] == [False] * (len(frames) - 1) + [True]
        assert all(len(f.data) == 1024 for f in frames[:-1])
        assert 0 < len(frames[-1].data) <= 1024
        assert [w["layout"] for w in snapshot["wireframes"]] == [layout]
        await whole.auth(owner)
        _, whole_snapshot = await whole.subscribe(project_id)
        assert whole_snapshot is not None
        assert whole_snapshot["wireframes"] == snapshot["wireframes"]

        layout["blocks"].append({"text": "one more"})
        await conn.execute(
            "UPDATE wireframes SET layout = $2 WHERE id = $1",
            wireframe_id,
            orjson.dumps(layout).decode(),
        )
        frames, change = await next_message_of(raw, "change")
        assert change["new"]["layout"] == layout
        assert len(frames) > 5
        assert frames[-1].fin
        assert not frames[0].fin
        _, version = await next_message_of(raw, "change")
        assert version["entity"] == "version"
        assert version["new"]["data"]["layout"] == layout
        assert [(await whole.recv_type("change"))["entity"] for _ in range(2)] == [
            "wireframe",
            "version",
        ]
        raw.send({"type": "ping", "ref": "p"})
        frames, ok = await next_message_of(raw, "ok")
        assert ok["ref"] == "p"
        assert len(frames) == 1
    finally:
        await raw.close()
        await whole.close()
