"""Table-wide subscriptions: Supabase `postgres_changes` bindings, fed by the hub.

A channel's bindings name tables, optionally filtered; the rows they deliver are
those of projects the reader could read when the change was committed (the project's
access list as of it: gateway.authorization), so an unfiltered binding on
`wireframes` yields the wireframes of every project the user can read and no other.
When that access list could not be known, the watches the change was for are told
that changes may have been missed, rather than guessed at.
A change is checked only against the watches it may match: those whose bindings
filter on `eq`/`in` are indexed by (column, value), so a change costs a lookup per
indexed column and the watches it matches, not every watch of its table (the others
are checked on every change). The watches that want it are grouped by (protocol
version, topic, binding ids) and each group's frame is encoded once, its `data`
serialized once for all groups, and queued in the outbox with the native frames of
the same transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import orjson
from pydantic import JsonValue
from websockets.asyncio.server import ServerConnection

from db.feed import Position
from gateway.authorization import Acl, Level, Undetermined, level_of
from gateway.metrics import Metrics
from gateway.wire import Outbox
from protocol.frames import ChangeBase, ResetReason
from protocol.phoenix import Event as PhxEvent
from protocol.phoenix import Message, Vsn, encode
from protocol.phoenix_changes import Binding, ChangeType, Op, change_data

logger = logging.getLogger(__name__)

UNKNOWN_ACCESS = "who could read a change could not be told as of its commit"


@dataclass(frozen=True, slots=True)
class TableChange:
    """What a change is to a table-wide binding."""

    table: str
    type: ChangeType
    # Python values, for filters: the new row, or the old one of a DELETE.
    row: Mapping[str, Any]
    # The push's `data` (protocol.phoenix_changes.change_data).
    data: dict[str, JsonValue]


@dataclass(frozen=True, slots=True)
class TableDelivery:
    """A change for table-wide bindings, and who could read its project as of it."""

    change: TableChange
    acl: Acl | Undetermined | None


def to_table_change(table: str, frame: ChangeBase[Any]) -> TableChange:
    """The change as table-wide bindings get it (rows as the native frame has them)."""
    change_type = ChangeType(frame.op.value.upper())
    new = frame.new.model_dump(mode="json") if frame.new is not None else None
    old = frame.old.model_dump(mode="json") if frame.old is not None else None
    row = frame.old if change_type is ChangeType.DELETE else frame.new
    assert row is not None
    data = change_data(table, change_type, new, old, frame.committed_at, frame.position)
    return TableChange(table, change_type, row.model_dump(), data)


class Watcher(Protocol):
    id: int
    user_id: UUID
    ws: ServerConnection

    def can_send(self) -> bool: ...

    def resync_tables(self, reason: ResetReason, message: str) -> None: ...


@dataclass(eq=False)
class TableWatch:
    subscriber: Watcher
    topic: str
    vsn: Vsn
    bindings: tuple[Binding, ...]
    tables: frozenset[str] = field(init=False)
    # Up to where a resume replayed: what the history already gave is not sent again.
    after: Position | None = None

    def __post_init__(self) -> None:
        self.tables = frozenset().union(*(b.tables for b in self.bindings))

    def ids_for(self, change: TableChange) -> tuple[int, ...]:
        return tuple(
            b.id for b in self.bindings if b.matches(change.table, change.type, change.row)
        )


# Condition values that index exactly as `Condition.holds` compares them (a float
# column against a Decimal value compares by value but hashes apart: not indexed).
_INDEXABLE = (UUID, str, int)
IndexKey = tuple[str, Hashable]


def index_keys(watch: TableWatch, table: str) -> list[IndexKey] | None:
    """The (column, value) pairs under which a change to `table` can match one of the
    watch's bindings, each binding by its first `eq` or `in` condition; None when some
    binding on `table` has no such condition (the watch is then checked on every change)."""
    keys: list[IndexKey] = []
    for binding in watch.bindings:
        if table not in binding.tables:
            continue
        condition = next(
            (
                c
                for c in binding.conditions
                if c.op in (Op.EQ, Op.IN) and all(isinstance(v, _INDEXABLE) for v in c.values)
            ),
            None,
        )
        if condition is None:
            return None
        keys.extend((condition.column, value) for value in condition.values)
    return keys


@dataclass
class _TableIndex:
    """One table's watches: those to check on every change, and the others by the
    (column, value) a change's row must have to match them."""

    scanned: dict[TableWatch, None] = field(default_factory=dict)
    by_key: dict[IndexKey, dict[TableWatch, None]] = field(default_factory=dict)
    columns: Counter[str] = field(default_factory=Counter)
    keys: dict[TableWatch, list[IndexKey] | None] = field(default_factory=dict)

    def add(self, watch: TableWatch, keys: list[IndexKey] | None) -> None:
        self.keys[watch] = keys
        if keys is None:
            self.scanned[watch] = None
            return
        for key in keys:
            self.by_key.setdefault(key, {})[watch] = None
            self.columns[key[0]] += 1

    def remove(self, watch: TableWatch) -> None:
        keys = self.keys.pop(watch, None)
        if keys is None:
            self.scanned.pop(watch, None)
            return
        for key in keys:
            bucket = self.by_key.get(key)
            if bucket is not None:
                bucket.pop(watch, None)
                if not bucket:
                    del self.by_key[key]
            self.columns[key[0]] -= 1
            if not self.columns[key[0]]:
                del self.columns[key[0]]

    def candidates(self, row: Mapping[str, Any]) -> dict[TableWatch, None]:
        """The watches a change with `row` may match: a lookup per indexed column."""
        found = dict(self.scanned)
        for column in self.columns:
            try:
                bucket = self.by_key.get((column, row.get(column)))
            except TypeError:  # an unhashable value (jsonb) matches no indexed key
                continue
            if bucket:
                found.update(bucket)
        return found


class TableWatches:
    def __init__(self, metrics: Metrics, outbox: Outbox) -> None:
        self._metrics = metrics
        self._outbox = outbox
        self._by_table: dict[str, _TableIndex] = {}

    def add(self, watch: TableWatch) -> None:
        for table in watch.tables:
            index = self._by_table.setdefault(table, _TableIndex())
            index.add(watch, index_keys(watch, table))

    def remove(self, watch: TableWatch) -> None:
        for table in watch.tables:
            index = self._by_table.get(table)
            if index is not None:
                index.remove(watch)
                if not index.keys:
                    del self._by_table[table]

    def watching(self, table: str) -> bool:
        return table in self._by_table

    def all_watches(self) -> list[TableWatch]:
        return list({w: None for index in self._by_table.values() for w in index.keys})

    def deliver(
        self, project_id: UUID, position: Position, members_only: bool, delivery: TableDelivery
    ) -> int:
        """Queue the change for every watch that wants it and whose user could read it
        when it was committed; returns how many."""
        change = delivery.change
        needed = Level.WRITE if members_only else Level.READ
        groups: dict[tuple[Vsn, str, tuple[int, ...]], list[ServerConnection]] = {}
        missed: list[Watcher] = []
        index = self._by_table.get(change.table)
        candidates = index.candidates(change.row) if index is not None else {}
        for watch in candidates:
            if watch.after is not None:
                if position <= watch.after:
                    continue
                watch.after = None
            if isinstance(delivery.acl, Undetermined):
                if watch.ids_for(change):
                    missed.append(watch.subscriber)
                continue
            if level_of(delivery.acl, watch.subscriber.user_id) < needed:
                continue
            ids = watch.ids_for(change)
            if ids and watch.subscriber.can_send():
                groups.setdefault((watch.vsn, watch.topic, ids), []).append(watch.subscriber.ws)
        if missed:
            logger.warning(
                "access to project %s as of %s unknown (changed since): %d watches told "
                "changes may have been missed",
                project_id,
                position,
                len(missed),
            )
            for watcher in {id(w): w for w in missed}.values():
                watcher.resync_tables(ResetReason.FEED_INTERRUPTED, UNKNOWN_ACCESS)
        if not groups:
            return 0
        data = orjson.Fragment(orjson.dumps(change.data))
        delivered = 0
        for (vsn, topic, ids), targets in groups.items():
            message = Message(topic, PhxEvent.POSTGRES_CHANGES, {"ids": list(ids), "data": data})
            self._outbox.add(targets, encode(message, vsn))
            delivered += len(targets)
        self._metrics.events_delivered.inc(delivered)
        self._metrics.frames_out.labels("postgres_changes").inc(delivered)
        return delivered
