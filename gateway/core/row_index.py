"""A table channel's subscriptions, indexed by the column values their filters ask for.

A subscription to a table (a Supabase binding, gateway.supabase.views) may say under
which (column, value) pairs a row can match its filter; it is then considered only for
changes whose row has one of them. One without such pairs (no `eq`/`in` filter) is
considered for every change. A change costs a lookup per indexed column and the
subscriptions it may match, not every subscription of its table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

IndexKey = tuple[str, Hashable]
S = TypeVar("S", bound=Hashable)


@dataclass
class RowIndex(Generic[S]):
    scanned: dict[S, None] = field(default_factory=dict)
    by_key: dict[IndexKey, dict[S, None]] = field(default_factory=dict)
    columns: Counter[str] = field(default_factory=Counter)
    keys: dict[S, list[IndexKey] | None] = field(default_factory=dict)

    def add(self, item: S, keys: list[IndexKey] | None) -> None:
        self.keys[item] = keys
        if keys is None:
            self.scanned[item] = None
            return
        for key in keys:
            self.by_key.setdefault(key, {})[item] = None
            self.columns[key[0]] += 1

    def remove(self, item: S) -> None:
        if item not in self.keys:
            return
        keys = self.keys.pop(item)
        if keys is None:
            self.scanned.pop(item, None)
            return
        for key in keys:
            bucket = self.by_key.get(key)
            if bucket is not None:
                bucket.pop(item, None)
                if not bucket:
                    del self.by_key[key]
            self.columns[key[0]] -= 1
            if not self.columns[key[0]]:
                del self.columns[key[0]]

    def candidates(self, row: Mapping[str, Any]) -> dict[S, None]:
        """What a change with `row` may match: a lookup per indexed column."""
        found = dict(self.scanned)
        for column in self.columns:
            try:
                bucket = self.by_key.get((column, row.get(column)))
            except TypeError:  # an unhashable value (jsonb) matches no indexed key
                continue
            if bucket:
                found.update(bucket)
        return found

    def __len__(self) -> int:
        return len(self.keys)
