"""Is the concurrency-1 tail inside the server's handler or outside it? wrk's p99 beside the share of requests the
server itself timed above 1, 2.5 and 5 ms (``ml_inference_latency_seconds``: from the endpoint's start to its
answer, so parsing, the event loop's wake-up and the socket are outside it). skops ``/predict``, server on CPU 1,
wrk on CPU 0.

    .venv/bin/python bench/server/tail_side.py [--postgresql [--postgresql-cpu 0|1]] [--duration 10]

``--postgresql``: the store on a real PostgreSQL, put aside in the idle class on ``--postgresql-cpu`` (0, wrk's
core, as ``run.py --postgresql`` does; 1, the server's).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgresql", action="store_true")
    parser.add_argument("--postgresql-cpu", choices=("0", "1"), default="0")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mw-tail-side-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        postgres = stack.enter_context(run.postgresql_aside(args.postgresql_cpu)) if args.postgresql else None
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
        where = f"PostgreSQL on CPU {args.postgresql_cpu}" if args.postgresql else "SQLite"
        print(f"{where}: wrk c=1 p50 {p50:,.0f} µs, p99 {p99:,.0f} µs over {requests:,} requests; "
              f"timed by the server above {over}")


if __name__ == "__main__":
    main()
