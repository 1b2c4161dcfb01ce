"""Table-wide subscriptions: Supabase `postgres_changes` bindings, fed by the hub.

A channel's bindings name tables, optionally filtered; the rows they deliver are
those of projects the reader could read when the change was committed (the project's
access list as of it: gateway.authorization), so an unfiltered binding on
`wireframes` yields the wireframes of every project the user can read and no other.
When that access list could not be known, the watches the change was for are told
that changes may have been missed, rather than guessed at.
Each change is checked against every watch of its table; the watches that want it
are grouped by (protocol version, topic, binding ids) and each group's frame is
encoded once, its `data` serialized once for all groups, and queued in the outbox
with the native frames of the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from protocol.phoenix_changes import Binding, ChangeType, change_data

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


class TableWatches:
    def __init__(self, metrics: Metrics, outbox: Outbox) -> None:
        self._metrics = metrics
        self._outbox = outbox
        self._by_table: dict[str, dict[TableWatch, None]] = {}

    def add(self, watch: TableWatch) -> None:
        for table in watch.tables:
            self._by_table.setdefault(table, {})[watch] = None

    def remove(self, watch: TableWatch) -> None:
        for table in watch.tables:
            watches = self._by_table.get(table)
            if watches is not None:
                watches.pop(watch, None)
                if not watches:
                    del self._by_table[table]

    def watching(self, table: str) -> bool:
        return table in self._by_table

    def all_watches(self) -> list[TableWatch]:
        return list({w: None for ws in self._by_table.values() for w in ws})

    def deliver(
        self, project_id: UUID, position: Position, members_only: bool, delivery: TableDelivery
    ) -> int:
        """Queue the change for every watch that wants it and whose user could read it
        when it was committed; returns how many."""
        change = delivery.change
        needed = Level.WRITE if members_only else Level.READ
        groups: dict[tuple[Vsn, str, tuple[int, ...]], list[ServerConnection]] = {}
        missed: list[Watcher] = []
        for watch in list(self._by_table.get(change.table, ())):
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
