"""The replicas router's shadow stage as manifests (issue 20): with a shadow stage the model's Service selects
``LABEL_SERVING=true``, which the stage's candidate pods lack; without one, nothing changes (no roll on
upgrade)."""

from __future__ import annotations

import asyncio
from typing import Any

from modelwarden.adapters.manifests import ModelObject, deployment_manifest
from modelwarden.adapters.routers import replicas as replicas_router
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import fingerprint
from modelwarden.engine.routers.replicas import gates_endpoints
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


def test_only_the_replicas_router_with_a_shadow_stage_gates_endpoints() -> None:
    assert gates_endpoints(spec("replicas", shadow=True))
    assert not gates_endpoints(spec("replicas", shadow=False))
    assert not gates_endpoints(spec("gatewayAPI", shadow=True))


def test_the_shadow_candidate_lacks_the_label_the_service_selects() -> None:
    gated = spec("replicas", shadow=True)
    assert pod_labels(gated, "canary", hidden=True)[api.LABEL_SERVING] == "false"
    assert pod_labels(gated, "canary")[api.LABEL_SERVING] == "true"
    assert pod_labels(gated, "stable")[api.LABEL_SERVING] == "true"
    for ungated in (spec("replicas", shadow=False), spec("gatewayAPI", shadow=True)):
        assert api.LABEL_SERVING not in pod_labels(ungated, "canary", hidden=True)


def test_flipping_the_label_changes_the_fingerprint_only_when_gated() -> None:
    gated = spec("replicas", shadow=True)
    assert fingerprint(gated, ARTIFACT, hidden=True) != fingerprint(gated, ARTIFACT)
    plain = spec("replicas", shadow=False)
    assert fingerprint(plain, ARTIFACT, hidden=True) == fingerprint(plain, ARTIFACT)


class FakeKube:
    def __init__(self) -> None:
        self.core = self
        self.applied: dict[str, dict[str, Any]] = {}

    def patch_namespaced_service(self) -> None: ...

    async def apply(self, fn: Any, body: dict[str, Any]) -> None:
        self.applied[body["metadata"]["name"]] = body


def services(s: api.MLModelSpec) -> dict[str, dict[str, str]]:
    kube = FakeKube()
    asyncio.run(replicas_router.from_spec(s, kube).ensure_objects(MODEL))  # type: ignore[arg-type]
    return {name: body["spec"]["selector"] for name, body in kube.applied.items()}


def test_the_user_service_selects_serving_pods_and_the_mirror_target_selects_the_candidate() -> None:
    assert services(spec("replicas", shadow=True)) == {
        "credit": {api.LABEL_MODEL: "credit", api.LABEL_SERVING: "true"},
        "credit-canary": {api.LABEL_MODEL: "credit", api.LABEL_MANAGED_BY: "modelwarden", api.LABEL_TRACK: "canary"}}
    assert services(spec("replicas", shadow=False)) == {"credit": {api.LABEL_MODEL: "credit"}}
