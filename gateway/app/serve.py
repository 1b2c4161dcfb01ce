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
import socket
from collections.abc import Callable, Iterable

import asyncpg

from db.acting_user import open_pool
from db.feed import ChangeFeed
from db.feed_triggers import FeedName, use_feed_triggers
from db.notify_feed import NotifyFeed
from db.provision import migrate_up, open_database
from db.replication_feed import ReplicationFeed
from db.replication_stream import replication_possible, slot_status
from db.worker_feed import WorkerFeed
from gateway.app.demo import Demo, seed_demo
from gateway.app.secrets import jwt_secret
from gateway.app.server import Gateway
from gateway.app.slots import claim_node_slots
from gateway.edge.tokens import TokenVerifier
from gateway.presence.backends import open_presence
from gateway.settings import Settings

logger = logging.getLogger(__name__)

POOL_MAX_SIZE = 10
# The core's lookups: one at a time from the dispatcher, beside a fence's.
CORE_POOL_MAX_SIZE = 2
# Collector thresholds while serving (CPython's defaults are 700, 10, 10).
GC_YOUNG_THRESHOLD = 50_000
GC_MIDDLE_THRESHOLD = 20
GC_OLD_THRESHOLD = 10


def socket_urls(sockets: Iterable[socket.socket]) -> list[str]:
    """ws:// URLs of bound sockets (the real port when 0 was asked)."""
    urls = []
    for sock in sockets:
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


async def decide_feed(settings: Settings, dsn: str) -> FeedName:
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
    return kind


async def choose_feed(settings: Settings, dsn: str) -> ChangeFeed:
    """The node's change feed (see decide_feed)."""
    kind = await decide_feed(settings, dsn)
    if kind == "notify":
        logger.info("feed=notify")
        return NotifyFeed(dsn)
    slot = settings.node_slot
    logger.info("feed=replication slot=%s", slot)
    return ReplicationFeed(
        dsn,
        slot=slot,
        publication=settings.publication,
        status_interval_seconds=settings.replication_status_interval_seconds,
    )


def node_feed_of_worker(settings: Settings, dsn: str, path: str) -> WorkerFeed:
    """A worker's change feed: the node's, from the supervisor's reader at `path`
    (`settings.feed` is the kind the supervisor decided)."""
    if settings.feed == "notify":
        return WorkerFeed(path, name="notify", fence=NotifyFeed.fence, lag=_no_lag)
    slot = settings.node_slot

    async def lag() -> int | None:
        status = await slot_status(dsn, slot)
        return None if status is None else status.lag_bytes

    return WorkerFeed(path, name="replication", fence=ReplicationFeed.fence, lag=lag)


async def _no_lag() -> int | None:
    return None


class FeedUnavailable(RuntimeError):
    """The configured change feed cannot run on this database."""


class DemoUnavailable(RuntimeError):
    """Demo mode asked for where the gateway cannot mint the demo users' tokens."""


def demo_wanted(settings: Settings) -> bool:
    """Whether demo mode is on; raises DemoUnavailable where it cannot work."""
    if settings.demo and (
        settings.jwt_jwks_file is not None or settings.jwt_public_key_file is not None
    ):
        raise DemoUnavailable(
            "--demo mints HS256 tokens: unset SITEBUILDER_JWT_PUBLIC_KEY_FILE/JWKS_FILE"
        )
    return settings.demo


def demo_minter(settings: Settings) -> Demo | None:
    """In demo mode, the demo users' token minter; else None (no demo routes)."""
    if not demo_wanted(settings):
        return None
    return Demo(jwt_secret(settings), settings.jwt_audience)


async def prepare_database(settings: Settings, dsn: str) -> FeedName:
    """What a node does once before it serves: migrations, the feed's triggers, its
    replication slot claimed (and the per-worker slots of earlier versions dropped), the
    demo's rows. Returns the feed the node is to run."""
    if settings.migrate_on_start:
        await migrate_up(dsn, settings.migration_parameters)
    kind = await decide_feed(settings, dsn)
    await claim_node_slots(dsn, settings)
    if demo_wanted(settings):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            await seed_demo(pool)
        finally:
            await pool.close()
        logger.warning("demo mode: anyone who reaches this port can sign in as a demo user")
    return kind


def stop_on_signals(stop: asyncio.Event, doing: str = "shutting down") -> Callable[[], None]:
    """Turn SIGINT and SIGTERM into `stop` (logging what follows); returns the function
    that undoes it."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        logger.info("received %s: %s", signum.name, doing)
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


def log_listening(urls: list[str], settings: Settings, suffix: str = "") -> None:
    for url in urls:
        logger.info("listening on %s (HTTP: /healthz, /readyz, /metrics)%s", url, suffix)
        if settings.demo:
            logger.info(
                "demo editor: open %s in two windows (alice, bob, carol)",
                url.replace("ws://", "http://", 1),
            )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve in this process until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    restore_signals = stop_on_signals(stop)
    try:
        verifier = token_verifier(settings)  # a bad key file fails before the database starts
        async with open_database(
            settings.database_url,
            settings.pgdata,
            max_slot_wal_keep_size=settings.embedded_max_slot_wal_keep_size,
        ) as database:
            logger.info("database: %s", database.describe())
            kind = await prepare_database(settings, database.dsn)
            chosen = settings.model_copy(update={"feed": kind})
            await serve(chosen, database.dsn, verifier, stop)
        logger.info("stopped")
    finally:
        restore_signals()


async def run_worker(
    settings: Settings,
    index: int,
    feed_socket: str,
    ready: Callable[[], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve as worker `index` of a supervisor, which prepared the database (named by
    `database_url`), reserved the port and reads the node's feed (served at
    `feed_socket`); `ready` is called once it listens."""
    stop = stop or asyncio.Event()
    restore_signals = stop_on_signals(stop)
    try:
        assert settings.database_url is not None
        verifier = token_verifier(settings)
        feed = node_feed_of_worker(settings, settings.database_url, feed_socket)
        await serve(
            settings,
            settings.database_url,
            verifier,
            stop,
            feed=feed,
            worker_index=index,
            ready=ready,
        )
        logger.info("stopped")
    finally:
        restore_signals()


async def serve(
    settings: Settings,
    dsn: str,
    verifier: TokenVerifier,
    stop: asyncio.Event,
    *,
    feed: ChangeFeed | None = None,
    worker_index: int | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """One gateway on a prepared database until `stop`: worker `worker_index` of a
    supervisor (sharing its port, reading the node's `feed`), or the only process of
    the node when None (reading the feed itself)."""
    pool = await open_pool(dsn, max_size=POOL_MAX_SIZE)
    core_pool = await open_pool(dsn, max_size=CORE_POOL_MAX_SIZE)
    try:
        if feed is None:
            feed = await choose_feed(settings, dsn)
        gateway = Gateway(
            settings,
            pool,
            feed,
            verifier,
            open_presence(settings, dsn, worker_index or 0),
            demo_minter(settings),
            core_pool=core_pool,
            worker_index=worker_index or 0,
            share_port=worker_index is not None,
        )
        async with gateway.running():
            tune_garbage_collector()
            if ready is None:
                log_listening(socket_urls(gateway.server.sockets), settings)
            else:
                logger.info("worker %s ready", gateway.node_id)
                ready()
            await stop.wait()
    finally:
        await core_pool.close()
        await pool.close()
