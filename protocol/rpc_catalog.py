"""Every RPC method's params model, by method name, for the JSON Schema export."""

from __future__ import annotations

from pydantic import BaseModel

from protocol import rpc_projects

RPC_PARAMS: dict[str, type[BaseModel]] = {
    **rpc_projects.PARAMS,
}
