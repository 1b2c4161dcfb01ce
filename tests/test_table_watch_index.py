"""Table watches indexed by what their filters ask for: a change costs the watches it
may match, not every watch of its table. Deliveries through the protocol are in
test_phoenix_gateway and test_hostile_inputs; this checks the index itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from gateway.metrics import Metrics
from gateway.table_watch import TableWatch, TableWatches, _TableIndex, index_keys
from gateway.wire import Outbox
from protocol.frames import ResetReason
from protocol.phoenix import Vsn
from protocol.phoenix_changes import parse_binding


@dataclass
class Subscriber:
    """What a watch needs of its connection, and nothing else."""

    id: int
    user_id: UUID
    ws: Any = None

    def can_send(self) -> bool:
        return True

    def resync_tables(self, reason: ResetReason, message: str) -> None:
        raise AssertionError("not expected here")


def watch(*filters: str | None, table: str = "wireframes") -> TableWatch:
    bindings = tuple(
        parse_binding({"event": "*", "schema": "public", "table": table, "filter": f})
        for f in filters
    )
    return TableWatch(Subscriber(1, uuid4()), "realtime:t", Vsn.V2, bindings)


def test_filtered_watches_are_found_by_their_value_and_the_rest_always() -> None:
    sitemaps = [uuid4() for _ in range(1000)]
    index = _TableIndex()
    by_sitemap = [watch(f"sitemap_id=eq.{s}") for s in sitemaps]
    unfiltered, by_range = watch(None), watch("version=gt.3")
    either = watch(f"sitemap_id=in.({sitemaps[1]},{sitemaps[2]})")
    for w in [*by_sitemap, unfiltered, by_range, either]:
        index.add(w, index_keys(w, "wireframes"))

    found = index.candidates({"sitemap_id": sitemaps[7], "version": 1})
    assert list(found) == [unfiltered, by_range, by_sitemap[7]]
    assert either in index.candidates({"sitemap_id": sitemaps[2]})
    assert list(index.candidates({"sitemap_id": uuid4()})) == [unfiltered, by_range]


def test_a_watch_with_one_unindexable_binding_is_checked_on_every_change() -> None:
    mixed = watch(f"sitemap_id=eq.{uuid4()}", "title=neq.x")
    assert index_keys(mixed, "wireframes") is None
    by_title = watch("title=eq.Home")
    assert index_keys(by_title, "wireframes") == [("title", "Home")]


def test_removing_watches_leaves_no_trace_in_the_index() -> None:
    watches = TableWatches(Metrics(), Outbox())
    added = [watch(f"sitemap_id=eq.{uuid4()}"), watch(None)]
    for w in added:
        watches.add(w)
    assert watches.watching("wireframes")
    for w in added:
        watches.remove(w)
    assert not watches.watching("wireframes")
    assert watches.all_watches() == []
