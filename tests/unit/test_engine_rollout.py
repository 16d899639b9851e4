"""The rollout state machine, as tables and as invariants (DESIGN §3)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwarden.api.v1alpha1 import MLModelStatus, Phase, Reason
from modelwarden.engine.actions import (
    ApplyTrack,
    DeleteTrack,
    EnsureServices,
    SetRouteWeight,
)
from modelwarden.engine.approvals import Approval
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.health import MetricsView
from modelwarden.engine.rollout import decide, promote_token
from tests.unit.engine_world import SHA, T0, World, approvals, honest_world, make_spec, settle

EMPTY = MLModelStatus()


def stable_on_v1(world: World) -> MLModelStatus:
    world.approvals = approvals("v1")
    status, _, _ = settle(world, make_spec("v1"), EMPTY, T0)
    assert status.phase == Phase.STABLE
    return status


# --- first deployment -------------------------------------------------------------------------------------

FIRST_DEPLOYMENT: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, world overrides, expected phase, expected Approved/ArtifactVerified reason or message fragment)
    ("no approvals", {"approvals": ()}, Phase.AWAITING_APPROVAL, "waiting for finance, regulatory"),
    ("finance only", {"approvals": approvals("v1")[:1]}, Phase.AWAITING_APPROVAL, "waiting for regulatory"),
    ("one person, both roles", {"approvals": approvals("v1", finance="dana", regulatory="dana")},
     Phase.AWAITING_APPROVAL, "each required role needs a different person"),
    ("approved another sha256", {"approvals": approvals("v1", sha256="f" * 64)}, Phase.AWAITING_APPROVAL,
     "are for a different sha256 and do not count"),
    ("approved another version", {"approvals": approvals("v2", sha256=SHA["v1"])}, Phase.AWAITING_APPROVAL,
     "waiting for finance, regulatory"),
    ("artifact tampered", {"approvals": approvals("v1"), "real_sha": {"file:///models/v1.skops": "e" * 64}},
     Phase.FAILED, "has sha256 " + "e" * 64),
    ("artifact missing", {"approvals": approvals("v1"), "real_sha": {}}, Phase.PROGRESSING, "cannot read"),
    ("quorum", {"approvals": approvals("v1")}, Phase.PROGRESSING, "approved for v1 (finance: fiona, regulatory: rick)"),
]


@pytest.mark.parametrize(("case", "overrides", "phase", "message"), FIRST_DEPLOYMENT,
                         ids=[c[0] for c in FIRST_DEPLOYMENT])
def test_first_deployment(case: str, overrides: dict[str, Any], phase: str, message: str) -> None:
    world = honest_world("v1")
    for key, value in overrides.items():
        setattr(world, key, value)
    d = world.step(make_spec("v1"), EMPTY, T0)
    assert d.status.phase == phase
    assert any(message in c.message for c in d.status.conditions), [c.message for c in d.status.conditions]
    served = [a for a in d.actions if isinstance(a, ApplyTrack)]
    if phase == Phase.PROGRESSING and case == "quorum":
        assert served == [ApplyTrack("stable", served[0].artifact, 4, served[0].fingerprint)]
        assert served[0].artifact.sha256 == SHA["v1"]
    else:
        assert served == [], "nothing unapproved or unverified is ever deployed"
    assert EnsureServices() in d.actions


def test_first_deployment_becomes_stable_with_one_history_entry() -> None:
    world = honest_world("v1")
    status = stable_on_v1(world)
    assert status.stable is not None and status.stable.sha256 == SHA["v1"]
    assert [(h.version, h.outcome, [a.approver for a in h.approvals]) for h in status.history] == [
        ("v1", "Serving", ["fiona", "rick"])]
    assert get_condition(status.conditions, "Ready").status == "True"  # type: ignore[union-attr]


def test_tampered_artifact_emits_one_warning_not_one_per_pass() -> None:
    world = honest_world()
    world.real_sha = {"file:///models/v1.skops": "e" * 64}
    world.approvals = approvals("v1")
    first = world.step(make_spec("v1"), EMPTY, T0)
    second = world.step(make_spec("v1"), first.status, T0 + timedelta(seconds=30))
    assert [e.reason for e in first.events] == [Reason.SHA256_MISMATCH]
    assert second.events == ()


# --- canary ----------------------------------------------------------------------------------------------


def test_canary_walks_the_steps_and_promotes() -> None:
    world = honest_world("v1", "v2")
    status = stable_on_v1(world)
    world.approvals += approvals("v2")
    spec = make_spec("v2")
    now = T0 + timedelta(hours=1)

    d = world.step(spec, status, now)
    assert [(a.track, a.artifact.version, a.replicas) for a in d.actions if isinstance(a, ApplyTrack)] == [
        ("stable", "v1", 9)], "the stable surges first so that one canary pod is 10%"
    world.pods_ready()
    d = world.step(spec, d.status, now)
    assert [(a.track, a.artifact.version, a.replicas) for a in d.actions if isinstance(a, ApplyTrack)] == [
        ("canary", "v2", 1)]
    assert d.status.canary_weight == 0, "no traffic before the canary is Ready"
    assert d.status.phase == Phase.PROGRESSING

    world.pods_ready()
    d = world.step(spec, d.status, now)
    assert d.status.canary_weight == 10
    assert d.requeue_after == pytest.approx(60)
    assert (world.canary.replicas, world.stable.replicas) == (1, 9)  # type: ignore[union-attr]

    # Pause over: step 2 has no pause, so it waits for a human.
    world.pods_ready()
    d = world.step(spec, d.status, now + timedelta(seconds=61))
    world.pods_ready()
    d = world.step(spec, d.status, now + timedelta(seconds=62))
    assert d.status.phase == Phase.PAUSED
    assert d.status.canary_weight == 50
    assert promote_token("v2", 1) in get_condition(d.status.conditions, "Progressing").message  # type: ignore[union-attr]
    again = world.step(spec, d.status, now + timedelta(hours=5))
    assert again.status.phase == Phase.PAUSED and again.actions == ()

    world.promote = promote_token("v2", 1)
    status, _, decisions = settle(world, spec, again.status, now + timedelta(hours=5))
    assert status.phase == Phase.STABLE
    assert status.stable is not None and status.stable.version == "v2"
    assert status.canary is None and world.canary is None
    assert [(h.version, h.outcome) for h in status.history] == [("v1", "Superseded"), ("v2", "Serving")]
    assert status.history[0].retired_at is not None
    reasons = [e.reason for dd in decisions for e in dd.events]
    assert reasons.count(Reason.PROMOTED) == 1


def test_stale_promote_annotation_does_not_release_a_later_pause() -> None:
    world = honest_world("v1", "v2")
    status = stable_on_v1(world)
    world.approvals += approvals("v2")
    world.promote = promote_token("v1", 1)  # left over from an older rollout
    status, _, _ = settle(world, make_spec("v2"), status, T0 + timedelta(hours=1))
    assert status.phase == Phase.PAUSED


def test_no_verdict_from_analysis_means_no_advance() -> None:
    world = honest_world("v1", "v2")
    status = stable_on_v1(world)
    world.approvals += approvals("v2")
    world.metrics_configured = True
    world.metrics = MetricsView(at=T0.timestamp(), step_seconds=30)  # Prometheus answers, but has nothing
    status, _, _ = settle(world, make_spec("v2"), status, T0 + timedelta(hours=1), max_passes=5)
    assert status.current_step_index == 0
    assert get_condition(status.conditions, "Progressing").reason == Reason.ANALYSIS_PENDING  # type: ignore[union-attr]


def test_withdrawn_approval_removes_the_canary() -> None:
    world = honest_world("v1", "v2")
    status = stable_on_v1(world)
    world.approvals += approvals("v2")
    spec = make_spec("v2")
    d = world.step(spec, status, T0 + timedelta(hours=1))
    world.pods_ready()
    d = world.step(spec, d.status, T0 + timedelta(hours=1))
    assert world.canary is not None
    world.approvals = approvals("v1")
    d = world.step(spec, d.status, T0 + timedelta(hours=1, seconds=5))
    assert DeleteTrack("canary") in d.actions
    assert d.status.phase == Phase.AWAITING_APPROVAL and d.status.canary is None
    assert world.stable is not None and world.stable.replicas == 4 and world.stable.version == "v1"


def test_reverting_spec_to_stable_removes_the_canary() -> None:
    world = honest_world("v1", "v2")
    status = stable_on_v1(world)
    world.approvals += approvals("v2")
    d = world.step(make_spec("v2"), status, T0 + timedelta(hours=1))
    world.pods_ready()
    d = world.step(make_spec("v2"), d.status, T0 + timedelta(hours=1))
    assert world.canary is not None
    d = world.step(make_spec("v1"), d.status, T0 + timedelta(hours=1, seconds=1))
    assert DeleteTrack("canary") in d.actions
    assert d.status.phase == Phase.STABLE and world.canary is None
    assert world.stable is not None and world.stable.replicas == 4, "the surge is undone"


def test_gateway_api_routes_by_weight_only_once_canary_ready() -> None:
    routing = {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "m"}}
    rollout = {"steps": [{"setWeight": 25, "pauseSeconds": 0}, {"setWeight": 100, "pauseSeconds": 0}],
               "trafficRouting": routing}
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1") + approvals("v2")
    status, now, _ = settle(world, make_spec("v1", rollout=rollout), EMPTY, T0)
    spec = make_spec("v2", rollout=rollout)
    d = world.step(spec, status, now)
    assert not any(isinstance(a, SetRouteWeight) and a.canary_weight > 0 for a in d.actions)
    world.pods_ready()
    d = world.step(spec, d.status, now)
    assert SetRouteWeight(25) in d.actions
    status, _, _ = settle(world, spec, d.status, now)
    assert status.phase == Phase.STABLE and world.route == 0 and world.canary is None


def test_kill_switch_freezes_rollout_and_keeps_deployments() -> None:
    world = honest_world("v1")
    status = stable_on_v1(world)
    d = world.step(make_spec("v1", enabled=False), status, T0 + timedelta(hours=1))
    assert d.status.phase == Phase.DISABLED
    assert d.actions == ()
    assert [e.reason for e in d.events] == [Reason.KILL_SWITCH]
    assert world.stable is not None and world.stable.replicas == 4


def test_status_is_a_fixpoint_once_stable() -> None:
    world = honest_world("v1")
    status = stable_on_v1(world)
    d = world.step(make_spec("v1"), status, T0 + timedelta(days=3))
    assert d.actions == () and d.events == ()
    assert d.status == status, "lastTransitionTime and everything else unchanged"


# --- invariants ----------------------------------------------------------------------------------------

OPS = st.sampled_from(["tick", "ready", "approve_v2", "approve_v3", "forge_v3", "spec_v2", "spec_v3", "spec_v1",
                       "promote", "disable", "enable", "tamper_v3"])


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(st.lists(OPS, min_size=1, max_size=40), st.sampled_from(["replicas", "gatewayAPI"]),
       st.integers(min_value=1, max_value=7))
def test_invariants(ops: list[str], router: str, replicas: int) -> None:
    routing: dict[str, Any] = {"type": router}
    if router == "gatewayAPI":
        routing["gatewayAPI"] = {"httpRoute": "m"}
    rollout = {"steps": [{"setWeight": 5, "pauseSeconds": 30}, {"setWeight": 40}, {"setWeight": 100}],
               "trafficRouting": routing}
    world = honest_world("v1", "v2", "v3")
    world.approvals = approvals("v1")
    version, enabled = "v1", True
    status, now = MLModelStatus(), T0
    approved: set[tuple[str, str]] = {("v1", SHA["v1"])}
    hashed: set[tuple[str, str]] = set()

    for op in ops:
        if op == "tick":
            now += timedelta(seconds=31)
        elif op == "ready":
            world.pods_ready()
        elif op.startswith("approve_"):
            v = op.split("_")[1]
            world.approvals += approvals(v)
            approved.add((v, SHA[v]))
        elif op == "forge_v3":
            # one person in both roles: must not count
            world.approvals += (Approval("f1", "finance", "eve", "v3", SHA["v3"]),
                                Approval("f2", "regulatory", "eve", "v3", SHA["v3"]))
        elif op.startswith("spec_"):
            version = op.split("_")[1]
            world.generation += 1
        elif op == "promote":
            if status.canary is not None and status.current_step_index is not None:
                world.promote = promote_token(status.canary.version, status.current_step_index)
        elif op in ("disable", "enable"):
            enabled = op == "enable"
            world.generation += 1
        elif op == "tamper_v3":
            world.real_sha["file:///models/v3.skops"] = "e" * 64
        spec = make_spec(version, enabled=enabled, rollout=rollout, serving={"replicas": replicas})
        obs = world.observe(spec, status)
        if obs.artifact is not None and obs.artifact.actual is not None:
            hashed.add((obs.artifact.uri, obs.artifact.actual))
        d = decide(spec, status, obs, now)

        # Traffic never goes to a canary that is not Ready.
        canary_ready = obs.canary is not None and obs.canary.ready_replicas >= obs.canary.replicas > 0
        for a in d.actions:
            if isinstance(a, SetRouteWeight) and a.canary_weight > 0:
                assert canary_ready
        if d.status.canary_weight > status.canary_weight:
            assert canary_ready
        # The served weight never exceeds the current step's.
        idx = d.status.current_step_index
        if idx is not None and idx < len(spec.rollout.steps):
            assert d.status.canary_weight <= spec.rollout.steps[idx].set_weight
        # What the pods realise: a ready canary never holds more than the step's share of ready pods.
        pods = World(stable=world.stable, canary=world.canary)
        pods.apply(d.actions)
        if (router == "replicas" and pods.canary is not None and pods.stable is not None
                and pods.stable.version != pods.canary.version and idx is not None and idx < len(spec.rollout.steps)):
            ready_c, ready_s = pods.canary.ready_replicas, pods.stable.ready_replicas
            assert 100 * ready_c <= spec.rollout.steps[idx].set_weight * (ready_c + ready_s)
        # Only approved, verified artifacts are ever deployed.
        for a in d.actions:
            if isinstance(a, ApplyTrack):
                assert (a.artifact.version, a.artifact.sha256) in approved
                # (the server hashes again before it loads a byte; here: the operator saw this exact sha256)
                assert (a.artifact.uri, a.artifact.sha256) in hashed
        # Promotion appends exactly one history entry.
        if d.status.stable != status.stable and status.stable is not None:
            assert len(d.status.history) == len(status.history) + 1
            assert d.status.history[-1].sha256 == d.status.stable.sha256  # type: ignore[union-attr]
        # Deciding again on the result (actions applied, nothing new ready) yields no new actions.
        world.apply(d.actions)
        again = decide(spec, d.status, world.observe(spec, d.status), now)
        assert again.actions == (), (op, again.actions)
        assert again.status == d.status
        status = d.status
