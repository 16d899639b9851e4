"""The metrics edge: one evaluation cycle of batched PromQL over prometheus-api-client.

Every query covers the whole fleet (``by (namespace, model, version, …)`` or raw series), so a cycle issues a
fixed number of queries however many MLModels exist; :attr:`FleetMetrics.queries` is the number of HTTP
requests the cycle actually sent, counted on the session. Every call has a timeout; transport and API errors
become :class:`MetricsUnavailable`; empty or NaN answers stay NaN/absent and become NoData in the engine —
never a number.

Counters are read **per series**, never summed in PromQL before their resets are found: one replica's restart
would otherwise drop the sum and re-count every other replica's labels. The engine counts each series
(``engine.triggers.counters_increase``) and sums the counts; the canary's request counts use ``increase()``
per series, summed, which is the same arithmetic done by Prometheus. Several budget rows for one model and version
(labels that changed inside the window) are merged into one series (``engine.triggers.merge_fragments``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException

from modelwarden.engine.shadow_gate import ShadowNumbers
from modelwarden.engine.triggers import CanaryNumbers, counters_increase, merge_fragments

ModelKey = tuple[str, str]  # (namespace, model); namespace "" when the series carry no namespace label

# Prometheus fills a range query's steps with the last sample for up to 5 minutes (lookback); the `and`
# keeps only steps with a real sample in their own step window, so a gap reads as a gap.
BUDGET = ('ml_inference_error_budget_remaining{{version!=""}} '
          'and count_over_time(ml_inference_error_budget_remaining{{version!=""}}[{step}s])')
# Every critical-label counter series (one per replica and stakeholder), unsummed, at the query step: the engine
# finds each series' resets on its own samples. Only series that held a label at some point of the look-back
# (evaluated once, at the query's end) come back: every server starts every label set at 0, and a fleet's
# thousands of zero series would otherwise be most of the answer. A restart followed by regrowth past the old
# value within one step is invisible to step samples: keep the step at or near the scrape interval.
FEEDBACK = ('ml_feedback_labels_total{{severity="critical"}} and '
            '(max_over_time(ml_feedback_labels_total{{severity="critical"}}[{w}s] @ end()) > 0)')
BURN_LONG = "ml:inference_burn_rate:rate1h"
BURN_SHORT = "ml:inference_burn_rate:rate5m"
# The canary's requests and errors: increase() per series (each replica's resets are its own), then summed.
# Prometheus extrapolates increase() to the window's edges, which a ratio and a minimum request count tolerate.
CANARY_REQUESTS = ('sum by (namespace, model, version) '
                   '(increase(ml_inference_requests_total{{track="canary",outcome!="client_error"}}[{w}s]))')
CANARY_ERRORS = ('sum by (namespace, model, version) '
                 '(increase(ml_inference_requests_total{{track="canary",outcome=~"error|unavailable"}}[{w}s]))')
# FEATURE_MISMATCH is compared with an integer threshold: counted exactly from the raw samples of the canary
# pods' series over the window plus a baseline.
CANARY_MISMATCH = 'ml_model_errors_total{{track="canary",kind="FEATURE_MISMATCH"}}[{w}s]'
CANARY_P99 = ('histogram_quantile(0.99, sum by (namespace, model, version, le) '
              '(rate(ml_inference_latency_seconds_bucket{{track="canary"}}[{w}s])))')
# The shadow stage's comparison (issue 20), in one query for the whole fleet: each measure tagged by `measure`.
# The candidate's counters are cumulative since its pods started, which is the stage (its pods are new): summed
# over pods, a restarted pod lowers the sum — fewer compared, a later verdict, never a made-up pass. An empty
# histogram's quantile and a PSI under its minimum rows are NaN: NoData.
SHADOW_MEASURES = {
    "compared": "sum by (namespace, model, version) (ml_shadow_compared_total)",
    "agreements": "sum by (namespace, model, version) (ml_shadow_agreements_total)",
    "p99": "histogram_quantile(0.99, sum by (namespace, model, version, le) (ml_shadow_score_difference_bucket))",
    "psi": "max by (namespace, model, version) (ml_shadow_score_psi)",
    "mismatches": 'sum by (namespace, model, version) (ml_shadow_errors_total{kind="FEATURE_MISMATCH"})',
}
SHADOW = " or ".join(f'label_replace({q}, "measure", "{m}", "", "")' for m, q in SHADOW_MEASURES.items())
# A counter's baseline is its last sample before the window: read this much history before it.
BASELINE_SECONDS = 300
# Retraining gates, only in a cycle where some model's window is due (engine.retraining.due_window); one query
# each for the whole fleet. The model-level budget (recording rule with scope="model": all versions together)
# as the lowest sample of each 5-minute step — a step without a sample stays absent, so gaps show as gaps.
RETRAINING_BUDGET = 'min_over_time(ml_inference_error_budget_remaining{{scope="model"}}[{step}s])'
# Raw label counters, one series per replica and label set, at coarse steps over a long span (weeks of raw
# samples would be too many); the engine counts each series' increases. A reset followed by regrowth past
# the old value within one step would be undercounted — only the retraining gate reads this, never a trigger.
RETRAINING_LABELS = "ml_feedback_labels_total"
RETRAINING_BUDGET_STEP = 300
# Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 10_000


class MetricsUnavailable(Exception):
    """Prometheus could not answer (down, timeout, bad response)."""


Series = list[tuple[float, float]]


@dataclass
class FleetMetrics:
    """Everything one cycle learned, keyed by (namespace, model) then version."""

    at: float
    step_seconds: float
    # (namespace, model) -> version -> one logical budget series (every fragment merged)
    budget: dict[ModelKey, dict[str, Series]] = field(default_factory=lambda: defaultdict(dict))
    # (namespace, model) -> version -> stakeholder -> every raw counter series (one per replica)
    feedback: dict[ModelKey, dict[str, dict[str, list[Series]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    burn: dict[ModelKey, dict[str, tuple[float | None, float | None]]] = field(
        default_factory=lambda: defaultdict(dict))
    canary: dict[ModelKey, dict[str, CanaryNumbers]] = field(default_factory=lambda: defaultdict(dict))
    shadow: dict[ModelKey, dict[str, ShadowNumbers]] = field(default_factory=lambda: defaultdict(dict))
    # HTTP requests this cycle sent to Prometheus (measured on the session, not assumed)
    queries: int = 0
    # Retraining gate inputs, when this cycle fetched them (``retraining_at`` is None otherwise).
    retraining_at: float | None = None
    retraining_budget: dict[ModelKey, Series] = field(default_factory=dict)
    # (namespace, model) -> version -> every raw label counter series
    retraining_labels: dict[ModelKey, dict[str, list[Series]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def for_model(self, namespace: str, model: str) -> ModelKey:
        """Series scraped in Kubernetes carry ``namespace``; a plain scrape config may not."""
        key = (namespace, model)
        for table in (self.budget, self.feedback, self.burn, self.canary, self.shadow, self.retraining_budget,
                      self.retraining_labels):
            if key in table:
                return key
        return ("", model)


@dataclass(frozen=True)
class RetrainingQuery:
    """Fetch the retraining gates' history too: the budget over ``budget_seconds`` and label counters since
    ``labels_since`` (the widest any due model needs; each model then looks at its own part)."""

    budget_seconds: int
    labels_since: float


class MetricsProvider(Protocol):
    async def evaluate(self, at: float, *, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                       analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics: ...


def _key(metric: Mapping[str, str]) -> tuple[ModelKey, str]:
    return (metric.get("namespace", ""), metric.get("model", "")), metric.get("version", "")


def _value(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


def _series(row: Mapping[str, Any]) -> Series:
    return [(float(t), _value(v)) for t, v in row.get("values", [])]


class PrometheusMetrics:
    def __init__(self, url: str, *, timeout_seconds: float = 10.0, step_seconds: float = 30.0) -> None:
        session = requests.Session()
        session.hooks["response"].append(self._count_request)
        self._prom = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_seconds, session=session)
        self._timeout = timeout_seconds
        self.step_seconds = step_seconds
        self._requests_sent = 0

    def _count_request(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._requests_sent += 1

    def _instant(self, query: str, at: float) -> list[dict[str, Any]]:
        try:
            result = self._prom.custom_query(query, params={"time": f"{at:.3f}"}, timeout=self._timeout)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as e:
            raise MetricsUnavailable(f"{query}: {e}") from e
        return list(result or [])

    def _range(self, query: str, start: float, end: float, step: float | None = None) -> list[dict[str, Any]]:
        try:
            result = self._prom.custom_query_range(
                query, start_time=dt.datetime.fromtimestamp(start, dt.UTC),
                end_time=dt.datetime.fromtimestamp(end, dt.UTC), step=f"{int(step or self.step_seconds)}s",
                timeout=self._timeout)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as e:
            raise MetricsUnavailable(f"{query}: {e}") from e
        return list(result or [])

    def _retraining(self, fleet: FleetMetrics, at: float, query: RetrainingQuery) -> None:
        step = RETRAINING_BUDGET_STEP
        for row in self._range(RETRAINING_BUDGET.format(step=step), at - query.budget_seconds, at, step):
            key, _ = _key(row["metric"])
            fleet.retraining_budget[key] = _series(row)
        # Coarse steps over a long span; start a step early so each counter has a baseline before the window.
        span = at - query.labels_since
        label_step = max(RETRAINING_BUDGET_STEP, math.ceil(span / MAX_POINTS / 60) * 60)
        for row in self._range(RETRAINING_LABELS, query.labels_since - label_step, at, label_step):
            key, version = _key(row["metric"])
            fleet.retraining_labels[key][version].append(_series(row))
        fleet.retraining_at = at

    def _canary(self, fleet: FleetMetrics, at: float, analysis_seconds: int) -> None:
        w = analysis_seconds
        requests_, errors, p99 = ({_key(r["metric"]): _value(r["value"][1]) for r in self._instant(q.format(w=w), at)}
                                  for q in (CANARY_REQUESTS, CANARY_ERRORS, CANARY_P99))
        mismatches: dict[tuple[ModelKey, str], list[Series]] = defaultdict(list)
        for row in self._instant(CANARY_MISMATCH.format(w=w + BASELINE_SECONDS), at):
            mismatches[_key(row["metric"])].append(_series(row))
        for k in set(requests_) | set(errors) | set(p99) | set(mismatches):
            fleet.canary[k[0]][k[1]] = CanaryNumbers(
                requests=requests_.get(k), errors=errors.get(k), p99_latency_seconds=p99.get(k),
                feature_mismatches=(float(counters_increase(mismatches[k], window_start=at - w))
                                    if k in mismatches else None))

    def _shadow(self, fleet: FleetMetrics, at: float) -> None:
        measures: dict[tuple[ModelKey, str], dict[str, float]] = defaultdict(dict)
        for row in self._instant(SHADOW, at):
            measures[_key(row["metric"])][row["metric"].get("measure", "")] = _value(row["value"][1])
        for (key, version), m in measures.items():
            fleet.shadow[key][version] = ShadowNumbers(
                compared=m.get("compared"), agreements=m.get("agreements"), p99_difference=m.get("p99"),
                psi=m.get("psi"), feature_mismatches=m.get("mismatches"))

    def _evaluate(self, at: float, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                  analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics:
        sent_before = self._requests_sent
        fleet = FleetMetrics(at=at, step_seconds=self.step_seconds)
        # Each range only as long as its triggers look back: the budget query is the largest answer of a cycle.
        fragments: dict[tuple[ModelKey, str], list[Series]] = defaultdict(list)
        for row in self._range(BUDGET.format(step=int(self.step_seconds)), at - budget_lookback_seconds, at):
            fragments[_key(row["metric"])].append(_series(row))
        for (key, version), rows in fragments.items():
            fleet.budget[key][version] = merge_fragments(rows)
        for row in self._range(FEEDBACK.format(w=int(feedback_lookback_seconds)), at - feedback_lookback_seconds, at):
            key, version = _key(row["metric"])
            fleet.feedback[key][version][row["metric"].get("stakeholder", "")].append(_series(row))
        long = {_key(r["metric"]): _value(r["value"][1]) for r in self._instant(BURN_LONG, at)}
        short = {_key(r["metric"]): _value(r["value"][1]) for r in self._instant(BURN_SHORT, at)}
        for k in set(long) | set(short):
            fleet.burn[k[0]][k[1]] = (long.get(k), short.get(k))
        self._canary(fleet, at, int(analysis_seconds))
        self._shadow(fleet, at)
        if retraining is not None:
            self._retraining(fleet, at, retraining)
        fleet.queries = self._requests_sent - sent_before
        return fleet

    async def evaluate(self, at: float, *, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                       analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics:
        return await asyncio.to_thread(self._evaluate, at, budget_lookback_seconds, feedback_lookback_seconds,
                                       analysis_seconds, retraining)
