"""Rollback triggers and canary analysis, decided on observed numbers (DESIGN §3). Pure: time is an argument.

Each assessment says one of three things, never a guess:
``Fired`` (roll back / fail the canary), ``Clear`` (keep going), or ``NoData`` (Prometheus down, gaps, NaN:
neither roll back nor promote — the model's Healthy condition says MetricsUnavailable).

Series are lists of (unix seconds, value) as a Prometheus query returns them; NaN is a value. Prometheus may
return one logical series as several rows (a restarted pod, a relabelled target, a federation label): budget
fragments are merged into one series (:func:`merge_fragments`) and counters are counted per row, then summed
(:func:`counters_increase`) — never summed first, where one replica's reset would re-count the others.

Messages carry no number that drifts from one evaluation to the next (the Healthy condition is rewritten
only when its message changes); the numbers are in ``values`` and in the metrics.
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


def budget_in_words(remaining: float) -> str:
    """What a person reads at a glance: "budget exhausted, spent 361 times over", "3% of budget left". The raw
    remaining fraction (-360.26 here, printed as -36025.9% before) stays in the assessment's values."""
    if remaining > 0:
        return f"{remaining:.0%} of budget left"
    spent = 1 - remaining
    return f"budget exhausted, spent {spent:.0f} times over" if spent >= 10 else \
        f"budget exhausted, spent {spent:.1f} times over"


def _window(samples: Samples, start: float, end: float) -> list[tuple[float, float]]:
    return [(t, v) for t, v in samples if start <= t <= end]


# The coverage guard tolerates one missing sample (or 10% of them, whichever is more), so the shortest sustain
# window it can judge is this many query steps; shorter ones are reported, never guessed.
MIN_SUSTAIN_STEPS = 3


def min_sustain_seconds(step_seconds: float) -> int:
    """The shortest ``spec.rollback.sustainSeconds`` the budget trigger can judge at this query step."""
    return int(MIN_SUSTAIN_STEPS * step_seconds)


def merge_fragments(fragments: Sequence[Samples]) -> list[tuple[float, float]]:
    """One logical budget series from every row Prometheus returned for one model and version.

    Fragments side by side in time (a relabel) simply join. Where fragments overlap, each step takes the
    **lowest** value: the trigger asks "was the budget below the floor at every step", and a breach seen by
    any fragment is a breach — judging one fragment alone is how a relabel hid a sustained one. NaN counts
    only where no fragment has a number.
    """
    lowest: dict[float, float] = {}
    for fragment in fragments:
        for t, v in fragment:
            seen = lowest.get(t)
            if seen is None or math.isnan(seen) or (not math.isnan(v) and v < seen):
                lowest[t] = v
    return sorted(lowest.items())


def assess_error_budget(samples: Samples | None, *, now: float, floor: float, sustain_seconds: float,
                        step_seconds: float, min_coverage: float = 0.9) -> Assessment:
    """Budget below ``floor`` at every sample of the last ``sustain_seconds``, with enough samples.

    ``samples`` is one logical series (:func:`merge_fragments`). Coverage guard: the window must hold at least
    ``min_coverage`` of the samples it should (one missing sample is always tolerated), and the series must be
    older than the window — a series that appeared a minute ago is not "15 minutes low". A missing or NaN
    latest sample, or a gappy window, is NoData.
    """
    floor_txt = f"{floor * 100:g}%"
    window_txt = f"{sustain_seconds / 60:g}m"
    if sustain_seconds < min_sustain_seconds(step_seconds):
        return Assessment(ERROR_BUDGET, "NoData",
                          f"spec.rollback.sustainSeconds {sustain_seconds:g} is shorter than {MIN_SUSTAIN_STEPS} "
                          f"query steps of {step_seconds:g}s: raise it to at least "
                          f"{min_sustain_seconds(step_seconds)} or lower the operator's MODELWARDEN_QUERY_STEP")
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
        return Assessment(ERROR_BUDGET, "Clear", f"under {window_txt} of budget history: not judged yet", values)
    in_window = _window(valid, start, now)
    expected = int(sustain_seconds // step_seconds) + 1
    needed = max(1, min(expected - 1, math.ceil(expected * min_coverage)))
    values["coverage"] = _fmt(len(in_window) / expected)
    if len(in_window) < needed:
        return Assessment(ERROR_BUDGET, "NoData",
                          f"too few budget samples in the last {window_txt} (gaps or NaN): not judged", values)
    highest = max(v for _, v in in_window)
    values["highestInWindow"] = _fmt(highest)
    if highest < floor:
        return Assessment(ERROR_BUDGET, "Fired",
                          f"error budget below {floor_txt} for {window_txt}: {budget_in_words(latest)} "
                          f"(at best {budget_in_words(highest)} in that window)", values)
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


def counters_increase(series: Sequence[Samples], *, window_start: float) -> int:
    """Exact increase of a counter exported by several series (one per replica, per target, per label set):
    each series is counted on its own — its resets are its own — then the counts are summed."""
    return sum(counter_increase(s, window_start=window_start) for s in series)


def assess_critical_feedback(series: Sequence[Samples], *, now: float, window_seconds: float,
                             threshold: int) -> Assessment:
    """≥ ``threshold`` critical labels from the counted stakeholders within the window, counted exactly.

    ``series`` holds every raw counter series of the counted stakeholders (one per replica and stakeholder)."""
    count = counters_increase(series, window_start=now - window_seconds)
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
                          f"fewer than the {min_requests} canary requests needed for a verdict",
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
