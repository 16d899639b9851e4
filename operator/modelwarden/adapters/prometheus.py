"""The metrics edge: one evaluation cycle of batched PromQL over prometheus-api-client.

Every query is ``by (namespace, model, version, …)`` for the whole fleet, so a cycle issues a fixed number
of queries however many MLModels exist (:data:`QUERIES_PER_CYCLE`). Every call has a timeout; transport and
API errors become :class:`MetricsUnavailable`; empty or NaN answers stay NaN/absent and become NoData in
the engine — never a number.
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

from modelwarden.engine.triggers import CanaryNumbers

ModelKey = tuple[str, str]  # (namespace, model); namespace "" when the series carry no namespace label

# Prometheus fills a range query's steps with the last sample for up to 5 minutes (lookback); the `and`
# keeps only steps with a real sample in their own step window, so a gap reads as a gap.
BUDGET = ('ml_inference_error_budget_remaining{{version!=""}} '
          'and count_over_time(ml_inference_error_budget_remaining{{version!=""}}[{step}s])')
FEEDBACK = 'sum by (namespace, model, version, stakeholder) (ml_feedback_labels_total{severity="critical"})'
BURN_LONG = "ml:inference_burn_rate:rate1h"
BURN_SHORT = "ml:inference_burn_rate:rate5m"
CANARY_REQUESTS = ('sum by (namespace, model, version) '
                   '(increase(ml_inference_requests_total{{track="canary",outcome!="client_error"}}[{w}s]))')
CANARY_ERRORS = ('sum by (namespace, model, version) '
                 '(increase(ml_inference_requests_total{{track="canary",outcome=~"error|unavailable"}}[{w}s]))')
CANARY_P99 = ('histogram_quantile(0.99, sum by (namespace, model, version, le) '
              '(rate(ml_inference_latency_seconds_bucket{{track="canary"}}[{w}s])))')
CANARY_MISMATCH = ('sum by (namespace, model, version) '
                   '(increase(ml_model_errors_total{{track="canary",kind="FEATURE_MISMATCH"}}[{w}s]))')
QUERIES_PER_CYCLE = 8
# Retraining gates, only in a cycle where some model's window is due (engine.retraining.due_window); one query
# each for the whole fleet. The model-level budget (recording rule with scope="model": all versions together)
# as the lowest sample of each 5-minute step — a step without a sample stays absent, so gaps show as gaps.
RETRAINING_BUDGET = 'min_over_time(ml_inference_error_budget_remaining{{scope="model"}}[{step}s])'
# Raw counters summed per version; the engine counts the exact increase (resets count from 0).
RETRAINING_LABELS = "sum by (namespace, model, version) (ml_feedback_labels_total)"
RETRAINING_QUERIES = 2
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
    budget: dict[ModelKey, dict[str, Series]] = field(default_factory=lambda: defaultdict(dict))
    # (namespace, model) -> version -> stakeholder -> series
    feedback: dict[ModelKey, dict[str, dict[str, Series]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict)))
    burn: dict[ModelKey, dict[str, tuple[float | None, float | None]]] = field(
        default_factory=lambda: defaultdict(dict))
    canary: dict[ModelKey, dict[str, CanaryNumbers]] = field(default_factory=lambda: defaultdict(dict))
    queries: int = 0
    # Retraining gate inputs, when this cycle fetched them (``retraining_at`` is None otherwise).
    retraining_at: float | None = None
    retraining_budget: dict[ModelKey, Series] = field(default_factory=dict)
    # (namespace, model) -> version -> summed label counter
    retraining_labels: dict[ModelKey, dict[str, Series]] = field(default_factory=lambda: defaultdict(dict))

    def for_model(self, namespace: str, model: str) -> ModelKey:
        """Series scraped in Kubernetes carry ``namespace``; a plain scrape config may not."""
        key = (namespace, model)
        for table in (self.budget, self.feedback, self.burn, self.canary, self.retraining_budget,
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


class PrometheusMetrics:
    def __init__(self, url: str, *, timeout_seconds: float = 10.0, step_seconds: float = 30.0) -> None:
        self._prom = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_seconds)
        self._timeout = timeout_seconds
        self.step_seconds = step_seconds

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
            fleet.retraining_budget[key] = [(float(t), _value(v)) for t, v in row.get("values", [])]
        # Coarse steps over a long span; start a step early so each counter has a baseline before the window.
        span = at - query.labels_since
        label_step = max(RETRAINING_BUDGET_STEP, math.ceil(span / MAX_POINTS / 60) * 60)
        for row in self._range(RETRAINING_LABELS, query.labels_since - label_step, at, label_step):
            key, version = _key(row["metric"])
            fleet.retraining_labels[key][version] = [(float(t), _value(v)) for t, v in row.get("values", [])]
        fleet.retraining_at = at
        fleet.queries += RETRAINING_QUERIES

    def _evaluate(self, at: float, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                  analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics:
        fleet = FleetMetrics(at=at, step_seconds=self.step_seconds)
        # Each range only as long as its triggers look back: the budget query is the largest answer of a cycle.
        for row in self._range(BUDGET.format(step=int(self.step_seconds)), at - budget_lookback_seconds, at):
            key, version = _key(row["metric"])
            fleet.budget[key][version] = [(float(t), _value(v)) for t, v in row.get("values", [])]
        for row in self._range(FEEDBACK, at - feedback_lookback_seconds, at):
            key, version = _key(row["metric"])
            stakeholder = row["metric"].get("stakeholder", "")
            fleet.feedback[key][version][stakeholder] = [(float(t), _value(v)) for t, v in row.get("values", [])]
        long = {_key(r["metric"]): _value(r["value"][1]) for r in self._instant(BURN_LONG, at)}
        short = {_key(r["metric"]): _value(r["value"][1]) for r in self._instant(BURN_SHORT, at)}
        for k in set(long) | set(short):
            fleet.burn[k[0]][k[1]] = (long.get(k), short.get(k))
        w = int(analysis_seconds)
        columns = [{_key(r["metric"]): _value(r["value"][1]) for r in self._instant(q.format(w=w), at)}
                   for q in (CANARY_REQUESTS, CANARY_ERRORS, CANARY_P99, CANARY_MISMATCH)]
        for k in set().union(*columns):
            requests_, errors, p99, mismatch = (c.get(k) for c in columns)
            fleet.canary[k[0]][k[1]] = CanaryNumbers(requests=requests_, errors=errors, p99_latency_seconds=p99,
                                                     feature_mismatches=mismatch)
        fleet.queries = QUERIES_PER_CYCLE
        if retraining is not None:
            self._retraining(fleet, at, retraining)
        return fleet

    async def evaluate(self, at: float, *, budget_lookback_seconds: float, feedback_lookback_seconds: float,
                       analysis_seconds: int, retraining: RetrainingQuery | None = None) -> FleetMetrics:
        return await asyncio.to_thread(self._evaluate, at, budget_lookback_seconds, feedback_lookback_seconds,
                                       analysis_seconds, retraining)
