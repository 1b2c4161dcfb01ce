"""The bench's editors: how many processes a scenario gets, and what one editor's
reads may hold in memory."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import picows.api
import pytest
from picows import WSFrame, WSListener, WSTransport, ws_connect
from websockets.asyncio.server import ServerConnection, serve

from loadtest.client_load import spare_processes, with_client_procs
from loadtest.editors import READ_BYTES, BoundedReads
from loadtest.fragments import Reassembly
from loadtest.options import Options

TIMEOUT = 10.0
FRAGMENT = 16 * 1024


def test_a_fixed_rate_gets_the_processes_it_needs_up_to_the_spare_ones() -> None:
    small, advice = with_client_procs("fanout", Options(subscribers=100, rate=1))
    assert (small.client_procs, advice) == (1, None)
    big, advice = with_client_procs("fanout", Options(subscribers=5000, rate=50))
    assert big.client_procs == spare_processes()
    assert advice is not None
    assert advice.startswith("client-bound")


def test_a_ramp_is_sized_for_its_top_step_with_a_process_per_core() -> None:
    """1,000 editors from 20 commits/s fit one process at the start, not at the top:
    with one, both servers would stop where the editors do."""
    ramp = Options(subscribers=1000, rate=20, ramp=True, max_steps=8)
    chosen, advice = with_client_procs("fanout", ramp)
    assert (chosen.client_procs, advice) == (os.cpu_count() or 2, None)
    short, _ = with_client_procs("fanout", replace(ramp, subscribers=10, max_steps=2))
    assert short.client_procs == 1
    asked, _ = with_client_procs("fanout", replace(ramp, client_procs=1))
    assert asked.client_procs == 1


class Whole(WSListener):
    """The first whole message, and the largest buffer a read was offered."""

    def __init__(self) -> None:
        self.reassembly = Reassembly(b"\x00never", lambda size: None)
        self.message = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        message = self.reassembly.feed(frame)
        if message is not None and not self.message.done():
            self.message.set_result(message[1])


async def test_an_editor_reads_a_large_message_in_bounded_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 MB sent at once in 16 KiB fragments arrives whole, and no read offered more than
    READ_BYTES (picows would otherwise grow the connection's buffer to what the kernel
    held: megabytes per editor in a storm)."""
    body = b"x" * (4 << 20)
    offered: list[int] = []

    # ws_connect makes every editor's protocol from this name.
    assert vars(picows.api)["WSProtocol"] is BoundedReads

    class Recorded(BoundedReads):
        def get_buffer(self, size_hint: int) -> memoryview:
            buffer: memoryview = super().get_buffer(size_hint)
            offered.append(len(buffer))
            return buffer

    async def send(ws: ServerConnection) -> None:
        await ws.send([body[i : i + FRAGMENT] for i in range(0, len(body), FRAGMENT)])
        await ws.wait_closed()

    monkeypatch.setitem(vars(picows.api), "WSProtocol", Recorded)
    async with serve(send, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        transport, reader = await asyncio.wait_for(
            ws_connect(Whole, f"ws://127.0.0.1:{port}"), TIMEOUT
        )
        assert isinstance(reader, Whole)
        try:
            assert await asyncio.wait_for(reader.message, TIMEOUT) == body
        finally:
            transport.disconnect()
    assert offered
    assert max(offered) <= READ_BYTES
