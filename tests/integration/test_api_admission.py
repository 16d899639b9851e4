"""The API server itself refuses bad MLModels and ModelApprovals, and forged sign-offs.

Schema and CEL rules come from crds/ (generated from the pydantic models); identity rules from the
ValidatingAdmissionPolicy in manifests/admission/.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel

SHA = "ab" * 32
GOOD = mlmodel("m", "v1", "file:///models/m.skops", SHA)


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD with ``path`` (dotted; [i] for list items) set to ``value``; None deletes it."""
    body = copy.deepcopy(GOOD)
    node: Any = body
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if value is None:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return body


BAD_MODELS: list[tuple[str, dict[str, Any], str]] = [
    ("sha256 in upper case", _with("spec.artifact.sha256", "AB" * 32), "spec.artifact.sha256"),
    ("sha256 too short", _with("spec.artifact.sha256", "ab" * 31), "spec.artifact.sha256"),
    ("unknown format", _with("spec.artifact.format", "pickle"), "spec.artifact.format"),
    ("joblib without opt-in", _with("spec.artifact.format", "joblib"), "spec.artifact.format"),
    ("feature count disagrees", _with("spec.featureContract.nFeatures", 4), "spec.featureContract.nFeatures"),
    ("duplicate feature", _with("spec.featureContract.features", ["f1", "f1", "f2"]),
     "spec.featureContract.features"),
    ("weights not increasing", _with("spec.rollout.steps", [{"setWeight": 50}, {"setWeight": 20}]),
     "spec.rollout.steps"),
    ("repeated weight", _with("spec.rollout.steps", [{"setWeight": 50}, {"setWeight": 50}]), "spec.rollout.steps"),
    ("weight above 100", _with("spec.rollout.steps", [{"setWeight": 101}]), "spec.rollout.steps[0].setWeight"),
    ("weight zero", _with("spec.rollout.steps", [{"setWeight": 0}]), "spec.rollout.steps[0].setWeight"),
    ("no required roles", _with("spec.approvals", {"requiredRoles": []}), "spec.approvals.requiredRoles"),
    ("required role twice", _with("spec.approvals", {"requiredRoles": ["finance", "finance"]}),
     "spec.approvals.requiredRoles"),
    ("objective as a float", _with("spec.slo", {"objective": 99.9}), "spec.slo.objective"),
    ("objective of 100%", _with("spec.slo", {"objective": "100"}), "spec.slo.objective"),
    ("version not a DNS label", _with("spec.version", "V1_final"), "spec.version"),
    ("zero replicas", _with("spec.serving", {"replicas": 0}), "spec.serving.replicas"),
    ("missing artifact", _with("spec.artifact", None), "spec.artifact"),
    ("gatewayAPI without a route", _with("spec.rollout.trafficRouting", {"type": "gatewayAPI"}),
     "spec.rollout.trafficRouting.gatewayAPI"),
    # Issue 16: settings that cannot keep acknowledged feedback. Each names the field to set.
    ("no feedback store named", _with("spec.serving.feedbackStore", None), "spec.serving.feedbackStore.dsnSecretRef"),
    ("no serving section at all", _with("spec.serving", None), "spec.serving.feedbackStore.dsnSecretRef"),
    ("postgresql without its Secret", _with("spec.serving.feedbackStore", {"type": "postgresql"}),
     "spec.serving.feedbackStore.dsnSecretRef"),
    ("per-pod sqlite on two replicas", _with("spec.serving.feedbackStore", {"type": "sqlite"}),
     "spec.serving.feedbackStore.dsnSecretRef"),
    ("per-pod sqlite on one replica (still lost with its pod, and a rollout serves two versions)",
     _with("spec.serving", {"replicas": 1, "feedbackStore": {"type": "sqlite"}}),
     "spec.serving.feedbackStore.dsnSecretRef"),
]


def _rejection(create: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(ApiException) as rejected:
        create()
    return int(rejected.value.status), str(json.loads(rejected.value.body)["message"])


@pytest.mark.parametrize(("case", "body", "field"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_bad_mlmodel_is_rejected_naming_the_field(case: str, body: dict[str, Any], field: str,
                                                  modelwarden_installed: Cluster, admin_api: client.ApiClient,
                                                  namespace: str) -> None:
    status, message = _rejection(lambda: Models(admin_api, namespace).create(body))
    assert status == 422, message
    assert field in message, message


def test_an_unsafe_feedback_store_is_refused_saying_what_to_set(modelwarden_installed: Cluster,
                                                                admin_api: client.ApiClient, namespace: str) -> None:
    status, message = _rejection(lambda: Models(admin_api, namespace).create(
        _with("spec.serving.feedbackStore", {"type": "sqlite"})))
    assert status == 422, message
    assert "set serving.feedbackStore.dsnSecretRef" in message and "PostgreSQL DSN" in message, message
    assert "acceptFeedbackLoss: true" in message, message


@pytest.mark.parametrize("store", [
    {"dsnSecretRef": {"name": "feedback-store", "key": "dsn"}},
    {"type": "postgresql", "dsnSecretRef": {"name": "feedback-store", "key": "dsn"}},
    {"type": "sqlite", "acceptFeedbackLoss": True},
], ids=["postgresql by default", "postgresql spelled out", "sqlite with the loss accepted (development)"])
def test_feedback_stores_the_api_server_accepts(store: dict[str, Any], modelwarden_installed: Cluster,
                                                admin_api: client.ApiClient, namespace: str) -> None:
    created = Models(admin_api, namespace).create(_with("spec.serving.feedbackStore", store))
    assert created["spec"]["serving"]["feedbackStore"]["type"] == store.get("type", "postgresql")


def test_good_mlmodel_is_accepted(modelwarden_installed: Cluster, admin_api: client.ApiClient,
                                  namespace: str) -> None:
    created = Models(admin_api, namespace).create(GOOD)
    assert created["spec"]["enabled"] is True, "defaults are applied by the API server"


BAD_APPROVALS: list[tuple[str, dict[str, Any], str]] = [
    ("sha256 not hex", {"sha256": "z" * 64}, "spec.sha256"),
    ("role with spaces", {"role": "head of risk"}, "spec.role"),
    ("no model", {"modelRef": None}, "spec.modelRef"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_APPROVALS, ids=[c[0] for c in BAD_APPROVALS])
def test_bad_approval_is_rejected_naming_the_field(case: str, change: dict[str, Any], field: str,
                                                   modelwarden_installed: Cluster,
                                                   api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    body = approval("m", "v1", SHA, "finance", "finance-approver")
    for key, value in change.items():
        if value is None:
            del body["spec"][key]
        else:
            body["spec"][key] = value
    status, message = _rejection(lambda: Models(api_clients["finance-approver"], namespace).approve(body))
    assert status == 422, message
    assert field in message, message


FORGERIES: list[tuple[str, str, str, str, str]] = [
    # (case, requesting user, role, spec.approver, expected message fragment)
    ("developer approving", "developer", "finance", "developer", "developer may not approve as finance"),
    ("finance approving as regulatory", "finance-approver", "regulatory", "finance-approver",
     "finance-approver may not approve as regulatory"),
    ("claiming another person's name", "finance-approver", "finance", "regulatory-approver",
     "spec.approver must be the requesting user finance-approver"),
    ("a role nobody maps", "finance-approver", "treasury", "finance-approver", "not a known approver role"),
]


@pytest.mark.parametrize(("case", "user", "role", "approver", "fragment"), FORGERIES, ids=[c[0] for c in FORGERIES])
def test_forged_approval_is_denied_by_the_api_server(case: str, user: str, role: str, approver: str, fragment: str,
                                                     modelwarden_installed: Cluster,
                                                     api_clients: dict[str, client.ApiClient],
                                                     namespace: str) -> None:
    body = approval("m", "v1", SHA, role, approver)
    status, message = _rejection(lambda: Models(api_clients[user], namespace).approve(body))
    assert status in (403, 422), message
    assert fragment in message, message


def test_approval_cannot_be_edited_after_creation(modelwarden_installed: Cluster,
                                                  api_clients: dict[str, client.ApiClient], namespace: str) -> None:
    finance = Models(api_clients["finance-approver"], namespace)
    created = finance.approve(approval("m", "v1", SHA, "finance", "finance-approver"))
    name = created["metadata"]["name"]
    # Even a cluster admin, whom RBAC lets update anything, cannot rewrite a sign-off.
    admin = Models(api_clients["admin"], namespace)
    status, message = _rejection(lambda: admin.custom.patch_namespaced_custom_object(
        "modelwarden.io", "v1alpha1", namespace, "modelapprovals", name, {"spec": {"comment": "changed my mind"}}))
    assert status in (403, 422), message
    assert "immutable" in message, message


def test_one_person_in_both_roles_does_not_make_a_quorum(operator: OperatorProcess,
                                                         api_clients: dict[str, client.ApiClient],
                                                         namespace: str, tmp_path: Path) -> None:
    uri, sha = artifact(tmp_path, "v1")
    admin = Models(api_clients["admin"], namespace)
    admin.create(mlmodel("solo", "v1", uri, sha))
    dual = Models(api_clients["dual-approver"], namespace)
    # Both are admitted: dual-approver is in both groups...
    dual.approve(approval("solo", "v1", sha, "finance", "dual-approver"))
    dual.approve(approval("solo", "v1", sha, "regulatory", "dual-approver"))
    # ...but the operator will not count one person twice.
    def approved_condition() -> str:
        status = admin.status("solo")
        found = next((c for c in status.conditions if c.type == "Approved"), None)
        return f"{found.status}: {found.message}" if found else ""

    deadline = time.monotonic() + 30
    while "different person" not in approved_condition() and time.monotonic() < deadline:
        operator.check_alive()
        time.sleep(0.2)
    assert approved_condition().startswith("False: each required role needs a different person"), \
        approved_condition()
    assert admin.status("solo").phase == Phase.AWAITING_APPROVAL
    assert admin.deployment("solo-stable") is None
    # A second person completes it.
    Models(api_clients["regulatory-approver"], namespace).approve(
        approval("solo", "v1", sha, "regulatory", "regulatory-approver"))
    status = admin.wait_phase("solo", Phase.STABLE, timeout=90, check=operator.check_alive)
    assert {(a.role, a.approver) for a in status.history[0].approvals} == {
        ("finance", "dual-approver"), ("regulatory", "regulatory-approver")}


def test_the_examples_folder_applies_as_a_user_applies_it(modelwarden_installed: Cluster) -> None:
    """`kubectl apply -f examples/` as the README's reader would run it: every file in the folder is a
    Kubernetes object the API server accepts (training configs live in examples/training/, out of the way)."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    objects = [doc for path in sorted(examples.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    namespaces = {doc["metadata"]["namespace"] for doc in objects if "namespace" in doc.get("metadata", {})}
    for ns in namespaces:
        modelwarden_installed.kubectl("create", "namespace", ns, check=False)
    try:
        done = modelwarden_installed.kubectl("apply", "--dry-run=server", "-f", str(examples), check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("(server dry run)") == len(objects), done.stdout
    finally:
        for ns in namespaces:
            modelwarden_installed.kubectl("delete", "namespace", ns, "--wait=false", check=False)
