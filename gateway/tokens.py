"""User tokens: HS256 JWTs in the shape Supabase issues (sub, aud, role, exp).

Keeping to Supabase's claims means a browser signed in with Supabase Auth can
present the same token here, and the claims can be handed to PostgreSQL unchanged
as `request.jwt.claims`.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import jwt

ALGORITHM = "HS256"
USER_ROLE = "authenticated"


class TokenError(ValueError):
    """A token that is malformed, badly signed, expired or meant for someone else."""


def mint_token(
    secret: str,
    user_id: UUID,
    *,
    audience: str,
    ttl_seconds: int,
    email: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": audience,
        "role": USER_ROLE,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if email is not None:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str, *, audience: str) -> dict[str, Any]:
    """The token's claims, once signature, expiry, audience and subject check out."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError as error:
        raise TokenError("token expired") from error
    except jwt.InvalidTokenError as error:
        raise TokenError(f"invalid token: {error}") from error
    try:
        UUID(str(claims["sub"]))
    except ValueError as error:
        raise TokenError("token subject is not a user id (uuid)") from error
    return claims
