"""A joiner of a quiet project gets its `presence.state` at once; joiners following
within one window share one (what a reconnect wave after a deploy costs), each still
finding itself in it. The in-memory presence backend is the real one a lone gateway
runs."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import orjson

from gateway.core.channels import ProjectChannel
from gateway.presence.model import InMemoryPresence, PresenceEntry
from gateway.presence.states import Encoded, PresenceStates, StateCodec
from tests.gateway_fixtures import TIMEOUT

WINDOW = 0.05


def entry_bytes(entry: PresenceEntry) -> bytes:
    return entry.connection_id.encode()


def connection_ids(encoded: list[Encoded]) -> bytes:
    return orjson.dumps(sorted(data.decode() for _, data in encoded))


IDS = StateCodec(entry_bytes, connection_ids)


async def test_joiners_within_a_window_share_one_state_that_lists_each_of_them() -> None:
    presence = InMemoryPresence()
    states = PresenceStates(presence, WINDOW)
    channel = ProjectChannel(uuid4())
    builds: list[int] = []
    encoded: list[str] = []
    received: dict[str, bytes] = {}

    def entry(entry: PresenceEntry) -> bytes:
        encoded.append(entry.connection_id)
        return entry_bytes(entry)

    def build(entries: list[Encoded]) -> bytes:
        builds.append(len(entries))
        return connection_ids(entries)

    async def join(connection: str) -> None:
        await presence.join(channel, uuid4(), connection, {})

        def receive(state: bytes) -> None:
            received[connection] = state

        await states.deliver(channel, "native", StateCodec(entry, build), receive)

    await asyncio.wait_for(join("first"), TIMEOUT)
    assert builds == [1]  # at once: nobody joined lately
    joiners = [f"c{i}" for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*(join(c) for c in joiners)), TIMEOUT)

    assert builds == [1, 51]
    (state,) = {received[c] for c in joiners}
    assert set(orjson.loads(state)) == {"first", *joiners}

    # A later joiner gets a state of its own, built after its join.
    await asyncio.wait_for(join("late"), TIMEOUT)
    assert builds == [1, 51, 52]
    assert "late" in orjson.loads(received["late"])
    # Each entry was encoded once, however many states listed it.
    assert sorted(encoded) == sorted(["first", *joiners, "late"])


async def test_the_others_still_get_a_state_when_the_first_joiner_leaves_while_waiting() -> None:
    presence = InMemoryPresence()
    states = PresenceStates(presence, WINDOW)
    channel = ProjectChannel(uuid4())
    received: dict[str, bytes] = {}

    async def join(connection: str) -> None:
        await presence.join(channel, uuid4(), connection, {})
        await states.deliver(
            channel,
            "native",
            IDS,
            lambda state: received.update({connection: state}),
        )

    await asyncio.wait_for(join("earlier"), TIMEOUT)  # now joiners wait for the window
    first = asyncio.create_task(join("first"))
    await asyncio.sleep(0)  # it is waiting for the window's other joiners
    second = asyncio.create_task(join("second"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, TIMEOUT)

    assert first.cancelled()
    assert set(received) == {"earlier", "second"}
    assert "second" in orjson.loads(received["second"])
