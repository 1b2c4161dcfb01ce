"""`RelationCache.insert` (an Insert decoded straight into its row, the replication
feed's usual message) gives what the general path gives: `decode_message`, then
`RelationCache.row` of its new tuple; the same rows, the same refusals."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from db.feed import JsonText
from db.pgoutput import (
    UNCHANGED,
    Column,
    Decoder,
    Insert,
    PgOutputError,
    Relation,
    RelationCache,
    decode_message,
)
from tests.conftest import UserFactory
from tests.test_pgoutput import slot, slot_changes, write_every_table

__all__ = ["slot"]  # the fixture, imported for the tests below

RELATION = Relation(
    16384,
    "public",
    "t",
    "f",
    (
        Column(1, "id", 2950, -1),
        Column(0, "at", 1184, -1),
        Column(0, "data", 3802, -1),
        Column(0, "tags", 1009, -1),
        Column(0, "note", 25, -1),
    ),
)


def general(cache: RelationCache, data: bytes) -> tuple[Relation, dict[str, Any]]:
    message = decode_message(data)
    assert isinstance(message, Insert)
    return cache[message.relation_id], cache.row(message.relation_id, message.new)


# A column as sent: text (bytes), binary (bytearray), NULL, or a kind with no data (str).
Value = bytes | bytearray | None | str


def insert(values: list[Value], relation_id: int = RELATION.relation_id) -> bytes:
    """An Insert message of these column values."""
    out = b"I" + struct.pack(">I", relation_id) + b"N" + struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif isinstance(value, str):
            out += value.encode()
        else:
            kind = b"b" if isinstance(value, bytearray) else b"t"
            out += kind + struct.pack(">I", len(value)) + value
    return out


@pytest.mark.parametrize("json", [None, JsonText])
async def test_every_table_s_inserts_decode_as_the_general_path_decodes_them(
    conn: asyncpg.Connection,
    slot: str,
    make_user: UserFactory,
    json: Callable[[str], str] | None,
) -> None:
    await write_every_table(conn, make_user)
    payloads = [bytes(row["data"]) for row in await slot_changes(conn)]
    cache = RelationCache(json=json)
    decoder = Decoder()
    inserts = 0
    for payload in payloads:
        message = decoder.decode(payload)
        if isinstance(message, Relation):
            cache.add(message)
        elif isinstance(message, Insert):
            relation, row, unchanged = cache.insert(payload)
            assert (relation, row) == general(cache, payload)
            assert not unchanged
            assert [type(value) for value in row.values()] == [
                type(value) for value in general(cache, payload)[1].values()
            ]
            inserts += 1
    assert inserts >= 6


@pytest.mark.parametrize(
    "values",
    [
        [b"00000000-0000-0000-0000-000000000001", None, b'{"a": [1, 2.50]}', b"{x,NULL}", b""],
        [None, b"2026-12-07 06:00:00.5+05:30", None, None, "u"],
        [b"00000000-0000-0000-0000-000000000002", None, None, None, bytearray(b"\x01\x02")],
    ],
)
def test_null_unchanged_and_binary_values_decode_alike(values: list[Value]) -> None:
    cache = RelationCache(json=JsonText)
    cache.add(RELATION)
    data = insert(values)
    relation, row, unchanged = cache.insert(data)
    assert (relation, row) == general(cache, data)
    assert unchanged == (UNCHANGED in row.values())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (insert([None] * 5, relation_id=99), "no Relation message"),
        (insert([None] * 4), "4 values for 5 columns"),
        (insert([b"not a uuid", None, None, None, None]), "t.id"),
        (insert([None, b"yesterday", None, None, None]), "t.at"),
        (insert([None, None, None, None, "z"]), "column kind"),
        (insert([None] * 5)[:-1], "truncated|malformed|index"),
        (insert([None] * 5) + b"\x00", "unexpected bytes"),
        (b"I" + struct.pack(">I", RELATION.relation_id) + b"X", "expected a new tuple"),
        (b"I\x00", "malformed"),
    ],
)
def test_malformed_inserts_are_refused_as_the_general_path_refuses_them(
    data: bytes, match: str
) -> None:
    cache = RelationCache(json=JsonText)
    cache.add(RELATION)
    with pytest.raises(PgOutputError, match=match):
        cache.insert(data)
    with pytest.raises(PgOutputError):
        general(cache, data)
