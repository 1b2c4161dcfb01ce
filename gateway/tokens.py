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


class TokenExpired(TokenError):
    """A token that was valid but whose `exp` has passed: the client should refresh it."""


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


ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]


class TokenVerifier:
    """Checks user tokens against one HS256 secret, one public key, or a JWKS."""

    def __init__(
        self,
        *,
        audience: str,
        secret: str | None = None,
        public_key: str | None = None,
        jwks: str | None = None,
    ) -> None:
        self._audience = audience
        self._secret = secret
        self._public_key = public_key
        self._jwks = jwt.PyJWKSet.from_json(jwks) if jwks else None

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, expiry, audience and subject check out."""
        try:
            key, algorithms = self._key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenExpired("token expired") from error
        except jwt.PyJWTError as error:  # also a key of the wrong type for the alg
            raise TokenError(f"invalid token: {error}") from error
        try:
            UUID(str(claims["sub"]))
        except ValueError as error:
            raise TokenError("token subject is not a user id (uuid)") from error
        return claims

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            for jwk in self._jwks.keys:
                if jwk.key_id == kid:
                    return jwk.key, ASYMMETRIC_ALGORITHMS
            raise TokenError(f"invalid token: no key with kid {kid!r} in the JWKS")
        if self._public_key is not None:
            return self._public_key, ASYMMETRIC_ALGORITHMS
        return self._secret, [ALGORITHM]


def verify_token(token: str, secret: str, *, audience: str) -> dict[str, Any]:
    """Verify an HS256 token (what `sitebuilder-gateway token` mints)."""
    return TokenVerifier(audience=audience, secret=secret).verify(token)
