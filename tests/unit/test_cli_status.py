"""`modelwarden status` text output: what an on-call engineer reads at a glance."""

from __future__ import annotations

import pytest

from modelwarden.cli.main import _print_status


def test_status_shows_versions_history_and_the_retraining_gates(capsys: pytest.CaptureFixture[str]) -> None:
    approvals = [{"role": "finance", "approver": "ann", "approvedAt": "2027-01-01T00:00:00Z"},
                 {"role": "regulatory", "approver": "rob", "approvedAt": "2027-01-01T00:00:00Z"}]
    status = {
        "phase": "Stable",
        "stable": {"version": "v1", "sha256": "a" * 64, "uri": "file:///m/v1"},
        "history": [{"version": "v1", "sha256": "a" * 64, "uri": "file:///m/v1", "approvals": approvals,
                     "deployedAt": "2027-01-01T00:00:00Z", "outcome": "Serving"}],
        "retraining": {
            "schedule": "0 2 * * 2#2", "nextWindow": "2027-02-09T02:00:00Z", "lastWindow": "2027-01-12T02:00:00Z",
            "lastOutcome": "GatesFailed",
            "lastGates": [{"name": "ErrorBudget", "passed": False, "message": "fell to 14.0%"},
                          {"name": "BiasReport", "passed": True, "message": "status pass"}],
        },
    }
    _print_status({"namespace": "risk", "name": "scorer", "status": status})
    out = capsys.readouterr().out
    assert "risk/scorer  phase Stable" in out
    assert "finance=ann, regulatory=rob" in out
    assert "next window 2027-02-09T02:00:00Z (0 2 * * 2#2)" in out
    assert "GatesFailed" in out
    assert "gate ErrorBudget" in out and "FAIL" in out and "fell to 14.0%" in out


def test_status_shows_the_shadow_stage_and_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    status = {
        "phase": "Progressing",
        "stable": {"version": "v1", "sha256": "a" * 64, "uri": "file:///m/v1"},
        "canary": {"version": "v2", "sha256": "b" * 64, "uri": "file:///m/v2"},
        "currentStepIndex": 0, "canaryWeight": 0,
        "shadow": {"version": "v2", "startedAt": "2027-01-01T00:00:00Z", "verdict": "Running",
                   "values": {"compared": "812", "minCompared": "500", "decisionAgreement": "0.991",
                              "p99ScoreDifference": "0.004", "scorePsi": "0.01", "featureMismatches": "0"}},
    }
    _print_status({"namespace": "risk", "name": "scorer", "status": status})
    out = capsys.readouterr().out
    assert "shadow  v2  Running  since 2027-01-01T00:00:00Z" in out
    assert "compared 812" in out and "decisionAgreement 0.991" in out and "scorePsi 0.01" in out
    assert "weight 0%" in out
