"""Pod labels and Service selectors as manifests (issues 20, 24): every pod carries ``LABEL_SERVING`` ("false" for
a shadow candidate and the warm standby); the user-facing Service selects what the engine's ``Endpoints`` says,
under both routers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelwarden.adapters.manifests import ModelObject, deployment_manifest, track_state
from modelwarden.adapters.routers import gateway_api as gateway_router
from modelwarden.adapters.routers import replicas as replicas_router
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import fingerprint
from modelwarden.engine.traffic import Endpoints
from tests.unit.engine_world import SHA, make_spec

MODEL = ModelObject(namespace="team", name="credit", uid="u1")
ARTIFACT = api.ArtifactVersion(version="v2", sha256=SHA["v2"], uri="file:///models/v2.skops", format="skops")
STEPS = [{"setWeight": 25, "pauseSeconds": 60}, {"setWeight": 100, "pauseSeconds": 0}]


def spec(routing: str, shadow: bool) -> api.MLModelSpec:
    rollout: dict[str, Any] = {"steps": STEPS, "trafficRouting": {"type": routing}}
    if routing == "gatewayAPI":
        rollout["trafficRouting"]["gatewayAPI"] = {"httpRoute": "r"}
    if shadow:
        rollout["shadow"] = {}
    return make_spec("v2", rollout=rollout)


def pod_labels(s: api.MLModelSpec, track: api.Track, *, hidden: bool = False) -> dict[str, str]:
    body = deployment_manifest(MODEL, s, track, ARTIFACT, 1, "fp", hidden=hidden)
    assert api.LABEL_SERVING not in body["spec"]["selector"]["matchLabels"], "never in the immutable selector"
    return dict(body["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("routing", ["replicas", "gatewayAPI"])
@pytest.mark.parametrize("shadow", [True, False])
def test_every_pod_carries_the_serving_label_false_only_for_the_candidate_in_shadow_and_the_standby(
        routing: str, shadow: bool) -> None:
    s = spec(routing, shadow)
    assert pod_labels(s, "canary", hidden=True)[api.LABEL_SERVING] == "false"
    assert pod_labels(s, "canary")[api.LABEL_SERVING] == "true"
    assert pod_labels(s, "stable")[api.LABEL_SERVING] == "true"
    assert pod_labels(s, "standby")[api.LABEL_SERVING] == "false"


def test_the_standby_is_owned_and_labelled_like_the_other_deployments() -> None:
    body = deployment_manifest(MODEL, spec("replicas", False), "standby", ARTIFACT, 1, "fp")
    assert body["metadata"]["name"] == "credit-standby"
    assert body["metadata"]["ownerReferences"] == [MODEL.owner_reference()]
    assert body["metadata"]["labels"][api.LABEL_TRACK] == "standby"
    assert body["metadata"]["labels"][api.LABEL_MANAGED_BY] == "modelwarden"
    assert body["metadata"]["annotations"][api.ANNOTATION_SHA256] == SHA["v2"]
    env = {e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ARTIFACT_SHA256"] == SHA["v2"], "its pods verify the bytes like every pod"
    assert env["MODEL_TRACK"] == "stable", "it answers (after a rollback) as the restored stable"


def test_a_template_without_the_label_reads_as_such() -> None:
    body = deployment_manifest(MODEL, spec("replicas", False), "stable", ARTIFACT, 1, "fp")
    assert track_state(body).serving == "true"
    del body["spec"]["template"]["metadata"]["labels"][api.LABEL_SERVING]
    assert track_state(body).serving is None


def test_hiding_the_candidate_changes_its_fingerprint_and_serving_pods_keep_theirs() -> None:
    for s in (spec("replicas", True), spec("replicas", False)):
        assert fingerprint(s, ARTIFACT, hidden=True) != fingerprint(s, ARTIFACT)
    assert fingerprint(spec("replicas", True), ARTIFACT) == fingerprint(spec("replicas", False), ARTIFACT)


class FakeKube:
    def __init__(self) -> None:
        self.core = self
        self.custom = self
        self.applied: dict[str, dict[str, Any]] = {}

    def patch_namespaced_service(self) -> None: ...

    async def apply(self, fn: Any, body: dict[str, Any]) -> None:
        self.applied[body["metadata"]["name"]] = body


def services(s: api.MLModelSpec, endpoints: Endpoints) -> dict[str, dict[str, str]]:
    kube = FakeKube()
    router = (replicas_router.from_spec(s, kube) if s.rollout.traffic_routing.type == "replicas"  # type: ignore[arg-type]
              else gateway_router.GatewayAPIRouter(kube, "r"))  # type: ignore[arg-type]
    asyncio.run(router.ensure_objects(MODEL, endpoints))
    return {name: body["spec"]["selector"] for name, body in kube.applied.items()}


TRACK = {api.LABEL_MODEL: "credit", api.LABEL_MANAGED_BY: "modelwarden"}


def test_the_replicas_router_selects_what_the_engine_says() -> None:
    assert services(spec("replicas", shadow=True), "serving") == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_SERVING: "true"},
        "credit-canary": {**TRACK, api.LABEL_TRACK: "canary"}}
    assert services(spec("replicas", shadow=False), "serving") == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_SERVING: "true"}}
    assert services(spec("replicas", shadow=False), "model") == {"credit": {api.LABEL_MODEL: "credit"}}
    assert services(spec("replicas", shadow=False), "standby") == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_TRACK: "standby"}}


def test_the_gateway_router_points_the_stable_backend_at_the_standby_only_after_a_rollback() -> None:
    s = spec("gatewayAPI", shadow=False)
    assert services(s, "serving") == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_SERVING: "true"},
        "credit-stable": {**TRACK, api.LABEL_TRACK: "stable"},
        "credit-canary": {**TRACK, api.LABEL_TRACK: "canary"}}
    assert services(s, "standby") == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_TRACK: "standby"},
        "credit-stable": {**TRACK, api.LABEL_TRACK: "standby"},
        "credit-canary": {**TRACK, api.LABEL_TRACK: "canary"}}


def _deployment(generation: int, observed: int, replicas: int, total: int, updated: int, ready: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation, "labels": {}, "annotations": {}},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {}}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "readyReplicas": ready}}


@pytest.mark.parametrize(("generation", "observed", "total", "updated", "ready", "rolled_out"), [
    (2, 2, 1, 1, 1, True),   # done: the one pod runs the new template and is ready
    (2, 1, 1, 1, 1, False),  # the controller has not seen the new template yet
    (2, 2, 2, 1, 1, False),  # the new pod starts; the ready one is the old template's (a rollback's bad version)
    (2, 2, 1, 0, 1, False),  # the new ReplicaSet has no pod yet
])
def test_a_deployment_is_rolled_out_only_when_no_pod_of_an_older_template_is_left(
        generation: int, observed: int, total: int, updated: int, ready: int, rolled_out: bool) -> None:
    """Issue 24: after a standby rollback the Service went back to the stable Deployment while its one ready pod
    was still the rolled-back version's (readyReplicas counts every template's pods)."""
    state = track_state(_deployment(generation, observed, 1, total, updated, ready))
    assert state.rolled_out is rolled_out
