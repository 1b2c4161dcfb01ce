"""What every change feed yields, whatever carries it (NOTIFY now, replication next).

A feed is an async iterator of events in commit order. Row changes of one
transaction are contiguous and followed by its `TransactionEnd`. When the feed
loses its connection it yields `FeedInterrupted`; when it is back it yields
`FeedResumed`, and consumers must resynchronise, since changes committed in
between may never arrive. That is the whole contract, so consumers (the gateway's
dispatcher) never know which feed they read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID


class ChangeOp(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


@dataclass(frozen=True, slots=True)
class RowChange:
    """One committed row change. Rows are column → JSON-compatible value."""

    table: str
    op: ChangeOp
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    xid: int
    index: int
    committed_at: datetime
    actor: UUID | None


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    xid: int


@dataclass(frozen=True, slots=True)
class FeedInterrupted:
    reason: str


@dataclass(frozen=True, slots=True)
class FeedResumed:
    pass


FeedEvent = RowChange | TransactionEnd | FeedInterrupted | FeedResumed


class ChangeFeed(Protocol):
    """A source of committed changes; reconnects by itself until the iterator is closed."""

    name: str

    @property
    def connected(self) -> bool:
        """True while changes are being received (readiness)."""
        ...

    async def wait_connected(self) -> None:
        """Return once the feed receives changes."""
        ...

    def events(self) -> AsyncGenerator[FeedEvent, None]: ...
