"""Presence diffs to this gateway's subscribers, at most once per interval per channel.

A diff per change costs a write to every subscriber: a thousand editors coming back
at once after a deploy made a million writes. Changes within one interval are merged
into as few diffs as stay correct when applied leaves-first (usually one), and each
goes to the channel's subscribers that already have its presence state through the
hub, which encodes it once per protocol variant. A subscriber that took its state
during the interval gets those diffs too; applying again what its state already shows
leaves it unchanged, and the last word on every connection is the latest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.core.channels import PresenceKey
from gateway.core.hub import Hub
from gateway.presence.model import PresenceChange, PresenceEntry


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
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, change: PresenceChange) -> None:
        segments = self._pending.setdefault(change.channel, [])
        if not segments or not segments[-1].takes(change):
            segments.append(_Segment({}, {}))
        segments[-1].add(change)
        if self._interval <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Send every pending diff now (also on shutdown, before the last goodbye)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for channel, segments in pending.items():
            for segment in segments:
                diff = PresenceChange(
                    channel, tuple(segment.joins.values()), tuple(segment.leaves.values())
                )
                self._hub.announce(channel, diff, presence=True)
