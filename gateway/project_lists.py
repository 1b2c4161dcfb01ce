"""Live project lists: who follows their own list, and fan-out of its changes.

A user's list is the projects they own or collaborate on. The dispatcher works out
from a project change's old and new rows, without a query, whose lists it adds the
project to, changes it in or removes it from, encodes each of those frames once and
hands it here with the users it is for; it goes to every list subscription of theirs
on this gateway. As for project subscriptions (gateway/hub.py), a subscription is
registered before its list is read, holds what arrives meanwhile (bounded: past
SITEBUILDER_MAX_PENDING_EVENTS the connection is closed as a slow consumer), and on
going live drops what the list already reflects, by transaction visibility. One
subscription per connection, removed when the connection goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from websockets.asyncio.server import ServerConnection

from db.queries import VisibilitySnapshot
from gateway.hub import Event, Subscriber, deliver, send_now
from gateway.metrics import Metrics
from gateway.wire import Outbox
from protocol.frames import ResetReason


@dataclass(eq=False)
class ListSubscription:
    subscriber: Subscriber
    live: bool = False
    pending: list[Event] = field(default_factory=list)
    # What the client's list already reflects: the transactions its snapshot saw.
    seen: VisibilitySnapshot | None = None
    # A read of the list is in flight; `stale` (a reason) makes it read again.
    reading: bool = False
    stale: ResetReason | None = None

    def wants(self, event: Event) -> bool:
        return self.seen is None or not self.seen.sees(event.xid)


class ProjectLists:
    def __init__(self, metrics: Metrics, max_pending_events: int, outbox: Outbox) -> None:
        self._metrics = metrics
        self._max_pending = max_pending_events
        self._outbox = outbox
        self._by_user: dict[UUID, dict[int, ListSubscription]] = {}

    def subscribe(self, subscriber: Subscriber) -> ListSubscription:
        """Register before the list is read, so nothing committed after it is missed."""
        subscription = ListSubscription(subscriber)
        self._by_user.setdefault(subscriber.user_id, {})[subscriber.id] = subscription
        self._metrics.project_lists.inc()
        return subscription

    def unsubscribe(self, subscription: ListSubscription) -> None:
        if not self.registered(subscription):
            return
        user_id = subscription.subscriber.user_id
        subscriptions = self._by_user[user_id]
        del subscriptions[subscription.subscriber.id]
        if not subscriptions:
            del self._by_user[user_id]
        self._metrics.project_lists.dec()

    def registered(self, subscription: ListSubscription) -> bool:
        subscriptions = self._by_user.get(subscription.subscriber.user_id, {})
        return subscriptions.get(subscription.subscriber.id) is subscription

    @property
    def active(self) -> bool:
        """Whether anyone follows a list here (else there is nothing to route)."""
        return bool(self._by_user)

    def following(self, users: Iterable[UUID]) -> set[UUID]:
        """Those of `users` with a list subscription here."""
        return {user for user in users if user in self._by_user}

    def all_subscriptions(self) -> Iterator[ListSubscription]:
        for subscriptions in list(self._by_user.values()):
            yield from list(subscriptions.values())

    def suspend(self, subscription: ListSubscription) -> None:
        """Hold events again (the list is read anew) until the next `go_live`."""
        subscription.live = False

    def go_live(self, subscription: ListSubscription, seen: VisibilitySnapshot) -> None:
        """Send what arrived while the list was read, minus what it already reflects;
        from now on changes go straight to the connection."""
        if not self.registered(subscription):
            return
        backlog, subscription.pending = subscription.pending, []
        subscription.live = True
        subscription.seen = seen
        for event in backlog:
            if not subscription.wants(event):
                continue
            if not subscription.subscriber.can_send():
                return
            send_now(
                self._metrics,
                subscription.subscriber.ws,
                event.data_for(subscription.subscriber.id),
            )

    def publish(self, users: Iterable[UUID], event: Event) -> int:
        """Hand `event` to every list subscription of `users`; returns how many got it."""
        targets: list[ServerConnection] = []
        own: list[ServerConnection] = []
        for user in users:
            for subscription in list(self._by_user.get(user, {}).values()):
                if not subscription.live:
                    self._hold(subscription, event)
                elif subscription.wants(event) and subscription.subscriber.can_send():
                    mine = event.own is not None and event.own[0] == subscription.subscriber.id
                    (own if mine else targets).append(subscription.subscriber.ws)
        return deliver(self._metrics, self._outbox, targets, event.data) + (
            deliver(self._metrics, self._outbox, own, event.own[1]) if own and event.own else 0
        )

    def subscription(self, user_id: UUID, subscriber_id: int) -> ListSubscription | None:
        return self._by_user.get(user_id, {}).get(subscriber_id)

    def _hold(self, subscription: ListSubscription, event: Event) -> None:
        if len(subscription.pending) >= self._max_pending:
            subscription.subscriber.close_slow_consumer(
                f"more than {self._max_pending} changes arrived while the project list was read"
            )
            return
        subscription.pending.append(event)
