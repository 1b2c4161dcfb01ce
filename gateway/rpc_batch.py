"""`batch.create_project_structure`: a project, its sitemap, wireframes and style guides
in one transaction as the calling user.

One transaction is the point: a failure in any part (a refused owner, a value the
database rejects) leaves nothing behind, and subscribers get the whole structure
from a single commit rather than a half-built project.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from pydantic import JsonValue

from db.acting_user import Conn
from gateway.rpc import Call, Method
from gateway.rpc_projects import insert_project
from protocol.rows import SitemapRow, StyleGuideRow, WireframeRow
from protocol.rpc_batch import (
    PARAMS,
    BatchSitemap,
    BatchStyleGuide,
    BatchWireframe,
    ProjectStructure,
    ProjectStructureCreated,
)

_INSERT_SITEMAP = """
    INSERT INTO public.sitemaps (project_id, title, description, pages, metadata)
    VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)
    RETURNING to_jsonb(sitemaps.*)::text
"""
_INSERT_WIREFRAME = """
    INSERT INTO public.wireframes (sitemap_id, title, description, layout, style_guide, components)
    VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)
    RETURNING to_jsonb(wireframes.*)::text
"""
_INSERT_STYLE_GUIDE = """
    INSERT INTO public.style_guides
        (wireframe_id, title, description, colors, typography, spacing, components, grid,
         breakpoints)
    VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb)
    RETURNING to_jsonb(style_guides.*)::text
"""


def _json(value: JsonValue) -> str:
    return orjson.dumps(value).decode()


async def _sitemap(conn: Conn, project_id: UUID, fields: BatchSitemap) -> SitemapRow:
    row = await conn.fetchval(
        _INSERT_SITEMAP,
        project_id,
        fields.title,
        fields.description,
        _json(fields.pages),
        _json(fields.metadata),
    )
    return SitemapRow.model_validate_json(row)


async def _wireframe(conn: Conn, sitemap_id: UUID, fields: BatchWireframe) -> WireframeRow:
    row = await conn.fetchval(
        _INSERT_WIREFRAME,
        sitemap_id,
        fields.title,
        fields.description,
        _json(fields.layout),
        _json(fields.style_guide),
        fields.components,
    )
    return WireframeRow.model_validate_json(row)


async def _style_guide(conn: Conn, wireframe_id: UUID, fields: BatchStyleGuide) -> StyleGuideRow:
    row = await conn.fetchval(
        _INSERT_STYLE_GUIDE,
        wireframe_id,
        fields.title,
        fields.description,
        _json(fields.colors),
        _json(fields.typography),
        _json(fields.spacing),
        _json(fields.components),
        _json(fields.grid),
        _json(fields.breakpoints),
    )
    return StyleGuideRow.model_validate_json(row)


async def create_project_structure(call: Call, params: ProjectStructure) -> ProjectStructureCreated:
    async with call.as_user() as conn:
        project = await insert_project(conn, params.project)
        sitemap = await _sitemap(conn, project.id, params.sitemap)
        wireframes = [await _wireframe(conn, sitemap.id, w) for w in params.wireframes]
        style_guides = [
            await _style_guide(conn, wireframes[g.wireframe_index].id, g)
            for g in params.style_guides
        ]
    return ProjectStructureCreated(
        project=project, sitemap=sitemap, wireframes=wireframes, style_guides=style_guides
    )


METHODS: dict[str, Method[Any]] = {
    "batch.create_project_structure": Method(ProjectStructure, create_project_structure),
}
assert set(METHODS) == set(PARAMS), "every method has its params in protocol.rpc_batch"
