"""Rollback to the prior approved SHA, halts, and metrics outages, decided by the pure engine (DESIGN §3)."""

from __future__ import annotations

from datetime import datetime, timedelta

from modelwarden.api.v1alpha1 import MLModelStatus, Phase, Reason
from modelwarden.engine.actions import (
    AnnotateGrafana,
    ApplyTrack,
    DeleteTrack,
    FlushAndWarm,
    Notify,
    RecordIncident,
)
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.health import MetricsView
from modelwarden.engine.rollout import promote_token
from modelwarden.engine.triggers import CanaryNumbers
from tests.unit.engine_world import SHA, T0, World, approvals, honest_world, make_spec, settle

STEPS = {"steps": [{"setWeight": 50, "pauseSeconds": 60}, {"setWeight": 100, "pauseSeconds": 0}]}
# No warm standby: these rollbacks take the artifact store's path (re-verify, then a cold start);
# test_engine_standby.py has the standby's.
COLD = {"standby": {"replicas": 0}}


def series(now: datetime, value: float, minutes: int = 60) -> list[tuple[float, float]]:
    end = now.timestamp()
    return [(end - i * 30.0, value) for i in range(minutes * 2, -1, -1)]


def view(now: datetime, **kwargs: object) -> MetricsView:
    return MetricsView(at=now.timestamp(), step_seconds=30, **kwargs)  # type: ignore[arg-type]


def healthy(now: datetime, *versions: str, canary_ok: str | None = None) -> MetricsView:
    canary = {canary_ok: CanaryNumbers(100, 0, 0.01, 0)} if canary_ok else {}
    return view(now, budget={v: series(now, 0.9) for v in versions}, canary=canary)


def promoted_v2(world: World) -> tuple[MLModelStatus, datetime]:
    """v1 then v2 promoted, with healthy metrics throughout."""
    world.approvals = approvals("v1") + approvals("v2")
    world.metrics_configured = True
    now = T0
    world.metrics = healthy(now, "v1")
    status, now, _ = settle(world, make_spec("v1", rollout=STEPS, rollback=COLD), MLModelStatus(), now)
    assert status.phase == Phase.STABLE
    for _ in range(12):
        world.metrics = healthy(now, "v1", "v2", canary_ok="v2")
        world.pods_ready()
        status = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), status, now).status
        now += timedelta(seconds=61)
        if status.phase == Phase.STABLE and status.stable and status.stable.version == "v2":
            break
    assert status.stable is not None and status.stable.version == "v2", status.phase
    return status, now


def test_budget_exhausted_after_promotion_rolls_back_to_prior_approved_sha() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = view(now, budget={"v2": series(now, 0.01), "v1": series(now, 0.9)})

    d = world.step(spec, status, now)
    assert d.status.phase == Phase.ROLLING_BACK
    assert d.status.halt is not None and d.status.halt.version == "v2"
    assert [e.reason for e in d.events] == [Reason.ROLLBACK_STARTED]
    assert d.requeue_after == 0, "at once: the handler re-verifies v1's sha256 on the next pass"
    d = world.step(spec, d.status, now)
    assert [(a.track, a.artifact.version, a.artifact.sha256) for a in d.actions if isinstance(a, ApplyTrack)] == [
        ("stable", "v1", SHA["v1"])], "traffic goes back to v1 by its sha256"

    world.pods_ready()
    d = world.step(spec, d.status, now + timedelta(seconds=2))
    assert d.status.phase == Phase.HALTED
    assert d.status.stable is not None and d.status.stable.sha256 == SHA["v1"]
    assert [(h.version, h.outcome) for h in d.status.history] == [
        ("v1", "Superseded"), ("v2", "RolledBack"), ("v1", "Serving")]
    kinds = [type(a) for a in d.actions]
    assert kinds.count(RecordIncident) == 1 and kinds.count(AnnotateGrafana) == 1 and kinds.count(Notify) == 1
    flush = [a for a in d.actions if isinstance(a, FlushAndWarm)]
    assert [(f.flush_track, f.warm_track) for f in flush] == [(None, "stable")]
    assert flush[0].rollback is not None and flush[0].rollback.id == d.status.last_rollback.id, \
        "each pod's outcome goes into this incident"
    rb = d.status.last_rollback
    assert rb is not None and rb.completed_at is not None and rb.traffic_restored_at is not None
    assert [t.event for t in rb.timeline] == ["TriggerFired", "Halted", "TargetVerified", "TrafficRestored",
                                              "Recorded"]
    assert rb.values["budgetRemaining"] == "0.01"
    assert d.status.incidents == [rb]

    # The same stale low budget of v2 does not roll anything back again; v2 is not re-rolled out.
    status = d.status
    for i in range(5):
        world.metrics = view(now, budget={"v2": series(now, 0.01), "v1": series(now, 0.9)})
        world.pods_ready()
        again = world.step(spec, status, now + timedelta(minutes=i + 1))
        assert again.actions == () and again.status.phase == Phase.HALTED
        assert not [e for e in again.events if e.reason == Reason.ROLLBACK_STARTED]
        status = again.status


def test_canary_that_fails_analysis_is_removed_and_the_revision_halted() -> None:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1") + approvals("v2")
    world.metrics_configured = True
    world.metrics = healthy(T0, "v1")
    status, now, _ = settle(world, make_spec("v1", rollout=STEPS, rollback=COLD), MLModelStatus(), T0)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    for _ in range(4):  # canary up and at 50%
        world.pods_ready()
        status = world.step(spec, status, now).status
    assert status.canary_weight == 50
    world.metrics = view(now, budget={"v1": series(now, 0.9)}, canary={"v2": CanaryNumbers(200, 40, 0.01, 0)})
    d = world.step(spec, status, now)
    assert DeleteTrack("canary") in d.actions
    assert d.status.phase == Phase.ROLLING_BACK
    # The canary's pods are flushed in the pass that removes them (they drain, then go), after the delete.
    flushes = [(i, a) for i, a in enumerate(d.actions) if isinstance(a, FlushAndWarm)]
    assert [(a.flush_track, a.warm_track) for _, a in flushes] == [("canary", None)]
    assert flushes[0][0] > d.actions.index(DeleteTrack("canary"))
    world.pods_ready()
    d = world.step(spec, d.status, now + timedelta(seconds=1))
    assert d.status.phase == Phase.HALTED and d.status.canary is None
    assert [(a.flush_track, a.warm_track) for a in d.actions if isinstance(a, FlushAndWarm)] == [(None, "stable")]
    assert d.status.stable is not None and d.status.stable.version == "v1"
    assert d.status.last_rollback is not None and d.status.last_rollback.trigger == "CanaryAnalysisFailed"
    assert [h.version for h in d.status.history] == ["v1"], "a canary never promoted is not history"

    # Resume clears exactly this halt, and the rollout starts over.
    world.resume = d.status.last_rollback.id
    world.metrics = healthy(now, "v1")
    world.pods_ready()
    resumed = world.step(spec, d.status, now + timedelta(seconds=30))
    assert resumed.status.halt is None and resumed.status.phase == Phase.PROGRESSING
    assert any(isinstance(a, ApplyTrack) and a.track == "canary" for a in resumed.actions)


def test_no_earlier_approved_version_pages_and_keeps_stable() -> None:
    world = honest_world("v1")
    world.approvals = approvals("v1")
    world.metrics_configured = True
    world.metrics = healthy(T0, "v1")
    status, now, _ = settle(world, make_spec("v1"), MLModelStatus(), T0)
    world.metrics = view(now, budget={"v1": series(now, 0.0)})
    d = world.step(make_spec("v1"), status, now)
    assert d.status.phase == Phase.HALTED
    assert not [a for a in d.actions if isinstance(a, ApplyTrack)]
    notify = [a for a in d.actions if isinstance(a, Notify)]
    assert len(notify) == 1 and notify[0].severity == "page" and "no approved earlier version" in notify[0].summary
    assert [e.reason for e in d.events if e.reason == Reason.NO_ROLLBACK_TARGET]


def test_tampered_rollback_target_is_not_served() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    world.real_sha["file:///models/v1.skops"] = "e" * 64
    world.metrics = view(now, budget={"v2": series(now, 0.01)})
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), status, now)
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), d.status, now)
    assert d.status.phase == Phase.HALTED
    assert not [a for a in d.actions if isinstance(a, ApplyTrack)]
    assert d.status.stable is not None and d.status.stable.version == "v2"
    assert any(e.reason == Reason.TARGET_SHA256_MISMATCH for e in d.events)


def test_prometheus_down_mid_canary_neither_promotes_nor_rolls_back() -> None:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1") + approvals("v2")
    status, now, _ = settle(world, make_spec("v1", rollout=STEPS, rollback=COLD), MLModelStatus(), T0)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    for _ in range(4):
        world.pods_ready()
        status = world.step(spec, status, now).status
    assert status.canary_weight == 50
    world.metrics_configured = True
    world.metrics = healthy(now, "v1", "v2", canary_ok="v2")
    status = world.step(spec, status, now).status
    assert status.metrics_unavailable_since is None
    world.metrics = None  # Prometheus stopped
    notified = 0
    for minute in range(1, 16):
        world.pods_ready()
        d = world.step(spec, status, now + timedelta(minutes=minute))
        status = d.status
        assert status.current_step_index == 0 and status.canary_weight == 50
        assert not [a for a in d.actions if isinstance(a, ApplyTrack | DeleteTrack)]
        notified += sum(isinstance(a, Notify) for a in d.actions)
        healthy_condition = get_condition(status.conditions, "Healthy")
        assert healthy_condition is not None and healthy_condition.status == "Unknown"
        assert healthy_condition.reason == Reason.METRICS_UNAVAILABLE
    assert notified == 1, "one notification after the bounded wait (600 s), not one per pass"
    world.metrics = healthy(now, "v1", "v2", canary_ok="v2")
    d = world.step(spec, status, now + timedelta(minutes=20))
    assert d.status.metrics_unavailable_since is None
    assert d.status.current_step_index == 1, "with a verdict again, the canary moves on"


def test_a_rollback_due_while_prometheus_was_down_starts_when_it_returns() -> None:
    """Down: no verdict, so no rollback on missing numbers. Back with v2's budget spent: the rollback starts at once."""
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = None  # Prometheus stopped
    for minute in range(1, 16):
        status = world.step(spec, status, now + timedelta(minutes=minute)).status
        assert status.phase == Phase.STABLE and status.last_rollback is None
        healthy_condition = get_condition(status.conditions, "Healthy")
        assert healthy_condition is not None and healthy_condition.reason == Reason.METRICS_UNAVAILABLE
    back = now + timedelta(minutes=16)
    world.metrics = view(back, budget={"v2": series(back, 0.01)})
    d = world.step(spec, status, back)
    assert d.status.phase == Phase.ROLLING_BACK and d.status.last_rollback is not None
    assert d.status.metrics_unavailable_since is None
    d = world.step(spec, d.status, back)  # the rollback's next pass puts v1 back
    assert [a.artifact.version for a in d.actions if isinstance(a, ApplyTrack)] == ["v1"]


def test_operator_crash_mid_rollback_finishes_it_once() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = view(now, budget={"v2": series(now, 0.01)})
    started = world.step(spec, world.step(spec, status, now).status, now)
    assert started.status.phase == Phase.ROLLING_BACK
    assert any(isinstance(a, ApplyTrack) for a in started.actions)
    world.pods_ready()
    # The operator dies after applying the actions but before writing status: a restarted operator starts
    # from the old status and the new world; or it died after writing status and continues from there.
    for restart_status in (status, started.status):
        d, passes, incidents = None, 0, 0
        current = restart_status
        while passes < 4:
            d = world.step(spec, current, now + timedelta(seconds=5))
            incidents += sum(isinstance(a, RecordIncident) for a in d.actions)
            current, passes = d.status, passes + 1
            if current.phase == Phase.HALTED:
                break
        assert current.phase == Phase.HALTED, passes
        assert current.stable is not None and current.stable.sha256 == SHA["v1"]
        assert [h.outcome for h in current.history].count("RolledBack") == 1
        assert incidents == 1


def test_new_approved_revision_clears_a_halt() -> None:
    world = honest_world("v1", "v2", "v3")
    status, now = promoted_v2(world)
    world.metrics = view(now, budget={"v2": series(now, 0.01)})
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), status, now)
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), d.status, now)
    world.pods_ready()
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), d.status, now)
    assert d.status.phase == Phase.HALTED
    world.approvals += approvals("v3")
    world.metrics = healthy(now, "v1")
    d = world.step(make_spec("v3", rollout=STEPS, rollback=COLD), d.status, now + timedelta(minutes=1))
    assert d.status.halt is None
    assert d.status.canary is not None and d.status.canary.version == "v3"
    assert promote_token("v3", 0) == "v3/0"


def test_manual_rollback_takes_the_same_path_once_per_request() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.rollback = "req1"
    for _ in range(3):
        world.pods_ready()
        status = world.step(spec, status, now).status
    assert status.phase == Phase.HALTED
    assert status.stable is not None and status.stable.sha256 == SHA["v1"]
    assert status.last_rollback is not None and status.last_rollback.trigger == Reason.MANUAL_ROLLBACK
    assert status.last_rollback.request == "req1"
    # The annotation stays on the object; it does not roll back again.
    world.pods_ready()
    again = world.step(spec, status, now + timedelta(minutes=1))
    assert again.actions == () and again.status.last_rollback == status.last_rollback


def test_manual_rollback_to_a_version_not_in_history_pages_and_keeps_stable() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    world.rollback = "req2:v9"
    d = world.step(make_spec("v2", rollout=STEPS, rollback=COLD), status, now)
    assert d.status.phase == Phase.HALTED
    assert d.status.stable is not None and d.status.stable.version == "v2"
    assert any(isinstance(a, Notify) and a.severity == "page" for a in d.actions)


def test_a_healthy_stable_model_keeps_its_status_while_its_numbers_drift() -> None:
    """Status is written only on change; live numbers in it would rewrite every model's status every cycle
    (1,000 writes per cycle in a large fleet). Budget and burn rates move a little each cycle: nothing changes."""
    world = honest_world("v1")
    world.approvals = approvals("v1")
    world.metrics_configured = True
    spec = make_spec("v1", rollout=STEPS, rollback=COLD)
    now = T0 + timedelta(hours=2)
    world.metrics = view(now, budget={"v1": series(now, 0.9713)}, burn={"v1": (0.31, 0.27)})
    status, now, _ = settle(world, spec, MLModelStatus(), now)
    assert status.phase == Phase.STABLE
    assert status.error_budget is not None and status.error_budget.remaining_percent == "97"
    for i in range(1, 6):
        now += timedelta(seconds=30)
        world.metrics = view(now, budget={"v1": series(now, 0.9713 - i * 0.0002)},
                             burn={"v1": (0.31 + i * 0.01, 0.27 - i * 0.01)})
        d = world.step(spec, status, now)
        assert d.status.wire() == status.wire(), f"cycle {i}: status changed"
        assert not d.actions and not d.events


def test_a_young_series_is_not_judged_and_says_so_without_a_clock_in_the_message() -> None:
    world = honest_world("v1")
    world.approvals = approvals("v1")
    world.metrics_configured = True
    spec = make_spec("v1", rollout=STEPS, rollback=COLD)
    now = T0
    world.metrics = view(now, budget={"v1": series(now, 0.9, minutes=3)})
    status, now, _ = settle(world, spec, MLModelStatus(), now)
    healthy_condition = get_condition(status.conditions, "Healthy")
    assert healthy_condition is not None and "not judged yet" in healthy_condition.message
    now += timedelta(minutes=1)
    world.metrics = view(now, budget={"v1": series(now, 0.9, minutes=4)})
    assert world.step(spec, status, now).status.wire() == status.wire()
