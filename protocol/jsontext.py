"""Client JSON, read with a bound on its nesting.

orjson reads JSON nested up to 1,024 levels, but writes only 254, and pydantic reads
about 200 from text: a value nested deeper than those, accepted from a client, would
fail later, when it is echoed, stored or read back. So a client's JSON is refused at
the frame unless it is nested at most `max_depth` levels (the setting
SITEBUILDER_MAX_JSON_DEPTH), far below any of those.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import TypeAdapter

# The most a setting may allow: below every limit above, with room for the envelope.
DEPTH_CEILING = 128
# The setting's default: deeper than any frame or row of this product needs.
DEFAULT_MAX_DEPTH = 32
# A frame refused unread (too large, too many) is decoded for its ref only up to this
# size; past it the ref is read from the frame's ends, so a refusal's cost is bounded.
REFUSED_DECODE_BYTES = 65_536


class TooDeep(ValueError):
    """`value`: what was read (valid JSON), for an answer that names its request."""

    def __init__(self, max_depth: int, value: Any) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels (SITEBUILDER_MAX_JSON_DEPTH)")
        self.value = value


def loads(data: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The value, or orjson.JSONDecodeError, or TooDeep. Costs a visit of each array and
    object in it, which the frame size already bounds."""
    value = orjson.loads(data)
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise TooDeep(max_depth, value)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def dumps(value: Any) -> bytes:
    """JSON of `value`, with orjson, which refuses integers past 64 bits. A client's
    JSON never holds one (orjson reads it), but PostgreSQL's jsonb keeps numbers
    exactly: `1e20` comes back as the integer 100000000000000000000. Such values are
    written by pydantic's serializer instead, which takes any integer."""
    try:
        return orjson.dumps(value)
    except TypeError as error:
        if "64-bit" not in str(error):
            raise
        return _ANY.dump_json(value)
