"""Benchmark: one operator replica governing 100, 300 and 1,000 MLModels (issue 8).

    .venv/bin/python -m bench.scale [--counts 100 300 1000] [--interval 30] [--per-namespace 10]
                                    [--rollbacks 3] [--promote-all] [--skip-baselines]

Each count runs on a fresh control plane (Kubernetes, KWOK nodes) with a real Prometheus scraping an
exporter that plays every model's metrics (namespace, model, version labels, as the servers and recording
rules produce them), and the real operator process at the default 30 s evaluation interval. The models are
spread over namespaces (``--per-namespace`` each), every one approved by finance and regulatory before it is
created, one replica each. Measured:

- **to Stable**: from the first MLModel create to every model ``Stable`` (its stable Deployment Ready), beside
  a baseline measured first on the same control plane: as many one-replica Deployments, created by this process
  the same way (8 threads), until all are Ready — what Kubernetes and KWOK take with no operator in the way;
- **evaluation cycle**: the Prometheus queries one cycle issues and how long they take, and the wall time from
  the cycle's start until every model has decided on its numbers (operator log, median of the steady cycles);
- **operator RSS** (steady and peak) and **CPU** (share of one core over a steady window of two cycles);
- **apply → Deployment** p50/p95 for 20 more models created one at a time while the fleet is governed, with
  the same process creating Deployments itself as the baseline;
- **the decision ledger's API writes** (issue 27): ModelLedger segment writes and ModelLedgerCheckpoint writes and
  reads from create to all Stable and per steady cycle, and the API server's mean time per checkpoint write (its
  own ``apiserver_request_duration_seconds``): what the checkpoint, written with every append, costs;
- **rollback**: ``--rollbacks`` models are promoted to v2 through a canary, then one at a time v2's burn rate
  jumps past 14.4x; from the exporter flip (trigger true at the next scrape) and from the evaluation cycle that
  saw it to the stable Deployment Ready on v1's sha256 with no canary;
- **the warm standby's cost** (issue 24, ``--promote-all``): every model promoted v1 → v2 through its canary, so
  each keeps a Ready ``<model>-standby`` of v1 (the default ``spec.rollback.standby``); then the steady cycles
  measured with the standbys, then the same fleet patched to ``rollback: {standby: {replicas: 0}}`` and measured
  again: cycle time, the API writes per minute by resource (the API server's own ``apiserver_request_total``),
  operator RSS and CPU, the objects the standbys add, and how long promoting the whole fleet takes.

Progress goes to stderr; the table for ``bench/README.md`` to stdout (``--json`` also writes the raw figures).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench.common import (
    FEEDBACK_STORE,
    Approvers,
    DeploymentWatch,
    Exporter,
    ModelKey,
    PhaseWatch,
    ReadyWatch,
    baseline_deployment,
    log_times,
    percentile,
    restored_on,
)
from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from localenv import prometheus as prometheus_env
from modelwarden.api import v1alpha1 as api

APPLY_SAMPLES = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


@dataclass
class Steady:
    """Steady evaluation cycles: nothing asked of the operator but its periodic evaluation."""

    window_seconds: float = math.nan
    cycles: int = 0
    cycle_seconds: float = math.nan  # median, cycle start → every model decided
    cycle_seconds_max: float = math.nan
    writes_per_minute: dict[str, float] = field(default_factory=dict)  # by WRITE_KINDS, from the API server
    rss_mib: float = math.nan
    cpu_share: float = math.nan
    status_changed: dict[str, int] = field(default_factory=dict)  # what the MLModel status writes changed


@dataclass
class StandbyCost:
    """The whole fleet promoted v1 → v2, measured with each model's standby of v1 and then without."""

    promote_seconds: float = math.nan  # first v2 patch → every model on v2, no canary, every standby Ready
    promote_cpu_seconds: float = math.nan
    standby_off_seconds: float = math.nan  # the replicas-0 patch → no standby Deployment or pod left
    peak_rss_mib: float = math.nan  # the operator's, over its whole life, at the end
    objects_with: dict[str, int] = field(default_factory=dict)
    objects_without: dict[str, int] = field(default_factory=dict)
    before_promotion: Steady = field(default_factory=Steady)
    with_standby: Steady = field(default_factory=Steady)
    without_standby: Steady = field(default_factory=Steady)


@dataclass
class Level:
    models: int
    namespaces: int
    create_seconds: float = math.nan
    to_stable_seconds: float = math.nan
    baseline_ready_seconds: float = math.nan
    queries_per_cycle: list[int] = field(default_factory=list)
    query_seconds: float = math.nan
    cycle_seconds: float = math.nan
    status_writes_per_cycle: float = math.nan
    ledger_writes_to_stable: float = math.nan
    checkpoint_writes_to_stable: float = math.nan
    checkpoint_reads_to_stable: float = math.nan
    checkpoint_writes_per_cycle: float = math.nan
    checkpoint_write_ms: float = math.nan
    segment_write_ms: float = math.nan
    rss_mib: float = math.nan
    peak_rss_mib: float = math.nan
    cpu_share: float = math.nan
    cpu_seconds_to_stable: float = math.nan
    apply_p50: float = math.nan
    apply_p95: float = math.nan
    baseline_p50: float = math.nan
    baseline_p95: float = math.nan
    rollback_trigger_seconds: list[float] = field(default_factory=list)
    rollback_from_evaluation_seconds: list[float] = field(default_factory=list)
    standby: StandbyCost | None = None


def proc_memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def proc_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2:].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK  # utime, stime


WRITES = ("POST", "PUT", "PATCH", "APPLY")


def requests(cluster: cluster_env.Cluster, resource: str, verbs: tuple[str, ...]) -> tuple[float, float]:
    """(requests answered, seconds spent on them) for ``resource`` and ``verbs``, from the API server's own
    counters (apiserver_request_total, apiserver_request_duration_seconds_sum)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    count = seconds = 0.0
    for line in text.splitlines():
        if f'resource="{resource}"' not in line or not any(f'verb="{v}"' in line for v in verbs):
            continue
        if line.startswith("apiserver_request_total{"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("apiserver_request_duration_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
    return count, seconds


# What the operator writes, by the API server's (resource, subresource) of each write request. Only the operator
# writes these in this bench once the fleet is created (the bench itself writes nothing in a steady window; the
# controller manager writes Deployments only through their status subresource), except Events, which the
# controllers also record (core/v1 Events; the scheduler's are events.k8s.io). apiserver_request_total has no user
# label, so the operator's writes are told apart by resource.
CONTROLLER_WRITES = "Deployment status, ReplicaSets, Pods, EndpointSlices (controllers, KWOK)"
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
WRITE_KINDS: dict[str, tuple[tuple[str, str, str], ...]] = {  # kind -> ((group, resource, subresource), ...)
    "Deployments": (("apps", "deployments", ""),),
    "Services": (("", "services", ""),),
    "MLModel status": ((api.GROUP, api.MLMODEL_PLURAL, "status"),),
    "MLModel metadata": ((api.GROUP, api.MLMODEL_PLURAL, ""),),
    "ModelLedger": ((api.GROUP, api.LEDGER_PLURAL, ""),),
    "ModelLedgerCheckpoint": ((api.GROUP, api.CHECKPOINT_PLURAL, ""),),
    "Events": (("", "events", ""), ("events.k8s.io", "events", "")),
    # what the controllers and KWOK write for the operator's objects: context, not the operator's own writes
    CONTROLLER_WRITES: (
        ("apps", "deployments", "status"), ("apps", "replicasets", ""), ("apps", "replicasets", "status"),
        ("", "pods", ""), ("", "pods", "status"), ("", "pods", "binding"),
        ("discovery.k8s.io", "endpointslices", "")),
}
OPERATOR_WRITE_KINDS = ("Deployments", "Services", "MLModel status", "MLModel metadata", "ModelLedger",
                        "ModelLedgerCheckpoint", "Events")


def metric_labels(line: str) -> dict[str, str]:
    """The labels of one Prometheus text-format sample line (values here carry no escaped quotes)."""
    inside = line[line.index("{") + 1: line.rindex("}")]
    out = {}
    for part in inside.split('",'):
        name, _, value = part.partition("=")
        out[name.strip(", ")] = value.strip('"')
    return out


def writes_by_kind(metrics_text: str) -> dict[str, float]:
    """Write requests the API server has answered, by WRITE_KINDS, plus "all" (every write, every client), from
    its own ``apiserver_request_total``."""
    where = {key: kind for kind, keys in WRITE_KINDS.items() for key in keys}
    out = dict.fromkeys([*WRITE_KINDS, "all"], 0.0)
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = metric_labels(line)
        if labels.get("verb") not in WRITE_VERBS:
            continue
        value = float(line.rsplit(" ", 1)[1])
        out["all"] += value
        kind = where.get((labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", "")))
        if kind is not None:
            out[kind] += value
    return out


def fleet_objects(fleet: Fleet) -> dict[str, int]:
    """The models' Deployments, ReplicaSets and Pods by track (the bench's own baseline objects excluded)."""
    selector = api.LABEL_TRACK
    out: dict[str, int] = {}
    listings: list[tuple[str, Callable[..., Any]]] = [
        ("Deployments", fleet.apps.list_deployment_for_all_namespaces),
        ("ReplicaSets", fleet.apps.list_replica_set_for_all_namespaces),
        ("Pods", fleet.core.list_pod_for_all_namespaces)]
    for what, list_all in listings:
        items = list_all(label_selector=selector).items
        out[what] = len(items)
        out[f"{what} (standby)"] = sum(1 for o in items if (o.metadata.labels or {}).get(api.LABEL_TRACK) == "standby")
    return out


def wait(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Fleet:
    """The benchmark's API access: admin for models, the approver identities for approvals."""

    def __init__(self, cluster: cluster_env.Cluster, work: Path) -> None:
        def api_client(user: str) -> client.ApiClient:
            return config.new_client_from_config(config_file=str(cluster.kubeconfigs[user]))  # type: ignore[no-untyped-call]

        admin = api_client("admin")
        self.core, self.apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
        self.custom = client.CustomObjectsApi(admin)
        self.approvers = Approvers(cluster)
        self.artifacts: dict[str, tuple[str, str]] = {}
        for v in ("v1", "v2"):
            data = f"scale bench {v}".encode()
            (work / f"{v}.skops").write_bytes(data)
            self.artifacts[v] = ((work / f"{v}.skops").as_uri(), hashlib.sha256(data).hexdigest())

    def namespace(self, name: str) -> None:
        self.core.create_namespace(cluster_env.simulated_nodes_namespace(name))

    def approve(self, key: ModelKey, version: str) -> None:
        self.approvers.approve(key[0], key[1], version, self.artifacts[version][1])

    def create_model(self, key: ModelKey, interval: int) -> None:
        ns, model = key
        uri, sha = self.artifacts["v1"]
        self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, {
            "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": model},
            "spec": {"version": "v1", "artifact": {"uri": uri, "sha256": sha},
                     "featureContract": {"name": "fc", "features": ["a"], "nFeatures": 1},
                     "serving": {"replicas": 1, "feedbackStore": FEEDBACK_STORE},
                     "rollout": {"steps": [{"setWeight": 100, "pauseSeconds": 0}],
                                 "analysis": {"intervalSeconds": interval}}}})

    def to_version(self, key: ModelKey, version: str) -> None:
        uri, sha = self.artifacts[version]
        patch = {"spec": {"version": version, "artifact": {"uri": uri, "sha256": sha}}}
        self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, key[0], api.MLMODEL_PLURAL, key[1], patch)

    def set_standby_replicas(self, key: ModelKey, replicas: int) -> None:
        patch = {"spec": {"rollback": {"standby": {"replicas": replicas}}}}
        self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, key[0], api.MLMODEL_PLURAL, key[1], patch)


def in_parallel(fn: Callable[[ModelKey], None], keys: Iterable[ModelKey], threads: int = 8) -> None:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(fn, k) for k in keys]:
            future.result()


def steady_cycles(log: str, after: float) -> tuple[list[int], list[float], list[float]]:
    """Queries per cycle, query seconds and decide-everything seconds of the cycles that started after ``after``."""
    queries, query_seconds, cycle_seconds = [], [], []
    for stamp, line in log_times(log, "evaluation: "):
        if stamp > after:
            words = line.split("evaluation: ", 1)[1].split()
            queries.append(int(words[0]))
            query_seconds.append(float(words[-1].rstrip("s")))
    for stamp, line in log_times(log, "evaluation cycle: every model decided"):
        if stamp > after:
            cycle_seconds.append(float(line.rsplit("decided ", 1)[1].split("s ")[0]))
    return queries, query_seconds, cycle_seconds


def measure_steady(cluster: cluster_env.Cluster, operator: modelwarden_env.OperatorProcess, phases: PhaseWatch,
                   interval: int, cycles: int) -> tuple[Steady, dict[str, float], list[int], list[float]]:
    """``cycles`` evaluation intervals (plus 5 s) of doing nothing: the figures, the writes counted in the window,
    and the queries and query seconds of each cycle in it."""
    assert operator.process is not None
    pid = operator.process.pid
    steady = Steady()
    started_at = time.time()
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    writes0 = writes_by_kind(cluster.kubectl("get", "--raw", "/metrics").stdout)
    phases.changed.clear()
    phases.recording = True
    time.sleep(cycles * interval + 5)
    phases.recording = False
    steady.window_seconds = time.monotonic() - t0
    steady.cpu_share = (proc_cpu_seconds(pid) - cpu0) / steady.window_seconds
    writes1 = writes_by_kind(cluster.kubectl("get", "--raw", "/metrics").stdout)
    writes = {kind: writes1[kind] - writes0[kind] for kind in writes1}
    steady.writes_per_minute = {kind: 60 * count / steady.window_seconds for kind, count in writes.items()}
    steady.rss_mib = proc_memory_mib(pid)[0]
    queries, query_seconds, cycle_seconds = steady_cycles(operator.log(), started_at)
    steady.cycles = len(query_seconds)
    steady.cycle_seconds = statistics.median(cycle_seconds) if cycle_seconds else math.nan
    steady.cycle_seconds_max = max(cycle_seconds) if cycle_seconds else math.nan
    steady.status_changed = dict(phases.changed.most_common(8))
    return steady, writes, queries, query_seconds


def fleet_settled(fleet: Fleet) -> bool:
    """No canary left, and every pod the models' Deployments ask for exists and no other (KWOK has removed the
    old ones): what the steady windows start from."""
    deployments: list[Any] = fleet.apps.list_deployment_for_all_namespaces(label_selector=api.LABEL_TRACK).items
    pods = fleet.core.list_pod_for_all_namespaces(label_selector=api.LABEL_TRACK).items
    wanted = sum(int(d.spec.replicas or 0) for d in deployments)
    ready = sum(int(d.status.ready_replicas or 0) for d in deployments)
    canaries = sum(1 for d in deployments if (d.metadata.labels or {}).get(api.LABEL_TRACK) == "canary")
    return canaries == 0 and len(pods) == wanted == ready


def standby_cost(n: int, keys: list[ModelKey], args: argparse.Namespace, cluster: cluster_env.Cluster,
                 fleet: Fleet, operator: modelwarden_env.OperatorProcess, phases: PhaseWatch,
                 before: Steady) -> StandbyCost:
    """Promote ``keys`` v1 → v2 (each keeps a standby of v1), measure; turn their standbys off, measure."""
    assert operator.process is not None
    pid = operator.process.pid
    cost = StandbyCost(before_promotion=before)
    say(f"{n} models: promote-all: approving v2 for {len(keys)} models")
    in_parallel(lambda k: fleet.approve(k, "v2"), keys)
    standbys = ReadyWatch(fleet.apps, f"{api.LABEL_TRACK}=standby")
    wanted_standbys = {(ns, f"{model}-standby") for ns, model in keys}
    say(f"{n} models: promote-all: v2 to {len(keys)} models through their canaries")
    cpu0, started = proc_cpu_seconds(pid), time.monotonic()
    in_parallel(lambda k: fleet.to_version(k, "v2"), keys)
    last_said = [0.0]

    def promoted(s: api.MLModelStatus) -> bool:
        return s.stable is not None and s.stable.version == "v2" and s.canary is None

    def all_promoted() -> bool:
        done, ready = phases.count(keys, promoted), len(wanted_standbys & standbys.ready)
        if time.monotonic() - last_said[0] >= 15 or (done, ready) == (len(keys), len(keys)):
            say(f"  {done}/{len(keys)} promoted, {ready} standbys Ready after {time.monotonic() - started:.0f}s")
            last_said[0] = time.monotonic()
        return done == ready == len(keys)

    wait(all_promoted, 300 + n * 3, f"{len(keys)} models promoted with their standbys Ready", every=1)
    cost.promote_seconds = time.monotonic() - started
    cost.promote_cpu_seconds = proc_cpu_seconds(pid) - cpu0
    standbys.stop()
    wait(lambda: fleet_settled(fleet), 120 + n * 0.5, "the fleet's pods settled", every=5)
    time.sleep(args.interval)  # one whole cycle after the churn before the window opens
    cost.objects_with = fleet_objects(fleet)
    say(f"{n} models: promote-all in {cost.promote_seconds:.1f}s; objects {cost.objects_with}; "
        f"measuring {args.steady_cycles} steady cycles with the standbys")
    cost.with_standby = measure_steady(cluster, operator, phases, args.interval, args.steady_cycles)[0]
    say(f"{n} models: with standby {json.dumps(asdict(cost.with_standby))}")

    say(f"{n} models: rollback.standby.replicas 0 on {len(keys)} models")
    started = time.monotonic()
    in_parallel(lambda k: fleet.set_standby_replicas(k, 0), keys)

    def no_standby() -> bool:
        objects = fleet_objects(fleet)
        return objects["Deployments (standby)"] == objects["Pods (standby)"] == 0

    wait(no_standby, 120 + n * 1.5, "every standby removed", every=5)
    cost.standby_off_seconds = time.monotonic() - started
    wait(lambda: fleet_settled(fleet), 120 + n * 0.5, "the fleet's pods settled", every=5)
    time.sleep(args.interval)
    cost.objects_without = fleet_objects(fleet)
    say(f"{n} models: standbys removed in {cost.standby_off_seconds:.1f}s; objects {cost.objects_without}; "
        f"measuring {args.steady_cycles} steady cycles without")
    cost.without_standby = measure_steady(cluster, operator, phases, args.interval, args.steady_cycles)[0]
    say(f"{n} models: without standby {json.dumps(asdict(cost.without_standby))}")
    cost.peak_rss_mib = proc_memory_mib(pid)[1]
    operator.check_alive()
    return cost


def run_level(n: int, args: argparse.Namespace, work: Path) -> Level:
    per_ns = args.per_namespace
    level = Level(models=n, namespaces=math.ceil(n / per_ns))
    say(f"{n} models: a fresh control plane")
    cluster_env.down()
    cluster = cluster_env.up()
    modelwarden_env.install(cluster)
    fleet = Fleet(cluster, work)
    namespaces = [f"fleet-{i:03d}" for i in range(level.namespaces)]
    for ns in [*namespaces, "bench-apply"]:
        fleet.namespace(ns)
    models = [(namespaces[i // per_ns], f"m{i:04d}") for i in range(n)]
    exporter = Exporter(models)
    prom = prometheus_env.start(work / f"prometheus-{n}", scrape_targets=[exporter.target], scrape_interval="2s")
    log_path = work / f"operator-{n}.log"
    operator = modelwarden_env.OperatorProcess(cluster, log_path, env={
        "MODELWARDEN_PROMETHEUS_URL": prom.url, "MODELWARDEN_EVALUATION_INTERVAL": str(args.interval)}).start()
    assert operator.process is not None
    pid = operator.process.pid
    try:
        if not args.skip_baselines:
            say(f"{n} models: baseline, the control plane alone: {n} one-replica Deployments created the same way")
            ready = ReadyWatch(fleet.apps, "modelwarden.io/bench=baseline")
            started = time.monotonic()
            in_parallel(lambda k: fleet.apps.create_namespaced_deployment(
                k[0], baseline_deployment(f"baseline-{k[1]}", replicas=1)), models)
            wait(lambda: len(ready.ready) >= n, 60 + n * 1.5, f"{n} baseline Deployments Ready", every=0.2)
            level.baseline_ready_seconds = time.monotonic() - started
            ready.stop()
            say(f"{n} models: baseline Ready in {level.baseline_ready_seconds:.1f}s")

        say(f"{n} models: approving v1 (finance + regulatory) in {level.namespaces} namespaces")
        in_parallel(lambda k: fleet.approve(k, "v1"), models)
        cpu_before = proc_cpu_seconds(pid)
        segment0 = requests(cluster, api.LEDGER_PLURAL, WRITES)
        checkpoint0 = requests(cluster, api.CHECKPOINT_PLURAL, WRITES)
        reads0 = requests(cluster, api.CHECKPOINT_PLURAL, ("GET",))
        phases = PhaseWatch(fleet.custom)
        say(f"{n} models: creating the MLModels")
        started = time.monotonic()
        in_parallel(lambda k: fleet.create_model(k, args.interval), models)
        level.create_seconds = time.monotonic() - started

        last_said = [0.0]

        def all_stable() -> bool:
            stable = phases.count(models, lambda s: s.phase == "Stable")
            if time.monotonic() - last_said[0] >= 10 or stable == n:
                say(f"  {stable}/{n} Stable after {time.monotonic() - started:.0f}s")
                last_said[0] = time.monotonic()
            return stable == n

        wait(all_stable, 60 + n * 1.5, f"{n} models Stable", every=0.2)
        level.to_stable_seconds = time.monotonic() - started
        level.cpu_seconds_to_stable = proc_cpu_seconds(pid) - cpu_before
        segment1 = requests(cluster, api.LEDGER_PLURAL, WRITES)
        checkpoint1 = requests(cluster, api.CHECKPOINT_PLURAL, WRITES)
        level.ledger_writes_to_stable = segment1[0] - segment0[0]
        level.checkpoint_writes_to_stable = checkpoint1[0] - checkpoint0[0]
        level.checkpoint_reads_to_stable = requests(cluster, api.CHECKPOINT_PLURAL, ("GET",))[0] - reads0[0]
        if level.checkpoint_writes_to_stable:
            level.checkpoint_write_ms = 1000 * (checkpoint1[1] - checkpoint0[1]) / level.checkpoint_writes_to_stable
        if level.ledger_writes_to_stable:
            level.segment_write_ms = 1000 * (segment1[1] - segment0[1]) / level.ledger_writes_to_stable
        say(f"{n} models: ledger {level.ledger_writes_to_stable:.0f} segment writes, "
            f"{level.checkpoint_writes_to_stable:.0f} checkpoint writes ({level.checkpoint_write_ms:.1f} ms each), "
            f"{level.checkpoint_reads_to_stable:.0f} checkpoint reads to Stable")
        say(f"{n} models: all Stable in {level.to_stable_seconds:.1f}s; measuring {args.steady_cycles} steady cycles")

        before, steady_writes, queries, query_seconds = measure_steady(
            cluster, operator, phases, args.interval, args.steady_cycles)
        level.cpu_share, level.rss_mib = before.cpu_share, before.rss_mib
        level.peak_rss_mib = proc_memory_mib(pid)[1]
        level.queries_per_cycle = sorted(set(queries))
        level.query_seconds = statistics.median(query_seconds) if query_seconds else math.nan
        level.cycle_seconds = before.cycle_seconds
        if before.cycles:
            level.status_writes_per_cycle = steady_writes["MLModel status"] / before.cycles
            level.checkpoint_writes_per_cycle = steady_writes["ModelLedgerCheckpoint"] / before.cycles
        say(f"{n} models: {steady_writes['MLModel status']:.0f} status writes in the steady cycles; what they "
            f"changed: {before.status_changed or 'nothing'}")

        if not args.skip_baselines:
            say(f"{n} models: apply → Deployment, {APPLY_SAMPLES} more models one at a time")
            seen = DeploymentWatch(fleet.apps, "bench-apply")
            baseline, measured = [], []
            for i in range(APPLY_SAMPLES):
                name = f"baseline-{i}"
                t = time.monotonic()
                fleet.apps.create_namespaced_deployment("bench-apply", baseline_deployment(name))
                seen.wait([name], 30)
                baseline.append(seen.seen[name] - t)
            extra = [("bench-apply", f"a{i:02d}") for i in range(APPLY_SAMPLES)]
            in_parallel(lambda k: fleet.approve(k, "v1"), extra)
            for key in extra:
                t = time.monotonic()
                fleet.create_model(key, args.interval)
                seen.wait([f"{key[1]}-stable"], 120)
                measured.append(seen.seen[f"{key[1]}-stable"] - t)
            seen.stop()
            level.baseline_p50, level.baseline_p95 = percentile(baseline, 0.5), percentile(baseline, 0.95)
            level.apply_p50, level.apply_p95 = percentile(measured, 0.5), percentile(measured, 0.95)

        rolled = models[: args.rollbacks]
        say(f"{n} models: promoting v2 on {len(rolled)} of them through a canary")
        in_parallel(lambda k: fleet.approve(k, "v2"), rolled)
        for key in rolled:
            fleet.to_version(key, "v2")

        def promoted(s: api.MLModelStatus) -> bool:
            return s.stable is not None and s.stable.version == "v2" and s.canary is None

        wait(lambda: phases.count(rolled, promoted) == len(rolled), 10 * args.interval + 120, "v2 promoted")
        for key in rolled:
            exporter.bad.add(key)
            flipped = time.time()
            wait(lambda key=key: restored_on(fleet.apps, key[0], key[1], fleet.artifacts["v1"][1]),
                 3 * args.interval + 60, f"{key} restored")
            restored = time.time()
            log = operator.log()
            rollback_started = [t for t, line in log_times(log, "RollbackStarted") if f"{key[0]}/{key[1]} " in line]
            cycles = [t for t, _ in log_times(log, "evaluation: ") if rollback_started and t <= rollback_started[0]]
            level.rollback_trigger_seconds.append(restored - flipped)
            level.rollback_from_evaluation_seconds.append(restored - cycles[-1] if cycles else math.nan)
            say(f"  {key[0]}/{key[1]}: trigger → restored {restored - flipped:.1f}s, from the evaluation that saw "
                f"it {level.rollback_from_evaluation_seconds[-1]:.2f}s")
            time.sleep(args.interval / 3)  # the next trigger falls in another cycle
        operator.check_alive()
        if args.promote_all:
            # the models rolled back above stay as they are: v2 is rolled back there, not approvable again
            level.standby = standby_cost(n, models[len(rolled):], args, cluster, fleet, operator, phases, before)
        phases.stop()
    finally:
        operator.stop()
        prom.stop()
        exporter.stop()
    return level


def ratio(levels: list[Level], get: Callable[[Level], float]) -> str:
    first, last = get(levels[0]), get(levels[-1])
    return f"{last / first:.2f}x" if first and not math.isnan(first) and not math.isnan(last) else "n/a"


def table(levels: list[Level], interval: int) -> str:
    def s(v: float) -> str:
        return f"{v:.1f} s"

    def ms(v: float) -> str:
        return f"{v * 1000:.0f} ms"

    rows: list[tuple[str, Callable[[Level], float], Callable[[float], str]]] = [
        ("time until all Stable", lambda lv: lv.to_stable_seconds, s),
        ("  baseline: as many plain Deployments Ready", lambda lv: lv.baseline_ready_seconds, s),
        ("Prometheus queries per evaluation cycle", lambda lv: float(max(lv.queries_per_cycle or [0])),
         lambda v: f"{v:.0f}"),
        ("evaluation cycle: queries", lambda lv: lv.query_seconds, ms),
        ("evaluation cycle: start → every model decided", lambda lv: lv.cycle_seconds, lambda v: f"{v:.2f} s"),
        ("MLModel status writes per steady cycle (API server's count)", lambda lv: lv.status_writes_per_cycle,
         lambda v: f"{v:.1f}"),
        ("ledger segment writes, create → all Stable", lambda lv: lv.ledger_writes_to_stable, lambda v: f"{v:.0f}"),
        ("ledger checkpoint writes, create → all Stable", lambda lv: lv.checkpoint_writes_to_stable,
         lambda v: f"{v:.0f}"),
        ("ledger checkpoint reads, create → all Stable", lambda lv: lv.checkpoint_reads_to_stable,
         lambda v: f"{v:.0f}"),
        ("API server time per checkpoint write (mean)",
         lambda lv: lv.checkpoint_write_ms, lambda v: f"{v:.1f} ms"),
        ("  per segment write (mean)", lambda lv: lv.segment_write_ms, lambda v: f"{v:.1f} ms"),
        ("ledger checkpoint writes per steady cycle", lambda lv: lv.checkpoint_writes_per_cycle,
         lambda v: f"{v:.1f}"),
        ("operator RSS, steady", lambda lv: lv.rss_mib, lambda v: f"{v:.0f} MiB"),
        ("operator RSS, peak", lambda lv: lv.peak_rss_mib, lambda v: f"{v:.0f} MiB"),
        ("operator CPU, steady (share of one core)", lambda lv: lv.cpu_share, lambda v: f"{v * 100:.1f}%"),
        ("operator CPU seconds, create → all Stable", lambda lv: lv.cpu_seconds_to_stable, s),
        ("apply → Deployment p50", lambda lv: lv.apply_p50, ms),
        ("apply → Deployment p95", lambda lv: lv.apply_p95, ms),
        ("  baseline: direct Deployment create p50 / p95", lambda lv: lv.baseline_p50, ms),
        ("rollback: trigger true → restored (max)", lambda lv: max(lv.rollback_trigger_seconds or [math.nan]), s),
        ("rollback: evaluation that saw it → restored (max)",
         lambda lv: max(lv.rollback_from_evaluation_seconds or [math.nan]), lambda v: f"{v:.2f} s"),
    ]
    head = "| | " + " | ".join(f"{lv.models} models ({lv.namespaces} ns)" for lv in levels) + " | growth |"
    out = [head, "|---" * (len(levels) + 2) + "|"]
    for name, get, fmt in rows:
        cells = [fmt(get(lv)) for lv in levels]
        if name.endswith("p50 / p95"):
            cells = [f"{ms(lv.baseline_p50)} / {ms(lv.baseline_p95)}" for lv in levels]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {ratio(levels, get)} |")
    out.append(f"\nevaluation interval {interval} s; growth = value at {levels[-1].models} / at {levels[0].models}")
    return "\n".join(out)


def standby_table(level: Level, interval: int) -> str:
    """One count's standby cost: the steady figures before the promotion, with the standbys and without."""
    cost = level.standby
    assert cost is not None
    windows = (cost.before_promotion, cost.with_standby, cost.without_standby)

    def per_minute(kind: str) -> Callable[[Steady], float]:
        return lambda w: w.writes_per_minute.get(kind, math.nan)

    def row(name: str, get: Callable[[Steady], float], fmt: Callable[[float], str]) -> str:
        on, off = get(cost.with_standby), get(cost.without_standby)
        times = f"{on / off:.2f}x" if off and not math.isnan(on) and not math.isnan(off) else "n/a"
        return f"| {name} | " + " | ".join(fmt(get(w)) for w in windows) + f" | {times} |"

    out = [f"| {level.models} models ({level.namespaces} ns) | v1, never promoted | v2, standby of v1 on "
           f"(default) | v2, `standby.replicas: 0` | with / without |", "|---|---|---|---|---|",
           row("steady cycles measured", lambda w: float(w.cycles), lambda v: f"{v:.0f}"),
           row("evaluation cycle: start → every model decided (median)", lambda w: w.cycle_seconds,
               lambda v: f"{v:.2f} s"),
           row("  (max)", lambda w: w.cycle_seconds_max, lambda v: f"{v:.2f} s")]
    for kind in OPERATOR_WRITE_KINDS:
        out.append(row(f"API writes per minute: {kind}", per_minute(kind), lambda v: f"{v:.1f}"))
    out += [row("API writes per minute: the operator's resources (sum of the above)",
                lambda w: sum(w.writes_per_minute.get(k, 0.0) for k in OPERATOR_WRITE_KINDS), lambda v: f"{v:.1f}"),
            row(f"  for comparison: {CONTROLLER_WRITES}", per_minute(CONTROLLER_WRITES), lambda v: f"{v:.1f}"),
            row("  every write, every client", per_minute("all"), lambda v: f"{v:.1f}"),
            row("operator RSS", lambda w: w.rss_mib, lambda v: f"{v:.0f} MiB"),
            row("operator CPU (share of one core)", lambda w: w.cpu_share, lambda v: f"{v * 100:.1f}%")]
    objects = sorted(set(cost.objects_with) | set(cost.objects_without))
    out.append("")
    out.append(f"promote-all (first v2 patch → every model on v2, no canary, every standby Ready): "
               f"{cost.promote_seconds:.1f} s, operator CPU {cost.promote_cpu_seconds:.1f} s, operator peak RSS "
               f"{cost.peak_rss_mib:.0f} MiB over the run; "
               f"standby.replicas 0 → every standby gone: {cost.standby_off_seconds:.1f} s")
    out.append("objects (the models' own, by track label), with standby / without: " + ", ".join(
        f"{k} {cost.objects_with.get(k, 0)} / {cost.objects_without.get(k, 0)}" for k in objects))
    out.append(f"evaluation interval {interval} s; each window {windows[1].window_seconds:.0f} s; what status "
               f"writes changed, with / without: {cost.with_standby.status_changed or 'nothing'} / "
               f"{cost.without_standby.status_changed or 'nothing'}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--interval", type=int, default=30, help="the operator's evaluation interval (default 30)")
    parser.add_argument("--per-namespace", type=int, default=10, help="MLModels per namespace (default 10)")
    parser.add_argument("--rollbacks", type=int, default=3, help="rollbacks measured per count (default 3)")
    parser.add_argument("--steady-cycles", type=int, default=2,
                        help="evaluation intervals per steady measurement window (default 2)")
    parser.add_argument("--promote-all", action="store_true",
                        help="then promote every other model v1 → v2 and measure the steady cycles with their "
                             "standbys and without (issue 24)")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="skip the control-plane baselines and the apply → Deployment samples")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelwarden-scale-"))
    levels = []
    try:
        for n in args.counts:
            levels.append(run_level(n, args, work))
            say(f"{n} models done: {json.dumps(asdict(levels[-1]))}")
    finally:
        cluster_env.down()
    if args.json:
        args.json.write_text(json.dumps([asdict(lv) for lv in levels], indent=2))
    print(table(levels, args.interval))
    for lv in levels:
        if lv.standby is not None:
            print()
            print(standby_table(lv, args.interval))
    say(f"operator logs kept in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
