"""The endpoints, one module per protocol: each reads its request, hands rows to the data plane
(:class:`~model_server.dataplane.DataPlane`) and writes the answer in its protocol's shape.

* :mod:`model_server.rest.v1_endpoints` - ``POST /predict`` (features by name);
* :mod:`model_server.rest.v2_endpoints` - the Open Inference Protocol (v2): health, metadata, ``infer``
  (JSON and the binary tensor extension);
* :mod:`model_server.rest.service_endpoints` - ``/status``, ``/metrics``, ``/openapi.json``.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from model_server.http import HttpError, Outcome, Response
from model_server.metrics import ServerMetrics


class InferenceTimer:
    """Counts every inference answer by outcome and observes its latency (the SLO's numbers)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._answered = metrics.answered

    async def timed(self, work: Coroutine[Any, Any, Response]) -> Response:
        started = time.perf_counter()
        outcome: Outcome = "client_error"
        try:
            response = await work
            outcome = response.outcome
            return response
        except HttpError as e:
            outcome = e.outcome
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self._answered(outcome, time.perf_counter() - started)
