"""`bench hostile`: the fanout scenario twice with the same settings, quiet and then with
N hostile connections running the abuse patterns at the gateway's configured limits
(loadtest.hostile_clients says what each does), side by side.

Both runs get a gateway of their own (with `--url`: the same one), the same editors on
one private project (its owner and collaborators), the same writer and the same hostile
users and projects in the database; only in the second do the hostile clients run. They
are started once every editor is subscribed, set up (signed in, their initial bursts of
joins answered), given WARMUP seconds, and run until the editors have drained. They use
users of their own (and the anon key), never the editors' project as members: it is
private, as a team's draft site is, so all they can do to it is be refused (a
`subscribe` or `phx_join` of it, `project.get_with_relations` of it) and compete with
its editors for the gateway, PostgreSQL and the machine.

The limits come from gateway.settings (the environment and `--gateway-env`): those of
the gateway started for the run, or the ones to assume of an existing one. A started
gateway keeps the default caps on connections not signed in (the other scenarios lift
them, every editor being on 127.0.0.1): the unauthenticated connections come from
127.0.0.2, up to `SITEBUILDER_MAX_UNAUTHENTICATED_PER_ADDRESS` and 5% more.

The verdict: PASS when the editors' p99 with the hostile clients is within
TARGET_P99_RATIO of the quiet run's and nothing was lost, duplicated or reordered in
either run (and no connection was closed with 1011, which is a gateway bug).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import psutil

from gateway.edge.tokens import mint_anon_key
from gateway.settings import Settings
from loadtest.deployment import Deployment
from loadtest.editor_pool import STDOUT_LIMIT, ChildProcess
from loadtest.hostile_clients import PATTERNS, Limits
from loadtest.options import Options
from loadtest.population import Project, create_projects, create_users, tokens
from loadtest.report import Report, Run, latency_ms
from loadtest.scenarios import LOAD_KEYS, config_of, one_project, target
from loadtest.streams import STEP_TIMEOUT, measure, open_stream
from loadtest.usage import Usage
from loadtest.writer import Writer

TARGET_P99_RATIO = 1.5
WARMUP_SECONDS = 2.0
SETUP_TIMEOUT = 600.0  # every hostile connection set up: max-size join bursts take a while
UNAUTHENTICATED = "unauthenticated"
ALL_PATTERNS = [*PATTERNS, UNAUTHENTICATED]
UNAUTHENTICATED_ADDRESS = "127.0.0.2"
UNAUTHENTICATED_EXTRA = 0.05
# The caps on connections not signed in that a started gateway keeps in this scenario.
UNAUTHENTICATED_CAPS = ("max_unauthenticated_connections", "max_unauthenticated_per_address")
BUSY_CORE = 85.0  # % of a core: a client process this busy limited what it measured
HOSTILE_WIREFRAMES = 2
# A gateway log line worth reporting.
LOG_PROBLEMS = ("ERROR", "CRITICAL", "Traceback")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--hostile N` and `--hostile-patterns`, for `bench hostile`."""
    group = parser.add_argument_group("hostile")
    group.add_argument(
        "--hostile",
        type=int,
        default=Options().hostile,
        help="hostile connections besides the unauthenticated ones, spread over the "
        "patterns in turn (hostile; default %(default)s)",
    )
    group.add_argument(
        "--hostile-patterns",
        default=Options().hostile_patterns,
        help="the patterns to run, comma-separated, of " + ",".join(ALL_PATTERNS) + " "
        "(hostile; default %(default)s)",
    )


def patterns_of(options: Options) -> list[str]:
    wanted = options.hostile_patterns.strip()
    if wanted in ("", "all"):
        return list(ALL_PATTERNS)
    chosen = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ALL_PATTERNS]
    if unknown:
        raise RuntimeError(
            f"unknown hostile pattern {', '.join(unknown)}: choose of {', '.join(ALL_PATTERNS)}"
        )
    return chosen


def with_caps(options: Options) -> Options:
    """The started gateway keeps the default caps on connections not signed in (unless
    `--gateway-env` sets them); the editors, all from 127.0.0.1, connect at most half
    the per-address cap at a time, so none of them is refused for it."""
    defaults = Settings.model_fields
    env = {
        f"SITEBUILDER_{name.upper()}": str(defaults[name].default) for name in UNAUTHENTICATED_CAPS
    }
    options = replace(options, gateway_env={**env, **options.gateway_env})
    cap = limits_of(options).max_unauthenticated_per_address
    concurrency = min(options.connect_concurrency, max(1, cap // 2))
    return replace(options, connect_concurrency=concurrency)


def limits_of(options: Options) -> Limits:
    """The limits the gateway runs with: gateway.settings with `--gateway-env` on top."""
    overrides: dict[str, Any] = {
        name.removeprefix("SITEBUILDER_").lower(): value
        for name, value in options.gateway_env.items()
        if name.startswith("SITEBUILDER_")
    }
    settings = Settings(**overrides)
    return Limits(**{f.name: getattr(settings, f.name) for f in fields(Limits)})


@dataclass
class Seat:
    """One hostile connection to be: its pattern, protocol and identity."""

    pattern: str
    protocol: str
    anonymous: bool = False


def seats(count: int, patterns: list[str]) -> list[Seat]:
    """`count` connections over the patterns in turn; within a pattern, its variants in
    turn (native and Supabase; users and the anon key)."""
    connected = [p for p in patterns if p != UNAUTHENTICATED]
    if not connected:
        return []
    made: list[Seat] = []
    for index in range(count):
        pattern = connected[index % len(connected)]
        turn = index // len(connected)
        if pattern == "filters":
            made.append(Seat(pattern, "phoenix"))
        elif pattern == "churn":
            made.append(Seat(pattern, ("native", "phoenix")[turn % 2]))
        elif pattern == "presence":
            variant = turn % 3
            made.append(Seat(pattern, "native" if variant == 0 else "phoenix", variant == 2))
        elif pattern == "malformed":
            made.append(Seat(pattern, ("native", "phoenix")[turn % 2], turn % 2 == 1))
        else:
            made.append(Seat(pattern, "native"))
    return made


async def hostile_job(
    deployment: Deployment, editors_project: Project, options: Options, limits: Limits
) -> dict[str, Any]:
    """The hostile users (one per connection signed in as a user) and their projects,
    each owned by its user; the presence users share one more. The hostile process's job."""
    planned = seats(options.hostile, patterns_of(options))
    named = [seat for seat in planned if not seat.anonymous]
    users = await create_users(deployment.database_url, len(named)) if named else []
    ttl = int(options.duration * 20 + 3600)
    tokens_by_user = tokens(deployment, users, ttl=ttl)
    plans: list[tuple[uuid.UUID, list[uuid.UUID]]] = [(user, [user]) for user in users]
    present = [user for seat, user in zip(named, users, strict=True) if seat.pattern == "presence"]
    if present:
        plans.append((present[0], present))
    created = await create_projects(deployment, tokens_by_user, plans, HOSTILE_WIREFRAMES)
    room = created[len(users)].id if present else ""
    anon = mint_anon_key(deployment.jwt_secret, ttl_seconds=ttl)
    connections: list[dict[str, Any]] = []
    own = iter(zip(users, created, strict=False))
    for seat in planned:
        plan: dict[str, Any] = {
            "pattern": seat.pattern,
            "protocol": seat.protocol,
            "anonymous": seat.anonymous,
            "room": room,
        }
        if seat.anonymous:
            plan["token"] = anon
        else:
            user, project = next(own)
            plan.update(
                token=tokens_by_user[user], project_id=project.id, wireframes=project.wireframes
            )
        connections.append(plan)
    unauthenticated = 0
    if UNAUTHENTICATED in patterns_of(options):
        cap = limits.max_unauthenticated_per_address
        unauthenticated = cap + max(1, math.ceil(cap * UNAUTHENTICATED_EXTRA))
    return {
        "url": deployment.url,
        "limits": asdict(limits),
        "editors_project": editors_project.id,
        "connections": connections,
        "unauthenticated": unauthenticated,
        "unauthenticated_address": UNAUTHENTICATED_ADDRESS,
    }


class HostileProcess(ChildProcess):
    """The hostile clients' process (loadtest.hostile_clients), driven over stdio."""

    name = "hostile process"

    @classmethod
    async def start(cls, job: dict[str, Any]) -> HostileProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest.hostile_clients",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=STDOUT_LIMIT,
        )
        started = cls(process)
        started.send(job)
        return started

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> dict[str, Any]:
        self.send({"cmd": "stop"})
        return await self.expect("result", STEP_TIMEOUT)


def gateway_log(deployment: Deployment) -> Path | None:
    """The log of a gateway this run started (in its data directory), if any."""
    if deployment.gateway_pid is None:
        return None
    try:
        data_dir = psutil.Process(deployment.gateway_pid).environ().get("SITEBUILDER_DATA_DIR")
    except psutil.Error:
        return None
    if not data_dir or "sitebuilder-bench-" not in data_dir:
        return None
    return Path(data_dir) / "gateway.log"


def log_problems(log: Path | None) -> dict[str, Any]:
    """Errors and tracebacks the gateway logged: how many, and the first few."""
    if log is None or not log.exists():
        return {}
    lines = log.read_text(errors="replace").splitlines()
    problems = [line for line in lines if any(word in line for word in LOG_PROBLEMS)]
    warnings = Counter(
        line.split(": ", 1)[-1][:80] for line in lines if " WARNING " in line
    ).most_common(5)
    return {
        "gateway log errors": len(problems),
        "gateway log first errors": problems[:5],
        "gateway log warnings": dict(warnings),
    }


@dataclass
class Outcome:
    run: Run
    cpu: dict[str, float]  # % of a core while writing, by process group and the machine
    hostile: dict[str, Any] | None = None
    setup: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)


async def one_run(name: str, options: Options, limits: Limits, loud: bool) -> Outcome:
    """The fanout scenario, and with `loud` the hostile clients running throughout."""
    async with target(options) as deployment:
        projects, editors, owner = await one_project(deployment, options)
        job = await hostile_job(deployment, projects[0], options, limits)
        wireframes = [w for project in projects for w in project.wireframes]
        writer = Writer(deployment.database_url, wireframes, str(owner), options.layout_bytes)
        await writer.open()
        processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
        crowd: HostileProcess | None = None
        try:
            stream, ready = await open_stream(
                name, deployment.url, "gateway", editors, options, processes
            )
            try:
                setup: dict[str, Any] = {}
                if loud:
                    crowd = await HostileProcess.start(job)
                    stream.processes["hostile"] = Usage(crowd.pid, children=False)
                    setup = await stream.progress.during(crowd.expect("running", SETUP_TIMEOUT))
                    await stream.progress.during(asyncio.sleep(WARMUP_SECONDS))
                cpu: dict[str, float] = {}

                async def commit(rate: float, seconds: float) -> None:
                    meter = stream.cpu_meter()
                    await writer.run(rate, seconds)
                    cpu.update(meter.stop())

                figures, latency, series = await measure(
                    stream, ready, commit, writer.seqs, options
                )
                result = await crowd.stop() if crowd is not None else None
            finally:
                await stream.pool.stop()
                if crowd is not None:
                    await crowd.kill()
            figures["commits"] = writer.writes.total
            figures["writer_behind_s"] = round(writer.writes.behind_seconds, 3)
            commit_ms = latency_ms(writer.writes.durations)
            figures["commit statement p50/p99 (ms)"] = f"{commit_ms['p50']}/{commit_ms['p99']}"
            if loud:
                figures.update(hostile_figures(job, result))
            problems = log_problems(gateway_log(deployment))
        finally:
            await writer.close()
    figures["gateway log errors"] = problems.get("gateway log errors")
    run = Run(name, figures, latency, series)
    return Outcome(run, cpu, result, setup, problems)


def totals(result: dict[str, Any] | None) -> dict[str, Counter[str]]:
    """Refusals and closes of every pattern added up, and frames."""
    summed: dict[str, Counter[str]] = {"refusals": Counter(), "closes": Counter()}
    for tally in (result or {}).get("patterns", {}).values():
        summed["refusals"].update(tally["refusals"])
        summed["closes"].update(tally["closes"])
    return summed


def hostile_figures(job: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    patterns = (result or {}).get("patterns", {})
    summed = totals(result)
    return {
        "hostile connections": len(job["connections"]),
        "unauthenticated connections": job["unauthenticated"],
        "hostile frames sent": sum(t["frames_sent"] for t in patterns.values()),
        "hostile MiB sent": round(sum(t["mib_sent"] for t in patterns.values()), 1),
        "hostile refusals": sum(summed["refusals"].values()),
        "hostile closes": sum(summed["closes"].values()),
        "hostile 1011 closes": summed["closes"].get("1011", 0),
    }


class HostileReport(Report):
    """Both runs side by side; the hostile side's counts and the verdict in the JSON too."""

    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), **getattr(self, "details", {})}


def compare(quiet: Outcome, loud: Outcome) -> tuple[dict[str, float], list[str], dict[str, Any]]:
    """The ratios, the verdict and what limited the figures."""
    assert quiet.run.latency is not None
    assert loud.run.latency is not None
    q, h = latency_ms(quiet.run.latency), latency_ms(loud.run.latency)
    ratios = {
        f"ratio_{name}": round(h[name] / q[name], 3) if q[name] else 0.0
        for name in ("p50", "p99", "p99.9")
    }
    failures = []
    for outcome in (quiet, loud):
        figures = outcome.run.figures
        for key in ("lost", "duplicated", "out_of_order"):
            if figures.get(key):
                failures.append(
                    f"{figures[key]:,} {key.replace('_', ' ')} in the {outcome.run.name} run"
                )
        if figures.get("connect_failures"):
            failures.append(
                f"{figures['connect_failures']} editors failed to connect ({outcome.run.name})"
            )
    if not q["p99"] or ratios["ratio_p99"] > TARGET_P99_RATIO:
        failures.append(f"p99 ratio {ratios['ratio_p99']:.3f} > {TARGET_P99_RATIO}")
    internal = totals(loud.hostile)["closes"].get("1011", 0)
    editors_internal = sum(
        o.run.figures.get("other_closes", {}).get("1011", 0) for o in (quiet, loud)
    )
    if internal or editors_internal:
        failures.append(f"{internal + editors_internal} connections closed with 1011")
    verdict = "FAIL" if failures else "PASS"
    notes = [
        f"target: editors' p99 with hostile clients ≤ {TARGET_P99_RATIO} times the quiet run's, "
        "nothing lost",
        f"p99 {h['p99']:.1f} ms hostile / {q['p99']:.1f} ms quiet = {ratios['ratio_p99']:.3f}; "
        f"lost {quiet.run.figures.get('lost', 0):,} quiet / {loud.run.figures.get('lost', 0):,} "
        "hostile",
        f"verdict: {verdict}" + (f" ({'; '.join(failures)})" if failures else ""),
    ]
    notes += hostile_lines(loud)
    if internal or editors_internal:
        notes.append(
            f"!!! {internal} hostile and {editors_internal} editor connections were closed "
            "with 1011 (internal error): a gateway bug; see the gateway log errors"
        )
    for outcome in (quiet, loud):
        for line in outcome.log.get("gateway log first errors", []):
            notes.append(f"gateway log ({outcome.run.name}): {line[:200]}")
    notes += limited_by(quiet, loud)
    details = {
        "verdict": verdict,
        "failures": failures,
        "target": {"ratio_p99": TARGET_P99_RATIO, "lost": 0},
        "hostile": loud.hostile,
        "hostile_setup": loud.setup,
        "gateway_log": {o.run.name: o.log for o in (quiet, loud)},
        "cpu_percent_while_writing": {o.run.name: o.cpu for o in (quiet, loud)},
    }
    return ratios, notes, details


def hostile_lines(loud: Outcome) -> list[str]:
    patterns = (loud.hostile or {}).get("patterns", {})
    if not patterns:
        return []
    lines = [
        "hostile side, by pattern: connections, frames sent, MiB sent, replies ok (frames "
        "per second per connection once set up); refusals by code; closes by code"
    ]
    for name, tally in patterns.items():
        each = tally.get("frames_per_s_each")
        refusals = ", ".join(f"{k} {v:,}" for k, v in tally["refusals"].items()) or "none"
        closes = ", ".join(f"{k} {v:,}" for k, v in tally["closes"].items()) or "none"
        failures = sum(tally["connect_failures"].values())
        lines.append(
            f"  {name:<15} {tally['connections']:>4} conns  {tally['frames_sent']:>8,} frames  "
            f"{tally['mib_sent']:>8,.1f} MiB  {tally['replies']:>8,} ok  "
            + (f"({each:,.0f} frames/s each)" if each is not None else "")
            + (f"  {failures} failed to connect" if failures else "")
            + (f"  {tally['held_back']:,} ticks held back" if tally["held_back"] else "")
            + (
                f"  {tally['held_for_bytes']:,} ticks waited for the byte budget"
                if tally.get("held_for_bytes")
                else ""
            )
        )
        lines.append(f"  {'':<15} refusals: {refusals}")
        lines.append(f"  {'':<15} closes: {closes}")
        for reason, count in tally.get("close_reasons", {}).items():
            if not reason.startswith(("4001", "4009")):
                lines.append(f"  {'':<15}   {count:,} closed: {reason}")
    summed = totals(loud.hostile)
    lines.append(
        "  all refusals: "
        + (", ".join(f"{k} {v:,}" for k, v in summed["refusals"].most_common()) or "none")
    )
    lines.append(
        "  all closes: "
        + (", ".join(f"{k} {v:,}" for k, v in summed["closes"].most_common()) or "none")
    )
    return lines


def limited_by(quiet: Outcome, loud: Outcome) -> list[str]:
    """What limited the figures: a client process near a full core, a full machine."""
    lines = []
    for outcome in (quiet, loud):
        cpu = outcome.cpu
        name = outcome.run.name
        said = []
        for group in ("editors", "hostile"):
            if cpu.get(group, 0.0) >= BUSY_CORE:
                said.append(
                    f"the {group}' process used {cpu[group]:.0f}% of a core (one thread: near "
                    "its limit, so part of the latency is the client's)"
                )
        if cpu.get("gateway", 0.0) >= BUSY_CORE:
            said.append(f"the gateway used {cpu['gateway']:.0f}% of its one core (saturated)")
        if cpu and cpu.get("idle", 100.0) < 15.0:
            cores = psutil.cpu_count() or 1
            said.append(f"the machine's {cores} cores were full (idle {cpu['idle']:.0f}%)")
        if cpu.get("others", 0.0) >= 20.0:
            said.append(f"other processes on the machine used {cpu['others']:.0f}% of a core")
        shown = " ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        lines.append(f"cpu % while writing ({name}): {shown}")
        if said:
            lines.append(f"limited ({name}): " + "; ".join(said))
    return lines


async def hostile(options: Options) -> Report:
    options = with_caps(options)
    limits = limits_of(options)
    patterns_of(options)  # refuse unknown ones before anything starts
    keys = ["subscribers", "rate", "duration", "wireframes", *LOAD_KEYS, "hostile"]
    if options.hostile_patterns != "all":
        keys.append("hostile_patterns")
    if options.workers is not None:
        keys.append("workers")
    report = HostileReport("hostile", config_of(options, *keys))
    quiet = await one_run("quiet", options, limits, loud=False)
    loud = await one_run("hostile", options, limits, loud=True)
    report.runs = [quiet.run, loud.run]
    report.ratios, report.notes, report.details = compare(quiet, loud)
    report.details["limits"] = asdict(limits)
    return report
