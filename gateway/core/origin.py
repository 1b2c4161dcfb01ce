"""Which request made a change: a tag an RPC's transaction writes, read back from the feed.

An RPC run on behalf of a connection sets `sitebuilder.request` (migration 0013) to
`<gateway instance>:<connection id>:<ref as JSON>`; the change feed hands it back
with each change the transaction made, so the dispatcher can give that connection
its change with the RPC's `ref`. The format is this module's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

Ref = str | int


@dataclass(frozen=True, slots=True)
class Origin:
    """The connection (of this gateway) whose request made a change, and its ref."""

    connection_id: int
    ref: Ref


def request_tag(instance: str, connection_id: int, ref: Ref | None) -> str | None:
    """The tag of a request (none without a ref: nothing to give back)."""
    if ref is None:
        return None
    return f"{instance}:{connection_id}:{orjson.dumps(ref).decode()}"


def origin_of(tag: str | None, instance: str) -> Origin | None:
    """The origin a tag names, when `request_tag(instance, …)` made it, else None."""
    if tag is None:
        return None
    tagged_by, _, rest = tag.partition(":")
    connection, _, ref_json = rest.partition(":")
    if tagged_by != instance:
        return None
    try:
        ref = orjson.loads(ref_json)
        connection_id = int(connection)
    except ValueError:  # orjson.JSONDecodeError is one
        return None
    if not isinstance(ref, str | int) or isinstance(ref, bool):
        return None
    return Origin(connection_id, ref)
