"""A Supabase Realtime client for tests, frame by frame as @supabase/realtime-js speaks.

conftest.py loads this module as a pytest plugin, so every test module can ask for
`phx_client` by name (it needs the `gateway` fixture of tests.gateway_fixtures).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.app.server import Gateway
from tests.gateway_fixtures import TIMEOUT, gateway_port


class Phx:
    """A raw Phoenix client: frames in the socket's version, refs as realtime-js makes
    them (strings of a counter)."""

    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self._refs = itertools.count(1)
        self.join_refs: dict[str, str] = {}

    def ref(self) -> str:
        return str(next(self._refs))

    async def push(self, topic: str, event: str, payload: Any, *, ref: str | None = None) -> str:
        ref = ref or self.ref()
        join_ref = self.join_refs.get(topic)
        if self.vsn == "2.0.0":
            frame: Any = [join_ref, ref, topic, event, payload]
        else:
            frame = {
                "topic": topic,
                "event": event,
                "payload": payload,
                "ref": ref,
                "join_ref": join_ref,
            }
        await asyncio.wait_for(self.ws.send(orjson.dumps(frame).decode()), TIMEOUT)
        return ref

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, bytes):
            return decode_user_broadcast(raw)
        obj = orjson.loads(raw)
        if self.vsn == "2.0.0":
            assert isinstance(obj, list), obj
            assert len(obj) == 5, obj
            join_ref, ref, topic, event, payload = obj
            return {
                "join_ref": join_ref,
                "ref": ref,
                "topic": topic,
                "event": event,
                "payload": payload,
            }
        assert isinstance(obj, dict), obj
        return obj

    async def expect(self, event: str, topic: str | None = None) -> dict[str, Any]:
        message = await self.recv()
        assert message["event"] == event, message
        if topic is not None:
            assert message["topic"] == topic, message
        return message

    async def reply(self, ref: str) -> dict[str, Any]:
        message = await self.expect("phx_reply")
        assert message["ref"] == ref, message
        payload: dict[str, Any] = message["payload"]
        return payload

    async def join(
        self, name: str, config: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Join `realtime:<name>`; the reply's payload (ok or error)."""
        topic = f"realtime:{name}"
        ref = self.ref()
        self.join_refs[topic] = ref
        payload = {
            "config": {
                "broadcast": {"self": False, "ack": False},
                "presence": {"key": "", "enabled": False},
                "postgres_changes": [],
                "private": False,
                **(config or {}),
            },
            **extra,
        }
        await self.push(topic, "phx_join", payload, ref=ref)
        return await self.reply(ref)

    async def heartbeat(self) -> None:
        ref = await self.push("phoenix", "heartbeat", {})
        reply = await self.reply(ref)
        assert reply == {"status": "ok", "response": {}}, reply

    async def quiet(self) -> None:
        """Nothing but the heartbeat's reply arrives (everything sent is in order)."""
        await self.heartbeat()

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), TIMEOUT)


def decode_user_broadcast(data: bytes) -> dict[str, Any]:
    """What realtime-js's serializer makes of a kind 4 frame."""
    kind, topic_size, event_size, meta_size, encoding = struct.unpack("!BBBBB", data[:5])
    assert kind == 4, data
    offset = 5
    topic = data[offset : offset + topic_size].decode()
    offset += topic_size
    event = data[offset : offset + event_size].decode()
    offset += event_size
    meta = data[offset : offset + meta_size]
    offset += meta_size
    body = data[offset:]
    payload: dict[str, Any] = {
        "type": "broadcast",
        "event": event,
        "payload": orjson.loads(body) if encoding == 1 else body,
    }
    if meta:
        payload["meta"] = orjson.loads(meta)
    return {
        "join_ref": None,
        "ref": None,
        "topic": topic,
        "event": "broadcast",
        "payload": payload,
        "binary": True,
    }


def user_broadcast_push(
    join_ref: str, ref: str, topic: str, event: str, payload: bytes, encoding: int = 1
) -> bytes:
    """realtime-js's kind 3 frame."""
    parts = [join_ref.encode(), ref.encode(), topic.encode(), event.encode(), b""]
    header = struct.pack("!BBBBBBB", 3, *(len(p) for p in parts), encoding)
    return header + b"".join(parts) + payload


def url(gateway: Gateway, key: str | None, vsn: str | None = "2.0.0") -> str:
    query = []
    if key is not None:
        query.append(f"apikey={key}")
    if vsn is not None:
        query.append(f"vsn={vsn}")
    return f"ws://127.0.0.1:{gateway_port(gateway)}/realtime/v1/websocket?{'&'.join(query)}"


@pytest.fixture
async def phx_client(gateway: Gateway) -> Any:
    """`await phx_client(key, vsn)` opens a Supabase-protocol connection."""
    clients: list[Phx] = []

    async def open_one(key: str, vsn: str = "2.0.0") -> Phx:
        ws = await asyncio.wait_for(connect(url(gateway, key, vsn), close_timeout=2), TIMEOUT)
        client = Phx(ws, vsn)
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        await client.close()


def wireframes_binding(flt: str | None = None, event: str = "*") -> dict[str, Any]:
    binding: dict[str, Any] = {"event": event, "schema": "public", "table": "wireframes"}
    if flt is not None:
        binding["filter"] = flt
    return binding


async def expect_subscribed(client: Phx, name: str) -> None:
    system = await client.expect("system", f"realtime:{name}")
    assert system["payload"] == {
        "extension": "postgres_changes",
        "status": "ok",
        "message": "Subscribed to PostgreSQL",
        "channel": name,
    }


async def change(client: Phx) -> dict[str, Any]:
    message = await client.expect("postgres_changes")
    assert message["ref"] is None, message
    assert message["join_ref"] is None, message
    payload: dict[str, Any] = message["payload"]
    return payload
