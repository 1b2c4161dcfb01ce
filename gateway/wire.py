"""One text frame to many connections, its bytes built once.

`websockets.broadcast` builds the frame again for every connection (header, a copy of
the payload, the protocol's write queue) before the kernel's send; a server frame is
unmasked, so without compression its bytes are the same on every connection. Writing
those bytes straight to each transport is what the websockets protocol object would
write itself: it keeps no per-frame state for an unfragmented server message, and the
transport keeps the order of everything written to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

logger = logging.getLogger(__name__)


def text_frame(data: bytes) -> bytes:
    """The wire bytes of one unfragmented, uncompressed, unmasked text frame."""
    return Frame(Opcode.TEXT, data).serialize(mask=False)


def write_text(connections: Iterable[ServerConnection], data: bytes) -> None:
    """Send `data` as a text frame to every open connection; skip the ones closing."""
    wire: bytes | None = None
    for connection in connections:
        protocol = connection.protocol
        if protocol.state is not State.OPEN:
            continue
        if protocol.extensions or connection.send_in_progress is not None:
            # permessage-deflate compresses per connection; websockets does that.
            broadcast([connection], data, text=True)
            continue
        if wire is None:
            wire = text_frame(data)
        try:
            connection.transport.write(wire)
        except RuntimeError as error:  # uvloop: the transport closed under us
            logger.debug("skipped a closed connection: %s", error)
