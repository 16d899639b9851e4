"""adapters/operator_identity.py: the operator asks TokenRequest for its own account only, reuses a token until two
thirds of its life, and hands the servers the issuer keys it read (keeping the last good ones when a re-read fails)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from model_server.testing import TokenIssuer
from modelwarden.adapters.kube import KubeError
from modelwarden.adapters.operator_identity import ADMIN_AUDIENCE, OperatorIdentity

ISSUER = TokenIssuer()


class FakeKube:
    """Answers TokenRequest (as the API server would, for the account asked) and GET /openid/v1/jwks."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.requests: list[tuple[str, str, list[str]]] = []
        self.jwks_reads = 0
        self.jwks_down = False
        self.core = SimpleNamespace(create_namespaced_service_account_token=self._token)
        self.api_client = object()

    def _token(self, name: str, namespace: str, body: Any) -> Any:
        self.requests.append((namespace, name, list(body.spec.audiences)))
        token = ISSUER.token(f"system:serviceaccount:{namespace}:{name}", body.spec.audiences[0],
                             lifetime=body.spec.expiration_seconds, issued=self.now[0])
        return SimpleNamespace(status=SimpleNamespace(token=token))

    async def call(self, what: str, fn: Any, *args: Any) -> Any:
        if what.startswith("GET /openid"):
            self.jwks_reads += 1
            if self.jwks_down:
                raise KubeError("GET /openid/v1/jwks: 429 Too Many Requests", 429)
            return ISSUER.jwks()
        return fn(*args)


@pytest.fixture
def clock() -> list[float]:
    return [1_800_000_000.0]


def test_tokens_are_for_the_operators_own_account_and_reused_until_two_thirds_of_their_life(
        clock: list[float]) -> None:
    kube = FakeKube(clock)
    identity = OperatorIdentity(kube, "modelwarden-system", "modelwarden-operator",  # type: ignore[arg-type]
                                clock=lambda: clock[0])
    first = asyncio.run(identity.token())
    clock[0] += 390  # < 2/3 of 600 s
    assert asyncio.run(identity.token()) == first and len(kube.requests) == 1
    clock[0] += 20
    assert asyncio.run(identity.token()) != first
    assert kube.requests == [("modelwarden-system", "modelwarden-operator", [ADMIN_AUDIENCE])] * 2


def test_the_servers_get_the_issuer_keys_the_issuer_and_the_operators_subject(clock: list[float]) -> None:
    kube = FakeKube(clock)
    identity = OperatorIdentity(kube, "ops", "mw", clock=lambda: clock[0])  # type: ignore[arg-type]
    auth = asyncio.run(identity.server_auth())
    assert auth.issuer == TokenIssuer.ISSUER and auth.admin_subject == "system:serviceaccount:ops:mw"
    assert json.loads(auth.jwks) == json.loads(ISSUER.jwks())
    kube.jwks_down = True
    clock[0] += 601
    assert asyncio.run(identity.server_auth()) == auth, "the last good keys while the API server throttles"
    assert kube.jwks_reads == 2


def test_without_any_keys_read_the_failure_is_raised(clock: list[float]) -> None:
    kube = FakeKube(clock)
    kube.jwks_down = True
    identity = OperatorIdentity(kube, "ops", "mw", clock=lambda: clock[0])  # type: ignore[arg-type]
    with pytest.raises(KubeError, match="issuer keys"):
        asyncio.run(identity.server_auth())
