"""One model_server, the tree this file is in, ``/predict`` or OIP (skops logistic, SQLite store) driven by wrk: the
quick A/B of a change, run alternately from two worktrees (``git worktree add ../before <commit>``).

    .venv/bin/python bench/server/quick.py [--label new] [--duration 8] [--saturate 40]
        [--path predict|oip-binary|oip-json] [--postgresql]

Prints one line: the concurrency-1 p50 and p99, concurrency-32 req/s, p99 and the server's CPU per request, and
the prediction records dropped. ``--saturate N`` adds N seconds at concurrency 32 with the records pending read
from ``/metrics`` every 5 s (whether the store thread keeps up at saturation). Server on CPU 1, wrk on CPU 0.
``--postgresql``: the store on a real PostgreSQL (``/predict`` or OIP binary), put aside on wrk's core as
``run.py --postgresql`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import run

PATHS = ("predict", "oip-binary", "oip-json")  # the order of run.prepare's targets for one format


def metric_sum(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}\{{.*\}} (\S+)", text, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default=str(run.ROOT.name))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--saturate", type=float, default=0.0)
    parser.add_argument("--path", choices=PATHS, default="predict")
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mw-quick-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)  # the SQLite store and logs of a run: hundreds of MB
        postgres = stack.enter_context(run.postgresql_aside("0")) if args.postgresql else None
        measure(args, work, postgres)


def measure(args: argparse.Namespace, work: Path, postgres: tuple[str, int] | None) -> None:
    prepared = run.prepare("logistic", ["skops"], {}, work, "1", postgres)
    if postgres is None:
        target = prepared.targets[PATHS.index(args.path)]
    else:
        target = next(t for t in prepared.targets if "PostgreSQL" in t.label
                      and (args.path == "oip-binary") == ("OIP binary" in t.label))
    with target.start() as endpoint:
        base = endpoint.url.rsplit("/", 1)[0]
        script = run._script(work, endpoint)
        run.wrk(endpoint.url, script, 32, run.WARMUP_SECONDS, "0")
        time.sleep(1)
        c1 = run.wrk(endpoint.url, script, 1, args.duration, "0")
        assert endpoint.pid is not None
        before = run.cpu_seconds(endpoint.pid)[0]
        c32 = run.wrk(endpoint.url, script, 32, args.duration, "0")
        cpu = (run.cpu_seconds(endpoint.pid)[0] - before) * 1e6 / c32[4]
        pending = []
        if args.saturate:
            load = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{args.saturate:g}s", "-s",
                                     str(script), endpoint.url], stdout=subprocess.DEVNULL)
            while load.poll() is None:
                time.sleep(5)
                pending.append(metric_sum(base, "ml_prediction_records_pending"))
        time.sleep(1)
        dropped = metric_sum(base, "ml_prediction_records_dropped_total")
    saturated = f" | {args.saturate:g} s at c=32: records pending every 5 s {[int(p) for p in pending]}" \
        if pending else ""
    store = " [PostgreSQL]" if postgres else ""
    print(f"{args.label} {args.path}{store}: c=1 p50 {c1[1]:,.0f} p99 {c1[2]:,.0f} µs | "
          f"c=32 {c32[0]:,.0f} req/s p99 {c32[2]:,.0f} µs CPU {cpu:,.0f} µs/req | "
          f"records dropped {dropped:,.0f}{saturated}", flush=True)


if __name__ == "__main__":
    main()
