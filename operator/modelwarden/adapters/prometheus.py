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

    def for_model(self, namespace: str, model: str) -> ModelKey:
        """Series scraped in Kubernetes carry ``namespace``; a plain scrape config may not."""
        key = (namespace, model)
        for table in (self.budget, self.feedback, self.burn, self.canary):
            if key in table:
                return key
        return ("", model)


class MetricsProvider(Protocol):
    async def evaluate(self, at: float, *, lookback_seconds: float, analysis_seconds: int) -> FleetMetrics: ...


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

    def _range(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        try:
            result = self._prom.custom_query_range(
                query, start_time=dt.datetime.fromtimestamp(start, dt.UTC),
                end_time=dt.datetime.fromtimestamp(end, dt.UTC), step=f"{int(self.step_seconds)}s",
                timeout=self._timeout)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as e:
            raise MetricsUnavailable(f"{query}: {e}") from e
        return list(result or [])

    def _evaluate(self, at: float, lookback_seconds: float, analysis_seconds: int) -> FleetMetrics:
        fleet = FleetMetrics(at=at, step_seconds=self.step_seconds)
        start = at - lookback_seconds
        for row in self._range(BUDGET.format(step=int(self.step_seconds)), start, at):
            key, version = _key(row["metric"])
            fleet.budget[key][version] = [(float(t), _value(v)) for t, v in row.get("values", [])]
        for row in self._range(FEEDBACK, start, at):
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
        return fleet

    async def evaluate(self, at: float, *, lookback_seconds: float, analysis_seconds: int) -> FleetMetrics:
        return await asyncio.to_thread(self._evaluate, at, lookback_seconds, analysis_seconds)
