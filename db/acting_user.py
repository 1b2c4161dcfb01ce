"""Run statements in PostgreSQL as an end user, so row-level security applies.

This is the PostgREST / Supabase convention the migrations are written for: inside
one transaction, switch to the `authenticated` role and publish the user's JWT
claims in `request.jwt.claims`, which `auth.uid()` reads. Both are transaction-local
(`SET LOCAL`, `set_config(..., true)`), so a pooled connection returns to the pool
as the gateway's own role with no claims left behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

USER_ROLE = "authenticated"
ANON_ROLE = "anon"

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """asyncpg rolls back an open transaction itself before calling this."""


async def open_pool(dsn: str, *, max_size: int) -> asyncpg.Pool:
    """A pool for statements run as users (and the gateway's own reads). They only
    ever set transaction-local state (above), so a connection goes back to the pool
    without asyncpg's `RESET ALL; UNLISTEN *; …` round trip on every release."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, reset=_no_reset)
    assert pool is not None
    return pool


@asynccontextmanager
async def acting_as(
    conn: Conn,
    user_id: UUID | str | None,
    claims: Mapping[str, Any] | None = None,
    *,
    timeout_seconds: float | None = None,
    request: str | None = None,
) -> AsyncIterator[Conn]:
    """A transaction on `conn` in which the database sees `user_id` as the caller.

    `claims` are the rest of the user's token (email, role, …); `sub` is always
    `user_id`, whatever `claims` says. None: a signed-out visitor (Supabase's anon key),
    as the `anon` role with no `sub` (auth.uid() is null). `timeout_seconds` bounds
    every statement and every lock wait in it (a request must not hang on another's
    row lock). `request` names the gateway request (`sitebuilder.request`, which the
    change feeds carry to the changes it makes: migration 0013).
    """
    role = USER_ROLE if user_id is not None else ANON_ROLE
    published = {**(claims or {}), "sub": str(user_id), "role": role}
    if user_id is None:
        published = {"role": ANON_ROLE}
    limit = "0" if timeout_seconds is None else f"{max(1, round(timeout_seconds * 1000))}ms"
    async with conn.transaction():
        # One round trip: `set_config('role', …, true)` is `SET LOCAL ROLE` (as
        # PostgREST does it); a limit of "0" leaves the session's own in place.
        await conn.execute(
            "SELECT set_config('role', $1, true),"
            " set_config('request.jwt.claims', $2, true),"
            " set_config('sitebuilder.request', $3, true),"
            " CASE WHEN $4 <> '0' THEN set_config('statement_timeout', $4, true) END,"
            " CASE WHEN $4 <> '0' THEN set_config('lock_timeout', $4, true) END",
            role,
            orjson.dumps(published).decode(),
            request or "",
            limit,
        )
        yield conn
