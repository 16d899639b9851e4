"""The GitOps story end to end (`python -m localenv.demo --gitops`): every change a Git commit that a real Flux
applies, on the real node, load through the model's Service. Errors injected into v2's canary roll back to v1 by
sha256 with nobody acting; Flux reports the MLModel's Stalled reason and never rewrites the model (its applies
and the operator's writes are counted); a fixed v3 resumes; a withdrawn approval rolls nothing back; a pruned
MLModel takes its pods and incident records with it and leaves its ledger."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The story is ~10 min; run alone (not after make test's background build) it may first wait for the Flux build.
pytestmark = pytest.mark.timeout(3600)


def test_commits_through_flux_roll_out_roll_back_and_resume() -> None:
    done = subprocess.run([sys.executable, "-m", "localenv.demo", "--gitops"], cwd=ROOT, capture_output=True,
                          text=True, timeout=3500, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-5000:] + done.stderr[-5000:]
    stalled = re.search(r"MLModel Stalled: (\w+) — ", out)
    assert stalled is not None and stalled.group(1) == "CanaryAnalysisFailed", out[-4000:]
    assert re.search(r"Kustomization models: Ready=False HealthCheckFailed — .*failed early due to stalled "
                     r"resources: \[MLModel/demo-\w+/fraud-scorer status: 'Failed'\]", out), out[-4000:]
    generations = re.search(r"Generation before the injection (\d+), after the rollback (\d+); spec.version v2; "
                            r"spec owned by \['kustomize-controller'\]", out)
    assert generations is not None and generations.group(1) == generations.group(2), out[-4000:]
    assert "operator: " in out and re.search(r"spec writes 0\b", out), out[-4000:]
    assert "Approval withdrawn: phase Stable" in out and "MLModel spec not written; rollbacks since: none" in out
    assert "deleted with it (owner references)" in out and "decision ledger: " in out
    counts = re.search(r"writes seen on the MLModel: (\{.*\})", out)
    assert counts is not None and json.loads(counts.group(1))["spec"] == 2, out[-3000:]
