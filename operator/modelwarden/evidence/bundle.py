"""Write and verify the evidence bundle of one model version.

Layout (one top directory, ``<model>-<version>-evidence/``):

* ``BUNDLE-MANIFEST.json`` — every other member with its sha256 and size (the bundle's own manifest);
* ``change-record.json`` and ``README.md`` — the runbook's change record: what is being (or was) deployed,
  its sha256, the manifest's sha256, the signer, the approvals with identities, the outcome, and what the
  cluster could no longer tell (``gaps``);
* ``artifact/`` — the artifact directory as signed: model file, ``manifest.json`` (every sha256, history),
  ``model_meta.json``, the reproducibility, bias and evaluation reports, the model card, ``model.sig``;
* ``signature-verification.json`` — the verification at export time (when trusted keys were given);
* ``cluster/mlmodel.json``, ``cluster/approvals.json``, ``cluster/events.json`` — the objects as read;
* ``analysis.json`` — the canary's steps and verdicts as far as the cluster still records them;
* ``incidents/<id>.json`` — each incident of the version: timeline, trigger values, the feedback records;
* ``ledger/records.jsonl`` — the decision ledger (issue 18): **all** records of the model (its uid) still stored, as
  stored (signatures included; the format of ``modelwarden ledger export -o jsonl``), not just the version's —
  ``ledger/ledger.json`` names the version's own records (``versionSeqs``);
* ``ledger/ledger.json`` — whether a ledger exists (``present``, and why not), the head as read from the MLModel's
  ``status.ledger``, the verification against the operator's published public keys at export, and those keys.

``verify_bundle`` needs nothing but the file and, for the signature, the trusted public keys. It names each
member that is missing, unlisted, altered or inconsistent with the rest, and re-checks the ledger's records
offline: their hashes, their links, and the recorded head (the record at the head's seq has the head's hash). The
records' signatures were checked at export; ``modelwarden ledger verify --records ledger/records.jsonl
--public-keys KEYS`` re-checks them with keys the reader trusts.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts import (
    MANIFEST_FILENAME,
    SIGNATURE_FILENAME,
    read_manifest,
    sha256_bytes,
    sha256_file,
    verify_manifest,
)
from modelwarden.artifacts.signing import verify_directory_signature
from modelwarden.training.card import CARD_JSON, check_model_card

BUNDLE_MANIFEST: Final = "BUNDLE-MANIFEST.json"
BUNDLE_SCHEMA: Final = "modelwarden.io/evidence-bundle/v1"
CHANGE_RECORD: Final = "change-record.json"
SIGNATURE_VERIFICATION: Final = "signature-verification.json"
ANALYSIS: Final = "analysis.json"
ARTIFACT_DIR: Final = "artifact"
LEDGER_RECORDS: Final = "ledger/records.jsonl"
LEDGER_SUMMARY: Final = "ledger/ledger.json"
LEDGER_SLICE: Final = ("all records of the model (its uid) still stored, oldest to newest; versionSeqs are this "
                       "version's")

# Events that tell the story of a rollout; the reasons are the operator's own (api.Reason).
ROLLOUT_REASONS: Final = frozenset({
    api.Reason.QUORUM_MET, api.Reason.AWAITING_APPROVAL, api.Reason.SHA256_MISMATCH, api.Reason.DEPLOYING,
    api.Reason.STEP_ADVANCED, api.Reason.ANALYSIS_PENDING, api.Reason.PROMOTING, api.Reason.PROMOTED,
    api.Reason.DEPLOYED, api.Reason.CANARY_ABORTED, api.Reason.ROLLBACK_STARTED, api.Reason.TRAFFIC_RESTORED,
    api.Reason.ROLLBACK_COMPLETE, api.Reason.TARGET_SHA256_MISMATCH, api.Reason.METRICS_UNAVAILABLE,
})
ANALYSIS_GAP: Final = (
    "the operator keeps no per-step canary analysis verdicts: the Events show when each step was entered "
    "and when it waited for a verdict (AnalysisPending), a failed analysis is a rollback with its trigger and "
    "values (incidents/), but whether analysis ran for a step (a metrics source configured) and its numbers "
    "are not recorded; Events also expire after the API server's event TTL (1h by default), so older steps "
    "are missing here")


class EvidenceError(ValueError):
    """The bundle cannot be written from what was given (a usage error)."""


@dataclass(frozen=True)
class ClusterRecord:
    """What the caller read from the cluster for one model."""

    model: dict[str, Any]  # the MLModel object
    approvals: list[dict[str, Any]]  # ModelApproval objects of the model (any version)
    incident_records: dict[str, dict[str, Any]]  # incident id -> its ConfigMap's data, parsed
    events: list[dict[str, Any]]  # core/v1 Events whose involvedObject is the MLModel
    read_errors: list[str] = field(default_factory=list)  # what could not be read, said in the bundle
    ledger: LedgerEvidence | None = None  # None: not read


@dataclass(frozen=True)
class LedgerEvidence:
    """The model's decision ledger as read at export, and its verification then."""

    records: list[api.LedgerRecord]  # every stored record of the model's uid, in chain order
    first_seq: int  # the seq the stored chain starts at (> 0: older segments expired)
    model_uid: str | None
    head: api.LedgerHead | None  # the MLModel's status.ledger, as read
    # ``modelwarden ledger verify``'s result against the published keys, or {"checked": False, "reason": ...}
    verdict: dict[str, Any]
    public_keys: dict[str, str] = field(default_factory=dict)  # key id -> PEM, as published
    error: str | None = None  # why the ledger could not be read


# The ledger's chain rule lives in the engine, which this package does not import: the caller passes it.
# ``(records, head, first_seq)`` -> None when hashes, links and head hold, else "record SEQ PROBLEM (line N): ...".
ChainCheck = Callable[[Sequence[api.LedgerRecord], api.LedgerHead | None, int], str | None]


@dataclass(frozen=True)
class BundleProblem:
    member: str
    problem: str

    def __str__(self) -> str:
        return f"{self.member}: {self.problem}"


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """A cluster object without the noise that proves nothing (managed fields)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _mentions(text: str, version: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(version)}(?![\w-]|\.\w)", text) is not None


def _approval_view(obj: dict[str, Any], sha256: str) -> dict[str, Any]:
    spec = api.ModelApprovalSpec.model_validate(obj["spec"])
    meta = obj.get("metadata") or {}
    return {"name": meta.get("name"), "uid": meta.get("uid"), "createdAt": meta.get("creationTimestamp"),
            "role": spec.role, "approver": spec.approver, "comment": spec.comment, "version": spec.version,
            "sha256": spec.sha256, "counts": spec.sha256 == sha256,
            "identity": "spec.approver equals the requesting user, enforced by the ValidatingAdmissionPolicy"}


def _incident(rollback: api.Rollback, record: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"incident": rollback.wire()}
    if record is None:
        doc["recordError"] = "the full record (ConfigMap) could not be read: this is the status summary only"
        return doc
    if "incident.json" in record:
        doc["incident"] = record["incident.json"]
    doc["feedbackRecords"] = (record.get("feedback.json") or {}).get("records", [])
    return doc


def _jsonl(records: Sequence[api.LedgerRecord]) -> bytes:
    return "".join(json.dumps(r.wire(), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
                   for r in records).encode()


def ledger_members(version: str, ledger: LedgerEvidence | None) -> tuple[dict[str, Any], bytes]:
    """``ledger/ledger.json`` and ``ledger/records.jsonl``; without records the summary says why."""
    if ledger is None:
        ledger = LedgerEvidence([], 0, None, None, {"checked": False, "reason": "the ledger was not read"})
    absent = None
    if ledger.error:
        absent = ledger.error
    elif not ledger.records:
        absent = ("no ModelLedger records for this model: the operator kept no decision ledger for it (before "
                  "issue 18, or without a ledger key), or they were deleted")
    summary = {"present": absent is None, "absentReason": absent, "slice": LEDGER_SLICE,
               "modelUid": ledger.model_uid, "firstSeq": ledger.first_seq, "records": len(ledger.records),
               "versionSeqs": [r.seq for r in ledger.records if r.version == version],
               "head": ledger.head.wire() if ledger.head else None, "verificationAtExport": ledger.verdict,
               "publicKeys": ledger.public_keys}
    return summary, _jsonl(ledger.records)


def _ledger_gaps(summary: dict[str, Any]) -> list[str]:
    if not summary["present"]:
        return [f"decision ledger: none in this bundle — {summary['absentReason']}"]
    verdict = summary["verificationAtExport"]
    if not verdict.get("checked"):
        return [f"decision ledger: signatures not verified at export — {verdict.get('reason')}"]
    return []


def _change_record(namespace: str, name: str, version: str, record: ClusterRecord, created_at: dt.datetime,
                   signature: dict[str, Any] | None, artifact: Path, ledger: dict[str, Any]) -> dict[str, Any]:
    spec = api.MLModelSpec.model_validate(record.model["spec"])
    status = api.MLModelStatus.model_validate(record.model.get("status") or {})
    entry = next((h for h in reversed(status.history) if h.version == version), None)
    if entry is not None:
        sha256, uri, fmt = entry.sha256, entry.uri, entry.format
    elif spec.version == version:
        sha256, uri, fmt = spec.artifact.sha256, spec.artifact.uri, spec.artifact.format
    else:
        known = sorted({h.version for h in status.history} | {spec.version})
        raise EvidenceError(f"{namespace}/{name} has no version {version} in spec or history (known: {known})")
    manifest = read_manifest(artifact)
    gaps = [ANALYSIS_GAP, *record.read_errors, *_ledger_gaps(ledger)]
    if signature is None:
        gaps.append("the signature was not verified at export (no trusted public key given); "
                    "`modelwarden evidence verify --public-key` checks it")
    return {
        "schema": BUNDLE_SCHEMA, "model": name, "namespace": namespace, "version": version, "sha256": sha256,
        "uri": uri, "format": fmt, "manifestSha256": sha256_file(artifact / MANIFEST_FILENAME),
        "modelFile": manifest.model_file, "exportedAt": created_at.isoformat(),
        "inSpec": spec.version == version, "history": entry.wire() if entry else None,
        "requiredRoles": list(spec.approvals.required_roles),
        "approvals": [_approval_view(a, sha256) for a in record.approvals
                      if a.get("spec", {}).get("version") == version],
        "signer": signature.get("signerFingerprint") if signature else None,
        "signatureVerified": signature.get("ok") if signature else None,
        "ledger": {"present": ledger["present"], "records": ledger["records"], "head": ledger["head"],
                   "verifiedAtExport": ledger["verificationAtExport"].get("ok"),
                   "versionSeqs": ledger["versionSeqs"]},
        "gaps": gaps,
    }


def _event_order(event: dict[str, Any]) -> tuple[str, int]:
    """Time, then the API server's write order (timestamps have one-second resolution)."""
    version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
    return str(event.get("firstTimestamp") or event.get("eventTime") or ""), int(version) if version.isdigit() else 0


def _analysis(version: str, record: ClusterRecord, incidents: list[api.Rollback]) -> dict[str, Any]:
    events = sorted((e for e in record.events
                     if e.get("reason") in ROLLOUT_REASONS and _mentions(e.get("message") or "", version)),
                    key=_event_order)
    steps = [{"at": e.get("firstTimestamp") or e.get("eventTime"), "reason": e["reason"], "type": e.get("type"),
              "message": e.get("message")} for e in events]
    return {"version": version, "steps": steps,
            "analysisFailures": [{"incident": r.id, "trigger": r.trigger, "message": r.message, "values": r.values}
                                 for r in incidents if "analysis" in r.trigger.lower()],
            "gap": ANALYSIS_GAP}


def _readme(change: dict[str, Any], analysis: dict[str, Any], incidents: list[dict[str, Any]]) -> str:
    lines = [f"# Evidence: {change['namespace']}/{change['model']} {change['version']}", "",
             f"- sha256 of `{change['modelFile']}`: `{change['sha256']}`",
             f"- manifest.json sha256: `{change['manifestSha256']}`",
             f"- signer key fingerprint: {change['signer'] or 'not verified at export'}",
             f"- exported at {change['exportedAt']}", "",
             "Check it offline: `modelwarden evidence verify THIS.tar.gz --public-key TRUSTED.pub`", "",
             "## Approvals", "", "| role | approver | at | counts for this sha256 |", "|---|---|---|---|"]
    lines += [f"| {a['role']} | {a['approver']} | {a['createdAt']} | {'yes' if a['counts'] else 'no'} |"
              for a in change["approvals"]]
    history = change["history"]
    lines += ["", "## Deployment", "",
              (f"deployed {history['deployedAt']}, outcome {history['outcome']}"
               + (f", retired {history['retiredAt']}" if history.get("retiredAt") else "")) if history
              else "not deployed (yet)", "", "## Canary analysis", ""]
    lines += [f"- {s['at']} {s['reason']}: {s['message']}" for s in analysis["steps"]] or ["- no Events left"]
    lines += ["", "## Incidents", ""]
    for doc in incidents:
        inc = doc["incident"]
        lines.append(f"- {inc['id']} ({inc['trigger']}): {inc['message']}; "
                     f"{len(doc.get('feedbackRecords') or [])} feedback records")
    if not incidents:
        lines.append("- none")
    ledger = change["ledger"]
    lines += ["", "## Decision ledger", ""]
    if ledger["present"]:
        head = ledger["head"]
        verified = {True: "verified", False: "did NOT verify", None: "not verified"}[ledger["verifiedAtExport"]]
        lines += [f"- `ledger/records.jsonl`: all {ledger['records']} records of the model still stored; "
                  f"this version's: seq {', '.join(map(str, ledger['versionSeqs'])) or 'none'}",
                  "- head in the MLModel's status: " + (f"{head['seq']} `{head['hash']}`" if head else "none"),
                  f"- at export the chain {verified} against the operator's published public keys "
                  "(`ledger/ledger.json`)"]
    else:
        lines.append("- none: see Gaps")
    lines += ["", "## Gaps", ""] + [f"- {g}" for g in change["gaps"]]
    lines += ["", "## Runbook change record", "",
              "| runbook item | in this bundle |", "|---|---|",
              "| updated model manifest | `artifact/manifest.json` |",
              "| SHA256 integrity proof per artifact | `artifact/manifest.json` (every file), "
              "`BUNDLE-MANIFEST.json` (every member), `artifact/model.sig` + `signature-verification.json` |",
              "| reproducibility summary | `artifact/reproducibility-report.json`, `artifact/model-card.md` |",
              "| dual sign-off | `change-record.json` approvals, `cluster/approvals.json` |"]
    return "\n".join(lines) + "\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_bundle(out: str | Path, *, namespace: str, name: str, version: str, record: ClusterRecord,
                 artifact: str | Path, trusted_keys: Sequence[bytes] = (),
                 created_at: dt.datetime) -> dict[str, Any]:
    """Write the bundle to ``out``; returns the change record plus the bundle manifest's sha256."""
    out, artifact = Path(out), Path(artifact)
    problems = verify_manifest(artifact)
    if problems:
        raise EvidenceError(f"artifact {artifact} does not match its manifest: {'; '.join(map(str, problems))}")
    signature = verify_directory_signature(artifact, trusted_keys).to_dict() if trusted_keys else None
    ledger, ledger_records = ledger_members(version, record.ledger)
    change = _change_record(namespace, name, version, record, created_at, signature, artifact, ledger)
    model_sha = sha256_file(artifact / change["modelFile"])
    if model_sha != change["sha256"]:
        raise EvidenceError(f"{artifact / change['modelFile']} has sha256 {model_sha}, but {version} is "
                            f"{change['sha256']} in the cluster: not the artifact of this version")
    status = api.MLModelStatus.model_validate(record.model.get("status") or {})
    rollbacks = {r.id: r for r in [*status.incidents, *([status.last_rollback] if status.last_rollback else [])]}
    mine = [r for r in rollbacks.values() if version in (r.from_version, r.to_version)]
    incidents = [_incident(r, record.incident_records.get(r.id)) for r in sorted(mine, key=lambda r: r.started_at)]
    analysis = _analysis(version, record, mine)

    members: dict[str, bytes | Path] = {
        CHANGE_RECORD: _dump(change),
        "README.md": _readme(change, analysis, incidents).encode(),
        SIGNATURE_VERIFICATION: _dump(signature or {"checked": False}),
        ANALYSIS: _dump(analysis),
        "cluster/mlmodel.json": _dump(_strip(record.model)),
        "cluster/approvals.json": _dump([_strip(a) for a in record.approvals
                                         if a.get("spec", {}).get("version") == version]),
        "cluster/events.json": _dump([e for e in record.events if _mentions(e.get("message") or "", version)]),
        LEDGER_SUMMARY: _dump(ledger),
        LEDGER_RECORDS: ledger_records,
    }
    for doc in incidents:
        members[f"incidents/{doc['incident']['id']}.json"] = _dump(doc)
    for path in sorted(p for p in artifact.rglob("*") if p.is_file()):
        members[f"{ARTIFACT_DIR}/{path.relative_to(artifact).as_posix()}"] = path
    listing = [{"path": m, "sha256": sha256_bytes(d) if isinstance(d, bytes) else sha256_file(d),
                "size": len(d) if isinstance(d, bytes) else d.stat().st_size} for m, d in sorted(members.items())]
    bundle_manifest = _dump({"schema": BUNDLE_SCHEMA, "model": name, "namespace": namespace, "version": version,
                             "sha256": change["sha256"], "createdAt": created_at.isoformat(), "files": listing})
    top = f"{name}-{version}-evidence"
    mtime = created_at.timestamp()
    partial = out.with_name(out.name + ".partial")
    # Reproducible bytes: fixed member order, times, owners and modes; no gzip timestamp.
    with partial.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{top}/{BUNDLE_MANIFEST}", bundle_manifest, mtime)
        for member, data in sorted(members.items()):
            _add(tar, f"{top}/{member}", data if isinstance(data, bytes) else data.read_bytes(), mtime)
    partial.replace(out)
    return {**change, "bundle": str(out), "bundleManifestSha256": sha256_bytes(bundle_manifest),
            "members": len(members) + 1}


# --- verification -------------------------------------------------------------------------------------------


def _extract(bundle: Path, into: Path) -> tuple[str, list[BundleProblem]]:
    """Extract safely; the one top directory's name and what is wrong with the archive's shape."""
    problems: list[BundleProblem] = []
    try:
        with tarfile.open(bundle, mode="r:gz") as tar:
            members = tar.getmembers()
            tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
            if len(tops) != 1:
                raise EvidenceError(f"{bundle}: expected one top directory, found {sorted(tops) or 'none'}")
            for m in members:
                if not m.isfile():
                    problems.append(BundleProblem(m.name, "not a regular file (ignored)"))
            tar.extractall(into, members=[m for m in members if m.isfile()], filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EvidenceError(f"{bundle} is not a readable .tar.gz: {e}") from e
    return tops.pop(), problems


def verify_bundle(bundle: str | Path, trusted_keys: Sequence[bytes] = (),
                  chain_check: ChainCheck | None = None) -> dict[str, Any]:
    """Check a bundle offline. ``ok`` is False with each problem naming its member if anything is wrong;
    without ``trusted_keys`` the signature is reported as not checked (everything else still is); without
    ``chain_check`` the ledger's chain is not re-checked (said in ``ledger``)."""
    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="mw-evidence-") as tmp:
        top_name, problems = _extract(bundle, Path(tmp))
        top = Path(tmp) / top_name
        result = _verify_tree(top, trusted_keys, problems, chain_check)
    return {"bundle": str(bundle), **result}


def _verify_tree(top: Path, trusted_keys: Sequence[bytes], problems: list[BundleProblem],
                 chain_check: ChainCheck | None) -> dict[str, Any]:
    try:
        manifest_bytes = (top / BUNDLE_MANIFEST).read_bytes()
        listing = json.loads(manifest_bytes)
        files = {f["path"]: f for f in listing["files"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(BundleProblem(BUNDLE_MANIFEST, f"missing or unreadable: {e}"))
        return _result(problems, None, None, None)
    present = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()} - {BUNDLE_MANIFEST}
    for member in sorted(present - files.keys()):
        problems.append(BundleProblem(member, "present but not listed in BUNDLE-MANIFEST.json"))
    for member, entry in sorted(files.items()):
        if member not in present:
            problems.append(BundleProblem(member, "listed in BUNDLE-MANIFEST.json but missing"))
            continue
        actual = sha256_file(top / member)
        if actual != entry.get("sha256"):
            problems.append(BundleProblem(
                member, f"sha256 {actual} != {entry.get('sha256')} listed in {BUNDLE_MANIFEST}: altered"))

    artifact = top / ARTIFACT_DIR
    for p in verify_manifest(artifact):
        problems.append(BundleProblem(f"{ARTIFACT_DIR}/{p.path}", p.problem))
    for path, problem in check_model_card(artifact):
        problems.append(BundleProblem(f"{ARTIFACT_DIR}/{path}", problem))

    change: dict[str, Any] = {}
    try:
        change = json.loads((top / CHANGE_RECORD).read_bytes())
        model_file, sha = change["modelFile"], change["sha256"]
        if sha256_file(artifact / model_file) != sha:
            problems.append(BundleProblem(f"{ARTIFACT_DIR}/{model_file}", f"is not the approved sha256 {sha}"))
        if listing.get("sha256") != sha:
            problems.append(BundleProblem(CHANGE_RECORD, f"sha256 {sha} differs from the bundle manifest's"))
        if change.get("manifestSha256") != sha256_file(artifact / MANIFEST_FILENAME):
            problems.append(BundleProblem(CHANGE_RECORD, "manifestSha256 is not artifact/manifest.json's"))
        card = json.loads((artifact / CARD_JSON).read_bytes())
        if card.get("version") != change["version"]:
            problems.append(BundleProblem(f"{ARTIFACT_DIR}/{CARD_JSON}",
                                          f"is the card of {card.get('version')}, not {change['version']}"))
        for a in change.get("approvals", []):
            if a["counts"] and a["sha256"] != sha:
                problems.append(BundleProblem(CHANGE_RECORD, f"approval {a['name']} counted for another sha256"))
        counted_roles = {a["role"] for a in change.get("approvals", []) if a["counts"]}
        approvers = [a["approver"] for a in change.get("approvals", []) if a["counts"]]
        if len(set(approvers)) != len(approvers):
            problems.append(BundleProblem(CHANGE_RECORD, "one person approved in more than one role"))
        missing_roles = sorted(set(change.get("requiredRoles", [])) - counted_roles)
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(BundleProblem(CHANGE_RECORD, f"missing or unreadable: {e}"))
        missing_roles = []

    signature: dict[str, Any] | None = None
    if trusted_keys:
        signature = verify_directory_signature(artifact, trusted_keys).to_dict()
        if not signature["ok"]:
            problems.append(BundleProblem(f"{ARTIFACT_DIR}/{SIGNATURE_FILENAME}",
                                          f"{signature['reason']}: {signature['message']}"))
    ledger = verify_ledger(top, str(change.get("version", "")), problems, chain_check) \
        if LEDGER_SUMMARY in files else {
        "included": False, "message": "no ledger/ in this bundle (written before the ledger was bundled)"}
    result = _result(problems, change, signature, sha256_bytes(manifest_bytes))
    result["approvalRolesMissing"] = missing_roles
    result["ledger"] = ledger
    return result


def verify_ledger(top: Path, version: str, problems: list[BundleProblem],
                  chain_check: ChainCheck | None) -> dict[str, Any]:
    """Re-check ``ledger/`` offline: hashes and links of the records, the recorded head when the records reach
    it (the record at its seq has its hash), and the summary against the records and ``cluster/mlmodel.json``.
    Records that end before the head are reported (``reachesHead``), as the verification at export did.
    Appends each problem; returns what was found."""
    try:
        summary = json.loads((top / LEDGER_SUMMARY).read_bytes())
        lines = [line for line in (top / LEDGER_RECORDS).read_text().splitlines() if line.strip()]
        records = [api.LedgerRecord.model_validate(json.loads(line)) for line in lines]
        head = api.LedgerHead.model_validate(summary["head"]) if summary.get("head") else None
        first_seq = int(summary["firstSeq"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(BundleProblem(LEDGER_RECORDS, f"ledger not readable: {e}"))
        return {"included": True, "ok": False}
    found: list[BundleProblem] = []
    if summary.get("records") != len(records):
        found.append(BundleProblem(LEDGER_SUMMARY, f"says {summary.get('records')} records, "
                                                   f"{LEDGER_RECORDS} holds {len(records)}"))
    if not summary.get("present") and records:
        found.append(BundleProblem(LEDGER_SUMMARY, "says no ledger exists, but records are included"))
    if any(r.model_uid != summary.get("modelUid") for r in records):
        found.append(BundleProblem(LEDGER_RECORDS, f"holds records of another model than {summary.get('modelUid')}"))
    if summary.get("versionSeqs") != [r.seq for r in records if r.version == version]:
        found.append(BundleProblem(LEDGER_SUMMARY, f"versionSeqs are not the records of {version}"))
    try:
        model = json.loads((top / "cluster/mlmodel.json").read_bytes())
        if (model.get("status") or {}).get("ledger") != summary.get("head"):
            found.append(BundleProblem(LEDGER_SUMMARY, "head is not cluster/mlmodel.json's status.ledger"))
    except (OSError, ValueError, AttributeError) as e:
        found.append(BundleProblem("cluster/mlmodel.json", f"not readable: {e}"))
    reaches = head is not None and bool(records) and records[-1].seq >= head.seq
    chain = chain_check(records, head if reaches else None, first_seq) if chain_check else None
    if chain is not None:
        found.append(BundleProblem(LEDGER_RECORDS, chain))
    problems.extend(found)
    return {"included": True, "present": bool(summary.get("present")), "absentReason": summary.get("absentReason"),
            "records": len(records), "head": summary.get("head"),
            "reachesHead": reaches,
            "ok": not found, "chainChecked": chain_check is not None,
            "verificationAtExport": summary.get("verificationAtExport"),
            "signatures": "checked at export (verificationAtExport); re-check them with a trusted key: "
                          f"modelwarden ledger verify --records {LEDGER_RECORDS} --public-keys KEYS"
                          + (" --since-seq" if first_seq else "")}


def _result(problems: list[BundleProblem], change: dict[str, Any] | None, signature: dict[str, Any] | None,
            manifest_sha: str | None) -> dict[str, Any]:
    change = change or {}
    return {
        "ok": not problems, "model": change.get("model"), "namespace": change.get("namespace"),
        "version": change.get("version"), "sha256": change.get("sha256"), "bundleManifestSha256": manifest_sha,
        "signature": signature or {"checked": False, "message": "no --public-key given: the signature was not "
                                                                  "checked (everything else was)"},
        "approvals": [{k: a[k] for k in ("role", "approver", "createdAt", "counts")}
                      for a in change.get("approvals", [])],
        "problems": [{"member": p.member, "problem": p.problem} for p in problems],
    }
