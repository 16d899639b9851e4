"""Two replicas sharing one PostgreSQL feedback store: a label retried on the other replica is the same label,
stored and counted once across both (the rollback trigger sums ml_feedback_labels_total over replicas)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from localenv import postgres as postgres_env
from model_server.demo_artifact import build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess


def critical_finance_labels(client: httpx.Client) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if (sample.name == "ml_feedback_labels_total" and sample.labels["severity"] == "critical"
                    and sample.labels["stakeholder"] == "finance"):
                return float(sample.value)
    raise AssertionError("no ml_feedback_labels_total{severity=critical,stakeholder=finance}")


def test_a_label_retried_on_another_replica_counts_once(postgres: postgres_env.Postgres, tmp_path: Path) -> None:
    artifact = build_demo_artifact(tmp_path / "artifact", fmt="onnx", trained=train("logistic", 4, 200, seed=8))
    env = {**artifact.env("replicated", "2.0.0"), "FEEDBACK_DSN": postgres.dsn, "WARMUP_ROUNDS": "1",
           "LOG_LEVEL": "WARNING"}
    with serve_subprocess(env, log_path=tmp_path / "a.log") as (url_a, _), \
            serve_subprocess(env, log_path=tmp_path / "b.log") as (url_b, _), \
            http_client(url_a) as a, http_client(url_b) as b:
        pid = a.post("/predict", json={"features": dict.fromkeys(artifact.features, 0.3)}).json()["predictionId"]
        label = {"predictionId": pid, "label": "wrong", "severity": "critical", "stakeholder": "finance"}
        first = a.post("/feedback", json=label)
        assert first.status_code == 201, first.text
        for replica in (b, a, b):
            retry = replica.post("/feedback", json=label)
            assert retry.status_code == 200, retry.text
            assert retry.json()["feedbackId"] == first.json()["feedbackId"]
        assert critical_finance_labels(a) + critical_finance_labels(b) == 1
        assert len(b.get(f"/feedback/{pid}").json()["feedback"]) == 1
