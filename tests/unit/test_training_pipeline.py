"""`modelwarden train`: same inputs and seed => byte-identical artifacts, in this process and in another one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelwarden.artifacts import read_manifest, read_model_meta, sha256_file, verify_manifest
from modelwarden.cli.main import main
from modelwarden.training.config import TrainingConfig
from modelwarden.training.data import generate, write_csv
from modelwarden.training.pipeline import train

ROOT = Path(__file__).resolve().parents[2]


def config_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": "credit", "version": "1.0.0", "seed": 3, "trained_at": "2026-01-13T02:00:00Z",
        "feature_contract": "credit-v1", "pipeline_commit": "test-commit",
        "data": {"synthetic": {"kind": "credit", "rows": 1500}},
        "bias": {"max_demographic_parity_difference": 0.5, "min_demographic_parity_ratio": 0.5,
                 "max_equalized_odds_difference": 0.5},
    }
    doc.update(overrides)
    return doc


def write_config(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(**overrides)))
    return path


def digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first")
    train(TrainingConfig.model_validate(config_doc()), out)
    return out


def test_layout_and_manifests(first: Path) -> None:
    for fmt, model_file in (("skops", "model.skops"), ("onnx", "model.onnx")):
        directory = first / fmt
        assert sorted(p.name for p in directory.iterdir()) == sorted([
            model_file, "model_meta.json", "manifest.json", "reproducibility-report.json", "bias-report.json",
            "evaluation-report.json", "model-card.json", "model-card.md"])
        assert verify_manifest(directory) == []
        manifest = read_manifest(directory)
        assert (manifest.format, manifest.model_file, manifest.model) == (fmt, model_file, "credit")
        meta = read_model_meta(directory)
        assert meta.features == ("income", "debt_ratio", "utilization", "late_payments", "tenure_years", "age")
        assert meta.n_features == 6 and "group" not in meta.features
        assert meta.trained_at.isoformat() == "2026-01-13T02:00:00+00:00"
        assert set(meta.reference.features) == set(meta.features) and meta.reference.prediction is not None
    shared = [n for n in digests(first / "skops") if not n.startswith(("model.", "manifest"))]
    assert all(sha256_file(first / "skops" / n) == sha256_file(first / "onnx" / n) for n in shared)
    repro = json.loads((first / "skops" / "reproducibility-report.json").read_text())
    assert repro["seed"] == 3 and repro["pipeline_commit"] == "test-commit"
    spec = TrainingConfig.model_validate(config_doc()).data.synthetic
    assert spec is not None and repro["data"]["sha256"] == generate(spec, 3).snapshot_sha256
    assert {"numpy", "scikit-learn", "skops", "skl2onnx", "python"} <= set(repro["libraries"])
    evaluation = json.loads((first / "skops" / "evaluation-report.json").read_text())
    assert evaluation["status"] == "pass" and evaluation["metrics"]["auc"] > 0.7
    assert evaluation["onnx_parity_max_abs_diff"] < 1e-4


def test_two_runs_give_identical_sha256s_in_process(first: Path, tmp_path: Path) -> None:
    train(TrainingConfig.model_validate(config_doc()), tmp_path / "second")
    assert digests(tmp_path / "second") == digests(first)
    assert len(digests(first)) == 16  # 8 files per format: model, meta, 3 reports, card (JSON, Markdown), manifest


def test_another_process_with_another_hash_seed_gives_identical_sha256s(first: Path, tmp_path: Path) -> None:
    """Through the CLI, in a fresh interpreter whose str hashes (set orders) differ."""
    config = write_config(tmp_path / "train.yaml")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "train", str(config), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert digests(tmp_path / "out") == digests(first)
    assert {a["format"]: a["sha256"] for a in result["artifacts"]} == {
        "skops": sha256_file(first / "skops" / "model.skops"), "onnx": sha256_file(first / "onnx" / "model.onnx")}


def test_gradient_boosting_is_deterministic_too(tmp_path: Path) -> None:
    doc = config_doc(estimator={"kind": "gradient_boosting", "params": {"n_estimators": 15, "max_depth": 2}},
                     data={"synthetic": {"kind": "credit", "rows": 600}})
    for run in ("a", "b"):
        train(TrainingConfig.model_validate(doc), tmp_path / run)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert json.loads((tmp_path / "a/skops/model_meta.json").read_text())["estimator"] == \
        "GradientBoostingClassifier"


def test_a_different_seed_gives_a_different_model(first: Path, tmp_path: Path) -> None:
    train(TrainingConfig.model_validate(config_doc(seed=4)), tmp_path / "other")
    assert sha256_file(tmp_path / "other/skops/model.skops") != sha256_file(first / "skops/model.skops")


def test_csv_snapshot_of_the_generated_data_trains_the_same_model(first: Path, tmp_path: Path) -> None:
    spec = TrainingConfig.model_validate(config_doc()).data.synthetic
    assert spec is not None
    csv_sha = write_csv(generate(spec, 3), tmp_path / "applications.csv")
    config = write_config(tmp_path / "train.yaml", data={"path": "applications.csv"})
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 0
    repro = json.loads((tmp_path / "out/skops/reproducibility-report.json").read_text())
    assert repro["data"] == {**repro["data"], "sha256": csv_sha, "source": "file:applications.csv"}
    for name in ("model.skops", "model_meta.json", "bias-report.json", "evaluation-report.json"):
        assert sha256_file(tmp_path / "out/skops" / name) == sha256_file(first / "skops" / name), name


def test_signal_model_reports_a_backtest(tmp_path: Path) -> None:
    doc = config_doc(task="signal", data={"synthetic": {"kind": "signal", "rows": 1600}},
                     acceptance={"min_auc": 0.5, "min_sharpe": -100.0, "max_drawdown": 1.0})
    result = train(TrainingConfig.model_validate(doc), tmp_path)
    evaluation = json.loads((tmp_path / "onnx/evaluation-report.json").read_text())
    assert evaluation["task"] == "signal" and evaluation["split"]["method"] == "chronological"
    backtest = evaluation["backtest"]
    assert set(backtest) >= {"sharpe_ratio", "max_drawdown", "total_return", "periods"}
    assert 0 <= backtest["max_drawdown"] <= 1 and backtest["periods"] == 60
    assert result.features == ("momentum", "value", "carry", "volatility")
    strict = config_doc(task="signal", data={"synthetic": {"kind": "signal", "rows": 1600}},
                        acceptance={"min_auc": 0.5, "min_sharpe": 1000.0})
    assert main(["train", str(write_config(tmp_path / "s.yaml", **strict)), "--out", str(tmp_path / "s")]) == 1


def test_history_chains_to_the_previous_version(first: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "v2.yaml", version="1.1.0")
    assert main(["train", str(config), "--out", str(tmp_path / "v2"), "--previous", str(first)]) == 0
    for fmt in ("skops", "onnx"):
        manifest = read_manifest(tmp_path / "v2" / fmt)
        assert [h.version for h in manifest.history] == ["1.0.0"]
        assert manifest.previous_manifest_sha256 == sha256_file(first / fmt / "manifest.json")
    assert main(["verify-artifacts", str(tmp_path / "v2")]) == 0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"estimator": {"kind": "forest"}}, "estimator.kind"),
    ({"bias": {"max_parity": 0.1}}, "bias.max_parity"),
    ({"data": {"path": "nope.csv"}}, "does not exist"),
    ({"data": {"synthetic": {"rows": 500}}, "trained_at": None, "pipeline_commit": None,
      "feature_contract": None, "data_": 1}, "data_"),
])
def test_bad_configs_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      overrides: dict[str, Any], message: str) -> None:
    config = write_config(tmp_path / "bad.yaml", **overrides)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out")]) == 2
