"""`sitebuilder-gateway bench SCENARIO [options]`, also `python -m loadtest`.

By default a gateway with an embedded PostgreSQL is started for the run and torn down
after it; `--url` with `--database-url` measure an existing deployment instead.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import uvloop

from loadtest.client_load import with_client_procs
from loadtest.deployment import DeploymentError
from loadtest.feed_run import feed
from loadtest.hostile import hostile
from loadtest.options import Options
from loadtest.report import Report, table
from loadtest.scenarios import SCENARIOS

# hostile and feed build on the others (their modules import loadtest.scenarios).
ALL_SCENARIOS = {**SCENARIOS, "hostile": hostile, "feed": feed}

DEFAULTS = Options()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sitebuilder-gateway bench",
        description=(
            "Load-test the gateway: simulated editors in a process of their own, a writer "
            "committing to PostgreSQL, figures printed as a table and written as JSON + PNG."
        ),
    )
    parser.add_argument("scenario", choices=sorted(ALL_SCENARIOS))
    load = parser.add_argument_group("load")
    load.add_argument(
        "--subscribers",
        type=int,
        default=DEFAULTS.subscribers,
        help="editors on the one project (fanout, reconnect, idle, reference, failover; "
        "default %(default)s)",
    )
    load.add_argument(
        "--rate",
        type=float,
        default=DEFAULTS.rate,
        help="commits per second (the start rate with --ramp; default %(default)s)",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=DEFAULTS.duration,
        help="seconds of writing (idle: of idling; default %(default)s)",
    )
    load.add_argument(
        "--users",
        type=int,
        default=DEFAULTS.users,
        help="distinct users the editors sign in as (default %(default)s)",
    )
    load.add_argument(
        "--wireframes",
        type=int,
        default=DEFAULTS.wireframes,
        help="wireframes per project the writer updates in turn (default %(default)s)",
    )
    load.add_argument(
        "--projects",
        type=int,
        default=DEFAULTS.projects,
        help="projects (projects scenario; storm: projects the clients spread over; "
        "default %(default)s)",
    )
    load.add_argument(
        "--editors-per-project",
        type=int,
        default=DEFAULTS.editors_per_project,
        help="(projects scenario; default %(default)s)",
    )
    load.add_argument(
        "--clients",
        type=int,
        default=DEFAULTS.clients,
        help="clients connecting at once (storm; default %(default)s)",
    )
    load.add_argument(
        "--drop-fraction",
        type=float,
        default=DEFAULTS.drop_fraction,
        help="share of editors dropped mid-stream (reconnect; default %(default)s)",
    )
    load.add_argument(
        "--client-procs",
        type=processes,
        default=DEFAULTS.client_procs,
        help="processes the editors are spread over; auto (the default): as many as keep "
        "each below --client-bound-percent at the offered load, up to half the cores",
    )
    load.add_argument(
        "--client-bound-percent",
        type=float,
        default=DEFAULTS.client_bound_percent,
        help="%% of a core past which an editors' process is client-bound: figures taken "
        "meanwhile are marked (default %(default)s)",
    )
    load.add_argument(
        "--layout-bytes",
        type=int,
        default=DEFAULTS.layout_bytes,
        help="size of each wireframe's layout JSON the projects are created with and the "
        "writer commits (default %(default)s; a real page: 50000)",
    )
    load.add_argument(
        "--delta",
        action="store_true",
        help="editors subscribe with delta: true (an UPDATE arrives as a `delta` frame)",
    )
    load.add_argument(
        "--receive-buffer-kib",
        type=int,
        default=DEFAULTS.receive_buffer_kib,
        help="each editor socket's kernel receive buffer (SO_RCVBUF, KiB; 0, the default: "
        "the kernel's autotuning); smaller TCP windows and less kernel memory per socket "
        "(the editors' process memory is bounded either way: each read takes at most 64 KiB)",
    )
    load.add_argument(
        "--connect-concurrency",
        type=int,
        default=DEFAULTS.connect_concurrency,
        help="editors connecting at a time while setting up (default %(default)s)",
    )
    load.add_argument(
        "--drain-seconds",
        type=float,
        default=DEFAULTS.drain_seconds,
        help="longest wait for the last deliveries after writing stops (default %(default)s)",
    )
    bulk = parser.add_argument_group("bulk writes (feed)")
    bulk.add_argument(
        "--rows",
        type=int,
        default=DEFAULTS.rows,
        help="wireframes the writer inserts, as fast as the database takes them "
        "(default %(default)s)",
    )
    bulk.add_argument(
        "--batch-rows",
        type=int,
        default=DEFAULTS.batch_rows,
        help="rows per transaction, one INSERT each (default %(default)s)",
    )
    bulk.add_argument(
        "--prefill",
        type=int,
        default=DEFAULTS.prefill,
        help="wireframes inserted first, not measured (default %(default)s)",
    )
    bulk.add_argument(
        "--no-versioning",
        dest="versioning",
        action="store_false",
        help="switch the writer's triggers off (session_replication_role = replica; a "
        "superuser's): one change per row, the feed alone",
    )
    ramp = parser.add_argument_group("ramp (fanout, reference)")
    ramp.add_argument(
        "--ramp",
        action="store_true",
        help="raise the rate step by step until p99 passes the bound; report the sustained maximum",
    )
    ramp.add_argument("--ramp-factor", type=float, default=DEFAULTS.ramp_factor)
    ramp.add_argument("--step-seconds", type=float, default=DEFAULTS.step_seconds)
    ramp.add_argument("--max-steps", type=int, default=DEFAULTS.max_steps)
    ramp.add_argument("--p99-bound-ms", type=float, default=DEFAULTS.p99_bound_ms)
    parser.add_argument(
        "--with-reference",
        action="store_true",
        help="also run the bare websockets broadcast server (fanout, idle) and print the ratios",
    )
    target = parser.add_argument_group("target (default: a gateway started for this run)")
    target.add_argument("--url", help="websocket URL of an existing gateway")
    target.add_argument(
        "--database-url",
        help="its PostgreSQL (the writer commits there); without --url: the server a "
        "started gateway uses",
    )
    target.add_argument(
        "--jwt-secret",
        help="HS256 secret of an existing gateway (default: SITEBUILDER_JWT_SECRET or the "
        "data directory's)",
    )
    target.add_argument(
        "--gateway-pid",
        type=int,
        help="pid of an existing gateway on this host, for its CPU and memory (a "
        "supervisor's: its workers are counted, and failover kills one of them)",
    )
    target.add_argument(
        "--feed",
        default=DEFAULTS.feed,
        choices=["auto", "replication", "notify"],
        help="change feed of a started gateway",
    )
    target.add_argument(
        "--workers",
        type=int,
        default=DEFAULTS.workers,
        help="worker processes of a started gateway: `serve --workers N` (default: plain "
        "`serve`; failover: 3)",
    )
    target.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for a started gateway, e.g. SITEBUILDER_MAX_OUTBOUND_BYTES=16777216",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the figures as JSON here and the plot beside it (.png); default: "
        "bench-results/SCENARIO-YYYYMMDD-HHMMSS.json",
    )
    parser.add_argument(
        "--no-plot",
        action="store_true",
        help="write the figures' JSON only, no .png (drawing it takes about a second)",
    )
    from loadtest.hostile import add_arguments as add_hostile_arguments  # `bench hostile`

    add_hostile_arguments(parser)
    return parser


def processes(text: str) -> int:
    """`--client-procs`: a count, or auto (0: chosen by loadtest.client_load)."""
    if text == "auto":
        return 0
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1, or auto")
    return count


def options_from(args: argparse.Namespace) -> Options:
    names = {f.name for f in fields(Options)} - {"gateway_env"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    env = dict(item.split("=", 1) for item in args.gateway_env)
    return Options(**values, gateway_env=env)


def raise_open_files_limit() -> None:
    """Thousands of editors need thousands of descriptors: lift the soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def cancellable(work: Coroutine[Any, Any, Report]) -> Report:
    """SIGTERM cancels the run like Ctrl-C does, so every process it started is stopped."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fuzz"]:  # `bench fuzz --minutes N`: options of its own (loadtest.fuzz_run)
        from loadtest.fuzz_run import main as fuzz_main

        return fuzz_main(argv[1:])
    args = build_parser().parse_args(argv)
    raise_open_files_limit()
    options, advice = with_client_procs(args.scenario, options_from(args))
    if advice:
        print(f"sitebuilder-gateway bench: {advice}", file=sys.stderr)
    try:
        report = uvloop.run(cancellable(ALL_SCENARIOS[args.scenario](options)))
    except (DeploymentError, OSError, RuntimeError, TimeoutError) as error:
        print(f"\nsitebuilder-gateway bench: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "\nsitebuilder-gateway bench: interrupted; everything it started is stopped",
            file=sys.stderr,
        )
        return 130
    if advice:
        report.notes.append(advice)
    print(table(report))
    out = args.out or default_out(args.scenario)
    plot = report.write(out, plot=not args.no_plot)
    print(f"figures: {out}" + (f", plot: {plot}" if plot else ""))
    return 0


def default_out(scenario: str) -> Path:
    return Path("bench-results") / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
