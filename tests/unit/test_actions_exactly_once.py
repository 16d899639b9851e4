"""Issue 27, actions exactly once, forever, and rollback targets: tables over the pure decisions of one pass.

- an action with its own outcome is never acted on again, whatever ``handledActions`` holds (a property);
- an action filed for an earlier model of the same name ends ``ModelRecreated``; one not carried out in its time to
  live ends ``Expired``; a waiting promote never holds a rollback, resume or enable back;
- a rollback target whose bytes no longer match is refused before anything moves; an automatic rollback never
  picks a sha256 that was rolled back, whatever older ``Superseded`` entry carries it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import ArtifactCheck
from modelwarden.engine.model_actions import ActionRequest, handled, pending, plan, verified
from modelwarden.engine.rollback import rollback_target, rolled_back_sha256s
from tests.unit.engine_world import SHA, make_spec
from tests.unit.test_model_actions_and_ledger_pass import HALTED, HISTORY, PAUSED, SERVING, STEPS, V1, V2

NOW = dt.datetime(2026, 11, 22, 13, 0, tzinfo=dt.UTC)
MODEL_UID, MODEL_CREATED = "uid-model-2", "2026-11-22T11:00:00Z"


def action(uid: str, verb: str, *, created: str = "2026-11-22T12:59:00Z", model_uid: str | None = MODEL_UID,
           to: str | None = None, ttl: int = 3600, outcome: str = "") -> ActionRequest:
    return ActionRequest(uid=uid, name=f"a-{uid}", verb=verb, requester="olga", to=to, created=created,
                         model_uid=model_uid, ttl_seconds=ttl, recorded_outcome=outcome)


def settled(p: object) -> dict[str, str]:
    return {r.uid: f"{res[0]}/{res[1]}" for r, res in p.settled}  # type: ignore[attr-defined]


# (case, status, requests, which one is fed, what the others end as)
PLANS: list[tuple[str, api.MLModelStatus, list[ActionRequest], str | None, dict[str, str]]] = [
    ("an action for the model's uid is admitted", HALTED, [action("r", "resume")], "r", {}),
    ("an action bound to an earlier model's uid ends ModelRecreated", HALTED,
     [action("r", "resume", model_uid="uid-model-1")], None, {"r": "Rejected/ModelRecreated"}),
    ("an unbound action older than the model ends ModelRecreated", HALTED,
     [action("r", "resume", model_uid=None, created="2026-11-22T10:00:00Z")], None, {"r": "Rejected/ModelRecreated"}),
    ("an unbound action newer than the model is admitted", HALTED, [action("r", "resume", model_uid=None)], "r", {}),
    ("an admitted action past its time to live ends Expired", PAUSED,
     [action("p", "promote", created="2026-11-22T11:59:00Z")], None, {"p": "Expired/TimeToLiveExceeded"}),
    ("a rollback is fed before an older waiting promote", PAUSED.model_copy(update={"history": HISTORY[:1]}),
     [action("p", "promote", created="2026-11-22T12:00:00Z"), action("rb", "rollback")], "rb", {}),
    ("every rejectable action is settled in the same pass", SERVING,
     [action(f"p{i}", "promote") for i in range(55)] + [action("rb", "rollback")], "rb",
     {f"p{i}": "Rejected/NoCanaryWaiting" for i in range(55)}),
    ("an action with its own outcome is neither fed nor settled again", SERVING,
     [action("old-rb", "rollback", outcome="Succeeded"), action("p", "promote")], None,
     {"p": "Rejected/NoCanaryWaiting"}),
]


@pytest.mark.parametrize(("case", "status", "requests", "fed", "others"), PLANS, ids=[p[0] for p in PLANS])
def test_what_one_pass_does_with_every_pending_action(case: str, status: api.MLModelStatus,
                                                      requests: list[ActionRequest], fed: str | None,
                                                      others: dict[str, str]) -> None:
    p = plan(make_spec("v2", **STEPS), status, requests, NOW, model_uid=MODEL_UID, model_created=MODEL_CREATED)
    assert (p.fed.uid if p.fed else None) == fed
    assert settled(p) == others


def test_an_expired_action_says_what_it_waited_for() -> None:
    waiting = PAUSED.model_copy(update={"phase": api.Phase.PROGRESSING, "conditions": [api.Condition(
        type="Progressing", status="True", reason="MetricsUnavailable", message="Prometheus is down",
        last_transition_time="2026-11-22T12:00:00Z")]})
    p = plan(make_spec("v2", **STEPS), waiting, [action("p", "promote", created="2026-11-22T11:59:00Z")], NOW,
             model_uid=MODEL_UID)
    message = p.settled[0][1][2]
    assert "3600s" in message and "MetricsUnavailable: Prometheus is down" in message


# (case, what the handler read at the target's URI, whether the rollback stays admitted)
CHECKS: list[tuple[str, ArtifactCheck | None, str | None]] = [
    ("the bytes match", ArtifactCheck(uri=V1.uri, actual=SHA["v1"]), None),
    ("the bytes changed", ArtifactCheck(uri=V1.uri, actual=SHA["v3"]), "TargetSha256Mismatch"),
    ("what the store holds is not an artifact", ArtifactCheck(uri=V1.uri, error="bad manifest", invalid=True),
     "TargetSha256Mismatch"),
    # An unavailable store (503, timeout, 404) proves nothing: the rollback starts and waits for the store.
    ("the store answers 503", ArtifactCheck(uri=V1.uri, error="HTTP 503"), None),
    ("another URI was read", ArtifactCheck(uri=V2.uri, actual=SHA["v2"]), "TargetSha256Mismatch"),
]


def test_a_rollback_whose_target_is_still_being_verified_waits_pending() -> None:
    p = plan(make_spec("v2", **STEPS), SERVING, [action("rb", "rollback", to="v1")], NOW, model_uid=MODEL_UID)
    after = verified(p, ArtifactCheck(uri=V1.uri, pending=True))
    assert after.fed is None and after.settled == p.settled, "neither acted on nor refused: it waits for the verdict"


@pytest.mark.parametrize(("case", "check", "refused"), CHECKS, ids=[c[0] for c in CHECKS])
def test_a_rollback_target_is_read_again_before_anything_moves(case: str, check: ArtifactCheck | None,
                                                               refused: str | None) -> None:
    p = plan(make_spec("v2", **STEPS), SERVING, [action("rb", "rollback", to="v1")], NOW, model_uid=MODEL_UID)
    assert p.admission is not None and p.admission.verify is not None and p.admission.verify.sha256 == SHA["v1"]
    after = verified(p, check)
    if refused is None:
        assert after == p
    else:
        assert after.fed is None and settled(after) == {"rb": f"Rejected/{refused}"}
        assert "nothing moved" in after.settled[0][1][2]


def test_an_automatic_rollback_never_picks_a_sha256_that_was_rolled_back() -> None:
    v1_again = HISTORY[0].model_copy(update={"outcome": "RolledBack", "deployed_at": "2026-11-21T00:00:00Z"})
    v3 = api.HistoryEntry(version="v3", sha256=SHA["v3"], uri="file:///models/v3.skops", outcome="Serving",
                          deployed_at="2026-11-22T00:00:00Z", approvals=HISTORY[0].approvals)
    # v1 was served (Superseded), came back later and was rolled back: its older Superseded entry is not eligible.
    status = api.MLModelStatus(stable=api.ArtifactVersion(version="v3", sha256=SHA["v3"], uri=v3.uri),
                               history=[HISTORY[0], v1_again, v3])
    assert rollback_target(status.history, status.stable, None, rolled_back_sha256s(status)) is None  # type: ignore[arg-type]
    # rolled back only as a canary (an incident), never in history: not eligible either
    aborted = status.model_copy(update={"history": [HISTORY[0], v3], "incidents": [HALTED.last_rollback.model_copy(  # type: ignore[union-attr]
        update={"from_version": "v1", "from_sha256": SHA["v1"]})]})
    assert rollback_target(aborted.history, aborted.stable, None, rolled_back_sha256s(aborted)) is None  # type: ignore[arg-type]
    clean = status.model_copy(update={"history": [HISTORY[0], v3]})
    assert rollback_target(clean.history, clean.stable, None, rolled_back_sha256s(clean)) == HISTORY[0]  # type: ignore[arg-type]


VERBS = st.sampled_from(["promote", "rollback", "resume", "enable"])
OUTCOMES = st.sampled_from([o.value for o in api.ActionOutcome])


@given(recorded=st.lists(st.tuples(VERBS, OUTCOMES), min_size=1, max_size=8),
       fresh=st.lists(VERBS, max_size=4),
       committed=st.lists(st.integers(min_value=0, max_value=20), max_size=20),
       status=st.sampled_from([SERVING, HALTED, PAUSED]))
def test_an_action_with_an_outcome_is_never_acted_on_again_whatever_handled_actions_holds(
        recorded: list[tuple[str, str]], fresh: list[str], committed: list[int], status: api.MLModelStatus) -> None:
    done = [action(f"done{i}", verb, outcome=o, to="v1" if verb == "rollback" else None)
            for i, (verb, o) in enumerate(recorded)]
    new = [action(f"new{i}", verb) for i, verb in enumerate(fresh)]
    # handledActions holds any mix of uids (old ones pruned, unrelated ones, duplicates, the fresh ones)
    for n in committed:
        status = handled(status, action(f"done{n}" if n % 2 else f"other{n}", "promote"),
                         (api.ActionOutcome.REJECTED, api.ActionReason.NO_CANARY_WAITING, ""), NOW, "v2")
    p = plan(make_spec("v2", **STEPS), status, [*done, *new], NOW, model_uid=MODEL_UID)
    acted = {r.uid for r, _ in p.settled} | ({p.fed.uid} if p.fed else set())
    assert not acted & {d.uid for d in done}
    assert {r.uid for r in pending([*done, *new], status)} <= {n.uid for n in new}
