"""What the hub's channels, and presence, are keyed by: a project, or a named channel.

A project's channel is its id, a `UUID`; a channel of no project (a Supabase topic
such as `realtime:room`, for broadcast and presence only) is its topic, a `str`. The
two types never compare equal, so no project id, whoever chose it, can name a channel
of no project or share its presence. Over the presence bus a key travels as the
project's id or as `topic:<topic>`.
"""

from __future__ import annotations

from uuid import UUID

ChannelKey = UUID | str

_TOPIC_PREFIX = "topic:"


def key_to_wire(key: ChannelKey) -> str:
    return str(key) if isinstance(key, UUID) else _TOPIC_PREFIX + key


def key_from_wire(text: str) -> ChannelKey:
    """The key `key_to_wire` wrote (ValueError for anything else)."""
    if text.startswith(_TOPIC_PREFIX):
        return text.removeprefix(_TOPIC_PREFIX)
    return UUID(text)
