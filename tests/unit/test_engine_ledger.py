"""The decision ledger's chain: records link by hash; verify names the first altered, removed or inserted record.

Signatures here are a stand-in (``sig:<hash>``, which only "the operator" below writes); the Ed25519 signer and its
check are tested in test_ledger_signing.py and against the real API server in tests/integration/test_ledger.py.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelwarden.api.v1alpha1 import LedgerRecord
from modelwarden.engine.ledger import GENESIS, Entry, chain, digest, head_of, user, verify

T0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)


def signed(record: LedgerRecord) -> bool:
    return record.signature == f"sig:{record.hash}"


def sign(record: LedgerRecord) -> LedgerRecord:
    return record.model_copy(update={"signature": f"sig:{record.hash}"})


def ledger(n: int) -> list[LedgerRecord]:
    records: list[LedgerRecord] = []
    for i in range(n):
        entry = Entry(decision="StepAdvanced" if i % 2 else "QuorumMet", key=f"k{i}",
                      actor=user("finance-approver") if i % 3 == 0 else "operator", version="v2", sha256="ab" * 32,
                      inputs={"step": str(i)})
        records.append(sign(chain(records[-1] if records else None, entry, model="fraud", model_uid="u1",
                                  generation=2, now=T0 + dt.timedelta(minutes=i))))
    return records


def altered(records: list[LedgerRecord], i: int, **change: object) -> list[LedgerRecord]:
    out = list(records)
    out[i] = out[i].model_copy(update=change)
    return out


def test_a_chain_links_each_record_to_the_one_before() -> None:
    records = ledger(4)
    assert records[0].prev == GENESIS and [r.seq for r in records] == [0, 1, 2, 3]
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))
    assert all(digest(r) == r.hash for r in records)
    verdict = verify(records, signed, head=head_of(records[-1]))
    assert verdict.ok and verdict.head == head_of(records[-1])


CHAIN = ledger(6)
FORGED = sign(chain(CHAIN[2], Entry(decision="Promoted", key="forged"), model="fraud", model_uid="u1",
                    generation=2, now=T0)).model_copy(update={"signature": "sig:someone else"})
REHASHED = CHAIN[3].model_copy(update={"outcome": "Rejected"})
REHASHED = REHASHED.model_copy(update={"hash": digest(REHASHED)})

# (case, tampered records, published head or None, expected (problem, seq, position))
TAMPERING: list[tuple[str, list[LedgerRecord], bool, tuple[str, int, int]]] = [
    ("an input changed", altered(CHAIN, 2, inputs={"step": "9"}), True, ("altered", 2, 2)),
    ("the actor changed", altered(CHAIN, 0, actor="user:someone"), True, ("altered", 0, 0)),
    ("the outcome changed and the hash recomputed (no key: signature fails)", altered(CHAIN, 3, **{
        "outcome": REHASHED.outcome, "hash": REHASHED.hash}), True, ("altered", 3, 3)),
    ("the last record changed", altered(CHAIN, 5, decision="Halted"), True, ("altered", 5, 5)),
    ("a middle record deleted", CHAIN[:2] + CHAIN[3:], True, ("removed", 2, 2)),
    ("the first record deleted", CHAIN[1:], True, ("removed", 0, 0)),
    ("the last record deleted (the published head names it)", CHAIN[:5], True, ("removed", 5, 5)),
    ("a forged record inserted", [*CHAIN[:3], FORGED, *CHAIN[3:]], True, ("inserted", 3, 3)),
    ("a forged record appended", [*CHAIN, FORGED], True, ("inserted", 3, 6)),
    ("a real record repeated", [*CHAIN[:4], CHAIN[1], *CHAIN[4:]], True, ("inserted", 1, 4)),
    ("two records swapped", [*CHAIN[:2], CHAIN[3], CHAIN[2], *CHAIN[4:]], True, ("removed", 2, 2)),
]


@pytest.mark.parametrize(("case", "records", "with_head", "expected"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_names_the_first_tampered_record(case: str, records: list[LedgerRecord], with_head: bool,
                                                expected: tuple[str, int, int]) -> None:
    verdict = verify(records, signed, head=head_of(CHAIN[-1]) if with_head else None)
    assert verdict.finding is not None, case
    assert (verdict.finding.problem, verdict.finding.seq, verdict.finding.position) == expected, str(verdict.finding)


def test_a_chain_kept_from_a_later_record_on_verifies_from_there() -> None:
    """Retention deletes whole old segments: the rest verifies, from the seq it starts at."""
    assert verify(CHAIN[2:], signed, head=head_of(CHAIN[-1]), first_seq=2).ok
    assert not verify(CHAIN[2:], signed, head=head_of(CHAIN[-1])).ok


def test_the_hash_covers_every_field_but_hash_and_signature() -> None:
    record = CHAIN[1]
    for name, value in [("seq", 7), ("time", "2030-01-01T00:00:00Z"), ("actor", "user:x"), ("model", "m"),
                        ("modelUid", "u2"), ("version", "v9"), ("sha256", "cd" * 32), ("generation", 9),
                        ("decision", "Halted"), ("outcome", "x"), ("inputs", {"a": "b"}), ("key", "k"),
                        ("recordedAfterActing", True), ("prev", "1" * 64), ("keyId", "other")]:
        changed = LedgerRecord.model_validate({**record.model_dump(by_alias=True), name: value})
        assert digest(changed) != record.hash, name
    assert digest(record.model_copy(update={"signature": "x"})) == record.hash


@given(n=st.integers(min_value=1, max_value=25), data=st.data())
def test_any_single_deletion_is_named(n: int, data: st.DataObject) -> None:
    records = ledger(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    verdict = verify(records[:i] + records[i + 1:], signed, head=head_of(records[-1]))
    assert verdict.finding is not None and verdict.finding.problem == "removed" and verdict.finding.seq == i


@given(n=st.integers(min_value=1, max_value=25), data=st.data(),
       field=st.sampled_from(["actor", "decision", "outcome", "version", "key"]), value=st.text(max_size=8))
def test_any_single_alteration_is_named(n: int, data: st.DataObject, field: str, value: str) -> None:
    records = ledger(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    if getattr(records[i], field) == value:
        return
    verdict = verify(altered(records, i, **{field: value}), signed, head=head_of(records[-1]))
    assert verdict.finding is not None and (verdict.finding.problem, verdict.finding.seq) == ("altered", i)


@given(n=st.integers(min_value=2, max_value=25), data=st.data())
def test_any_single_insertion_is_named_where_it_is(n: int, data: st.DataObject) -> None:
    records = ledger(n)
    at = data.draw(st.integers(min_value=0, max_value=n))
    fake = records[min(at, n - 1)].model_copy(update={"key": "forged", "signature": "sig:not the operator"})
    verdict = verify([*records[:at], fake, *records[at:]], signed, head=head_of(records[-1]))
    assert verdict.finding is not None and (verdict.finding.problem, verdict.finding.position) == ("inserted", at)


@given(n=st.integers(min_value=0, max_value=30))
def test_an_untouched_chain_always_verifies(n: int) -> None:
    records = ledger(n)
    assert verify(records, signed, head=head_of(records[-1]) if records else None).ok
