"""The rollout state machine (DESIGN §3), as one pure function.

``decide(spec, status, observation, now)`` reads everything the handler observed and returns the new status,
the actions that make the world match it, and the Events to record. It never reads the clock and never
talks to anything; deciding again on its own result (with the actions applied) yields no new actions.

    new revision → verify sha256 → AwaitingApproval → canary up and Ready → steps (pause or promote)
    → promote (history entry appended) → Stable
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
    ErrorBudget,
    Halt,
    HistoryEntry,
    MLModelSpec,
    MLModelStatus,
    Phase,
    Reason,
    Rollback,
    TimelineEntry,
    Track,
)
from modelwarden.engine.approvals import Approval, Quorum, evaluate_quorum
from modelwarden.engine.conditions import set_condition, timestamp
from modelwarden.engine.health import Health, MetricsView, budget_percent, judge
from modelwarden.engine.traffic import TrafficPlan, plan_traffic
from modelwarden.engine.triggers import CANARY_ANALYSIS, CRITICAL_FEEDBACK, Assessment

HISTORY_LIMIT = 20
INCIDENT_LIMIT = 10


# --- what the handler observed ------------------------------------------------------------------------------


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
    """The result of hashing the artifact at ``uri``: ``actual`` sha256, or ``error``; ``signature`` when the
    spec requires one (``None``: not required)."""

    uri: str
    actual: str | None = None
    error: str | None = None
    signature: SignatureVerdict | None = None


@dataclass(frozen=True)
class Observation:
    generation: int
    approvals: tuple[Approval, ...] = ()
    stable: TrackState | None = None
    canary: TrackState | None = None
    services_present: bool = False
    # gatewayAPI only: the canary weight the HTTPRoute carries now
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


# --- what the handler must do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureServices:
    pass


@dataclass(frozen=True)
class ApplyTrack:
    track: Track
    artifact: ArtifactVersion
    replicas: int
    fingerprint: str


@dataclass(frozen=True)
class DeleteTrack:
    track: Track


@dataclass(frozen=True)
class SetRouteWeight:
    canary_weight: int


@dataclass(frozen=True)
class FlushAndWarm:
    """Drop the aborted version's queued work, warm the restored version's caches (best effort)."""

    flush_track: Track | None
    warm_track: Track


@dataclass(frozen=True)
class AnnotateGrafana:
    rollback: Rollback


@dataclass(frozen=True)
class RecordIncident:
    rollback: Rollback


@dataclass(frozen=True)
class CollectFeedbackEvidence:
    """Before traffic moves: keep the feedback records behind a CriticalFeedback trigger for the incident
    (a server's SQLite store goes with its pods)."""

    rollback: Rollback
    track: Track
    since_seconds: int
    stakeholders: tuple[str, ...]


@dataclass(frozen=True)
class Notify:
    severity: Literal["page", "warning", "info"]
    summary: str
    rollback: Rollback | None = None


Action = (EnsureServices | ApplyTrack | DeleteTrack | SetRouteWeight | FlushAndWarm | AnnotateGrafana
          | RecordIncident | CollectFeedbackEvidence | Notify)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: MLModelStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    # ask to be woken after this many seconds even if nothing changes (timed pauses)
    requeue_after: float | None = None


# --- pure helpers ---------------------------------------------------------------------------------------


def target_of(spec: MLModelSpec) -> ArtifactVersion:
    return ArtifactVersion(version=spec.version, sha256=spec.artifact.sha256, uri=spec.artifact.uri,
                           format=spec.artifact.format)


def fingerprint(spec: MLModelSpec, artifact: ArtifactVersion) -> str:
    """Identifies a pod template: what is served (artifact) and how (serving spec, contract)."""
    payload = {"artifact": artifact.wire(), "serving": spec.serving.wire(),
               "contract": spec.feature_contract.wire(), "joblib": spec.artifact.allow_unsafe_joblib}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def artifact_to_check(spec: MLModelSpec, status: MLModelStatus) -> str | None:
    """The URI the handler must hash before ``decide`` can go on (None: nothing to check).

    A rollback re-verifies its target's sha256 before serving it; a new spec revision is verified once.
    """
    rollback = status.last_rollback
    if rollback is not None and rollback.completed_at is None and rollback.to_version is not None \
            and not _verified_target(rollback):
        entry = _history_entry_for(status, rollback.to_version, rollback.to_sha256)
        return entry.uri if entry is not None else None
    target = target_of(spec)
    if status.stable is not None and _same(status.stable, target):
        return None
    if _already_verified(spec, status, target):
        return None
    return target.uri


def _already_verified(spec: MLModelSpec, status: MLModelStatus, target: ArtifactVersion) -> bool:
    # A signature covers the whole directory: the same model file in another directory is checked again.
    return status.verified_sha256 == target.sha256 and (spec.artifact.signature is None or (
        status.verified_signer is not None and status.verified_uri == target.uri))


def _signature_refused(spec: MLModelSpec, check: ArtifactCheck) -> SignatureVerdict | None:
    """The failed verdict when a required signature does not verify (``None``: fine or not required)."""
    if spec.artifact.signature is None:
        return None
    if check.signature is None:
        return SignatureVerdict(False, Reason.TRUSTED_KEYS_UNAVAILABLE, "the signature was not checked")
    return None if check.signature.ok else check.signature


def _verified_target(rollback: Rollback) -> bool:
    return any(t.event == "TargetVerified" for t in rollback.timeline)


def _history_entry_for(status: MLModelStatus, version: str | None, sha256: str | None) -> HistoryEntry | None:
    return next((h for h in reversed(status.history) if h.version == version and h.sha256 == sha256), None)


def rollback_target(history: list[HistoryEntry], current: ArtifactVersion,
                    version: str | None = None) -> HistoryEntry | None:
    """The newest entry (of ``version``, if given) other than the current one that was approved and not
    itself rolled back."""
    for entry in reversed(history):
        if (entry.version, entry.sha256) == (current.version, current.sha256):
            continue
        if version is not None and entry.version != version:
            continue
        if entry.outcome != "RolledBack" and entry.approvals:
            return entry
    return None


def _same(a: ArtifactVersion | None, b: ArtifactVersion | None) -> bool:
    return a is not None and b is not None and a.version == b.version and a.sha256 == b.sha256


def _seconds_since(stamp: str, now: datetime) -> float:
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=now.tzinfo)
    return (now - then).total_seconds()


def promote_token(version: str, step_index: int) -> str:
    """The ``modelwarden.io/promote`` value that releases manual pause ``step_index`` of ``version``."""
    return f"{version}/{step_index}"


# --- the decision ---------------------------------------------------------------------------------------


@dataclass
class _Pass:
    """Mutable scratch for one decision; frozen into a Decision at the end."""

    spec: MLModelSpec
    old: MLModelStatus
    obs: Observation
    now: datetime
    status: MLModelStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def condition(self, type: str, status: bool | None, reason: str, message: str) -> None:
        self.update(conditions=set_condition(
            self.status.conditions, type=type, status=status, reason=reason, message=message, now=self.now,
            generation=self.obs.generation))

    def update(self, **changes: object) -> None:
        self.status = self.status.model_copy(update=changes)

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def apply_track(self, track: Track, artifact: ArtifactVersion, replicas: int) -> None:
        fp = fingerprint(self.spec, artifact)
        observed = self.obs.stable if track == "stable" else self.obs.canary
        if (observed is None or not observed.serves(artifact) or observed.fingerprint != fp
                or observed.replicas != replicas):
            self.actions.append(ApplyTrack(track, artifact, replicas, fp))

    def delete_canary(self) -> None:
        self.set_route(0)
        if self.obs.canary is not None:
            self.actions.append(DeleteTrack("canary"))

    def set_route(self, canary_weight: int) -> None:
        if self.spec.rollout.traffic_routing.type != "gatewayAPI":
            return
        if self.obs.route_canary_weight != canary_weight:
            self.actions.append(SetRouteWeight(canary_weight))

    def finish(self, phase: str) -> Decision:
        self.update(phase=phase, observed_generation=self.obs.generation)
        return Decision(status=self.status, actions=tuple(self.actions), events=tuple(self.events),
                        requeue_after=self.requeue_after)


def decide(spec: MLModelSpec, status: MLModelStatus, obs: Observation, now: datetime) -> Decision:
    p = _Pass(spec=spec, old=status, obs=obs, now=now, status=status)
    target = target_of(spec)

    if not obs.services_present:
        p.actions.append(EnsureServices())

    if not spec.enabled:
        p.condition(ConditionType.READY, False, Reason.KILL_SWITCH,
                    "spec.enabled is false: every replica answers the neutral prediction")
        if p.old.phase != Phase.DISABLED:
            p.event("Warning", Reason.KILL_SWITCH, "kill switch engaged: serving neutral predictions")
        # Rollouts stand still while disabled; what is deployed stays, so re-enabling is instant.
        return p.finish(Phase.DISABLED)

    rollback = status.last_rollback
    if rollback is not None and rollback.completed_at is None:
        return _continue_rollback(p, rollback)

    if obs.rollback and obs.rollback not in _handled_requests(status) and status.stable is not None:
        return _manual_rollback(p, obs.rollback)

    health = _health(spec, status, obs, now)
    _record_health(p, health)
    if health is not None and health.stable_trigger is not None and status.stable is not None:
        return _start_rollback(p, health.stable_trigger)
    if health is not None and health.canary is not None and health.canary.fired and status.canary is not None:
        return _start_rollback(p, health.canary, canary_only=True)

    if status.halt is not None:
        if obs.resume == status.halt.id:
            p.event("Normal", Reason.RESUMED, f"halt {status.halt.id} cleared by the resume annotation")
            p.update(halt=None)
            p.condition(ConditionType.HALTED, False, Reason.RESUMED, f"resumed after {status.halt.id}")
        elif (status.halt.version, status.halt.sha256) != (target.version, target.sha256):
            p.event("Normal", Reason.RESUMED, f"halt {status.halt.id} cleared by a new revision {target.version}")
            p.update(halt=None)
            p.condition(ConditionType.HALTED, False, Reason.NEW_REVISION, f"new revision {target.version}")
        else:
            return _halted(p)

    if _same(status.stable, target):
        return _steady(p, target)

    if not _verify_artifact(p, target):
        return p.finish(Phase.FAILED if _mismatch(p) else Phase.PROGRESSING)

    quorum = evaluate_quorum(spec.approvals.required_roles, obs.approvals, version=target.version,
                             sha256=target.sha256)
    if not quorum.met:
        return _await_approval(p, quorum)
    records = [ApprovalRecord(role=r, approver=a.approver, approved_at=a.approved_at, name=a.name)
               for r, a in quorum.assignment.items()]
    if not p.old.approvals or [a.wire() for a in p.old.approvals] != [a.wire() for a in records]:
        p.event("Normal", Reason.QUORUM_MET, quorum.message)
    p.update(approvals=records)
    p.condition(ConditionType.APPROVED, True, Reason.QUORUM_MET, quorum.message)

    if status.stable is None:
        return _first_deployment(p, target, records)
    return _canary(p, target, records, health)


def _mismatch(p: _Pass) -> bool:
    a = p.obs.artifact
    if a is None or a.error is not None:
        return False
    refused = _signature_refused(p.spec, a)
    return a.actual != p.spec.artifact.sha256 or (refused is not None
                                                  and refused.reason != Reason.TRUSTED_KEYS_UNAVAILABLE)


def _verify_artifact(p: _Pass, target: ArtifactVersion) -> bool:
    if _already_verified(p.spec, p.status, target):
        return True
    check = p.obs.artifact
    if check is None or check.uri != target.uri:
        p.condition(ConditionType.ARTIFACT_VERIFIED, None, Reason.ARTIFACT_UNAVAILABLE,
                    f"not yet checked: {target.uri}")
        p.requeue(5)
        return False
    if check.error is not None:
        p.condition(ConditionType.ARTIFACT_VERIFIED, False, Reason.ARTIFACT_UNAVAILABLE,
                    f"cannot read {target.uri}: {check.error}")
        p.requeue(30)
        _abort_canary_not_serving(p, target)
        return False
    if check.actual != target.sha256:
        message = f"{target.uri} has sha256 {check.actual}, spec says {target.sha256}: not serving it"
        p.condition(ConditionType.ARTIFACT_VERIFIED, False, Reason.SHA256_MISMATCH, message)
        if not _condition_reason_was(p.old, ConditionType.ARTIFACT_VERIFIED, Reason.SHA256_MISMATCH):
            p.event("Warning", Reason.SHA256_MISMATCH, message)
        _abort_canary_not_serving(p, target)
        return False
    refused = _signature_refused(p.spec, check)
    if refused is not None:
        # The previous version keeps serving; nothing is served from an artifact whose signature fails.
        message = f"signature of {target.uri}'s directory: {refused.message}: not serving it"
        p.condition(ConditionType.ARTIFACT_VERIFIED, False, refused.reason, message)
        if not _condition_reason_was(p.old, ConditionType.ARTIFACT_VERIFIED, refused.reason):
            p.event("Warning", refused.reason, message)
        p.requeue(30)
        _abort_canary_not_serving(p, target)
        return False
    signer = check.signature.signer if check.signature is not None else None
    p.update(verified_sha256=target.sha256, verified_signer=signer, verified_uri=target.uri if signer else None)
    if signer is not None:
        p.condition(ConditionType.ARTIFACT_VERIFIED, True, Reason.SIGNATURE_VERIFIED,
                    f"{target.uri} matches sha256 {target.sha256}; directory signed by key {signer}")
    else:
        p.condition(ConditionType.ARTIFACT_VERIFIED, True, Reason.SHA256_MATCH,
                    f"{target.uri} matches sha256 {target.sha256}")
    return True


def _condition_reason_was(status: MLModelStatus, type: str, reason: str) -> bool:
    return any(c.type == type and c.reason == reason for c in status.conditions)


def _abort_canary_not_serving(p: _Pass, target: ArtifactVersion) -> None:
    """Nothing unverified or unapproved is served: a canary of ``target`` (or of an older target) goes."""
    if p.obs.canary is not None or p.status.canary is not None:
        if p.status.canary is not None:
            p.event("Warning", Reason.CANARY_ABORTED, f"canary {p.status.canary.version} removed")
        p.delete_canary()
        p.update(canary=None, current_step_index=None, step_started_at=None, canary_weight=0)
    if p.status.stable is not None and p.obs.stable is not None:
        p.apply_track("stable", p.status.stable, p.spec.serving.replicas)


def _await_approval(p: _Pass, quorum: Quorum) -> Decision:
    p.update(approvals=[])
    p.condition(ConditionType.APPROVED, False, Reason.AWAITING_APPROVAL, quorum.message)
    if not _condition_reason_was(p.old, ConditionType.APPROVED, Reason.AWAITING_APPROVAL):
        p.event("Normal", Reason.AWAITING_APPROVAL, quorum.message)
    _abort_canary_not_serving(p, target_of(p.spec))
    p.condition(ConditionType.PROGRESSING, False, Reason.AWAITING_APPROVAL, quorum.message)
    return p.finish(Phase.AWAITING_APPROVAL)


def _steady(p: _Pass, target: ArtifactVersion) -> Decision:
    """Serving ``target`` from the stable track; a canary left over (spec reverted) is removed."""
    if p.status.canary is not None or p.obs.canary is not None:
        if p.status.canary is not None:
            p.event("Normal", Reason.CANARY_ABORTED,
                    f"spec is back on stable {target.version}; canary {p.status.canary.version} removed")
        p.delete_canary()
        p.update(canary=None, current_step_index=None, step_started_at=None, canary_weight=0)
    replicas = p.spec.serving.replicas
    p.apply_track("stable", target, replicas)
    fp = fingerprint(p.spec, target)
    return _stable(p, target, ready=p.obs.stable is not None and p.obs.stable.ready_for(target, fp, replicas))


def _stable(p: _Pass, target: ArtifactVersion, *, ready: bool) -> Decision:
    """Conditions of a model that serves ``target`` from the stable track (the same on every pass)."""
    replicas = p.spec.serving.replicas
    p.condition(ConditionType.PROGRESSING, False, Reason.STABLE, f"serving {target.version}")
    if ready:
        p.condition(ConditionType.READY, True, Reason.STABLE, f"{target.version} ready ({replicas} replicas)")
    else:
        p.condition(ConditionType.READY, False, Reason.WAITING_FOR_STABLE,
                    f"waiting for {replicas} ready replicas of {target.version}")
    return p.finish(Phase.STABLE)


def _history_entry(artifact: ArtifactVersion, approvals: list[ApprovalRecord], now: datetime,
                   signer: str | None) -> HistoryEntry:
    return HistoryEntry(version=artifact.version, sha256=artifact.sha256, uri=artifact.uri, format=artifact.format,
                        approvals=approvals, deployed_at=timestamp(now), outcome="Serving", signer=signer)


def _first_deployment(p: _Pass, target: ArtifactVersion, approvals: list[ApprovalRecord]) -> Decision:
    replicas = p.spec.serving.replicas
    p.apply_track("stable", target, replicas)
    if p.obs.stable is None or not p.obs.stable.ready_for(target, fingerprint(p.spec, target), replicas):
        p.condition(ConditionType.PROGRESSING, True, Reason.DEPLOYING, f"deploying {target.version}")
        p.condition(ConditionType.READY, False, Reason.WAITING_FOR_STABLE,
                    f"waiting for {replicas} ready replicas of {target.version}")
        return p.finish(Phase.PROGRESSING)
    history = [*p.status.history, _history_entry(target, approvals, p.now, p.status.verified_signer)][-HISTORY_LIMIT:]
    p.update(stable=target, history=history)
    p.event("Normal", Reason.DEPLOYED, f"{target.version} (sha256 {target.sha256[:12]}) serving 100%")
    return _stable(p, target, ready=True)


def _canary(p: _Pass, target: ArtifactVersion, approvals: list[ApprovalRecord], health: Health | None,
            ) -> Decision:
    spec, obs = p.spec, p.obs
    stable = p.status.stable
    assert stable is not None
    steps = spec.rollout.steps
    replicas = spec.serving.replicas
    router = spec.rollout.traffic_routing.type

    if not _same(p.status.canary, target):
        if p.status.canary is not None:
            p.event("Normal", Reason.CANARY_ABORTED,
                    f"canary {p.status.canary.version} superseded by {target.version}")
        p.update(canary=target, current_step_index=0, step_started_at=None, canary_weight=0)
        p.event("Normal", Reason.DEPLOYING, f"canary {target.version} starting; stable {stable.version} serves")
    index = p.status.current_step_index or 0

    if index >= len(steps):
        return _promote(p, target, approvals)

    step = steps[index]
    full = plan_traffic(router, replicas, step.set_weight, canary_ready=True)
    fp = fingerprint(spec, target)
    canary_ready = obs.canary is not None and obs.canary.ready_for(target, fp, full.canary_replicas)
    stable_ready = obs.stable is not None and obs.stable.ready_replicas >= full.stable_replicas
    if router == "replicas" and not stable_ready and not canary_ready:
        # Surge the stable first: a canary pod that turns Ready beside too few stable pods would take more
        # than its share of the traffic.
        p.apply_track("stable", stable, max(full.stable_replicas, obs.stable.replicas if obs.stable else replicas))
        if obs.canary is not None and obs.canary.serves(target):
            p.apply_track("canary", target, min(obs.canary.replicas, full.canary_replicas))
        elif obs.canary is not None:
            p.actions.append(DeleteTrack("canary"))
        message = f"scaling stable {stable.version} to {full.stable_replicas} before the canary joins"
        p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_STABLE, message)
        return p.finish(Phase.PROGRESSING)
    p.apply_track("canary", target, full.canary_replicas)
    if not canary_ready:
        # Never route to a canary that is not Ready: hold the stable and the previous weight.
        held_stable = max(full.stable_replicas, obs.stable.replicas if obs.stable is not None else replicas)
        p.apply_track("stable", stable, held_stable)
        p.set_route(p.status.canary_weight)
        message = f"waiting for {full.canary_replicas} ready canary replicas of {target.version}"
        p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_CANARY, message)
        return p.finish(Phase.PROGRESSING)

    p.apply_track("stable", stable, full.stable_replicas)
    p.set_route(full.canary_weight)
    if p.status.step_started_at is None:
        p.update(step_started_at=timestamp(p.now), canary_weight=full.canary_weight)
        p.event("Normal", Reason.STEP_ADVANCED,
                f"step {index + 1}/{len(steps)}: {full.canary_weight}% of traffic on canary {target.version}")
    return _hold_or_advance(p, target, index, full, health)


def _hold_or_advance(p: _Pass, target: ArtifactVersion, index: int, plan: TrafficPlan, health: Health | None,
                     ) -> Decision:
    step = p.spec.rollout.steps[index]
    where = f"step {index + 1}/{len(p.spec.rollout.steps)} at {plan.canary_weight}%"
    if step.pause_seconds is None:
        token = promote_token(target.version, index)
        if p.obs.promote != token:
            message = f"{where}: waiting for `modelwarden promote` (annotation {token})"
            p.condition(ConditionType.PROGRESSING, True, Reason.AWAITING_PROMOTE, message)
            return p.finish(Phase.PAUSED)
    else:
        assert p.status.step_started_at is not None
        remaining = step.pause_seconds - _seconds_since(p.status.step_started_at, p.now)
        if remaining > 0:
            p.condition(ConditionType.PROGRESSING, True, Reason.STEP_PAUSED,
                        f"{where}: holding {int(remaining + 0.999)}s more")
            p.requeue(remaining)
            return p.finish(Phase.PROGRESSING)
    if health is not None and (health.canary is None or health.canary.verdict != "Clear"):
        # No data is no verdict: never promote on it (DESIGN §3).
        p.condition(ConditionType.PROGRESSING, True, Reason.ANALYSIS_PENDING,
                    f"{where}: canary analysis has no verdict yet; not advancing")
        p.requeue(p.spec.rollout.analysis.interval_seconds)
        return p.finish(Phase.PROGRESSING)
    p.update(current_step_index=index + 1, step_started_at=None)
    # Re-decide at once so the next step's replicas are requested in this same pass, instead of this step's.
    p.actions = [a for a in p.actions if not isinstance(a, ApplyTrack | SetRouteWeight)]
    # The next step's weight is not yet analysed: only the first pass may advance on this verdict.
    return _canary(p, target, p.status.approvals, None if health is None else Health())


def _promote(p: _Pass, target: ArtifactVersion, approvals: list[ApprovalRecord]) -> Decision:
    replicas = p.spec.serving.replicas
    router = p.spec.rollout.traffic_routing.type
    full = plan_traffic(router, replicas, 100, canary_ready=True)
    # The canary keeps all traffic while the stable track rolls to the new version.
    p.apply_track("canary", target, full.canary_replicas)
    p.apply_track("stable", target, replicas)
    fp = fingerprint(p.spec, target)
    if p.obs.stable is None or not p.obs.stable.ready_for(target, fp, replicas):
        p.set_route(100)
        if p.old.current_step_index != p.status.current_step_index or p.old.canary_weight != 100:
            p.event("Normal", Reason.PROMOTING, f"promoting {target.version} to stable")
        p.update(canary_weight=100)
        p.condition(ConditionType.PROGRESSING, True, Reason.PROMOTING,
                    f"promoting {target.version}: waiting for {replicas} ready stable replicas")
        return p.finish(Phase.PROGRESSING)

    p.delete_canary()
    previous = p.status.stable
    history = [
        h.model_copy(update={"retired_at": timestamp(p.now), "outcome": "Superseded"})
        if previous is not None and h.outcome == "Serving" and h.sha256 == previous.sha256
        and h.version == previous.version else h
        for h in p.status.history
    ]
    history = [*history, _history_entry(target, approvals, p.now, p.status.verified_signer)][-HISTORY_LIMIT:]
    p.update(stable=target, canary=None, current_step_index=None, step_started_at=None, canary_weight=0,
             history=history)
    p.event("Normal", Reason.PROMOTED,
            f"{target.version} (sha256 {target.sha256[:12]}) promoted to stable; "
            f"{previous.version if previous else 'nothing'} retired")
    return _stable(p, target, ready=True)


# --- health, rollback and halt --------------------------------------------------------------------------


def _health(spec: MLModelSpec, status: MLModelStatus, obs: Observation, now: datetime) -> Health | None:
    if not obs.metrics_configured:
        return None
    if obs.metrics is None:
        down = Assessment("Prometheus", "NoData", f"Prometheus unavailable: {obs.metrics_error or 'no answer'}")
        canary = Assessment(CANARY_ANALYSIS, "NoData", down.message) if status.canary is not None else None
        return Health(canary=canary, no_data=(down,))
    return judge(spec, status, obs.metrics, now)


def _record_health(p: _Pass, health: Health | None) -> None:
    """Healthy condition, the budget shown in status, and the bounded wait before saying metrics are gone."""
    if health is None:
        return
    stable_version = p.status.stable.version if p.status.stable else None
    percent = budget_percent(p.obs.metrics, stable_version)
    if percent is not None and stable_version is not None:
        old = p.status.error_budget
        if old is None or old.remaining_percent != percent or old.version != stable_version:
            p.update(error_budget=ErrorBudget(version=stable_version, remaining_percent=percent,
                                              observed_at=timestamp(p.now)))
    if health.metrics_unavailable:
        message = "; ".join(a.message for a in health.no_data)
        p.condition(ConditionType.HEALTHY, None, Reason.METRICS_UNAVAILABLE,
                    f"{message}: no automatic rollback and no promotion until metrics return")
        since = p.status.metrics_unavailable_since
        limit = p.spec.rollback.no_data_notify_seconds
        if since is None:
            p.update(metrics_unavailable_since=timestamp(p.now))
            p.requeue(limit)
        elif not p.status.metrics_unavailable_notified:
            waited = _seconds_since(since, p.now)
            if waited >= limit:
                summary = f"metrics unavailable for {int(waited // 60)}m: automatic rollback is off ({message})"
                p.event("Warning", Reason.METRICS_UNAVAILABLE, summary)
                p.actions.append(Notify("warning", summary))
                p.update(metrics_unavailable_notified=True)
            else:
                p.requeue(limit - waited)
        return
    if p.status.metrics_unavailable_since is not None:
        p.update(metrics_unavailable_since=None, metrics_unavailable_notified=False)
    trigger = health.stable_trigger or (health.canary if health.canary and health.canary.fired else None)
    if trigger is None:
        # Clear verdicts carry no live numbers (those are in status.errorBudget and the metrics): a message that
        # changed every cycle would rewrite every model's status every cycle.
        summary = "; ".join(a.message for a in health.clear) or "no served version to judge"
        p.condition(ConditionType.HEALTHY, True, Reason.HEALTHY, summary)


def _rollback_id(p: _Pass, version: str) -> str:
    return f"rb-{p.now.strftime('%Y%m%dt%H%M%S')}-{version}".lower()


def _handled_requests(status: MLModelStatus) -> set[str]:
    return {i.request for i in status.incidents if i.request} | (
        {status.last_rollback.request} if status.last_rollback and status.last_rollback.request else set())


def _manual_rollback(p: _Pass, request: str) -> Decision:
    """`modelwarden rollback [--to VERSION]`: the same path as an automatic rollback. Without --to, a running
    canary is aborted, else the stable goes back to the previous approved version."""
    _, _, version = request.partition(":")
    message = f"manual rollback to {version} requested" if version else "manual rollback requested"
    trigger = Assessment(Reason.MANUAL_ROLLBACK, "Fired", message, {"request": request})
    return _start_rollback(p, trigger, canary_only=p.status.canary is not None and not version, request=request,
                           restore_version=version or None)


def _start_rollback(p: _Pass, trigger: Assessment, *, canary_only: bool = False, request: str | None = None,
                    restore_version: str | None = None) -> Decision:
    """A trigger fired: halt, then put traffic back on the prior approved SHA (DESIGN §3)."""
    status = p.status
    spec_target = target_of(p.spec)
    if canary_only:
        assert status.canary is not None and status.stable is not None
        bad, restore = status.canary, _history_entry_for(status, status.stable.version, status.stable.sha256)
    else:
        assert status.stable is not None
        bad, restore = status.stable, rollback_target(status.history, status.stable, restore_version)
    rb = Rollback(
        id=_rollback_id(p, bad.version), trigger=trigger.trigger, message=trigger.message, values=trigger.values,
        request=request,
        from_version=bad.version, from_sha256=bad.sha256,
        to_version=restore.version if restore else None, to_sha256=restore.sha256 if restore else None,
        started_at=timestamp(p.now),
        timeline=[TimelineEntry(at=timestamp(p.now), event="TriggerFired", message=trigger.message),
                  TimelineEntry(at=timestamp(p.now), event="Halted",
                                message=f"rollouts of {spec_target.version} halted")],
    )
    p.update(last_rollback=rb,
             halt=Halt(id=rb.id, reason=trigger.trigger, version=spec_target.version, sha256=spec_target.sha256,
                       since=timestamp(p.now)))
    p.condition(ConditionType.HEALTHY, False, trigger.trigger, trigger.message)
    p.condition(ConditionType.HALTED, True, trigger.trigger,
                f"halted by {rb.id}: set annotation modelwarden.io/resume={rb.id} or apply a new revision")
    if trigger.trigger == CRITICAL_FEEDBACK:
        feedback = p.spec.rollback.critical_feedback
        p.actions.append(CollectFeedbackEvidence(rb, "canary" if canary_only else "stable", feedback.window_seconds,
                                                 tuple(feedback.stakeholders)))
    where = f"{bad.version} → {restore.version}" if restore else f"{bad.version} (no approved version to go back to)"
    p.event("Warning", Reason.ROLLBACK_STARTED, f"{trigger.message}; rolling back {where}")
    return _continue_rollback(p, rb)


def _timeline(rb: Rollback, p: _Pass, event: str, message: str) -> Rollback:
    return rb.model_copy(update={"timeline": [*rb.timeline, TimelineEntry(at=timestamp(p.now), event=event,
                                                                          message=message)]})


def _continue_rollback(p: _Pass, rb: Rollback) -> Decision:
    """Each step is idempotent and re-derived from status and observation, so a crash anywhere resumes."""
    replicas = p.spec.serving.replicas
    if rb.to_version is None:
        return _finish_rollback(p, rb, restored=None, canary_only=False, severity="page",
                                summary=f"{rb.message}; no approved earlier version of {rb.from_version} to "
                                        "roll back to: canary removed, stable kept, rollouts halted")
    canary_only = p.status.canary is not None and (p.status.canary.version, p.status.canary.sha256) == (
        rb.from_version, rb.from_sha256)
    entry = _history_entry_for(p.status, rb.to_version, rb.to_sha256)
    assert entry is not None, "a rollback target always comes from history"
    restore = ArtifactVersion(version=entry.version, sha256=entry.sha256, uri=entry.uri, format=entry.format)

    if not canary_only and not _verified_target(rb):
        check = p.obs.artifact
        if check is None or check.uri != restore.uri:
            p.requeue(0)  # the handler hashes the target on the very next pass
            p.update(last_rollback=rb)
            return p.finish(Phase.ROLLING_BACK)
        refused = _signature_refused(p.spec, check)
        if check.error is not None or check.actual != restore.sha256 or refused is not None:
            if check.error is not None or check.actual != restore.sha256:
                found = check.error or f"sha256 {check.actual}"
            else:
                assert refused is not None
                found = f"signature {refused.reason}: {refused.message}"
            message = f"rollback target {restore.version} at {restore.uri} no longer matches: {found}"
            p.event("Warning", Reason.TARGET_SHA256_MISMATCH, message)
            rb = _timeline(rb, p, "TargetRejected", message).model_copy(update={"to_version": None,
                                                                                  "to_sha256": None})
            return _finish_rollback(p, rb, restored=None, canary_only=False, severity="page",
                                    summary=f"{rb.message}; {message}: stable kept, rollouts halted")
        rb = _timeline(rb, p, "TargetVerified", f"{restore.uri} sha256 {restore.sha256}")

    # Traffic: 100% on the restored stable, canary to 0.
    p.delete_canary()
    p.apply_track("stable", restore, replicas)
    restored = (p.obs.stable is not None and p.obs.stable.ready_for(restore, fingerprint(p.spec, restore), replicas)
                and p.obs.canary is None and (p.spec.rollout.traffic_routing.type != "gatewayAPI"
                                              or p.obs.route_canary_weight in (0, None)))
    if not restored:
        p.update(last_rollback=rb, canary_weight=0)
        p.condition(ConditionType.PROGRESSING, True, Reason.ROLLBACK_STARTED,
                    f"rolling back to {restore.version} (sha256 {restore.sha256[:12]})")
        return p.finish(Phase.ROLLING_BACK)
    return _finish_rollback(p, rb, restored=restore, canary_only=canary_only, severity="page",
                            summary=f"{rb.message}; rolled back {rb.from_version} → {restore.version} "
                                    f"(sha256 {restore.sha256})")


def _finish_rollback(p: _Pass, rb: Rollback, *, restored: ArtifactVersion | None, canary_only: bool,
                     severity: Literal["page", "warning"], summary: str) -> Decision:
    now = timestamp(p.now)
    if restored is not None:
        rb = _timeline(rb, p, "TrafficRestored", f"100% of traffic on {restored.version} "
                                                 f"(sha256 {restored.sha256})")
        rb = rb.model_copy(update={"traffic_restored_at": now})
        if not canary_only:
            history = [h.model_copy(update={"outcome": "RolledBack", "retired_at": now})
                       if h.outcome == "Serving" and (h.version, h.sha256) == (rb.from_version, rb.from_sha256)
                       else h for h in p.status.history]
            previous = _history_entry_for(p.status, restored.version, restored.sha256)
            approvals = previous.approvals if previous is not None else []
            signer = previous.signer if previous is not None else None
            history = [*history, _history_entry(restored, approvals, p.now, signer)][-HISTORY_LIMIT:]
            p.update(stable=restored, history=history)
        p.actions.append(FlushAndWarm(flush_track="canary" if canary_only else None, warm_track="stable"))
        p.condition(ConditionType.READY, True, Reason.STABLE,
                    f"{restored.version} ready ({p.spec.serving.replicas} replicas)")
        p.event("Normal", Reason.TRAFFIC_RESTORED, f"traffic back on {restored.version} (sha256 {restored.sha256})")
    else:
        # No valid target: the canary (if any) goes, the stable stays.
        p.delete_canary()
        if p.status.stable is not None:
            p.apply_track("stable", p.status.stable, p.spec.serving.replicas)
        p.event("Warning", Reason.NO_ROLLBACK_TARGET, summary)
    rb = _timeline(rb, p, "Recorded", "incident recorded, Grafana annotated, notification sent")
    rb = rb.model_copy(update={"completed_at": now})
    p.actions += [AnnotateGrafana(rb), RecordIncident(rb), Notify(severity, summary, rb)]
    incidents = [*[i for i in p.status.incidents if i.id != rb.id], rb][-INCIDENT_LIMIT:]
    p.update(last_rollback=rb, incidents=incidents, canary=None, current_step_index=None, step_started_at=None,
             canary_weight=0)
    p.condition(ConditionType.ROLLED_BACK, True, rb.trigger, summary)
    p.condition(ConditionType.PROGRESSING, False, Reason.ROLLBACK_COMPLETE, summary)
    p.event("Warning", Reason.ROLLBACK_COMPLETE, summary)
    return p.finish(Phase.HALTED)


def _halted(p: _Pass) -> Decision:
    """Halted: the stable keeps serving, nothing new rolls out until resume or a new revision."""
    assert p.status.halt is not None
    if p.status.canary is not None or p.obs.canary is not None:
        p.delete_canary()
        p.update(canary=None, current_step_index=None, step_started_at=None, canary_weight=0)
    if p.status.stable is not None:
        p.apply_track("stable", p.status.stable, p.spec.serving.replicas)
    return p.finish(Phase.HALTED)
