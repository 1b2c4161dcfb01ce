"""`rpc` frames: look the method up, validate its params, run it as the user, reply.

A method is a params model (in protocol/) and an async handler that gets the
validated params and a `Call`, whose `as_user()` opens a transaction in which
PostgreSQL sees the connection's user (row-level security decides, not Python).
The handler returns a JSON-able value (pydantic models are dumped) or raises
`RpcError`; database errors are mapped here, once, to stable codes, so no method
ever sends a stack trace and every failure is logged once with its ref.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from db.acting_user import Conn, acting_as
from protocol.errors import ErrorCode
from protocol.frames import Error, Ref, Result, Rpc

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=BaseModel)

_JSON: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)


class RpcError(Exception):
    """A refusal a method decides on itself (not found, conflict…)."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, JsonValue] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Call:
    """Who calls, and how to reach the database as them."""

    user_id: UUID
    claims: Mapping[str, Any]
    pool: asyncpg.Pool
    ref: Ref | None
    # Users subscribed to a project on this gateway right now (presence will refine it).
    online: Callable[[UUID], set[UUID]]

    @asynccontextmanager
    async def as_user(self) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection, as this user."""
        async with self.pool.acquire() as conn, acting_as(conn, self.user_id, self.claims) as tx:
            yield tx


Handler = Callable[[Call, P], Awaitable[Any]]


@dataclass(frozen=True)
class Method(Generic[P]):
    params: type[P]
    handler: Handler[P]


Methods = Mapping[str, Method[Any]]


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
        data = await method.handler(caller, params)
    except RpcError as error:
        return _error(frame, error.code, error.message, error.details)
    except asyncpg.PostgresError as error:
        return _database_error(frame, error)
    except (OSError, asyncpg.InterfaceError) as error:
        logger.warning("rpc %s (ref %r): database unreachable: %s", frame.method, frame.ref, error)
        return _error(frame, ErrorCode.UNAVAILABLE, "the database is unreachable; retry shortly")
    return Result(ref=frame.ref, data=_jsonable(data))


def _jsonable(data: Any) -> JsonValue:
    dumped: JsonValue = (
        data.model_dump(mode="json")
        if isinstance(data, BaseModel)
        else _JSON.dump_python(data, mode="json")
    )
    return dumped


def _database_error(frame: Rpc, error: asyncpg.PostgresError) -> Error:
    """Refusals by the database, in the client's terms."""
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        return _error(frame, ErrorCode.FORBIDDEN, "not allowed for this user")
    if isinstance(error, asyncpg.NoDataFoundError):  # raised by our functions: P0002
        return _error(frame, ErrorCode.NOT_FOUND, error.args[0] if error.args else "not found")
    if isinstance(error, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        column = getattr(error, "column_name", None) or getattr(error, "constraint_name", None)
        details: dict[str, JsonValue] = {"sqlstate": error.sqlstate}
        if column:
            details["column"] = column
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
