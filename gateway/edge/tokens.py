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
import orjson

ALGORITHM = "HS256"
USER_ROLE = "authenticated"
# Supabase's public key (`anon`): no user, reads only what is public.
ANON_ROLE = "anon"


class TokenError(ValueError):
    """A token that is malformed, badly signed, expired or meant for someone else."""


class TokenExpired(TokenError):
    """A token that was valid but whose `exp` has passed: the client should refresh it."""


def mint_anon_key(secret: str, *, ttl_seconds: int) -> str:
    """A Supabase-style `anon` key: public reads only."""
    now = int(time.time())
    claims = {"iss": "sitebuilder", "role": ANON_ROLE, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


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
        claims = self._decode(token, audience=self._audience, require=["sub", "exp"])
        try:
            UUID(str(claims["sub"]))
        except ValueError as error:
            raise TokenError("token subject is not a user id (uuid)") from error
        return claims

    def verify_key(self, token: str) -> dict[str, Any]:
        """A Supabase client's key: a user token, or an `anon` key (signed like user
        tokens, with role `anon`, no subject and, as Supabase issues them, no
        audience); `is_anonymous` tells which."""
        claims = self._decode(token, audience=None, require=["exp"])
        if is_anonymous(claims):
            return claims
        return self.verify(token)

    def _decode(self, token: str, *, audience: str | None, require: list[str]) -> dict[str, Any]:
        try:
            key, algorithms = self._key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                options={"require": require, "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenExpired("token expired") from error
        except jwt.PyJWTError as error:  # also a key of the wrong type for the alg
            raise TokenError(f"invalid token: {error}") from error
        try:  # the claims go to PostgreSQL as JSON (db.acting_user)
            orjson.dumps(claims)
        except TypeError as error:
            raise TokenError(f"invalid token: claims that JSON cannot carry: {error}") from None
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


def is_anonymous(claims: dict[str, Any]) -> bool:
    return claims.get("role") == ANON_ROLE and "sub" not in claims


def verify_token(token: str, secret: str, *, audience: str) -> dict[str, Any]:
    """Verify an HS256 token (what `sitebuilder-gateway token` mints)."""
    return TokenVerifier(audience=audience, secret=secret).verify(token)
