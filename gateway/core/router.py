"""Which project a row belongs to.

Sitemaps name their project; wireframes, style guides and versions only name a
parent, so the router remembers parents it has seen (from the feed and from
snapshots) and asks the database for the others. Remembering is what routes
cascaded deletes: their parents are already gone from the database, but the feed
delivered each parent's delete just before its children's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg

from db import queries
from db.acting_user import Conn

Lookup = Callable[[Conn, UUID], Awaitable[UUID | None]]


class BoundedMap:
    """A least-recently-used map of ids: bounded memory whatever the database size."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[UUID, UUID] = OrderedDict()

    def get(self, key: UUID) -> UUID | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: UUID, value: UUID) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _uuid(value: Any) -> UUID | None:
    if value is None:
        return None
    return value if isinstance(value, UUID) else UUID(str(value))


class Router:
    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self._pool = pool
        self._sitemap_project = BoundedMap(capacity)
        self._wireframe_sitemap = BoundedMap(capacity)
        self._style_guide_wireframe = BoundedMap(capacity)

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

    async def project_of(self, table: str, row: dict[str, Any]) -> UUID | None:
        """The project of `row` (a row of `table`), or None when it has none."""
        self.learn(table, row)
        if table == "projects":
            return _uuid(row.get("id"))
        if table in ("sitemaps", "builder_sessions"):
            return _uuid(row.get("project_id"))
        if table == "wireframes":
            return await self._project_of_sitemap(_uuid(row.get("sitemap_id")))
        if table == "style_guides":
            return await self._project_of_wireframe(_uuid(row.get("wireframe_id")))
        if table == "version_history":
            return await self._project_of_entity(row.get("entity_type"), _uuid(row["entity_id"]))
        return None

    async def _project_of_entity(self, entity_type: object, entity_id: UUID | None) -> UUID | None:
        if entity_type == "projects":
            return entity_id
        if entity_type == "sitemaps":
            return await self._project_of_sitemap(entity_id)
        if entity_type == "wireframes":
            return await self._project_of_wireframe(entity_id)
        if entity_type == "style_guides" and entity_id is not None:
            wireframe = await self._parent(
                self._style_guide_wireframe, queries.style_guide_wireframe, entity_id
            )
            return await self._project_of_wireframe(wireframe)
        return None

    async def _project_of_wireframe(self, wireframe_id: UUID | None) -> UUID | None:
        if wireframe_id is None:
            return None
        sitemap = await self._parent(
            self._wireframe_sitemap, queries.wireframe_sitemap, wireframe_id
        )
        return await self._project_of_sitemap(sitemap)

    async def _project_of_sitemap(self, sitemap_id: UUID | None) -> UUID | None:
        if sitemap_id is None:
            return None
        return await self._parent(self._sitemap_project, queries.sitemap_project, sitemap_id)

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
