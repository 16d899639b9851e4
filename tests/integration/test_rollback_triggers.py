"""Rollback triggers on a real Prometheus with backfilled history and the real control plane.

The production Controller runs in this process with an injected clock set to the end of the backfilled
history (which ends hours before now, as promtool backfilling wants), as the least-privilege operator user.
Its caches are refreshed from the API server before every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, config

from localenv import modelwarden as modelwarden_env
from localenv import prometheus as prometheus_env
from localenv.cluster import Cluster
from localenv.modelwarden import server_auth_env
from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess
from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.adapters.kube import KubeClient, KubeEventRecorder, KubeStatusWriter, KubeWorkloads
from modelwarden.adapters.ledger import KubeLedger, LedgerSigner
from modelwarden.adapters.model_actions import KubeActionStatusWriter
from modelwarden.adapters.operator_identity import OperatorIdentity
from modelwarden.adapters.prometheus import BURN_LONG, BURN_SHORT, PrometheusMetrics
from modelwarden.adapters.routers import router_for
from modelwarden.adapters.server_admin import HTTPServerAdmin
from modelwarden.api.v1alpha1 import MLModelStatus, Phase
from modelwarden.handlers.controller import Controller
from modelwarden.handlers.metrics import REGISTRY
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel

END = (math.floor(time.time() / 60) * 60) - 3 * 3600  # history ends 3 hours ago
STEP = 30


class InProcessOperator:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfigs["modelwarden-operator"]))
        self.kube = KubeClient(api_client)
        self.namespace = namespace
        self.now = dt.datetime.fromtimestamp(END - 3600, dt.UTC)
        # the decision ledger as the operator writes it (issue 18), its key published like the operator's and the
        # one the cluster's TrustPolicy trusts (issue 27)
        signer = LedgerSigner.from_pem(modelwarden_env.trusted_ledger_key(cluster).read_bytes())
        ledger = KubeLedger(self.kube, signer, key_namespace="modelwarden-system")
        asyncio.run(ledger.publish_key())
        # The operator's own proof for admin calls: TokenRequest tokens of its ServiceAccount, as the operator user.
        self.identity = OperatorIdentity(self.kube, "modelwarden-system", "modelwarden-operator")
        self.controller = Controller(workloads=KubeWorkloads(self.kube, server_auth=self.identity.server_auth),
                                     status_writer=KubeStatusWriter(self.kube), events=KubeEventRecorder(self.kube),
                                     artifacts=URIArtifactStore(), router_for=lambda spec: router_for(spec, self.kube),
                                     clock=lambda: self.now, ledger=ledger,
                                     action_status=KubeActionStatusWriter(self.kube))

    def passes(self, name: str, count: int = 1) -> MLModelStatus:
        async def run() -> None:
            for _ in range(count):
                self.controller.prime(await self.kube.list_all([self.namespace]))
                await self.controller.reconcile((self.namespace, name))
                await asyncio.sleep(0.3)  # let the kube controllers and KWOK move

        asyncio.run(run())
        return MLModelStatus.model_validate(
            self.controller.models[(self.namespace, name)].get("status") or {})

    def until(self, name: str, done: Callable[[MLModelStatus], bool], limit: int = 60) -> MLModelStatus:
        status = MLModelStatus()
        for _ in range(limit):
            status = self.passes(name)
            if done(status):
                return status
        pytest.fail(f"{name}: condition not reached; status {status.model_dump_json(indent=1)}")

    def evaluate(self, prometheus_url: str) -> None:
        self.controller.evaluator.metrics = PrometheusMetrics(prometheus_url, step_seconds=STEP)
        self.now = dt.datetime.fromtimestamp(END, dt.UTC)
        asyncio.run(self.controller.evaluate_once())


def promoted_v2(op: InProcessOperator, api_clients: dict[str, client.ApiClient], namespace: str,
                tmp_path: Path) -> tuple[Models, dict[str, str]]:
    """v1 then v2 approved and promoted (no metrics configured yet)."""
    admin = Models(api_clients["admin"], namespace)
    shas = {}
    for version in ("v1", "v2"):
        uri, sha = artifact(tmp_path, version)
        shas[version] = sha
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("m", version, sha, role, user))
        if version == "v1":
            admin.create(mlmodel("m", "v1", uri, sha, steps=[{"setWeight": 100, "pauseSeconds": 0}]))
        else:
            admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri, "sha256": sha}})
        op.until("m", lambda s, v=version: s.phase == Phase.STABLE and s.stable is not None and s.stable.version == v)
    return admin, shas


def budget_series(version: str, minutes_low: float, *, history_minutes: float = 120,
                  nan_minutes: tuple[float, float] | None = None,
                  gap_minutes: tuple[float, float] | None = None) -> prometheus_env.Series:
    points = []
    t = END - history_minutes * 60
    while t <= END:
        value = 0.02 if t > END - minutes_low * 60 else 0.6
        if nan_minutes and END - nan_minutes[0] * 60 <= t <= END - nan_minutes[1] * 60:
            value = math.nan
        if not (gap_minutes and END - gap_minutes[0] * 60 <= t <= END - gap_minutes[1] * 60):
            points.append((float(t), value))
        t += STEP
    return prometheus_env.Series("ml_inference_error_budget_remaining", {"model": "m", "version": version}, points)


CASES = [
    ("budget below 5% for 14 minutes", [budget_series("v2", 14)], "Stable"),
    ("budget below 5% for 16 minutes", [budget_series("v2", 16)], "RolledBack"),
    ("a one-minute-old series below 5%", [budget_series("v2", 60, history_minutes=1)], "Stable"),
    ("NaN for the last 10 minutes", [budget_series("v2", 30, nan_minutes=(10, 0))], "MetricsUnavailable"),
    ("a 6-minute gap inside the window", [budget_series("v2", 30, gap_minutes=(10, 4))], "MetricsUnavailable"),
    ("only v1 is low (burn is attributed to a version)", [budget_series("v1", 60), budget_series("v2", 0)],
     "Stable"),
]


def budget_fragment(version: str, instance: str, low_from_minutes: float, *, from_minutes: float = 120,
                    to_minutes: float = 0) -> prometheus_env.Series:
    """A budget series under one ``instance`` label from ``from_minutes`` to ``to_minutes`` ago: as a relabelled
    target, a restarted pod or a federation label leave it when the recording rule keeps those labels."""
    points = [(t, v) for t, v in budget_series(version, low_from_minutes).points
              if END - from_minutes * 60 <= t <= END - to_minutes * 60]
    return prometheus_env.Series("ml_inference_error_budget_remaining",
                                 {"model": "m", "version": version, "instance": instance}, points)


CASES += [
    ("relabelled 8 minutes ago, below 5% for 16 minutes across the change",
     [budget_fragment("v2", "a", 16, to_minutes=8.5), budget_fragment("v2", "b", 16, from_minutes=8)],
     "RolledBack"),
    ("relabelled 8 minutes ago, below 5% for 14 minutes", [budget_fragment("v2", "a", 14, to_minutes=8.5),
                                                           budget_fragment("v2", "b", 14, from_minutes=8)],
     "Stable"),
    ("overlapping fragments, one below 5% for 16 minutes: the lowest counts",
     [budget_fragment("v2", "a", 16), budget_fragment("v2", "b", 0)], "RolledBack"),
]


@pytest.mark.parametrize(("case", "history", "expected"), CASES, ids=[c[0] for c in CASES])
def test_error_budget_trigger_on_backfilled_history(
        case: str, history: list[prometheus_env.Series], expected: str, modelwarden_installed: Cluster,
        api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    prom = prometheus_factory(backfilled=history)
    rollbacks_before = REGISTRY.get_sample_value("modelwarden_rollbacks_total")
    op.evaluate(prom.url)
    assert (REGISTRY.get_sample_value("modelwarden_evaluation_queries") or 0) > 0
    status = op.passes("m", 3)

    healthy = next((c for c in status.conditions if c.type == "Healthy"), None)
    if expected == "RolledBack":
        status = op.until("m", lambda s: s.phase == Phase.HALTED)
        assert status.stable is not None and status.stable.sha256 == shas["v1"]
        deployment = admin.deployment("m-stable")
        assert deployment is not None
        assert deployment.spec.template.metadata.annotations["modelwarden.io/sha256"] == shas["v1"]
        assert status.last_rollback is not None and status.last_rollback.trigger == "ErrorBudgetExhausted"
        assert [h.outcome for h in status.history] == ["Superseded", "RolledBack", "Serving"]
        assert admin.get("m")["spec"]["version"] == "v2", "the operator never rewrites spec"
        incident = admin.core.read_namespaced_config_map(f"m-{status.last_rollback.id}", namespace)
        assert "ErrorBudgetExhausted" in incident.data["incident.json"]
        assert REGISTRY.get_sample_value("modelwarden_rollbacks_total") == (rollbacks_before or 0) + 1
    elif expected == "MetricsUnavailable":
        assert status.phase == Phase.STABLE and status.stable is not None and status.stable.version == "v2"
        assert healthy is not None and (healthy.status, healthy.reason) == ("Unknown", "MetricsUnavailable"), healthy
    else:
        assert status.phase == Phase.STABLE and status.stable is not None and status.stable.version == "v2"
        assert healthy is not None and healthy.status == "True", healthy
        assert status.last_rollback is None
        assert REGISTRY.get_sample_value("modelwarden_rollbacks_total") == rollbacks_before


def burn_series(name: str, value: float) -> prometheus_env.Series:
    """A recorded burn rate (``ml:inference_burn_rate:*``, as the shipped rules record it) for v2, flat for 2 hours."""
    points = [(float(t), value) for t in range(int(END - 120 * 60), int(END) + 1, STEP)]
    return prometheus_env.Series(name, {"model": "m", "version": "v2"}, points)


def test_fast_burn_trigger_on_backfilled_burn_rates(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    """FastBurn, the second stable trigger: both recorded burn rates above 14.4x while the budget itself is still
    healthy roll v2 back by FastBurn (the rules that record them are promtool-tested in tests/prometheus; the demo's
    live story in tests/e2e arms ErrorBudgetExhausted)."""
    op = InProcessOperator(modelwarden_installed, namespace)
    admin, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    prom = prometheus_factory(backfilled=[budget_series("v2", 0), burn_series(BURN_LONG, 20.0),
                                          burn_series(BURN_SHORT, 30.0)])
    op.evaluate(prom.url)
    status = op.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.last_rollback is not None and status.last_rollback.trigger == "FastBurn", status.last_rollback
    assert status.stable is not None and status.stable.sha256 == shas["v1"]
    deployment = admin.deployment("m-stable")
    assert deployment is not None
    assert deployment.spec.template.metadata.annotations["modelwarden.io/sha256"] == shas["v1"]


def feedback_series(stakeholder: str, labels_at_minutes: list[float]) -> prometheus_env.Series:
    points, count = [], 0
    t = END - 120 * 60
    while t <= END:
        count = sum(1 for m in labels_at_minutes if END - m * 60 <= t)
        points.append((float(t), float(count)))
        t += STEP
    return prometheus_env.Series("ml_feedback_labels_total", {
        "model": "m", "version": "v2", "severity": "critical", "stakeholder": stakeholder}, points, type="counter")


FEEDBACK_CASES = [
    ("three from finance and regulator within the hour",
     [feedback_series("finance", [50, 20]), feedback_series("regulator", [5])], True),
    ("two from finance and regulator, one from risk",
     [feedback_series("finance", [50]), feedback_series("regulator", [5]), feedback_series("risk", [10])], False),
    ("three, but one of them 70 minutes ago",
     [feedback_series("finance", [70, 20]), feedback_series("regulator", [5])], False),
]


def replica_feedback(pod: str, labels_at_minutes: list[float], *, restarts_at_minutes: tuple[float, ...] = (),
                     born_minutes_ago: float = 120, stakeholder: str = "finance") -> prometheus_env.Series:
    """One replica's critical-label counter: back to 0 at each restart, every label counted once."""
    points = []
    t = END - born_minutes_ago * 60
    while t <= END:
        last_restart = max([END - m * 60 for m in restarts_at_minutes if END - m * 60 <= t], default=-math.inf)
        count = sum(1 for m in labels_at_minutes if last_restart < END - m * 60 <= t)
        points.append((float(t), float(count)))
        t += STEP
    return prometheus_env.Series("ml_feedback_labels_total", {
        "model": "m", "version": "v2", "severity": "critical", "stakeholder": stakeholder, "pod": pod},
        points, type="counter")


FEEDBACK_CASES += [
    ("two replicas, one label each, then one restarts",
     [replica_feedback("a", [40]), replica_feedback("b", [30], restarts_at_minutes=(20,))], False),
    ("two replicas, one restarts, then a third real label",
     [replica_feedback("a", [40]), replica_feedback("b", [30, 10], restarts_at_minutes=(20,))], True),
    ("three replicas, one label each, all restart between labels",
     [replica_feedback("a", [50], restarts_at_minutes=(45, 25)),
      replica_feedback("b", [44], restarts_at_minutes=(35, 25)),
      replica_feedback("c", [30], restarts_at_minutes=(25,))], True),
    ("three replicas, all restart after two labels",
     [replica_feedback("a", [50], restarts_at_minutes=(25,)), replica_feedback("b", [44], restarts_at_minutes=(25,)),
      replica_feedback("c", [], restarts_at_minutes=(25,))], False),
    ("a new pod's counter born at 1 after two labels elsewhere",
     [replica_feedback("a", [50]), replica_feedback("b", [40]), replica_feedback("c", [10], born_minutes_ago=9.5)],
     True),
]


@pytest.mark.parametrize(("case", "history", "rolls_back"), FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES])
def test_critical_feedback_trigger(case: str, history: list[prometheus_env.Series], rolls_back: bool,
                                   modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
                                   namespace: str, tmp_path: Path,
                                   prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    _, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    prom = prometheus_factory(backfilled=[budget_series("v2", 0), *history])
    op.evaluate(prom.url)
    status = op.passes("m", 3)
    if rolls_back:
        status = op.until("m", lambda s: s.phase == Phase.HALTED)
        assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"
        assert status.last_rollback.values["criticalLabels"] == "3"
        assert status.stable is not None and status.stable.sha256 == shas["v1"]
    else:
        assert status.phase == Phase.STABLE and status.last_rollback is None


def test_prometheus_stopped_mid_canary_neither_promotes_nor_rolls_back(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin = Models(api_clients["admin"], namespace)
    shas = {}
    for version in ("v1", "v2"):
        uri, sha = artifact(tmp_path, version)
        shas[version] = (uri, sha)
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("m", version, sha, role, user))
    steps = [{"setWeight": 50, "pauseSeconds": 0}, {"setWeight": 100, "pauseSeconds": 0}]
    admin.create(mlmodel("m", "v1", *shas["v1"], steps=steps))
    op.until("m", lambda s: s.phase == Phase.STABLE)
    prom = prometheus_factory(backfilled=[budget_series("v1", 0)])
    op.evaluate(prom.url)
    admin.patch_spec("m", {"version": "v2", "artifact": {"uri": shas["v2"][0], "sha256": shas["v2"][1]}})
    status = op.until("m", lambda s: s.canary_weight == 50)
    prom.stop()
    for minute in range(1, 6):
        op.now = dt.datetime.fromtimestamp(END + 60 * minute, dt.UTC)
        asyncio.run(op.controller.evaluate_once())
        status = op.passes("m", 2)
        assert status.current_step_index == 0 and status.canary_weight == 50, "no promotion without metrics"
        assert status.last_rollback is None and status.phase == Phase.PROGRESSING, "and no rollback"
        healthy = next(c for c in status.conditions if c.type == "Healthy")
        assert (healthy.status, healthy.reason) == ("Unknown", "MetricsUnavailable")
        assert "Prometheus unavailable" in healthy.message
    assert admin.deployment("m-canary") is not None


def test_crash_between_rollback_steps_finishes_once_and_gitops_reapply_changes_nothing(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    manifest = admin.get("m")
    prom = prometheus_factory(backfilled=[budget_series("v2", 30)])
    op.evaluate(prom.url)
    status = op.passes("m", 1)
    assert status.phase == Phase.ROLLING_BACK and status.last_rollback is not None
    rollback_id = status.last_rollback.id

    # The operator dies here; a new one (empty caches) picks the rollback up from status and the cluster.
    fresh = InProcessOperator(modelwarden_installed, namespace)
    fresh.controller.evaluator.metrics = op.controller.evaluator.metrics
    fresh.now = op.now
    asyncio.run(fresh.controller.evaluate_once())
    status = fresh.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.last_rollback is not None and status.last_rollback.id == rollback_id, "the same rollback"
    assert [h.outcome for h in status.history].count("RolledBack") == 1
    assert [i.id for i in status.incidents] == [rollback_id]
    assert status.stable is not None and status.stable.sha256 == shas["v1"]
    events = [e.reason for e in admin.events("m")]
    assert events.count("RollbackStarted") == 1 and events.count("RollbackComplete") == 1

    # A GitOps sync re-applies the committed manifest (server-side apply, its own field manager): nothing moves.
    committed = {"apiVersion": manifest["apiVersion"], "kind": "MLModel",
                 "metadata": {"name": "m", "namespace": namespace}, "spec": manifest["spec"]}
    before = admin.get("m")
    modelwarden_installed.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-",
                                  input=json.dumps(committed))
    after = admin.get("m")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    status = fresh.passes("m", 3)
    assert status.phase == Phase.HALTED and status.stable is not None and status.stable.sha256 == shas["v1"]
    assert [i.id for i in status.incidents] == [rollback_id], "no second rollback"
    deployment = admin.deployment("m-stable")
    assert deployment is not None
    assert deployment.spec.template.metadata.annotations["modelwarden.io/sha256"] == shas["v1"]


def test_critical_feedback_incident_keeps_the_feedback_records_behind_it(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    """The incident holds what `GET /feedback/{predictionId}` returns for each labelled prediction, collected
    from the serving version's server before traffic moves (a pod's SQLite store goes with the pod)."""
    demo = build_demo_artifact(tmp_path / "served", fmt="onnx", trained=train("logistic", 3, 200, seed=5))
    env = {**demo.env("m", "v2"), **server_auth_env(modelwarden_installed), "WARMUP_ROUNDS": "1",
           "FEEDBACK_DSN": str(tmp_path / "fb.sqlite3")}
    with serve_subprocess(env, log_path=tmp_path / "server.log") as (url, _), http_client(url) as http:
        ids = []
        for i, stakeholder in enumerate(("finance", "regulator", "finance")):
            pid = http.post("/predict", json={"features": dict.fromkeys(demo.features, float(i))}).json()[
                "predictionId"]
            assert http.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": "critical",
                                                "stakeholder": stakeholder}).status_code == 201
            ids.append(pid)

        op = InProcessOperator(modelwarden_installed, namespace)
        admin, _ = promoted_v2(op, api_clients, namespace, tmp_path)
        op.controller.applier.server_admin = HTTPServerAdmin(op.identity.token, url_template=url)
        prom = prometheus_factory(backfilled=[budget_series("v2", 0), feedback_series("finance", [50, 20]),
                                              feedback_series("regulator", [5])])
        op.evaluate(prom.url)
        status = op.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"
    incident = admin.core.read_namespaced_config_map(f"m-{status.last_rollback.id}", namespace)
    evidence = json.loads(incident.data["feedback.json"])
    assert evidence["error"] is None
    assert [r["predictionId"] for r in evidence["records"]] == ids
    assert {f["stakeholder"] for r in evidence["records"] for f in r["feedback"]} == {"finance", "regulator"}
    assert "incident.json" in incident.data, "the final record did not take the evidence away"

    # The evidence, as the compliance repository gets it.
    done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "incidents", "m", "-n", namespace,
                           "-o", "markdown"], capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, "KUBECONFIG": str(modelwarden_installed.admin_kubeconfig)})
    assert done.returncode == 0, done.stderr
    assert f"## {status.last_rollback.id} — CriticalFeedback" in done.stdout
    assert "| TrafficRestored |" in done.stdout
    assert all(f"`{pid}`" in done.stdout for pid in ids)

    # The same package from the decision ledger alone (issue 18): verified, with the trigger's values, the
    # versions, the timeline and the feedback records behind it.
    # (the feedback records are in the incident's ConfigMap: whoever exports needs `view` in the namespace)
    env = {**os.environ, "KUBECONFIG": str(modelwarden_installed.admin_kubeconfig)}
    done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "ledger", "export", "m", "-n", namespace,
                           "-o", "markdown"], capture_output=True, text=True, check=False, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    package = done.stdout
    assert "Verification: **passed**" in package
    assert f"## Post-incident: rollback {status.last_rollback.id}" in package
    assert "**Trigger**: CriticalFeedback" in package and "criticalLabels=3" in package
    assert "**Affected versions**: v2@" in package and "→ v1@" in package
    assert "RollbackStarted by operator" in package and "TrafficRestored by operator" in package
    assert all(f"`{pid}`" in package for pid in ids)


def test_critical_feedback_is_counted_per_replica_on_live_scraped_servers(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    """Two real replicas scraped by a real Prometheus: one label on each, then one replica's process restarts
    (same instance label, as a restarted container in its pod): two labels are two, not three. A third real
    label then rolls back with exactly 3."""
    op = InProcessOperator(modelwarden_installed, namespace)
    _, shas = promoted_v2(op, api_clients, namespace, tmp_path)
    demo = build_demo_artifact(tmp_path / "served", fmt="onnx", trained=train("logistic", 3, 200, seed=5))
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    prom = prometheus_factory(file_sd=targets)
    # The query step follows this Prometheus' 1 s scrape: restarts and labels here are seconds apart.
    op.controller.evaluator.metrics = PrometheusMetrics(prom.url, step_seconds=1)
    counted = 'ml_feedback_labels_total{{instance="replica-{}",severity="critical",stakeholder="finance"}}'

    with contextlib.ExitStack() as stack:
        replicas: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}

        def serve(name: str) -> None:
            env = {**demo.env("m", "v2"), "WARMUP_ROUNDS": "1", "FEEDBACK_DSN": str(tmp_path / f"{name}.sqlite3")}
            replicas[name] = stack.enter_context(serve_subprocess(env, log_path=tmp_path / f"{name}.log"))
            targets.write_text(json.dumps([{"targets": [url.removeprefix("http://")],
                                            "labels": {"instance": f"replica-{n}"}}
                                           for n, (url, _) in replicas.items()]))

        def label(name: str) -> None:
            with http_client(replicas[name][0]) as http:
                pid = http.post("/predict", json={"features": dict.fromkeys(demo.features, 0.5)}).json()[
                    "predictionId"]
                assert http.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": "critical",
                                                    "stakeholder": "finance"}).status_code == 201

        def scraped(name: str, value: float) -> None:
            def seen() -> bool:
                return [float(r["value"][1]) for r in prom.query(counted.format(name))] == [value]
            deadline = time.monotonic() + 60
            while not seen():
                assert time.monotonic() < deadline, f"replica-{name} never scraped at {value}"
                time.sleep(0.5)

        def evaluate() -> MLModelStatus:
            # The client rounds a range query's end to whole seconds: a sample scraped in the last second may
            # fall after it. Evaluate a little after the latest scrape, as a real cycle would.
            time.sleep(2)
            op.now = dt.datetime.now(dt.UTC)
            before = prom.query_requests_answered()
            asyncio.run(op.controller.evaluate_once())
            fleet = op.controller.fleet
            assert fleet is not None
            assert fleet.queries == prom.query_requests_answered() - before, "the count is what Prometheus saw"
            return op.passes("m", 2)

        serve("a")
        serve("b")
        label("a")
        label("b")
        scraped("a", 1)
        scraped("b", 1)
        replicas["b"][1].terminate()
        replicas["b"][1].wait(timeout=30)
        serve("b")  # a new process, same instance label: its counter starts again at 0
        scraped("b", 0)
        status = evaluate()
        assert status.phase == Phase.STABLE and status.last_rollback is None, "two labels are not three"

        label("b")
        scraped("b", 1)
        status = evaluate()
        status = op.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"
    assert status.last_rollback.values["criticalLabels"] == "3"
    assert status.stable is not None and status.stable.sha256 == shas["v1"]
