"""Topics per project, and fan-out of encoded events to their subscribers.

An event is encoded once, framed once, and the same bytes are written to every
subscriber's transport without awaiting (gateway.wire); only the connection whose
rpc made the change gets a copy of its own, which carries the rpc's `ref`. A subscriber whose
outbound buffer is over its limit is never skipped silently: it is closed as a slow
consumer. While a subscriber's snapshot is being read, its events wait in a
bounded buffer; when the snapshot is sent, those the snapshot already contains are
dropped and the rest are sent, so the stream continues exactly after it. A
subscription resumed from a position drops, likewise, what the client already has.

Supabase clients bind to tables rather than projects: their bindings are the hub's
table watches (gateway.table_watch), handed the same events in the same call, so
both protocols' frames of a transaction leave through the same outbox. Their
channels also hold project subscriptions of their own (`changes` off) for presence
and revocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

from websockets.asyncio.server import ServerConnection

from db.feed import Position
from db.queries import VisibilitySnapshot
from gateway.channels import ChannelKey
from gateway.metrics import Metrics
from gateway.table_watch import TableDelivery, TableWatches
from gateway.wire import Outbox, write_text
from protocol.phoenix import Vsn


@dataclass(frozen=True, slots=True)
class Event:
    """A change for one project, encoded once (and once more for `own`)."""

    project_id: UUID
    xid: int
    position: Position
    data: bytes
    committed_at: datetime
    members_only: bool = False
    # (subscriber id, its frame): the connection whose rpc made the change gets its ref.
    own: tuple[int, bytes] | None = None
    # The change for table-wide (Supabase) bindings, when any watches its table, with
    # the project's access list as of it.
    change: TableDelivery | None = None

    def data_for(self, subscriber_id: int) -> bytes:
        if self.own is not None and self.own[0] == subscriber_id:
            return self.own[1]
        return self.data


class Subscriber(Protocol):
    """The hub's view of a connection."""

    id: int
    user_id: UUID
    ws: ServerConnection

    def can_send(self) -> bool:
        """False (after closing it) when the connection is closing or too far behind."""
        ...

    def close_slow_consumer(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PhoenixTopic:
    topic: str
    vsn: Vsn


@dataclass(eq=False)
class Subscription:
    subscriber: Subscriber
    # The channel: a project's id, or a Supabase topic of no project (gateway.channels).
    key: ChannelKey
    editable: bool
    live: bool = False
    pending: list[Event] = field(default_factory=list)
    # What the client already has: changes its snapshot saw, or up to where it resumed.
    seen: VisibilitySnapshot | None = None
    after: Position | None = None
    # Has its `presence.state`: gets the project's presence diffs.
    presence: bool = False
    # Shows in the project's presence (under the subscriber's connection id).
    joined: bool = False
    # Gets the project's change frames (a Supabase channel only shares its presence).
    changes: bool = True
    # A Supabase channel's topic and protocol version: its presence diffs are Phoenix's.
    phoenix: PhoenixTopic | None = None

    def wants(self, event: Event) -> bool:
        """Events come in commit order, so the checks against what the client already
        has are dropped for good once the stream is past it: past the resume point, or
        at a transaction that began after the snapshot (every transaction the snapshot
        saw committed before that one did). A transaction merely unseen is not enough:
        commits become visible in a slightly different order than they are logged."""
        if self.seen is not None:
            if self.seen.sees(event.xid):
                return False
            if event.xid >= self.seen.xmax:
                self.seen = None
        if self.after is not None:
            if event.position <= self.after:
                return False
            self.after = None
        return self.editable or not event.members_only


class Hub:
    def __init__(self, metrics: Metrics, max_pending_events: int, outbox: Outbox) -> None:
        self._metrics = metrics
        self._max_pending = max_pending_events
        self._outbox = outbox
        self._topics: dict[ChannelKey, dict[int, Subscription]] = {}
        self.tables = TableWatches(metrics, outbox)

    def subscribe(self, subscriber: Subscriber, key: ChannelKey) -> Subscription:
        """Register before the snapshot is read, so nothing committed after it is missed."""
        subscription = Subscription(subscriber, key, editable=False)
        self._topics.setdefault(key, {})[subscriber.id] = subscription
        self._metrics.subscriptions.labels("pending").inc()
        return subscription

    def snapshot_position(
        self, subscription: Subscription, seen: VisibilitySnapshot, latest: Position
    ) -> Position:
        """Where a client holding this snapshot resumes from: just before the first
        held change the snapshot lacks, else the newest change published so far."""
        for event in subscription.pending:
            if not seen.sees(event.xid):
                return event.position.just_before()
        return latest

    def go_live(
        self,
        subscription: Subscription,
        seen: VisibilitySnapshot | None = None,
        after: Position | None = None,
    ) -> None:
        """Send what arrived while the snapshot (or the replay) was prepared, minus what
        the client already has; from now on changes go straight to it."""
        if not self._registered(subscription):
            return
        backlog, subscription.pending = subscription.pending, []
        subscription.live = True
        subscription.seen = seen
        subscription.after = after
        self._metrics.subscriptions.labels("pending").dec()
        self._metrics.subscriptions.labels("live").inc()
        for event in backlog:
            if not subscription.wants(event):
                continue
            if not subscription.subscriber.can_send():
                return
            self.send_to(subscription, event.data_for(subscription.subscriber.id))

    def send_to(self, subscription: Subscription, data: bytes) -> None:
        """One change frame to one subscriber (replays and held changes)."""
        send_now(self._metrics, subscription.subscriber.ws, data)

    def suspend(self, subscription: Subscription) -> None:
        """Hold events again (a new snapshot is being read) until the next `go_live`."""
        if subscription.live and self._registered(subscription):
            subscription.live = False
            self._metrics.subscriptions.labels("live").dec()
            self._metrics.subscriptions.labels("pending").inc()

    def unsubscribe(self, subscription: Subscription) -> None:
        topic = self._topics.get(subscription.key)
        if topic is None or topic.get(subscription.subscriber.id) is not subscription:
            return
        del topic[subscription.subscriber.id]
        if not topic:
            del self._topics[subscription.key]
        self._metrics.subscriptions.labels("live" if subscription.live else "pending").dec()

    def subscription(self, key: ChannelKey, subscriber_id: int) -> Subscription | None:
        return self._topics.get(key, {}).get(subscriber_id)

    def subscriptions_of(self, key: ChannelKey) -> list[Subscription]:
        return list(self._topics.get(key, {}).values())

    def all_subscriptions(self) -> Iterator[Subscription]:
        for topic in list(self._topics.values()):
            yield from list(topic.values())

    def publish(self, event: Event) -> int:
        """Hand `event` to every subscriber of its project, and to the table-wide
        bindings that want it; returns how many got it."""
        watched = 0
        if event.change is not None:
            watched = self.tables.deliver(
                event.project_id, event.position, event.members_only, event.change
            )
        topic = self._topics.get(event.project_id)
        if not topic:
            return watched
        targets: list[ServerConnection] = []
        own: list[ServerConnection] = []
        own_id = event.own[0] if event.own is not None else None
        for subscription in list(topic.values()):
            if not subscription.changes:
                continue
            if not subscription.live:
                self._hold(subscription, event)  # access is known, and checked, at go_live
            elif subscription.wants(event):
                subscriber = subscription.subscriber
                if subscriber.can_send():
                    (own if subscriber.id == own_id else targets).append(subscriber.ws)
        return (
            watched
            + deliver(self._metrics, self._outbox, targets, event.data)
            + (deliver(self._metrics, self._outbox, own, event.own[1]) if own and event.own else 0)
        )

    def _hold(self, subscription: Subscription, event: Event) -> None:
        if len(subscription.pending) >= self._max_pending:
            subscription.subscriber.close_slow_consumer(
                f"more than {self._max_pending} changes arrived while the snapshot was read"
            )
            return
        subscription.pending.append(event)

    def _registered(self, subscription: Subscription) -> bool:
        topic = self._topics.get(subscription.key, {})
        return topic.get(subscription.subscriber.id) is subscription


def send_now(metrics: Metrics, connection: ServerConnection, data: bytes) -> None:
    """One change frame to one connection, written at once: replays and held changes go
    out from a client's own task, not the dispatcher's, which flushes the outbox."""
    write_text([connection], data)
    metrics.events_delivered.inc()
    metrics.frames_out.labels("change").inc()


def deliver(metrics: Metrics, outbox: Outbox, targets: list[ServerConnection], data: bytes) -> int:
    """Queue one change frame for `targets` (the dispatcher flushes); how many they were."""
    if targets:
        outbox.add(targets, data)
        metrics.events_delivered.inc(len(targets))
        metrics.frames_out.labels("change").inc(len(targets))
    return len(targets)
