"""The CI gate users drop into their repo runs the same commands as here: every `modelwarden` line of
.github/workflows/ml-governance.yml, in order, on a small config, must exit 0."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml

from modelwarden.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ml-governance.yml"


def commands() -> list[str]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    lines = []
    for step in doc["jobs"]["gate"]["steps"]:
        lines += [line.strip() for line in step.get("run", "").splitlines() if line.strip().startswith("modelwarden ")]
    return lines


def test_the_workflow_gates_release_branches() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    on = doc[True] if True in doc else doc["on"]  # YAML 1.1 reads the key `on` as a boolean
    assert "release/**" in on["push"]["branches"] and "release/**" in on["pull_request"]["branches"]
    subcommands = [c.split()[1] for c in commands()]
    assert subcommands[:2] == ["train", "train"]
    assert {"verify-artifacts", "validate-metadata", "audit-features"} <= set(subcommands)
    assert any("--same-as" in c for c in commands())


def test_every_command_of_the_workflow_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": "credit", "version": "1.0.0", "seed": 2, "trained_at": "2026-01-13T02:00:00Z",
        "feature_contract": "credit-v1", "data": {"synthetic": {"rows": 600}},
        "bias": {"max_demographic_parity_difference": 0.5, "min_demographic_parity_ratio": 0.5,
                 "max_equalized_odds_difference": 0.5}}))
    features = ["income", "debt_ratio", "utilization", "late_payments", "tenure_years", "age"]
    (tmp_path / "contract.json").write_text(json.dumps({"name": "credit-v1", "features": features}))
    (tmp_path / "entities.json").write_text(json.dumps([{"entity_id": i, **dict.fromkeys(features, 1.0)}
                                                        for i in range(20)]))
    env = {"TRAINING_CONFIG": str(config), "OUT": str(tmp_path / "out"), "CONTRACT": str(tmp_path / "contract.json"),
           "FEATURE_AUDIT": str(tmp_path / "entities.json"), "MODELWARDEN_PIPELINE_COMMIT": "0" * 40}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for command in commands():
        argv = shlex.split(os.path.expandvars(command))[1:]
        assert main(argv) == 0, (command, capsys.readouterr())
    repro = json.loads((tmp_path / "out/candidate/skops/reproducibility-report.json").read_text())
    assert repro["pipeline_commit"] == "0" * 40
