"""A tiny simulated world for driving ``engine.decide`` in tests: Deployments that apply actions the way the
kube adapter does, pods that become ready when told, and the handler's artifact check."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from modelwarden.api.v1alpha1 import MLModelSpec, MLModelStatus
from modelwarden.engine.actions import (
    Action,
    ApplyTrack,
    DeleteTrack,
    EnsureServices,
    SetRouteWeight,
)
from modelwarden.engine.approvals import Approval
from modelwarden.engine.decision import (
    ArtifactCheck,
    Decision,
    Observation,
    TrackState,
)
from modelwarden.engine.health import MetricsView
from modelwarden.engine.rollout import artifact_to_check, decide
from modelwarden.engine.traffic import Endpoints

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
SHA = {"v1": "1" * 64, "v2": "2" * 64, "v3": "3" * 64}


def make_spec(version: str = "v1", sha256: str | None = None, **overrides: Any) -> MLModelSpec:
    body: dict[str, Any] = {
        "version": version,
        "artifact": {"uri": f"file:///models/{version}.skops", "sha256": sha256 or SHA[version]},
        "featureContract": {"name": "fc", "features": ["a", "b"], "nFeatures": 2},
        "serving": {"replicas": 4},
        "rollout": {"steps": [{"setWeight": 10, "pauseSeconds": 60}, {"setWeight": 50},
                              {"setWeight": 100, "pauseSeconds": 0}]},
    }
    for key, value in overrides.items():
        body[key] = value
    return MLModelSpec.model_validate(body)


def approvals(version: str, sha256: str | None = None, finance: str = "fiona", regulatory: str = "rick",
              ) -> tuple[Approval, ...]:
    sha = sha256 or SHA[version]
    return (
        Approval(name=f"{version}-finance", role="finance", approver=finance, version=version, sha256=sha),
        Approval(name=f"{version}-regulatory", role="regulatory", approver=regulatory, version=version, sha256=sha),
    )


@dataclass
class World:
    """The cluster as the engine would observe it, plus the real content of artifact URIs."""

    stable: TrackState | None = None
    canary: TrackState | None = None
    standby: TrackState | None = None
    route: int | None = None
    services: bool = False
    endpoints: Endpoints = "serving"
    real_sha: dict[str, str] = field(default_factory=dict)
    # URIs the store cannot serve right now (a 503, a timeout): uri -> the error the handler reports
    unreadable: dict[str, str] = field(default_factory=dict)
    approvals: tuple[Approval, ...] = ()
    promote: str | None = None
    resume: str | None = None
    rollback: str | None = None
    # None with metrics_configured: Prometheus is down
    metrics: MetricsView | None = None
    metrics_configured: bool = False
    generation: int = 1
    # Whether the canary's pods are kept out of the user-facing Service (the replicas router's shadow stage)
    canary_hidden: bool = False

    def apply(self, actions: tuple[Action, ...]) -> None:
        for a in actions:
            if isinstance(a, EnsureServices):
                self.services = True
                self.endpoints = a.endpoints
            elif isinstance(a, ApplyTrack):
                current = {"stable": self.stable, "canary": self.canary, "standby": self.standby}[a.track]
                same_template = (current is not None and current.fingerprint == a.fingerprint
                                 and current.serves(a.artifact))
                ready = min(current.ready_replicas, a.replicas) if current is not None and same_template else 0
                # Any write bumps the Deployment's generation: not rolled out until its controller catches up.
                new = TrackState(version=a.artifact.version, sha256=a.artifact.sha256, fingerprint=a.fingerprint,
                                 replicas=a.replicas, ready_replicas=ready, rolled_out=False)
                if a.track == "stable":
                    self.stable = new
                elif a.track == "standby":
                    self.standby = new
                else:
                    self.canary = new
                    self.canary_hidden = a.hidden
            elif isinstance(a, DeleteTrack):
                setattr(self, a.track, None)
            elif isinstance(a, SetRouteWeight):
                self.route = a.canary_weight

    def pods_ready(self) -> None:
        if self.stable is not None:
            self.stable = replace(self.stable, ready_replicas=self.stable.replicas, rolled_out=True)
        if self.canary is not None:
            self.canary = replace(self.canary, ready_replicas=self.canary.replicas, rolled_out=True)
        if self.standby is not None:
            self.standby = replace(self.standby, ready_replicas=self.standby.replicas, rolled_out=True)

    def observe(self, spec: MLModelSpec, status: MLModelStatus) -> Observation:
        check = None
        uri = artifact_to_check(spec, status, self.standby)
        if uri is not None:
            actual = None if uri in self.unreadable else self.real_sha.get(uri)
            check = ArtifactCheck(uri=uri, actual=actual,
                                  error=self.unreadable.get(uri) if uri in self.unreadable else
                                  None if actual else "no such file")
        return Observation(
            generation=self.generation, approvals=self.approvals, stable=self.stable, canary=self.canary,
            standby=self.standby, services_present=self.services, endpoints=self.endpoints,
            route_canary_weight=self.route, artifact=check, promote=self.promote,
            resume=self.resume, rollback=self.rollback, metrics=self.metrics,
            metrics_configured=self.metrics_configured,
        )

    def step(self, spec: MLModelSpec, status: MLModelStatus, now: datetime) -> Decision:
        decision = decide(spec, status, self.observe(spec, status), now)
        self.apply(decision.actions)
        return decision


def honest_world(*versions: str) -> World:
    return World(real_sha={f"file:///models/{v}.skops": SHA[v] for v in versions})


def settle(world: World, spec: MLModelSpec, status: MLModelStatus, now: datetime,
           max_passes: int = 30, seconds_per_pass: float = 61) -> tuple[MLModelStatus, datetime, list[Decision]]:
    """Decide, apply, make pods ready, let time pass, until nothing changes; returns the last status."""
    decisions = []
    for _ in range(max_passes):
        world.pods_ready()
        d = world.step(spec, status, now)
        decisions.append(d)
        if not d.actions and d.status == status and d.requeue_after is None:
            return d.status, now, decisions
        status = d.status
        now = now + timedelta(seconds=seconds_per_pass)
    return status, now, decisions
