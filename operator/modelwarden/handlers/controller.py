"""The controller: watch caches, the fleet evaluator and the per-model reconciler, driven by a work queue.

kopf's watch streams feed :class:`~modelwarden.handlers.caches.WatchCaches`, which wake the affected model;
workers take keys off a deduplicating queue and run :meth:`Reconciler.reconcile` on what the caches hold and
what the last evaluation cycle (:class:`~modelwarden.handlers.fleet.FleetEvaluator`) read. All state is read
before deciding; the status is written only when it changed, guarded by resourceVersion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelwarden.adapters.artifact_store import ArtifactStore, ReportReader, URIArtifactStore
from modelwarden.adapters.feedback_store import FeedbackEvidence
from modelwarden.adapters.kube import EventRecorder, KubeError, ModelStatusWriter, Workloads
from modelwarden.adapters.ledger import LedgerWriter
from modelwarden.adapters.model_actions import ActionStatusWriter
from modelwarden.adapters.notify import Annotator, LogOnly, Notifier
from modelwarden.adapters.prometheus import FleetMetrics, MetricsProvider
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.adapters.server_admin import HTTPServerAdmin, ServerAdmin
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.rollback import WAIT_PAGE_SECONDS
from modelwarden.handlers import metrics as own_metrics
from modelwarden.handlers.actions import ActionApplier
from modelwarden.handlers.caches import Key, WatchCaches
from modelwarden.handlers.fleet import FleetEvaluator
from modelwarden.handlers.reconciler import Reconciler
from modelwarden.handlers.verification import VerificationPool
from modelwarden.handlers.workqueue import WorkQueue

log = logging.getLogger("modelwarden.controller")

Clock = Callable[[], dt.datetime]
# A pass that raised (the API server answered 429 or 5xx, the ledger write failed) is retried with a bounded,
# jittered exponential backoff per model: soon for a blip, never faster than this for an outage, and a fleet of
# models never retries in step against a throttling API server. Every step of a pass is idempotent (a rollback's
# id is derived from the status it decided on), so a retried pass repeats nothing a person would see twice.
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


def retry_after_failures(failures: int) -> float:
    """Seconds before the next try after ``failures`` consecutive failed passes (full jitter in [50%, 100%])."""
    return float(min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0))
# A status write that lost a race is retried this soon (the newer object is usually there by then).
CONFLICT_RETRY_SECONDS = 0.5


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Controller:
    workloads: Workloads
    status_writer: ModelStatusWriter
    events: EventRecorder
    artifacts: ArtifactStore
    router_for: Callable[[api.MLModelSpec], TrafficRouter]
    clock: Clock = utcnow
    resync_seconds: float = 60.0
    workers: int = 4
    metrics: MetricsProvider | None = None
    evaluation_interval: float = 30.0
    notifier: Notifier = field(default_factory=LogOnly)
    annotator: Annotator = field(default_factory=LogOnly)
    server_admin: ServerAdmin = field(default_factory=lambda: HTTPServerAdmin(None))
    feedback_evidence: FeedbackEvidence | None = None
    reports: ReportReader = field(default_factory=URIArtifactStore)
    action_status: ActionStatusWriter | None = None
    ledger: LedgerWriter | None = None
    fault: Callable[[str], None] | None = None
    # artifact verifications in flight at once (at most one per namespace; handlers/verification.py)
    verification_capacity: int = 2

    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    verification: VerificationPool = field(init=False)
    caches: WatchCaches = field(init=False)
    evaluator: FleetEvaluator = field(init=False)
    applier: ActionApplier = field(init=False)
    reconciler: Reconciler = field(init=False)
    # The evaluation cycle in flight: when it started and the models it has not decided yet (for its log line).
    _cycle_started: float = 0.0
    _cycle_pending: set[Key] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Consecutive failed passes per model (the backoff of the next retry), since when, and the rollbacks that
    # paged because of them (once each).
    _failures: dict[Key, int] = field(default_factory=dict)
    _failing_since: dict[Key, dt.datetime] = field(default_factory=dict)
    _paged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.caches = WatchCaches(wake=self.queue.add, forget=self._forget)
        self.evaluator = FleetEvaluator(self.metrics, self.evaluation_interval)
        self.applier = ActionApplier(self.workloads, self.events, notifier=self.notifier, annotator=self.annotator,
                                     server_admin=self.server_admin, feedback_evidence=self.feedback_evidence)
        self.verification = VerificationPool(wake=self.queue.add, capacity=self.verification_capacity)
        self.reconciler = Reconciler(artifacts=self.artifacts, reports=self.reports, router_for=self.router_for,
                                     applier=self.applier, status_writer=self.status_writer, events=self.events,
                                     workloads=self.workloads, resync_seconds=self.resync_seconds,
                                     action_status=self.action_status, ledger=self.ledger, fault=self.fault,
                                     verification=self.verification)

    @property
    def models(self) -> dict[Key, dict[str, Any]]:
        return self.caches.models

    @property
    def fleet(self) -> FleetMetrics | None:
        return self.evaluator.fleet

    def prime(self, snapshot: Any) -> None:
        self.caches.prime(snapshot)

    def _forget(self, key: Key) -> None:
        self.applier.forget(key)
        self.verification.forget(key)
        self._failures.pop(key, None)
        self._failing_since.pop(key, None)
        self.reconciler.rolling_back.pop(key, None)
        self._decided(key)

    # --- the loop ---

    def start(self) -> None:
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"modelwarden-worker-{i}"))
        if self.evaluator.metrics is not None:
            self._tasks.append(asyncio.create_task(self._evaluate_forever(), name="modelwarden-evaluation"))

    async def evaluate_once(self) -> None:
        """One evaluation cycle for the whole fleet, then every model decides on it."""
        parsed = []
        for key, body in list(self.caches.models.items()):
            try:
                parsed.append(self.caches.parse(key, body))
            except ValidationError:
                continue
        started = asyncio.get_running_loop().time()
        await self.evaluator.evaluate(self.clock(), parsed)
        self._cycle_started, self._cycle_pending = started, set(self.caches.models)
        for key in list(self.caches.models):
            self.queue.add(key, sweep=True)

    def _decided(self, key: Key) -> None:
        if key not in self._cycle_pending:
            return
        self._cycle_pending.discard(key)
        if not self._cycle_pending:
            log.info("evaluation cycle: every model decided %.3fs after it started",
                     asyncio.get_running_loop().time() - self._cycle_started)

    async def _evaluate_forever(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self.evaluate_once()
            except Exception:
                log.exception("evaluation cycle failed")
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self.evaluation_interval - elapsed))

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                requeue = await self.run_pass(key)
            finally:
                self.queue.done(key)
                self._decided(key)
            if requeue is not None and key in self.caches.models:
                self.queue.add_after(key, requeue, sweep=requeue >= self.resync_seconds)

    async def run_pass(self, key: Key) -> float | None:
        """One pass as a worker runs it: a failed pass is retried after its backoff (and may page), never lost."""
        try:
            with own_metrics.RECONCILE_SECONDS.time():
                requeue = await self.reconcile(key)
            own_metrics.RECONCILES.labels(result="success").inc()
        except Exception as e:
            own_metrics.RECONCILES.labels(result="error").inc()
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            requeue = retry_after_failures(failures)
            if isinstance(e, KubeError):  # the API server's (or the ledger's) answer, not a bug: no traceback
                log.warning("reconciling %s/%s failed (%d in a row): %s; retrying in %.1fs", *key, failures, e,
                            requeue)
            else:
                log.exception("reconciling %s/%s failed; retrying in %.1fs", *key, requeue)
            await self.page_if_rollback_stuck(key, e)
            return requeue
        self._failures.pop(key, None)
        self._failing_since.pop(key, None)
        return requeue

    async def page_if_rollback_stuck(self, key: Key, error: Exception) -> None:
        """A rollback whose passes have failed for WAIT_PAGE_SECONDS (the API server throttles, the ledger cannot
        be written) pages once, under the rollback's own id: the same incident, the same page (its dedup key)."""
        now = self.clock()
        since = self._failing_since.setdefault(key, now)
        rb = self.reconciler.rolling_back.get(key)
        if rb is None or rb.id in self._paged or (now - since).total_seconds() < WAIT_PAGE_SECONDS:
            return
        self._paged.add(rb.id)
        summary = (f"{rb.message}; the rollback {rb.id} to {rb.to_version} has failed for "
                   f"{(now - since).total_seconds() / 60:.0f}m: {error}; {rb.from_version} may still serve")
        failure = await self.notifier.notify(key[1], key[0], "page", summary, rb)
        if failure:
            log.warning("%s/%s: the page for %s failed: %s", *key, rb.id, failure)

    async def reconcile(self, key: Key) -> float | None:
        """One pass for one model; returns seconds until it wants to run again."""
        try:
            state = self.caches.state(key)
        except ValidationError as e:
            # The CRD schema should make this impossible; say so loudly rather than guess.
            log.error("%s/%s does not parse: %s", *key, e)
            return None
        if state is None:
            return None
        outcome = await self.reconciler.reconcile(state, self.evaluator.reading(), self.clock())
        if outcome.conflict:
            self.queue.add_after(key, CONFLICT_RETRY_SECONDS)
        elif outcome.written is not None:
            self.caches.store_written(key, state.body, outcome.written)
        return outcome.requeue_after
