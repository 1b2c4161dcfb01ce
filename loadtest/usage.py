"""CPU and memory of the processes under test, read from /proc through psutil.

CPU is quoted in percent of one core (200% is both cores of this machine). PostgreSQL
is its postmaster and every child (backends, WAL sender, writers), summed; memory as
proportional set size, so the shared buffers are counted once and not per backend.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import psutil


def tree(pids: tuple[int, ...], children: bool) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)] if children else [root]
    return found


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seen: dict[int, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seen[process.pid] = times.user + times.system
    return seen


def memory_bytes(processes: list[psutil.Process], proportional: bool) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if proportional:
                total += process.memory_full_info().pss
            else:
                total += process.memory_info().rss
    return total


@dataclass
class Sample:
    cpu_percent: float
    memory_mb: float


class Usage:
    """CPU used between `start` and `stop`, and the memory at `stop`, of some processes
    (with `children`: and all their descendants), added up."""

    def __init__(self, *pids: int, children: bool) -> None:
        self.pids = pids
        self.children = children
        self.started = 0.0
        self.cpu: dict[int, float] = {}

    def start(self) -> None:
        self.started = time.monotonic()
        self.cpu = cpu_seconds(tree(self.pids, self.children))

    def stop(self) -> Sample | None:
        processes = tree(self.pids, self.children)
        if not processes:
            return None
        elapsed = max(time.monotonic() - self.started, 1e-6)
        now = cpu_seconds(processes)
        used = sum(seconds - self.cpu.get(pid, 0.0) for pid, seconds in now.items())
        memory = memory_bytes(processes, proportional=self.children)
        return Sample(cpu_percent=100.0 * used / elapsed, memory_mb=memory / 2**20)

    def memory_now(self) -> int:
        return memory_bytes(tree(self.pids, self.children), proportional=self.children)
