"""Benchmark model_server against its peers and the in-process floor, on loopback, with wrk as the load generator.

    .venv/bin/python bench/server/run.py [--duration 10] [--repeats 5] [--models logistic,gbm]
        [--formats skops,onnx] [--peers mlserver,mlserver-pw0,kserve] [--json out.json]

Models: LogisticRegression and GradientBoostingClassifier (50 trees, depth 3) on 28 generated features.
For each, the floor is an in-process call on one row: scikit-learn's public ``predict_proba`` and the
server's own scorer (its verified fast path for skops, onnxruntime for ONNX). The servers, each driven by wrk
at concurrency 1 and 32 with a one-row request:

* model_server: ``python -m model_server`` (one process, as in a pod) from a skops and from an ONNX artifact,
  ``POST /predict`` keyed by feature name (in shuffled order, so reordering is exercised);
* the peers (``peers/``): MLServer with mlserver-sklearn, its defaults and ``parallel_workers=0`` (OIP v2
  ``infer`` asking for ``predict_proba``), and KServe's ModelServer with sklearnserver's model (v1 ``:predict``,
  ``PREDICT_PROBA=true``), serving a joblib file of the same fitted estimator from their own virtualenvs under
  ``$MODELWARDEN_CACHE/bench-venvs`` (created on first use).

The transport floors: a bare ASGI app answering a fixed body on uvicorn (httptools, uvloop; the server most Python
model servers run on, and the ratios' denominator) and the same app on model_server's own transport.

Every server's answer to the request is checked against the estimator's ``predict_proba`` before it is
measured. With two or more cores each server (with all its processes) runs on one core and wrk on another. A
repeat measures everything once, one server at a time, each started afresh and warmed up (3 s at concurrency
32); the order of the servers rotates from one repeat to the next, and the table gives the median of the
repeats for each number. Every wrk run is bounded in time (``--duration``) and in requests (``MAX_REQUESTS``).
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import cast

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

import peers  # noqa: E402

from model_server.config import Settings  # noqa: E402
from model_server.demo_artifact import Kind, build_demo_artifact, save_model, train  # noqa: E402
from model_server.loader import load_artifact  # noqa: E402
from model_server.testing import free_port, serve_subprocess, wait_until  # noqa: E402
from modelwarden.artifacts import ModelFormat  # noqa: E402

N_FEATURES = 28
CONCURRENCIES = (1, 32)
WARMUP_SECONDS = 3
MAX_REQUESTS = 1_000_000  # per wrk run: far above what 2 cores answer in --duration, a bound all the same
CHECK_TOLERANCE = 1e-3  # on P(class 1); ONNX scores in float32


@dataclass
class Result:
    model: str
    target: str
    concurrency: int
    rps: float
    p50_us: float
    p99_us: float
    errors: int = 0
    cpu_us: float = 0.0  # the server process's CPU time per request (all its threads); 0: not measured (peers)
    loop_cpu_us: float = 0.0  # of which its main thread's (the event loop: transport, parsing, scoring, metrics)
    store_db_cpu_us: float = 0.0  # the PostgreSQL server's processes' CPU per request (PostgreSQL store rows)


@dataclass
class Summary:
    """The median over the repeats of one measurement, and the range of its throughput."""

    model: str
    target: str
    concurrency: int
    repeats: int
    rps: float
    rps_min: float
    rps_max: float
    p50_us: float
    p99_us: float
    errors: int
    cpu_us: float
    loop_cpu_us: float
    store_db_cpu_us: float


@dataclass(frozen=True)
class Endpoint:
    url: str
    body: bytes  # one row
    probability: Callable[[httpx.Response], float] | None  # P(class 1) from the response, checked against the estimator
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    pid: int | None = None  # the server process, for its CPU time (ours and the floor)
    db_pid: int | None = None  # the PostgreSQL postmaster the server writes to, for its processes' CPU time


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(all threads, main thread) CPU seconds of ``pid`` so far (``/proc``: user + system)."""
    total = main = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        total += seconds
        if task.name == str(pid):
            main = seconds
    return total, main


def _family(root: int) -> Iterator[tuple[str, list[str]]]:
    """``root`` and its children (a PostgreSQL postmaster and its backends): each pid with its ``/proc`` stat
    fields after the command name."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if proc.name == str(root) or fields[1] == str(root):
            yield proc.name, fields


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its children, as of now."""
    return sum((int(fields[11]) + int(fields[12])) / _TICK for _, fields in _family(root))


@contextmanager
def postgresql_aside(cpu: str | None) -> Iterator[tuple[str, int]]:
    """A real PostgreSQL for the store rows, put aside on ``cpu`` (see :func:`put_aside`; None: left where it
    starts); yields its DSN and postmaster's pid, and removes it on exit."""
    from localenv import postgres as postgres_env

    pg = postgres_env.start()
    try:
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        if cpu is not None:
            put_aside(postmaster, cpu)
        yield pg.dsn, postmaster
    finally:
        pg.destroy()


def put_aside(root: int, cpu: str) -> None:
    """``root`` and its children (a PostgreSQL postmaster and the backends it has forked) on ``cpu`` in the idle
    scheduling class, which the backends it forks later inherit: PostgreSQL as if on a host of its own, as in
    production. The kernel never makes the server or wrk wait for it and it gets what wrk leaves of its core; its
    CPU is still counted. (Unpinned, it took turns with the server on the server's core; pinned at normal
    priority, with wrk, whose measured latency it then lengthened.) Its work still lengthens the c=1 tail of
    both on this VM, which no priority inside it prevents: ``tail_side.py --postgresql-load``."""
    for pid, _ in list(_family(root)):
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, pid], check=False, capture_output=True)
        subprocess.run(["chrt", "-a", "-i", "-p", "0", pid], check=False, capture_output=True)


@dataclass(frozen=True)
class Target:
    label: str
    start: Callable[[], AbstractContextManager[Endpoint]]
    log: Path
    peer: bool = False


@dataclass
class Prepared:
    kind: str
    expected: float
    in_process: list[tuple[str, Callable[[np.ndarray], object]]]
    x: np.ndarray
    targets: list[Target]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def wrk(url: str, script: Path, concurrency: int, seconds: float, cpu: str | None) -> tuple[
        float, float, float, int, int]:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk -c{concurrency} exited with {proc.returncode}: "
                           f"{(proc.stderr + proc.stdout).strip()[-2000:]}")
    out = proc.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if requests >= MAX_REQUESTS:
        # wrk divides by the whole duration even when the script stopped it early.
        raise RuntimeError(f"wrk reached the {MAX_REQUESTS:,}-request bound: its req/s would be wrong")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, _latency(out, "50"), _latency(out, "99"), int(errors.group(1)) if errors else 0, requests


def _lua_string(data: bytes) -> str:
    """``data`` as a Lua string literal (three-digit decimal escapes: binary request bodies too)."""
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def _script(work: Path, endpoint: Endpoint) -> Path:
    script = work / "request.lua"
    headers = "".join(f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}\n"
                      for k, v in endpoint.headers)
    script.write_text('wrk.method = "POST"\n' + headers +
                      f"wrk.body = {_lua_string(endpoint.body)}\n"
                      "local answered = 0\n"
                      "function response(status, headers, body)\n"
                      "  answered = answered + 1\n"
                      f"  if answered >= {MAX_REQUESTS} then wrk.thread:stop() end\n"
                      "end\n")
    return script


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


@contextmanager
def _bare(log_path: Path, cpu: str | None, body: bytes, server: str = "uvicorn") -> Iterator[Endpoint]:
    """A bare ASGI app answering a fixed body, on uvicorn (the floor the issue's ratios are to: what most Python
    model servers run on) or on model_server's own transport (``server="model_server"``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "bare_asgi:app",
           "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
           "--no-access-log", "--lifespan", "off", "--log-level", "warning"] if server == "uvicorn" else \
        [sys.executable, str(Path(__file__).parent / "bare_asgi.py"), str(port)]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/").status_code == 200, 30, "the bare ASGI server")
        yield Endpoint(f"{url}/predict", body, None, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def _model_server(env: dict[str, str], log_path: Path, cpu: str | None, body: bytes,
                  oip_headers: tuple[tuple[str, str], ...] | None = None, db_pid: int | None = None,
                  path: str | None = None) -> Iterator[Endpoint]:
    """``/predict`` with a JSON body, or (with ``oip_headers``) OIP infer with a binary one (or ``path``)."""
    with serve_subprocess(env, log_path=log_path) as (url, proc):
        if cpu is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(proc.pid)], check=True, capture_output=True)
        if oip_headers is not None:
            yield Endpoint(f"{url}/v2/models/bench/infer", body, _binary_prediction, oip_headers, pid=proc.pid,
                           db_pid=db_pid)
        elif path is not None:
            yield Endpoint(f"{url}{path}", body, _json_prediction, pid=proc.pid, db_pid=db_pid)
        else:
            yield Endpoint(f"{url}/predict", body, lambda r: float(r.json()["prediction"]), pid=proc.pid,
                           db_pid=db_pid)


def _json_prediction(response: httpx.Response) -> float:
    """The first ``prediction`` of a JSON OIP answer."""
    return float(next(o for o in response.json()["outputs"] if o["name"] == "prediction")["data"][0])


def _binary_prediction(response: httpx.Response) -> float:
    """The first ``prediction`` of a binary OIP answer (FP64 after the JSON header)."""
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["name"] == "prediction"
    return float(np.frombuffer(response.content[length:length + 8], dtype="<f8")[0])


@contextmanager
def _peer(peer: peers.Peer, venv_dir: Path, model_file: Path, work: Path, row: list[float], log_path: Path,
          cpu: str | None) -> Iterator[Endpoint]:
    launch = peer.launch(venv_dir, model_file, work, row)
    with peers.serve(launch, log_path=log_path, cpu=cpu):
        yield Endpoint(launch.infer_url, launch.body, launch.probability, launch.headers)


def measure(model: str, target: Target, work: Path, seconds: float, load_cpu: str | None,
            expected: float | None) -> list[Result]:
    with target.start() as endpoint:
        if endpoint.probability is not None and expected is not None:
            answer = httpx.post(endpoint.url, content=endpoint.body, headers=dict(endpoint.headers), timeout=10)
            got = endpoint.probability(answer.raise_for_status())
            if abs(got - expected) > CHECK_TOLERANCE:
                raise RuntimeError(f"{target.label} answered P(1)={got}, the estimator says {expected}")
        script = _script(work, endpoint)
        wrk(endpoint.url, script, 32, WARMUP_SECONDS, load_cpu)
        out = []
        for concurrency in CONCURRENCIES:
            before = cpu_seconds(endpoint.pid) if endpoint.pid else (0.0, 0.0)
            db_before = tree_cpu_seconds(endpoint.db_pid) if endpoint.db_pid else 0.0
            rps, p50, p99, errors, requests = wrk(endpoint.url, script, concurrency, seconds, load_cpu)
            after = cpu_seconds(endpoint.pid) if endpoint.pid else (0.0, 0.0)
            db = (tree_cpu_seconds(endpoint.db_pid) - db_before) if endpoint.db_pid else 0.0
            per = 1e6 / max(1, requests)
            out.append(Result(model, target.label, concurrency, rps, p50, p99, errors, (after[0] - before[0]) * per,
                              (after[1] - before[1]) * per, db * per))
        return out


def prepare(kind: str, formats: list[str], peer_venvs: dict[str, tuple[peers.Peer, Path]], work: Path,
            server_cpu: str | None, postgres: tuple[str, int] | None = None) -> Prepared:
    """Train the model, write its artifacts (skops/ONNX for model_server, joblib for the peers) and say how to
    start each server on it."""
    directory = work / kind
    trained = train(cast(Kind, kind), N_FEATURES, 5000, seed=0)
    estimator, sample = trained
    x = sample[:1]
    row = sample[1]
    floors: list[tuple[str, Callable[[np.ndarray], object]]] = [
        ("in-process sklearn predict_proba", estimator.predict_proba)]
    targets: list[Target] = []
    for fmt in formats:
        artifact = build_demo_artifact(directory / fmt, kind=cast(Kind, kind), fmt=cast(ModelFormat, fmt),
                                       trained=trained)
        # STORE_THREAD_IDLE as the operator's pods have it: the server, alone on its core, stands for the pod.
        env = {**artifact.env("bench", "1.0.0"), "FEEDBACK_DSN": str(directory / f"{fmt}.sqlite3"),
               "LOG_LEVEL": "WARNING", "STORE_THREAD_IDLE": "true"}
        loaded = load_artifact(Settings.from_env(env))
        label = f"{fmt}: {loaded.fast_path or loaded.platform}"
        floors.append((f"in-process model_server scorer ({label})", loaded.score))
        features = list(artifact.features)
        random.Random(0).shuffle(features)
        body = json.dumps({"features": {f: float(row[artifact.features.index(f)]) for f in features}}).encode()
        log = directory / f"model_server-{fmt}.log"
        targets.append(Target(f"model_server ({label})",
                              partial(_model_server, env, log, server_cpu, body), log))
        # What tritonclient sends by default: binary tensor data in, binary outputs asked for.
        binary, headers = peers.binary_request("input-0", [float(v) for v in row], {"binary_data_output": True})
        targets.append(Target(f"model_server OIP binary ({label})",
                              partial(_model_server, env, log, server_cpu, binary, headers), log))
        oip_json = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64",
                                           "data": [float(v) for v in row]}]}).encode()
        targets.append(Target(f"model_server OIP JSON ({label})",
                              partial(_model_server, env, log, server_cpu, oip_json, path="/v2/models/bench/infer"),
                              log))
        if postgres is not None:  # the production configuration: records and feedback in PostgreSQL
            dsn, postmaster = postgres
            pg_env = {**env, "FEEDBACK_DSN": dsn}
            targets.append(Target(f"model_server ({label}) [PostgreSQL store]",
                                  partial(_model_server, pg_env, log, server_cpu, body, db_pid=postmaster), log))
            targets.append(Target(f"model_server OIP binary ({label}) [PostgreSQL store]",
                                  partial(_model_server, pg_env, log, server_cpu, binary, headers, db_pid=postmaster),
                                  log))
    model_file = directory / "joblib" / "model.joblib"  # alone in its directory, as KServe wants it
    model_file.parent.mkdir(parents=True)
    save_model(estimator, sample, "joblib", model_file)
    for key, (peer, venv_dir) in peer_venvs.items():
        log = directory / f"{key}.log"
        targets.append(Target(peer.label, partial(_peer, peer, venv_dir, model_file, directory,
                                                  [float(v) for v in row], log, server_cpu), log, peer=True))
    return Prepared(kind, float(estimator.predict_proba(sample[1:2])[0, 1]), floors, x, targets)


def summarize(results: list[Result]) -> Summary:
    rps = [r.rps for r in results]
    first = results[0]
    return Summary(first.model, first.target, first.concurrency, len(results), statistics.median(rps), min(rps),
                   max(rps), statistics.median(r.p50_us for r in results),
                   statistics.median(r.p99_us for r in results), sum(r.errors for r in results),
                   statistics.median(r.cpu_us for r in results), statistics.median(r.loop_cpu_us for r in results),
                   statistics.median(r.store_db_cpu_us for r in results))


def ratios(prepared: list[Prepared], summaries: dict[tuple[str, str, int], Summary]) -> list[str]:
    """The issue's aims, per model and model_server format: throughput and p99 against the peer with the highest
    throughput at concurrency 32, and p50 at concurrency 1 over the in-process floors."""
    lines = ["| model | model_server | best peer at c=32 | req/s ratio (c=32) | p99 ratio (c=32) | p99 ratio (c=1) "
             "| p50 c=1 over in-process sklearn p50 (µs) | p50 c=1 over in-process scorer p50 (µs) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for p in prepared:
        peer_rows = [summaries[(p.kind, t.label, 32)] for t in p.targets if t.peer and (p.kind, t.label, 32)
                     in summaries]
        if not peer_rows:
            continue
        best = max(peer_rows, key=lambda s: s.rps)
        best_c1 = summaries.get((p.kind, best.target, 1))
        sklearn = summaries.get((p.kind, "in-process sklearn predict_proba", 1))
        for t in p.targets:
            ours32, ours1 = summaries.get((p.kind, t.label, 32)), summaries.get((p.kind, t.label, 1))
            if t.peer or ours32 is None or ours1 is None:
                continue
            scorer = summaries.get((p.kind, t.label.replace("model_server", "in-process model_server scorer"), 1))
            c1 = f"{ours1.p99_us / best_c1.p99_us:.2f}" if best_c1 else "-"
            d_sklearn = f"{ours1.p50_us - sklearn.p50_us:,.0f}" if sklearn else "-"
            d_scorer = f"{ours1.p50_us - scorer.p50_us:,.0f}" if scorer else "-"
            lines.append(f"| {p.kind} | {t.label} | {best.target} | {ours32.rps / best.rps:.2f} "
                         f"| {ours32.p99_us / best.p99_us:.2f} | {c1} | {d_sklearn} | {d_scorer} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="the table gives the median of this many repeats")
    parser.add_argument("--models", default="logistic,gbm")
    parser.add_argument("--formats", default="skops,onnx")
    parser.add_argument("--peers", default=",".join(peers.PEERS), help=f"any of {', '.join(peers.PEERS)}; '' for none")
    parser.add_argument("--json", type=Path, help="also write every repeat and the medians here")
    parser.add_argument("--postgresql", action="store_true", help="also model_server with a PostgreSQL feedback "
                        "store (localenv.postgres on loopback, on wrk's core in the idle scheduling class: the "
                        "production configuration, where PostgreSQL has a host of its own)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    peer_keys = [k for k in args.peers.split(",") if k]
    unknown = sorted(set(peer_keys) - set(peers.PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(peers.PEERS)}")
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu, load_cpu = ("1", "0") if pin else (None, None)

    failures: list[str] = []
    peer_venvs: dict[str, tuple[peers.Peer, Path]] = {}
    installed: dict[Path, str] = {}
    for key in peer_keys:
        peer = peers.PEERS[key]
        try:
            venv_dir = peers.ensure_venv(peer.venv, progress)
        except peers.PeerError as exc:
            failures.append(f"{key}: {exc}")
            continue
        peer_venvs[key] = (peer, venv_dir)
        installed[venv_dir] = peers.installed(venv_dir, "mlserver", "mlserver-sklearn", "kserve", "scikit-learn",
                                              "numpy", "uvicorn", "uvloop", "fastapi")

    samples: dict[tuple[str, str, int], list[Result]] = {}
    order: list[tuple[str, str]] = []
    loads: list[float] = []

    def add(results: list[Result]) -> None:
        for r in results:
            samples.setdefault((r.model, r.target, r.concurrency), []).append(r)

    work = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    started = time.monotonic()
    stack = ExitStack()
    try:
        postgres = stack.enter_context(postgresql_aside(load_cpu)) if args.postgresql else None
        bare_body = json.dumps({"features": {f"feature_{i:02d}": 0.5 for i in range(N_FEATURES)}}).encode()
        bare = Target("bare uvicorn ASGI app (transport floor)",
                      partial(_bare, work / "bare.log", server_cpu, bare_body), work / "bare.log")
        own_bare = Target("bare ASGI app on model_server's transport",
                          partial(_bare, work / "own-bare.log", server_cpu, bare_body, "model_server"),
                          work / "own-bare.log")
        order.extend([("-", bare.label), ("-", own_bare.label)])
        prepared = []
        for kind in args.models.split(","):
            progress(f"preparing {kind}")
            p = prepare(kind, args.formats.split(","), peer_venvs, work, server_cpu, postgres)
            prepared.append(p)
            order.extend((kind, label) for label, _ in p.in_process)
            order.extend((kind, t.label) for t in p.targets)
        for repeat in range(args.repeats):
            runs: list[tuple[str, Target, float | None]] = [("-", bare, None), ("-", own_bare, None)]
            for p in prepared:
                shift = repeat % len(p.targets)
                runs.extend((p.kind, t, p.expected) for t in p.targets[shift:] + p.targets[:shift])
            for p in prepared:
                for label, call in p.in_process:
                    loads.append(os.getloadavg()[0])
                    add([in_process(p.kind, label, call, p.x, min(args.duration, 5))])
            for model, target, expected in runs:
                progress(f"repeat {repeat + 1}/{args.repeats}: {model} {target.label}")
                loads.append(os.getloadavg()[0])
                try:
                    measured = measure(model, target, work, args.duration, load_cpu, expected)
                    add(measured)
                    for r in measured:  # as it goes: a run stopped early still leaves what it measured
                        progress(f"  c={r.concurrency}: {r.rps:,.0f} req/s, p50 {r.p50_us:,.0f} µs, p99 "
                                 f"{r.p99_us:,.0f} µs, CPU {r.cpu_us:.0f} µs/req (loop {r.loop_cpu_us:.0f}), "
                                 f"PostgreSQL {r.store_db_cpu_us:.0f} µs/req, non-2xx {r.errors}")
                except (peers.PeerError, RuntimeError, TimeoutError, httpx.HTTPError,
                        subprocess.SubprocessError) as exc:
                    tail = "" if isinstance(exc, peers.PeerError) else _log_tail(target.log)  # PeerError has it
                    failures.append(f"repeat {repeat + 1}, {model}, {target.label}: {exc}"
                                    + (f"\n  log ({target.log.name}):\n{tail}" if tail else ""))
                    progress(f"FAILED: {target.label}: {exc}")
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)

    summaries = {key: summarize(rs) for key, rs in samples.items()}
    print(f"\n{os.cpu_count()} CPUs; pinned: {pin} (server on CPU {server_cpu}, wrk on CPU {load_cpu}); "
          f"{args.duration:g}s per HTTP measurement, median of {args.repeats} repeats; "
          f"1-min load average during the run {min(loads, default=0):.1f}-{max(loads, default=0):.1f}; "
          f"took {(time.monotonic() - started) / 60:.0f} min")
    for venv_dir, versions in installed.items():
        print(f"{venv_dir}: {versions}")
    floor = {c: summaries.get(("-", bare.label, c)) for c in CONCURRENCIES}
    print("\nRatios are to the bare uvicorn floor of the same run and concurrency. CPU: the server process's "
          "user+system time per request (all threads; 'loop' = its main thread, the rest is off the request path: "
          "store and drift threads); 'PG' = the PostgreSQL server's processes.")
    print("\n| model | target | c | req/s | req/s min-max | of floor req/s | p50 (µs) | p99 (µs) | p99 / floor p99 "
          "| CPU µs/req (loop + other threads) | PG CPU µs/req | non-2xx | runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, label in order:
        for concurrency in CONCURRENCIES:
            s = summaries.get((model, label, concurrency))
            f = floor.get(concurrency)
            if s is not None:
                http = model == "-" or not label.startswith("in-process")
                of_floor = f"{s.rps / f.rps:.0%}" if f and http else "-"
                p99_ratio = f"{s.p99_us / f.p99_us:.1f}x" if f and http else "-"
                cpu = f"{s.cpu_us:,.0f} ({s.loop_cpu_us:,.0f} + {s.cpu_us - s.loop_cpu_us:,.0f})" if s.cpu_us else "-"
                db = f"{s.store_db_cpu_us:,.0f}" if s.store_db_cpu_us else "-"
                print(f"| {s.model} | {s.target} | {s.concurrency} | {s.rps:,.0f} | {s.rps_min:,.0f}-{s.rps_max:,.0f} "
                      f"| {of_floor} | {s.p50_us:,.0f} | {s.p99_us:,.0f} | {p99_ratio} | {cpu} | {db} | {s.errors} "
                      f"| {s.repeats} |")
    print()
    print("\n".join(ratios(prepared, summaries)))
    if failures:
        print("\nFailures:\n" + "\n".join(f"* {f}" for f in failures))
    if args.json:
        args.json.write_text(json.dumps({"repeats": [asdict(r) for rs in samples.values() for r in rs],
                                         "medians": [asdict(s) for s in summaries.values()],
                                         "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
