"""The embedded PostgreSQL: set up for logical replication, stopped by its last holder."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import psutil
import pytest

from db.embedded import REQUIRED_SETTINGS, EmbeddedPostgres, EmbeddedPostgresError, running_dsn


async def _settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            [s.name for s in REQUIRED_SETTINGS],
        )
    finally:
        await conn.close()
    return {row["name"]: row["setting"] for row in rows}


async def test_a_new_server_runs_with_logical_replication_settings(server_tmp_path: Path) -> None:
    server = EmbeddedPostgres(server_tmp_path / "pgdata")
    try:
        dsn = await server.start()
        settings = await _settings(dsn)
    finally:
        server.stop()

    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 10
    assert int(settings["max_wal_senders"]) >= 10
    assert running_dsn(server_tmp_path / "pgdata") is None


async def test_max_slot_wal_keep_size_is_applied(server_tmp_path: Path) -> None:
    """A forgotten replication slot must not fill the disk of the embedded server."""
    pgdata = server_tmp_path / "pgdata"
    for size in ("64MB", "1GB"):  # a new value holds on the next start too
        server = EmbeddedPostgres(pgdata, max_slot_wal_keep_size=size)
        try:
            dsn = await server.start()
            assert await _current(dsn, "max_slot_wal_keep_size") == size
        finally:
            server.stop()
    with pytest.raises(EmbeddedPostgresError, match="not a size"):
        EmbeddedPostgres(pgdata, max_slot_wal_keep_size="lots")


async def _current(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        value: str = await conn.fetchval("SELECT current_setting($1)", name)
    finally:
        await conn.close()
    return value


async def test_a_holder_killed_without_letting_go_does_not_keep_the_server_up(
    server_tmp_path: Path,
) -> None:
    pgdata = server_tmp_path / "pgdata"
    first = EmbeddedPostgres(pgdata)
    await first.start()
    first.stop()
    dead_pid = max(psutil.pids()) + 100_000
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead_pid]))

    second = EmbeddedPostgres(pgdata)
    try:
        await second.start()
        assert running_dsn(pgdata) is not None
    finally:
        second.stop()

    assert running_dsn(pgdata) is None
