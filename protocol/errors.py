"""Error codes and close codes: stable names clients can switch on."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    RATE_LIMITED = "rate_limited"
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    UNKNOWN_USER = "unknown_user"
    USER_MISMATCH = "user_mismatch"
    AUTH_TIMEOUT = "auth_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    FORBIDDEN = "forbidden"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    UNAVAILABLE = "unavailable"
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"
    PRESENCE_TOO_LARGE = "presence_too_large"
    INTERNAL = "internal_error"


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses (4000-4999 are the application's)."""

    NORMAL = 1000
    # A Supabase socket URL asking for a protocol version this gateway does not speak.
    UNSUPPORTED = 1003
    SERVICE_RESTART = 1012
    AUTH_TIMEOUT = 4001
    AUTH_FAILED = 4003
    SLOW_CONSUMER = 4008
    TOO_MANY_CONNECTIONS = 4009
    # No pong within the ping timeout, while the gateway had read all the client sent.
    PING_TIMEOUT = 4010


class ProtocolError(Exception):
    """A client frame the gateway refuses; becomes an `error` frame, never a close."""

    def __init__(self, code: ErrorCode, message: str, ref: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
