"""Scheduled, gated retraining (DESIGN §2 ``retraining``, §5), as one pure function.

``decide_retraining(spec, status, observation, now)`` keeps ``status.retraining`` and the
``RetrainingEligible`` condition, and returns the actions: a reminder (Event + notification) ``reminderLead``
before each window, and at the window — if every gate passes — one Job from the template.

The gates, all checked at the window:

- **BiasReport**: the serving (stable) artifact's ``bias-report.json`` says ``status: pass``;
- **ErrorBudget**: the model's error budget stayed above the floor (default 15%) over the trailing window
  (default 7 days), with at least ``budgetMinCoveragePercent`` of its 5-minute steps holding a sample — empty
  or gappy history is *not* eligible;
- **NewFeedbackLabels**: at least ``minNewLabels`` (25) feedback labels since the previous window, counted
  exactly from the counters;
- **FeatureAudit**: the latest feature audit's ``share`` is at least ``featureAuditMin`` (0.95).

Each window is acted on once: ``status.retraining.lastWindow`` records it, and the Job's name is derived from
the window, so a pass repeated after a crash creates nothing new. A window the operator did not see within
``startingDeadlineSeconds`` (it was down) is recorded as missed and not run days late — the next window is
the next chance. If Prometheus cannot answer at the window, the decision waits (within the deadline).

The Job only trains. What it produces is an ordinary new version: it rolls out only after a spec revision
and the usual sign-offs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from modelwarden.api.v1alpha1 import (
    ConditionType,
    Gate,
    GateResult,
    MLModelSpec,
    MLModelStatus,
    Reason,
    RetrainingJob,
    RetrainingStatus,
)
from modelwarden.engine.actions import CreateRetrainingJob, Event, Notify
from modelwarden.engine.conditions import get_condition, set_condition
from modelwarden.engine.schedule import Schedule, next_fire, parse, previous_fire
from modelwarden.engine.timestamps import parse_timestamp, timestamp
from modelwarden.engine.triggers import Samples, counter_increase

# The budget series is judged on 5-minute steps: each step holds the lowest sample of its 5 minutes.
BUDGET_STEP_SECONDS = 300


def job_name(model: str, window: datetime) -> str:
    """Deterministic per window, and a valid label value (≤ 63): ``<model>-retrain-20270608-0200``."""
    suffix = window.strftime("-retrain-%Y%m%d-%H%M")
    return model[: 63 - len(suffix)].rstrip("-.") + suffix


def window_label(window: datetime) -> str:
    return window.strftime("%Y%m%dt%H%Mz")


# --- what the handler observed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """The retraining Job named in ``status.retraining.lastJob``, as observed."""

    name: str
    outcome: Literal["Running", "Succeeded", "Failed"]
    finished_at: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Report:
    """A JSON report read at the window: the part we judge, or why it could not be read."""

    uri: str
    value: str | None = None  # bias: "pass"/"fail"; feature audit: the share, as text
    error: str | None = None


@dataclass(frozen=True)
class GateInputs:
    """Everything the gates need, gathered by the handler once the window is due."""

    at: float  # when the metrics were queried (unix seconds)
    bias: Report | None = None  # None: no stable version to take a report from
    feature_audit: Report | None = None  # None: no featureAuditUri configured
    # the model's error budget (ratio, 1 = untouched) on 5-minute steps over the window; None: no series
    budget: Samples | None = None
    # feedback label counters per version (every severity and stakeholder summed per version)
    labels: Sequence[Samples] = ()


@dataclass(frozen=True)
class RetrainingObservation:
    job: JobState | None = None
    # None until the window is due and this cycle's metrics hold its history
    gates: GateInputs | None = None
    # why the gates' metrics could not be read (Prometheus down, timeout)
    metrics_error: str | None = None


# --- what the handler must do -------------------------------------------------------------------------------


RetrainingAction = CreateRetrainingJob | Notify


@dataclass(frozen=True)
class RetrainingDecision:
    status: MLModelStatus
    actions: tuple[RetrainingAction, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


# --- when the handler must gather the gate inputs ---------------------------------------------------------


def due_window(spec: MLModelSpec, status: MLModelStatus, now: datetime) -> datetime | None:
    """The window to decide now, if any: reached, not yet acted on, within its starting deadline."""
    policy = spec.retraining
    r = status.retraining
    if not policy.enabled or r is None or r.next_window is None or r.schedule != policy.schedule:
        return None
    window = parse_timestamp(r.next_window)
    if now < window or (now - window).total_seconds() > policy.starting_deadline_seconds:
        return None
    return window


def label_window_start(spec: MLModelSpec, status: MLModelStatus, window: datetime) -> datetime:
    """New labels are counted from the previous window (acted on or not) to this one."""
    r = status.retraining
    if r is not None and r.last_window is not None:
        return parse_timestamp(r.last_window)
    return previous_fire(spec.retraining.schedule, window)


# --- the gates ----------------------------------------------------------------------------------------------


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def gate_bias(report: Report | None) -> GateResult:
    if report is None:
        return GateResult(name=Gate.BIAS_REPORT, passed=False, message="no stable version: no bias report to check")
    if report.error is not None:
        return GateResult(name=Gate.BIAS_REPORT, passed=False, message=f"cannot read {report.uri}: {report.error}")
    if report.value != "pass":
        return GateResult(name=Gate.BIAS_REPORT, passed=False,
                          message=f"the last bias report says status {report.value!r}, not 'pass'")
    return GateResult(name=Gate.BIAS_REPORT, passed=True, message="the last bias report passes")


def gate_feature_audit(report: Report | None, minimum: str) -> GateResult:
    if report is None:
        return GateResult(name=Gate.FEATURE_AUDIT, passed=False,
                          message="no feature audit: set retraining.featureAuditUri to the latest "
                                  "`modelwarden audit-features -o json` result")
    if report.error is not None:
        return GateResult(name=Gate.FEATURE_AUDIT, passed=False, message=f"cannot read {report.uri}: {report.error}")
    share = _decimal(report.value)
    if share is None:
        return GateResult(name=Gate.FEATURE_AUDIT, passed=False, message=f"{report.uri} holds no numeric share")
    if share < Decimal(minimum):
        return GateResult(name=Gate.FEATURE_AUDIT, passed=False, message=f"feature audit {share} < {minimum}")
    return GateResult(name=Gate.FEATURE_AUDIT, passed=True, message=f"feature audit {share} >= {minimum}")


def gate_budget(samples: Samples | None, *, at: float, window_seconds: int, floor_percent: str,
                min_coverage_percent: str) -> GateResult:
    """Above the floor over the whole window, and enough of the window actually observed."""
    floor = float(Decimal(floor_percent) / 100)
    days = f"{window_seconds / 86400:g}d" if window_seconds % 86400 == 0 else f"{window_seconds / 3600:g}h"
    start = at - window_seconds
    steps = window_seconds // BUDGET_STEP_SECONDS + 1
    present = [v for t, v in (samples or []) if start <= t <= at and v == v]  # v == v: not NaN
    coverage = min(len(present), steps) / steps
    if not present:
        return GateResult(name=Gate.ERROR_BUDGET, passed=False, message=f"no error budget history over {days}")
    lowest = min(present)
    if coverage * 100 < float(Decimal(min_coverage_percent)):
        return GateResult(name=Gate.ERROR_BUDGET, passed=False,
                          message=f"error budget history covers {coverage:.1%} of the last {days} "
                                  f"(needs {min_coverage_percent}%): gaps are not eligible")
    if lowest <= floor:
        return GateResult(name=Gate.ERROR_BUDGET, passed=False,
                          message=f"error budget fell to {_pct(lowest)} within the last {days} "
                                  f"(must stay above {floor_percent}%)")
    return GateResult(name=Gate.ERROR_BUDGET, passed=True,
                      message=f"error budget stayed above {floor_percent}% for {days} (lowest {_pct(lowest)}, "
                              f"coverage {coverage:.1%})")


def gate_labels(labels: Sequence[Samples], *, since: datetime, minimum: int) -> GateResult:
    count = sum(counter_increase(s, window_start=since.timestamp()) for s in labels)
    ok = count >= minimum
    return GateResult(name=Gate.NEW_LABELS, passed=ok,
                      message=f"{count} new feedback labels since {timestamp(since)} "
                              f"({'>=' if ok else '<'} {minimum})")


def evaluate_gates(spec: MLModelSpec, status: MLModelStatus, inputs: GateInputs, window: datetime,
                   ) -> list[GateResult]:
    policy = spec.retraining
    return [
        gate_bias(inputs.bias),
        gate_budget(inputs.budget, at=inputs.at, window_seconds=policy.budget_window_seconds,
                    floor_percent=policy.budget_floor_percent,
                    min_coverage_percent=policy.budget_min_coverage_percent),
        gate_labels(inputs.labels, since=label_window_start(spec, status, window), minimum=policy.min_new_labels),
        gate_feature_audit(inputs.feature_audit, policy.feature_audit_min),
    ]


# --- the decision ---------------------------------------------------------------------------------------


@dataclass
class _Pass:
    spec: MLModelSpec
    status: MLModelStatus
    now: datetime
    generation: int | None
    actions: list[RetrainingAction] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def condition(self, status: bool | None, reason: str, message: str) -> None:
        self.status = self.status.model_copy(update={"conditions": set_condition(
            self.status.conditions, type=ConditionType.RETRAINING_ELIGIBLE, status=status, reason=reason,
            message=message, now=self.now, generation=self.generation)})

    def retraining(self, r: RetrainingStatus) -> None:
        self.status = self.status.model_copy(update={"retraining": r})

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def finish(self) -> RetrainingDecision:
        return RetrainingDecision(self.status, tuple(self.actions), tuple(self.events), self.requeue_after)


def decide_retraining(spec: MLModelSpec, status: MLModelStatus, obs: RetrainingObservation, now: datetime, *,
                      model: str, generation: int | None = None) -> RetrainingDecision:
    p = _Pass(spec=spec, status=status, now=now, generation=generation)
    policy = spec.retraining
    if not policy.enabled:
        existing = get_condition(status.conditions, ConditionType.RETRAINING_ELIGIBLE)
        if existing is not None and existing.reason != Reason.RETRAINING_DISABLED:
            p.condition(False, Reason.RETRAINING_DISABLED, "spec.retraining.enabled is false")
        return p.finish()
    try:
        schedule = parse(policy.schedule)
    except ValueError as e:
        p.condition(False, Reason.INVALID_SCHEDULE, f"spec.retraining.schedule: {e}")
        r = status.retraining or RetrainingStatus()
        p.retraining(r.model_copy(update={"schedule": policy.schedule, "next_window": None}))
        return p.finish()

    r = status.retraining or RetrainingStatus()
    if r.schedule != policy.schedule or r.next_window is None:
        r = r.model_copy(update={"schedule": policy.schedule, "next_window": timestamp(next_fire(schedule, now))})
    r = _track_job(p, r, obs.job)
    window = parse_timestamp(r.next_window or "")

    if now < window:
        r = _remind(p, r, window, model)
        p.retraining(r)
        current = get_condition(p.status.conditions, ConditionType.RETRAINING_ELIGIBLE)
        if current is None or current.reason not in _VERDICTS:
            p.condition(None, Reason.WAITING_FOR_WINDOW, f"next retraining window {timestamp(window)}")
        p.requeue((window - now).total_seconds())
        return p.finish()

    late = (now - window).total_seconds()
    if late > policy.starting_deadline_seconds:
        return _missed(p, r, schedule, window, late)

    inputs = obs.gates
    if inputs is None or inputs.at < window.timestamp() or obs.metrics_error is not None:
        why = obs.metrics_error or "gathering the gates' inputs"
        p.retraining(r)
        p.condition(None, Reason.GATHERING_GATES, f"window {timestamp(window)}: {why}")
        p.requeue(15)
        return p.finish()

    gates = evaluate_gates(spec, status, inputs, window)
    failed = [g for g in gates if not g.passed]
    r = r.model_copy(update={"last_window": timestamp(window), "last_gates": gates,
                             "next_window": timestamp(next_fire(schedule, max(now, window)))})
    if failed:
        message = f"window {timestamp(window)}: not eligible: " + "; ".join(f"{g.name}: {g.message}" for g in failed)
        r = r.model_copy(update={"last_outcome": "GatesFailed"})
        p.retraining(r)
        p.condition(False, Reason.GATES_FAILED, message)
        p.event("Warning", Reason.GATES_FAILED, message)
        p.actions.append(Notify("info", f"retraining skipped: {message}"))
    else:
        name = job_name(model, window)
        stable = status.stable
        p.actions.append(CreateRetrainingJob(name=name, window=window,
                                             stable_version=stable.version if stable else None,
                                             stable_uri=stable.uri if stable else None))
        r = r.model_copy(update={"last_outcome": "JobCreated",
                                 "last_job": RetrainingJob(name=name, window=timestamp(window),
                                                           created_at=timestamp(now))})
        p.retraining(r)
        message = (f"window {timestamp(window)}: all gates passed; Job {name} trains a candidate "
                   "(it rolls out only after a spec revision and the required sign-offs)")
        p.condition(True, Reason.GATES_PASSED, message)
        p.event("Normal", Reason.RETRAINING_JOB_CREATED, message)
        p.actions.append(Notify("info", f"retraining started: {message}"))
    p.requeue((parse_timestamp(r.next_window or "") - now).total_seconds())
    return p.finish()


# Reasons that state the last window's verdict: they stand until the next window.
_VERDICTS = (Reason.GATES_PASSED, Reason.GATES_FAILED, Reason.RETRAINING_WINDOW_MISSED)


def _remind(p: _Pass, r: RetrainingStatus, window: datetime, model: str) -> RetrainingStatus:
    lead = p.spec.retraining.reminder_lead_seconds
    if lead <= 0 or r.reminder_sent_for == timestamp(window):
        return r
    remind_at = window - timedelta(seconds=lead)
    if p.now < remind_at:
        p.requeue((remind_at - p.now).total_seconds())
        return r
    hours = (window - p.now).total_seconds() / 3600
    message = (f"retraining window for {model} at {timestamp(window)} (in {hours:.1f}h): the gates (bias report, "
               f"error budget > {p.spec.retraining.budget_floor_percent}% over the window, "
               f">= {p.spec.retraining.min_new_labels} new labels, feature audit >= "
               f"{p.spec.retraining.feature_audit_min}) are checked then")
    p.event("Normal", Reason.RETRAINING_REMINDER, message)
    p.actions.append(Notify("info", message))
    return r.model_copy(update={"reminder_sent_for": timestamp(window)})


def _missed(p: _Pass, r: RetrainingStatus, schedule: Schedule, window: datetime, late: float) -> RetrainingDecision:
    nxt = next_fire(schedule, p.now)
    message = (f"retraining window {timestamp(window)} missed: not acted on within "
               f"{p.spec.retraining.starting_deadline_seconds}s (seen {late / 3600:.1f}h late); next window "
               f"{timestamp(nxt)}")
    p.retraining(r.model_copy(update={"last_window": timestamp(window), "last_outcome": "Missed", "last_gates": [],
                                      "next_window": timestamp(nxt)}))
    p.condition(False, Reason.RETRAINING_WINDOW_MISSED, message)
    p.event("Warning", Reason.RETRAINING_WINDOW_MISSED, message)
    p.actions.append(Notify("warning", message))
    p.requeue((nxt - p.now).total_seconds())
    return p.finish()


def _track_job(p: _Pass, r: RetrainingStatus, job: JobState | None) -> RetrainingStatus:
    last = r.last_job
    if last is None or last.outcome != "Running" or job is None or job.name != last.name \
            or job.outcome == "Running":
        return r
    done = last.model_copy(update={"outcome": job.outcome, "finished_at": job.finished_at or timestamp(p.now),
                                   "message": job.message})
    if job.outcome == "Succeeded":
        message = (f"retraining Job {job.name} succeeded: the new candidate needs a spec revision and the "
                   "required sign-offs before it serves")
        p.event("Normal", Reason.RETRAINING_JOB_SUCCEEDED, message)
        p.actions.append(Notify("info", message))
    else:
        message = f"retraining Job {job.name} failed: {job.message or 'see its pods'}"
        p.event("Warning", Reason.RETRAINING_JOB_FAILED, message)
        p.actions.append(Notify("warning", message))
    return r.model_copy(update={"last_job": done})
