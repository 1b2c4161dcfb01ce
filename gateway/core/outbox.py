"""One text frame to many connections, its bytes built once; an outbox that writes each
connection's frames of one transaction at once.

`websockets.broadcast` builds the frame again for every connection (header, a copy of
the payload, the protocol's write queue) before the kernel's send; a server frame is
unmasked, so without compression its bytes are the same on every connection. Writing
those bytes straight to each transport is what the websockets protocol object would
write itself: it keeps no per-frame state for an unfragmented server message, and the
transport keeps the order of everything written to it.

A message longer than the outbox's `fragment_bytes` goes out as frames of that size
(RFC 6455 5.4: the first with the message's opcode, the rest continuation frames, FIN
on the last), written together so nothing can come between them: a client or proxy
then holds one fragment at a time, however large a snapshot or presence state is.

A transaction usually changes several rows (an update and the version it records),
and each write to a socket is a system call (~10 µs here, most of a delivery's cost):
the outbox joins the frames each connection gets from one transaction into one write.
Whoever fills it must flush it before yielding to the event loop, so that nothing
else written to a connection meanwhile (a reply, `unsubscribed`) can overtake them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Final

from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection
from websockets.frames import Opcode
from websockets.protocol import State

logger = logging.getLogger(__name__)


class Binary(bytes):
    """A payload sent as a binary frame (everything else is sent as text)."""


def wire_frame(data: bytes, fragment_bytes: int = 0) -> bytes:
    """The wire bytes of one uncompressed, unmasked message: one frame, or frames of
    `fragment_bytes` when it is longer (0: never fragmented)."""
    return b"".join(wire_parts(data, fragment_bytes))


def wire_parts(data: bytes, fragment_bytes: int) -> list[bytes | memoryview]:
    """The message's frame headers and payload slices, in order (joined, its wire bytes)."""
    opcode = _BINARY if isinstance(data, Binary) else _TEXT
    length = len(data)
    if not fragment_bytes or length <= fragment_bytes:
        return [_header(_FIN | opcode, length), data]
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, length, fragment_bytes):
        chunk = view[start : start + fragment_bytes]
        fin = _FIN if start + fragment_bytes >= length else 0
        parts.append(_header(fin | (opcode if start == 0 else _CONTINUATION), len(chunk)))
        parts.append(chunk)
    return parts


def _header(first: int, length: int) -> bytes:
    """What `Frame(opcode, data, fin).serialize(mask=False)` writes before the payload
    (RFC 6455 5.2: FIN and the opcode, then the length in 7, 7+16 or 7+64 bits),
    without its checks and objects: a bulk transaction frames thousands."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _SHORT.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


_FIN: Final = 0x80
_TEXT: Final = Opcode.TEXT.value
_BINARY: Final = Opcode.BINARY.value
_CONTINUATION: Final = Opcode.CONT.value
_SHORT: Final = struct.Struct(">BBH")
_LONG: Final = struct.Struct(">BBQ")


class Outbox:
    """Frames queued with their recipients until `flush`, then one write per
    connection: the one path from the gateway to its sockets. Messages longer than
    `fragment_bytes` go out fragmented (0: never)."""

    def __init__(self, fragment_bytes: int = 0) -> None:
        self.fragment_bytes = fragment_bytes
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
            _write_all(first, [data for _, data in batches], self.fragment_bytes)
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
                wire = joined[key] = b"".join(
                    _framed(framed, data, self.fragment_bytes) for data in frames
                )
            _write(connection, wire)


def _write_all(
    connections: list[ServerConnection], frames: list[bytes], fragment_bytes: int
) -> None:
    parts = [part for data in frames for part in wire_parts(data, fragment_bytes)]
    if len(connections) == 1 and _shares_frames(connections[0]):
        # One recipient (a reply, a joiner's presence state or snapshot, up to megabytes
        # shared with others): the transport takes the parts as they are, with no copy
        # into one buffer first.
        _write(connections[0], parts)
        return
    wire = b"".join(parts)
    for connection in connections:
        if _shares_frames(connection):
            _write(connection, wire)
        else:
            _send_each(connection, frames)


def _framed(cache: dict[int, bytes], data: bytes, fragment_bytes: int) -> bytes:
    wire = cache.get(id(data))
    if wire is None:
        wire = cache[id(data)] = wire_frame(data, fragment_bytes)
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


def _write(connection: ServerConnection, wire: bytes | list[bytes | memoryview]) -> None:
    try:
        if isinstance(wire, list):
            connection.transport.writelines(wire)
        else:
            connection.transport.write(wire)
    except RuntimeError as error:  # uvloop: the transport closed under us
        logger.debug("skipped a closed connection: %s", error)
