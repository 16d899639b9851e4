"""ModelActions (issue 18): which pending request a pass acts on, what it feeds the decision, and its outcome.

Pure. The handler reads the model's ModelActions, asks :func:`admit` what the oldest pending one means for this
pass (an observation field for :func:`modelwarden.engine.rollout.decide`, or a rejection), and after deciding asks
:func:`outcome` whether it was carried out. The outcome goes into ``status.handledActions`` in the same status
write as its effect: that write is the commit point, so an operator that dies after it does not act again (the
action's uid is there), and one that dies before it decides again from the same status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelwarden.api.v1alpha1 import (
    ActionOutcome,
    ActionReason,
    HandledAction,
    MLModelSpec,
    MLModelStatus,
)
from modelwarden.engine.rollout import promote_token
from modelwarden.engine.timestamps import timestamp

HANDLED_LIMIT = 50


@dataclass(frozen=True)
class ActionRequest:
    uid: str
    name: str
    verb: str
    requester: str
    to: str | None = None
    reason: str = ""
    created: str = ""

    @property
    def rollback_request(self) -> str:
        """The rollback request id the engine records on the incident: the action's uid (and target)."""
        return self.uid + (f":{self.to}" if self.to else "")


@dataclass(frozen=True)
class Admission:
    """What the pass does with the request: feed the engine (promote/rollback/resume token), re-enable the
    servers, or reject it now (``rejected`` set)."""

    promote: str | None = None
    rollback: str | None = None
    resume: str | None = None
    reenable: bool = False
    rejected: tuple[ActionReason, str] | None = None


def pending(requests: list[ActionRequest], status: MLModelStatus) -> list[ActionRequest]:
    """Requests not yet acted on, oldest first (the ones in ``handledActions`` only need their outcome copied)."""
    done = {h.uid for h in status.handled_actions}
    return sorted((r for r in requests if r.uid not in done), key=lambda r: (r.created, r.name))


def persons_behind(status: MLModelStatus, version: str, sha256: str) -> set[str]:
    """Who approved or promoted ``version``: whom a four-eyes resume must not come from."""
    people = {a.approver for h in status.history if h.version == version and h.sha256 == sha256 for a in h.approvals}
    people |= {h.requester for h in status.handled_actions
               if h.verb == "promote" and h.version == version and h.outcome == ActionOutcome.SUCCEEDED}
    return people


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
            if status.stable is None:
                return Admission(rejected=(ActionReason.NOTHING_SERVED, "nothing is served yet"))
            if request.to and not any(h.version == request.to for h in status.history):
                return Admission(rejected=(ActionReason.NOT_IN_HISTORY, f"{request.to} is not in history"))
            return Admission(rollback=request.rollback_request)
        case "resume":
            halt = status.halt
            if halt is None:
                return Admission(rejected=(ActionReason.NOT_HALTED, "the model is not halted"))
            if (spec.rollback.resume_by_another_person and status.last_rollback is not None
                    and request.requester in persons_behind(status, status.last_rollback.from_version,
                                                            status.last_rollback.from_sha256)):
                return Admission(rejected=(
                    ActionReason.SAME_PERSON,
                    f"{request.requester} approved or promoted {status.last_rollback.from_version}, which was "
                    "rolled back: another person must resume (spec.rollback.resumeByAnotherPerson)"))
            return Admission(resume=halt.id)
        case _:
            return Admission(reenable=True)


def outcome(request: ActionRequest, old: MLModelStatus, new: MLModelStatus, reenable_failure: str | None = None,
            ) -> tuple[ActionOutcome, ActionReason, str] | None:
    """Whether the pass carried the admitted request out (None: not yet — e.g. a rollback is still finishing,
    or the canary is not yet at its manual pause; the request stays pending)."""
    match request.verb:
        case "promote":
            if (new.current_step_index != old.current_step_index or new.canary is None
                    or (old.canary is not None and new.canary.version != old.canary.version)):
                return ActionOutcome.SUCCEEDED, ActionReason.APPLIED, f"released step {_step(old)}"
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


def handled(status: MLModelStatus, request: ActionRequest, result: tuple[ActionOutcome, ActionReason, str],
            now: datetime, version: str) -> MLModelStatus:
    """``status`` with the request recorded as handled (bounded: the oldest entries go first)."""
    entry = HandledAction(uid=request.uid, name=request.name, verb=request.verb, requester=request.requester,
                          version=version, outcome=result[0], reason=result[1], message=result[2],
                          at=timestamp(now))
    return status.model_copy(update={"handled_actions": [*status.handled_actions, entry][-HANDLED_LIMIT:]})
