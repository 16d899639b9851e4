"""Wrap manifests/prometheus/rules.yaml as a PrometheusRule (prometheus-operator) — one source, two shapes.

    python hack/gen_prometheusrule.py > manifests/prometheus/prometheusrule.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def render() -> str:
    rules = yaml.safe_load((ROOT / "manifests" / "prometheus" / "rules.yaml").read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "modelwarden", "labels": {"app.kubernetes.io/part-of": "modelwarden"}},
        "spec": {"groups": rules["groups"]},
    }
    header = "# Generated from rules.yaml by hack/gen_prometheusrule.py (`make rules`). Do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
