"""``POST /predict``: ``{"features": {name: number}}`` or ``{"instances": [{name: number}, ...]}``."""

from __future__ import annotations

from typing import Any

import orjson

from model_server.config import Settings
from model_server.dataplane import DataPlane
from model_server.http import Params, Receive, Response, Scope, invalid_input, read_json
from model_server.rest import InferenceTimer


class V1Endpoints:
    def __init__(self, settings: Settings, dataplane: DataPlane, timer: InferenceTimer) -> None:
        self._settings = settings
        self._dataplane = dataplane
        self._timer = timer

    async def predict(self, scope: Scope, receive: Receive, params: Params) -> Response:
        return await self._timer.timed(self._predict(scope, receive))

    async def _predict(self, scope: Scope, receive: Receive) -> Response:
        s = self._settings
        doc = await read_json(scope, receive, s.max_body_bytes)
        if not isinstance(doc, dict) or len(doc) != 1 or not ("features" in doc or "instances" in doc):
            raise invalid_input('body must be {"features": {name: number}} or {"instances": [{name: number}, ...]}')
        batch = "instances" in doc
        rows = doc["instances"] if batch else [doc["features"]]
        if batch and (not isinstance(rows, list) or not rows):
            raise invalid_input("instances must be a non-empty list")
        if len(rows) > s.max_batch_rows:
            raise invalid_input(f"at most {s.max_batch_rows} instances")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise invalid_input("features must be an object keyed by feature name", **({"row": i} if batch else {}))
        scored = await self._dataplane.score_rows(rows, batch)
        doc_out: dict[str, Any] = {"model": s.model_name, "version": s.model_version, "track": s.model_track,
                                   "state": scored.state.value, "neutral": scored.neutral}
        if batch:
            doc_out["predictions"] = [{"predictionId": i, "prediction": p}
                                      for i, p in zip(scored.ids, scored.scores, strict=True)]
        else:
            doc_out["predictionId"], doc_out["prediction"] = scored.ids[0], scored.scores[0]
        return Response(200, orjson.dumps(doc_out), outcome="neutral" if scored.neutral else "success")
