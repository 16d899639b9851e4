"""The shadow stage in the pure engine (issue 20): the verdict on the comparison as a table, the stage as a walk
through the state machine, and the property that no user gets an answer from the candidate while it runs."""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwarden.api.v1alpha1 import MLModelSpec, MLModelStatus, Phase, Reason, Shadow
from modelwarden.engine.actions import ApplyTrack, DeleteTrack, MirrorTo, Notify, RecordIncident, SetRouteWeight
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.health import MetricsView
from modelwarden.engine.shadow import passed
from modelwarden.engine.shadow_gate import ShadowNumbers, assess_shadow
from tests.unit.engine_world import T0, World, approvals, honest_world, make_spec, settle

NAN = math.nan
SHADOW = Shadow(min_compared_requests=500, max_p99_score_difference="0.05", min_decision_agreement="0.95",
                max_score_psi="0.2")


def numbers(compared: float | None = 1000, agreements: float | None = 990, p99: float | None = 0.01,
            psi: float | None = 0.02, mismatches: float | None = 0) -> ShadowNumbers:
    return ShadowNumbers(compared=compared, agreements=agreements, p99_difference=p99, psi=psi,
                         feature_mismatches=mismatches)


VERDICTS: list[tuple[str, ShadowNumbers | None, str, str]] = [
    # (case, numbers, verdict, fragment of the message)
    ("no series", None, "NoData", "no shadow comparison metrics"),
    ("compared is NaN", numbers(compared=NAN), "NoData", "no shadow comparison metrics"),
    ("too few compared, agreeing", numbers(compared=499, agreements=499), "NoData", "fewer than the 500"),
    ("too few compared, disagreeing", numbers(compared=100, agreements=0, p99=0.9, psi=3), "NoData",
     "fewer than the 500"),
    ("no compared at all", numbers(compared=0, agreements=0, p99=NAN, psi=NAN), "NoData", "fewer than the 500"),
    ("a feature mismatch, however few compared", numbers(compared=3, mismatches=1), "Fired", "1 FEATURE_MISMATCH"),
    ("PSI not yet published", numbers(psi=NAN), "NoData", "incomplete"),
    ("p99 missing", numbers(p99=None), "NoData", "incomplete"),
    ("agreeing", numbers(), "Clear", "agrees"),
    ("exactly at every limit", numbers(compared=1000, agreements=950, p99=0.05, psi=0.2), "Clear", "agrees"),
    ("p99 difference too large", numbers(p99=0.051), "Fired", "p99 score difference"),
    ("decisions disagree", numbers(agreements=949), "Fired", "decision agreement 94.90% < 95.00%"),
    ("score distribution moved", numbers(psi=0.21), "Fired", "score PSI"),
    ("everything wrong", numbers(agreements=100, p99=0.9, psi=4), "Fired", "p99 score difference"),
]


@pytest.mark.parametrize(("case", "nums", "verdict", "message"), VERDICTS, ids=[c[0] for c in VERDICTS])
def test_shadow_verdicts(case: str, nums: ShadowNumbers | None, verdict: str, message: str) -> None:
    result = assess_shadow(nums, SHADOW, max_feature_mismatch=0)
    assert result.verdict == verdict
    assert message in result.message
    assert result.trigger == Reason.SHADOW_DISAGREEMENT


def test_fired_verdicts_carry_their_numbers() -> None:
    result = assess_shadow(numbers(agreements=900, psi=0.5), SHADOW, max_feature_mismatch=0)
    assert result.values == {"compared": "1000", "minCompared": "500", "featureMismatches": "0",
                             "decisionAgreement": "0.9", "p99ScoreDifference": "0.01", "scorePsi": "0.5"}


# --- the stage in the state machine -----------------------------------------------------------------------

ROUTING = {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "m"}}
STEPS = [{"setWeight": 25, "pauseSeconds": 60}, {"setWeight": 100, "pauseSeconds": 0}]


REPLICAS_ROUTING = {"type": "replicas"}


def shadow_spec(version: str, routing: dict[str, Any] | None = None, **shadow: Any) -> MLModelSpec:
    return make_spec(version, rollout={"steps": STEPS, "trafficRouting": routing or ROUTING,
                                       "shadow": {"durationSeconds": 600, "minComparedRequests": 500, **shadow}})


def view(at: datetime, nums: ShadowNumbers | None) -> MetricsView:
    return MetricsView(at=at.timestamp(), step_seconds=30, shadow={"v2": nums} if nums is not None else {})


def stable_v1_with_v2_approved(routing: dict[str, Any] | None = None) -> tuple[World, MLModelStatus, datetime]:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1")
    status, now, _ = settle(world, shadow_spec("v1", routing), MLModelStatus(), T0)
    assert status.phase == Phase.STABLE
    world.approvals += approvals("v2")
    world.metrics_configured = True
    return world, status, now


def start_stage(world: World, status: MLModelStatus, now: datetime) -> MLModelStatus:
    spec = shadow_spec("v2")
    d = world.step(spec, status, now)
    applied = {a.track: a for a in d.actions if isinstance(a, ApplyTrack)}
    assert applied["canary"].replicas == 1, "as many candidate pods as step 1 needs"
    assert applied["stable"].mirror == MirrorTo(10, "0.5"), "the stable mirrors 10% to the candidate"
    assert not any(isinstance(a, SetRouteWeight) and a.canary_weight > 0 for a in d.actions)
    assert d.status.shadow is None, "the clock starts when both are Ready"
    world.pods_ready()
    d = world.step(spec, d.status, now)
    assert d.status.shadow is not None and d.status.shadow.verdict == "Running"
    assert [e.reason for e in d.events] == [Reason.SHADOW_RUNNING]
    assert d.status.canary_weight == 0 and world.route == 0
    return d.status


def test_an_agreeing_candidate_opens_step_one_after_the_duration() -> None:
    world, status, now = stable_v1_with_v2_approved()
    status = start_stage(world, status, now)
    spec = shadow_spec("v2")
    world.metrics = view(now, numbers())
    d = world.step(spec, status, now + timedelta(seconds=300))
    assert d.status.phase == Phase.PROGRESSING and d.status.canary_weight == 0, "clear but not yet long enough"
    cond = get_condition(d.status.conditions, "Progressing")
    assert cond is not None and cond.reason == Reason.SHADOW_RUNNING
    assert d.status.shadow is not None and d.status.shadow.values["decisionAgreement"] == "0.99"

    d = world.step(spec, d.status, now + timedelta(seconds=601))
    assert passed(d.status, d.status.canary)  # type: ignore[arg-type]
    assert Reason.SHADOW_PASSED in [e.reason for e in d.events]
    assert SetRouteWeight(25) in d.actions and d.status.canary_weight == 25
    stable = next(a for a in d.actions if isinstance(a, ApplyTrack) and a.track == "stable")
    assert stable.mirror is None, "the mirror stops with the stage"


def test_a_disagreeing_candidate_is_halted_in_shadow() -> None:
    world, status, now = stable_v1_with_v2_approved()
    status = start_stage(world, status, now)
    world.metrics = view(now, numbers(agreements=600, p99=0.4, psi=1.5))
    status, _, decisions = settle(world, shadow_spec("v2"), status, now + timedelta(seconds=60))
    assert status.phase == Phase.HALTED
    assert status.halt is not None and status.halt.reason == Reason.SHADOW_DISAGREEMENT
    halted = get_condition(status.conditions, "Halted")
    assert halted is not None and halted.reason == Reason.SHADOW_DISAGREEMENT
    assert status.last_rollback is not None and status.last_rollback.values["decisionAgreement"] == "0.6"
    assert status.shadow is not None and status.shadow.verdict == "Failed"
    actions = [a for d in decisions for a in d.actions]
    assert any(isinstance(a, RecordIncident) for a in actions) and any(isinstance(a, Notify) for a in actions)
    assert any(isinstance(a, DeleteTrack) for a in actions) and world.canary is None
    assert not any(isinstance(a, SetRouteWeight) and a.canary_weight > 0 for a in actions)
    assert world.stable is not None and world.stable.version == "v1"
    events = [e.reason for d in decisions for e in d.events]
    assert Reason.SHADOW_DISAGREEMENT in events and Reason.ROLLBACK_COMPLETE in events
    assert status.stable is not None and status.stable.version == "v1"


@pytest.mark.parametrize(("case", "nums"), [("too few compared", numbers(compared=499, agreements=499)),
                                            ("no comparison series", None)])
def test_no_verdict_holds_the_stage_after_its_duration(case: str, nums: ShadowNumbers | None) -> None:
    world, status, now = stable_v1_with_v2_approved()
    status = start_stage(world, status, now)
    world.metrics = view(now, nums)
    d = world.step(shadow_spec("v2"), status, now + timedelta(hours=3))
    assert d.status.phase == Phase.PROGRESSING and d.status.canary_weight == 0
    cond = get_condition(d.status.conditions, "Progressing")
    assert cond is not None and cond.reason == Reason.SHADOW_NO_VERDICT and "not opening step 1" in cond.message
    assert d.status.halt is None and not passed(d.status, d.status.canary)  # type: ignore[arg-type]


def test_prometheus_down_holds_the_stage() -> None:
    world, status, now = stable_v1_with_v2_approved()
    status = start_stage(world, status, now)
    world.metrics = None
    d = world.step(shadow_spec("v2"), status, now + timedelta(hours=3))
    assert d.status.phase == Phase.PROGRESSING and d.status.canary_weight == 0 and d.status.halt is None


# --- property: no user-visible answer from the candidate while the stage runs ----------------------------

GOOD, BAD, FEW = numbers(), numbers(agreements=500, p99=0.5, psi=2), numbers(compared=10, agreements=10)
OPS = st.sampled_from(["tick", "long_tick", "ready", "good", "bad", "few", "none", "down", "spec_v2", "spec_v1"])


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(st.lists(OPS, min_size=1, max_size=40), st.integers(min_value=1, max_value=6), st.booleans())
def test_no_user_answer_comes_from_the_candidate_while_the_stage_runs(ops: list[str], replicas: int,
                                                                     by_replicas: bool) -> None:
    routing = REPLICAS_ROUTING if by_replicas else ROUTING
    world, status, now = stable_v1_with_v2_approved(routing)
    version = "v1"
    for op in ops:
        if op == "tick":
            now += timedelta(seconds=31)
        elif op == "long_tick":
            now += timedelta(seconds=400)
        elif op == "ready":
            world.pods_ready()
        elif op in ("good", "bad", "few", "none"):
            world.metrics = view(now, {"good": GOOD, "bad": BAD, "few": FEW, "none": None}[op])
        elif op == "down":
            world.metrics = None
        else:
            version = op.split("_")[1]
            world.generation += 1
        spec = shadow_spec(version, routing).model_copy(update={"serving": shadow_spec(
            version, routing).serving.model_copy(update={"replicas": replicas})})
        d = world.step(spec, status, now)
        passed_now = d.status.canary is not None and passed(d.status, d.status.canary)
        in_stage = d.status.canary is not None and not passed_now
        was_in_stage = status.canary is not None and not passed(status, status.canary)
        if in_stage or (was_in_stage and not passed_now):
            # Users reach the candidate only through the route's weight: it stays 0, and so does status.
            assert not any(isinstance(a, SetRouteWeight) and a.canary_weight > 0 for a in d.actions), op
            assert world.route in (0, None), op
            assert d.status.canary_weight == 0, op
            if by_replicas:
                # No route: users reach the candidate only if its pods are endpoints of the model's Service.
                assert all(a.hidden for a in d.actions if isinstance(a, ApplyTrack) and a.track == "canary"), op
                assert world.canary is None or world.canary_hidden, op
        if d.status.shadow is not None and d.status.shadow.verdict == "Failed":
            assert d.status.halt is not None and d.status.halt.reason == Reason.SHADOW_DISAGREEMENT
        status = d.status


# --- the replicas router: the candidate's pods stay out of the user-facing Service -----------------------


def test_under_the_replicas_router_the_candidate_is_hidden_until_step_one() -> None:
    world, status, now = stable_v1_with_v2_approved(REPLICAS_ROUTING)
    spec = shadow_spec("v2", REPLICAS_ROUTING)
    d = world.step(spec, status, now)
    canary = next(a for a in d.actions if isinstance(a, ApplyTrack) and a.track == "canary")
    assert canary.hidden, "the shadow candidate's pods are not endpoints of the model's Service"
    world.pods_ready()
    d = world.step(spec, d.status, now)
    assert d.status.shadow is not None and d.status.shadow.verdict == "Running"
    world.metrics = view(now, numbers())
    d = world.step(spec, d.status, now + timedelta(seconds=601))
    assert Reason.SHADOW_PASSED in [e.reason for e in d.events]
    canary = next(a for a in d.actions if isinstance(a, ApplyTrack) and a.track == "canary")
    assert not canary.hidden, "step 1 opens: the candidate's pods get the serving label (one roll)"
    assert d.status.step_started_at is None and d.status.canary_weight == 0, "step 1 waits for the rolled pods"
    world.pods_ready()
    d = world.step(spec, d.status, now + timedelta(seconds=620))
    assert d.status.step_started_at is not None and d.status.canary_weight > 0 and not world.canary_hidden


def test_under_the_replicas_router_a_disagreeing_candidate_never_joins_the_service() -> None:
    world, status, now = stable_v1_with_v2_approved(REPLICAS_ROUTING)
    spec = shadow_spec("v2", REPLICAS_ROUTING)
    world.metrics = view(now, numbers(agreements=600, p99=0.4, psi=1.5))
    status, _, decisions = settle(world, spec, status, now)
    assert status.phase == Phase.HALTED and status.halt is not None
    assert status.halt.reason == Reason.SHADOW_DISAGREEMENT
    canaries = [a for d in decisions for a in d.actions if isinstance(a, ApplyTrack) and a.track == "canary"]
    assert canaries and all(a.hidden for a in canaries)
    assert world.canary is None and status.canary_weight == 0
