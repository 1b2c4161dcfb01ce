"""JSON Schema of every frame, exported from the models (`sitebuilder-gateway schema`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from protocol.frames import ClientMessage, ServerMessage
from protocol.rpc_catalog import RPC_PARAMS, RPC_RESULTS


def protocol_json_schema() -> dict[str, Any]:
    """One document: `client` frames (what a client may send), `server` frames, under
    `rpc` the params of every RPC method, by method name, and under `rpc_results` the
    `data` of its `result` frame."""
    client = TypeAdapter(ClientMessage).json_schema(ref_template="#/$defs/{model}")
    server = TypeAdapter(ServerMessage).json_schema(ref_template="#/$defs/{model}")
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    rpc = {}
    for method, params in sorted(RPC_PARAMS.items()):
        schema = params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        rpc[method] = schema
    results = {}
    for method, result in sorted(RPC_RESULTS.items()):
        schema = TypeAdapter(result).json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        if isinstance(result, type) and issubclass(result, BaseModel):
            defs[result.__name__] = schema  # named, as the frames' rows are
            schema = {"$ref": f"#/$defs/{result.__name__}"}
        results[method] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sitebuilder-realtime websocket protocol",
        "rpc": rpc,
        "rpc_results": results,
        "$defs": {**defs, "ClientFrame": client, "ServerFrame": server},
        "oneOf": [{"$ref": "#/$defs/ClientFrame"}, {"$ref": "#/$defs/ServerFrame"}],
    }
