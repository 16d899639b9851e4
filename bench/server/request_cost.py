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

import numpy as np
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


# Each stage is taken out in turn, cumulatively, and what the requests cost less is that stage's share.
STAGES = ("metrics", "record pipeline", "drift", "scoring")
CONCURRENCY = (1, 32)


def strip(app: ModelServer, stages: tuple[str, ...]) -> None:
    """``app`` without ``stages`` (bench only; the empty tuple restores everything): what is left is the rest."""
    batcher, timer, dataplane = app.dataplane.batcher, app.v1._timer, app.dataplane
    assert batcher is not None and app.model is not None and app.dataplane.drift is not None
    for obj, name in ((timer, "timed"), (dataplane, "_record")):
        obj.__dict__.pop(name, None)  # the class's method again
    batcher._observe, batcher._score = app.dataplane.drift.observe, app.model.score

    async def untimed(work: Any) -> Any:
        return await work()

    if "metrics" in stages:  # outcome counter and latency histogram (one InferenceTimer serves every protocol)
        timer.timed = untimed  # type: ignore[method-assign]
    if "record pipeline" in stages:  # the record built, encoded, buffered (loop) and written (store thread)
        dataplane._record = lambda *args: None  # type: ignore[method-assign]
    if "drift" in stages:  # the drift window's observation of each scored batch
        batcher._observe = None
    if "scoring" in stages:  # the model's arithmetic (the batcher's future and hand-over stay)
        batcher._score = lambda x: np.full(len(x), 0.5)


async def measure(requests: int, repeats: int) -> tuple[dict[tuple[str, int, str], list[tuple[float, float]]], float]:
    """Per (path, concurrency, stage removed so far): (loop thread, other threads) CPU µs per request, per repeat;
    and the CPU time of one drift computation (µs), which runs every DRIFT_INTERVAL_SECONDS off the loop."""
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

    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    try:
        todo = cases(artifact.features, [float(v) for v in artifact.sample[1]])
        for case in todo.values():
            for _ in range(requests // 5):
                await one(*case)
        drift = app.dataplane.drift
        assert drift is not None
        window = drift.snapshot()
        drift_us = 0.0
        if window is not None:
            t = time.thread_time()
            drift.compute(window)
            drift_us = (time.thread_time() - t) * 1e6
        for _ in range(repeats):  # every variant in each repeat, so they share the machine's moods
            for k, stage in enumerate(("-", *STAGES)):
                strip(app, STAGES[:k])
                for label, case in todo.items():
                    for c in CONCURRENCY:
                        await app.flush()  # start each measurement with nothing pending
                        thread, process = time.thread_time(), time.process_time()
                        for _ in range(requests // c):
                            if c == 1:
                                await one(*case)
                            else:
                                await asyncio.gather(*(one(*case) for _ in range(c)))
                        await app.flush()  # what these requests left for the store thread, written
                        loop = time.thread_time() - thread
                        other = time.process_time() - process - loop
                        n = requests // c * c
                        results.setdefault((label, c, stage), []).append((loop / n * 1e6, other / n * 1e6))
        strip(app, ())
    finally:
        await app.shutdown()
    return results, drift_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000, help="requests per path, concurrency and stage, "
                        "per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results, drift_us = uvloop.run(measure(args.requests, args.repeats))

    def loop_us(label: str, c: int, stage: str) -> float:
        return statistics.median(v[0] for v in results[(label, c, stage)])

    def other_us(label: str, c: int, stage: str) -> float:
        return statistics.median(v[1] for v in results[(label, c, stage)])

    print(f"\n{args.requests} requests per path, concurrency and stage per repeat, median of {args.repeats} repeats "
          "(CPU time; 'loop' = the event loop's thread, 'off-path' = every other thread: the store thread writing "
          "records). Each stage is taken out in turn, cumulatively; its share is what the requests cost less "
          "without it. Transport (uvicorn, httptools, the sockets) is not in this process: run.py's CPU column "
          "for the bare uvicorn floor is it.\n")
    print("| path | c | total in-app CPU µs/req | metrics | record pipeline (loop + store thread) | drift window "
          "| scoring | parse, validation, answer, ASGI glue |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    previous = "-"
    for label in dict.fromkeys(k[0] for k in results):
        for c in CONCURRENCY:
            total = loop_us(label, c, "-") + other_us(label, c, "-")
            shares = []
            previous = "-"
            for stage in STAGES:
                loop_part = loop_us(label, c, previous) - loop_us(label, c, stage)
                off_part = other_us(label, c, previous) - other_us(label, c, stage)
                shares.append(f"{loop_part:.1f} + {off_part:.1f}" if stage == "record pipeline"
                              else f"{loop_part + off_part:.1f}")
                previous = stage
            rest = loop_us(label, c, previous) + other_us(label, c, previous)
            print(f"| {label} | {c} | {total:.1f} | {' | '.join(shares)} | {rest:.1f} |")
    print(f"\nOne drift computation (PSI of the window, every DRIFT_INTERVAL_SECONDS on its own thread): "
          f"{drift_us:,.0f} µs CPU (at 1,000 requests/s and the 15 s default: {drift_us / 15000:.2f} µs per request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
