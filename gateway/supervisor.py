"""`serve --workers N`: N gateway processes on one port, kept running, stopped together.

The supervisor does once what must happen once per node (start an embedded
PostgreSQL, migrate, claim the node's replication slots, seed the demo), reserves
the port, then starts each worker (`gateway.worker`) with the database's DSN and the
port's real number. Every worker binds the port with SO_REUSEPORT, so the kernel
spreads new connections over them; the supervisor's own socket on it is bound but
never listens, so it receives none, and keeps the port ours while workers restart.

A worker that exits is started again, after a delay that doubles while it keeps
dying young. One that fails before it ever listened on the first start stops the
node: that is a configuration error, not a crash. SIGTERM or SIGINT stops every
worker with SIGTERM (each closes its connections within the shutdown grace), kills
those that outlast it, then stops the embedded database.

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
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import multiprocess

from db.provision import open_database
from gateway.app import log_listening, prepare_database, token_verifier
from gateway.settings import Settings

logger = logging.getLogger(__name__)

# What a worker is told in its environment (see gateway.worker).
WORKER_INDEX_ENV = "SITEBUILDER_WORKER_INDEX"
SUPERVISOR_PID_ENV = "SITEBUILDER_SUPERVISOR_PID"
# A pipe's write end: the worker writes one byte there once it listens.
READY_FD_ENV = "SITEBUILDER_WORKER_READY_FD"

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


def listening_urls(sockets: list[socket.socket]) -> list[str]:
    urls = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        urls.append(f"ws://{shown}:{port}/")
    return urls


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh directory for the workers' multiprocess metrics, removed afterwards."""
    path = tempfile.mkdtemp(prefix="sitebuilder-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    def __init__(self, settings: Settings, env: dict[str, str], count: int) -> None:
        self._settings = settings
        self._env = env
        self._count = count
        self._workers: dict[int, Worker] = {}
        self._stopping = asyncio.Event()
        self._metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
        self._ready: set[int] = set()
        self.all_ready = asyncio.Event()

    @property
    def count(self) -> int:
        return self._count

    async def run(self, stop: asyncio.Event) -> None:
        """Keep every worker running until `stop`; raises WorkersError when one fails
        before it ever listened."""
        keepers = [
            asyncio.create_task(self._keep_running(index), name=f"worker-{index}")
            for index in range(self._count)
        ]
        stopped = asyncio.create_task(stop.wait(), name="supervisor-stop")
        try:
            done, _ = await asyncio.wait([stopped, *keepers], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()  # a keeper ends before the stop only by raising
        finally:
            stopped.cancel()
            await self._stop_all(keepers)

    async def _keep_running(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY_INITIAL_SECONDS
        while True:
            worker = await self._spawn(index)
            if await _wait_ready(worker.ready_fd):
                self._on_ready(index)
            status = await worker.process.wait()
            multiprocess.mark_process_dead(worker.process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return
            if index not in self._ready:
                raise WorkersError(
                    f"worker {index} exited with status {status} before it listened "
                    "(its log above says why)"
                )
            if loop.time() - worker.started_at >= HEALTHY_RUN_SECONDS:
                delay = RESTART_DELAY_INITIAL_SECONDS
            logger.warning(
                "worker %d (pid %d) exited with status %s: restarting it in %.1fs",
                index,
                worker.process.pid,
                status,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)

    def _on_ready(self, index: int) -> None:
        if index in self._ready:
            logger.info("worker %d listens again", index)
            return
        self._ready.add(index)
        if len(self._ready) == self._count:
            self.all_ready.set()

    async def _spawn(self, index: int) -> Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.worker",
                env={
                    **self._env,
                    WORKER_INDEX_ENV: str(index),
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
        logger.info("worker %d started (pid %d)", index, process.pid)
        worker = Worker(index, process, asyncio.get_running_loop().time(), read_fd)
        self._workers[index] = worker
        if self._stopping.is_set():  # stopped while it was being started
            process.send_signal(signal.SIGTERM)
        return worker

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> None:
        """SIGTERM every worker; SIGKILL those still running after the grace."""
        self._stopping.set()
        for worker in self._workers.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        timeout = self._settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        _, late = await asyncio.wait(keepers, timeout=timeout)
        if late:
            for worker in self._workers.values():
                if worker.process.returncode is None:
                    logger.warning("worker %d did not stop in time: killing it", worker.index)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            await asyncio.wait(late)
        for keeper in keepers:  # run() raised the first failure; the others are the same
            keeper.exception()


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
    settings: Settings, dsn: str, feed: str, port: int, metrics_dir: str
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
        }
    )
    return env


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        logger.info("received %s: stopping the workers", signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


async def supervise(settings: Settings, count: int) -> None:
    """Run `count` workers until SIGINT/SIGTERM (see the module docstring)."""
    if sys.platform != "linux":
        raise WorkersError("--workers above 1 needs Linux (SO_REUSEPORT, PR_SET_PDEATHSIG)")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    token_verifier(settings)  # makes the generated secret once, before workers read it
    async with open_database(
        settings.database_url,
        settings.pgdata,
        max_slot_wal_keep_size=settings.embedded_max_slot_wal_keep_size,
    ) as database:
        logger.info("database: %s", database.describe())
        feed = await prepare_database(settings, database.dsn, workers=count)
        sockets = reserve_port(settings.host, settings.port)
        try:
            with metrics_directory() as metrics_dir:
                port = sockets[0].getsockname()[1]
                env = worker_env(settings, database.dsn, feed, port, metrics_dir)
                supervisor = Supervisor(settings, env, count)
                announce = asyncio.create_task(_announce(supervisor, settings, sockets))
                try:
                    await supervisor.run(stop)
                finally:
                    announce.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await announce
        finally:
            for sock in sockets:
                sock.close()
    logger.info("stopped")


async def _announce(
    supervisor: Supervisor, settings: Settings, sockets: list[socket.socket]
) -> None:
    """The `listening on` line once every worker listens (not when the first does)."""
    await supervisor.all_ready.wait()
    log_listening(listening_urls(sockets), settings, f" with {supervisor.count} workers")
