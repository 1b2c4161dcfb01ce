"""Token verification with each kind of key the settings accept.

Supabase projects sign with an HS256 secret or, newer ones, with asymmetric keys
published as a JWKS; a token minted there must verify here unchanged, and a
token signed any other way must not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.edge.tokens import TokenError, TokenExpired, TokenVerifier
from tests.conftest import UserFactory
from tests.gateway_fixtures import (
    AUDIENCE,
    Connect,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def claims(subject: uuid.UUID, ttl: int = 60, audience: str = AUDIENCE) -> dict[str, Any]:
    return {
        "sub": str(subject),
        "aud": audience,
        "role": "authenticated",
        "exp": int(time.time()) + ttl,
    }


def hmac_token(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token built by hand: PyJWT itself refuses to HMAC with a PEM key."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + part(signature)


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwks_of(keys: dict[str, PrivateKey]) -> str:
    """A JWKS document publishing the public halves of `keys` under their kids."""
    documents = []
    for kid, key in keys.items():
        if isinstance(key, rsa.RSAPrivateKey):
            document = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            document["alg"] = "RS256"
        else:
            document = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            document["alg"] = "ES256"
        documents.append({**document, "kid": kid, "use": "sig"})
    return json.dumps({"keys": documents})


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# Public key


@pytest.mark.parametrize(("key_name", "algorithm"), [("rsa_key", "RS256"), ("ec_key", "ES256")])
def test_public_key_verifies_its_private_keys_tokens(
    request: pytest.FixtureRequest, key_name: str, algorithm: str
) -> None:
    key: PrivateKey = request.getfixturevalue(key_name)
    user = uuid.uuid4()
    verifier = TokenVerifier(audience=AUDIENCE, public_key=public_pem(key))
    assert verifier.verify(jwt.encode(claims(user), key, algorithm=algorithm))["sub"] == str(user)


def test_public_key_refuses_hs256_signed_with_the_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic algorithm confusion: the public key is no HMAC secret."""
    pem = public_pem(rsa_key)
    verifier = TokenVerifier(audience=AUDIENCE, public_key=pem)
    forged = hmac_token(claims(uuid.uuid4()), pem.encode())
    with pytest.raises(TokenError):
        verifier.verify(forged)


def test_public_key_refuses_another_keys_token(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, public_key=public_pem(rsa_key))
    with pytest.raises(TokenError):
        verifier.verify(jwt.encode(claims(uuid.uuid4()), ec_key, algorithm="ES256"))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenError):
        verifier.verify(jwt.encode(claims(uuid.uuid4()), other, algorithm="RS256"))


def test_public_key_checks_expiry_and_audience(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, public_key=public_pem(rsa_key))
    with pytest.raises(TokenExpired):
        verifier.verify(jwt.encode(claims(uuid.uuid4(), ttl=-60), rsa_key, algorithm="RS256"))
    with pytest.raises(TokenError, match=r"(?i)audience"):
        verifier.verify(jwt.encode(claims(uuid.uuid4(), audience="anon"), rsa_key, "RS256"))


# JWKS


def test_jwks_picks_the_key_named_by_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, jwks=jwks_of({"r1": rsa_key, "e1": ec_key}))
    user = uuid.uuid4()
    by_rsa = jwt.encode(claims(user), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    by_ec = jwt.encode(claims(user), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert verifier.verify(by_rsa)["sub"] == str(user)
    assert verifier.verify(by_ec)["sub"] == str(user)


def test_jwks_refuses_unknown_kid_and_wrong_key_under_a_known_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, jwks=jwks_of({"r1": rsa_key}))
    unknown = jwt.encode(claims(uuid.uuid4()), rsa_key, algorithm="RS256", headers={"kid": "r2"})
    with pytest.raises(TokenError, match="no key with kid 'r2'"):
        verifier.verify(unknown)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(uuid.uuid4()), impostor, algorithm="RS256", headers={"kid": "r1"})
    with pytest.raises(TokenError):
        verifier.verify(forged)


# Through the gateway's settings


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(jwks_of({"k1": rsa_key}))
    return path


@pytest.fixture
def gateway_overrides(jwks_file: Path) -> dict[str, Any]:
    return {"jwt_jwks_file": jwks_file}


async def test_gateway_with_a_jwks_file_accepts_its_tokens_and_refuses_hs256(
    ws_client: Connect, make_user: UserFactory, rsa_key: rsa.RSAPrivateKey
) -> None:
    user = await make_user()
    client = await ws_client()
    signed = jwt.encode(claims(user), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    reply = await client.request({"type": "auth", "token": signed})
    assert (reply["type"], reply["data"]["user_id"]) == ("ok", str(user))
    await client.ping()
    other = await ws_client()
    await other.send({"type": "auth", "token": jwt.encode(claims(user), "s" * 32, "HS256")})
    await other.expect_error("invalid_token")
    code, _ = await other.expect_closed()
    assert code == 4003
