"""The warm standby of the prior approved version and what the user-facing Service selects (issue 24), decided by
the pure engine: kept for the window after a promotion, removed after it, never selected before a rollback; a
rollback inside the window moves the Service onto it with the artifact store down, and back once the stable
Deployment is Ready again. No configuration change cuts traffic (adding or removing a shadow stage)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from modelwarden.api.v1alpha1 import MLModelSpec, MLModelStatus, Phase
from modelwarden.engine.actions import ApplyTrack, DeleteTrack, EnsureServices, FlushAndWarm
from modelwarden.engine.decision import Decision
from modelwarden.engine.rollout import artifact_to_check
from modelwarden.engine.standby import desired_endpoints
from tests.unit.engine_world import SHA, T0, World, approvals, honest_world, make_spec, settle

STEPS = {"steps": [{"setWeight": 50, "pauseSeconds": 60}, {"setWeight": 100, "pauseSeconds": 0}]}
ROUTERS = [{"type": "replicas"}, {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "r"}}]
HOUR = 3600


def spec(version: str, routing: dict[str, Any], standby: dict[str, Any] | None = None,
         **rollout: Any) -> MLModelSpec:
    extra: dict[str, Any] = {"rollback": {"standby": standby}} if standby is not None else {}
    return make_spec(version, rollout={**STEPS, "trafficRouting": routing, **rollout}, **extra)


def walk(world: World, s: MLModelSpec, status: MLModelStatus, now: datetime, passes: int = 12,
         ) -> tuple[MLModelStatus, datetime, list[Decision]]:
    """Decide and apply with pods turning Ready between passes; every Service selector applied is recorded."""
    decisions = []
    for _ in range(passes):
        world.pods_ready()
        d = world.step(s, status, now)
        decisions.append(d)
        status, now = d.status, now + timedelta(seconds=61)
    return status, now, decisions


def selectors(decisions: list[Decision]) -> list[str]:
    return [a.endpoints for d in decisions for a in d.actions if isinstance(a, EnsureServices)]


def promoted(world: World, routing: dict[str, Any], standby: dict[str, Any] | None = None,
             ) -> tuple[MLModelStatus, datetime, list[Decision]]:
    world.approvals = approvals("v1") + approvals("v2")
    status, now, first = settle(world, spec("v1", routing, standby), MLModelStatus(), T0)
    assert status.phase == Phase.STABLE and world.standby is None, "nothing to keep warm before a promotion"
    status, now, decisions = walk(world, spec("v2", routing, standby), status, now)
    assert status.stable is not None and status.stable.version == "v2" and status.phase == Phase.STABLE
    return status, now, first + decisions


@pytest.mark.parametrize("routing", ROUTERS, ids=lambda r: r["type"])
def test_the_prior_version_stays_warm_for_the_window_and_is_never_selected_before_a_rollback(
        routing: dict[str, Any]) -> None:
    world = honest_world("v1", "v2")
    status, _, decisions = promoted(world, routing)
    assert world.standby is not None and world.standby.serves(status.history[0]) and world.standby.replicas == 1
    assert world.standby.ready_replicas == 1
    assert set(selectors(decisions)) == {"serving"}, "the Service never selected the standby"
    # Still there within the window (a day by default), gone after it.
    status, _, decisions = walk(world, spec("v2", routing), status, T0 + timedelta(hours=23), passes=2)
    assert world.standby is not None and not selectors(decisions)
    d = world.step(spec("v2", routing), status, T0 + timedelta(hours=25))
    assert DeleteTrack("standby") in d.actions and world.standby is None


def test_the_window_and_replicas_come_from_the_spec_and_zero_turns_it_off() -> None:
    world = honest_world("v1", "v2")
    status, now, _ = promoted(world, ROUTERS[0], {"replicas": 2, "durationSeconds": 600})
    assert world.standby is not None and world.standby.replicas == 2
    d = world.step(spec("v2", ROUTERS[0], {"replicas": 2, "durationSeconds": 600}), status,
                   now + timedelta(seconds=600))
    assert DeleteTrack("standby") in d.actions
    off = honest_world("v1", "v2")
    _, _, decisions = promoted(off, ROUTERS[0], {"replicas": 0})
    assert off.standby is None and not any(isinstance(a, ApplyTrack) and a.track == "standby"
                                           for d in decisions for a in d.actions)


@pytest.mark.parametrize("routing", ROUTERS, ids=lambda r: r["type"])
def test_a_rollback_in_the_window_serves_the_standby_with_the_artifact_store_down(routing: dict[str, Any]) -> None:
    world = honest_world("v1", "v2")
    status, now, _ = promoted(world, routing)
    world.real_sha = {}  # the artifact store is down: nothing can be fetched or hashed
    world.rollback = "req-1"
    s = spec("v2", routing)
    d = world.step(s, status, now)
    assert d.status.phase == Phase.ROLLING_BACK and d.status.last_rollback is not None
    assert selectors([d]) == ["standby"], "traffic moves onto the standby in the rollback's first pass"
    assert ApplyTrack in {type(a) for a in d.actions}
    standby_scale = [a for a in d.actions if isinstance(a, ApplyTrack) and a.track == "standby"]
    assert [(a.artifact.sha256, a.replicas) for a in standby_scale] == [(SHA["v1"], 4)], "scaled up to the model's"
    assert artifact_to_check(s, d.status, world.standby) is None, "the (down) store is not asked while it serves"
    assert artifact_to_check(s, d.status) is not None, "without a Ready standby the target is verified again"
    d = world.step(s, d.status, now + timedelta(seconds=1))
    rb = d.status.last_rollback
    assert d.status.phase == Phase.HALTED and rb is not None and rb.traffic_restored_at is not None
    assert rb.to_sha256 == SHA["v1"] and "TargetRejected" not in [t.event for t in rb.timeline]
    assert "StandbyServing" in [t.event for t in rb.timeline]
    assert d.status.stable is not None and d.status.stable.sha256 == SHA["v1"]
    assert [a.warm_track for a in d.actions if isinstance(a, FlushAndWarm)] == ["standby"]

    # The store stays down: the stable Deployment's v1 pods cannot start; the standby keeps every answer.
    status, now = d.status, now + timedelta(seconds=2)
    for _ in range(10):
        d = world.step(s, status, now)  # no pods_ready: the stable's new pods never become Ready
        assert not selectors([d]) and world.standby is not None and world.standby.replicas == 4
        status, now = d.status, now + timedelta(minutes=1)
    assert world.endpoints == "standby" and status.phase == Phase.HALTED

    # The store is back: once the stable serves v1 with every replica Ready, the Service returns to it, and only
    # then does the standby go.
    world.pods_ready()
    d = world.step(s, status, now)
    assert selectors([d]) == ["serving"] and world.standby is not None
    assert not any(isinstance(a, DeleteTrack) and a.track == "standby" for a in d.actions)
    d = world.step(s, d.status, now + timedelta(seconds=1))
    assert DeleteTrack("standby") in d.actions and world.endpoints == "serving"


def test_a_rollback_after_the_window_takes_the_artifact_store_path() -> None:
    world = honest_world("v1", "v2")
    status, _, _ = promoted(world, ROUTERS[0])
    later = T0 + timedelta(hours=30)
    d = world.step(spec("v2", ROUTERS[0]), status, later)
    assert world.standby is None
    world.rollback = "req-1"
    status, _, decisions = walk(world, spec("v2", ROUTERS[0]), d.status, later, passes=5)
    assert status.stable is not None and status.stable.sha256 == SHA["v1"] and status.phase == Phase.HALTED
    assert set(selectors(decisions)) <= {"serving"}
    assert status.last_rollback is not None and "TargetVerified" in [t.event for t in status.last_rollback.timeline]


def test_the_standby_is_the_engines_rollback_target_not_a_rolled_back_version() -> None:
    """v1 → v2 promoted, v2 rolled back (to v1), v3 promoted: the warm version is v1, never the bad v2."""
    world = honest_world("v1", "v2", "v3")
    status, now, _ = promoted(world, ROUTERS[0])
    world.rollback = "req-1"
    status, now, _ = walk(world, spec("v2", ROUTERS[0]), status, now, passes=4)
    assert status.stable is not None and status.stable.version == "v1"
    assert world.standby is None, "after a rollback there is no prior promotion to keep warm"
    world.approvals += approvals("v3")
    status, now, _ = walk(world, spec("v3", ROUTERS[0]), status, now, passes=14)
    assert status.stable is not None and status.stable.version == "v3"
    assert world.standby is not None and (world.standby.version, world.standby.sha256) == ("v1", SHA["v1"])


def test_adding_a_shadow_stage_to_pods_without_the_serving_label_waits_for_the_label() -> None:
    """Pods from before the label: the Service keeps selecting every pod until each carries it; the candidate
    starts only once the Service selects serving=true (it would otherwise be an endpoint)."""
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1") + approvals("v2")
    s1 = spec("v1", ROUTERS[0])
    status, now, _ = settle(world, s1, MLModelStatus(), T0)
    assert world.stable is not None
    world.stable = replace(world.stable, serving=None)  # a template from an older operator
    world.services, world.endpoints = False, "serving"  # a new operator process: nothing applied yet
    d = world.step(s1, status, now)
    assert selectors([d]) == ["model"], "the old pods keep their endpoints"
    assert any(isinstance(a, ApplyTrack) and a.track == "stable" for a in d.actions), "the label rolls out"
    shadowed = spec("v2", ROUTERS[0], shadow={"mirrorPercent": 50, "durationSeconds": 300})
    d = world.step(shadowed, d.status, now)  # the label's roll has not finished
    assert world.canary is None and not selectors([d])
    status, now, decisions = walk(world, shadowed, d.status, now, passes=3)
    assert selectors(decisions) == ["serving"] and world.canary is not None and world.canary_hidden


def test_removing_the_shadow_stage_mid_stage_keeps_the_candidate_out_of_the_service() -> None:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1") + approvals("v2")
    status, now, _ = settle(world, spec("v1", ROUTERS[0]), MLModelStatus(), T0)
    shadowed = spec("v2", ROUTERS[0], shadow={"mirrorPercent": 50, "durationSeconds": 3600})
    status, now, _ = walk(world, shadowed, status, now, passes=3)
    assert world.canary is not None and world.canary_hidden and status.shadow is not None
    plain = spec("v2", ROUTERS[0])
    d = world.step(plain, status, now)  # no pods_ready: the candidate's visible pods are not Ready yet
    assert not selectors([d]) and world.endpoints == "serving", "the selector never widens"
    assert world.canary is not None and world.canary.ready_replicas == 0 and world.canary.serving is not None
    assert d.status.canary_weight == 0, "no user is served by the candidate before its step's pods are Ready"


def test_the_selector_is_the_serving_label_for_new_models_and_stays_once_applied() -> None:
    world = World()
    s = spec("v1", ROUTERS[0])
    status = MLModelStatus()
    assert desired_endpoints(s, status, world.observe(s, status)) == "serving"
    world.services, world.endpoints = True, "serving"
    world.stable = None
    assert desired_endpoints(s, status, world.observe(s, status)) == "serving"
