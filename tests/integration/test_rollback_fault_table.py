"""The rollback fault table on the real API server (issue 24): faults against one on-call rollback.

The production Controller runs in this process as the least-privilege operator user against the real control
plane (KWOK nodes: pods are simulated, so "every answer" is the stable Deployment's pod template SHA256 with no
canary left; the same table on the real node, counting answers through the model's Service, with PostgreSQL, API
throttling and leader failover rows, is ``test_real_node_fault_table.py``). The artifact store is a real HTTP
server on loopback that can answer 503; the pager is a real webhook receiver on loopback; the ledger is
the real ModelLedger chain, checked with `modelwarden ledger verify`.

Each row asserts: the stable ends on v1's SHA256, exactly one incident and one page (pages counted by the
incident they carry, as PagerDuty's dedup_key does), the ledger verifies, and no rejection of the target. It
prints fault → seconds from the request until v1 serves → seconds until done → incidents, pages.

Extend :data:`FAULTS` for faults of the operator's own decisions; faults of what serves (pods, Service, feedback
store) belong in the real-node table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from localenv.artifacts import ArtifactServer
from localenv.cluster import Cluster
from modelwarden.adapters.notify import WebhookNotifier
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import MLModelStatus, Phase
from tests.integration.incidents import Pager, ledger_decisions, serving
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel
from tests.integration.test_ledger import verify
from tests.integration.test_rollback_triggers import InProcessOperator

LIMIT_SECONDS = 180.0


@dataclass(frozen=True)
class Fault:
    name: str
    store_503_seconds: float = 0.0
    # the API server refuses every ModelLedger write (a ValidatingAdmissionPolicy) this long after the request
    ledger_denied_seconds: float = 0.0
    # the operator's process state is lost (a new Controller, empty caches and memory) this long after the request
    restart_at: float | None = None


FAULTS = [
    Fault("none"),
    Fault("artifact store 503 for 20 s", store_503_seconds=20),
    Fault("store 503 for 20 s, operator restarted at 10 s", store_503_seconds=20, restart_at=10),
    Fault("ledger writes denied for 30 s", ledger_denied_seconds=30),
]


def deny_ledger_writes(cluster: Cluster, namespace: str) -> str:
    """A ValidatingAdmissionPolicy (and its binding) that refuses every ModelLedger write in ``namespace``."""
    name = f"fault-deny-ledger-{namespace}"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": name},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{
                           "apiGroups": [api.GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                           "resources": [api.LEDGER_PLURAL]}]},
                       "validations": [{"expression": "false", "message": "fault injected: the ledger is down"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name},
               "spec": {"policyName": name, "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": namespace}}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [policy, binding]}))
    return name


def ledger_write_refused(cluster: Cluster, namespace: str) -> bool:
    """Whether the policy is in force (the API server's admission sees it a moment after it is created)."""
    probe = {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "ModelLedger",
             "metadata": {"name": "fault-probe", "namespace": namespace},
             "spec": api.ModelLedgerSpec(model_ref=api.ModelRef(name="m"), model_uid="probe", segment=0,
                                         records=[]).wire()}
    done = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
    return "fault injected" in done.stderr


def run(op: InProcessOperator, namespace: str, name: str) -> tuple[float | None, MLModelStatus]:
    """One pass as a worker runs it (failures back off), on fresh caches and the real clock."""
    async def one() -> float | None:
        op.controller.prime(await op.kube.list_all([namespace]))
        return await op.controller.run_pass((namespace, name))

    op.now = dt.datetime.now(dt.UTC)
    wait = asyncio.run(one())
    return wait, MLModelStatus.model_validate(op.controller.models[(namespace, name)].get("status") or {})


def stable_sha(admin: Models) -> str | None:
    if admin.deployment("m-canary") is not None:
        return None
    deployment = admin.deployment("m-stable")
    return None if deployment is None else str(deployment.spec.template.metadata.annotations[api.ANNOTATION_SHA256])


TABLE: list[str] = []


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_rollback_under_fault_on_the_real_api_server(
        fault: Fault, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    store, pager = ArtifactServer(tmp_path, host="127.0.0.1"), Pager()
    with store, serving(pager.server):
        op = InProcessOperator(modelwarden_installed, namespace)
        op.controller.notifier = op.controller.applier.notifier = WebhookNotifier(pager.url)
        admin = Models(api_clients["admin"], namespace)
        shas: dict[str, str] = {}
        for version in ("v1", "v2"):
            _, sha = artifact(tmp_path, version)
            uri, shas[version] = f"{store.base_url}/model-{version}.skops", sha
            for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
                Models(api_clients[user], namespace).approve(approval("m", version, sha, role, user))
            if version == "v1":
                # No warm standby: these faults are on the artifact store's path, which a Ready standby skips.
                admin.create(mlmodel("m", "v1", uri, sha, steps=[{"setWeight": 100, "pauseSeconds": 0}],
                                     rollback={"standby": {"replicas": 0}}))
            else:
                admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri, "sha256": sha}})
            op.until("m", lambda s, v=version: s.phase == Phase.STABLE and s.stable is not None
                     and s.stable.version == v)
        assert pager.received == []

        policy = None
        if fault.ledger_denied_seconds:
            policy = deny_ledger_writes(modelwarden_installed, namespace)
            deadline = time.monotonic() + 30
            while not ledger_write_refused(modelwarden_installed, namespace) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ledger_write_refused(modelwarden_installed, namespace), "the fault is not in force"
        store.unavailable_for(fault.store_503_seconds)
        asked = time.monotonic()
        restarted = False
        # on-call files the rollback (a ModelAction bound to the model's uid), as the runbook says
        filed = cli(modelwarden_installed, "oncall", "rollback", "m", "-n", namespace, "-o", "json")
        assert filed.returncode == 0, filed.stderr
        on_prior: float | None = None
        status = MLModelStatus()
        while time.monotonic() - asked < LIMIT_SECONDS:
            elapsed = time.monotonic() - asked
            if policy is not None and elapsed >= fault.ledger_denied_seconds:
                modelwarden_installed.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                                              policy, "--ignore-not-found")
                policy = None
            if fault.restart_at is not None and elapsed >= fault.restart_at and not restarted:
                op = InProcessOperator(modelwarden_installed, namespace)
                op.controller.notifier = op.controller.applier.notifier = WebhookNotifier(pager.url)
                restarted = True
            wait, status = run(op, namespace, "m")
            if on_prior is None and stable_sha(admin) == shas["v1"]:
                on_prior = time.monotonic() - asked
            if status.phase == Phase.HALTED:
                break
            time.sleep(min(wait if wait is not None else 1.0, 1.0))
        done = time.monotonic() - asked

    assert status.phase == Phase.HALTED, status.model_dump_json(indent=1)
    assert on_prior is not None and stable_sha(admin) == shas["v1"], "every answer carries the prior SHA256"
    assert status.stable is not None and status.stable.sha256 == shas["v1"]
    assert status.last_rollback is not None and [i.id for i in status.incidents] == [status.last_rollback.id]
    assert pager.pages == 1, pager.received
    reasons = [e.reason for e in admin.events("m")]
    assert api.Reason.TARGET_SHA256_MISMATCH not in reasons, "an unavailable store never rejects the target"
    if fault.store_503_seconds:
        assert store.answered_503 > 0 and on_prior >= fault.store_503_seconds * 0.9
        assert any(t.event == api.Reason.WAITING_FOR_ARTIFACT_STORE for t in status.last_rollback.timeline)
    code, result = verify(modelwarden_installed, namespace, "m")
    assert code == 0, result
    decisions = ledger_decisions(api_clients["admin"], namespace)
    assert decisions.count(api.Reason.ROLLBACK_STARTED) == 1 and decisions.count(api.Reason.ROLLBACK_COMPLETE) == 1
    TABLE.append(f"{fault.name:<48} {on_prior:>14.1f} {done:>9.1f} {len(status.incidents):>9} {pager.pages:>5}")
    print("\n" + f"{'fault':<48} {'s to prior SHA':>14} {'s to done':>9} {'incidents':>9} {'pages':>5}\n"
          + "\n".join(TABLE))
