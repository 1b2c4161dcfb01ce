"""The bench's clients read fragmented messages whole (the gateway fragments messages
past SITEBUILDER_FRAGMENT_BYTES; picows hands over each fragment as a frame)."""

from __future__ import annotations

import asyncio

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.asyncio.server import ServerConnection, serve

from loadtest.fragments import Reassembly

TIMEOUT = 10.0
PRESENCE = b'{"type":"presence.state",'


class Reader(WSListener):
    """Keeps the whole messages, and the sizes of the skipped ones' fragments."""

    def __init__(self) -> None:
        self.messages: list[tuple[WSMsgType, bytes]] = []
        self.skipped: list[int] = []
        self.reassembly = Reassembly(PRESENCE, self.skipped.append)
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        message = self.reassembly.feed(frame)
        if message is None:
            return
        self.messages.append(message)
        if message[1] == b"end" and not self.done.done():
            self.done.set_result(None)


async def send_fragmented(ws: ServerConnection) -> None:
    await ws.send(['{"a":', "1}"])  # a text message in two fragments
    await ws.send([PRESENCE, b"x" * 5000, b"}"])  # skipped: only its size is counted
    await ws.send("short")
    await ws.send([b"\x00\x01", b"\x02"])  # binary, in two
    await ws.send("end")
    await ws.wait_closed()


async def test_fragmented_messages_arrive_whole_and_skipped_ones_are_only_counted() -> None:
    async with serve(send_fragmented, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        transport, reader = await asyncio.wait_for(
            ws_connect(Reader, f"ws://127.0.0.1:{port}"), TIMEOUT
        )
        assert isinstance(reader, Reader)
        try:
            await asyncio.wait_for(reader.done, TIMEOUT)
        finally:
            transport.disconnect()
    assert reader.messages == [
        (WSMsgType.TEXT, b'{"a":1}'),
        (WSMsgType.TEXT, b"short"),
        (WSMsgType.BINARY, b"\x00\x01\x02"),
        (WSMsgType.TEXT, b"end"),
    ]
    # websockets ends an iterable with an empty final fragment
    assert reader.skipped == [len(PRESENCE), 5000, 1, 0]
