"""Structured JSON logs, one object per line on stdout.

Every line has ``ts``, ``level``, ``component``, ``event``, ``model``, ``version``, ``track`` and a
human-readable ``message``; events add their own fields (``expected_count``, ``ml_state``...). Lines from
other libraries are wrapped in the same shape so the stream stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_FIELDS = "mw_fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, _FIELDS, None)
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
        }
        if fields is None:
            doc.update(component=record.name.upper().replace(".", "_"), event="LOG")
        else:
            doc.update(fields)
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "INFO") -> None:
    """Route every logger to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class EventLog:
    """Emits events bound to one model/version/track. ``throttled`` keeps a flood of identical client errors
    from drowning the log: at most one line per key per interval, carrying how many were suppressed."""

    def __init__(self, model: str, version: str, track: str, logger: logging.Logger | None = None) -> None:
        self._bound = {"model": model, "version": version, "track": track}
        self._logger = logger or logging.getLogger("model_server")
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def event(self, component: str, event: str, message: str = "", *, level: int = logging.INFO,
              exc_info: bool = False, **fields: Any) -> None:
        if not self._logger.isEnabledFor(level):
            return
        doc = {"component": component, "event": event, **self._bound, **fields}
        self._logger.log(level, message or event, exc_info=exc_info, extra={_FIELDS: doc})

    def throttled(self, key: str, interval: float, component: str, event: str, message: str = "", *,
                  level: int = logging.WARNING, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        self.event(component, event, message, level=level, **fields)
