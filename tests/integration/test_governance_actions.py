"""Issue 27, items 1-4, on the real API server as real users (localenv/cluster.py USERS), with the operator running as
its least-privilege user on simulated nodes:

- actions are acted on exactly once, forever: 55 promotes after an on-call rollback each get an outcome, the old
  rollback is not replayed, and the queue is not stuck;
- a re-created model does not inherit the actions filed for its predecessor;
- a promote that waits (Prometheus down) does not delay a rollback;
- the removed resume annotation, set by a user with MLModel edit rights, clears no halt;
- a canary's approvers (and its promoter) may not resume it after it was rolled back;
- ``rollback --to`` a target whose bytes changed, or that was rolled back, or is not in history, is refused before
  anything moves, and the action says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel, wait_for

MANUAL_STEPS = [{"setWeight": 50}, {"setWeight": 100}]


@pytest.fixture
def fast_operator(modelwarden_installed: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(modelwarden_installed, tmp_path / "operator.log", env={"MODELWARDEN_RESYNC_SECONDS": "5"})
    proc.start()
    yield proc
    proc.stop()


def approve(api_clients: dict[str, client.ApiClient], namespace: str, model: str, version: str, sha: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(model, version, sha, role, user))


def act(cluster: Cluster, user: str, verb: str, model: str, namespace: str, *args: str) -> str:
    """``modelwarden VERB MODEL`` as ``user``: the ModelAction's name."""
    done = cli(cluster, user, verb, model, "-n", namespace, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["action"])


def file_action(api_client: client.ApiClient, namespace: str, model: str, verb: str, requester: str, *,
                model_uid: str | None = None, to: str | None = None) -> str:
    """A ModelAction created directly (kubectl create would do the same), as ``requester``."""
    spec: dict[str, Any] = {"modelRef": {"name": model}, "verb": verb, "requester": requester}
    if model_uid:
        spec["modelUid"] = model_uid
    if to:
        spec["to"] = to
    body = {"apiVersion": api.API_VERSION, "kind": "ModelAction", "metadata": {"generateName": f"{model}-{verb}-"},
            "spec": spec}
    created = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, body)
    return str(created["metadata"]["name"])


def action_status(admin: Models, name: str) -> api.ModelActionStatus:
    body = admin.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, admin.namespace, api.ACTION_PLURAL, name)
    return api.ModelActionStatus.model_validate(body.get("status") or {})


def outcome_of(admin: Models, name: str, timeout: float = 60) -> tuple[str, str, str]:
    """(outcome, reason, message) once the operator recorded it."""
    wait_for(lambda: action_status(admin, name).outcome is not None, timeout=timeout, what=f"{name}'s outcome")
    s = action_status(admin, name)
    return str(s.outcome), s.reason, s.message


def stable_v2(operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
              name: str, **spec: Any) -> tuple[Models, dict[str, tuple[str, str]]]:
    """v1, then v2, approved and promoted to stable (v2's manual steps promoted by on-call)."""
    admin = Models(api_clients["admin"], namespace)
    art = {v: artifact(tmp_path, v) for v in ("v1", "v2")}
    approve(api_clients, namespace, name, "v1", art["v1"][1])
    approve(api_clients, namespace, name, "v2", art["v2"][1])
    admin.create(mlmodel(name, "v1", *art["v1"], steps=MANUAL_STEPS, **spec))
    admin.wait_phase(name, Phase.STABLE, timeout=90, check=operator.check_alive)
    admin.patch_spec(name, {"version": "v2", "artifact": {"uri": art["v2"][0], "sha256": art["v2"][1]}})
    for step in (0, 1):
        admin.wait_phase(name, Phase.PAUSED, timeout=90, check=operator.check_alive,
                         until=lambda s, step=step: s.current_step_index == step)  # type: ignore[misc]
        act(operator.cluster, "oncall", "promote", name, namespace)
    admin.wait_phase(name, Phase.STABLE, timeout=90, check=operator.check_alive,
                     until=lambda s: s.stable is not None and s.stable.version == "v2")
    return admin, art


def halted_after_oncall_rollback(operator: OperatorProcess, admin: Models, name: str, namespace: str,
                                 ) -> tuple[str, api.MLModelStatus]:
    rollback = act(operator.cluster, "oncall", "rollback", name, namespace)
    assert outcome_of(admin, rollback)[0] == "Succeeded"
    status = admin.wait_phase(name, Phase.HALTED, timeout=90, check=operator.check_alive,
                              until=lambda s: s.last_rollback is not None and s.last_rollback.completed_at)
    return rollback, status


def test_55_promotes_after_a_rollback_each_get_an_outcome_and_the_rollback_is_not_replayed(
        fast_operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin, _ = stable_v2(fast_operator, api_clients, namespace, tmp_path, "credit")
    rollback, halted = halted_after_oncall_rollback(fast_operator, admin, "credit", namespace)
    uid = admin.get("credit")["metadata"]["uid"]
    promotes = [file_action(api_clients["finance-approver"], namespace, "credit", "promote", "finance-approver",
                            model_uid=uid) for _ in range(55)]
    for name in promotes:
        assert outcome_of(admin, name)[:2] == ("Rejected", "NoCanaryWaiting"), name
    # The queue moves on: a resume filed after them is carried out.
    resume = act(fast_operator.cluster, "oncall", "resume", "credit", namespace)
    assert outcome_of(admin, resume)[0] == "Succeeded"
    wait_for(lambda: admin.status("credit").handled_actions == [], timeout=30,
             what="every committed outcome copied to its action and dropped from handledActions")
    fast_operator.check_alive()
    status = admin.status("credit")
    assert status.halt is None and status.stable is not None and status.stable.version == "v1"
    assert [i.id for i in status.incidents] == [halted.last_rollback.id]  # type: ignore[union-attr]
    assert action_status(admin, rollback).outcome == "Succeeded"
    assert [e.reason for e in admin.events("credit")].count(api.Reason.ROLLBACK_STARTED) == 1


def test_a_recreated_model_does_not_inherit_the_actions_of_its_predecessor(
        fast_operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    uri, sha = artifact(tmp_path, "v1")
    approve(api_clients, namespace, "churn", "v1", sha)
    first = admin.create(mlmodel("churn", "v1", uri, sha))
    admin.wait_phase("churn", Phase.STABLE, timeout=90, check=fast_operator.check_alive)
    admin.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, "churn")
    wait_for(lambda: not admin.custom.list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL)["items"], timeout=30, what="the model gone")
    # Rollbacks filed for the old model: one bound to its uid (as the CLI files it), one unbound and older.
    bound = file_action(api_clients["oncall"], namespace, "churn", "rollback", "oncall",
                        model_uid=first["metadata"]["uid"])
    unbound = file_action(api_clients["oncall"], namespace, "churn", "rollback", "oncall")
    time.sleep(1.1)  # creation timestamps have second precision: the new model is strictly younger
    second = admin.create(mlmodel("churn", "v1", uri, sha))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    for name in (bound, unbound):
        result = outcome_of(admin, name)
        assert result[:2] == ("Rejected", "ModelRecreated"), result
        assert second["metadata"]["uid"] in result[2]
    status = admin.wait_phase("churn", Phase.STABLE, timeout=90, check=fast_operator.check_alive)
    assert status.halt is None and status.last_rollback is None, "nothing was rolled back"


def test_a_waiting_promote_does_not_delay_a_rollback(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    # Prometheus is configured but unreachable (a closed loopback port): no analysis verdict, so a promote at a
    # manual pause is admitted and waits (never promote without data).
    operator = OperatorProcess(modelwarden_installed, tmp_path / "operator.log", env={
        "MODELWARDEN_RESYNC_SECONDS": "5", "MODELWARDEN_PROMETHEUS_URL": "http://127.0.0.1:9",
        "MODELWARDEN_PROMETHEUS_TIMEOUT": "1"}).start()
    try:
        admin = Models(api_clients["admin"], namespace)
        art = {v: artifact(tmp_path, v) for v in ("v1", "v2")}
        approve(api_clients, namespace, "fraud", "v1", art["v1"][1])
        approve(api_clients, namespace, "fraud", "v2", art["v2"][1])
        admin.create(mlmodel("fraud", "v1", *art["v1"], steps=MANUAL_STEPS))
        admin.wait_phase("fraud", Phase.STABLE, timeout=90, check=operator.check_alive)
        admin.patch_spec("fraud", {"version": "v2", "artifact": {"uri": art["v2"][0], "sha256": art["v2"][1]}})
        admin.wait_phase("fraud", Phase.PAUSED, timeout=90, check=operator.check_alive)
        promote = act(modelwarden_installed, "finance-approver", "promote", "fraud", namespace)
        wait_for(lambda: any(c.reason == api.Reason.ANALYSIS_PENDING for c in admin.status("fraud").conditions),
                 timeout=60, what="the promote admitted and waiting for an analysis verdict")
        assert action_status(admin, promote).outcome is None
        rollback = act(modelwarden_installed, "oncall", "rollback", "fraud", namespace)
        assert outcome_of(admin, rollback)[0] == "Succeeded"
        status = admin.wait_phase("fraud", Phase.HALTED, timeout=90, check=operator.check_alive)
        assert status.canary is None and status.stable is not None and status.stable.version == "v1"
        # the promote then ends on its own: no canary is waiting any more
        assert outcome_of(admin, promote)[:2] == ("Rejected", "NoCanaryWaiting")
    finally:
        operator.stop()


def test_a_developer_setting_the_resume_annotation_does_not_clear_a_halt(
        fast_operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin, _ = stable_v2(fast_operator, api_clients, namespace, tmp_path, "pricing")
    _, halted = halted_after_oncall_rollback(fast_operator, admin, "pricing", namespace)
    assert halted.halt is not None
    halted_message = next(c.message for c in halted.conditions if c.type == "Halted")
    assert "modelwarden resume" in halted_message and "annotation" not in halted_message
    # The developer may edit MLModels (a Role like a GitOps deployer's) but is in no group that may resume.
    rbac = client.RbacAuthorizationV1Api(api_clients["admin"])
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "mlmodel-editor"}, "rules": [
        {"apiGroups": [api.GROUP], "resources": [api.MLMODEL_PLURAL], "verbs": ["get", "list", "patch", "update"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "developer-edits-mlmodels"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mlmodel-editor"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "developer"}]})
    developer = Models(api_clients["developer"], namespace).custom
    wait_for(lambda: _patched(developer, namespace, "pricing", {api.ANNOTATION_RESUME: halted.halt.id}),  # type: ignore[union-attr]
             timeout=30, what="the developer's annotation patch admitted (RBAC propagates)")
    status = admin.wait_phase("pricing", Phase.HALTED, timeout=60, check=fast_operator.check_alive,
                              until=lambda s: any(c.type == "AnnotationsIgnored" for c in s.conditions))
    ignored = next(c for c in status.conditions if c.type == "AnnotationsIgnored")
    assert "modelwarden resume MODEL" in ignored.message
    assert any(e.reason == "AnnotationsIgnored" and e.type == "Warning" for e in admin.events("pricing"))
    time.sleep(6)  # a resync later, still halted on v1
    status = admin.status("pricing")
    assert status.halt is not None and status.halt.id == halted.halt.id
    assert status.stable is not None and status.stable.version == "v1"


def _patched(custom: client.CustomObjectsApi, namespace: str, name: str, annotations: dict[str, str]) -> bool:
    try:
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, name,
                                              {"metadata": {"annotations": annotations}})
    except client.exceptions.ApiException as e:
        if e.status == 403:
            return False
        raise
    return True


@pytest.fixture
def approvers_may_resume(modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
                         ) -> Iterator[None]:
    """A shop that lets its finance approvers resume too (the verb groups are configuration)."""
    core = client.CoreV1Api(api_clients["admin"])
    groups = core.read_namespaced_config_map("modelwarden-action-groups", "modelwarden-system")
    before = groups.data["resume"]
    core.patch_namespaced_config_map("modelwarden-action-groups", "modelwarden-system",
                                     {"data": {"resume": f"{before},modelwarden:finance-approvers"}})
    yield
    core.patch_namespaced_config_map("modelwarden-action-groups", "modelwarden-system", {"data": {"resume": before}})


def test_a_canary_approver_cannot_resume_their_own_rolled_back_canary(
        fast_operator: OperatorProcess, approvers_may_resume: None, api_clients: dict[str, client.ApiClient],
        namespace: str, tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    art = {v: artifact(tmp_path, v) for v in ("v1", "v2")}
    approve(api_clients, namespace, "risk", "v1", art["v1"][1])
    approve(api_clients, namespace, "risk", "v2", art["v2"][1])
    admin.create(mlmodel("risk", "v1", *art["v1"], steps=MANUAL_STEPS, rollback={"resumeByAnotherPerson": True}))
    admin.wait_phase("risk", Phase.STABLE, timeout=90, check=fast_operator.check_alive)
    admin.patch_spec("risk", {"version": "v2", "artifact": {"uri": art["v2"][0], "sha256": art["v2"][1]}})
    admin.wait_phase("risk", Phase.PAUSED, timeout=90, check=fast_operator.check_alive)
    act(fast_operator.cluster, "oncall", "promote", "risk", namespace)
    admin.wait_phase("risk", Phase.PAUSED, timeout=90, check=fast_operator.check_alive,
                     until=lambda s: s.current_step_index == 1)
    # The canary is aborted: v2 never became stable, so status.history holds none of its approvers.
    _, halted = halted_after_oncall_rollback(fast_operator, admin, "risk", namespace)
    assert halted.last_rollback is not None and halted.last_rollback.from_version == "v2"
    assert not any(h.version == "v2" for h in halted.history)
    assert halted.last_rollback.accountable == ["finance-approver", "oncall", "regulatory-approver"]
    # the finance approver (allowed the verb) and on-call (who promoted it) are both refused
    def resume_as(user: str) -> tuple[str, str, str]:
        name = file_action(api_clients[user], namespace, "risk", "resume", user,
                           model_uid=admin.get("risk")["metadata"]["uid"])
        return outcome_of(admin, name)

    wait_for(lambda: _may_file_resume(api_clients["finance-approver"], namespace), timeout=30,
             what="the admission policy reading the new verb groups")
    for user in ("finance-approver", "oncall"):
        result = resume_as(user)
        assert result[:2] == ("Rejected", "SamePerson"), (user, result)
        assert f"{user} approved or promoted v2" in result[2]
    status = admin.status("risk")
    assert status.halt is not None and status.phase == Phase.HALTED


def _may_file_resume(api_client: client.ApiClient, namespace: str) -> bool:
    """Whether the policy admits a resume by this user now (a dry run: nothing is created)."""
    body = {"apiVersion": api.API_VERSION, "kind": "ModelAction", "metadata": {"generateName": "probe-"},
            "spec": {"modelRef": {"name": "probe"}, "verb": "resume", "requester": "finance-approver"}}
    try:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.ACTION_PLURAL, body, dry_run="All")
    except client.exceptions.ApiException:
        return False
    return True


def test_rollback_to_a_changed_rolled_back_or_unknown_target_is_refused_before_anything_moves(
        fast_operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    admin, art = stable_v2(fast_operator, api_clients, namespace, tmp_path, "scoring")
    v1_file = tmp_path / "model-v1.skops"
    original = v1_file.read_bytes()
    v1_file.write_bytes(original + b"tampered after approval")
    changed = act(fast_operator.cluster, "oncall", "rollback", "scoring", namespace, "--to", "v1")
    result = outcome_of(admin, changed)
    assert result[:2] == ("Rejected", "TargetSha256Mismatch") and "nothing moved" in result[2], result
    status = admin.status("scoring")
    assert status.phase == Phase.STABLE and status.halt is None and status.stable is not None
    assert status.stable.version == "v2" and status.last_rollback is None

    v1_file.write_bytes(original)
    back = act(fast_operator.cluster, "oncall", "rollback", "scoring", namespace, "--to", "v1")
    assert outcome_of(admin, back)[0] == "Succeeded"
    admin.wait_phase("scoring", Phase.HALTED, timeout=90, check=fast_operator.check_alive,
                     until=lambda s: s.last_rollback is not None and s.last_rollback.completed_at)
    # v2 was rolled back: never a target again
    again = act(fast_operator.cluster, "oncall", "rollback", "scoring", namespace, "--to", "v2")
    assert outcome_of(admin, again)[:2] == ("Rejected", "TargetRolledBack")
    # a version never served (the CLI refuses it itself; a plain object reaches the operator)
    unknown = file_action(api_clients["oncall"], namespace, "scoring", "rollback", "oncall", to="v9",
                          model_uid=admin.get("scoring")["metadata"]["uid"])
    assert outcome_of(admin, unknown)[:2] == ("Rejected", "NotInHistory")
    status = admin.status("scoring")
    assert status.stable is not None and status.stable.sha256 == art["v1"][1] and len(status.incidents) == 1
