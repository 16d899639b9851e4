"""Helpers for tests and benchmarks: run a :class:`~model_server.app.ModelServer` on a loopback port inside
this process (its HTTP server on its own thread and event loop), or as a ``python -m model_server``
subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvloop

from model_server.app import ModelServer
from model_server.transport import KEEP_ALIVE_SECONDS, HttpServer

LOOPBACK = "127.0.0.1"


def http_client(base_url: str, timeout: float = 10.0) -> httpx.Client:
    """An httpx client with TCP_NODELAY: httpx writes headers and body separately, and with Nagle's
    algorithm the body then waits for the server's delayed ACK (40 ms per request)."""
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base_url, timeout=timeout, transport=transport)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``check()`` until it is truthy; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def serve_in_thread(app: ModelServer, *, wait_ready: bool = True, timeout: float = 30.0,
                    keep_alive: float = KEEP_ALIVE_SECONDS) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields the base URL. Stops (gracefully, at most 5 s) on exit.
    ``keep_alive``: seconds an idle kept-alive connection stays open."""
    # An explicit IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says TCP, and without it every response waits out the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = HttpServer(app, app.settings, keep_alive=keep_alive, graceful_seconds=5)
    thread = threading.Thread(target=lambda: uvloop.run(server.serve(sockets=[sock])), daemon=True,
                              name="model-server")
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(lambda: server.started, timeout, "the server to start")
        if wait_ready:
            wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, timeout, "readiness")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@contextmanager
def serve_subprocess(env: Mapping[str, str], *, log_path: Path, timeout: float = 60.0) -> Iterator[
        tuple[str, subprocess.Popen[bytes]]]:
    """``python -m model_server`` with ``env`` (added to this process's) on a free loopback port; yields the
    base URL and the process once ready. Terminated on exit unless already dead."""
    port = free_port()
    full_env = {**os.environ, **env, "HOST": LOOPBACK, "PORT": str(port)}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "model_server"], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"model_server exited with {proc.returncode}; see {log_path}")
            return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200

        wait_until(ready, timeout, f"model_server on {url} to be ready")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class TokenIssuer:
    """A stand-in for the API server's service-account token issuer (unit tests and benchmarks only): an RSA key,
    its JWKS, and tokens for any subject and audience, signed as the API server signs them."""

    ISSUER = "https://kubernetes.default.svc.cluster.local"
    OPERATOR = "system:serviceaccount:modelwarden-system:modelwarden-operator"

    def __init__(self, kid: str = "test-key") -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        import json

        import jwt

        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, subject: str = OPERATOR, audience: str = "modelwarden.io/admin", *, lifetime: float = 600,
              issued: float | None = None, issuer: str = ISSUER, **header: str) -> str:
        import jwt

        now = time.time() if issued is None else issued
        claims = {"iss": issuer, "sub": subject, "aud": [audience], "iat": int(now), "nbf": int(now),
                  "exp": int(now + lifetime)}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, **header})

    def server_env(self, *, shadow_subject: str = "system:serviceaccount:default:modelwarden-model-server",
                   fault_injection: bool = False) -> dict[str, str]:
        env = {"SERVICE_ACCOUNT_JWKS": self.jwks(), "SERVICE_ACCOUNT_ISSUER": self.ISSUER,
               "ADMIN_SUBJECT": self.OPERATOR, "SHADOW_SUBJECT": shadow_subject}
        if fault_injection:
            env["FAULT_INJECTION"] = "true"
        return env

    def settings(self, **extra: object) -> dict[str, object]:
        """The same, as :class:`~model_server.config.Settings` fields."""
        return {"service_account_jwks": self.jwks(), "service_account_issuer": self.ISSUER,
                "admin_subject": self.OPERATOR,
                "shadow_subject": "system:serviceaccount:default:modelwarden-model-server", **extra}
