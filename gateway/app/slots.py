"""This node's replication slot, `<prefix>_<node>_0`, whatever its worker count.

The node reads its one slot (gateway.app.supervisor hands its workers what it reads).
Earlier versions gave each worker a slot, `<prefix>_<node>_<index>`: a slot keeps WAL
on the server until it is read or dropped, so those of indexes 1 and up are dropped at
start and by `slot prune`. A slot that stays in use at start was not left by a killed
process of ours but is read by a live one: another node runs with the same name, and
starting anyway would leave one of the two waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

import asyncpg

from db.replication_stream import SlotInUse, SlotStatus, drop_slot, slot_status
from gateway.settings import Settings

logger = logging.getLogger(__name__)

SLOT_POLL_SECONDS = 0.2


class NodeNameInUse(RuntimeError):
    """Another running gateway reads this node's slots: it has the same node name."""


@dataclass(frozen=True)
class NodeSlot:
    """One of this node's slots: `index` 0 is the node's, others were workers'."""

    index: int
    status: SlotStatus


@dataclass
class Pruned:
    dropped: list[str] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)


def _slot_pattern(settings: Settings) -> re.Pattern[str]:
    prefix = re.escape(f"{settings.replication_slot}_{settings.node_name}_")
    return re.compile(rf"^{prefix}(0|[1-9][0-9]*)$")


async def node_slots(dsn: str, settings: Settings) -> list[NodeSlot]:
    """This node's slots on this database, by index."""
    conn = await asyncpg.connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        )
    finally:
        await conn.close()
    pattern = _slot_pattern(settings)
    slots = []
    for row in names:
        match = pattern.match(row["slot_name"])
        if match is None:
            continue
        status = await slot_status(dsn, row["slot_name"])
        if status is not None:
            slots.append(NodeSlot(int(match[1]), status))
    return sorted(slots, key=lambda slot: slot.index)


async def prune_slots(dsn: str, settings: Settings, *, force: bool = False) -> Pruned:
    """Drop the per-worker slots of earlier versions (every slot of this node but its
    own); in-use ones only with `force` (which ends the connection reading them)."""
    pruned = Pruned()
    for slot in await node_slots(dsn, settings):
        if slot.index == 0:
            continue
        name = slot.status.slot_name
        try:
            if await drop_slot(dsn, name, terminate=force):
                pruned.dropped.append(name)
        except SlotInUse:
            pruned.in_use.append(name)
    return pruned


async def _holder(dsn: str, pid: int | None) -> str:
    """Who reads a slot, as far as the server knows: its backend and client address."""
    if pid is None:
        return "a process that just let go"
    conn = await asyncpg.connect(dsn)
    try:
        address = await conn.fetchval(
            "SELECT host(client_addr) FROM pg_stat_activity WHERE pid = $1", pid
        )
    finally:
        await conn.close()
    # No address: a Unix socket, or a role that may not see other sessions' details.
    return f"PostgreSQL backend {pid} (client {address or 'on this host or not shown'})"


async def claim_node_slots(dsn: str, settings: Settings) -> None:
    """Before this node starts: wait (up to `slot_wait_seconds`) until no process reads
    this node's slots, then drop those of earlier versions' workers.

    Raises NodeNameInUse when a slot stays in use."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.slot_wait_seconds
    while busy := [s for s in await node_slots(dsn, settings) if s.status.active]:
        if loop.time() >= deadline:
            slot = busy[0].status
            raise NodeNameInUse(
                f"replication slot {slot.slot_name} is in use by "
                f"{await _holder(dsn, slot.active_pid)}: another gateway runs with "
                f"SITEBUILDER_NODE_NAME={settings.node_name} on this database; give every "
                "node its own name (a killed node's connection ends within the server's "
                "wal_sender_timeout)"
            )
        await asyncio.sleep(SLOT_POLL_SECONDS)
    pruned = await prune_slots(dsn, settings)
    for name in pruned.dropped:
        logger.info("dropped replication slot %s: the node reads one slot now", name)
    for name in pruned.in_use:
        logger.warning("replication slot %s of an earlier worker is in use: kept", name)
