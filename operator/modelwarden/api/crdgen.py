"""Render the CRDs from the pydantic models: ``python -m modelwarden.api.crdgen crds/``.

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: ``$ref`` inlined, ``Optional``'s
``anyOf [X, null]`` collapsed to ``X``, titles dropped. CEL rules and list types ride along from the models'
``json_schema_extra``. A unit test fails when ``crds/`` is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelwarden.api import v1alpha1 as api

_DROP = {"title"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline refs and reduce a pydantic JSON Schema to what the API server accepts as structural."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return walk(merged)
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                del rest["default"]
            return walk({**branches[0], **rest})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP or key == "$defs":
                continue
            if key == "properties":
                out[key] = {name: walk(prop) for name, prop in value.items()}
            else:
                out[key] = walk(value)
        if out.get("x-kubernetes-preserve-unknown-fields") and out.get("additionalProperties") is True:
            del out["additionalProperties"]  # an opaque object (e.g. a Job template): not structural otherwise
        if "properties" in out:
            out.setdefault("type", "object")
            if "additionalProperties" in out and out["additionalProperties"] is False:
                del out["additionalProperties"]
        return out

    result = walk(schema)
    assert isinstance(result, dict)
    return result


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def _crd(*, kind: str, plural: str, short_names: list[str], spec: type[BaseModel],
         status: type[BaseModel] | None, columns: list[dict[str, Any]], description: str,
         scope: str = "Namespaced") -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": _schema(spec),
    }
    if status is not None:
        properties["status"] = _schema(status)
    version: dict[str, Any] = {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {
            "type": "object", "description": description, "required": ["spec"], "properties": properties,
        }},
        "additionalPrinterColumns": columns,
    }
    if status is not None:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}", "labels": {"app.kubernetes.io/part-of": "modelwarden"}},
        "spec": {
            "group": api.GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short_names, "categories": ["modelwarden"]},
            "versions": [version],
        },
    }


def _column(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority
    return col


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    age = _column("Age", ".metadata.creationTimestamp", "date")
    return {
        "mlmodels.yaml": _crd(
            kind="MLModel", plural=api.MLMODEL_PLURAL, short_names=["mlm"],
            spec=api.MLModelSpec, status=api.MLModelStatus,
            description="An ML model served by ModelWarden: rolled out as a canary under dual sign-off, "
                        "rolled back to the prior approved SHA256 when a trigger fires.",
            columns=[
                _column("Phase", ".status.phase"),
                _column("Stable", ".status.stable.version"),
                _column("Canary", ".status.canary.version"),
                _column("Weight", ".status.canaryWeight", "integer"),
                _column("Budget", ".status.errorBudget.remainingPercent"),
                age,
            ],
        ),
        "modelapprovals.yaml": _crd(
            kind="ModelApproval", plural=api.APPROVAL_PLURAL, short_names=["mapr"],
            spec=api.ModelApprovalSpec, status=None,
            description="One person's sign-off, in one role, for one exact model version and SHA256. Immutable.",
            columns=[
                _column("Model", ".spec.modelRef.name"),
                _column("Version", ".spec.version"),
                _column("Role", ".spec.role"),
                _column("Approver", ".spec.approver"),
                age,
            ],
        ),
        "modelactions.yaml": _crd(
            kind="ModelAction", plural=api.ACTION_PLURAL, short_names=["mact"],
            spec=api.ModelActionSpec, status=api.ModelActionStatus,
            description="A person's request to promote, roll back, resume or re-enable a model; the API server "
                        "proves the requester. Immutable; the operator acts on it once and records the outcome.",
            columns=[
                _column("Model", ".spec.modelRef.name"),
                _column("Verb", ".spec.verb"),
                _column("Requester", ".spec.requester"),
                _column("Outcome", ".status.outcome"),
                age,
            ],
        ),
        "modelledgers.yaml": _crd(
            kind="ModelLedger", plural=api.LEDGER_PLURAL, short_names=["mledger"],
            spec=api.ModelLedgerSpec, status=None,
            description="One segment of a model's decision ledger: hash-chained records signed by the operator. "
                        "Written only by the operator; not owned by the model.",
            columns=[
                _column("Model", ".spec.modelRef.name"),
                _column("Segment", ".spec.segment", "integer"),
                age,
            ],
        ),
        "modelledgercheckpoints.yaml": _crd(
            kind="ModelLedgerCheckpoint", plural=api.CHECKPOINT_PLURAL, short_names=["mlhead"],
            spec=api.LedgerCheckpoint, status=None, scope="Cluster",
            description="The head of one model's decision ledger as the operator last wrote it, named by the "
                        "model's uid (issue 27). Cluster-scoped and written only by the operator: deleting or "
                        "rewriting a ledger's segments in the model's namespace cannot move it.",
            columns=[_column("Namespace", ".spec.namespace"), _column("Model", ".spec.model"),
                     _column("Seq", ".spec.seq", "integer"), age],
        ),
        "trustpolicies.yaml": _crd(
            kind="TrustPolicy", plural=api.TRUST_PLURAL, short_names=["mwtrust"],
            spec=api.TrustPolicySpec, status=None, scope="Cluster",
            description="The cluster's trust roots (issue 27): the operator keys the decision ledger is verified "
                        "with, and the keys model artifacts must be signed by. Cluster-scoped: model namespaces "
                        "cannot edit it; they may only narrow it.",
            columns=[age],
        ),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `make crds` from operator/modelwarden/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in crds().items():
        (out / name).write_text(render(crd))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
