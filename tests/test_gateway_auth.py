"""Authentication and per-connection limits of the gateway, over real websockets."""

from __future__ import annotations

from tests.conftest import UserFactory
from tests.gateway_fixtures import Connect, gateway, gateway_overrides, gateway_settings, ws_client  # noqa: F401


async def test_auth_ok_carries_user_id(ws_client: Connect, make_user: UserFactory) -> None:
    user = await make_user()
    client = await ws_client()
    await client.auth(user)
    await client.ping()
