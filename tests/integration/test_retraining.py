"""Scheduled, gated retraining on the real control plane and a real Prometheus with 7 days of backfilled budget.

The production Controller runs in this process as the least-privilege operator user, with an injected clock.
The window is the default schedule's (second Tuesday, 02:00 UTC): the most recent one at least four hours
ago, so its history can be backfilled (promtool wants history older than the server's head block).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from localenv import prometheus as prometheus_env
from localenv.cluster import Cluster
from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.adapters.kube import KubeClient, KubeEventRecorder, KubeStatusWriter, KubeWorkloads
from modelwarden.adapters.prometheus import PrometheusMetrics
from modelwarden.adapters.routers import router_for
from modelwarden.api.v1alpha1 import MLModelStatus, Phase, Rollback
from modelwarden.engine.schedule import DEFAULT_SCHEDULE, next_fire, previous_fire
from modelwarden.handlers.controller import Controller
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel

WINDOW = previous_fire(DEFAULT_SCHEDULE, dt.datetime.now(dt.UTC) - dt.timedelta(hours=4))
PREVIOUS_WINDOW = previous_fire(DEFAULT_SCHEDULE, WINDOW)
STEP = 300  # one budget sample every 5 minutes, as the recording rule's evaluations would leave them


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def notify(self, model: str, namespace: str, severity: str, summary: str,
                     rollback: Rollback | None = None) -> str | None:
        self.sent.append((severity, summary))
        return None


class InProcessOperator:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfigs["modelwarden-operator"]))
        self.kube = KubeClient(api_client)
        self.namespace = namespace
        self.now = WINDOW - dt.timedelta(hours=30)
        self.notifier = RecordingNotifier()
        self.controller = Controller(workloads=KubeWorkloads(self.kube), status_writer=KubeStatusWriter(self.kube),
                                     events=KubeEventRecorder(self.kube),
                                     artifacts=URIArtifactStore(), router_for=lambda spec: router_for(spec, self.kube),
                                     clock=lambda: self.now, notifier=self.notifier)

    def passes(self, name: str, count: int = 1) -> MLModelStatus:
        async def run() -> None:
            for _ in range(count):
                self.controller.prime(await self.kube.list_all([self.namespace]))
                await self.controller.reconcile((self.namespace, name))
                await asyncio.sleep(0.3)

        asyncio.run(run())
        return MLModelStatus.model_validate(self.controller.models[(self.namespace, name)].get("status") or {})

    def until_stable(self, name: str, limit: int = 60) -> MLModelStatus:
        for _ in range(limit):
            status = self.passes(name)
            if status.phase == Phase.STABLE:
                return status
        pytest.fail(f"{name} never became Stable: {status.model_dump_json(indent=1)}")


def budget_history(*, dip: float | None = None, gap_days: tuple[float, float] | None = None,
                   ) -> prometheus_env.Series:
    """The model-level budget (the recording rule's scope="model" series) for the 7 days before the window
    and an hour more: 50% throughout, with an optional single dip 3 days before, or a gap."""
    end = WINDOW.timestamp()
    points, t = [], end - 7 * 86400 - 3600
    while t <= end:
        in_gap = gap_days is not None and end - gap_days[0] * 86400 <= t <= end - gap_days[1] * 86400
        if not in_gap:
            points.append((t, dip if dip is not None and t == end - 3 * 86400 else 0.5))
        t += STEP
    return prometheus_env.Series("ml_inference_error_budget_remaining", {"model": "m", "scope": "model"}, points)


def label_history(count: int) -> prometheus_env.Series:
    """Feedback labels given since the previous window: the counter starts at 0 six days before the window
    and reaches ``count`` a day before it."""
    end = WINDOW.timestamp()
    start, done = end - 6 * 86400, end - 86400
    points, t = [], start
    while t <= end:
        value = count * min(1.0, (t - start) / (done - start))
        points.append((t, float(int(value))))
        t += 1800
    return prometheus_env.Series("ml_feedback_labels_total", {"model": "m", "version": "v1", "severity": "info",
                                                               "stakeholder": "ops"}, points, type="counter")


CASES = [
    ("budget above 15% for 7 days, 30 new labels", [budget_history(), label_history(30)], None),
    ("one dip to 14%", [budget_history(dip=0.14), label_history(30)], "ErrorBudget"),
    ("a two-day gap in the budget history", [budget_history(gap_days=(4, 2)), label_history(30)], "ErrorBudget"),
    ("24 new labels", [budget_history(), label_history(24)], "NewFeedbackLabels"),
]


@pytest.mark.parametrize(("case", "history", "failed_gate"), CASES, ids=[c[0] for c in CASES])
def test_retraining_window_on_backfilled_history(
        case: str, history: list[prometheus_env.Series], failed_gate: str | None, modelwarden_installed: Cluster,
        api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        prometheus_factory: Any) -> None:
    op = InProcessOperator(modelwarden_installed, namespace)
    admin = Models(api_clients["admin"], namespace)
    batch = client.BatchV1Api(api_clients["admin"])
    uri, sha = artifact(tmp_path, "v1")
    (tmp_path / "bias-report.json").write_text(json.dumps({"status": "pass"}))
    (tmp_path / "feature-audit.json").write_text(json.dumps({"status": "pass", "share": 0.97}))
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval("m", "v1", sha, role, user))
    template = {"metadata": {"labels": {"team": "risk"}},
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "train", "image": "modelwarden/trainer:test",
                     "command": ["modelwarden", "train", "/config/training.yaml", "--out", "/out"]}]}}}}
    admin.create(mlmodel("m", "v1", uri, sha, steps=[{"setWeight": 100, "pauseSeconds": 0}],
                         retraining={"enabled": True, "featureAuditUri": (tmp_path / "feature-audit.json").as_uri(),
                                     "jobTemplate": template}))

    # 30 hours before: served, the next window is scheduled, waiting.
    status = op.until_stable("m")
    assert status.retraining is not None and status.retraining.next_window == WINDOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    eligible = next(c for c in status.conditions if c.type == "RetrainingEligible")
    assert (eligible.status, eligible.reason) == ("Unknown", "WaitingForWindow")

    # 24 hours before: the reminder, once.
    op.now = WINDOW - dt.timedelta(hours=24)
    op.passes("m", 2)
    op.now = WINDOW - dt.timedelta(hours=1)
    op.passes("m", 1)
    reminders = [e for e in admin.events("m") if e.reason == "RetrainingReminder"]
    assert len(reminders) == 1 and WINDOW.strftime("%Y-%m-%dT%H:%M:%SZ") in reminders[0].message
    assert len([s for _, s in op.notifier.sent if s.startswith("retraining window for m")]) == 1

    # The window: one evaluation cycle fetches the gates' history for the whole fleet, then the model decides.
    prom = prometheus_factory(backfilled=history)
    op.controller.evaluator.metrics = PrometheusMetrics(prom.url)
    op.now = WINDOW + dt.timedelta(seconds=20)
    answered = prom.query_requests_answered()
    asyncio.run(op.controller.evaluate_once())
    assert op.controller.fleet is not None
    window_cycle = op.controller.fleet.queries
    assert window_cycle == prom.query_requests_answered() - answered, "counted, not assumed"
    status = op.passes("m", 2)

    eligible = next(c for c in status.conditions if c.type == "RetrainingEligible")
    jobs = batch.list_namespaced_job(namespace).items
    r = status.retraining
    assert r is not None and r.last_window == WINDOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert r.next_window == next_fire(DEFAULT_SCHEDULE, WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ")
    if failed_gate is None:
        assert (eligible.status, eligible.reason) == ("True", "GatesPassed"), eligible.message
        assert [j.metadata.name for j in jobs] == [f"m-retrain-{WINDOW:%Y%m%d-%H%M}"]
        job = jobs[0]
        assert job.metadata.labels["modelwarden.io/model"] == "m"
        assert job.metadata.labels["modelwarden.io/retraining-window"] == f"{WINDOW:%Y%m%dt%H%Mz}"
        assert job.metadata.labels["team"] == "risk"
        assert job.metadata.owner_references[0].kind == "MLModel"
        env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
        assert env["MODELWARDEN_STABLE_VERSION"] == "v1" and env["MODELWARDEN_STABLE_ARTIFACT_URI"] == uri
        assert r.last_job is not None and r.last_job.outcome == "Running"
        assert [e.reason for e in admin.events("m")].count("RetrainingJobCreated") == 1
        # Later passes in the same window (and a restarted operator) create nothing more.
        op.now = WINDOW + dt.timedelta(minutes=5)
        asyncio.run(op.controller.evaluate_once())
        assert op.controller.fleet.queries == window_cycle - 2, "no retraining queries once the window is done"
        op.passes("m", 2)
        assert len(batch.list_namespaced_job(namespace).items) == 1
        # The Job only trains: spec still names v1, and the served version is unchanged.
        assert admin.get("m")["spec"]["version"] == "v1"
    else:
        assert (eligible.status, eligible.reason) == ("False", "GatesFailed"), eligible.message
        assert f"{failed_gate}:" in eligible.message
        others = {"BiasReport", "ErrorBudget", "NewFeedbackLabels", "FeatureAudit"} - {failed_gate}
        assert not any(f"{g}:" in eligible.message for g in others), eligible.message
        assert jobs == []
        if case == "a two-day gap in the budget history":
            assert "gaps are not eligible" in eligible.message
        if case == "one dip to 14%":
            assert "fell to 14.0%" in eligible.message
