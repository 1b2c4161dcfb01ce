"""Limits on what clients may hold: a token bucket per connection, refilled
continuously, the bytes a connection may send, and the connections that have not
signed in yet."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows `rate` events per second on average and `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        """0.0 when an event of `cost` may pass now (it is counted), else the seconds
        until one may. A cost above the burst counts as the burst."""
        cost = min(cost, self._capacity)
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self._rate

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now


class ByteBudget(TokenBucket):
    """Allows `rate` bytes per second on average and `burst` at once. A frame is read
    whole before its size is known, so it always passes; what it took past the budget
    is paid for afterwards, by not reading the connection for that long."""

    def spend(self, size: int) -> float:
        """Count `size` bytes read; the seconds to wait before reading more (0.0: none)."""
        self._refill()
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class Unauthenticated:
    """Connections that have not signed in yet, bounded in total and per address: each
    may sit until the auth timeout without proving anything."""

    def __init__(self, total: int, per_address: int) -> None:
        self._total = total
        self._per_address = per_address
        self._count = 0
        self._by_address: dict[str | None, int] = {}

    def admit(self, address: str | None) -> str | None:
        """Count one more for `address`; the refusal when over a limit."""
        if self._count >= self._total:
            return (
                f"already {self._total} connections not signed in "
                "(SITEBUILDER_MAX_UNAUTHENTICATED_CONNECTIONS)"
            )
        if self._by_address.get(address, 0) >= self._per_address:
            return (
                f"already {self._per_address} connections not signed in from this address "
                "(SITEBUILDER_MAX_UNAUTHENTICATED_PER_ADDRESS)"
            )
        self._count += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return None

    def release(self, address: str | None) -> None:
        """One of `address` signed in or went away."""
        self._count -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]
