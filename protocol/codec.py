"""Bytes ↔ frames. Pure functions: no sockets, no clock, no database."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import ValidationError

from protocol import jsontext
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import CLIENT_FRAMES, ClientFrame, Frame
from protocol.jsontext import DEFAULT_MAX_DEPTH, REFUSED_DECODE_BYTES


def decode_client_frame(data: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> ClientFrame:
    """Parse one client frame, or raise ProtocolError naming what is wrong with it."""
    try:
        obj: Any = jsontext.loads(data, max_depth)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(ErrorCode.BAD_JSON, f"frame is not valid JSON: {error}") from None
    except jsontext.TooDeep as error:
        ref = _ref_of(error.value) if isinstance(error.value, dict) else None
        raise ProtocolError(ErrorCode.BAD_JSON, f"frame refused: {error}", ref) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame must be a JSON object")
    ref = _ref_of(obj)
    frame_type = obj.get("type")
    if not isinstance(frame_type, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame needs a string `type`", ref)
    model = CLIENT_FRAMES.get(frame_type)
    if model is None:
        known = ", ".join(sorted(CLIENT_FRAMES))
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame_type!r}; known: {known}", ref
        )
    try:
        return model.model_validate(obj)
    except ValidationError as error:
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"bad {frame_type!r} frame: {_describe(error)}", ref
        ) from None


_REF = re.compile(rb'"ref"\s*:\s*("(?:[^"\\]|\\.)*+"|-?\d{1,18})')


def refused_frame_ref(data: str | bytes) -> str | int | None:
    """The `ref` of a frame refused unprocessed (rate limit), so the client knows which:
    decoded when small, otherwise found in its first or last kilobyte, so refusing
    costs the same whatever the frame holds."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > REFUSED_DECODE_BYTES:
        found = _REF.search(raw[:1024]) or _REF.search(raw[-1024:])
        try:
            return _ref_of({"ref": orjson.loads(found.group(1))}) if found else None
        except orjson.JSONDecodeError:
            return None
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _ref_of(obj) if isinstance(obj, dict) else None


def _ref_of(obj: dict[str, Any]) -> str | int | None:
    ref = obj.get("ref")
    if not isinstance(ref, str | int) or isinstance(ref, bool):
        return None
    return ref


def _describe(error: ValidationError) -> str:
    """One line per problem, `field: what is wrong`, without pydantic's URLs."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "frame"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def encode_frame(frame: Frame) -> bytes:
    """UTF-8 JSON of a frame, sent as a text websocket message."""
    return frame.model_dump_json().encode()
