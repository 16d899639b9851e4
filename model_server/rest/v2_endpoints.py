"""The Open Inference Protocol (v2) over REST: server and model health and metadata, and ``infer`` with JSON
tensors or the binary tensor data extension. Requests become rows by :mod:`model_server.oip` (pure)."""

from __future__ import annotations

from typing import Any

from model_server import oip
from model_server.config import Settings
from model_server.dataplane import DataPlane
from model_server.governance import Governance
from model_server.http import HttpError, Outcome, Params, Receive, Response, Scope, json_response, read_body
from model_server.lifecycle import Lifecycle
from model_server.rest import InferenceTimer

SERVER_NAME = "modelwarden-model-server"
BINARY = b"application/octet-stream"


class V2Endpoints:
    def __init__(self, settings: Settings, dataplane: DataPlane, lifecycle: Lifecycle, governance: Governance,
                 timer: InferenceTimer) -> None:
        self._settings = settings
        self._dataplane = dataplane
        self._lifecycle = lifecycle
        self._governance = governance
        self._timer = timer

    def _check_model_path(self, params: Params) -> None:
        s = self._settings
        if params["name"] != s.model_name:
            raise HttpError(404, "MODEL_NOT_FOUND", f"this server serves {s.model_name!r}")
        version = params.get("version")
        if version is not None and version != s.model_version:
            raise HttpError(404, "VERSION_NOT_FOUND", f"this server serves version {s.model_version!r}")

    async def infer(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        return await self._timer.timed(self._infer(scope, receive))

    async def _infer(self, scope: Scope, receive: Receive) -> Response:
        s = self._settings
        body = await read_body(scope, receive, s.max_body_bytes)
        json_length = oip.header_length(scope["headers"], len(body))
        # While the neutral prediction answers, columns are not checked against the contract (as for /predict).
        known = self._dataplane.contract()
        request = oip.decode_request(body, json_length, self._dataplane.checking_contract(), s.max_batch_rows,
                                     known.n_features if known is not None else None)
        scored = await self._dataplane.score_rows(request.rows, len(request.rows) > 1, request.matrix)
        answer, header_length = oip.encode_response(
            model_name=s.model_name, model_version=s.model_version, request=request,
            parameters={"governance_state": scored.state.value, "neutral": scored.neutral, "track": s.model_track},
            scores=scored.scores, ids=scored.ids)
        outcome: Outcome = "neutral" if scored.neutral else "success"
        if header_length is None:
            return Response(200, answer, outcome=outcome)
        return Response(200, answer, BINARY, [(oip.HEADER_LENGTH, str(header_length).encode())], outcome=outcome)

    async def live(self, scope: Scope, receive: Receive, params: Params) -> Response:
        return json_response({"live": True})

    async def ready(self, scope: Scope, receive: Receive, params: Params) -> Response:
        ready, reason = self._lifecycle.readiness()
        doc: dict[str, Any] = {"ready": ready, "state": self._governance.state.value,
                               "load_status": self._dataplane.load_status}
        if reason:
            doc["reason"] = reason
        return json_response(doc, 200 if ready else 503)

    async def model_ready(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        ready, reason = self._lifecycle.readiness()
        return json_response({"name": self._settings.model_name, "ready": ready, "reason": reason},
                             200 if ready else 503)

    async def server_metadata(self, scope: Scope, receive: Receive, params: Params) -> Response:
        from model_server import __version__

        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(oip.EXTENSIONS)})

    async def model_metadata(self, scope: Scope, receive: Receive, params: Params) -> Response:
        self._check_model_path(params)
        s = self._settings
        model = self._dataplane.model
        contract = self._dataplane.contract()
        features = list(contract.features) if contract is not None else []
        return json_response({
            "name": s.model_name, "versions": [s.model_version],
            "platform": model.platform if model is not None else s.model_format,
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in features],
            "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [-1]},
                        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"track": s.model_track, "sha256": s.artifact_sha256,
                           "contract": contract.name if contract is not None else None,
                           "governance_state": self._governance.state.value,
                           # OIP metadata has one list of inputs; the other accepted form is spelled out here.
                           "tensor_input": {
                               "description": "instead of the per-feature inputs: one tensor of any other name, "
                                              "rows of features in the order of `inputs`",
                               "datatype": "FP64", "shape": [-1, len(features)],
                               "datatypes": sorted(oip.NUMERIC_DATATYPES)}},
        })
