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
