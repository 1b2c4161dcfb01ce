"""Presence in Supabase's shape, and the identity rules on what a Supabase client sets.

Supabase groups presence by a key the client chooses (`config.presence.key`); every
meta carries a `phx_ref`. The identity parts are the gateway's: every meta carries the
token's `user_id` (null for an anonymous connection) over whatever the client set, and
a key naming a user must name the token's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import orjson
from pydantic import JsonValue

from gateway.core.authorization import ANONYMOUS
from gateway.presence.model import PresenceEntry
from gateway.presence.states import Encoded, StateCodec

# Fields of a Supabase meta that the gateway writes: a client's own values for them
# are dropped, so nobody can show as someone else.
SERVER_META_FIELDS = frozenset({"phx_ref", "user_id", "name", "connection_id", "session"})


def phx_ref(entry: PresenceEntry) -> str:
    """Phoenix's ref of a meta: new with every new meta (Supabase clients apply a
    diff's joins before its leaves, matching metas by ref)."""
    return f"{entry.connection_id}.{int(entry.last_active.timestamp() * 1_000_000)}"


def phoenix_meta(entry: PresenceEntry) -> dict[str, JsonValue]:
    """One connection's meta: `{phx_ref, ...meta}`. A native-protocol connection shows
    its `connection_id` (and `session`, when it drives one) too."""
    meta: dict[str, JsonValue] = {
        k: v for k, v in entry.meta.items() if k not in SERVER_META_FIELDS
    }
    meta["phx_ref"] = phx_ref(entry)
    meta["user_id"] = None if entry.user_id == ANONYMOUS else str(entry.user_id)
    meta["name"] = entry.name
    if entry.key is None:
        meta["connection_id"] = entry.connection_id
        if entry.session is not None:
            meta["session"] = entry.session
    return meta


def _by_key(pairs: Iterable[tuple[PresenceEntry, object]]) -> dict[str, Any]:
    """Supabase's shape, `{key: {metas: [...]}}`, connections in join order; a
    native-protocol connection shows under its user id."""
    state: dict[str, list[object]] = {}
    for entry, meta in sorted(pairs, key=lambda pair: (pair[0].joined_at, pair[0].connection_id)):
        state.setdefault(entry.key or str(entry.user_id), []).append(meta)
    return {key: {"metas": metas} for key, metas in state.items()}


def phoenix_state(entries: Iterable[PresenceEntry]) -> dict[str, JsonValue]:
    """The entries in Supabase's shape (a diff's joins or leaves)."""
    return _by_key((entry, phoenix_meta(entry)) for entry in entries)


def _meta_json(entry: PresenceEntry) -> bytes:
    """Copied to its size: orjson's bytes keep the 4 KB buffer they were written in."""
    return memoryview(orjson.dumps(phoenix_meta(entry))).tobytes()


def _state(encoded: list[Encoded]) -> bytes:
    return orjson.dumps(_by_key((entry, orjson.Fragment(data)) for entry, data in encoded))


# A channel's `presence_state` payload, shared by its joiners of a window (each wraps it
# in a message of its own topic, protocol version and join_ref).
STATE_CODEC = StateCodec(_meta_json, _state)


def presence_key_problem(key: str, user_id: UUID) -> str | None:
    """Why a Supabase client may not use `key` as its presence key, or None.

    A key is the client's to choose, except that a key naming a user (a UUID) must
    name the token's: nobody can appear under another user's id."""
    try:
        named = UUID(key)
    except ValueError:
        return None
    if named == user_id and user_id != ANONYMOUS:
        return None
    return f"presence key {key!r} is another user's id: use your own id or a key of no user"
