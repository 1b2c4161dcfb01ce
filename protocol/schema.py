"""JSON Schema of every frame, exported from the models (`sitebuilder-gateway schema`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from protocol.frames import ClientMessage, ServerMessage


def protocol_json_schema() -> dict[str, Any]:
    """One document: `client` frames (what a client may send) and `server` frames."""
    client = TypeAdapter(ClientMessage).json_schema(ref_template="#/$defs/{model}")
    server = TypeAdapter(ServerMessage).json_schema(ref_template="#/$defs/{model}")
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sitebuilder-realtime websocket protocol",
        "$defs": {**defs, "ClientFrame": client, "ServerFrame": server},
        "oneOf": [{"$ref": "#/$defs/ClientFrame"}, {"$ref": "#/$defs/ServerFrame"}],
    }
