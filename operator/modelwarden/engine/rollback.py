"""The rollback path (DESIGN §3): halt, verify the target's sha256, put traffic back on it, record the incident.

Each step is idempotent and re-derived from status and observation, so an operator that crashes anywhere
resumes where it stopped. :func:`start_rollback` begins one (a trigger fired, or a person asked);
:func:`continue_rollback` walks it on every later pass; :func:`halted` is what a halted model does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from modelwarden.api.v1alpha1 import (
    ArtifactVersion,
    ConditionType,
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
from modelwarden.engine.actions import (
    AnnotateGrafana,
    CollectFeedbackEvidence,
    FlushAndWarm,
    Notify,
    RecordIncident,
)
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.decision import (
    HISTORY_LIMIT,
    ArtifactCheck,
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
from modelwarden.engine.timestamps import parse_timestamp, timestamp
from modelwarden.engine.triggers import CRITICAL_FEEDBACK, Assessment

INCIDENT_LIMIT = 10
# A rollback that waits for a dependency (the artifact store, the trusted keys) retries with a backoff that grows
# with the wait up to this, jittered per rollback so a fleet waiting on one store does not retry in lockstep ...
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# ... and pages once when the wait has lasted this long (the same incident as the rollback: same id, same page).
WAIT_PAGE_SECONDS = 300.0
WAIT_PAGED = "WaitPaged"



def rolled_back_sha256s(status: MLModelStatus) -> set[str]:
    """Every sha256 ever rolled back (as stable or as canary): never a rollback target again, whatever other
    history entry (an older ``Superseded`` one) carries the same bytes."""
    rolled = {h.sha256 for h in status.history if h.outcome == "RolledBack"}
    rolled |= {i.from_sha256 for i in status.incidents}
    if status.last_rollback is not None:
        rolled.add(status.last_rollback.from_sha256)
    return rolled


def rollback_target(history: list[HistoryEntry], current: ArtifactVersion,
                    version: str | None = None, rolled_back: Collection[str] = ()) -> HistoryEntry | None:
    """The newest entry (of ``version``, if given) other than the current one that was approved and whose
    sha256 was never rolled back (``rolled_back``, and this history's own ``RolledBack`` entries)."""
    never = {*rolled_back, *(h.sha256 for h in history if h.outcome == "RolledBack")}
    for entry in reversed(history):
        if (entry.version, entry.sha256) == (current.version, current.sha256):
            continue
        if version is not None and entry.version != version:
            continue
        if entry.sha256 not in never and entry.approvals:
            return entry
    return None



def warm_standby(obs: Observation, artifact: ArtifactVersion) -> bool:
    """The standby (spec.rollback.standby) serves ``artifact`` with a Ready pod: its bytes were verified against
    the sha256 in the pod, so a rollback to it needs neither the artifact store nor a cold start."""
    return obs.standby is not None and obs.standby.serves(artifact) and obs.standby.ready_replicas >= 1



def served_by_standby(rollback: Rollback) -> bool:
    return any(t.event == "StandbyServing" for t in rollback.timeline)



def _rollback_id(p: Pass, bad: ArtifactVersion, trigger: str, request: str | None) -> str:
    """The same for every retry of the pass that starts the rollback (derived from the status it decides on, not
    the clock): a pass that acted and then failed before its status write (a ledger or API server error) starts
    the same rollback again, with the same id, so its incident record, ledger records and page are one. Unique per
    model: it chains on the previous rollback's id and the newest history entry."""
    status = p.status
    previous = status.last_rollback.id if status.last_rollback else ""
    newest = status.history[-1].deployed_at if status.history else ""
    seed = "|".join((previous, newest, bad.version, bad.sha256, trigger, request or "", str(p.obs.generation)))
    return f"rb-{hashlib.sha256(seed.encode()).hexdigest()[:10]}-{bad.version}".lower()



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
        bad, restore = status.stable, rollback_target(status.history, status.stable, restore_version,
                                                      rolled_back_sha256s(status))
    rb = Rollback(
        id=_rollback_id(p, bad, trigger.trigger, request), trigger=trigger.trigger, message=trigger.message,
        values=trigger.values, request=request,
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
                f"halted by {rb.id}: `modelwarden resume MODEL` clears it (a ModelAction), or apply a new "
                "revision")
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
        if check.pending:  # the verdict wakes this model when it is in
            p.condition(ConditionType.ARTIFACT_VERIFIED, None, Reason.VERIFICATION_PENDING,
                        f"verifying rollback target {restore.version} at {restore.uri}")
            p.update(last_rollback=rb)
            return p.finish(Phase.ROLLING_BACK)
        verdict = judge_target(p.spec, check, restore)
        if verdict.waiting_for is not None:
            return _wait(p, rb, restore, verdict.waiting_for, verdict.found)
        if verdict.rejected:
            message = f"rollback target {restore.version} at {restore.uri} no longer matches: {verdict.found}"
            p.event("Warning", Reason.TARGET_SHA256_MISMATCH, message)
            rb = _timeline(rb, p, "TargetRejected", message).model_copy(update={"to_version": None,
                                                                                  "to_sha256": None})
            return _finish_rollback(p, rb, restored=None, canary_only=False, severity="page",
                                    summary=f"{rb.message}; {message}: stable kept, rollouts halted")
        rb = _timeline(rb, p, "TargetVerified", f"{restore.uri} sha256 {restore.sha256}")
        pending = get_condition(p.status.conditions, ConditionType.ARTIFACT_VERIFIED)
        if pending is not None and pending.reason == Reason.VERIFICATION_PENDING:  # set while the target waited
            p.condition(ConditionType.ARTIFACT_VERIFIED, True, Reason.SHA256_MATCH,
                        f"rollback target {restore.version} at {restore.uri} matches sha256 {restore.sha256}")

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



@dataclass(frozen=True)
class TargetVerdict:
    """What the check of a rollback target proves: ``rejected`` (a sha256 mismatch, a refused signature, an
    invalid artifact), or nothing yet (``waiting_for`` names the dependency that did not answer), or neither
    (verified). ``found`` says what was seen."""

    rejected: bool = False
    waiting_for: Reason | None = None
    found: str = ""


def judge_target(spec: MLModelSpec, check: ArtifactCheck, restore: ArtifactVersion) -> TargetVerdict:
    """Only proof rejects a target: a store that answers 503 or times out, or trusted keys that cannot be read,
    say nothing about the bytes, and rejecting on them would leave the bad version serving."""
    if check.error is not None:
        if check.invalid:
            return TargetVerdict(rejected=True, found=check.error)
        return TargetVerdict(waiting_for=Reason.WAITING_FOR_ARTIFACT_STORE, found=check.error)
    if check.actual != restore.sha256:
        return TargetVerdict(rejected=True, found=f"sha256 {check.actual}")
    refused = signature_refused(spec, check)
    if refused is None:
        return TargetVerdict()
    if refused.reason == Reason.TRUSTED_KEYS_UNAVAILABLE:
        return TargetVerdict(waiting_for=Reason.WAITING_FOR_TRUSTED_KEYS, found=refused.message)
    return TargetVerdict(rejected=True, found=f"signature {refused.reason}: {refused.message}")


def retry_delay(rollback_id: str, waited_seconds: float) -> float:
    """Seconds until the next try of a waiting rollback: about a quarter of the wait so far, bounded to
    [RETRY_MIN_SECONDS, RETRY_MAX_SECONDS], with a jitter in [50%, 100%] drawn from the rollback id and the wait
    (deterministic, so a table can test it; different per rollback, so a fleet spreads out)."""
    base = min(RETRY_MAX_SECONDS, max(RETRY_MIN_SECONDS, waited_seconds / 4))
    draw = int.from_bytes(hashlib.sha256(f"{rollback_id}/{int(waited_seconds)}".encode()).digest()[:4], "big")
    return max(RETRY_MIN_SECONDS, base * (0.5 + 0.5 * draw / 0xFFFFFFFF))


def waiting_since(rb: Rollback, reason: str) -> datetime | None:
    """When the current wait for ``reason`` began: the newest timeline entry, if it is that wait's."""
    if rb.timeline and rb.timeline[-1].event in (reason, WAIT_PAGED):
        for entry in reversed(rb.timeline):
            if entry.event == reason:
                return parse_timestamp(entry.at)
            if entry.event != WAIT_PAGED:
                return None
    return None


_WAITING_FOR = {Reason.WAITING_FOR_ARTIFACT_STORE: "the artifact store",
                Reason.WAITING_FOR_TRUSTED_KEYS: "the trusted keys"}


def _wait(p: Pass, rb: Rollback, restore: ArtifactVersion, reason: Reason, found: str) -> Decision:
    """The target could not be checked: stay RollingBack, say what we wait for, retry, page once if it lasts."""
    since = waiting_since(rb, reason)
    if since is None:
        since = p.now
        rb = _timeline(rb, p, reason, f"{restore.uri}: {found}")
    waited = max(0.0, (p.now - since).total_seconds())
    what = _WAITING_FOR[reason]
    message = (f"rolling back to {restore.version} (sha256 {restore.sha256[:12]}): waiting for {what} since "
               f"{timestamp(since)} ({found}); retrying, a page after {WAIT_PAGE_SECONDS / 60:g}m")
    if waited >= WAIT_PAGE_SECONDS and not any(e.event == WAIT_PAGED for e in rb.timeline):
        summary = (f"{rb.message}; the rollback to {restore.version} has waited {waited / 60:.0f}m for {what} "
                   f"({found}); {rb.from_version} still serves")
        rb = _timeline(rb, p, WAIT_PAGED, summary)
        p.actions.append(Notify("page", summary, rb))
        p.event("Warning", Reason.ROLLBACK_WAIT_PAGED, summary)
    p.update(last_rollback=rb)
    p.condition(ConditionType.PROGRESSING, True, reason, message)
    p.requeue(retry_delay(rb.id, waited))
    return p.finish(Phase.ROLLING_BACK)


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
