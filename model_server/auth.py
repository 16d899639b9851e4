"""Who may call the admin API and the shadow comparison: Kubernetes ServiceAccount tokens, verified offline.

The decision (``docs/threat-model.md``): a caller proves itself with a ServiceAccount token (a JWT the API
server signed) bound to one of our audiences. The server checks it **without calling the API server** (a
rollback's flush and warm-up must not wait on a throttled API server): the signature against the cluster's
service-account issuer keys (the JWKS the operator read from ``/openid/v1/jwks`` and put into the Deployment it
owns, with the issuer), the audience, the issuer, ``exp``/``nbf`` with a small leeway, and the subject:

* ``/admin/*``: audience :data:`ADMIN_AUDIENCE`, subject the operator's own ServiceAccount
  (``ADMIN_SUBJECT``); the operator gets such tokens with the TokenRequest API, restricted to its own account.
* ``/shadow/compare``: audience :data:`SHADOW_AUDIENCE`, subject the model's own pod ServiceAccount in the same
  namespace (``SHADOW_SUBJECT``); the stable's pods send the token the kubelet projects into them.

Only asymmetric algorithms are accepted, and only the one the key itself names: a token signed with HS256 "keyed"
by the public key, or with ``alg: none``, is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from model_server.http import Handler, HttpError, Params, Receive, Response, Scope

ADMIN_AUDIENCE = "modelwarden.io/admin"
SHADOW_AUDIENCE = "modelwarden.io/shadow"
# Clock skew tolerated between the API server that issued a token and this pod.
LEEWAY_SECONDS = 30
# What the API server signs service-account tokens with (RSA or ECDSA keys); never a symmetric algorithm.
ACCEPTED_CACHE_SIZE = 256
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})


def service_account_subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


class Refused(Exception):
    """A token that does not prove the expected caller; ``reason`` is a stable code for the answer."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenVerifier:
    """Checks one kind of caller: tokens for ``audience`` issued by ``issuer`` for ``subject``, signed by a key of
    ``jwks`` (the JWKS document, as JSON text)."""

    keys: dict[str, jwt.PyJWK]
    issuer: str
    audience: str
    subject: str
    leeway: float = LEEWAY_SECONDS
    # Tokens already verified -> their exp: the operator sends the same token for minutes, and an RSA verification
    # costs far more than the call it guards. The exact same string carries the exact same signature; exp still
    # holds on every call. Bounded (cleared when full).
    _accepted: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_jwks(cls, jwks: str, issuer: str, audience: str, subject: str,
                  leeway: float = LEEWAY_SECONDS) -> TokenVerifier:
        """Raises ValueError on a JWKS without a usable signing key, or an empty issuer/subject."""
        if not issuer or not subject:
            raise ValueError("an issuer and a subject are required")
        try:
            doc = json.loads(jwks)
            found = jwt.PyJWKSet.from_dict(doc).keys
        except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as e:
            raise ValueError(f"not a usable JWKS: {e}") from None
        keys = {k.key_id or "": k for k in found if k.algorithm_name in ASYMMETRIC}
        if not keys:
            raise ValueError("the JWKS holds no RSA or ECDSA signing key")
        return cls(keys, issuer, audience, subject, leeway)

    def verify(self, token: str) -> None:
        """Returns for a token that proves :attr:`subject` for :attr:`audience`, else raises :class:`Refused`."""
        expires = self._accepted.get(token)
        if expires is not None:
            if time.time() < expires + self.leeway:
                return
            del self._accepted[token]
        claims = self.claims(token)
        if len(self._accepted) >= ACCEPTED_CACHE_SIZE:
            self._accepted.clear()
        self._accepted[token] = float(claims["exp"])

    def claims(self, token: str) -> dict[str, Any]:
        """The verified token's claims, or :class:`Refused` (no cache)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("MALFORMED_TOKEN") from None
        key = self.keys.get(str(header.get("kid") or ""))
        if key is None and len(self.keys) == 1 and not header.get("kid"):
            key = next(iter(self.keys.values()))
        if key is None:
            raise Refused("UNKNOWN_KEY", "no issuer key with this kid")
        if header.get("alg") != key.algorithm_name:
            # alg "none", HS256 with the public key as its secret, or any algorithm the key was not made for.
            raise Refused("ALGORITHM_NOT_ALLOWED", str(header.get("alg")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[key.algorithm_name], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Refused("EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise Refused("NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise Refused("WRONG_AUDIENCE") from None
        except jwt.InvalidIssuerError:
            raise Refused("WRONG_ISSUER") from None
        except jwt.InvalidSignatureError:
            raise Refused("BAD_SIGNATURE") from None
        except jwt.PyJWTError as e:
            raise Refused("INVALID_TOKEN", type(e).__name__) from None
        if claims.get("sub") != self.subject:
            raise Refused("WRONG_SUBJECT", str(claims.get("sub")))
        return claims


def bearer(scope: Scope) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                return str(credential.strip().decode("latin-1"))
    return None


def require(verifier: TokenVerifier | None, handler: Handler, *, what: str,
            on_refused: Any = None) -> Handler:
    """``handler`` behind a verified token: 401 without one, 403 with a structured reason for a refused one, 403
    ``<what>_DISABLED`` while the server has no verifier configured (fail closed)."""
    async def check(scope: Scope, receive: Receive, params: Params) -> Response:
        if verifier is None:
            raise HttpError(403, f"{what}_DISABLED",
                            f"no caller can be verified: SERVICE_ACCOUNT_JWKS/ISSUER/{what}_SUBJECT are not set")
        token = bearer(scope)
        if token is None:
            raise HttpError(401, "UNAUTHORIZED", "a ServiceAccount token (Authorization: Bearer) is required",
                            headers=[(b"www-authenticate", b"Bearer")])
        try:
            verifier.verify(token)
        except Refused as e:
            if on_refused is not None:
                on_refused(scope, e)
            raise HttpError(403, "FORBIDDEN", "the token does not prove the caller this endpoint accepts",
                            reason=e.reason, audience=verifier.audience) from None
        return await handler(scope, receive, params)

    return check


def configured(jwks: str | None, issuer: str | None, audience: str, subject: str | None) -> TokenVerifier | None:
    """The verifier the settings describe; None (the endpoint answers 403) while any part is missing."""
    if not (jwks and issuer and subject):
        return None
    return TokenVerifier.from_jwks(jwks, issuer, audience, subject)
