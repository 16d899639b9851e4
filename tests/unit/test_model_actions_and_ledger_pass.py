"""ModelActions and the decision ledger inside one pass (issue 18), against the in-memory fakes of test_reconcile.

- which request a pass admits and what comes of it (a table over the engine's pure functions);
- the ledger is written before anything is acted on, a failed write fails the pass with nothing acted on (it is
  retried, never skipped), and a rollback's records follow the traffic move and say so;
- an action's outcome is recorded once, under the requester's proven name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from modelwarden.adapters.kube import KubeError
from modelwarden.adapters.ledger import LedgerBroken
from modelwarden.adapters.manifests import ModelObject
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import Event
from modelwarden.engine.approvals import Approval
from modelwarden.engine.ledger import GENESIS, Entry, chain, decision_entries, head_of
from modelwarden.engine.model_actions import (
    ActionRequest,
    admit,
    handled,
    outcome,
    pending,
    promoters,
    prune_handled,
    with_accountable,
)
from modelwarden.handlers.controller import Controller
from tests.unit.engine_world import SHA, T0, make_spec
from tests.unit.test_reconcile import KEY, NS, FakeArtifacts, FakeCluster, FakeRouter, approval, mlmodel

V1 = api.ArtifactVersion(version="v1", sha256=SHA["v1"], uri="file:///models/v1.skops")
V2 = api.ArtifactVersion(version="v2", sha256=SHA["v2"], uri="file:///models/v2.skops")
HALT = api.Halt(id="rb-1", reason="RolledBack", version="v2", sha256=SHA["v2"], since="2026-11-22T12:00:00Z")
ROLLED_BACK = api.Rollback(id="rb-1", trigger="ManualRollback", message="m", from_version="v2",
                           from_sha256=SHA["v2"], to_version="v1", to_sha256=SHA["v1"],
                           started_at="2026-11-22T12:00:00Z", completed_at="2026-11-22T12:00:05Z")
APPROVED = [api.ApprovalRecord(role="finance", approver="fay"), api.ApprovalRecord(role="regulatory", approver="rob")]
HISTORY = [api.HistoryEntry(version="v1", sha256=SHA["v1"], uri=V1.uri, deployed_at="2026-11-20T00:00:00Z",
                            outcome="Superseded", approvals=APPROVED),
           api.HistoryEntry(version="v2", sha256=SHA["v2"], uri=V2.uri, deployed_at="2026-11-21T00:00:00Z",
                            outcome="RolledBack",
                            approvals=[api.ApprovalRecord(role="finance", approver="fiona"),
                                       api.ApprovalRecord(role="regulatory", approver="rick")])]
PAUSED = api.MLModelStatus(stable=V1, canary=V2, current_step_index=1, history=HISTORY[:1])
TIMED = api.MLModelStatus(stable=V1, canary=V2, current_step_index=0, history=HISTORY[:1])
SERVING = api.MLModelStatus(stable=V2, history=[HISTORY[0], HISTORY[1].model_copy(update={"outcome": "Serving"})])
HALTED = api.MLModelStatus(stable=V1, history=HISTORY, halt=HALT, last_rollback=ROLLED_BACK)
STEPS = {"rollout": {"steps": [{"setWeight": 10, "pauseSeconds": 60}, {"setWeight": 50}]}}
FOUR_EYES = {**STEPS, "rollback": {"resumeByAnotherPerson": True}}


def req(verb: str, who: str = "olga", to: str | None = None) -> ActionRequest:
    return ActionRequest(uid=f"uid-{verb}", name=f"m-{verb}", verb=verb, requester=who, to=to)


# (case, spec overrides, status, request, what the pass feeds the engine or rejects)
ADMISSIONS: list[tuple[str, dict[str, Any], api.MLModelStatus, ActionRequest, str]] = [
    ("promote at a manual pause", STEPS, PAUSED, req("promote"), "promote=v2/1"),
    ("promote at a timed pause", STEPS, TIMED, req("promote"), "NotAtManualPause"),
    ("promote without a canary", STEPS, SERVING, req("promote"), "NoCanaryWaiting"),
    ("rollback to the previous version", STEPS, SERVING, req("rollback"), "rollback=uid-rollback"),
    ("rollback to a named version", STEPS, SERVING, req("rollback", to="v1"), "rollback=uid-rollback:v1"),
    ("rollback to a version never served", STEPS, SERVING, req("rollback", to="v9"), "NotInHistory"),
    ("rollback to the version served now", STEPS, SERVING, req("rollback", to="v2"), "NotInHistory"),
    ("rollback to an unapproved version", STEPS, SERVING.model_copy(update={"history": [
        HISTORY[0].model_copy(update={"approvals": []}), SERVING.history[1]]}), req("rollback", to="v1"),
     "TargetNotApproved"),
    ("rollback to a version rolled back before (same sha256, older Superseded entry)", STEPS,
     SERVING.model_copy(update={"history": [HISTORY[0], HISTORY[0].model_copy(update={"outcome": "RolledBack"}),
                                           SERVING.history[1]]}), req("rollback", to="v1"), "TargetRolledBack"),
    ("rollback to a version whose canary was aborted once", STEPS,
     SERVING.model_copy(update={"incidents": [ROLLED_BACK.model_copy(update={"from_version": "v1",
                                                                             "from_sha256": SHA["v1"]})]}),
     req("rollback", to="v1"), "TargetRolledBack"),
    ("rollback with nothing served", STEPS, api.MLModelStatus(), req("rollback"), "NothingServed"),
    ("resume a halt", STEPS, HALTED, req("resume"), "resume=rb-1"),
    ("resume what is not halted", STEPS, SERVING, req("resume"), "NotHalted"),
    ("four eyes: an approver of the rolled-back version resumes", FOUR_EYES, HALTED, req("resume", "fiona"),
     "SamePerson"),
    ("four eyes: someone else resumes", FOUR_EYES, HALTED, req("resume", "olga"), "resume=rb-1"),
    ("without four eyes the approver may resume", STEPS, HALTED, req("resume", "fiona"), "resume=rb-1"),
    ("re-enable", STEPS, SERVING, req("enable"), "reenable"),
]


@pytest.mark.parametrize(("case", "overrides", "status", "request_", "expected"), ADMISSIONS,
                         ids=[a[0] for a in ADMISSIONS])
def test_what_a_pass_does_with_a_request(case: str, overrides: dict[str, Any], status: api.MLModelStatus,
                                         request_: ActionRequest, expected: str) -> None:
    a = admit(make_spec("v2", **overrides), status, request_)
    got = (a.rejected[0] if a.rejected else f"promote={a.promote}" if a.promote else
           f"rollback={a.rollback}" if a.rollback else f"resume={a.resume}" if a.resume else "reenable")
    assert got == expected


def test_everyone_behind_a_rolled_back_canary_is_recorded_with_the_rollback_and_may_not_resume_it() -> None:
    # A canary abort: v2 never reached status.history; its approvers are read from the approvals themselves.
    promoted = handled(PAUSED, req("promote", "pete"), (api.ActionOutcome.SUCCEEDED, api.ActionReason.APPLIED, ""),
                       T0, "v2")
    canary_approvals = [Approval(name="a1", role="finance", approver="cara", version="v2", sha256=SHA["v2"]),
                        Approval(name="a2", role="finance", approver="old", version="v2", sha256=SHA["v1"])]
    aborted = PAUSED.model_copy(update={"canary": None, "current_step_index": None, "halt": HALT,
                                        "last_rollback": ROLLED_BACK, "incidents": [ROLLED_BACK]})
    recorded = with_accountable(PAUSED, aborted, canary_approvals, promoters([], promoted))
    assert recorded.last_rollback is not None and recorded.last_rollback.accountable == ["cara", "pete"]
    assert recorded.incidents[0].accountable == ["cara", "pete"]
    later = recorded.model_copy(update={"handled_actions": []})  # the promote's commit entry is long gone
    for who, expected in (("cara", api.ActionReason.SAME_PERSON), ("pete", api.ActionReason.SAME_PERSON),
                          ("olga", None)):
        got = admit(make_spec("v2", **FOUR_EYES), later, req("resume", who)).rejected
        assert (got[0] if got else None) == expected, who
    # recorded once, when the rollback starts: later passes keep the names whatever happens to the approvals
    assert with_accountable(recorded, recorded, [], set()) == recorded


OUTCOMES: list[tuple[str, ActionRequest, api.MLModelStatus, api.MLModelStatus, str | None]] = [
    ("promote released the step", req("promote"), PAUSED, PAUSED.model_copy(update={"current_step_index": 2}),
     "Succeeded"),
    ("promote not yet (canary not ready)", req("promote"), PAUSED, PAUSED, None),
    ("promote released the last step: the canary is the stable", req("promote"), PAUSED,
     PAUSED.model_copy(update={"canary": None, "current_step_index": None, "stable": V2}), "Succeeded"),
    ("the canary was rolled back while the promote waited", req("promote"), PAUSED,
     PAUSED.model_copy(update={"canary": None, "current_step_index": None}), "Rejected"),
    ("a new revision replaced the canary while the promote waited", req("promote"), PAUSED,
     PAUSED.model_copy(update={"canary": V1, "current_step_index": 0}), "Rejected"),
    ("rollback started for this request", req("rollback"), SERVING, SERVING.model_copy(update={
        "last_rollback": ROLLED_BACK.model_copy(update={"request": "uid-rollback"})}), "Succeeded"),
    ("rollback waits for the one in progress", req("rollback"), SERVING, SERVING, None),
    ("resume cleared the halt", req("resume"), HALTED, HALTED.model_copy(update={"halt": None}), "Succeeded"),
    ("re-enable reached the servers", req("enable"), SERVING, SERVING, "Succeeded"),
]


@pytest.mark.parametrize(("case", "request_", "old", "new", "expected"), OUTCOMES, ids=[o[0] for o in OUTCOMES])
def test_whether_the_pass_carried_a_request_out(case: str, request_: ActionRequest, old: api.MLModelStatus,
                                                new: api.MLModelStatus, expected: str | None) -> None:
    found = outcome(request_, old, new)
    assert (found[0] if found else None) == expected


def test_committed_or_recorded_requests_are_not_pending_and_the_commit_list_empties_once_recorded() -> None:
    status = handled(SERVING, ActionRequest(uid="u1", name="a1", verb="promote", requester="x"),
                     (api.ActionOutcome.REJECTED, api.ActionReason.NO_CANARY_WAITING, ""), T0, "v2")
    requests = [ActionRequest(uid="u1", name="a1", verb="promote", requester="x", created="2"),
                ActionRequest(uid="new", name="b", verb="resume", requester="x", created="3"),
                ActionRequest(uid="done", name="d", verb="rollback", requester="x", created="0",
                              recorded_outcome="Succeeded"),
                ActionRequest(uid="older", name="c", verb="resume", requester="x", created="1")]
    assert [r.uid for r in pending(requests, status)] == ["older", "new"]
    assert prune_handled(status, requests).handled_actions == status.handled_actions  # not yet copied
    copied = [replace(r, recorded_outcome="Rejected") if r.uid == "u1" else r for r in requests]
    assert prune_handled(status, copied).handled_actions == []


def test_a_rollbacks_records_say_they_follow_the_act_and_carry_the_trigger_values() -> None:
    rb = ROLLED_BACK.model_copy(update={"trigger": "ErrorBudgetExhausted", "values": {"budget": "3.1"},
                                        "completed_at": None})
    new = SERVING.model_copy(update={"last_rollback": rb, "phase": api.Phase.ROLLING_BACK})
    events = [Event("Warning", api.Reason.ROLLBACK_STARTED, "budget 3.1% < 5%"),
              Event("Normal", api.Reason.HALTED, "halted")]
    entries = decision_entries(events, SERVING, new, spec_version="v2", spec_sha256=SHA["v2"], decision_key="7")
    assert [(e.decision, e.recorded_after_acting, e.version) for e in entries] == [
        ("RollbackStarted", True, "v2"), ("Halted", False, "v2")]
    assert entries[0].inputs["value.budget"] == "3.1" and entries[0].inputs["trigger"] == "ErrorBudgetExhausted"
    assert entries[0].key != entries[1].key and entries[0].key.startswith("7/")


# --- one pass, with a fake ledger ---


@dataclass
class FakeLedger:
    log: list[tuple[str, Any]]
    failures: int = 0
    records: list[api.LedgerRecord] = field(default_factory=list)

    async def append(self, model: ModelObject, entries: Sequence[Entry], *, generation: int,
                     now: dt.datetime) -> api.LedgerHead | None:
        if self.failures:
            self.failures -= 1
            raise KubeError("the API server is down", 503)
        known = {r.key for r in self.records}
        for e in entries:
            if e.key not in known:
                self.records.append(chain(self.records[-1] if self.records else None, e, model=model.name,
                                          model_uid=model.uid, generation=generation, now=now))
        self.log.append(("ledger", [e.decision for e in entries]))
        return head_of(self.records[-1]) if self.records else None


@dataclass
class FakeActionStatus:
    recorded: list[tuple[str, api.ModelActionStatus]] = field(default_factory=list)

    async def record(self, namespace: str, name: str, status: api.ModelActionStatus) -> None:
        self.recorded.append((name, status))


def controller(cluster: FakeCluster, ledger: FakeLedger | BrokenLedger, actions: FakeActionStatus,
               notifier: FakePager | None = None) -> Controller:
    spec = make_spec("v1", serving={"replicas": 2})
    router, artifacts = FakeRouter(), FakeArtifacts({spec.artifact.uri: SHA["v1"]})
    c = Controller(workloads=cluster, status_writer=cluster, events=cluster, artifacts=artifacts, reports=artifacts,
                   router_for=lambda spec: router, clock=lambda: T0, ledger=ledger, action_status=actions,
                   **({"notifier": notifier} if notifier is not None else {}))
    c.caches.observe_model("ADDED", mlmodel(spec))
    c.caches.observe_approval("ADDED", approval("finance", "fiona"))
    c.caches.observe_approval("ADDED", approval("regulatory", "rick"))
    return c


def test_decisions_are_recorded_before_anything_is_acted_on() -> None:
    cluster = FakeCluster()
    ledger = FakeLedger(cluster.calls)
    c = controller(cluster, ledger, FakeActionStatus())
    asyncio.run(c.reconcile(KEY))
    first_apply = next(i for i, call in enumerate(cluster.calls) if call[0] == "apply")
    assert cluster.calls[0][0] == "ledger" and "QuorumMet" in cluster.calls[0][1] and first_apply > 0
    status = api.MLModelStatus.model_validate(c.models[KEY]["status"])
    assert status.ledger is not None and status.ledger.hash == ledger.records[-1].hash
    assert ledger.records[0].prev == GENESIS


def test_a_ledger_that_cannot_be_written_fails_the_pass_with_nothing_acted_on() -> None:
    cluster = FakeCluster()
    ledger = FakeLedger(cluster.calls, failures=1)
    c = controller(cluster, ledger, FakeActionStatus())
    with pytest.raises(KubeError):
        asyncio.run(c.reconcile(KEY))
    assert cluster.calls == [] and cluster.status_writes == 0 and ledger.records == []
    asyncio.run(c.reconcile(KEY))  # the retry records the same decisions, once, then acts
    assert ledger.records and any(call[0] == "apply" for call in cluster.calls)
    assert len({r.key for r in ledger.records}) == len(ledger.records)


def test_an_action_is_recorded_once_under_its_requesters_name() -> None:
    cluster = FakeCluster()
    ledger, actions = FakeLedger(cluster.calls), FakeActionStatus()
    c = controller(cluster, ledger, actions)
    body: dict[str, Any] = {
        "metadata": {"namespace": NS, "name": "credit-promote-x", "uid": "a1", "resourceVersion": "5",
                     "creationTimestamp": "2026-11-22T12:00:00Z"},
        "spec": {"modelRef": {"name": "credit"}, "verb": "promote", "requester": "finance-approver"}}
    c.caches.observe_action("ADDED", body)
    asyncio.run(c.reconcile(KEY))
    # the watch brings the action back with its outcome: later passes neither act on it nor record it again
    c.caches.observe_action("MODIFIED", {**body, "metadata": {**body["metadata"], "resourceVersion": "6"},
                                         "status": actions.recorded[0][1].wire()})
    asyncio.run(c.reconcile(KEY))
    assert [(n, s.outcome, s.reason) for n, s in actions.recorded] == [
        ("credit-promote-x", "Rejected", "NoCanaryWaiting")]
    requested = [r for r in ledger.records if r.decision == "PromoteRequested"]
    assert [(r.actor, r.outcome, r.inputs["action"]) for r in requested] == [
        ("user:finance-approver", "Rejected", "credit-promote-x")]


def test_the_removed_resume_annotation_clears_no_halt_and_a_condition_names_the_command() -> None:
    cluster = FakeCluster()
    ledger = FakeLedger(cluster.calls)
    c = controller(cluster, ledger, FakeActionStatus())
    halted = api.MLModelStatus(stable=V1, history=HISTORY[:1], halt=HALT.model_copy(update={"version": "v1",
                                                                                         "sha256": SHA["v1"]}))
    body = mlmodel(make_spec("v1", serving={"replicas": 2}), resourceVersion="3",
                   annotations={api.ANNOTATION_RESUME: "rb-1"})
    c.caches.observe_model("MODIFIED", {**body, "status": halted.wire()})
    asyncio.run(c.reconcile(KEY))
    status = api.MLModelStatus.model_validate(c.models[KEY]["status"])
    assert status.halt is not None and status.halt.id == "rb-1"
    ignored = next(x for x in status.conditions if x.type == "AnnotationsIgnored")
    assert "modelwarden resume MODEL" in ignored.message and api.ANNOTATION_RESUME in ignored.message
    assert not [r for r in ledger.records if "Resume" in r.decision]
    assert ("Warning", "AnnotationsIgnored") in cluster.events



# --- issue 27: a ledger that does not end at the operator's checkpoint ---


@dataclass
class BrokenLedger:
    """What KubeLedger raises when the stored tail is not the checkpoint's head."""

    async def append(self, model: ModelObject, entries: Sequence[Entry], *, generation: int,
                     now: dt.datetime) -> api.LedgerHead | None:
        raise LedgerBroken(api.Reason.LEDGER_TAIL_MISSING, "records 5-9 were deleted")


@dataclass
class FakePager:
    pages: list[tuple[str, str]] = field(default_factory=list)

    async def notify(self, model: str, namespace: str, severity: str, summary: str,
                     rollback: api.Rollback | None) -> str | None:
        self.pages.append((severity, summary))
        return None


def test_a_broken_ledger_is_not_appended_to_nothing_is_acted_on_and_one_page_goes_out() -> None:
    cluster, pager = FakeCluster(), FakePager()
    c = controller(cluster, BrokenLedger(), FakeActionStatus(), pager)
    asyncio.run(c.reconcile(KEY))
    asyncio.run(c.reconcile(KEY))  # still broken: the condition stays, no second page
    assert not [call for call in cluster.calls if call[0] == "apply"], "a decision recorded first was carried out"
    status = api.MLModelStatus.model_validate(c.models[KEY]["status"])
    broken = next(x for x in status.conditions if x.type == api.ConditionType.LEDGER_BROKEN)
    assert (broken.status, broken.reason) == ("True", "LedgerTailMissing") and "records 5-9" in broken.message
    assert status.stable is None and status.ledger is None
    assert [severity for severity, _ in pager.pages] == ["page"] and "LedgerTailMissing" in pager.pages[0][1]
