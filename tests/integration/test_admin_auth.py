"""Who may call a model server's admin API and its shadow comparison (issue 27 items 5 and 6), on the real API
server: real TokenRequest tokens, real RBAC, a real server process verifying them offline with the issuer keys
the operator read (``OperatorIdentity.server_auth``) — the operator itself running as its least-privilege user."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client, config

from localenv.cluster import Cluster
from localenv.modelwarden import service_account_token
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import serve_subprocess
from modelwarden.adapters.kube import KubeClient
from modelwarden.adapters.manifests import SERVER_SERVICE_ACCOUNT, ModelObject, ServerAuth, auth_env
from modelwarden.adapters.operator_identity import ADMIN_AUDIENCE, SHADOW_AUDIENCE, OperatorIdentity

OPERATOR_NS, OPERATOR_SA = "modelwarden-system", "modelwarden-operator"


def _operator_identity(cluster: Cluster) -> OperatorIdentity:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfigs["modelwarden-operator"]))
    return OperatorIdentity(KubeClient(api, concurrency=2), OPERATOR_NS, OPERATOR_SA)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), trained=train("logistic", 3, 200, seed=5))


@pytest.fixture
def served(modelwarden_installed: Cluster, namespace: str, artifact: DemoArtifact,
           tmp_path: Path) -> Iterator[tuple[str, OperatorIdentity]]:
    """A server configured exactly as the operator configures a model's pods in ``namespace`` (plus fault
    injection, as the local environment's operator does), and the operator's identity."""
    identity = _operator_identity(modelwarden_installed)
    auth: ServerAuth = asyncio.run(identity.server_auth())
    caller_env = {e["name"]: e["value"] for e in auth_env(ModelObject(namespace, "m", "u"), auth, True)}
    caller_env.pop("SHADOW_TOKEN_FILE")
    env = {**artifact.env("m", "v1"), **caller_env, "WARMUP_ROUNDS": "1", "MLMODEL_NAMESPACE": namespace,
           "FEEDBACK_DSN": str(tmp_path / "fb.sqlite3")}
    with serve_subprocess(env, log_path=tmp_path / "server.log") as (url, _):
        yield url, identity


def _flush(url: str, token: str | None) -> httpx.Response:
    return httpx.post(f"{url}/admin/flush", headers={"Authorization": f"Bearer {token}"} if token else {})


def test_the_operators_tokenrequest_token_calls_the_admin_api(served: tuple[str, OperatorIdentity]) -> None:
    url, identity = served
    token = asyncio.run(identity.token())
    assert _flush(url, token).status_code == 200
    faults = httpx.post(f"{url}/admin/faults", json={"errorRatio": 0.0, "actor": "test", "reason": "drill"},
                        headers={"Authorization": f"Bearer {token}"})
    assert faults.status_code == 200, "the local environment's servers serve fault injection"


def test_cluster_admin_may_inject_faults_with_a_token_for_the_operators_account(
        modelwarden_installed: Cluster, served: tuple[str, OperatorIdentity]) -> None:
    """How the demo and the tests inject faults: cluster-admin (trusted) asks TokenRequest for the operator SA."""
    url, _ = served
    token = service_account_token(modelwarden_installed, ADMIN_AUDIENCE)
    assert httpx.post(f"{url}/admin/faults", json={"errorRatio": 0.0, "actor": "admin", "reason": "drill"},
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_tokens_that_are_not_the_operators_admin_token_are_refused(
        modelwarden_installed: Cluster, namespace: str, served: tuple[str, OperatorIdentity]) -> None:
    url, _ = served
    cluster = modelwarden_installed
    cluster.kubectl("create", "serviceaccount", SERVER_SERVICE_ACCOUNT, "-n", namespace)
    cases = {
        # The model's own pods' account, with the admin audience: the right audience, the wrong caller.
        "WRONG_SUBJECT": service_account_token(cluster, ADMIN_AUDIENCE, namespace=namespace,
                                               name=SERVER_SERVICE_ACCOUNT),
        # The operator's account, with another audience (the shadow one; the API server's own).
        "WRONG_AUDIENCE": service_account_token(cluster, SHADOW_AUDIENCE),
        # What the old per-model admin Secret held (an HMAC hex digest).
        "MALFORMED_TOKEN": "5f" * 32,
    }
    default_audience = cluster.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NS).stdout.strip()
    assert _flush(url, default_audience).json()["reason"] == "WRONG_AUDIENCE"
    for reason, token in cases.items():
        refused = _flush(url, token)
        assert refused.status_code == 403, reason
        assert refused.json() == {"error": "FORBIDDEN", "reason": reason, "audience": ADMIN_AUDIENCE,
                                  "message": "the token does not prove the caller this endpoint accepts"}
    assert _flush(url, None).status_code == 401


def test_the_namespace_editor_cannot_obtain_anything_that_calls_the_admin_api(
        modelwarden_installed: Cluster, namespace: str, served: tuple[str, OperatorIdentity]) -> None:
    """``developer`` holds ``edit`` in the model's namespace: no admin Secret to read there, no TokenRequest for the
    operator's account, and the tokens it can get (its namespace's accounts) are refused by the server."""
    url, _ = served
    cluster = modelwarden_installed
    cluster.kubectl("create", "rolebinding", "developer-edit", "--clusterrole=edit", "--user=developer",
                    "-n", namespace)
    cluster.kubectl("create", "serviceaccount", SERVER_SERVICE_ACCOUNT, "-n", namespace)
    secrets = cluster.kubectl("get", "secrets", "-n", namespace, "-o", "name", user="developer").stdout
    assert "admin" not in secrets
    denied = cluster.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NS, f"--audience={ADMIN_AUDIENCE}",
                             user="developer", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    # What `edit` does allow: a pod (or a TokenRequest) as its own namespace's accounts. Not the operator.
    try:
        own = service_account_token(cluster, ADMIN_AUDIENCE, namespace=namespace, name=SERVER_SERVICE_ACCOUNT,
                                    user="developer")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"edit should allow a token of its namespace's accounts (the server must refuse it): {e.stderr}")
    assert _flush(url, own).json()["reason"] == "WRONG_SUBJECT"


def test_the_shadow_comparison_accepts_only_the_models_own_pods(
        modelwarden_installed: Cluster, namespace: str, served: tuple[str, OperatorIdentity],
        admin_api: client.ApiClient, artifact: DemoArtifact) -> None:
    url, _ = served
    cluster = modelwarden_installed
    other = f"{namespace}-b"
    client.CoreV1Api(admin_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        for ns in (namespace, other):
            cluster.kubectl("create", "serviceaccount", SERVER_SERVICE_ACCOUNT, "-n", ns)
        body = {"rows": [dict.fromkeys(artifact.features, 0.0)], "scores": [0.5], "threshold": 2.0}

        def compare(token: str | None) -> httpx.Response:
            return httpx.post(f"{url}/shadow/compare", json=body,
                              headers={"Authorization": f"Bearer {token}"} if token else {})

        assert compare(None).status_code == 401
        foreign = compare(service_account_token(cluster, SHADOW_AUDIENCE, namespace=other, name=SERVER_SERVICE_ACCOUNT))
        assert foreign.status_code == 403 and foreign.json()["reason"] == "WRONG_SUBJECT"
        operator_admin = compare(service_account_token(cluster, ADMIN_AUDIENCE))
        assert operator_admin.status_code == 403 and operator_admin.json()["reason"] == "WRONG_AUDIENCE"
        own = compare(service_account_token(cluster, SHADOW_AUDIENCE, namespace=namespace,
                                            name=SERVER_SERVICE_ACCOUNT))
        assert own.status_code == 200 and own.json()["compared"] == 1
    finally:
        client.CoreV1Api(admin_api).delete_namespace(other)
