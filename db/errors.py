"""What a database that failed, went away or was switched over looks like to asyncpg."""

from __future__ import annotations

import asyncpg

# InternalClientError: a pooled connection whose server went away in the middle of an
# operation (seen after a switchover) can refuse the next one ("another operation is in
# progress") before the pool notices it is gone.
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
