"""The server: composes the rooms below into one ASGI app.

* :mod:`model_server.dataplane` - rows in, scores out, every answer recorded (no HTTP);
* :mod:`model_server.rest` - the endpoints per protocol (``/predict``, the Open Inference Protocol v2, the
  server's own), which translate requests into rows and scores into answers;
* :mod:`model_server.lifecycle` - start-up, loading the model, background jobs, shutdown, readiness;
* :mod:`model_server.http` - routing, body reading, errors as answers (:class:`~model_server.http.HttpError`);
* :mod:`model_server.records` - the buffer of prediction records, taken and restored as one batch;
* :mod:`model_server.feedback` - the store thread and the feedback endpoints;
* :mod:`model_server.admin` - ``/admin/*``;
* :mod:`model_server.governance` - whether the model may answer, or the neutral prediction must.

Served by :mod:`model_server.transport` (HTTP/1.1 on uvloop, httptools' parser), one process per pod.
Invariants:

* bad input is a 4xx with a JSON body ``{"error": CODE, ...}``, never a 5xx; an unexpected exception is
  logged and answered ``500 INTERNAL_ERROR`` (the fuzz tests hold us to never reaching it);
* the model answers only when governance allows (``ENABLED|*``); otherwise the neutral prediction does;
* a ``201`` from ``POST /feedback`` means the label is durable in the feedback store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from model_server import auth
from model_server.accounting import ErrorAccount
from model_server.admin import Admin
from model_server.batching import MicroBatcher
from model_server.config import Settings
from model_server.dataplane import DataPlane, LoadStatus
from model_server.feedback import ERROR_LOG_INTERVAL, FeedbackDesk, StoreThread
from model_server.governance import Governance
from model_server.http import HttpError, Receive, Router, Scope, Send, error_response, send_response
from model_server.lifecycle import Lifecycle
from model_server.loader import LoadedModel
from model_server.logs import EventLog
from model_server.metrics import ServerMetrics
from model_server.records import RecordBuffer
from model_server.rest import InferenceTimer
from model_server.rest.service_endpoints import ServiceEndpoints
from model_server.rest.v1_endpoints import V1Endpoints
from model_server.rest.v2_endpoints import V2Endpoints
from model_server.shadow import COMPARE_PATH, Comparator, Mirror, ShadowMetrics
from model_server.store import FeedbackStore, open_store

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
        self.errors = ErrorAccount(self.metrics, self.governance, self.log)
        self.records = RecordBuffer(s.record_buffer_max, on_drop=self._records_dropped)
        # The store is scoped to the model's namespace (two same-named models never share evidence).
        self.store = StoreThread(store_factory or functools.partial(open_store, namespace=s.mlmodel_namespace),
                                 idle_class=s.store_thread_idle)
        self.feedback = FeedbackDesk(s, self.store, self.records, self.metrics, self.log)
        # The shadow stage: the stable mirrors (when SHADOW_TARGET_URL is set), any server can compare.
        self.shadow_metrics = ShadowMetrics(self.metrics.registry, s.model_name, s.model_version)
        self.mirror = Mirror(s.shadow_target_url, s.shadow_percent, s.shadow_queue_size, s.shadow_timeout_seconds,
                             s.model_name, s.model_version, self.shadow_metrics, self.log,
                             token_file=s.shadow_token_file) \
            if s.shadow_target_url else None
        self.dataplane = DataPlane(s, self.governance, self.records, self.mirror)
        self.comparator = Comparator(s.shadow_decision_threshold, self.shadow_metrics, s.max_batch_rows,
                                     s.max_body_bytes, self.dataplane.shadow_score)
        self.lifecycle = Lifecycle(s, log=self.log, metrics=self.metrics, governance=self.governance,
                                   dataplane=self.dataplane, store=self.store, feedback=self.feedback,
                                   records=self.records, mirror=self.mirror, comparator=self.comparator,
                                   errors=self.errors)
        timer = InferenceTimer(self.metrics)
        self.v1 = V1Endpoints(s, self.dataplane, timer)
        self.v2 = V2Endpoints(s, self.dataplane, self.lifecycle, self.governance, timer)
        self.service = ServiceEndpoints(s, self.dataplane, self.lifecycle, self.governance, self.metrics,
                                        self.records)
        self.router = self._routes()
        self._served_by = served_by_headers(s)

    def _routes(self) -> Router:
        s = self.settings
        admin = Admin(auth.configured(s.service_account_jwks, s.service_account_issuer, auth.ADMIN_AUDIENCE,
                                      s.admin_subject), self, self.governance, self.log, s.max_body_bytes)
        shadow_peer = auth.configured(s.service_account_jwks, s.service_account_issuer, auth.SHADOW_AUDIENCE,
                                      s.shadow_subject)
        v1, v2, service = self.v1, self.v2, self.service
        r = Router()
        r.add("/predict", "POST", v1.predict)
        r.add("/feedback", "POST", self.feedback.post)
        r.add("/feedback/{prediction_id}", "GET", self.feedback.get, remember=False)
        r.add("/metrics", "GET", service.metrics)
        r.add("/status", "GET", service.status)
        r.add("/openapi.json", "GET", service.openapi)
        r.add("/v2", "GET", v2.server_metadata)
        r.add("/v2/health/live", "GET", v2.live)
        r.add("/v2/health/ready", "GET", v2.ready)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add(prefix, "GET", v2.model_metadata)
            r.add(f"{prefix}/ready", "GET", v2.model_ready)
            r.add(f"{prefix}/infer", "POST", v2.infer)
        r.add(COMPARE_PATH, "POST", auth.require(shadow_peer, self.comparator.endpoint, what="SHADOW"))
        r.add("/admin/flush", "POST", admin.authenticated(admin.flush))
        r.add("/admin/warmup", "POST", admin.authenticated(admin.warmup))
        r.add("/admin/reenable", "POST", admin.authenticated(admin.reenable))
        if s.fault_injection:
            r.add("/admin/faults", "POST", admin.authenticated(admin.faults))
        r.add("/admin/feedback", "GET", admin.authenticated(self.feedback.recent))
        return r

    # ------------------------------------------------------------------ what tests, the bench and the watcher use

    def set_config_enabled(self, enabled: bool, source: str = "config") -> None:
        """The kill switch (MLModel ``spec.enabled``); callable from any thread. Disabling takes effect on the
        next request; enabling loads the model first if it was never loaded."""
        self.governance.set_config_enabled(enabled, source)

    async def startup(self) -> None:
        await self.lifecycle.startup()

    async def shutdown(self) -> None:
        await self.lifecycle.shutdown()

    @property
    def model(self) -> LoadedModel | None:
        return self.dataplane.model

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.dataplane.batcher

    @batcher.setter
    def batcher(self, batcher: MicroBatcher | None) -> None:  # tests stand in a failing model this way
        self.dataplane.batcher = batcher

    @property
    def load_status(self) -> LoadStatus:
        return self.dataplane.load_status

    @property
    def load_error(self) -> str | None:
        return self.dataplane.load_error

    # ------------------------------------------------------------------ what /admin/* acts on (AdminTarget)

    async def flush(self) -> dict[str, int]:
        return await self.lifecycle.flush()

    async def warm_up(self) -> dict[str, Any]:
        return await self.lifecycle.warm_up()

    def set_fault_ratio(self, ratio: float) -> None:
        self.dataplane.set_fault_ratio(ratio)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the HTTP answer inline below: one coroutine less on every request
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        try:
            handler, params = self.router.resolve(path, scope["method"])
            response = await handler(scope, receive, params)
        except HttpError as e:
            if e.kind is not None:
                self.errors.count(e.kind, e)
            response = error_response(e, oip=path.startswith("/v2"))
        except Exception as e:
            self.log.event("MODEL_SERVER", "INTERNAL_ERROR", f"unhandled {type(e).__name__} on {path}",
                           level=logging.ERROR, path=path, exc_info=True)
            response = error_response(HttpError(500, "INTERNAL_ERROR"), oip=path.startswith("/v2"))
        # Every answer says which server made it: load through a Service can be counted by version and sha256.
        await send_response(send, response, self._served_by)

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

    def _records_dropped(self, dropped: int) -> None:
        self.metrics.records_dropped_child.inc(dropped)
        self.log.throttled("RECORDS_DROPPED", ERROR_LOG_INTERVAL, "FEEDBACK_STORE", "RECORDS_DROPPED",
                           "prediction records dropped: the feedback store is not keeping up", dropped=dropped)
