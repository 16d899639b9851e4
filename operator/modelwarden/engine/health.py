"""What the metrics say about the versions being served: triggers for the stable version, analysis for the
canary, and the Healthy condition. Pure; the numbers come from the metrics adapter as raw series.

Burn is attributed to a version: only the versions being served are judged, so after a rollback to
v(n-1) the old low budget of v(n) cannot roll anything back again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from modelwarden.api.v1alpha1 import MLModelSpec, MLModelStatus
from modelwarden.engine.shadow_gate import ShadowNumbers, assess_shadow
from modelwarden.engine.triggers import (
    FAST_BURN,
    Assessment,
    CanaryNumbers,
    Samples,
    assess_canary,
    assess_critical_feedback,
    assess_error_budget,
    assess_fast_burn,
)


@dataclass(frozen=True)
class MetricsView:
    """One evaluation's numbers for one model, keyed by version. Built from batched queries."""

    at: float
    step_seconds: float
    budget: Mapping[str, Samples] = field(default_factory=dict)
    critical_feedback: Mapping[str, Sequence[Samples]] = field(default_factory=dict)
    burn: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    canary: Mapping[str, CanaryNumbers] = field(default_factory=dict)
    shadow: Mapping[str, ShadowNumbers] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    # the first trigger that fired for the stable version, if any
    stable_trigger: Assessment | None = None
    # canary analysis: Fired (fail), Clear (pass) or NoData (no verdict: do not promote)
    canary: Assessment | None = None
    no_data: tuple[Assessment, ...] = ()
    clear: tuple[Assessment, ...] = ()
    # the running shadow stage's verdict (None: no stage running); never part of no_data or clear
    shadow: Assessment | None = None

    @property
    def metrics_unavailable(self) -> bool:
        return bool(self.no_data)


def judge(spec: MLModelSpec, status: MLModelStatus, metrics: MetricsView | None, now: datetime) -> Health | None:
    """None when no metrics source is configured (no analysis, no triggers); otherwise the verdicts."""
    del now  # the view carries its own evaluation time
    if metrics is None:
        return None
    policy = spec.rollback
    results: list[Assessment] = []
    stable_fired: Assessment | None = None
    if status.stable is not None:
        version = status.stable.version
        budget = assess_error_budget(
            metrics.budget.get(version), now=metrics.at, floor=float(Decimal(policy.error_budget_floor_percent)) / 100,
            sustain_seconds=policy.sustain_seconds, step_seconds=metrics.step_seconds)
        feedback = assess_critical_feedback(
            metrics.critical_feedback.get(version, ()), now=metrics.at,
            window_seconds=policy.critical_feedback.window_seconds, threshold=policy.critical_feedback.threshold)
        stable_results = [budget, feedback]
        if policy.fast_burn.enabled:
            long, short = metrics.burn.get(version, (None, None))
            stable_results.append(assess_fast_burn(long, short, factor=float(Decimal(policy.fast_burn.factor))))
        results += stable_results
        stable_fired = next((r for r in stable_results if r.fired), None)
    canary: Assessment | None = None
    if status.canary is not None and status.canary_weight > 0:
        analysis = spec.rollout.analysis
        canary = assess_canary(metrics.canary.get(status.canary.version),
                               max_error_ratio=analysis.max_error_ratio,
                               max_p99_latency_ms=analysis.max_p99_latency_ms,
                               max_feature_mismatch=analysis.max_feature_mismatch,
                               min_requests=analysis.min_requests)
        feedback = assess_critical_feedback(
            metrics.critical_feedback.get(status.canary.version, ()), now=metrics.at,
            window_seconds=policy.critical_feedback.window_seconds, threshold=policy.critical_feedback.threshold)
        if feedback.fired and not canary.fired:
            canary = feedback
        results.append(canary)
    # A verdict only needs its own data: NoData on one trigger does not hide another that fired. Burn rates
    # are absent whenever a window saw no requests; that is quiet, not unavailable.
    no_data = tuple(r for r in results if r.verdict == "NoData" and r is not canary and r.trigger != FAST_BURN)
    if canary is not None and canary.verdict == "NoData" and not _too_few_requests(canary):
        no_data += (canary,)
    shadow = spec.rollout.shadow
    shadow_verdict = None
    if (shadow is not None and status.canary is not None and status.shadow is not None
            and status.shadow.verdict == "Running" and status.shadow.version == status.canary.version):
        shadow_verdict = assess_shadow(metrics.shadow.get(status.canary.version), shadow,
                                       max_feature_mismatch=spec.rollout.analysis.max_feature_mismatch)
    return Health(stable_trigger=stable_fired, canary=canary, no_data=no_data,
                  clear=tuple(r for r in results if r.verdict == "Clear"), shadow=shadow_verdict)


def _too_few_requests(canary: Assessment) -> bool:
    """A canary with too little traffic has no verdict yet, but its metrics are not unavailable."""
    return "requests" in canary.values


def budget_percent(metrics: MetricsView | None, version: str | None) -> str | None:
    """The latest budget of ``version`` as a whole percent string for status (None when unknown). Whole: a finer
    figure changes every cycle, and status is written only on change — 1,000 models would rewrite theirs every
    cycle for a display field. The triggers judge the series itself, never this."""
    if metrics is None or version is None:
        return None
    samples = [v for _, v in metrics.budget.get(version, ()) if v == v]  # drop NaN
    if not samples:
        return None
    return f"{samples[-1] * 100:.0f}"
