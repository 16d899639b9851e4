"""How answers meet TCP (model_server.transport): one write per answer, 100-continue, HEAD, HTTP/1.0, malformed
requests, bodies beyond the limit, pipelined requests and a client that reads no answers (against a connection in
memory); then the same through a real server's sockets, and idle kept-alive connections closed by the sweep."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import LOOPBACK, serve_in_thread
from model_server.transport import _CONTINUE, HttpConnection, Limits, _Shared


class Recorder:
    """The transport a connection writes to, in memory."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


Received = list[tuple[str, bytes]]


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())
    return run


def echo_app(received: Received, fail_on: str = "/fail") -> Any:
    """An ASGI app that records each request's path and body and answers the body's length."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        received.append((scope["path"], body))
        if scope["path"] == fail_on:
            raise RuntimeError("the app failed")
        answer = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
    return app


def connection(app: Any, max_body_bytes: int = 1024) -> tuple[HttpConnection, Recorder]:
    loop = asyncio.get_running_loop()
    shared = _Shared(app, Limits(10.0, 10.0, 5.0, 8, max_body_bytes), loop)
    conn, recorder = HttpConnection(shared), Recorder()
    conn.connection_made(recorder)  # type: ignore[arg-type]
    return conn, recorder


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() \
        + b"\r\n" + extra + b"\r\n" + body


@in_loop
async def test_each_answer_leaves_in_one_write() -> None:
    received: Received = []
    conn, recorder = connection(echo_app(received))
    for n in range(1, 4):  # one answer after another on a kept-alive connection
        conn.data_received(post("/p", b"abc"))
        await settle()
        assert len(recorder.writes) == n and recorder.writes[-1] == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n3"
    assert not recorder.closed


@in_loop
async def test_100_continue_comes_when_the_requests_turn_comes() -> None:
    received: Received = []
    conn, recorder = connection(echo_app(received))
    conn.data_received(post("/p", b"", b"Expect: 100-continue\r\n")[:-2] + b"\r\n")
    await settle()
    assert recorder.writes[0] == _CONTINUE
    # A second request expecting 100 Continue behind one in flight gets it only after the first's answer.
    conn.data_received(post("/slow", b"x"))
    conn.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert recorder.writes[2:] == []
    await settle()
    assert recorder.writes[2].endswith(b"\r\n\r\n1") and recorder.writes[3] == _CONTINUE
    conn.data_received(b"y")
    await settle()
    assert recorder.writes[4].endswith(b"\r\n\r\n1") and len(received) == 3


@in_loop
async def test_a_head_request_gets_the_head_only() -> None:
    conn, recorder = connection(echo_app([]))
    conn.data_received(b"HEAD /p HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"]


@in_loop
async def test_http_1_0_and_connection_close_are_answered_then_closed() -> None:
    for request in (b"GET /p HTTP/1.0\r\n\r\n", b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        conn, recorder = connection(echo_app([]))
        conn.data_received(request)
        await settle()
        assert b"connection: close\r\n" in recorder.writes[0] and recorder.closed


@in_loop
async def test_a_malformed_request_gets_400_and_the_connection_closed() -> None:
    received: Received = []
    conn, recorder = connection(echo_app(received))
    conn.data_received(b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"1\r\nx\r\n0\r\n\r\n")
    await settle()
    assert recorder.writes[0].startswith(b"HTTP/1.1 400 ") and b"MALFORMED_REQUEST" in recorder.writes[0]
    assert recorder.closed and received == [], "a request that could be smuggled never reaches the app"


@in_loop
async def test_a_request_head_beyond_64_kib_gets_431_and_the_connection_closed() -> None:
    received: Received = []
    conn, recorder = connection(echo_app(received))
    conn.data_received(b"GET /p HTTP/1.1\r\nHost: x\r\n")
    for _ in range(100):  # headers without end, 1 KiB at a time
        if recorder.closed:
            break
        conn.data_received(b"x-filler: " + b"a" * 1024 + b"\r\n")
    await settle()
    assert recorder.writes[0].startswith(b"HTTP/1.1 431 ") and b"HEADERS_TOO_LARGE" in recorder.writes[0]
    assert recorder.closed and received == []


@in_loop
async def test_a_body_beyond_the_limit_is_not_kept() -> None:
    received: Received = []
    conn, _ = connection(echo_app(received), max_body_bytes=1024)
    conn.data_received(post("/p", b"x" * 5000))
    await settle()
    assert [len(body) for _, body in received] == [1025], "the app sees one byte too many, and refuses (413)"


@in_loop
async def test_pipelined_requests_wait_while_the_client_reads_no_answers() -> None:
    received: Received = []
    conn, recorder = connection(echo_app(received))
    conn.pause_writing()  # the client's socket buffer is full
    conn.data_received(post("/a", b"1") + post("/b", b"22"))
    await settle()
    assert received == [] and not recorder.reading, "nothing new is answered, nothing more read"
    conn.resume_writing()
    await settle()
    assert [path for path, _ in received] == ["/a", "/b"] and recorder.reading
    assert [w.rsplit(b"\r\n", 1)[1] for w in recorder.writes] == [b"1", b"2"]


@in_loop
async def test_an_app_that_fails_gets_500_and_the_connection_closed() -> None:
    conn, recorder = connection(echo_app([]))
    conn.data_received(post("/fail", b""))
    await settle()
    assert recorder.writes[0].startswith(b"HTTP/1.1 500 ") and recorder.closed


# ---------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("t")
    artifact = build_demo_artifact(tmp / "a", trained=train("logistic", 4, 200, seed=3))
    settings = Settings(model_name="m", model_version="1.0.0", artifact_dir=artifact.directory,
                        artifact_sha256=artifact.sha256, model_format="skops",
                        feedback_dsn=str(tmp / "feedback.sqlite3"), warmup_rounds=1)
    features = {f: 0.5 for f in artifact.features}
    with serve_in_thread(ModelServer(settings), keep_alive=1) as url:
        yield url + "|" + json.dumps({"features": features})


def _connect(served: str) -> tuple[socket.socket, bytes]:
    url, body = served.split("|", 1)
    sock = socket.create_connection((LOOPBACK, int(url.rsplit(":", 1)[1])))
    sock.settimeout(10)
    return sock, body.encode()


def _answer(sock: socket.socket, pending: bytearray | None = None) -> tuple[bytes, bytes]:
    """One answer: its head and its body (by its content-length). ``pending``: bytes already received, which
    may hold the next answers of pipelined requests (what is left of them stays there)."""
    data = pending if pending is not None else bytearray()
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, rest = bytes(data).split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        chunk = _recv(sock)
        rest += chunk
    data[:] = rest[length:]
    if pending is None:
        assert not data, "nothing beyond the answer"
    return head, rest[:length]


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the server closed the connection"
    return chunk


def _predict(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def test_answers_on_a_kept_alive_connection(served: str) -> None:
    sock, body = _connect(served)
    with sock:
        for _ in range(5):
            sock.sendall(_predict(body))
            head, answer = _answer(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and b"x-model-version: 1.0.0" in head
            assert 0 <= json.loads(answer)["prediction"] <= 1


def test_pipelined_requests_are_answered_in_order(served: str) -> None:
    sock, body = _connect(served)
    with sock:
        sock.sendall(_predict(body) + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + _predict(body))
        pending = bytearray()
        statuses = [_answer(sock, pending)[0].split(b" ")[1] for _ in range(3)]
    assert statuses == [b"200", b"404", b"200"]


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent(served: str) -> None:
    sock, body = _connect(served)
    with sock:
        request = _predict(body, b"Expect: 100-continue\r\n")
        sock.sendall(request[:-len(body)])  # the headers only: the client waits for 100 Continue
        assert _recv(sock) == _CONTINUE
        sock.sendall(body)
        assert _answer(sock)[0].startswith(b"HTTP/1.1 200 ")


def test_a_head_request_gets_its_answer_head(served: str) -> None:
    sock, _ = _connect(served)
    with sock:
        sock.sendall(b"HEAD /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
    assert data.startswith(b"HTTP/1.1 405 ") and data.endswith(b"\r\n\r\n")


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(served: str) -> None:
    sock, body = _connect(served)
    with sock:
        sock.sendall(_predict(body))
        _answer(sock)
        time.sleep(0.5)  # within the 1 s keep-alive: still served
        sock.sendall(_predict(body))
        _answer(sock)
        started = time.monotonic()
        assert sock.recv(65536) == b"", "closed by the server"
        idle = time.monotonic() - started
    assert 0.9 <= idle <= 3.0, idle
