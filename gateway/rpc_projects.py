"""`project.*` methods: builderHelpers.project over the socket, as the calling user."""

from __future__ import annotations

from typing import Any

import orjson

from db import queries
from gateway.rpc import Call, Method, RpcError
from protocol.errors import ErrorCode
from protocol.rows import ProjectRow
from protocol.rpc_projects import PARAMS, ProjectCreate, ProjectId, ProjectWithRelations

_INSERT = """
    INSERT INTO public.projects
        (id, user_id, name, type, status, description, data, settings, collaborators, is_public)
    VALUES (coalesce($1, uuid_generate_v4()), auth.uid(), $2, $3, $4, $5, $6::jsonb, $7::jsonb,
            $8, $9)
    RETURNING to_jsonb(projects.*)::text
"""


async def create(call: Call, params: ProjectCreate) -> ProjectRow:
    async with call.as_user() as conn:
        row = await conn.fetchval(
            _INSERT,
            params.id,
            params.name,
            params.type,
            params.status,
            params.description,
            orjson.dumps(params.data).decode(),
            orjson.dumps(params.settings).decode(),
            params.collaborators,
            params.is_public,
        )
    return ProjectRow.model_validate_json(row)


async def get_with_relations(call: Call, params: ProjectId) -> ProjectWithRelations:
    async with call.pool.acquire() as conn:
        view = await queries.view_project(conn, call.user_id, params.project_id, with_content=True)
    if view is None:
        raise RpcError(ErrorCode.NOT_FOUND, f"no project {params.project_id} visible to you")
    return ProjectWithRelations.model_validate(
        {
            "project": view.project,
            "sitemaps": view.sitemaps,
            "wireframes": view.wireframes,
            "style_guides": view.style_guides,
        }
    )


METHODS: dict[str, Method[Any]] = {
    "project.create": Method(ProjectCreate, create),
    "project.get_with_relations": Method(ProjectId, get_with_relations),
}
assert set(METHODS) == set(PARAMS), "every method has its params in protocol.rpc_projects"
