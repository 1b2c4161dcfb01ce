"""Whole messages out of picows frames.

picows hands over each fragment of a fragmented message as a frame of its own (it
reassembles nothing), and the gateway sends messages longer than
SITEBUILDER_FRAGMENT_BYTES in fragments. Holding one fragment at a time is also what
keeps a simulated client's read buffer at that size: picows grows a connection's buffer
to the largest frame it received and never shrinks it.
"""

from __future__ import annotations

from collections.abc import Callable

from picows import WSFrame, WSMsgType

DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY)


def _ignore(size: int) -> None:
    del size


class Reassembly:
    """The fragments of the message being read, joined when its last one arrives. A
    message whose first fragment starts with `skip_prefix` is only measured: its
    fragments' sizes go to `skipped` and nothing is kept."""

    def __init__(self, skip_prefix: bytes = b"", skipped: Callable[[int], None] = _ignore) -> None:
        self._skip_prefix = skip_prefix
        self._skipped = skipped
        self._kind = WSMsgType.TEXT
        self._parts: list[bytes] = []
        self._skipping = False

    def feed(self, frame: WSFrame) -> tuple[WSMsgType, bytes] | None:
        """The message this frame completes (its type and payload); None while more
        fragments are to come, for a skipped message and for control frames."""
        kind = frame.msg_type
        if kind in DATA_TYPES:
            if frame.fin:
                return kind, frame.get_payload_as_bytes()
            first = frame.get_payload_as_bytes()
            self._kind = kind
            self._parts = []
            self._skipping = bool(self._skip_prefix) and first.startswith(self._skip_prefix)
            return self._add(first, fin=False)
        if kind == WSMsgType.CONTINUATION:
            if self._skipping:
                self._skipped(frame.payload_size)
                return None
            return self._add(frame.get_payload_as_bytes(), frame.fin)
        return None

    def _add(self, payload: bytes, fin: bool) -> tuple[WSMsgType, bytes] | None:
        if self._skipping:
            self._skipped(len(payload))
            return None
        self._parts.append(payload)
        if not fin:
            return None
        message, self._parts = b"".join(self._parts), []
        return self._kind, message
