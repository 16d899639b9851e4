"""Benchmark model_server against the in-process floor, on loopback, with wrk as the load generator.

    .venv/bin/python bench/server/run.py [--duration 10] [--models logistic,gbm] [--formats skops,onnx]

Models: LogisticRegression and GradientBoostingClassifier (50 trees, depth 3) on 28 generated features.
For each, the floor is an in-process call on one row: scikit-learn's public ``predict_proba`` and the
server's own scorer (its verified fast path for skops, onnxruntime for ONNX). The server runs as
``python -m model_server`` (one process, as in a pod) and is driven by wrk at concurrency 1 and 32 with a
single-row ``POST /predict`` body keyed by feature name (in shuffled order, so reordering is exercised).
With two or more cores the server and wrk are pinned to different cores.

Peers (MLServer with mlserver-sklearn, KServe's sklearn server) are not measured yet: they need their own
virtualenv (MLServer 1.7 pins uvloop<0.22).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from model_server.config import Settings  # noqa: E402
from model_server.demo_artifact import Kind, build_demo_artifact, train  # noqa: E402
from model_server.loader import load_artifact  # noqa: E402
from model_server.testing import free_port, serve_subprocess, wait_until  # noqa: E402
from modelwarden.artifacts import ModelFormat  # noqa: E402

N_FEATURES = 28


@dataclass
class Result:
    model: str
    target: str
    concurrency: int
    rps: float
    p50_us: float
    p99_us: float
    errors: int = 0


def in_process(model: str, target: str, call: Callable[[np.ndarray], object], x: np.ndarray,
               seconds: float) -> Result:
    for _ in range(200):
        call(x)
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter_ns()
        call(x)
        samples.append(time.perf_counter_ns() - t)
    samples.sort()
    mean = statistics.fmean(samples)
    return Result(model, target, 1, 1e9 / mean, samples[len(samples) // 2] / 1000,
                  samples[int(len(samples) * 0.99)] / 1000)


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        raise RuntimeError(f"no {pct}% latency in wrk output:\n{text}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, script: Path, concurrency: int, seconds: float, cpu: str | None) -> tuple[float, float, float, int]:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), f"{url}/predict"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, _latency(out, "50"), _latency(out, "99"), int(errors.group(1)) if errors else 0


def _script(work: Path, body: str) -> Path:
    script = work / "predict.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body)}\n")
    return script


def bare_transport(work: Path, seconds: float, server_cpu: str | None, load_cpu: str | None) -> list[Result]:
    """uvicorn answering a fixed body: what any Python ASGI server on this machine cannot beat."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "bare_asgi:app",
           "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--lifespan", "off", "--log-level", "warning"]
    if server_cpu is not None:
        cmd = ["taskset", "-c", server_cpu, *cmd]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/").status_code == 200, 30, "the bare ASGI server")
        script = _script(work, json.dumps({"features": {f"feature_{i:02d}": 0.5 for i in range(N_FEATURES)}}))
        wrk(url, script, 32, 2, load_cpu)
        out = []
        for concurrency in (1, 32):
            rps, p50, p99, errors = wrk(url, script, concurrency, seconds, load_cpu)
            out.append(Result("-", "bare uvicorn ASGI app (transport floor)", concurrency, rps, p50, p99, errors))
        return out
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--models", default="logistic,gbm")
    parser.add_argument("--formats", default="skops,onnx")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu, load_cpu = ("1", "0") if pin else (None, None)
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    try:
        results.extend(bare_transport(work, args.duration, server_cpu, load_cpu))
        for kind in args.models.split(","):
            trained = train(cast(Kind, kind), N_FEATURES, 5000, seed=0)
            estimator, sample = trained
            x = sample[:1]
            results.append(in_process(kind, "in-process sklearn predict_proba", estimator.predict_proba,
                                      x, min(args.duration, 5)))
            for fmt in args.formats.split(","):
                artifact = build_demo_artifact(work / f"{kind}-{fmt}", kind=cast(Kind, kind),
                                               fmt=cast(ModelFormat, fmt), trained=trained)
                env = {**artifact.env("bench", "1.0.0"), "FEEDBACK_DSN": str(work / f"{kind}-{fmt}.sqlite3"),
                       "LOG_LEVEL": "WARNING"}
                loaded = load_artifact(Settings.from_env(env))
                label = f"{fmt}: {loaded.fast_path or loaded.platform}"
                results.append(in_process(kind, f"in-process model_server scorer ({label})", loaded.score, x,
                                          min(args.duration, 5)))
                features = list(artifact.features)
                random.Random(0).shuffle(features)
                body = json.dumps({"features": {f: float(sample[1, artifact.features.index(f)]) for f in features}})
                script = _script(work, body)
                with serve_subprocess(env, log_path=work / "server.log") as (url, proc):
                    if pin:
                        subprocess.run(["taskset", "-a", "-p", "-c", str(server_cpu), str(proc.pid)], check=True,
                                       capture_output=True)
                    wrk(url, script, 32, 3, load_cpu)  # warm-up
                    for concurrency in (1, 32):
                        rps, p50, p99, errors = wrk(url, script, concurrency, args.duration, load_cpu)
                        results.append(Result(kind, f"model_server ({label})", concurrency, rps, p50, p99, errors))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPUs; pinned: {pin}; {args.duration:g}s per HTTP measurement\n")
    print("| model | target | concurrency | req/s | p50 (µs) | p99 (µs) | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.model} | {r.target} | {r.concurrency} | {r.rps:,.0f} | {r.p50_us:,.0f} | {r.p99_us:,.0f} "
              f"| {r.errors} |")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
