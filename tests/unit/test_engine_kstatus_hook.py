"""Every decision the engine returns carries Ready, Reconciling and Stalled for its own phase and generation,
from the very first pass (engine/rollout.py hands its status to engine/kstatus.py as it finishes)."""

from __future__ import annotations

from datetime import timedelta

from modelwarden.api.v1alpha1 import Condition, MLModelStatus, Phase, Reason
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.rollout import promote_token
from tests.unit.engine_world import SHA, T0, World, approvals, honest_world, make_spec, settle


def verdict(status: MLModelStatus) -> tuple[str, str]:
    """(the one True condition among the three, its reason), after checking their shape."""
    found: dict[str, Condition] = {}
    for t in ("Ready", "Reconciling", "Stalled"):
        c = get_condition(status.conditions, t)
        assert c is not None, f"{t} missing in phase {status.phase}"
        assert c.observed_generation == status.observed_generation
        found[t] = c
    true = [t for t, c in found.items() if c.status == "True"]
    assert len(true) == 1, found
    return true[0], found[true[0]].reason


def test_first_pass_already_says_reconciling_and_whose_approval_is_missing() -> None:
    world = honest_world("v1")
    world.generation = 3
    d = world.step(make_spec("v1"), MLModelStatus(), T0)
    assert d.status.phase == Phase.AWAITING_APPROVAL
    assert d.status.observed_generation == 3
    assert verdict(d.status) == ("Reconciling", Reason.AWAITING_APPROVAL)
    reconciling = get_condition(d.status.conditions, "Reconciling")
    assert reconciling is not None and "waiting for finance, regulatory approval of v1" in reconciling.message


def test_a_rollout_reads_reconciling_then_ready() -> None:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1")
    status, now, decisions = settle(world, make_spec("v1"), MLModelStatus(), T0)
    assert [verdict(d.status) for d in decisions][-1] == ("Ready", Reason.STABLE)
    assert {verdict(d.status)[0] for d in decisions[:-1]} <= {"Reconciling", "Ready"}

    world.approvals += approvals("v2")
    spec = make_spec("v2")
    seen = []
    status_now = status
    for i in range(12):
        world.pods_ready()
        d = world.step(spec, status_now, now + timedelta(seconds=61 * i))
        status_now = d.status
        seen.append((d.status.phase, *verdict(d.status)))
        if d.status.phase == Phase.PAUSED:
            break
    assert ("Progressing", "Reconciling", Reason.STEP_PAUSED) in seen
    assert seen[-1] == (Phase.PAUSED, "Reconciling", Reason.AWAITING_PROMOTE)
    reconciling = get_condition(status_now.conditions, "Reconciling")
    assert reconciling is not None and promote_token("v2", 1) in reconciling.message

    world.promote = promote_token("v2", 1)
    final, _, _ = settle(world, spec, status_now, now + timedelta(hours=1))
    assert final.phase == Phase.STABLE and verdict(final) == ("Ready", Reason.STABLE)


def test_a_sha256_mismatch_is_stalled() -> None:
    world = honest_world()
    world.real_sha = {"file:///models/v1.skops": "e" * 64}
    world.approvals = approvals("v1")
    d = world.step(make_spec("v1"), MLModelStatus(), T0)
    assert d.status.phase == Phase.FAILED
    assert verdict(d.status) == ("Stalled", Reason.SHA256_MISMATCH)


def test_a_manual_rollback_halts_and_is_stalled_until_a_new_revision() -> None:
    world = honest_world("v1", "v2", "v3")
    world.approvals = approvals("v1") + approvals("v2")
    status, now, _ = settle(world, make_spec("v1"), MLModelStatus(), T0)
    world.promote = promote_token("v2", 1)
    status, now, _ = settle(world, make_spec("v2"), status, now)
    assert status.phase == Phase.STABLE and status.stable is not None and status.stable.version == "v2"

    world.rollback = "req1"
    status, now, _ = settle(world, make_spec("v2"), status, now)
    assert status.phase == Phase.HALTED and status.stable is not None and status.stable.sha256 == SHA["v1"]
    assert verdict(status) == ("Stalled", Reason.MANUAL_ROLLBACK)
    stalled = get_condition(status.conditions, "Stalled")
    assert status.halt is not None and stalled is not None
    assert f"`modelwarden resume MODEL` (a ModelAction) clears halt {status.halt.id}" in stalled.message

    world.generation = 2
    world.approvals += approvals("v3")
    d = world.step(make_spec("v3"), status, now)
    assert d.status.halt is None and verdict(d.status)[0] == "Reconciling"
    assert d.status.observed_generation == 2


def test_the_kill_switch_is_ready() -> None:
    world: World = honest_world("v1")
    world.approvals = approvals("v1")
    status, now, _ = settle(world, make_spec("v1"), MLModelStatus(), T0)
    d = world.step(make_spec("v1", enabled=False), status, now)
    assert d.status.phase == Phase.DISABLED
    assert verdict(d.status) == ("Ready", Reason.KILL_SWITCH)
