"""Benchmark: an admin call's latency with the operator's ServiceAccount token (RS256 JWT verified offline, issue
27) against the shared bearer token it replaced (one ``hmac.compare_digest``).

    .venv/bin/python -m bench.admin_auth_latency [--calls 2000]

One server process (loopback, in this process' own thread) serves ``POST /admin/flush`` twice: behind the
new check (``model_server/auth.py``, a token signed like the API server signs TokenRequest tokens, 2048-bit RSA)
and behind the old one, re-created here exactly as ``Admin.authenticated`` did it before (a bearer token compared
with ``hmac.compare_digest``). Both wrap the same handler; calls alternate in blocks of 100 on one keep-alive
connection, so both see the same machine load. Also the verification alone (``TokenVerifier.verify``, µs).
The operator's own cost is not in the per-call number: it asks TokenRequest once per ~6.7 minutes and caches.
"""

from __future__ import annotations

import argparse
import hmac
import statistics
import tempfile
import time
from pathlib import Path

from model_server.admin import Admin
from model_server.app import ModelServer
from model_server.auth import ADMIN_AUDIENCE, TokenVerifier
from model_server.config import Settings
from model_server.demo_artifact import build_demo_artifact, train
from model_server.http import Handler, HttpError, Params, Receive, Response, Scope
from model_server.testing import TokenIssuer, http_client, serve_in_thread

SHARED_TOKEN = "0123456789abcdef" * 4
BLOCK = 100


def shared_token_check(handler: Handler) -> Handler:
    """The check this project used before issue 27 (model_server/admin.py at 1222ba2)."""
    async def check(scope: Scope, receive: Receive, params: Params) -> Response:
        offered = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                offered = value
        scheme, _, credential = offered.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), SHARED_TOKEN.encode()):
            raise HttpError(401, "UNAUTHORIZED")
        return await handler(scope, receive, params)

    return check


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per proof")
    args = parser.parse_args()

    issuer = TokenIssuer()
    token = issuer.token(lifetime=3600)
    verifier = TokenVerifier.from_jwks(issuer.jwks(), TokenIssuer.ISSUER, ADMIN_AUDIENCE, TokenIssuer.OPERATOR)
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        verifier.claims(token)
    claims_us = (time.perf_counter() - start) / runs * 1e6
    start = time.perf_counter()
    for _ in range(runs):
        verifier.verify(token)
    verify_us = (time.perf_counter() - start) / runs * 1e6
    # Worst case: a token the server has not seen (the first call after the operator refreshed its token).
    fresh = [issuer.token(lifetime=3600, issued=time.time() - i) for i in range(args.calls + BLOCK)]

    with tempfile.TemporaryDirectory() as tmp:
        art = build_demo_artifact(Path(tmp) / "artifact", trained=train("logistic", 6, 300, seed=1))
        settings = Settings(model_name="m", model_version="v1", artifact_dir=art.directory, artifact_sha256=art.sha256,
                            model_format="skops", feedback_dsn=str(Path(tmp) / "fb.sqlite3"), warmup_rounds=1,
                            service_account_jwks=issuer.jwks(), service_account_issuer=TokenIssuer.ISSUER,
                            admin_subject=TokenIssuer.OPERATOR, log_level="WARNING")
        app = ModelServer(settings)
        old = Admin(None, app, app.governance, app.log, settings.max_body_bytes)
        app.router.add("/bench/shared-token/flush", "POST", shared_token_check(old.flush))
        new, first, shared = ("ServiceAccount token (RS256, offline), the operator's cached token",
                              "ServiceAccount token, a token the server has not seen yet (RSA verify)",
                              "shared token (HMAC compare), before issue 27")
        times: dict[str, list[float]] = {new: [], first: [], shared: []}
        paths = {new: ("/admin/flush", token), first: ("/admin/flush", ""),
                 shared: ("/bench/shared-token/flush", SHARED_TOKEN)}
        with serve_in_thread(app) as url, http_client(url) as http:
            for path, credential in paths.values():  # warm every path
                for _ in range(20):
                    warm = http.post(path, headers={"Authorization": f"Bearer {credential or token}"})
                    assert warm.status_code == 200
            while min(len(v) for v in times.values()) < args.calls:
                for name, (path, credential) in paths.items():
                    for _ in range(BLOCK):
                        headers = {"Authorization": f"Bearer {credential or fresh.pop()}"}
                        t0 = time.perf_counter()
                        answer = http.post(path, headers=headers)
                        times[name].append(time.perf_counter() - t0)
                        assert answer.status_code == 200, answer.text

    print(f"TokenVerifier alone: {claims_us:.1f} µs to verify a token's signature and claims, {verify_us:.1f} µs for "
          f"a token verified before (mean of {runs})")
    print("| proof | calls | p50 | p99 | mean |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"| {name} | {len(ms)} | {percentile(ms, 0.5):.2f} ms | {percentile(ms, 0.99):.2f} ms | "
              f"{statistics.fmean(ms):.2f} ms |")


if __name__ == "__main__":
    main()
