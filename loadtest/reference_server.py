"""The ceiling: a bare websockets broadcast server (`python -m loadtest.reference_server`).

No authentication, no database, no protocol: every connection gets every frame, sent
with `websockets.broadcast` on uvloop without compression. It stands for the best a
Python websocket server can do on this machine, so the gateway's figures are quoted as
a ratio of it, measured in the same run.

It prints `{"event": "listening", "port": p}`, then takes commands on stdin, one JSON
object per line:

- `{"cmd": "run", "rate": commits/s, "seconds": s, "wireframes": [ids],
  "frames": [{"entity": e, "bytes": n}, ...]}`: for each simulated commit, broadcast
  one frame per entry, shaped as the gateway's `change` frames (entity, committed_at
  = when the commit was due, the wireframe's `new.layout.bench_seq`) and padded to the
  given size, the wireframes taken in turn, each one's seq going on from the previous
  run; answers `{"event": "done", "commits": {id: commits in this run}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def change_frame(entity: str, size: int, wireframe_id: str, seq: int, due: float) -> bytes:
    """A frame the editors count exactly as they count the gateway's, its fields where
    the gateway's are (the row first, `committed_at` and `position` last: the editors
    search for those from the end). Its commit time is when the simulated commit was
    due, not when this busy loop got to it: an overloaded server must show as latency,
    as an overloaded gateway does."""
    frame: dict[str, Any] = {
        "type": "change",
        "entity": entity,
        "op": "update",
        "new": {"id": wireframe_id, "layout": {"bench_seq": seq}},
        "pad": "",
        "committed_at": datetime.fromtimestamp(due, UTC).isoformat(),
        "position": str(seq),
    }
    bare = len(orjson.dumps(frame))
    frame["pad"] = "x" * max(0, size - bare)
    return orjson.dumps(frame)


class Broadcaster:
    def __init__(self) -> None:
        self.connections: set[ServerConnection] = set()
        # Seqs go on across runs (a ramp is several), as the writer's do.
        self.seqs: dict[str, int] = {}

    async def handler(self, connection: ServerConnection) -> None:
        self.connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            self.connections.discard(connection)

    async def run(self, command: dict[str, Any]) -> None:
        """Commit-shaped bursts at a fixed rate, on an absolute schedule (no drift)."""
        wireframes: list[str] = command["wireframes"]
        frames: list[dict[str, Any]] = command["frames"]
        total = int(float(command["rate"]) * float(command["seconds"]))
        interval = 1.0 / float(command["rate"])
        commits = dict.fromkeys(wireframes, 0)
        seqs = self.seqs
        start = time.monotonic()
        wall_start = time.time()
        for index in range(total):
            delay = start + index * interval - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            due = wall_start + index * interval
            wireframe_id = wireframes[index % len(wireframes)]
            commits[wireframe_id] += 1
            seqs[wireframe_id] = seq = seqs.get(wireframe_id, 0) + 1
            for shape in frames:
                message = change_frame(shape["entity"], int(shape["bytes"]), wireframe_id, seq, due)
                broadcast(self.connections, message, text=True)
        emit("done", commits=commits)


async def main(port: int) -> None:
    broadcaster = Broadcaster()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(
        broadcaster.handler,
        "127.0.0.1",
        port,
        compression=None,
        max_queue=None,
        ping_interval=20,
        backlog=16384,
    ) as server:
        emit("listening", port=server.sockets[0].getsockname()[1])
        while line := await reader.readline():
            command = orjson.loads(line)
            if command["cmd"] == "run":
                await broadcaster.run(command)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(main(parser.parse_args().port))
