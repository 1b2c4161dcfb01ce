"""The `serve` lifecycle: database up, schema migrated, port open, until a signal.

Order matters on the way down: stop accepting, close connections, release the
pool, and only then stop an embedded PostgreSQL, so nothing in flight loses its
database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import asyncpg
from websockets.asyncio.server import Server

from db.notify_feed import NotifyFeed
from db.provision import migrate_up, open_database
from gateway.secrets import jwt_secret
from gateway.server import Gateway
from gateway.settings import Settings
from gateway.tokens import TokenVerifier

logger = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10


def listening_addresses(server: Server) -> list[str]:
    """ws:// URLs of every socket the server listens on (the real port when 0 was asked)."""
    urls = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        urls.append(f"ws://{shown}:{port}/")
    return urls


def token_verifier(settings: Settings) -> TokenVerifier:
    """From the settings: a JWKS file, else a public key file, else the HS256 secret."""
    if settings.jwt_jwks_file is not None:
        return TokenVerifier(
            audience=settings.jwt_audience, jwks=settings.jwt_jwks_file.read_text()
        )
    if settings.jwt_public_key_file is not None:
        return TokenVerifier(
            audience=settings.jwt_audience, public_key=settings.jwt_public_key_file.read_text()
        )
    return TokenVerifier(audience=settings.jwt_audience, secret=jwt_secret(settings))


def _stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Turn SIGINT and SIGTERM into `stop`; returns the function that undoes it."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        logger.info("received %s: shutting down", signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    def restore() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    return restore


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    restore_signals = _stop_on_signals(stop)
    try:
        verifier = token_verifier(settings)
        async with open_database(settings.database_url, settings.pgdata) as database:
            logger.info("database: %s", database.describe())
            if settings.migrate_on_start:
                await migrate_up(database.dsn, settings.migration_parameters)
            pool = await asyncpg.create_pool(
                database.dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE
            )
            try:
                feed = NotifyFeed(database.dsn)
                logger.info("feed=%s", feed.name)
                gateway = Gateway(settings, pool, feed, verifier)
                async with gateway.running():
                    for url in listening_addresses(gateway.server):
                        logger.info("listening on %s (HTTP: /healthz, /readyz, /metrics)", url)
                    await stop.wait()
            finally:
                await pool.close()
        logger.info("stopped")
    finally:
        restore_signals()
