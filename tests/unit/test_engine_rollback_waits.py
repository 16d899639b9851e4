"""A rollback waits for what is unavailable and rejects only on proof (issue 24, items 1 and 4): decided by the
pure engine, by tables."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelwarden.api.v1alpha1 import ArtifactVersion, Phase, Reason
from modelwarden.engine.actions import ApplyTrack, Notify, RecordIncident
from modelwarden.engine.conditions import get_condition
from modelwarden.engine.decision import ArtifactCheck, SignatureVerdict
from modelwarden.engine.rollback import (
    RETRY_MAX_SECONDS,
    RETRY_MIN_SECONDS,
    WAIT_PAGE_SECONDS,
    judge_target,
    retry_delay,
)
from tests.unit.engine_world import SHA, honest_world, make_spec
from tests.unit.test_engine_rollback import STEPS, promoted_v2, series, view

V1 = ArtifactVersion(version="v1", sha256=SHA["v1"], uri="https://store.example/v1/model.skops", format="skops")
SIGNED = make_spec("v1", artifact={"uri": V1.uri, "sha256": SHA["v1"], "signature": {"configMapName": "keys"}})
UNSIGNED = make_spec("v1")
# No warm standby: these rollbacks wait on the artifact store (test_engine_standby.py has the standby's path).
COLD = {"standby": {"replicas": 0}}


@pytest.mark.parametrize(("case", "spec", "check", "rejected", "waiting_for"), [
    ("sha256 matches", UNSIGNED, ArtifactCheck(V1.uri, actual=SHA["v1"]), False, None),
    ("sha256 mismatch", UNSIGNED, ArtifactCheck(V1.uri, actual="e" * 64), True, None),
    ("store answers 503", UNSIGNED, ArtifactCheck(V1.uri, error="GET ...: HTTP 503"), False,
     Reason.WAITING_FOR_ARTIFACT_STORE),
    ("store times out", UNSIGNED, ArtifactCheck(V1.uri, error="GET ...: ReadTimeout"), False,
     Reason.WAITING_FOR_ARTIFACT_STORE),
    ("manifest is not a manifest", SIGNED, ArtifactCheck(V1.uri, error="not a manifest", invalid=True), True, None),
    ("trusted keys unreadable (API 503)", SIGNED,
     ArtifactCheck(V1.uri, actual=SHA["v1"], signature=SignatureVerdict(False, Reason.TRUSTED_KEYS_UNAVAILABLE,
                                                                        "HTTP 503")), False,
     Reason.WAITING_FOR_TRUSTED_KEYS),
    ("signature refused", SIGNED,
     ArtifactCheck(V1.uri, actual=SHA["v1"], signature=SignatureVerdict(False, "SignerUntrusted", "key x")), True,
     None),
    ("signature verified", SIGNED,
     ArtifactCheck(V1.uri, actual=SHA["v1"], signature=SignatureVerdict(True, "SignatureVerified", "ok")), False,
     None),
])
def test_only_proof_rejects_a_rollback_target(case: str, spec: object, check: ArtifactCheck, rejected: bool,
                                              waiting_for: Reason | None) -> None:
    verdict = judge_target(spec, check, V1)  # type: ignore[arg-type]
    assert (verdict.rejected, verdict.waiting_for) == (rejected, waiting_for), case


@pytest.mark.parametrize("waited", [0.0, 3.0, 20.0, 119.0, 600.0, 86_400.0])
def test_retry_delay_is_bounded_and_jittered(waited: float) -> None:
    delays = {retry_delay(f"rb-{i:04d}-v2", waited) for i in range(50)}
    assert all(RETRY_MIN_SECONDS <= d <= RETRY_MAX_SECONDS for d in delays)
    if waited >= 8:
        assert len(delays) > 10, "rollbacks waiting on one store do not retry in lockstep"


def test_a_503_from_the_store_waits_then_restores_the_prior_sha_with_one_incident_and_one_page() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = view(now, budget={"v2": series(now, 0.01), "v1": series(now, 0.9)})
    v1_uri = "file:///models/v1.skops"
    world.unreadable[v1_uri] = f"GET {v1_uri}: HTTP 503"
    d = world.step(spec, status, now)
    rollback_id = d.status.last_rollback.id if d.status.last_rollback else None
    pages = incidents = writes = 0
    previous = d.status
    for second in range(0, 20, 2):  # the store answers 503 for 20 s
        d = world.step(spec, d.status, now + timedelta(seconds=second))
        assert d.status.phase == Phase.ROLLING_BACK and d.status.halt is not None
        assert d.status.last_rollback is not None and d.status.last_rollback.id == rollback_id
        assert not any(e.reason == Reason.TARGET_SHA256_MISMATCH for e in d.events)
        assert not any(isinstance(a, ApplyTrack) for a in d.actions), "nothing unverified is served"
        progressing = get_condition(d.status.conditions, "Progressing")
        assert progressing is not None and progressing.reason == Reason.WAITING_FOR_ARTIFACT_STORE
        assert "waiting for the artifact store" in progressing.message and "HTTP 503" in progressing.message
        reconciling = get_condition(d.status.conditions, "Reconciling")
        assert reconciling is not None and "waiting for the artifact store since" in reconciling.message, \
            "what Flux, Argo CD and `kubectl wait` show says what the rollback waits for"
        assert d.requeue_after is not None and RETRY_MIN_SECONDS <= d.requeue_after <= RETRY_MAX_SECONDS
        pages += sum(isinstance(a, Notify) for a in d.actions)
        writes += d.status.wire() != previous.wire()
        previous = d.status
    assert writes == 1, "the wait is written once, not on every retry"
    del world.unreadable[v1_uri]
    for second in range(20, 30):
        world.pods_ready()
        d = world.step(spec, d.status, now + timedelta(seconds=second))
        pages += sum(isinstance(a, Notify) for a in d.actions)
        incidents += sum(isinstance(a, RecordIncident) for a in d.actions)
        if d.status.phase == Phase.HALTED:
            break
    assert d.status.stable is not None and d.status.stable.sha256 == SHA["v1"]
    assert d.status.last_rollback is not None and d.status.last_rollback.id == rollback_id
    assert (incidents, pages) == (1, 1)
    events = [t.event for t in d.status.last_rollback.timeline]
    assert events == ["TriggerFired", "Halted", "WaitingForArtifactStore", "TargetVerified", "TrafficRestored",
                      "Recorded"]


def test_a_long_wait_pages_once_under_the_rollbacks_id() -> None:
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = view(now, budget={"v2": series(now, 0.01), "v1": series(now, 0.9)})
    world.unreadable["file:///models/v1.skops"] = "GET file:///models/v1.skops: ConnectTimeout"
    d = world.step(spec, status, now)
    pages: list[Notify] = []
    for second in range(0, int(WAIT_PAGE_SECONDS) * 3, 30):
        d = world.step(spec, d.status, now + timedelta(seconds=second))
        pages += [a for a in d.actions if isinstance(a, Notify)]
        assert d.status.phase == Phase.ROLLING_BACK
    assert len(pages) == 1 and pages[0].severity == "page" and "v2 still serves" in pages[0].summary
    assert pages[0].rollback is not None and d.status.last_rollback is not None
    assert pages[0].rollback.id == d.status.last_rollback.id, "the wait's page is the incident's page"


def test_a_pass_retried_after_a_failed_write_starts_the_same_rollback() -> None:
    """The ledger (or the status write) failed after the rollback acted: the retry decides on the same status and
    must name the same rollback, so the incident record, ledger records and page stay one."""
    world = honest_world("v1", "v2")
    status, now = promoted_v2(world)
    spec = make_spec("v2", rollout=STEPS, rollback=COLD)
    world.metrics = view(now, budget={"v2": series(now, 0.01), "v1": series(now, 0.9)})
    ids = {world.step(spec, status, now + timedelta(seconds=s)).status.last_rollback.id  # type: ignore[union-attr]
           for s in (0, 5, 60)}
    assert len(ids) == 1
