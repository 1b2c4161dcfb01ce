"""A pool of connected editors and something feeding them, measured: the machinery every
scenario shares (see loadtest.scenarios for the scenarios themselves)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest.deployment import Deployment
from loadtest.editor_pool import EditorPool, merged
from loadtest.editors import PROGRESS_EVERY
from loadtest.options import Options
from loadtest.population import Project
from loadtest.report import Run, latency_ms
from loadtest.usage import CpuMeter, Usage
from loadtest.writer import Writer

READY_TIMEOUT = 600.0  # connecting 10,000 editors on a busy 2-core machine
STEP_TIMEOUT = 120.0
# The frames one commit sends each editor when no gateway run measured them: the
# wireframe change (new and old row) and the version row the update records.
DEFAULT_FRAMES = [{"entity": "wireframe", "bytes": 4700}, {"entity": "version", "bytes": 7200}]
# A figure is client-bound when more of its deliveries than this arrived while their
# editors' process was above the CPU threshold: enough to make its p99 the client's.
CLIENT_BOUND_SHARE = 0.01


class Progress:
    """One line on stderr, rewritten in place: elapsed time, editors connected, rate."""

    def __init__(self, pool: EditorPool, total: int, label: str) -> None:
        self.pool = pool
        self.total = total
        self.label = label
        self.started = time.monotonic()
        self.last = (self.started, pool.received)
        self.rate = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        received = self.pool.received
        if now - self.last[0] >= 1.0:
            self.rate = (received - self.last[1]) / (now - self.last[0])
            self.last = (now, received)
        sys.stderr.write(
            f"\r{self.label}: {now - self.started:6.1f} s  editors {self.pool.connected:,}/"
            f"{self.total:,}  {self.rate:,.0f} deliveries/s  received {received:,}   "
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()

    async def during(self, work: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(work)
        while not task.done():
            self.tick()
            await asyncio.wait([task], timeout=0.5)
        self.tick()
        return task.result()


def editors_of(
    projects: list[Project], tokens_by_user: dict[uuid.UUID, str], per_project: int
) -> list[dict[str, Any]]:
    """`per_project` editors on each project, members taken in turn."""
    return [
        {
            "token": tokens_by_user[project.members[index % len(project.members)]],
            "project_id": project.id,
            "wireframes": project.wireframes,
        }
        for project in projects
        for index in range(per_project)
    ]


@dataclass
class Stream:
    """A pool of connected editors and a writer feeding them: a fanout-shaped run."""

    name: str
    pool: EditorPool
    editors: int
    progress: Progress
    processes: dict[str, Usage]

    def start_usage(self) -> None:
        for usage in self.processes.values():
            usage.start()

    def cpu_meter(self) -> CpuMeter:
        """CPU from now on of the processes measured, this one (the writer), and the
        rest of the machine."""
        return CpuMeter({**self.processes, "writer": Usage(os.getpid(), children=False)})

    def usage_figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for name, usage in self.processes.items():
            sample = usage.stop()
            if sample is not None:
                figures[f"{name} cpu %"] = round(sample.cpu_percent, 1)
                figures[f"{name} memory MiB"] = round(sample.memory_mb, 1)
        return figures


async def open_stream(
    name: str,
    url: str,
    protocol: str,
    editors: list[dict[str, Any]],
    options: Options,
    processes: dict[str, int | None],
    *,
    snapshot: bool = False,
    connect_concurrency: int | None = None,
    follow: bool = False,
) -> tuple[Stream, list[dict[str, Any]]]:
    """Start the editors and wait until they are connected. The gateway's CPU and memory
    are its process and all its children (a supervisor's workers), added up."""
    pool = await EditorPool.start(
        url,
        protocol,
        editors,
        options.client_procs,
        snapshot=snapshot,
        connect_concurrency=connect_concurrency or options.connect_concurrency,
        follow=follow,
        delta=options.delta,
        client_bound_percent=options.client_bound_percent,
        receive_buffer_kib=options.receive_buffer_kib,
    )
    progress = Progress(pool, len(editors), f"{name} connecting")
    ready = await pool.ready(READY_TIMEOUT, progress.tick)
    progress.done()
    usage = {
        "gateway": Usage(*known(processes.get("gateway")), children=True),
        "postgres": Usage(*known(processes.get("postgres")), children=True),
        "editors": Usage(*(p.process.pid for p in pool.processes), children=False),
    }
    usage = {key: value for key, value in usage.items() if value.pids}
    stream = Stream(name, pool, len(editors), Progress(pool, len(editors), name), usage)
    return stream, ready


def known(pid: int | None) -> tuple[int, ...]:
    """A process this host can see, or none (a remote gateway or database)."""
    return () if pid is None else (pid,)


def connect_failures(ready: list[dict[str, Any]]) -> int:
    return sum(sum(event["steps"]["failures"].values()) for event in ready)


def spread(events: list[dict[str, Any]]) -> dict[str, int]:
    """Editors per gateway worker (as the gateway names them in `auth`'s reply), all
    editor processes added up, in the workers' order; empty if the gateway does not say."""
    nodes: Counter[str] = Counter()
    for event in events:
        nodes.update(event.get("nodes", {}))
    return dict(sorted(nodes.items()))


def result_figures(
    results: list[dict[str, Any]], stream_started: float
) -> tuple[dict[str, Any], Any, list[int]]:
    """Merged figures of every editor process's `result`, the latency and per-second series."""
    latency = merged([r["latency"] for r in results])
    deliveries = sum(r["deliveries"] for r in results)
    frames: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for result in results:
        frames.update(result["frames_by_entity"])
        sizes.update(result["bytes_by_entity"])
        closes.update(result["closes"])
        errors.update(result["errors"])
    series = [int(sum(second)) for second in seconds_since(results, stream_started, "per_second")]
    while series and series[-1] == 0:
        series.pop()
    busy = [count for count in series if count]
    per_second = round(sum(busy) / len(busy), 1) if busy else 0.0
    figures = {
        "deliveries": deliveries,
        "deliveries_per_s": per_second,
        **egress(sum(sizes.values()), deliveries, per_second),
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "editors_lost": sum(r["editors_lost"] for r in results),
        "editors_duplicated": sum(r["editors_duplicated"] for r in results),
        "editors_out_of_order": sum(r["editors_out_of_order"] for r in results),
        "resets": sum(r["resets"] for r in results),
        "slow_consumer_closes": sum(r["slow_consumer_closes"] for r in results),
        "other_closes": {k: v for k, v in closes.items() if k != "4008"},
        "errors": dict(errors),
        "frame_bytes": {k: round(sizes[k] / frames[k]) for k in frames},
        "frames": dict(frames),
        "delta_frames": sum(r["delta_frames"] for r in results),
        **client_bound(results, series, stream_started),
    }
    return figures, latency, series


def egress(size: int, deliveries: int, per_second: float) -> dict[str, float]:
    """Bytes per delivery and what the editors received per second (MB: 10^6 bytes), over
    the same seconds as deliveries/s."""
    each = size / deliveries if deliveries else 0.0
    return {"bytes_per_delivery": round(each), "egress_mb_per_s": round(per_second * each / 1e6, 2)}


def client_bound(
    results: list[dict[str, Any]], series: list[int], stream_started: float
) -> dict[str, Any]:
    """Whether the run's figures are the client's: the share of deliveries that arrived
    while their editors' process was above the threshold, the busiest process's CPU over
    the seconds it delivered, and the seconds (from the stream's start) any process was
    above the threshold while deliveries arrived."""
    deliveries = sum(r["deliveries"] for r in results)
    hot = sum(r["client_bound_deliveries"] for r in results)
    share = hot / deliveries if deliveries else 0.0
    threshold = min(r["client_bound_percent"] for r in results)
    cpu = [
        max(second, default=0.0)
        for second in seconds_since(results, stream_started, "cpu_per_second")
    ]
    return {
        "editors_process_cpu_percent": max(r["cpu_percent_delivering"] for r in results),
        "client_bound_share": round(share, 4),
        "client_bound": share > CLIENT_BOUND_SHARE,
        "editors_cpu_per_second": cpu,
        "client_bound_seconds": [
            second
            for second, percent in enumerate(cpu)
            if percent > threshold and second < len(series) and series[second]
        ],
    }


def seconds_since(
    results: list[dict[str, Any]], stream_started: float, key: str
) -> list[list[float]]:
    """A per-second series of every editor process (`key` of its result, indexed from the
    process's start), realigned to wall-clock seconds from the stream's start: for each
    second, every process's value."""
    total: list[list[float]] = []
    for result in results:
        offset = round(result["started"] - stream_started)
        for second, value in enumerate(result[key]):
            at = second + offset
            if at < 0:
                continue
            while len(total) <= at:
                total.append([])
            total[at].append(value)
    return total


async def finish(
    stream: Stream, expected: dict[str, int], options: Options
) -> list[dict[str, Any]]:
    command = {"cmd": "finish", "expected": expected, "drain_seconds": options.drain_seconds}
    results: list[dict[str, Any]] = await stream.progress.during(
        stream.pool.gather(command, "result", options.drain_seconds + STEP_TIMEOUT)
    )
    return results


async def settle(pool: EditorPool, before: int, expected: float | None, limit: float) -> None:
    """Give a step's last frames time to arrive: until `expected` have (the first step:
    until the count stops growing between two progress reports), at most `limit` s."""
    deadline = time.monotonic() + max(2.0, limit)
    last = -1
    while time.monotonic() < deadline:
        received = pool.received - before
        if expected is not None and received >= expected:
            return
        if expected is None and received == last:
            return
        last = received
        await asyncio.sleep(2 * PROGRESS_EVERY + 0.1)


async def ramp_steps(
    stream: Stream, commit: Callable[[float, float], Awaitable[Any]], options: Options
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Raise the rate step by step until a step is not sustained: its p99 passes the
    bound, or fewer than 90% of the frames it offered arrived within the step (the
    first step tells how many frames a commit sends each editor). The last step
    sustained, if any.
    Each step says who used the CPU (and how much went to other work on the machine),
    what the editors received in bytes, and whether it was client-bound."""
    steps: list[dict[str, Any]] = []
    rate = options.rate
    sustained: dict[str, Any] | None = None
    frames_per_commit: float | None = None
    received_bytes = 0
    for _ in range(options.max_steps):
        before = stream.pool.received
        started = time.monotonic()
        meter = stream.cpu_meter()
        await stream.progress.during(commit(rate, options.step_seconds))
        elapsed = time.monotonic() - started
        offered_commits = int(rate * options.step_seconds) * stream.editors
        expected = None if frames_per_commit is None else offered_commits * frames_per_commit
        await stream.progress.during(settle(stream.pool, before, expected, options.step_seconds))
        intervals = await stream.pool.gather({"cmd": "interval"}, "interval", STEP_TIMEOUT)
        latency = merged([event["latency"] for event in intervals])
        received = sum(event["received"] for event in intervals) - before
        if frames_per_commit is None:
            frames_per_commit = max(1.0, round(received / max(1, offered_commits)))
        arrived = received / (offered_commits * frames_per_commit)
        step = {
            "rate": round(rate, 1),
            "deliveries_per_s": round(received / elapsed, 1),
            "arrived": round(arrived, 3),
            "latency_ms": latency_ms(latency),
            "cpu_percent": meter.stop(),
            **step_load(intervals, received, received_bytes, elapsed),
        }
        received_bytes = sum(event["bytes"] for event in intervals)
        steps.append(step)
        if step["latency_ms"]["p99"] > options.p99_bound_ms or arrived < 0.9:
            break
        sustained = step
        rate *= options.ramp_factor
    return steps, sustained


def step_load(
    intervals: list[dict[str, Any]], received: int, before_bytes: int, elapsed: float
) -> dict[str, Any]:
    """A ramp step's bytes per delivery and egress, its busiest editors' process's CPU,
    and whether it was client-bound (as `client_bound` says of a whole run)."""
    size = sum(event["bytes"] for event in intervals) - before_bytes
    hot = sum(event["client_bound_deliveries"] for event in intervals)
    return {
        **egress(size, received, received / elapsed),
        "editors_process_cpu_percent": max(event["cpu_percent"] for event in intervals),
        "client_bound": hot > CLIENT_BOUND_SHARE * max(1, received),
    }


async def measure(
    stream: Stream,
    ready: list[dict[str, Any]],
    commit: Callable[[float, float], Awaitable[Any]],
    commits: Callable[[], dict[str, int]],
    options: Options,
) -> tuple[dict[str, Any], Any, list[int]]:
    """Commit at the fixed rate (or ramp it up) while the editors listen, then let them
    drain: figures, latency, deliveries per second. CPU and memory are read while the
    writing ends, before the editors' processes exit."""
    stream.start_usage()
    started = time.time()
    figures: dict[str, Any] = {
        "editors": stream.editors,
        "connect_failures": connect_failures(ready),
    }
    if spread(ready):
        figures["editors per worker"] = spread(ready)
    if options.ramp:
        steps, sustained = await ramp_steps(stream, commit, options)
        figures["ramp"] = steps
        figures["sustained_deliveries_per_s"] = sustained["deliveries_per_s"] if sustained else 0.0
        figures["sustained_client_bound"] = bool(sustained and sustained["client_bound"])
    else:
        await stream.progress.during(commit(options.rate, options.duration))
    usage = stream.usage_figures()
    results = await finish(stream, commits(), options)
    stream.progress.done()
    measured, latency, series = result_figures(results, started)
    return {**figures, **measured, **usage}, latency, series


async def stream_gateway(
    name: str,
    deployment: Deployment,
    projects: list[Project],
    editors: list[dict[str, Any]],
    owner: uuid.UUID,
    options: Options,
) -> Run:
    wireframes = [w for project in projects for w in project.wireframes]
    writer = Writer(deployment.database_url, wireframes, str(owner), options.layout_bytes)
    await writer.open()
    processes = {"gateway": deployment.gateway_pid, "postgres": deployment.postgres_pid}
    stream, ready = await open_stream(name, deployment.url, "gateway", editors, options, processes)
    try:
        figures, latency, series = await measure(stream, ready, writer.run, writer.seqs, options)
        figures["commits"] = writer.writes.total
        figures["writer_behind_s"] = round(writer.writes.behind_seconds, 3)
        commit_ms = latency_ms(writer.writes.durations)
        figures["commit statement p50/p99 (ms)"] = f"{commit_ms['p50']}/{commit_ms['p99']}"
        return Run(name, figures, latency, series)
    finally:
        await stream.pool.stop()
        await writer.close()


@contextlib.asynccontextmanager
async def reference_server() -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The bare broadcast server in a process of its own: its URL and process."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.reference_server",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    try:
        listening = orjson.loads(await asyncio.wait_for(server.stdout.readline(), STEP_TIMEOUT))
        yield f"ws://127.0.0.1:{listening['port']}/", server
    finally:
        server.kill()
        await server.wait()


async def stream_reference(options: Options, frames: list[dict[str, Any]], editors: int) -> Run:
    """The same editors and rate through the bare broadcast server."""
    async with reference_server() as (url, server):
        assert server.stdin is not None
        assert server.stdout is not None
        wireframes = [str(uuid.uuid4()) for _ in range(options.wireframes)]
        clients = [{"wireframes": wireframes} for _ in range(editors)]
        stream, ready = await open_stream(
            "reference", url, "reference", clients, options, {"gateway": server.pid}
        )
        stdin, stdout = server.stdin, server.stdout

        async def commit(rate: float, seconds: float) -> dict[str, int]:
            command = {
                "cmd": "run",
                "rate": rate,
                "seconds": seconds,
                "wireframes": wireframes,
                "frames": frames,
            }
            stdin.write(orjson.dumps(command) + b"\n")
            done: dict[str, int] = orjson.loads(await stdout.readline())["commits"]
            for key, count in done.items():
                commits[key] = commits.get(key, 0) + count
            return done

        commits: dict[str, int] = {}
        try:
            figures, latency, series = await measure(
                stream, ready, commit, lambda: commits, options
            )
            figures["commits"] = sum(commits.values())
            figures = {k.replace("gateway", "server"): v for k, v in figures.items()}
            for step in figures.get("ramp", []):
                step["cpu_percent"] = {
                    k.replace("gateway", "server"): v for k, v in step["cpu_percent"].items()
                }
            return Run("reference", figures, latency, series)
        finally:
            await stream.pool.stop()


def frames_of(run: Run) -> list[dict[str, Any]]:
    """The frames one commit sent each editor in a gateway run (entity, mean size)."""
    commits = run.figures.get("commits") or 0
    editors = run.figures.get("editors") or 0
    frames: dict[str, int] = run.figures.get("frames", {})
    sizes: dict[str, int] = run.figures.get("frame_bytes", {})
    if not commits or not editors or not frames:
        return DEFAULT_FRAMES
    shape: list[dict[str, Any]] = []
    for entity, count in frames.items():
        per_commit = round(count / (commits * editors))
        shape.extend({"entity": entity, "bytes": sizes[entity]} for _ in range(per_commit))
    wireframe_first = sorted(shape, key=lambda frame: frame["entity"] != "wireframe")
    return wireframe_first or DEFAULT_FRAMES


async def idle_run(
    name: str,
    url: str,
    protocol: str,
    editors: list[dict[str, Any]],
    options: Options,
    processes: dict[str, int | None],
) -> Run:
    """Connect the editors and let them sit: the server's memory per connection (its
    growth over the baseline before they came) and everyone's CPU at rest."""
    server = Usage(*known(processes.get("gateway")), children=True)
    baseline = server.memory_now()
    stream, ready = await open_stream(name, url, protocol, editors, options, processes)
    try:
        await asyncio.sleep(2.0)  # settled: handshakes done, buffers freed
        loaded = server.memory_now()
        stream.start_usage()
        await stream.progress.during(asyncio.sleep(options.duration))
        figures: dict[str, Any] = {
            "connections": len(editors),
            "connect_failures": connect_failures(ready),
            "baseline memory MiB": round(baseline / 2**20, 1),
            "memory MiB": round(loaded / 2**20, 1),
            "KiB per connection": round((loaded - baseline) / 1024 / max(1, len(editors)), 2),
        }
        figures.update(stream.usage_figures())
        await finish(stream, {}, options)
        stream.progress.done()
        return Run(name, figures)
    finally:
        await stream.pool.stop()
