"""Generators and checks for fuzzing both protocols (`bench fuzz`, tests/test_fuzz.py).

Hypothesis strategies that draw whole client sessions, each already rendered to the
exact messages sent on the wire (so a failing example prints as its reproduction):

- native (`/`): `auth` with good and bad tokens, then valid frames with mutated fields,
  wrong types, unknown types, odd refs, huge or deeply nested JSON, RPC frames with
  method names real and random and params built from each method's params model
  (protocol.rpc_catalog.RPC_PARAMS, through its JSON Schema) and then mutated;
- Supabase (`/realtime/v1/websocket`): an `apikey` and `vsn`, then vsn 1.0.0 objects or
  2.0.0 arrays (and binary kind 3 broadcasts) on random and real topics
  (`realtime:project:<odd spellings>`), joins with random and mutated
  `postgres_changes` bindings and filters, presence track/untrack, broadcasts,
  `access_token` events and heartbeats.

And what every answer must be: a frame the protocol documents (`native_problem`,
`phoenix_problem`) and a close code it documents (`close_problem`). The live runner is
loadtest.fuzz_run.
"""

from __future__ import annotations

import functools
import struct
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import jwt
import orjson
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from protocol import phoenix as phx
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import CLIENT_FRAMES, ServerMessage
from protocol.phoenix_changes import COLUMNS, ChangeType
from protocol.rpc_catalog import RPC_PARAMS

# What the generators know of the gateway under test


@dataclass(frozen=True)
class Known:
    """Ids and keys worth trying: the fuzzing sessions sign in as `user`, who owns some
    of `projects`, collaborates on some and may not read the rest."""

    secret: str
    audience: str
    user: UUID  # whom the fuzz sessions sign in as
    other_user: UUID  # another real user (auth.refresh with their token: user_mismatch)
    projects: tuple[UUID, ...]
    ids: tuple[UUID, ...]  # sitemaps, wireframes…: any row id worth naming
    room: str  # a channel name (no project) where a listener waits for broadcasts
    max_frame_bytes: int = 1_048_576
    # Positions of changes the gateway gave out (to resume from, with `since`).
    positions: tuple[str, ...] = ()


# What is sent


@dataclass(frozen=True)
class Big:
    """A message too large to print: `head`, `filler` times `count`, `tail`."""

    head: str
    filler: str
    count: int
    tail: str = ""
    binary: bool = False

    def render(self) -> str | bytes:
        text = self.head + self.filler * self.count + self.tail
        return text.encode() if self.binary else text

    def size(self) -> int:
        return (
            len(self.head.encode())
            + len(self.filler.encode()) * self.count
            + len(self.tail.encode())
        )

    def __repr__(self) -> str:
        return f"Big({self.head!r} + {self.filler!r} * {self.count} + {self.tail!r})"


Wire = str | bytes | Big


def wire_bytes(message: Wire) -> str | bytes:
    return message.render() if isinstance(message, Big) else message


def wire_size(message: Wire) -> int:
    if isinstance(message, Big):
        return message.size()
    return len(message.encode() if isinstance(message, str) else message)


@dataclass(frozen=True)
class NativeSession:
    """One connection to `/`: these messages in order."""

    frames: tuple[Wire, ...]


@dataclass(frozen=True)
class PhoenixSession:
    """One connection to `/realtime/v1/websocket?apikey=…&vsn=…` (None: left out)."""

    apikey: str | None
    vsn: str | None
    frames: tuple[Wire, ...]


Session = NativeSession | PhoenixSession


class Raw:
    """JSON text put into a message as it is (deep nesting, numbers beyond 64 bits…),
    where orjson would refuse to write the value itself. (Not a dataclass: orjson
    would write those itself.)"""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 80 else f"{self.text[:40]}…{self.text[-20:]}"
        return f"Raw({shown!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Raw) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=_raw).decode()


def _raw(value: object) -> orjson.Fragment:
    if isinstance(value, Raw):
        return orjson.Fragment(value.text)
    raise TypeError(type(value).__name__)


# JSON


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about `weight` times in the total (one_of would
    draw each about as often as any other; shrinking goes towards the first)."""
    return _weighted(tuple(strategy for weight, strategy in choices for _ in range(weight)))


@st.composite
def _weighted(draw: st.DrawFn, table: tuple[st.SearchStrategy[Any], ...]) -> Any:
    # Not integers().flatmap(table.__getitem__): that strategy's label would carry the
    # method's address, and hypothesis's choices would differ from run to run.
    return draw(table[draw(st.integers(min_value=0, max_value=len(table) - 1))])


ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\u2028",
        "\ud7ff",
        "💥",
        "e\u0301",
        "NaN",
        "null",
        "__proto__",
        "constructor",
        "../../etc/passwd",
        "'; DROP TABLE projects; --",
        "%s%s%n",
        "${jndi:ldap://x}",
        "\\",
        '"',
        "\r\n",
    ]
)
TEXT = weighted((4, st.text(max_size=24)), (1, ODD_TEXT))
# Nesting depths worth trying: orjson reads up to 1024 levels but writes only up to 254,
# pydantic validates Python values up to about 255 levels and reads JSON text up to 200:
# a value nested between those inside a frame is read and validated, then cannot be
# written again, or read back from the database.
DEPTHS = [2, 32, *range(196, 204), *range(244, 260), 300, 1000, 1022, 1023, 1024, 1025]
RAW_NUMBERS = [
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "0.0000000000000000000000000001",
]


def deep(depth: int, kind: str) -> Raw:
    """`depth` nested arrays or objects (orjson reads up to 1024, writes up to 254)."""
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


RAW_JSON = st.one_of(
    st.builds(deep, st.sampled_from(DEPTHS), st.sampled_from(["list", "object"])),
    st.sampled_from(RAW_NUMBERS).map(Raw),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)


@functools.cache
def json_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """Any JSON value, sometimes with a deep or out-of-range part."""
    leaves = weighted((10, SCALARS), (1, RAW_JSON))
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
        max_leaves=max_leaves,
    )


@functools.cache
def json_objects(max_leaves: int = 10) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(TEXT, json_values(max_leaves), max_size=5)


@functools.cache
def big_strings(limit: int) -> st.SearchStrategy[Raw]:
    """A JSON string of about `limit` characters (around a size limit)."""
    return st.integers(min_value=max(0, limit - 64), max_value=limit + 64).map(
        lambda n: Raw('"' + "x" * n + '"')
    )


MUTATIONS = {
    # How many mutations an object gets: `often` for a frame's own fields (the refusals
    # are what is tested), `seldom` inside (so that the rest of the frame is reached).
    "often": (0, 0, 0, 0, 0, 1, 1, 2, 3),
    "seldom": (0,) * 12 + (1, 1, 2),
    "rare": (0,) * 30 + (1, 2),
}


@st.composite
def mutated(
    draw: st.DrawFn, obj: dict[str, Any], keys: Sequence[str] = (), how: str = "seldom"
) -> dict[str, Any]:
    """`obj` as it is (mostly), or with keys dropped, given values of the wrong type,
    or unknown keys added."""
    result = dict(obj)
    for _ in range(draw(st.sampled_from(MUTATIONS[how]))):
        names = sorted(result) or ["type"]
        action = draw(st.sampled_from(["drop", "retype", "retype", "add"]))
        name = draw(st.sampled_from(names))
        if action == "drop":
            result.pop(name, None)
        elif action == "retype":
            result[name] = draw(json_values(4))
        else:
            result[draw(st.sampled_from([*keys, "extra"]) | TEXT)] = draw(json_values(4))
    return result


# Ids, tokens


def odd_spellings(value: UUID) -> list[str]:
    """Ways Python's UUID() reads one id besides the canonical one, and near misses."""
    text = str(value)
    return [
        text.upper(),
        value.hex,
        f"{{{text}}}",
        f"urn:uuid:{text}",
        f" {text}",
        f"{text}\n",
        text[:-1],
        text + "0",
        text.replace("-", "_"),
    ]


@functools.cache
def uuids(known: Known, *, odd: bool = True) -> st.SearchStrategy[str]:
    everyone = [*known.projects, *known.ids, known.user, known.other_user]
    real = st.sampled_from(everyone).map(str)
    choices: list[tuple[int, st.SearchStrategy[Any]]] = [(6, real), (1, st.uuids().map(str))]
    if odd:
        spelled = st.sampled_from(everyone).flatmap(lambda u: st.sampled_from(odd_spellings(u)))
        choices += [(1, spelled), (1, TEXT)]
    strategy: st.SearchStrategy[str] = weighted(*choices)
    return strategy


def mint(secret: str, claims: Mapping[str, Any], algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # a short secret for HS384/HS512: the point here
        warnings.simplefilter("ignore")
        return jwt.encode(dict(claims), secret, algorithm=algorithm)


def user_claims(known: Known, user: UUID | str, ttl: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": str(user),
        "aud": known.audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl,
    }


def valid_token(known: Known, user: UUID | None = None, ttl: int = 3600) -> str:
    return mint(known.secret, user_claims(known, user or known.user, ttl))


def anon_key(known: Known, ttl: int = 3600) -> str:
    now = int(time.time())
    return mint(known.secret, {"role": "anon", "iat": now, "exp": now + ttl})


@st.composite
def forged_claims(draw: st.DrawFn, known: Known) -> dict[str, Any]:
    """Claims signed with the gateway's own secret, as a buggy issuer might write them."""
    now = int(time.time())
    claims: dict[str, Any] = user_claims(known, known.user, 3600)
    subjects = [
        str(known.user),
        str(known.user).upper(),
        f"{{{known.user}}}",
        known.user.hex,
        f"urn:uuid:{known.user}",
        int(known.user.hex, 16),
        str(UUID(int=0)),
        "",
        "anon",
        None,
        [str(known.user)],
    ]
    expiries = [
        now + 3600,
        now - 1,
        now + 1,
        float(now + 3600),
        str(now + 3600),
        10**30,
        2**63,
        -(2**63),
        0,
        True,
        None,
        1e300,
    ]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        field = draw(st.sampled_from(["sub", "exp", "aud", "role", "iat", "nbf", "extra", "drop"]))
        if field == "sub":
            claims["sub"] = draw(st.sampled_from(subjects))
        elif field == "exp":
            claims["exp"] = draw(st.sampled_from(expiries))
        elif field == "aud":
            claims["aud"] = draw(
                st.sampled_from([known.audience, [known.audience, "x"], "anon", "", None, 5])
            )
        elif field == "role":
            claims["role"] = draw(st.sampled_from(["anon", "service_role", "", None, 1]))
        elif field in ("iat", "nbf"):
            claims[field] = draw(st.sampled_from([now + 3600, "x", None, -1, 10**20]))
        elif field == "extra":
            claims[draw(TEXT)] = draw(json_values(3).filter(_plain_json))
        else:
            claims.pop(draw(st.sampled_from(sorted(claims) or ["sub"])), None)
    return claims


def _plain_json(value: Any) -> bool:
    """No Raw parts (PyJWT writes claims with the json module)."""
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


@functools.cache
@st.composite
def tokens(draw: st.DrawFn, known: Known, *, anon_is_valid: bool = False) -> str:
    """Mostly the fuzzing user's valid token; otherwise every way a token goes wrong."""
    kind = draw(
        st.sampled_from(
            ["valid"] * 8
            + [
                "other_user",
                "expired",
                "short",
                "unknown_user",
                "wrong_secret",
                "wrong_audience",
                "anon",
                "forged",
                "forged",
                "alg",
                "garbage",
                "tampered",
            ]
        )
    )
    if kind == "valid" or (kind == "anon" and not anon_is_valid and draw(st.booleans())):
        return valid_token(known)
    if kind == "other_user":
        return valid_token(known, known.other_user)
    if kind == "expired":
        return valid_token(known, ttl=-draw(st.integers(min_value=0, max_value=10**6)))
    if kind == "short":
        return valid_token(known, ttl=draw(st.integers(min_value=1, max_value=2)))
    if kind == "unknown_user":
        return valid_token(known, UUID(int=draw(st.integers(min_value=1, max_value=2**128 - 1))))
    if kind == "wrong_secret":
        return mint("not-the-secret-" + "x" * 32, user_claims(known, known.user, 3600))
    if kind == "wrong_audience":
        claims = user_claims(known, known.user, 3600)
        claims["aud"] = draw(st.sampled_from(["anon", "service_role", "", "Authenticated"]))
        return mint(known.secret, claims)
    if kind == "anon":
        return anon_key(known, ttl=draw(st.sampled_from([3600, -5, 1])))
    if kind == "forged":
        return mint(known.secret, draw(forged_claims(known)))
    if kind == "alg":
        claims = user_claims(known, known.user, 3600)
        algorithm = draw(st.sampled_from(["none", "HS384", "HS512"]))
        if algorithm == "none":
            return jwt.encode(claims, "", algorithm="none")
        return mint(known.secret, claims, algorithm)
    if kind == "tampered":
        token = valid_token(known)
        cut = draw(st.integers(min_value=0, max_value=len(token) - 1))
        replacement = draw(st.sampled_from(["", "A", ".", "=", "💥", token[cut]]))
        return token[:cut] + replacement + token[cut + 1 :]
    return str(
        draw(
            st.one_of(
                TEXT,
                st.just("a.b.c"),
                st.just("e30.e30.e30"),
                st.integers(min_value=10, max_value=20000).map(lambda n: "A" * n),
            )
        )
    )


# RPC params from each method's JSON Schema


SchemaNode = Mapping[str, Any]


def from_schema(node: SchemaNode, root: SchemaNode, known: Known) -> st.SearchStrategy[Any]:
    """Values that a JSON Schema (pydantic's, of a params model) allows, mostly."""
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        target = root.get("$defs", {}).get(name, {})
        return st.deferred(lambda: from_schema(target, root, known))
    if "anyOf" in node:
        return st.one_of(*(from_schema(option, root, known) for option in node["anyOf"]))
    if "enum" in node:
        return st.sampled_from(list(node["enum"]))
    if "const" in node:
        return st.just(node["const"])
    kind = node.get("type")
    if kind is None:
        return json_values(6)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        in_range = st.integers(
            min_value=low if low is not None else -5, max_value=high if high is not None else 10**6
        )
        return weighted((5, in_range), (1, st.integers(min_value=-(2**63), max_value=2**64 - 1)))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "string":
        return _schema_string(node, known)
    if kind == "array":
        items = from_schema(node.get("items", {}), root, known)
        return st.lists(items, max_size=4)
    if kind == "object":
        return _schema_object(node, root, known)
    return json_values(4)


def _schema_string(node: SchemaNode, known: Known) -> st.SearchStrategy[Any]:
    form = node.get("format")
    if form == "uuid":
        return uuids(known)
    if form == "date-time":
        moments = st.datetimes(timezones=st.just(None) | st.timezones()).map(
            lambda moment: moment.isoformat()
        )
        return weighted((4, moments), (1, TEXT))
    if form == "email":
        return st.sampled_from(["a@example.test", "nobody@example.invalid", "@", ""]) | TEXT
    low = int(node.get("minLength", 0))
    high = node.get("maxLength")
    size = max(low, 24) if high is None else min(int(high), max(low, 24))
    fitting = st.text(min_size=low, max_size=size)
    edges = st.sampled_from([low, *(() if high is None else (int(high), int(high) + 1))]).map(
        lambda n: "k" * n
    )
    return weighted((4, fitting), (1, edges))


def _schema_object(node: SchemaNode, root: SchemaNode, known: Known) -> st.SearchStrategy[Any]:
    properties: Mapping[str, SchemaNode] = node.get("properties", {})
    required = set(node.get("required", ()))
    extra = node.get("additionalProperties", True)
    if not properties:
        values = from_schema(extra, root, known) if isinstance(extra, dict) else json_values(4)
        return st.dictionaries(TEXT, values, max_size=3)
    return st.fixed_dictionaries(
        {
            name: from_schema(schema, root, known)
            for name, schema in properties.items()
            if name in required
        },
        optional={
            name: from_schema(schema, root, known)
            for name, schema in properties.items()
            if name not in required
        },
    )


_SCHEMAS = {name: model.model_json_schema() for name, model in sorted(RPC_PARAMS.items())}
METHODS = sorted(RPC_PARAMS)


@functools.cache
def rpc_params(method: str, known: Known) -> st.SearchStrategy[Any]:
    """Params of `method` as its model allows them, then mutated (any object for a
    method that does not exist)."""
    schema = _SCHEMAS.get(method)
    if schema is None:
        return json_objects(6)
    keys = sorted(schema.get("properties", {}))
    return from_schema(schema, schema, known).flatmap(
        lambda params: (
            mutated(params, keys, "often") if isinstance(params, dict) else st.just(params)
        )
    )


@functools.cache
@st.composite
def method_names(draw: st.DrawFn) -> str:
    name: str = draw(
        weighted(
            (12, st.sampled_from(METHODS)),
            (1, TEXT),
            (1, st.sampled_from(METHODS).map(lambda name: name.upper())),
            (1, st.sampled_from(METHODS).map(lambda m: m.split(".")[0] + ".")),
            (1, st.sampled_from(["__init__", "call", "as_user", ".", "project..create"])),
            (1, st.integers(min_value=60, max_value=70).map(lambda n: "m" * n)),
        )
    )
    return name


# Native frames


@functools.cache
def refs() -> st.SearchStrategy[Any]:
    return weighted(
        (6, st.integers(min_value=0, max_value=10**6)),
        (4, st.text(max_size=12)),
        (1, st.none()),
        (1, st.booleans()),
        (1, st.floats(allow_nan=False)),
        (1, st.lists(st.integers(min_value=-(2**63), max_value=2**63), max_size=2)),
        (1, st.sampled_from([2**63, -(2**63), 2**64 - 1])),
        (1, st.sampled_from(RAW_NUMBERS).map(Raw)),
    )


POSITIONS = st.one_of(
    st.sampled_from(
        [
            "r0000000000000000/0000000000000000.000000",
            "r7a1c2e9b3d4f5061/0000000001b8f3a0.000002",
            "n1/1.0",
            "n0/0.0",
            "r/.",
            "x" * 64,
            "x" * 65,
        ]
    ),
    TEXT,
)


@functools.cache
def positions(known: Known) -> st.SearchStrategy[str]:
    """Where to resume from: positions the gateway gave out (and near misses), or not."""
    if not known.positions:
        return POSITIONS
    real = st.sampled_from(known.positions)
    near = real.map(lambda p: p[:-1] + ("0" if p[-1] != "0" else "1"))
    strategy: st.SearchStrategy[str] = weighted((3, real), (1, near), (2, POSITIONS))
    return strategy


@functools.cache
@st.composite
def native_request(draw: st.DrawFn, known: Known) -> dict[str, Any]:
    """One client frame of a known type (or an unknown one), fields mostly right."""
    frame_type = draw(
        st.sampled_from([*sorted(CLIENT_FRAMES), "rpc", "rpc", "rpc", "subscribe", "unknown"])
    )
    frame: dict[str, Any] = {"type": frame_type}
    if frame_type in ("auth", "auth.refresh"):
        frame["token"] = draw(tokens(known))
    elif frame_type == "subscribe":
        frame["project_id"] = draw(uuids(known))
        if draw(st.booleans()):
            frame["snapshot"] = draw(st.booleans())
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            frame["since"] = draw(positions(known))
    elif frame_type in ("unsubscribe", "presence.update"):
        frame["project_id"] = draw(uuids(known))
        if frame_type == "presence.update":
            frame["meta"] = draw(
                weighted(
                    (4, json_objects(8)),
                    (1, st.fixed_dictionaries({"pad": big_strings(2048)})),
                    (1, st.fixed_dictionaries({"deep": RAW_JSON})),
                )
            )
    elif frame_type == "rpc":
        method = draw(method_names())
        frame["method"] = method
        frame["params"] = draw(rpc_params(method, known))
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            frame["idempotency_key"] = draw(
                weighted(
                    (3, st.uuids().map(str)),
                    (1, TEXT),
                    (1, st.sampled_from([128, 129]).map(lambda n: "k" * n)),
                )
            )
    elif frame_type == "unknown":
        frame["type"] = draw(
            weighted(
                (2, TEXT),
                (1, st.sampled_from(sorted(CLIENT_FRAMES)).map(lambda name: name.upper())),
                (1, st.sampled_from(sorted(CLIENT_FRAMES)).map(lambda t: t + " ")),
                (1, st.sampled_from(["ok", "error", "result", "change", "snapshot", "closing"])),
            )
        )
    if draw(st.integers(min_value=0, max_value=3)) != 0:
        frame["ref"] = draw(refs())
    return draw(mutated(frame, ["type", "ref", "project_id", "token", "method", "params"], "often"))


@functools.cache
@st.composite
def raw_message(draw: st.DrawFn, known: Known) -> Wire:
    """A message that is not a well-formed frame, or is one of an odd size."""
    limit = known.max_frame_bytes
    choice = draw(st.integers(min_value=0, max_value=11))
    if choice == 0:
        return str(draw(st.text(max_size=40)))
    if choice == 1:
        return bytes(draw(st.binary(max_size=40)))
    if choice == 2:
        return dumps(draw(json_values(6)))
    if choice == 3:
        raw = draw(RAW_JSON)
        return raw.text
    if choice == 4:
        return str(
            draw(
                st.sampled_from(
                    [
                        "{",
                        "{}",
                        "[]",
                        '{"type": "ping", "type": "auth"}',
                        '{"type":"ping","ref":NaN}',
                        '{"type":"ping","ref":"\\ud800"}',
                        '\ufeff{"type":"ping"}',
                        '{"type":"ping"}{"type":"ping"}',
                        '{"type":"ping"} ',
                        '"ping"',
                        "null",
                    ]
                )
            )
        )
    if choice == 5:
        # Around the frame size limit: refused with frame_too_large, still open.
        size = draw(st.integers(min_value=limit - 32, max_value=limit + 32))
        return Big('{"type":"ping","ref":"', "x", max(0, size - 24), '"}')
    if choice == 6 and draw(st.integers(min_value=0, max_value=3)) == 0:
        # Above 4 times the limit: websockets itself closes with 1009.
        return Big('{"type":"ping","pad":"', "x", 4 * limit + 1, '"}', binary=draw(st.booleans()))
    if choice == 7:
        pad = draw(st.integers(min_value=1000, max_value=limit // 2))
        return Big('{"type":"rpc","method":"project.list","params":{"pad":"', "x", pad, '"}}')
    frame = draw(native_request(known))
    return dumps(frame).encode() if draw(st.booleans()) and choice == 8 else dumps(frame)


@st.composite
def native_sessions(draw: st.DrawFn, known: Known, max_frames: int = 6) -> NativeSession:
    """Usually signed in first (else the rest is refused unread); then anything."""
    frames: list[Wire] = []
    if draw(st.integers(min_value=0, max_value=7)) != 0:
        token = draw(weighted((5, st.builds(valid_token, st.just(known))), (2, tokens(known))))
        auth: dict[str, Any] = {"type": "auth", "token": token}
        if draw(st.booleans()):
            auth["ref"] = draw(refs())
        frames.append(dumps(auth))
    for _ in range(draw(st.integers(min_value=0, max_value=max_frames))):
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            frames.append(draw(raw_message(known)))
        else:
            frames.append(dumps(draw(native_request(known))))
    return NativeSession(tuple(frames))


# Supabase (Phoenix) messages


FILTERABLE = frozenset({"uuid", "int4", "text", "bool", "timestamptz", "inet"})
FILTER_OPS = ["eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "not.eq", "cs"]
EVENTS = [e.value for e in phx.Event]


@functools.cache
def topics(known: Known) -> st.SearchStrategy[str]:
    projects = st.sampled_from(known.projects)
    names = weighted(
        (4, st.just(known.room)),
        (4, projects.map(lambda p: f"project:{p}")),
        (
            2,
            projects.flatmap(lambda p: st.sampled_from(odd_spellings(p))).map(
                lambda name: f"project:{name}"
            ),
        ),
        (1, TEXT.map(lambda name: f"project:{name}")),
        (2, TEXT),
        (1, st.sampled_from(["", "project:", "project", "*", "realtime:room"])),
        (1, st.integers(min_value=250, max_value=300).map(lambda n: "t" * n)),
    )
    topic: st.SearchStrategy[str] = weighted(
        (12, names.map(lambda name: phx.TOPIC_PREFIX + name)),
        (1, st.just(phx.HEARTBEAT_TOPIC)),
        (1, TEXT),
    )
    return topic


@functools.cache
@st.composite
def filter_values(draw: st.DrawFn, kind: str, known: Known) -> str:
    if kind == "uuid":
        return str(draw(weighted((6, uuids(known, odd=False)), (1, uuids(known)))))
    if kind == "int4":
        value: str = draw(
            weighted(
                (3, st.integers(min_value=-(2**31), max_value=2**31).map(str)),
                (1, st.sampled_from(["9" * 30, "1e3", "-0", "1_000", " 1", "٣", "0x10", ""])),
            )
        )
        return value
    if kind == "bool":
        return str(draw(st.sampled_from(["true", "false", "t", "F", "yes", "1", ""])))
    if kind == "timestamptz":
        return str(
            draw(
                st.sampled_from(
                    [
                        "2026-01-01T00:00:00Z",
                        "2026-01-01 00:00:00+02",
                        "2026-13-01",
                        "now",
                        "infinity",
                        "0001-01-01T00:00:00-23:59",
                        "9999-12-31T23:59:59+14:00",
                    ]
                )
            )
        )
    return str(draw(TEXT))


@functools.cache
@st.composite
def filters(draw: st.DrawFn, table: str | None, known: Known) -> str:
    """`column=op.value[,…]`, mostly well-formed for the table, often not."""
    columns = dict(COLUMNS.get(table or "", ()))
    filterable = sorted(c for c, kind in columns.items() if kind in FILTERABLE) or ["id"]
    parts = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        column = draw(
            weighted(
                (14, st.sampled_from(filterable)),
                (2, st.sampled_from(sorted(columns) or ["id"])),
                (1, st.sampled_from(["", "ID", "id ", "session_token", "x=y", "(", "*"])),
                (1, TEXT),
            )
        )
        kind = columns.get(column, "text")
        op = draw(weighted((5, st.sampled_from(FILTER_OPS[:7])), (1, st.sampled_from(FILTER_OPS))))
        op = draw(weighted((14, st.just(op)), (1, TEXT)))
        if op == "in":
            count = draw(st.sampled_from([0, 1, 2, 5, 99, 100, 101, 150]))
            values = [draw(filter_values(kind, known)) for _ in range(min(count, 3))]
            values = (values * (count // max(1, len(values)) + 1))[:count] if values else []
            quoted = [f'"{v}"' if draw(st.booleans()) and "," in v else v for v in values]
            body = ",".join(quoted)
            value = draw(
                weighted(
                    (10, st.just(f"({body})")),
                    (1, st.sampled_from([body, f"({body}", f"{body})", f"(({body}))", '("a,b)'])),
                )
            )
        else:
            value = draw(filter_values(kind, known))
        parts.append(
            f"{column}={op}.{value}" if draw(st.integers(0, 19)) else f"{column}{op}{value}"
        )
    text = ",".join(parts)
    if draw(st.integers(min_value=0, max_value=30)) == 0:
        text += "," + "id=eq." + "x" * 4100
    return text


@functools.cache
@st.composite
def bindings(draw: st.DrawFn, known: Known) -> dict[str, Any]:
    table = draw(
        weighted(
            (16, st.sampled_from(sorted(COLUMNS))),
            (1, st.sampled_from([None, "*", "users", "rpc_idempotency", "Projects"])),
            (1, TEXT),
        )
    )
    binding: dict[str, Any] = {
        "event": draw(
            weighted(
                (5, st.sampled_from([*(c.value for c in ChangeType), "*"])),
                (1, st.sampled_from(["update", "TRUNCATE", "", "INSERT,UPDATE"])),
                (1, TEXT),
            )
        ),
        "schema": draw(weighted((16, st.just("public")), (1, st.sampled_from(["*", "auth", ""])))),
    }
    if table is not None:
        binding["table"] = table
    if draw(st.integers(min_value=0, max_value=2)) != 0:
        binding["filter"] = draw(filters(table if isinstance(table, str) else None, known))
    return draw(mutated(binding, ["event", "schema", "table", "filter", "select"], "rare"))


@functools.cache
@st.composite
def presence_keys(draw: st.DrawFn, known: Known) -> Any:
    return draw(
        weighted(
            (4, st.just("")),
            (1, st.just(str(known.user))),
            (1, st.just(str(known.other_user))),
            (1, st.sampled_from(odd_spellings(known.user))),
            (1, st.uuids().map(str)),
            (2, TEXT),
            (1, st.sampled_from([256, 257, 5000]).map(lambda n: "k" * n)),
        )
    )


@functools.cache
@st.composite
def join_payloads(draw: st.DrawFn, known: Known) -> Any:
    config: dict[str, Any] = {
        "broadcast": draw(
            mutated(
                {"self": draw(st.booleans()), "ack": draw(st.booleans())}, ["self", "ack"], "rare"
            )
        ),
        "presence": draw(
            mutated(
                {"key": draw(presence_keys(known)), "enabled": draw(st.booleans())},
                ["key", "enabled"],
                "rare",
            )
        ),
        "postgres_changes": draw(
            weighted(
                (2, st.just([])),
                (10, st.lists(bindings(known), min_size=1, max_size=3)),
                (
                    1,
                    st.sampled_from([33, 40]).map(
                        lambda n: [{"event": "*", "table": "sitemaps"}] * n
                    ),
                ),
            )
        ),
        "private": draw(st.booleans()),
    }
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        config["resume"] = draw(mutated({"since": draw(positions(known))}, ["since"], "rare"))
    payload: dict[str, Any] = {"config": draw(mutated(config, ["broadcast", "presence"], "rare"))}
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        payload["access_token"] = draw(tokens(known, anon_is_valid=True))
    return draw(weighted((12, st.just(payload)), (1, json_values(4))))


@functools.cache
@st.composite
def broadcast_payloads(draw: st.DrawFn) -> Any:
    payload: dict[str, Any] = {
        "type": "broadcast",
        "event": draw(
            weighted(
                (4, st.sampled_from(["cursor", "hello"])),
                (2, TEXT),
                (1, st.sampled_from([255, 256]).map(lambda n: "e" * n)),
                (1, st.sampled_from([85, 86, 128]).map(lambda n: "€" * n)),
            )
        ),
        "payload": draw(weighted((4, json_values(8)), (1, RAW_JSON))),
    }
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        payload["meta"] = draw(weighted((3, json_values(4)), (1, big_strings(255))))
    return draw(mutated(payload, ["type", "event", "payload", "meta"]))


@functools.cache
@st.composite
def presence_payloads(draw: st.DrawFn) -> Any:
    payload: dict[str, Any] = {
        "type": "presence",
        "event": draw(weighted((5, st.sampled_from(["track", "untrack"])), (1, TEXT))),
        "payload": draw(
            weighted(
                (5, json_objects(8)),
                (1, st.fixed_dictionaries({"pad": big_strings(2048)})),
                (1, st.fixed_dictionaries({"deep": RAW_JSON})),
                (
                    1,
                    st.fixed_dictionaries(
                        {"user_id": st.uuids().map(str), "phx_ref": TEXT, "session": json_values(3)}
                    ),
                ),
            )
        ),
    }
    return draw(mutated(payload, ["type", "event", "payload"]))


def kind3(
    join_ref: str, ref: str, topic: str, event: str, meta: bytes, encoding: int, body: bytes
) -> bytes:
    """realtime-js's binary user broadcast push (lengths kept to one byte each)."""
    parts = [join_ref.encode(), ref.encode(), topic.encode(), event.encode()]
    header = struct.pack(
        "!BBBBBBB",
        phx.USER_BROADCAST_PUSH,
        *(len(p) % 256 for p in parts),
        len(meta) % 256,
        encoding,
    )
    return header + b"".join(parts) + meta + body


@st.composite
def binary_messages(draw: st.DrawFn, topic: str, join_ref: str, ref: str) -> bytes:
    body = draw(
        weighted(
            (3, json_values(6).map(lambda v: dumps(v).encode())),
            (1, st.binary(max_size=64)),
        )
    )
    encoding = draw(weighted((6, st.sampled_from([0, 1])), (1, st.integers(0, 255))))
    meta = draw(weighted((4, st.just(b"")), (1, json_values(3).map(lambda v: dumps(v).encode()))))
    event = draw(weighted((4, st.sampled_from(["cursor", "hello"])), (1, TEXT)))
    data = kind3(join_ref, ref, topic, event, meta, encoding, body)
    mutation = draw(st.integers(min_value=0, max_value=9))
    if mutation == 0:
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    elif mutation == 1:
        at = draw(st.integers(min_value=0, max_value=6))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif mutation == 2:
        data = bytes(draw(st.binary(max_size=40)))
    elif mutation == 3:
        data = bytes([phx.USER_BROADCAST_PUSH]) + b"\xff" * 6 + "💥".encode()[:3] * 4
    return data


@st.composite
def phoenix_sessions(draw: st.DrawFn, known: Known, max_frames: int = 8) -> PhoenixSession:
    """A socket's key and version, then messages on a few topics, refs as realtime-js
    makes them (a channel's events carry its join's ref), sometimes wrong."""
    apikey = draw(
        weighted(
            (10, st.just(valid_token(known))),
            (1, st.none()),
            (2, tokens(known, anon_is_valid=True)),
        )
    )
    vsn = draw(
        weighted(
            (5, st.just("2.0.0")),
            (5, st.just("1.0.0")),
            (1, st.sampled_from([None, "3.0.0", "", "2.0"])),
        )
    )
    pool = draw(st.lists(topics(known), min_size=1, max_size=3))
    joined: dict[str, str] = {}
    frames: list[Wire] = []
    count = 0
    for _ in range(draw(st.integers(min_value=1, max_value=max_frames))):
        count += 1
        ref = str(count)
        topic = draw(weighted((5, st.sampled_from(pool)), (1, topics(known))))
        what = draw(
            st.sampled_from(
                ["join"] * 4
                + ["broadcast"] * 2
                + ["presence"] * 2
                + ["access_token", "leave", "heartbeat", "event", "raw", "binary"]
            )
        )
        join_ref: Any = ref if what == "join" else joined.get(topic)
        event: Any
        if what == "join":
            event, payload = phx.Event.JOIN.value, draw(join_payloads(known))
            joined[topic] = ref
        elif what == "broadcast":
            event, payload = phx.Event.BROADCAST.value, draw(broadcast_payloads())
        elif what == "presence":
            event, payload = phx.Event.PRESENCE.value, draw(presence_payloads())
        elif what == "access_token":
            token = draw(tokens(known, anon_is_valid=True))
            event = phx.Event.ACCESS_TOKEN.value
            payload = draw(mutated({"access_token": token}, ["access_token"]))
        elif what == "leave":
            event, payload = phx.Event.LEAVE.value, {}
        elif what == "heartbeat":
            topic, event, payload = phx.HEARTBEAT_TOPIC, phx.Event.HEARTBEAT.value, {}
        elif what == "event":
            event = draw(weighted((3, st.sampled_from(EVENTS)), (1, TEXT)))
            payload = draw(json_values(6))
        elif what == "binary":
            frames.append(draw(binary_messages(topic, str(joined.get(topic, "")), ref)))
            continue
        else:
            frames.append(draw(raw_message(known)))
            continue
        if draw(st.integers(min_value=0, max_value=24)) == 0:
            join_ref, ref_value, topic_value, event = draw(
                st.tuples(
                    refs(),
                    refs(),
                    weighted((3, st.just(topic)), (1, json_values(2))),
                    weighted((3, st.just(event)), (1, json_values(2))),
                )
            )
        else:
            ref_value, topic_value = ref, topic
        frames.append(draw(phoenix_frame(vsn, join_ref, ref_value, topic_value, event, payload)))
    return PhoenixSession(apikey, vsn, tuple(frames))


@st.composite
def phoenix_frame(
    draw: st.DrawFn, vsn: str | None, join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any
) -> str:
    """The message in the socket's framing (sometimes the other one, or a broken one)."""
    as_array = vsn == "2.0.0"
    if draw(st.integers(min_value=0, max_value=29)) == 0:
        as_array = not as_array
    if as_array:
        array: list[Any] = [join_ref, ref, topic, event, payload]
        if draw(st.integers(min_value=0, max_value=29)) == 0:
            array = draw(st.sampled_from([array[:4], [*array, None], array[::-1], [array]]))
        return dumps(array)
    obj = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
    return dumps(draw(mutated(obj, ["topic", "event", "payload", "ref", "join_ref"])))


# What may come back


NATIVE_SERVER_FRAMES: TypeAdapter[Any] = TypeAdapter(ServerMessage)
# 1000/1001 normal; every other code is one the gateway documents (protocol.errors).
ALLOWED_CLOSE_CODES = frozenset({1000, 1001, *(int(code) for code in CloseCode)})
TOO_BIG = 1009  # websockets' own, for a frame over 4 times max_frame_bytes (docs/protocol.md)


def close_problem(code: int | None, reason: str, *, sent_too_big: bool) -> str | None:
    """Why a close of a fuzzing connection is a bug (None: a documented close)."""
    if code is None:
        return "the connection ended without a close frame (1006)"
    if code in ALLOWED_CLOSE_CODES or (code == TOO_BIG and sent_too_big):
        return None
    return f"closed with {code} ({reason!r})"


def native_problem(message: str | bytes) -> str | None:
    """Why a server message on the native protocol is not a documented frame."""
    if isinstance(message, bytes):
        return f"a binary message on the native protocol: {message[:80]!r}"
    try:
        frame = NATIVE_SERVER_FRAMES.validate_python(_pruned(orjson.loads(message)))
    except orjson.JSONDecodeError as error:
        return f"a message that is not JSON: {error} in {message[:300]!r}"
    except ValidationError as error:
        return f"undocumented frame: {_first(error)} in {message[:300]!r}"
    if getattr(frame, "type", None) == "error" and frame.code is ErrorCode.INTERNAL:
        return f"internal_error: {message[:300]!r}"
    return None


PRUNE_DEPTH = 64


def _pruned(value: Any, depth: int = 0) -> Any:
    """`value` with what nests deeper than PRUNE_DEPTH replaced by null: pydantic
    cannot validate values nested about 255 deep, which a client may send and so get
    back in a presence meta or a broadcast (the parts checked are shallower)."""
    if depth >= PRUNE_DEPTH and isinstance(value, dict | list):
        return None
    if isinstance(value, dict):
        return {key: _pruned(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_pruned(item, depth + 1) for item in value]
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Reply(_Strict):
    status: Literal["ok", "error"]
    response: dict[str, JsonValue]


class _System(_Strict):
    extension: str
    status: Literal["ok", "error"]
    message: str
    channel: str


class _Metas(_Strict):
    metas: list[dict[str, JsonValue]]


class _Diff(_Strict):
    joins: dict[str, _Metas]
    leaves: dict[str, _Metas]


class _Column(_Strict):
    name: str
    type: str


class _ChangeData(_Strict):
    schema_: str = Field(alias="schema")
    table: str
    commit_timestamp: str
    type: ChangeType
    columns: list[_Column]
    errors: None
    position: str
    record: dict[str, JsonValue] | None = None
    old_record: dict[str, JsonValue] | None = None


class _Change(_Strict):
    ids: list[int]
    data: dict[str, JsonValue]


class _Broadcast(_Strict):
    type: Literal["broadcast"]
    event: str
    payload: JsonValue
    meta: JsonValue = None


_Empty = TypeAdapter(dict[str, None])
_State = TypeAdapter(dict[str, _Metas])

PhoenixCheck = Callable[[Any], str | None]


def _reply(payload: Any) -> str | None:
    reply = _Reply.model_validate(payload)
    if reply.status == "error" and not isinstance(reply.response.get("reason"), str):
        return "an error reply without a `reason`"
    reason = reply.response.get("reason")
    if isinstance(reason, str) and reason.startswith("request failed"):
        return f"a request failed inside the gateway: {reason[:200]}"
    return None


def _close(payload: Any) -> str | None:
    if payload != {}:
        return f"phx_close with payload {payload!r:.200}"
    return None


def _presence_state(payload: Any) -> str | None:
    _State.validate_python(payload)
    return _phx_refs(payload)


def _presence_diff(payload: Any) -> str | None:
    diff = _Diff.model_validate(payload)
    return _phx_refs(diff.joins) or _phx_refs(diff.leaves)


def _phx_refs(state: Any) -> str | None:
    for key, metas in dict(state).items():
        items = metas["metas"] if isinstance(metas, dict) else metas.metas
        for meta in items:
            if not isinstance(meta.get("phx_ref"), str):
                return f"a presence meta of {key!r} without a phx_ref"
    return None


def _change(payload: Any) -> str | None:
    change = _Change.model_validate(payload)
    _ChangeData.model_validate(change.data)
    return None


def _system(payload: Any) -> str | None:
    _System.model_validate(payload)
    return None


def _broadcast(payload: Any) -> str | None:
    _Broadcast.model_validate(payload)
    return None


PHOENIX_EVENTS: dict[str, PhoenixCheck] = {
    phx.Event.REPLY.value: _reply,
    phx.Event.CLOSE.value: _close,
    phx.Event.SYSTEM.value: _system,
    phx.Event.PRESENCE_STATE.value: _presence_state,
    phx.Event.PRESENCE_DIFF.value: _presence_diff,
    phx.Event.POSTGRES_CHANGES.value: _change,
    phx.Event.BROADCAST.value: _broadcast,
}


def phoenix_message(message: str | bytes, vsn: phx.Vsn) -> phx.Message | str:
    """The server message decoded, or why it is not a documented one."""
    if isinstance(message, bytes):
        if vsn is not phx.Vsn.V2:
            return f"a binary message to a vsn {vsn.value} socket: {message[:80]!r}"
        return _user_broadcast(message)
    try:
        decoded = phx.decode_text(message, vsn)
    except phx.PhoenixError as error:
        return f"undocumented message: {error} in {message[:300]!r}"
    decoded = phx.Message(
        decoded.topic, decoded.event, _pruned(decoded.payload), decoded.ref, decoded.join_ref
    )
    check = PHOENIX_EVENTS.get(decoded.event)
    if check is None:
        return f"undocumented event {decoded.event!r}: {message[:300]!r}"
    try:
        problem = check(decoded.payload)
    except ValidationError as error:
        return f"undocumented {decoded.event} payload: {_first(error)} in {message[:300]!r}"
    if problem is not None:
        return f"{problem} in {message[:300]!r}"
    return decoded


def phoenix_problem(message: str | bytes, vsn: phx.Vsn) -> str | None:
    decoded = phoenix_message(message, vsn)
    return decoded if isinstance(decoded, str) else None


def _user_broadcast(data: bytes) -> phx.Message | str:
    """A kind 4 frame, as realtime-js decodes it."""
    if len(data) < 5 or data[0] != phx.USER_BROADCAST:
        return f"a binary message that is no user broadcast: {data[:80]!r}"
    topic_size, event_size, meta_size, encoding = data[1:5]
    offset = 5
    try:
        topic = data[offset : offset + topic_size].decode()
        event = data[offset + topic_size : offset + topic_size + event_size].decode()
        meta = data[offset + topic_size + event_size : offset + topic_size + event_size + meta_size]
    except UnicodeDecodeError:
        return f"a user broadcast whose header is not UTF-8: {data[:80]!r}"
    body = data[offset + topic_size + event_size + meta_size :]
    if len(data) < offset + topic_size + event_size + meta_size:
        return f"a user broadcast shorter than its header: {data[:80]!r}"
    payload: dict[str, Any] = {"type": "broadcast", "event": event}
    try:
        if meta:
            payload["meta"] = orjson.loads(meta)
        if encoding == phx.JSON_ENCODING:
            payload["payload"] = orjson.loads(body)
        elif encoding == phx.BINARY_ENCODING:
            payload["payload"] = bytes(body)
        else:
            return f"a user broadcast of encoding {encoding}: {data[:80]!r}"
    except orjson.JSONDecodeError:
        return f"a user broadcast whose JSON does not parse: {data[:80]!r}"
    return phx.Message(topic, phx.Event.BROADCAST.value, payload)


def _first(error: ValidationError) -> str:
    item = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in item["loc"]) or "frame"
    return f"{where}: {item['msg']}"
