"""Every RPC method's params model and result type, by method name, for the JSON
Schema export, the `.d.ts` and the gateway's method table (which checks its handlers
against both)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from protocol import (
    rpc_analytics,
    rpc_batch,
    rpc_entities,
    rpc_projects,
    rpc_sessions,
    rpc_trash,
    rpc_versions,
)

RPC_PARAMS: dict[str, type[BaseModel]] = {
    **rpc_projects.PARAMS,
    **rpc_entities.PARAMS,
    **rpc_analytics.PARAMS,
    **rpc_batch.PARAMS,
    **rpc_versions.PARAMS,
    **rpc_sessions.PARAMS,
    **rpc_trash.PARAMS,
}

RPC_RESULTS: dict[str, Any] = {
    **rpc_projects.RESULTS,
    **rpc_entities.RESULTS,
    **rpc_analytics.RESULTS,
    **rpc_batch.RESULTS,
    **rpc_versions.RESULTS,
    **rpc_sessions.RESULTS,
    **rpc_trash.RESULTS,
}
