"""Entry point of the ``modelwarden`` command (also ``kubectl modelwarden``).

Talks to the cluster of the current kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``).
Every command that changes something creates a ModelApproval or a ModelAction (as you: the API server
proves it) — except `disable`/`enable`, the runbook's emergency kill switch, which sets ``spec.enabled``
(commit the same change to a GitOps repository).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelwarden import __version__
from modelwarden.api import v1alpha1 as api
from modelwarden.cli.evidence import add_subcommand as add_evidence_subcommand
from modelwarden.cli.ledger import LedgerError
from modelwarden.cli.ledger import add_subcommand as add_ledger_subcommand
from modelwarden.cli.training import CheckOutcome, UsageError, add_subcommands


class CLIError(Exception):
    """A failure the user can act on; printed as `error: ...` with exit code 1."""


def _client(kubeconfig: str | None) -> client.ApiClient:
    try:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call,no-any-return]
    except (config.ConfigException, OSError) as e:
        raise CLIError(f"cannot load kubeconfig ({kubeconfig or '$KUBECONFIG or ~/.kube/config'}): {e}") from e


def _api_error(e: ApiException, what: str) -> CLIError:
    message = e.reason or ""
    with contextlib.suppress(TypeError, ValueError, KeyError):
        message = json.loads(e.body or "")["message"]
    hint = ""
    if e.status == 404:
        hint = " (check the name and --namespace)"
    elif e.status == 403:
        hint = " (ask your cluster admin for the modelwarden role you need)"
    return CLIError(f"{what}: {message}{hint}")


def _get_model(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj: Any = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, name)
    except ApiException as e:
        raise _api_error(e, f"reading MLModel {namespace}/{name}") from e
    return dict(obj)


def _whoami(api_client: client.ApiClient) -> str:
    review = client.AuthenticationV1Api(api_client).create_self_subject_review(client.V1SelfSubjectReview())
    user = review.status.user_info if review.status else None
    if user is None or not user.username:
        raise CLIError("the API server did not say who you are (SelfSubjectReview)")
    return str(user.username)


def cmd_approve(args: argparse.Namespace) -> dict[str, Any]:
    api_client = _client(args.kubeconfig)
    model = _get_model(api_client, args.namespace, args.model)
    spec = api.MLModelSpec.model_validate(model["spec"])
    version = args.version or spec.version
    sha256 = args.sha256 or spec.artifact.sha256
    if version != spec.version and not args.sha256:
        raise CLIError(f"--version {version} is not the version in spec ({spec.version}): give --sha256 too")
    approver = _whoami(api_client)
    # What is being signed off: the signer the operator verified for these exact bytes, if a signature is required;
    # the approval counts only under that requirement (issue 27).
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    signer = status.verified_signer if status.verified_sha256 == sha256 else None
    if spec.artifact.signature is not None and signer is None:
        raise CLIError(f"{args.model} requires a signature and the operator has not verified one for sha256 "
                       f"{sha256[:12]} yet: approve once `modelwarden status` shows its signer")
    body = {
        "apiVersion": api.API_VERSION, "kind": "ModelApproval",
        "metadata": {"name": f"{args.model}-{version}-{args.role}-{approver}".lower().replace(":", "-")[:253],
                     "namespace": args.namespace,
                     "labels": {api.LABEL_MODEL: args.model, api.LABEL_VERSION: version}},
        "spec": api.ModelApprovalSpec(model_ref=api.ModelRef(name=args.model), version=version, sha256=sha256,
                                      role=args.role, approver=approver, comment=args.comment,
                                      signer=signer if spec.artifact.signature is not None else None).wire(),
    }
    try:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            api.GROUP, api.VERSION, args.namespace, api.APPROVAL_PLURAL, body)
    except ApiException as e:
        raise _api_error(e, f"approving {args.model} {version} as {args.role}") from e
    return {"approved": args.model, "version": version, "sha256": sha256, "role": args.role, "approver": approver,
            "signer": signer or "none verified"}


def request_action(args: argparse.Namespace, model: dict[str, Any], verb: api.ActionVerb, what: str,
                   to: str | None = None) -> dict[str, Any]:
    """File a ModelAction as yourself, for this very model (its uid: a model re-created under the same name does not
    act on it): the API server proves the requester (admission policy), the operator acts on it once and records
    the outcome in its status and in the decision ledger."""
    api_client = _client(args.kubeconfig)
    requester = _whoami(api_client)
    spec = api.ModelActionSpec(model_ref=api.ModelRef(name=args.model), verb=verb, requester=requester, to=to,
                               reason=getattr(args, "reason", "") or "", model_uid=model["metadata"]["uid"])
    body = {"apiVersion": api.API_VERSION, "kind": "ModelAction",
            "metadata": {"generateName": f"{args.model}-{verb}-", "namespace": args.namespace,
                         "labels": {api.LABEL_MODEL: args.model}},
            "spec": spec.wire()}
    try:
        created: Any = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            api.GROUP, api.VERSION, args.namespace, api.ACTION_PLURAL, body)
    except ApiException as e:
        raise _api_error(e, what) from e
    return {"action": created["metadata"]["name"], "verb": verb, "model": args.model, "requester": requester}


def cmd_promote(args: argparse.Namespace) -> dict[str, Any]:
    api_client = _client(args.kubeconfig)
    model = _get_model(api_client, args.namespace, args.model)
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    if status.canary is None or status.current_step_index is None:
        raise CLIError(f"{args.model} has no canary waiting (phase {status.phase or 'unknown'}): nothing to promote")
    return {**request_action(args, model, "promote", f"promoting {args.model}"), "canary": status.canary.version,
            "step": status.current_step_index + 1}


def cmd_rollback(args: argparse.Namespace) -> dict[str, Any]:
    model = _get_model(_client(args.kubeconfig), args.namespace, args.model)
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    if status.stable is None:
        raise CLIError(f"{args.model} serves nothing yet: there is nothing to roll back")
    if args.to and not any(h.version == args.to for h in status.history):
        known = ", ".join(sorted({h.version for h in status.history}))
        raise CLIError(f"{args.to} is not in {args.model}'s history (known: {known})")
    return {**request_action(args, model, "rollback", f"rolling back {args.model}", to=args.to),
            "from": status.stable.version, "to": args.to or "the previous approved version"}


def cmd_resume(args: argparse.Namespace) -> dict[str, Any]:
    model = _get_model(_client(args.kubeconfig), args.namespace, args.model)
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    if status.halt is None:
        raise CLIError(f"{args.model} is not halted (phase {status.phase or 'unknown'})")
    return {**request_action(args, model, "resume", f"resuming {args.model}"), "halt": status.halt.id,
            "reason": status.halt.reason}


def cmd_reenable(args: argparse.Namespace) -> dict[str, Any]:
    model = _get_model(_client(args.kubeconfig), args.namespace, args.model)
    return request_action(args, model, "enable", f"re-enabling {args.model}")


def _status_of(args: argparse.Namespace) -> tuple[dict[str, Any], api.MLModelStatus]:
    model = _get_model(_client(args.kubeconfig), args.namespace, args.model)
    return model, api.MLModelStatus.model_validate(model.get("status") or {})


def cmd_history(args: argparse.Namespace) -> dict[str, Any]:
    _, status = _status_of(args)
    return {"model": args.model, "history": [h.wire() for h in status.history]}


def _print_history(result: dict[str, Any]) -> None:
    print(f"{'VERSION':<12} {'SHA256':<14} {'OUTCOME':<11} {'DEPLOYED':<21} {'RETIRED':<21} APPROVALS")
    for raw in result["history"]:
        h = api.HistoryEntry.model_validate(raw)
        who = ", ".join(f"{a.role}={a.approver}" for a in h.approvals)
        retired = h.retired_at or "-"
        print(f"{h.version:<12} {h.sha256[:12]:<14} {h.outcome:<11} {h.deployed_at:<21} {retired:<21} {who}")


def cmd_incidents(args: argparse.Namespace) -> dict[str, Any]:
    """The incidents in status, each with its full record (ConfigMap) when it can be read."""
    api_client = _client(args.kubeconfig)
    model = _get_model(api_client, args.namespace, args.model)
    status = api.MLModelStatus.model_validate(model.get("status") or {})
    core = client.CoreV1Api(api_client)
    incidents = []
    for incident in status.incidents:
        entry: dict[str, Any] = incident.wire()
        try:
            record = core.read_namespaced_config_map(f"{args.model}-{incident.id}", args.namespace)
            data = record.data or {}
            if "feedback.json" in data:
                entry["feedbackRecords"] = json.loads(data["feedback.json"]).get("records", [])
        except ApiException as e:
            entry["recordError"] = f"full record not readable: {e.status} {e.reason}"
        incidents.append(entry)
    return {"model": args.model, "namespace": args.namespace, "incidents": incidents}


def _print_incidents_markdown(result: dict[str, Any]) -> None:
    """Markdown for the compliance evidence repository."""
    print(f"# Incidents of {result['namespace']}/{result['model']}\n")
    if not result["incidents"]:
        print("No incidents.")
    for raw in result["incidents"]:
        rb = api.Rollback.model_validate(raw)
        print(f"## {rb.id} — {rb.trigger}\n")
        print(f"- **What**: {rb.message}")
        print(f"- **Rolled back**: {rb.from_version} (sha256 `{rb.from_sha256}`) → "
              f"{rb.to_version or 'none'}{f' (sha256 `{rb.to_sha256}`)' if rb.to_sha256 else ''}")
        print(f"- **Started**: {rb.started_at}; traffic restored: {rb.traffic_restored_at or '-'}; "
              f"completed: {rb.completed_at or '-'}")
        if rb.values:
            print("- **Trigger values**: " + ", ".join(f"{k}={v}" for k, v in sorted(rb.values.items())))
        print("\n| time | event | detail |\n|---|---|---|")
        for t in rb.timeline:
            print(f"| {t.at} | {t.event} | {t.message.replace('|', '/')} |")
        if raw.get("recordError"):
            print(f"\n_{raw['recordError']}_")
        records = raw.get("feedbackRecords") or []
        if records:
            print(f"\nFeedback behind it ({len(records)} predictions):\n")
            for r in records:
                labels = "; ".join(f"{f['stakeholder']}/{f['severity']}: {f['label']}" for f in r["feedback"])
                print(f"- `{r['predictionId']}`: {labels}")
        print()


def cmd_enable(args: argparse.Namespace) -> dict[str, Any]:
    """The kill switch. The one command that writes spec: it is the runbook's emergency procedure; a GitOps
    repository must get the same change, or its next sync undoes it."""
    enabled = args.command == "enable"
    patch = {"spec": {"enabled": enabled}}
    try:
        client.CustomObjectsApi(_client(args.kubeconfig)).patch_namespaced_custom_object(
            api.GROUP, api.VERSION, args.namespace, api.MLMODEL_PLURAL, args.model, patch)
    except ApiException as e:
        raise _api_error(e, f"{args.command} {args.model}") from e
    return {"model": args.model, "enabled": enabled,
            "state": "ENABLED" if enabled else "DISABLED_CONFIG (neutral predictions, within seconds)",
            "gitops": "commit spec.enabled: " + ("true" if enabled else "false") + " too, or a sync reverts it"}


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    model = _get_model(_client(args.kubeconfig), args.namespace, args.model)
    status = model.get("status") or {}
    return {"name": args.model, "namespace": args.namespace, "generation": model["metadata"].get("generation"),
            "spec": {"version": model["spec"]["version"], "sha256": model["spec"]["artifact"]["sha256"]},
            "status": status}


def _print_status(result: dict[str, Any]) -> None:
    status = api.MLModelStatus.model_validate(result["status"])
    print(f"{result['namespace']}/{result['name']}  phase {status.phase or '-'}")
    if status.stable:
        print(f"  stable  {status.stable.version}  sha256 {status.stable.sha256}")
    if status.verified_signer:
        print(f"  signer  {status.verified_signer} (verified with sha256 {status.verified_sha256})")
    if status.canary:
        step = "-" if status.current_step_index is None else status.current_step_index + 1
        print(f"  canary  {status.canary.version}  sha256 {status.canary.sha256}  step {step}  "
              f"weight {status.canary_weight}%")
    if status.shadow:
        sh = status.shadow
        numbers = "  ".join(f"{k} {v}" for k, v in sorted(sh.values.items())) or "no comparison yet"
        print(f"  shadow  {sh.version}  {sh.verdict}  since {sh.started_at}"
              f"{f'  until {sh.finished_at}' if sh.finished_at else ''}  {numbers}")
    for c in status.conditions:
        print(f"  {c.type:<18} {c.status:<7} {c.reason:<22} {c.message}")
    if status.halt:
        print(f"  HALTED by {status.halt.id} ({status.halt.reason}): `modelwarden resume` clears it")
    if status.last_rollback:
        rb = status.last_rollback
        print(f"  last rollback {rb.id}: {rb.from_version} -> {rb.to_version or 'none'} ({rb.trigger}) {rb.message}")
    if status.history:
        print("  history:")
        for h in status.history:
            who = ", ".join(f"{a.role}={a.approver}" for a in h.approvals)
            signed = f"  signed by {h.signer[:16]}" if h.signer else ""
            print(f"    {h.version:<10} {h.sha256[:12]}  {h.outcome:<10} deployed {h.deployed_at}  [{who}]{signed}")
    r = status.retraining
    if r is not None and (r.next_window or r.last_window):
        print(f"  retraining: next window {r.next_window or '-'} ({r.schedule or '-'}); last {r.last_window or '-'}"
              f" {r.last_outcome or ''}")
        for g in r.last_gates:
            print(f"    gate {g.name:<20} {'pass' if g.passed else 'FAIL':<5} {g.message}")
        if r.last_job:
            print(f"    job {r.last_job.name} {r.last_job.outcome} {r.last_job.message}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelwarden", description="Governed ML model rollouts on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"modelwarden {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=None)
    common.add_argument("-n", "--namespace", default="default")
    common.add_argument("-o", "--output", choices=["text", "markdown", "json", "yaml"], default="text",
                        help="text (and markdown) for people, json/yaml for tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("approve", parents=[common], help="sign off a model version in one role, as yourself")
    p.add_argument("model")
    p.add_argument("--role", required=True, help="e.g. finance, regulatory")
    p.add_argument("--version", dest="version", default=None, help="default: the version in the MLModel's spec")
    p.add_argument("--sha256", default=None, help="default: the sha256 in the MLModel's spec")
    p.add_argument("--comment", default="")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("promote", parents=[common], help="release the canary's current manual pause")
    p.add_argument("model")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[common],
                       help="roll back now, by the same path as an automatic rollback (halts the model)")
    p.add_argument("model")
    p.add_argument("--to", default=None, metavar="VERSION", help="an earlier approved version from history")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("resume", parents=[common], help="clear the current halt so rollouts go on")
    p.add_argument("model")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("reenable", parents=[common],
                       help="re-enable the servers after DISABLED_BY_GOVERNANCE (not the kill switch: see enable)")
    p.add_argument("model")
    p.set_defaults(func=cmd_reenable)

    for p in (sub.choices["promote"], sub.choices["rollback"], sub.choices["resume"], sub.choices["reenable"]):
        p.add_argument("--reason", default="", help="why: recorded with your name in the decision ledger")

    p = sub.add_parser("history", parents=[common], help="approved, deployed versions with sha256 and approvers")
    p.add_argument("model")
    p.set_defaults(func=cmd_history, printer=_print_history)

    p = sub.add_parser("incidents", parents=[common],
                       help="rollbacks with their timeline (-o markdown for the evidence repository, or json)")
    p.add_argument("model")
    p.set_defaults(func=cmd_incidents, printer=_print_incidents_markdown)

    for name, text in (("disable", "the kill switch: every replica answers the neutral prediction"),
                       ("enable", "lift the kill switch")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("model")
        p.set_defaults(func=cmd_enable)

    p = sub.add_parser("status", parents=[common], help="phase, versions, steps, conditions and history")
    p.add_argument("model")
    p.set_defaults(func=cmd_status, printer=_print_status)

    add_evidence_subcommand(sub)
    add_ledger_subcommand(sub, _client)
    add_subcommands(sub)  # train, verify-artifacts, audit-features, validate-metadata, sign...: no cluster needed
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result = args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CLIError, LedgerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    code = 0
    if isinstance(result, CheckOutcome):  # a check: its result is printed either way, failure exits 1
        code = 0 if result.ok else 1
        result = result.result
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    elif getattr(args, "printer", None):
        args.printer(result)
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    return code


if __name__ == "__main__":
    sys.exit(main())
