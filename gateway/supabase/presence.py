"""Presence in Supabase's shape, and the identity rules on what a Supabase client sets.

Supabase groups presence by a key the client chooses (`config.presence.key`); every
meta carries a `phx_ref`. The identity parts are the gateway's: every meta carries the
token's `user_id` (null for an anonymous connection) over whatever the client set, and
a key naming a user must name the token's.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from pydantic import JsonValue

from gateway.core.authorization import ANONYMOUS
from gateway.presence.model import PresenceEntry

# Fields of a Supabase meta that the gateway writes: a client's own values for them
# are dropped, so nobody can show as someone else.
SERVER_META_FIELDS = frozenset({"phx_ref", "user_id", "name", "connection_id", "session"})


def phx_ref(entry: PresenceEntry) -> str:
    """Phoenix's ref of a meta: new with every new meta (Supabase clients apply a
    diff's joins before its leaves, matching metas by ref)."""
    return f"{entry.connection_id}.{int(entry.last_active.timestamp() * 1_000_000)}"


def phoenix_state(entries: Iterable[PresenceEntry]) -> dict[str, JsonValue]:
    """Supabase's shape: `{key: {metas: [{phx_ref, ...meta}]}}`. A native-protocol
    connection shows under its user id, with its `connection_id` (and `session`, when
    it drives one) too."""
    state: dict[str, list[JsonValue]] = {}
    for entry in sorted(entries, key=lambda e: (e.joined_at, e.connection_id)):
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
        state.setdefault(entry.key or str(entry.user_id), []).append(meta)
    return {key: {"metas": metas} for key, metas in state.items()}


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
