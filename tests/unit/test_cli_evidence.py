"""`modelwarden evidence` usage errors: what a user sees before any cluster or bundle is involved; and the bundle's
decision ledger (pure parts): what is written, and what `evidence verify` re-checks offline."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelwarden.api.v1alpha1 import LedgerRecord
from modelwarden.cli.evidence import _ledger_line, check_chain
from modelwarden.cli.main import main
from modelwarden.engine.ledger import digest, head_of
from modelwarden.evidence.bundle import (
    LEDGER_RECORDS,
    LEDGER_SUMMARY,
    BundleProblem,
    LedgerEvidence,
    _ledger_gaps,
    ledger_members,
    verify_ledger,
)
from tests.unit.test_engine_ledger import ledger


def test_export_needs_a_version_and_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evidence", "m"]) == 2
    assert "needs --version V and -o FILE.tar.gz" in capsys.readouterr().err


def test_verify_refuses_what_is_not_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.tar.gz").write_text("hello")
    assert main(["evidence", "verify", str(tmp_path / "x.tar.gz")]) == 2
    assert "is not a readable .tar.gz" in capsys.readouterr().err
    assert main(["evidence", "verify"]) == 2
    with tarfile.open(tmp_path / "two.tar.gz", "w:gz") as tar:
        for name in ("a/x", "b/y"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    assert main(["evidence", "verify", str(tmp_path / "two.tar.gz")]) == 2
    assert "expected one top directory" in capsys.readouterr().err


def test_a_bundle_without_its_manifest_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("m-v1-evidence/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert main(["evidence", "verify", str(tmp_path / "b.tar.gz"), "--format", "json"]) == 1
    assert '"member": "BUNDLE-MANIFEST.json"' in capsys.readouterr().out


# --- the decision ledger in the bundle (ledger/ledger.json, ledger/records.jsonl) -------------------------------

def _ledger_evidence(n: int = 5, *, head_at: int | None = None) -> LedgerEvidence:
    records = ledger(n)
    head = head_of(records[n - 1 if head_at is None else head_at]) if n else None
    return LedgerEvidence(records, 0, "u1" if n else None, head,
                          {"checked": True, "ok": True, "records": n}, {"k": "PEM"})


def _bundle_dir(tmp_path: Path, version: str, evidence: LedgerEvidence | None) -> tuple[Path, dict[str, Any]]:
    summary, records = ledger_members(version, evidence)
    (tmp_path / "ledger").mkdir(exist_ok=True)
    (tmp_path / "cluster").mkdir(exist_ok=True)
    (tmp_path / LEDGER_SUMMARY).write_text(json.dumps(summary))
    (tmp_path / LEDGER_RECORDS).write_bytes(records)
    status = {"ledger": summary["head"]} if summary["head"] else {}
    (tmp_path / "cluster/mlmodel.json").write_text(json.dumps({"metadata": {"uid": "u1"}, "status": status}))
    return tmp_path, summary


def test_the_bundle_holds_every_record_of_the_model_and_names_the_versions() -> None:
    evidence = _ledger_evidence(5)
    summary, records = ledger_members("v2", evidence)
    lines = records.decode().splitlines()
    assert len(lines) == 5 and [json.loads(line)["seq"] for line in lines] == [0, 1, 2, 3, 4]
    assert LedgerRecord.model_validate(json.loads(lines[3])) == evidence.records[3]  # as stored, signature kept
    assert summary["present"] is True and summary["absentReason"] is None and summary["records"] == 5
    assert summary["versionSeqs"] == [0, 1, 2, 3, 4] and ledger_members("v9", evidence)[0]["versionSeqs"] == []
    assert summary["head"] == head_of(evidence.records[-1]).wire()
    assert summary["verificationAtExport"] == {"checked": True, "ok": True, "records": 5}
    assert summary["publicKeys"] == {"k": "PEM"} and "all records of the model" in summary["slice"]


def test_without_a_ledger_the_bundle_says_so_and_verifies(tmp_path: Path) -> None:
    for evidence in (None, _ledger_evidence(0),
                     LedgerEvidence([], 0, "u1", None, {"checked": False, "reason": "r"}, error="403 Forbidden")):
        summary, records = ledger_members("v2", evidence)
        assert summary["present"] is False and summary["absentReason"] and records == b""
        assert _ledger_gaps(summary) == [f"decision ledger: none in this bundle — {summary['absentReason']}"]
    assert "403 Forbidden" in summary["absentReason"]
    top, _ = _bundle_dir(tmp_path, "v2", _ledger_evidence(0))
    problems: list[BundleProblem] = []
    result = verify_ledger(top, "v2", problems, check_chain)
    assert problems == [] and result["ok"] is True and result["present"] is False
    assert "none — no ModelLedger records" in _ledger_line(result)


def test_an_intact_ledger_verifies_offline_up_to_its_head(tmp_path: Path) -> None:
    top, _ = _bundle_dir(tmp_path, "v2", _ledger_evidence(5))
    problems: list[BundleProblem] = []
    result = verify_ledger(top, "v2", problems, check_chain)
    assert problems == [] and result["ok"] is True and result["reachesHead"] is True and result["records"] == 5
    assert _ledger_line(result) == "5 records, chain intact here, head 4 reached; signatures at export: verified"
    # records written after the head was read (the head is 2 of 0..4): the record at seq 2 must have its hash
    top, _ = _bundle_dir(tmp_path, "v2", _ledger_evidence(5, head_at=2))
    assert verify_ledger(top, "v2", problems, check_chain)["ok"] is True and problems == []


def _rewrite_records(top: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    docs = [json.loads(line) for line in (top / LEDGER_RECORDS).read_text().splitlines()]
    (top / LEDGER_RECORDS).write_text("".join(json.dumps(d) + "\n" for d in change(docs)))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: [*d[:2], {**d[2], "outcome": "Rejected"}, *d[3:]], "record 2 altered (line 3)"),
    (lambda d: [*d[:2], *d[3:]], "record 2 removed (line 3)"),
    (lambda d: [*d[:3], d[2], *d[3:]], "record 2 inserted (line 4)"),
])
def test_a_changed_ledger_fails_offline_naming_the_record(
        tmp_path: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], expected: str) -> None:
    top, _ = _bundle_dir(tmp_path, "v2", _ledger_evidence(5))
    _rewrite_records(top, change)
    problems: list[BundleProblem] = []
    result = verify_ledger(top, "v2", problems, check_chain)
    assert result["ok"] is False
    assert any(p.member == LEDGER_RECORDS and p.problem.startswith(expected) for p in problems), problems


def test_the_head_and_the_summary_must_match_the_records(tmp_path: Path) -> None:
    top, summary = _bundle_dir(tmp_path, "v2", _ledger_evidence(5))
    # the last record rehashed consistently (a forger's chain), but the head recorded at export says otherwise
    _rewrite_records(top, lambda d: [*d[:4], _rehashed({**d[4], "outcome": "Rejected"})])
    problems: list[BundleProblem] = []
    verify_ledger(top, "v2", problems, check_chain)
    assert [str(p) for p in problems] == [
        f"{LEDGER_RECORDS}: record 4 altered (line 5): does not match the published head"]
    # the head in ledger.json is not the MLModel's status.ledger; the counts and version index disagree
    top, summary = _bundle_dir(tmp_path, "v2", _ledger_evidence(5))
    (top / LEDGER_SUMMARY).write_text(json.dumps({**summary, "records": 4, "versionSeqs": [1],
                                                  "head": head_of(ledger(5)[3]).wire()}))
    problems = []
    verify_ledger(top, "v2", problems, check_chain)
    assert {p.problem.split(",")[0] for p in problems if p.member == LEDGER_SUMMARY} == {
        "says 4 records", "versionSeqs are not the records of v2", "head is not cluster/mlmodel.json's status.ledger"}


def _rehashed(doc: dict[str, Any]) -> dict[str, Any]:
    record = LedgerRecord.model_validate(doc)
    return record.model_copy(update={"hash": digest(record)}).wire()
