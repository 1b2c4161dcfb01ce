"""Every RPC method the gateway serves, by name (each family lives in its own module)."""

from __future__ import annotations

from gateway import rpc_projects
from gateway.rpc import Methods

METHODS: Methods = {
    **rpc_projects.METHODS,
}
