"""The GitOps story through a real Flux (source- and kustomize-controller built from the Go module proxy, running
against the real control plane), commits to a real Git repository served on loopback. The operator is the
production Controller in this process (as in test_gitops_health.py); the model's pods are on the simulated KWOK
nodes. The real-node version with real errors is ``python -m localenv.demo --gitops`` (tests/e2e).

Each step is a commit; Flux applies the MLModel as the namespace's ``models-applier`` ServiceAccount and each
approval as its approver (their identity, checked by the approval admission policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv import flux as flux_env
from localenv.cluster import Cluster
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import MLModelStatus, Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel
from tests.integration.test_gitops_health import act, ready
from tests.integration.test_rollback_triggers import InProcessOperator

MODEL = "m"
# The first test to use the `flux` fixture may wait for make test's background Flux build (~10-45 min cold).
pytestmark = pytest.mark.timeout(3000)


def wait(what: str, check: Callable[[], bool], timeout: float = 120, tick: Callable[[], Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if tick is not None:
            tick()
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def approvals(version: str, sha: str, roles: tuple[str, ...] = ("finance", "regulatory")) -> dict[str, Any]:
    return {f"approvals/{role}/{MODEL}-{version}.yaml":
            approval(MODEL, version, sha, role, flux_env.APPROVERS[role], name=f"{MODEL}-{version}-{role}")
            for role in roles}


def test_commits_drive_the_model_through_flux(
        flux: flux_env.Controllers, git_server: flux_env.GitServer, modelwarden_installed: Cluster,
        api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path) -> None:
    cluster = modelwarden_installed
    repo = flux_env.GitRepo(git_server, namespace)
    flux_env.sync(cluster, namespace, repo.url, timeout="5m")
    op = InProcessOperator(cluster, namespace)
    admin = Models(api_clients["admin"], namespace)
    uri, sha = {}, {}
    for version in ("v1", "v2", "v3"):
        uri[version], sha[version] = artifact(tmp_path, version)
    # v2 waits an hour at 50%: the Kustomization is still health-checking it when the rollback comes.
    steps = [{"setWeight": 50, "pauseSeconds": 3600}, {"setWeight": 100}]

    def model(version: str, rollout_steps: list[dict[str, Any]] = steps) -> dict[str, Any]:
        return {f"models/{MODEL}.yaml": mlmodel(MODEL, version, uri[version], sha[version], steps=rollout_steps)}

    def kustomization() -> dict[str, Any]:
        return flux_env.kustomization(cluster, namespace, "models")

    def applied(commit: str) -> Callable[[], bool]:
        return lambda: flux_env.applied_revision(kustomization()) == commit

    def ready_status() -> str:
        return flux_env.ready(kustomization())[0]

    def reconcile() -> MLModelStatus:
        return op.passes(MODEL)

    def exists() -> bool:
        try:
            admin.get(MODEL)
        except client.ApiException:
            return False
        return True

    # v1 and its two approvals in one commit → applied by Flux → Stable, and the Kustomization Ready.
    # models/ keeps a file besides the MLModels: a path that no longer exists fails the Kustomization (no prune).
    v1 = repo.commit({"models/README.md": "MLModels here are applied by Flux.", **model("v1"),
                      **approvals("v1", sha["v1"])}, "fraud model v1, approved by finance and regulatory")
    wait("Flux created the MLModel", exists)
    writes = flux_env.Writes(client.CustomObjectsApi(api_clients["admin"]), namespace, MODEL).start()
    op.until(MODEL, lambda s: s.phase == Phase.STABLE and ready(s), limit=300)
    wait("Kustomization Ready at v1", lambda: applied(v1)() and ready_status() == "True", tick=reconcile)

    # v2 → canary, still InProgress for Flux (the Kustomization waits).
    v2 = repo.commit({**model("v2"), **approvals("v2", sha["v2"])}, "v2")
    wait("v2 applied", lambda: admin.get(MODEL)["spec"]["version"] == "v2")
    op.until(MODEL, lambda s: s.phase == Phase.PROGRESSING and s.canary is not None)
    assert admin.deployment(f"{MODEL}-canary") is not None
    generation = admin.get(MODEL)["metadata"]["generation"]

    # A rollback while Flux waits on v2 (here asked for by a person; tests/e2e has errors on real pods): the
    # Kustomization fails at once with the MLModel's Stalled message, and Flux does not fight the rollback.
    act(cluster, "oncall", "rollback", MODEL, namespace)
    halted = op.until(MODEL, lambda s: s.phase == Phase.HALTED)
    stalled = next(c for c in halted.conditions if c.type == "Stalled")
    assert stalled.status == "True" and stalled.reason == "ManualRollback"
    # kstatus reads Stalled=True as Failed; kustomize-controller stops waiting at once (it does not wait out the
    # 5 m timeout) and names the object; the reason itself is on the MLModel.
    wait("Kustomization failed on the halt", lambda: ready_status() == "False", timeout=120)
    _, reason, message = flux_env.ready(kustomization())
    assert reason == "HealthCheckFailed", message
    assert f"failed early due to stalled resources: [MLModel/{namespace}/{MODEL} status: 'Failed']" in message
    assert v2 in kustomization()["status"]["lastAttemptedRevision"] and flux_env.applied_revision(kustomization()) == v1
    time.sleep(15)  # five of source-controller's polls and a Kustomization retry: a correction loop would show
    obj = admin.get(MODEL)
    assert obj["metadata"]["generation"] == generation, "nobody rewrote spec after the rollback"
    assert obj["spec"]["version"] == "v2" and op.passes(MODEL).phase == Phase.HALTED
    assert flux_env.spec_owners(obj) == {"kustomize-controller"}, obj["metadata"]["managedFields"]
    changed = [a for a in flux.applies("MLModel", namespace, MODEL) if a != "unchanged"]
    assert changed == ["created", "configured"], changed

    # A fixed v3 → the rollout resumes, and the Kustomization is Ready again.
    v3 = repo.commit({**model("v3", [{"setWeight": 100, "pauseSeconds": 0}]), **approvals("v3", sha["v3"])},
                     "v3: the fix")
    wait("v3 applied", lambda: admin.get(MODEL)["spec"]["version"] == "v3")
    op.until(MODEL, lambda s: s.phase == Phase.STABLE and s.stable is not None and s.stable.version == "v3"
             and ready(s))
    wait("Kustomization Ready at v3", lambda: applied(v3)() and ready_status() == "True", tick=reconcile)

    # A commit that removes an approval of the serving version: Flux prunes it; nothing rolls back.
    before = admin.get(MODEL)["metadata"]["resourceVersion"]
    repo.commit({f"approvals/finance/{MODEL}-v3.yaml": None}, "withdraw finance's approval of v3")
    wait("approval pruned", lambda: f"{MODEL}-v3-finance" not in {
        a["metadata"]["name"] for a in admin.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL)["items"]})
    status3 = op.passes(MODEL, 3)
    assert status3.phase == Phase.STABLE and status3.stable is not None and status3.stable.version == "v3"
    assert admin.get(MODEL)["metadata"]["resourceVersion"] == before, "not even a status write"
    writes.stop()
    counts = dict(writes.counts)
    assert generation == 2 and admin.get(MODEL)["metadata"]["generation"] == 3
    print(f"\nFlux's server-side applies of MLModel {MODEL}: {flux.applies('MLModel', namespace, MODEL)}")
    print(f"writes to the MLModel seen by a watch: {counts}; generations {sorted(set(writes.generations))}")
    assert counts["spec"] == 2, counts  # v2 and v3: each a commit Flux applied, none by the operator

    # prune: true and the MLModel's file removed → Flux deletes the MLModel; its Deployments and Services go
    # with it (owner references), and so do its incident ConfigMaps; the decision ledger stays.
    incidents = [c.metadata.name for c in client.CoreV1Api(api_clients["admin"]).list_namespaced_config_map(
        namespace).items if c.metadata.name.startswith(f"{MODEL}-rb-")]
    assert incidents, "the rollback's incident record exists before the prune"
    repo.commit({f"models/{MODEL}.yaml": None}, "retire the fraud model")
    wait("Flux deleted the MLModel", lambda: not exists())
    wait("its Deployments garbage-collected", lambda: admin.deployment(f"{MODEL}-stable") is None, timeout=60)
    core = client.CoreV1Api(api_clients["admin"])
    wait("its incident ConfigMaps garbage-collected", lambda: not [
        c for c in core.list_namespaced_config_map(namespace).items if c.metadata.name in incidents], timeout=60)
    ledgers = admin.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL)
    assert ledgers["items"], "the decision ledger outlives the MLModel"


def test_flux_cannot_approve_and_tenants_cannot_read_approver_credentials(
        flux: flux_env.Controllers, git_server: flux_env.GitServer, modelwarden_installed: Cluster,
        api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path) -> None:
    """An approval committed beside the model is applied as the namespace's models-applier, not as the approver:
    the API server refuses it and the Kustomization says why. The approvers' kubeconfigs live in flux-system,
    which a namespace editor cannot read."""
    cluster = modelwarden_installed
    repo = flux_env.GitRepo(git_server, f"{namespace}-forged")
    flux_env.sync(cluster, namespace, repo.url, timeout="1m")
    uri, sha = artifact(tmp_path, "v1")
    forged = approval(MODEL, "v1", sha, "finance", flux_env.APPROVERS["finance"], name="forged")
    commit = repo.commit({f"models/{MODEL}.yaml": [mlmodel(MODEL, "v1", uri, sha), forged]}, "v1, self-approved")

    def refused() -> bool:
        k = flux_env.kustomization(cluster, namespace, "models")
        status, _, message = flux_env.ready(k)
        return status == "False" and commit in (k.get("status") or {}).get("lastAttemptedRevision", "") \
            and "forged" in message
    wait("the Kustomization reports the refused approval", refused)
    message = flux_env.ready(flux_env.kustomization(cluster, namespace, "models"))[2]
    # Refused by RBAC first (models-applier may edit MLModels only); the admission policy stands behind it.
    assert f'"forged" is forbidden: User "system:serviceaccount:{namespace}:models-applier"' in message, message
    approvals_made = admin_approvals(api_clients["admin"], namespace)
    assert "forged" not in approvals_made

    # The developer edits the model namespace (Kubernetes' `edit` role, which reads its Secrets) ...
    client.RbacAuthorizationV1Api(api_clients["admin"]).create_namespaced_role_binding(namespace, {
        "metadata": {"name": "developer-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "developer"}]})
    def reads_namespace_secrets() -> bool:
        try:
            client.CoreV1Api(api_clients["developer"]).list_namespaced_secret(namespace)
        except client.ApiException:
            return False
        return True

    wait("the developer reads the namespace's Secrets", reads_namespace_secrets)
    # ... and still cannot read an approver's credentials.
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(api_clients["developer"]).read_namespaced_secret("approver-finance-approver",
                                                                          flux_env.NAMESPACE)
    assert denied.value.status == 403


def admin_approvals(api_client: client.ApiClient, namespace: str) -> set[str]:
    items = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL)["items"]
    return {a["metadata"]["name"] for a in items}
