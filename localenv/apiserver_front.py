"""A throttling front for the real API server, on loopback: what a client sees when the API server is overloaded.

API Priority and Fairness cannot reject every request of one user (a priority level of zero seats still admits a
request whenever none of its own executes), so a fault table's operator process talks to the real kube-apiserver
through this front instead: its kubeconfig (:meth:`APIServerFront.kubeconfig`) names the front and carries the same
token, which the front passes through unchanged — the operator stays the same least-privilege user, authenticated
and authorized by the API server itself. Upstream is TLS verified with the cluster's CA; towards the client the front
presents the API server's own serving certificate (its SANs include 127.0.0.1), so the client verifies it with the
cluster's CA as it would the API server.

Every request is forwarded, watches included: a chunked response is relayed chunk by chunk as it arrives, for as long
as it lasts. For a window (:meth:`APIServerFront.throttle_for`) every new request is answered what API Priority and
Fairness answers a request it rejects: 429, ``Retry-After: 1`` and a ``Status`` with ``reason: TooManyRequests``;
the front counts them. Watches already streaming when the window opens keep streaming, as on the API server (a watch
is admitted once, when it starts); a watch re-established during the window is refused like any request. No protocol
upgrades (exec, attach, port-forward): the operator makes none.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from localenv.cluster import Cluster

# Not forwarded either way: they describe one connection (hop), not the request; Host and the body's framing are
# the front's to set on each side.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer",
                        "transfer-encoding", "upgrade", "expect", "host", "content-length"})
RETRY_AFTER_SECONDS = 1
CHUNK = 64 * 1024


def status_body(code: int, reason: str, message: str, **details: Any) -> bytes:
    """A metav1.Status, as the API server answers a request it refuses."""
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}
    if details:
        status["details"] = details
    return json.dumps(status).encode()


# What API Priority and Fairness answers a rejected request (apiserver/pkg/server/filters/priority-and-fairness.go).
TOO_MANY_REQUESTS = status_body(429, "TooManyRequests", "Too many requests, please try again later.",
                                retryAfterSeconds=RETRY_AFTER_SECONDS)


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    front: APIServerFront

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-stream, or a failed handshake: the client sees it; nothing to print.
        pass


class _Forwarder(BaseHTTPRequestHandler):
    """One client connection; its requests go upstream over one connection of its own, in order."""

    protocol_version = "HTTP/1.1"
    server: _FrontServer
    upstream: http.client.HTTPSConnection | None

    def setup(self) -> None:
        self.upstream = None
        self.request.settimeout(10)
        self.request.do_handshake()  # here, on this connection's thread, not on the accepting one
        self.request.settimeout(None)
        self.server.front._opened(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.front._closed(self.request)
            self._close_upstream()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def forward(self) -> None:
        body = self._request_body()
        front = self.server.front
        if front._refuse():
            self._answer(429, TOO_MANY_REQUESTS, {"Retry-After": str(RETRY_AFTER_SECONDS)})
            return
        try:
            response = self._send_upstream(body)
        except (OSError, http.client.HTTPException) as e:
            self._answer(502, status_body(502, "InternalError", f"the API server front: upstream: {e}"), {})
            self.close_connection = True
            return
        front._forwarded()
        try:
            self._relay(response)
        except (OSError, http.client.HTTPException):
            # Either side went away mid-response: the other cannot be answered in sync any more.
            self.close_connection = True
            self._close_upstream()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = forward

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, until the blank line
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _send_upstream(self, body: bytes | None) -> http.client.HTTPResponse:
        front = self.server.front
        fresh = self.upstream is None
        if self.upstream is None:
            self.upstream = front._connect()
        try:
            self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            self.upstream.putheader("Host", front.upstream_host)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.upstream.putheader(name, value)
            if body is not None:
                self.upstream.putheader("Content-Length", str(len(body)))
            self.upstream.endheaders(body)
            return self.upstream.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self._close_upstream()
            if fresh:
                raise
            # The API server closed a connection that had been idle: nothing was processed; once more, anew.
            return self._send_upstream(body)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        length = response.getheader("Content-Length")
        if self.command == "HEAD" or response.status in (204, 304) or response.status < 200:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            response.read()
        elif response.chunked:
            # A watch (or any streamed answer): each piece goes on as soon as it arrives.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while piece := response.read1(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            if length is None:  # delimited by the upstream closing: so is ours
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", length)
            self.end_headers()
            while piece := response.read(CHUNK):
                self.wfile.write(piece)
        if response.will_close:
            self._close_upstream()

    def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response_only(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None


class APIServerFront:
    """Forward ``https://127.0.0.1:<port>`` to the API server at ``upstream`` until closed; 429 while throttling."""

    def __init__(self, upstream: str, ca: Path, cert: Path, key: Path) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"not an https URL: {upstream}")
        self.upstream_host = parts.netloc
        self._upstream_address = (parts.hostname, parts.port or 443)
        self._upstream_tls = ssl.create_default_context(cafile=str(ca))
        self._lock = threading.Lock()
        self._refusing_until = 0.0
        self._connections: set[socket.socket] = set()
        self.answered_429 = 0
        self.forwarded = 0

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        self._server = _FrontServer(("127.0.0.1", 0), _Forwarder)
        self._server.front = self
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="apiserver-front", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, cluster: Cluster) -> APIServerFront:
        pki = cluster.state_dir / "pki"
        return cls(cluster.server, pki / "ca.crt", pki / "apiserver.crt", pki / "apiserver.key")

    def kubeconfig(self, source: Path, path: Path) -> Path:
        """``source`` (a kubeconfig: its user, its CA) naming the front instead of the API server, written to
        ``path``."""
        config = json.loads(source.read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = self.url
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def throttle_for(self, seconds: float) -> None:
        """Answer every new request 429 for the next ``seconds`` (0: from now on, forward again)."""
        with self._lock:
            self._refusing_until = time.monotonic() + seconds

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # The plain socket's shutdown (not SSLSocket's): its thread, blocked reading, sees the end and leaves.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def __enter__(self) -> APIServerFront:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- the handlers' ---

    def _refuse(self) -> bool:
        with self._lock:
            if time.monotonic() >= self._refusing_until:
                return False
            self.answered_429 += 1
            return True

    def _forwarded(self) -> None:
        with self._lock:
            self.forwarded += 1

    def _connect(self) -> http.client.HTTPSConnection:
        host, port = self._upstream_address
        return http.client.HTTPSConnection(host, port, context=self._upstream_tls)

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
