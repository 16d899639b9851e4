"""What the feedback store costs: the shared PostgreSQL store vs the embedded SQLite default, in the same run.

    .venv/bin/python bench/server/feedback_store.py [--duration 10] [--repeats 3] [--json out.json]

One ``python -m model_server`` process (as in a pod; an ONNX logistic model on 28 features) per store and
measurement, started afresh: SQLite on a local file (WAL, synchronous=FULL) and PostgreSQL from
``localenv.postgres`` (a fresh cluster on loopback, fsync on, default synchronous_commit). wrk drives, at
concurrency 1 and 32:

* ``POST /predict`` (one row): predictions/s and latency. Every answer is recorded; the store thread writes the
  records in one transaction every RECORD_FLUSH_SECONDS, off the request path, so this is what the store adds
  per prediction.
* ``POST /feedback``: one critical label per request, each for a different prediction made beforehand (so
  every answer is a 201: a committed, fsynced insert), p50/p99 and labels/s. The script stops when the
  prepared predictions run out, so labels/s is counted from the store, not from wrk's per-duration figure.

The server runs on one core and wrk on the other when there are two (PostgreSQL is not pinned: it shares the
machine, as a database on the same node would). A repeat measures both stores one after the other, the order
alternating; the table gives the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from localenv import postgres as postgres_env  # noqa: E402
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train  # noqa: E402
from model_server.testing import serve_subprocess  # noqa: E402

N_FEATURES = 28
CONCURRENCIES = (1, 32)
PREPARED_PREDICTIONS = 40_000
UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass
class Result:
    store: str
    what: str            # predict | feedback
    concurrency: int
    per_second: float
    p50_us: float
    p99_us: float
    errors: int


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _latency(out: str, pct: str) -> float:
    import re

    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"no {pct}% latency in wrk output:\n{out}")
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url: str, script: Path, concurrency: int, seconds: float, cpu: str | None) -> tuple[float, float, float, int]:
    import re

    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {(proc.stderr + proc.stdout)[-2000:]}")
    out = proc.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, _latency(out, "50"), _latency(out, "99"), int(errors.group(1)) if errors else 0


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def predict_script(work: Path, artifact: DemoArtifact) -> Path:
    body = json.dumps({"features": {f: 0.1 * i for i, f in enumerate(artifact.features)}})
    script = work / "predict.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {_lua(body)}\n")
    return script


def feedback_script(work: Path, ids: list[str]) -> Path:
    """One label per prepared prediction, in order; stops the run when they are used up (no duplicate 200s)."""
    script = work / "feedback.lua"
    table = ",\n".join(_lua(i) for i in ids)
    script.write_text(
        f"local ids = {{\n{table}\n}}\n"
        "local next_id = 1\n"
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        "function request()\n"
        "  if next_id > #ids then wrk.thread:stop() end\n"
        "  local pid = ids[math.min(next_id, #ids)]\n"
        "  next_id = next_id + 1\n"
        '  return wrk.format(nil, "/feedback", nil, \'{"predictionId":"\' .. pid .. '
        '\'","label":"wrong","severity":"critical","stakeholder":"finance"}\')\n'
        "end\n")
    return script


@contextmanager
def server(artifact: DemoArtifact, dsn: str, log: Path, cpu: str | None) -> Iterator[str]:
    env = {**artifact.env("bench", "1.0.0"), "FEEDBACK_DSN": dsn, "WARMUP_ROUNDS": "5", "LOG_LEVEL": "WARNING",
           "MAX_BATCH_ROWS": "10000", "MAX_BODY_BYTES": str(16 * 1024 * 1024)}
    with serve_subprocess(env, log_path=log) as (url, proc):
        if cpu is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(proc.pid)], check=True, capture_output=True)
        yield url


def prepare_ids(url: str, artifact: DemoArtifact, n: int) -> list[str]:
    ids: list[str] = []
    row = {f: 0.5 for f in artifact.features}
    with httpx.Client(base_url=url, timeout=120) as c:
        while len(ids) < n:
            answer = c.post("/predict", json={"instances": [row] * min(5000, n - len(ids))})
            answer.raise_for_status()
            ids += [p["predictionId"] for p in answer.json()["predictions"]]
        c.post("/feedback", json={"predictionId": ids[0], "label": "x", "severity": "info", "stakeholder": "other"})
    return ids[1:]  # that label wrote every pending record: all are in the store before the clock starts


def labels_in_store(dsn: str) -> int:
    if dsn.startswith("postgresql://"):
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM model_feedback WHERE severity = 'critical'").fetchone()
            return int(row[0]) if row else 0
    import sqlite3

    with sqlite3.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM feedback WHERE severity = 'critical'").fetchone()[0])


def fresh_dsn(store: str, pg: postgres_env.Postgres, work: Path) -> str:
    name = f"bench_{time.monotonic_ns()}"
    if store == "sqlite":
        return str(work / f"{name}.sqlite3")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn.rsplit("/", 1)[0] + f"/{name}"


def measure(store: str, artifact: DemoArtifact, pg: postgres_env.Postgres, work: Path, seconds: float,
            cpus: tuple[str | None, str | None]) -> list[Result]:
    server_cpu, load_cpu = cpus
    out = []
    for c in CONCURRENCIES:
        dsn = fresh_dsn(store, pg, work)
        with server(artifact, dsn, work / f"{store}-predict-{c}.log", server_cpu) as url:
            script = predict_script(work, artifact)
            wrk(f"{url}/predict", script, 32, 2, load_cpu)  # warm-up
            rps, p50, p99, errors = wrk(f"{url}/predict", script, c, seconds, load_cpu)
            out.append(Result(store, "predict", c, rps, p50, p99, errors))
            progress(f"{store} predict c={c}: {rps:,.0f}/s p50 {p50:,.0f} µs p99 {p99:,.0f} µs")
        dsn = fresh_dsn(store, pg, work)
        with server(artifact, dsn, work / f"{store}-feedback-{c}.log", server_cpu) as url:
            ids = prepare_ids(url, artifact, PREPARED_PREDICTIONS)
            before = labels_in_store(dsn)
            started = time.monotonic()
            _, p50, p99, errors = wrk(url, feedback_script(work, ids), c, seconds, load_cpu)
            elapsed = time.monotonic() - started
            stored = labels_in_store(dsn) - before
            if stored >= len(ids):
                progress(f"warning: all {len(ids)} prepared predictions labelled: labels/s is a lower bound")
            out.append(Result(store, "feedback", c, stored / min(elapsed, seconds), p50, p99, errors))
            progress(f"{store} feedback c={c}: {stored / min(elapsed, seconds):,.0f} labels/s p50 {p50:,.0f} µs "
                     f"p99 {p99:,.0f} µs ({errors} non-2xx)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    cpus: tuple[str | None, str | None] = ("0", "1") if pin else (None, None)
    with tempfile.TemporaryDirectory(prefix="mw-bench-store-") as tmp:
        work = Path(tmp)
        artifact = build_demo_artifact(work / "artifact", fmt="onnx",
                                       trained=train("logistic", N_FEATURES, 2000, seed=1))
        progress("starting PostgreSQL (localenv.postgres)")
        pg = postgres_env.start()
        results: list[Result] = []
        try:
            for r in range(args.repeats):
                order = ("sqlite", "postgresql") if r % 2 == 0 else ("postgresql", "sqlite")
                for store in order:
                    progress(f"repeat {r + 1}/{args.repeats}: {store}")
                    results += measure(store, artifact, pg, work, args.duration, cpus)
        finally:
            pg.destroy()
    rows = []
    for what in ("predict", "feedback"):
        for c in CONCURRENCIES:
            for store in ("sqlite", "postgresql"):
                got = [x for x in results if (x.store, x.what, x.concurrency) == (store, what, c)]
                rows.append({"what": what, "concurrency": c, "store": store,
                             "per_second": statistics.median(x.per_second for x in got),
                             "p50_us": statistics.median(x.p50_us for x in got),
                             "p99_us": statistics.median(x.p99_us for x in got),
                             "errors": sum(x.errors for x in got)})
    print("| measured | concurrency | store | per second | p50 | p99 | non-2xx |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        unit = "predictions" if row["what"] == "predict" else "labels"
        print(f"| {'POST /predict' if row['what'] == 'predict' else 'POST /feedback'} | {row['concurrency']} | "
              f"{row['store']} | {row['per_second']:,.0f} {unit}/s | {row['p50_us'] / 1000:.2f} ms | "
              f"{row['p99_us'] / 1000:.2f} ms | {row['errors']} |")
    if args.json:
        args.json.write_text(json.dumps({"results": [asdict(x) for x in results], "summary": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
