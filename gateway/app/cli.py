"""`sitebuilder-gateway`: serve, migrate, manage the replication slot, mint dev tokens,
show the database DSN."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
import uuid
from collections.abc import Callable, Sequence

import asyncpg
import orjson
import uvloop
from pydantic import ValidationError

from db.embedded import EmbeddedPostgresError, running_dsn
from db.migrations import MigrationError, Migrator, load_migrations
from db.provision import open_database
from db.replication_stream import (
    ReplicationError,
    SlotInUse,
    SlotStatus,
    drop_slot,
    lsn_to_str,
)
from gateway.app.secrets import jwt_secret
from gateway.app.slots import NodeNameInUse, node_slots, prune_slots
from gateway.edge.tokens import mint_anon_key, mint_token
from gateway.presence.model import PresenceUnavailable
from gateway.settings import MAX_WORKERS, Settings

logger = logging.getLogger("gateway")

DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600
# What loadtest/ imports beyond the gateway's own dependencies: the `bench` extra's.
BENCH_MODULES = ("picows", "hdrh", "matplotlib", "hypothesis")
BENCH_EXTRA_MISSING = (
    "sitebuilder-gateway: bench needs the bench extra: pip install 'sitebuilder-realtime[bench]'"
)


class CommandError(RuntimeError):
    """A failure worth one line on stderr and exit status 1, not a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sitebuilder-gateway",
        description=(
            "Realtime collaboration gateway for the AI site builder. "
            "Settings come from SITEBUILDER_* environment variables (see README)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (embedded PostgreSQL by default)")
    serve.add_argument("--host", help="bind address (overrides SITEBUILDER_HOST)")
    serve.add_argument("--port", type=int, help="port (overrides SITEBUILDER_PORT)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="seed demo users and a project, serve the demo editor at / (SITEBUILDER_DEMO)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="worker processes on the one port (overrides SITEBUILDER_WORKERS; auto: one per core)",
    )

    migrate = commands.add_parser("migrate", help="apply, roll back or list schema migrations")
    steps = migrate.add_subparsers(dest="direction", required=True, metavar="ACTION")
    up = steps.add_parser("up", help="apply pending migrations")
    up.add_argument("--to", type=int, metavar="N", help="stop after migration N (default: all)")
    down = steps.add_parser("down", help="roll back migrations")
    down.add_argument(
        "--to", type=int, metavar="N", help="roll back to version N (default: one step; 0: all)"
    )
    steps.add_parser("status", help="list migrations with checksum and state")

    token = commands.add_parser("token", help="print a signed development JWT for a user")
    token.add_argument(
        "user_id", nargs="?", type=uuid.UUID, help="user id (uuid); default: a new random one"
    )
    token.add_argument("--email", help="email claim (and email of a created user)")
    token.add_argument(
        "--create-user", action="store_true", help="create the user in auth.users if absent"
    )
    token.add_argument(
        "--anon",
        action="store_true",
        help="a Supabase-style anon key instead (role anon, no user: public projects only)",
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL_SECONDS,
        metavar="SECONDS",
        help=f"lifetime in seconds (default {DEFAULT_TOKEN_TTL_SECONDS})",
    )

    slot = commands.add_parser("slot", help="inspect, drop or prune this node's replication slots")
    slot_actions = slot.add_subparsers(dest="action", required=True, metavar="ACTION")
    slot_actions.add_parser("status", help="positions, WAL held back and state of this node's slot")
    drop = slot_actions.add_parser(
        "drop",
        help="drop this node's slots (frees their WAL; resuming clients then get a reset)",
    )
    drop.add_argument(
        "--force", action="store_true", help="also end the gateway connection streaming from it"
    )
    prune = slot_actions.add_parser(
        "prune", help="drop the per-worker slots earlier versions made (all but the node's)"
    )
    prune.add_argument(
        "--force", action="store_true", help="also end the gateway connections streaming from them"
    )

    commands.add_parser("db", help="print the DSN of the database in use")
    commands.add_parser("schema", help="print the JSON Schema of every websocket frame")
    bench = commands.add_parser(
        "bench",
        help="run a load-test scenario (fanout, projects, storm, reconnect, idle, reference)",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="see: bench --help")
    return parser


async def _migrate(settings: Settings, args: argparse.Namespace) -> None:
    async with open_database(settings.database_url, settings.pgdata) as database:
        conn = await asyncpg.connect(database.dsn)
        try:
            migrator = Migrator(conn, load_migrations(), settings.migration_parameters)
            if args.direction == "status":
                for state in await migrator.status():
                    applied = (
                        state.applied_at.isoformat(" ", "seconds") if state.applied_at else "-"
                    )
                    print(f"{state.label:<24} {state.state:<9} {state.checksum}  {applied}")
                return
            if args.direction == "up":
                done = await migrator.up(args.to)
            else:
                done = await migrator.down(args.to)
            for migration in done:
                print(f"{args.direction:<4} {migration.label}")
            print(f"database at version {await migrator.current_version()}")
        finally:
            await conn.close()


async def _create_user(settings: Settings, user_id: uuid.UUID, email: str | None) -> None:
    async with open_database(settings.database_url, settings.pgdata) as database:
        conn = await asyncpg.connect(database.dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('auth.users') IS NOT NULL"):
                raise CommandError(
                    "auth.users does not exist: run `sitebuilder-gateway migrate up`"
                )
            await conn.execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                user_id,
                email,
            )
        finally:
            await conn.close()


def _token(settings: Settings, args: argparse.Namespace) -> None:
    if args.anon:
        print(mint_anon_key(jwt_secret(settings), ttl_seconds=args.ttl))
        return
    user_id = args.user_id or uuid.uuid4()
    if args.create_user:
        asyncio.run(_create_user(settings, user_id, args.email))
        logger.info("user %s exists in auth.users", user_id)
    print(
        mint_token(
            jwt_secret(settings),
            user_id,
            audience=settings.jwt_audience,
            ttl_seconds=args.ttl,
            email=args.email,
        )
    )


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"a number from 1 to {MAX_WORKERS}, or auto")
    return count


async def _slot(settings: Settings, args: argparse.Namespace) -> None:
    async with open_database(settings.database_url, settings.pgdata) as database:
        if args.action == "prune":
            await _prune(settings, args, database.dsn)
            return
        slots = await node_slots(database.dsn, settings)
        if not slots:
            print(f"no slot {settings.node_slot} (the feed creates it on start)")
            return
        if args.action == "drop":
            await _drop(database.dsn, [slot.status.slot_name for slot in slots], args.force)
            return
        for n, slot in enumerate(slots):
            if n:
                print()
            for field, value in _slot_lines(slot.status):
                print(f"{field:<20} {value}")


async def _drop(dsn: str, names: list[str], force: bool) -> None:
    in_use = []
    for name in names:
        try:
            if await drop_slot(dsn, name, terminate=force):
                print(f"dropped slot {name}")
        except SlotInUse:
            in_use.append(name)
    if in_use:
        raise CommandError(
            f"slot {', '.join(in_use)} in use: a gateway streams from it; stop it or pass --force"
        )


async def _prune(settings: Settings, args: argparse.Namespace, dsn: str) -> None:
    pruned = await prune_slots(dsn, settings, force=args.force)
    for name in pruned.dropped:
        print(f"dropped slot {name}")
    if pruned.in_use:
        raise CommandError(
            f"slot {', '.join(pruned.in_use)} in use: a process of an earlier version streams "
            "from it; stop it first or pass --force"
        )
    if not pruned.dropped:
        print(f"no slots of node {settings.node_name} but its own, {settings.node_slot}")


def _slot_lines(status: SlotStatus) -> list[tuple[str, object]]:
    def lsn(value: int | None) -> str:
        return "-" if value is None else lsn_to_str(value)

    return [
        ("slot", status.slot_name),
        ("plugin", status.plugin),
        ("database", status.database),
        ("active", f"yes (pid {status.active_pid})" if status.active else "no"),
        ("confirmed_flush_lsn", lsn(status.confirmed_flush_lsn)),
        ("restart_lsn", lsn(status.restart_lsn)),
        ("wal_status", status.wal_status or "-"),
        ("lag_bytes", "-" if status.lag_bytes is None else status.lag_bytes),
    ]


def _db(settings: Settings) -> None:
    if settings.database_url:
        print(settings.database_url)
        return
    dsn = running_dsn(settings.pgdata)
    if dsn is None:
        raise CommandError(
            f"no embedded PostgreSQL runs on {settings.pgdata}: start "
            "`sitebuilder-gateway serve` first, or set SITEBUILDER_DATABASE_URL"
        )
    print(dsn)


def configure_logging(settings: Settings, prefix: str = "") -> None:
    """Log to stderr (each line with `prefix`: a worker's index); the websockets
    library's per-request lines only at DEBUG."""
    logging.basicConfig(
        level=settings.log_level_number,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.log_level != "DEBUG":
        logging.getLogger("websockets").setLevel(logging.WARNING)
        logging.getLogger("asyncpg.pool").addFilter(_without_traceback)


def _without_traceback(record: logging.LogRecord) -> bool:
    """asyncpg's pool logs a full traceback each time it cannot reconnect while the
    database is down; the feed already says so in one line, so keep only the message."""
    record.exc_info = None
    record.exc_text = None
    return True


def bench(argv: Sequence[str]) -> int:
    """`bench ARGS`: the load test, whose options are its own (listed by `bench --help`).

    loadtest/ is imported only here: its dependencies are the `bench` extra, which an
    installation of the gateway alone does not have."""
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(BENCH_EXTRA_MISSING, file=sys.stderr)
        return 2
    from loadtest.cli import main as bench_main

    return bench_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        for problem in error.errors():
            where = problem["loc"]
            name = f"SITEBUILDER_{str(where[0]).upper()}" if where else "settings"
            print(f"sitebuilder-gateway: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    if args.command == "serve":
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if args.demo:
            overrides["demo"] = True
        if args.workers is not None:
            overrides["workers"] = args.workers
        settings = settings.model_copy(update=overrides)
    configure_logging(settings)
    return guarded(lambda: _run(args, settings))


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "serve":
        _serve(settings)
    elif args.command == "migrate":
        asyncio.run(_migrate(settings, args))
    elif args.command == "token":
        _token(settings, args)
    elif args.command == "slot":
        asyncio.run(_slot(settings, args))
    elif args.command == "schema":
        _schema()
    else:
        _db(settings)


def _serve(settings: Settings) -> None:
    """One process, or a supervisor of `workers` processes (see gateway.app.supervisor).

    The server's modules are imported here, not with the CLI: they take most of a
    second to load, which every other command (migrate, token, slot, db) would pay."""
    from gateway.app import serve
    from gateway.app.supervisor import WorkersError, supervise

    try:
        if settings.worker_count == 1:
            uvloop.run(serve.run(settings))
        else:
            asyncio.run(supervise(settings, settings.worker_count))
    except (serve.FeedUnavailable, serve.DemoUnavailable, WorkersError) as error:
        raise CommandError(str(error)) from error


def _schema() -> None:
    """Print the protocol's JSON Schema (its models are imported for this command only)."""
    from protocol.schema import protocol_json_schema

    print(orjson.dumps(protocol_json_schema(), option=orjson.OPT_INDENT_2).decode())


def guarded(command: Callable[[], None]) -> int:
    """Run `command`; an expected failure becomes one line on stderr and status 1."""
    try:
        command()
    except (
        CommandError,
        MigrationError,
        EmbeddedPostgresError,
        ReplicationError,
        NodeNameInUse,
        PresenceUnavailable,
    ) as error:
        print(f"sitebuilder-gateway: {error}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as error:
        print(f"sitebuilder-gateway: database error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
