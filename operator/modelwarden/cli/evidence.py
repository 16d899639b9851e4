"""``modelwarden evidence MODEL --version V -o FILE.tar.gz`` and ``modelwarden evidence verify FILE.tar.gz``.

Export reads the cluster (the MLModel, its ModelApprovals, its incident ConfigMaps and Events, its decision ledger
and the ledger's published public keys) and the artifact directory, and writes the bundle
(:mod:`modelwarden.evidence.bundle`). Verify needs no cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts.ledger_keys import PUBLIC_KEYS_CONFIGMAP
from modelwarden.cli import ledger as ledger_cli
from modelwarden.cli.training import CheckOutcome, UsageError, read_public_keys
from modelwarden.engine.ledger import verify as verify_chain
from modelwarden.evidence.bundle import ClusterRecord, EvidenceError, LedgerEvidence, verify_bundle, write_bundle

KEY_NAMESPACE = "modelwarden-system"


def read_ledger(api_client: client.ApiClient, namespace: str, name: str, model: dict[str, Any],
                key_namespace: str) -> LedgerEvidence:
    """The ledger of the MLModel's uid, its head as in ``model``'s status, and its verification against the
    published keys now; what cannot be read is said in the result, never raised."""
    uid = (model.get("metadata") or {}).get("uid")
    head = api.MLModelStatus.model_validate(model.get("status") or {}).ledger
    try:
        stored = dataclasses.replace(ledger_cli.read(api_client, namespace, name, uid), head=head)
    except ApiException as e:
        return LedgerEvidence([], 0, uid, head, {"checked": False, "reason": "the ledger was not readable"},
                              error=f"ModelLedgers of {namespace}/{name} not readable: {e.status} {e.reason}")
    try:
        # issue 27: the keys the cluster's TrustPolicy trusts (each within its window), not whatever is published
        trusted = ledger_cli.trust_policy(api_client)
    except ApiException as e:
        reason = f"the cluster's TrustPolicy not readable: {e.status} {e.reason}"
        return LedgerEvidence(stored.records, stored.first_seq, uid, head, {"checked": False, "reason": reason})
    keys = {kid: pem for kid, (_, pem) in trusted.items()}
    verdict = ledger_cli.verdict_result(argparse.Namespace(model=name, namespace=namespace), stored,
                                        ledger_cli.check(stored, {}, trusted))
    return LedgerEvidence(stored.records, stored.first_seq, uid, head, {"checked": True, **verdict}, keys)


def check_chain(records: Sequence[api.LedgerRecord], head: api.LedgerHead | None, first_seq: int) -> str | None:
    """The engine's chain rule (hashes, links, head) without signatures: the bundle's offline re-check."""
    f = verify_chain(records, lambda _: True, head=head, first_seq=first_seq).finding
    if f is None:
        return None
    line = f" (line {f.position + 1})" if f.position < len(records) else ""
    return f"record {f.seq} {f.problem}{line}: {f.detail}"


def read_cluster(api_client: client.ApiClient, namespace: str, name: str,
                 key_namespace: str = KEY_NAMESPACE) -> ClusterRecord:
    """Everything the bundle takes from the cluster; what cannot be read is said, not hidden."""
    from modelwarden.cli.main import CLIError, _api_error, _get_model

    model = _get_model(api_client, namespace, name)
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    try:
        listed: Any = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL)
    except ApiException as e:
        raise _api_error(e, f"listing ModelApprovals in {namespace}") from e
    approvals = [a for a in listed.get("items", []) if a.get("spec", {}).get("modelRef", {}).get("name") == name]
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    read_errors: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    ids = {r.id for r in status.incidents} | ({status.last_rollback.id} if status.last_rollback else set())
    for incident_id in sorted(ids):
        try:
            cm = core.read_namespaced_config_map(f"{name}-{incident_id}"[:253], namespace)
        except ApiException as e:
            read_errors.append(f"incident {incident_id}: full record not readable: {e.status} {e.reason}")
            continue
        try:
            records[incident_id] = {k: json.loads(v) for k, v in (cm.data or {}).items()}
        except ValueError as e:
            read_errors.append(f"incident {incident_id}: record is not JSON: {e}")
    try:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=MLModel,involvedObject.name={name}")
        event_docs = [api_client.sanitize_for_serialization(e) for e in events.items]  # type: ignore[no-untyped-call]
    except ApiException as e:
        read_errors.append(f"Events not readable: {e.status} {e.reason}")
        event_docs = []
    if not isinstance(model.get("spec"), dict):
        raise CLIError(f"MLModel {namespace}/{name} has no spec")
    return ClusterRecord(model=model, approvals=approvals, incident_records=records, events=event_docs,
                         read_errors=read_errors,
                         ledger=read_ledger(api_client, namespace, name, model, key_namespace))


def artifact_directory(record: ClusterRecord, version: str, given: Path | None) -> Path:
    """``--artifact`` or, for a ``file://`` URI, the directory of the version's model file."""
    if given is not None:
        return given
    spec = api.MLModelSpec.model_validate(record.model["spec"])
    status = api.MLModelStatus.model_validate(record.model.get("status") or {})
    uri = next((h.uri for h in reversed(status.history) if h.version == version),
               spec.artifact.uri if spec.version == version else None)
    if uri is None:
        raise UsageError(f"version {version} is neither in the MLModel's spec nor in its history")
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise UsageError(f"{version}'s artifact is at {uri}: fetch that directory and give it as --artifact DIR")
    return Path(unquote(parsed.path)).parent


def cmd_evidence(args: argparse.Namespace) -> dict[str, Any] | CheckOutcome:
    from modelwarden.cli.main import _client

    if args.target == "verify":
        return cmd_evidence_verify(args)
    if args.version is None or args.out is None:
        raise UsageError("modelwarden evidence MODEL needs --version V and -o FILE.tar.gz")
    keys = read_public_keys(args.public_key or [])
    record = read_cluster(_client(args.kubeconfig), args.namespace, args.target, args.key_namespace)
    artifact = artifact_directory(record, args.version, args.artifact)
    if not artifact.is_dir():
        raise UsageError(f"artifact directory {artifact} does not exist (give it as --artifact DIR)")
    try:
        return write_bundle(args.out, namespace=args.namespace, name=args.target, version=args.version,
                            record=record, artifact=artifact, trusted_keys=keys,
                            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0))
    except EvidenceError as e:
        raise UsageError(str(e)) from e


def cmd_evidence_verify(args: argparse.Namespace) -> CheckOutcome:
    if args.bundle is None:
        raise UsageError("modelwarden evidence verify FILE.tar.gz")
    keys = read_public_keys(args.public_key or [])
    try:
        result = verify_bundle(args.bundle, keys, check_chain)
    except EvidenceError as e:
        raise UsageError(str(e)) from e
    return CheckOutcome(result, bool(result["ok"]))


def _print(result: dict[str, Any]) -> None:
    if "problems" in result:  # verify
        verdict = "OK" if result["ok"] else "FAILED"
        print(f"{verdict}: {result['bundle']} — {result['namespace']}/{result['model']} {result['version']} "
              f"sha256 {result['sha256']}")
        print(f"  bundle manifest sha256 {result['bundleManifestSha256']}")
        sig = result["signature"]
        print(f"  signature: {sig.get('reason', 'not checked')} {sig.get('message', '')}")
        for a in result["approvals"]:
            counted = "" if a["counts"] else " (not counted: another sha256)"
            print(f"  approval {a['role']}: {a['approver']} at {a['createdAt']}{counted}")
        print(f"  ledger: {_ledger_line(result.get('ledger') or {})}")
        for p in result["problems"]:
            print(f"  PROBLEM {p['member']}: {p['problem']}")
        return
    print(f"wrote {result['bundle']}: {result['members']} members, bundle manifest sha256 "
          f"{result['bundleManifestSha256']} (record it in the change ticket)")
    ledger = result["ledger"]
    if ledger["present"]:
        print(f"  decision ledger: {ledger['records']} records ({len(ledger['versionSeqs'])} of this version), "
              f"verified at export: {ledger['verifiedAtExport']}")
    for gap in result["gaps"]:
        print(f"  gap: {gap}")


def _ledger_line(ledger: dict[str, Any]) -> str:
    if not ledger.get("included"):
        return str(ledger.get("message", "not in this bundle"))
    if not ledger.get("present"):
        return f"none — {ledger.get('absentReason')}"
    at_export = ledger.get("verificationAtExport") or {}
    export = ("verified" if at_export.get("ok") else "did NOT verify") if at_export.get("checked") \
        else f"not verified ({at_export.get('reason')})"
    head = ledger.get("head")
    chain = ("intact" if ledger["ok"] else "BROKEN") if ledger.get("chainChecked") else "not re-checked"
    return (f"{ledger['records']} records, chain {chain} here"
            + (f", head {head['seq']} {'reached' if ledger['reachesHead'] else 'NOT reached'}" if head else
               ", no head in the MLModel's status")
            + f"; signatures at export: {export}")


def add_subcommand(sub: Any) -> None:
    """``-o`` is the bundle file here, so the report's format is ``--format`` (text or json)."""
    p = sub.add_parser("evidence",
                       help="write a version's evidence bundle (-o FILE.tar.gz), or `evidence verify FILE` offline")
    p.add_argument("target", metavar="MODEL|verify", help="the MLModel, or `verify` to check a bundle")
    p.add_argument("bundle", nargs="?", type=Path, default=None, metavar="FILE", help="(verify) the bundle")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--format", dest="output", choices=["text", "json", "yaml"], default="text")
    p.add_argument("--version", default=None, help="the version whose evidence to export")
    p.add_argument("-o", "--out", dest="out", type=Path, default=None, metavar="FILE.tar.gz")
    p.add_argument("--artifact", type=Path, default=None, metavar="DIR",
                   help="the version's artifact directory (default: from a file:// URI in the MLModel)")
    p.add_argument("--key-namespace", default=KEY_NAMESPACE,
                   help=f"where the operator publishes the ledger's public keys (ConfigMap {PUBLIC_KEYS_CONFIGMAP})")
    p.add_argument("--public-key", type=Path, action="append", default=None, metavar="PUB",
                   help="trusted PEM public key for the artifact signature (repeat for several)")
    p.set_defaults(func=cmd_evidence, printer=_print)
