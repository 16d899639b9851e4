"""The operator's own Prometheus metrics (``modelwarden_*``), in a registry of their own, served on
``--metrics-address`` (default 127.0.0.1:8080; the chart binds 0.0.0.0 in the pod).

The names are an API like the servers' (dashboards and alerts may use them); every label set starts at 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_RESULTS = ("success", "error")
RECONCILES = Counter("modelwarden_reconcile", "Reconcile passes of one MLModel, by result.", ["result"],
                     registry=REGISTRY)
for _result in RECONCILE_RESULTS:
    RECONCILES.labels(result=_result)
RECONCILE_SECONDS = Histogram(
    "modelwarden_reconcile_duration_seconds", "Time of one reconcile pass (observe, decide, apply, write status).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
EVALUATION_SECONDS = Histogram(
    "modelwarden_evaluation_duration_seconds", "Time of one fleet-wide metrics evaluation cycle (Prometheus queries).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
EVALUATION_QUERIES = Gauge("modelwarden_evaluation_queries",
                           "HTTP requests the last evaluation cycle sent to Prometheus.", registry=REGISTRY)
ROLLBACKS = Counter("modelwarden_rollbacks", "Rollbacks started (automatic or manual).", registry=REGISTRY)
LEADER = Gauge("modelwarden_leader", "1 while this replica holds the leader Lease and acts (always 1 standalone).",
               registry=REGISTRY)
MODELS = Gauge("modelwarden_models", "MLModels in this replica's cache.", registry=REGISTRY)
WORKQUEUE_DEPTH = Gauge("modelwarden_workqueue_depth", "Models waiting in the work queue.", registry=REGISTRY)
VERIFICATION_OUTCOMES = ("Verified", "ArtifactUnavailable", "ArtifactTooLarge", "VerificationTimedOut")
VERIFICATIONS = Counter("modelwarden_artifact_verifications",
                        "Artifact verifications finished by the verification pool, by outcome (Verified: a sha256 "
                        "was read, matching or not).", ["outcome"], registry=REGISTRY)
for _outcome in VERIFICATION_OUTCOMES:
    VERIFICATIONS.labels(outcome=_outcome)
VERIFICATIONS_WAITING = Gauge("modelwarden_artifact_verifications_waiting",
                              "Artifact verifications waiting for a slot (every namespace).", registry=REGISTRY)
VERIFICATIONS_RUNNING = Gauge("modelwarden_artifact_verifications_running",
                              "Artifact verifications in flight (at most one per namespace).", registry=REGISTRY)


_rollbacks_counted: dict[tuple[str, str, str], None] = {}


def rollback_started(namespace: str, model: str, rollback_id: str) -> None:
    """Count a rollback once, even if its first pass is decided again (a status write that lost a race). A
    rollback id is unique per model only: models rolled back in the same evaluation share it."""
    key = (namespace, model, rollback_id)
    if key in _rollbacks_counted:
        return
    _rollbacks_counted[key] = None
    if len(_rollbacks_counted) > 10_000:
        del _rollbacks_counted[next(iter(_rollbacks_counted))]
    ROLLBACKS.inc()


def track_sizes(models: Callable[[], int], queue_depth: Callable[[], int]) -> None:
    """Read the cache and queue sizes at scrape time."""
    MODELS.set_function(lambda: float(models()))
    WORKQUEUE_DEPTH.set_function(lambda: float(queue_depth()))


def parse_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:8080`` for IPv6) → (host, port); empty → None (no metrics endpoint)."""
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(address: str) -> WSGIServer | None:
    """Start the /metrics endpoint in a daemon thread; returns the server (``.server_port`` is the bound port).
    A port that cannot be bound fails loudly (OSError) at start, before the operator acts."""
    parsed = parse_address(address)
    if parsed is None:
        return None
    host, port = parsed
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server


LEDGER_HEAD_SEQ = Gauge("modelwarden_ledger_head_seq", "The decision ledger's newest record (seq) per model.",
                        ["namespace", "model"], registry=REGISTRY)
LEDGER_HEAD = Gauge("modelwarden_ledger_head", "The decision ledger's head hash per model (one series, value 1): "
                    "compare it with `modelwarden ledger verify`.", ["namespace", "model", "hash"], registry=REGISTRY)
_ledger_heads: dict[tuple[str, str], str] = {}


def ledger_head(namespace: str, model: str, seq: int, head_hash: str) -> None:
    """Publish a model's ledger head; the previous head's series goes (one series per model)."""
    old = _ledger_heads.get((namespace, model))
    if old is not None and old != head_hash:
        with contextlib.suppress(KeyError):
            LEDGER_HEAD.remove(namespace, model, old)
    _ledger_heads[(namespace, model)] = head_hash
    LEDGER_HEAD.labels(namespace, model, head_hash).set(1)
    LEDGER_HEAD_SEQ.labels(namespace, model).set(seq)
LEDGER_WRITES = Gauge("modelwarden_ledger_writes", "API writes the decision ledger made (creates and appends).",
                      registry=REGISTRY)
LEDGER_RECORDS = Gauge("modelwarden_ledger_records", "Records this operator appended to decision ledgers.",
                       registry=REGISTRY)


def track_ledger(writes: Callable[[], int], records: Callable[[], int]) -> None:
    """Read the ledger's write and record counts at scrape time (writes per record is what a decision costs)."""
    LEDGER_WRITES.set_function(lambda: float(writes()))
    LEDGER_RECORDS.set_function(lambda: float(records()))


PREREQUISITE_MISSING = Gauge(
    "modelwarden_prerequisite_missing",
    "1 while something the operator needs but can run without is missing (e.g. the namespace that holds the "
    "ledger's public keys); the log names it and says how to fix it.", ["prerequisite"], registry=REGISTRY)


def prerequisite(name: str, missing: bool) -> None:
    PREREQUISITE_MISSING.labels(prerequisite=name).set(1 if missing else 0)
