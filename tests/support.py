"""Helpers shared by tests that drive the gateway from outside, as a user would."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0
_LISTENING = re.compile(r"listening on ws://(?P<host>[^ ]+):(?P<port>\d+)/")
# Memory-backed, where there is one (Linux's tmpfs).
_MEMORY_FS = Path("/dev/shm")


def server_directory(prefix: str) -> Path:
    """A new directory for a database server's files, in memory when the machine has a
    tmpfs; the caller removes it.

    Every test creates and drops a database, some 300 files each. On ext4 without a
    journal (this machine's disk) each new inode is searched for past every one freed
    in the last minutes (ext4's recently_deleted), so after a few hundred tests a
    CREATE DATABASE took 150-450 ms instead of 40 ms, nearly all of it in the kernel."""
    in_memory = _MEMORY_FS.is_dir() and os.access(_MEMORY_FS, os.W_OK)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_MEMORY_FS if in_memory else None))


@asynccontextmanager
async def triggers_off(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """A transaction in which `table`'s enabled triggers do not fire, for writing a
    state the triggers would not allow (a past updated_at, say).

    Done as the table's owner, which the tests' role is on every server, rather than
    with session_replication_role, which only a superuser may set."""
    async with conn.transaction():
        names = await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass"
            " AND NOT tgisinternal AND tgenabled <> 'D'",
            f"public.{table}",
        )
        for row in names:
            await conn.execute(f'ALTER TABLE public.{table} DISABLE TRIGGER "{row["tgname"]}"')
        yield
        for row in names:
            await conn.execute(f'ALTER TABLE public.{table} ENABLE TRIGGER "{row["tgname"]}"')


@dataclass
class HttpResponse:
    status: int
    body: str
    headers: dict[str, str]


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> HttpResponse:
    """One plain HTTP/1.1 GET, as a load balancer's probe would send it."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return HttpResponse(int(status.split()[1]), body, headers)


def cli_env(**settings: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this one, minus any SITEBUILDER_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITEBUILDER_")}
    env.update({f"SITEBUILDER_{name.upper()}": value for name, value in settings.items()})
    return env


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `sitebuilder-gateway ARGS` to completion; returns (status, stdout, stderr)."""
    return await run_python("-m", "gateway.app.cli", *args, env=env)


async def run_python(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `python ARGS` in the repository to completion; (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class ServeProcess:
    """A `sitebuilder-gateway serve` subprocess and what it logged so far."""

    process: asyncio.subprocess.Process
    port: int = 0
    log: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, env: dict[str, str]) -> ServeProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.app.cli",
            "serve",
            "--port",
            "0",
            env=env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        serving = cls(process)
        line = await asyncio.wait_for(
            serving.wait_for_log(_LISTENING.pattern), STARTUP_TIMEOUT_SECONDS
        )
        match = _LISTENING.search(line)
        assert match is not None
        serving.port = int(match["port"])
        return serving

    async def wait_for_log(self, pattern: str) -> str:
        """The first log line (already seen or coming) that matches `pattern`."""
        for line in self.log:
            if re.search(pattern, line):
                return line
        assert self.process.stderr is not None
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                raise AssertionError(
                    f"serve exited before logging {pattern!r}:\n" + "".join(self.log)
                )
            line = raw.decode()
            self.log.append(line)
            if re.search(pattern, line):
                return line

    async def stop(self, signum: int) -> int:
        """Send `signum`, wait for exit, return the exit status; keeps the rest of the log."""
        if self.process.returncode is None:
            self.process.send_signal(signum)
        assert self.process.stderr is not None
        rest = await asyncio.wait_for(self.process.stderr.read(), SHUTDOWN_TIMEOUT_SECONDS)
        self.log.append(rest.decode())
        status = await asyncio.wait_for(self.process.wait(), SHUTDOWN_TIMEOUT_SECONDS)
        return status

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
