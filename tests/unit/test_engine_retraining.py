"""Retraining: the reminder, the window, each gate, one Job per window, missed windows, the Job's outcome."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelwarden.api.v1alpha1 import ArtifactVersion, Gate, MLModelSpec, MLModelStatus, RetrainingStatus
from modelwarden.engine.actions import CreateRetrainingJob, Notify
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.retraining import (
    BUDGET_STEP_SECONDS,
    GateInputs,
    JobState,
    Report,
    RetrainingDecision,
    RetrainingObservation,
    decide_retraining,
    due_window,
    job_name,
)
from tests.unit.engine_world import make_spec

WINDOW = datetime(2027, 6, 8, 2, 0, tzinfo=UTC)  # the second Tuesday of June 2027 (June starts on a Tuesday)
PREVIOUS = datetime(2027, 5, 11, 2, 0, tzinfo=UTC)
NEXT = datetime(2027, 7, 13, 2, 0, tzinfo=UTC)
STABLE = ArtifactVersion(version="v1", sha256="1" * 64, uri="file:///models/v1/model.skops")


def spec(**retraining: Any) -> MLModelSpec:
    return make_spec(retraining={"enabled": True, "jobTemplate": {"spec": {"template": {}}}, **retraining})


def budget(low: float = 0.5, *, days: float = 7, at: datetime = WINDOW, gap: tuple[float, float] | None = None,
           ) -> list[tuple[float, float]]:
    end = at.timestamp()
    points, t = [], end - days * 86400
    while t <= end:
        if not (gap and end - gap[0] * 86400 <= t <= end - gap[1] * 86400):
            points.append((t, low if t == end - 3 * 86400 else 0.5))
        t += BUDGET_STEP_SECONDS
    return points


def labels(count: int, *, since: datetime = PREVIOUS) -> list[list[tuple[float, float]]]:
    """A counter at 7 before the window starts, ``count`` more by the window."""
    start = since.timestamp()
    return [[(start - 600, 7.0), (start + 600, 7.0 + count // 2), (WINDOW.timestamp(), 7.0 + count)]]


def inputs(*, bias: str = "pass", low: float = 0.5, new_labels: int = 30, audit: str = "0.97",
           **overrides: Any) -> GateInputs:
    base: dict[str, Any] = {
        "at": WINDOW.timestamp(),
        "bias": Report("file:///models/v1/bias-report.json", value=bias),
        "feature_audit": Report("file:///audit.json", value=audit),
        "budget": budget(low),
        "labels": labels(new_labels),
    }
    base.update(overrides)
    return GateInputs(**base)


def waiting_status() -> MLModelStatus:
    return MLModelStatus(stable=STABLE, retraining=RetrainingStatus(schedule="0 2 * * 2#2",
                                                                    next_window="2027-06-08T02:00:00Z",
                                                                    reminder_sent_for="2027-06-08T02:00:00Z"))


def run(s: MLModelSpec, status: MLModelStatus, now: datetime, gates: GateInputs | None = None,
        job: JobState | None = None, metrics_error: str | None = None) -> RetrainingDecision:
    return decide_retraining(s, status, RetrainingObservation(job=job, gates=gates, metrics_error=metrics_error), now,
                             model="m", generation=1)


def eligible(d: RetrainingDecision) -> tuple[str, str, str]:
    c = get_condition(d.status.conditions, "RetrainingEligible")
    assert c is not None
    return c.status, c.reason, c.message


def jobs(d: RetrainingDecision) -> list[CreateRetrainingJob]:
    return [a for a in d.actions if isinstance(a, CreateRetrainingJob)]


def test_disabled_by_default_does_nothing() -> None:
    d = run(make_spec(), MLModelStatus(), WINDOW)
    assert d.status == MLModelStatus() and d.actions == () and d.events == ()


def test_first_pass_schedules_the_next_second_tuesday() -> None:
    d = run(spec(), MLModelStatus(), datetime(2027, 5, 20, tzinfo=UTC))
    assert d.status.retraining is not None and d.status.retraining.next_window == "2027-06-08T02:00:00Z"
    assert eligible(d)[:2] == ("Unknown", "WaitingForWindow")
    assert d.actions == ()


def test_the_reminder_fires_once_24h_before() -> None:
    status = MLModelStatus(retraining=RetrainingStatus(schedule="0 2 * * 2#2", next_window="2027-06-08T02:00:00Z"))
    early = run(spec(), status, WINDOW - timedelta(hours=24, seconds=1))
    assert early.actions == () and early.requeue_after == 1
    d = run(spec(), status, WINDOW - timedelta(hours=24))
    assert [e.reason for e in d.events] == ["RetrainingReminder"]
    assert [type(a) for a in d.actions] == [Notify] and "2027-06-08T02:00:00Z" in d.events[0].message
    assert d.status.retraining is not None and d.status.retraining.reminder_sent_for == "2027-06-08T02:00:00Z"
    again = run(spec(), d.status, WINDOW - timedelta(hours=23))
    assert again.events == () and again.actions == ()


def test_a_late_reminder_still_goes_out_before_the_window() -> None:
    status = MLModelStatus(retraining=RetrainingStatus(schedule="0 2 * * 2#2", next_window="2027-06-08T02:00:00Z"))
    d = run(spec(), status, WINDOW - timedelta(hours=2))
    assert [e.reason for e in d.events] == ["RetrainingReminder"]


def test_all_gates_pass_creates_one_job_for_the_window() -> None:
    d = run(spec(), waiting_status(), WINDOW + timedelta(seconds=20), inputs())
    assert jobs(d) == [CreateRetrainingJob(name="m-retrain-20270608-0200", window=WINDOW, stable_version="v1",
                                           stable_uri=STABLE.uri)]
    assert eligible(d)[:2] == ("True", "GatesPassed")
    r = d.status.retraining
    assert r is not None and r.last_window == "2027-06-08T02:00:00Z" and r.next_window == "2027-07-13T02:00:00Z"
    assert r.last_job is not None and r.last_job.outcome == "Running" and r.last_outcome == "JobCreated"
    assert all(g.passed for g in r.last_gates) and len(r.last_gates) == 4
    # Deciding again (same window, later) creates nothing more: the window is spent.
    for later in (30, 60, 3000):
        again = run(spec(), d.status, WINDOW + timedelta(seconds=later), inputs())
        assert jobs(again) == [] and again.events == ()
    assert due_window(spec(), d.status, WINDOW + timedelta(seconds=30)) is None


# Every combination of the four gates: the Job only when all pass, otherwise each failed gate named.
GATE_CASES = list(itertools.product([True, False], repeat=4))


@pytest.mark.parametrize(("bias_ok", "budget_ok", "labels_ok", "audit_ok"), GATE_CASES)
def test_every_gate_combination(bias_ok: bool, budget_ok: bool, labels_ok: bool, audit_ok: bool) -> None:
    gates = inputs(bias="pass" if bias_ok else "fail", low=0.5 if budget_ok else 0.14,
                   new_labels=25 if labels_ok else 24, audit="0.95" if audit_ok else "0.9499")
    d = run(spec(), waiting_status(), WINDOW, gates)
    failed = {Gate.BIAS_REPORT: not bias_ok, Gate.ERROR_BUDGET: not budget_ok, Gate.NEW_LABELS: not labels_ok,
              Gate.FEATURE_AUDIT: not audit_ok}
    status, reason, message = eligible(d)
    if not any(failed.values()):
        assert (status, reason) == ("True", "GatesPassed") and len(jobs(d)) == 1
        return
    assert (status, reason) == ("False", "GatesFailed") and jobs(d) == []
    for gate, did_fail in failed.items():
        assert (f"{gate}:" in message) == did_fail, (gate, message)
    assert [e.reason for e in d.events] == ["GatesFailed"]
    assert d.status.retraining is not None and d.status.retraining.last_outcome == "GatesFailed"


@pytest.mark.parametrize(("case", "series", "expected"), [
    ("seven days above 15%", budget(0.16), True),
    ("one dip to 14%", budget(0.14), False),
    ("exactly at the floor", budget(0.15), False),
    ("a two-day gap", budget(0.5, gap=(4, 2)), False),
    ("only six days of history", budget(0.5, days=6), False),
    ("one missing 5-minute step in seven days", budget(0.5)[:100] + budget(0.5)[101:], True),
    ("no history at all", None, False),
    ("NaN throughout", [(t, float("nan")) for t, _ in budget()], False),
])
def test_the_budget_gate(case: str, series: list[tuple[float, float]] | None, expected: bool) -> None:
    d = run(spec(), waiting_status(), WINDOW, inputs(budget=series))
    gate = next(g for g in (d.status.retraining.last_gates if d.status.retraining else []) if g.name == "ErrorBudget")
    assert gate.passed is expected, gate.message
    if case == "a two-day gap":
        assert "covers 71." in gate.message and "gaps are not eligible" in gate.message
    if case == "one dip to 14%":
        assert "fell to 14.0%" in gate.message


def test_labels_are_counted_since_the_last_window_exactly() -> None:
    status = waiting_status()
    r = status.retraining
    assert r is not None
    since = datetime(2027, 5, 30, tzinfo=UTC)
    status = status.model_copy(update={"retraining": r.model_copy(update={"last_window": "2027-05-30T00:00:00Z"})})
    counter = [(since.timestamp() - 60, 100.0), (since.timestamp() + 60, 110.0), (WINDOW.timestamp(), 3.0)]
    # 10 before a restart, then 3 after it (a reset counts from 0): 13, not 25 and not 103.
    d = run(spec(), status, WINDOW, inputs(labels=[counter]))
    gate = next(g for g in d.status.retraining.last_gates if g.name == "NewFeedbackLabels")  # type: ignore[union-attr]
    assert not gate.passed and gate.message.startswith("13 new feedback labels since 2027-05-30T00:00:00Z")


def test_no_stable_version_and_no_audit_configured_fail_closed() -> None:
    gates = GateInputs(at=WINDOW.timestamp(), bias=None, feature_audit=None, budget=budget(), labels=labels(30))
    d = run(spec(), waiting_status(), WINDOW, gates)
    message = eligible(d)[2]
    assert "BiasReport: no stable version" in message and "FeatureAudit: no feature audit" in message


def test_metrics_unavailable_at_the_window_waits_instead_of_deciding() -> None:
    d = run(spec(), waiting_status(), WINDOW + timedelta(seconds=5), None, metrics_error="Prometheus down")
    assert eligible(d)[:2] == ("Unknown", "GatheringGateInputs") and "Prometheus down" in eligible(d)[2]
    assert jobs(d) == [] and d.requeue_after == 15
    assert due_window(spec(), d.status, WINDOW + timedelta(seconds=20)) == WINDOW
    stale = inputs(at=WINDOW.timestamp() - 30)
    assert jobs(run(spec(), waiting_status(), WINDOW + timedelta(seconds=5), stale)) == [], \
        "metrics queried before the window are not the window's"


def test_a_missed_window_is_recorded_not_run_late() -> None:
    """The operator was down from before the window until two days after it."""
    d = run(spec(), waiting_status(), WINDOW + timedelta(days=2), inputs(at=(WINDOW + timedelta(days=2)).timestamp()))
    assert jobs(d) == []
    assert eligible(d)[:2] == ("False", "RetrainingWindowMissed")
    r = d.status.retraining
    assert r is not None and r.last_outcome == "Missed" and r.next_window == "2027-07-13T02:00:00Z"
    assert [e.reason for e in d.events] == ["RetrainingWindowMissed"]
    # Within the starting deadline (default 1h) it still runs.
    assert len(jobs(run(spec(), waiting_status(), WINDOW + timedelta(minutes=59),
                        inputs(at=(WINDOW + timedelta(minutes=59)).timestamp())))) == 1


def test_the_jobs_outcome_is_recorded_once() -> None:
    created = run(spec(), waiting_status(), WINDOW, inputs()).status
    later = WINDOW + timedelta(hours=1)
    running = run(spec(), created, later, job=JobState("m-retrain-20270608-0200", "Running"))
    assert running.events == ()
    done = run(spec(), created, later, job=JobState("m-retrain-20270608-0200", "Succeeded", "2027-06-08T02:40:00Z"))
    assert [e.reason for e in done.events] == ["RetrainingJobSucceeded"]
    assert "sign-offs" in done.events[0].message
    assert done.status.retraining is not None and done.status.retraining.last_job is not None
    assert (done.status.retraining.last_job.outcome, done.status.retraining.last_job.finished_at) == (
        "Succeeded", "2027-06-08T02:40:00Z")
    again = run(spec(), done.status, later, job=JobState("m-retrain-20270608-0200", "Succeeded", "x"))
    assert again.events == ()
    failed = run(spec(), created, later,
                 job=JobState("m-retrain-20270608-0200", "Failed", None, "BackoffLimitExceeded"))
    assert [e.type for e in failed.events] == ["Warning"] and "BackoffLimitExceeded" in failed.events[0].message


def test_an_invalid_schedule_says_why() -> None:
    d = run(spec(schedule="0 2 * * 2#6"), MLModelStatus(), WINDOW)
    status, reason, message = eligible(d)
    assert (status, reason) == ("False", "InvalidSchedule") and "the N in D#N is 1-5" in message
    assert d.actions == ()


def test_a_schedule_change_recomputes_the_next_window() -> None:
    d = run(spec(schedule="0 3 * * 1#1"), waiting_status(), datetime(2027, 5, 20, tzinfo=UTC))
    assert d.status.retraining is not None and d.status.retraining.next_window == "2027-06-07T03:00:00Z"


def test_job_names_are_valid_label_values() -> None:
    name = job_name("a" * 80, WINDOW)
    assert len(name) <= 63 and name.endswith("-retrain-20270608-0200")


def test_the_condition_keeps_its_transition_time_while_unchanged() -> None:
    first = run(spec(), waiting_status(), WINDOW, inputs(low=0.14))
    c1 = get_condition(first.status.conditions, "RetrainingEligible")
    second = run(spec(), first.status, WINDOW + timedelta(days=3))
    c2 = get_condition(second.status.conditions, "RetrainingEligible")
    assert c1 is not None and c2 is not None and c1.last_transition_time == c2.last_transition_time
    assert c2.reason == "GatesFailed", "the verdict stands until the next window"


def test_the_example_mlmodel_parses_and_schedules_the_second_tuesday() -> None:
    import yaml

    from modelwarden.engine.schedule import next_fire

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "mlmodel-retraining.yaml").read_text())
    parsed = MLModelSpec.model_validate(doc["spec"])
    assert parsed.retraining.enabled and parsed.retraining.job_template is not None
    assert next_fire(parsed.retraining.schedule, datetime(2027, 8, 31, tzinfo=UTC)) == datetime(2027, 9, 14, 2,
                                                                                                 tzinfo=UTC)
