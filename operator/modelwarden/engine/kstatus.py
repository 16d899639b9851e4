"""``Ready``, ``Reconciling`` and ``Stalled``: what GitOps tools read of an MLModel (DESIGN §2).

Flux decides health with kstatus (``sigs.k8s.io/cli-utils/pkg/kstatus``): ``status.observedGeneration`` behind
``metadata.generation`` or ``Reconciling=True`` means in progress, ``Stalled=True`` means failed, and only
then ``Ready``: ``True`` is current, ``False`` is in progress *forever*. So a model that can only move on when
a person acts (a halt after a rollback, an artifact whose sha256 does not match, a schedule that cannot be
parsed) must say ``Stalled=True``, or ``flux reconcile --wait`` and a Kustomization with ``wait: true`` hang
until their timeout. Our Argo CD health check (``manifests/argocd/``) reads the same three conditions.

:func:`summarize` maps what one pass decided (phase, the other conditions, spec) to one outcome, explicitly
for every phase; :func:`with_kstatus_conditions` writes it as the three conditions. The table is in
``docs/gitops-health.md``. Messages carry no live numbers (a countdown would rewrite status every pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from modelwarden.api.v1alpha1 import (
    ConditionType,
    MLModelSpec,
    MLModelStatus,
    Phase,
    Reason,
)
from modelwarden.engine.conditions import get_condition, set_condition
from modelwarden.engine.schedule import parse as parse_schedule
from modelwarden.engine.timestamps import timestamp

Outcome = Literal["Ready", "Reconciling", "Stalled"]


@dataclass(frozen=True)
class Summary:
    """One of the three outcomes, with the CamelCase reason and the message a person reads."""

    outcome: Outcome
    reason: str
    message: str


def schedule_error(spec: MLModelSpec) -> str | None:
    """Why the retraining schedule cannot be used, if retraining is on and it cannot (the CRD's pattern admits
    five fields; only the parser knows that hour 25 does not exist)."""
    if not spec.retraining.enabled:
        return None
    try:
        parse_schedule(spec.retraining.schedule)
    except ValueError as e:
        return f"spec.retraining.schedule {spec.retraining.schedule!r}: {e}"
    return None


def summarize(spec: MLModelSpec, status: MLModelStatus) -> Summary:
    """The outcome of a decided status. Checked in order: what needs a person (Stalled) first, then each
    phase explicitly."""
    phase = status.phase
    if phase == Phase.HALTED:
        return _halted(status)
    if phase == Phase.FAILED:
        verified = get_condition(status.conditions, ConditionType.ARTIFACT_VERIFIED)
        if verified is not None and verified.status == "False":
            # Sha256Mismatch, or a required signature that does not verify: the verifier's reason
            # (SignerUntrusted, ContentChanged, ...).
            return Summary("Stalled", verified.reason, verified.message)
        return Summary("Stalled", Reason.SHA256_MISMATCH,
                       verified.message if verified is not None
                       else f"the artifact of {spec.version} does not match spec.artifact.sha256")
    bad_schedule = schedule_error(spec)
    if bad_schedule is not None:
        return Summary("Stalled", Reason.INVALID_SCHEDULE, f"{bad_schedule}; fix the schedule in spec")
    if phase == Phase.DISABLED:
        # Done as asked: the kill switch is what the spec says. In progress would hang `wait: true` until its
        # timeout; failed would call an operator's deliberate action an error.
        return Summary("Ready", Reason.KILL_SWITCH,
                       "spec.enabled is false: every replica answers the neutral prediction")
    if phase == Phase.STABLE:
        ready = get_condition(status.conditions, ConditionType.READY)
        # The engine wrote Ready for the stable track in this same pass (replicas ready or not).
        if ready is not None and ready.status == "True":
            return Summary("Ready", Reason.STABLE, ready.message)
        return Summary("Reconciling", Reason.WAITING_FOR_STABLE,
                       ready.message if ready is not None else f"waiting for the ready replicas of {spec.version}")
    if phase == Phase.AWAITING_APPROVAL:
        approved = get_condition(status.conditions, ConditionType.APPROVED)
        return Summary("Reconciling", Reason.AWAITING_APPROVAL,
                       approved.message if approved is not None else f"waiting for the approvals of {spec.version}")
    if phase == Phase.PAUSED:
        return Summary("Reconciling", Reason.AWAITING_PROMOTE, _progressing_message(
            status, f"{spec.version} is paused at a manual step: waiting for `modelwarden promote`"))
    if phase == Phase.ROLLING_BACK:
        return Summary("Reconciling", Reason.ROLLING_BACK, _rolling_back_message(status))
    if phase == Phase.PROGRESSING:
        return _progressing(spec, status)
    return Summary("Reconciling", Reason.RECONCILING, f"phase {phase!r} has no summary yet")


def _halted(status: MLModelStatus) -> Summary:
    rb, halt = status.last_rollback, status.halt
    how = (f"`modelwarden resume MODEL` (a ModelAction) clears halt {halt.id}, or apply a new revision"
           if halt is not None
           else "apply a new revision")
    if rb is None:
        return Summary("Stalled", Reason.HALTED, f"rollouts halted; to move on: {how}")
    reason: str
    if any(t.event == "TargetRejected" for t in rb.timeline):
        reason = Reason.TARGET_SHA256_MISMATCH
    elif rb.to_version is None:
        reason = Reason.NO_ROLLBACK_TARGET
    else:
        reason = rb.trigger
    rolled_back = get_condition(status.conditions, ConditionType.ROLLED_BACK)
    what = (rolled_back.message if rolled_back is not None else rb.message).removesuffix(", rollouts halted")
    return Summary("Stalled", reason, f"{rb.id}: {what}; rollouts halted; to move on: {how}")


def _rolling_back_message(status: MLModelStatus) -> str:
    rb = status.last_rollback
    if rb is None:
        return "rolling back"
    to = f"{rb.to_version} (sha256 {(rb.to_sha256 or '')[:12]})" if rb.to_version else "the stable version"
    message = f"{rb.id}: rolling back {rb.from_version} → {to} after {rb.trigger}"
    progressing = get_condition(status.conditions, ConditionType.PROGRESSING)
    if progressing is not None and progressing.reason in (Reason.WAITING_FOR_ARTIFACT_STORE,
                                                          Reason.WAITING_FOR_TRUSTED_KEYS):
        waiting = progressing.message.partition(": ")[2] or progressing.message
        message += f"; {waiting}"  # what it waits for, since when: what an on-call engineer asks first
    return message


def _progressing_message(status: MLModelStatus, fallback: str) -> str:
    progressing = get_condition(status.conditions, ConditionType.PROGRESSING)
    return progressing.message if progressing is not None and progressing.status == "True" else fallback


def _artifact_verified(spec: MLModelSpec, status: MLModelStatus) -> bool:
    """The spec's artifact is verified: its sha256 and, when required, its directory's signature (which covers
    one directory: the same model file elsewhere is checked again)."""
    return status.verified_sha256 == spec.artifact.sha256 and (spec.artifact.signature is None or (
        status.verified_signer is not None and status.verified_uri == spec.artifact.uri))


def _progressing(spec: MLModelSpec, status: MLModelStatus) -> Summary:
    if not _artifact_verified(spec, status):
        verified = get_condition(status.conditions, ConditionType.ARTIFACT_VERIFIED)
        if verified is not None and verified.status == "False":
            # Unreadable (store down, 404) or the trusted keys cannot be read: retried; a person may need to fix
            # the URI or the ConfigMap, but it may also heal.
            return Summary("Reconciling", verified.reason, verified.message)
        return Summary("Reconciling", Reason.VERIFYING_ARTIFACT,
                       f"verifying the sha256 of {spec.artifact.uri}")
    progressing = get_condition(status.conditions, ConditionType.PROGRESSING)
    if progressing is None or progressing.status != "True":
        return Summary("Reconciling", Reason.DEPLOYING, f"deploying {spec.version}")
    if progressing.reason == Reason.STEP_PAUSED:
        return Summary("Reconciling", Reason.STEP_PAUSED, _timed_pause_message(spec, status))
    return Summary("Reconciling", progressing.reason, progressing.message)


def _timed_pause_message(spec: MLModelSpec, status: MLModelStatus) -> str:
    """The Progressing message counts down; this names the end of the pause instead."""
    steps = spec.rollout.steps
    index = status.current_step_index or 0
    where = f"step {index + 1}/{len(steps)} at {status.canary_weight}%"
    if index >= len(steps) or steps[index].pause_seconds is None or status.step_started_at is None:
        return f"{where}: timed pause"
    started = datetime.strptime(status.step_started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    until = started + timedelta(seconds=steps[index].pause_seconds or 0)
    return f"{where}: timed pause until {timestamp(until)}"


def with_kstatus_conditions(spec: MLModelSpec, status: MLModelStatus, *, generation: int,
                            now: datetime) -> MLModelStatus:
    """``status`` with Ready, Reconciling and Stalled set from :func:`summarize`, each carrying
    ``observedGeneration``. Exactly one is True; the other two carry the same reason, so a reader of either
    sees why."""
    summary = summarize(spec, status)
    conditions = status.conditions
    for type, outcome in ((ConditionType.READY, "Ready"), (ConditionType.RECONCILING, "Reconciling"),
                          (ConditionType.STALLED, "Stalled")):
        holds = summary.outcome == outcome
        conditions = set_condition(conditions, type=type, status=holds, reason=summary.reason,
                                   message=summary.message if holds or type == ConditionType.READY else "",
                                   now=now, generation=generation)
    return status.model_copy(update={"conditions": conditions})
