"""`batch.create_project_structure`: a project, its sitemap, wireframes and style guides
in one transaction as the calling user.

One transaction is the point: a failure in any part (a refused owner, a value the
database rejects) leaves nothing behind, and subscribers get the whole structure
from a single commit rather than a half-built project.
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel

from gateway.rpc.call import Call, Handlers
from gateway.rpc.entities import SITEMAPS, STYLE_GUIDES, WIREFRAMES, insert_row
from gateway.rpc.projects import insert_project
from protocol.rpc_batch import ProjectStructure, ProjectStructureCreated

handles = Handlers()


def _values(
    fields: BaseModel, parent: str, parent_row: BaseModel, *, drop: frozenset[str] = frozenset()
) -> str:
    """One part as the JSON object entity inserts take, under the row it belongs to."""
    row = fields.model_dump(mode="json", exclude=set(drop))
    return orjson.dumps({**row, parent: parent_row.model_dump(mode="json")["id"]}).decode()


@handles("batch.create_project_structure")
async def create_project_structure(call: Call, params: ProjectStructure) -> ProjectStructureCreated:
    async with call.as_user() as conn:
        project = await insert_project(conn, params.project)
        sitemap = await insert_row(conn, SITEMAPS, _values(params.sitemap, "project_id", project))
        wireframes = [
            await insert_row(conn, WIREFRAMES, _values(w, "sitemap_id", sitemap))
            for w in params.wireframes
        ]
        index = frozenset({"wireframe_index"})
        style_guides = [
            await insert_row(
                conn,
                STYLE_GUIDES,
                _values(g, "wireframe_id", wireframes[g.wireframe_index], drop=index),
            )
            for g in params.style_guides
        ]
    return ProjectStructureCreated.model_validate(
        {
            "project": project,
            "sitemap": sitemap,
            "wireframes": wireframes,
            "style_guides": style_guides,
        }
    )
