"""Rollback triggers and canary analysis, decided on observed numbers (DESIGN §3). Pure: time is an argument.

Each assessment says one of three things, never a guess:
``Fired`` (roll back / fail the canary), ``Clear`` (keep going), or ``NoData`` (Prometheus down, gaps, NaN:
neither roll back nor promote — the model's Healthy condition says MetricsUnavailable).

Series are lists of (unix seconds, value) as a Prometheus range query returns them; NaN is a value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Samples = Sequence[tuple[float, float]]
Verdict = Literal["Fired", "Clear", "NoData"]

# Trigger names: condition reasons, Event reasons and incident labels.
ERROR_BUDGET = "ErrorBudgetExhausted"
CRITICAL_FEEDBACK = "CriticalFeedback"
CANARY_ANALYSIS = "CanaryAnalysisFailed"
FAST_BURN = "FastBurn"


@dataclass(frozen=True)
class Assessment:
    trigger: str
    verdict: Verdict
    message: str
    # the numbers behind the verdict, as strings, for status and the incident record
    values: dict[str, str] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.verdict == "Fired"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _window(samples: Samples, start: float, end: float) -> list[tuple[float, float]]:
    return [(t, v) for t, v in samples if start <= t <= end]


def assess_error_budget(samples: Samples | None, *, now: float, floor: float, sustain_seconds: float,
                        step_seconds: float, min_coverage: float = 0.9) -> Assessment:
    """Budget below ``floor`` at every sample of the last ``sustain_seconds``, with enough samples.

    Coverage guard: the window must hold at least ``min_coverage`` of the samples it should, and the series
    must be older than the window — a series that appeared a minute ago is not "15 minutes low". A missing
    or NaN latest sample, or a gappy window, is NoData.
    """
    floor_txt = f"{floor * 100:g}%"
    if not samples:
        return Assessment(ERROR_BUDGET, "NoData", "no error-budget series for this version")
    start = now - sustain_seconds
    valid = [(t, v) for t, v in samples if not math.isnan(v)]
    if not valid or valid[-1][0] < now - 2 * step_seconds:
        return Assessment(ERROR_BUDGET, "NoData", "the error-budget series has no recent sample")
    first_seen = min(t for t, _ in samples)
    latest = valid[-1][1]
    values = {"budgetRemaining": _fmt(latest), "floor": _fmt(floor)}
    if first_seen > start + step_seconds:
        return Assessment(ERROR_BUDGET, "Clear",
                          f"under {sustain_seconds / 60:.0f}m of budget history: not judged yet", values)
    in_window = _window(valid, start, now)
    expected = int(sustain_seconds // step_seconds) + 1
    coverage = len(in_window) / expected
    values["coverage"] = _fmt(coverage)
    if coverage < min_coverage:
        return Assessment(ERROR_BUDGET, "NoData",
                          f"only {coverage:.0%} of the last {sustain_seconds / 60:.0f}m has budget samples "
                          "(gaps or NaN)", values)
    highest = max(v for _, v in in_window)
    values["highestInWindow"] = _fmt(highest)
    if highest < floor:
        return Assessment(ERROR_BUDGET, "Fired",
                          f"error budget below {floor_txt} for {sustain_seconds / 60:.0f}m "
                          f"(now {latest:.1%}, highest {highest:.1%})", values)
    return Assessment(ERROR_BUDGET, "Clear", f"error budget above {floor_txt}", values)


def counter_increase(samples: Samples, *, window_start: float) -> int:
    """Exact increase of an integer counter inside the window — no extrapolated 2.9.

    The last sample before the window is the baseline (query a little history before the window). A series
    with no sample before the window was born inside it and counts from 0: every label set starts at 0.
    A drop is a counter reset (a restarted server) and counts from 0 again.
    """
    points = [(t, v) for t, v in samples if not math.isnan(v)]
    before = [v for t, v in points if t < window_start]
    inside = [v for t, v in points if t >= window_start]
    previous = before[-1] if before else 0.0
    total = 0.0
    for v in inside:
        total += v - previous if v >= previous else v
        previous = v
    return round(total)


def assess_critical_feedback(per_stakeholder: Sequence[Samples], *, now: float, window_seconds: float,
                             threshold: int) -> Assessment:
    """≥ ``threshold`` critical labels from the counted stakeholders within the window, counted exactly."""
    count = sum(counter_increase(s, window_start=now - window_seconds) for s in per_stakeholder)
    values = {"criticalLabels": str(count), "threshold": str(threshold),
              "windowSeconds": str(int(window_seconds))}
    if count >= threshold:
        return Assessment(CRITICAL_FEEDBACK, "Fired",
                          f"{count} critical feedback labels within {window_seconds / 3600:g}h "
                          f"(threshold {threshold})", values)
    return Assessment(CRITICAL_FEEDBACK, "Clear",
                      f"fewer than {threshold} critical feedback labels within {window_seconds / 3600:g}h", values)


def assess_fast_burn(burn_long: float | None, burn_short: float | None, *, factor: float) -> Assessment:
    """Both the 1h and the 5m burn rates above ``factor`` (14.4x spends 2% of a 30-day budget in an hour)."""
    if burn_long is None or burn_short is None or math.isnan(burn_long) or math.isnan(burn_short):
        return Assessment(FAST_BURN, "NoData", "no burn-rate data")
    values = {"burnRate1h": _fmt(burn_long), "burnRate5m": _fmt(burn_short), "factor": _fmt(factor)}
    if burn_long > factor and burn_short > factor:
        return Assessment(FAST_BURN, "Fired",
                          f"burning the error budget {burn_long:.1f}x (1h) and {burn_short:.1f}x (5m) too fast",
                          values)
    return Assessment(FAST_BURN, "Clear", f"burn rate below {factor:g}x", values)


@dataclass(frozen=True)
class CanaryNumbers:
    """What Prometheus says about the canary over the last analysis interval (None: no data)."""

    requests: float | None
    errors: float | None
    p99_latency_seconds: float | None
    feature_mismatches: float | None


def assess_canary(numbers: CanaryNumbers | None, *, max_error_ratio: str, max_p99_latency_ms: int,
                  max_feature_mismatch: int, min_requests: int) -> Assessment:
    """Canary analysis (Argo's assessMetricStatus, for our four measures)."""
    if numbers is None or numbers.requests is None or math.isnan(numbers.requests):
        return Assessment(CANARY_ANALYSIS, "NoData", "no canary request metrics")
    if numbers.requests < min_requests:
        return Assessment(CANARY_ANALYSIS, "NoData",
                          f"{numbers.requests:.0f} canary requests, fewer than the {min_requests} needed for a verdict",
                          {"requests": _fmt(numbers.requests)})
    errors = numbers.errors or 0.0
    ratio = errors / numbers.requests if numbers.requests else 0.0
    values = {"requests": _fmt(numbers.requests), "errorRatio": _fmt(ratio)}
    failures = []
    if Decimal(str(ratio)) > Decimal(max_error_ratio):
        failures.append(f"error ratio {ratio:.2%} > {Decimal(max_error_ratio):.2%}")
    if numbers.p99_latency_seconds is not None and not math.isnan(numbers.p99_latency_seconds):
        values["p99LatencyMs"] = _fmt(numbers.p99_latency_seconds * 1000)
        if numbers.p99_latency_seconds * 1000 > max_p99_latency_ms:
            failures.append(f"p99 latency {numbers.p99_latency_seconds * 1000:.0f}ms > {max_p99_latency_ms}ms")
    if numbers.feature_mismatches is not None and not math.isnan(numbers.feature_mismatches):
        values["featureMismatches"] = _fmt(numbers.feature_mismatches)
        if numbers.feature_mismatches > max_feature_mismatch:
            failures.append(f"{numbers.feature_mismatches:.0f} FEATURE_MISMATCH > {max_feature_mismatch}")
    if failures:
        return Assessment(CANARY_ANALYSIS, "Fired", "canary analysis failed: " + "; ".join(failures), values)
    return Assessment(CANARY_ANALYSIS, "Clear", "canary within its analysis thresholds", values)
