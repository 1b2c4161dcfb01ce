"""Find or start the PostgreSQL the gateway uses and bring its schema up to date.

With a database URL the server is someone else's and is never started or stopped
here; without one, an embedded server runs on the gateway's data directory for as
long as the context is open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from db.embedded import EmbeddedPostgres
from db.migrations import Migration, Migrator, load_migrations

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    """The database in use: how to reach it and whether this process started it."""

    dsn: str
    embedded: bool

    def describe(self) -> str:
        """A log-safe description: the password, if any, is masked."""
        where = redact_dsn(self.dsn)
        return f"embedded PostgreSQL at {where}" if self.embedded else f"PostgreSQL at {where}"


def redact_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@asynccontextmanager
async def open_database(
    database_url: str | None, pgdata: Path, *, max_slot_wal_keep_size: str | None = None
) -> AsyncIterator[Database]:
    """The configured database, or an embedded one held until the context closes
    (with `max_slot_wal_keep_size` applied to it; an external server is not touched)."""
    if database_url:
        yield Database(database_url, embedded=False)
        return
    server = EmbeddedPostgres(pgdata, max_slot_wal_keep_size=max_slot_wal_keep_size)
    try:
        dsn = await server.start()
        yield Database(dsn, embedded=True)
    finally:
        server.stop()


async def migrate_up(dsn: str, parameters: Mapping[str, str]) -> list[Migration]:
    """Apply every pending migration; returns those applied."""
    conn = await asyncpg.connect(dsn)
    try:
        applied = await Migrator(conn, load_migrations(), parameters).up()
    finally:
        await conn.close()
    for migration in applied:
        logger.info("applied migration %s", migration.label)
    return applied
