"""One `presence.state` per channel and protocol for every joiner of a short window.

A joiner is sent the channel's whole presence: with N connections there, building and
encoding it for each of N joiners (a reconnect wave after a deploy, a popular public
project) is N² work. A joiner of a quiet channel gets its state at once; joiners that
follow within one window of a build wait for the window's end, and everyone who joined
within it gets the same bytes, built once, after all their joins: each still finds its
own connection in its state.

A crowded channel's window is longer: a build costs in proportion to the entries it
lists, so the window after a build of N entries lasts N / `ENTRIES_PER_SECOND` seconds
when that is longer (5,000 connections: a state every 250 ms, not every 50).

Each entry is encoded on its own and kept while the channel's joiners keep coming
(`KEEP_WINDOWS`): a build encodes only the entries that are new or changed since the
last one and joins the others' bytes, so the windows of a storm of N joiners encode N
entries, not N per window.

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

# Past this many keys remembered, those whose window is over are forgotten.
FORGET_PAST = 1024
# Entries a channel's builds may list per second before its window stretches.
ENTRIES_PER_SECOND = 20_000
# A channel's encoded entries are dropped this many windows after its last build: an
# idle project's presence costs no memory beyond its entries.
KEEP_WINDOWS = 4
# Called with the shared state, at once after it was read (a joiner that left meanwhile
# ignores it).
Receive = Callable[[bytes], None]
# An entry with its encoding.
Encoded = tuple[PresenceEntry, bytes]


@dataclass(frozen=True, slots=True)
class StateCodec:
    """How a protocol writes a channel's state: each entry's bytes (`entry`), and the
    whole state from every entry with its bytes (`state`)."""

    entry: Callable[[PresenceEntry], bytes]
    state: Callable[[list[Encoded]], bytes]


class Rebuild(Exception):
    """The joiner building the batch's state left first: build it anew."""


@dataclass
class _Batch:
    codec: StateCodec
    receivers: list[Receive] = field(default_factory=list)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Key = tuple[PresenceKey, str]


class PresenceStates:
    """Batches of joiners by (channel, protocol variant)."""

    def __init__(self, presence: Presence, window_seconds: float) -> None:
        self._presence = presence
        self._window = window_seconds
        self._batches: dict[Key, _Batch] = {}
        # When each key built recently may build again (monotonic): its window's end.
        self._next: dict[Key, float] = {}
        # Each recently built key's entries by connection id, with their bytes.
        self._encoded: dict[Key, dict[str, Encoded]] = {}

    async def deliver(
        self, channel: PresenceKey, variant: str, codec: StateCodec, receive: Receive
    ) -> None:
        """Hand the joiner the channel's state (built after its join) through `receive`,
        within about one window."""
        while True:
            key = (channel, variant)
            batch = self._batches.get(key)
            if batch is None:
                await self._build(key, receive, codec)
                return
            batch.receivers.append(receive)
            try:
                await asyncio.shield(batch.done)
                return
            except Rebuild:
                continue

    async def _build(self, key: Key, receive: Receive, codec: StateCodec) -> None:
        """Gather the window's joiners, read the presence once, hand it to each."""
        batch = self._batches[key] = _Batch(codec, [receive])
        try:
            wait = self._next.get(key, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            del self._batches[key]
            entries = await self._presence.list(key[0])
            self._remember(key, len(entries))
            data = batch.codec.state(self._encode(key, batch.codec, entries))
        except BaseException:
            if self._batches.get(key) is batch:
                del self._batches[key]
            batch.done.set_exception(Rebuild())
            batch.done.exception()  # retrieved: the waiting joiners get it
            raise
        for taker in batch.receivers:
            taker(data)
        batch.done.set_result(None)

    def _encode(self, key: Key, codec: StateCodec, entries: list[PresenceEntry]) -> list[Encoded]:
        """Each entry with its bytes: those of the last build for an entry unchanged
        since (entries are immutable, replaced on every change)."""
        known = self._encoded.get(key, {})
        encoded: list[Encoded] = []
        for entry in entries:
            kept = known.get(entry.connection_id)
            encoded.append(
                kept if kept is not None and kept[0] is entry else (entry, codec.entry(entry))
            )
        self._encoded[key] = {pair[0].connection_id: pair for pair in encoded}
        return encoded

    def _remember(self, key: Key, entries: int) -> None:
        """Note the build and when the key's window ends; forget the keys whose window is
        over (they build at once), and this key's encoded entries unless another build
        follows soon."""
        now = time.monotonic()
        if len(self._next) >= FORGET_PAST:
            self._next = {k: t for k, t in self._next.items() if t > now}
        window = max(self._window, entries / ENTRIES_PER_SECOND)
        self._next[key] = end = now + window
        asyncio.get_running_loop().call_later(window * KEEP_WINDOWS, self._forget_encoded, key, end)

    def _forget_encoded(self, key: Key, end: float) -> None:
        if self._next.get(key, end) <= end:
            self._encoded.pop(key, None)
