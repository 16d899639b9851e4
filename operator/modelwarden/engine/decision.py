"""What one decision reads and returns, and the scratch it is built in: shared by rollout and rollback.

``Observation`` is everything the handler read before deciding; ``Decision`` is the new status, the actions
that make the world match it and the Events to record; ``Pass`` is the mutable scratch of one decision,
frozen into a ``Decision`` by :meth:`Pass.finish`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from modelwarden.api.v1alpha1 import (
    ApprovalRecord,
    ArtifactVersion,
    ConditionType,
    HistoryEntry,
    MLModelSpec,
    MLModelStatus,
    Phase,
    Reason,
    Rollback,
    Track,
)
from modelwarden.engine.actions import (
    Action,
    ApplyTrack,
    DeleteTrack,
    Event,
    MirrorTo,
    SetRouteWeight,
)
from modelwarden.engine.approvals import Approval
from modelwarden.engine.conditions import set_condition
from modelwarden.engine.health import MetricsView
from modelwarden.engine.kstatus import with_kstatus_conditions
from modelwarden.engine.routers import planner_for
from modelwarden.engine.timestamps import timestamp
from modelwarden.engine.traffic import Endpoints, RouterPlanner

HISTORY_LIMIT = 20


# --- what the handler observed ---


@dataclass(frozen=True)
class TrackState:
    """A Deployment of one track, as observed."""

    version: str
    sha256: str
    fingerprint: str
    replicas: int
    ready_replicas: int
    # the Deployment controller has seen and finished rolling out the latest template
    rolled_out: bool = True
    # the pod template's serving label (None: a template from before every pod carried it)
    serving: str | None = "true"

    def serves(self, artifact: ArtifactVersion) -> bool:
        return self.version == artifact.version and self.sha256 == artifact.sha256

    def ready_for(self, artifact: ArtifactVersion, fingerprint: str, replicas: int) -> bool:
        return (self.serves(artifact) and self.fingerprint == fingerprint and self.rolled_out
                and self.replicas == replicas and self.ready_replicas >= replicas)


@dataclass(frozen=True)
class SignatureVerdict:
    """The artifact directory's signature against the trusted keys; ``reason`` names what failed."""

    ok: bool
    reason: str
    message: str
    signer: str | None = None


@dataclass(frozen=True)
class ArtifactCheck:
    """The result of verifying the artifact at ``uri``, one of:

    - ``pending``: asked for, not answered yet (it runs off the reconcile workers);
    - ``error`` with ``failure`` naming why nothing was proven: ``ArtifactUnavailable`` (unreachable, a 5xx),
      ``ArtifactTooLarge`` (over ``spec.artifact.limits``), ``VerificationTimedOut`` (over its deadline).
      None of these is a mismatch: nothing was learnt about the bytes (unless ``invalid``);
    - ``actual`` sha256 (a mismatch only when it differs from the expected one) and ``signature`` when the
      spec requires one (``None``: not required)."""

    uri: str
    actual: str | None = None
    error: str | None = None
    signature: SignatureVerdict | None = None
    # ``error`` proves the artifact is not one we may serve (as a mismatch does); otherwise an error only says
    # it could not be read now (a 503, a timeout), which proves nothing about its content.
    invalid: bool = False
    failure: str = Reason.ARTIFACT_UNAVAILABLE
    pending: bool = False


@dataclass(frozen=True)
class Observation:
    generation: int
    approvals: tuple[Approval, ...] = ()
    stable: TrackState | None = None
    canary: TrackState | None = None
    # the warm standby of the prior approved version (spec.rollback.standby)
    standby: TrackState | None = None
    services_present: bool = False
    # what the user-facing Service selects (as this process applied it; meaningful when services_present)
    endpoints: Endpoints = "serving"
    # routers with a weighted route only: the canary weight the route carries now
    route_canary_weight: int | None = None
    artifact: ArtifactCheck | None = None
    promote: str | None = None
    resume: str | None = None
    rollback: str | None = None
    # None: no metrics source configured (no analysis, no triggers). A view with no series for a version
    # whose metrics are expected means NoData for it.
    metrics: MetricsView | None = None
    metrics_configured: bool = False
    # why ``metrics`` is None although configured (Prometheus down, timeout)
    metrics_error: str | None = None



@dataclass(frozen=True)
class Decision:
    status: MLModelStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    # ask to be woken after this many seconds even if nothing changes (timed pauses)
    requeue_after: float | None = None



# --- pure helpers ---


def target_of(spec: MLModelSpec) -> ArtifactVersion:
    return ArtifactVersion(version=spec.version, sha256=spec.artifact.sha256, uri=spec.artifact.uri,
                           format=spec.artifact.format)



def fingerprint(spec: MLModelSpec, artifact: ArtifactVersion, mirror: MirrorTo | None = None, *,
                hidden: bool = False) -> str:
    """Identifies a pod template: what is served (artifact) and how (serving spec, contract, shadow mirror, and
    whether the pods are endpoints of the user-facing Service when its selector says so)."""
    payload: dict[str, object] = {"artifact": artifact.wire(), "serving": spec.serving.wire(),
               "contract": spec.feature_contract.wire(), "joblib": spec.artifact.allow_unsafe_joblib}
    if spec.artifact.signature is not None:
        # the pods mount the trusted keys: requiring a signature changes the template. Absent, the key stays
        # out, so models without one keep their fingerprint (no restart of every model on upgrade).
        payload["signature"] = spec.artifact.signature.wire()
    if mirror is not None:
        payload["mirror"] = [mirror.percent, mirror.decision_threshold]
    if hidden:
        # Only then: serving pods keep their fingerprint on upgrade.
        payload["hidden"] = True
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def verified_target(rollback: Rollback) -> bool:
    return any(t.event == "TargetVerified" for t in rollback.timeline)


def history_entry_for(status: MLModelStatus, version: str | None, sha256: str | None) -> HistoryEntry | None:
    return next((h for h in reversed(status.history) if h.version == version and h.sha256 == sha256), None)



def same(a: ArtifactVersion | None, b: ArtifactVersion | None) -> bool:
    return a is not None and b is not None and a.version == b.version and a.sha256 == b.sha256




def signature_refused(spec: MLModelSpec, check: ArtifactCheck) -> SignatureVerdict | None:
    """The failed verdict when a required signature does not verify (``None``: fine or not required)."""
    if spec.artifact.signature is None:
        return None
    if check.signature is None:
        return SignatureVerdict(False, Reason.TRUSTED_KEYS_UNAVAILABLE, "the signature was not checked")
    return None if check.signature.ok else check.signature



def history_entry(artifact: ArtifactVersion, approvals: list[ApprovalRecord], now: datetime,
                  signer: str | None) -> HistoryEntry:
    return HistoryEntry(version=artifact.version, sha256=artifact.sha256, uri=artifact.uri, format=artifact.format,
                        approvals=approvals, deployed_at=timestamp(now), outcome="Serving", signer=signer)



@dataclass
class Pass:
    """Mutable scratch for one decision; frozen into a Decision at the end."""

    spec: MLModelSpec
    old: MLModelStatus
    obs: Observation
    now: datetime
    status: MLModelStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    router: RouterPlanner = field(init=False)

    def __post_init__(self) -> None:
        self.router = planner_for(self.spec)

    def condition(self, type: ConditionType, status: bool | None, reason: str, message: str) -> None:
        self.update(conditions=set_condition(
            self.status.conditions, type=type, status=status, reason=reason, message=message, now=self.now,
            generation=self.obs.generation))

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def apply_track(self, track: Track, artifact: ArtifactVersion, replicas: int,
                    mirror: MirrorTo | None = None, *, hidden: bool = False) -> None:
        fp = fingerprint(self.spec, artifact, mirror, hidden=hidden)
        observed = {"stable": self.obs.stable, "canary": self.obs.canary, "standby": self.obs.standby}[track]
        # A template without the serving label is applied again (one roll): the Service selects that label once
        # every pod carries it.
        if (observed is None or not observed.serves(artifact) or observed.fingerprint != fp
                or observed.replicas != replicas or observed.serving is None):
            self.actions.append(ApplyTrack(track, artifact, replicas, fp, mirror, hidden))

    def delete_canary(self) -> None:
        self.set_route(0)
        if self.obs.canary is not None:
            self.actions.append(DeleteTrack("canary"))

    def clear_canary(self) -> None:
        """No canary any more: its Deployment and route weight go, and status forgets its steps."""
        if self.status.canary is None and self.obs.canary is None:
            return
        self.delete_canary()
        self.update(canary=None, current_step_index=None, step_started_at=None, canary_weight=0)

    def set_route(self, canary_weight: int) -> None:
        if not self.router.weighted_route:
            return
        if self.obs.route_canary_weight != canary_weight:
            self.actions.append(SetRouteWeight(canary_weight))

    def finish(self, phase: Phase) -> Decision:
        self.update(phase=phase, observed_generation=self.obs.generation)
        self.status = with_kstatus_conditions(self.spec, self.status, generation=self.obs.generation, now=self.now)
        return Decision(status=self.status, actions=tuple(self.actions), events=tuple(self.events),
                        requeue_after=self.requeue_after)
