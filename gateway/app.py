"""The `serve` lifecycle: database up, schema migrated, port open, until a signal.

Order matters on the way down: stop accepting, close connections, release the
pool, and only then stop an embedded PostgreSQL, so nothing in flight loses its
database.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

import asyncpg
from websockets.asyncio.server import Server

from db.feed import ChangeFeed
from db.feed_triggers import use_feed_triggers
from db.notify_feed import NotifyFeed
from db.provision import migrate_up, open_database
from db.replication_feed import ReplicationFeed
from db.replication_stream import replication_possible
from gateway.demo import Demo, seed_demo
from gateway.presence_backends import open_presence
from gateway.secrets import jwt_secret
from gateway.server import Gateway
from gateway.settings import Settings
from gateway.tokens import TokenVerifier

logger = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# Collector thresholds while serving (CPython's defaults are 700, 10, 10).
GC_YOUNG_THRESHOLD = 50_000
GC_MIDDLE_THRESHOLD = 20
GC_OLD_THRESHOLD = 10


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


async def choose_feed(settings: Settings, dsn: str) -> ChangeFeed:
    """The feed the settings ask for (`auto`: replication when the server and role allow
    it), with the database's triggers set for it. Logs which, and why."""
    kind = settings.feed
    possible, why = await replication_possible(dsn)
    if kind == "auto":
        kind = "replication" if possible else "notify"
        if not possible:
            logger.info("replication not possible (%s): using LISTEN/NOTIFY", why)
    elif kind == "replication" and not possible:
        raise FeedUnavailable(f"SITEBUILDER_FEED=replication but {why}")
    conn = await asyncpg.connect(dsn)
    try:
        await use_feed_triggers(conn, kind)
    finally:
        await conn.close()
    if kind == "notify":
        logger.info("feed=notify")
        return NotifyFeed(dsn)
    logger.info("feed=replication slot=%s", settings.replication_slot)
    return ReplicationFeed(
        dsn,
        slot=settings.replication_slot,
        publication=settings.publication,
        status_interval_seconds=settings.replication_status_interval_seconds,
    )


class FeedUnavailable(RuntimeError):
    """The configured change feed cannot run on this database."""


class DemoUnavailable(RuntimeError):
    """Demo mode asked for where the gateway cannot mint the demo users' tokens."""


async def start_demo(settings: Settings, pool: asyncpg.Pool) -> Demo | None:
    """In demo mode, the seeded demo and its token minter; else None (no demo routes)."""
    if not settings.demo:
        return None
    if settings.jwt_jwks_file is not None or settings.jwt_public_key_file is not None:
        raise DemoUnavailable(
            "--demo mints HS256 tokens: unset SITEBUILDER_JWT_PUBLIC_KEY_FILE/JWKS_FILE"
        )
    await seed_demo(pool)
    logger.warning("demo mode: anyone who reaches this port can sign in as a demo user")
    return Demo(jwt_secret(settings), settings.jwt_audience)


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


def tune_garbage_collector() -> None:
    """Keep full collections off the fan-out path.

    A full (generation 2) collection walks every tracked object and stops the event
    loop meanwhile: with 1,000 connections it took 40-60 ms here, every few seconds
    under load, and became the p99 of commit-to-screen latency. Everything alive once
    the gateway serves (modules, settings, pools) is frozen out of the collector's
    walks, and the young generation is collected after 50,000 allocations instead of
    700: full collections become more than a hundred times rarer. Changes in flight
    are freed by reference counting; only cyclic garbage waits longer.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    restore_signals = _stop_on_signals(stop)
    try:
        verifier = token_verifier(settings)
        async with open_database(
            settings.database_url,
            settings.pgdata,
            max_slot_wal_keep_size=settings.embedded_max_slot_wal_keep_size,
        ) as database:
            logger.info("database: %s", database.describe())
            if settings.migrate_on_start:
                await migrate_up(database.dsn, settings.migration_parameters)
            pool = await asyncpg.create_pool(
                database.dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE
            )
            try:
                feed = await choose_feed(settings, database.dsn)
                demo = await start_demo(settings, pool)
                presence = open_presence(settings, database.dsn)
                gateway = Gateway(settings, pool, feed, verifier, presence, demo)
                async with gateway.running():
                    tune_garbage_collector()
                    for url in listening_addresses(gateway.server):
                        logger.info("listening on %s (HTTP: /healthz, /readyz, /metrics)", url)
                        if demo is not None:
                            logger.info(
                                "demo editor: open %s in two windows (alice, bob, carol)",
                                url.replace("ws://", "http://", 1),
                            )
                    await stop.wait()
            finally:
                await pool.close()
        logger.info("stopped")
    finally:
        restore_signals()
