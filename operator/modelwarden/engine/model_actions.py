"""ModelActions (issues 18, 27): which pending requests a pass settles, which one it feeds the decision, and
their outcomes.

Pure. The handler reads the model's ModelActions and asks :func:`plan` what this pass does with them: every pending
action is either settled now (rejected, expired, or filed for another model of the same name) or admitted; of the
admitted ones the most urgent (rollback, resume, enable, then promote; oldest first) is fed to
:func:`modelwarden.engine.rollout.decide`, the others keep waiting on their own (a waiting promote never holds a
rollback back). After deciding, :func:`outcome` says whether the fed one was carried out.

Exactly once, forever: an action whose own ``status.outcome`` is set is never pending again. The outcome is first
written into ``status.handledActions`` in the same status write as its effect (the commit point: an operator that
dies right after finds the uid there and only copies the outcome), and leaves that list once the action's own
status holds it (:func:`prune_handled`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from modelwarden.api.v1alpha1 import (
    IGNORED_ANNOTATIONS,
    ActionOutcome,
    ActionReason,
    ArtifactVersion,
    ConditionType,
    HandledAction,
    MLModelSpec,
    MLModelStatus,
    Reason,
)
from modelwarden.engine.approvals import Approval
from modelwarden.engine.conditions import set_condition
from modelwarden.engine.decision import ArtifactCheck
from modelwarden.engine.rollback import rollback_target, rolled_back_sha256s
from modelwarden.engine.rollout import promote_token
from modelwarden.engine.timestamps import parse_timestamp, timestamp

# Which admitted action a pass feeds the decision first: what protects users before what moves a rollout on.
PRIORITY = {"rollback": 0, "resume": 1, "enable": 2, "promote": 3}
DEFAULT_TTL_SECONDS = 3600

Result = tuple[ActionOutcome, ActionReason, str]


@dataclass(frozen=True)
class ActionRequest:
    uid: str
    name: str
    verb: str
    requester: str
    to: str | None = None
    reason: str = ""
    created: str = ""
    model_uid: str | None = None
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    # the action's own status.outcome (and the version it concerned): set, the action is done forever
    recorded_outcome: str = ""
    recorded_version: str = ""

    @property
    def rollback_request(self) -> str:
        """The rollback request id the engine records on the incident: the action's uid (and target)."""
        return self.uid + (f":{self.to}" if self.to else "")


@dataclass(frozen=True)
class Admission:
    """What the pass does with the request: feed the engine (promote/rollback/resume token), re-enable the
    servers, or reject it now (``rejected`` set). ``verify``: the rollback target whose sha256 is read again
    before anything moves (:func:`verified`)."""

    promote: str | None = None
    rollback: str | None = None
    resume: str | None = None
    reenable: bool = False
    rejected: tuple[ActionReason, str] | None = None
    verify: ArtifactVersion | None = None


@dataclass(frozen=True)
class Plan:
    """This pass: the request fed to the decision (with its admission), and those settled without acting."""

    fed: ActionRequest | None = None
    admission: Admission | None = None
    settled: tuple[tuple[ActionRequest, Result], ...] = field(default_factory=tuple)


def pending(requests: Iterable[ActionRequest], status: MLModelStatus) -> list[ActionRequest]:
    """Requests not yet acted on, oldest first: no outcome of their own, and not committed in ``handledActions``
    (those only need their outcome copied)."""
    done = {h.uid for h in status.handled_actions}
    return sorted((r for r in requests if not r.recorded_outcome and r.uid not in done),
                  key=lambda r: (r.created, r.name))


def for_another_model(request: ActionRequest, model_uid: str, model_created: str) -> bool:
    """Filed for an earlier model of the same name: bound to another uid, or (unbound) older than this model."""
    if request.model_uid:
        return request.model_uid != model_uid
    return bool(model_created and request.created and request.created < model_created)


def expired(request: ActionRequest, now: datetime) -> bool:
    if not request.created:
        return False
    return (now - parse_timestamp(request.created)).total_seconds() > request.ttl_seconds


def plan(spec: MLModelSpec, status: MLModelStatus, requests: Iterable[ActionRequest], now: datetime, *,
         model_uid: str, model_created: str = "") -> Plan:
    """Settle what can be settled now; feed the most urgent admitted request (each pending one gets its outcome or
    keeps waiting on its own: none waits behind another verb)."""
    settled: list[tuple[ActionRequest, Result]] = []
    admitted: list[tuple[ActionRequest, Admission]] = []
    for r in pending(requests, status):
        if for_another_model(r, model_uid, model_created):
            settled.append((r, (ActionOutcome.REJECTED, ActionReason.MODEL_RECREATED,
                                f"filed for {f'model uid {r.model_uid}' if r.model_uid else 'an earlier model'} "
                                f"of this name; this model (uid {model_uid}) was created after it: file it again")))
            continue
        a = admit(spec, status, r)
        if a.rejected is not None:
            settled.append((r, (ActionOutcome.REJECTED, *a.rejected)))
        elif expired(r, now):
            settled.append((r, (ActionOutcome.EXPIRED, ActionReason.TIME_TO_LIVE_EXCEEDED,
                                f"not carried out within {r.ttl_seconds}s of {r.created}: {_waiting_on(status)}")))
        else:
            admitted.append((r, a))
    if not admitted:
        return Plan(settled=tuple(settled))
    fed, admission = min(admitted, key=lambda x: (PRIORITY.get(x[0].verb, 9), x[0].created, x[0].name))
    return Plan(fed=fed, admission=admission, settled=tuple(settled))


def _waiting_on(status: MLModelStatus) -> str:
    progressing = next((c for c in status.conditions if c.type == ConditionType.PROGRESSING), None)
    what = f"{progressing.reason}: {progressing.message}" if progressing is not None else "no progress reported"
    return f"the model stayed {status.phase or 'unknown'} ({what})"


def verified(p: Plan, check: ArtifactCheck | None) -> Plan:
    """A rollback's target read again before anything moves: bytes that no longer match refuse the action."""
    a, fed = p.admission, p.fed
    if a is None or fed is None or a.verify is None:
        return p
    target = a.verify
    if check is not None and check.uri == target.uri:
        if check.pending:  # the verdict wakes the model; the action stays pending until then
            return replace(p, fed=None, admission=None)
        if check.error is None and check.actual == target.sha256:
            return p
        if check.error is not None and not check.invalid:
            # An unavailable store proves nothing about the bytes: the rollback starts, and waits for the store
            # with a condition (engine.rollback.judge_target), rather than refusing on-call at 3 a.m.
            return p
    found = ("not read" if check is None or check.uri != target.uri else check.error or f"sha256 {check.actual}")
    reason = (ActionReason.TARGET_SHA256_MISMATCH,
              f"rollback target {target.version} at {target.uri} no longer matches sha256 {target.sha256}: {found}; "
              "nothing moved")
    return replace(p, fed=None, admission=None, settled=(*p.settled, (fed, (ActionOutcome.REJECTED, *reason))))


def promoters(requests: Iterable[ActionRequest], status: MLModelStatus) -> set[tuple[str, str]]:
    """(version, person) for every promote that released a step of that version."""
    done = {(r.recorded_version, r.requester) for r in requests
            if r.verb == "promote" and r.recorded_outcome == ActionOutcome.SUCCEEDED}
    return done | {(h.version, h.requester) for h in status.handled_actions
                   if h.verb == "promote" and h.outcome == ActionOutcome.SUCCEEDED}


def persons_behind(status: MLModelStatus, version: str, sha256: str, approvals: Iterable[Approval] = (),
                   promoted: Iterable[tuple[str, str]] = ()) -> set[str]:
    """Who approved or promoted ``version`` (canary or stable): whom a four-eyes resume must not come from. From
    the approvals themselves, the approvals recorded in history, and the promotes."""
    people = {a.approver for h in status.history if h.version == version and h.sha256 == sha256 for a in h.approvals}
    people |= {a.approver for a in approvals if a.version == version and a.sha256 == sha256}
    people |= {who for v, who in promoted if v == version}
    return people


def with_accountable(old: MLModelStatus, new: MLModelStatus, approvals: Iterable[Approval],
                     promoted: Iterable[tuple[str, str]]) -> MLModelStatus:
    """A rollback started in this pass records who approved or promoted what it rolls back (on the rollback and
    its incident, so the ledger record and every later resume check read the same names)."""
    rb = new.last_rollback
    if rb is None or (old.last_rollback is not None and old.last_rollback.id == rb.id):
        return new
    rb = rb.model_copy(update={"accountable": sorted(persons_behind(old, rb.from_version, rb.from_sha256,
                                                                    approvals, promoted))})
    incidents = [rb if i.id == rb.id else i for i in new.incidents]
    return new.model_copy(update={"last_rollback": rb, "incidents": incidents})


def admit(spec: MLModelSpec, status: MLModelStatus, request: ActionRequest) -> Admission:
    match request.verb:
        case "promote":
            if status.canary is None or status.current_step_index is None:
                return Admission(rejected=(ActionReason.NO_CANARY_WAITING, "no canary is waiting"))
            index = status.current_step_index
            if index < len(spec.rollout.steps) and spec.rollout.steps[index].pause_seconds is not None:
                return Admission(rejected=(ActionReason.NOT_AT_MANUAL_PAUSE,
                                           f"step {index + 1} is a timed pause, not a manual one"))
            return Admission(promote=promote_token(status.canary.version, index))
        case "rollback":
            return _admit_rollback(status, request)
        case "resume":
            halt = status.halt
            if halt is None:
                return Admission(rejected=(ActionReason.NOT_HALTED, "the model is not halted"))
            rb = status.last_rollback
            if (spec.rollback.resume_by_another_person and rb is not None
                    and request.requester in {*rb.accountable, *persons_behind(status, rb.from_version,
                                                                               rb.from_sha256)}):
                return Admission(rejected=(
                    ActionReason.SAME_PERSON,
                    f"{request.requester} approved or promoted {rb.from_version}, which was "
                    "rolled back: another person must resume (spec.rollback.resumeByAnotherPerson)"))
            return Admission(resume=halt.id)
        case _:
            return Admission(reenable=True)


def _admit_rollback(status: MLModelStatus, request: ActionRequest) -> Admission:
    """A rollback's target is approved, was never rolled back (by sha256, anywhere in history) and its bytes are
    read again (``verify``): anything else is refused before anything moves."""
    stable = status.stable
    if stable is None:
        return Admission(rejected=(ActionReason.NOTHING_SERVED, "nothing is served yet"))
    in_progress = status.last_rollback is not None and status.last_rollback.completed_at is None
    if in_progress or (status.canary is not None and not request.to):
        # Waits for the rollback in progress (whose target is being read); or aborts the canary: back to the
        # stable it runs beside.
        return Admission(rollback=request.rollback_request)
    rolled = rolled_back_sha256s(status)
    target = rollback_target(status.history, stable, request.to, rolled)
    if target is None and request.to:
        named = [h for h in status.history if h.version == request.to]
        if not named:
            return Admission(rejected=(ActionReason.NOT_IN_HISTORY, f"{request.to} is not in history"))
        others = [h for h in named if (h.version, h.sha256) != (stable.version, stable.sha256)]
        if not others:
            return Admission(rejected=(ActionReason.NOT_IN_HISTORY, f"{request.to} is the version served now"))
        if all(h.sha256 in rolled for h in others):
            return Admission(rejected=(ActionReason.TARGET_ROLLED_BACK,
                                       f"{request.to} (sha256 {others[-1].sha256[:12]}) was rolled back before: "
                                       "a version rolled back once is never a rollback target"))
        return Admission(rejected=(ActionReason.TARGET_NOT_APPROVED,
                                   f"{request.to} has no recorded approvals: only an approved version is a "
                                   "rollback target"))
    verify = None if target is None else ArtifactVersion(version=target.version, sha256=target.sha256,
                                                         uri=target.uri, format=target.format)
    return Admission(rollback=request.rollback_request, verify=verify)


def ignoring_annotations(status: MLModelStatus, annotations: Mapping[str, str], now: datetime,
                         generation: int) -> MLModelStatus:
    """The removed annotations decide nothing; while one is set, condition AnnotationsIgnored says so and names
    the command that replaces it."""
    found = [f"{key} is ignored (removed): use `{command}`" for key, command in IGNORED_ANNOTATIONS.items()
             if key in annotations]
    if not found:
        if not any(c.type == ConditionType.ANNOTATIONS_IGNORED for c in status.conditions):
            return status
        conditions = [c for c in status.conditions if c.type != ConditionType.ANNOTATIONS_IGNORED]
        return status.model_copy(update={"conditions": conditions})
    conditions = set_condition(status.conditions, type=ConditionType.ANNOTATIONS_IGNORED, status=True,
                               reason=Reason.REMOVED_ANNOTATION_SET,
                               message="; ".join(found) + " (a ModelAction, whose requester the API server proves)",
                               now=now, generation=generation)
    return status.model_copy(update={"conditions": conditions})


def outcome(request: ActionRequest, old: MLModelStatus, new: MLModelStatus, reenable_failure: str | None = None,
            ) -> tuple[ActionOutcome, ActionReason, str] | None:
    """Whether the pass carried the admitted request out (None: not yet — e.g. a rollback is still finishing,
    or the canary is not yet at its manual pause; the request stays pending)."""
    match request.verb:
        case "promote":
            canary = old.canary
            if canary is None:
                return None
            promoted = new.canary is None and new.stable is not None and (new.stable.version, new.stable.sha256) == (
                canary.version, canary.sha256)
            same_canary = new.canary is not None and (new.canary.version, new.canary.sha256) == (
                canary.version, canary.sha256)
            if promoted or (same_canary and new.current_step_index != old.current_step_index):
                return ActionOutcome.SUCCEEDED, ActionReason.APPLIED, f"released step {_step(old)}"
            if not same_canary:
                # Rolled back or replaced by a new revision while it waited: it never releases another canary.
                return (ActionOutcome.REJECTED, ActionReason.NO_CANARY_WAITING,
                        f"the canary {canary.version} it was filed for is gone (rolled back or replaced)")
            return None
        case "rollback":
            if new.last_rollback is not None and new.last_rollback.request == request.rollback_request:
                return (ActionOutcome.SUCCEEDED, ActionReason.APPLIED,
                        f"rollback {new.last_rollback.id} from {new.last_rollback.from_version}")
            return None
        case "resume":
            if old.halt is not None and (new.halt is None or new.halt.id != old.halt.id):
                return ActionOutcome.SUCCEEDED, ActionReason.APPLIED, f"halt {old.halt.id} cleared"
            return None
        case _:
            if reenable_failure is None:
                return ActionOutcome.SUCCEEDED, ActionReason.APPLIED, "servers re-enabled"
            return ActionOutcome.REJECTED, ActionReason.SERVERS_UNREACHABLE, reenable_failure


def _step(status: MLModelStatus) -> str:
    return "?" if status.current_step_index is None else str(status.current_step_index + 1)


def handled(status: MLModelStatus, request: ActionRequest, result: Result, now: datetime,
            version: str) -> MLModelStatus:
    """``status`` with the request's outcome committed (until the action's own status holds it)."""
    entry = HandledAction(uid=request.uid, name=request.name, verb=request.verb, requester=request.requester,
                          version=version, outcome=result[0], reason=result[1], message=result[2],
                          at=timestamp(now))
    return status.model_copy(update={"handled_actions": [*status.handled_actions, entry]})


def prune_handled(status: MLModelStatus, requests: Iterable[ActionRequest]) -> MLModelStatus:
    """Drop the committed outcomes the actions' own status now holds (or whose action is gone): the list holds
    only what is between the commit point and the copy."""
    waiting = {r.uid for r in requests if not r.recorded_outcome}
    kept = [h for h in status.handled_actions if h.uid in waiting]
    if len(kept) == len(status.handled_actions):
        return status
    return status.model_copy(update={"handled_actions": kept})
