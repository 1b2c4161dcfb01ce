"""The driver's side of the simulated editors: their processes, commands and reports.

Editors are split evenly over `--client-procs` processes (see loadtest.editors); every
command goes to all of them and their answers are merged: histograms added, counts
summed, per-second deliveries added second by second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

from loadtest.editors import new_histogram
from loadtest.options import CLIENT_BOUND_PERCENT

STDOUT_LIMIT = 1 << 28  # a result carries histograms and per-second counts
EXIT_TIMEOUT = 30.0


def decoded(encoded: str) -> HdrHistogram:
    histogram = new_histogram()
    histogram.decode_and_add(encoded)
    return histogram


def merged(encodings: list[str]) -> HdrHistogram:
    total = new_histogram()
    for encoded in encodings:
        total.decode_and_add(encoded)
    return total


class ChildProcess:
    """A process of simulated clients driven over stdio: commands in, one JSON event per
    line out (the editors', loadtest.editors; the hostile clients', loadtest.hostile)."""

    name = "child process"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    def took(self, event: dict[str, Any]) -> bool:
        """Whether the process handles `event` itself (else `expect` gets it)."""
        return False

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            event = orjson.loads(line)
            if not self.took(event):
                await self.events.put(event)
        await self.events.put({"event": "exit"})

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            event = await self.events.get()
        if event["event"] != kind:
            raise RuntimeError(f"{self.name}: expected {kind}, got {event['event']}")
        return event

    async def kill(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


class EditorProcess(ChildProcess):
    name = "editor process"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.connected = 0
        self.received = 0
        super().__init__(process)

    def took(self, event: dict[str, Any]) -> bool:
        if event["event"] != "progress":
            return False
        self.connected = event["connected"]
        self.received = event["received"]
        return True


class EditorPool:
    """All editor processes of one run."""

    def __init__(self, processes: list[EditorProcess]) -> None:
        self.processes = processes

    @classmethod
    async def start(
        cls,
        url: str,
        protocol: str,
        editors: list[dict[str, Any]],
        procs: int,
        *,
        snapshot: bool = False,
        connect_concurrency: int = 200,
        follow: bool = False,
        delta: bool = False,
        client_bound_percent: float = CLIENT_BOUND_PERCENT,
        receive_buffer_kib: int = 0,
    ) -> EditorPool:
        procs = max(1, min(procs, len(editors) or 1))
        started = []
        for index in range(procs):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtest.editors",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=STDOUT_LIMIT,
            )
            editor_process = EditorProcess(process)
            editor_process.send(
                {
                    "url": url,
                    "protocol": protocol,
                    "editors": editors[index::procs],
                    "snapshot": snapshot,
                    "connect_concurrency": max(1, connect_concurrency // procs),
                    "follow": follow,
                    "delta": delta,
                    "client_bound_percent": client_bound_percent,
                    "receive_buffer_kib": receive_buffer_kib,
                }
            )
            started.append(editor_process)
        return cls(started)

    @property
    def connected(self) -> int:
        return sum(p.connected for p in self.processes)

    @property
    def received(self) -> int:
        return sum(p.received for p in self.processes)

    async def gather(
        self,
        command: dict[str, Any] | None,
        kind: str,
        timeout: float,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        if command is not None:
            for process in self.processes:
                process.send(command)
        return list(await asyncio.gather(*(p.expect(kind, timeout) for p in self.processes)))

    async def ready(self, timeout: float, progress: Callable[[], None]) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Wait for every process to report its editors connected, ticking the progress line."""
        waiting = asyncio.ensure_future(self.gather(None, "ready", timeout))
        while not waiting.done():
            progress()
            await asyncio.wait([waiting], timeout=0.5)
        return waiting.result()

    async def stop(self) -> None:
        await asyncio.gather(*(p.kill() for p in self.processes))
