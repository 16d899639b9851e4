"""Prometheus metrics. The names and labels are an API (DESIGN §4): recording rules, rollback triggers and
dashboards depend on them. Every label set this process can produce is created at 0 at start-up, so a rate
over a fresh series is exact rather than missing, and the hot path uses pre-bound children."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from model_server.governance import GovernanceState

# The *_created series double the scrape size and no rule or dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

OUTCOMES = ("success", "neutral", "client_error", "error", "unavailable")
ERROR_KINDS = (
    "FEATURE_MISMATCH",   # names offered do not match the contract (422)
    "INVALID_INPUT",      # malformed JSON or body, wrong types, non-finite or out-of-range inputs, oversize (4xx)
    "PREDICT_ERROR",      # the model raised while scoring valid input (500)
    "NON_FINITE_OUTPUT",  # the model answered NaN/inf on inputs that are not extreme (a model failure)
    "ARTIFACT_REJECTED",  # SHA256 mismatch, untrusted types, manifest problems: nothing is served from it
    "LOAD_ERROR",         # the artifact verified but could not be loaded or warmed up
)
SEVERITIES = ("info", "minor", "major", "critical")
STAKEHOLDERS = ("finance", "regulator", "risk", "operations", "customer", "other")
PREDICTION_SCORE_FEATURE = "__prediction__"  # the ml_feature_drift_psi `feature` of the model's output
# Inference answers are counted in plain Python and folded into their Prometheus series (the outcome counter and
# the latency histogram) this many at a time, and before every scrape: their lock-taking inc/observe cost ~2 µs
# per answer; a fold costs ~0.01 µs per answer.
FOLD_ANSWERS = 1024
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, model: str, version: str, track: str, sha256: str, drift_features: Iterable[str],
                 slo_objective_ratio: float = 0.999) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._model, self._version, self._track = model, version, track
        r = self.registry
        self.requests = Counter("ml_inference_requests", "Inference requests by outcome.",
                                ["model", "version", "track", "outcome"], registry=r)
        self.latency = Histogram("ml_inference_latency_seconds", "Inference request latency (server side).",
                                 ["model", "version", "track"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("ml_model_errors", "Model errors by kind.",
                              ["model", "version", "track", "kind"], registry=r)
        self.feedback = Counter("ml_feedback_labels", "Durably stored human feedback labels.",
                                ["model", "version", "severity", "stakeholder"], registry=r)
        self.drift = Gauge("ml_feature_drift_psi", "PSI of the sliding window against the training reference.",
                           ["model", "version", "feature"], registry=r)
        self.governance = Gauge("ml_governance_state", "1 for the current governance state, 0 for the others.",
                                ["model", "version", "state"], registry=r)
        self.info = Gauge("ml_model_info", "1 once the artifact with this SHA256 is verified and loaded.",
                          ["model", "version", "sha256"], registry=r)
        self.slo_objective = Gauge("ml_slo_objective_ratio",
                                   "The model's availability objective (0.999 for 99.9%), for the budget rules.",
                                   ["model", "version"], registry=r)
        self.records_dropped = Counter("ml_prediction_records_dropped",
                                       "Prediction records dropped because the feedback store was down or "
                                       "lagged (the buffer was full).",
                                       ["model", "version"], registry=r)

        self.store_up = Gauge("ml_feedback_store_up",
                              "1 while the feedback store answers; 0 while it is down (feedback answers 503, "
                              "prediction records wait in memory).", ["model", "version"], registry=r)
        self.records_pending = Gauge("ml_prediction_records_pending",
                                     "Prediction records waiting in memory for the feedback store.",
                                     ["model", "version"], registry=r)

        mvt = (model, version, track)
        self.outcome = {o: self.requests.labels(*mvt, o) for o in OUTCOMES}
        self.latency_child = self.latency.labels(*mvt)
        self.error = {k: self.errors.labels(*mvt, k) for k in ERROR_KINDS}
        for severity in SEVERITIES:
            for stakeholder in STAKEHOLDERS:
                self.feedback.labels(model, version, severity, stakeholder)
        self.drift_child = {f: self.drift.labels(model, version, f) for f in drift_features}
        self.state_child = {s: self.governance.labels(model, version, s.value) for s in GovernanceState}
        self.info_child = self.info.labels(model, version, sha256)
        self.info_child.set(0)
        self.records_dropped_child = self.records_dropped.labels(model, version)
        self.store_up_child = self.store_up.labels(model, version)
        self.records_pending_child = self.records_pending.labels(model, version)
        self.slo_objective.labels(model, version).set(slo_objective_ratio)
        self.answers_folded = 0  # inference answers counted in ml_inference_requests_total so far
        self._answer_outcomes = dict.fromkeys(OUTCOMES, 0)
        self._answer_seconds: list[float] = []
        self._latency_bounds = np.asarray(self.latency_child._upper_bounds)  # ends with +Inf

    def answered(self, outcome: str, seconds: float) -> None:
        """One inference answer: its outcome and latency, folded into their series in batches (see
        :meth:`fold`)."""
        self._answer_outcomes[outcome] += 1
        pending = self._answer_seconds
        pending.append(seconds)
        if len(pending) >= FOLD_ANSWERS:
            self.fold()

    def fold(self) -> int:
        """Count the answers not yet in ml_inference_requests_total and ml_inference_latency_seconds there (what
        :meth:`render` does first, so a scrape sees every answer given before it); the answers so far."""
        seconds, self._answer_seconds = self._answer_seconds, []
        if seconds:
            values = np.asarray(seconds)
            # Histogram.observe's bucket: the first upper bound >= the value.
            counts = np.bincount(np.searchsorted(self._latency_bounds, values, side="left"),
                                 minlength=len(self._latency_bounds))
            child = self.latency_child
            for i in np.flatnonzero(counts).tolist():
                child._buckets[i].inc(int(counts[i]))
            child._sum.inc(float(values.sum()))
        outcomes = self._answer_outcomes
        for outcome, n in outcomes.items():
            if n:
                self.outcome[outcome].inc(n)
                self.answers_folded += n
                outcomes[outcome] = 0
        return self.answers_folded

    def add_drift_features(self, features: Iterable[str]) -> None:
        for f in features:
            if f not in self.drift_child:
                self.drift_child[f] = self.drift.labels(self._model, self._version, f)

    def set_state(self, state: GovernanceState) -> None:
        for s, child in self.state_child.items():
            child.set(1 if s is state else 0)

    def count_feedback(self, model: str, version: str, severity: str, stakeholder: str) -> None:
        """Labels count for the version that made the prediction, whichever replica stored them."""
        self.feedback.labels(model, version, severity, stakeholder).inc()

    def render(self) -> bytes:
        self.fold()
        return generate_latest(self.registry)

