"""How the native protocol shows the core's events: change, delta and presence frames.

A change's frame is the same for every subscriber but the connection whose RPC made
it, whose copy carries the RPC's `ref`. Each shared encoding (the full frame; for
subscriptions made with `delta`, the update's `delta` frame and the version-history
change without its data) is encoded once and kept on the event (gateway.core.events),
so every subscriber and every replay from the history sends those same bytes; the full
frame's size is what the history counts the event as (`encoded_size`).
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson

from gateway.core.channels import ProjectChannel
from gateway.core.delta import RowDelta, row_delta
from gateway.core.events import Change
from gateway.core.events import Op as ChangeOp
from gateway.core.hub import Encoded
from gateway.native.presence import diff_frame
from gateway.presence.model import PresenceChange
from protocol.codec import encode_frame
from protocol.frames import (
    CHANGE_FRAMES,
    DELTA_FRAMES,
    ChangeBase,
    DeltaBase,
    Frame,
    Op,
)
from protocol.rows import Entity, Row, VersionRow

_PRESENCE = "native-presence"


class Shape(StrEnum):
    """The encodings of a change subscribers share (their `memo` keys on the event)."""

    FULL = "native"
    DELTA = "native-delta"
    DELTA_WITH_OLD = "native-delta-old"
    VERSION_METADATA = "native-version-metadata"


# Enum members read on every change, as module constants: reading one from its class
# goes through EnumType's attribute lookup (~0.2 µs here, several per change).
_FULL, _VERSION_METADATA = Shape.FULL, Shape.VERSION_METADATA
_PROJECT = Entity.PROJECT


def change_frame(change: Change) -> ChangeBase[Any]:
    frame = CHANGE_FRAMES[change.entity](
        project_id=change.project_id,
        op=Op(change.op.value),
        new=change.new,
        old=change.old,
        actor=change.actor,
        committed_at=change.committed_at,
        position=str(change.position),
    )
    if change.listed:
        frame = frame.model_copy(update={"list": True})
    return frame


def version_metadata_frame(change: Change) -> ChangeBase[Any]:
    """A version-history change without the version's `data` and `changes` (the bulk of
    it: the entity's whole row and its diff), which `version.get` returns on demand."""
    rows = (change.new, change.old)
    new, old = (
        row.model_copy(update={"data": None, "changes": None})
        if isinstance(row, VersionRow)
        else row
        for row in rows
    )
    return change_frame(change).model_copy(update={"new": new, "old": old})


def changed_columns(change: Change, old: Row, new: Row) -> RowDelta:
    """What the update changed, computed once per event for every delta subscriber."""
    return change.memo(
        "delta", lambda _: row_delta(old.model_dump(mode="json"), new.model_dump(mode="json"))
    )


def delta_frame(change: Change, with_old: bool) -> DeltaBase[Any] | ChangeBase[Any]:
    """The update's `delta` frame; its full frame when the feed did not have the row
    before it (nothing to compute a delta from)."""
    new, old = change.new, change.old
    if old is None:
        return change_frame(change)
    assert new is not None, "an update has a new row"
    delta = changed_columns(change, old, new)
    return DELTA_FRAMES[change.entity].model_construct(
        project_id=change.project_id,
        id=getattr(new, "id"),  # noqa: B009 (every row has an id; Row declares none)
        version=getattr(new, "version", None),
        base_version=getattr(old, "version", None),
        set=delta.set,
        patch=delta.patch,
        old=old if with_old else None,
        actor=change.actor,
        committed_at=change.committed_at,
        position=str(change.position),
    )


def frame_of(change: Change, shape: Shape) -> Frame:
    if shape is Shape.FULL:
        return change_frame(change)
    if shape is Shape.VERSION_METADATA:
        return version_metadata_frame(change)
    return delta_frame(change, with_old=shape is Shape.DELTA_WITH_OLD)


def encoded(change: Change, shape: Shape = Shape.FULL) -> bytes:
    """A frame subscribers share, encoded once per event and shape."""
    if shape is _FULL:
        return change.memo(shape, full_json)
    if shape is _VERSION_METADATA:
        return change.memo(shape, version_metadata_json)
    return change.memo(shape, lambda c: encode_frame(frame_of(c, shape)))


def full_json(change: Change) -> bytes:
    """`change_frame(change)` encoded, written by orjson straight from the rows' values:
    the frame most subscribers share, on the feed's hottest path (pydantic's walk of the
    frame model was a quarter of a change's cost). The same bytes as the model's for
    built rows; rows from the replication feed not built yet carry their JSON columns
    as PostgreSQL's text (gateway.core.events.TypedRow: equal in meaning, jsonb's
    spaces kept, so the layouts need not be parsed), each such row encoded once for
    the frame and the history's copy (`Change.written_json`)."""
    new, old = change.written_json()
    return _written_frame(change, new, old, _FULL)


def version_metadata_json(change: Change) -> bytes:
    """`version_metadata_frame(change)` encoded, as `full_json` writes the full frame:
    the version's `data` and `changes` (the entity's whole row and its diff) are
    dropped from the values, never parsed (what delta subscribers get of every save)."""
    if change.entity is not Entity.VERSION:
        return full_json(change)
    new, old = change.written()
    return _written_frame(change, _without_data(new), _without_data(old), Shape.VERSION_METADATA)


def _without_data(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version row's values with `data` and `changes` null, where they stand."""
    return None if row is None else {**row, "data": None, "changes": None}


def _written_frame(change: Change, new: Any, old: Any, shape: Shape) -> bytes:
    """The change frame of `shape` with rows `new` and `old` (their values, or their
    JSON text as an orjson.Fragment), in the frame model's field order. Values orjson
    does not write as pydantic does (Decimal, bytes, integers past 64 bits: only in
    extra columns) go the model's way."""
    frame: dict[str, Any] = {
        "type": "change",
        # orjson writes an enum as its value (without Enum.value's property lookup)
        "entity": change.entity,
        "project_id": change.project_id,
        "op": change.op,
        "new": new,
        "old": old,
        "actor": change.actor,
        "committed_at": change.committed_at,
        "position": str(change.position),
    }
    if change.entity is _PROJECT:
        frame["list"] = change.listed
    try:
        return orjson.dumps(frame, option=orjson.OPT_UTC_Z)
    except TypeError:
        return encode_frame(frame_of(change, shape))


def encoded_size(change: Change) -> int:
    return len(encoded(change))


def shape_for(change: Change, delta: Shape) -> Shape:
    """The shape a subscription made with `delta` gets `change` in; `delta`: the shape of
    its updates (`Shape.DELTA` or `Shape.DELTA_WITH_OLD`)."""
    if change.entity is Entity.VERSION:
        return Shape.VERSION_METADATA
    if change.op is ChangeOp.UPDATE and not change.listed and change.entity in DELTA_FRAMES:
        return delta
    return Shape.FULL


class NativeView:
    """A native subscription's view of what the hub delivers: one per connection, and
    one more per `delta` mode its subscriptions asked for."""

    __slots__ = ("_connection_id", "_delta", "_user_id")

    def __init__(self, connection_id: int, user_id: UUID, delta: Shape | None = None) -> None:
        self._connection_id = connection_id
        self._user_id = user_id
        self._delta = delta

    def signed_in(self, user_id: UUID) -> None:
        self._user_id = user_id

    def variant(self, item: object) -> Hashable | None:
        if type(item) is Change:
            shape = _FULL if self._delta is None else shape_for(item, self._delta)
            if item.origin is not None and item.made_by(self._connection_id, self._user_id):
                return (self._connection_id, shape)
            return shape
        if isinstance(item, PresenceChange) and isinstance(item.channel, ProjectChannel):
            return _PRESENCE
        return None

    def encode(self, item: object, variant: Hashable) -> Encoded:
        if isinstance(item, Change):
            if isinstance(variant, Shape):
                return _labelled(encoded(item, variant))
            assert isinstance(variant, tuple)
            assert item.origin is not None
            frame = frame_of(item, variant[1]).model_copy(update={"ref": item.origin.ref})
            return _labelled(encode_frame(frame))
        assert isinstance(item, PresenceChange)
        assert isinstance(item.channel, ProjectChannel)
        return Encoded(diff_frame(item.channel.project_id, item), "presence.diff")


def _labelled(data: bytes) -> Encoded:
    """Made with tuple.__new__ (a named tuple's own __new__ is a Python function): one
    is made per change and variant."""
    label = "delta" if data.startswith(b'{"type":"delta"') else "change"
    return _new_tuple(Encoded, (data, label))


_new_tuple = tuple.__new__
