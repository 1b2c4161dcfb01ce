"""The benchmark scenarios: each sets up its editors and writer, runs, and returns a Report.

- fanout: N editors on one project, one writer at W commits/s (`--ramp`: W raised step
  by step until p99 passes a bound);
- projects: many projects with a few editors each, writes spread over them;
- storm: N editors connect, authenticate and subscribe with a snapshot all at once;
- reconnect: a share of the editors drops mid-stream and resumes from its position;
- idle: N subscribed editors doing nothing: memory per connection, CPU at rest;
- reference: fanout through a bare websockets broadcast server (the ceiling).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from loadtest import deployment as deployments
from loadtest.deployment import Deployment
from loadtest.editor_pool import merged
from loadtest.options import Options
from loadtest.population import Project, create_projects, create_users, tokens
from loadtest.report import Report, Run, latency_ms
from loadtest.streams import (
    DEFAULT_FRAMES,
    STEP_TIMEOUT,
    connect_failures,
    editors_of,
    finish,
    frames_of,
    idle_run,
    open_stream,
    reference_server,
    result_figures,
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
            options.database_url, options.feed, options.gateway_env
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
        deployment, tokens_by_user, [(users[0], users)], options.wireframes
    )
    return projects, editors_of(projects, tokens_by_user, options.subscribers), users[0]


async def fanout(options: Options) -> Report:
    keys = ["subscribers", "rate", "duration", "wireframes", "client_procs"]
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
    report = Report(
        "reference", config_of(options, "subscribers", "rate", "duration", "client_procs")
    )
    report.runs.append(await stream_reference(options, DEFAULT_FRAMES, options.subscribers))
    return report


async def projects(options: Options) -> Report:
    report = Report(
        "projects",
        config_of(options, "projects", "editors_per_project", "rate", "duration", "client_procs"),
    )
    async with target(options) as deployment:
        users = await create_users(deployment.database_url, options.projects)
        tokens_by_user = tokens(deployment, users, ttl=int(options.duration * 20 + 3600))
        size = min(options.editors_per_project, len(users))
        plans = [
            (users[p], [users[(p + k) % len(users)] for k in range(size)])
            for p in range(options.projects)
        ]
        created = await create_projects(deployment, tokens_by_user, plans, wireframes=1)
        editors = editors_of(created, tokens_by_user, options.editors_per_project)
        report.runs.append(
            await stream_gateway("gateway", deployment, created, editors, users[0], options)
        )
    return report


async def storm(options: Options) -> Report:
    """Everyone at once: connect, authenticate, subscribe with a snapshot."""
    report = Report("storm", config_of(options, "clients", "projects", "client_procs"))
    async with target(options) as deployment:
        users = await create_users(
            deployment.database_url, max(1, min(options.users, options.clients))
        )
        tokens_by_user = tokens(deployment, users, ttl=3600)
        count = max(1, min(options.projects, options.clients))
        plans = [(users[p % len(users)], users) for p in range(count)]
        created = await create_projects(deployment, tokens_by_user, plans, options.wireframes)
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
            await finish(stream, {}, options)
            stream.progress.done()
            report.runs.append(Run("gateway", figures))
        finally:
            await stream.pool.stop()
    return report


async def reconnect(options: Options) -> Report:
    """A share of the editors vanishes mid-stream and comes back with `since`."""
    report = Report(
        "reconnect",
        config_of(options, "subscribers", "rate", "duration", "drop_fraction", "client_procs"),
    )
    async with target(options) as deployment:
        projects, editors, owner = await one_project(deployment, options)
        wireframes = [w for project in projects for w in project.wireframes]
        writer = Writer(deployment.database_url, wireframes, str(owner))
        await writer.open()
        processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
        stream, ready = await open_stream(
            "reconnect", deployment.url, "gateway", editors, options, processes
        )
        try:
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
        finally:
            await stream.pool.stop()
            await writer.close()
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


SCENARIOS = {
    "fanout": fanout,
    "projects": projects,
    "storm": storm,
    "reconnect": reconnect,
    "idle": idle,
    "reference": reference,
}
