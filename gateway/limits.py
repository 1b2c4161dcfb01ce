"""Per-connection rate limit: a token bucket, refilled continuously."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `rate` events per second on average and `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> float:
        """0.0 when an event may pass now, else the seconds until one may."""
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate
