"""How the operator proves itself to its model servers: ServiceAccount tokens from the TokenRequest API.

The operator asks the API server for a short-lived token of **its own** ServiceAccount
(``<namespace>/<name>``, from settings) bound to audience ``modelwarden.io/admin`` (``serviceaccounts/token``
create, limited by ``resourceNames`` to that one account) and sends it with every admin call; it asks again
before the token's lifetime is two thirds gone. The same happens in the chart's pod and in a process run from a
host with a kubeconfig (tests, ``python -m modelwarden.handlers``): one way everywhere.

The servers check those tokens offline (``model_server/auth.py``) against what the operator puts into the
Deployments it owns (:class:`ServerAuth`): the cluster's service-account issuer keys (``GET /openid/v1/jwks``,
a nonResourceURL in the operator's ClusterRole), the issuer (the ``iss`` of the operator's own token, which the
API server just handed it over TLS) and the operator's subject. The keys are read once and re-read every
:data:`JWKS_MAX_AGE_SECONDS`; a failed re-read keeps the last good ones (a rollback never waits on it).
Tokens are never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from modelwarden.adapters.kube import KubeClient, KubeError
from modelwarden.adapters.manifests import ServerAuth

ADMIN_AUDIENCE = "modelwarden.io/admin"
SHADOW_AUDIENCE = "modelwarden.io/shadow"
# The shortest lifetime the API server grants (it may stretch it); asked again at two thirds of it.
TOKEN_SECONDS = 600
JWKS_MAX_AGE_SECONDS = 600.0


def service_account_subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, not verified: only for a token the API server itself just issued to us."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class OperatorIdentity:
    def __init__(self, kube: KubeClient, namespace: str, service_account: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._kube, self.namespace, self.service_account = kube, namespace, service_account
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, refresh at)
        self._auth: ServerAuth | None = None
        self._auth_read_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def subject(self) -> str:
        return service_account_subject(self.namespace, self.service_account)

    async def token(self, audience: str = ADMIN_AUDIENCE) -> str:
        """A token of the operator's ServiceAccount for ``audience``, fresh for at least a third of its life."""
        cached = self._tokens.get(audience)
        now = self._clock()
        if cached is not None and now < cached[1]:
            return cached[0]
        async with self._lock:
            cached = self._tokens.get(audience)
            if cached is not None and self._clock() < cached[1]:
                return cached[0]
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=TOKEN_SECONDS))
            answer = await self._kube.call(
                f"TokenRequest for ServiceAccount {self.namespace}/{self.service_account}",
                self._kube.core.create_namespaced_service_account_token, self.service_account, self.namespace,
                request)
            token = str(answer.status.token)
            claims = unverified_claims(token)
            issued, expires = float(claims.get("iat", now)), float(claims.get("exp", now + TOKEN_SECONDS))
            self._tokens[audience] = (token, issued + (expires - issued) * 2 / 3)
            return token

    async def server_auth(self) -> ServerAuth:
        """The issuer keys, the issuer and the operator's subject; raises :class:`KubeError` only while none were
        ever read."""
        if self._auth is not None and self._clock() - self._auth_read_at < JWKS_MAX_AGE_SECONDS:
            return self._auth
        try:
            issuer = str(unverified_claims(await self.token(ADMIN_AUDIENCE))["iss"])
            jwks = await self._kube.call("GET /openid/v1/jwks", _get_jwks, self._kube.api_client)
            # Sorted, compact: the same keys give the same Deployment (no roll without a key change).
            keys = sorted(json.loads(jwks).get("keys", []), key=lambda k: str(k.get("kid", "")))
            self._auth = ServerAuth(json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True), issuer,
                                    self.subject)
            self._auth_read_at = self._clock()
        except (KubeError, ValueError, KeyError) as e:
            if self._auth is None:
                raise KubeError(f"reading the service-account issuer keys: {e}") from e
        return self._auth


def _get_jwks(api_client: client.ApiClient) -> str:
    """``GET /openid/v1/jwks`` as text (undecoded: its content type is application/jwk-set+json)."""
    response: Any = client.OpenidApi(api_client).get_service_account_issuer_open_id_keyset(_preload_content=False)
    data = response.data if getattr(response, "data", None) is not None else response.read()
    return bytes(data).decode()
