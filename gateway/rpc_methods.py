"""Every RPC method the gateway serves, by name (each family lives in its own module)."""

from __future__ import annotations

from gateway import (
    rpc_analytics,
    rpc_batch,
    rpc_entities,
    rpc_projects,
    rpc_sessions,
    rpc_versions,
)
from gateway.rpc import Methods

METHODS: Methods = {
    **rpc_projects.METHODS,
    **rpc_entities.METHODS,
    **rpc_analytics.METHODS,
    **rpc_batch.METHODS,
    **rpc_versions.METHODS,
    **rpc_sessions.METHODS,
}
