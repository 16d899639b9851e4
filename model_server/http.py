"""HTTP plumbing of the server: ASGI types, routing, body reading, and how an error becomes an answer.

Hand-routed ASGI rather than a framework: a handful of fixed routes, and every microsecond of framework
overhead on ``/predict`` is a microsecond over the in-process floor.

Every answer other than success is raised as :class:`HttpError` (one helper, :func:`invalid_input`, for the
most common one). An error that carries a ``kind`` is counted in ``ml_model_errors_total`` by the server, once,
where it is turned into a response.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"

# How an answer counts in ml_inference_requests_total: client_error is the caller's and outside the SLI;
# error and unavailable burn the error budget; success and neutral are good.
Outcome = Literal["success", "neutral", "client_error", "error", "unavailable"]


class HttpError(Exception):
    """An answer other than success: status, a stable ``code``, a human ``message`` and extra fields.

    ``kind``: the ``ml_model_errors_total`` kind this error counts as (None: not counted). ``detail``: what the
    server's log line says when it differs from what the client is told. ``outcome``: how the answer counts
    in ``ml_inference_requests_total``."""

    def __init__(self, status: int, code: str, message: str | None = None, *, kind: str | None = None,
                 outcome: Outcome = "client_error", headers: list[tuple[bytes, bytes]] | None = None,
                 detail: str | None = None, **fields: Any) -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message
        self.kind = kind
        self.outcome = outcome
        self.headers = headers or []
        self.detail = detail
        self.fields = fields

    @property
    def body(self) -> dict[str, Any]:
        """The server's own error body: ``{"error": CODE, "message": ..., **fields}``."""
        doc: dict[str, Any] = {"error": self.code}
        if self.message is not None:
            doc["message"] = self.message
        doc.update(self.fields)
        return doc


def invalid_input(message: str, **fields: Any) -> HttpError:
    """422 ``INVALID_INPUT``: the request is well-formed JSON but not what the endpoint accepts."""
    return HttpError(422, "INVALID_INPUT", message, kind="INVALID_INPUT", **fields)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    outcome: Outcome = "success"  # for inference endpoints: how the answer counts in ml_inference_requests_total


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(doc))


def error_response(error: HttpError, *, oip: bool = False) -> Response:
    """The server's own shape, or the Open Inference Protocol's (``{"error": "<text>", "code": CODE, ...}``:
    OIP clients such as tritonclient and the KServe SDK show their users the ``error`` field)."""
    body = error.body
    if oip:
        body = {"error": error.message or error.detail or error.code, "code": error.code, **error.fields}
    return Response(error.status, orjson.dumps(body), JSON, error.headers)


Params = dict[str, str]
Handler = Callable[[Scope, Receive, Params], Awaitable[Response]]


class Router:
    """Exact paths by dictionary lookup (the hot ``/predict``), then templates such as
    ``/v2/models/{name}/infer`` segment by segment; a template's match is remembered (up to
    ``MATCH_CACHE_SIZE`` paths: clients choose them), so the served model's infer path is one lookup too."""

    MATCH_CACHE_SIZE = 256

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._templates: list[tuple[list[str], dict[str, Handler]]] = []
        self._uncached: set[int] = set()  # ids of method tables whose paths are not remembered
        self._matched: dict[str, tuple[dict[str, Handler], Params]] = {}

    def add(self, path: str, method: str, handler: Handler, *, remember: bool = True) -> None:
        """``remember=False`` for templates whose values are many (an id per request)."""
        if "{" not in path:
            self._exact.setdefault(path, {})[method] = handler
            return
        segments = path.strip("/").split("/")
        for existing, methods in self._templates:
            if existing == segments:
                methods[method] = handler
                return
        methods = {method: handler}
        self._templates.append((segments, methods))
        if not remember:
            self._uncached.add(id(methods))

    def resolve(self, path: str, method: str) -> tuple[Handler, Params]:
        """The handler and path parameters; 404 or 405 (with ``allow``) as :class:`HttpError`."""
        params: Params = {}
        methods = self._exact.get(path)
        if methods is None:
            known = self._matched.get(path)
            if known is not None:
                methods, params = known
            else:
                methods = self._match(path, params)
                if (methods is not None and len(self._matched) < self.MATCH_CACHE_SIZE
                        and id(methods) not in self._uncached):
                    self._matched[path] = (methods, params)
        if methods is None:
            raise HttpError(404, "NOT_FOUND", f"no route {path[:200]}")
        handler = methods.get(method)
        if handler is None:
            raise HttpError(405, "METHOD_NOT_ALLOWED", allowed=list(methods),
                            headers=[(b"allow", ", ".join(methods).encode())])
        return handler, params

    def _match(self, path: str, params: Params) -> dict[str, Handler] | None:
        parts = path.strip("/").split("/")
        for segments, methods in self._templates:
            if len(segments) != len(parts):
                continue
            found: Params = {}
            for template, part in zip(segments, parts, strict=True):
                if template.startswith("{"):
                    if not part:
                        break
                    found[template[1:-1]] = part
                elif template != part:
                    break
            else:
                params.update(found)
                return methods
        return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, decompressed (``Content-Encoding: gzip|deflate``); refused with 413 beyond
    ``limit`` bytes, compressed or not, before more is read or inflated."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual single chunk
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise body_too_large(limit)
    else:
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise HttpError(400, "CLIENT_DISCONNECTED")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = await receive()
        body = b"".join(chunks)
    for name, value in scope["headers"]:  # inline rather than header(): this is every request's path
        if name == b"content-encoding":
            return decompress(body, value, limit)
    return body


def header(scope: Scope, name: bytes) -> bytes | None:
    """The last value of request header ``name`` (lower case)."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return found


# Content-Encoding -> zlib's wbits: gzip framing, and zlib framing (what HTTP calls "deflate").
_ENCODINGS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}


def decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """``body`` inflated, at most ``limit`` bytes of output (413 beyond: a small bomb must not expand)."""
    encoding = encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return body
    wbits = _ENCODINGS.get(encoding)
    if wbits is None:
        raise HttpError(415, "UNSUPPORTED_ENCODING", "Content-Encoding must be gzip, deflate or identity",
                        kind="INVALID_INPUT")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise body_too_large(limit)
        out += inflater.flush()
    except zlib.error as e:
        raise HttpError(400, "MALFORMED_BODY", f"body is not valid {encoding.decode('latin-1')} data: {e}",
                        kind="INVALID_INPUT") from None
    if len(out) > limit:
        raise body_too_large(limit)
    if not inflater.eof:
        raise HttpError(400, "MALFORMED_BODY", f"truncated {encoding.decode('latin-1')} data", kind="INVALID_INPUT")
    return out


def body_too_large(limit: int) -> HttpError:
    return HttpError(413, "BODY_TOO_LARGE", kind="INVALID_INPUT", max_bytes=limit)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, "MALFORMED_JSON", str(e)[:300], kind="INVALID_INPUT") from None


async def read_json(scope: Scope, receive: Receive, limit: int) -> Any:
    body = await read_body(scope, receive, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return parse_json(body)  # raises the 400


async def send_response(send: Send, response: Response, more_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """``response`` on the wire, with ``more_headers`` after its own (the server's, on every answer)."""
    headers = [(b"content-type", response.content_type), (b"content-length", str(len(response.body)).encode())]
    if response.headers:
        headers += response.headers
    if more_headers:
        headers += more_headers
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
