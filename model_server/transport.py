"""How the server meets TCP: HTTP/1.1 on uvloop with httptools' parser (llhttp, the parser uvicorn uses), calling
the ASGI app (:class:`~model_server.app.ModelServer`) once per request.

Why not uvicorn: its per-request Python (a scope of a dozen keys, a request cycle object with an
``asyncio.Event``, two ASGI messages through header checks by regular expression, a keep-alive timer armed and
cancelled) cost about 35 µs of CPU per request more than this module's. A bare app answering a fixed body on one
core served 12,700-19,400 req/s at concurrency 32 under uvicorn and 24,400-25,500 on this module
(``bench/server/run.py``'s two floor rows, one run: 74 and 40 µs of CPU per request). What this module keeps of a
server, each with its test (``tests/unit/test_server_transport.py``, ``tests/unit/test_server_hardening.py``):

* **deadlines** for slow clients, kept by one sweep per server rather than a timer per request:
  ``HTTP_HEADER_TIMEOUT_SECONDS`` from the connection's start (or the next request's first byte) until the
  headers are complete, ``HTTP_BODY_TIMEOUT_SECONDS`` from there until the body is; ``408`` with a JSON body if
  nothing was answered yet, and the connection closed. An idle kept-alive connection is closed after
  ``keep_alive_seconds`` (5 s);
* **at most** ``MAX_CONNECTIONS`` open connections (beyond: ``503 TOO_MANY_CONNECTIONS`` and closed), one request
  in flight per connection (pipelined requests wait their turn, reading paused), no new request started while
  the client does not read its answers (the socket's write buffer is full);
* a body beyond ``MAX_BODY_BYTES`` is not kept: the app sees ``MAX_BODY_BYTES + 1`` bytes and answers ``413``;
  a request's URL and headers beyond ``MAX_HEAD_BYTES`` (64 KiB) get ``431`` and the connection closed;
* ``Expect: 100-continue`` answered when the request's turn comes; ``HEAD`` answered with the head only;
  HTTP/1.0 and ``Connection: close`` honoured; a malformed request gets ``400`` and the connection closed;
* each answer in **one write** (head and body together: one syscall, one TCP segment);
* **graceful stop** on SIGTERM/SIGINT: stop accepting, close idle connections, let in-flight requests answer
  (``Connection: close``) for up to ``GRACEFUL_SHUTDOWN_SECONDS``, then the app's shutdown (which flushes the
  records), then the signal re-raised so the exit status says what stopped the server.

The app's response headers are written as the app gives them (no check per header): the app is ours and never
puts a request's bytes in a header name, and the one value taken from configuration is cleaned
(:func:`~model_server.app.served_by_headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NamedTuple

import httptools
import orjson
import uvloop

from model_server.config import Settings

logger = logging.getLogger("model_server.transport")

App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
               Awaitable[None]]

KEEP_ALIVE_SECONDS = 5.0  # an idle kept-alive connection is closed after this (uvicorn's default)
MAX_HEAD_BYTES = 64 * 1024  # a request's URL and headers together; beyond: 431 (nginx's default is 8-32 KiB)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CLOSE = b"connection: close\r\n"


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


def _raw_response(status: int, code: str, message: str) -> bytes:
    """An answer of the transport itself (the app never saw the request): JSON, and the connection closes."""
    body = orjson.dumps({"error": code, "message": message})
    return (_status_line(status) + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + _CLOSE + b"\r\n" + body)


class Limits(NamedTuple):
    header_timeout: float
    body_timeout: float
    keep_alive: float
    max_connections: int
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings, keep_alive: float = KEEP_ALIVE_SECONDS) -> Limits:
        return cls(settings.http_header_timeout_seconds, settings.http_body_timeout_seconds, keep_alive,
                   settings.max_connections, settings.max_body_bytes)


class _Request(NamedTuple):
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http_version: str


class _Sweep:
    """The one timer of a server's connections: every ``interval`` it closes those past their deadline. A timer
    per request (armed at its first byte, re-armed after its headers, cancelled at its end) cost 5-7 µs of the
    event loop's CPU per request at concurrency 32 (``bench/server/request_cost.py --transport``); setting a
    float costs nothing, and a deadline is kept to within ``interval`` (a tenth of the shortest timeout)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[HttpConnection], interval: float) -> None:
        self._loop = loop
        self._connections = connections
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._run)

    def _run(self) -> None:
        self._handle = None
        now = self._loop.time()
        for connection in list(self._connections):
            deadline = connection.deadline
            if deadline is not None and deadline <= now:
                connection.expired()
        if self._connections:  # stops with the last connection; the next one starts it again
            self.start()


class _Shared:
    """What a server's connections share: the app, the limits, the open connections and their worker tasks."""

    def __init__(self, app: App, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        shortest = min(limits.header_timeout, limits.body_timeout, limits.keep_alive)
        self.sweep = _Sweep(loop, self.connections, min(1.0, max(0.01, shortest / 10)))


class HttpConnection(asyncio.Protocol):
    """One client connection: requests parsed by httptools, answered one at a time, in order."""

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._loop = shared.loop
        self._limits = shared.limits
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.deadline: float | None = None  # loop time at which the part being received (or idleness) is overdue
        self._part = "headers"  # what the deadline is for: "headers", "body" or "idle" (between requests)
        self._url = b""
        self._head_bytes = 0  # of the URL and headers received for the request being parsed
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_flight = False  # a request's answer is being made
        self._wake: asyncio.Future[_Request] | None = None  # the worker's, while it waits for the next request
        self._waiting: deque[_Request] = deque()  # pipelined requests behind the one in flight
        self._continue = False  # the request being received expects 100 Continue
        self._write_paused = False
        self._upgraded = False
        self._closed = False

    # ---------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._transport = transport
        shared = self._shared
        shared.connections.add(self)
        if len(shared.connections) > self._limits.max_connections:
            transport.write(_raw_response(503, "TOO_MANY_CONNECTIONS", "this server keeps at most "
                                          f"{self._limits.max_connections} connections open"))
            self._close()
            return
        self.deadline, self._part = self._loop.time() + self._limits.header_timeout, "headers"
        shared.sweep.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close()
        self._shared.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._closed or self._upgraded:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrades here (WebSocket, h2c): the request is answered as it is (it was parsed whole), and
            # what follows it is not HTTP/1.1, so the connection closes after the answer.
            self._upgraded = True
            if not self._in_flight and not self._waiting:
                self._close()
        except httptools.HttpParserError as e:
            if not self._in_flight:
                self._write(_raw_response(431, "HEADERS_TOO_LARGE", f"the URL and headers exceed {MAX_HEAD_BYTES} "
                                          "bytes") if self._head_bytes > MAX_HEAD_BYTES else
                            _raw_response(400, "MALFORMED_REQUEST", f"not an HTTP/1.1 request: {e}"))
            self._close()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._next()

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._body_size, self._head_bytes = b"", [], [], 0, 0
        if self.deadline is None or self._part == "idle":  # the next request on a kept-alive connection
            self.deadline, self._part = self._loop.time() + self._limits.header_timeout, "headers"

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:  # stops the parser (HttpParserError): 431, connection closed
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        self.deadline, self._part = self._loop.time() + self._limits.body_timeout, "body"
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                if self._in_flight or self._waiting:
                    self._continue = True  # written when this request's turn comes
                else:
                    self._write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        # Beyond the limit nothing more is kept: the app sees limit + 1 bytes and refuses the body (413).
        room = self._limits.max_body_bytes + 1 - self._body_size
        if room > 0:
            chunk = body[:room]
            self._body.append(chunk)
            self._body_size += len(chunk)

    def on_message_complete(self) -> None:
        self.deadline = None
        self._continue = False  # (a client may send its body without waiting for 100 Continue)
        parser = self._parser
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        version = parser.get_http_version()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = _Request(parser.get_method().decode("ascii"), path, url.query or b"", self._headers, body,
                           version != "1.0" and parser.should_keep_alive(), version)
        if self._in_flight or self._waiting or self._write_paused:
            self._waiting.append(request)
            self._pause_reading()
        else:
            self._start(request)

    # ---------------------------------------------------------------- answering

    def _start(self, request: _Request) -> None:
        self._in_flight = True
        wake, self._wake = self._wake, None
        if wake is not None:  # the connection's worker waits for its next request
            wake.set_result(request)
            return
        task = self._loop.create_task(self._work(request))
        self._shared.tasks.add(task)
        task.add_done_callback(self._shared.tasks.discard)

    async def _work(self, request: _Request) -> None:
        """The connection's requests, one after another in one task: a task per request (its creation, asyncio's
        registry of tasks, its done callback) was ~9% of the loop's samples in a profile at concurrency 32."""
        while True:
            keep_alive = await self._answer(request)
            self._in_flight = False
            if self._closed:
                return
            if not keep_alive or self._shared.stopping or (self._upgraded and not self._waiting):
                self._close()
                return
            self._wake = wake = self._loop.create_future()
            self._next()  # the next request may be here already (pipelined): then the await returns at once
            try:
                request = await wake
            except asyncio.CancelledError:  # the connection closed while idle
                return

    async def _answer(self, request: _Request) -> bool:
        """Whether the connection may carry another request after this one's answer."""
        exchange = _Exchange(self, request)
        try:
            await self._shared.app(exchange.scope(), exchange.receive, exchange.send)
        except Exception:
            logger.exception("the app failed on %s %s", request.method, request.path[:200])
            if not exchange.started:
                exchange.answer(_raw_response(500, "INTERNAL_ERROR", "the server failed to answer"), True)
        if not exchange.finished:  # the app returned without finishing its answer: the stream is broken
            self._close()
        return request.keep_alive and exchange.finished and not exchange.close

    def _next(self) -> None:
        if self._in_flight or self._closed or self._write_paused:
            return
        if self._waiting:
            request = self._waiting.popleft()
            if not self._waiting:
                self._resume_reading()
            self._start(request)
        elif self._continue:  # the request being received is next, and its client waits for this
            self._continue = False
            self._write(_CONTINUE)
        elif self.deadline is None:  # not while the next request is already arriving (its deadline stands)
            self.deadline, self._part = self._loop.time() + self._limits.keep_alive, "idle"

    def expired(self) -> None:
        """Called by the sweep once :attr:`deadline` has passed."""
        self.deadline = None
        if self._closed:
            return
        if self._part != "idle" and not self._in_flight:  # idle: closed without an answer, as uvicorn does
            seconds = self._limits.header_timeout if self._part == "headers" else self._limits.body_timeout
            self._write(_raw_response(408, "REQUEST_TIMEOUT", f"request {self._part} not received within "
                                      f"{seconds:g} s"))
        self._close()

    def shutdown(self) -> None:
        """The server is stopping: an idle connection closes now, a busy one after its answer."""
        if not self._in_flight:
            self._close()

    def _write(self, data: bytes) -> None:
        if not self._closed and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.deadline = None
            if self._wake is not None:
                self._wake.cancel()
            if self._transport is not None:
                self._transport.close()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()


class _Exchange:
    """One request's ASGI side: its scope, ``receive`` (the whole body, once) and ``send`` (the answer, written
    in one piece when its last body message comes)."""

    __slots__ = ("_connection", "_head", "_received", "_request", "close", "finished", "started")

    def __init__(self, connection: HttpConnection, request: _Request) -> None:
        self._connection = connection
        self._request = request
        self._received = False
        self._head = b""
        self.started = False
        self.finished = False
        self.close = False  # the answer says "connection: close"

    def scope(self) -> dict[str, Any]:
        r = self._request
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": r.http_version, "method": r.method,
                "scheme": "http", "path": r.path, "query_string": r.query_string, "headers": r.headers}

    async def receive(self) -> dict[str, Any]:
        if self._received:  # only a disconnect can follow the body
            await self._disconnected()
            return {"type": "http.disconnect"}
        self._received = True
        return {"type": "http.request", "body": self._request.body, "more_body": False}

    async def _disconnected(self) -> None:
        while not self._connection._closed:
            await asyncio.sleep(0.1)

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the answer was already started")
            self.started = True
            lines = [_status_line(message["status"])]
            for name, value in message.get("headers", ()):
                lines.append(name + b": " + value + b"\r\n")
            if not self._request.keep_alive or self._connection._shared.stopping:
                self.close = True
                lines.append(_CLOSE)
            lines.append(b"\r\n")
            self._head = b"".join(lines)
        elif kind == "http.response.body":
            if not self.started or self.finished:
                raise RuntimeError("a body message outside an answer")
            body = b"" if self._request.method == "HEAD" else message.get("body", b"")
            if message.get("more_body", False):  # streamed: the head goes with the first piece
                self._connection._write(self._head + body)
                self._head = b""
            else:
                self.answer(self._head + body, self.close)

    def answer(self, data: bytes, close: bool) -> None:
        self.started = self.finished = True
        self.close = self.close or close
        self._connection._write(data)


class HttpServer:
    """The app served on ``settings.host:settings.port`` (or given sockets): its lifespan, the listening
    sockets and the graceful stop. ``run()`` in the main thread (signals); ``serve()`` anywhere, stopped by
    setting :attr:`should_exit`."""

    def __init__(self, app: App, settings: Settings, *, keep_alive: float = KEEP_ALIVE_SECONDS,
                 graceful_seconds: float | None = None) -> None:
        self.app = app
        self.settings = settings
        self.limits = Limits.of(settings, keep_alive)
        self.graceful_seconds = settings.graceful_shutdown_seconds if graceful_seconds is None else graceful_seconds
        self.started = False
        self.should_exit = False
        self._signals: list[int] = []

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status (3 if the app failed to start). A signal that stopped
        the server is raised again once it has stopped."""
        uvloop.run(self.serve(handle_signals=True))
        for sig in self._signals[:1]:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
        return 0 if self.started else 3

    async def serve(self, sockets: list[socket.socket] | None = None, *, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        lifespan = _Lifespan(self.app)
        if not await lifespan.startup():
            return
        shared = _Shared(self.app, self.limits, loop)
        if sockets:
            servers = [await loop.create_server(lambda: HttpConnection(shared), sock=s, backlog=2048)
                       for s in sockets]
        else:
            servers = [await loop.create_server(lambda: HttpConnection(shared), self.settings.host,
                                                self.settings.port, backlog=2048, reuse_address=True)]
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._exit, sig)
        self.started = True
        logger.info("serving on %s", ", ".join(str(s.getsockname()) for srv in servers for s in srv.sockets))
        while not self.should_exit:
            await asyncio.sleep(0.1)
        shared.stopping = True
        for server in servers:
            server.close()
        for connection in list(shared.connections):
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.graceful_seconds):
                while shared.tasks or shared.connections:
                    await asyncio.sleep(0.05)
        for connection in list(shared.connections):
            connection._close()
        for task in list(shared.tasks):
            task.cancel()
        await lifespan.shutdown()

    def _exit(self, sig: int) -> None:
        self._signals.append(sig)
        self.should_exit = True


class _Lifespan:
    """The app's ASGI lifespan: startup before the first connection, shutdown after the last answer. An app that
    returns without taking part (the bench's bare app) has none."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> bool:
        """Whether the server may serve (False: the app said its startup failed)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        answer = await self._exchange("lifespan.startup")
        if answer is not None and answer["type"] == "lifespan.startup.failed":
            logger.error("the app failed to start: %s", answer.get("message", ""))
            return False
        return True

    async def shutdown(self) -> None:
        if self._task is not None and not self._task.done():
            await self._exchange("lifespan.shutdown")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        try:
            await self._app(scope, self._to_app.get, self._from_app.put)
        except Exception:
            logger.exception("the app's lifespan failed")
        finally:
            await self._from_app.put({"type": "lifespan.none"})

    async def _exchange(self, kind: str) -> dict[str, Any] | None:
        await self._to_app.put({"type": kind})
        answer = await self._from_app.get()
        return None if answer["type"] == "lifespan.none" else answer
