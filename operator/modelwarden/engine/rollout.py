"""The rollout state machine (DESIGN §3), as one pure function.

``decide(spec, status, observation, now)`` reads everything the handler observed and returns the new status,
the actions that make the world match it, and the Events to record. It never reads the clock and never
talks to anything; deciding again on its own result (with the actions applied) yields no new actions.

    new revision → verify sha256 → AwaitingApproval → canary up and Ready → steps (pause or promote)
    → promote (history entry appended) → Stable
"""

from __future__ import annotations

from datetime import datetime

from modelwarden.api.v1alpha1 import (
    ApprovalRecord,
    ArtifactVersion,
    ConditionType,
    ErrorBudget,
    Halt,
    MLModelSpec,
    MLModelStatus,
    Phase,
    Reason,
)
from modelwarden.engine import standby
from modelwarden.engine.actions import (
    DeleteTrack,
    Notify,
)
from modelwarden.engine.approvals import Quorum, evaluate_quorum
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.decision import (
    HISTORY_LIMIT,
    Decision,
    Observation,
    Pass,
    TrackState,
    fingerprint,
    history_entry,
    history_entry_for,
    same,
    signature_refused,
    target_of,
    verified_target,
)
from modelwarden.engine.health import Health, budget_percent, judge
from modelwarden.engine.rollback import (
    continue_rollback,
    halted,
    handled_requests,
    manual_rollback,
    start_rollback,
)
from modelwarden.engine.shadow import in_stage, shadow_stage
from modelwarden.engine.timestamps import seconds_since, timestamp
from modelwarden.engine.traffic import TrafficPlan
from modelwarden.engine.triggers import CANARY_ANALYSIS, Assessment

# ArtifactVerified=False reasons that say nothing about the bytes: never Failed for these.
NOTHING_PROVEN = (Reason.ARTIFACT_UNAVAILABLE, Reason.ARTIFACT_TOO_LARGE, Reason.VERIFICATION_TIMED_OUT,
                  Reason.TRUSTED_KEYS_UNAVAILABLE)
# When a verification that proved nothing is tried again (seconds; the verification pool holds to it too).
DEFAULT_RETRY_SECONDS = 30
RETRY_AFTER_FAILURE: dict[str, int] = {Reason.ARTIFACT_TOO_LARGE: 600, Reason.VERIFICATION_TIMED_OUT: 120}


def artifact_to_check(spec: MLModelSpec, status: MLModelStatus, standby: TrackState | None = None) -> str | None:
    """The URI the handler must hash before ``decide`` can go on (None: nothing to check).

    A rollback re-verifies its target's sha256 before serving it (unless its warm standby serves it: the store is
    not asked again); a new spec revision is verified once.
    """
    rollback = status.last_rollback
    if rollback is not None and rollback.completed_at is None and rollback.to_version is not None \
            and not verified_target(rollback):
        entry = history_entry_for(status, rollback.to_version, rollback.to_sha256)
        if entry is None:
            return None
        if standby is not None and standby.ready_replicas >= 1 and (standby.version, standby.sha256) == (
                entry.version, entry.sha256):
            return None  # its warm standby serves it: the store is not asked
        return entry.uri
    target = target_of(spec)
    if status.stable is not None and same(status.stable, target):
        return None
    if _already_verified(spec, status, target):
        return None
    return target.uri


def _already_verified(spec: MLModelSpec, status: MLModelStatus, target: ArtifactVersion) -> bool:
    # A signature covers the whole directory: the same model file in another directory is checked again.
    return status.verified_sha256 == target.sha256 and (spec.artifact.signature is None or (
        status.verified_signer is not None and status.verified_uri == target.uri))



def promote_token(version: str, step_index: int) -> str:
    """The token a promote ModelAction feeds the decision: it releases manual pause ``step_index`` of ``version``."""
    return f"{version}/{step_index}"



def decide(spec: MLModelSpec, status: MLModelStatus, obs: Observation, now: datetime) -> Decision:
    # What the user-facing Service selects and the warm standby follow from what the rest decided.
    return standby.plan(spec, _decide(spec, status, obs, now), obs, now)


def _decide(spec: MLModelSpec, status: MLModelStatus, obs: Observation, now: datetime) -> Decision:
    p = Pass(spec=spec, old=status, obs=obs, now=now, status=status)
    target = target_of(spec)

    if not spec.enabled:
        return _disabled(p)

    rollback = status.last_rollback
    if rollback is not None and rollback.completed_at is None:
        return continue_rollback(p, rollback)

    if obs.rollback and obs.rollback not in handled_requests(status) and status.stable is not None:
        return manual_rollback(p, obs.rollback)

    health = _health(spec, status, obs, now)
    _record_health(p, health)
    if health is not None and health.stable_trigger is not None and status.stable is not None:
        return start_rollback(p, health.stable_trigger)
    if health is not None and health.canary is not None and health.canary.fired and status.canary is not None:
        return start_rollback(p, health.canary, canary_only=True)

    if status.halt is not None and _still_halted(p, status.halt, target):
        return halted(p)

    if same(status.stable, target):
        return _steady(p, target)

    if not _verify_artifact(p, target):
        return p.finish(Phase.FAILED if _mismatch(p) else Phase.PROGRESSING)

    quorum = evaluate_quorum(spec.approvals.required_roles, obs.approvals, version=target.version,
                             sha256=target.sha256,
                             signer=p.status.verified_signer if spec.artifact.signature is not None else None)
    if not quorum.met:
        return _await_approval(p, quorum)
    records = _record_approvals(p, quorum)

    if status.stable is None:
        return _first_deployment(p, target, records)
    return _canary(p, target, records, health)


def _disabled(p: Pass) -> Decision:
    p.condition(ConditionType.READY, False, Reason.KILL_SWITCH,
                "spec.enabled is false: every replica answers the neutral prediction")
    if p.old.phase != Phase.DISABLED:
        p.event("Warning", Reason.KILL_SWITCH, "kill switch engaged: serving neutral predictions")
    # Rollouts stand still while disabled; what is deployed stays, so re-enabling is instant.
    return p.finish(Phase.DISABLED)


def _still_halted(p: Pass, halt: Halt, target: ArtifactVersion) -> bool:
    """A halt ends on the resume annotation naming it, or on a new revision; otherwise it holds. Its end also ends
    the halted candidate's shadow stage record: a resumed candidate is compared again, a new revision afresh."""
    if p.obs.resume == halt.id:
        p.event("Normal", Reason.RESUMED, f"halt {halt.id} cleared by the resume annotation")
        p.update(halt=None, shadow=None)
        p.condition(ConditionType.HALTED, False, Reason.RESUMED, f"resumed after {halt.id}")
        return False
    if (halt.version, halt.sha256) != (target.version, target.sha256):
        p.event("Normal", Reason.RESUMED, f"halt {halt.id} cleared by a new revision {target.version}")
        p.update(halt=None, shadow=None)
        p.condition(ConditionType.HALTED, False, Reason.NEW_REVISION, f"new revision {target.version}")
        return False
    return True


def _record_approvals(p: Pass, quorum: Quorum) -> list[ApprovalRecord]:
    records = [ApprovalRecord(role=r, approver=a.approver, approved_at=a.approved_at, name=a.name)
               for r, a in quorum.assignment.items()]
    if not p.old.approvals or [a.wire() for a in p.old.approvals] != [a.wire() for a in records]:
        p.event("Normal", Reason.QUORUM_MET, quorum.message)
    p.update(approvals=records)
    p.condition(ConditionType.APPROVED, True, Reason.QUORUM_MET, quorum.message)
    return records


def _mismatch(p: Pass) -> bool:
    a = p.obs.artifact
    if a is not None and a.pending:
        # Checked again off the workers: a mismatch already found for this URI stands meanwhile.
        standing = get_condition(p.old.conditions, ConditionType.ARTIFACT_VERIFIED)
        return (standing is not None and standing.status == "False" and a.uri in standing.message
                and standing.reason not in NOTHING_PROVEN)
    if a is None or a.error is not None:
        return False
    refused = signature_refused(p.spec, a)
    return a.actual != p.spec.artifact.sha256 or (refused is not None
                                                  and refused.reason != Reason.TRUSTED_KEYS_UNAVAILABLE)



def _verify_artifact(p: Pass, target: ArtifactVersion) -> bool:
    if _already_verified(p.spec, p.status, target):
        return True
    check = p.obs.artifact
    if check is None or check.uri != target.uri:
        p.condition(ConditionType.ARTIFACT_VERIFIED, None, Reason.ARTIFACT_UNAVAILABLE,
                    f"not yet checked: {target.uri}")
        p.requeue(5)
        return False
    if check.pending:
        # Verified off the reconcile workers; the verdict wakes this model. A failure already recorded for this
        # URI stands while it is checked again (no flip-flop of the condition, no status write per retry).
        previous = get_condition(p.old.conditions, ConditionType.ARTIFACT_VERIFIED)
        if previous is None or previous.status != "False" or target.uri not in previous.message:
            p.condition(ConditionType.ARTIFACT_VERIFIED, None, Reason.VERIFICATION_PENDING,
                        f"verifying {target.uri} (queued or running)")
        return False
    if check.error is not None:
        p.condition(ConditionType.ARTIFACT_VERIFIED, False, check.failure,
                    f"cannot read {target.uri}: {check.error}")
        # Unavailable may heal soon; an artifact over its limits or its deadline would cost the same again (a
        # new spec revision wakes the model at once).
        p.requeue(RETRY_AFTER_FAILURE.get(check.failure, DEFAULT_RETRY_SECONDS))
        _abort_canary_not_serving(p, target)
        return False
    if check.actual != target.sha256:
        message = f"{target.uri} has sha256 {check.actual}, spec says {target.sha256}: not serving it"
        p.condition(ConditionType.ARTIFACT_VERIFIED, False, Reason.SHA256_MISMATCH, message)
        if not _condition_reason_was(p.old, ConditionType.ARTIFACT_VERIFIED, Reason.SHA256_MISMATCH):
            p.event("Warning", Reason.SHA256_MISMATCH, message)
        _abort_canary_not_serving(p, target)
        return False
    refused = signature_refused(p.spec, check)
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



def _abort_canary_not_serving(p: Pass, target: ArtifactVersion) -> None:
    """Nothing unverified or unapproved is served: a canary of ``target`` (or of an older target) goes."""
    if p.status.canary is not None:
        p.event("Warning", Reason.CANARY_ABORTED, f"canary {p.status.canary.version} removed")
    p.clear_canary()
    if p.status.stable is not None and p.obs.stable is not None:
        p.apply_track("stable", p.status.stable, p.spec.serving.replicas)



def _await_approval(p: Pass, quorum: Quorum) -> Decision:
    p.update(approvals=[])
    p.condition(ConditionType.APPROVED, False, Reason.AWAITING_APPROVAL, quorum.message)
    if not _condition_reason_was(p.old, ConditionType.APPROVED, Reason.AWAITING_APPROVAL):
        p.event("Normal", Reason.AWAITING_APPROVAL, quorum.message)
    _abort_canary_not_serving(p, target_of(p.spec))
    p.condition(ConditionType.PROGRESSING, False, Reason.AWAITING_APPROVAL, quorum.message)
    return p.finish(Phase.AWAITING_APPROVAL)



def _steady(p: Pass, target: ArtifactVersion) -> Decision:
    """Serving ``target`` from the stable track; a canary left over (spec reverted) is removed."""
    if p.status.canary is not None:
        p.event("Normal", Reason.CANARY_ABORTED,
                f"spec is back on stable {target.version}; canary {p.status.canary.version} removed")
    p.clear_canary()
    replicas = p.spec.serving.replicas
    p.apply_track("stable", target, replicas)
    fp = fingerprint(p.spec, target)
    return _stable(p, target, ready=p.obs.stable is not None and p.obs.stable.ready_for(target, fp, replicas))



def _stable(p: Pass, target: ArtifactVersion, *, ready: bool) -> Decision:
    """Conditions of a model that serves ``target`` from the stable track (the same on every pass)."""
    replicas = p.spec.serving.replicas
    p.condition(ConditionType.PROGRESSING, False, Reason.STABLE, f"serving {target.version}")
    if ready:
        p.condition(ConditionType.READY, True, Reason.STABLE, f"{target.version} ready ({replicas} replicas)")
    else:
        p.condition(ConditionType.READY, False, Reason.WAITING_FOR_STABLE,
                    f"waiting for {replicas} ready replicas of {target.version}")
    return p.finish(Phase.STABLE)



def _first_deployment(p: Pass, target: ArtifactVersion, approvals: list[ApprovalRecord]) -> Decision:
    replicas = p.spec.serving.replicas
    p.apply_track("stable", target, replicas)
    if p.obs.stable is None or not p.obs.stable.ready_for(target, fingerprint(p.spec, target), replicas):
        p.condition(ConditionType.PROGRESSING, True, Reason.DEPLOYING, f"deploying {target.version}")
        p.condition(ConditionType.READY, False, Reason.WAITING_FOR_STABLE,
                    f"waiting for {replicas} ready replicas of {target.version}")
        return p.finish(Phase.PROGRESSING)
    history = [*p.status.history, history_entry(target, approvals, p.now, p.status.verified_signer)][-HISTORY_LIMIT:]
    p.update(stable=target, history=history)
    p.event("Normal", Reason.DEPLOYED, f"{target.version} (sha256 {target.sha256[:12]}) serving 100%")
    return _stable(p, target, ready=True)



def _canary(p: Pass, target: ArtifactVersion, approvals: list[ApprovalRecord], health: Health | None,
            ) -> Decision:
    """Walk the steps: serve each step's weight, hold it (pause or promote), advance on a clear analysis.

    Several steps may pass in one decision (pauses of 0, no analysis configured), but an analysis verdict
    speaks only for the weight it analysed: after one advance, the next weight waits for its own verdict.
    """
    stable = p.status.stable
    assert stable is not None
    steps = p.spec.rollout.steps
    if not same(p.status.canary, target):
        if p.status.canary is not None:
            p.event("Normal", Reason.CANARY_ABORTED,
                    f"canary {p.status.canary.version} superseded by {target.version}")
        p.update(canary=target, current_step_index=0, step_started_at=None, canary_weight=0)
        p.event("Normal", Reason.DEPLOYING, f"canary {target.version} starting; stable {stable.version} serves")
    if in_stage(p, target):
        stage = shadow_stage(p, target, health.shadow if health is not None else None)
        if stage is not None:
            return stage
    # None: no analysis configured. Otherwise whether the weight served now has a clear verdict.
    analysis_clear = None if health is None else health.canary is not None and health.canary.verdict == "Clear"
    while (index := p.status.current_step_index or 0) < len(steps):
        step_actions = len(p.actions)
        plan = _serve_step(p, target, index)
        if plan is None:
            return p.finish(Phase.PROGRESSING)
        held = _hold(p, target, index, plan, analysis_clear)
        if held is not None:
            return p.finish(held)
        p.update(current_step_index=index + 1, step_started_at=None)
        # The next step's replicas and weights replace this step's, in this same pass.
        del p.actions[step_actions:]
        if analysis_clear is not None:
            analysis_clear = False
    return _promote(p, target, approvals)


def _serve_step(p: Pass, target: ArtifactVersion, index: int) -> TrafficPlan | None:
    """Replicas and route for step ``index``; None while the tracks are not ready for its weight."""
    spec, obs = p.spec, p.obs
    stable = p.status.stable
    assert stable is not None
    steps = spec.rollout.steps
    replicas = spec.serving.replicas
    step = steps[index]
    full = p.router.plan(replicas, step.set_weight, canary_ready=True)
    fp = fingerprint(spec, target)
    canary_ready = obs.canary is not None and obs.canary.ready_for(target, fp, full.canary_replicas)
    stable_ready = obs.stable is not None and obs.stable.ready_replicas >= full.stable_replicas
    if not p.router.weighted_route and not stable_ready and not canary_ready:
        # Surge the stable first: a canary pod that turns Ready beside too few stable pods would take more
        # than its share of the traffic.
        p.apply_track("stable", stable, max(full.stable_replicas, obs.stable.replicas if obs.stable else replicas))
        if obs.canary is not None and obs.canary.serves(target):
            p.apply_track("canary", target, min(obs.canary.replicas, full.canary_replicas))
        elif obs.canary is not None:
            p.actions.append(DeleteTrack("canary"))
        message = f"scaling stable {stable.version} to {full.stable_replicas} before the canary joins"
        p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_STABLE, message)
        return None
    p.apply_track("canary", target, full.canary_replicas)
    if not canary_ready:
        # Never route to a canary that is not Ready: hold the stable and the previous weight.
        held_stable = max(full.stable_replicas, obs.stable.replicas if obs.stable is not None else replicas)
        p.apply_track("stable", stable, held_stable)
        p.set_route(p.status.canary_weight)
        message = f"waiting for {full.canary_replicas} ready canary replicas of {target.version}"
        p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_CANARY, message)
        return None

    p.apply_track("stable", stable, full.stable_replicas)
    p.set_route(full.canary_weight)
    if p.status.step_started_at is None:
        p.update(step_started_at=timestamp(p.now), canary_weight=full.canary_weight)
        p.event("Normal", Reason.STEP_ADVANCED,
                f"step {index + 1}/{len(steps)}: {full.canary_weight}% of traffic on canary {target.version}")
    return full


def _hold(p: Pass, target: ArtifactVersion, index: int, plan: TrafficPlan, analysis_clear: bool | None,
          ) -> Phase | None:
    """The phase to stay in at step ``index``, or None when the step is done."""
    step = p.spec.rollout.steps[index]
    where = f"step {index + 1}/{len(p.spec.rollout.steps)} at {plan.canary_weight}%"
    if step.pause_seconds is None:
        token = promote_token(target.version, index)
        if p.obs.promote != token:
            message = f"{where}: waiting for `modelwarden promote` ({token})"
            p.condition(ConditionType.PROGRESSING, True, Reason.AWAITING_PROMOTE, message)
            return Phase.PAUSED
    else:
        assert p.status.step_started_at is not None
        remaining = step.pause_seconds - seconds_since(p.status.step_started_at, p.now)
        if remaining > 0:
            p.condition(ConditionType.PROGRESSING, True, Reason.STEP_PAUSED,
                        f"{where}: holding {int(remaining + 0.999)}s more")
            p.requeue(remaining)
            return Phase.PROGRESSING
    if analysis_clear is False:
        # No data is no verdict: never promote on it (DESIGN §3).
        p.condition(ConditionType.PROGRESSING, True, Reason.ANALYSIS_PENDING,
                    f"{where}: canary analysis has no verdict yet; not advancing")
        p.requeue(p.spec.rollout.analysis.interval_seconds)
        return Phase.PROGRESSING
    return None


def _promote(p: Pass, target: ArtifactVersion, approvals: list[ApprovalRecord]) -> Decision:
    replicas = p.spec.serving.replicas
    full = p.router.plan(replicas, 100, canary_ready=True)
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
    history = [*history, history_entry(target, approvals, p.now, p.status.verified_signer)][-HISTORY_LIMIT:]
    p.update(stable=target, canary=None, current_step_index=None, step_started_at=None, canary_weight=0,
             history=history)
    p.event("Normal", Reason.PROMOTED,
            f"{target.version} (sha256 {target.sha256[:12]}) promoted to stable; "
            f"{previous.version if previous else 'nothing'} retired")
    return _stable(p, target, ready=True)



def _health(spec: MLModelSpec, status: MLModelStatus, obs: Observation, now: datetime) -> Health | None:
    if not obs.metrics_configured:
        return None
    if obs.metrics is None:
        down = Assessment("Prometheus", "NoData", f"Prometheus unavailable: {obs.metrics_error or 'no answer'}")
        canary = Assessment(CANARY_ANALYSIS, "NoData", down.message) if status.canary is not None else None
        return Health(canary=canary, no_data=(down,))
    return judge(spec, status, obs.metrics, now)



def _record_health(p: Pass, health: Health | None) -> None:
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
            waited = seconds_since(since, p.now)
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

