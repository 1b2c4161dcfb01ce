"""JSON Schema of every frame, exported from the models (`sitebuilder-gateway schema`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from protocol.frames import ClientMessage, ServerMessage
from protocol.rpc_catalog import RPC_PARAMS


def protocol_json_schema() -> dict[str, Any]:
    """One document: `client` frames (what a client may send), `server` frames, and
    under `rpc` the params of every RPC method, by method name."""
    client = TypeAdapter(ClientMessage).json_schema(ref_template="#/$defs/{model}")
    server = TypeAdapter(ServerMessage).json_schema(ref_template="#/$defs/{model}")
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    rpc = {}
    for method, params in sorted(RPC_PARAMS.items()):
        schema = params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        rpc[method] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sitebuilder-realtime websocket protocol",
        "rpc": rpc,
        "$defs": {**defs, "ClientFrame": client, "ServerFrame": server},
        "oneOf": [{"$ref": "#/$defs/ClientFrame"}, {"$ref": "#/$defs/ServerFrame"}],
    }
