"""The API server front of the real-node fault table (localenv/apiserver_front.py), in front of a stand-in HTTPS
server instead of a kube-apiserver: it forwards requests with the client's own credentials, relays a watch piece by
piece while it lasts, and while throttling answers what an overloaded API server answers."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localenv.apiserver_front import APIServerFront


class Upstream(BaseHTTPRequestHandler):
    """The stand-in API server: echoes what reached it; ``/watch`` streams two events, the second once released."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path.startswith("/watch"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in ("ADDED", "MODIFIED"):
                line = json.dumps({"type": event}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                self.release.wait(10)
            self.wfile.write(b"0\r\n\r\n")
            return
        self.echo(b"")

    def do_POST(self) -> None:
        self.echo(self.rfile.read(int(self.headers["Content-Length"])))

    def echo(self, body: bytes) -> None:
        answer = json.dumps({"path": self.path, "authorization": self.headers.get("Authorization"),
                             "host": self.headers.get("Host"), "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (its key beside it): the stand-in's, its CA, and the front's."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=stand-in", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert


@pytest.fixture
def front(cert: Path) -> Iterator[APIServerFront]:
    key = cert.with_name("key.pem")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    upstream.daemon_threads = True
    upstream.socket = tls.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    Upstream.release.clear()
    with APIServerFront(f"https://127.0.0.1:{upstream.server_address[1]}", cert, cert, key) as front:
        yield front
    Upstream.release.set()
    upstream.shutdown()
    upstream.server_close()


def connect(front: APIServerFront, ca: Path) -> http.client.HTTPSConnection:
    tls = ssl.create_default_context(cafile=str(ca))
    return http.client.HTTPSConnection("127.0.0.1", int(front.url.rsplit(":", 1)[1]), timeout=10, context=tls)


def get(conn: http.client.HTTPSConnection, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    conn.request("GET" if body is None else "POST", path, body=body, headers={"Authorization": "Bearer t0ken"})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read())


def test_forwards_with_the_clients_credentials_over_one_kept_connection(front: APIServerFront, cert: Path) -> None:
    conn = connect(front, cert)
    code, _, seen = get(conn, "/api/v1/namespaces?limit=1")
    assert code == 200
    assert seen["authorization"] == "Bearer t0ken" and seen["path"] == "/api/v1/namespaces?limit=1"
    assert seen["host"] == front.upstream_host
    code, _, seen = get(conn, "/apis/x/v1/things", body=b'{"kind": "Thing"}')
    assert code == 200 and seen["body"] == '{"kind": "Thing"}'
    assert front.forwarded == 2 and front.answered_429 == 0


def test_relays_a_watch_piece_by_piece_and_throttles_what_comes_after(front: APIServerFront, cert: Path) -> None:
    watch = connect(front, cert)
    watch.request("GET", "/watch?watch=true", headers={"Authorization": "Bearer t0ken"})
    stream = watch.getresponse()
    # The first event arrives while the stand-in still holds the second: it is relayed as it comes.
    assert json.loads(stream.readline())["type"] == "ADDED"

    front.throttle_for(30)
    code, headers, status = get(connect(front, cert), "/api/v1/pods")
    assert code == 429 and headers["Retry-After"] == "1"
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status", "Failure", "TooManyRequests", 429)
    assert front.answered_429 == 1

    # The watch admitted before the window keeps streaming through it.
    Upstream.release.set()
    assert [json.loads(line)["type"] for line in stream.read().splitlines() if line.strip()] == ["MODIFIED"]

    front.throttle_for(0)
    assert get(connect(front, cert), "/api/v1/pods")[0] == 200
    assert front.answered_429 == 1
