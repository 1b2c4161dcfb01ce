"""Every subscription of this gateway, in one registry of channels, and the one path
from an event to the sockets.

A subscription is to one channel (gateway.core.channels): a project, a user's project
list, a table (Supabase's table-wide bindings, indexed by the values their filters ask
for: gateway.core.row_index) or a topic of no project. All share one lifecycle: held
while the snapshot or replay is read (what arrives meanwhile waits in a bounded
buffer), then live; on going live, what the client already has is dropped and the rest
is sent, so the stream continues exactly after it.

Whether a subscriber may receive a change is decided by gateway.core.authorization
(`may_receive`), from its access as of that change: a project channel's subscription
carries the subscriber's access, set as each change of the project row passes
(`apply_access`); a table channel's is looked up in the project's access list as of
the change, which the dispatcher hands along.

How an event looks on the wire is the subscription's `View` (its protocol adapter's):
the hub asks each subscriber which variant of the event it gets, encodes each variant
once, and queues the same bytes for all of them in the outbox (gateway.core.outbox).
Presence diffs and broadcasts take the same path. A subscriber whose outbound buffer is
over its limit is never skipped silently: it is closed as a slow consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from uuid import UUID

from prometheus_client import Counter
from websockets.asyncio.server import ServerConnection

from db.feed import Position
from db.queries import VisibilitySnapshot
from gateway.core.authorization import (
    Acl,
    Level,
    Undetermined,
    level_of,
    may_receive,
    required,
)
from gateway.core.channels import (
    ChannelKey,
    ProjectChannel,
    ProjectListChannel,
    TableChannel,
    table_channel,
)
from gateway.core.events import Change, Loss
from gateway.core.outbox import Outbox
from gateway.core.row_index import IndexKey, RowIndex
from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

UNKNOWN_ACCESS = "who could read a change could not be told as of its commit"


class Encoded(NamedTuple):
    """An event's frame for one protocol variant, and its metrics label."""

    data: bytes
    label: str


class View(Protocol):
    """How one subscription's protocol shows what the hub hands it: a change, a
    presence diff, a broadcast. `variant` is None for what the subscription does not
    show; subscriptions with equal variants get the same bytes."""

    def variant(self, item: object) -> Hashable | None: ...

    def encode(self, item: object, variant: Hashable) -> Encoded: ...


class Subscriber(Protocol):
    """The hub's view of a connection (either protocol's)."""

    id: int
    user_id: UUID
    ws: ServerConnection

    def can_send(self) -> bool:
        """False (after closing it) when the connection is closing or too far behind."""
        ...

    def close_slow_consumer(self, reason: str) -> None: ...

    def ended(self, subscription: Subscription, message: str) -> None:
        """The subscription ended: the user may no longer read its project, or the
        project is gone. Nothing more of it is sent."""
        ...

    def lost(self, subscription: Subscription, loss: Loss, message: str) -> None:
        """Changes to the subscription's channel may have been missed."""
        ...


@dataclass(eq=False)
class Subscription:
    subscriber: Subscriber
    key: ChannelKey
    view: View
    # The subscriber's access to the project as of the change being delivered (project
    # channels; a project list is its user's own; table channels look it up per change).
    level: Level = Level.NONE
    live: bool = False
    pending: list[Change] = field(default_factory=list)
    # What the client already has: changes its snapshot saw, or up to where it resumed.
    seen: VisibilitySnapshot | None = None
    after: Position | None = None
    # Gets the channel's presence diffs (it has had the presence state).
    presence: bool = False
    # Shows in the channel's presence (under the subscriber's connection id).
    joined: bool = False
    # A table channel's: the (column, value) pairs its filter may match, None for any.
    index_keys: list[IndexKey] | None = None

    def already_has(self, change: Change) -> bool:
        """Changes come in commit order, so the checks against what the client already
        has are dropped for good once the stream is past it: past the resume point, or
        at a transaction that began after the snapshot (every transaction the snapshot
        saw committed before that one did). A transaction merely unseen is not enough:
        commits become visible in a slightly different order than they are logged."""
        if self.seen is not None:
            if self.seen.sees(change.xid):
                return True
            if change.xid >= self.seen.xmax:
                self.seen = None
        if self.after is not None:
            if change.position <= self.after:
                return True
            self.after = None
        return False


@dataclass
class _Channel:
    subscriptions: dict[Subscription, None] = field(default_factory=dict)
    index: RowIndex[Subscription] | None = None


class Hub:
    def __init__(self, metrics: Metrics, max_pending_events: int, outbox: Outbox) -> None:
        self._metrics = metrics
        self._max_pending = max_pending_events
        self._outbox = outbox
        self._channels: dict[ChannelKey, _Channel] = {}
        # Changes held per connection (subscriber id), over all its subscriptions.
        self._held: dict[int, int] = {}
        # frames_out's child per label: `labels()` takes a lock and builds a key each call.
        self._frames_out: dict[str, Counter] = {}
        # Frames queued per label and not yet counted (`write_counts`): a counter takes a
        # lock per increment, and a transaction queues thousands.
        self._uncounted: dict[str, int] = {}
        # The project channel key last published to, and its project's id: a
        # transaction's changes mostly share one project (the same UUID object, from
        # the router), whose key is then neither made nor hashed again.
        self._last_key: tuple[UUID | None, ProjectChannel | None] = (None, None)

    # The registry

    def subscribe(
        self,
        subscriber: Subscriber,
        key: ChannelKey,
        view: View,
        *,
        level: Level = Level.NONE,
        index_keys: list[IndexKey] | None = None,
    ) -> Subscription:
        """Register (held) before the snapshot is read, so nothing committed after it
        is missed; `go_live` once it is sent."""
        subscription = Subscription(subscriber, key, view, level, index_keys=index_keys)
        channel = self._channels.setdefault(key, _Channel())
        channel.subscriptions[subscription] = None
        if isinstance(key, TableChannel):
            if channel.index is None:
                channel.index = RowIndex()
            channel.index.add(subscription, index_keys)
        self._metrics.subscriptions.labels("pending").inc()
        if isinstance(key, ProjectListChannel):
            self._metrics.project_lists.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        channel = self._channels.get(subscription.key)
        if channel is None or subscription not in channel.subscriptions:
            return
        del channel.subscriptions[subscription]
        self._release_held(subscription, len(subscription.pending))
        subscription.pending = []
        if channel.index is not None:
            channel.index.remove(subscription)
        if not channel.subscriptions:
            del self._channels[subscription.key]
        self._metrics.subscriptions.labels("live" if subscription.live else "pending").dec()
        if isinstance(subscription.key, ProjectListChannel):
            self._metrics.project_lists.dec()

    def registered(self, subscription: Subscription) -> bool:
        channel = self._channels.get(subscription.key)
        return channel is not None and subscription in channel.subscriptions

    def subscriptions_of(self, key: ChannelKey) -> list[Subscription]:
        channel = self._channels.get(key)
        return list(channel.subscriptions) if channel is not None else []

    def all_subscriptions(self) -> Iterator[Subscription]:
        for channel in list(self._channels.values()):
            yield from list(channel.subscriptions)

    def has(self, key: ChannelKey) -> bool:
        """Whether anyone here subscribes to the channel (else there is nothing to do)."""
        return key in self._channels

    # The lifecycle

    def snapshot_position(
        self, subscription: Subscription, seen: VisibilitySnapshot, latest: Position
    ) -> Position:
        """Where a client holding this snapshot resumes from: just before the first
        held change the snapshot lacks, else the newest change published so far."""
        for change in subscription.pending:
            if not seen.sees(change.xid):
                return change.position.just_before()
        return latest

    def go_live(
        self,
        subscription: Subscription,
        seen: VisibilitySnapshot | None = None,
        after: Position | None = None,
    ) -> None:
        """Send what arrived while the snapshot (or the replay) was prepared, minus what
        the client already has; from now on changes go straight to it."""
        if not self.registered(subscription) or subscription.live:
            return
        backlog, subscription.pending = subscription.pending, []
        self._release_held(subscription, len(backlog))
        subscription.live = True
        subscription.seen = seen
        subscription.after = after
        self._metrics.subscriptions.labels("pending").dec()
        self._metrics.subscriptions.labels("live").inc()
        for change in backlog:
            if subscription.already_has(change):
                continue
            if may_receive(subscription.level, change.members_only):
                self.send_to(subscription, change)
        self._outbox.flush()

    def suspend(self, subscription: Subscription) -> None:
        """Hold events again (a new snapshot is being read) until the next `go_live`."""
        if subscription.live and self.registered(subscription):
            subscription.live = False
            self._metrics.subscriptions.labels("live").dec()
            self._metrics.subscriptions.labels("pending").inc()

    def send_to(self, subscription: Subscription, item: object) -> None:
        """One event to one subscriber, queued (a replay, held changes): its caller
        flushes the outbox before it next yields."""
        variant = subscription.view.variant(item)
        if variant is None or not subscription.subscriber.can_send():
            return
        encoded = subscription.view.encode(item, variant)
        self._outbox.add([subscription.subscriber.ws], encoded.data)
        self._count(encoded.label, 1)

    # Changes

    def publish(self, change: Change, table_acl: Acl | Undetermined | None = None) -> int:
        """Queue `change` for the project's subscribers and the table subscriptions that
        want it (`table_acl`: the project's access list as of the change, looked up by
        the dispatcher when anyone watches the table); returns how many got it. Its
        frames are counted at the next `write_counts`.

        The loop over a project's subscribers is the gateway's hottest: one pass, no
        call but the view's and the connection's for a subscriber that gets it."""
        groups: _Groups = {}
        channel = self._channels.get(self._project_key(change.project_id))
        if channel is not None:
            needed = required(change.members_only)
            for subscription in list(channel.subscriptions):
                if not subscription.live:
                    self._hold(subscription, change)  # access is checked at go_live
                elif subscription.level >= needed and (
                    (subscription.seen is None and subscription.after is None)
                    or not subscription.already_has(change)
                ):
                    variant = subscription.view.variant(change)
                    subscriber = subscription.subscriber
                    if variant is not None and subscriber.can_send():
                        group = groups.get(variant)
                        if group is None:
                            groups[variant] = (subscription.view, [subscriber.ws])
                        else:
                            group[1].append(subscriber.ws)
        table = self._channels.get(table_channel(change.table))
        if table is not None and table.index is not None and not change.listed:
            for subscription in self._table_recipients(table.index, change, table_acl):
                _group(groups, subscription, change)
        return self._queue(groups, change)

    def _project_key(self, project_id: UUID) -> ProjectChannel:
        last_id, key = self._last_key
        if project_id is not last_id or key is None:
            key = ProjectChannel(project_id)
            self._last_key = (project_id, key)
        return key

    def publish_listed(self, users: Iterable[UUID], change: Change) -> int:
        """Queue a project-list change for the list subscriptions of `users` (members of
        the project, who may read it: gateway.core.dispatcher)."""
        groups: _Groups = {}
        for user in users:
            channel = self._channels.get(ProjectListChannel(user))
            if channel is None:
                continue
            for subscription in list(channel.subscriptions):
                if not subscription.live:
                    self._hold(subscription, change)
                elif not subscription.already_has(change):
                    _group(groups, subscription, change)
        return self._queue(groups, change)

    def _table_recipients(
        self, index: RowIndex[Subscription], change: Change, acl: Acl | Undetermined | None
    ) -> list[Subscription]:
        recipients: list[Subscription] = []
        missed: list[Subscription] = []
        for subscription in index.candidates(change.values()):
            if not subscription.live or subscription.already_has(change):
                continue
            if isinstance(acl, Undetermined):
                if subscription.view.variant(change) is not None:
                    missed.append(subscription)
                continue
            if may_receive(level_of(acl, subscription.subscriber.user_id), change.members_only):
                recipients.append(subscription)
        if missed:
            logger.warning(
                "access to project %s as of %s unknown (changed since): %d table "
                "subscriptions told changes may have been missed",
                change.project_id,
                change.position,
                len(missed),
            )
            for subscription in missed:
                subscription.subscriber.lost(subscription, Loss.FEED_INTERRUPTED, UNKNOWN_ACCESS)
        return recipients

    def _hold(self, subscription: Subscription, change: Change) -> None:
        """Keep a change for a subscription not live yet: at most `max_pending_events`
        per connection, over all its subscriptions (the memory it can pin)."""
        subscriber_id = subscription.subscriber.id
        held = self._held.get(subscriber_id, 0)
        if held >= self._max_pending:
            subscription.subscriber.close_slow_consumer(
                f"more than {self._max_pending} changes arrived while snapshots were read"
            )
            return
        self._held[subscriber_id] = held + 1
        self._metrics.held_changes.inc()
        subscription.pending.append(change)

    def _release_held(self, subscription: Subscription, count: int) -> None:
        if not count:
            return
        subscriber_id = subscription.subscriber.id
        held = self._held.get(subscriber_id, 0) - count
        if held > 0:
            self._held[subscriber_id] = held
        else:
            self._held.pop(subscriber_id, None)
        self._metrics.held_changes.dec(count)

    # Presence and broadcasts

    def announce(self, key: ChannelKey, item: object, *, presence: bool = False) -> int:
        """Send a presence diff (`presence`: to those that have the presence state) or a
        broadcast to the channel's live subscriptions whose view shows it, now."""
        channel = self._channels.get(key)
        if channel is None:
            return 0
        groups: _Groups = {}
        for subscription in list(channel.subscriptions):
            if subscription.live and (subscription.presence or not presence):
                _group(groups, subscription, item)
        delivered = self._queue(groups, item)
        self._outbox.flush()
        self.write_counts()
        return delivered

    # Access and losses

    def apply_access(self, project_id: UUID, acl: Acl) -> None:
        """The project's access list changed to `acl` at the change being dispatched:
        each subscriber gets the access it gives them from this position on; those it
        gives none lose their subscription before any later change is sent."""
        for subscription in self.subscriptions_of(ProjectChannel(project_id)):
            subscription.level = acl.level(subscription.subscriber.user_id)
            if subscription.level is Level.NONE:
                subscription.subscriber.ended(
                    subscription, "the project is no longer shared with you"
                )

    def end_all(self, project_id: UUID, message: str) -> None:
        for subscription in self.subscriptions_of(ProjectChannel(project_id)):
            subscription.subscriber.ended(subscription, message)

    def lose_all(self, loss: Loss, message: str) -> None:
        """Every subscription may have missed changes (the feed restarted, a table was
        truncated): each is told, in its protocol, and made whole where it can be."""
        for subscription in list(self.all_subscriptions()):
            if self.registered(subscription):
                subscription.subscriber.lost(subscription, loss, message)

    # Delivery

    def _queue(self, groups: _Groups, item: object) -> int:
        """Encode `item` once per variant and queue each variant's bytes for all its
        subscribers (counted at the next `write_counts`)."""
        delivered = 0
        uncounted = self._uncounted
        for variant, (view, connections) in groups.items():
            encoded = view.encode(item, variant)
            self._outbox.add(connections, encoded.data)
            uncounted[encoded.label] = uncounted.get(encoded.label, 0) + len(connections)
            delivered += len(connections)
        return delivered

    def write_counts(self) -> None:
        """Add the frames queued since the last call to the metrics: whoever publishes
        calls it once its frames are flushed (the dispatcher once per transaction)."""
        if self._uncounted:
            uncounted, self._uncounted = self._uncounted, {}
            for label, frames in uncounted.items():
                self._count(label, frames)

    def _count(self, label: str, frames: int) -> None:
        counter = self._frames_out.get(label)
        if counter is None:
            counter = self._frames_out[label] = self._metrics.frames_out.labels(label)
        counter.inc(frames)
        if label in _CHANGE_LABELS:
            self._metrics.events_delivered.inc(frames)


_CHANGE_LABELS = frozenset({"change", "postgres_changes"})

# Variant → (a view that shows it, the connections that get it).
_Groups = dict[Hashable, tuple[View, list[ServerConnection]]]


def _group(groups: _Groups, subscription: Subscription, item: object) -> None:
    """Add the subscriber to the group of the variant its view shows `item` as."""
    view = subscription.view
    variant = view.variant(item)
    if variant is None or not subscription.subscriber.can_send():
        return
    group = groups.get(variant)
    if group is None:
        groups[variant] = (view, [subscription.subscriber.ws])
    else:
        group[1].append(subscription.subscriber.ws)
