"""The presence backend the settings ask for (`SITEBUILDER_PRESENCE_BACKEND`)."""

from __future__ import annotations

from gateway.presence.bus import BusPresence, Transport
from gateway.presence.model import InMemoryPresence, Presence
from gateway.presence.postgres_bus import PostgresTransport
from gateway.presence.redis_bus import RedisTransport
from gateway.settings import Settings


def open_presence(settings: Settings, dsn: str, worker_index: int = 0) -> Presence:
    """Not started yet: the gateway starts and closes it with itself. The node is named
    like the gateway's `node_id`, so bus messages and logs tell the workers apart."""
    if settings.presence_backend == "memory":
        return InMemoryPresence()
    timeout = settings.presence_node_timeout_seconds
    transport: Transport
    if settings.presence_backend == "redis":
        assert settings.redis_url is not None  # the settings validate it
        transport = RedisTransport(
            settings.redis_url, settings.presence_channel, timeout_seconds=timeout
        )
    else:
        transport = PostgresTransport(dsn, settings.presence_channel, timeout_seconds=timeout)
    return BusPresence(
        transport,
        f"{settings.node_name}_{worker_index}",
        node_timeout_seconds=timeout,
        heartbeat_seconds=settings.presence_heartbeat_interval,
    )
