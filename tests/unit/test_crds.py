"""``crds/`` is generated from the pydantic models; these tests keep the two in step."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelwarden.api import crdgen
from modelwarden.api.v1alpha1 import MLModelSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_are_not_stale() -> None:
    for name, crd in crdgen.crds().items():
        path = CRDS / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == crdgen.render(crd), f"{path} is stale: run `make crds`"


def test_schema_is_structural() -> None:
    """No refs, no anyOf/oneOf, a type on every node: what the API server demands of a CRD schema."""
    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
            if "properties" in node or "items" in node:
                assert "type" in node, path
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for name in crdgen.crds():
        walk(yaml.safe_load((CRDS / name).read_text()), name)


def test_a_minimal_model_gets_the_runbook_defaults() -> None:
    spec = MLModelSpec.model_validate({
        "version": "v1",
        "artifact": {"uri": "file:///m.skops", "sha256": "a" * 64},
        "featureContract": {"name": "fc", "features": ["x"], "nFeatures": 1},
    })
    assert spec.approvals.required_roles == ["finance", "regulatory"]
    assert spec.enabled is True
    assert spec.serving.neutral_prediction == "0.0"
    assert spec.slo.objective == "99.9" and spec.slo.window_seconds == 28 * 86400


def test_crd_reference_is_not_stale() -> None:
    from modelwarden.api import docs

    path = CRDS.parent / "docs" / "crd-reference.md"
    assert path.read_text() == docs.render(), f"{path} is stale: run `make docs`"
