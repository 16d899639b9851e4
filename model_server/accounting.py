"""Counting a model error where the operator and governance see it: ``ml_model_errors_total{kind}``, the
governance window (which decides whether the kind counts), and a throttled log line for the answer it caused."""

from __future__ import annotations

import logging

from model_server.feedback import ERROR_LOG_INTERVAL
from model_server.governance import Governance
from model_server.http import HttpError
from model_server.logs import EventLog
from model_server.metrics import ServerMetrics


class ErrorAccount:
    def __init__(self, metrics: ServerMetrics, governance: Governance, log: EventLog) -> None:
        self._metrics = metrics
        self._governance = governance
        self._log = log

    def count(self, kind: str, error: HttpError | None = None) -> None:
        """One error of ``kind`` in ml_model_errors_total and for governance (which decides whether it
        counts); with the answer it caused, a throttled log line."""
        self._metrics.error[kind].inc()
        self._governance.record_model_error(kind)
        if error is not None:
            self._log.throttled(kind, ERROR_LOG_INTERVAL, "FEATURE_CONTRACT" if kind == "FEATURE_MISMATCH" else
                                "MODEL_SERVER", kind, error.detail or error.message or kind,
                                level=logging.ERROR if error.outcome == "error" else logging.WARNING,
                                **error.fields)
