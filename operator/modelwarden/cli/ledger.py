"""``modelwarden ledger verify|export MODEL``: the decision ledger, read from the cluster alone (no operator logs).

``verify`` checks the chain (hashes, links, the operator's Ed25519 signatures against the published public keys,
and the head the operator wrote into the MLModel's status) and names the first record altered, removed or
inserted, with the ModelLedger object and index it sits at; exit code 1 when it does not verify.

``export`` writes the records (``-o jsonl``: one record per line, as stored, signatures included, so they can be
verified again offline) or the package a regulator reads (``-o markdown``): the verification result, every
decision with who took it, and per rollback the runbook's post-incident package — the timeline from trigger to
traffic restored, the trigger's values, the affected versions and sha256s, who resumed, and the feedback records
behind it (from the incident's record in the cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts.ledger_keys import PUBLIC_KEYS_CONFIGMAP, checker
from modelwarden.cli.training import CheckOutcome
from modelwarden.engine.ledger import Segment, TrustedKey, Verdict, key_problem, missing_segments, verify


class LedgerError(Exception):
    """The ledger or its public keys could not be read (printed as `error: ...`, exit code 1)."""


def _readable(e: ApiException, what: str) -> LedgerError:
    message = e.reason or ""
    with contextlib.suppress(TypeError, ValueError, KeyError):
        message = json.loads(e.body or "")["message"]
    return LedgerError(f"reading {what}: {message}")


@dataclass(frozen=True)
class Stored:
    records: list[api.LedgerRecord]
    # where each record is: ("ModelLedger <name>" or the file's name, index in it)
    places: list[tuple[str, int]]
    first_seq: int
    model_uid: str | None
    head: api.LedgerHead | None
    segments: list[Segment] = field(default_factory=list)
    checkpoint: api.LedgerCheckpoint | None = None
    model: str = ""


def read(api_client: client.ApiClient, namespace: str, model: str, uid: str | None = None) -> Stored:
    custom = client.CustomObjectsApi(api_client)
    head = None
    if uid is None:
        try:
            obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, model)
            uid = obj["metadata"]["uid"]
            head = api.MLModelStatus.model_validate(obj.get("status") or {}).ledger
        except ApiException as e:
            if e.status != 404:
                raise
    listed: Any = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.LEDGER_PLURAL,
                                                       label_selector=f"{api.LABEL_MODEL}={model}")
    items = [o for o in listed.get("items", []) if uid is None or o["spec"].get("modelUid") == uid]
    if uid is None and items:  # the model is gone: its newest ledger
        uid = max(items, key=lambda o: o["metadata"]["creationTimestamp"])["spec"]["modelUid"]
        items = [o for o in items if o["spec"].get("modelUid") == uid]
    items.sort(key=lambda o: int(o["spec"]["segment"]))
    records, places, segments = [], [], []
    for obj in items:
        stored = [api.LedgerRecord.model_validate(raw) for raw in obj["spec"].get("records") or []]
        for i, record in enumerate(stored):
            records.append(record)
            places.append((f"ModelLedger {obj['metadata']['name']}", i))
        if stored:
            segments.append(Segment(int(obj["spec"]["segment"]), obj["metadata"]["name"], stored[0].seq,
                                    stored[-1].seq))
    checkpoint = None
    if uid is not None:
        try:
            cp: Any = custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.CHECKPOINT_PLURAL, uid)
            checkpoint = api.LedgerCheckpoint.model_validate(cp["spec"])
        except ApiException as e:
            if e.status != 404:
                raise
    first_seq = 0
    if checkpoint is None and items and int(items[0]["spec"]["segment"]) > 0 and records:
        first_seq = records[0].seq  # no checkpoint (a ledger from before issue 27): older segments taken as expired
    if checkpoint is not None:
        head = api.LedgerHead(seq=checkpoint.seq, hash=checkpoint.hash, at=checkpoint.at)
    return Stored(records, places, first_seq, uid, head, segments, checkpoint, model)


def trust_policy(api_client: client.ApiClient) -> dict[str, tuple[TrustedKey, str]]:
    """The ledger keys the cluster's TrustPolicy trusts: key id -> (its window, its PEM). None there: empty."""
    try:
        obj: Any = client.CustomObjectsApi(api_client).get_cluster_custom_object(
            api.GROUP, api.VERSION, api.TRUST_PLURAL, api.TRUST_POLICY_NAME)
    except ApiException as e:
        if e.status == 404:
            return {}
        raise
    spec = api.TrustPolicySpec.model_validate(obj.get("spec") or {})
    return {k.key_id: (TrustedKey(k.key_id, k.not_before, k.not_after), k.public_key) for k in spec.ledger_keys}


def public_keys(api_client: client.ApiClient, key_namespace: str) -> dict[str, str]:
    cm = client.CoreV1Api(api_client).read_namespaced_config_map(PUBLIC_KEYS_CONFIGMAP, key_namespace)
    return dict(cm.data or {})


def check(stored: Stored, keys: dict[str, str], trusted: dict[str, tuple[TrustedKey, str]] | None = None,
          now: dt.datetime | None = None) -> Verdict:
    """``keys``: PEMs trusted as they are (offline: the verifier's own choice); ``trusted``: the TrustPolicy's keys,
    each only within its window (in the cluster; then ``keys`` is not used)."""
    first_seq = stored.first_seq
    if stored.checkpoint is not None:
        finding, first_seq = missing_segments(
            stored.segments, stored.checkpoint, now or dt.datetime.now(dt.UTC),
            lambda i: f"ModelLedger {stored.model}-{(stored.model_uid or '')[:8]}-{i:06d}")
        if finding is not None:
            return Verdict(len(stored.records), stored.head, finding)
        first_seq = stored.records[0].seq if stored.records and first_seq else first_seq
    if trusted is None:
        signature_ok = checker(keys)
        return verify(stored.records, lambda r: signature_ok(r.key_id, r.hash, r.signature), head=stored.head,
                      first_seq=first_seq)
    windows = {kid: key for kid, (key, _) in trusted.items()}
    policy_ok = checker({kid: pem for kid, (_, pem) in trusted.items()})

    def signed(r: api.LedgerRecord) -> bool | str:
        problem = key_problem(windows, r.key_id, r.time)
        if problem is not None:
            published = " (it is only published, not trusted)" if r.key_id in keys else ""
            return problem + published
        return policy_ok(r.key_id, r.hash, r.signature) or f"its signature does not verify under key {r.key_id}"

    return verify(stored.records, signed, head=stored.head, first_seq=first_seq)


def _where(stored: Stored, position: int) -> str:
    if position < len(stored.places):
        name, index = stored.places[position]
        return f"{name}, records[{index}]"
    return "after the last stored record"


def verdict_result(args: argparse.Namespace, stored: Stored, verdict: Verdict) -> dict[str, Any]:
    result: dict[str, Any] = {"model": args.model, "namespace": args.namespace, "modelUid": stored.model_uid,
                              "records": verdict.records, "ok": verdict.ok,
                              "head": verdict.head.wire() if verdict.head else None,
                              "publishedHead": stored.head.wire() if stored.head else None}
    if stored.first_seq:
        result["startsAt"] = stored.first_seq
    if verdict.finding is not None:
        f = verdict.finding
        result["finding"] = {"problem": f.problem, "seq": f.seq, "where": _where(stored, f.position),
                             "detail": f.detail}
    return result


def _offline(args: argparse.Namespace) -> tuple[Stored, Verdict]:
    """``--records FILE`` (an `export -o jsonl`) checked against ``--public-keys FILE`` (a PEM, or the ConfigMap as
    JSON) and ``--head SEQ:HASH``: no cluster needed."""
    if not args.public_keys:
        raise LedgerError("--records needs --public-keys (a PEM, or the ConfigMap as JSON)")
    try:
        lines = [line for line in Path(args.records).read_text().splitlines() if line.strip()]
        records = [api.LedgerRecord.model_validate(json.loads(line)) for line in lines]
        text = Path(args.public_keys).read_text()
    except (OSError, ValueError) as e:
        raise LedgerError(f"reading {args.records} and {args.public_keys}: {e}") from e
    keys: dict[str, str] = {"given": text}
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        keys = dict(doc.get("data", doc))
    head = None
    if args.head:
        seq, _, digest_ = args.head.partition(":")
        head = api.LedgerHead(seq=int(seq), hash=digest_, at="")
    first_seq = records[0].seq if records and args.since_seq else 0
    stored = Stored(records, [(Path(args.records).name, i) for i in range(len(records))], first_seq,
                    records[0].model_uid if records else None, head)
    return stored, check(stored, keys)


def _read_checked(args: argparse.Namespace, api_client: client.ApiClient | None) -> tuple[Stored, Verdict]:
    if getattr(args, "records", None):  # verify only
        return _offline(args)
    assert api_client is not None
    try:
        stored = read(api_client, args.namespace, args.model, args.uid)
    except ApiException as e:
        raise _readable(e, f"the ledger of {args.namespace}/{args.model}") from e
    try:
        trusted = trust_policy(api_client)
    except ApiException as e:
        raise _readable(e, f"the cluster's TrustPolicy {api.TRUST_POLICY_NAME}") from e
    try:
        published = public_keys(api_client, args.key_namespace)
    except ApiException:
        published = {}  # only to say that a key is published but not trusted
    return stored, check(stored, published, trusted)


def cmd_verify(args: argparse.Namespace, api_client: client.ApiClient | None) -> CheckOutcome:
    stored, verdict = _read_checked(args, api_client)
    return CheckOutcome(verdict_result(args, stored, verdict), verdict.ok)


def print_verify(result: dict[str, Any]) -> None:
    where = f"{result['namespace']}/{result['model']}"
    if result["ok"]:
        head = result["head"]
        print(f"ledger of {where} verifies: {result['records']} records"
              + (f", head {head['seq']} {head['hash']}" if head else "")
              + (f" (from record {result['startsAt']}: older segments expired)" if result.get("startsAt") else ""))
        return
    f = result["finding"]
    print(f"ledger of {where} does NOT verify: record {f['seq']} {f['problem']} ({f['where']}): {f['detail']}")


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_export(args: argparse.Namespace, api_client: client.ApiClient) -> dict[str, Any]:
    stored, verdict = _read_checked(args, api_client)
    since = _since(args.since)
    records = [r for r in stored.records if since is None or r.time >= since]
    feedback: dict[str, list[Any]] = {}
    errors: dict[str, str] = {}
    core = client.CoreV1Api(api_client)
    for r in records:
        if r.decision == api.Reason.ROLLBACK_STARTED and "rollback" in r.inputs:
            try:
                cm = core.read_namespaced_config_map(f"{args.model}-{r.inputs['rollback']}", args.namespace)
                feedback[r.inputs["rollback"]] = json.loads((cm.data or {}).get("feedback.json", "{}")).get(
                    "records", [])
            except ApiException as e:
                errors[r.inputs["rollback"]] = f"incident record not readable: {e.status} {e.reason}"
            except ValueError as e:
                errors[r.inputs["rollback"]] = f"incident record is not JSON: {e}"
    return {"verify": verdict_result(args, stored, verdict), "records": [r.wire() for r in records],
            "feedback": feedback, "feedbackErrors": errors, "format": args.output}


def print_export(result: dict[str, Any]) -> None:
    if result["format"] == "jsonl":
        for raw in result["records"]:
            print(json.dumps(raw, sort_keys=True, separators=(",", ":")))
        return
    v = result["verify"]
    records = [api.LedgerRecord.model_validate(r) for r in result["records"]]
    print(f"# Decision ledger of {v['namespace']}/{v['model']}\n")
    print(f"- Model uid: `{v['modelUid']}`")
    if v["ok"]:
        head = v["head"] or {}
        print(f"- Verification: **passed** — {v['records']} records, hash-chained and signed by the operator; "
              f"head {head.get('seq', '-')} `{head.get('hash', '-')}`")
    else:
        f = v["finding"]
        print(f"- Verification: **FAILED** — record {f['seq']} {f['problem']} ({f['where']}): {f['detail']}")
    published = v.get("publishedHead")
    print(f"- Head in the MLModel's status: {published['seq']} `{published['hash']}`" if published
          else "- Head in the MLModel's status: none (model deleted?)")
    print(f"- Records in this export: {len(records)}\n")
    print("## Decisions\n")
    print("| seq | time | actor | decision | version | sha256 | outcome | inputs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        inputs = "; ".join(f"{k}={v}" for k, v in r.inputs.items() if k != "message")
        after = " (recorded after acting)" if r.recorded_after_acting else ""
        print(f"| {r.seq} | {r.time} | {r.actor} | {r.decision}{after} | {r.version} | {r.sha256[:12]} | "
              f"{r.outcome} | {inputs.replace('|', '/')} |")
    rollbacks = [r for r in records if r.decision == api.Reason.ROLLBACK_STARTED]
    for rb in rollbacks:
        rid = rb.inputs.get("rollback", "")
        print(f"\n## Post-incident: rollback {rid}\n")
        print(f"- **Trigger**: {rb.inputs.get('trigger', '')} — {rb.inputs.get('message', '')}")
        values = {k.removeprefix("value."): v for k, v in rb.inputs.items() if k.startswith("value.")}
        if values:
            print("- **Trigger values**: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        print(f"- **Affected versions**: {rb.inputs.get('from', '')} → {rb.inputs.get('to', '')}")
        if rb.inputs.get("request"):
            who = next((r.actor for r in records if r.decision == "RollbackRequested"
                        and rb.inputs["request"].startswith(r.inputs.get("uid", "-"))), "unknown")
            print(f"- **Requested by**: {who}")
        print("\n### Timeline\n")
        related = [r for r in records if r.seq >= rb.seq and (r.inputs.get("rollback") == rid or r.decision in (
            api.Reason.HALTED, api.Reason.RESUMED, "ResumeRequested"))]
        for r in related:
            print(f"- {r.time} — {r.decision} by {r.actor}: {r.inputs.get('message', '')}")
        records_behind = result["feedback"].get(rid) or []
        print(f"\n### Feedback behind it ({len(records_behind)} predictions)\n")
        if rid in result["feedbackErrors"]:
            print(f"- ({result['feedbackErrors'][rid]})")
        for fb in records_behind:
            labels = "; ".join(f"{x.get('stakeholder')}/{x.get('severity')}: {x.get('label')}"
                               for x in fb.get("feedback", []))
            print(f"- `{fb.get('predictionId')}`: {labels}")
        print("\n### Follow-up\n")
        print("- [ ] Decide whether drift contributed; if so, expand the training dataset (runbook: post-incident).")


def add_subcommand(sub: Any, client_of: Any) -> None:
    """``ledger verify`` and ``ledger export`` on the CLI's subparsers; ``client_of(kubeconfig)`` makes the client."""
    ledger = sub.add_parser("ledger", help="the decision ledger: verify its chain, export it for a regulator")
    verbs = ledger.add_subparsers(dest="ledger_command", metavar="VERB", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=None)
    common.add_argument("-n", "--namespace", default="default")
    common.add_argument("--key-namespace", default="modelwarden-system",
                        help=f"where the operator publishes its public keys (ConfigMap {PUBLIC_KEYS_CONFIGMAP})")
    common.add_argument("--uid", default=None, help="the model's uid (default: the MLModel's, or the newest ledger)")
    common.add_argument("model")

    p = verbs.add_parser("verify", parents=[common], help="check the chain; name the first tampered record")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.add_argument("--records", default=None, metavar="FILE",
                   help="offline: check an `export -o jsonl` file instead of the cluster (needs --public-keys)")
    p.add_argument("--public-keys", default=None, metavar="FILE", help="offline: a PEM, or the ConfigMap as JSON")
    p.add_argument("--head", default=None, metavar="SEQ:HASH", help="offline: a head published elsewhere")
    p.add_argument("--since-seq", action="store_true", help="offline: the file starts after record 0 (--since)")
    p.set_defaults(func=lambda args: cmd_verify(args, None if args.records else client_of(args.kubeconfig)),
                   printer=print_verify)

    p = verbs.add_parser("export", parents=[common], help="the records (-o jsonl) or the regulator's package")
    p.add_argument("-o", "--output", choices=["jsonl", "markdown"], default="markdown")
    p.add_argument("--since", default=None, help="RFC 3339 time: only records from then on")
    p.set_defaults(func=lambda args: cmd_export(args, client_of(args.kubeconfig)), printer=print_export)
