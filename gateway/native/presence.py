"""The native protocol's presence frames, written from each entry's bytes.

`presence.state` lists every connection of a project and every joiner gets one:
building it from pydantic models of every entry was most of a joiner's cost in a
crowded project. Each entry's `PresenceMeta` JSON is written on its own by orjson (the
same bytes as the model's, which is the fallback for what orjson cannot write: integers
past 64 bits), `gateway.presence.states` keeps it while joiners keep coming, and a
frame is those bytes joined under their users.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import orjson

from gateway.presence.model import PresenceChange, PresenceEntry
from gateway.presence.states import Encoded, StateCodec
from protocol.frames import PresenceMeta


def entry_json(entry: PresenceEntry) -> bytes:
    """One connection's `PresenceMeta`, as JSON, copied to its size: orjson's bytes keep
    the 4 KB buffer they were written in, and states keep every entry's for a while."""
    fields = {
        "connection_id": entry.connection_id,
        "name": entry.name,
        "meta": entry.meta,
        "session": entry.session,
        "joined_at": entry.joined_at,
        "last_active": entry.last_active,
    }
    try:
        return memoryview(orjson.dumps(fields, option=orjson.OPT_UTC_Z)).tobytes()
    except orjson.JSONEncodeError:
        return PresenceMeta.model_validate(fields).model_dump_json().encode()


def users_json(encoded: Iterable[Encoded]) -> dict[str, dict[str, list[orjson.Fragment]]]:
    """The wire shape: `{user_id: {metas: [...]}}`, users and their connections in join
    order."""
    metas: dict[UUID, list[orjson.Fragment]] = {}
    for entry, data in sorted(encoded, key=lambda pair: (pair[0].joined_at, pair[0].connection_id)):
        metas.setdefault(entry.user_id, []).append(orjson.Fragment(data))
    return {str(user_id): {"metas": m} for user_id, m in metas.items()}


def state_codec(project_id: UUID) -> StateCodec:
    """A project's `presence.state`."""

    def state(encoded: list[Encoded]) -> bytes:
        frame = {
            "type": "presence.state",
            "project_id": str(project_id),
            "users": users_json(encoded),
        }
        return orjson.dumps(frame)

    return StateCodec(entry_json, state)


def diff_frame(project_id: UUID, change: PresenceChange) -> bytes:
    """A `presence.diff` of the change."""
    return orjson.dumps(
        {
            "type": "presence.diff",
            "project_id": str(project_id),
            "joins": users_json((e, entry_json(e)) for e in change.joins),
            "leaves": users_json((e, entry_json(e)) for e in change.leaves),
        }
    )
