"""The `sitebuilder-gateway` command as a user runs it: real subprocesses, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from db.embedded import running_dsn
from db.migrations import load_migrations
from db.replication_stream import ReplicationStream
from gateway.app.cli import BENCH_EXTRA_MISSING, BENCH_MODULES
from gateway.edge.tokens import TokenVerifier, is_anonymous, verify_token
from tests.conftest import PUBLICATION, PostgresServer, drop_replication_slots
from tests.gateway_fixtures import node_slot, slot_for
from tests.support import (
    ServeProcess,
    cli_env,
    http_get,
    run_cli,
    run_python,
)

pytestmark = pytest.mark.hosted_postgres

SECRET = "test-secret-with-at-least-32-bytes-of-entropy"
# Python with the bench extra's modules gone, as in an installation of the gateway alone
# (None in sys.modules: importing one raises ModuleNotFoundError, find_spec finds nothing).
WITHOUT_BENCH_EXTRA = f"import sys; sys.modules.update(dict.fromkeys({BENCH_MODULES!r}))\n"


async def test_migrate_status_lists_every_migration_with_its_checksum(database_dsn: str) -> None:
    status, out, _ = await run_cli("migrate", "status", env=cli_env(database_url=database_dsn))

    assert status == 0
    lines = out.splitlines()
    migrations = load_migrations()
    assert len(lines) == len(migrations)
    for line, migration in zip(lines, migrations, strict=True):
        label, state, checksum, *_ = line.split()
        assert (label, state, checksum) == (migration.label, "applied", migration.checksum)


async def test_migrate_down_to_zero_then_up_keeps_unrelated_data(
    database_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("CREATE SCHEMA crm; CREATE TABLE crm.leads (name text)")
    await conn.execute("INSERT INTO crm.leads VALUES ('kept')")
    env = cli_env(database_url=database_dsn)

    down, down_out, down_err = await run_cli("migrate", "down", "--to", "0", env=env)
    assert down == 0, down_err
    assert "database at version 0" in down_out
    assert await conn.fetchval("SELECT to_regclass('public.projects')") is None

    up, up_out, up_err = await run_cli("migrate", "up", env=env)
    assert up == 0, up_err
    assert f"database at version {len(load_migrations())}" in up_out
    assert await conn.fetchval("SELECT to_regclass('public.projects') IS NOT NULL")
    assert await conn.fetchval("SELECT name FROM crm.leads") == "kept"


async def test_migrate_down_defaults_to_one_step(database_dsn: str) -> None:
    status, out, _ = await run_cli("migrate", "down", env=cli_env(database_url=database_dsn))

    assert status == 0
    last = load_migrations()[-1]
    assert out.splitlines()[0] == f"down {last.label}"
    assert f"database at version {last.version - 1}" in out


async def test_token_creates_the_user_and_signs_its_id(
    database_dsn: str, conn: asyncpg.Connection
) -> None:
    user_id = uuid.uuid4()
    env = cli_env(database_url=database_dsn, jwt_secret=SECRET)

    status, out, err = await run_cli(
        "token", str(user_id), "--create-user", "--email", "ada@example.test", env=env
    )

    assert status == 0, err
    claims = verify_token(out.strip(), SECRET, audience="authenticated")
    assert claims["sub"] == str(user_id)
    assert claims["email"] == "ada@example.test"
    assert claims["role"] == "authenticated"
    email = await conn.fetchval("SELECT email FROM auth.users WHERE id = $1", user_id)
    assert email == "ada@example.test"


async def test_token_anon_prints_a_supabase_style_anon_key(tmp_path: Path) -> None:
    env = cli_env(data_dir=str(tmp_path), jwt_secret=SECRET)

    status, out, err = await run_cli("token", "--anon", env=env)

    assert status == 0, err
    claims = TokenVerifier(audience="authenticated", secret=SECRET).verify_key(out.strip())
    assert is_anonymous(claims)
    assert claims["role"] == "anon"


async def test_token_with_no_secret_set_uses_one_stored_0600_in_the_data_dir(
    tmp_path: Path,
) -> None:
    env = cli_env(data_dir=str(tmp_path))

    first_status, first, _ = await run_cli("token", env=env)
    second_status, second, _ = await run_cli("token", env=env)

    assert first_status == second_status == 0
    secret_file = tmp_path / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    first_claims = verify_token(first.strip(), secret, audience="authenticated")
    second_claims = verify_token(second.strip(), secret, audience="authenticated")
    assert first_claims["sub"] != second_claims["sub"]


async def test_token_create_user_before_migrations_explains_what_to_run(
    empty_database_dsn: str, pg_server: PostgresServer
) -> None:
    if pg_server.kind != "embedded":
        pytest.skip("a hosted database has auth.users before any migration")
    env = cli_env(database_url=empty_database_dsn, jwt_secret=SECRET)

    status, out, err = await run_cli("token", "--create-user", env=env)

    assert status == 1
    assert out == ""
    assert "migrate up" in err
    assert "Traceback" not in err


async def test_db_prints_the_configured_database_url(database_dsn: str) -> None:
    status, out, _ = await run_cli("db", env=cli_env(database_url=database_dsn))

    assert status == 0
    assert out.strip() == database_dsn


async def test_db_without_a_running_embedded_server_says_how_to_start_one(
    tmp_path: Path,
) -> None:
    status, out, err = await run_cli("db", env=cli_env(data_dir=str(tmp_path)))

    assert status == 1
    assert out == ""
    assert "sitebuilder-gateway serve" in err


@pytest.mark.parametrize(
    ("setting", "value"),
    [("presence_backend", "redis"), ("workers", "0"), ("port", "http")],
)
async def test_an_invalid_setting_is_named_in_one_line_not_a_traceback(
    tmp_path: Path, setting: str, value: str
) -> None:
    env = cli_env(data_dir=str(tmp_path), **{setting: value})

    status, out, err = await run_cli("serve", env=env)

    assert status == 2
    assert out == ""
    assert "Traceback" not in err
    named = "SITEBUILDER_REDIS_URL" if setting == "presence_backend" else setting.upper()
    assert named in err


@pytest.mark.parametrize("args", [["fanout"], ["storm", "--help"]], ids=["fanout", "help"])
async def test_bench_without_the_bench_extra_says_what_to_install_in_one_line(
    args: list[str],
) -> None:
    status, out, err = await run_python(
        "-c",
        WITHOUT_BENCH_EXTRA + "from gateway.app.cli import main; sys.exit(main(sys.argv[1:]))",
        "bench",
        *args,
        env=cli_env(),
    )

    assert status == 2
    assert out == ""
    assert err == BENCH_EXTRA_MISSING + "\n"


async def test_no_gateway_module_imports_the_load_test() -> None:
    status, out, err = await run_python(
        "-c",
        WITHOUT_BENCH_EXTRA
        + "import importlib, pkgutil, gateway\n"
        + "for module in pkgutil.iter_modules(gateway.__path__, 'gateway.'):\n"
        + "    importlib.import_module(module.name)\n"
        + "print(sorted(name for name in sys.modules if name.split('.')[0] == 'loadtest'))",
        env=cli_env(),
    )

    assert status == 0, err
    assert out == "[]\n"


async def test_serve_on_embedded_postgres_stops_it_on_sigint_and_sigterm_and_keeps_data(
    server_tmp_path: Path,
) -> None:
    """Stopped by SIGINT, started again and stopped by SIGTERM: each time the server it
    started stops with it, and every row written is there at the next start (one initdb
    for both signals)."""
    env = cli_env(data_dir=str(server_tmp_path))
    pgdata = server_tmp_path / "postgres"
    written: list[str] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        serving = await ServeProcess.start(env)
        try:
            await serving.wait_for_log(r"database: embedded PostgreSQL")
            assert (await http_get(serving.port, "/healthz")).status == 200
            assert (await http_get(serving.port, "/readyz")).status == 200
            db_status, dsn, _ = await run_cli("db", env=env)
            assert db_status == 0
            assert dsn.strip() == running_dsn(pgdata)
            email = f"kept-{signum.name}@example.test"
            assert await users_after_insert(dsn.strip(), email) == [*written, email]
            written.append(email)
            postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))

            assert await serving.stop(signum) == 0
        finally:
            serving.kill()

        assert any("gateway.app.serve: stopped" in line for line in serving.log), signum
        assert not postmaster.is_running() or postmaster.status() == psutil.STATUS_ZOMBIE
        assert running_dsn(pgdata) is None

    again = await ServeProcess.start(env)
    try:
        status, dsn, _ = await run_cli("db", env=env)
        assert status == 0
        conn = await asyncpg.connect(dsn.strip())
        try:
            emails = await conn.fetch("SELECT email FROM auth.users ORDER BY created_at, email")
        finally:
            await conn.close()
        assert [row["email"] for row in emails] == written
        assert await again.stop(signal.SIGTERM) == 0
    finally:
        again.kill()


async def users_after_insert(dsn: str, email: str) -> list[str]:
    """Insert a user with `email`; every user's email then, oldest first."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO auth.users (email) VALUES ($1)", email)
        rows = await conn.fetch("SELECT email FROM auth.users ORDER BY created_at, email")
    finally:
        await conn.close()
    return [row["email"] for row in rows]


async def test_serve_on_an_external_database_reports_readiness_and_leaves_it_running(
    tmp_path: Path, database_dsn: str, pg_server: PostgresServer
) -> None:
    env = cli_env(database_url=database_dsn, data_dir=str(tmp_path), jwt_secret=SECRET)

    serving = await ServeProcess.start(env)
    try:
        await serving.wait_for_log("feed=replication slot=sitebuilder_gateway_0")
        ready = await http_get(serving.port, "/readyz")
        assert ready.status == 200
        assert "feed=replication" in ready.body
        assert "slot_lag_bytes=" in ready.body
        assert (await http_get(serving.port, "/nowhere")).status == 404
        database = urlsplit(database_dsn).path.lstrip("/")
        admin = await asyncpg.connect(pg_server.admin_dsn)
        try:
            # Keep the gateway's feed from reconnecting (and re-making its slot) meanwhile.
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            await drop_replication_slots(admin, database)
            await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        finally:
            await admin.close()
        unready = await http_get(serving.port, "/readyz")
        assert unready.status == 503
        assert unready.body.startswith("not ready:")
        assert (await http_get(serving.port, "/healthz")).status == 200
        assert await serving.stop(signal.SIGTERM) == 0
    finally:
        serving.kill()

    assert not (tmp_path / "postgres").exists()
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        assert await asyncio.wait_for(admin.fetchval("SELECT 1"), 10) == 1
    finally:
        await admin.close()


async def test_schema_prints_the_json_schema_of_every_frame() -> None:
    status, out, _ = await run_cli("schema", env=cli_env())
    assert status == 0
    schema = json.loads(out)
    frame_types = set()
    for definition in schema["$defs"].values():
        frame_type = definition.get("properties", {}).get("type", {}).get("const")
        if frame_type is not None:
            frame_types.add(frame_type)
    client = {"auth", "auth.refresh", "subscribe", "unsubscribe", "ping"}
    server = {"ok", "error", "snapshot", "change", "unsubscribed", "reset", "closing"}
    assert client | server <= frame_types


async def test_slot_status_and_drop(database_dsn: str) -> None:
    slot = node_slot(database_dsn)
    env = cli_env(database_url=database_dsn, replication_slot=slot_for(database_dsn))
    status, out, _ = await run_cli("slot", "status", env=env)
    assert (status, out.strip()) == (0, f"no slot {slot} (the feed creates it on start)")

    stream = ReplicationStream(database_dsn, slot, PUBLICATION)
    try:
        await asyncio.wait_for(stream.connect(), 10)
        await asyncio.wait_for(stream.ensure_slot(), 10)
        await asyncio.wait_for(stream.start(), 10)
        # Neither changes anything: side by side (each CLI process mostly imports).
        (status, out, _), (refused, _, err) = await asyncio.gather(
            run_cli("slot", "status", env=env), run_cli("slot", "drop", env=env)
        )
        assert status == 0
        lines = dict(line.split(None, 1) for line in out.strip().splitlines())
        assert lines["slot"] == slot
        assert lines["plugin"] == "pgoutput"
        assert lines["active"].startswith("yes (pid ")
        assert int(lines["lag_bytes"]) >= 0

        assert refused == 1
        assert "--force" in err
        status, out, _ = await run_cli("slot", "drop", "--force", env=env)
        assert (status, out.strip()) == (0, f"dropped slot {slot}")
    finally:
        await asyncio.wait_for(stream.close(), 10)
    status, out, _ = await run_cli("slot", "drop", env=env)
    assert (status, out.strip()) == (
        0,
        f"no slot {slot} (the feed creates it on start)",
    )
