"""Every connection's token expiry on one timer.

A timer per connection (`loop.call_at`) cost each open connection half a kilobyte: the
handle, the copy of the context it runs in, the event loop's own timer. The gateway
keeps every expiry in one heap instead, with one timer set for the earliest. An expiry
nobody wants any more (the connection closed, or refreshed its token) is emptied where
it lies, and dropped when it comes up or when empty ones are most of the heap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol

# The heap is rebuilt without its empty entries once they are this many and most of it.
COMPACT_PAST = 64


class Expiring(Protocol):
    def token_expired(self) -> None:
        """The token this expiry was set for has expired."""
        ...


class Expiry:
    """One scheduled expiry: `cancel` it when it is no longer wanted."""

    __slots__ = ("_expiries", "seq", "target", "when")

    def __init__(self, expiries: Expiries, when: float, seq: int, target: Expiring) -> None:
        self._expiries = expiries
        self.when = when
        self.seq = seq
        self.target: Expiring | None = target

    def __lt__(self, other: Expiry) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        if self.target is not None:
            self.target = None
            self._expiries.emptied()


class Expiries:
    """The gateway's expiries, by event loop time."""

    def __init__(self) -> None:
        self._heap: list[Expiry] = []
        self._empty = 0
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def at(self, when: float, target: Expiring) -> Expiry:
        """Call `target.token_expired()` at loop time `when` (unless cancelled first)."""
        expiry = Expiry(self, when, next(self._seq), target)
        heapq.heappush(self._heap, expiry)
        if self._timer_at is None or when < self._timer_at:
            self._arm(when)
        return expiry

    def emptied(self) -> None:
        self._empty += 1
        if self._empty > COMPACT_PAST and self._empty * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e.target is not None]
            heapq.heapify(self._heap)
            self._empty = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = asyncio.get_running_loop().time()
        due: list[Expiring] = []
        while self._heap and self._heap[0].when <= now:
            expiry = heapq.heappop(self._heap)
            if expiry.target is None:
                self._empty -= 1
            else:
                due.append(expiry.target)
                expiry.target = None
        while self._heap and self._heap[0].target is None:
            heapq.heappop(self._heap)
            self._empty -= 1
        if self._heap:
            self._arm(self._heap[0].when)
        for target in due:
            target.token_expired()
