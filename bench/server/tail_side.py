"""Is the concurrency-1 tail inside the server's handler or outside it? wrk's p99 beside the share of requests the
server itself timed above 1, 2.5 and 5 ms (``ml_inference_latency_seconds``: from the endpoint's start to its
answer, so parsing, the event loop's wake-up and the socket are outside it). skops ``/predict``, server on CPU 1,
wrk on CPU 0.

    .venv/bin/python bench/server/tail_side.py [--postgresql [--postgresql-cpu 0|1]]
        [--postgresql-load RECORDS_PER_SECOND] [--idle-spin 0|1] [--duration 10]

``--postgresql``: the store on a real PostgreSQL, put aside in the idle class on ``--postgresql-cpu`` (0, wrk's
core, as ``run.py --postgresql`` does; 1, the server's).

``--postgresql-load N``: the server on SQLite, never touching PostgreSQL, while another process writes N prediction
records a second into a real PostgreSQL through the store's own statement, a flush every 0.25 s as the server's
store thread does; PostgreSQL and that writer put aside together on ``--postgresql-cpu``. What PostgreSQL's work
on this machine does to a server that does not wait for it: the PostgreSQL rows' c=1 tail less our server's part.

``--idle-spin CPU``: a Python busy loop in the idle scheduling class on CPU 0 or 1 beside the run: whether work
that the kernel never lets the server or wrk wait for still lengthens their tail (on a VM it can: the host sees a
busy virtual CPU, not the guest's scheduling classes).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import run

BOUNDS = ("0.001", "0.0025", "0.005")


def buckets(base: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    text = httpx.get(f"{base}/metrics").text
    for le, value in re.findall(r'^ml_inference_latency_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', text, re.M):
        counts[le] = counts.get(le, 0.0) + float(value)
    return counts


def write_records(dsn: str, per_second: int) -> None:
    """Forever: a flush of ``per_second / 4`` records every 0.25 s, as the server's store thread writes them."""
    from model_server.dataplane import PredictionIds
    from model_server.store import PostgresFeedbackStore, PredictionRecord

    inputs = "{" + ",".join(f'"feature_{i:02d}":{0.123456789 * i}' for i in range(28)) + "}"
    store, ids = PostgresFeedbackStore(dsn, namespace="bench"), PredictionIds()
    store.migrate()
    while True:
        start, now = time.monotonic(), time.time()
        store.record_predictions([PredictionRecord(pid, "m", "1.0.0", "stable", "ENABLED|OK", inputs, 0.5, now,
                                                   "ab" * 32) for pid in ids.take(per_second // 4)])
        time.sleep(max(0.0, 0.25 - (time.monotonic() - start)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgresql", action="store_true")
    parser.add_argument("--postgresql-cpu", choices=("0", "1"), default="0")
    parser.add_argument("--postgresql-load", type=int, metavar="RECORDS_PER_SECOND")
    parser.add_argument("--idle-spin", choices=("0", "1"), metavar="CPU")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.postgresql and args.postgresql_load:
        parser.error("--postgresql-load runs the server on SQLite: it excludes --postgresql")
    if args.postgresql_load is not None and args.postgresql_load < 4:
        parser.error("--postgresql-load: at least 4 records a second (a flush every 0.25 s)")
    work = Path(tempfile.mkdtemp(prefix="mw-tail-side-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        postgres = stack.enter_context(run.postgresql_aside(args.postgresql_cpu)) if args.postgresql else None
        if args.postgresql_load:
            dsn, _ = stack.enter_context(run.postgresql_aside(args.postgresql_cpu))
            writer = multiprocessing.get_context("fork").Process(
                target=write_records, args=(dsn, args.postgresql_load), daemon=True)
            writer.start()
            stack.callback(writer.kill)
            assert writer.pid is not None  # started
            run.put_aside(writer.pid, args.postgresql_cpu)
        if args.idle_spin:
            spin = subprocess.Popen(["taskset", "-c", args.idle_spin, "chrt", "-i", "0",
                                     sys.executable, "-c", "while True: pass"])
            stack.callback(spin.kill)
        prepared = run.prepare("logistic", ["skops"], {}, work, "1", postgres)
        target = next(t for t in prepared.targets
                      if ("PostgreSQL" in t.label) == args.postgresql and "OIP" not in t.label)
        with target.start() as endpoint:
            base = endpoint.url.rsplit("/", 1)[0]
            script = run._script(work, endpoint)
            run.wrk(endpoint.url, script, 32, run.WARMUP_SECONDS, "0")
            time.sleep(1)
            before = buckets(base)
            _, p50, p99, _, requests = run.wrk(endpoint.url, script, 1, args.duration, "0")
            after = buckets(base)
        timed = after["+Inf"] - before["+Inf"]
        over = ", ".join(f"{float(le) * 1000:g} ms {(timed - (after[le] - before[le])) / timed:.3%}" for le in BOUNDS)
        where = (f"PostgreSQL on CPU {args.postgresql_cpu}" if args.postgresql else
                 f"SQLite, {args.postgresql_load:,} records/s written to PostgreSQL on CPU {args.postgresql_cpu} "
                 "by another process" if args.postgresql_load else "SQLite")
        where += f", an idle-class busy loop on CPU {args.idle_spin}" if args.idle_spin else ""
        print(f"{where}: wrk c=1 p50 {p50:,.0f} µs, p99 {p99:,.0f} µs over {requests:,} requests; "
              f"timed by the server above {over}")


if __name__ == "__main__":
    main()
