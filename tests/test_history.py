"""The resume history on its own: what it keeps, what it forgets, what it admits to."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from db.feed import Position
from gateway.core.events import Change, Op
from gateway.core.history import History
from protocol.rows import Entity, VersionRow

A, B = uuid4(), uuid4()
EPOCH = "rabc"


def at(txn: int, index: int = 1) -> Position:
    return Position(EPOCH, txn, index)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def history(clock: Clock | None = None, **limits: float) -> History:
    settings = {"max_per_project": 3, "max_bytes": 1000, "max_age_seconds": 60.0, **limits}
    made = History(
        max_per_project=int(settings["max_per_project"]),
        max_bytes=int(settings["max_bytes"]),
        max_age_seconds=settings["max_age_seconds"],
        # Each test change says its size in its version number.
        size_of=lambda change: change.row.version_number,  # type: ignore[attr-defined]
        clock=clock or Clock(),
    )
    made.start(at(0, 0))
    return made


def record(h: History, project: UUID, txn: int, size: int = 10) -> None:
    row = VersionRow.model_validate(
        {
            "id": uuid4(),
            "entity_type": "projects",
            "entity_id": project,
            "version_number": size,
            "user_id": project,
        }
    )
    h.record(
        Change(
            project_id=project,
            entity=Entity.VERSION,
            table="version_history",
            op=Op.INSERT,
            new=row,
            old=None,
            actor=None,
            committed_at=datetime.now(UTC),
            position=at(txn),
            xid=txn,
        )
    )


def test_replays_strictly_after_the_position() -> None:
    h = history()
    for txn in (1, 2, 3):
        record(h, A, txn)
    assert [e.position for e in h.after(A, at(1))] == [at(2), at(3)]
    assert h.after(B, at(1)) == []
    assert h.covers(A, at(0, 0))
    assert h.covers(B, at(0, 0))


def test_per_project_count_raises_only_that_projects_floor() -> None:
    h = history()
    for txn in (1, 2, 3, 4):
        record(h, A, txn)
    record(h, B, 5)
    assert not h.covers(A, at(0, 0))  # change 1 of A is gone
    assert h.covers(A, at(1))
    assert h.covers(B, at(0, 0))  # B lost nothing


def test_age_and_bytes_forget_oldest_first_for_everyone() -> None:
    clock = Clock()
    h = history(clock, max_per_project=100, max_bytes=25)
    record(h, A, 1)
    clock.now = 30
    record(h, B, 2)
    record(h, A, 3)  # 30 bytes > 25: change 1 goes
    assert not h.covers(B, at(0, 0))
    assert h.covers(B, at(1))
    assert h.oldest() == at(1)  # the floor: what a restarted gateway must replay after
    clock.now = 100
    h.expire()
    assert h.oldest() is None
    assert h.size_bytes == 0
    assert not h.covers(A, at(2))
    assert h.covers(A, at(3))


def test_other_epochs_and_restarts_are_not_covered() -> None:
    h = history()
    record(h, A, 1)
    assert not h.covers(A, Position("n1", 0, 0))
    h.start(at(10, 0))
    assert not h.covers(A, at(1))
    assert h.covers(A, at(10, 0))
    assert h.latest == at(10, 0)


def test_position_text_round_trips_and_orders_like_its_string() -> None:
    positions = [at(1, 0), at(1, 1), at(1, 0xFFFFFF), at(2, 0), at(0x1_0000_0000, 5)]
    assert [Position.parse(str(p)) for p in positions] == positions
    assert sorted(positions) == positions
    assert sorted(map(str, positions)) == list(map(str, positions))
    assert at(2, 0).just_before() < at(2, 0)
    assert at(1, 0xFFFFFF) <= at(2, 0).just_before()
    for bad in ("", "r/1.1", "rabc/1.000001", "RABC/0000000000000001.000001", "x" * 70):
        assert Position.parse(bad) is None


def test_the_floor_stays_replayable_until_it_ages_out() -> None:
    """Snapshots hand out positions at or after the floor even when no change is kept;
    a durable feed must be able to replay from there after a restart, for as long as
    the age limit promises."""
    clock = Clock()
    h = history(clock)
    assert h.oldest() == at(0, 0)
    h.advance(at(5, 2))  # a change for no project: nothing recorded
    clock.now = 50
    assert h.oldest() == at(0, 0)
    clock.now = 61
    assert h.oldest() is None
