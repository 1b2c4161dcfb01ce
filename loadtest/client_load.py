"""How much the editors' processes will have to read, and how many of them it takes.

The editors' process is one thread: past about 70% of a core it starts to queue what
the server already sent, and the latency it reports becomes its own. Before a run the
bench estimates the deliveries per second and bytes the scenario offers, and from what
one process costs per frame and per kilobyte on this machine chooses `--client-procs`
(when not given): the fewest whose estimated CPU stays below the threshold; when even
the processes the machine can spare (half its cores: the rest are the server's) would
not, it says to ask for fewer editors. The run then measures the processes' CPU itself
and marks what was client-bound anyway (loadtest.streams.client_bound).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import orjson

from loadtest.options import Options
from loadtest.population import layout

# One editors' process on this machine (2 cores, picows on uvloop): CPU per frame and
# per kilobyte of it, in microseconds (docs/benchmarks.md, "Bytes, deltas and
# client-bound figures", says how they were measured).
FRAME_US = 12.0
KB_US = 0.3
# Bytes of a commit's frames besides the layouts they carry (measured at 2 KB layouts:
# a wireframe change 5.1 KB with its new and old rows, its version 7.3 KB).
CHANGE_OVERHEAD = 820
VERSION_OVERHEAD = 880
# With delta subscriptions (measured): the wireframe's delta (id, versions, updated_at,
# the patch of bench_seq) and the version row without its data and changes.
DELTA_BYTES = 400
DELTA_VERSION_BYTES = 570
# Scenarios whose every editor gets every commit of its project, and how many editors
# share a project.
EVERY_EDITOR = ("fanout", "reference", "reconnect", "failover", "hostile")


def frames_per_commit(options: Options) -> list[dict[str, Any]]:
    """The frames one commit sends each editor (entity, bytes), estimated from the
    layout's size and the subscription: what the reference server sends when no gateway
    run measured them (`bench reference`)."""
    if options.delta:
        return [
            {"entity": "wireframe", "bytes": DELTA_BYTES},
            {"entity": "version", "bytes": DELTA_VERSION_BYTES},
        ]
    size = len(orjson.dumps(layout(0, options.layout_bytes)))
    return [
        {"entity": "wireframe", "bytes": 2 * size + CHANGE_OVERHEAD},
        {"entity": "version", "bytes": 3 * size + VERSION_OVERHEAD},
    ]


@dataclass
class Load:
    """What a scenario offers the editors, all processes together."""

    deliveries_per_s: float
    bytes_per_s: float

    @property
    def cpu_percent(self) -> float:
        """% of one core it costs one editors' process to read it all."""
        per_second_us = self.deliveries_per_s * FRAME_US + self.bytes_per_s / 1000 * KB_US
        return per_second_us / 1e4


def offered(scenario: str, options: Options) -> Load:
    """Deliveries and bytes per second the scenario's writer offers at its (first) rate."""
    if scenario in EVERY_EDITOR:
        editors_per_commit = options.subscribers
    elif scenario == "projects":
        editors_per_commit = options.editors_per_project
    else:  # storm and idle write nothing; feed writes as fast as it can
        return Load(0.0, 0.0)
    frames = frames_per_commit(options)
    commits = options.rate * editors_per_commit
    return Load(commits * len(frames), commits * sum(frame["bytes"] for frame in frames))


def spare_processes() -> int:
    """Editors' processes the machine can run beside the server: half its cores."""
    return max(1, (os.cpu_count() or 2) // 2)


def with_client_procs(scenario: str, options: Options) -> tuple[Options, str | None]:
    """The options with `client_procs` chosen (when 0), and advice when the editors
    asked for will be client-bound whatever the choice.

    A ramp raises its rate until a server stops keeping up, so its last steps offer
    more than any one process reads: it is sized for its top step, with up to one
    editors' process per core. Otherwise both servers stop at the step where the
    editors do (whole rows at 1,000 editors did, at the same rate), and the ramp
    compares the client with itself. Its steps are still marked client-bound where
    they were, and it needs no advice: saturating is what it is for."""
    sized_for = options
    most = spare_processes()
    if options.ramp:
        top = options.rate * options.ramp_factor ** (options.max_steps - 1)
        sized_for, most = replace(options, rate=top), os.cpu_count() or 2
    load = offered(scenario, sized_for)
    budget = options.client_bound_percent
    needed = max(1, math.ceil(load.cpu_percent / budget))
    chosen = options.client_procs or min(needed, most)
    options = replace(options, client_procs=chosen)
    if options.ramp or needed <= chosen:
        return options, None
    return options, advice(load, options, chosen, budget)


def advice(load: Load, options: Options, procs: int, budget: float) -> str:
    """Say that the figures will be the client's, and how much load would not be."""
    fits = load.deliveries_per_s * procs * budget / load.cpu_percent
    return (
        f"client-bound: {load.deliveries_per_s:,.0f} deliveries/s "
        f"({load.bytes_per_s / 1e6:,.1f} MB/s) would keep {procs} editors' process(es) "
        f"near {load.cpu_percent / procs:.3g}% of a core each (client-bound past "
        f"{options.client_bound_percent:g}%), and this machine spares "
        f"{spare_processes()} beside the server: about {fits:,.0f} deliveries/s of "
        "these frames fit; ask for fewer editors or a lower --rate, or read the figures "
        "marked client-bound as the client's"
    )
