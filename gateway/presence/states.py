"""One `presence.state` per channel and protocol for every joiner of a short window.

A joiner is sent the channel's whole presence: with N connections there, building and
encoding it for each of N joiners (a reconnect wave after a deploy, a popular public
project) is N² work. A joiner of a quiet channel gets its state at once; joiners that
follow within one window of a build wait for the window's end, and everyone who joined
within it gets the same bytes, built once, after all their joins: each still finds its
own connection in its state.

Handing the bytes over happens in one step with the build, so no presence diff can be
sent between the two: each joiner holds the state from the moment it was read and gets
every diff after it (`Receive` marks it as a holder of the channel's presence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.channels import PresenceKey
from gateway.presence.model import Presence, PresenceEntry

Encode = Callable[[list[PresenceEntry]], bytes]
# Past this many keys remembered, those whose window is over are forgotten.
FORGET_PAST = 1024
# Called with the shared state, at once after it was read (a joiner that left meanwhile
# ignores it).
Receive = Callable[[bytes], None]


class Rebuild(Exception):
    """The joiner building the batch's state left first: build it anew."""


@dataclass
class _Batch:
    encode: Encode
    receivers: list[Receive] = field(default_factory=list)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PresenceStates:
    """Batches of joiners by (channel, protocol variant)."""

    def __init__(self, presence: Presence, window_seconds: float) -> None:
        self._presence = presence
        self._window = window_seconds
        self._batches: dict[tuple[PresenceKey, str], _Batch] = {}
        # When each key's last state was built (monotonic), for keys built recently.
        self._built: dict[tuple[PresenceKey, str], float] = {}

    async def deliver(
        self, channel: PresenceKey, variant: str, encode: Encode, receive: Receive
    ) -> None:
        """Hand the joiner the channel's state (built after its join) through `receive`,
        within about one window."""
        while True:
            key = (channel, variant)
            batch = self._batches.get(key)
            if batch is None:
                await self._build(key, receive, encode)
                return
            batch.receivers.append(receive)
            try:
                await asyncio.shield(batch.done)
                return
            except Rebuild:
                continue

    async def _build(self, key: tuple[PresenceKey, str], receive: Receive, encode: Encode) -> None:
        """Gather the window's joiners, read the presence once, hand it to each."""
        batch = self._batches[key] = _Batch(encode, [receive])
        try:
            wait = self._built.get(key, -self._window) + self._window - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            del self._batches[key]
            self._remember(key)
            data = batch.encode(await self._presence.list(key[0]))
        except BaseException:
            if self._batches.get(key) is batch:
                del self._batches[key]
            batch.done.set_exception(Rebuild())
            batch.done.exception()  # retrieved: the waiting joiners get it
            raise
        for taker in batch.receivers:
            taker(data)
        batch.done.set_result(None)

    def _remember(self, key: tuple[PresenceKey, str]) -> None:
        """Note the build; forget the keys whose window is over (they build at once)."""
        now = time.monotonic()
        if len(self._built) >= FORGET_PAST:
            self._built = {k: t for k, t in self._built.items() if now - t < self._window}
        self._built[key] = now
