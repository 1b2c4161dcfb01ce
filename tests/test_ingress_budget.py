"""SITEBUILDER_MAX_BYTES_PER_SECOND: a connection sending more bytes than its budget is
not read for a while (TCP slows it) instead of being refused or closed; every frame it
sent is answered, in order, and a connection beside it is served meanwhile."""

from __future__ import annotations

import orjson
import pytest

from gateway.app.server import Gateway
from gateway.edge.connection import frame_size
from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect

FRAME_BYTES = 16_384
FRAMES = 12  # 192 KiB: about 2.7 s past a budget of 64 KiB/s with a burst of 16 KiB
PAUSED = "sitebuilder_ingress_paused_seconds_total"


def padded_ping(ref: str) -> str:
    return orjson.dumps({"type": "ping", "ref": ref, "pad": "x" * FRAME_BYTES}).decode()


@pytest.mark.parametrize(
    "gateway_overrides", [{"max_bytes_per_second": 65_536, "byte_burst": FRAME_BYTES}]
)
async def test_a_client_over_its_byte_budget_is_slowed_not_refused_or_closed(
    gateway: Gateway, ws_client: Connect, make_user: UserFactory
) -> None:
    heavy, beside = await ws_client(), await ws_client()
    await heavy.auth(await make_user())
    await beside.auth(await make_user())
    refs = [f"heavy-{index}" for index in range(FRAMES)]

    for ref in refs:
        await heavy.send_raw(padded_ping(ref))
    first = await heavy.recv()
    await beside.ping()  # served while the heavy one waits for its budget
    rest = [await heavy.recv() for _ in refs[1:]]

    assert [(reply["type"], reply["ref"]) for reply in [first, *rest]] == [
        ("ok", ref) for ref in refs
    ]
    await heavy.ping()  # still open
    paused = gateway.metrics.registry.get_sample_value(PAUSED) or 0
    sent = FRAMES * len(padded_ping(refs[0]))
    assert 0 < paused <= (sent - FRAME_BYTES) / 65_536


def test_a_frame_is_measured_in_its_bytes() -> None:
    assert frame_size("abc") == 3
    assert frame_size(b"\x00\x01") == 2
    assert frame_size("é€") == len("é€".encode())
