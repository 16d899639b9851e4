"""The rollback path (DESIGN §3): halt, verify the target's sha256, put traffic back on it, record the incident.

Each step is idempotent and re-derived from status and observation, so an operator that crashes anywhere
resumes where it stopped. :func:`start_rollback` begins one (a trigger fired, or a person asked);
:func:`continue_rollback` walks it on every later pass; :func:`halted` is what a halted model does.
"""

from __future__ import annotations

from typing import Literal

from modelwarden.api.v1alpha1 import (
    ArtifactVersion,
    ConditionType,
    Halt,
    HistoryEntry,
    MLModelStatus,
    Phase,
    Reason,
    Rollback,
    TimelineEntry,
    Track,
)
from modelwarden.engine.actions import (
    AnnotateGrafana,
    CollectFeedbackEvidence,
    FlushAndWarm,
    Notify,
    RecordIncident,
)
from modelwarden.engine.decision import (
    HISTORY_LIMIT,
    Decision,
    Observation,
    Pass,
    fingerprint,
    history_entry,
    history_entry_for,
    signature_refused,
    target_of,
    verified_target,
)
from modelwarden.engine.timestamps import timestamp
from modelwarden.engine.triggers import CRITICAL_FEEDBACK, Assessment

INCIDENT_LIMIT = 10



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



def warm_standby(obs: Observation, artifact: ArtifactVersion) -> bool:
    """The standby (spec.rollback.standby) serves ``artifact`` with a Ready pod: its bytes were verified against
    the sha256 in the pod, so a rollback to it needs neither the artifact store nor a cold start."""
    return obs.standby is not None and obs.standby.serves(artifact) and obs.standby.ready_replicas >= 1



def served_by_standby(rollback: Rollback) -> bool:
    return any(t.event == "StandbyServing" for t in rollback.timeline)



def _rollback_id(p: Pass, version: str) -> str:
    return f"rb-{p.now.strftime('%Y%m%dt%H%M%S')}-{version}".lower()



def handled_requests(status: MLModelStatus) -> set[str]:
    return {i.request for i in status.incidents if i.request} | (
        {status.last_rollback.request} if status.last_rollback and status.last_rollback.request else set())



def manual_rollback(p: Pass, request: str) -> Decision:
    """`modelwarden rollback [--to VERSION]`: the same path as an automatic rollback. Without --to, a running
    canary is aborted, else the stable goes back to the previous approved version."""
    _, _, version = request.partition(":")
    message = f"manual rollback to {version} requested" if version else "manual rollback requested"
    trigger = Assessment(Reason.MANUAL_ROLLBACK, "Fired", message, {"request": request})
    return start_rollback(p, trigger, canary_only=p.status.canary is not None and not version, request=request,
                           restore_version=version or None)



def start_rollback(p: Pass, trigger: Assessment, *, canary_only: bool = False, request: str | None = None,
                    restore_version: str | None = None) -> Decision:
    """A trigger fired: halt, then put traffic back on the prior approved SHA (DESIGN §3)."""
    status = p.status
    spec_target = target_of(p.spec)
    if canary_only:
        assert status.canary is not None and status.stable is not None
        bad, restore = status.canary, history_entry_for(status, status.stable.version, status.stable.sha256)
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
    return continue_rollback(p, rb)



def _timeline(rb: Rollback, p: Pass, event: str, message: str) -> Rollback:
    return rb.model_copy(update={"timeline": [*rb.timeline, TimelineEntry(at=timestamp(p.now), event=event,
                                                                          message=message)]})



def continue_rollback(p: Pass, rb: Rollback) -> Decision:
    """Each step is idempotent and re-derived from status and observation, so a crash anywhere resumes."""
    replicas = p.spec.serving.replicas
    if rb.to_version is None:
        return _finish_rollback(p, rb, restored=None, canary_only=False, severity="page",
                                summary=f"{rb.message}; no approved earlier version of {rb.from_version} to "
                                        "roll back to: canary removed, stable kept, rollouts halted")
    canary_only = p.status.canary is not None and (p.status.canary.version, p.status.canary.sha256) == (
        rb.from_version, rb.from_sha256)
    entry = history_entry_for(p.status, rb.to_version, rb.to_sha256)
    assert entry is not None, "a rollback target always comes from history"
    restore = ArtifactVersion(version=entry.version, sha256=entry.sha256, uri=entry.uri, format=entry.format)

    standby = not canary_only and warm_standby(p.obs, restore)
    if standby and not served_by_standby(rb):
        rb = _timeline(rb, p, "StandbyServing", f"the warm standby of {restore.version} (sha256 verified in its "
                                                "pods) takes the traffic: no artifact store, no cold start")
    if not canary_only and not standby and not verified_target(rb):
        check = p.obs.artifact
        if check is None or check.uri != restore.uri:
            p.requeue(0)  # the handler hashes the target on the very next pass
            p.update(last_rollback=rb)
            return p.finish(Phase.ROLLING_BACK)
        refused = signature_refused(p.spec, check)
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

    # Traffic: 100% on the restored stable, canary to 0. The canary's pods are flushed as they leave (the pass
    # that deletes its Deployment, while they drain): by the time the stable is restored they may be gone.
    leaving = canary_only and p.obs.canary is not None
    p.delete_canary()
    if leaving:
        p.actions.append(FlushAndWarm(flush_track="canary", warm_track=None, rollback=rb))
    p.apply_track("stable", restore, replicas)
    # With a warm standby the user-facing Service moves onto its pods (engine/standby.py) while the stable
    # Deployment rolls to the restored version behind it.
    serving = (p.obs.services_present and p.obs.endpoints == "standby") if standby else (
        p.obs.stable is not None and p.obs.stable.ready_for(restore, fingerprint(p.spec, restore), replicas))
    restored = serving and p.obs.canary is None and (not p.router.weighted_route
                                                     or p.obs.route_canary_weight in (0, None))
    if not restored:
        if standby:
            p.requeue(1)  # the Service's selector moves in this pass's actions; no watch reports it
        p.update(last_rollback=rb, canary_weight=0)
        p.condition(ConditionType.PROGRESSING, True, Reason.ROLLBACK_STARTED,
                    f"rolling back to {restore.version} (sha256 {restore.sha256[:12]})")
        return p.finish(Phase.ROLLING_BACK)
    return _finish_rollback(p, rb, restored=restore, canary_only=canary_only, severity="page",
                            summary=f"{rb.message}; rolled back {rb.from_version} → {restore.version} "
                                    f"(sha256 {restore.sha256})", warm="standby" if standby else "stable")



def _finish_rollback(p: Pass, rb: Rollback, *, restored: ArtifactVersion | None, canary_only: bool,
                     severity: Literal["page", "warning"], summary: str, warm: Track = "stable") -> Decision:
    now = timestamp(p.now)
    if restored is not None:
        rb = _timeline(rb, p, "TrafficRestored", f"100% of traffic on {restored.version} "
                                                 f"(sha256 {restored.sha256})")
        rb = rb.model_copy(update={"traffic_restored_at": now})
        if not canary_only:
            history = [h.model_copy(update={"outcome": "RolledBack", "retired_at": now})
                       if h.outcome == "Serving" and (h.version, h.sha256) == (rb.from_version, rb.from_sha256)
                       else h for h in p.status.history]
            previous = history_entry_for(p.status, restored.version, restored.sha256)
            approvals = previous.approvals if previous is not None else []
            signer = previous.signer if previous is not None else None
            history = [*history, history_entry(restored, approvals, p.now, signer)][-HISTORY_LIMIT:]
            p.update(stable=restored, history=history)
        p.actions.append(FlushAndWarm(flush_track=None, warm_track=warm, rollback=rb))
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



def halted(p: Pass) -> Decision:
    """Halted: the stable keeps serving, nothing new rolls out until resume or a new revision."""
    assert p.status.halt is not None
    p.clear_canary()
    if p.status.stable is not None:
        p.apply_track("stable", p.status.stable, p.spec.serving.replicas)
    return p.finish(Phase.HALTED)
