"""Rollback triggers on observed numbers, as tables (DESIGN §3)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelwarden.engine.triggers import (
    CanaryNumbers,
    assess_canary,
    assess_critical_feedback,
    assess_error_budget,
    assess_fast_burn,
    counter_increase,
)

NOW = 1_800_000_000.0
STEP = 30.0
SUSTAIN = 900.0


def budget(minutes_low: float, *, history_minutes: float = 60, low: float = 0.03, high: float = 0.5,
           nan_from: float | None = None, gap: tuple[float, float] | None = None) -> list[tuple[float, float]]:
    """A budget series sampled every 30 s for ``history_minutes``, below the floor for the last ``minutes_low``."""
    out = []
    t = NOW - history_minutes * 60
    while t <= NOW:
        v = low if t > NOW - minutes_low * 60 else high
        if nan_from is not None and t >= NOW - nan_from * 60:
            v = math.nan
        if gap is None or not (NOW - gap[0] * 60 <= t <= NOW - gap[1] * 60):
            out.append((t, v))
        t += STEP
    return out


BUDGET_CASES = [
    ("low for 14 minutes", budget(14), "Clear"),
    ("low for 16 minutes", budget(16), "Fired"),
    ("low for an hour", budget(60), "Fired"),
    ("healthy", budget(0), "Clear"),
    ("a one-minute-old series, low", budget(1, history_minutes=1, high=0.03), "Clear"),
    ("a 10-minute-old series, low all along", budget(10, history_minutes=10), "Clear"),
    ("low for 16 minutes with a 5-minute gap", budget(16, gap=(12, 7)), "NoData"),
    ("latest samples NaN", budget(30, nan_from=2), "NoData"),
    ("no series", [], "NoData"),
    ("stopped 5 minutes ago", [(t, v) for t, v in budget(30) if t < NOW - 300], "NoData"),
    ("one sample above the floor inside the window", [(t, 0.06 if t == NOW - 300 else v) for t, v in budget(20)],
     "Clear"),
]


@pytest.mark.parametrize(("case", "samples", "verdict"), BUDGET_CASES, ids=[c[0] for c in BUDGET_CASES])
def test_error_budget_trigger(case: str, samples: list[tuple[float, float]], verdict: str) -> None:
    result = assess_error_budget(samples, now=NOW, floor=0.05, sustain_seconds=SUSTAIN, step_seconds=STEP)
    assert result.verdict == verdict, result.message


def counter(values_by_minute: dict[float, float]) -> list[tuple[float, float]]:
    return [(NOW - m * 60, v) for m, v in sorted(values_by_minute.items(), reverse=True)]


FEEDBACK_CASES = [
    ("three within the hour", [counter({70: 0, 50: 1, 30: 2, 5: 3})], "Fired", 3),
    ("two within, one outside", [counter({90: 1, 50: 2, 5: 3})], "Clear", 2),
    ("one from each of three series", [counter({70: 0, 10: 1}), counter({70: 4, 10: 5}), counter({70: 0, 2: 1})],
     "Fired", 3),
    ("series born 20 minutes ago at 0, now 3", [counter({20: 0, 10: 2, 1: 3})], "Fired", 3),
    ("series born inside the window already at 2", [counter({20: 2, 1: 2})], "Clear", 2),
    ("server restarted (counter reset)", [counter({70: 5, 40: 6, 30: 0, 10: 2})], "Fired", 3),
    ("no series", [], "Clear", 0),
]


@pytest.mark.parametrize(("case", "series", "verdict", "count"), FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES])
def test_critical_feedback_is_counted_exactly(case: str, series: list[list[tuple[float, float]]], verdict: str,
                                             count: int) -> None:
    result = assess_critical_feedback(series, now=NOW, window_seconds=3600, threshold=3)
    assert result.verdict == verdict
    assert result.values["criticalLabels"] == str(count)


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=60))
def test_counter_increase_equals_the_labels_added(increments: list[int]) -> None:
    """Whatever the pattern, the count is the integer number of labels added inside the window."""
    value, series = 0, []
    for i, inc in enumerate(increments):
        value += inc
        series.append((NOW - (len(increments) - i) * 60.0, float(value)))
    window_start = NOW - 30 * 60
    expected = sum(inc for i, inc in enumerate(increments) if NOW - (len(increments) - i) * 60.0 >= window_start)
    born_inside = series[0][0] >= window_start
    if born_inside:
        expected = sum(increments)  # counts from the implicit 0 it was born with
    assert counter_increase(series, window_start=window_start) == expected


@pytest.mark.parametrize(("long", "short", "verdict"), [
    (20.0, 15.0, "Fired"), (20.0, 10.0, "Clear"), (10.0, 30.0, "Clear"), (None, 30.0, "NoData"),
    (math.nan, 30.0, "NoData"),
])
def test_fast_burn_needs_both_windows(long: float | None, short: float | None, verdict: str) -> None:
    assert assess_fast_burn(long, short, factor=14.4).verdict == verdict


THRESHOLDS = {"max_error_ratio": "0.05", "max_p99_latency_ms": 500, "max_feature_mismatch": 0, "min_requests": 20}
CANARY_CASES = [
    ("healthy", CanaryNumbers(100, 1, 0.05, 0), "Clear"),
    ("error ratio above", CanaryNumbers(100, 6, 0.05, 0), "Fired"),
    ("error ratio exactly at the limit", CanaryNumbers(100, 5, 0.05, 0), "Clear"),
    ("slow", CanaryNumbers(100, 0, 0.8, 0), "Fired"),
    ("feature mismatches", CanaryNumbers(100, 0, 0.05, 2), "Fired"),
    ("too few requests for a verdict", CanaryNumbers(5, 5, 0.05, 0), "NoData"),
    ("no data", None, "NoData"),
    ("NaN requests", CanaryNumbers(math.nan, None, None, None), "NoData"),
]


@pytest.mark.parametrize(("case", "numbers", "verdict"), CANARY_CASES, ids=[c[0] for c in CANARY_CASES])
def test_canary_analysis(case: str, numbers: CanaryNumbers | None, verdict: str) -> None:
    assert assess_canary(numbers, **THRESHOLDS).verdict == verdict  # type: ignore[arg-type]
