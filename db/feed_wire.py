"""The local channel between a node's feed reader (db.node_feed) and its workers
(db.worker_feed): a Unix socket in a directory only the node's user may enter.

Reader → worker: frames, each a 4-byte big-endian length and one pickled feed event
(db.feed's `FeedEvent`). Pickle keeps the decoder's types (UUID, datetime, jsonb as
`JsonText`) so a worker does no conversion, and it is safe here because both ends are
the same program run by the same user behind a private directory: nothing else can
bind or reach the socket. Each event is pickled once, and those bytes go to every
worker.

Worker → reader: lines of text. `hello <position>` (or `hello -`) first: the worker
resumes after that position (the last transaction it received whole), or starts afresh;
then `retain <position>` (or `retain -`) whenever the oldest change it still needs moves.
"""

from __future__ import annotations

import pickle
import struct

from db.feed import FeedEvent, Position

HEADER = struct.Struct(">I")
# A frame larger than this is not one of ours (a single event: a row of a few MB at most).
MAX_FRAME_BYTES = 1 << 30
NONE = "-"


def encode_event(event: FeedEvent) -> bytes:
    data = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def decode_event(data: bytes) -> FeedEvent:
    event: FeedEvent = pickle.loads(data)  # trusted: see the module docstring
    return event


def position_text(position: Position | None) -> str:
    return NONE if position is None else str(position)


def parse_position(text: str) -> Position | None:
    return None if text == NONE else Position.parse(text)


def hello(since: Position | None) -> bytes:
    return f"hello {position_text(since)}\n".encode()


def retain(position: Position | None) -> bytes:
    return f"retain {position_text(position)}\n".encode()
