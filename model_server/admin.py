"""``/admin/*``: the operator's levers on one server, for the operator only.

The operator calls ``flush`` (drain the inference queue, write prediction records) and ``warmup`` during a
rollback, ``reenable`` to carry out a ModelAction ``enable`` after ``DISABLED_BY_GOVERNANCE``, and ``feedback``
for a rollback's evidence. ``faults`` exists only on a server started with ``FAULT_INJECTION=true`` (tests, the
demo). Every call needs the operator's ServiceAccount token (:mod:`model_server.auth`). The server
side of each is behind :class:`AdminTarget`, so this module knows nothing of how the server is built.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from model_server.auth import Refused, TokenVerifier, require
from model_server.feedback import ERROR_LOG_INTERVAL, validate
from model_server.governance import Governance
from model_server.http import Handler, HttpError, Params, Receive, Response, Scope, json_response, read_json
from model_server.logs import EventLog
from model_server.schemas import FaultsIn, ReenableIn


class AdminTarget(Protocol):
    async def flush(self) -> dict[str, int]:
        """Drain the inference queue and write prediction records; what was flushed, and what is still unsaved."""

    async def warm_up(self) -> dict[str, Any]:
        """Warm the loaded model's caches (409 ``MODEL_NOT_LOADED`` as :class:`HttpError` without a model)."""

    def set_fault_ratio(self, ratio: float) -> None: ...


class Admin:
    """The admin endpoints; :meth:`authenticated` puts one behind the operator's ServiceAccount token (audience
    ``modelwarden.io/admin``, subject ``ADMIN_SUBJECT``, verified offline: :mod:`model_server.auth`)."""

    def __init__(self, verifier: TokenVerifier | None, target: AdminTarget, governance: Governance, log: EventLog,
                 max_body_bytes: int) -> None:
        self._verifier = verifier
        self._target = target
        self._governance = governance
        self._log = log
        self._max_body = max_body_bytes

    def _refused(self, scope: Scope, refused: Refused) -> None:
        self._log.throttled("ADMIN_UNAUTHORIZED", ERROR_LOG_INTERVAL, "ADMIN", "UNAUTHORIZED",
                            f"refused admin call {scope['path']}: {refused.reason}", path=scope["path"],
                            reason=refused.reason)

    def authenticated(self, handler: Handler) -> Handler:
        """``handler`` for the operator only: 401 without a token, 403 (with the reason) for any other token, 403
        ``ADMIN_DISABLED`` while no verifier is configured."""
        return require(self._verifier, handler, what="ADMIN", on_refused=self._refused)

    async def flush(self, scope: Scope, receive: Receive, params: Params) -> Response:
        flushed = await self._target.flush()
        self._log.event("ADMIN", "FLUSHED", "inference queue drained, prediction records flushed",
                        queued_requests=flushed["queued_requests"], prediction_records=flushed["prediction_records"])
        return json_response({"flushed": flushed})

    async def warmup(self, scope: Scope, receive: Receive, params: Params) -> Response:
        warmed = await self._target.warm_up()
        self._log.event("ADMIN", "WARMED_UP", "caches warmed", rounds=warmed["rounds"],
                        seconds=round(warmed["seconds"], 4))
        return json_response({"warmed": True, **warmed})

    async def reenable(self, scope: Scope, receive: Receive, params: Params) -> Response:
        request = validate(ReenableIn, await read_json(scope, receive, self._max_body))
        if not self._governance.reenable(request.actor, request.reason):
            raise HttpError(409, "NOT_DISABLED_BY_GOVERNANCE", state=self._governance.state.value)
        return json_response({"reenabled": True, "state": self._governance.state.value})

    async def faults(self, scope: Scope, receive: Receive, params: Params) -> Response:
        request = validate(FaultsIn, await read_json(scope, receive, self._max_body))
        self._target.set_fault_ratio(request.error_ratio)
        self._log.event("MODEL_SERVER", "FAULT_INJECTION_SET", f"injecting errors into {request.error_ratio:.0%} "
                        "of requests", level=logging.WARNING, error_ratio=request.error_ratio, actor=request.actor,
                        reason=request.reason)
        return json_response({"errorRatio": request.error_ratio})
