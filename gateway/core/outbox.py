"""One text frame to many connections, its bytes built once; an outbox that writes each
connection's frames of one transaction at once.

`websockets.broadcast` builds the frame again for every connection (header, a copy of
the payload, the protocol's write queue) before the kernel's send; a server frame is
unmasked, so without compression its bytes are the same on every connection. Writing
those bytes straight to each transport is what the websockets protocol object would
write itself: it keeps no per-frame state for an unfragmented server message, and the
transport keeps the order of everything written to it.

A transaction usually changes several rows (an update and the version it records),
and each write to a socket is a system call (~10 µs here, most of a delivery's cost):
the outbox joins the frames each connection gets from one transaction into one write.
Whoever fills it must flush it before yielding to the event loop, so that nothing
else written to a connection meanwhile (a reply, `unsubscribed`) can overtake them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection
from websockets.frames import Opcode
from websockets.protocol import State

logger = logging.getLogger(__name__)


class Binary(bytes):
    """A payload sent as a binary frame (everything else is sent as text)."""


def wire_frame(data: bytes) -> bytes:
    """The wire bytes of one unfragmented, uncompressed, unmasked frame."""
    return _header(data) + data


def _header(data: bytes) -> bytes:
    """What `Frame(opcode, data).serialize(mask=False)` writes before the payload
    (RFC 6455 5.2: FIN and the opcode, then the length in 7, 7+16 or 7+64 bits),
    without its checks and objects: a bulk transaction frames thousands."""
    first = _BINARY if isinstance(data, Binary) else _TEXT
    length = len(data)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _SHORT.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


_TEXT: Final = 0x80 | Opcode.TEXT.value
_BINARY: Final = 0x80 | Opcode.BINARY.value
_SHORT: Final = struct.Struct(">BBH")
_LONG: Final = struct.Struct(">BBQ")


class Outbox:
    """Frames queued with their recipients until `flush`, then one write per
    connection: the one path from the gateway to its sockets."""

    def __init__(self) -> None:
        self._batches: list[tuple[list[ServerConnection], bytes]] = []

    def add(self, connections: list[ServerConnection], data: bytes) -> None:
        self._batches.append((connections, data))

    def send(self, connection: ServerConnection, data: bytes) -> None:
        """One frame to one connection, now: after whatever is queued (so a reply or a
        notice never overtakes the frames of a transaction being published)."""
        self.add([connection], data)
        self.flush()

    def flush(self) -> None:
        """Write everything queued. Connections that got the same frames share the bytes."""
        if not self._batches:
            return
        batches, self._batches = self._batches, []
        first = batches[0][0]
        if all(connections == first for connections, _ in batches[1:]):
            # The usual transaction: every frame went to the same subscribers.
            _write_all(first, [data for _, data in batches])
            return
        queued: dict[ServerConnection, list[bytes]] = {}
        for connections, data in batches:
            for connection in connections:
                queued.setdefault(connection, []).append(data)
        framed: dict[int, bytes] = {}
        joined: dict[tuple[int, ...], bytes] = {}
        # ids stay unique while `batches` holds every frame alive
        for connection, frames in queued.items():
            if not _shares_frames(connection):
                _send_each(connection, frames)
                continue
            key = tuple(map(id, frames))
            wire = joined.get(key)
            if wire is None:
                wire = joined[key] = b"".join(_framed(framed, data) for data in frames)
            _write(connection, wire)


def _write_all(connections: Iterable[ServerConnection], frames: list[bytes]) -> None:
    wire = b"".join([part for data in frames for part in (_header(data), data)])
    for connection in connections:
        if _shares_frames(connection):
            _write(connection, wire)
        else:
            _send_each(connection, frames)


def _framed(cache: dict[int, bytes], data: bytes) -> bytes:
    wire = cache.get(id(data))
    if wire is None:
        wire = cache[id(data)] = wire_frame(data)
    return wire


def _shares_frames(connection: ServerConnection) -> bool:
    """Open, uncompressed, not in the middle of a fragmented message."""
    protocol = connection.protocol
    return (
        protocol.state is State.OPEN
        and not protocol.extensions
        and connection.send_in_progress is None
    )


def _send_each(connection: ServerConnection, frames: Sequence[bytes]) -> None:
    """permessage-deflate compresses per connection: websockets frames those itself
    (and skips connections that are not open)."""
    for data in frames:
        broadcast([connection], data, text=not isinstance(data, Binary))


def _write(connection: ServerConnection, wire: bytes) -> None:
    try:
        connection.transport.write(wire)
    except RuntimeError as error:  # uvloop: the transport closed under us
        logger.debug("skipped a closed connection: %s", error)
