"""The warm standby on the real control plane (issue 24): after a promotion the prior approved version keeps a
Deployment of its own, owned and labelled like the others, whose pods the model's Service does not select; a
rollback with the artifact store gone moves the Service onto it (no re-verification against the store, no
TargetRejected), and once the stable Deployment serves the restored version the Service returns to the serving
pods and the standby goes. The production Controller runs in this process as the least-privilege operator user
(``InProcessOperator``); KWOK's simulated nodes make the pods Ready."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client

from localenv.cluster import Cluster
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import act
from tests.integration.test_rollback_triggers import InProcessOperator, promoted_v2


def test_a_rollback_with_the_artifact_store_gone_is_served_by_the_standby(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    core = client.CoreV1Api(api_clients["admin"])

    def selector() -> dict[str, str]:
        return dict(core.read_namespaced_service("m", namespace).spec.selector)

    def standby_ready() -> bool:
        op.passes("m")
        d = admin.deployment("m-standby")
        return d is not None and (d.status.ready_replicas or 0) >= 1

    for _ in range(30):
        if standby_ready():
            break
    standby = admin.deployment("m-standby")
    assert standby is not None and standby.spec.replicas == 1
    uid = admin.get("m")["metadata"]["uid"]
    assert [(o.kind, o.uid, o.controller) for o in standby.metadata.owner_references] == [("MLModel", uid, True)]
    assert standby.metadata.labels[api.LABEL_TRACK] == "standby"
    assert standby.metadata.labels[api.LABEL_MANAGED_BY] == "modelwarden"
    assert standby.spec.template.metadata.annotations[api.ANNOTATION_SHA256] == shas["v1"]
    assert standby.spec.template.metadata.labels[api.LABEL_SERVING] == "false"
    assert selector() == {api.LABEL_MODEL: "m", api.LABEL_SERVING: "true"}, "users never reach the standby"
    stable = admin.deployment("m-stable")
    assert stable is not None and stable.spec.template.metadata.labels[api.LABEL_SERVING] == "true"

    # The artifact store is gone (v1's file with it); an on-call rollback.
    (tmp_path / "model-v1.skops").unlink()
    act(modelwarden_installed, "oncall", "rollback", "m", namespace)
    seen = []
    status = api.MLModelStatus()
    for _ in range(30):
        status = op.passes("m")
        seen.append(selector().get(api.LABEL_TRACK, "serving"))
        if status.phase == Phase.HALTED:
            break
    assert status.phase == Phase.HALTED, status.model_dump_json(indent=1)
    assert "standby" in seen, "the Service moved onto the standby's pods"
    rb = status.last_rollback
    assert rb is not None and rb.traffic_restored_at is not None and rb.to_sha256 == shas["v1"]
    events = [t.event for t in rb.timeline]
    assert "StandbyServing" in events and "TargetRejected" not in events, events
    assert status.stable is not None and status.stable.sha256 == shas["v1"]
    assert [h.outcome for h in status.history].count("RolledBack") == 1

    # The stable Deployment serves v1 again (KWOK makes its pods Ready): the Service returns, then the standby goes.
    for _ in range(30):
        op.passes("m")
        if admin.deployment("m-standby") is None:
            break
    assert admin.deployment("m-standby") is None
    assert selector() == {api.LABEL_MODEL: "m", api.LABEL_SERVING: "true"}
    stable = admin.deployment("m-stable")
    assert stable is not None and stable.spec.template.metadata.annotations[api.ANNOTATION_SHA256] == shas["v1"]
