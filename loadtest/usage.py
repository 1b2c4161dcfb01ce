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
        memory = memory_bytes(processes, proportional=self.children)
        return Sample(cpu_percent=self.cpu_percent(processes), memory_mb=memory / 2**20)

    def cpu_percent(self, processes: list[psutil.Process] | None = None) -> float:
        """Since `start`; a process that started since counts from its beginning, one
        that ended since is missing."""
        if processes is None:
            processes = tree(self.pids, self.children)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        now = cpu_seconds(processes)
        used = sum(seconds - self.cpu.get(pid, 0.0) for pid, seconds in now.items())
        return 100.0 * used / elapsed

    def memory_now(self) -> int:
        return memory_bytes(tree(self.pids, self.children), proportional=self.children)


def machine_seconds() -> tuple[float, float, float, float]:
    """CPU time all cores of this machine spent so far: in processes; in interrupts (the
    kernel's network processing, loopback included, is mostly softirq, which no process
    is charged for); taken by the hypervisor (steal); idle."""
    times = psutil.cpu_times()
    interrupts = getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle - interrupts - steal), float(interrupts), float(steal), idle


class CpuMeter:
    """CPU of each group of processes over one interval, of the kernel's interrupt work
    (`irq`), of every other process on the machine (`others`: on a shared machine, what
    a figure competed with), taken by the hypervisor (`steal`) and left `idle`, in
    percent of one core (the machine's cores add up to 100 each)."""

    def __init__(self, groups: dict[str, Usage]) -> None:
        self.groups = {
            name: Usage(*usage.pids, children=usage.children) for name, usage in groups.items()
        }
        for usage in self.groups.values():
            usage.start()
        self.started = time.monotonic()
        self.machine = machine_seconds()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        processes, interrupts, steal, idle = (
            100.0 * (now - then) / elapsed
            for now, then in zip(machine_seconds(), self.machine, strict=True)
        )
        figures = {name: round(usage.cpu_percent(), 1) for name, usage in self.groups.items()}
        others = max(0.0, processes - sum(figures.values()))
        machine = {"irq": interrupts, "others": others, "steal": steal, "idle": idle}
        return {**figures, **{name: round(value, 1) for name, value in machine.items()}}
