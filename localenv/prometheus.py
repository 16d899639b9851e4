"""A real Prometheus (Debian's package) on loopback with a throw-away TSDB, and promtool backfilling.

Backfilled history is written as OpenMetrics and turned into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics`` *before* the server starts, so it is queryable at once.
Keep backfilled history a few hours older than now: the newest hours belong to the server's head block.
"""

from __future__ import annotations

import json
import math
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localenv._proc import (
    EnvironmentStartError,
    free_port,
    require_debian_package,
    run,
    start_process,
    stop_pid,
    wait_until,
)


@dataclass(frozen=True)
class Series:
    """One time series to backfill: ``points`` are (unix seconds, value); NaN is allowed."""

    name: str
    labels: Mapping[str, str]
    points: Sequence[tuple[float, float]]
    type: str = "gauge"


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def to_openmetrics(series: Iterable[Series]) -> str:
    """Render series as OpenMetrics text: families contiguous, timestamps in seconds, ``# EOF`` last."""
    families: dict[str, list[Series]] = {}
    types: dict[str, str] = {}
    for s in series:
        families.setdefault(s.name, []).append(s)
        types.setdefault(s.name, s.type)
    lines: list[str] = []
    for name, members in families.items():
        lines.append(f"# TYPE {name} {types[name]}")
        for s in members:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            selector = f"{name}{{{labels}}}" if labels else name
            for ts, value in sorted(s.points):
                lines.append(f"{selector} {_format_value(value)} {ts:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def backfill(data_dir: Path, series: Iterable[Series]) -> None:
    """Write ``series`` into ``data_dir`` as TSDB blocks (promtool). Call before starting the server."""
    promtool = require_debian_package("promtool", "prometheus")
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / f"{data_dir.name}-backfill.om"
    source.write_text(to_openmetrics(series))
    run([promtool, "tsdb", "create-blocks-from", "openmetrics", source, data_dir], "promtool backfill")


@dataclass
class Prometheus:
    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the ``result`` list. ``at`` is a unix time (default: now)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def query_requests_answered(self) -> int:
        """Prometheus' own count of the query API requests it answered (instant and range): what a client's
        own count of the queries it sent is checked against."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("prometheus_http_requests_total{")
                         and ('handler="/api/v1/query"' in line or 'handler="/api/v1/query_range"' in line)))

    def stop(self) -> None:
        stop_pid(self.process.pid)
        self.process.wait()

    def running(self) -> bool:
        return self.process.poll() is None


def start(
    work_dir: Path,
    scrape_targets: Iterable[str] = (),
    scrape_interval: str = "1s",
    rule_files: Iterable[Path] = (),
    backfilled: Iterable[Series] = (),
    file_sd: Path | None = None,
    host: str = "127.0.0.1",
) -> Prometheus:
    """Start Prometheus on a free loopback port, scraping ``scrape_targets`` (``host:port``) as job ``test``,
    and the targets listed in the ``file_sd`` JSON file (re-read when it changes) as job ``servers``."""
    binary = require_debian_package("prometheus", "prometheus")
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = work_dir / "tsdb"
    series = list(backfilled)
    if series:
        backfill(data_dir, series)
    targets = list(scrape_targets)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "test", "static_configs": [{"targets": targets}]}] if targets else [],
    }
    if file_sd is not None:
        config["scrape_configs"].append({"job_name": "servers",
                                         "file_sd_configs": [{"files": [str(file_sd)], "refresh_interval": "2s"}]})
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log_path = work_dir / "prometheus.log"
    process = start_process([
        binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=60d",
        "--web.enable-lifecycle", "--log.level=warn",
    ], log_path)
    url = f"http://{host}:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    try:
        wait_until(ready, timeout=60, what="prometheus", log_path=log_path, process=process)
    except EnvironmentStartError:
        stop_pid(process.pid)
        raise
    return Prometheus(url=url, data_dir=data_dir, log_path=log_path, process=process)
