"""The shadow stage (DESIGN §3, issue 20), between "canary Ready" and step 1.

The candidate's pods run (as many as step 1 needs, so that step opens at once) with no route weight; the
stable's pods mirror ``mirrorPercent`` of their answered requests to them (``ApplyTrack.mirror``: the stable's
pod template changes, once at the start and once at the end). The stage's clock starts when both are Ready.
While it runs, no user gets an answer from the candidate: the route weight stays 0 and ``canaryWeight`` 0;
under the ``replicas`` router (no route) the candidate's pods lack the ``serving`` label the user-facing Service
selects, and get it when step 1 opens (one roll of the candidate's pods: step 1 waits for them Ready).

A breach of a criterion (with at least ``minComparedRequests`` compared, or any FEATURE_MISMATCH) halts the
candidate by the canary-abort path of a rollback: ``Halted`` with reason ``ShadowDisagreement``, the values in
the incident, Events and a notification. After ``durationSeconds`` a clear verdict opens step 1; no verdict
(too few compared, metrics unavailable) holds the stage.
"""

from __future__ import annotations

from modelwarden.api.v1alpha1 import ArtifactVersion, ConditionType, MLModelStatus, Phase, Reason, Shadow, ShadowStatus
from modelwarden.engine.actions import MirrorTo
from modelwarden.engine.decision import Decision, Pass, fingerprint
from modelwarden.engine.rollback import start_rollback
from modelwarden.engine.shadow_gate import SHADOW_DISAGREEMENT
from modelwarden.engine.timestamps import seconds_since, timestamp
from modelwarden.engine.triggers import Assessment


def mirror_of(shadow: Shadow) -> MirrorTo:
    return MirrorTo(percent=shadow.mirror_percent, decision_threshold=shadow.decision_threshold)


def running(status: MLModelStatus, target: ArtifactVersion) -> bool:
    return status.shadow is not None and status.shadow.version == target.version and status.shadow.verdict == "Running"


def passed(status: MLModelStatus, target: ArtifactVersion) -> bool:
    return status.shadow is not None and status.shadow.version == target.version and status.shadow.verdict == "Passed"


def in_stage(p: Pass, target: ArtifactVersion) -> bool:
    """Whether the candidate still has its shadow stage ahead of step 1 (configured, not passed, step 1 not
    begun)."""
    return (p.spec.rollout.shadow is not None and not passed(p.status, target)
            and (p.status.current_step_index or 0) == 0 and p.status.step_started_at is None)


def shadow_stage(p: Pass, target: ArtifactVersion, verdict: Assessment | None) -> Decision | None:
    """Hold the stage (a Decision), or None once it passed: walk the steps in this same pass."""
    shadow = p.spec.rollout.shadow
    stable = p.status.stable
    assert shadow is not None and stable is not None
    interval = p.spec.rollout.analysis.interval_seconds
    replicas = p.spec.serving.replicas
    mirror = mirror_of(shadow)
    first = p.router.plan(replicas, p.spec.rollout.steps[0].set_weight, canary_ready=True)
    # Under the replicas router the candidate's pods stay out of the user-facing Service (DESIGN §3).
    hidden = not p.router.weighted_route
    where = f"shadow stage of {target.version}"
    if hidden and not (p.obs.services_present and p.obs.endpoints == "serving"):
        # The Service still selects every pod of the model (pods from before the serving label): a candidate
        # started now would be one of its endpoints. The stable's pods get the label first (engine/standby.py).
        p.apply_track("stable", stable, replicas)
        p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_STABLE,
                    f"{where}: waiting for every pod of {stable.version} to carry the serving label before the "
                    "candidate starts")
        p.requeue(interval)
        return p.finish(Phase.PROGRESSING)
    p.apply_track("canary", target, first.canary_replicas, hidden=hidden)
    p.apply_track("stable", stable, replicas, mirror)
    p.set_route(0)
    if p.status.canary_weight:
        p.update(canary_weight=0)
    obs = p.obs
    if not running(p.status, target):
        ready = (obs.canary is not None
                 and obs.canary.ready_for(target, fingerprint(p.spec, target, hidden=hidden), first.canary_replicas)
                 and obs.stable is not None and obs.stable.ready_for(stable, fingerprint(p.spec, stable, mirror),
                                                                     replicas))
        if not ready:
            p.condition(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_CANARY,
                        f"{where}: waiting for {first.canary_replicas} ready candidate replicas and {replicas} "
                        f"mirroring stable replicas")
            return p.finish(Phase.PROGRESSING)
        p.update(shadow=ShadowStatus(version=target.version, started_at=timestamp(p.now)))
        p.event("Normal", Reason.SHADOW_RUNNING,
                f"{where} started: stable {stable.version} mirrors {shadow.mirror_percent}% of its answered "
                f"requests; no user gets the candidate's answers")
    state = p.status.shadow
    assert state is not None
    verdict = verdict or Assessment(SHADOW_DISAGREEMENT, "NoData", "no shadow comparison (metrics unavailable)")
    if verdict.values and verdict.values != state.values:
        state = state.model_copy(update={"values": verdict.values})
        p.update(shadow=state)
    if verdict.fired:
        p.update(shadow=state.model_copy(update={"verdict": "Failed", "finished_at": timestamp(p.now)}))
        p.event("Warning", Reason.SHADOW_DISAGREEMENT, f"{where}: {verdict.message}")
        return start_rollback(p, verdict, canary_only=True)
    remaining = shadow.duration_seconds - seconds_since(state.started_at, p.now)
    if remaining > 0:
        p.condition(ConditionType.PROGRESSING, True, Reason.SHADOW_RUNNING,
                    f"{where}: {shadow.mirror_percent}% mirrored, holding {int(remaining + 0.999)}s more")
        p.requeue(min(remaining, interval))
        return p.finish(Phase.PROGRESSING)
    if verdict.verdict != "Clear":
        p.condition(ConditionType.PROGRESSING, True, Reason.SHADOW_NO_VERDICT,
                    f"{where}: {verdict.message}: not opening step 1")
        p.requeue(interval)
        return p.finish(Phase.PROGRESSING)
    p.update(shadow=state.model_copy(update={"verdict": "Passed", "finished_at": timestamp(p.now)}))
    p.event("Normal", Reason.SHADOW_PASSED, f"{where} passed: {verdict.message}; opening step 1")
    return None
