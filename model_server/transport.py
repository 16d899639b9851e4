"""How the server meets TCP: uvicorn (httptools, uvloop) with deadlines for slow clients and a connection cap.

uvicorn times out idle keep-alive connections but not a request in progress: a client that sends half its
headers, or a short body under a larger ``Content-Length``, holds a connection (and a request task) forever.
:class:`GuardedProtocol` adds two deadlines:

* **headers** - ``HTTP_HEADER_TIMEOUT_SECONDS`` from the connection's start (or the first byte of the next
  request on a kept-alive connection) until the headers are complete;
* **body** - ``HTTP_BODY_TIMEOUT_SECONDS`` from the end of the headers until the body is complete.

One timer per server checks the deadlines (a tenth of the shortest timeout apart), rather than one per request.
When one passes, the client gets ``408`` with a JSON body (if no answer was started) and the connection is
closed; a handler still waiting for that body sees a disconnect. The same sweep closes a kept-alive connection
idle for uvicorn's ``timeout_keep_alive`` (uvicorn itself arms and cancels a timer per request for it). Beyond
``MAX_CONNECTIONS`` open connections a new one is answered ``503`` and closed at once, and uvicorn's
``limit_concurrency`` answers ``503`` when that many requests are in flight.

Each answer leaves in one write: uvicorn writes the status line and headers, then the body, as two writes (two
syscalls, two TCP segments); :class:`_OneWrite` holds the first until the second.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_server.config import Settings


def _raw_response(status: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": code, "message": message})
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class _Sweep:
    """The one timer of a server's connections: every ``interval`` it closes those past their deadline. A timer
    per request (armed at its first byte, re-armed after its headers, cancelled at its end) cost 5-7 µs of the
    event loop's CPU per request at concurrency 32 (``bench/server/request_cost.py --transport``); setting a
    float costs nothing, and a deadline is kept to within ``interval`` (a tenth of the shorter timeout)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], interval: float) -> None:
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
            deadline = getattr(connection, "_deadline", None)
            if deadline is not None and deadline <= now:
                connection._expired()
        if self._connections:  # stops with the last connection; the next one starts it again
            self.start()


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what uvicorn writes before a response, when a client expects it


class _OneWrite:
    """The transport a connection's request cycles write to: an answer's first write (its status line and headers)
    is held and goes out with the next (its body) in one ``write``, or alone at the answer's end or before the
    connection is closed. uvicorn writes the two back to back (nothing is awaited between them when the socket
    takes writes), so nothing is delayed; each answer costs one syscall and one TCP segment instead of two."""

    __slots__ = ("_awaiting_headers", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._awaiting_headers = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif self._awaiting_headers and data != _CONTINUE:
            self._awaiting_headers = False
            self._held = data
            return
        self._transport.write(data)

    def end_of_answer(self) -> None:
        """The answer is complete: what is held goes out, and the next write starts the next answer."""
        self._awaiting_headers = True
        self._flush()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():  # (a closed uvloop transport raises on write)
                self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()


# One sweep per server (its ServerState), gone with it.
_sweeps: weakref.WeakKeyDictionary[Any, _Sweep] = weakref.WeakKeyDictionary()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a cap on open connections."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: float | None = None  # loop time at which the part being received (or idleness) is overdue
        self._part = "headers"  # what the deadline is for: "headers", "body" or "idle" (between requests)
        self._one_write: _OneWrite | None = None
        sweep = _sweeps.get(self.server_state)
        if sweep is None:
            shortest = min(self.header_timeout, self.body_timeout, self.timeout_keep_alive)
            interval = min(1.0, max(0.01, shortest / 10))
            sweep = _sweeps[self.server_state] = _Sweep(self.loop, self.connections, interval)
        self._sweep = sweep

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_raw_response(b"503 Service Unavailable", "TOO_MANY_CONNECTIONS",
                                          f"this server keeps at most {self.max_connections} connections open"))
            transport.close()
            return
        self._deadline, self._part = self.loop.time() + self.header_timeout, "headers"
        self._one_write = _OneWrite(transport)
        self._sweep.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if self._deadline is None or self._part == "idle":  # the next request on a kept-alive connection
            self._deadline, self._part = self.loop.time() + self.header_timeout, "headers"

    def on_headers_complete(self) -> None:
        HttpToolsProtocol.on_headers_complete(self)
        self._deadline, self._part = self.loop.time() + self.body_timeout, "body"
        if self.cycle is not None and self._one_write is not None:
            self.cycle.transport = self._one_write  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._deadline = None

    def on_response_complete(self) -> None:
        # uvicorn's, except that an idle kept-alive connection gets a deadline for the sweep instead of a timer
        # armed here and cancelled by the next request's first bytes (a timer-heap push and cancel per request).
        if self._one_write is not None:
            self._one_write.end_of_answer()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:  # not while the next request is already arriving (its deadline stands)
            self._deadline, self._part = self.loop.time() + self.timeout_keep_alive, "idle"

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        part = self._part
        if part == "idle":  # as uvicorn's keep-alive timeout: closed without an answer
            self.transport.close()
            return
        seconds = self.header_timeout if part == "headers" else self.body_timeout
        cycle = self.cycle
        # No answer of ours is on the wire (a pipelined request's may be): the 408 can go first.
        if cycle is None or (cycle.response_complete if part == "headers" else not cycle.response_started):
            self.transport.write(_raw_response(b"408 Request Timeout", "REQUEST_TIMEOUT",
                                               f"request {part} not received within {seconds:g} s"))
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the server (``python -m model_server`` and the test helpers)."""
    protocol = type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout": settings.http_header_timeout_seconds,
        "body_timeout": settings.http_body_timeout_seconds,
        "max_connections": settings.max_connections,
    })
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "loop": "uvloop", "http": protocol, "lifespan": "on",
        "access_log": False, "log_config": None, "server_header": False, "date_header": False,
        "timeout_graceful_shutdown": int(settings.graceful_shutdown_seconds), "backlog": 2048,
        # uvicorn counts the connection itself: +1 so that only requests in flight beyond the cap are refused.
        "limit_concurrency": settings.max_connections + 1, "ws": "none",
        # Nothing here reads the client's address or scheme; uvicorn's X-Forwarded-* middleware would parse the
        # peer's IP address on every request (0.6-0.8 µs) to fill them in.
        "proxy_headers": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
