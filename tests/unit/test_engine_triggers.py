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
    budget_in_words,
    counter_increase,
    counters_increase,
    merge_fragments,
    min_sustain_seconds,
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


# --- Several series for one logical counter or budget (a restarted pod, a relabelled target) -------------

def replica(samples_by_minute: dict[float, float]) -> list[tuple[float, float]]:
    return counter(samples_by_minute)


REPLICA_CASES = [
    # The false rollback this fixes: summed first, replica b's reset to 0 dropped the sum from 2 to 1 and
    # the next sample (a's 1 + b's 0... then 1) was counted again from 0.
    ("two replicas, one label each, then one restarts",
     [replica({70: 0, 40: 1, 20: 1, 10: 1}), replica({70: 0, 30: 1, 20: 0, 10: 0})], 2),
    ("two replicas, one restarts, then a third real label",
     [replica({70: 0, 40: 1, 20: 1, 10: 1, 5: 1}), replica({70: 0, 30: 1, 20: 0, 10: 0, 5: 1})], 3),
    ("three replicas, all restart between labels",
     [replica({70: 0, 50: 1, 40: 0, 5: 0}), replica({70: 0, 45: 1, 40: 0, 5: 0}),
      replica({70: 0, 42: 0, 40: 0, 5: 1})], 3),
    ("a restarted pod is a new series born at 1", [replica({70: 0, 40: 1, 30: 1}), replica({20: 1, 5: 1})], 2),
    ("a series that ended long before the window", [replica({100: 3, 80: 4}), replica({30: 1})], 1),
]


@pytest.mark.parametrize(("case", "series", "count"), REPLICA_CASES, ids=[c[0] for c in REPLICA_CASES])
def test_counters_are_counted_per_series_then_summed(case: str, series: list[list[tuple[float, float]]],
                                                     count: int) -> None:
    assert counters_increase(series, window_start=NOW - 3600) == count
    verdict = assess_critical_feedback(series, now=NOW, window_seconds=3600, threshold=3).verdict
    assert verdict == ("Fired" if count >= 3 else "Clear")


# One event per step: a label on a replica, or a replica's process restarting (its counter back to 0).
Event = tuple[int, str]


@given(st.integers(min_value=1, max_value=4),
       st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from(["label", "restart"])),
                min_size=1, max_size=80),
       st.integers(min_value=0, max_value=80))
def test_any_interleaving_of_increments_and_resets_counts_the_increments(
        replicas: int, events: list[Event], window_from: int) -> None:
    """Whatever the replicas do, the count is the number of labels posted inside the window.

    Every replica is scraped after every event (a reset and regrowth past the old value between two scrapes
    is invisible to any reader of the samples, Prometheus included)."""
    values = [0] * replicas
    series: list[list[tuple[float, float]]] = [[] for _ in range(replicas)]
    window_start = NOW - (len(events) - window_from) * 60.0
    labelled_inside = 0
    for i, (which, kind) in enumerate(events):
        t = NOW - (len(events) - i) * 60.0
        r = which % replicas
        if kind == "label":
            values[r] += 1
            labelled_inside += t >= window_start
        else:
            values[r] = 0
        for j in range(replicas):
            series[j].append((t, float(values[j])))
    assert counters_increase(series, window_start=window_start) == labelled_inside


def low_budget(start_minutes: float, end_minutes: float, value: float = 0.02) -> list[tuple[float, float]]:
    return [(t, value) for t, _ in budget(60) if NOW - start_minutes * 60 <= t <= NOW - end_minutes * 60]


BUDGET_FRAGMENT_CASES = [
    ("relabelled 8 minutes ago, low for 16 minutes across the change",
     [low_budget(60, 8.5, 0.5) + low_budget(16, 8.5), low_budget(8, 0)], "Fired"),
    ("relabelled, low for 14 minutes", [low_budget(60, 8.5, 0.5) + low_budget(14, 8.5), low_budget(8, 0)],
     "Clear"),
    ("overlapping fragments, one of them low: the lowest counts", [budget(20), budget(0)], "Fired"),
    ("a new fragment one minute old does not make the series new", [budget(0), low_budget(1, 0)],
     "Clear"),
]


@pytest.mark.parametrize(("case", "fragments", "verdict"), BUDGET_FRAGMENT_CASES,
                         ids=[c[0] for c in BUDGET_FRAGMENT_CASES])
def test_budget_fragments_are_judged_as_one_series(case: str, fragments: list[list[tuple[float, float]]],
                                                    verdict: str) -> None:
    merged = merge_fragments(fragments)
    result = assess_error_budget(merged, now=NOW, floor=0.05, sustain_seconds=SUSTAIN, step_seconds=STEP)
    assert result.verdict == verdict, result.message


def test_merged_fragments_keep_a_number_over_nan() -> None:
    assert merge_fragments([[(1.0, math.nan), (2.0, 0.5)], [(1.0, 0.3)]]) == [(1.0, 0.3), (2.0, 0.5)]


def test_coverage_message_does_not_drift_with_the_numbers() -> None:
    """Healthy is rewritten only when its message changes: a live percentage in it rewrote status every cycle."""
    history = [(NOW - 600.0 + i * 30, 0.9) for i in range(10)]  # before the 5-minute window
    one_third = history + [(t, v) for t, v in budget(0) if t > NOW - 300 and int(t) % 90 == 0]
    two_thirds = history + [(t, v) for t, v in budget(0) if t > NOW - 300 and int(t) % 90 != 30]
    a, b = (assess_error_budget(s, now=NOW, floor=0.05, sustain_seconds=300, step_seconds=30)
            for s in (one_third, two_thirds))
    assert (a.verdict, b.verdict) == ("NoData", "NoData")
    assert a.message == b.message and a.values["coverage"] != b.values["coverage"]


def test_one_missing_sample_is_tolerated_in_a_short_window() -> None:
    """Rule evaluations and query steps drift against each other: one missed step is not a gap."""
    samples = [(NOW - 180.0 + i * 30, 0.02) for i in range(7) if i != 3]  # 3-minute sustain, one step missing
    result = assess_error_budget(samples, now=NOW, floor=0.05, sustain_seconds=120, step_seconds=30)
    assert result.verdict == "Fired", result.message


def test_a_sustain_window_shorter_than_three_steps_is_not_judged() -> None:
    result = assess_error_budget(budget(30), now=NOW, floor=0.05, sustain_seconds=60, step_seconds=30)
    assert result.verdict == "NoData"
    assert "spec.rollback.sustainSeconds" in result.message and str(min_sustain_seconds(30)) in result.message


@pytest.mark.parametrize(("remaining", "words"), [
    (-360.259, "budget exhausted, spent 361 times over"),
    (-100.543, "budget exhausted, spent 102 times over"),
    (-0.5, "budget exhausted, spent 1.5 times over"),
    (0.0, "budget exhausted, spent 1.0 times over"),
    (0.03, "3% of budget left"),
])
def test_the_budget_is_said_in_words_a_person_reads_at_a_glance(remaining: float, words: str) -> None:
    assert budget_in_words(remaining) == words


def test_a_fired_budget_trigger_says_how_far_over_and_keeps_the_raw_numbers_in_its_values() -> None:
    now = 10_000.0
    samples = [(now - i * 30.0, -360.259) for i in range(40, -1, -1)]
    verdict = assess_error_budget(samples, now=now, floor=0.05, sustain_seconds=300, step_seconds=30)
    assert verdict.verdict == "Fired"
    assert "spent 361 times over" in verdict.message and "%" not in verdict.message.split(":", 1)[1]
    assert verdict.values["budgetRemaining"] == "-360.3"
