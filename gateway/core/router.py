"""Which project a row belongs to.

Sitemaps name their project; wireframes, style guides and versions only name a
parent, so the router remembers parents it has seen (from the feed and from
snapshots) and asks the database for the others. Remembering is what routes
cascaded deletes: their parents are already gone from the database, but the feed
delivered each parent's delete just before its children's.

Nearly every change's parents are remembered, so routing answers without a coroutine
when it can (`known_project_of`, what the dispatcher's per-change path asks) and only
a row whose parent must be read awaits (`project_of`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import asyncpg

from db import queries
from db.acting_user import Conn

Lookup = Callable[[Conn, UUID], Awaitable[UUID | None]]


class Unknown(Enum):
    """A parent not remembered: only the database can tell."""

    PARENT = "unknown parent"


UNKNOWN: Literal[Unknown.PARENT] = Unknown.PARENT
Known = UUID | None | Literal[Unknown.PARENT]


class BoundedMap:
    """A map of ids of bounded size whatever the database size, keeping what was used
    lately: entries live in two generations, a hit in the young one costs one dict
    lookup (no reordering, as a least-recently-used map would do on every hit, and
    every change routes through here), a hit in the old one moves the entry to the
    young one; when the young generation is full the old one is dropped and the young
    one takes its place. So an entry used in neither of the last two generations is
    forgotten, and at most `capacity` are kept."""

    __slots__ = ("_generation", "_last", "_old", "_young")

    def __init__(self, capacity: int) -> None:
        self._generation = max(1, capacity // 2)
        self._young: dict[UUID, UUID] = {}
        self._old: dict[UUID, UUID] = {}
        # The last hit: a run of changes asks for one parent, often the same UUID
        # object (db.pgoutput keeps those it made lately), found without hashing it.
        self._last: tuple[UUID | None, UUID | None] = (None, None)

    def get(self, key: UUID) -> UUID | None:
        last_key, value = self._last
        if key is last_key:
            return value
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is None:
                return None
            self.put(key, value)
        self._last = (key, value)
        return value

    def put(self, key: UUID, value: UUID) -> None:
        young = self._young
        if key not in young and len(young) >= self._generation:
            self._old = young
            self._young = young = {}
        young[key] = value
        self._last = (None, None)

    def __len__(self) -> int:
        return len(self._young.keys() | self._old.keys())


def _uuid(value: Any) -> UUID | None:
    if value is None:
        return None
    return value if isinstance(value, UUID) else UUID(str(value))


# One step from a row's parent towards its project: the parents remembered, and how to
# read one from the database.
Hop = tuple[BoundedMap, Lookup]


class Router:
    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self._pool = pool
        self._sitemap_project = BoundedMap(capacity)
        self._wireframe_sitemap = BoundedMap(capacity)
        self._style_guide_wireframe = BoundedMap(capacity)
        to_project: Hop = (self._sitemap_project, queries.sitemap_project)
        to_sitemap: Hop = (self._wireframe_sitemap, queries.wireframe_sitemap)
        to_wireframe: Hop = (self._style_guide_wireframe, queries.style_guide_wireframe)
        # From an entity of each kind to its project, hop by hop.
        self._hops: dict[str, tuple[Hop, ...]] = {
            "projects": (),
            "sitemaps": (to_project,),
            "wireframes": (to_sitemap, to_project),
            "style_guides": (to_wireframe, to_sitemap, to_project),
        }

    def learn(self, table: str, row: dict[str, Any]) -> None:
        """Remember the parent a row names."""
        row_id = _uuid(row.get("id"))
        if row_id is None:
            return
        if table == "sitemaps" and (parent := _uuid(row.get("project_id"))):
            self._sitemap_project.put(row_id, parent)
        elif table == "wireframes" and (parent := _uuid(row.get("sitemap_id"))):
            self._wireframe_sitemap.put(row_id, parent)
        elif table == "style_guides" and (parent := _uuid(row.get("wireframe_id"))):
            self._style_guide_wireframe.put(row_id, parent)

    def known_project_of(self, table: str, row: dict[str, Any]) -> Known:
        """The project of `row` (a row of `table`), None when it has none, or UNKNOWN
        when a parent must be read from the database (`project_of` then). Either way
        the router learns the parent the row names."""
        self.learn(table, row)
        node, hops = self._route(table, row)
        for known, _ in hops:
            if node is None:
                return None
            parent = known.get(node)
            if parent is None:
                return UNKNOWN
            node = parent
        return node

    async def project_of(self, table: str, row: dict[str, Any]) -> UUID | None:
        """The project of `row` (a row of `table`), or None when it has none; parents
        not remembered are read from the database."""
        known = self.known_project_of(table, row)
        if known is not UNKNOWN:
            return known
        node, hops = self._route(table, row)
        for remembered, lookup in hops:
            node = await self._parent(remembered, lookup, node)
        return node

    def _route(self, table: str, row: dict[str, Any]) -> tuple[UUID | None, tuple[Hop, ...]]:
        """The entity a row names on its way to its project (itself, its parent, or a
        version's entity), and the hops from that entity to the project."""
        if table == "projects":
            return _uuid(row.get("id")), ()
        if table in ("sitemaps", "builder_sessions"):
            return _uuid(row.get("project_id")), ()
        if table == "wireframes":
            return _uuid(row.get("sitemap_id")), self._hops["sitemaps"]
        if table == "style_guides":
            return _uuid(row.get("wireframe_id")), self._hops["wireframes"]
        if table == "version_history":
            entity_type = row.get("entity_type")
            hops = self._hops.get(entity_type) if isinstance(entity_type, str) else None
            if hops is not None:
                return _uuid(row["entity_id"]), hops
        return None, ()

    async def _parent(self, known: BoundedMap, lookup: Lookup, child: UUID | None) -> UUID | None:
        if child is None:
            return None
        parent = known.get(child)
        if parent is None:
            async with self._pool.acquire() as conn:
                parent = await lookup(conn, child)
            if parent is not None:
                known.put(child, parent)
        return parent
