"""The benchmark scenarios: each sets up its editors and writer, runs, and returns a Report.

- fanout: N editors on one project, one writer at W commits/s (`--ramp`: W raised step
  by step until p99 passes a bound);
- projects: many projects with a few editors each, writes spread over them;
- storm: N editors connect, authenticate and subscribe with a snapshot all at once;
- reconnect: a share of the editors drops mid-stream and resumes from its position;
- idle: N subscribed editors doing nothing: memory per connection, CPU at rest;
- reference: fanout through a bare websockets broadcast server (the ceiling);
- failover: editors spread over the workers of `serve --workers 3`, one worker killed
  mid-stream; its editors reconnect to the same URL and resume from their position;
- hostile (loadtest.hostile, which builds on these): fanout twice, quiet and with N
  hostile connections abusing the limits.

`--workers N` makes the started gateway `serve --workers N` in any scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from loadtest import deployment as deployments
from loadtest.client_load import frames_per_commit
from loadtest.deployment import Deployment, DeploymentError, worker_index
from loadtest.editor_pool import merged
from loadtest.options import Options
from loadtest.population import Project, create_projects, create_users, tokens
from loadtest.report import Report, Run, latency_ms
from loadtest.streams import (
    STEP_TIMEOUT,
    Stream,
    connect_failures,
    editors_of,
    finish,
    frames_of,
    idle_run,
    open_stream,
    reference_server,
    result_figures,
    spread,
    stream_gateway,
    stream_reference,
)
from loadtest.writer import Writer


@contextlib.asynccontextmanager
async def target(options: Options) -> AsyncIterator[Deployment]:
    if options.url:
        if not options.database_url:
            raise deployments.DeploymentError(
                "--url needs --database-url (the writer commits there)"
            )
        async with deployments.attached(
            options.url, options.database_url, options.jwt_secret, options.gateway_pid
        ) as existing:
            yield existing
    else:
        async with deployments.started(
            options.database_url, options.feed, options.gateway_env, options.workers
        ) as fresh:
            yield fresh


def ratios_of(gateway: Run, reference: Run) -> dict[str, float]:
    ratios: dict[str, float] = {}
    ours, theirs = (
        gateway.figures.get("deliveries_per_s"),
        reference.figures.get("deliveries_per_s"),
    )
    if ours and theirs:
        ratios["ratio_throughput"] = round(ours / theirs, 3)
    if gateway.latency is not None and reference.latency is not None:
        p99_ours = latency_ms(gateway.latency)["p99"]
        p99_theirs = latency_ms(reference.latency)["p99"]
        if p99_theirs:
            ratios["ratio_p99"] = round(p99_ours / p99_theirs, 3)
    return ratios


def ramp_ratios(gateway: Run, reference: Run, bound_ms: float) -> dict[str, float]:
    """Sustained maxima compared, and p99 at the highest rate both sustained (the
    whole run's p99 would be the overloaded last step's)."""
    ratios: dict[str, float] = {}
    ours = gateway.figures.get("sustained_deliveries_per_s") or 0.0
    theirs = reference.figures.get("sustained_deliveries_per_s") or 0.0
    if theirs:
        ratios["ratio_throughput"] = round(ours / theirs, 3)
    held = [
        (a, b)
        for a, b in zip(
            gateway.figures.get("ramp", []), reference.figures.get("ramp", []), strict=False
        )
        if all(s["latency_ms"]["p99"] <= bound_ms and s["arrived"] >= 0.9 for s in (a, b))
    ]
    if held and held[-1][1]["latency_ms"]["p99"]:
        ours_step, theirs_step = held[-1]
        ratios["ratio_p99"] = round(
            ours_step["latency_ms"]["p99"] / theirs_step["latency_ms"]["p99"], 3
        )
        ratios["ratio_p99_at_rate"] = ours_step["rate"]
    return ratios


# What every scenario's report says of its load: the editors' processes, the layout's
# size, whether they subscribe to deltas, and past what CPU a figure is client-bound.
LOAD_KEYS = (
    "client_procs",
    "layout_bytes",
    "delta",
    "client_bound_percent",
    "receive_buffer_kib",
)


def config_of(options: Options, *keys: str) -> dict[str, Any]:
    values = asdict(options)
    return {key: values[key] for key in keys}


async def one_project(
    deployment: Deployment, options: Options
) -> tuple[list[Project], list[dict[str, Any]], uuid.UUID]:
    users = await create_users(
        deployment.database_url, max(1, min(options.users, options.subscribers))
    )
    tokens_by_user = tokens(deployment, users, ttl=int(options.duration * 20 + 3600))
    projects = await create_projects(
        deployment, tokens_by_user, [(users[0], users)], options.wireframes, options.layout_bytes
    )
    return projects, editors_of(projects, tokens_by_user, options.subscribers), users[0]


async def fanout(options: Options) -> Report:
    keys = ["subscribers", "rate", "duration", "wireframes", *LOAD_KEYS]
    if options.workers is not None:
        keys.append("workers")
    if options.ramp:
        keys += ["ramp_factor", "step_seconds", "p99_bound_ms"]
    report = Report("fanout", config_of(options, *keys))
    async with target(options) as deployment:
        projects, editors, owner = await one_project(deployment, options)
        gateway = await stream_gateway("gateway", deployment, projects, editors, owner, options)
    report.runs.append(gateway)
    if options.with_reference:
        reference = await stream_reference(options, frames_of(gateway), options.subscribers)
        report.runs.append(reference)
        report.ratios = ratios_of(gateway, reference)
        if options.ramp:
            report.ratios = ramp_ratios(gateway, reference, options.p99_bound_ms)
    return report


async def reference(options: Options) -> Report:
    report = Report("reference", config_of(options, "subscribers", "rate", "duration", *LOAD_KEYS))
    frames = frames_per_commit(options)
    report.runs.append(await stream_reference(options, frames, options.subscribers))
    return report


async def projects(options: Options) -> Report:
    report = Report(
        "projects",
        config_of(options, "projects", "editors_per_project", "rate", "duration", *LOAD_KEYS),
    )
    async with target(options) as deployment:
        users = await create_users(deployment.database_url, options.projects)
        tokens_by_user = tokens(deployment, users, ttl=int(options.duration * 20 + 3600))
        size = min(options.editors_per_project, len(users))
        plans = [
            (users[p], [users[(p + k) % len(users)] for k in range(size)])
            for p in range(options.projects)
        ]
        created = await create_projects(
            deployment, tokens_by_user, plans, wireframes=1, layout_bytes=options.layout_bytes
        )
        editors = editors_of(created, tokens_by_user, options.editors_per_project)
        report.runs.append(
            await stream_gateway("gateway", deployment, created, editors, users[0], options)
        )
    return report


async def storm(options: Options) -> Report:
    """Everyone at once: connect, authenticate, subscribe with a snapshot."""
    report = Report("storm", config_of(options, "clients", "projects", *LOAD_KEYS))
    async with target(options) as deployment:
        users = await create_users(
            deployment.database_url, max(1, min(options.users, options.clients))
        )
        tokens_by_user = tokens(deployment, users, ttl=3600)
        count = max(1, min(options.projects, options.clients))
        plans = [(users[p % len(users)], users) for p in range(count)]
        created = await create_projects(
            deployment, tokens_by_user, plans, options.wireframes, options.layout_bytes
        )
        per_project = -(-options.clients // count)
        editors = editors_of(created, tokens_by_user, per_project)[: options.clients]
        processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
        started = time.monotonic()
        stream, ready = await open_stream(
            "storm",
            deployment.url,
            "gateway",
            editors,
            options,
            processes,
            snapshot=True,
            connect_concurrency=len(editors),
        )
        try:
            figures: dict[str, Any] = {
                "clients": len(editors),
                "ready_s": round(max(event["seconds"] for event in ready), 3),
                "wall_s": round(time.monotonic() - started, 3),
                "failures": connect_failures(ready),
            }
            for step in ("connect", "auth", "subscribe", "ready"):
                latency = merged([event["steps"][step] for event in ready])
                for name, value in latency_ms(latency).items():
                    if name in ("p50", "p99", "max"):
                        figures[f"{step} {name} (ms)"] = value
            failures: dict[str, int] = {}
            for event in ready:
                for reason, count in event["steps"]["failures"].items():
                    failures[reason] = failures.get(reason, 0) + count
            figures["failure_reasons"] = failures
            results = await finish(stream, {}, options)
            # The editors' processes at their largest: the presence states they read
            # are N² bytes together; held one fragment at a time, they are not kept.
            figures["editors_peak_rss_mb"] = round(sum(r["peak_rss_mb"] for r in results), 1)
            stream.progress.done()
            report.runs.append(Run("gateway", figures))
        finally:
            await stream.pool.stop()
    return report


@contextlib.asynccontextmanager
async def one_project_stream(
    deployment: Deployment, options: Options, name: str, *, follow: bool = False
) -> AsyncIterator[tuple[Writer, Stream, list[dict[str, Any]], list[dict[str, Any]]]]:
    """One project's editors connected and its writer ready (the scenarios that interrupt
    a stream); both stopped afterwards. Yields (writer, stream, editors, ready)."""
    projects, editors, owner = await one_project(deployment, options)
    wireframes = [w for project in projects for w in project.wireframes]
    writer = Writer(deployment.database_url, wireframes, str(owner), options.layout_bytes)
    await writer.open()
    try:
        processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
        stream, ready = await open_stream(
            name, deployment.url, "gateway", editors, options, processes, follow=follow
        )
        try:
            yield writer, stream, editors, ready
        finally:
            await stream.pool.stop()
    finally:
        await writer.close()


async def reconnect(options: Options) -> Report:
    """A share of the editors vanishes mid-stream and comes back with `since`."""
    report = Report(
        "reconnect",
        config_of(options, "subscribers", "rate", "duration", "drop_fraction", *LOAD_KEYS),
    )
    async with (
        target(options) as deployment,
        one_project_stream(deployment, options, "reconnect") as opened,
    ):
        writer, stream, editors, ready = opened
        stream.start_usage()
        started = time.time()
        writing = asyncio.ensure_future(writer.run(options.rate, options.duration))
        try:
            await stream.progress.during(asyncio.sleep(options.duration * 0.3))
            dropped = await stream.pool.gather(
                {"cmd": "drop", "fraction": options.drop_fraction}, "dropped", STEP_TIMEOUT
            )
            await stream.progress.during(asyncio.sleep(min(2.0, options.duration * 0.2)))
            resumed = await stream.progress.during(
                stream.pool.gather(
                    {"cmd": "resume", "targets": writer.seqs()}, "resumed", STEP_TIMEOUT * 2
                )
            )
            await stream.progress.during(writing)
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        usage = stream.usage_figures()  # before the editors' processes exit
        results = await finish(stream, writer.seqs(), options)
        stream.progress.done()
        measured, latency, series = result_figures(results, started)
        catchup = merged([event["catchup"] for event in resumed])
        resubscribe = merged([event["steps"]["ready"] for event in resumed])
        figures: dict[str, Any] = {
            "editors": len(editors),
            "connect_failures": connect_failures(ready),
            "dropped": sum(event["count"] for event in dropped),
            "resume_failures": connect_failures(resumed),
            "resumed_caught_up": catchup.get_total_count(),
            "resume ready p99 (ms)": latency_ms(resubscribe)["p99"],
            "replay p50 (ms)": latency_ms(catchup)["p50"],
            "replay p99 (ms)": latency_ms(catchup)["p99"],
            "replay max (ms)": latency_ms(catchup)["max"],
            "replay_s": round(max(event["seconds"] for event in resumed), 3),
            **measured,
            "commits": writer.writes.total,
            **usage,
        }
        report.runs.append(Run("gateway", figures, latency, series))
    return report


async def idle(options: Options) -> Report:
    """Memory each subscribed connection costs the gateway, and CPU when nothing happens."""
    report = Report("idle", config_of(options, "subscribers", "duration", "client_procs"))
    async with target(options) as deployment:
        _projects, editors, _owner = await one_project(deployment, options)
        processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
        report.runs.append(
            await idle_run("gateway", deployment.url, "gateway", editors, options, processes)
        )
    if options.with_reference:
        async with reference_server() as (url, server):
            clients: list[dict[str, Any]] = [{} for _ in range(options.subscribers)]
            run = await idle_run(
                "reference", url, "reference", clients, options, {"gateway": server.pid}
            )
        run.figures = {k.replace("gateway", "server"): v for k, v in run.figures.items()}
        report.runs.append(run)
        ours = report.runs[0].figures["KiB per connection"]
        theirs = run.figures["KiB per connection"]
        if theirs:
            report.ratios["ratio_memory_per_connection"] = round(ours / theirs, 3)
    return report


FAILOVER_WORKERS = 3
KILL_AT = 0.35  # share of the writing done when the worker is killed
REPLACED_POLL = 0.1


@dataclass
class Victim:
    """The worker to kill, the name its editors know it by (None: unknown), and every
    worker that listened when it was chosen."""

    pid: int
    node: str | None
    workers: list[int]


def choose_victim(deployment: Deployment, nodes: dict[str, int]) -> Victim:
    """The worker holding the most editors (any worker when the gateway does not say
    which serves whom): its pid among the supervisor's children that listen."""
    pids = deployment.worker_pids()
    if not pids:
        raise DeploymentError(
            "failover kills a worker of `serve --workers N`: none listens on the gateway's "
            "port among the children of its process on this host (--gateway-pid)"
        )
    by_index = {worker_index(pid): pid for pid in pids}
    for node in sorted(nodes, key=lambda name: -nodes[name]):
        pid = by_index.get(node.rsplit("_", 1)[-1])
        if pid is not None:
            return Victim(pid, node, pids)
    return Victim(pids[0], None, pids)


async def replaced(deployment: Deployment, before: list[int]) -> float:
    """Seconds from the kill until the supervisor's replacement listens: a worker that
    was not there `before`."""
    killed = time.monotonic()
    while True:
        if await asyncio.to_thread(deployment.worker_pids, frozenset(before)):
            return round(time.monotonic() - killed, 3)
        await asyncio.sleep(REPLACED_POLL)


def seconds_figures(name: str, values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"{name} median (s)": None, f"{name} max (s)": None}
    return {
        f"{name} median (s)": round(statistics.median(values), 3),
        f"{name} max (s)": round(max(values), 3),
    }


def recovery_figures(recovered: list[dict[str, Any]]) -> dict[str, Any]:
    """The killed worker's editors: how many, how long until back and caught up."""
    back = [value for event in recovered for value in event["back_s"]]
    caught_up = [value for event in recovered for value in event["caught_up_s"]]
    held = sum(event["held"] for event in recovered)
    return {
        "editors cut": sum(event["cut"] for event in recovered),
        "editors cut on other workers": sum(event["cut_elsewhere"] for event in recovered),
        "not recovered": held - len(caught_up),
        "reconnect attempts": sum(event["attempts"] for event in recovered),
        "failed reconnect attempts": connect_failures(recovered),
        **seconds_figures("kill → reconnected", back),
        **seconds_figures("kill → caught up", caught_up),
        **rejoin_steps(recovered),
        "editors per worker after": spread(recovered),
    }


def rejoin_steps(recovered: list[dict[str, Any]]) -> dict[str, str]:
    """Where a reconnect's time went once it was attempted (the rest is the backoff)."""
    figures: dict[str, str] = {}
    for step in ("connect", "auth", "subscribe"):
        latency = latency_ms(merged([event["steps"][step] for event in recovered]))
        figures[f"reconnect {step} p50/max (ms)"] = f"{latency['p50']}/{latency['max']}"
    return figures


def window_latency(results: list[dict[str, Any]]) -> dict[str, float]:
    """Latency of the deliveries inside the failover window (kill → every cut editor
    caught up) and outside it."""
    figures: dict[str, float] = {}
    for window in ("during", "outside"):
        latency = latency_ms(merged([r[f"latency_{window}"] for r in results]))
        for name in ("p50", "p99", "max"):
            figures[f"latency {window} failover {name} (ms)"] = latency[name]
    return figures


@dataclass
class Window:
    """The failover: from the kill until every editor the worker held was back and
    caught up (each editor process's `recovered`), and who used the CPU meanwhile."""

    recovered: list[dict[str, Any]]
    seconds: float
    cpu: dict[str, float]
    replacement_s: float | None  # until the supervisor's replacement listened


async def kill_worker(
    stream: Stream,
    deployment: Deployment,
    victim: Victim,
    writing: asyncio.Future[None],
    options: Options,
) -> Window:
    """SIGKILL the victim mid-stream and wait for its editors to recover."""
    await stream.pool.gather({"cmd": "arm"}, "armed", STEP_TIMEOUT)
    meter = stream.cpu_meter()
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    replacing = asyncio.ensure_future(replaced(deployment, victim.workers))
    try:
        # Catching up shows at the first change committed after the reconnect: past
        # the writing's end it cannot.
        timeout = options.duration * (1 - KILL_AT) + 2.0
        command = {"cmd": "recovery", "killed_at": killed_at, "node": victim.node}
        recovered = await stream.progress.during(
            stream.pool.gather({**command, "timeout": timeout}, "recovered", timeout + STEP_TIMEOUT)
        )
        seconds = time.time() - killed_at
        cpu = meter.stop()
        await stream.pool.gather({"cmd": "disarm"}, "disarmed", STEP_TIMEOUT)
        # The replacement is timed while the writing lasts.
        either: list[asyncio.Future[Any]] = [replacing, writing]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        replacing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replacing
    replacement = None if replacing.cancelled() else replacing.result()
    return Window(recovered, round(seconds, 3), cpu, replacement)


async def failover(options: Options) -> Report:
    """Kill one of the gateway's workers (SIGKILL) while the writer streams: the editors
    it held reconnect to the same URL by themselves, land on another worker (or its
    replacement) and resume from their last position; nothing may be lost, repeated or
    reordered for any editor."""
    workers = options.workers or FAILOVER_WORKERS
    options = replace(options, workers=workers)
    report = Report(
        "failover",
        config_of(options, "subscribers", "rate", "duration", "workers", *LOAD_KEYS),
    )
    async with (
        target(options) as deployment,
        one_project_stream(deployment, options, "failover", follow=True) as (
            writer,
            stream,
            editors,
            ready,
        ),
    ):
        nodes = spread(ready)
        victim = choose_victim(deployment, nodes)
        stream.start_usage()
        started = time.time()
        writing = asyncio.ensure_future(writer.run(options.rate, options.duration))
        try:
            await stream.progress.during(asyncio.sleep(options.duration * KILL_AT))
            window = await kill_worker(stream, deployment, victim, writing, options)
            await stream.progress.during(writing)
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        usage = stream.usage_figures()  # before the editors' processes exit
        results = await finish(stream, writer.seqs(), options)
        stream.progress.done()
        measured, latency, series = result_figures(results, started)
        figures: dict[str, Any] = {
            "editors": len(editors),
            "connect_failures": connect_failures(ready),
            "workers": workers,
            "editors per worker": nodes,
            "killed worker": victim.node or f"pid {victim.pid}",
            **recovery_figures(window.recovered),
            "failover window (s)": window.seconds,
            "cpu % in the window": window.cpu,
            "replacement listening after (s)": window.replacement_s,
            **measured,
            **window_latency(results),
            "commits": writer.writes.total,
            **usage,
        }
        report.runs.append(Run("gateway", figures, latency, series))
    return report


SCENARIOS = {
    "fanout": fanout,
    "projects": projects,
    "storm": storm,
    "reconnect": reconnect,
    "idle": idle,
    "reference": reference,
    "failover": failover,
}
