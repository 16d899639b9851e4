"""Where the concurrency-1 tail of ``/predict`` comes from: a timeline of the server beside every request's latency.

    .venv/bin/python bench/server/tail.py [--duration 20] [--store sqlite|postgresql] [--repeats 1]

One ``bench/server/traced_server.py`` process (``python -m model_server`` with a timeline recorder: GC pauses,
the feedback store thread's calls with their CPU and disk-wait time, drift computations, event-loop wake-ups
more than 0.3 ms late, each request's span in the server) from the benchmark's skops logistic artifact
(28 features), pinned to one core; this process on the other sends one ``/predict`` at a time over one
keep-alive connection for ``--duration`` seconds and keeps each request's send and receive times on the same
monotonic clock. Then, for the requests at or above the p99 (and the p99.9), which server events overlapped
them, against how often the same events overlap any request: a cause is what the slow requests meet far more
often than the rest do. PostgreSQL (``--store postgresql``) is ``localenv.postgres`` on loopback, on the
client's core in the idle scheduling class (``run.put_aside``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from model_server.demo_artifact import build_demo_artifact, train  # noqa: E402
from model_server.testing import LOOPBACK, free_port, wait_until  # noqa: E402

N_FEATURES = 28
# The order a slow request is blamed in when it met several events: the longest, rarest first.
CAUSES = ("gc gen2", "gc gen1", "drift compute", "store thread call", "gc gen0", "event loop late")


def one_request(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answered {head[:100]!r}")
    while len(body) < length:
        body += sock.recv(65536)


def drive(port: int, request: bytes, seconds: float) -> list[tuple[int, int]]:
    spans = []
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic_ns() + int(seconds * 1e9)
        while True:
            t0 = time.monotonic_ns()
            if t0 > deadline:
                return spans
            one_request(sock, request)
            spans.append((t0, time.monotonic_ns()))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_delay_ns(pid: int) -> dict[str, int]:
    """Per thread of ``pid`` (by name): nanoseconds it waited, runnable, for a CPU (``/proc/.../schedstat``)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0) + int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def attribute(spans: list[tuple[int, int]], trace: dict[str, Any]) -> list[str]:
    by_kind: dict[str, list[tuple[int, int, int]]] = {}
    first, last = spans[0][0], spans[-1][1]
    for kind, start, end, extra in trace["events"]:
        if end >= first and start <= last:  # the measured window only (not start-up, warm-up or shutdown)
            by_kind.setdefault(kind, []).append((start, end, extra))
    starts = {k: [e[0] for e in sorted(v)] for k, v in by_kind.items()}
    ordered = {k: sorted(v) for k, v in by_kind.items()}
    longest = {k: max(e[1] - e[0] for e in v) for k, v in by_kind.items()}

    def met(kind: str, t0: int, t1: int) -> bool:
        if kind not in ordered:
            return False
        # Events that start before t1 and end after t0 (events of a kind last at most longest[kind]).
        i = bisect.bisect_left(starts[kind], t0 - longest[kind])
        j = bisect.bisect_right(starts[kind], t1)
        return any(e[1] > t0 for e in ordered[kind][i:j])

    latencies = [(t1 - t0) / 1000 for t0, t1 in spans]
    duration = (spans[-1][1] - spans[0][0]) / 1e9
    lines = [f"{len(spans):,} requests in {duration:.1f} s at concurrency 1; latency (µs, client side) "
             f"p50 {pct(latencies, 0.5):,.0f}, p99 {pct(latencies, 0.99):,.0f}, p99.9 {pct(latencies, 0.999):,.0f}, "
             f"max {max(latencies):,.0f}", "",
             "Server events during the run:", "",
             "| event | per second | median (µs) | p99 (µs) | max (µs) | CPU share of its wall time |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind in sorted(by_kind):
        walls = [(e[1] - e[0]) / 1000 for e in by_kind[kind]]
        cpu = ""
        if kind in ("store thread call", "drift compute"):
            cpu = f"{sum(e[2] for e in by_kind[kind]) / max(1, sum(e[1] - e[0] for e in by_kind[kind])):.0%}"
        lines.append(f"| {kind} | {len(walls) / duration:,.1f} | {statistics.median(walls):,.0f} | "
                     f"{pct(walls, 0.99):,.0f} | {max(walls):,.0f} | {cpu} |")
    base = {k: sum(met(k, t0, t1) for t0, t1 in spans) / len(spans) for k in CAUSES}
    for label, q in (("p99", 0.99), ("p99.9", 0.999)):
        threshold = pct(latencies, q) * 1000
        slow = [(t0, t1) for t0, t1 in spans if t1 - t0 >= threshold]
        blamed: Counter[str] = Counter()
        excess: dict[str, list[float]] = {}
        for t0, t1 in slow:
            cause = next((k for k in CAUSES if met(k, t0, t1)), "none of these")
            blamed[cause] += 1
            excess.setdefault(cause, []).append((t1 - t0) / 1000)
        lines += ["", f"Requests at or above the {label} ({threshold / 1000:,.0f} µs): {len(slow)}; each blamed on "
                  "the first event in the table's order that overlapped it", "",
                  "| cause | slow requests | share | their median latency (µs) | share of ALL requests it overlaps |",
                  "|---|---:|---:|---:|---:|"]
        for cause, n in blamed.most_common():
            lines.append(f"| {cause} | {n} | {n / len(slow):.0%} | {statistics.median(excess[cause]):,.0f} | "
                         f"{base.get(cause, 0):.1%} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--switch-interval", type=float, help="the GIL switch interval to serve with (seconds; "
                        "default: the server's own)")
    parser.add_argument("--json", type=Path, help="also write the raw spans and the trace here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mw-tail-"))
    pg = None
    try:
        trained = train("logistic", N_FEATURES, 5000, seed=0)
        artifact = build_demo_artifact(work / "artifact", kind="logistic", fmt="skops", trained=trained)
        if args.store == "postgresql":
            from localenv import postgres as postgres_env

            pg = postgres_env.start()
            dsn = pg.dsn
            if (os.cpu_count() or 1) >= 2:  # aside, on the client's core, as run.py puts it on wrk's
                from run import put_aside

                put_aside(int((pg.data_dir / "postmaster.pid").read_text().split()[0]), "0")
        else:
            dsn = str(work / "feedback.sqlite3")
        port = free_port()
        env = {**os.environ, **artifact.env("bench", "1.0.0"), "FEEDBACK_DSN": dsn, "LOG_LEVEL": "WARNING",
               "HOST": LOOPBACK, "PORT": str(port), "TRACE_OUT": str(work / "trace.json"),
               "STORE_THREAD_IDLE": "true"}  # as in the operator's pods (run.py)
        if args.switch_interval:
            env["GIL_SWITCH_SECONDS"] = str(args.switch_interval)
        features = list(artifact.features)
        random.Random(0).shuffle(features)
        row = trained[1][1]
        body = json.dumps({"features": {f: float(row[artifact.features.index(f)]) for f in features}}).encode()
        request = (f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        pin = (os.cpu_count() or 1) >= 2
        with (work / "server.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("traced_server.py"))], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: httpx.get(f"http://{LOOPBACK}:{port}/v2/health/ready").status_code == 200, 60,
                       "the traced server")
            if pin:
                subprocess.run(["taskset", "-a", "-p", "-c", "1", str(proc.pid)], check=True, capture_output=True)
                os.sched_setaffinity(0, {0})
            drive(port, request, 3)  # warm-up
            load = os.getloadavg()[0]
            waited = run_delay_ns(proc.pid)
            spans = drive(port, request, args.duration)
            waited = {k: v - waited.get(k, 0) for k, v in run_delay_ns(proc.pid).items()}
            load = max(load, os.getloadavg()[0])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        trace = json.loads((work / "trace.json").read_text())
        print(f"store {args.store}; GIL switch interval {args.switch_interval or 'the server default'}; "
              f"pinned {pin} (server CPU 1, client CPU 0); 1-min load average up to {load:.1f}\n")
        print("\n".join(attribute(spans, trace)))
        print("\nTime the server's threads waited, runnable, for their core (schedstat run delay) during the run: "
              + ", ".join(f"{name} {ns / 1e6:,.0f} ms" for name, ns in sorted(waited.items(), key=lambda kv: -kv[1])
                          if ns > 1e6)
              + f" (µs per request: {sum(waited.values()) / 1000 / len(spans):,.1f})")
        if args.json:
            args.json.write_text(json.dumps({"spans": spans, **trace}))
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
