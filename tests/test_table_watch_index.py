"""Table subscriptions indexed by what their filters ask for: a change costs the
subscriptions it may match, not every subscription of its table. Deliveries through the
protocol are in test_phoenix_gateway and test_hostile_inputs; this checks the index."""

from __future__ import annotations

from uuid import uuid4

from gateway.core.row_index import RowIndex
from gateway.supabase.views import TableView
from protocol.phoenix import Vsn
from protocol.phoenix_changes import parse_binding


def view(*filters: str | None, table: str = "wireframes") -> TableView:
    bindings = tuple(
        parse_binding({"event": "*", "schema": "public", "table": table, "filter": f})
        for f in filters
    )
    return TableView("realtime:t", Vsn.V2, table, bindings)


def test_filtered_watches_are_found_by_their_value_and_the_rest_always() -> None:
    sitemaps = [uuid4() for _ in range(1000)]
    index: RowIndex[TableView] = RowIndex()
    by_sitemap = [view(f"sitemap_id=eq.{s}") for s in sitemaps]
    unfiltered, by_range = view(None), view("version=gt.3")
    either = view(f"sitemap_id=in.({sitemaps[1]},{sitemaps[2]})")
    for v in [*by_sitemap, unfiltered, by_range, either]:
        index.add(v, v.index_keys())

    found = index.candidates({"sitemap_id": sitemaps[7], "version": 1})
    assert list(found) == [unfiltered, by_range, by_sitemap[7]]
    assert either in index.candidates({"sitemap_id": sitemaps[2]})
    assert list(index.candidates({"sitemap_id": uuid4()})) == [unfiltered, by_range]


def test_a_watch_with_one_unindexable_binding_is_checked_on_every_change() -> None:
    assert view(f"sitemap_id=eq.{uuid4()}", "title=neq.x").index_keys() is None
    assert view("title=eq.Home").index_keys() == [("title", "Home")]


def test_removing_watches_leaves_no_trace_in_the_index() -> None:
    index: RowIndex[TableView] = RowIndex()
    added = [view(f"sitemap_id=eq.{uuid4()}"), view(None)]
    for v in added:
        index.add(v, v.index_keys())
    assert len(index) == 2
    for v in added:
        index.remove(v)
    assert len(index) == 0
    assert index.by_key == {}
    assert not index.columns
    assert index.scanned == {}
