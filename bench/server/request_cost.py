"""CPU time per request through model_server, stage by stage: ``/predict`` (JSON keyed by name), OIP infer with
a JSON tensor, and OIP infer with a binary tensor asking for binary outputs (what tritonclient sends by default).
One row of 28 features, the logistic demo model from skops, every production feature on (prediction records to
SQLite, drift window, metrics).

    .venv/bin/python bench/server/request_cost.py [--requests 5000] [--repeats 5]
    .venv/bin/python bench/server/request_cost.py --transport [--path predict] [--concurrency 32] [--seconds 4]

In-process (the default): the ASGI app called directly, without the network, at concurrency 1 and 32.
``--transport``: the real server processes on the server's own transport (``model_server.transport``), driven
by wrk over loopback (server on core 1, wrk on core 0), layer by layer from the whole app down to a bare ASGI app
on uvicorn: metrics, records, drift, scoring, the endpoint, our ASGI entry, the app's process (the floor's bare
app answering in it), our transport against uvicorn's (negative: ours costs less), the floor. Each layer is what
a variant with it costs more than the variant without it.

Thread CPU time, not wall time: on a shared machine it moves far less with other people's load than a wrk run's
req/s does. It says where the server's own time goes, not what a client waits (``run.py`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
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
from model_server.http import Handler, Params, Receive, Response, Scope, Send, read_body

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
# Through the transport, one more: the endpoint's own work (parse, validation, the data plane's glue, the answer's
# encoding) replaced by the answer it gave first; what is left of the app is its ASGI entry and router.
TRANSPORT_STAGES = (*STAGES, "endpoint")
CONCURRENCY = (1, 32)


def strip(app: ModelServer, stages: tuple[str, ...]) -> None:
    """``app`` without ``stages`` (bench only; the empty tuple restores everything): what is left is the rest."""
    batcher, timer, dataplane = app.dataplane.batcher, app.v1._timer, app.dataplane
    assert batcher is not None and app.model is not None and app.dataplane.drift is not None
    for obj, name in ((timer, "timed"), (dataplane, "_record")):
        obj.__dict__.pop(name, None)  # the class's method again
    batcher._observe, batcher._score = app.dataplane.drift.observe, app.model.score
    app.router.add("/predict", "POST", app.v1.predict)
    app.router.add("/v2/models/{name}/infer", "POST", app.v2.infer)

    async def untimed(work: Any) -> Any:
        return await work

    if "metrics" in stages:  # outcome counter and latency histogram (one InferenceTimer serves every protocol)
        timer.timed = untimed  # type: ignore[method-assign]
    if "record pipeline" in stages:  # the record built, encoded, buffered (loop) and written (store thread)
        dataplane._record = lambda *args: None  # type: ignore[method-assign]
    if "drift" in stages:  # the drift window's observation of each scored batch
        batcher._observe = None
    if "scoring" in stages:  # the model's arithmetic (the batcher's future and hand-over stay)
        batcher._score = lambda x: np.full(len(x), 0.5)
    if "endpoint" in stages:  # the body is still read; the answer is the first one the endpoint gave
        app.router.add("/predict", "POST", first_answer(app.v1.predict, app.settings.max_body_bytes))
        app.router.add("/v2/models/{name}/infer", "POST", first_answer(app.v2.infer, app.settings.max_body_bytes))


def first_answer(handler: Handler, limit: int) -> Handler:
    """``handler`` answering once, then that answer again to every request (after reading its body)."""
    answered: list[Response] = []

    async def again(scope: Scope, receive: Receive, params: Params) -> Response:
        if not answered:
            answered.append(await handler(scope, receive, params))
        else:
            await read_body(scope, receive, limit)
        return answered[0]

    return again


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
    shutil.rmtree(work, ignore_errors=True)  # the SQLite store of a run, hundreds of MB (kept if the run failed)
    return results, drift_us


# ------------------------------------------------------------------ through the transport (--transport)

# The server processes of a --transport run: the bare floor app on uvicorn (httptools, uvloop), the same app on the
# server's own transport (model_server.transport), and model_server on it (whose stages are taken out in turn through
# a bench-only route).
SERVE_KINDS = ("floor", "guarded floor", "sized floor", "app")
STAGES_PATH = "/bench/stages"
ANSWER_PATH = "/bench/answer"  # the sized floor's answer, set per path
PATHS = {"predict": "/predict (JSON by name)", "oip-json": "OIP infer, JSON tensor",
         "oip-binary": "OIP infer, binary tensor and outputs"}


def serve(kind: str) -> int:
    """Run one server process of a --transport run (settings from the environment, as ``python -m
    model_server``)."""
    import bare_asgi
    import orjson
    import uvicorn

    from model_server.transport import HttpServer

    settings = Settings.from_env()

    def on_uvicorn(app: Any) -> None:
        uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                                      lifespan="off", access_log=False, log_config=None, backlog=2048)).run()

    if kind == "app":
        app = ModelServer(settings)

        bare_entry = False

        async def set_stages(scope: Scope, receive: Receive, params: Params) -> Response:
            nonlocal bare_entry
            stages = tuple(orjson.loads(await read_body(scope, receive, 1 << 16)))
            strip(app, tuple(s for s in stages if s != "ASGI entry"))
            bare_entry = "ASGI entry" in stages
            return Response(200, b"{}")

        async def batches(scope: Scope, receive: Receive, params: Params) -> Response:
            batcher = app.dataplane.batcher
            assert batcher is not None
            return Response(200, orjson.dumps([batcher.batches, batcher.rows]))

        app.router.add(STAGES_PATH, "POST", set_stages)
        app.router.add(STAGES_PATH, "GET", batches)  # scoring calls and rows scored so far
        bare = bare_asgi.app

        async def entry(scope: Scope, receive: Receive, send: Send) -> None:
            # "ASGI entry" taken out: the floor's bare app answers in the app's process (stages set through the app).
            if bare_entry and scope["type"] == "http" and scope["path"] != STAGES_PATH:
                await bare(scope, receive, send)
            else:
                await app(scope, receive, send)

        HttpServer(entry, settings).run()
    elif kind == "sized floor":
        # The floor's bare app on uvicorn's own protocol, answering the app's answer for the path measured (its
        # status line, headers and body): what the size of this path's request and answer costs the transport.
        answer: list[Any] = [[(b"content-type", b"application/json"), (b"content-length", b"2")], b"{}"]

        async def sized(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            if scope["path"] == ANSWER_PATH:
                doc = orjson.loads(await read_body(scope, receive, 1 << 20))
                answer[:] = [[(k.encode("latin-1"), v.encode("latin-1")) for k, v in doc["headers"]],
                             bytes.fromhex(doc["body"])]
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200, "headers": answer[0]})
            await send({"type": "http.response.body", "body": answer[1]})

        on_uvicorn(sized)
    elif kind == "floor":
        on_uvicorn(bare_asgi.app)
    else:
        HttpServer(bare_asgi.app, settings).run()
    return 0


def run_time_ns(pid: int) -> tuple[int, int, int]:
    """(main thread on-CPU, other threads on-CPU, all threads waiting runnable for a core) ns of ``pid`` so far
    (``/proc/<pid>/task/*/schedstat``: nanoseconds, where ``stat``'s ticks are 10 ms)."""
    main = other = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, runnable, _ = (int(v) for v in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        waited += runnable
        if task.name == str(pid):
            main += on_cpu
        else:
            other += on_cpu
    return main, other, waited


# (label, server kind, stages taken out): each row's layer is what it costs more than the row below it.
Variant = tuple[str, str, tuple[str, ...]]
CHAIN: tuple[Variant, ...] = (
    ("app", "app", ()),
    ("app - metrics", "app", STAGES[:1]),
    ("app - metrics, records", "app", STAGES[:2]),
    ("app - metrics, records, drift", "app", STAGES[:3]),
    ("app - metrics, records, drift, scoring", "app", STAGES),
    ("app - all of the endpoint", "app", TRANSPORT_STAGES),
    ("app - all of the endpoint, ASGI entry", "app", (*TRANSPORT_STAGES, "ASGI entry")),
    ("guarded floor", "guarded floor", ()),
    ("floor", "floor", ()),
)  # the layers: each is a variant minus the next
VARIANTS = (*CHAIN, ("sized floor", "sized floor", ()))
LAYERS = ("metrics (outcome counter, latency histogram)", "record pipeline (loop + store thread)",
          "drift window", "scoring", "endpoint: parse, validation, data plane glue, answer encoding",
          "our ASGI entry: router, errors, served-by headers (and the transport writing them)",
          "the app's process: the floor's bare app answering in it, against in the floor's own process",
          "our transport (model_server.transport) against uvicorn's",
          "floor: uvicorn, httptools, uvloop, sockets, a bare ASGI app")


Measured = dict[tuple[str, int, str], list[tuple[float, ...]]]  # (path, concurrency, variant) -> per repeat
BATCH_ROWS: dict[tuple[str, int], list[float]] = {}  # (path, concurrency) -> the app's rows per scoring call, per run


def transport(seconds: float, repeats: int, concurrencies: list[int], paths: list[str],
              perf: Path | None = None) -> tuple[Measured, dict[tuple[str, int, str], str]]:
    """Per (path, concurrency, variant) and repeat: (main thread, other threads, waited for a core) µs per request,
    and req/s; with ``perf``, a ``perf record`` profile of the app, the sized floor and the floor per path and
    concurrency (one more wrk run each), summarised as text."""
    import httpx
    import run

    from model_server.testing import free_port, wait_until

    work = Path(tempfile.mkdtemp(prefix="mw-cost-"))
    artifact = build_demo_artifact(work / "artifact", trained=train("logistic", N_FEATURES, 5000, seed=0))
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu, load_cpu = ("1", "0") if pin else (None, None)
    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    results: Measured = {}
    profiles: dict[tuple[str, int, str], str] = {}
    batch_rows = BATCH_ROWS
    try:
        for kind in SERVE_KINDS:
            port = free_port()
            env = {**os.environ, **artifact.env("bench", "1.0.0"), "FEEDBACK_DSN": str(work / "feedback.sqlite3"),
                   "HOST": "127.0.0.1", "PORT": str(port), "WARMUP_ROUNDS": "1"}
            argv = [sys.executable, __file__, "--serve", kind]
            with (work / "servers.log").open("ab") as log:
                proc = subprocess.Popen(["taskset", "-c", server_cpu, *argv] if server_cpu else argv, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
            servers[kind] = (f"http://127.0.0.1:{port}", proc)
        for kind, (url, proc) in servers.items():
            probe = url + ("/v2/health/ready" if kind == "app" else "/")

            def ready(proc: subprocess.Popen[bytes] = proc, probe: str = probe) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"a server exited with {proc.returncode}; see {work / 'servers.log'}")
                return httpx.get(probe).status_code == 200

            wait_until(ready, 60, f"the {kind} server")
        all_cases = cases(artifact.features, [float(v) for v in artifact.sample[1]])
        for path in paths:
            url_path, body, headers = all_cases[PATHS[path]]
            app_url = servers["app"][0]
            httpx.post(app_url + STAGES_PATH, json=[]).raise_for_status()
            answer = httpx.post(app_url + url_path, content=body, headers=[(k.decode(), v.decode()) for k, v in
                                                                             headers])
            answer.raise_for_status()
            httpx.post(servers["sized floor"][0] + ANSWER_PATH, json={
                "headers": [(k, v) for k, v in answer.headers.multi_items()], "body": answer.content.hex()},
            ).raise_for_status()
            script = run._script(work, run.Endpoint(url_path, body, None, tuple(
                (k.decode(), v.decode("latin-1")) for k, v in headers)))
            for c in concurrencies:
                for r in range(repeats):
                    for label, kind, stages in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
                        url, proc = servers[kind]
                        if kind == "app":
                            httpx.post(url + STAGES_PATH, json=list(stages)).raise_for_status()
                        run.wrk(url + url_path, script, c, 1, load_cpu)  # warm up this variant
                        scored = httpx.get(url + STAGES_PATH).json() if label == "app" else [0, 0]
                        before = run_time_ns(proc.pid)
                        rps, _, _, errors, requests = run.wrk(url + url_path, script, c, seconds, load_cpu)
                        after = run_time_ns(proc.pid)
                        if label == "app":  # rows per scoring call: do this path's requests share a batch?
                            calls, rows = (a - b for a, b in zip(httpx.get(url + STAGES_PATH).json(), scored,
                                                                  strict=True))
                            batch_rows.setdefault((path, c), []).append(rows / max(calls, 1))
                        if errors:
                            raise RuntimeError(f"{label}: {errors} answers other than 2xx")
                        results.setdefault((path, c, label), []).append(
                            (*((a - b) / 1000 / requests for a, b in zip(after, before, strict=True)), rps))
                if perf is not None:
                    for label, kind in (("app", "app"), ("sized floor", "sized floor"), ("floor", "floor")):
                        url, proc = servers[kind]
                        if kind == "app":
                            httpx.post(url + STAGES_PATH, json=[]).raise_for_status()
                        profiles[(path, c, label)] = profile(url + url_path, script, c, seconds, load_cpu, proc.pid,
                                                             perf / f"{path}-c{c}-{label.replace(' ', '-')}.data")
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait()
    shutil.rmtree(work, ignore_errors=True)  # the SQLite store and servers.log; kept, and named, if a server failed
    return results, profiles


PERF_HZ = 4999  # samples per second of CPU (cpu-clock: this machine's VM exposes no hardware counters)


def profile(url: str, script: Path, concurrency: int, seconds: float, load_cpu: str | None, pid: int,
            data: Path) -> str:
    """``perf record`` of process ``pid`` (all its threads) while wrk runs; its samples by shared object and by
    symbol, as µs of CPU per request."""
    import run

    data.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(["perf", "record", "-q", "-F", str(PERF_HZ), "-e", "cpu-clock", "-p", str(pid),
                                 "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        _, _, _, _, requests = run.wrk(url, script, concurrency, seconds, load_cpu)
    finally:
        recorder.send_signal(2)  # SIGINT: perf writes its file and exits
        recorder.wait()
    out = []
    for sort in ("pid,dso", "dso,sym"):  # perf's "pid" is the thread: the loop's is the process's own id
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                                 "-F", "sample," + sort, "--percent-limit", "0.5"],
                                capture_output=True, text=True).stdout
        for line in report.splitlines():
            fields = line.split(None, 1)
            if len(fields) == 2 and fields[0].isdigit():
                what = fields[1].strip()
                if sort.startswith("pid"):
                    thread, _, dso = what.partition(" ")
                    what = f"{'loop' if thread.split(':')[0] == str(pid) else 'other thread'}  {dso.strip()}"
                out.append(f"{int(fields[0]) / PERF_HZ / requests * 1e6:8.2f} µs/req  {what}")
        out.append("")
    return "\n".join(out)


def print_transport(results: Measured, profiles: dict[tuple[str, int, str], str], args: argparse.Namespace,
                    load: tuple[float, float]) -> None:
    print(f"\nwrk for {args.seconds:g} s per variant, median of {args.repeats} repeats; 1-minute load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after. CPU time per request of the server process (schedstat: "
          "loop = its main thread, + its other threads: the store thread). Each row is what the variant above it "
          "costs more than the one below it.")
    for path, c in dict.fromkeys((k[0], k[1]) for k in results):
        def median(label: str, field: int) -> float:
            return statistics.median(v[field] for v in results[(path, c, label)])  # noqa: B023

        print(f"\n{PATHS[path]} at concurrency {c}:\n")
        print("| layer | CPU µs/req (loop + other threads) | share of the app's |")
        print("|---|---:|---:|")
        labels = [v[0] for v in CHAIN]
        app_total = median("app", 0) + median("app", 1)
        for layer, label, below in zip(LAYERS, labels, [*labels[1:], None], strict=True):
            loop = median(label, 0) - (median(below, 0) if below else 0.0)
            other = median(label, 1) - (median(below, 1) if below else 0.0)
            print(f"| {layer} | {loop + other:.1f} ({loop:.1f} + {other:.1f}) | {(loop + other) / app_total:.0%} |")
        floor = median("floor", 0) + median("floor", 1)
        sized = median("sized floor", 0) + median("sized floor", 1)
        print(f"| **the app, all of it** | **{app_total:.1f}** | {app_total / floor:.2f} times the floor's |")
        print(f"\nThe floor answering this path's answer (its headers and body; sized floor): {sized:.1f} µs/req, "
              f"{sized - floor:+.1f} over the floor's fixed answer. req/s: the app {median('app', 3):,.0f}, the "
              f"floor {median('floor', 3):,.0f} ({median('app', 3) / median('floor', 3):.0%}), the sized floor "
              f"{median('sized floor', 3):,.0f}; the app's threads waited for a core {median('app', 2):.0f} µs per "
              f"request. 60% of the floor's req/s needs at most {floor / 0.6:.0f} µs of CPU per request. The "
              f"app scored {statistics.median(BATCH_ROWS[(path, c)]):.1f} rows per model call (median over its runs: "
              "requests of one loop turn share a call).")
        for label in ("app", "sized floor", "floor"):
            if (path, c, label) in profiles:
                print(f"\nperf record -F {PERF_HZ} of the {label} ({PATHS[path]}, c={c}), µs of CPU per request by "
                      f"shared object, then by symbol (≥ 0.5% of samples):\n")
                print(profiles[(path, c, label)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000, help="requests per path, concurrency and stage, "
                        "per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transport", action="store_true", help="through the server's transport and loopback "
                        "sockets with wrk, layer by layer down to the bare uvicorn floor (one path, one concurrency)")
    parser.add_argument("--seconds", type=float, default=4.0, help="--transport: wrk's run per variant")
    parser.add_argument("--concurrency", default="32", help="--transport: wrk's connections (comma-separated list)")
    parser.add_argument("--path", default="predict", help=f"--transport: what is requested, comma-separated of "
                        f"{', '.join(sorted(PATHS))}")
    parser.add_argument("--perf", type=Path, help="--transport: also perf record the app, the sized floor and the "
                        "floor (one more wrk run each), files in this directory")
    parser.add_argument("--serve", choices=SERVE_KINDS, help=argparse.SUPPRESS)  # a --transport server process
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.transport:
        paths = args.path.split(",")
        if not set(paths) <= set(PATHS):
            parser.error(f"--path: one or more of {', '.join(sorted(PATHS))}")
        load = os.getloadavg()[0]
        measured, profiles = transport(args.seconds, args.repeats, [int(c) for c in args.concurrency.split(",")],
                                       paths, args.perf)
        print_transport(measured, profiles, args, (load, os.getloadavg()[0]))
        return 0
    results, drift_us = uvloop.run(measure(args.requests, args.repeats))

    def loop_us(label: str, c: int, stage: str) -> float:
        return statistics.median(v[0] for v in results[(label, c, stage)])

    def other_us(label: str, c: int, stage: str) -> float:
        return statistics.median(v[1] for v in results[(label, c, stage)])

    print(f"\n{args.requests} requests per path, concurrency and stage per repeat, median of {args.repeats} repeats "
          "(CPU time; 'loop' = the event loop's thread, 'off-path' = every other thread: the store thread writing "
          "records). Each stage is taken out in turn, cumulatively; its share is what the requests cost less "
          "without it. Transport (the HTTP server, httptools, the sockets) is not in this process: run.py's CPU "
          "column for the bare ASGI app on model_server's transport is it.\n")
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
