"""The environment the operator renders into a model Deployment and the settings the server reads agree.

Both sides own their half (``adapters/manifests.py`` writes the env, ``model_server/config.py`` and
``model_server/fetch.py`` read it); this is the one place that holds them together, so renaming a variable on
one side only fails here instead of in a pod that never becomes Ready.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from model_server import config as server_config
from model_server.testing import TokenIssuer
from modelwarden.adapters.manifests import (
    SERVER_PORT,
    SHADOW_TOKEN_MOUNT,
    ModelObject,
    ServerAuth,
    deployment_manifest,
)
from modelwarden.api import v1alpha1 as api
from tests.unit.engine_world import SHA, make_spec

FETCH = Path(server_config.__file__).with_name("fetch.py")
MODEL = ModelObject(namespace="team", name="credit", uid="u1")
ISSUER = TokenIssuer()
AUTH = ServerAuth(ISSUER.jwks(), TokenIssuer.ISSUER, TokenIssuer.OPERATOR)
# What only the server container gets: how it verifies its callers, and the stable's own shadow token.
CALLER_ENV = {"SERVICE_ACCOUNT_JWKS", "SERVICE_ACCOUNT_ISSUER", "ADMIN_SUBJECT", "SHADOW_SUBJECT", "SHADOW_TOKEN_FILE"}
ARTIFACT = api.ArtifactVersion(version="v1", sha256=SHA["v1"], uri="file:///models/v1/model.skops", format="skops")


def rendered(spec: api.MLModelSpec, track: api.Track = "canary") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(server env, fetch init container env) of the Deployment the operator applies."""
    pod = deployment_manifest(MODEL, spec, track, ARTIFACT, 2, "fp", auth=AUTH)["spec"]["template"]["spec"]
    return pod["containers"][0]["env"], pod["initContainers"][0]["env"]


def as_pod_sees_it(env: list[dict[str, Any]]) -> dict[str, str]:
    """The env as the kubelet resolves it (the downward API namespace; a Secret's DSN as a placeholder)."""
    out = {}
    for var in env:
        if "value" in var:
            out[var["name"]] = var["value"]
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            out[var["name"]] = MODEL.namespace
        else:
            out[var["name"]] = "postgresql://from-secret"
    return out


def fetch_reads() -> set[str]:
    """The variables ``model_server/fetch.py`` reads (``os.environ["NAME"]``)."""
    names = set()
    for node in ast.walk(ast.parse(FETCH.read_text())):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "environ"
                and isinstance(node.slice, ast.Constant)):
            names.add(str(node.slice.value))
    return names


def test_every_variable_the_operator_sets_is_read_by_the_server_or_the_fetcher() -> None:
    server, _ = rendered(make_spec())
    unknown = {var["name"] for var in server} - set(server_config.ENV_VARS) - fetch_reads()
    assert unknown == set()


def test_the_operator_sets_every_variable_the_server_and_the_fetcher_require() -> None:
    server, fetch = rendered(make_spec())
    required = {name for name, (default, _) in server_config.ENV_VARS.items() if default == "(required)"}
    assert required - {var["name"] for var in server} == set()
    assert fetch_reads() - {var["name"] for var in fetch} == set()


@pytest.mark.parametrize("track", ["stable", "canary"])
def test_the_rendered_env_reads_back_as_the_specs_values(track: api.Track) -> None:
    spec = make_spec(serving={"replicas": 2, "neutralPrediction": "0.5"}, slo={"objective": "99.5"})
    server, fetch = rendered(spec, track)
    settings = server_config.Settings.from_env(as_pod_sees_it(server))
    assert (settings.model_name, settings.model_version, settings.model_track) == ("credit", "v1", track)
    assert (settings.artifact_sha256, settings.model_format) == (SHA["v1"], "skops")
    assert settings.allow_joblib is False
    assert settings.neutral_prediction == 0.5 and settings.slo_objective_ratio == pytest.approx(0.995)
    assert settings.feature_contract is not None
    assert (settings.feature_contract.name, list(settings.feature_contract.features)) == ("fc", ["a", "b"])
    # The kill switch is followed through the API, not baked into the pod (no restart to flip it).
    assert settings.mlmodel_watch and settings.mlmodel_namespace == "team" and settings.mlmodel_name == "credit"
    assert (settings.host, settings.port) == ("0.0.0.0", SERVER_PORT)
    # Only the operator may call /admin/*; only this namespace's model pods may call /shadow/compare.
    assert (settings.service_account_jwks, settings.service_account_issuer) == (AUTH.jwks, TokenIssuer.ISSUER)
    assert settings.admin_subject == "system:serviceaccount:modelwarden-system:modelwarden-operator"
    assert settings.shadow_subject == "system:serviceaccount:team:modelwarden-model-server"
    assert settings.shadow_token_file == Path(SHADOW_TOKEN_MOUNT) / "token"
    assert settings.fault_injection is False, "only the local environment turns fault injection on"
    assert fetch == [v for v in server if v["name"] not in CALLER_ENV], \
        "the fetcher verifies exactly what the server will load"


def test_a_postgres_feedback_store_comes_from_the_secret_and_replaces_the_pod_local_file() -> None:
    spec = make_spec(serving={"replicas": 2, "feedbackStore": {"dsnSecretRef": {"name": "fb", "key": "dsn"}}})
    server, _ = rendered(spec)
    dsn = [var for var in server if var["name"] == "FEEDBACK_DSN"]
    assert dsn == [{"name": "FEEDBACK_DSN", "valueFrom": {"secretKeyRef": {"name": "fb", "key": "dsn"}}}]
    assert server_config.Settings.from_env(as_pod_sees_it(server)).feedback_dsn == "postgresql://from-secret"


def test_the_shadow_mirror_the_operator_renders_is_what_the_stable_reads() -> None:
    """During a shadow stage the stable's pods get the candidate's Service and the share; every pod of a model with
    a shadow stage gets the spec's threshold (the candidate compares with its own)."""
    from modelwarden.engine.actions import MirrorTo

    spec = make_spec(rollout={"steps": [{"setWeight": 100}], "shadow": {"decisionThreshold": "0.6"}})
    pod = deployment_manifest(MODEL, spec, "stable", ARTIFACT, 2, "fp", mirror_host="198.18.100.7",
                              mirror=MirrorTo(percent=25, decision_threshold="0.6"))["spec"]["template"]["spec"]
    env = as_pod_sees_it(pod["containers"][0]["env"])
    assert {k for k in env if k.startswith("SHADOW_")} <= set(server_config.ENV_VARS)
    settings = server_config.Settings.from_env({**env, "ARTIFACT_DIR": "/x"})
    assert settings.shadow_target_url == f"http://198.18.100.7:{SERVER_PORT}", "the candidate Service's ClusterIP"
    assert (settings.shadow_percent, settings.shadow_decision_threshold) == (25.0, 0.6)
    candidate = as_pod_sees_it(rendered(spec, "canary")[0])
    assert server_config.Settings.from_env({**candidate, "ARTIFACT_DIR": "/x"}).shadow_decision_threshold == 0.6
    assert "SHADOW_TARGET_URL" not in candidate
    assert "SHADOW_TARGET_URL" not in as_pod_sees_it(rendered(make_spec(), "stable")[0])


def test_the_shadow_token_is_projected_into_the_server_container_only() -> None:
    pod = deployment_manifest(MODEL, make_spec(), "stable", ARTIFACT, 2, "fp", auth=AUTH)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "shadow-token")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "modelwarden.io/shadow", "expirationSeconds": 600, "path": "token"}}]
    assert pod["serviceAccountName"] == "modelwarden-model-server"
    assert any(m["name"] == "shadow-token" for m in pod["containers"][0]["volumeMounts"])
    assert all(m["name"] != "shadow-token" for m in pod["initContainers"][0]["volumeMounts"])
    assert not any(v.get("secret") for v in pod["volumes"]), "no admin Secret any more"
