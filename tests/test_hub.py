"""The hub on its own: what a connection's held changes may pin, and that it is counted.

Deliveries through the protocols are tested against live gateways elsewhere; this
checks the bound that only a slow snapshot read would otherwise show."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from db.feed import Position
from gateway.core.channels import ProjectChannel
from gateway.core.events import Change, Loss, Op
from gateway.core.hub import Encoded, Hub, Subscription
from gateway.core.outbox import Outbox
from gateway.metrics import Metrics
from protocol.rows import Entity, SitemapRow


@dataclass
class Subscriber:
    id: int
    user_id: UUID = field(default_factory=uuid4)
    ws: Any = None
    closed: list[str] = field(default_factory=list)

    def can_send(self) -> bool:
        return not self.closed

    def close_slow_consumer(self, reason: str) -> None:
        self.closed.append(reason)

    def ended(self, subscription: Subscription, message: str) -> None:
        raise AssertionError("not expected here")

    def lost(self, subscription: Subscription, loss: Loss, message: str) -> None:
        raise AssertionError("not expected here")


class View:
    def variant(self, item: object) -> Hashable | None:
        return "v"

    def encode(self, item: object, variant: Hashable) -> Encoded:
        return Encoded(b"{}", "change")


def change(project: UUID, xid: int) -> Change:
    row = SitemapRow.model_validate(
        {"id": uuid4(), "project_id": project, "title": "s", "version": 1}
    )
    return Change(
        project_id=project,
        entity=Entity.SITEMAP,
        table="sitemaps",
        op=Op.INSERT,
        new=row,
        old=None,
        actor=None,
        committed_at=datetime.now(UTC),
        position=Position("rabc", xid, 1),
        xid=xid,
    )


def held(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("sitebuilder_held_changes")
    assert value is not None
    return value


def test_a_connection_holds_at_most_the_limit_over_all_its_subscriptions() -> None:
    metrics = Metrics()
    hub = Hub(metrics, max_pending_events=3, outbox=Outbox())
    first, second = uuid4(), uuid4()
    greedy, other = Subscriber(1), Subscriber(2)
    for project in (first, second):
        hub.subscribe(greedy, ProjectChannel(project), View())
    waiting = hub.subscribe(other, ProjectChannel(first), View())

    hub.publish(change(first, 1))
    hub.publish(change(second, 2))
    assert (greedy.closed, held(metrics)) == ([], 3)

    hub.publish(change(first, 3))  # greedy's third, other's second
    assert (greedy.closed, held(metrics)) == ([], 5)
    hub.publish(change(second, 4))  # greedy's fourth: one more than it may pin
    assert len(greedy.closed) == 1
    assert "more than 3 changes" in greedy.closed[0]
    assert (other.closed, held(metrics)) == ([], 5)

    hub.go_live(waiting)
    assert held(metrics) == 3
    for subscription in list(hub.all_subscriptions()):
        hub.unsubscribe(subscription)
    assert held(metrics) == 0
