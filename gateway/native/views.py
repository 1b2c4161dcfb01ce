"""How the native protocol shows the core's events: change and presence frames.

A change's frame is the same for every subscriber but the connection whose RPC made
it, whose copy carries the RPC's `ref`. The shared one is encoded once and kept on
the event (gateway.core.events), so replays from the history send those same bytes;
its size is what the history counts the event as (`encoded_size`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any
from uuid import UUID

from gateway.core.channels import ProjectChannel
from gateway.core.events import Change
from gateway.core.hub import Encoded
from gateway.presence.model import PresenceChange, PresenceEntry
from protocol.codec import encode_frame
from protocol.frames import CHANGE_FRAMES, ChangeBase, Op, PresenceDiff, PresenceMeta, PresenceUser

_SHARED = "native"
_PRESENCE = "native-presence"


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


def encoded(change: Change) -> bytes:
    """The frame every subscriber shares, encoded once per event."""
    return change.memo(_SHARED, lambda c: encode_frame(change_frame(c)))


def encoded_size(change: Change) -> int:
    return len(encoded(change))


def group_by_user(entries: Iterable[PresenceEntry]) -> dict[UUID, PresenceUser]:
    """The wire shape: `{user_id: {metas: [...]}}`, connections in join order."""
    metas: dict[UUID, list[PresenceMeta]] = {}
    for entry in sorted(entries, key=lambda e: (e.joined_at, e.connection_id)):
        metas.setdefault(entry.user_id, []).append(
            PresenceMeta(
                connection_id=entry.connection_id,
                name=entry.name,
                meta=entry.meta,
                session=entry.session,
                joined_at=entry.joined_at,
                last_active=entry.last_active,
            )
        )
    return {user_id: PresenceUser(metas=m) for user_id, m in metas.items()}


class NativeView:
    """A native connection's view of what the hub delivers (one per connection)."""

    __slots__ = ("_connection_id", "_user_id")

    def __init__(self, connection_id: int, user_id: UUID) -> None:
        self._connection_id = connection_id
        self._user_id = user_id

    def signed_in(self, user_id: UUID) -> None:
        self._user_id = user_id

    def variant(self, item: object) -> Hashable | None:
        if type(item) is Change:
            if item.origin is not None and item.made_by(self._connection_id, self._user_id):
                return self._connection_id
            return _SHARED
        if isinstance(item, PresenceChange) and isinstance(item.channel, ProjectChannel):
            return _PRESENCE
        return None

    def encode(self, item: object, variant: Hashable) -> Encoded:
        if isinstance(item, Change):
            if variant == _SHARED:
                return Encoded(encoded(item), "change")
            assert item.origin is not None
            frame = change_frame(item).model_copy(update={"ref": item.origin.ref})
            return Encoded(encode_frame(frame), "change")
        assert isinstance(item, PresenceChange)
        assert isinstance(item.channel, ProjectChannel)
        diff = PresenceDiff(
            project_id=item.channel.project_id,
            joins=group_by_user(item.joins),
            leaves=group_by_user(item.leaves),
        )
        return Encoded(encode_frame(diff), "presence.diff")
