"""`serve --workers N`: N gateway processes on one port, kept running, stopped together.

The supervisor does once what must happen once per node (start an embedded
PostgreSQL, migrate, claim the node's replication slot, seed the demo), reserves
the port, reads the node's change feed and serves it to the workers (db.node_feed, on
a Unix socket in a directory of this run), then starts each worker
(`gateway.app.worker`) with the database's DSN, the port's real number and the feed's
socket. Every worker binds the port with SO_REUSEPORT, so the kernel
spreads new connections over them; the supervisor's own socket on it is bound but
never listens, so it receives none, and keeps the port ours while workers restart.

A worker that exits is started again, after a delay that doubles while it keeps
dying young. One that exits before every worker listened on the first start stops
the node: that is a configuration error, not a crash. SIGTERM or SIGINT stops every
worker with SIGTERM (each closes its connections within the shutdown grace), kills
those that outlast it, then stops the embedded database. SIGTTIN adds a worker and
SIGTTOU removes the last one, as gunicorn does.

Metrics: workers write prometheus-client's multiprocess files to a directory of
this run, and any worker's /metrics shows them merged; a dead worker's live gauges
are removed from the files when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from db.node_feed import NodeFeed
from db.provision import open_database
from gateway.app.serve import (
    choose_feed,
    log_listening,
    prepare_database,
    socket_urls,
    stop_on_signals,
    token_verifier,
)
from gateway.settings import MAX_WORKERS, Settings

logger = logging.getLogger(__name__)

# What a worker is told in its environment (see gateway.app.worker).
WORKER_INDEX_ENV = "SITEBUILDER_WORKER_INDEX"
SUPERVISOR_PID_ENV = "SITEBUILDER_SUPERVISOR_PID"
# A pipe's write end: the worker writes one byte there once it listens.
READY_FD_ENV = "SITEBUILDER_WORKER_READY_FD"
# The Unix socket the node's feed is served on.
FEED_SOCKET_ENV = "SITEBUILDER_WORKER_FEED_SOCKET"

RESTART_DELAY_INITIAL_SECONDS = 0.1
RESTART_DELAY_MAX_SECONDS = 10.0
# A worker that ran this long before exiting is restarted after the initial delay again.
HEALTHY_RUN_SECONDS = 30.0
# How much longer than the shutdown grace a stopping worker may take before SIGKILL.
STOP_MARGIN_SECONDS = 5.0


class WorkersError(RuntimeError):
    """The node cannot run its workers as configured (a worker that never listened)."""


@dataclass
class Worker:
    """A running worker process and what its supervisor knows about it."""

    index: int
    process: asyncio.subprocess.Process
    started_at: float
    ready_fd: int


@dataclass
class Keeper:
    """What keeps worker `index` running: its task, and the event that tells it to let
    the worker go (the node stops, or SIGTTOU removed this worker)."""

    index: int
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    worker: Worker | None = None

    def terminate(self) -> None:
        self.leave.set()
        if self.worker is not None and self.worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.worker.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.worker is not None and self.worker.process.returncode is None:
            logger.warning("worker %d did not stop in time: killing it", self.index)
            with contextlib.suppress(ProcessLookupError):
                self.worker.process.kill()


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind (without listening) every address of `host` on `port` with SO_REUSEPORT;
    port 0 becomes one free port, the same for every address."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@contextlib.contextmanager
def run_directory(purpose: str) -> Iterator[str]:
    """A fresh directory only this user may enter (the workers' multiprocess metrics, the
    node feed's socket), removed afterwards."""
    path = tempfile.mkdtemp(prefix=f"sitebuilder-{purpose}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    """Keeps the workers running; SIGTTIN adds one, SIGTTOU removes the last one."""

    def __init__(self, settings: Settings, env: dict[str, str], count: int) -> None:
        self._settings = settings
        self._env = env
        self._initial = count
        self._keepers: dict[int, Keeper] = {}
        self._leaving: dict[int, Keeper] = {}  # removed by SIGTTOU, not yet stopped
        self._stopping = False
        self._failure: WorkersError | None = None
        self._failed = asyncio.Event()
        self._metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
        self._ready: set[int] = set()
        self.all_ready = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self._keepers)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep every worker running until `stop`; raises WorkersError when one fails
        before every worker listened on the first start."""
        for index in range(self._initial):
            self._start(index)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTTIN, self.grow)
        loop.add_signal_handler(signal.SIGTTOU, self.shrink)
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for signum in (signal.SIGTTIN, signal.SIGTTOU):
                loop.remove_signal_handler(signum)
            for wait in waits:
                wait.cancel()
            await asyncio.wait(waits)
            await self._stop_all()
        if self._failure is not None:
            raise self._failure

    def grow(self) -> None:
        index = len(self._keepers)
        if index >= MAX_WORKERS:
            logger.warning("SIGTTIN: already %d workers, the most a node runs", index)
        elif index in self._leaving:
            logger.warning("SIGTTIN: worker %d is still stopping; ask again once it has", index)
        else:
            logger.info("SIGTTIN: adding worker %d (%d workers)", index, index + 1)
            self._start(index)

    def shrink(self) -> None:
        if len(self._keepers) <= 1:
            logger.warning("SIGTTOU: the last worker stays (stop the node with SIGTERM)")
            return
        keeper = self._keepers.pop(len(self._keepers) - 1)
        self._leaving[keeper.index] = keeper
        self._ready.discard(keeper.index)
        logger.info("SIGTTOU: removing worker %d (%d workers)", keeper.index, keeper.index)
        keeper.terminate()

    def _start(self, index: int) -> None:
        keeper = Keeper(index)
        keeper.task = asyncio.create_task(self._keep_running(keeper), name=f"worker-{index}")
        self._keepers[index] = keeper

    async def _keep_running(self, keeper: Keeper) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_INITIAL_SECONDS
        while True:
            worker = await self._spawn(keeper)
            if await _wait_ready(worker.ready_fd):
                self._on_ready(keeper.index)
            status = await worker.process.wait()
            multiprocess.mark_process_dead(worker.process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if keeper.leave.is_set():
                break
            if not self.all_ready.is_set():
                self._failure = WorkersError(
                    f"worker {keeper.index} exited with status {status} before every worker "
                    "listened (its log above says why)"
                )
                self._failed.set()
                return
            if loop.time() - worker.started_at >= HEALTHY_RUN_SECONDS:
                delay = RESTART_DELAY_INITIAL_SECONDS
            logger.warning(
                "worker %d (pid %d) exited with status %s: restarting it in %.1fs",
                keeper.index,
                worker.process.pid,
                status,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(keeper.leave.wait(), delay)
                break
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)
        if not self._stopping:  # removed by SIGTTOU
            self._leaving.pop(keeper.index, None)

    def _on_ready(self, index: int) -> None:
        if index in self._ready:
            logger.info("worker %d listens again", index)
            return
        self._ready.add(index)
        if not self.all_ready.is_set() and self._ready >= set(range(self._initial)):
            self.all_ready.set()

    async def _spawn(self, keeper: Keeper) -> Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.app.worker",
                env={
                    **self._env,
                    WORKER_INDEX_ENV: str(keeper.index),
                    SUPERVISOR_PID_ENV: str(os.getpid()),
                    READY_FD_ENV: str(write_fd),
                },
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        logger.info("worker %d started (pid %d)", keeper.index, process.pid)
        keeper.worker = Worker(keeper.index, process, asyncio.get_running_loop().time(), read_fd)
        if keeper.leave.is_set():  # let go while it was being started
            keeper.terminate()
        return keeper.worker

    async def _stop_all(self) -> None:
        """SIGTERM every worker; SIGKILL those still running after the grace."""
        self._stopping = True
        keepers = [*self._keepers.values(), *self._leaving.values()]
        for keeper in keepers:
            keeper.terminate()
        tasks = [keeper.task for keeper in keepers if keeper.task is not None]
        timeout = self._settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        _, late = await asyncio.wait(tasks, timeout=timeout)
        if late:
            for keeper in keepers:
                keeper.kill()
            await asyncio.wait(late)


async def _wait_ready(fd: int) -> bool:
    """True once the worker writes its byte; False when it exits without."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.read(1) == b"1"
    finally:
        transport.close()


def worker_env(
    settings: Settings, dsn: str, feed: str, port: int, metrics_dir: str, feed_socket: str
) -> dict[str, str]:
    """The environment of every worker: this one, with the database, feed and port decided."""
    env = dict(os.environ)
    env.update(
        {
            "SITEBUILDER_DATABASE_URL": dsn,
            "SITEBUILDER_FEED": feed,
            "SITEBUILDER_HOST": settings.host,
            "SITEBUILDER_PORT": str(port),
            "SITEBUILDER_DEMO": "true" if settings.demo else "false",
            "SITEBUILDER_MIGRATE_ON_START": "false",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            FEED_SOCKET_ENV: feed_socket,
        }
    )
    return env


async def supervise(settings: Settings, count: int) -> None:
    """Run `count` workers until SIGINT/SIGTERM (see the module docstring)."""
    if sys.platform != "linux":
        raise WorkersError("--workers above 1 needs Linux (SO_REUSEPORT, PR_SET_PDEATHSIG)")
    stop = asyncio.Event()
    stop_on_signals(stop, "stopping the workers")
    token_verifier(settings)  # makes the generated secret once, before workers read it
    async with open_database(
        settings.database_url,
        settings.pgdata,
        max_slot_wal_keep_size=settings.embedded_max_slot_wal_keep_size,
    ) as database:
        logger.info("database: %s", database.describe())
        kind = await prepare_database(settings, database.dsn)
        try:
            sockets = reserve_port(settings.host, settings.port)
        except OSError as error:
            raise WorkersError(
                f"cannot listen on {settings.host}:{settings.port}: {error}"
            ) from error
        try:
            with run_directory("metrics") as metrics_dir, run_directory("feed") as feed_dir:
                chosen = settings.model_copy(update={"feed": kind})
                feed_socket = os.path.join(feed_dir, "feed.sock")
                node_feed = NodeFeed(
                    await choose_feed(chosen, database.dsn),
                    feed_socket,
                    max_bytes=settings.history_max_bytes,
                    max_age_seconds=settings.history_max_age_seconds,
                )
                port = sockets[0].getsockname()[1]
                env = worker_env(settings, database.dsn, kind, port, metrics_dir, feed_socket)
                async with _reading(node_feed, stop):
                    await _run_workers(Supervisor(settings, env, count), settings, sockets, stop)
        finally:
            for sock in sockets:
                sock.close()
    logger.info("stopped")


@contextlib.asynccontextmanager
async def _reading(node_feed: NodeFeed, stop: asyncio.Event) -> AsyncIterator[None]:
    """The node's feed read and served while the workers run; should it fail, the node
    stops (and the failure is raised)."""
    reading = asyncio.create_task(node_feed.run(), name="node-feed")
    reading.add_done_callback(lambda _: stop.set())
    try:
        listening = asyncio.create_task(node_feed.wait_listening())
        await asyncio.wait([reading, listening], return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        yield
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _run_workers(
    supervisor: Supervisor, settings: Settings, sockets: list[socket.socket], stop: asyncio.Event
) -> None:
    announce = asyncio.create_task(_announce(supervisor, settings, sockets))
    try:
        if not stop.is_set():  # a signal during the preparations
            await supervisor.run(stop)
    finally:
        announce.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announce


async def _announce(
    supervisor: Supervisor, settings: Settings, sockets: list[socket.socket]
) -> None:
    """The `listening on` line once every worker listens (not when the first does)."""
    await supervisor.all_ready.wait()
    log_listening(socket_urls(sockets), settings, f" with {supervisor.count} workers")
