"""How Supabase's protocol shows the core's events: `postgres_changes`, presence diffs
and broadcasts, per channel.

A channel's frames name its topic, so they are shared by the subscribers of the same
topic and protocol version (and, for changes, the same matching binding ids); the
hub encodes each such variant once. A change's `data` is serialized once per event for
every topic.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from pydantic import JsonValue

from gateway.core.events import Change, Op
from gateway.core.hub import Encoded
from gateway.core.outbox import Binary
from gateway.core.row_index import IndexKey
from gateway.presence.model import PresenceChange
from gateway.supabase.presence import phoenix_state
from protocol import phoenix as phx
from protocol.phoenix import Event, Message, Vsn
from protocol.phoenix_changes import Binding, ChangeType, change_data
from protocol.phoenix_changes import Op as FilterOp

_CHANGE_TYPES = {
    Op.INSERT: ChangeType.INSERT,
    Op.UPDATE: ChangeType.UPDATE,
    Op.DELETE: ChangeType.DELETE,
}


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A client's broadcast on a topic; `sender` is its connection's id."""

    topic: str
    sender: int
    message: phx.Broadcast


def _data(change: Change) -> orjson.Fragment:
    """A change's `data` (protocol.phoenix_changes.change_data), serialized once."""

    def make(change: Change) -> orjson.Fragment:
        new = change.new.model_dump(mode="json") if change.new is not None else None
        old = change.old.model_dump(mode="json") if change.old is not None else None
        data = change_data(
            change.table,
            _CHANGE_TYPES[change.op],
            new,
            old,
            change.committed_at,
            str(change.position),
        )
        # Copied to its size: orjson's bytes keep the 4 KB buffer they were written in,
        # and this stays on the event as long as the history keeps it.
        return orjson.Fragment(memoryview(orjson.dumps(data)).tobytes())

    return change.memo("phoenix-data", make)


class ChannelView:
    """A channel's presence diffs and broadcasts."""

    __slots__ = ("_connection_id", "_self_broadcast", "_topic", "_vsn")

    def __init__(self, topic: str, vsn: Vsn, connection_id: int, *, self_broadcast: bool) -> None:
        self._topic = topic
        self._vsn = vsn
        self._connection_id = connection_id
        self._self_broadcast = self_broadcast

    def variant(self, item: object) -> Hashable | None:
        if isinstance(item, PresenceChange):
            return (self._vsn, self._topic)
        if isinstance(item, Broadcast) and item.topic == self._topic:
            if item.sender == self._connection_id and not self._self_broadcast:
                return None
            if self._vsn is Vsn.V1 and isinstance(item.message.payload, bytes):
                return None  # a binary payload has no text form
            return (self._vsn, self._topic)
        return None

    def encode(self, item: object, variant: Hashable) -> Encoded:
        if isinstance(item, PresenceChange):
            diff: dict[str, JsonValue] = {
                "joins": phoenix_state(item.joins),
                "leaves": phoenix_state(item.leaves),
            }
            message = Message(self._topic, Event.PRESENCE_DIFF, diff)
            return Encoded(phx.encode(message, self._vsn), "presence_diff")
        assert isinstance(item, Broadcast)
        sent = item.message
        if self._vsn is Vsn.V2:
            data = phx.encode_user_broadcast(self._topic, sent.event, sent.payload, sent.meta)
            return Encoded(Binary(data), "broadcast")
        text = phx.encode(phx.broadcast_message(self._topic, sent), Vsn.V1)
        return Encoded(text, "broadcast")


class TableView:
    """A channel's `postgres_changes` bindings on one table."""

    __slots__ = ("_table", "_topic", "_vsn", "bindings")

    def __init__(self, topic: str, vsn: Vsn, table: str, bindings: tuple[Binding, ...]) -> None:
        self._topic = topic
        self._vsn = vsn
        self._table = table
        self.bindings = tuple(b for b in bindings if table in b.tables)

    def ids_for(self, change: Change) -> tuple[int, ...]:
        change_type = _CHANGE_TYPES[change.op]
        row = change.values()
        return tuple(b.id for b in self.bindings if b.matches(change.table, change_type, row))

    def variant(self, item: object) -> Hashable | None:
        if not isinstance(item, Change) or item.listed:
            return None
        ids = self.ids_for(item)
        return (self._vsn, self._topic, ids) if ids else None

    def encode(self, item: object, variant: Hashable) -> Encoded:
        assert isinstance(item, Change)
        assert isinstance(variant, tuple)
        payload: dict[str, Any] = {"ids": list(variant[2]), "data": _data(item)}
        message = Message(self._topic, Event.POSTGRES_CHANGES, payload)
        return Encoded(phx.encode(message, self._vsn), "postgres_changes")

    def index_keys(self) -> list[IndexKey] | None:
        """The (column, value) pairs under which a change can match one of the
        bindings, each binding by its first `eq` or `in` condition; None when some
        binding has no such condition (then every change of the table is checked)."""
        keys: list[IndexKey] = []
        for binding in self.bindings:
            condition = next(
                (
                    c
                    for c in binding.conditions
                    if c.op in (FilterOp.EQ, FilterOp.IN)
                    and all(isinstance(v, _INDEXABLE) for v in c.values)
                ),
                None,
            )
            if condition is None:
                return None
            keys.extend((condition.column, value) for value in condition.values)
        return keys


# Condition values that index exactly as `Condition.holds` compares them (a float
# column against a Decimal value compares by value but hashes apart: not indexed).
_INDEXABLE = (UUID, str, int)
