"""The bias report (group metrics, configurable thresholds, pass/fail) and `modelwarden audit-features`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelwarden.cli.main import main
from modelwarden.training.config import BiasThresholds
from modelwarden.training.metrics import backtest, bias_report


def test_group_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.9, 0.3, 0.2, 0.6])
    labels = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "b"], dtype=object)
    report = bias_report(scores, labels, groups, attribute="group", thresholds=BiasThresholds(min_group_size=4),
                         evaluated_on="hand")
    assert report["groups"] == {
        "a": {"n": 4, "base_rate": 0.5, "selection_rate": 0.5, "tpr": 0.5, "fpr": 0.5},
        "b": {"n": 4, "base_rate": 0.5, "selection_rate": 0.5, "tpr": 0.5, "fpr": 0.5},
    }
    assert report["demographic_parity_difference"] == 0 and report["demographic_parity_ratio"] == 1
    assert report["status"] == "pass" and report["min_group_size"] == 4
    scores[7] = 0.1  # group b selects 1 of 4 now; its FPR drops to 0
    report = bias_report(scores, labels, groups, attribute="group", thresholds=BiasThresholds(min_group_size=5),
                         evaluated_on="hand")
    assert report["demographic_parity_difference"] == pytest.approx(0.25)
    assert report["demographic_parity_ratio"] == pytest.approx(0.5)
    assert report["equalized_odds_difference"] == pytest.approx(0.5)
    assert report["status"] == "fail"
    assert [f.split(" ")[0] for f in report["failures"]] == ["demographic", "demographic", "equalized-odds",
                                                             "groups"]


def test_backtest_sharpe_and_drawdown() -> None:
    scores = np.array([0.9, 0.9, 0.1, 0.9])
    returns = np.array([0.01, -0.02, 0.01, 0.03])  # long, long, short, long
    result = backtest(scores, returns, np.arange(4.0), 0.5)
    daily = np.array([0.01, -0.02, -0.01, 0.03])
    assert result["sharpe_ratio"] == pytest.approx(daily.mean() / daily.std(ddof=1) * np.sqrt(252))
    assert result["max_drawdown"] == pytest.approx(1 - (1.01 * 0.98 * 0.99) / 1.01)
    assert result["periods"] == 4


def _config(path: Path, bias: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "model": "credit", "version": "1.0.0", "seed": 1, "trained_at": "2026-01-13T02:00:00Z",
        "pipeline_commit": "test", "data": {"synthetic": {"rows": 800}}, "bias": bias}))
    return path


def test_tight_thresholds_fail_the_bias_report_and_the_gate(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    tight = {"max_demographic_parity_difference": 0.0001, "min_demographic_parity_ratio": 0.9999,
             "max_equalized_odds_difference": 0.0001, "min_group_size": 100000}
    assert main(["train", str(_config(tmp_path / "t.yaml", tight)), "--out", str(tmp_path / "out")]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["bias_status"] == "fail" and result["ok"] is False
    report = json.loads((tmp_path / "out/skops/bias-report.json").read_text())
    assert report["status"] == "fail" and len(report["failures"]) == 4
    assert report["thresholds"]["max_demographic_parity_difference"] == 0.0001
    assert set(report["groups"]) == {"A", "B"}
    assert main(["verify-artifacts", str(tmp_path / "out")]) == 1
    assert "bias-report.json" in {p["file"] for a in json.loads(capsys.readouterr().out)["artifacts"]
                                  for p in a["problems"]}
    assert main(["verify-artifacts", str(tmp_path / "out"), "--integrity-only"]) == 0


def test_loose_thresholds_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loose = {"max_demographic_parity_difference": 1, "min_demographic_parity_ratio": 0,
             "max_equalized_odds_difference": 1, "min_group_size": 1}
    assert main(["train", str(_config(tmp_path / "l.yaml", loose)), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["bias_status"] == "pass"


# ---------------------------------------------------------------- audit-features

FEATURES = ["income", "debt_ratio", "age"]


def _entities(n: int, incomplete: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"entity_id": f"e{i:03d}", "income": 50.0, "debt_ratio": 0.2, "age": 40}
                                  for i in range(n)]
    for i in range(incomplete):
        if i % 3 == 0:
            del rows[i]["age"]
        elif i % 3 == 1:
            rows[i]["income"] = None
        else:
            rows[i]["debt_ratio"] = "n/a"
    return rows


def _csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [",".join(["entity_id", *FEATURES])]
    lines += [",".join(str(r.get(k) if r.get(k) is not None else "") for k in ["entity_id", *FEATURES]) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("incomplete", "code", "status"), [(0, 0, "pass"), (5, 0, "pass"), (6, 1, "fail"),
                                                           (100, 1, "fail")])
def test_audit_passes_at_95_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str], incomplete: int,
                                    code: int, status: str) -> None:
    rows = _entities(100, incomplete)
    for path in (_csv(tmp_path / "e.csv", rows), tmp_path / "e.json"):
        if path.suffix == ".json":
            path.write_text(json.dumps(rows))
        assert main(["audit-features", str(path), "--features", ",".join(FEATURES)]) == code
        result = json.loads(capsys.readouterr().out)
        assert result["status"] == status and result["entities"] == 100
        assert result["share"] == (100 - incomplete) / 100
        assert len(result["missing"]) == incomplete


def test_audit_lists_what_is_missing_per_entity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contract = tmp_path / "contract.yaml"
    contract.write_text(yaml.safe_dump({"name": "credit-v1", "features": FEATURES, "nFeatures": 3}))
    rows = _entities(10, 3)
    rows.append({"entity_id": "e000", "age": 41})  # a second row of e000 supplies its missing age
    (tmp_path / "e.json").write_text(json.dumps({"entities": rows}))
    assert main(["audit-features", str(tmp_path / "e.json"), "--contract", str(contract)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["missing"] == [{"entity": "e001", "missing_features": ["income"]},
                                 {"entity": "e002", "missing_features": ["debt_ratio"]}]
    assert result["missing_by_feature"] == {"income": 1, "debt_ratio": 1}
    assert result["contract"] == "credit-v1" and result["share"] == 0.8
    assert main(["audit-features", str(tmp_path / "e.json"), "--contract", str(contract),
                 "--threshold", "0.8"]) == 0


def test_audit_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("[]")
    assert main(["audit-features", str(tmp_path / "empty.json"), "--features", "a"]) == 2
    assert main(["audit-features", str(tmp_path / "missing.csv"), "--features", "a"]) == 2
    (tmp_path / "e.json").write_text(json.dumps(_entities(3, 0)))
    assert main(["audit-features", str(tmp_path / "e.json")]) == 2  # no contract given
    assert main(["audit-features", str(tmp_path / "e.json"), "--features", "a,a"]) == 2
