"""Rows from the replication feed keep their json and jsonb columns as PostgreSQL's text
until something needs the parsed values: the shared `change` frame and the history's
copy embed that text. What a subscriber reads must mean what the model's frame says."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from db.feed import JsonText, Position
from gateway.core.events import Change, Op, TypedRow
from gateway.native.views import Shape, change_frame, encoded, version_metadata_frame
from protocol.codec import encode_frame
from protocol.rows import Entity, Row, VersionRow, WireframeRow
from tests.json_strategies import json_values


def jsonb_text(value: Any) -> JsonText:
    """A value as jsonb's output writes it: a space after each `,` and `:`."""
    return JsonText(json.dumps(value, separators=(", ", ": "), ensure_ascii=False))


def typed_values(layout: Any, title: str) -> dict[str, Any]:
    """A wireframe as the replication feed's decoder types it (its column order)."""
    return {
        "id": uuid.UUID(int=1),
        "created_at": datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
        "updated_at": datetime(2026, 12, 7, 1, 2, 4, tzinfo=UTC),
        "sitemap_id": uuid.UUID(int=2),
        "title": title,
        "description": None,
        "layout": jsonb_text(layout),
        "style_guide": jsonb_text({}),
        "components": ["hero"],
        "version": 3,
    }


def change_of(new: TypedRow, old: TypedRow | None) -> Change:
    return Change(
        project_id=uuid.UUID(int=3),
        entity=Entity.WIREFRAME,
        table="wireframes",
        op=Op.UPDATE if old is not None else Op.INSERT,
        new=new,
        old=old,
        actor=None,
        committed_at=datetime(2026, 12, 7, 1, 2, 5, tzinfo=UTC),
        position=Position("rabc", 7, 1),
        xid=7,
    )


@settings(max_examples=200, deadline=None)
@given(json_values, json_values, st.text())
def test_the_shared_frame_means_what_the_models_frame_says(
    layout: Any, before: Any, title: str
) -> None:
    new, old = typed_values(layout, title), typed_values(before, title)
    change = change_of(TypedRow(WireframeRow, new), TypedRow(WireframeRow, old))
    shared = encoded(change)
    model_frame = encode_frame(
        change_frame(change_of(TypedRow(WireframeRow, new), TypedRow(WireframeRow, old)))
    )
    assert orjson.loads(shared) == orjson.loads(model_frame)
    change.settle()
    assert change.new == WireframeRow.model_validate_json(
        orjson.dumps(orjson.loads(model_frame)["new"])
    )
    assert encoded(change) == shared


def test_the_layout_is_not_parsed_for_the_shared_frame_and_keeps_jsonbs_text() -> None:
    layout = {"sections": [{"kind": "hero", "w": 12}], "n": 1.50}
    values = typed_values(layout, "Home")
    values["layout"] = JsonText('{"n": 1.50, "sections": [{"w": 12, "kind": "hero"}]}')
    change = change_of(TypedRow(WireframeRow, values), None)
    frame = encoded(change)
    assert b'"layout":{"n": 1.50, "sections": [{"w": 12, "kind": "hero"}]}' in frame
    assert orjson.loads(frame)["new"]["layout"] == layout
    assert isinstance(change.new, WireframeRow)
    assert change.new.layout == layout


def test_json_orjson_refuses_still_builds_a_row() -> None:
    """A number beyond a double's range (PostgreSQL's numeric takes it; orjson refused
    it, and the change was dropped) reaches the shared frame as PostgreSQL wrote it, and
    the parsed row has it as the json module reads it."""
    values = typed_values({}, "Home")
    values["layout"] = JsonText('{"big": 1' + "0" * 400 + "}")
    change = change_of(TypedRow(WireframeRow, values), None)
    assert b'"big": 1' + b"0" * 400 + b"}" in encoded(change)
    assert isinstance(change.new, WireframeRow)
    assert change.new.layout == {"big": 10**400}


def version_values(data: Any) -> dict[str, Any]:
    """A version_history row as the replication feed's decoder types it."""
    return {
        "id": uuid.UUID(int=4),
        "created_at": datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC),
        "entity_type": "wireframes",
        "entity_id": uuid.UUID(int=1),
        "version_number": 7,
        "user_id": uuid.UUID(int=5),
        "changes": jsonb_text({"title": ["a", "b"]}),
        "data": jsonb_text(data),
        "message": None,
        "is_major": False,
    }


def version_change(row: Row | TypedRow) -> Change:
    return Change(
        project_id=uuid.UUID(int=3),
        entity=Entity.VERSION,
        table="version_history",
        op=Op.INSERT,
        new=row,
        old=None,
        actor=uuid.UUID(int=5),
        committed_at=datetime(2026, 12, 7, 1, 2, 5, tzinfo=UTC),
        position=Position("rabc", 7, 2),
        xid=7,
    )


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_a_versions_metadata_is_written_without_its_data(data: Any) -> None:
    """Delta subscribers get each version without `data` and `changes`: written from the
    values, the same bytes as the model's frame for a built row, and the same meaning
    for a row the feed has not built."""
    typed = version_change(TypedRow(VersionRow, version_values(data)))
    built = version_change(TypedRow(VersionRow, version_values(data)).build())
    model_frame = encode_frame(version_metadata_frame(built))
    assert encoded(built, Shape.VERSION_METADATA) == model_frame
    metadata = orjson.loads(encoded(typed, Shape.VERSION_METADATA))
    assert metadata == orjson.loads(model_frame)
    assert metadata["new"]["data"] is None
    assert metadata["new"]["changes"] is None
    assert metadata["new"]["version_number"] == 7
