"""How answers meet TCP (model_server.transport): one write per answer, the 100-continue and HEAD cases that a
held write must not break, pipelined requests, and idle kept-alive connections closed by the sweep."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import LOOPBACK, serve_in_thread
from model_server.transport import _CONTINUE, _OneWrite


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def one_write() -> tuple[_OneWrite, Recorder]:
    recorder = Recorder()
    return _OneWrite(recorder), recorder  # type: ignore[arg-type]


def test_an_answer_leaves_in_one_write() -> None:
    transport, recorder = one_write()
    for n in range(3):  # one answer after another on a kept-alive connection
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert recorder.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"] * n
        transport.write(b"{}")
        transport.end_of_answer()
    assert len(recorder.writes) == 3


def test_100_continue_is_not_held() -> None:
    transport, recorder = one_write()
    transport.write(_CONTINUE)
    assert recorder.writes == [_CONTINUE]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert recorder.writes == [_CONTINUE, b"HTTP/1.1 200 OK\r\n\r\nbody"]


def test_headers_without_a_body_leave_at_the_answers_end_or_before_closing() -> None:
    transport, recorder = one_write()
    transport.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")  # a HEAD answer: uvicorn writes no body
    transport.end_of_answer()
    assert recorder.writes == [b"HTTP/1.1 405 Method Not Allowed\r\n\r\n"]
    transport.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")  # the app failed after starting its answer
    transport.close()
    assert recorder.writes[1:] == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and recorder.closed


# ---------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("t")
    artifact = build_demo_artifact(tmp / "a", trained=train("logistic", 4, 200, seed=3))
    settings = Settings(model_name="m", model_version="1.0.0", artifact_dir=artifact.directory,
                        artifact_sha256=artifact.sha256, model_format="skops",
                        feedback_dsn=str(tmp / "feedback.sqlite3"), warmup_rounds=1)
    features = {f: 0.5 for f in artifact.features}
    with serve_in_thread(ModelServer(settings), timeout_keep_alive=1) as url:
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
