"""The ASGI application: routing, request validation, scoring, feedback, admin, lifespan.

Hand-routed ASGI rather than a framework: a handful of fixed routes, and every microsecond of framework
overhead on ``/predict`` is a microsecond over the in-process floor. Served by uvicorn (httptools, uvloop),
one process per pod.

Invariants:

* bad input is a 4xx with a JSON body ``{"error": CODE, ...}``, never a 5xx; an unexpected exception is
  logged and answered ``500 INTERNAL_ERROR`` (the fuzz tests hold us to never reaching it);
* the model answers only when governance allows (``ENABLED|*``); otherwise the neutral prediction does;
* a ``201`` from ``POST /feedback`` means the label is durable in the feedback store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import math
import operator
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from model_server.batching import MicroBatcher, all_finite
from model_server.config import Settings
from model_server.drift import DriftWindow
from model_server.governance import Governance, GovernanceState
from model_server.loader import ArtifactRejected, LoadedModel, Matrix, ModelLoadError, load_artifact, warm_up
from model_server.logs import EventLog
from model_server.metrics import STAKEHOLDERS, ServerMetrics
from model_server.schemas import PREDICTION_ID_PATTERN, FaultsIn, FeedbackIn, ReenableIn, openapi_document
from model_server.store import (
    FeedbackRecord,
    FeedbackStore,
    PredictionFeedback,
    PredictionRecord,
    StoreUnavailable,
    iso,
    open_store,
)
from modelwarden.artifacts import FeatureContract, FeatureMismatch

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SERVER_NAME = "modelwarden-model-server"
JSON = b"application/json"
MAX_PENDING_RECORDS = 200_000   # prediction records waiting for the store; beyond this the oldest are dropped
RECORD_FLUSH_SECONDS = 0.25
PURGE_SECONDS = 300.0
ERROR_LOG_INTERVAL = 10.0       # at most one log line per error kind per interval (plus a suppressed count)
BACKGROUND_NICE = 5             # scheduling priority of the store and drift threads, below the event loop's
_PREDICTION_ID = re.compile(PREDICTION_ID_PATTERN)
_NUMBER_TYPES = frozenset((float, int))


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
_OIP_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}

Outcome = Literal["success", "neutral", "client_error", "error", "unavailable"]
LoadStatus = Literal["not_loaded", "loading", "loaded", "failed"]


class HttpError(Exception):
    """An answer other than success: status, JSON body, and how it counts in ml_inference_requests_total."""

    def __init__(self, status: int, body: dict[str, Any], outcome: Outcome = "client_error",
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body
        self.outcome = outcome
        self.headers = headers or []


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    outcome: Outcome = "success"  # for inference endpoints: how the answer counts in ml_inference_requests_total


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(doc))


def _invalid(message: str, **extra: Any) -> HttpError:
    return HttpError(422, {"error": "INVALID_INPUT", "message": message, **extra})


Handler = Callable[[Scope, Receive, dict[str, str]], Awaitable[Response]]


def _background_priority() -> None:
    """Run the calling thread below the event loop's CPU priority (Linux: ``setpriority`` on a thread id
    applies to that thread only; elsewhere, or if refused, nothing changes).

    The store thread writes a flush of prediction records (10-20 µs of CPU per record: 5-15 ms every
    ``RECORD_FLUSH_SECONDS`` at a few thousand requests per second) on the event loop's core in a one-CPU pod.
    At equal priority a request arriving during a flush waits for the scheduler's time slice (a few ms: about
    one request in 100 at concurrency 1); at a lower one the loop gets the core back sooner. Nice 5 rather than
    more: it still gives the store thread about a quarter of a saturated core, several times what the records
    need (at nice 10, 60 s at concurrency 32 left it behind: thousands of records pending and feedback answered
    in seconds). What it does is unchanged: feedback is answered ``201`` only after its commit."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


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


class ModelServer:
    """One model version behind the HTTP API. ``ModelServer(settings)`` is the ASGI app."""

    def __init__(self, settings: Settings, *, store_factory: Callable[[str], FeedbackStore] = open_store) -> None:
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
        self._store_factory = store_factory
        self.store: FeedbackStore | None = None
        # One thread owns the store: SQLite wants one writer, and FIFO order keeps "flush records, then add
        # feedback" sequential without locks. It and the drift thread run below the loop's priority.
        self._store_executor = ThreadPoolExecutor(1, thread_name_prefix="feedback-store",
                                                  initializer=_background_priority)
        self._drift_executor = ThreadPoolExecutor(1, thread_name_prefix="drift", initializer=_background_priority)
        self._pending_records: list[PredictionRecord] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Any = None
        self._neutral = s.neutral_prediction
        self._ids = PredictionIds()
        # contract.reorder as one C call (operator.itemgetter), for the contract of the loaded model.
        self._pick: Callable[[dict[str, Any]], Sequence[Any]] = lambda row: ()
        self._pick_contract: FeatureContract | None = None
        self._exact: dict[str, dict[str, Handler]] = {
            "/predict": {"POST": self._predict},
            "/feedback": {"POST": self._post_feedback},
            "/metrics": {"GET": self._metrics},
            "/status": {"GET": self._status},
            "/openapi.json": {"GET": self._openapi},
            "/v2": {"GET": self._server_metadata},
            "/v2/health/live": {"GET": self._live},
            "/v2/health/ready": {"GET": self._ready},
            "/admin/flush": {"POST": self._admin(self._flush)},
            "/admin/warmup": {"POST": self._admin(self._warmup)},
            "/admin/reenable": {"POST": self._admin(self._reenable)},
            "/admin/faults": {"POST": self._admin(self._faults)},
            "/admin/feedback": {"GET": self._admin(self._admin_feedback)},
        }
        self._fault_ratio = 0.0
        self._fault_random = random.Random()

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
        params: dict[str, str] = {}
        routes = self._exact.get(path) or self._match(path, params)
        try:
            if routes is None:
                raise HttpError(404, {"error": "NOT_FOUND", "message": f"no route {path}"})
            handler = routes.get(scope["method"])
            if handler is None:
                allow = ", ".join(routes).encode()
                raise HttpError(405, {"error": "METHOD_NOT_ALLOWED", "allowed": list(routes)},
                                headers=[(b"allow", allow)])
            response = await handler(scope, receive, params)
        except HttpError as e:
            response = Response(e.status, orjson.dumps(e.body), JSON, e.headers)
        except Exception as e:
            self.log.event("MODEL_SERVER", "INTERNAL_ERROR", f"unhandled {type(e).__name__} on {path}",
                           level=logging.ERROR, path=path, exc_info=True)
            response = Response(500, orjson.dumps({"error": "INTERNAL_ERROR"}))
        headers = [(b"content-type", response.content_type), (b"content-length", str(len(response.body)).encode()),
                   *response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _match(self, path: str, params: dict[str, str]) -> dict[str, Handler] | None:
        if path.startswith("/feedback/"):
            params["prediction_id"] = path[len("/feedback/"):]
            return {"GET": self._get_feedback}
        if not path.startswith("/v2/models/"):
            return None
        parts = path[len("/v2/models/"):].split("/")
        params["name"] = parts[0]
        rest = parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            params["version"] = rest[1]
            rest = rest[2:]
        action = "/".join(rest)
        if action == "":
            return {"GET": self._model_metadata}
        if action == "ready":
            return {"GET": self._model_ready}
        if action == "infer":
            return {"POST": self._infer}
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):  # the usual single chunk
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise self._too_large()
            return body
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise HttpError(400, {"error": "CLIENT_DISCONNECTED"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            message = await receive()

    def _too_large(self) -> HttpError:
        self._count_error("INVALID_INPUT")
        return HttpError(413, {"error": "BODY_TOO_LARGE", "max_bytes": self.settings.max_body_bytes})

    async def _json_body(self, scope: Scope, receive: Receive) -> Any:
        body = await self._read_body(scope, receive)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            self._count_error("INVALID_INPUT")
            raise HttpError(400, {"error": "MALFORMED_JSON", "message": str(e)[:300]}) from None

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
        self.store = await self._in_store_thread(lambda: self._store_factory(s.feedback_dsn))
        self._tasks = [asyncio.create_task(coro) for coro in (
            self._every(RECORD_FLUSH_SECONDS, self.flush_records),
            self._every(s.heartbeat_seconds, self._heartbeat),
            self._every(s.drift_interval_seconds, self._update_drift),
            self._every(PURGE_SECONDS, self._purge),
        )]
        self.log.event("MODEL_SERVER", "SERVER_STARTING", "starting", sha256=s.artifact_sha256,
                       format=s.model_format, state=self.governance.state.value,
                       feedback_store=type(self.store).__name__)
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
            await self.flush_records()
        finally:
            if self.store is not None:
                store = self.store
                await self._in_store_thread(store.close)
            self._store_executor.shutdown(wait=True)
            self._drift_executor.shutdown(wait=True)
            self.log.event("MODEL_SERVER", "SERVER_STOPPED", "stopped", requests=self.requests_served,
                           unsaved_records=len(self._pending_records))

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                self.log.event("MODEL_SERVER", "BACKGROUND_JOB_FAILED", getattr(job, "__name__", "job"),
                               level=logging.ERROR, exc_info=True)

    async def _in_store_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._store_executor, fn)

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

    def _count_error(self, kind: str) -> None:
        self.metrics.error[kind].inc()
        self.governance.record_model_error(kind)

    def _client_error(self, kind: str, body: dict[str, Any], status: int = 422) -> HttpError:
        self._count_error(kind)
        self.log.throttled(kind, ERROR_LOG_INTERVAL, "FEATURE_CONTRACT" if kind == "FEATURE_MISMATCH" else
                           "MODEL_SERVER", kind, body.get("message", kind),
                           **{k: v for k, v in body.items() if k not in ("error", "message")})
        return HttpError(status, body)

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
                body = e.to_dict()
                if batch:
                    body["row"] = i
                raise self._client_error("FEATURE_MISMATCH", body) from None
            if not _NUMBER_TYPES.issuperset(map(type, values)):  # bool, str, None, lists... are refused
                name = next(n for n, v in zip(contract.features, values, strict=True) if type(v) not in _NUMBER_TYPES)
                raise self._client_error("INVALID_INPUT", {
                    "error": "INVALID_INPUT", "message": f"feature {name!r} must be a number",
                    "feature": name, **({"row": i} if batch else {})})
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
            raise HttpError(503, {"error": "MODEL_UNAVAILABLE", "message": self.load_error}, outcome="unavailable")
        if not self.ready_for_traffic:
            raise HttpError(503, {"error": "MODEL_UNAVAILABLE", "message": "model is loading"},
                            outcome="unavailable")
        return False, state

    async def _score_rows(self, rows: list[dict[str, Any]], batch: bool) -> tuple[list[str], list[float], bool,
                                                                                   GovernanceState]:
        """Score rows (or answer neutral); records every answer for the feedback join."""
        serving, state = self._serving()
        now = time.time()
        ids = self._ids.take(len(rows))
        if not serving:
            scores = [self._neutral] * len(rows)
        else:
            model, batcher = self.model, self.batcher
            assert model is not None and batcher is not None
            matrix = self._rows_to_matrix(rows, model.contract, batch)
            if self._fault_ratio and self._fault_random.random() < self._fault_ratio:
                raise HttpError(500, {"error": "INJECTED_FAULT", "message": "fault injected by /admin/faults"},
                                outcome="error")
            try:
                result = await batcher.submit(matrix)
            except Exception as e:
                self._count_error("PREDICT_ERROR")
                self.log.throttled("PREDICT_ERROR", ERROR_LOG_INTERVAL, "MODEL_SERVER", "PREDICT_ERROR",
                                   f"{type(e).__name__}: {e}", level=logging.ERROR)
                raise HttpError(500, {"error": "PREDICT_ERROR", "message": "the model failed on this input"},
                                outcome="error") from None
            if not all_finite(result):
                self._count_error("NON_FINITE_OUTPUT")
                self.log.throttled("NON_FINITE_OUTPUT", ERROR_LOG_INTERVAL, "MODEL_SERVER", "NON_FINITE_OUTPUT",
                                   "the model answered a non-finite score", level=logging.ERROR)
                raise HttpError(422, {"error": "NON_FINITE_OUTPUT",
                                      "message": "the model produced a non-finite score for this input"},
                                outcome="error")
            scores = result.tolist()
        self._record(ids, rows, scores, state, now)
        return ids, scores, not serving, state

    def _record(self, ids: list[str], rows: list[dict[str, Any]], scores: list[float], state: GovernanceState,
                now: float) -> None:
        s = self.settings
        pending = self._pending_records
        for pid, row, score in zip(ids, rows, scores, strict=True):
            pending.append(PredictionRecord(pid, s.model_name, s.model_version, s.model_track, state.value,
                                            orjson.dumps(row).decode(), score, now))
        overflow = len(pending) - MAX_PENDING_RECORDS
        if overflow > 0:
            del pending[:overflow]
            self.metrics.records_dropped_child.inc(overflow)
            self.log.throttled("RECORDS_DROPPED", ERROR_LOG_INTERVAL, "FEEDBACK_STORE", "RECORDS_DROPPED",
                               "prediction records dropped: the feedback store is not keeping up",
                               dropped=overflow)

    async def flush_records(self) -> int:
        """Write buffered prediction records to the store; on failure they are kept for the next try."""
        if not self._pending_records or self.store is None:
            return 0
        batch, self._pending_records = self._pending_records, []
        store = self.store
        try:
            await self._in_store_thread(lambda: store.record_predictions(batch))
        except StoreUnavailable as e:
            self._pending_records[:0] = batch
            self.log.throttled("STORE_UNAVAILABLE", ERROR_LOG_INTERVAL, "FEEDBACK_STORE", "STORE_UNAVAILABLE",
                               str(e), level=logging.ERROR, pending=len(self._pending_records))
            return 0
        return len(batch)

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

    async def _predict(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        return await self._timed(lambda: self._predict_body(scope, receive))

    async def _predict_body(self, scope: Scope, receive: Receive) -> Response:
        doc = await self._json_body(scope, receive)
        if not isinstance(doc, dict) or len(doc) != 1 or not ("features" in doc or "instances" in doc):
            raise self._client_error("INVALID_INPUT", {
                "error": "INVALID_INPUT", "message": 'body must be {"features": {name: number}} '
                                                     'or {"instances": [{name: number}, ...]}'})
        batch = "instances" in doc
        rows = doc["instances"] if batch else [doc["features"]]
        if batch and (not isinstance(rows, list) or not rows):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT",
                                                       "message": "instances must be a non-empty list"})
        if len(rows) > self.settings.max_batch_rows:
            raise self._client_error("INVALID_INPUT", {
                "error": "INVALID_INPUT", "message": f"at most {self.settings.max_batch_rows} instances"})
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise self._client_error("INVALID_INPUT", {
                    "error": "INVALID_INPUT", "message": "features must be an object keyed by feature name",
                    **({"row": i} if batch else {})})
        ids, scores, neutral, state = await self._score_rows(rows, batch)
        s = self.settings
        doc_out: dict[str, Any] = {"model": s.model_name, "version": s.model_version, "track": s.model_track,
                                   "state": state.value, "neutral": neutral}
        if batch:
            doc_out["predictions"] = [{"predictionId": i, "prediction": p} for i, p in zip(ids, scores, strict=True)]
        else:
            doc_out["predictionId"], doc_out["prediction"] = ids[0], scores[0]
        return Response(200, orjson.dumps(doc_out), outcome="neutral" if neutral else "success")

    def _check_model_path(self, params: dict[str, str]) -> None:
        s = self.settings
        if params["name"] != s.model_name:
            raise HttpError(404, {"error": "MODEL_NOT_FOUND", "message": f"this server serves {s.model_name!r}"})
        version = params.get("version")
        if version is not None and version != s.model_version:
            raise HttpError(404, {"error": "VERSION_NOT_FOUND",
                                  "message": f"this server serves version {s.model_version!r}"})

    async def _infer(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        self._check_model_path(params)
        return await self._timed(lambda: self._infer_body(scope, receive))

    async def _infer_body(self, scope: Scope, receive: Receive) -> Response:
        doc = await self._json_body(scope, receive)
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT",
                                                       "message": "inputs must be a non-empty list of tensors"})
        request_id = doc.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "message": "id must be a string"})
        tensors = [self._tensor(t) for t in doc["inputs"]]
        # While the neutral prediction answers, columns are not checked against the contract (as for /predict).
        contract = self.model.contract if self.model is not None and self.governance.state.serves_model else None
        rows = self._tensor_rows(tensors, contract)
        ids, scores, neutral, state = await self._score_rows(rows, batch=len(rows) > 1)
        s = self.settings
        n = len(scores)
        body = {
            "model_name": s.model_name, "model_version": s.model_version, "id": request_id or str(uuid.uuid4()),
            "parameters": {"governance_state": state.value, "neutral": neutral, "track": s.model_track},
            "outputs": [
                {"name": "prediction", "datatype": "FP64", "shape": [n], "data": scores},
                {"name": "prediction_id", "datatype": "BYTES", "shape": [n], "data": ids},
            ],
        }
        return Response(200, orjson.dumps(body), outcome="neutral" if neutral else "success")

    def _tensor(self, t: Any) -> tuple[str, list[int], list[Any]]:
        if not isinstance(t, dict):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT",
                                                       "message": "a tensor must be an object"})
        name, shape, datatype, data = t.get("name"), t.get("shape"), t.get("datatype"), t.get("data")
        if not isinstance(name, str) or not isinstance(shape, list) or not isinstance(data, list):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT",
                                                       "message": "a tensor needs name, shape, datatype and data"})
        if datatype not in _OIP_NUMERIC:
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                       "message": f"datatype must be one of {sorted(_OIP_NUMERIC)}"})
        if not shape or not all(type(d) is int and 0 <= d <= 10**9 for d in shape):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                       "message": "shape must be non-negative integers"})
        if data and isinstance(data[0], list):  # row-major nested lists are allowed by OIP: flatten
            flat: list[Any] = []
            for part in data:
                if not isinstance(part, list):
                    raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                               "message": "data nesting is inconsistent"})
                flat.extend(part)
            data = flat
        if math.prod(shape) != len(data):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                       "message": f"shape {shape} needs {math.prod(shape)} values, "
                                                                  f"got {len(data)}"})
        return name, shape, data

    def _tensor_rows(self, tensors: list[tuple[str, list[int], list[Any]]],
                     contract: FeatureContract | None) -> list[dict[str, Any]]:
        """OIP tensors as rows keyed by feature name: one tensor per feature (checked by name), or one
        [N, n_features] tensor in contract order (checked by count)."""
        if len(tensors) == 1 and (contract is None or tensors[0][0] not in contract.features):
            name, shape, data = tensors[0]
            if len(shape) == 1:
                shape = [1, shape[0]]
            if len(shape) != 2:
                raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                           "message": "a positional tensor has shape [N, n_features]"})
            n_rows, n_cols = shape
            if contract is None:  # the neutral prediction answers whatever the columns
                return [{f"column_{j}": data[i * n_cols + j] for j in range(n_cols)} for i in range(n_rows)]
            if n_cols != contract.n_features:
                provided = [*contract.features[:n_cols], *(f"column_{j}" for j in range(contract.n_features, n_cols))]
                raise self._client_error("FEATURE_MISMATCH", contract.mismatch(provided).to_dict())
            features = contract.features
            return [dict(zip(features, data[i * n_cols:(i + 1) * n_cols], strict=True)) for i in range(n_rows)]
        lengths = set()
        for name, shape, data in tensors:
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "tensor": name,
                                                           "message": "a per-feature tensor has shape [N] or [N, 1]"})
            lengths.add(len(data))
        names = [name for name, _, _ in tensors]
        if len(set(names)) != len(names):
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "message": "duplicate tensor names"})
        if len(lengths) != 1:
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT",
                                                       "message": "per-feature tensors differ in length"})
        (n_rows,) = lengths
        if n_rows == 0:
            raise self._client_error("INVALID_INPUT", {"error": "INVALID_INPUT", "message": "no rows"})
        if n_rows > self.settings.max_batch_rows:
            raise self._client_error("INVALID_INPUT", {
                "error": "INVALID_INPUT", "message": f"at most {self.settings.max_batch_rows} rows"})
        return [{name: data[i] for name, _, data in tensors} for i in range(n_rows)]

    # ------------------------------------------------------------------ feedback

    async def _post_feedback(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        doc = await self._json_body(scope, receive)
        feedback = self._validate(FeedbackIn, doc)
        store = self._require_store()
        pending, self._pending_records = self._pending_records, []
        received = time.time()
        label = orjson.dumps(feedback.label).decode()

        def store_feedback() -> FeedbackRecord | None:
            # In the store thread, in order: the prediction may still be in the buffer just handed over.
            store.record_predictions(pending)
            prediction = store.prediction(feedback.prediction_id)
            if prediction is None:
                return None
            record = FeedbackRecord(str(uuid.uuid4()), prediction.prediction_id, prediction.model,
                                    prediction.version, label, feedback.severity, feedback.stakeholder,
                                    feedback.comment, feedback.author, received)
            store.add_feedback(record)
            return record

        try:
            record = await self._in_store_thread(store_feedback)
        except StoreUnavailable as e:
            self._pending_records[:0] = pending
            self.log.event("FEEDBACK_STORE", "STORE_UNAVAILABLE", str(e), level=logging.ERROR)
            raise HttpError(503, {"error": "STORE_UNAVAILABLE", "message": "feedback was not stored; retry"},
                            headers=[(b"retry-after", b"1")]) from None
        if record is None:
            raise HttpError(404, {"error": "UNKNOWN_PREDICTION", "predictionId": feedback.prediction_id,
                                  "message": "no such prediction (or past its retention)"})
        self.metrics.count_feedback(record.model, record.version, record.severity, record.stakeholder)
        self.log.event("FEEDBACK", "FEEDBACK_RECORDED", f"{record.severity} label from {record.stakeholder}",
                       prediction_id=record.prediction_id, feedback_id=record.feedback_id,
                       severity=record.severity, stakeholder=record.stakeholder, prediction_version=record.version)
        return json_response({"feedbackId": record.feedback_id, "predictionId": record.prediction_id,
                              "model": record.model, "version": record.version,
                              "receivedAt": iso(record.received_at)}, 201)

    async def _get_feedback(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        prediction_id = params["prediction_id"]
        if not _PREDICTION_ID.match(prediction_id):
            raise HttpError(404, {"error": "UNKNOWN_PREDICTION", "predictionId": prediction_id[:200]})
        store = self._require_store()
        pending, self._pending_records = self._pending_records, []

        def read() -> Any:
            store.record_predictions(pending)
            return store.feedback_for(prediction_id)

        try:
            found = await self._in_store_thread(read)
        except StoreUnavailable as e:
            self._pending_records[:0] = pending
            raise HttpError(503, {"error": "STORE_UNAVAILABLE", "message": str(e)[:300]}) from None
        if found.prediction is None and not found.feedback:
            raise HttpError(404, {"error": "UNKNOWN_PREDICTION", "predictionId": prediction_id})
        return json_response(_feedback_view(prediction_id, found))

    async def _admin_feedback(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        """The predictions behind recent feedback, as `GET /feedback/{id}` shows each: for incident records."""
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            since = float(query.get("since", ["0"])[0])
            limit = max(1, min(int(query.get("limit", ["100"])[0]), 1000))
        except ValueError:
            raise HttpError(400, {"error": "INVALID_QUERY",
                                  "message": "since (unix seconds) and limit must be numbers"}) from None
        severity = query.get("severity", ["critical"])[0]
        stakeholders = query.get("stakeholder", []) or list(STAKEHOLDERS)
        store = self._require_store()
        model = self.settings.model_name

        def read() -> list[tuple[str, PredictionFeedback]]:
            ids = store.predictions_with_feedback(model, since, stakeholders, severity, limit)
            return [(i, store.feedback_for(i)) for i in ids]

        try:
            found = await self._in_store_thread(read)
        except StoreUnavailable as e:
            raise HttpError(503, {"error": "STORE_UNAVAILABLE", "message": str(e)[:300]}) from None
        return json_response({"records": [_feedback_view(i, f) for i, f in found]})

    def _require_store(self) -> FeedbackStore:
        if self.store is None:
            raise HttpError(503, {"error": "STORE_UNAVAILABLE", "message": "the feedback store is not open"})
        return self.store

    def _validate(self, model: type[ModelT], doc: Any) -> ModelT:
        try:
            return model.model_validate(doc)
        except ValidationError as e:
            self._count_error("INVALID_INPUT")
            errors = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
                      for err in e.errors(include_url=False, include_input=False, include_context=False)]
            raise HttpError(422, {"error": "INVALID_INPUT", "message": "request body does not match the schema",
                                  "errors": errors[:20]}) from None

    # ------------------------------------------------------------------ health, metadata, metrics

    async def _live(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        return json_response({"live": True})

    def _readiness(self) -> tuple[bool, str | None]:
        if self.shutting_down:
            return False, "shutting down"
        if self.load_status == "failed":
            return False, self.load_error
        if not self.ready_for_traffic:
            return False, "model loading and warming up"
        return True, None

    async def _ready(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        ready, reason = self._readiness()
        doc: dict[str, Any] = {"ready": ready, "state": self.governance.state.value, "load_status": self.load_status}
        if reason:
            doc["reason"] = reason
        return json_response(doc, 200 if ready else 503)

    async def _model_ready(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        self._check_model_path(params)
        ready, reason = self._readiness()
        return json_response({"name": self.settings.model_name, "ready": ready, "reason": reason},
                             200 if ready else 503)

    async def _server_metadata(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        from model_server import __version__

        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": []})

    async def _model_metadata(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
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
                           "governance_state": self.governance.state.value},
        })

    async def _status(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        s = self.settings
        ready, reason = self._readiness()
        return json_response({
            "model": s.model_name, "version": s.model_version, "track": s.model_track, "sha256": s.artifact_sha256,
            "ml_state": self.governance.state.value, "model_errors": self.governance.model_errors,
            "window_model_errors": self.governance.window_errors(), "ready": ready, "reason": reason,
            "load_status": self.load_status, "requests": self.requests_served,
            "pending_records": len(self._pending_records),
            "drift_samples": self.drift.samples if self.drift is not None else 0,
        })

    async def _metrics(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        self.governance.refresh()
        return Response(200, self.metrics.render(), CONTENT_TYPE_LATEST.encode())

    async def _openapi(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        from model_server import __version__

        contract = self.model.contract if self.model is not None else self.settings.feature_contract
        return json_response(openapi_document(title=f"{SERVER_NAME} ({self.settings.model_name})",
                                              version=__version__, contract=contract))

    # ------------------------------------------------------------------ admin

    def _admin(self, handler: Handler) -> Handler:
        async def authenticated(scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
            token = self.settings.admin_token
            if token is None:
                raise HttpError(403, {"error": "ADMIN_DISABLED", "message": "ADMIN_TOKEN is not set"})
            offered = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    offered = value
            scheme, _, credential = offered.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), token.encode()):
                self.log.throttled("ADMIN_UNAUTHORIZED", ERROR_LOG_INTERVAL, "ADMIN", "UNAUTHORIZED",
                                   f"rejected admin call {scope['path']}", path=scope["path"])
                raise HttpError(401, {"error": "UNAUTHORIZED"}, headers=[(b"www-authenticate", b"Bearer")])
            return await handler(scope, receive, params)

        return authenticated

    async def _flush(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        queued = self.batcher.pending if self.batcher is not None else 0
        if self.batcher is not None:
            self.batcher.run_pending()
        await asyncio.sleep(0)  # let the requests whose scores were just set write their answers
        records = await self.flush_records()
        self.log.event("ADMIN", "FLUSHED", "inference queue drained, prediction records flushed",
                       queued_requests=queued, prediction_records=records)
        return json_response({"flushed": {"queued_requests": queued, "prediction_records": records,
                                          "unsaved_records": len(self._pending_records)}})

    async def _warmup(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        model = self.model
        if model is None:
            raise HttpError(409, {"error": "MODEL_NOT_LOADED", "load_status": self.load_status,
                                  "state": self.governance.state.value})
        started = time.perf_counter()
        rounds = max(1, self.settings.warmup_rounds)
        await asyncio.get_running_loop().run_in_executor(None, warm_up, model, rounds)
        seconds = time.perf_counter() - started
        self.log.event("ADMIN", "WARMED_UP", "caches warmed", rounds=rounds, seconds=round(seconds, 4))
        return json_response({"warmed": True, "rounds": rounds, "seconds": seconds})

    async def _reenable(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        request = self._validate(ReenableIn, await self._json_body(scope, receive))
        if not self.governance.reenable(request.actor, request.reason):
            raise HttpError(409, {"error": "NOT_DISABLED_BY_GOVERNANCE", "state": self.governance.state.value})
        return json_response({"reenabled": True, "state": self.governance.state.value})

    async def _faults(self, scope: Scope, receive: Receive, params: dict[str, str]) -> Response:
        request = self._validate(FaultsIn, await self._json_body(scope, receive))
        self._fault_ratio = request.error_ratio
        self.log.event("MODEL_SERVER", "FAULT_INJECTION_SET", f"injecting errors into {request.error_ratio:.0%} "
                       "of requests", level=logging.WARNING, error_ratio=request.error_ratio, actor=request.actor,
                       reason=request.reason)
        return json_response({"errorRatio": self._fault_ratio})

    # ------------------------------------------------------------------ background jobs

    async def _heartbeat(self) -> None:
        state = self.governance.refresh()
        errors = self.governance.model_errors
        self.log.event("ML_GOVERNANCE", "HEARTBEAT", f"HEARTBEAT ml_state={state.value} model_errors={errors}",
                       ml_state=state.value, model_errors=errors,
                       window_model_errors=self.governance.window_errors(), ready=self._readiness()[0],
                       load_status=self.load_status, requests=self.requests_served,
                       pending_records=len(self._pending_records))

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

    async def _purge(self) -> None:
        s = self.settings
        store = self._require_store()
        cutoff = time.time() - s.prediction_retention_seconds
        deleted = await self._in_store_thread(
            lambda: store.purge_predictions(s.model_name, cutoff, s.prediction_retention_max_rows))
        if deleted:
            self.log.event("FEEDBACK_STORE", "PREDICTIONS_PURGED", f"{deleted} prediction records past retention",
                           deleted=deleted)


def _feedback_view(prediction_id: str, found: PredictionFeedback) -> dict[str, Any]:
    p = found.prediction
    return {
        "predictionId": prediction_id,
        "prediction": None if p is None else {
            "model": p.model, "version": p.version, "track": p.track, "state": p.state,
            "features": orjson.loads(p.inputs), "prediction": p.output, "createdAt": iso(p.created_at)},
        "feedback": [{"feedbackId": f.feedback_id, "label": orjson.loads(f.label), "severity": f.severity,
                      "stakeholder": f.stakeholder, "comment": f.comment, "author": f.author,
                      "version": f.version, "receivedAt": iso(f.received_at)} for f in found.feedback],
    }
