"""The server's own endpoints: ``/status`` (for people and the operator), ``/metrics`` (Prometheus) and
``/openapi.json``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from model_server.config import Settings
from model_server.dataplane import DataPlane
from model_server.governance import Governance
from model_server.http import Params, Receive, Response, Scope, json_response
from model_server.lifecycle import Lifecycle
from model_server.metrics import ServerMetrics
from model_server.records import RecordBuffer
from model_server.rest.v2_endpoints import SERVER_NAME
from model_server.schemas import openapi_document


class ServiceEndpoints:
    def __init__(self, settings: Settings, dataplane: DataPlane, lifecycle: Lifecycle, governance: Governance,
                 metrics: ServerMetrics, records: RecordBuffer) -> None:
        self._settings = settings
        self._dataplane = dataplane
        self._lifecycle = lifecycle
        self._governance = governance
        self._metrics = metrics
        self._records = records

    async def status(self, scope: Scope, receive: Receive, params: Params) -> Response:
        s, d, g = self._settings, self._dataplane, self._governance
        ready, reason = self._lifecycle.readiness()
        return json_response({
            "model": s.model_name, "version": s.model_version, "track": s.model_track, "sha256": s.artifact_sha256,
            "ml_state": g.state.value, "model_errors": g.model_errors,
            "window_model_errors": g.window_errors(), "ready": ready, "reason": reason,
            "load_status": d.load_status, "requests": self._lifecycle.requests_served,
            "pending_records": len(self._records),
            "drift_samples": d.drift.samples if d.drift is not None else 0,
        })

    async def metrics(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._governance.refresh()
        return Response(200, self._metrics.render(), CONTENT_TYPE_LATEST.encode())

    async def openapi(self, scope: Scope, receive: Receive, params: Params) -> Response:
        from model_server import __version__

        return json_response(openapi_document(title=f"{SERVER_NAME} ({self._settings.model_name})",
                                              version=__version__, contract=self._dataplane.contract()))
