"""What every change feed yields, whatever carries it (NOTIFY now, replication next).

A feed is an async iterator of events in commit order. Row changes of one
transaction are contiguous and followed by its `TransactionEnd`; a feed that has
several of them at once may yield them together (`RowChanges`). When the feed
loses its connection it yields `FeedInterrupted`; when it is back it yields
`FeedResumed`, saying whether it picked up exactly where it stopped (a replication
slot does) or changes committed in between may never arrive (NOTIFY), in which
case consumers must resynchronise. Every change carries a `Position`; consumers
tell the feed, with `retain_from`, the oldest position they still need, so a
durable feed knows how far it may let the server forget. A consumer that must know
it has seen everything committed up to a moment writes a `fence` and waits for it
to come through. That is the whole contract, so consumers (the gateway's dispatcher)
never know which feed they read.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol
from uuid import UUID


class ChangeOp(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


_POSITION = re.compile(r"^([a-z][0-9a-z]{1,32})/([0-9a-f]{16})\.([0-9a-f]{6})$")


class Position(NamedTuple):
    """Where a change sits in a feed: its transaction, then its index inside it.

    `epoch` names the sequence the numbers belong to: for the replication feed the
    database cluster (positions are commit LSNs, valid across gateway and server
    restarts); for NOTIFY one listening connection (a counter, valid until it
    drops). Positions of one epoch compare as their strings do (fixed-width hex).
    Index 0 is "before the transaction's first change", so a position just before
    any change can be written down.

    A named tuple: one is made per change, and compared as the history records it,
    both in C (a frozen dataclass sets each field through `object.__setattr__` and
    builds two tuples for every comparison).
    """

    epoch: str
    txn: int
    # Shadows tuple.index, which nothing calls on a position.
    index: int  # type: ignore[assignment]

    def __str__(self) -> str:
        epoch, txn, index = self
        known = _PREFIXES.get(txn)
        prefix = known[1] if known is not None and known[0] == epoch else _prefix(epoch, txn)
        return f"{prefix}{index:06x}"

    @classmethod
    def parse(cls, text: str) -> Position | None:
        """The position a client sent back, or None when it is not one of ours."""
        match = _POSITION.match(text)
        if match is None:
            return None
        return cls(match[1], int(match[2], 16), int(match[3], 16))

    def just_before(self) -> Position:
        """The greatest position before this one (one that no change has)."""
        if self.index > 0:
            return Position(self.epoch, self.txn, self.index - 1)
        return Position(self.epoch, self.txn - 1, MAX_INDEX)


MAX_INDEX = 0xFFFFFF

# The text of the latest transactions' positions up to their index: a transaction's
# changes share it, and each change's frame writes its position.
_PREFIXES: dict[int, tuple[str, str]] = {}  # txn -> (epoch, text)
_PREFIXES_KEPT = 64


def _prefix(epoch: str, txn: int) -> str:
    if len(_PREFIXES) >= _PREFIXES_KEPT:
        _PREFIXES.clear()
    prefix = f"{epoch}/{txn:016x}."
    _PREFIXES[txn] = (epoch, prefix)
    return prefix


class JsonText(str):
    """A json or jsonb value still in its JSON text, in a typed row: the replication
    feed leaves parsing it to whoever encodes the change, so the parsed tree (a 2 KB
    layout is some 60 lists and dicts) lives for one change, not for the whole
    transaction that waits to be published: trees kept that long survive into the
    garbage collector's older generations, whose collections then walk them all.
    (orjson parses exact `str` only: `str(value)`.)"""

    __slots__ = ()


@dataclass(slots=True)
class RowChange:
    """One committed row change. Rows are column → value (JSON-compatible, or typed:
    UUID, datetime, Decimal… which the protocol's row models accept alike).

    Not frozen, though nothing changes it once made: one is made per row change on the
    feed's hottest path, and a frozen dataclass sets each field through
    `object.__setattr__` (2.5 of its 3.5 µs here)."""

    table: str
    op: ChangeOp
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    xid: int
    position: Position
    committed_at: datetime
    actor: UUID | None
    # The gateway request that made it (`sitebuilder.request`, migration 0013), if any.
    request: str | None = None
    # The rows hold the protocol's types already (UUID, datetime, jsonb as JsonText to
    # parse: the replication feed's decoder), so they need no validation; JSON from the
    # NOTIFY feed does.
    typed: bool = False


@dataclass(frozen=True, slots=True)
class RowChanges:
    """Consecutive row changes of one transaction, in commit order: what a feed that
    holds a transaction's changes at once yields instead of one event each, so its
    consumer pays one step of the iterator for all of them. The transaction's
    `TransactionEnd` follows as ever; a transaction may come in several batches."""

    changes: list[RowChange]


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    xid: int


@dataclass(frozen=True, slots=True)
class FeedInterrupted:
    reason: str


@dataclass(frozen=True, slots=True)
class FeedResumed:
    """The feed receives changes, from just after `floor`; yielded when it first
    connects and after every reconnect. `lossless`: it continues right after the last
    change it yielded; otherwise changes may have been missed (`reason` says why)."""

    floor: Position
    lossless: bool = False
    reason: str = "the change feed was interrupted"


@dataclass(frozen=True, slots=True)
class FenceReached:
    """A fence the gateway committed (`ChangeFeed.fence`) came through: every
    transaction that committed before it has been yielded. Any gateway on the database
    may have written it; the one waiting for `token` knows it."""

    token: str


FeedEvent = RowChange | RowChanges | TransactionEnd | FeedInterrupted | FeedResumed | FenceReached


class ChangeFeed(Protocol):
    """A source of committed changes; reconnects by itself until the iterator is closed."""

    name: str
    # True when a transaction's events follow each other without the feed yielding to
    # the event loop in between, so a consumer may hold its output until TransactionEnd.
    whole_transactions: bool

    @property
    def connected(self) -> bool:
        """True while changes are being received (readiness)."""
        ...

    async def wait_connected(self) -> None:
        """Return once the feed receives changes."""
        ...

    def events(self) -> AsyncGenerator[FeedEvent, None]: ...

    def retain_from(self, position: Position | None) -> None:
        """The oldest change the consumer may still need (None: none it was given);
        a durable feed lets the server discard only what comes before it."""
        ...

    async def lag_bytes(self) -> int | None:
        """WAL the server holds for this feed and it has not confirmed (None: none held)."""
        ...

    async def fence(self, conn: Any, token: str) -> None:
        """Commit a marker this feed yields as `FenceReached(token)` after every
        transaction that committed before it (`conn`: an asyncpg connection)."""
        ...
