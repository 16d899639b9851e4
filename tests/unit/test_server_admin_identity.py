"""The server's side of the operator's proof and of counting traffic by what answered: the verifier comes from
the environment the operator sets on the pod (issuer keys, issuer, subjects), a JWKS that is not one stops the
server at start-up, and every answer (a refusal too) names the version, sha256 and track of the server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from model_server.app import HEADER_SHA256, HEADER_TRACK, HEADER_VERSION, ModelServer
from model_server.config import ConfigError, Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import TokenIssuer, serve_in_thread

ENV = {"MODEL_NAME": "m", "MODEL_VERSION": "v7", "MODEL_TRACK": "canary", "ARTIFACT_SHA256": "a" * 64,
       "MODEL_FORMAT": "skops", "WARMUP_ROUNDS": "1"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), trained=train("logistic", 3, 200, seed=3))


def test_the_operators_token_is_verified_with_what_the_environment_says(artifact: DemoArtifact,
                                                                       tmp_path: Path) -> None:
    issuer = TokenIssuer()
    env = {**ENV, **issuer.server_env(), "ARTIFACT_DIR": str(artifact.directory), "ARTIFACT_SHA256": artifact.sha256,
           "FEEDBACK_DSN": str(tmp_path / "fb.sqlite3")}
    with serve_in_thread(ModelServer(Settings.from_env(env))) as url:
        def flush(token: str) -> httpx.Response:
            return httpx.post(f"{url}/admin/flush", headers={"Authorization": f"Bearer {token}"})

        assert flush(issuer.token()).status_code == 200
        assert flush(TokenIssuer().token()).json()["reason"] == "BAD_SIGNATURE", "another cluster's key"
        answer = httpx.get(f"{url}/v2/health/live")
        assert (answer.headers[HEADER_VERSION], answer.headers[HEADER_SHA256], answer.headers[HEADER_TRACK]) == (
            "v7", artifact.sha256, "canary")
        refused = flush("0123456789abcdef" * 4)  # what the old per-model admin Secret held
        assert refused.status_code == 403 and refused.headers[HEADER_SHA256] == artifact.sha256, \
            "errors say who answered too"
        assert httpx.post(f"{url}/admin/faults", json={"errorRatio": 1, "actor": "a", "reason": "r"},
                          headers={"Authorization": f"Bearer {issuer.token()}"}).status_code == 404, \
            "no fault injection unless FAULT_INJECTION=true"


def test_a_jwks_that_is_not_one_stops_the_server_at_start_up() -> None:
    env = {**ENV, "ARTIFACT_DIR": "/a", **TokenIssuer().server_env()}
    assert Settings.from_env(env).fault_injection is False
    assert Settings.from_env({**env, "FAULT_INJECTION": "true"}).fault_injection is True
    with pytest.raises(ConfigError, match="SERVICE_ACCOUNT_JWKS"):
        Settings.from_env({**env, "SERVICE_ACCOUNT_JWKS": '{"keys": []}'})
