"""Sign-ins that arrive together have their users' names looked up together
(gateway.edge.names): each still gets its own user's name, and a token of a user who
does not exist is still refused."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from gateway.edge.names import NameLookups
from tests.conftest import UserFactory
from tests.gateway_fixtures import TIMEOUT, Connect, token


async def test_lookups_made_while_the_pool_is_busy_each_get_their_users_name(
    database_dsn: str, make_user: UserFactory
) -> None:
    users = [await make_user(f"user{i}@example.test") for i in range(20)]
    stranger = uuid.uuid4()
    pool = await asyncio.wait_for(
        asyncpg.create_pool(database_dsn, min_size=1, max_size=1), TIMEOUT
    )
    try:
        lookups = NameLookups(pool)
        async with pool.acquire():  # every lookup below waits for the pool together
            pending = [
                asyncio.ensure_future(lookups.name(user)) for user in [*users, stranger, users[0]]
            ]
            await asyncio.sleep(0)  # they start waiting while the connection is taken
        names = await asyncio.wait_for(asyncio.gather(*pending), TIMEOUT)
        alone = await asyncio.wait_for(lookups.name(users[3]), TIMEOUT)
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT)
    assert names == [*(f"user{i}" for i in range(20)), None, "user0"]
    assert alone == "user3"


async def test_sign_ins_at_once_each_get_their_own_user(
    ws_client: Connect, make_user: UserFactory
) -> None:
    users = [await make_user() for _ in range(10)]
    clients = [await ws_client() for _ in range(11)]
    for client, user in zip(clients, [*users, uuid.uuid4()], strict=True):
        await client.send({"type": "auth", "token": token(user), "ref": "in"})
    replies = [await client.recv() for client in clients]
    assert [(r["type"], r["data"]["user_id"]) for r in replies[:-1]] == [
        ("ok", str(user)) for user in users
    ]
    assert (replies[-1]["type"], replies[-1]["code"]) == ("error", "unknown_user")
    code, reason = await clients[-1].expect_closed()
    assert (code, reason) == (4003, "unknown_user")
