"""model_server/auth.py: who may call /admin/* and /shadow/compare. Tokens signed like the API server signs
ServiceAccount tokens (model_server.testing.TokenIssuer); every way a token can fail to prove the operator."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from model_server.auth import ADMIN_AUDIENCE, SHADOW_AUDIENCE, Refused, TokenVerifier
from model_server.testing import TokenIssuer

ISSUER = TokenIssuer()
VERIFIER = TokenVerifier.from_jwks(ISSUER.jwks(), TokenIssuer.ISSUER, ADMIN_AUDIENCE, TokenIssuer.OPERATOR)


def refused(token: str, verifier: TokenVerifier = VERIFIER) -> str:
    with pytest.raises(Refused) as caught:
        verifier.verify(token)
    return caught.value.reason


def _b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_the_operators_token_verifies() -> None:
    claims = VERIFIER.claims(ISSUER.token())
    assert claims["sub"] == TokenIssuer.OPERATOR and claims["aud"] == [ADMIN_AUDIENCE]


def test_a_verified_token_is_remembered_only_until_it_expires() -> None:
    verifier = TokenVerifier.from_jwks(ISSUER.jwks(), TokenIssuer.ISSUER, ADMIN_AUDIENCE, TokenIssuer.OPERATOR,
                                       leeway=0)
    token = ISSUER.token(lifetime=1)
    verifier.verify(token)
    verifier.verify(token)  # from the cache
    time.sleep(1.2)
    assert refused(token, verifier) == "EXPIRED", "a remembered token expires like any other"


@pytest.mark.parametrize(("token", "reason"), [
    (ISSUER.token(issued=time.time() - 3600), "EXPIRED"),
    (ISSUER.token(issued=time.time() + 3600), "NOT_YET_VALID"),
    (ISSUER.token(audience=SHADOW_AUDIENCE), "WRONG_AUDIENCE"),
    (ISSUER.token(audience="https://kubernetes.default.svc.cluster.local"), "WRONG_AUDIENCE"),
    (ISSUER.token(issuer="https://evil.example"), "WRONG_ISSUER"),
    (ISSUER.token(subject="system:serviceaccount:team-a:modelwarden-model-server"), "WRONG_SUBJECT"),
    (ISSUER.token(subject="system:serviceaccount:team-a:modelwarden-operator"), "WRONG_SUBJECT"),
    (TokenIssuer(kid="test-key").token(), "BAD_SIGNATURE"),  # same kid, another key
    (TokenIssuer(kid="other-key").token(), "UNKNOWN_KEY"),
    ("0123456789abcdef" * 4, "MALFORMED_TOKEN"),  # the old-style shared admin token
], ids=["expired", "not-yet-valid", "shadow-audience", "api-server-audience", "issuer", "model-sa", "same-name-sa",
        "wrong-key", "unknown-kid", "old-shared-token"])
def test_a_token_that_does_not_prove_the_operator_is_refused(token: str, reason: str) -> None:
    assert refused(token) == reason


def test_alg_none_is_refused() -> None:
    claims = jwt.decode(ISSUER.token(), options={"verify_signature": False})
    unsigned = f"{_b64({'alg': 'none', 'kid': ISSUER.kid})}.{_b64(claims)}."
    assert refused(unsigned) == "ALGORITHM_NOT_ALLOWED"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    # The classic confusion: the attacker knows the public key (the JWKS is not secret) and uses it as an HMAC key.
    from cryptography.hazmat.primitives import serialization

    public_pem = ISSUER.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(ISSUER.token(), options={"verify_signature": False})
    header = {"alg": "HS256", "kid": ISSUER.kid, "typ": "JWT"}
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    assert refused(f"{signing_input}.{signature.rstrip(b'=').decode()}") == "ALGORITHM_NOT_ALLOWED"


def test_an_expired_token_within_the_leeway_still_verifies() -> None:
    VERIFIER.verify(ISSUER.token(issued=time.time() - 610))  # expired 10 s ago, leeway 30 s


@pytest.mark.parametrize("jwks", ["", "{}", '{"keys": []}', "not json",
                                  '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}'])
def test_a_jwks_without_an_asymmetric_signing_key_is_a_configuration_error(jwks: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names what is wrong; any of several
        TokenVerifier.from_jwks(jwks, TokenIssuer.ISSUER, ADMIN_AUDIENCE, TokenIssuer.OPERATOR)
