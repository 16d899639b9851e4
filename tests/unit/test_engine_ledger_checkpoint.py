"""Issue 27, the pure rules: the operator's checkpoint against the stored tail, whole segments missing, and keys
trusted only by the cluster's TrustPolicy within their windows. Tables; the real API server story is in
tests/integration/test_ledger_checkpoint.py."""

from __future__ import annotations

import datetime as dt

import pytest

from modelwarden.api.v1alpha1 import LedgerCheckpoint, LedgerRecord, Reason
from modelwarden.engine.ledger import (
    SEGMENT_RECORDS,
    Entry,
    Segment,
    TrustedKey,
    chain,
    key_problem,
    missing_segments,
    retired,
    tail_problem,
)

T0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)


def signed(record: LedgerRecord) -> bool:
    return record.signature == f"sig:{record.hash}"


def ledger(n: int) -> list[LedgerRecord]:
    out: list[LedgerRecord] = []
    for i in range(n):
        r = chain(out[-1] if out else None, Entry(decision="StepAdvanced", key=f"k{i}"), model="fraud",
                  model_uid="u1", generation=1, now=T0 + dt.timedelta(minutes=i))
        out.append(r.model_copy(update={"signature": f"sig:{r.hash}"}))
    return out


def checkpoint_at(record: LedgerRecord, **extra: object) -> LedgerCheckpoint:
    return LedgerCheckpoint.model_validate({"namespace": "ns", "model": "fraud", "modelUid": "u1", "seq": record.seq,
                                            "hash": record.hash, "at": record.time, **extra})


RECORDS = ledger(10)


@pytest.mark.parametrize(("tail", "expected"), [
    (RECORDS, None),                                        # ends at the checkpoint
    (RECORDS + ledger(0), None),
    (RECORDS[:7], Reason.LEDGER_TAIL_MISSING),              # the newest records deleted
    ([], Reason.LEDGER_TAIL_MISSING),                       # the whole ledger deleted
    ([*RECORDS[:9], RECORDS[9].model_copy(update={"outcome": "Rejected"})], Reason.LEDGER_TAIL_ALTERED),
])
def test_the_tail_must_end_at_the_checkpoint(tail: list[LedgerRecord], expected: Reason | None) -> None:
    problem = tail_problem(checkpoint_at(RECORDS[9]), tail, signed)
    assert (problem[0] if problem else None) == expected, problem


def test_records_after_the_checkpoint_count_only_when_the_operator_signed_them() -> None:
    # a crash between writing the segment and its checkpoint: the chain is ahead, signed by the operator
    assert tail_problem(checkpoint_at(RECORDS[7]), RECORDS, signed) is None
    forged = RECORDS[9].model_copy(update={"signature": "sig:someone-else"})
    problem = tail_problem(checkpoint_at(RECORDS[7]), [*RECORDS[:9], forged], signed)
    assert problem is not None and problem[0] == Reason.LEDGER_TAIL_ALTERED and "record 9" in problem[1]


def test_no_checkpoint_is_adopted() -> None:
    assert tail_problem(None, RECORDS[:3], signed) is None


def seg(index: int, count: int = SEGMENT_RECORDS) -> Segment:
    first = index * SEGMENT_RECORDS
    return Segment(index, f"s{index}", first, first + count - 1)


def name(i: int) -> str:
    return f"ModelLedger fraud-{i:06d}"


HEAD = LedgerRecord.model_validate({**RECORDS[0].wire(), "seq": 3 * SEGMENT_RECORDS + 5})
NOW = T0 + dt.timedelta(days=500)


@pytest.mark.parametrize(("present", "extra", "says"), [
    ([seg(0), seg(1), seg(2), seg(3, 6)], {}, None),
    ([seg(0), seg(1), seg(2)], {}, "the tail is missing: segment 3 (ModelLedger fraud-000003, from record 192)"),
    ([seg(0), seg(1)], {}, "the tail is missing: segments 2-3"),
    ([], {}, "the whole ledger is missing: segments 0-3"),
    ([seg(0), seg(2), seg(3, 6)], {}, "segment 1 (records 64-127, ModelLedger fraud-000001) is missing between"),
    ([seg(1), seg(2), seg(3, 6)], {}, "segment 0 (records 0-63, ModelLedger fraud-000000) is missing and not "
                                      "expired: the operator never expired it"),
    # the operator expired segment 0, and its newest record is past the retention: expired, fine
    ([seg(1), seg(2), seg(3, 6)], {"expiredThrough": 63, "expiredNewest": "2027-01-05T00:00:00Z"}, None),
    # the checkpoint says expired, but the dates disagree with the retention (400 days): removed
    ([seg(1), seg(2), seg(3, 6)], {"expiredThrough": 63, "expiredNewest": "2028-01-05T00:00:00Z"},
     "is within the retention of 400 days"),
    # expired through segment 0 only; segment 1 gone too
    ([seg(2), seg(3, 6)], {"expiredThrough": 63, "expiredNewest": "2027-01-05T00:00:00Z"},
     "segment 1 (records 64-127, ModelLedger fraud-000001) is missing and not expired: the operator expired only "
     "records up to 63"),
])
def test_missing_segments_are_named(present: list[Segment], extra: dict[str, object], says: str | None) -> None:
    finding, _ = missing_segments(present, checkpoint_at(HEAD, **extra), NOW, name)
    if says is None:
        assert finding is None, finding
    else:
        assert finding is not None and finding.problem == "removed" and says in finding.detail, finding


KEYS = {"aaaa": TrustedKey("aaaa", "2027-01-01T00:00:00Z", "2027-06-01T00:00:00Z"),
        "bbbb": TrustedKey("bbbb", "2027-05-01T00:00:00Z")}


@pytest.mark.parametrize(("kid", "at", "says"), [
    ("aaaa", "2027-02-01T00:00:00Z", None),
    ("aaaa", "2027-07-01T00:00:00Z", "after key aaaa was retired"),
    ("bbbb", "2027-02-01T00:00:00Z", "before key bbbb was trusted"),
    ("cccc", "2027-02-01T00:00:00Z", "which the cluster's TrustPolicy does not trust"),  # published or ephemeral
])
def test_keys_are_trusted_by_the_policy_within_their_window(kid: str, at: str, says: str | None) -> None:
    problem = key_problem(KEYS, kid, at)
    assert (problem is None) if says is None else (problem is not None and says in problem), problem


def test_a_retired_key_signs_nothing_new() -> None:
    assert retired(KEYS["aaaa"], dt.datetime(2027, 7, 1, tzinfo=dt.UTC))
    assert not retired(KEYS["aaaa"], dt.datetime(2027, 2, 1, tzinfo=dt.UTC))
    assert not retired(KEYS["bbbb"], dt.datetime(2030, 1, 1, tzinfo=dt.UTC)) and not retired(None, T0)
