"""A CriticalFeedback rollback's incident lists every label behind it even when every server of the
rolled-back version is gone before the operator collects the evidence: it is read from the feedback store
(real PostgreSQL), not from pods. Real API server, real Prometheus, real server processes (killed)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from kubernetes import client

from localenv import postgres as postgres_env
from localenv import prometheus as prometheus_env
from localenv.cluster import Cluster
from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess
from modelwarden.adapters.feedback_store import PostgresFeedbackEvidence
from modelwarden.adapters.server_admin import HTTPServerAdmin
from modelwarden.api.v1alpha1 import Phase
from tests.integration.test_rollback_triggers import InProcessOperator, budget_series, feedback_series, promoted_v2


def test_critical_feedback_incident_lists_every_label_with_every_server_gone(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
        postgres: postgres_env.Postgres, prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    suffix = uuid.uuid4().hex[:10]  # the model is called "m" here: a database of its own, named after it
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE fb_m_{suffix}")
    dsn = postgres.dsn.rsplit("/", 1)[0] + f"/fb_m_{suffix}"

    demo = build_demo_artifact(tmp_path / "served", fmt="onnx", trained=train("logistic", 3, 200, seed=5))
    # The servers write their model's namespace with every row; the operator reads only that namespace.
    env = {**demo.env("m", "v2"), "FEEDBACK_DSN": dsn, "WARMUP_ROUNDS": "1", "LOG_LEVEL": "WARNING",
           "MLMODEL_NAMESPACE": namespace}
    behind: dict[str, set[tuple[str, str]]] = {}  # predictionId -> {(stakeholder, severity)}
    with serve_subprocess(env, log_path=tmp_path / "a.log") as (url_a, proc_a), \
            serve_subprocess(env, log_path=tmp_path / "b.log") as (url_b, proc_b), \
            http_client(url_a) as a, http_client(url_b) as b:
        def labelled(made_by: httpx.Client, labels: list[tuple[httpx.Client, str, str]]) -> str:
            pid = str(made_by.post("/predict", json={"features": dict.fromkeys(demo.features, 0.5)}).json()[
                "predictionId"])
            for replica, stakeholder, severity in labels:
                created = replica.post("/feedback", json={"predictionId": pid, "label": "wrong",
                                                          "severity": severity, "stakeholder": stakeholder})
                assert created.status_code == 201, created.text
            behind[pid] = {(s, v) for _, s, v in labels}
            return pid

        critical = [
            labelled(a, [(a, "finance", "critical")]),
            labelled(b, [(a, "regulator", "critical"), (b, "customer", "minor")]),  # labelled on the other replica
            labelled(a, [(b, "finance", "critical"), (a, "regulator", "critical")]),
        ]
        not_behind = labelled(b, [(b, "customer", "critical"), (a, "finance", "minor")])
        for proc in (proc_a, proc_b):  # every server of the version gone, no graceful stop
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

        op = InProcessOperator(modelwarden_installed, namespace)
        admin, _ = promoted_v2(op, api_clients, namespace, tmp_path)
        # The operator's DSN names the model's database by template, as for a database per model.
        op.controller.applier.feedback_evidence = PostgresFeedbackEvidence(
            postgres.dsn.rsplit("/", 1)[0] + f"/fb_{{model}}_{suffix}")
        # The servers' admin API is where evidence came from before: nothing answers there now.
        op.controller.applier.server_admin = HTTPServerAdmin(op.identity.token, url_template=url_a)
        prom = prometheus_factory(backfilled=[budget_series("v2", 0), feedback_series("finance", [50, 20]),
                                              feedback_series("regulator", [5])])
        op.evaluate(prom.url)
        status = op.until("m", lambda s: s.phase == Phase.HALTED)

    assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"
    incident = admin.core.read_namespaced_config_map(f"m-{status.last_rollback.id}", namespace).data or {}
    evidence = json.loads(incident["feedback.json"])
    assert (evidence["source"], evidence["error"], evidence["truncated"]) == ("feedbackStore", None, False)
    assert [r["predictionId"] for r in evidence["records"]] == critical, "every one, oldest label first"
    assert not_behind not in {r["predictionId"] for r in evidence["records"]}
    for record in evidence["records"]:
        assert {(f["stakeholder"], f["severity"]) for f in record["feedback"]} == behind[record["predictionId"]]
        assert {(f["version"], f["track"], f["sha256"]) for f in record["feedback"]} == {("v2", "stable", demo.sha256)}
        assert record["prediction"]["features"] == dict.fromkeys(demo.features, 0.5)
    assert "incident.json" in incident
    assert "CollectFeedbackEvidenceFailed" not in [e.reason for e in admin.events("m")]
