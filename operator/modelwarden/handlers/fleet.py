"""The fleet evaluator: one metrics cycle for every model at once (a fixed set of batched queries), and each
model's part of its answer.

What a cycle read is a :class:`FleetReading`, the reconciler's explicit metrics input.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from modelwarden.adapters.prometheus import FleetMetrics, MetricsProvider, MetricsUnavailable, RetrainingQuery
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.health import MetricsView
from modelwarden.engine.retraining import GateInputs, Report, due_window, label_window_start
from modelwarden.handlers import metrics as own_metrics

log = logging.getLogger("modelwarden.fleet")

# With no models, the look-backs of the policy defaults: a budget low for 15 minutes, feedback within an hour.
DEFAULT_SUSTAIN_SECONDS = api.RollbackPolicy().sustain_seconds
DEFAULT_FEEDBACK_WINDOW_SECONDS = api.CriticalFeedback().window_seconds
# Every look-back reaches 5 minutes before its window: a counter's first increase in the window needs a sample
# from before it, and the coverage guard must see whether a series existed when the window began.
LOOKBACK_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class FleetReading:
    """What the last cycle learned, as the reconciler reads it."""

    configured: bool  # False: no metrics source (no analysis, no triggers)
    fleet: FleetMetrics | None = None
    error: str | None = None  # why ``fleet`` is None although configured

    def view(self, namespace: str, name: str, spec: api.MLModelSpec) -> MetricsView | None:
        """The model's series for the engine: budgets, critical feedback from the counted stakeholders, burn."""
        fleet = self.fleet
        if fleet is None:
            return None
        key = fleet.for_model(namespace, name)
        counted = set(spec.rollback.critical_feedback.stakeholders)
        return MetricsView(
            at=fleet.at, step_seconds=fleet.step_seconds,
            budget=fleet.budget.get(key, {}),
            critical_feedback={version: [s for who, series in by_stakeholder.items() if who in counted
                                         for s in series]
                               for version, by_stakeholder in fleet.feedback.get(key, {}).items()},
            burn=fleet.burn.get(key, {}),
            canary=fleet.canary.get(key, {}),
            shadow=fleet.shadow.get(key, {}),
        )

    def gate_inputs(self, namespace: str, name: str, now: dt.datetime, bias: Report | None,
                    audit: Report | None) -> GateInputs | None:
        """The retraining gates' inputs; None while this cycle holds no retraining history (the engine waits)."""
        if not self.configured:
            return GateInputs(at=now.timestamp(), bias=bias, feature_audit=audit)
        fleet = self.fleet
        if fleet is None or fleet.retraining_at is None:
            return None
        key = fleet.for_model(namespace, name)
        return GateInputs(at=fleet.retraining_at, bias=bias, feature_audit=audit,
                          budget=fleet.retraining_budget.get(key),
                          labels=tuple(s for per_version in fleet.retraining_labels.get(key, {}).values()
                                       for s in per_version))


class FleetEvaluator:
    def __init__(self, metrics: MetricsProvider | None, interval: float) -> None:
        self.metrics = metrics
        self.interval = interval
        self.fleet: FleetMetrics | None = None
        self.error: str | None = None

    def reading(self) -> FleetReading:
        return FleetReading(configured=self.metrics is not None, fleet=self.fleet, error=self.error)

    async def evaluate(self, now: dt.datetime, models: Iterable[tuple[api.MLModelSpec, api.MLModelStatus]]) -> None:
        """One cycle: a fixed set of batched queries for the whole fleet (``models`` are every model's spec and
        status, for the look-backs they need)."""
        assert self.metrics is not None
        specs = []
        retraining: RetrainingQuery | None = None
        for spec, status in models:
            specs.append(spec)
            # Retraining gate history only when some window is due: two more queries, for the whole fleet.
            window = due_window(spec, status, now)
            if window is not None:
                since = label_window_start(spec, status, window).timestamp()
                budget = spec.retraining.budget_window_seconds
                retraining = RetrainingQuery(budget, since) if retraining is None else RetrainingQuery(
                    max(budget, retraining.budget_seconds), min(since, retraining.labels_since))
        budget_lookback = max([s.rollback.sustain_seconds for s in specs] or [DEFAULT_SUSTAIN_SECONDS])
        feedback_lookback = max([s.rollback.critical_feedback.window_seconds for s in specs]
                                or [DEFAULT_FEEDBACK_WINDOW_SECONDS])
        started = asyncio.get_running_loop().time()
        try:
            self.fleet = await self.metrics.evaluate(
                now.timestamp(), budget_lookback_seconds=budget_lookback + LOOKBACK_MARGIN_SECONDS,
                feedback_lookback_seconds=feedback_lookback + LOOKBACK_MARGIN_SECONDS,
                analysis_seconds=int(self.interval), retraining=retraining)
            own_metrics.EVALUATION_QUERIES.set(self.fleet.queries)
            self.error = None
            log.info("evaluation: %d queries for %d models in %.3fs", self.fleet.queries, len(specs),
                     asyncio.get_running_loop().time() - started)
        except MetricsUnavailable as e:
            self.fleet, self.error = None, str(e)
            log.warning("metrics unavailable: %s", e)
        own_metrics.EVALUATION_SECONDS.observe(asyncio.get_running_loop().time() - started)
