"""Every RPC method's params model, by method name, for the JSON Schema export."""

from __future__ import annotations

from pydantic import BaseModel

from protocol import (
    rpc_analytics,
    rpc_batch,
    rpc_entities,
    rpc_projects,
    rpc_sessions,
    rpc_versions,
)

RPC_PARAMS: dict[str, type[BaseModel]] = {
    **rpc_projects.PARAMS,
    **rpc_entities.PARAMS,
    **rpc_analytics.PARAMS,
    **rpc_batch.PARAMS,
    **rpc_versions.PARAMS,
    **rpc_sessions.PARAMS,
}
