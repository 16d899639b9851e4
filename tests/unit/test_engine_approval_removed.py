"""A GitOps commit that deletes a ModelApproval (Flux prunes it) never rolls anything back by itself.

What it does: for the version already serving, nothing (its approvals are recorded in status.history; quorum
gates deploying, not serving). During a canary of a new version, the quorum for that version is gone, so the
canary stops and the stable keeps all traffic: no halt, no incident, no rollback; Flux reads the MLModel as
in progress (AwaitingApproval) until the approval is back.
"""

from __future__ import annotations

from datetime import timedelta

from modelwarden.api.v1alpha1 import MLModelStatus, Phase, Reason
from modelwarden.engine.actions import ApplyTrack, DeleteTrack
from modelwarden.engine.conditions import get_condition
from tests.unit.engine_world import SHA, T0, approvals, honest_world, make_spec, settle


def test_removing_the_serving_versions_approval_changes_nothing() -> None:
    world = honest_world("v1")
    world.approvals = approvals("v1")
    status, now, _ = settle(world, make_spec("v1"), MLModelStatus(), T0)
    assert status.phase == Phase.STABLE

    world.approvals = approvals("v1")[1:]  # the finance approval was pruned from the cluster
    d = world.step(make_spec("v1"), status, now + timedelta(minutes=1))
    assert d.actions == () and d.events == ()
    assert d.status == status, "status is not even rewritten"
    assert [a.role for a in d.status.history[-1].approvals] == ["finance", "regulatory"]


def test_removing_an_approval_mid_canary_stops_the_canary_without_a_rollback() -> None:
    world = honest_world("v1", "v2")
    world.approvals = approvals("v1")
    status, now, _ = settle(world, make_spec("v1"), MLModelStatus(), T0)
    world.approvals = approvals("v1") + approvals("v2")
    spec = make_spec("v2")
    for _ in range(3):
        world.pods_ready()
        status = world.step(spec, status, now).status
    assert status.canary is not None and status.canary_weight == 10 and world.canary is not None

    world.approvals = approvals("v1") + approvals("v2")[1:]
    d = world.step(spec, status, now + timedelta(seconds=5))
    assert d.status.phase == Phase.AWAITING_APPROVAL
    assert DeleteTrack("canary") in d.actions
    assert not [a for a in d.actions if isinstance(a, ApplyTrack) and a.artifact.version != "v1"]
    assert d.status.stable is not None and d.status.stable.sha256 == SHA["v1"]
    assert d.status.halt is None and d.status.last_rollback is None and d.status.incidents == []
    assert Reason.ROLLBACK_STARTED not in [e.reason for e in d.events]
    reconciling = get_condition(d.status.conditions, "Reconciling")
    assert reconciling is not None and (reconciling.status, reconciling.reason) == ("True", Reason.AWAITING_APPROVAL)
    assert "waiting for finance approval of v2" in reconciling.message
