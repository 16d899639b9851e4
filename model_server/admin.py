"""``/admin/*``: bearer-token authentication and the operator's levers on one server.

The operator calls ``flush`` (drain the inference queue, write prediction records) and ``warmup`` during a
rollback; a human calls ``reenable`` after ``DISABLED_BY_GOVERNANCE``; chaos drills set ``faults``. The server
side of each is behind :class:`AdminTarget`, so this module knows nothing of how the server is built.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any, Protocol

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
    def __init__(self, token: str | None, target: AdminTarget, governance: Governance, log: EventLog,
                 max_body_bytes: int, token_file: Path | None = None) -> None:
        self._token = token
        self._token_file = token_file
        self._target = target
        self._governance = governance
        self._log = log
        self._max_body = max_body_bytes

    def _current_token(self) -> str | None:
        """The token file's content when one is configured (the kubelet replaces it when its Secret changes),
        else ``ADMIN_TOKEN``. A file that cannot be read or is empty disables admin calls."""
        if self._token_file is None:
            return self._token
        try:
            return self._token_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def authenticated(self, handler: Handler) -> Handler:
        """``handler`` behind ``Authorization: Bearer <token>`` (403 while no token is configured)."""
        async def check(scope: Scope, receive: Receive, params: Params) -> Response:
            token = self._current_token()
            if token is None:
                raise HttpError(403, "ADMIN_DISABLED", "no admin token (ADMIN_TOKEN_FILE / ADMIN_TOKEN)")
            offered = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    offered = value
            scheme, _, credential = offered.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), token.encode()):
                self._log.throttled("ADMIN_UNAUTHORIZED", ERROR_LOG_INTERVAL, "ADMIN", "UNAUTHORIZED",
                                    f"rejected admin call {scope['path']}", path=scope["path"])
                raise HttpError(401, "UNAUTHORIZED", headers=[(b"www-authenticate", b"Bearer")])
            return await handler(scope, receive, params)

        return check

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
