"""Which feed's triggers fire: writers should pay for the feed in use, not both.

The NOTIFY feed needs its row triggers (migration 0007); the replication feed reads
the write-ahead log and only needs the once-per-transaction actor message
(migration 0008). Switching is `ALTER TABLE … ENABLE/DISABLE TRIGGER`, done only
when the current state differs, so a restart with the same feed takes no lock.
All gateway nodes on one database must therefore run the same feed.
"""

from __future__ import annotations

import logging
from typing import Literal

import asyncpg

logger = logging.getLogger(__name__)

TABLES = (
    "projects",
    "sitemaps",
    "wireframes",
    "style_guides",
    "builder_sessions",
    "version_history",
)
NOTIFY_TRIGGERS = ("0_realtime_notify", "0_realtime_notify_truncate")
REPLICATION_TRIGGERS = ("0_realtime_actor",)

FeedName = Literal["notify", "replication"]


async def use_feed_triggers(conn: asyncpg.Connection, feed: FeedName) -> None:
    """Enable the triggers `feed` needs and disable the other feed's."""
    wanted = {name: feed == "notify" for name in NOTIFY_TRIGGERS}
    wanted.update({name: feed == "replication" for name in REPLICATION_TRIGGERS})
    rows = await conn.fetch(
        """
        SELECT c.relname AS table, t.tgname AS trigger, t.tgenabled <> 'D' AS enabled
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
           AND t.tgname = ANY($2::text[])
        """,
        list(TABLES),
        list(wanted),
    )
    changes = [
        (row["table"], row["trigger"], wanted[row["trigger"]])
        for row in rows
        if row["enabled"] != wanted[row["trigger"]]
    ]
    if not changes:
        return
    try:
        async with conn.transaction():
            for table, trigger, enable in changes:
                action = "ENABLE" if enable else "DISABLE"
                await conn.execute(f'ALTER TABLE public.{table} {action} TRIGGER "{trigger}"')
    except asyncpg.InsufficientPrivilegeError:
        # Only the tables' owner may switch triggers; a gateway role that does not own
        # them (migrated by another role) still serves, with the triggers as they are.
        wrong = ", ".join(f"{table}.{trigger}" for table, trigger, _ in changes)
        logger.warning(
            "feed=%s: cannot switch the change feed triggers (%s): role %s does not own "
            "the tables; run `sitebuilder-gateway serve` once as their owner to set them",
            feed,
            wrong,
            await conn.fetchval("SELECT current_user"),
        )
        return
    logger.info("change feed triggers set for feed=%s (%d changed)", feed, len(changes))
