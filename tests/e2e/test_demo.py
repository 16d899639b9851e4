"""End to end, as `make demo` runs it: real control plane and real node, the operator installed by the Helm chart
as a pod, the model's pods on the real node, Prometheus with the shipped rules, load through the model's Service
ClusterIP (kube-proxy). Errors injected into v2 must bring every answer back to v1's SHA256 (as the answers' headers
say) without anyone acting, halt the model, record the incident, annotate Grafana and page (local receivers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("inject", "trigger"), [("stable", "ErrorBudgetExhausted"),
                                                  ("canary", "CanaryAnalysisFailed")])
def test_errors_in_v2_roll_back_to_v1_by_sha256(inject: str, trigger: str) -> None:
    """Each run arms one trigger (the demo's --trigger; a canary is judged by its analysis), and that one fires. The
    demo's other stable trigger, FastBurn, is tested on a real Prometheus in
    tests/integration/test_rollback_triggers.py (test_fast_burn_trigger_on_backfilled_burn_rates)."""
    args = ["--inject", inject] + (["--trigger", trigger] if inject == "stable" else [])
    done = subprocess.run([sys.executable, "-m", "localenv.demo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    v1 = re.search(r"v1: sha256 ([0-9a-f]{64})", out)
    assert v1 is not None, out
    assert (f"Served now (the last 100 answers through the Service): {v1.group(1)} — v1's sha256 is {v1.group(1)}: "
            "MATCH") in out
    assert re.search(rf"Incident rb-\S+ — {trigger}:", out), out[-3000:]
    assert "TrafficRestored  100% of traffic on v1" in out
    assert "phase Halted" in out
    assert "Grafana annotation received: " in out and "Grafana annotation received: none" not in out
    assert "Page sent (PagerDuty Events v2): " in out and "Page sent (PagerDuty Events v2): none" not in out
