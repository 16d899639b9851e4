"""What mirroring costs the stable (issue 20): its req/s, p50 and p99 with the shadow mirror off and at 0%, 10%
and 100%, as ratios to "off" measured in the same run.

    .venv/bin/python bench/server/shadow_mirror.py [--duration 8] [--repeats 3]

The stable is ``python -m model_server`` (logistic regression, 28 features, skops; everything a production request
does is on) driven by wrk with one-row ``/predict`` requests at concurrency 1 and 32, pinned to one core; the
candidate (the same artifact, so every mirrored row is compared) and wrk share the other core. "off" has no
``SHADOW_TARGET_URL``; "0%" has one and samples nothing (the cost of the check itself). Each repeat starts every
stable afresh, warms it 3 s at concurrency 32 and rotates the order; the table gives the median of the repeats.
The stable's CPU time per answered request (user + system, from /proc, its mirror senders included) is the
number least disturbed by whatever else shares the machine: on a saturated core, throughput is its inverse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import serve_subprocess

CONFIGS = ("off", "0", "10", "100")


def counter(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextmanager
def stable(env: dict[str, str], log: Path, cpu: str | None) -> Iterator[tuple[str, int]]:
    """The stable's base URL and pid (pinned to ``cpu``)."""
    with serve_subprocess(env, log_path=log) as (url, proc):
        if cpu is not None:
            run.subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(proc.pid)], check=True, capture_output=True)
        yield url, proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: what a request costs, whatever else shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu, load_cpu = ("1", "0") if pin else (None, None)
    work = Path(tempfile.mkdtemp(prefix="mw-bench-shadow-"))
    art = build_demo_artifact(work / "model", trained=train("logistic", run.N_FEATURES, 5000, seed=0))
    body = json.dumps({"features": {f: 0.5 for f in reversed(art.features)}}).encode()
    base = {**art.env("bench", "v1"), "WARMUP_ROUNDS": "5"}
    samples: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    mirrored: dict[str, list[tuple[float, ...]]] = {}
    started = time.monotonic()
    candidate_env = {**art.env("bench", "v2"), "MODEL_TRACK": "canary", "FEEDBACK_DSN": str(work / "cand.sqlite3")}
    with serve_subprocess(candidate_env, log_path=work / "candidate.log") as (candidate, proc):
        if load_cpu is not None:
            run.subprocess.run(["taskset", "-a", "-p", "-c", load_cpu, str(proc.pid)], check=True,
                               capture_output=True)
        for repeat in range(args.repeats):
            order = CONFIGS[repeat % len(CONFIGS):] + CONFIGS[:repeat % len(CONFIGS)]
            for config in order:
                env = {**base, "FEEDBACK_DSN": str(work / f"stable-{repeat}-{config}.sqlite3")}
                if config != "off":
                    env |= {"SHADOW_TARGET_URL": candidate, "SHADOW_PERCENT": config}
                run.progress(f"repeat {repeat + 1}/{args.repeats}: mirroring {config}")
                with stable(env, work / f"stable-{config}.log", server_cpu) as (stable_url, pid):
                    endpoint = run.Endpoint(f"{stable_url}/predict", body, None)
                    script = run._script(work, endpoint)
                    run.wrk(endpoint.url, script, 32, run.WARMUP_SECONDS, load_cpu)
                    before = (counter(stable_url, "ml_shadow_mirrored_total", result="sent"),
                              counter(stable_url, "ml_shadow_mirrored_total", result="dropped"),
                              counter(candidate, "ml_shadow_compared_total"))
                    for concurrency in run.CONCURRENCIES:
                        cpu_before = cpu_seconds(pid)
                        rps, p50, p99, errors = run.wrk(endpoint.url, script, concurrency, args.duration, load_cpu)
                        if errors:
                            raise RuntimeError(f"{errors} non-2xx answers at {config}")
                        cpu_us = (cpu_seconds(pid) - cpu_before) / (rps * args.duration) * 1e6
                        samples.setdefault((config, concurrency), []).append((rps, p50, p99, cpu_us))
                    time.sleep(1)
                    after = (counter(stable_url, "ml_shadow_mirrored_total", result="sent"),
                             counter(stable_url, "ml_shadow_mirrored_total", result="dropped"),
                             counter(candidate, "ml_shadow_compared_total"))
                    mirrored.setdefault(config, []).append(tuple(a - b for a, b in zip(after, before, strict=True)))
    print(f"\n{os.cpu_count()} CPUs; pinned: {pin} (stable on CPU {server_cpu}; wrk and the candidate on CPU "
          f"{load_cpu}); {args.repeats} repeats of {args.duration:g} s; {time.monotonic() - started:.0f} s\n")
    print("| mirroring | concurrency | req/s | p50 | p99 | stable CPU per request | req/s vs off | p50 vs off | "
          "p99 vs off | CPU per request vs off |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for concurrency in run.CONCURRENCIES:
        off = [statistics.median(x) for x in zip(*samples[("off", concurrency)], strict=True)]
        for config in CONFIGS:
            rps, p50, p99, cpu = (statistics.median(x) for x in zip(*samples[(config, concurrency)], strict=True))
            label = config if config == "off" else f"{config}%"
            print(f"| {label} | {concurrency} | {rps:,.0f} | {p50:,.0f} µs | {p99:,.0f} µs | {cpu:,.0f} µs | "
                  f"{rps / off[0]:.3f} | {p50 / off[1]:.3f} | {p99 / off[2]:.3f} | {cpu / off[3]:.3f} |")
    print("\n| mirroring | rows sent during the measured runs (median) | dropped | compared by the candidate |")
    print("|---|---|---|---|")
    for config in CONFIGS:
        if config != "off":
            sent, dropped, compared = (statistics.median(x) for x in zip(*mirrored[config], strict=True))
            print(f"| {config}% | {sent:,.0f} | {dropped:,.0f} | {compared:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
