"""The ledger's Ed25519 signatures: what the operator signs, a verifier checks against the published keys only."""

from __future__ import annotations

from modelwarden.artifacts.ledger_keys import LedgerSigner, checker
from modelwarden.engine.ledger import Entry, chain, head_of, verify
from tests.unit.test_engine_ledger import T0


def test_a_record_signed_by_the_operator_verifies_against_its_published_key_only() -> None:
    operator, other = LedgerSigner.generate(), LedgerSigner.generate()
    record = chain(None, Entry(decision="QuorumMet", key="k"), model="m", model_uid="u", generation=1, now=T0,
                   key_id=operator.key_id)
    record = record.model_copy(update={"signature": operator.sign(record.hash)})
    published = checker({operator.key_id: operator.public_pem()})
    assert published(record.key_id, record.hash, record.signature)
    assert not published(record.key_id, "0" * 64, record.signature), "a signature covers one hash"
    assert not checker({other.key_id: other.public_pem()})(record.key_id, record.hash, record.signature)
    forged = record.model_copy(update={"signature": other.sign(record.hash)})
    assert not published(forged.key_id, forged.hash, forged.signature)
    assert not published(record.key_id, record.hash, "not base64!")
    assert verify([record], lambda r: published(r.key_id, r.hash, r.signature), head=head_of(record)).ok


def test_the_key_survives_its_pem_and_keeps_its_id() -> None:
    signer = LedgerSigner.generate()
    again = LedgerSigner.from_pem(signer.private_pem())
    assert again.key_id == signer.key_id and len(signer.key_id) == 16
    assert checker({"x": again.public_pem()})(signer.key_id, "h", signer.sign("h"))
