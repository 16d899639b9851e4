"""The numbers in ``bias-report.json`` and ``evaluation-report.json``: group fairness, acceptance, backtest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from modelwarden.training.config import AcceptanceConfig, BiasThresholds, Task

Floats = npt.NDArray[np.float64]
TRADING_DAYS = 252


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def bias_report(scores: Floats, labels: Floats, groups: npt.NDArray[Any], *, attribute: str,
                thresholds: BiasThresholds, evaluated_on: str) -> dict[str, Any]:
    """Per-group selection rate, TPR and FPR at the decision threshold, and the gaps between groups.

    * demographic parity difference: max - min selection rate; ratio: min / max (1 when nobody is selected)
    * equalized-odds difference: the larger of the TPR gap and the FPR gap
    """
    predicted = scores >= thresholds.decision_threshold
    truth = labels >= 0.5
    per_group: dict[str, dict[str, Any]] = {}
    for g in sorted({str(v) for v in groups.tolist()}):
        mask = np.array([str(v) == g for v in groups.tolist()], dtype=bool)
        pos, neg = mask & truth, mask & ~truth
        per_group[g] = {
            "n": int(mask.sum()),
            "base_rate": _rate(int(pos.sum()), int(mask.sum())),
            "selection_rate": _rate(int((predicted & mask).sum()), int(mask.sum())),
            "tpr": _rate(int((predicted & pos).sum()), int(pos.sum())),
            "fpr": _rate(int((predicted & neg).sum()), int(neg.sum())),
        }

    def spread(key: str) -> float:
        values = [m[key] for m in per_group.values() if m[key] is not None]
        return max(values) - min(values) if values else 0.0

    selection = [m["selection_rate"] for m in per_group.values() if m["selection_rate"] is not None]
    dp_diff = spread("selection_rate")
    dp_ratio = (min(selection) / max(selection)) if selection and max(selection) > 0 else 1.0
    eo_diff = max(spread("tpr"), spread("fpr"))
    min_size = min(m["n"] for m in per_group.values()) if per_group else 0
    failures = []
    if len(per_group) < 2:
        failures.append(f"fewer than two groups of {attribute!r} in the evaluation data: nothing to compare")
    if dp_diff > thresholds.max_demographic_parity_difference:
        failures.append(f"demographic parity difference {dp_diff:.4f} > "
                        f"{thresholds.max_demographic_parity_difference}")
    if dp_ratio < thresholds.min_demographic_parity_ratio:
        failures.append(f"demographic parity ratio {dp_ratio:.4f} < {thresholds.min_demographic_parity_ratio}")
    if eo_diff > thresholds.max_equalized_odds_difference:
        failures.append(f"equalized-odds difference {eo_diff:.4f} > {thresholds.max_equalized_odds_difference}")
    small = [g for g, m in per_group.items() if m["n"] < thresholds.min_group_size]
    if small:
        failures.append(f"groups smaller than {thresholds.min_group_size}: {small}")
    return {
        "schema": "modelwarden.io/bias-report/v1",
        "status": "fail" if failures else "pass",
        "protected_attribute": attribute,
        "evaluated_on": evaluated_on,
        "thresholds": thresholds.model_dump(),
        "groups": per_group,
        "demographic_parity_difference": dp_diff,
        "demographic_parity_ratio": dp_ratio,
        "equalized_odds_difference": eo_diff,
        "min_group_size": min_size,
        "failures": failures,
    }


def classifier_metrics(scores: Floats, labels: Floats, threshold: float) -> dict[str, float | int | None]:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    truth = (labels >= 0.5).astype(int)
    predicted = (scores >= threshold).astype(int)
    tp = int(((predicted == 1) & (truth == 1)).sum())
    fp = int(((predicted == 1) & (truth == 0)).sum())
    fn = int(((predicted == 0) & (truth == 1)).sum())
    both = len(set(truth.tolist())) == 2
    return {
        "n": len(truth),
        "positive_rate": float(truth.mean()),
        "auc": float(roc_auc_score(truth, scores)) if both else None,
        "accuracy": float((predicted == truth).mean()),
        "precision": _rate(tp, tp + fp),
        "recall": _rate(tp, tp + fn),
        "brier": float(brier_score_loss(truth, scores)),
        "log_loss": float(log_loss(truth, np.clip(scores, 1e-12, 1 - 1e-12), labels=[0, 1])),
    }


def backtest(scores: Floats, forward_returns: Floats, periods: Floats, threshold: float) -> dict[str, float | int]:
    """Long when the score is at or above the threshold, short otherwise; equal weight across the assets of
    a period. Sharpe is annualised (252 periods); max drawdown is the largest peak-to-trough fall of the
    compounded equity curve, as a fraction of the peak."""
    position = np.where(scores >= threshold, 1.0, -1.0)
    pnl = position * forward_returns
    order = sorted(set(periods.tolist()))
    daily = np.array([float(pnl[periods == p].mean()) for p in order], dtype=np.float64)
    std = float(daily.std(ddof=1)) if len(daily) > 1 else 0.0
    sharpe = float(daily.mean()) / std * math.sqrt(TRADING_DAYS) if std > 0 else 0.0
    equity = np.cumprod(1.0 + daily)
    peaks = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    drawdown = float(np.max(1.0 - equity / peaks)) if len(equity) else 0.0
    return {
        "periods": len(daily),
        "sharpe_ratio": sharpe,
        "max_drawdown": drawdown,
        "total_return": float(equity[-1] - 1.0) if len(equity) else 0.0,
        "hit_rate": float((pnl > 0).mean()) if len(pnl) else 0.0,
    }


def evaluation_report(task: Task, estimator: str, metrics: dict[str, float | int | None],
                      acceptance: AcceptanceConfig, backtest_result: dict[str, float | int] | None,
                      extra: dict[str, Any]) -> dict[str, Any]:
    failures = []
    auc = metrics.get("auc")
    if acceptance.min_auc is not None and (auc is None or auc < acceptance.min_auc):
        failures.append(f"auc {auc if auc is None else round(auc, 4)} < {acceptance.min_auc}")
    if backtest_result is not None:
        if acceptance.min_sharpe is not None and backtest_result["sharpe_ratio"] < acceptance.min_sharpe:
            failures.append(f"sharpe ratio {backtest_result['sharpe_ratio']:.4f} < {acceptance.min_sharpe}")
        if acceptance.max_drawdown is not None and backtest_result["max_drawdown"] > acceptance.max_drawdown:
            failures.append(f"max drawdown {backtest_result['max_drawdown']:.4f} > {acceptance.max_drawdown}")
    doc: dict[str, Any] = {
        "schema": "modelwarden.io/evaluation-report/v1",
        "status": "fail" if failures else "pass",
        "task": task,
        "estimator": estimator,
        "metrics": metrics,
        "acceptance": acceptance.model_dump(),
        "failures": failures,
        **extra,
    }
    if backtest_result is not None:
        doc["backtest"] = backtest_result
    return doc
