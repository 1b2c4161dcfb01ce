"""Supabase Realtime's frames, bindings and filters: pure functions, no sockets."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import orjson
import pytest

from protocol import phoenix as phx
from protocol.jsontext import REFUSED_DECODE_BYTES
from protocol.phoenix_changes import (
    COLUMNS,
    BindingError,
    ChangeType,
    FilterLimits,
    binding_id,
    change_data,
    parse_binding,
)

SITEMAP = UUID("6a1f5c1e-1111-4a4a-8888-000000000001")


def test_vsn_defaults_to_1_and_refuses_others() -> None:
    assert phx.parse_vsn(None) is phx.Vsn.V1
    assert phx.parse_vsn("2.0.0") is phx.Vsn.V2
    with pytest.raises(phx.PhoenixError, match=r"unsupported vsn '3\.0\.0'"):
        phx.parse_vsn("3.0.0")


def test_vsn_2_frames_are_arrays_and_vsn_1_frames_objects() -> None:
    v2 = phx.decode_text('["1","2","realtime:a","phx_join",{"x":1}]', phx.Vsn.V2)
    assert v2 == phx.Message("realtime:a", "phx_join", {"x": 1}, "2", "1")
    v1 = phx.decode_text(
        '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}', phx.Vsn.V1
    )
    assert v1 == phx.Message("phoenix", "heartbeat", {}, "3", None)
    reply = phx.reply(v2, "ok", {})
    assert orjson.loads(phx.encode(reply, phx.Vsn.V2)) == [
        "1",
        "2",
        "realtime:a",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]
    assert orjson.loads(phx.encode(reply, phx.Vsn.V1)) == {
        "topic": "realtime:a",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": "2",
        "join_ref": "1",
    }


@pytest.mark.parametrize(
    ("text", "vsn", "problem"),
    [
        ("{nope", phx.Vsn.V2, "not valid JSON"),
        ('{"topic":"a"}', phx.Vsn.V2, r"\[join_ref, ref, topic, event, payload\]"),
        ('["1","2","t"]', phx.Vsn.V2, r"\[join_ref, ref, topic, event, payload\]"),
        ("[1,2,3,4,5]", phx.Vsn.V1, "topic, event, payload"),
        ('[null,null,5,"e",{}]', phx.Vsn.V2, "string topic and event"),
        ('[null,true,"t","e",{}]', phx.Vsn.V2, "ref must be"),
    ],
)
def test_malformed_text_frames_are_typed_errors(text: str, vsn: phx.Vsn, problem: str) -> None:
    with pytest.raises(phx.PhoenixError, match=problem):
        phx.decode_text(text, vsn)


def user_broadcast_push(payload: bytes, encoding: int = 1, meta: bytes = b"") -> bytes:
    parts = [b"1", b"7", b"realtime:room", b"cursor", meta]
    return bytes([3, *(len(p) for p in parts), encoding]) + b"".join(parts) + payload


def test_binary_broadcast_push_decodes_like_a_json_broadcast() -> None:
    message = phx.decode_binary(user_broadcast_push(b'{"x":1}', meta=b'{"persist":true}'))
    assert message == phx.Message(
        "realtime:room",
        "broadcast",
        {"type": "broadcast", "event": "cursor", "payload": {"x": 1}, "meta": {"persist": True}},
        "7",
        "1",
    )
    raw = phx.decode_binary(user_broadcast_push(b"\x00\x01", encoding=0))
    assert raw.payload["payload"] == b"\x00\x01"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\x04\x00", "kind 4"),
        (b"\x03\x01\x01", "shorter than its header"),
        (bytes([3, 5, 0, 0, 0, 0, 1]) + b"ab", "shorter than its header says"),
        (user_broadcast_push(b"{bad"), "not valid JSON"),
        (user_broadcast_push(b"{}", encoding=9), "unknown binary broadcast encoding 9"),
    ],
)
def test_malformed_binary_frames_are_typed_errors(data: bytes, problem: str) -> None:
    with pytest.raises(phx.PhoenixError, match=problem):
        phx.decode_binary(data)


def test_server_broadcast_is_kind_4_as_realtime_js_decodes_it() -> None:
    data = phx.encode_user_broadcast("realtime:room", "cursor", {"x": 1}, {"id": "m"})
    assert data[:5] == bytes([4, len("realtime:room"), len("cursor"), len('{"id":"m"}'), 1])
    assert data[5:] == b'realtime:roomcursor{"id":"m"}{"x":1}'
    assert phx.encode_user_broadcast("t", "e", b"\xff")[4] == 0


def test_join_payload_defaults_and_aliases() -> None:
    payload = phx.parse_payload(
        phx.JoinPayload,
        {"config": {"broadcast": {"self": True}, "presence": {"key": "me"}}, "extra": 1},
        "phx_join",
    )
    assert payload.config.broadcast.self_ is True
    assert payload.config.broadcast.ack is False
    assert payload.config.presence.key == "me"
    assert payload.config.postgres_changes == []
    with pytest.raises(phx.PhoenixError, match=r"bad phx_join payload: config\.postgres_changes"):
        phx.parse_payload(phx.JoinPayload, {"config": {"postgres_changes": 5}}, "phx_join")


def test_system_and_close_messages() -> None:
    system = phx.system(
        "realtime:room", "1", extension="postgres_changes", status="ok", message="m"
    )
    assert system.payload == {
        "extension": "postgres_changes",
        "status": "ok",
        "message": "m",
        "channel": "room",
    }
    close = phx.close("realtime:room", "4")
    assert (close.ref, close.join_ref, close.event) == ("4", "4", "phx_close")


# Bindings and filters


def test_binding_ids_are_numbers_equal_for_equal_bindings() -> None:
    params = {"event": "*", "schema": "public", "table": "wireframes", "filter": "version=eq.1"}
    assert binding_id(params) == binding_id(dict(params))
    assert isinstance(binding_id(params), int)
    assert binding_id(params) != binding_id({**params, "event": "UPDATE"})


def test_filters_compare_values_of_the_column_type() -> None:
    binding = parse_binding(
        {"event": "UPDATE", "schema": "public", "table": "wireframes", "filter": "version=gte.3"}
    )
    assert binding.matches("wireframes", ChangeType.UPDATE, {"version": 10})
    assert not binding.matches("wireframes", ChangeType.UPDATE, {"version": 2})
    assert not binding.matches("wireframes", ChangeType.INSERT, {"version": 10})
    assert not binding.matches("sitemaps", ChangeType.UPDATE, {"version": 10})
    by_id = parse_binding({"table": "wireframes", "filter": f"sitemap_id=eq.{SITEMAP}"})
    assert by_id.matches("wireframes", ChangeType.DELETE, {"sitemap_id": SITEMAP})
    assert not by_id.matches("wireframes", ChangeType.DELETE, {"sitemap_id": None})


@pytest.mark.parametrize(
    ("flt", "row", "holds"),
    [
        ("title=eq.Home", {"title": "Home"}, True),
        ("title=neq.Home", {"title": "Home"}, False),
        ("version=lt.2", {"version": 1}, True),
        ("version=lte.1", {"version": 1}, True),
        ("version=gt.1", {"version": 1}, False),
        ('title=in.(a,"b,c")', {"title": "b,c"}, True),
        ("title=in.(a,b)", {"title": "c"}, False),
        ("version=gt.0,version=lt.3", {"version": 2}, True),
        ("version=gt.0,version=lt.3", {"version": 3}, False),
        (
            "created_at=gt.2026-01-01 00:00:00",
            {"created_at": datetime(2026, 2, 1, tzinfo=UTC)},
            True,
        ),
    ],
)
def test_operators(flt: str, row: dict[str, object], holds: bool) -> None:
    binding = parse_binding(
        {"event": "*", "schema": "public", "table": "wireframes", "filter": flt}
    )
    assert binding.matches("wireframes", ChangeType.INSERT, row) is holds


def test_boolean_filter() -> None:
    binding = parse_binding({"table": "projects", "filter": "is_public=eq.true"})
    assert binding.matches("projects", ChangeType.INSERT, {"is_public": True})
    assert not binding.matches("projects", ChangeType.INSERT, {"is_public": False})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"table": "wireframes", "filter": "title=like.x"},
            'Error parsing `filter` params: ["like", "x"]',
        ),
        (
            {"table": "wireframes", "filter": "undefined"},
            'Error parsing `filter` params: ["undefined"]',
        ),
        ({"table": "wireframes", "filter": "title=eq"}, 'Error parsing `filter` params: ["eq"]'),
        (
            {"table": "wireframes", "filter": "title=in.a,b"},
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
        ),
        (
            {"table": "wireframes", "filter": "nope=eq.1"},
            "Unable to subscribe to changes with given parameters. "
            "Exception: invalid column for filter nope",
        ),
        (
            {"table": "wireframes", "filter": "sitemap_id=eq.12"},
            "Unable to subscribe to changes with given parameters. "
            'Exception: invalid input syntax for type uuid: "12"',
        ),
        (
            {"table": "wireframes", "filter": "layout=eq.{}"},
            "Unable to subscribe to changes with given parameters. "
            "Exception: filters on columns of type jsonb are not supported",
        ),
        (
            {"event": "*", "schema": "public", "table": "nope"},
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            "enabled for the given connect parameters: [event: *, schema: public, "
            "table: nope, filters: [], select: nil]",
        ),
        ({"table": 5}, 'bad postgres_changes binding: {"table":5}'),
    ],
)
def test_bindings_refused_in_supabases_words(params: dict[str, object], message: str) -> None:
    with pytest.raises(BindingError) as error:
        parse_binding(params)  # type: ignore[arg-type]
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("flt", "values"),
    [
        ('title=in.(a,"b,c",d)', ("a", "b,c", "d")),
        (r'title=in.("say \"hi\"",x)', ('say "hi"', "x")),
        ('title=in.("a)b",c)', ("a)b", "c")),
        ("title=in.(a,)", ("a", "")),
        ("title=in.()", ("",)),
        ('title=eq."a,b"', ("a,b",)),
        ('title=eq."unclosed,x', ('"unclosed,x',)),  # an unclosed quote: the rest, as is
        ('title=eq.a"b,c"d', ('a"b,c"d',)),
    ],
)
def test_filter_values_split_on_commas_outside_quotes(flt: str, values: tuple[str, ...]) -> None:
    (condition,) = parse_binding({"table": "wireframes", "filter": flt}).conditions
    assert condition.values == values


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("version=gt.1,version=gt.2,version=gt.3", "more than 2 conditions"),
        ("title=in.(a,b,c,d)", "`in` filter of 4 values is over the limit of 3"),
        ('title=in.("a","b","c",d)', "`in` filter of 4 values is over the limit of 3"),
        ("title=in.(" + "," * 4000 + ")", "`in` filter of 4001 values is over the limit of 3"),
    ],
)
def test_filters_are_refused_past_their_limits_before_being_read_further(
    flt: str, message: str
) -> None:
    """Splitting stops at the first condition or quoted value too many (unquoted values
    are counted before they are split): a filter costs the limits, not its length."""
    limits = FilterLimits(max_chars=8192, max_conditions=2, max_in_values=3)
    with pytest.raises(BindingError, match=message.replace("(", r"\(")):
        parse_binding({"table": "wireframes", "filter": flt}, limits)


def test_an_in_list_is_matched_as_a_set_of_the_columns_values() -> None:
    ids = [UUID(int=n) for n in range(100)]
    flt = f"sitemap_id=in.({','.join(map(str, ids))})"
    binding = parse_binding({"table": "wireframes", "filter": flt})
    assert binding.matches("wireframes", ChangeType.INSERT, {"sitemap_id": ids[99]})
    assert not binding.matches("wireframes", ChangeType.INSERT, {"sitemap_id": UUID(int=100)})
    number = parse_binding({"table": "wireframes", "filter": "version=in.(1,2,3)"})
    assert number.matches("wireframes", ChangeType.INSERT, {"version": 3})
    assert not number.matches("wireframes", ChangeType.INSERT, {"version": [3]})


def test_a_binding_without_table_covers_every_table_and_unknown_events_mean_all() -> None:
    binding = parse_binding({"event": "whatever", "schema": "public"})
    assert binding.tables == frozenset(COLUMNS)
    assert binding.types == frozenset(ChangeType)


def test_change_data_has_record_and_old_record_as_supabase_sends_them() -> None:
    moment = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    row = {"id": "x", "version": 1}
    insert = change_data("wireframes", ChangeType.INSERT, row, None, moment, "p")
    assert insert["record"] == row
    assert "old_record" not in insert
    assert insert["commit_timestamp"] == "2026-11-25T19:00:00Z"
    assert insert["errors"] is None
    assert insert["columns"][0] == {"name": "id", "type": "uuid"}
    delete = change_data("wireframes", ChangeType.DELETE, None, row, moment, "p")
    assert "record" not in delete
    assert delete["old_record"] == row
    update = change_data("wireframes", ChangeType.UPDATE, row, row, moment, "p")
    assert update["record"] == update["old_record"] == row


@pytest.mark.parametrize("vsn", [phx.Vsn.V1, phx.Vsn.V2])
def test_a_refused_frames_envelope_is_read_from_its_ends_when_large(vsn: phx.Vsn) -> None:
    body = {"type": "broadcast", "event": "e", "payload": {"x": "y" * 200_000}}
    message = phx.Message("realtime:room", "broadcast", body, "7", "3")
    large = phx.encode(message, vsn)
    assert len(large) > REFUSED_DECODE_BYTES
    found = phx.refused_envelope(large.decode(), vsn)
    assert found == phx.Message("realtime:room", "broadcast", {}, "7", "3")
    cut = large[: REFUSED_DECODE_BYTES + 10].decode()  # not JSON: the head still is
    head = phx.refused_envelope(cut, vsn)
    assert head is not None
    assert head.topic == "realtime:room"
    assert phx.refused_envelope("[" * 100_000, vsn) is None
