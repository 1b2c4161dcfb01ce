"""What an update changed, in the form a client holding the previous row applies.

A delta is computed once per change (gateway.native.views keeps its encoding on the
event) from the rows' JSON values: columns whose value changed go in `set` with their
new value in full; a JSON object column that changed goes in `patch` as an RFC 7396
merge patch from its previous value instead, unless no merge patch can say it (a patch's
`null` removes a key, so an object that keeps a `null` inside cannot be patched to: that
column is sent in full). Applying: `row[c] = set[c]`, `row[c] = merge(row[c], patch[c])`.

Values are compared by their JSON, not by Python's `==` (`1 == 1.0 == True`): a change
from `1` to `true` is a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Columns a delta carries apart from `set` and `patch` (the row's identity, and the
# version that tells a client whether it holds the row the delta applies to).
KEY_COLUMNS = frozenset({"id", "version"})


class RowDelta:
    """The changed columns of one update: `set` (new values) and `patch` (merge patches)."""

    __slots__ = ("patch", "set")

    def __init__(self, set: dict[str, Any], patch: dict[str, Any]) -> None:
        self.set = set
        self.patch = patch


def row_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> RowDelta:
    """The delta from `old` to `new` (both JSON values by column)."""
    changed: dict[str, Any] = {}
    patches: dict[str, Any] = {}
    for column, value in new.items():
        if column in KEY_COLUMNS:
            continue
        before = old.get(column)
        if column in old and same(before, value):
            continue
        patch = merge_patch(before, value)
        if patch is None:
            changed[column] = value
        else:
            patches[column] = patch
    for column in old.keys() - new.keys() - KEY_COLUMNS:
        changed[column] = None
    return RowDelta(changed, patches)


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same JSON (Python's `==` alone equates 1 and true)."""
    return bool(a == b) and (type(a) is type(b)) and orjson.dumps(a) == orjson.dumps(b)


def merge_patch(old: Any, new: Any) -> dict[str, Any] | None:
    """The RFC 7396 merge patch that turns object `old` into object `new`; None when
    either is not an object or no patch can express the change."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        if key in old:
            before = old[key]
            if same(before, value):
                continue
            nested = merge_patch(before, value)
            if nested is not None:
                patch[key] = nested
                continue
        if not _patchable(value):
            return None
        patch[key] = value
    return patch


def _patchable(value: Any) -> bool:
    """Whether `value`, put in a patch, arrives as itself: a null removes the key it
    names, and an object merges, so no null in it may sit directly in an object."""
    if value is None:
        return False
    if isinstance(value, dict):
        return all(_patchable(item) for item in value.values())
    return True
