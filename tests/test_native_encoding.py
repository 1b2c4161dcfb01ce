"""The shared `change` frame is written by orjson from the rows' values (the feed's hot
path); its bytes must be exactly those of the frame model, whatever the rows hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from db.feed import Position
from gateway.core.events import Change, Op
from gateway.native.views import change_frame, encoded
from protocol.codec import encode_frame
from protocol.rows import ENTITY_ROWS, Entity, ProjectRow, WireframeRow
from tests.json_strategies import json_values

moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
) | st.datetimes(timezones=st.just(timezone(timedelta(hours=5, minutes=30))))


def wireframe(layout: Any, updated: datetime, extra: Any) -> WireframeRow:
    return WireframeRow.model_validate(
        {
            "id": uuid.uuid4(),
            "updated_at": updated,
            "sitemap_id": uuid.uuid4(),
            "title": 'Home \u2014 \u00e9t\u00e9 \x1f "quoted"',
            "layout": layout,
            "components": ["hero"],
            "version": 3,
            "added_later": extra,
        }
    )


def change_of(entity: Entity, new: Any, old: Any, *, listed: bool = False) -> Change:
    return Change(
        project_id=uuid.uuid4(),
        entity=entity,
        table="t",
        op=Op.UPDATE,
        new=new,
        old=old,
        actor=None,
        committed_at=datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
        position=Position("rabc", 7, 1),
        xid=7,
        listed=listed,
    )


@settings(max_examples=300, deadline=None)
@given(json_values, json_values, moments, json_values)
def test_a_change_frame_is_written_as_its_model_writes_it(
    layout: Any, before: Any, updated: datetime, extra: Any
) -> None:
    new = wireframe(layout, updated, extra)
    old = wireframe(before, updated - timedelta(seconds=1), None)
    change = change_of(Entity.WIREFRAME, new, old)
    assert encoded(change) == encode_frame(change_frame(change))


def test_project_changes_say_whether_they_are_of_a_list() -> None:
    row = ENTITY_ROWS[Entity.PROJECT].model_validate(
        {"id": uuid.uuid4(), "user_id": uuid.uuid4(), "name": "P", "type": "site", "status": "x"}
    )
    assert isinstance(row, ProjectRow)
    for listed in (False, True):
        change = change_of(Entity.PROJECT, row, None, listed=listed)
        assert encoded(change) == encode_frame(change_frame(change))
        assert f'"list":{str(listed).lower()}'.encode() in encoded(change)


def test_values_orjson_cannot_write_take_the_models_way() -> None:
    new = wireframe({"a": 1}, datetime(2026, 1, 1, tzinfo=UTC), 2**70)
    change = change_of(Entity.WIREFRAME, new, None)
    assert encoded(change) == encode_frame(change_frame(change))
    assert b'"added_later":1180591620717411303424' in encoded(change)
