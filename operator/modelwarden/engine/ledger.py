"""The decision ledger (issue 18): what a record says, how records chain, and how a chain is checked. Pure.

A record's ``hash`` is the sha256 of its canonical JSON (sorted keys, no whitespace) without ``hash`` and
``signature``; that JSON holds ``prev``, the previous record's hash (:data:`GENESIS` for the first), so changing,
removing or inserting one record breaks the link after it. The operator signs ``hash`` (Ed25519, in the adapter);
:func:`verify` takes the signature check as a function, so this module stays free of cryptography.

:func:`verify` names the **first** record that was altered, removed or inserted:

- *altered*: its content no longer hashes to its ``hash``, or its signature does not verify, and the record after
  it does not link around it (were it linked around, it would be *inserted*);
- *removed*: a record that verifies links to an earlier record than the one before it, or its ``seq`` skips;
  the first missing ``seq`` is named; also when the head the verifier was given (MLModel status, the operator's
  metric, an exported bundle) is not in the chain because the chain ends before it;
- *inserted*: a record that does not belong between two records that link to each other, or a valid record
  repeated.

Issue 27: the operator keeps a **checkpoint** of the head outside the model's namespace and never appends to a chain
whose tail does not match it (:func:`tail_problem`); :func:`missing_segments` names whole segments that are gone
(the tail, all of them, one in the middle) and accepts a missing oldest segment as expired only when the checkpoint
says the operator expired it and its newest record is past the retention; :func:`key_problem` trusts a key only by
the cluster's TrustPolicy and only within its validity window.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from modelwarden.api.v1alpha1 import (
    HandledAction,
    LedgerCheckpoint,
    LedgerHead,
    LedgerRecord,
    MLModelStatus,
    Phase,
    Reason,
)
from modelwarden.engine.actions import Event
from modelwarden.engine.timestamps import parse_timestamp, timestamp

GENESIS = "0" * 64
OPERATOR = "operator"
# Records per ModelLedger object: a segment stays far below etcd's object size limit (~1 KiB a record).
SEGMENT_RECORDS = 64


def user(name: str) -> str:
    """The actor of a person the API server proved (a ModelAction's requester, a ModelApproval's approver)."""
    return f"user:{name}"


@dataclass(frozen=True)
class Entry:
    """One decision to record, before it is chained."""

    decision: str
    key: str
    actor: str = OPERATOR
    version: str = ""
    sha256: str = ""
    outcome: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    recorded_after_acting: bool = False


def canonical(record: LedgerRecord) -> bytes:
    """The bytes ``hash`` covers: every field but ``hash`` and ``signature``, canonical JSON."""
    body = record.model_dump(by_alias=True, mode="json", exclude={"hash", "signature"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(record: LedgerRecord) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def chain(prev: LedgerRecord | None, entry: Entry, *, model: str, model_uid: str, generation: int,
          now: datetime, key_id: str = "") -> LedgerRecord:
    """The next record after ``prev`` (unsigned: the adapter signs ``hash``)."""
    record = LedgerRecord(
        seq=0 if prev is None else prev.seq + 1, time=timestamp(now), actor=entry.actor, model=model,
        model_uid=model_uid, version=entry.version, sha256=entry.sha256, generation=generation,
        decision=entry.decision, outcome=entry.outcome, inputs=dict(entry.inputs), key=entry.key,
        recorded_after_acting=entry.recorded_after_acting, prev=GENESIS if prev is None else prev.hash, hash="",
        key_id=key_id)
    return record.model_copy(update={"hash": digest(record)})


def head_of(record: LedgerRecord) -> LedgerHead:
    return LedgerHead(seq=record.seq, hash=record.hash, at=record.time)


Problem = Literal["altered", "removed", "inserted"]


@dataclass(frozen=True)
class Finding:
    problem: Problem
    seq: int
    # where the record is (or, for a removed one, would be): index in the concatenated records
    position: int
    detail: str

    def __str__(self) -> str:
        return f"record {self.seq} {self.problem}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    records: int
    head: LedgerHead | None
    finding: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.finding is None


# True when the record's signature verifies under a trusted key; False or a sentence saying why when it does not.
SignatureCheck = Callable[[LedgerRecord], "bool | str"]


def _intact(record: LedgerRecord, signed: SignatureCheck) -> bool:
    return digest(record) == record.hash and signed(record) is True


def verify(records: Sequence[LedgerRecord], signed: SignatureCheck, *, head: LedgerHead | None = None,
           first_seq: int = 0) -> Verdict:
    """Check ``records`` (in stored order) as one chain. ``first_seq``: the seq the stored chain starts at (records
    before it expired by retention; the first record's ``prev`` is then taken as given). ``head``: a head written
    elsewhere that the chain must contain."""
    last: LedgerRecord | None = None
    for i, record in enumerate(records):
        expected_seq = first_seq if last is None else last.seq + 1
        expected_prev = None if last is None and first_seq > 0 else (GENESIS if last is None else last.hash)
        if not _intact(record, signed):
            after = records[i + 1] if i + 1 < len(records) else None
            links_around = after is not None and _intact(after, signed) and (
                after.prev == (GENESIS if last is None else last.hash))
            # at the end: the published head is the record before it, so it came after the operator's last write
            beyond_head = (after is None and head is not None and last is not None and head.seq == last.seq
                           and head.hash == last.hash)
            links_around = links_around or beyond_head
            if links_around:
                return Verdict(len(records), head, Finding("inserted", record.seq, i,
                                                           "not part of the chain: the next record links around it"))
            verdict = signed(record)
            why = ("its content does not match its hash" if digest(record) != record.hash
                   else verdict if isinstance(verdict, str) else "bad signature")
            return Verdict(len(records), head, Finding("altered", record.seq, i, why))
        if record.seq > expected_seq:
            return Verdict(len(records), head, Finding(
                "removed", expected_seq, i, f"the chain goes from {expected_seq - 1} to {record.seq}"))
        if record.seq < expected_seq:
            return Verdict(len(records), head, Finding(
                "inserted", record.seq, i, f"seq {record.seq} again after {expected_seq - 1}"))
        if expected_prev is not None and record.prev != expected_prev:
            # the right seq, intact and signed, but not chained to its predecessor: a record signed for another
            # place (a replay), i.e. inserted here
            return Verdict(len(records), head, Finding(
                "inserted", record.seq, i, "intact, but not linked to the record before it"))
        last = record
    if head is not None:
        if last is None or last.seq < head.seq:
            missing = first_seq if last is None else last.seq + 1
            return Verdict(len(records), head, Finding(
                "removed", missing, len(records), f"the chain ends before the published head {head.seq}"))
        at = head.seq - first_seq
        if 0 <= at < len(records) and records[at].hash != head.hash:
            return Verdict(len(records), head, Finding(
                "altered", head.seq, at, "does not match the published head"))
    return Verdict(len(records), head if last is None else head_of(last))


# --- issue 27: trusted keys, the checkpoint, whole segments ---


@dataclass(frozen=True)
class TrustedKey:
    """A ledger key the cluster's TrustPolicy trusts, and when (RFC 3339; ``not_after`` None: not retired)."""

    key_id: str
    not_before: str
    not_after: str | None = None


def key_problem(trusted: Mapping[str, TrustedKey], key_id: str, at: str) -> str | None:
    """Why a record made at ``at`` and signed with ``key_id`` is not trusted (None: it is, signature aside). A key
    only published (the operator's ConfigMap) or ephemeral is not in ``trusted``."""
    key = trusted.get(key_id)
    if key is None:
        return f"signed by key {key_id or '(none)'}, which the cluster's TrustPolicy does not trust"
    made = parse_timestamp(at)
    if made < parse_timestamp(key.not_before):
        return f"made at {at}, before key {key_id} was trusted ({key.not_before})"
    if key.not_after is not None and made > parse_timestamp(key.not_after):
        return f"made at {at}, after key {key_id} was retired ({key.not_after})"
    return None


def retired(key: TrustedKey | None, now: datetime) -> bool:
    """An operator whose key is retired signs nothing new (its records would not verify)."""
    return key is not None and key.not_after is not None and now > parse_timestamp(key.not_after)


def tail_problem(checkpoint: LedgerCheckpoint | None, tail: Sequence[LedgerRecord],
                 signed: SignatureCheck) -> tuple[Reason, str] | None:
    """Whether the stored chain still ends where the operator's checkpoint says (``tail``: the newest stored records,
    oldest first). Records after the checkpoint's head are accepted only when they chain to it and carry the
    operator's signature (a crash between writing a segment and its checkpoint). None: append; else the
    ``LedgerBroken`` reason and what is wrong (nothing may be appended)."""
    if checkpoint is None:
        return None
    head = f"record {checkpoint.seq} ({checkpoint.hash[:12]})"
    if not tail:
        return Reason.LEDGER_TAIL_MISSING, (
            f"no ledger segment is left, but the operator's checkpoint says the ledger ends at {head}: "
            "the whole ledger was deleted")
    last = tail[-1]
    if last.seq < checkpoint.seq:
        return Reason.LEDGER_TAIL_MISSING, (
            f"the ledger ends at record {last.seq}, the operator's checkpoint at {head}: records "
            f"{last.seq + 1}-{checkpoint.seq} were deleted")
    at = next((i for i, r in enumerate(tail) if r.seq == checkpoint.seq), None)
    if at is None or tail[at].hash != checkpoint.hash or digest(tail[at]) != tail[at].hash:
        return Reason.LEDGER_TAIL_ALTERED, f"the stored record {checkpoint.seq} is not the checkpoint's {head}"
    for before, record in zip(tail[at:], tail[at + 1:], strict=False):
        if record.seq != before.seq + 1 or record.prev != before.hash or not _intact(record, signed):
            return Reason.LEDGER_TAIL_ALTERED, (
                f"record {record.seq}, after the checkpoint's {head}, was not written by the operator")
    return None


@dataclass(frozen=True)
class Segment:
    """A stored segment: its index, name and the seqs of its first and last records."""

    index: int
    name: str
    first_seq: int
    last_seq: int


def _seqs(index: int) -> str:
    return f"records {index * SEGMENT_RECORDS}-{(index + 1) * SEGMENT_RECORDS - 1}"


def missing_segments(segments: Sequence[Segment], checkpoint: LedgerCheckpoint, now: datetime,
                     name: Callable[[int], str]) -> tuple[Finding | None, int]:
    """Segments the checkpoint says exist but are gone, named; and the seq the stored chain may start at (records
    before it expired). A missing oldest segment counts as expired only when the checkpoint records that the
    operator expired it **and** its newest record is older than the retention; otherwise it was removed."""
    last_index = checkpoint.seq // SEGMENT_RECORDS
    expired_below = 0  # the first seq that must still be stored
    if checkpoint.expired_through is not None and checkpoint.expired_newest is not None:
        age = now - parse_timestamp(checkpoint.expired_newest)
        if age.total_seconds() > checkpoint.retention_days * 86400:
            expired_below = checkpoint.expired_through + 1
    first_index = expired_below // SEGMENT_RECORDS
    present = {s.index for s in segments}
    missing = [i for i in range(first_index, last_index + 1) if i not in present]
    head = f"the operator's checkpoint puts the head at record {checkpoint.seq}"
    if not missing:
        return None, expired_below
    first = missing[0]
    seq = max(first * SEGMENT_RECORDS, expired_below)
    names = ", ".join(name(i) for i in missing)
    if not present:
        return Finding("removed", seq, 0, f"the whole ledger is missing: segments {first}-{last_index} "
                                          f"({names}); {head}"), expired_below
    stored_after = [i for i in present if i > first]
    if not stored_after:
        what = (f"the tail is missing: segment {first}" if first == last_index
                else f"the tail is missing: segments {first}-{last_index}")
        return Finding("removed", seq, sum(s.last_seq - s.first_seq + 1 for s in segments),
                       f"{what} ({names}, from record {seq}); {head}"), expired_below
    position = sum(s.last_seq - s.first_seq + 1 for s in segments if s.index < first)
    if first < min(present):  # the oldest expected segment is gone
        if checkpoint.expired_through is None:
            why = "the operator never expired it"
        elif expired_below == 0:
            why = (f"the operator's expiry (records up to {checkpoint.expired_through}, newest at "
                   f"{checkpoint.expired_newest}) is within the retention of {checkpoint.retention_days} days")
        else:
            why = f"the operator expired only records up to {checkpoint.expired_through}"
        return Finding("removed", seq, position, f"segment {first} ({_seqs(first)}, {name(first)}) is missing and "
                                                 f"not expired: {why}"), expired_below
    return Finding("removed", seq, position, f"segment {first} ({_seqs(first)}, {name(first)}) is missing between "
                                             f"the stored segments"), expired_below


# --- what a pass records ---

# Decisions whose record follows the act: a rollback moves traffic first (safer than waiting on a write), and its
# record says so (recordedAfterActing) and is written within the same retry loop.
ACTS_FIRST = frozenset({Reason.ROLLBACK_STARTED, Reason.TRAFFIC_RESTORED, Reason.ROLLBACK_COMPLETE,
                        Reason.CANARY_ABORTED})
KILL_SWITCH_RELEASED = "KillSwitchReleased"


def requested(verb: str) -> str:
    """The decision name of a person's request: PromoteRequested, RollbackRequested, ..."""
    return f"{verb.capitalize()}Requested"


def _version_of(reason: str, old: MLModelStatus, new: MLModelStatus, spec_version: str,
                spec_sha256: str) -> tuple[str, str]:
    rb = new.last_rollback
    if reason in (Reason.ROLLBACK_STARTED, Reason.CANARY_ABORTED) and rb is not None:
        return rb.from_version, rb.from_sha256
    if reason in (Reason.TRAFFIC_RESTORED, Reason.ROLLBACK_COMPLETE) and rb is not None:
        return rb.to_version or "", rb.to_sha256 or ""
    if reason in (Reason.HALTED, Reason.RESUMED) and (new.halt or old.halt) is not None:
        halt = new.halt or old.halt
        assert halt is not None
        return halt.version, halt.sha256
    return spec_version, spec_sha256


def _inputs(reason: str, message: str, old: MLModelStatus, new: MLModelStatus) -> dict[str, str]:
    inputs = {"message": message}
    rb = new.last_rollback
    if reason in ACTS_FIRST and rb is not None:
        inputs |= {"rollback": rb.id, "trigger": rb.trigger, "from": f"{rb.from_version}@{rb.from_sha256}",
                   "to": f"{rb.to_version or '-'}@{rb.to_sha256 or '-'}", "request": rb.request or ""}
        inputs |= {f"value.{k}": v for k, v in sorted(rb.values.items())}
        if rb.accountable:
            inputs["accountable"] = ",".join(rb.accountable)  # who may not resume it under four-eyes
        if rb.traffic_restored_at:
            inputs["trafficRestoredAt"] = rb.traffic_restored_at
    elif reason == Reason.QUORUM_MET:
        inputs |= {f"approval.{a.role}": f"{a.approver} ({a.name or '-'}, {a.approved_at or '-'})"
                   for a in new.approvals}
    elif reason == Reason.STEP_ADVANCED:
        inputs |= {"step": str(new.current_step_index), "canaryWeight": str(new.canary_weight)}
    elif reason == Reason.HALTED and new.halt is not None:
        inputs |= {"halt": new.halt.id, "reason": new.halt.reason}
    elif reason == Reason.RESUMED and old.halt is not None:
        inputs |= {"halt": old.halt.id}
    if new.error_budget is not None and reason in ACTS_FIRST | {Reason.PROMOTED, Reason.STEP_ADVANCED}:
        inputs["errorBudget"] = f"{new.error_budget.remaining_percent}% ({new.error_budget.version})"
    return inputs


def decision_entries(events: Sequence[Event], old: MLModelStatus, new: MLModelStatus, *, spec_version: str,
                     spec_sha256: str, decision_key: str) -> list[Entry]:
    """One entry per Event the engine emitted (every decision it takes is one), and the kill switch's release
    (which emits none). ``decision_key`` names the pass (the model's resourceVersion it decided on): a pass
    retried on the same object records nothing twice."""
    out = []
    for i, event in enumerate(events):
        version, sha256 = _version_of(event.reason, old, new, spec_version, spec_sha256)
        out.append(Entry(decision=event.reason, key=f"{decision_key}/{i}/{event.reason}", version=version,
                         sha256=sha256, outcome=str(new.phase or ""),
                         inputs=_inputs(event.reason, event.message, old, new),
                         recorded_after_acting=event.reason in ACTS_FIRST))
    if old.phase == Phase.DISABLED and new.phase is not None and new.phase != Phase.DISABLED:
        out.append(Entry(decision=KILL_SWITCH_RELEASED, key=f"{decision_key}/{KILL_SWITCH_RELEASED}",
                         version=spec_version, sha256=spec_sha256, outcome=str(new.phase),
                         inputs={"message": "spec.enabled is true again"}))
    return out


def action_entry(handled: HandledAction, *, to: str | None, why: str, sha256: str) -> Entry:
    """A person's request and what came of it; the actor is the requester the API server proved."""
    inputs = {"action": handled.name, "uid": handled.uid, "reason": handled.reason, "message": handled.message}
    if to:
        inputs["to"] = to
    if why:
        inputs["why"] = why
    return Entry(decision=requested(handled.verb), key=f"action/{handled.uid}", actor=user(handled.requester),
                 version=handled.version, sha256=sha256, outcome=str(handled.outcome), inputs=inputs,
                 recorded_after_acting=handled.verb == "enable")

