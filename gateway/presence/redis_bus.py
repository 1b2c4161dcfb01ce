"""The presence bus on Redis: pub/sub for changes, a hash per node for its state.

Each node keeps its entries and held sessions in the hash `<channel>:node:<node>`
(field `entry:<project>:<connection>` or `hold:<session>`, value the message that
announced it), rewritten whole by each `sync` round and expiring
`SITEBUILDER_PRESENCE_NODE_TIMEOUT_SECONDS` after the node's last beat. Every batch
of messages is one MULTI: the hash changes and the PUBLISHes together, in order.

A node subscribes first, then reads every node's hash: changes published meanwhile
arrive after the read and apply on top of it, so nobody needs to answer the newcomer
(unlike PostgreSQL's `hello`). It reads them all again after its subscription
reconnects, and one node's hash when it hears from a node it does not know. A node
whose own hash expired (it stalled past the timeout) finds out at its next beat and
re-announces everything.

PUBLISH costs Redis one write per subscriber and nothing on PostgreSQL: the choice for
clusters whose presence traffic would weigh on the database's NOTIFY queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.presence.bus import (
    RECONNECT_FIRST_SECONDS,
    RECONNECT_MAX_SECONDS,
    BusPresence,
    Message,
    Outgoing,
    cancel_and_wait,
)
from gateway.presence.model import PresenceUnavailable

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, TimeoutError)
_NODE_FIELD = b"node"
# Names every node's connections in CLIENT LIST.
CLIENT_PREFIX = "sitebuilder-presence-"  # keeps the hash of a node without connections alive


class _PubSub(Protocol):
    async def subscribe(self, *channels: str) -> object: ...
    async def get_message(
        self,
        *,
        timeout: float | None,  # noqa: ASYNC109 (redis-py's signature)
    ) -> dict[str, Any] | None: ...
    async def aclose(self) -> None: ...


class _Pipeline(Protocol):
    """Queues commands (each call returns the pipeline) until `execute`."""

    def delete(self, *names: str) -> object: ...
    def hset(self, name: str, key: str | bytes, value: bytes) -> object: ...
    def hdel(self, name: str, *keys: str) -> object: ...
    def publish(self, channel: str, message: bytes) -> object: ...
    def pexpire(self, name: str, time: int) -> object: ...
    async def execute(self) -> list[Any]: ...


class _Client(Protocol):
    """What this module uses of redis-py's asyncio client (`Redis`, its `PubSub` and
    `Pipeline`), typed here once. redis-py's own annotations differ between the releases
    pyproject.toml allows: before 8.0 a command returns `Awaitable[T] | T` and takes hash
    fields and values as `str`, and `PubSub.aclose` is untyped before 8.2; code checked
    against them passes on some releases and fails on others."""

    async def ping(self) -> object: ...
    def pubsub(self) -> _PubSub: ...
    async def hgetall(self, name: str) -> dict[bytes, bytes]: ...
    def scan_iter(self, *, match: str, count: int) -> AsyncIterator[bytes]: ...
    def pipeline(self, *, transaction: bool) -> _Pipeline: ...
    async def aclose(self) -> None: ...


def _client(url: str, **options: Any) -> _Client:
    return cast(_Client, Redis.from_url(url, **options))


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisTransport:
    name = "redis"

    def __init__(self, url: str, channel: str, *, timeout_seconds: float) -> None:
        self._url = url
        self._channel = channel
        self._timeout = timeout_seconds
        self._ttl_ms = max(1, int(timeout_seconds * 1000))
        self._redis: _Client | None = None
        self._subscriber: _Client | None = None
        self._lost = asyncio.Event()

    @property
    def redis(self) -> _Client:
        """For commands: each bounded by the node timeout."""
        assert self._redis is not None, "start() first"
        return self._redis

    def _key(self, node: str) -> str:
        return f"{self._channel}:node:{node}"

    async def start(self, node: str) -> None:
        name = CLIENT_PREFIX + node.replace("/", "-")
        self._redis = _client(
            self._url,
            client_name=name,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
        )
        # The subscription waits for messages without a deadline: a read timing out
        # there could swallow the cancellation that stops the node.
        self._subscriber = _client(
            self._url, client_name=name, socket_connect_timeout=self._timeout, socket_keepalive=True
        )
        try:
            await self._redis.ping()
        except _ERRORS as error:
            await self.close()
            raise PresenceUnavailable(
                f"SITEBUILDER_PRESENCE_BACKEND=redis but Redis at {redacted(self._url)} "
                f"is unreachable: {error}"
            ) from error

    async def run(self, bus: BusPresence) -> None:
        assert self._subscriber is not None, "start() first"
        delay = RECONNECT_FIRST_SECONDS
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await pubsub.get_message(timeout=None)  # subscribed: later messages are ours
                bus.load_all(await self._read_all(bus.node))
                bus.on_connected(peers=None)
                delay = RECONNECT_FIRST_SECONDS
                await self._listen_until_lost(bus, pubsub)
            except _ERRORS as error:
                logger.warning("presence bus (Redis) unavailable: %s", error)
            finally:
                bus.on_disconnected()
                self._lost.clear()
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _listen_until_lost(self, bus: BusPresence, pubsub: _PubSub) -> None:
        """Listen until the subscription fails or a publish did (`_lost`)."""
        listening = asyncio.create_task(self._listen(bus, pubsub), name="presence-redis-listen")
        lost = asyncio.create_task(self._lost.wait(), name="presence-redis-lost")
        try:
            await asyncio.wait((listening, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listening, lost):
                await cancel_and_wait(task)
        raise ConnectionError("a publish failed")

    async def _listen(self, bus: BusPresence, pubsub: _PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message["type"] != "message":
                continue
            unknown = bus.receive(message["data"])
            if unknown is not None:
                bus.load(unknown, await self._read_node(unknown))

    async def _read_node(self, node: str) -> list[bytes]:
        fields = await self.redis.hgetall(self._key(node))
        return [bytes(v) for k, v in fields.items() if k != _NODE_FIELD and isinstance(v, bytes)]

    async def _read_all(self, own: str) -> dict[str, list[bytes]]:
        prefix = self._key("")
        nodes: dict[str, list[bytes]] = {}
        async for key in self.redis.scan_iter(match=f"{prefix}*", count=100):
            node = key.decode()[len(prefix) :]
            if node != own:
                nodes[node] = await self._read_node(node)
        return nodes

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        key = self._key(str(batch[0].message["node"]))
        pipe = self.redis.pipeline(transaction=True)
        for out in batch:
            self._store(pipe, key, out)
            pipe.publish(self._channel, out.payload)
        said_bye = batch[-1].message["type"] == "bye"
        if not said_bye:
            pipe.pexpire(key, self._ttl_ms)
        try:
            results: list[Any] = await pipe.execute()
        except _ERRORS as error:
            logger.warning("presence bus (Redis): publish failed, reconnecting: %s", error)
            self._lost.set()
            return
        if not said_bye and not results[-1]:
            self._hash_expired()

    def _hash_expired(self) -> None:
        """Our hash expired (we stalled past the timeout): the others dropped us."""
        logger.warning("presence bus (Redis): this node's state expired: announcing it again")
        self._lost.set()  # reconnect: read everyone, re-announce ourselves

    @staticmethod
    def _store(pipe: _Pipeline, key: str, out: Outgoing) -> None:
        message: Message = out.message
        kind = message["type"]
        if kind == "sync":
            pipe.delete(key)
            pipe.hset(key, _NODE_FIELD, b"1")
        elif kind == "put":
            pipe.hset(key, f"entry:{message['project']}:{message['connection']}", out.payload)
        elif kind == "leave":
            pipe.hdel(key, f"entry:{message['project']}:{message['connection']}")
        elif kind == "hold":
            pipe.hset(key, f"hold:{message['session_id']}", out.payload)
        elif kind == "release":
            pipe.hdel(key, f"hold:{message['session_id']}")
        elif kind == "bye":
            pipe.delete(key)

    async def close(self) -> None:
        for client in (self._redis, self._subscriber):
            if client is not None:
                await client.aclose()
        self._redis = self._subscriber = None
