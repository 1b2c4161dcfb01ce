"""The wire protocol as pure functions: what clients may send, what they receive.

No sockets and no database: these pin the JSON contract that browser clients code
against, so a model change that breaks it fails here first.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from protocol.codec import decode_client_frame, encode_frame, refused_frame_ref
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import (
    CHANGE_FRAMES,
    CLIENT_FRAMES,
    Access,
    Auth,
    AuthRefresh,
    ClientFrame,
    Closing,
    Error,
    Frame,
    Ok,
    Op,
    Ping,
    PresenceUpdate,
    ProjectChange,
    ProjectListSnapshot,
    Reset,
    ResetReason,
    Result,
    Rpc,
    Snapshot,
    Subscribe,
    SubscribeProjects,
    Unsubscribe,
    Unsubscribed,
    UnsubscribedReason,
    UnsubscribeProjects,
)
from protocol.rows import (
    ProjectRow,
    SessionRow,
    SitemapRow,
    StyleGuideRow,
    VersionRow,
    WireframeRow,
)
from protocol.rpc_catalog import RPC_PARAMS
from protocol.schema import protocol_json_schema

PROJECT_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
USER_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
SITEMAP_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
WIREFRAME_ID = uuid.UUID("44444444-4444-4444-8444-444444444444")
STYLE_ID = uuid.UUID("55555555-5555-4555-8555-555555555555")
SESSION_ID = uuid.UUID("66666666-6666-4666-8666-666666666666")
VERSION_ID = uuid.UUID("77777777-7777-4777-8777-777777777777")
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def decode(obj: Any) -> ClientFrame:
    return decode_client_frame(orjson.dumps(obj))


def refused(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(data)
    return info.value


# Decoding: valid frames


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "auth", "token": "t.o.k"}, Auth(token="t.o.k")),
        ({"type": "auth.refresh", "token": "abc"}, AuthRefresh(token="abc")),
        (
            {"type": "subscribe", "project_id": str(PROJECT_ID)},
            Subscribe(project_id=PROJECT_ID, snapshot=True),
        ),
        (
            {"type": "subscribe", "project_id": str(PROJECT_ID), "snapshot": False},
            Subscribe(project_id=PROJECT_ID, snapshot=False),
        ),
        (
            {"type": "unsubscribe", "project_id": str(PROJECT_ID)},
            Unsubscribe(project_id=PROJECT_ID),
        ),
        ({"type": "ping"}, Ping()),
        ({"type": "subscribe_projects", "ref": 4}, SubscribeProjects(ref=4)),
        ({"type": "unsubscribe_projects"}, UnsubscribeProjects()),
        (
            {
                "type": "subscribe",
                "project_id": str(PROJECT_ID),
                "since": "n1/0000000000000001.000001",
            },
            Subscribe(project_id=PROJECT_ID, since="n1/0000000000000001.000001"),
        ),
        (
            {"type": "rpc", "method": "project.create", "params": {"name": "A", "tags": [1]}},
            Rpc(method="project.create", params={"name": "A", "tags": [1]}),
        ),
        (
            {"type": "presence.update", "project_id": str(PROJECT_ID), "meta": {"page": "home"}},
            PresenceUpdate(project_id=PROJECT_ID, meta={"page": "home"}),
        ),
    ],
    ids=[
        "auth",
        "auth.refresh",
        "subscribe",
        "subscribe-no-snapshot",
        "unsubscribe",
        "ping",
        "subscribe_projects",
        "unsubscribe_projects",
        "subscribe-since",
        "rpc",
        "presence.update",
    ],
)
def test_decodes_every_client_frame(obj: dict[str, Any], expected: ClientFrame) -> None:
    assert decode(obj) == expected


def test_every_client_frame_type_is_covered() -> None:
    """The parametrized cases above cover the whole table of client frames."""
    assert set(CLIENT_FRAMES) == {
        "auth",
        "auth.refresh",
        "subscribe",
        "unsubscribe",
        "subscribe_projects",
        "unsubscribe_projects",
        "ping",
        "rpc",
        "presence.update",
    }


@pytest.mark.parametrize("ref", ["abc", 7, 0, ""])
def test_ref_is_kept_as_sent(ref: str | int) -> None:
    """Replies echo the ref, so its value and JSON type must survive decoding."""
    frame = decode({"type": "ping", "ref": ref})
    assert frame.ref == ref
    assert type(frame.ref) is type(ref)


def test_decodes_str_and_bytes_alike() -> None:
    text = '{"type":"ping","ref":"x"}'
    assert decode_client_frame(text) == decode_client_frame(text.encode())


def test_unknown_fields_are_ignored() -> None:
    """Newer clients may send fields this server does not know yet."""
    frame = decode(
        {"type": "subscribe", "project_id": str(PROJECT_ID), "resume_token": "x", "extra": {"a": 1}}
    )
    assert frame == Subscribe(project_id=PROJECT_ID)
    assert "resume_token" not in frame.model_dump()


# Decoding: refused frames


@pytest.mark.parametrize("data", ["{", "not json", '{"type": "ping",}', b"\xff\xfe", ""])
def test_bad_json(data: str | bytes) -> None:
    error = refused(data)
    assert error.code == ErrorCode.BAD_JSON
    assert error.ref is None


@pytest.mark.parametrize("data", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
def test_non_object_is_bad_frame(data: str) -> None:
    assert refused(data).code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    ("obj", "ref"),
    [({}, None), ({"ref": "a"}, "a"), ({"type": None, "ref": 3}, 3), ({"type": 5}, None)],
)
def test_missing_or_non_string_type_is_bad_frame(obj: dict[str, Any], ref: str | None) -> None:
    error = refused(orjson.dumps(obj))
    assert error.code == ErrorCode.BAD_FRAME
    assert error.ref == ref
    assert "type" in error.message


@pytest.mark.parametrize("ref", ["q1", 12, None])
def test_unknown_type_echoes_ref(ref: str | int | None) -> None:
    obj: dict[str, Any] = {"type": "publish"}
    if ref is not None:
        obj["ref"] = ref
    error = refused(orjson.dumps(obj))
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert error.ref == ref
    assert "publish" in error.message


@pytest.mark.parametrize(
    ("data", "ref"),
    [
        (b'{"type": "ping", "ref": "p"}', "p"),
        (b'{"type": "subscribe", "ref": 7, "project_id": 1}', 7),
        (b'{"type": "ping", "ref": true}', None),
        (b'["ping"]', None),
        (b"{oops", None),
        # past 64 KiB, not decoded: the ref is read from the frame's ends
        (b'{"type": "rpc", "ref": "r1", "params": "' + b"x" * 100_000 + b'"}', "r1"),
        (b'{"type": "rpc", "params": "' + b"x" * 100_000 + b'", "ref": 9}', 9),
        (b'{"type": "rpc", "params": "' + b"x" * 100_000 + b'"}', None),
    ],
)
def test_refused_frame_ref(data: bytes, ref: str | int | None) -> None:
    """A frame dropped unprocessed is still named by its ref when it has a valid one."""
    assert refused_frame_ref(data) == ref


@pytest.mark.parametrize("ref", [True, 1.5, [1], {"a": 1}])
def test_ref_of_wrong_type_is_not_echoed(ref: Any) -> None:
    """Only strings and integers are refs; anything else is not echoed back."""
    error = refused(orjson.dumps({"type": "nope", "ref": ref}))
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert error.ref is None


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "subscribe", "project_id": "not-a-uuid"}, "project_id"),
        ({"type": "subscribe", "project_id": 17}, "project_id"),
        ({"type": "subscribe"}, "project_id"),
        ({"type": "subscribe", "project_id": str(PROJECT_ID), "snapshot": "maybe"}, "snapshot"),
        ({"type": "subscribe", "project_id": str(PROJECT_ID), "snapshot": [True]}, "snapshot"),
        ({"type": "unsubscribe", "project_id": "x"}, "project_id"),
        ({"type": "auth", "token": ""}, "token"),
        ({"type": "auth"}, "token"),
        ({"type": "auth", "token": 123}, "token"),
        ({"type": "auth.refresh", "token": ""}, "token"),
    ],
)
def test_wrong_field_is_bad_frame_naming_it(obj: dict[str, Any], field: str) -> None:
    error = refused(orjson.dumps({**obj, "ref": "r9"}))
    assert error.code == ErrorCode.BAD_FRAME
    assert error.ref == "r9"
    assert field in error.message
    assert "https://" not in error.message  # pydantic's help URLs are not for clients


def test_protocol_error_is_an_exception_with_code() -> None:
    error = ProtocolError(ErrorCode.BAD_FRAME, "nope", "r")
    assert str(error) == "nope"
    assert (error.code, error.message, error.ref) == (ErrorCode.BAD_FRAME, "nope", "r")


# Rows


def project_row() -> ProjectRow:
    return ProjectRow(
        id=PROJECT_ID,
        created_at=WHEN,
        updated_at=WHEN,
        user_id=USER_ID,
        name="Site",
        type="website",
        status="draft",
        data={"pages": [1, 2]},
        settings={},
        collaborators=[USER_ID],
        is_public=False,
    )


def sitemap_row() -> SitemapRow:
    return SitemapRow(id=SITEMAP_ID, project_id=PROJECT_ID, title="Map", version=1)


def wireframe_row() -> WireframeRow:
    return WireframeRow(
        id=WIREFRAME_ID, sitemap_id=SITEMAP_ID, title="Frame", components=["a"], version=2
    )


def style_guide_row() -> StyleGuideRow:
    return StyleGuideRow(
        id=STYLE_ID, wireframe_id=WIREFRAME_ID, title="Style", colors={"x": "#fff"}, version=3
    )


def session_row() -> SessionRow:
    return SessionRow.model_validate(
        {
            "id": str(SESSION_ID),
            "user_id": str(USER_ID),
            "project_id": str(PROJECT_ID),
            "session_token": "owner-secret",
            "status": "active",
            "current_step": "initializing",
            "started_at": WHEN.isoformat(),
        }
    )


def version_row() -> VersionRow:
    return VersionRow(
        id=VERSION_ID,
        entity_type="projects",
        entity_id=PROJECT_ID,
        version_number=1,
        user_id=USER_ID,
    )


def test_session_row_drops_session_token() -> None:
    """The token resumes the owner's session; collaborators must never receive it."""
    row = session_row()
    assert "session_token" not in row.model_dump()
    assert b"owner-secret" not in row.model_dump_json().encode()
    snapshot = Snapshot(
        project_id=PROJECT_ID,
        access=Access.READ_ONLY,
        position="n19ab5e2f1c0/0000000000000001.000000",
        project=project_row(),
        sitemaps=[],
        wireframes=[],
        style_guides=[],
        sessions=[row],
    )
    assert b"owner-secret" not in encode_frame(snapshot)
    assert b"session_token" not in encode_frame(snapshot)


def test_other_rows_pass_unknown_columns_through() -> None:
    """A column added by a later migration reaches clients instead of breaking delivery."""
    row = SitemapRow.model_validate({**sitemap_row().model_dump(), "new_column": 1})
    assert orjson.loads(row.model_dump_json())["new_column"] == 1


@pytest.mark.parametrize(
    "value",
    [
        WHEN,
        "2024-05-06T07:08:09.123456+00:00",
        "2024-05-06T07:08:09.123456Z",
        datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_timestamps_serialize_as_iso_8601(value: datetime | str) -> None:
    row = ProjectRow.model_validate({**project_row().model_dump(), "created_at": value})
    text = orjson.loads(row.model_dump_json())["created_at"]
    assert isinstance(text, str)
    assert "T" in text
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None
    assert parsed == WHEN


def test_uuids_serialize_as_strings() -> None:
    out = orjson.loads(project_row().model_dump_json())
    assert out["id"] == str(PROJECT_ID)
    assert out["collaborators"] == [str(USER_ID)]


# Encoding server frames


def change_frame(entity: str) -> Frame:
    rows = {
        "project": project_row(),
        "sitemap": sitemap_row(),
        "wireframe": wireframe_row(),
        "style-guide": style_guide_row(),
        "session": session_row(),
        "version": version_row(),
    }
    return CHANGE_FRAMES[entity](
        project_id=PROJECT_ID,
        op=Op.UPDATE,
        new=rows[entity],
        old=rows[entity],
        actor=USER_ID,
        committed_at=WHEN,
        position="r6f1c2a9b3d4e5f60/0000000001a2b3c4.000001",
    )


SERVER_FRAMES: list[Frame] = [
    Ok(ref="r1", data={"user_id": str(USER_ID)}),
    Result(ref=7, data={"id": str(PROJECT_ID), "name": "Bakery", "tags": ["a", 1, None]}),
    Error(
        ref=8,
        code=ErrorCode.CONFLICT,
        message="stale",
        details={"current": {"version": 3}},
    ),
    Ok(ref=3),
    Error(code=ErrorCode.RATE_LIMITED, message="slow down", retry_after_ms=250),
    Error(code=ErrorCode.BAD_FRAME, message="bad", ref="r2"),
    Snapshot(
        project_id=PROJECT_ID,
        access=Access.READ_WRITE,
        position="r6f1c2a9b3d4e5f60/0000000001a2b3c4.000000",
        project=project_row(),
        sitemaps=[sitemap_row()],
        wireframes=[wireframe_row()],
        style_guides=[style_guide_row()],
        sessions=[session_row()],
    ),
    *(change_frame(entity) for entity in CHANGE_FRAMES),
    ProjectListSnapshot(projects=[project_row()]),
    ProjectListSnapshot(projects=[], reset=ResetReason.TRUNCATED),
    Unsubscribed(
        project_id=PROJECT_ID, reason=UnsubscribedReason.ACCESS_REVOKED, message="revoked"
    ),
    *(Reset(project_id=PROJECT_ID, reason=reason, message="why") for reason in ResetReason),
    Closing(reason="restart", reconnect_after_ms=1000),
]


@pytest.mark.parametrize(
    "frame",
    SERVER_FRAMES,
    ids=lambda f: f"{f.type}-{getattr(f, 'entity', '')}",  # type: ignore[attr-defined]
)
def test_encode_frame_is_json_with_type_and_round_trips(frame: Frame) -> None:
    data = encode_frame(frame)
    assert isinstance(data, bytes)
    obj = json.loads(data.decode("utf-8"))  # the stdlib parser: strict JSON, not orjson's
    assert isinstance(obj, dict)
    assert obj["type"] == type(frame).model_fields["type"].default
    assert type(frame).model_validate_json(data) == frame


def test_change_frames_carry_entity_op_and_rows() -> None:
    for entity in CHANGE_FRAMES:
        obj = orjson.loads(encode_frame(change_frame(entity)))
        assert obj["type"] == "change"
        assert obj["entity"] == entity
        assert obj["op"] == "update"
        assert obj["project_id"] == str(PROJECT_ID)
        assert obj["new"]["id"] == obj["old"]["id"]
        assert datetime.fromisoformat(obj["committed_at"].replace("Z", "+00:00")) == WHEN


def test_project_changes_say_whether_they_are_of_the_project_list() -> None:
    """Per-project changes carry `list: false`; those of `subscribe_projects` `true`."""
    assert orjson.loads(encode_frame(change_frame("project")))["list"] is False
    listed = ProjectChange(
        project_id=PROJECT_ID,
        op=Op.DELETE,
        new=None,
        old=project_row(),
        actor=None,
        committed_at=WHEN,
        position="n1/0000000000000002.000001",
        list=True,
    )
    obj = orjson.loads(encode_frame(listed))
    assert (obj["type"], obj["entity"], obj["op"], obj["list"]) == (
        "change",
        "project",
        "delete",
        True,
    )
    for entity in set(CHANGE_FRAMES) - {"project"}:
        assert "list" not in orjson.loads(encode_frame(change_frame(entity)))


def test_project_list_encodes_rows_and_reset() -> None:
    obj = orjson.loads(encode_frame(ProjectListSnapshot(projects=[project_row()])))
    assert obj == {"type": "project_list", "projects": [obj["projects"][0]], "reset": None}
    assert obj["projects"][0]["id"] == str(PROJECT_ID)
    again = ProjectListSnapshot(projects=[], reset=ResetReason.FEED_INTERRUPTED)
    assert orjson.loads(encode_frame(again))["reset"] == "feed_interrupted"


def test_snapshot_encodes_rows() -> None:
    obj = orjson.loads(encode_frame(SERVER_FRAMES[6]))
    assert obj["access"] == "read_write"
    assert obj["project"]["id"] == str(PROJECT_ID)
    assert [s["id"] for s in obj["sitemaps"]] == [str(SITEMAP_ID)]
    assert [w["id"] for w in obj["wireframes"]] == [str(WIREFRAME_ID)]
    assert [g["id"] for g in obj["style_guides"]] == [str(STYLE_ID)]
    assert [s["id"] for s in obj["sessions"]] == [str(SESSION_ID)]


def test_error_frame_encodes_code_as_its_name() -> None:
    obj = orjson.loads(encode_frame(Error(code=ErrorCode.INTERNAL, message="x")))
    assert obj["code"] == "internal_error"
    assert obj["ref"] is None


# JSON Schema


def test_schema_names_every_frame_type() -> None:
    schema = protocol_json_schema()
    text = json.dumps(schema)
    for frame_type in [*CLIENT_FRAMES, "ok", "error", "snapshot", "change", "unsubscribed"]:
        assert f'"{frame_type}"' in text, frame_type
    for frame_type in ["reset", "closing", *CHANGE_FRAMES]:
        assert f'"{frame_type}"' in text, frame_type
    assert {"ClientFrame", "ServerFrame"} <= set(schema["$defs"])


def test_schema_discriminates_client_and_server_frames_by_type() -> None:
    defs = protocol_json_schema()["$defs"]
    client_types = set(defs["ClientFrame"]["discriminator"]["mapping"])
    server_types = set(defs["ServerFrame"]["discriminator"]["mapping"])
    assert client_types == set(CLIENT_FRAMES)
    assert server_types == {
        "ok",
        "error",
        "result",
        "snapshot",
        "change",
        "delta",
        "project_list",
        "unsubscribed",
        "reset",
        "closing",
        "presence.state",
        "presence.diff",
    }


def test_schema_has_the_params_of_every_rpc_method() -> None:
    rpc = protocol_json_schema()["rpc"]
    assert set(rpc) == set(RPC_PARAMS)
    assert rpc["project.create"]["required"] == ["name"]


def test_schema_refs_resolve() -> None:
    """Every `$ref` points into `$defs`, so the document stands alone."""
    schema = protocol_json_schema()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref
