"""`rpc` frames: look the method up, validate its params, run it as the user, reply.

A method is a params model (in protocol/) and an async handler that gets the
validated params and a `Call`, whose `as_user()` opens a transaction in which
PostgreSQL sees the connection's user (row-level security decides, not Python).
The handler returns a JSON-able value (pydantic models are dumped) or raises
`RpcError`; database errors are mapped here, once, to stable codes, so no method
ever sends a stack trace and every failure is logged once with its ref.

Protocol declares each method's name and params (PARAMS in protocol/rpc_<group>.py);
a group's module registers a handler for each name with its `Handlers`, and
gateway.rpc.methods binds the two.

A request with an `idempotency_key` runs all its `as_user()` blocks in one
transaction (each block a savepoint in it) that first claims the key in
`public.rpc_idempotency` (migration 0012) and, once the handler has returned, stores
its result there before committing. So the writes, the claim and the result commit
together or not at all: a repeat of the key is answered with the stored result and
runs nothing; a request that failed left no claim and may be retried with its key.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import orjson
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from db.acting_user import Conn, acting_as
from protocol import jsontext
from protocol.errors import ErrorCode
from protocol.frames import Error, Ref, Result, Rpc

if TYPE_CHECKING:
    from gateway.presence.sessions import Origin

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=BaseModel)

# Results as JSON, whatever the handler returned: models, lists of them, plain values.
_RESULT: TypeAdapter[Any] = TypeAdapter(Any)


class RpcError(Exception):
    """A refusal a method decides on itself (not found, conflict…)."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, JsonValue] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class _Replay(Exception):
    """The request's idempotency key was already used: answer with this instead."""

    def __init__(self, reply: JsonValue | RpcError) -> None:
        super().__init__("idempotency key already used")
        self.reply = reply


# The count of the user's other keys and the claim in one round trip: no claim when
# they hold too many already (`full`); `claimed` null when the key was claimed before.
_CLAIM = """
    WITH held AS (
        SELECT count(*) AS n FROM public.rpc_idempotency WHERE user_id = $1 AND key <> $2
    ), claimed AS (
        INSERT INTO public.rpc_idempotency (user_id, key, method, params_hash)
        SELECT $1, $2, $3, $4 FROM held WHERE n < $5
        ON CONFLICT (user_id, key) DO NOTHING
        RETURNING true AS claimed
    )
    SELECT (SELECT n FROM held) >= $5 AS full, (SELECT claimed FROM claimed) AS claimed
"""
_CLAIMED = """
    SELECT method, params_hash, result::text AS result
    FROM public.rpc_idempotency WHERE user_id = $1 AND key = $2
"""
_STORE = "UPDATE public.rpc_idempotency SET result = $3::jsonb WHERE user_id = $1 AND key = $2"
_EXPIRE = "DELETE FROM public.rpc_idempotency WHERE created_at < now() - make_interval(secs => $1)"


def params_hash(params: Mapping[str, JsonValue]) -> str:
    """The same for the same params however the client ordered their keys."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class IdempotencyLimits:
    """What one user's idempotency keys may hold: how many at once, and how large a
    result is kept (a larger one is not stored: a repeat learns it was applied)."""

    per_user: int = 1000
    max_result_bytes: int = 65_536


class Idempotent:
    """The one transaction of a request with an idempotency key, opened (and the key
    claimed) by the first `as_user()`; `call()` stores the result and commits it."""

    def __init__(
        self, user_id: UUID, key: str, method: str, params_hash: str, limits: IdempotencyLimits
    ) -> None:
        self.user_id = user_id
        self.key = key
        self.method = method
        self.params_hash = params_hash
        self.limits = limits
        self.stack = AsyncExitStack()
        self.conn: Conn | None = None

    async def open(self, call: Call) -> Conn:
        if self.conn is None:
            conn = await self.stack.enter_async_context(call.pool.acquire())
            self.conn = await self.stack.enter_async_context(
                acting_as(
                    conn,
                    self.user_id,
                    call.claims,
                    timeout_seconds=call.timeout_seconds,
                    request=call.request_tag,
                )
            )
            await self._claim(self.conn)
        return self.conn

    async def _claim(self, conn: Conn) -> None:
        """Claim the key, or raise `_Replay`. A first request still running holds the
        key's row: the INSERT waits for it to commit (then this is a repeat) or roll
        back (then the claim is ours)."""
        for _ in range(3):  # the row may be expired and swept between the two statements
            claim = await conn.fetchrow(
                _CLAIM, self.user_id, self.key, self.method, self.params_hash, self.limits.per_user
            )
            assert claim is not None, "a SELECT without FROM returns one row"
            if claim["full"]:
                raise RpcError(
                    ErrorCode.RATE_LIMITED,
                    f"{self.limits.per_user} idempotency keys kept for you already "
                    "(SITEBUILDER_RPC_IDEMPOTENCY_MAX_KEYS_PER_USER): send this without one "
                    "or retry once older ones expire",
                )
            if claim["claimed"]:
                return
            first = await conn.fetchrow(_CLAIMED, self.user_id, self.key)
            if first is not None:
                raise _Replay(self._first_reply(first))
        raise RpcError(ErrorCode.UNAVAILABLE, "the idempotency key could not be claimed; retry")

    def _first_reply(self, first: asyncpg.Record) -> JsonValue | RpcError:
        if (first["method"], first["params_hash"]) != (self.method, self.params_hash):
            return RpcError(
                ErrorCode.INVALID_PARAMS,
                f"idempotency key reused for another request (first used for {first['method']})",
            )
        # The gateway commits a claim without its result only when the result was over
        # SITEBUILDER_RPC_IDEMPOTENCY_MAX_RESULT_BYTES (or the row was written otherwise).
        if first["result"] is None:
            return RpcError(
                ErrorCode.CONFLICT,
                "this request was already applied, but its result is unknown",
            )
        stored: JsonValue = orjson.loads(first["result"])
        return stored

    async def store(self, result: JsonValue) -> None:
        """Record the result in the transaction, if the handler opened it."""
        if self.conn is None:
            return
        stored = jsontext.dumps(result)
        if len(stored) > self.limits.max_result_bytes:
            return  # kept as applied, result unknown: a repeat gets `conflict`
        await self.conn.execute(_STORE, self.user_id, self.key, stored.decode())


@dataclass(frozen=True)
class Call:
    """Who calls, and how to reach the database as them."""

    user_id: UUID
    claims: Mapping[str, Any]
    pool: asyncpg.Pool
    ref: Ref | None
    # Users subscribed to a project on this gateway right now (presence will refine it).
    online: Callable[[UUID], Awaitable[set[UUID]]]
    # Bound on each statement and lock wait of the request (SITEBUILDER_RPC_TIMEOUT_SECONDS).
    timeout_seconds: float | None = None
    # Set by `call()` for a request with an idempotency key.
    idempotent: Idempotent | None = field(default=None, compare=False)
    idempotency_limits: IdempotencyLimits = IdempotencyLimits()
    # Names this request to the change feeds (gateway.core.origin.request_tag), so its
    # changes carry its ref.
    request_tag: str | None = None
    # The connection the request came on (its address, user agent; `session.*` attach
    # sessions to it); None when called from elsewhere.
    origin: Origin | None = field(default=None, compare=False)

    @asynccontextmanager
    async def as_user(self) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection, as this user. With an idempotency
        key, a savepoint in the request's one transaction instead (see above)."""
        if self.idempotent is None:
            async with (
                self.pool.acquire() as conn,
                acting_as(
                    conn,
                    self.user_id,
                    self.claims,
                    timeout_seconds=self.timeout_seconds,
                    request=self.request_tag,
                ) as tx,
            ):
                yield tx
            return
        shared = await self.idempotent.open(self)
        async with shared.transaction():
            yield shared


Handler = Callable[[Call, P], Awaitable[Any]]


@dataclass(frozen=True)
class Method(Generic[P]):
    params: type[P]
    handler: Handler[P]
    # False for a read: its `idempotency_key` is ignored (nothing to repeat safely,
    # and a read's result is never stored).
    writes: bool = True


Methods = Mapping[str, Method[Any]]

H = TypeVar("H", bound=Handler[Any])


@dataclass(frozen=True)
class Registered:
    """A handler as its group registered it, before it meets its params model."""

    handler: Handler[Any]
    writes: bool


class Handlers:
    """One group's handlers by method name. The names and their params models are
    protocol's (PARAMS in protocol/rpc_<group>.py): declaring them again here could
    drift, so a handler is registered by name only and gateway.rpc.methods binds it
    to its params, refusing any name protocol does not declare."""

    def __init__(self) -> None:
        self._registered: dict[str, Registered] = {}

    def __call__(self, name: str, *, writes: bool = True) -> Callable[[H], H]:
        """Register the decorated handler as method `name`; `writes=False` for a read
        (see `Method.writes`)."""

        def register(handler: H) -> H:
            self.add(name, handler, writes=writes)
            return handler

        return register

    def add(self, name: str, handler: Handler[Any], *, writes: bool = True) -> None:
        """Register `handler` as method `name` (for handlers that are not decorated)."""
        if name in self._registered:
            raise ValueError(f"two handlers registered for the rpc method {name!r}")
        self._registered[name] = Registered(handler, writes)

    @property
    def registered(self) -> Mapping[str, Registered]:
        return self._registered


async def call(methods: Methods, frame: Rpc, caller: Call) -> Result | Error:
    """The reply to one `rpc` frame."""
    method = methods.get(frame.method)
    if method is None:
        known = ", ".join(sorted(methods))
        message = f"no method {frame.method!r}; known: {known}"
        return _error(frame, ErrorCode.UNKNOWN_METHOD, message)
    try:
        params = method.params.model_validate(frame.params)
    except ValidationError as error:
        problems = [
            (".".join(str(part) for part in item["loc"]) or "params", item["msg"])
            for item in error.errors(include_url=False, include_input=False)
        ]
        message = f"bad params for {frame.method}: " + "; ".join(f"{w}: {m}" for w, m in problems)
        details: dict[str, JsonValue] = {
            "errors": [{"loc": where, "message": what} for where, what in problems]
        }
        return _error(frame, ErrorCode.INVALID_PARAMS, message, details)
    try:
        if frame.idempotency_key is None or not method.writes:
            data = _jsonable(await method.handler(caller, params))
        else:
            data = await _idempotent(method, frame, frame.idempotency_key, caller, params)
    except _Replay as replay:
        if isinstance(replay.reply, RpcError):
            return _error(frame, replay.reply.code, replay.reply.message)
        logger.info("rpc %s (ref %r): repeated idempotency key", frame.method, frame.ref)
        return _result(frame, replay.reply)
    except RpcError as error:
        return _error(frame, error.code, error.message, error.details)
    except asyncpg.PostgresError as error:
        return _database_error(frame, error)
    except (OSError, asyncpg.InterfaceError) as error:
        logger.warning("rpc %s (ref %r): database unreachable: %s", frame.method, frame.ref, error)
        return _error(frame, ErrorCode.UNAVAILABLE, "the database is unreachable; retry shortly")
    return _result(frame, data)


def _result(frame: Rpc, data: JsonValue) -> Result:
    """The reply carrying `data`, which is JSON already (dumped by `_jsonable` or parsed
    from the stored result): validating it again as JsonValue walked every value of a
    large result once more, a third of a version page's cost."""
    return Result.model_construct(ref=frame.ref, data=data)


async def _idempotent(
    method: Method[P], frame: Rpc, key: str, caller: Call, params: P
) -> JsonValue:
    """Run the handler in the key's transaction; store its result before the commit.

    A method that never calls `as_user()` (a read on a connection of its own) claims
    and stores nothing: the key does not matter to it."""
    idempotent = Idempotent(
        caller.user_id, key, frame.method, params_hash(frame.params), caller.idempotency_limits
    )
    async with idempotent.stack:
        data = _jsonable(await method.handler(replace(caller, idempotent=idempotent), params))
        await idempotent.store(data)
    return data


async def expire_idempotency_keys(pool: asyncpg.Pool, ttl_seconds: float) -> int:
    """Forget the idempotency keys older than `ttl_seconds`; how many there were."""
    status: str = await pool.execute(_EXPIRE, float(ttl_seconds))
    return int(status.rsplit(" ", 1)[-1])


def _jsonable(data: Any) -> JsonValue:
    """The result as plain JSON values, written by pydantic and read back by orjson:
    `model_dump(mode="json")` calls back into Python for every value of a JsonValue
    field (a row's jsonb), 2,400 calls and 2.8 ms for a page of five versions; this
    way takes a tenth of that, with the same values."""
    written = data.model_dump_json() if isinstance(data, BaseModel) else _RESULT.dump_json(data)
    dumped: JsonValue = orjson.loads(written)
    return dumped


def _database_error(frame: Rpc, error: asyncpg.PostgresError) -> Error:
    """Refusals by the database, in the client's terms."""
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        return _error(frame, ErrorCode.FORBIDDEN, "not allowed for this user")
    if isinstance(error, asyncpg.NoDataFoundError):  # raised by our functions: P0002
        return _error(frame, ErrorCode.NOT_FOUND, error.args[0] if error.args else "not found")
    if isinstance(error, asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError):
        message = "took longer than SITEBUILDER_RPC_TIMEOUT_SECONDS (waiting on another edit?)"
        return _error(frame, ErrorCode.TIMEOUT, f"{message}; nothing was written")
    if isinstance(error, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        details: dict[str, JsonValue] = {"sqlstate": error.sqlstate}
        for key, attribute in (("column", "column_name"), ("constraint", "constraint_name")):
            value = getattr(error, attribute, None)
            if value:
                details[key] = value
        return _error(frame, ErrorCode.INVALID, str(error), details)
    if isinstance(error, asyncpg.CannotConnectNowError | asyncpg.AdminShutdownError):
        return _error(frame, ErrorCode.UNAVAILABLE, "the database is restarting; retry shortly")
    logger.error("rpc %s (ref %r) failed in the database: %r", frame.method, frame.ref, error)
    return _error(frame, ErrorCode.INTERNAL, "the request failed in the database")


def _error(
    frame: Rpc, code: ErrorCode, message: str, details: dict[str, JsonValue] | None = None
) -> Error:
    if code not in (ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE):
        logger.info("rpc %s (ref %r) refused: %s: %s", frame.method, frame.ref, code, message)
    return Error(ref=frame.ref, code=code, message=message, details=details)
