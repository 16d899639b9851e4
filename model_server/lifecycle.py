"""The server's lifecycle: start-up, loading the model, the background jobs, shutdown - and readiness, which
follows from them. Scoring is :mod:`model_server.dataplane`'s; this module installs the model there.

Background jobs (each on the event loop, every N seconds, a failure logged and the next round still run):
writing buffered prediction records, the heartbeat line, drift (computed on its own low-priority thread),
the shadow comparison's PSI, and the feedback store's retention purge.

Nothing here waits for the feedback store (issue 24): a rollback restores pods while PostgreSQL may be down,
and ``/predict`` does not need it. The store is connected (and its schema migrated) by a background task that
retries with capped, jittered backoff; until then, and whenever it is down, feedback answers 503 with
``Retry-After`` and prediction records wait in the bounded buffer (what overflows is counted in
``ml_prediction_records_dropped_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from model_server.accounting import ErrorAccount
from model_server.config import Settings
from model_server.dataplane import DataPlane, tune_for_serving
from model_server.feedback import FeedbackDesk, StoreThread
from model_server.governance import Governance, GovernanceState
from model_server.http import HttpError
from model_server.loader import ArtifactRejected, ModelLoadError, load_artifact, warm_up
from model_server.logs import EventLog
from model_server.metrics import ServerMetrics
from model_server.priority import background_priority
from model_server.records import RecordBuffer
from model_server.shadow import Comparator, Mirror

PURGE_SECONDS = 300.0
STORE_RETRY_FIRST_SECONDS, STORE_RETRY_MAX_SECONDS = 0.5, 10.0
# How long a thread holding the GIL keeps it once another thread asks for it (CPython's default: 5 ms). The store
# and drift threads run Python between their C calls; a request arriving then waited up to the whole interval for
# the loop thread to get the GIL back (bench/server/tail.py: the slow requests at concurrency 1 overlapped store
# flushes several times as often as the others). 0.5 ms bounds that wait; the cost is more GIL hand-overs only
# while a background thread runs.
GIL_SWITCH_SECONDS = 0.0005
# Start-up gives the store this long (a reachable one connects in milliseconds, so feedback works from the first
# request as before), then goes on without it.
STORE_STARTUP_WAIT_SECONDS = 2.0


class Lifecycle:
    def __init__(self, settings: Settings, *, log: EventLog, metrics: ServerMetrics, governance: Governance,
                 dataplane: DataPlane, store: StoreThread, feedback: FeedbackDesk, records: RecordBuffer,
                 mirror: Mirror | None, comparator: Comparator, errors: ErrorAccount) -> None:
        self._settings = settings
        self._log = log
        self._metrics = metrics
        self._governance = governance
        self._dataplane = dataplane
        self._store = store
        self._feedback = feedback
        self._records = records
        self._mirror = mirror
        self._comparator = comparator
        self._errors = errors
        self.shutting_down = False
        # The drift thread runs below the loop's priority, like the store thread.
        self._drift_executor = ThreadPoolExecutor(1, thread_name_prefix="drift", initializer=background_priority)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Any = None
        governance.add_listener(self._on_state_change)

    @property
    def requests_served(self) -> int:
        """Inference answers so far (counted by the endpoints' timer): said in /status, the heartbeat and the
        last line."""
        return self._metrics.fold()

    # ------------------------------------------------------------------ readiness

    def readiness(self) -> tuple[bool, str | None]:
        d = self._dataplane
        if self.shutting_down:
            return False, "shutting down"
        if d.load_status == "failed":
            return False, d.load_error
        if not d.ready_for_traffic:
            return False, "model loading and warming up"
        return True, None

    # ------------------------------------------------------------------ start-up and shutdown

    async def startup(self) -> None:
        s = self._settings
        self._loop = asyncio.get_running_loop()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        connecting = asyncio.create_task(self._connect_store())
        await asyncio.wait({connecting}, timeout=STORE_STARTUP_WAIT_SECONDS)
        self._tasks = [connecting, *(asyncio.create_task(coro) for coro in (
            self._every(s.record_flush_seconds, self._feedback.flush_records),
            self._every(s.heartbeat_seconds, self._heartbeat),
            self._every(s.drift_interval_seconds, self._update_drift),
            self._every(PURGE_SECONDS, self._feedback.purge),
            self._every(s.drift_interval_seconds, self._update_shadow_psi),
        ))]
        if self._mirror is not None:
            self._mirror.start()
        self._log.event("MODEL_SERVER", "SERVER_STARTING", "starting", sha256=s.artifact_sha256,
                        format=s.model_format, state=self._governance.state.value)
        if s.mlmodel_watch:
            from model_server.watcher import MLModelWatcher

            self._watcher = MLModelWatcher(s.mlmodel_namespace, s.mlmodel_name, self._governance.set_config_enabled,
                                           self._log)
            # The kill switch holds across restarts: read it before deciding whether to load anything.
            await asyncio.to_thread(self._watcher.read_once)
            self._watcher.start()
        if self._governance.config_enabled:
            self._start_loading()
        else:
            # The kill switch is on: no model loading attempts; ready to answer the neutral prediction.
            self._dataplane.ready_for_traffic = True
            self._log.event("ML_GOVERNANCE", "MODEL_NOT_LOADED", "DISABLED_CONFIG: serving the neutral prediction",
                            ml_state=GovernanceState.DISABLED_CONFIG.value)

    async def shutdown(self) -> None:
        """Called by the HTTP server (:mod:`model_server.transport`) once it stopped accepting and the requests in
        flight were answered."""
        self.shutting_down = True
        if self._mirror is not None:
            await self._mirror.close()
        if self._watcher is not None:
            self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._dataplane.batcher is not None:
            self._dataplane.batcher.run_pending()
        try:
            await self._feedback.flush_records()
        finally:
            await self._store.close()
            self._drift_executor.shutdown(wait=True)
            self._log.event("MODEL_SERVER", "SERVER_STOPPED", "stopped", requests=self.requests_served,
                            unsaved_records=len(self._records))

    async def _connect_store(self) -> None:
        """Connect the feedback store and migrate its schema, retrying until it answers."""
        delay = STORE_RETRY_FIRST_SECONDS
        while True:
            try:
                store, migrated = await self._store.connect(self._settings.feedback_dsn)
            except Exception as e:
                self._feedback.store_up(False)
                self._log.throttled("STORE_UNAVAILABLE", 10.0, "FEEDBACK_STORE", "STORE_UNAVAILABLE",
                                    f"feedback store not reachable, retrying: {type(e).__name__}: {e}",
                                    level=logging.ERROR, retry_seconds=round(delay, 2))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)
                continue
            self._feedback.store_up(True)
            self._log.event("FEEDBACK_STORE", "STORE_CONNECTED", "feedback store connected",
                            feedback_store=type(store).__name__, schema_migrations_applied=migrated)
            return

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                self._log.event("MODEL_SERVER", "BACKGROUND_JOB_FAILED", getattr(job, "__name__", "job"),
                                level=logging.ERROR, exc_info=True)

    # ------------------------------------------------------------------ model loading

    def _start_loading(self) -> None:
        d = self._dataplane
        if d.load_status in ("loading", "loaded"):
            return
        d.load_status = "loading"
        self._tasks.append(asyncio.create_task(self._load()))

    async def _load(self) -> None:
        s = self._settings
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            model = await loop.run_in_executor(None, load_artifact, s)
            loaded = time.perf_counter()
            await loop.run_in_executor(None, warm_up, model, s.warmup_rounds)
        except (ArtifactRejected, ModelLoadError) as e:
            self._load_failed(e.kind, str(e), getattr(e, "problems", []))
            return
        except Exception as e:
            self._load_failed("LOAD_ERROR", f"{type(e).__name__}: {e}", [])
            return
        tune_for_serving(model.platform)
        # What is alive now (modules, the model) lives as long as the process: move it out of the collector's
        # reach. A full collection then scans only what came after (under 1 ms rather than ~50-100 ms with
        # scikit-learn and friends loaded: a pause every ~20 s at a few thousand requests per second).
        gc.collect()
        gc.freeze()
        drift = self._dataplane.install(model)
        self._metrics.add_drift_features(drift.tracked)
        self._metrics.info_child.set(1)
        self._log.event("MODEL_SERVER", "MODEL_LOADED", f"{model.estimator} ready", sha256=model.sha256,
                        format=model.format, platform=model.platform, estimator=model.estimator,
                        fast_path=model.fast_path,
                        contract=model.contract.name, n_features=model.contract.n_features,
                        drift_tracked=len(drift.tracked), load_seconds=round(loaded - started, 3),
                        warmup_seconds=round(time.perf_counter() - loaded, 3))

    def _load_failed(self, kind: str, message: str, problems: list[str]) -> None:
        self._dataplane.load_failed(message)
        self._errors.count(kind)
        self._log.event("MODEL_SERVER", kind, f"model not loaded, nothing will be served from it: {message}",
                        level=logging.ERROR, sha256_expected=self._settings.artifact_sha256, problems=problems)

    def _on_state_change(self, old: GovernanceState, new: GovernanceState, reason: str,
                         details: dict[str, object]) -> None:
        # May run on the watcher thread: metrics and logging are thread-safe, loading is handed to the loop.
        self._metrics.set_state(new)
        disabled = new is GovernanceState.DISABLED_BY_GOVERNANCE
        self._log.event("ML_GOVERNANCE", "DISABLED_BY_GOVERNANCE" if disabled else "STATE_CHANGE",
                        f"state={new.value} (was {old.value}): {reason}",
                        level=logging.ERROR if disabled else logging.WARNING,
                        ml_state=new.value, previous_state=old.value, reason=reason,
                        model_errors=self._governance.model_errors, details=details)
        if new.serves_model and self._dataplane.load_status == "not_loaded" and self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_loading)

    # ------------------------------------------------------------------ what /admin/* acts on

    async def flush(self) -> dict[str, int]:
        batcher = self._dataplane.batcher
        queued = batcher.pending if batcher is not None else 0
        if batcher is not None:
            batcher.run_pending()
        await asyncio.sleep(0)  # let the requests whose scores were just set write their answers
        records = await self._feedback.flush_records()
        return {"queued_requests": queued, "prediction_records": records, "unsaved_records": len(self._records)}

    async def warm_up(self) -> dict[str, Any]:
        model = self._dataplane.model
        if model is None:
            raise HttpError(409, "MODEL_NOT_LOADED", load_status=self._dataplane.load_status,
                            state=self._governance.state.value)
        started = time.perf_counter()
        rounds = max(1, self._settings.warmup_rounds)
        await asyncio.get_running_loop().run_in_executor(None, warm_up, model, rounds)
        return {"rounds": rounds, "seconds": time.perf_counter() - started}

    # ------------------------------------------------------------------ background jobs

    async def _heartbeat(self) -> None:
        state = self._governance.refresh()
        errors = self._governance.model_errors
        self._log.event("ML_GOVERNANCE", "HEARTBEAT", f"HEARTBEAT ml_state={state.value} model_errors={errors}",
                        ml_state=state.value, model_errors=errors,
                        window_model_errors=self._governance.window_errors(), ready=self.readiness()[0],
                        load_status=self._dataplane.load_status, requests=self.requests_served,
                        pending_records=len(self._records))

    async def _update_drift(self) -> None:
        drift = self._dataplane.drift
        if drift is None:
            return
        window = drift.snapshot()
        if window is None:
            return
        values = await asyncio.get_running_loop().run_in_executor(self._drift_executor, drift.compute, window)
        for feature, value in values.items():
            self._metrics.drift_child[feature].set(value)
        if values:
            self._governance.set_drift(max(values.values()))

    async def _update_shadow_psi(self) -> None:
        self._comparator.update_psi()
