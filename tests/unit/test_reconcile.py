"""What one reconcile pass does, against in-memory fakes of the adapter Protocols.

The fakes behave like the cluster would (a Deployment appears when applied and becomes Ready when told; a
status write bumps resourceVersion and can lose a race), so each test reads as what the operator does for a
user: verify, deploy, record, report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from modelwarden.adapters.artifact_store import ByteLimits
from modelwarden.adapters.kube import Conflict, KubeError
from modelwarden.adapters.manifests import ModelObject, deployment_manifest
from modelwarden.adapters.prometheus import FleetMetrics, RetrainingQuery
from modelwarden.adapters.server_admin import HTTPServerAdmin
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import (
    Action,
    ApplyTrack,
    CollectFeedbackEvidence,
    DeleteTrack,
    EnsureServices,
    FlushAndWarm,
    MirrorTo,
)
from modelwarden.handlers.actions import ActionApplier
from modelwarden.handlers.controller import Controller
from modelwarden.handlers.fleet import FleetEvaluator
from tests.unit.engine_world import SHA, T0, make_spec

NS, NAME = "team", "credit"
KEY = (NS, NAME)


@dataclass
class FakeCluster:
    """Workloads, status and Events in memory; applied Deployments are fed back as watch events would be."""

    ready: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    resource_version: int = 1
    conflicts: int = 0
    status_writes: int = 0

    # Workloads
    async def ensure_server_identity(self, namespace: str) -> None:
        self.calls.append(("identity", namespace))

    async def apply_track(self, model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                          artifact: api.ArtifactVersion, replicas: int, fingerprint: str,
                          mirror: MirrorTo | None = None, hidden: bool = False) -> None:
        self.calls.append(("apply", (track, artifact.version, replicas)))
        body = deployment_manifest(model, spec, track, artifact, replicas, fingerprint, mirror=mirror, hidden=hidden)
        body["metadata"]["generation"] = 1
        self.deployments[track] = body

    async def delete_track(self, model: ModelObject, track: api.Track) -> None:
        self.calls.append(("delete", track))
        self.deployments.pop(track, None)

    async def record_incident(self, model: ModelObject, rollback: api.Rollback) -> None:
        self.incidents.setdefault(rollback.id, {})["incident.json"] = rollback.wire()

    async def record_evidence(self, model: ModelObject, rollback: api.Rollback, name: str, data: Any) -> None:
        self.incidents.setdefault(rollback.id, {})[name] = data

    async def create_retraining_job(self, model: ModelObject, spec: api.MLModelSpec, job: Any) -> None:
        self.calls.append(("job", job.name))

    # ModelStatusWriter
    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]:
        if self.conflicts:
            self.conflicts -= 1
            raise Conflict("409", 409)
        self.status_writes += 1
        self.resource_version += 1
        meta = {**body["metadata"], "resourceVersion": str(self.resource_version)}
        return {**body, "metadata": meta, "status": status.wire()}

    # EventRecorder
    async def record(self, model: ModelObject, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason))

    def watch(self, controller: Controller) -> None:
        """Deliver the Deployments as the watch would, Ready when ``ready``."""
        for body in self.deployments.values():
            replicas = body["spec"]["replicas"]
            ready = replicas if self.ready else 0
            status = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                      "readyReplicas": ready}
            controller.caches.observe_deployment("MODIFIED", {**body, "status": status})


@dataclass
class FakeRouter:
    weight: int | None = None
    ensured: int = 0

    async def ensure_objects(self, model: ModelObject, endpoints: str) -> None:
        self.ensured += 1

    async def canary_weight(self, model: ModelObject) -> int | None:
        return self.weight

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None:
        self.weight = weight


@dataclass
class FakeArtifacts:
    sha: dict[str, str]
    asked: list[str] = field(default_factory=list)

    async def sha256(self, uri: str, limits: ByteLimits) -> str:
        self.asked.append(uri)
        return self.sha[uri]

    async def read_json(self, uri: str) -> object:
        return {"status": "pass"}


def mlmodel(spec: api.MLModelSpec, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": NAME, "uid": "u1", "generation": 1, "resourceVersion": "1",
                         **meta},
            "spec": spec.wire()}


def approval(role: str, who: str, version: str = "v1") -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": f"{version}-{role}", "creationTimestamp": "2026-11-22T11:00:00Z"},
            "spec": {"modelRef": {"name": NAME}, "version": version, "sha256": SHA[version], "role": role,
                     "approver": who}}


@dataclass
class Setup:
    cluster: FakeCluster
    router: FakeRouter
    artifacts: FakeArtifacts
    controller: Controller

    def status(self) -> api.MLModelStatus:
        return api.MLModelStatus.model_validate(self.controller.models[KEY].get("status") or {})

    def reconcile(self) -> float | None:
        requeue = asyncio.run(self.controller.reconcile(KEY))
        self.cluster.watch(self.controller)
        return requeue


def setup(*, approved: bool = True) -> Setup:
    spec = make_spec("v1", serving={"replicas": 2})
    cluster, router = FakeCluster(), FakeRouter()
    artifacts = FakeArtifacts({spec.artifact.uri: SHA["v1"]})
    controller = Controller(workloads=cluster, status_writer=cluster, events=cluster, artifacts=artifacts,
                            reports=artifacts, router_for=lambda spec: router, clock=lambda: T0)
    controller.caches.observe_model("ADDED", mlmodel(spec))
    if approved:
        controller.caches.observe_approval("ADDED", approval("finance", "fiona"))
        controller.caches.observe_approval("ADDED", approval("regulatory", "rick"))
    return Setup(cluster, router, artifacts, controller)


def test_a_first_pass_verifies_the_artifact_deploys_the_stable_and_writes_status_once() -> None:
    s = setup()
    s.reconcile()
    assert s.artifacts.asked == ["file:///models/v1.skops"]
    assert s.router.ensured == 1
    assert s.cluster.calls == [("identity", NS), ("apply", ("stable", "v1", 2))]
    assert s.cluster.status_writes == 1
    status = s.status()
    assert status.phase == api.Phase.PROGRESSING and status.verified_sha256 == SHA["v1"]


def test_the_model_is_stable_once_its_pods_are_ready_and_only_a_change_is_written() -> None:
    s = setup()
    s.reconcile()
    s.cluster.ready = True
    s.cluster.watch(s.controller)
    s.reconcile()
    assert s.status().phase == api.Phase.STABLE
    assert ("Normal", api.Reason.DEPLOYED) in s.cluster.events
    writes, calls = s.cluster.status_writes, len(s.cluster.calls)
    s.reconcile()
    assert s.cluster.status_writes == writes, "nothing changed: no status write"
    assert len(s.cluster.calls) == calls, "nothing changed: nothing applied"
    assert s.router.ensured == 1, "the router's objects are applied once per process"


def test_without_the_quorum_nothing_is_deployed() -> None:
    s = setup(approved=False)
    s.reconcile()
    assert s.cluster.calls == []
    assert s.status().phase == api.Phase.AWAITING_APPROVAL
    assert ("Normal", api.Reason.AWAITING_APPROVAL) in s.cluster.events


def test_a_lost_status_race_is_decided_again_on_the_newer_object() -> None:
    s = setup()
    s.cluster.conflicts = 1
    state = s.controller.caches.state(KEY)
    assert state is not None
    outcome = asyncio.run(s.controller.reconciler.reconcile(state, s.controller.evaluator.reading(), T0))
    assert outcome.conflict and outcome.written is None and s.cluster.status_writes == 0
    s.cluster.conflicts = 1
    s.reconcile()
    assert s.controller.models[KEY]["metadata"]["resourceVersion"] == "1", "the cache keeps what the watch gave"
    s.reconcile()
    assert s.controller.models[KEY]["metadata"]["resourceVersion"] == "2", "the next pass writes"


def test_a_model_that_does_not_parse_is_left_alone() -> None:
    s = setup()
    s.controller.caches.observe_model("MODIFIED", {**mlmodel(make_spec()), "spec": {"version": 3},
                                                   "metadata": {**mlmodel(make_spec())["metadata"],
                                                                "resourceVersion": "2"}})
    assert asyncio.run(s.controller.reconcile(KEY)) is None
    assert s.cluster.calls == [] and s.cluster.status_writes == 0


def test_missing_configuration_is_reported_like_any_failed_side_effect() -> None:
    """No operator identity: the flush/warm-up and the feedback evidence fail the same way — a Warning Event each,
    and the evidence file says why it holds no records."""
    cluster = FakeCluster()
    applier = ActionApplier(cluster, cluster, server_admin=HTTPServerAdmin(None))
    rollback = api.Rollback(id="rb-1", trigger="CriticalFeedback", message="m", from_version="v2",
                            from_sha256=SHA["v2"], started_at="2026-11-22T12:00:00Z")
    model = ModelObject(NS, NAME, "u1")
    actions: list[Action] = [FlushAndWarm(flush_track="canary", warm_track="stable"),
               CollectFeedbackEvidence(rollback, "stable", 3600, ("finance",))]
    asyncio.run(applier.apply(model, make_spec(), FakeRouter(), actions, T0.timestamp()))
    assert cluster.events == [("Warning", "FlushAndWarmFailed"), ("Warning", "CollectFeedbackEvidenceFailed")]
    evidence = cluster.incidents["rb-1"]["feedback.json"]
    assert evidence["records"] == [] and "no operator identity" in evidence["error"]


def test_no_admin_secret_exists_and_a_refused_token_request_is_reported() -> None:
    """The operator proves itself with TokenRequest tokens of its own ServiceAccount: nothing is written into the
    model's namespace for it, and when the API server refuses the TokenRequest the admin call fails, says why,
    and carries no credential."""
    async def refused() -> str:
        raise KubeError("TokenRequest for ServiceAccount modelwarden-system/modelwarden-operator: 403 Forbidden", 403)

    cluster = FakeCluster()
    applier = ActionApplier(cluster, cluster, server_admin=HTTPServerAdmin(refused))
    spec, v1 = make_spec(), api.ArtifactVersion(version="v1", uri="http://a/m", sha256=SHA["v1"], format="skops")
    asyncio.run(applier.apply(ModelObject(NS, NAME, "u1"), spec, FakeRouter(),
                              [ApplyTrack("stable", v1, 1, "f"), FlushAndWarm(flush_track=None, warm_track="stable")],
                              T0.timestamp()))
    assert [c[0] for c in cluster.calls] == ["identity", "apply"]
    assert cluster.events == [("Warning", "FlushAndWarmFailed")]
    pod = cluster.deployments["stable"]["spec"]["template"]["spec"]
    assert not any("secret" in v for v in pod["volumes"])


def test_the_servers_identity_comes_first_once_per_namespace_and_the_router_objects_last() -> None:
    cluster, router = FakeCluster(), FakeRouter()
    applier = ActionApplier(cluster, cluster)
    model, spec = ModelObject(NS, NAME, "u1"), make_spec()
    artifact = api.ArtifactVersion(version="v1", sha256=SHA["v1"], uri="file:///models/v1.skops", format="skops")
    actions: list[Action] = [EnsureServices(), ApplyTrack("stable", artifact, 1, "f"),
                             ApplyTrack("canary", artifact, 1, "f")]
    asyncio.run(applier.apply(model, spec, router, actions, T0.timestamp()))
    assert cluster.calls == [("identity", NS), ("apply", ("stable", "v1", 1)), ("apply", ("canary", "v1", 1))]
    assert router.ensured == 1 and applier.endpoints_applied(model, spec) == "serving"


def test_a_failing_traffic_action_fails_the_pass() -> None:
    class Broken(FakeCluster):
        async def delete_track(self, model: ModelObject, track: api.Track) -> None:
            raise KubeError("boom", 500)

    cluster = Broken()
    applier = ActionApplier(cluster, cluster)
    with pytest.raises(KubeError):
        asyncio.run(applier.apply(ModelObject(NS, NAME, "u1"), make_spec(), FakeRouter(), [DeleteTrack("canary")],
                                  T0.timestamp()))


@dataclass
class RecordingMetrics:
    asked: list[dict[str, Any]] = field(default_factory=list)

    async def evaluate(self, at: float, *, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                       analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics:
        self.asked.append({"budget": budget_lookback_seconds, "feedback": feedback_lookback_seconds,
                           "analysis": analysis_seconds})
        return FleetMetrics(at=at, step_seconds=30)


@pytest.mark.parametrize(("rollback", "budget", "feedback"), [
    (None, 900 + 300, 3600 + 300),  # no models: the policy defaults, 15 minutes and 1 hour
    ({"sustainSeconds": 1800}, 1800 + 300, 3600 + 300),
    ({"criticalFeedback": {"windowSeconds": 7200}}, 900 + 300, 7200 + 300),
])
def test_one_cycle_looks_back_as_far_as_the_longest_window_plus_a_step(
        rollback: dict[str, Any] | None, budget: int, feedback: int) -> None:
    provider = RecordingMetrics()
    evaluator = FleetEvaluator(provider, interval=30)
    models = [] if rollback is None else [(make_spec(rollback=rollback), api.MLModelStatus())]
    asyncio.run(evaluator.evaluate(dt.datetime(2026, 11, 22, tzinfo=dt.UTC), models))
    assert provider.asked == [{"budget": budget, "feedback": feedback, "analysis": 30}]
    assert evaluator.reading().configured and evaluator.reading().fleet is not None


def test_an_unreachable_feedback_store_is_reported_and_the_evidence_says_where_it_looked() -> None:
    """With the store configured the evidence comes from it alone (no server is asked); a store that cannot be
    reached is a Warning Event and an evidence file naming the store's error."""
    from modelwarden.adapters.feedback_store import PostgresFeedbackEvidence

    cluster = FakeCluster()
    applier = ActionApplier(cluster, cluster, server_admin=HTTPServerAdmin(None),
                            feedback_evidence=PostgresFeedbackEvidence("postgresql://nobody@127.0.0.1:1/none",
                                                                       timeout_seconds=1))
    rollback = api.Rollback(id="rb-2", trigger="CriticalFeedback", message="m", from_version="v2",
                            from_sha256=SHA["v2"], started_at="2026-11-22T12:00:00Z")
    actions: list[Action] = [CollectFeedbackEvidence(rollback, "stable", 3600, ("finance",))]
    asyncio.run(applier.apply(ModelObject(NS, NAME, "u1"), make_spec(), FakeRouter(), actions, T0.timestamp()))
    assert cluster.events == [("Warning", "CollectFeedbackEvidenceFailed")]
    evidence = cluster.incidents["rb-2"]["feedback.json"]
    assert evidence["source"] == "feedbackStore" and evidence["records"] == []
    assert evidence["error"].startswith("feedback store: ") and "operator identity" not in evidence["error"]
