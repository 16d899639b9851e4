"""Ready / Reconciling / Stalled from a decided status: the table every phase maps through (engine/kstatus.py).

The real kstatus library judges the written objects in tests/integration/test_gitops_health.py; this is the
mapping itself, case by case, with the reason a person reads in Flux.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from modelwarden.api.v1alpha1 import (
    Condition,
    ConditionType,
    Halt,
    MLModelStatus,
    Phase,
    Reason,
    Rollback,
    TimelineEntry,
)
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.kstatus import Summary, summarize, with_kstatus_conditions
from modelwarden.engine.timestamps import timestamp
from tests.unit.engine_world import SHA, T0, make_spec

AT = timestamp(T0)


def cond(type: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(type=type, status=status, reason=reason, message=message,  # type: ignore[arg-type]
                     last_transition_time=AT, observed_generation=1)


def rollback(**changes: Any) -> Rollback:
    base = Rollback(id="rb-20261122t120000-v2", trigger="ErrorBudgetExhausted",
                    message="error budget 3% < 5% for 15m", from_version="v2", from_sha256=SHA["v2"],
                    to_version="v1", to_sha256=SHA["v1"], started_at=AT, completed_at=AT)
    return base.model_copy(update=changes)


HALT = Halt(id="rb-20261122t120000-v2", reason="ErrorBudgetExhausted", version="v2", sha256=SHA["v2"], since=AT)
V2_VERIFIED = {"verified_sha256": SHA["v2"]}
SIGNED = {"artifact": {"uri": "file:///models/v2.skops", "sha256": SHA["v2"],
                       "signature": {"configMapName": "trusted-keys"}}}
BAD_SCHEDULE = {"retraining": {"enabled": True, "schedule": "0 25 * * *", "jobTemplate": {"spec": {}}}}

# (case, spec overrides, phase, conditions, other status fields, expected outcome, reason, message fragment)
TABLE: list[tuple[str, dict[str, Any], str, list[Condition], dict[str, Any], str, str, str]] = [
    ("stable, replicas ready", {}, Phase.STABLE,
     [cond("Ready", "True", Reason.STABLE, "v2 ready (4 replicas)")], V2_VERIFIED,
     "Ready", Reason.STABLE, "v2 ready (4 replicas)"),
    ("stable, waiting for replicas", {}, Phase.STABLE,
     [cond("Ready", "False", Reason.WAITING_FOR_STABLE, "waiting for 4 ready replicas of v2")], V2_VERIFIED,
     "Reconciling", Reason.WAITING_FOR_STABLE, "waiting for 4 ready replicas of v2"),
    ("awaiting approval: says whose", {}, Phase.AWAITING_APPROVAL,
     [cond("Approved", "False", Reason.AWAITING_APPROVAL, "waiting for finance, regulatory approval of v2")],
     V2_VERIFIED, "Reconciling", Reason.AWAITING_APPROVAL, "waiting for finance, regulatory approval of v2"),
    ("paused at a manual step: says what releases it", {}, Phase.PAUSED,
     [cond("Progressing", "True", Reason.AWAITING_PROMOTE,
           "step 2/3 at 50%: waiting for `modelwarden promote` (v2/1)")], V2_VERIFIED,
     "Reconciling", Reason.AWAITING_PROMOTE, "waiting for `modelwarden promote` (v2/1)"),
    ("progressing: verifying the artifact", {}, Phase.PROGRESSING,
     [cond("ArtifactVerified", "Unknown", Reason.ARTIFACT_UNAVAILABLE, "not yet checked")], {},
     "Reconciling", Reason.VERIFYING_ARTIFACT, "verifying the sha256 of file:///models/v2.skops"),
    ("progressing: artifact unreadable (retried)", {}, Phase.PROGRESSING,
     [cond("ArtifactVerified", "False", Reason.ARTIFACT_UNAVAILABLE, "cannot read file:///models/v2.skops")], {},
     "Reconciling", Reason.ARTIFACT_UNAVAILABLE, "cannot read file:///models/v2.skops"),
    ("progressing: waiting for the canary", {}, Phase.PROGRESSING,
     [cond("Progressing", "True", Reason.WAITING_FOR_CANARY, "waiting for 1 ready canary replicas of v2")],
     V2_VERIFIED, "Reconciling", Reason.WAITING_FOR_CANARY, "waiting for 1 ready canary replicas of v2"),
    ("progressing: canary analysis pending", {}, Phase.PROGRESSING,
     [cond("Progressing", "True", Reason.ANALYSIS_PENDING, "step 1/3 at 10%: canary analysis has no verdict yet")],
     V2_VERIFIED, "Reconciling", Reason.ANALYSIS_PENDING, "canary analysis has no verdict yet"),
    ("progressing: timed pause names its end, not a countdown", {}, Phase.PROGRESSING,
     [cond("Progressing", "True", Reason.STEP_PAUSED, "step 1/3 at 10%: holding 37s more")],
     {**V2_VERIFIED, "current_step_index": 0, "canary_weight": 10, "step_started_at": AT},
     "Reconciling", Reason.STEP_PAUSED, "step 1/3 at 10%: timed pause until 2026-11-22T12:01:00Z"),
    ("progressing: promoting", {}, Phase.PROGRESSING,
     [cond("Progressing", "True", Reason.PROMOTING, "promoting v2: waiting for 4 ready stable replicas")],
     V2_VERIFIED, "Reconciling", Reason.PROMOTING, "promoting v2"),
    ("rolling back: says from and to", {}, Phase.ROLLING_BACK, [],
     {"last_rollback": rollback(completed_at=None), "halt": HALT},
     "Reconciling", Reason.ROLLING_BACK, "rolling back v2 → v1"),
    ("halted after a rollback: the trigger is the reason", {}, Phase.HALTED,
     [cond("RolledBack", "True", "ErrorBudgetExhausted", "error budget 3% < 5% for 15m; rolled back v2 → v1")],
     {"last_rollback": rollback(), "halt": HALT},
     "Stalled", "ErrorBudgetExhausted", "`modelwarden resume MODEL` (a ModelAction) clears halt rb-20261122t120000-v2"),
    ("halted by a manual rollback", {}, Phase.HALTED, [],
     {"last_rollback": rollback(trigger=Reason.MANUAL_ROLLBACK, message="manual rollback requested"),
      "halt": HALT}, "Stalled", Reason.MANUAL_ROLLBACK, "manual rollback requested"),
    ("halted, no approved version to go back to", {}, Phase.HALTED, [],
     {"last_rollback": rollback(to_version=None, to_sha256=None), "halt": HALT},
     "Stalled", Reason.NO_ROLLBACK_TARGET, "rollouts halted"),
    ("halted, the rollback target's sha256 changed", {}, Phase.HALTED, [],
     {"last_rollback": rollback(to_version=None, to_sha256=None, timeline=[
         TimelineEntry(at=AT, event="TargetRejected", message="rollback target v1 no longer matches")]),
      "halt": HALT}, "Stalled", Reason.TARGET_SHA256_MISMATCH, "rollouts halted"),
    ("sha256 mismatch", {}, Phase.FAILED,
     [cond("ArtifactVerified", "False", Reason.SHA256_MISMATCH, "file:///models/v2.skops has sha256 eee")], {},
     "Stalled", Reason.SHA256_MISMATCH, "has sha256 eee"),
    ("required signature refused: the verifier's reason", SIGNED, Phase.FAILED,
     [cond("ArtifactVerified", "False", "SignerUntrusted", "signature of file:///models/v2.skops's directory: "
           "signed by key abc, not among the trusted keys: not serving it")], V2_VERIFIED,
     "Stalled", "SignerUntrusted", "not among the trusted keys"),
    ("progressing: trusted keys unreadable (retried)", SIGNED, Phase.PROGRESSING,
     [cond("ArtifactVerified", "False", Reason.TRUSTED_KEYS_UNAVAILABLE,
           "trusted keys (ConfigMap trusted-keys): 404 Not Found")], V2_VERIFIED,
     "Reconciling", Reason.TRUSTED_KEYS_UNAVAILABLE, "ConfigMap trusted-keys"),
    ("invalid schedule, otherwise stable", BAD_SCHEDULE, Phase.STABLE,
     [cond("Ready", "True", Reason.STABLE, "v2 ready (4 replicas)")], V2_VERIFIED,
     "Stalled", Reason.INVALID_SCHEDULE, "spec.retraining.schedule '0 25 * * *'"),
    ("invalid schedule while rolling out: still needs a person", BAD_SCHEDULE, Phase.PROGRESSING,
     [cond("Progressing", "True", Reason.DEPLOYING, "deploying v2")], V2_VERIFIED,
     "Stalled", Reason.INVALID_SCHEDULE, "fix the schedule"),
    ("a halt outranks an invalid schedule", BAD_SCHEDULE, Phase.HALTED, [],
     {"last_rollback": rollback(), "halt": HALT}, "Stalled", "ErrorBudgetExhausted", "rollouts halted"),
    ("invalid schedule, retraining off: not looked at", {"retraining": {"schedule": "0 25 * * *"}}, Phase.STABLE,
     [cond("Ready", "True", Reason.STABLE, "v2 ready (4 replicas)")], V2_VERIFIED, "Ready", Reason.STABLE, ""),
    ("kill switch: done as the spec asks", {"enabled": False}, Phase.DISABLED,
     [cond("Ready", "False", Reason.KILL_SWITCH, "spec.enabled is false")], V2_VERIFIED,
     "Ready", Reason.KILL_SWITCH, "every replica answers the neutral prediction"),
]


@pytest.mark.parametrize(("case", "spec_overrides", "phase", "conditions", "fields", "outcome", "reason", "message"),
                         TABLE, ids=[c[0] for c in TABLE])
def test_every_phase_maps_to_one_outcome(case: str, spec_overrides: dict[str, Any], phase: str,
                                         conditions: list[Condition], fields: dict[str, Any], outcome: str,
                                         reason: str, message: str) -> None:
    spec = make_spec("v2", **spec_overrides)
    status = MLModelStatus(phase=phase, conditions=conditions, **fields)
    summary = summarize(spec, status)
    assert (summary.outcome, summary.reason) == (outcome, reason), summary
    assert message in summary.message, summary


def test_every_phase_is_in_the_table() -> None:
    phases = {v for k, v in vars(Phase).items() if k.isupper()}
    assert phases == {c[2] for c in TABLE}


def conditions_of(status: MLModelStatus) -> dict[str, Condition]:
    return {t: c for t in ("Ready", "Reconciling", "Stalled")
            if (c := get_condition(status.conditions, t)) is not None}


@pytest.mark.parametrize("case", TABLE, ids=[c[0] for c in TABLE])
def test_written_as_three_conditions_exactly_one_true(case: tuple[Any, ...]) -> None:
    _, spec_overrides, phase, conditions, fields, outcome, reason, message = case
    spec = make_spec("v2", **spec_overrides)
    status = with_kstatus_conditions(spec, MLModelStatus(phase=phase, conditions=conditions, **fields),
                                     generation=7, now=T0)
    written = conditions_of(status)
    assert set(written) == {"Ready", "Reconciling", "Stalled"}
    assert [t for t, c in written.items() if c.status == "True"] == [outcome]
    for c in written.values():
        assert c.observed_generation == 7
        assert c.reason == reason and c.reason[0].isupper() and " " not in c.reason
    assert message in written["Ready"].message
    # Other conditions are left alone.
    assert [c for c in status.conditions if c.type not in written] == \
        [c for c in conditions if c.type not in written]


def test_unchanged_outcome_keeps_transition_times() -> None:
    spec = make_spec("v2")
    status = MLModelStatus(phase=Phase.AWAITING_APPROVAL, conditions=[
        cond("Approved", "False", Reason.AWAITING_APPROVAL, "waiting for finance approval of v2")])
    first = with_kstatus_conditions(spec, status, generation=1, now=T0)
    again = with_kstatus_conditions(spec, first, generation=1, now=T0 + timedelta(minutes=5))
    assert again == first  # nothing to write


def test_outcome_change_moves_transition_time() -> None:
    spec = make_spec("v2")
    waiting = with_kstatus_conditions(spec, MLModelStatus(phase=Phase.AWAITING_APPROVAL), generation=1, now=T0)
    # The engine promoted and wrote Ready=True for the stable track in the same pass.
    promoted = waiting.model_copy(update={"phase": Phase.STABLE, "conditions": [
        c if c.type != "Ready" else cond("Ready", "True", Reason.STABLE, "v2 ready (4 replicas)")
        for c in waiting.conditions]})
    later = T0 + timedelta(minutes=5)
    done = with_kstatus_conditions(spec, promoted, generation=2, now=later)
    ready, reconciling = get_condition(done.conditions, "Ready"), get_condition(done.conditions, "Reconciling")
    assert ready is not None and reconciling is not None
    assert (ready.status, reconciling.status) == ("True", "False")
    assert reconciling.last_transition_time == timestamp(later)
    assert reconciling.observed_generation == 2


def test_summary_is_a_value() -> None:
    assert summarize(make_spec("v2"), MLModelStatus(phase=Phase.AWAITING_APPROVAL)) == Summary(
        "Reconciling", Reason.AWAITING_APPROVAL, "waiting for the approvals of v2")
    assert ConditionType.RECONCILING == "Reconciling" and ConditionType.STALLED == "Stalled"
