"""The server: composes the modules below into one ASGI app, loads the model, and scores requests.

* :mod:`model_server.http` - routing, body reading, errors as answers (:class:`~model_server.http.HttpError`);
* :mod:`model_server.oip` - Open Inference Protocol requests as rows (pure);
* :mod:`model_server.records` - the buffer of prediction records, taken and restored as one batch;
* :mod:`model_server.feedback` - the store thread and the feedback endpoints;
* :mod:`model_server.admin` - ``/admin/*``;
* :mod:`model_server.governance` - whether the model may answer, or the neutral prediction must.

Served by uvicorn (httptools, uvloop), one process per pod. Invariants:

* bad input is a 4xx with a JSON body ``{"error": CODE, ...}``, never a 5xx; an unexpected exception is
  logged and answered ``500 INTERNAL_ERROR`` (the fuzz tests hold us to never reaching it);
* the model answers only when governance allows (``ENABLED|*``); otherwise the neutral prediction does;
* a ``201`` from ``POST /feedback`` means the label is durable in the feedback store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import operator
import os
import random
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from model_server import auth, oip
from model_server.admin import Admin
from model_server.batching import MicroBatcher, all_finite
from model_server.config import Settings
from model_server.drift import DriftWindow
from model_server.feedback import ERROR_LOG_INTERVAL, FeedbackDesk, StoreThread, background_priority
from model_server.governance import Governance, GovernanceState, TrainingRange
from model_server.http import (
    HttpError,
    Outcome,
    Params,
    Receive,
    Response,
    Router,
    Scope,
    Send,
    error_response,
    invalid_input,
    json_response,
    read_body,
    read_json,
    send_response,
)
from model_server.loader import (
    ArtifactRejected,
    LoadedModel,
    Matrix,
    ModelLoadError,
    Scores,
    load_artifact,
    warm_up,
)
from model_server.logs import EventLog
from model_server.metrics import ServerMetrics
from model_server.records import RecordBuffer
from model_server.schemas import openapi_document
from model_server.shadow import COMPARE_PATH, Comparator, Mirror, ShadowMetrics, non_finite, predict_error, unavailable
from model_server.store import FeedbackStore, PredictionRecord, open_store
from modelwarden.artifacts import FeatureContract, FeatureMismatch

SERVER_NAME = "modelwarden-model-server"
RECORD_FLUSH_SECONDS = 0.25  # the default of the RECORD_FLUSH_SECONDS setting
PURGE_SECONDS = 300.0
_NUMBER_TYPES = frozenset((float, int))
BINARY = b"application/octet-stream"

LoadStatus = Literal["not_loaded", "loading", "loaded", "failed"]


class PredictionIds:
    """Random 128-bit prediction ids as 32 hex digits. One urandom call serves 256 ids: a syscall per id
    showed in the request profile."""

    _BATCH = 256

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0

    def take(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            if self._next >= len(self._hex):
                self._hex, self._next = os.urandom(16 * self._BATCH).hex(), 0
            ids.append(self._hex[self._next:self._next + 32])
            self._next += 32
        return ids


def _tune_for_serving(platform: str) -> None:
    """Settings for scoring on the event loop thread (call it there): one BLAS thread (one process per pod;
    the loop needs the other core); for scikit-learn, no finiteness scan (inputs are checked here first) and
    no per-call warning for models fitted on DataFrames (their feature names were checked at load)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1)
    if platform == "sklearn":
        import sklearn

        sklearn.set_config(assume_finite=True)  # thread-local: hence on the loop thread, where scoring runs
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


# Response headers naming the server that answered (its version, the sha256 it verified and loaded, its track).
HEADER_VERSION, HEADER_SHA256, HEADER_TRACK = "x-model-version", "x-model-sha256", "x-model-track"


def served_by_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    version = "".join(c for c in settings.model_version if " " <= c <= "~")  # no CR/LF or non-ASCII in a header
    return [(HEADER_VERSION.encode(), version.encode()),
            (HEADER_SHA256.encode(), settings.artifact_sha256.encode()),
            (HEADER_TRACK.encode(), settings.model_track.encode())]


class ModelServer:
    """One model version behind the HTTP API. ``ModelServer(settings)`` is the ASGI app."""

    def __init__(self, settings: Settings, *, store_factory: Callable[[str], FeedbackStore] | None = None) -> None:
        self.settings = s = settings
        self.log = EventLog(s.model_name, s.model_version, s.model_track)
        self.metrics = ServerMetrics(s.model_name, s.model_version, s.model_track, s.artifact_sha256, (),
                                     slo_objective_ratio=s.slo_objective_ratio)
        self.governance = Governance(
            config_enabled=s.model_enabled, max_model_errors=s.governance_max_model_errors,
            window_seconds=s.governance_window_seconds, counted_kinds=s.governance_error_kinds,
            degraded_psi=s.drift_degraded_psi)
        self.metrics.set_state(self.governance.state)
        self.governance.add_listener(self._on_state_change)
        self.model: LoadedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.drift: DriftWindow | None = None
        self.load_status: LoadStatus = "not_loaded"
        self.load_error: str | None = None
        self.ready_for_traffic = False
        self.shutting_down = False
        self.requests_served = 0
        self.records = RecordBuffer(on_drop=self._records_dropped)
        # The store is scoped to the model's namespace (two same-named models never share evidence).
        self.store = StoreThread(store_factory or functools.partial(open_store, namespace=s.mlmodel_namespace))
        self.feedback = FeedbackDesk(s, self.store, self.records, self.metrics, self.log)
        # The drift thread runs below the loop's priority, like the store thread.
        self._drift_executor = ThreadPoolExecutor(1, thread_name_prefix="drift", initializer=background_priority)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Any = None
        self._neutral = s.neutral_prediction
        self._ids = PredictionIds()
        # contract.reorder as one C call (operator.itemgetter), for the contract of the loaded model.
        self._pick: Callable[[dict[str, Any]], Sequence[Any]] = lambda row: ()
        self._pick_contract: FeatureContract | None = None
        self._training_range = TrainingRange.unknown(0)
        self._fault_ratio = 0.0
        self._fault_random = random.Random()
        # The shadow stage: the stable mirrors (when SHADOW_TARGET_URL is set), any server can compare.
        self.shadow_metrics = ShadowMetrics(self.metrics.registry, s.model_name, s.model_version)
        self.mirror = Mirror(s.shadow_target_url, s.shadow_percent, s.shadow_queue_size, s.shadow_timeout_seconds,
                             s.model_name, s.model_version, self.shadow_metrics, self.log,
                             token_file=s.shadow_token_file) \
            if s.shadow_target_url else None
        self.comparator = Comparator(s.shadow_decision_threshold, self.shadow_metrics, s.max_batch_rows,
                                     s.max_body_bytes, self._shadow_score)
        self.router = self._routes()
        self._served_by = served_by_headers(s)

    def _routes(self) -> Router:
        s = self.settings
        admin = Admin(auth.configured(s.service_account_jwks, s.service_account_issuer, auth.ADMIN_AUDIENCE,
                                      s.admin_subject), self, self.governance, self.log, s.max_body_bytes)
        shadow_peer = auth.configured(s.service_account_jwks, s.service_account_issuer, auth.SHADOW_AUDIENCE,
                                      s.shadow_subject)
        r = Router()
        r.add("/predict", "POST", self._predict)
        r.add("/feedback", "POST", self.feedback.post)
        r.add("/feedback/{prediction_id}", "GET", self.feedback.get, remember=False)
        r.add("/metrics", "GET", self._metrics)
        r.add("/status", "GET", self._status)
        r.add("/openapi.json", "GET", self._openapi)
        r.add("/v2", "GET", self._server_metadata)
        r.add("/v2/health/live", "GET", self._live)
        r.add("/v2/health/ready", "GET", self._ready)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add(prefix, "GET", self._model_metadata)
            r.add(f"{prefix}/ready", "GET", self._model_ready)
            r.add(f"{prefix}/infer", "POST", self._infer)
        r.add(COMPARE_PATH, "POST", auth.require(shadow_peer, self.comparator.endpoint, what="SHADOW"))
        r.add("/admin/flush", "POST", admin.authenticated(admin.flush))
        r.add("/admin/warmup", "POST", admin.authenticated(admin.warmup))
        r.add("/admin/reenable", "POST", admin.authenticated(admin.reenable))
        if s.fault_injection:
            r.add("/admin/faults", "POST", admin.authenticated(admin.faults))
        r.add("/admin/feedback", "GET", admin.authenticated(self.feedback.recent))
        return r

    # ------------------------------------------------------------------ hooks for the operator side

    def set_config_enabled(self, enabled: bool, source: str = "config") -> None:
        """The kill switch (MLModel ``spec.enabled``); callable from any thread. Disabling takes effect on the
        next request; enabling loads the model first if it was never loaded."""
        self.governance.set_config_enabled(enabled, source)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            handler, params = self.router.resolve(path, scope["method"])
            response = await handler(scope, receive, params)
        except HttpError as e:
            if e.kind is not None:
                self._count_error(e.kind, e)
            response = error_response(e, oip=path.startswith("/v2"))
        except Exception as e:
            self.log.event("MODEL_SERVER", "INTERNAL_ERROR", f"unhandled {type(e).__name__} on {path}",
                           level=logging.ERROR, path=path, exc_info=True)
            response = error_response(HttpError(500, "INTERNAL_ERROR"), oip=path.startswith("/v2"))
        # Every answer says which server made it: load through a Service can be counted by version and sha256.
        await send_response(send, replace(response, headers=[*response.headers, *self._served_by]))

    def _count_error(self, kind: str, error: HttpError | None = None) -> None:
        """One error of ``kind`` in ml_model_errors_total and for governance (which decides whether it
        counts); with the answer it caused, a throttled log line."""
        self.metrics.error[kind].inc()
        self.governance.record_model_error(kind)
        if error is not None:
            self.log.throttled(kind, ERROR_LOG_INTERVAL, "FEATURE_CONTRACT" if kind == "FEATURE_MISMATCH" else
                               "MODEL_SERVER", kind, error.detail or error.message or kind,
                               level=logging.ERROR if error.outcome == "error" else logging.WARNING,
                               **error.fields)

    def _records_dropped(self, dropped: int) -> None:
        self.metrics.records_dropped_child.inc(dropped)
        self.log.throttled("RECORDS_DROPPED", ERROR_LOG_INTERVAL, "FEEDBACK_STORE", "RECORDS_DROPPED",
                           "prediction records dropped: the feedback store is not keeping up", dropped=dropped)

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    self.log.event("MODEL_SERVER", "STARTUP_FAILED", str(e), level=logging.ERROR)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        store = await self.store.open(s.feedback_dsn)
        # The schema is migrated before the first request (replicas starting together: see model_server.store).
        migrated = await self.store.run(store.migrate)
        self._tasks = [asyncio.create_task(coro) for coro in (
            self._every(s.record_flush_seconds, self.feedback.flush_records),
            self._every(s.heartbeat_seconds, self._heartbeat),
            self._every(s.drift_interval_seconds, self._update_drift),
            self._every(PURGE_SECONDS, self.feedback.purge),
            self._every(s.drift_interval_seconds, self._update_shadow_psi),
        )]
        if self.mirror is not None:
            self.mirror.start()
        self.log.event("MODEL_SERVER", "SERVER_STARTING", "starting", sha256=s.artifact_sha256,
                       format=s.model_format, state=self.governance.state.value,
                       feedback_store=type(store).__name__, schema_migrations_applied=migrated)
        if s.mlmodel_watch:
            from model_server.watcher import MLModelWatcher

            self._watcher = MLModelWatcher(s.mlmodel_namespace, s.mlmodel_name, self.set_config_enabled, self.log)
            # The kill switch holds across restarts: read it before deciding whether to load anything.
            await asyncio.to_thread(self._watcher.read_once)
            self._watcher.start()
        if self.governance.config_enabled:
            self._start_loading()
        else:
            # The kill switch is on: no model loading attempts; ready to answer the neutral prediction.
            self.ready_for_traffic = True
            self.log.event("ML_GOVERNANCE", "MODEL_NOT_LOADED", "DISABLED_CONFIG: serving the neutral prediction",
                           ml_state=GovernanceState.DISABLED_CONFIG.value)

    async def shutdown(self) -> None:
        """Called by uvicorn after it stopped accepting and drained in-flight requests."""
        self.shutting_down = True
        if self.mirror is not None:
            await self.mirror.close()
        if self._watcher is not None:
            self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.batcher is not None:
            self.batcher.run_pending()
        try:
            await self.feedback.flush_records()
        finally:
            await self.store.close()
            self._drift_executor.shutdown(wait=True)
            self.log.event("MODEL_SERVER", "SERVER_STOPPED", "stopped", requests=self.requests_served,
                           unsaved_records=len(self.records))

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                self.log.event("MODEL_SERVER", "BACKGROUND_JOB_FAILED", getattr(job, "__name__", "job"),
                               level=logging.ERROR, exc_info=True)

    # ------------------------------------------------------------------ model loading

    def _start_loading(self) -> None:
        if self.load_status in ("loading", "loaded"):
            return
        self.load_status = "loading"
        self._tasks.append(asyncio.create_task(self._load()))

    async def _load(self) -> None:
        s = self.settings
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
        _tune_for_serving(model.platform)
        # What is alive now (modules, the model) lives as long as the process: move it out of the collector's
        # reach. A full collection then scans only what came after (under 1 ms rather than ~50-100 ms with
        # scikit-learn and friends loaded: a pause every ~20 s at a few thousand requests per second).
        gc.collect()
        gc.freeze()
        features = model.contract.features
        getter = operator.itemgetter(*features)
        self._pick = getter if len(features) > 1 else lambda row: (getter(row),)
        self._pick_contract = model.contract
        self._training_range = TrainingRange.of(model.meta)
        self.model = model
        self.drift = DriftWindow(model.contract.features, model.meta.reference, s.drift_window_size,
                                 s.drift_min_samples)
        self.batcher = MicroBatcher(model.score, max_rows=max(s.max_batch_rows, 1024), observe=self.drift.observe)
        self.metrics.add_drift_features(self.drift.tracked)
        self.metrics.info_child.set(1)
        self.load_status = "loaded"
        self.ready_for_traffic = True
        self.log.event("MODEL_SERVER", "MODEL_LOADED", f"{model.estimator} ready", sha256=model.sha256,
                       format=model.format, platform=model.platform, estimator=model.estimator,
                       fast_path=model.fast_path,
                       contract=model.contract.name, n_features=model.contract.n_features,
                       drift_tracked=len(self.drift.tracked), load_seconds=round(loaded - started, 3),
                       warmup_seconds=round(time.perf_counter() - loaded, 3))

    def _load_failed(self, kind: str, message: str, problems: list[str]) -> None:
        self.load_status = "failed"
        self.load_error = message
        self.ready_for_traffic = False
        self._count_error(kind)
        self.log.event("MODEL_SERVER", kind, f"model not loaded, nothing will be served from it: {message}",
                       level=logging.ERROR, sha256_expected=self.settings.artifact_sha256, problems=problems)

    def _on_state_change(self, old: GovernanceState, new: GovernanceState, reason: str,
                         details: dict[str, object]) -> None:
        # May run on the watcher thread: metrics and logging are thread-safe, loading is handed to the loop.
        self.metrics.set_state(new)
        disabled = new is GovernanceState.DISABLED_BY_GOVERNANCE
        self.log.event("ML_GOVERNANCE", "DISABLED_BY_GOVERNANCE" if disabled else "STATE_CHANGE",
                       f"state={new.value} (was {old.value}): {reason}",
                       level=logging.ERROR if disabled else logging.WARNING,
                       ml_state=new.value, previous_state=old.value, reason=reason,
                       model_errors=self.governance.model_errors, details=details)
        if new.serves_model and self.load_status == "not_loaded" and self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_loading)

    # ------------------------------------------------------------------ scoring

    def _rows_to_matrix(self, rows: list[dict[str, Any]], contract: FeatureContract, batch: bool) -> Matrix:
        flat: list[Any] = []
        n_features = contract.n_features
        pick = self._pick if contract is self._pick_contract else None
        for i, row in enumerate(rows):
            try:
                # contract.reorder, in C for the usual well-formed row; reorder itself explains a mismatch.
                if pick is not None and len(row) == n_features:
                    try:
                        values: Sequence[Any] = pick(row)
                    except KeyError:
                        values = contract.reorder(row)
                else:
                    values = contract.reorder(row)
            except FeatureMismatch as e:
                raise oip.feature_mismatch(e, **({"row": i} if batch else {})) from None
            if not _NUMBER_TYPES.issuperset(map(type, values)):  # bool, str, None, lists... are refused
                name = next(n for n, v in zip(contract.features, values, strict=True) if type(v) not in _NUMBER_TYPES)
                raise invalid_input(f"feature {name!r} must be a number", feature=name,
                                    **({"row": i} if batch else {}))
            if len(rows) == 1:
                # No finiteness scan: orjson refuses NaN, Infinity, 1e400 and integers beyond 64 bits, so every
                # parsed number converts to a finite float64.
                return np.array([values], dtype=np.float64)
            flat.extend(values)
        return np.array(flat, dtype=np.float64).reshape(len(rows), n_features)

    def _serving(self) -> tuple[bool, GovernanceState]:
        """Whether the model answers (else the neutral prediction does), and the state to report.
        A model still loading after the kill switch was lifted answers neutral rather than an error."""
        state = self.governance.state
        if not state.serves_model:
            return False, state
        if self.model is not None:
            return True, state
        if self.load_status == "failed":
            raise HttpError(503, "MODEL_UNAVAILABLE", self.load_error, outcome="unavailable")
        if not self.ready_for_traffic:
            raise HttpError(503, "MODEL_UNAVAILABLE", "model is loading", outcome="unavailable")
        return False, state

    async def _score_rows(self, rows: list[dict[str, Any]], batch: bool, matrix: Matrix | None = None) -> tuple[
            list[str], list[float], bool, GovernanceState]:
        """Score rows (or answer neutral); records every answer for the feedback join. ``matrix``: the same rows
        already checked and in contract order (OIP binary tensors), so they are not converted again."""
        serving, state = self._serving()
        now = time.time()
        ids = self._ids.take(len(rows))
        if not serving:
            scores = [self._neutral] * len(rows)
        else:
            model, batcher = self.model, self.batcher
            assert model is not None and batcher is not None
            if matrix is None:
                matrix = self._rows_to_matrix(rows, model.contract, batch)
            if self._fault_ratio and self._fault_random.random() < self._fault_ratio:
                raise HttpError(500, "INJECTED_FAULT", "fault injected by /admin/faults", outcome="error")
            try:
                result = await batcher.submit(matrix)
            except Exception as e:
                raise HttpError(500, "PREDICT_ERROR", "the model failed on this input", kind="PREDICT_ERROR",
                                outcome="error", detail=f"{type(e).__name__}: {e}") from None
            if not all_finite(result):
                raise self._non_finite(matrix, result, batch)
            scores = result.tolist()
            if self.mirror is not None:
                self.mirror.offer(rows, scores)  # O(1): sent by a background task after this answer
        self._record(ids, rows, scores, state, now)
        return ids, scores, not serving, state

    def _shadow_score(self, rows: list[dict[str, Any]]) -> list[float]:
        """Score mirrored rows on the shadow track: the same contract and model, but nothing recorded, no SLO
        outcome, no drift observation, no governance error (the caller counts failures on the shadow track)."""
        model = self.model
        if model is None or not self.governance.state.serves_model:
            raise unavailable("the candidate does not serve its model now")
        matrix = self._rows_to_matrix(rows, model.contract, True)
        try:
            scores = model.score(matrix)
        except Exception as e:
            raise predict_error(e) from None
        if not all_finite(scores):
            raise non_finite()
        result: list[float] = scores.tolist()
        return result

    async def _update_shadow_psi(self) -> None:
        self.comparator.update_psi()

    def _non_finite(self, matrix: Matrix, scores: Scores, batch: bool) -> HttpError:
        """A non-finite score: the client's when every row that got one has an input far outside the training
        range (see :class:`~model_server.governance.TrainingRange`), else the model's fault."""
        bad = ~np.isfinite(scores)
        extreme = self._training_range.extreme_rows(matrix)
        if extreme[bad].all():
            rows = np.flatnonzero(bad)[:20].tolist()
            features = self._training_range.extreme_features(matrix[rows[0]])
            return HttpError(422, "INPUT_OUT_OF_RANGE", "inputs this far outside the model's training range make "
                             "its score non-finite", kind="INVALID_INPUT", features=features[:20],
                             **({"rows": rows} if batch else {}))
        return HttpError(422, "NON_FINITE_OUTPUT", "the model produced a non-finite score for this input",
                         kind="NON_FINITE_OUTPUT", outcome="error", detail="the model answered a non-finite score")

    def _record(self, ids: list[str], rows: list[dict[str, Any]], scores: list[float], state: GovernanceState,
                now: float) -> None:
        s = self.settings
        name, version, track, state_value = s.model_name, s.model_version, s.model_track, state.value
        sha = s.artifact_sha256
        self.records.add([PredictionRecord(pid, name, version, track, state_value, orjson.dumps(row).decode(),
                                           score, now, sha) for pid, row, score in zip(ids, rows, scores, strict=True)])

    # ------------------------------------------------------------------ /predict and OIP infer

    async def _timed(self, work: Callable[[], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        outcome: Outcome = "client_error"
        try:
            response = await work()
            outcome = response.outcome
            return response
        except HttpError as e:
            outcome = e.outcome
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.requests_served += 1
            self.metrics.outcome[outcome].inc()
            self.metrics.latency_child.observe(time.perf_counter() - started)

    async def _predict(self, scope: Scope, receive: Receive, params: Params) -> Response:
        return await self._timed(lambda: self._predict_body(scope, receive))

    async def _predict_body(self, scope: Scope, receive: Receive) -> Response:
        doc = await read_json(scope, receive, self.settings.max_body_bytes)
        if not isinstance(doc, dict) or len(doc) != 1 or not ("features" in doc or "instances" in doc):
            raise invalid_input('body must be {"features": {name: number}} or {"instances": [{name: number}, ...]}')
        batch = "instances" in doc
        rows = doc["instances"] if batch else [doc["features"]]
        if batch and (not isinstance(rows, list) or not rows):
            raise invalid_input("instances must be a non-empty list")
        if len(rows) > self.settings.max_batch_rows:
            raise invalid_input(f"at most {self.settings.max_batch_rows} instances")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise invalid_input("features must be an object keyed by feature name", **({"row": i} if batch else {}))
        ids, scores, neutral, state = await self._score_rows(rows, batch)
        s = self.settings
        doc_out: dict[str, Any] = {"model": s.model_name, "version": s.model_version, "track": s.model_track,
                                   "state": state.value, "neutral": neutral}
        if batch:
            doc_out["predictions"] = [{"predictionId": i, "prediction": p} for i, p in zip(ids, scores, strict=True)]
        else:
            doc_out["predictionId"], doc_out["prediction"] = ids[0], scores[0]
        return Response(200, orjson.dumps(doc_out), outcome="neutral" if neutral else "success")

    def _check_model_path(self, params: Params) -> None:
        s = self.settings
        if params["name"] != s.model_name:
            raise HttpError(404, "MODEL_NOT_FOUND", f"this server serves {s.model_name!r}")
        version = params.get("version")
        if version is not None and version != s.model_version:
            raise HttpError(404, "VERSION_NOT_FOUND", f"this server serves version {s.model_version!r}")

    async def _infer(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        return await self._timed(lambda: self._infer_body(scope, receive))

    async def _infer_body(self, scope: Scope, receive: Receive) -> Response:
        body = await read_body(scope, receive, self.settings.max_body_bytes)
        json_length = oip.header_length(scope["headers"], len(body))
        # While the neutral prediction answers, columns are not checked against the contract (as for /predict).
        contract = self.model.contract if self.model is not None and self.governance.state.serves_model else None
        known = self.model.contract if self.model is not None else self.settings.feature_contract
        request = oip.decode_request(body, json_length, contract, self.settings.max_batch_rows,
                                     known.n_features if known is not None else None)
        ids, scores, neutral, state = await self._score_rows(request.rows, len(request.rows) > 1, request.matrix)
        s = self.settings
        answer, header_length = oip.encode_response(
            model_name=s.model_name, model_version=s.model_version, request=request,
            parameters={"governance_state": state.value, "neutral": neutral, "track": s.model_track},
            scores=scores, ids=ids)
        outcome: Outcome = "neutral" if neutral else "success"
        if header_length is None:
            return Response(200, answer, outcome=outcome)
        return Response(200, answer, BINARY, [(oip.HEADER_LENGTH, str(header_length).encode())], outcome=outcome)

    # ------------------------------------------------------------------ health, metadata, metrics

    async def _live(self, scope: Scope, receive: Receive, params: Params) -> Response:
        return json_response({"live": True})

    def _readiness(self) -> tuple[bool, str | None]:
        if self.shutting_down:
            return False, "shutting down"
        if self.load_status == "failed":
            return False, self.load_error
        if not self.ready_for_traffic:
            return False, "model loading and warming up"
        return True, None

    async def _ready(self, scope: Scope, receive: Receive, params: Params) -> Response:
        ready, reason = self._readiness()
        doc: dict[str, Any] = {"ready": ready, "state": self.governance.state.value, "load_status": self.load_status}
        if reason:
            doc["reason"] = reason
        return json_response(doc, 200 if ready else 503)

    async def _model_ready(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        ready, reason = self._readiness()
        return json_response({"name": self.settings.model_name, "ready": ready, "reason": reason},
                             200 if ready else 503)

    async def _server_metadata(self, scope: Scope, receive: Receive, params: Params) -> Response:
        from model_server import __version__

        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(oip.EXTENSIONS)})

    async def _model_metadata(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        s = self.settings
        contract = self.model.contract if self.model is not None else s.feature_contract
        features = list(contract.features) if contract is not None else []
        return json_response({
            "name": s.model_name, "versions": [s.model_version],
            "platform": self.model.platform if self.model is not None else s.model_format,
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in features],
            "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [-1]},
                        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"track": s.model_track, "sha256": s.artifact_sha256,
                           "contract": contract.name if contract is not None else None,
                           "governance_state": self.governance.state.value,
                           # OIP metadata has one list of inputs; the other accepted form is spelled out here.
                           "tensor_input": {
                               "description": "instead of the per-feature inputs: one tensor of any other name, "
                                              "rows of features in the order of `inputs`",
                               "datatype": "FP64", "shape": [-1, len(features)],
                               "datatypes": sorted(oip.NUMERIC_DATATYPES)}},
        })

    async def _status(self, scope: Scope, receive: Receive, params: Params) -> Response:
        s = self.settings
        ready, reason = self._readiness()
        return json_response({
            "model": s.model_name, "version": s.model_version, "track": s.model_track, "sha256": s.artifact_sha256,
            "ml_state": self.governance.state.value, "model_errors": self.governance.model_errors,
            "window_model_errors": self.governance.window_errors(), "ready": ready, "reason": reason,
            "load_status": self.load_status, "requests": self.requests_served,
            "pending_records": len(self.records),
            "drift_samples": self.drift.samples if self.drift is not None else 0,
        })

    async def _metrics(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self.governance.refresh()
        return Response(200, self.metrics.render(), CONTENT_TYPE_LATEST.encode())

    async def _openapi(self, scope: Scope, receive: Receive, params: Params) -> Response:
        from model_server import __version__

        contract = self.model.contract if self.model is not None else self.settings.feature_contract
        return json_response(openapi_document(title=f"{SERVER_NAME} ({self.settings.model_name})",
                                              version=__version__, contract=contract))

    # ------------------------------------------------------------------ what /admin/* acts on (AdminTarget)

    async def flush(self) -> dict[str, int]:
        queued = self.batcher.pending if self.batcher is not None else 0
        if self.batcher is not None:
            self.batcher.run_pending()
        await asyncio.sleep(0)  # let the requests whose scores were just set write their answers
        records = await self.feedback.flush_records()
        return {"queued_requests": queued, "prediction_records": records, "unsaved_records": len(self.records)}

    async def warm_up(self) -> dict[str, Any]:
        model = self.model
        if model is None:
            raise HttpError(409, "MODEL_NOT_LOADED", load_status=self.load_status, state=self.governance.state.value)
        started = time.perf_counter()
        rounds = max(1, self.settings.warmup_rounds)
        await asyncio.get_running_loop().run_in_executor(None, warm_up, model, rounds)
        return {"rounds": rounds, "seconds": time.perf_counter() - started}

    def set_fault_ratio(self, ratio: float) -> None:
        self._fault_ratio = ratio

    # ------------------------------------------------------------------ background jobs

    async def _heartbeat(self) -> None:
        state = self.governance.refresh()
        errors = self.governance.model_errors
        self.log.event("ML_GOVERNANCE", "HEARTBEAT", f"HEARTBEAT ml_state={state.value} model_errors={errors}",
                       ml_state=state.value, model_errors=errors,
                       window_model_errors=self.governance.window_errors(), ready=self._readiness()[0],
                       load_status=self.load_status, requests=self.requests_served,
                       pending_records=len(self.records))

    async def _update_drift(self) -> None:
        drift = self.drift
        if drift is None:
            return
        window = drift.snapshot()
        if window is None:
            return
        values = await asyncio.get_running_loop().run_in_executor(self._drift_executor, drift.compute, window)
        for feature, value in values.items():
            self.metrics.drift_child[feature].set(value)
        if values:
            self.governance.set_drift(max(values.values()))
