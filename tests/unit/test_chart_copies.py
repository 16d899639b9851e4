"""The chart and the kustomize base carry copies of files whose source of truth lives elsewhere in the repository
(Helm cannot read outside the chart, kustomize refuses files outside a kustomization's root). Every copy must be
byte-identical to its source; the dashboards must be the two the runbooks name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelwarden"

# (source, copy) directories / files, relative to the repository root.
COPIES: list[tuple[str, str]] = [
    ("crds", "charts/modelwarden/crds"),
    ("crds", "manifests/base/crds"),
    ("manifests/rbac/operator-clusterrole.yaml", "charts/modelwarden/files/rbac/operator-clusterrole.yaml"),
    ("manifests/rbac/operator-clusterrole.yaml", "manifests/base/rbac/operator-clusterrole.yaml"),
    ("manifests/rbac/operator-leader-election.yaml", "charts/modelwarden/files/rbac/operator-leader-election.yaml"),
    ("manifests/rbac/operator-leader-election.yaml", "manifests/base/rbac/operator-leader-election.yaml"),
    ("manifests/admission/modelapproval-policy.yaml", "charts/modelwarden/files/admission/modelapproval-policy.yaml"),
    ("manifests/admission/modelapproval-policy.yaml", "manifests/base/admission/modelapproval-policy.yaml"),
    ("manifests/rbac/ledger-public-keys.yaml", "manifests/base/rbac/ledger-public-keys.yaml"),
    ("manifests/rbac/operator-token.yaml", "manifests/base/rbac/operator-token.yaml"),
    ("manifests/admission/modelwarden-action-policy.yaml",
     "charts/modelwarden/files/admission/modelwarden-action-policy.yaml"),
    ("manifests/admission/modelwarden-action-policy.yaml", "manifests/base/admission/modelwarden-action-policy.yaml"),
    ("manifests/prometheus/rules.yaml", "charts/modelwarden/files/prometheus/rules.yaml"),
    ("manifests/prometheus/prometheusrule.yaml", "manifests/overlays/monitoring/prometheusrule.yaml"),
    ("manifests/grafana", "charts/modelwarden/files/dashboards"),
]

DASHBOARDS = {"ml-service-inference-overview.json": "ML Service Inference Overview",
              "model-drift-deep-dive.json": "Model Drift Deep Dive"}


def _files(path: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob(pattern))}


@pytest.mark.parametrize(("source", "copy"), COPIES, ids=[c for _, c in COPIES])
def test_copy_is_identical_to_its_source(source: str, copy: str) -> None:
    src, dst = ROOT / source, ROOT / copy
    fix = f"copy it again: cp {'-r ' if src.is_dir() else ''}{source}{'/*' if src.is_dir() else ''} {copy}"
    if src.is_dir():
        pattern = "*.json" if source.endswith("grafana") else "*.yaml"
        want, have = _files(src, pattern), _files(dst, pattern)
        assert want, f"{source} is empty"
        assert sorted(have) == sorted(want), f"{copy} holds {sorted(have)}, {source} holds {sorted(want)}: {fix}"
        for name, content in want.items():
            assert have[name] == content, f"{copy}/{name} differs from {source}/{name}: {fix}"
    else:
        assert dst.read_bytes() == src.read_bytes(), f"{copy} differs from {source}: {fix}"


def test_the_chart_crds_are_the_generated_crds() -> None:
    """The CRDs the chart installs are exactly `make crds`' output (itself checked against the API models)."""
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        assert (CHART / "crds" / path.name).read_text() == path.read_text(), f"charts/modelwarden/crds/{path.name}"


def test_the_dashboards_are_the_ones_the_runbooks_name() -> None:
    uids = set()
    for name, title in DASHBOARDS.items():
        board = json.loads((ROOT / "manifests" / "grafana" / name).read_text())
        assert board["title"] == title
        uids.add(board["uid"])
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            assert all(t.get("expr", "").strip() for t in panel["targets"]), f"{name}: {panel['title']!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert len(uids) == len(DASHBOARDS)


def test_values_schema_is_json_and_covers_every_top_level_value() -> None:
    import yaml

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])
    # Two standalone operators would both act: the schema refuses a second replica unless leader election is on.
    assert "maximum" not in schema["properties"]["replicaCount"]
    assert schema["if"] == {"properties": {"replicaCount": {"minimum": 2}}, "required": ["replicaCount"]}
    assert schema["then"]["properties"]["leaderElection"]["properties"]["enabled"] == {"const": True}
    assert values["replicaCount"] == 1 and values["leaderElection"]["enabled"] is True
    assert values["metrics"] == {"enabled": True, "port": 8080}


def test_helm_build_script_is_executable() -> None:
    script = ROOT / "hack" / "build-helm.sh"
    assert script.stat().st_mode & 0o111, "chmod +x hack/build-helm.sh"
    assert shutil.which("bash")
