"""Presence diffs to this gateway's subscribers, at most once per interval per channel.

A diff per change costs a write to every subscriber: a thousand editors coming back
at once after a deploy made a million writes. Changes within one interval are merged
into as few diffs as stay correct when applied leaves-first (usually one), and each
goes to the channel's subscribers that already have its presence state through the
hub, which encodes it once per protocol variant. A subscriber that took its state
during the interval gets those diffs too; applying again what its state already shows
leaves it unchanged, and the last word on every connection is the latest.

A channel with many subscribers gathers its changes for longer: each diff is a write
to each of them, so its interval grows with their number (`WRITES_PER_SECOND` per
channel at most) up to `MAX_INTERVAL_SECONDS`. Five thousand editors arriving together
were otherwise 5,000 writes every 50 ms, most of the gateway's time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.core.channels import PresenceKey
from gateway.core.hub import Hub
from gateway.presence.model import PresenceChange, PresenceEntry

# Diff writes a channel may cost per second before its interval stretches.
WRITES_PER_SECOND = 10_000
# The longest a channel's changes wait, however many subscribers it has.
MAX_INTERVAL_SECONDS = 1.0


@dataclass(slots=True)
class _Segment:
    """Changes merged into one diff. Leaves apply before joins, so a change may join
    the segment unless it undoes one of its joins (a leave, or a new meta, of a
    connection that joined in it): that must follow as a diff of its own."""

    joins: dict[str, PresenceEntry]
    leaves: dict[str, PresenceEntry]

    def takes(self, change: PresenceChange) -> bool:
        return not any(
            entry.connection_id in self.joins for entry in (*change.leaves, *change.joins)
        )

    def add(self, change: PresenceChange) -> None:
        for entry in change.leaves:
            self.leaves.setdefault(entry.connection_id, entry)
        for entry in change.joins:
            self.joins[entry.connection_id] = entry


class PresenceFanout:
    """The presence backend's listener on this gateway."""

    def __init__(self, hub: Hub, interval_seconds: float) -> None:
        self._hub = hub
        self._interval = interval_seconds
        self._pending: dict[PresenceKey, list[_Segment]] = {}
        self._timers: dict[PresenceKey, asyncio.TimerHandle] = {}

    def __call__(self, change: PresenceChange) -> None:
        channel = change.channel
        segments = self._pending.setdefault(channel, [])
        if not segments or not segments[-1].takes(change):
            segments.append(_Segment({}, {}))
        segments[-1].add(change)
        if self._interval <= 0:
            self.flush()
        elif channel not in self._timers:
            self._timers[channel] = asyncio.get_running_loop().call_later(
                self.interval_of(channel), self._flush_channel, channel
            )

    def interval_of(self, channel: PresenceKey) -> float:
        """How long the channel's changes are gathered: the interval, stretched while
        its subscribers are many."""
        subscribers = len(self._hub.subscriptions_of(channel))
        stretched = min(MAX_INTERVAL_SECONDS, subscribers / WRITES_PER_SECOND)
        return max(self._interval, stretched)

    def flush(self) -> None:
        """Send every pending diff now (also on shutdown, before the last goodbye)."""
        for channel in list(self._pending):
            self._flush_channel(channel)

    def _flush_channel(self, channel: PresenceKey) -> None:
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        for segment in self._pending.pop(channel, ()):
            diff = PresenceChange(
                channel, tuple(segment.joins.values()), tuple(segment.leaves.values())
            )
            self._hub.announce(channel, diff, presence=True)
