"""The operator on the real control plane: dual sign-off, canary steps, manual promote, crash and resume.

The operator runs as the `modelwarden-operator` user, bound to exactly manifests/rbac's ClusterRole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubernetes import client

from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import ACTION_PLURAL, GROUP, VERSION, Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel, wait_for


def test_dual_sign_off_canary_steps_manual_promote_and_history(
        operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    cluster = operator.cluster
    admin = Models(api_clients["admin"], namespace)
    uri1, sha1 = artifact(tmp_path, "v1")
    admin.create(mlmodel("fraud", "v1", uri1, sha1))

    status = admin.wait_phase("fraud", Phase.AWAITING_APPROVAL, check=operator.check_alive)
    assert admin.deployment("fraud-stable") is None, "nothing is served before the quorum"

    # finance signs off with the CLI (as itself); regulatory with a plain object.
    done = cli(cluster, "finance-approver", "approve", "fraud", "-n", namespace, "--role", "finance", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["approver"] == "finance-approver"
    status = admin.wait_phase("fraud", Phase.AWAITING_APPROVAL)
    Models(api_clients["regulatory-approver"], namespace).approve(
        approval("fraud", "v1", sha1, "regulatory", "regulatory-approver"))

    status = admin.wait_phase("fraud", Phase.STABLE, timeout=90, check=operator.check_alive)
    stable = admin.deployment("fraud-stable")
    assert stable is not None and stable.status.ready_replicas == 2
    assert stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha1
    assert stable.metadata.owner_references[0].kind == "MLModel"
    generation_v1 = admin.get("fraud")["metadata"]["generation"]

    # v2: 10% for 1 s, 50% until a human promotes, 100% for 1 s.
    uri2, sha2 = artifact(tmp_path, "v2")
    admin.patch_spec("fraud", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2},
                               "rollout": {"steps": [{"setWeight": 10, "pauseSeconds": 1}, {"setWeight": 50},
                                                     {"setWeight": 100, "pauseSeconds": 1}]}})
    admin.wait_phase("fraud", Phase.AWAITING_APPROVAL, check=operator.check_alive)
    assert admin.deployment("fraud-canary") is None
    Models(api_clients["finance-approver"], namespace).approve(
        approval("fraud", "v2", sha2, "finance", "finance-approver"))
    Models(api_clients["regulatory-approver"], namespace).approve(
        approval("fraud", "v2", sha2, "regulatory", "regulatory-approver"))

    status = admin.wait_phase("fraud", Phase.PAUSED, timeout=90, check=operator.check_alive)
    assert status.current_step_index == 1 and status.canary_weight == 50
    canary = admin.deployment("fraud-canary")
    assert canary is not None and canary.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha2
    time.sleep(3)
    assert admin.status("fraud").phase == Phase.PAUSED, "a step without pause waits for a human"

    # promote is a ModelAction filed as the finance approver: the API server proves who asked, the operator acts
    # once and records the outcome on the action (its handledActions entry only until then).
    done = cli(cluster, "finance-approver", "promote", "fraud", "-n", namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    action = json.loads(done.stdout)["action"]
    status = admin.wait_phase("fraud", Phase.STABLE, timeout=90, check=operator.check_alive)

    def action_status() -> dict[str, object]:
        return dict(admin.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, ACTION_PLURAL, action)
                    .get("status") or {})

    wait_for(lambda: action_status().get("outcome") is not None, timeout=30, what="the promote action's outcome")
    assert (action_status()["outcome"], action_status()["version"]) == ("Succeeded", "v2")
    wait_for(lambda: admin.status("fraud").handled_actions == [], timeout=30,
             what="the committed outcome leaving handledActions once the action holds it")

    assert status.stable is not None and (status.stable.version, status.stable.sha256) == ("v2", sha2)
    assert [(h.version, h.sha256, h.outcome) for h in status.history] == [
        ("v1", sha1, "Superseded"), ("v2", sha2, "Serving")]
    for entry in status.history:
        assert {(a.role, a.approver) for a in entry.approvals} == {
            ("finance", "finance-approver"), ("regulatory", "regulatory-approver")}
    assert admin.deployment("fraud-canary") is None
    stable = admin.deployment("fraud-stable")
    assert stable is not None and stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha2
    model = admin.get("fraud")
    assert model["metadata"]["generation"] == generation_v1 + 1, "only our own spec patch bumped generation"
    reasons = [e.reason for e in admin.events("fraud")]
    assert {"QuorumMet", "Deployed", "StepAdvanced", "Promoted"} <= set(reasons)

    done = cli(cluster, "developer", "status", "fraud", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert "phase Stable" in done.stdout and "v2" in done.stdout


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
        operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    steps = [{"setWeight": 20, "pauseSeconds": 1}, {"setWeight": 60}, {"setWeight": 100, "pauseSeconds": 1}]
    for version, sha in (("v1", sha1), ("v2", sha2)):
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("churn", version, sha, role, user))
    admin.create(mlmodel("churn", "v1", uri1, sha1, steps=steps, replicas=3))
    admin.wait_phase("churn", Phase.STABLE, timeout=90, check=operator.check_alive)
    admin.patch_spec("churn", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    admin.wait_phase("churn", Phase.PAUSED, timeout=90, check=operator.check_alive)

    before = {n: admin.deployment(f"churn-{n}") for n in ("stable", "canary")}
    events_before = len(admin.events("churn"))
    model_before = admin.get("churn")
    operator.kill()
    operator.start()
    time.sleep(5)  # several passes of the restarted operator (it resyncs each model at start)
    operator.check_alive()

    status = admin.status("churn")
    assert status.phase == Phase.PAUSED and status.current_step_index == 1, status.model_dump_json(indent=1)
    for track, old in before.items():
        new = admin.deployment(f"churn-{track}")
        assert old is not None and new is not None
        assert new.metadata.generation == old.metadata.generation, f"{track} Deployment was not rewritten"
        assert new.spec.replicas == old.spec.replicas
    assert len(admin.events("churn")) == events_before, "no duplicated Events after the restart"
    model_after = admin.get("churn")
    assert model_after["metadata"]["generation"] == model_before["metadata"]["generation"]
    assert model_after["metadata"]["resourceVersion"] == model_before["metadata"]["resourceVersion"], \
        "nothing to write: the status the restarted operator decides is the one already there"

    done = cli(operator.cluster, "finance-approver", "promote", "churn", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("churn", Phase.STABLE, timeout=90, check=operator.check_alive)
    assert [h.version for h in status.history] == ["v1", "v2"]
