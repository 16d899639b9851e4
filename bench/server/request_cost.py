"""CPU time per request through model_server's ASGI app, without the network: ``/predict`` (JSON keyed by
name), OIP infer with a JSON tensor, and OIP infer with a binary tensor asking for binary outputs (what
tritonclient sends by default). One row of 28 features, the logistic demo model from skops, every production
feature on (prediction records to SQLite, drift window, metrics).

    .venv/bin/python bench/server/request_cost.py [--requests 5000] [--repeats 5]

Thread CPU time, not wall time: on a shared machine it moves far less with other people's load than a wrk run
does. It prints the median per request and each path's ratio to ``/predict`` in the same run; it says where the
server's own time goes, not what a client waits (``run.py`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

import peers

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import build_demo_artifact, train

N_FEATURES = 28
Case = tuple[str, bytes, list[tuple[bytes, bytes]]]


def cases(features: tuple[str, ...], row: list[float]) -> dict[str, Case]:
    json_type = [(b"content-type", b"application/json")]
    binary, headers = peers.binary_request("input-0", row, {"binary_data_output": True})
    return {
        "/predict (JSON by name)": (
            "/predict", json.dumps({"features": dict(zip(features, row, strict=True))}).encode(), json_type),
        "OIP infer, JSON tensor": ("/v2/models/bench/infer", json.dumps({"inputs": [
            {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}).encode(), json_type),
        "OIP infer, binary tensor and outputs": ("/v2/models/bench/infer", binary,
                                                 [(k.lower().encode(), v.encode()) for k, v in headers]),
    }


async def measure(requests: int, repeats: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="mw-cost-"))
    artifact = build_demo_artifact(work / "artifact", trained=train("logistic", N_FEATURES, 5000, seed=0))
    settings = Settings(model_name="bench", model_version="1.0.0", artifact_dir=artifact.directory,
                        artifact_sha256=artifact.sha256, model_format="skops",
                        feedback_dsn=str(work / "feedback.sqlite3"), warmup_rounds=1)
    app = ModelServer(settings)
    await app.startup()
    while app.load_status == "loading":
        await asyncio.sleep(0.05)
    if app.load_status != "loaded":
        raise RuntimeError(f"the model did not load: {app.load_error}")

    async def one(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "path": path, "method": "POST", "headers": headers, "query_string": b""},
                  receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"{path} answered {sent[0]['status']}: {sent[1]['body'][:300]!r}")

    results: dict[str, list[float]] = {}
    try:
        todo = cases(artifact.features, [float(v) for v in artifact.sample[1]])
        for case in todo.values():
            for _ in range(requests // 5):
                await one(*case)
        for _ in range(repeats):
            for label, case in todo.items():
                started = time.thread_time()
                for _ in range(requests):
                    await one(*case)
                results.setdefault(label, []).append((time.thread_time() - started) / requests * 1e6)
    finally:
        await app.shutdown()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per path per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = uvloop.run(measure(args.requests, args.repeats))
    baseline = statistics.median(next(iter(results.values())))
    print(f"\n{args.requests} requests per path per repeat, median of {args.repeats} repeats (thread CPU time)\n")
    print("| path | µs CPU per request | min-max | ratio to /predict |")
    print("|---|---:|---:|---:|")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"| {label} | {median:.1f} | {min(values):.1f}-{max(values):.1f} | {median / baseline:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
