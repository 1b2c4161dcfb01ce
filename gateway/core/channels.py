"""What the hub's channels are keyed by: one type per kind, so kinds never collide.

Every subscription is to one channel: a project (`ProjectChannel`), a user's list of
projects (`ProjectListChannel`), the changes of one table (`TableChannel`, Supabase's
table-wide bindings) or a named channel of no project (`TopicChannel`, a Supabase
topic for broadcast and presence only). Keys of different kinds never compare equal,
so no project id, whoever chose it, can name a topic's channel or a user's list.

Identifiers are canonical by the time they are keys: an adapter refuses any other
spelling at its edge (gateway.supabase.client), so one project is one channel and
limits count channels, not spellings.

Presence lives on project and topic channels (`PresenceKey`); over the presence bus
such a key travels as the project's id or as `topic:<topic>`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class ProjectChannel:
    project_id: UUID


@dataclass(frozen=True, slots=True)
class ProjectListChannel:
    user_id: UUID


@dataclass(frozen=True, slots=True)
class TableChannel:
    table: str


@functools.cache
def table_channel(table: str) -> TableChannel:
    """A table's channel key, made once: every change looks its table's channel up,
    and the feed names only the published tables."""
    return TableChannel(table)


@dataclass(frozen=True, slots=True)
class TopicChannel:
    topic: str


ChannelKey = ProjectChannel | ProjectListChannel | TableChannel | TopicChannel
PresenceKey = ProjectChannel | TopicChannel

_TOPIC_PREFIX = "topic:"


def key_to_wire(key: PresenceKey) -> str:
    if isinstance(key, ProjectChannel):
        return str(key.project_id)
    return _TOPIC_PREFIX + key.topic


def key_from_wire(text: str) -> PresenceKey:
    """The key `key_to_wire` wrote (ValueError for anything else)."""
    if text.startswith(_TOPIC_PREFIX):
        return TopicChannel(text.removeprefix(_TOPIC_PREFIX))
    return ProjectChannel(UUID(text))
