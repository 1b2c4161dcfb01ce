"""The gateway under test: one this benchmark starts and stops, or an existing deployment.

Started here (the default), it is `sitebuilder-gateway serve` (`--workers N`: a
supervisor and N worker processes on the one port) in a process of its own, with an
embedded PostgreSQL in a temporary directory (or the server of `--database-url`), a
fresh signing secret, replication slots named for this run and per-user connection
limits lifted (one simulated user holds many connections). On the way out it gets
SIGTERM like any deployment, its slots are dropped and its directory removed, so a run
leaves no process and no slot behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from db.embedded import running_dsn
from gateway.app.secrets import jwt_secret
from gateway.app.supervisor import WORKER_INDEX_ENV
from gateway.settings import Settings

READY_TIMEOUT = 300.0  # a first start runs initdb and every migration
STOP_TIMEOUT = 30.0


class DeploymentError(Exception):
    """The gateway could not be started or reached."""


@dataclass
class Deployment:
    url: str
    database_url: str
    jwt_secret: str
    audience: str
    gateway_pid: int | None  # `serve`, or the supervisor of its workers
    postgres_pid: int | None

    def worker_pids(self, besides: frozenset[int] = frozenset()) -> list[int]:
        """The gateway's worker processes: the supervisor's children that listen on the
        port (not the PostgreSQL it may have started, nor any helper process); only
        those not `besides` (reading a process's sockets reads every socket's line)."""
        return listening_children(self.gateway_pid, port_of(self.url), besides)


def worker_index(pid: int) -> str | None:
    """The index the supervisor gave a worker process (in its environment), if any."""
    try:
        return psutil.Process(pid).environ().get(WORKER_INDEX_ENV)
    except psutil.Error:
        return None


def port_of(ws_url: str) -> int:
    port = urllib.parse.urlsplit(ws_url).port
    if port is None:
        return 443 if ws_url.startswith("wss:") else 80
    return port


def listening_children(
    parent: int | None, port: int, besides: frozenset[int] = frozenset()
) -> list[int]:
    found: list[int] = []
    if parent is None:
        return found
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(parent).children():
            if child.pid in besides:
                continue
            with contextlib.suppress(psutil.Error):
                if any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port == port
                    for c in child.net_connections("tcp")
                ):
                    found.append(child.pid)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_url(ws_url: str, path: str) -> str:
    base = ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    return base.rstrip("/") + path


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def all_ready(ws_url: str, process: subprocess.Popen[bytes] | None, workers: int) -> bool:
    if workers > 1 and process is not None:
        listening = listening_children(process.pid, port_of(ws_url))
        if len(listening) < workers:
            return False
    return is_ready(ws_url)


def is_ready(ws_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url(ws_url, "/readyz"), timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(
    ws_url: str, process: subprocess.Popen[bytes] | None, log: Path | None, workers: int = 1
) -> None:
    """Until /readyz answers 200 and, with workers, every one of them listens (each opens
    the port once its change feed runs), so the editors can spread over all of them."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not await asyncio.to_thread(all_ready, ws_url, process, workers):
        if process is not None and process.poll() is not None:
            tail = await asyncio.to_thread(log_tail, log) if log else ""
            raise DeploymentError(f"the gateway exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"{http_url(ws_url, '/readyz')} not ready in {READY_TIMEOUT} s")
        await asyncio.sleep(0.2)


async def postmaster_of(database_url: str) -> int | None:
    """The server's main process, when it runs on this host (for its CPU and memory)."""
    conn = await asyncpg.connect(database_url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(backend).parent()
        if parent is not None and parent.name().startswith("postgres"):
            return parent.pid
    return None


def embedded_postmaster(data_dir: Path) -> int | None:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().split("\n", 1)[0])


@contextlib.asynccontextmanager
async def attached(
    url: str, database_url: str, secret: str | None, gateway_pid: int | None
) -> AsyncIterator[Deployment]:
    """An existing deployment: nothing is started and nothing stopped."""
    settings = Settings()
    await wait_ready(url, None, None)
    yield Deployment(
        url=url,
        database_url=database_url,
        jwt_secret=secret or jwt_secret(settings),
        audience=settings.jwt_audience,
        gateway_pid=gateway_pid,
        postgres_pid=await postmaster_of(database_url),
    )


@contextlib.asynccontextmanager
async def started(
    database_url: str | None, feed: str, extra_env: dict[str, str], workers: int | None = None
) -> AsyncIterator[Deployment]:
    """A gateway process of this run's own, torn down whatever happens."""
    data_dir = Path(tempfile.mkdtemp(prefix="sitebuilder-bench-"))
    port = free_port()
    secret = secrets.token_urlsafe(32)
    slot = f"bench_{os.getpid()}_{port}"  # the prefix of every worker's slot
    env = {
        **os.environ,
        "SITEBUILDER_DATA_DIR": str(data_dir),
        "SITEBUILDER_HOST": "127.0.0.1",
        "SITEBUILDER_PORT": str(port),
        "SITEBUILDER_JWT_SECRET": secret,
        "SITEBUILDER_FEED": feed,
        "SITEBUILDER_REPLICATION_SLOT": slot,
        "SITEBUILDER_MAX_CONNECTIONS_PER_USER": "1000000",
        # Every simulated editor connects from 127.0.0.1, thousands at once.
        "SITEBUILDER_MAX_UNAUTHENTICATED_CONNECTIONS": "1000000",
        "SITEBUILDER_MAX_UNAUTHENTICATED_PER_ADDRESS": "1000000",
        "SITEBUILDER_LOG_LEVEL": "WARNING",
        # picows, the editors' client, grows a connection's read buffer to the largest
        # frame it received and never shrinks it: 5,000 editors' presence states (up to
        # 850 KB each) held 2.7 GB. In fragments, each holds 16 KiB at a time.
        "SITEBUILDER_FRAGMENT_BYTES": "16384",
        **extra_env,
    }
    if database_url:
        env["SITEBUILDER_DATABASE_URL"] = database_url
    else:
        env.pop("SITEBUILDER_DATABASE_URL", None)
    log = data_dir / "gateway.log"
    url = f"ws://127.0.0.1:{port}/"
    process = spawn_gateway(env, log, workers)
    postmaster: int | None = None
    try:
        await wait_ready(url, process, log, workers or 1)
        dsn = database_url or running_dsn(data_dir / "postgres")
        if dsn is None:
            raise DeploymentError("the embedded PostgreSQL is not running")
        postmaster = embedded_postmaster(data_dir) or await postmaster_of(dsn)
        yield Deployment(
            url=url,
            database_url=dsn,
            jwt_secret=secret,
            audience=Settings().jwt_audience,
            gateway_pid=process.pid,
            postgres_pid=postmaster,
        )
    finally:
        await asyncio.to_thread(stop, process)
        if database_url:
            await drop_slots(database_url, slot)
        elif postmaster is not None:
            await asyncio.to_thread(stop_leftover, postmaster)
        shutil.rmtree(data_dir, ignore_errors=True)


def spawn_gateway(env: dict[str, str], log: Path, workers: int | None) -> subprocess.Popen[bytes]:
    """`serve` in a session of its own, so a hung one can be killed with its children."""
    command = [sys.executable, "-m", "gateway.app.cli", "serve"]
    if workers is not None:
        command += ["--workers", str(workers)]
    with log.open("wb") as log_file:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator's stop would; SIGKILL the process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stop_leftover(postmaster: int) -> None:
    """An embedded server the gateway failed to stop: fast shutdown, then kill."""
    with contextlib.suppress(psutil.NoSuchProcess):
        server = psutil.Process(postmaster)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            server.kill()


async def drop_slots(database_url: str, prefix: str) -> None:
    """The run's slots (`prefix` and every worker's `prefix_…`) would hold WAL on a shared
    server forever: drop each once it is idle."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            slots = await conn.fetch(
                "SELECT slot_name, active FROM pg_replication_slots"
                " WHERE slot_name = $1 OR starts_with(slot_name, $1 || '_')",
                prefix,
            )
            for slot in slots:
                if not slot["active"]:
                    with contextlib.suppress(asyncpg.UndefinedObjectError):
                        await conn.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
            if all(not slot["active"] for slot in slots):
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
