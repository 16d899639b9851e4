"""Issue 16 on real server processes sharing one real PostgreSQL store: feedback through any replica finds a
prediction made by any other and by an earlier version, survives a rollout, a rollback and every server being
killed, and the one documented gap (a server killed before its prediction records were written) answers
exactly what the README says. Real pods come with the real-node work; these are the same server processes."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localenv import postgres as postgres_env
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.feedback import UNKNOWN_PREDICTION_TEXT
from model_server.testing import http_client, serve_subprocess


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoArtifact]:
    # Two versions of one model (different weights, so different sha256); ONNX starts fastest.
    return {v: build_demo_artifact(tmp_path_factory.mktemp(v), fmt="onnx", trained=train("logistic", 4, 200, seed=s))
            for v, s in (("v1", 3), ("v2", 4))}


@pytest.fixture
def model() -> str:
    """A model of its own: the session's PostgreSQL database is shared."""
    return f"scorer-{uuid.uuid4().hex[:8]}"


@contextmanager
def replicas(n: int, artifact: DemoArtifact, model: str, version: str, dsn: str, log_dir: Path,
             **settings: str) -> Iterator[list[tuple[httpx.Client, Any]]]:
    """``n`` server processes of one version on one store: (client, process) each."""
    env = {**artifact.env(model, version), "FEEDBACK_DSN": dsn, "WARMUP_ROUNDS": "1", "LOG_LEVEL": "WARNING",
           **settings}
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        out = []
        for i in range(n):
            url, proc = stack.enter_context(serve_subprocess(env, log_path=log_dir / f"{version}-{i}.log"))
            out.append((stack.enter_context(http_client(url)), proc))
        yield out


def predict(client: httpx.Client, artifact: DemoArtifact, x: float) -> dict[str, Any]:
    answer = client.post("/predict", json={"features": dict.fromkeys(artifact.features, x)})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def label(client: httpx.Client, pid: str, stakeholder: str = "finance", severity: str = "critical") -> httpx.Response:
    return client.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": severity,
                                          "stakeholder": stakeholder})


def labels_counted(client: httpx.Client) -> float:
    """This process's ml_feedback_labels_total, all series summed (what the retraining gate sums)."""
    return sum(s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if s.name == "ml_feedback_labels_total")


def test_two_replicas_1000_predictions_every_label_through_the_other_replica(
        postgres: postgres_env.Postgres, versions: dict[str, DemoArtifact], model: str, tmp_path: Path) -> None:
    """Stricter than a Service's random split: every label goes to, and is read back from, the replica that
    did not make the prediction."""
    v1 = versions["v1"]
    with replicas(2, v1, model, "v1", postgres.dsn, tmp_path) as servers:
        (a, _), (b, _) = servers
        made = [(i % 2, predict((a, b)[i % 2], v1, (i % 17) / 4)["predictionId"]) for i in range(1000)]
        statuses = [label((b, a)[made_by], pid).status_code for made_by, pid in made]
        assert statuses.count(201) == 1000, {s: statuses.count(s) for s in set(statuses)}
        for made_by, pid in made:
            view = (a, b)[made_by].get(f"/feedback/{pid}")  # back through the one that made it, not labelled it
            assert view.status_code == 200, view.text
            assert [f["stakeholder"] for f in view.json()["feedback"]] == ["finance"]
        assert labels_counted(a) + labels_counted(b) == 1000, "each label counted once, where it was stored"


def test_a_label_for_a_prediction_not_yet_flushed_waits_for_it_rather_than_404(
        postgres: postgres_env.Postgres, versions: dict[str, DemoArtifact], model: str, tmp_path: Path) -> None:
    v1 = versions["v1"]
    # Replica a writes its records once a second; b waits up to 30 s for them (a bound, not a timing).
    with replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "a", RECORD_FLUSH_SECONDS="1") as [(a, _)], \
            replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "b", FEEDBACK_JOIN_WAIT_SECONDS="30") as [(b, _)]:
        pids = [predict(a, v1, x)["predictionId"] for x in (0.1, 0.2, 0.3)]
        for pid in pids:
            created = label(b, pid)
            assert created.status_code == 201, created.text
    # Without the wait, and before the answering replica wrote its record, the answer is the documented 404.
    with replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "c", RECORD_FLUSH_SECONDS="600") as [(c, stopping)], \
            replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "d", FEEDBACK_JOIN_WAIT_SECONDS="0") as [(d, _)]:
        pid = predict(c, v1, 0.4)["predictionId"]
        refused = label(d, pid)
        assert refused.status_code == 404, refused.text
        assert refused.json() == {"error": "UNKNOWN_PREDICTION", "message": UNKNOWN_PREDICTION_TEXT,
                                  "predictionId": pid}
        stopping.send_signal(signal.SIGTERM)  # a graceful stop writes what is pending
        assert stopping.wait(30) == -signal.SIGTERM
        assert label(d, pid).status_code == 201


def test_kill_9_right_after_answering_is_exactly_the_documented_contract(
        postgres: postgres_env.Postgres, versions: dict[str, DemoArtifact], model: str, tmp_path: Path) -> None:
    """README "Feedback durability": a prediction is feedback-able once its record is written - every
    RECORD_FLUSH_SECONDS, and at once when its replica takes any feedback; a 201 is durable. A server killed
    before the write loses that prediction's record: its feedback answers 404 UNKNOWN_PREDICTION."""
    v1 = versions["v1"]
    # A long flush interval makes "killed before the write" certain rather than a race with the 0.25 s default.
    with replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "a", RECORD_FLUSH_SECONDS="600") as [(a, proc)]:
        labelled = predict(a, v1, 0.1)["predictionId"]
        answered_before = predict(a, v1, 0.2)["predictionId"]
        created = label(a, labelled)
        assert created.status_code == 201  # acknowledged: durable, and it wrote every pending record first
        answered_last = predict(a, v1, 0.3)["predictionId"]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

    with replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "b", FEEDBACK_JOIN_WAIT_SECONDS="0") as [(b, _)]:
        retried = label(b, labelled)
        assert retried.status_code == 200 and retried.json()["feedbackId"] == created.json()["feedbackId"]
        assert label(b, answered_before).status_code == 201, "written with the label before the kill"
        lost = label(b, answered_last)
        assert lost.status_code == 404, lost.text
        assert lost.json()["error"] == "UNKNOWN_PREDICTION" and "killed within RECORD_FLUSH_SECONDS" in \
            lost.json()["message"]


def test_labels_survive_a_rollout_a_rollback_and_every_server_killed(
        postgres: postgres_env.Postgres, versions: dict[str, DemoArtifact], model: str, tmp_path: Path) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    acknowledged: dict[str, tuple[str, str]] = {}  # predictionId -> (version, sha256) of what made it
    counted = 0.0

    def post(client: httpx.Client, pid: str, made_by: tuple[str, str], stakeholder: str = "finance") -> None:
        response = label(client, pid, stakeholder)
        assert response.status_code == 201, response.text
        assert response.json()["version"] == made_by[0], "the label is the predicting version's"
        acknowledged[f"{pid}/{stakeholder}"] = made_by

    with replicas(2, v1, model, "v1", postgres.dsn, tmp_path / "stable", MODEL_TRACK="stable") as stable:
        (s0, _), (s1, _) = stable
        v1_ids = [predict((s0, s1)[i % 2], v1, i / 10)["predictionId"] for i in range(20)]
        for i, pid in enumerate(v1_ids[:10]):
            post((s1, s0)[i % 2], pid, ("v1", v1.sha256))
        # Rollout: v2 as the canary beside v1. Labels cross versions both ways.
        with replicas(1, v2, model, "v2", postgres.dsn, tmp_path / "canary", MODEL_TRACK="canary") as [(c0, canary)]:
            v2_ids = [predict(c0, v2, i / 10)["predictionId"] for i in range(10)]
            for pid in v2_ids[:5]:
                post(s0, pid, ("v2", v2.sha256))  # a v2 prediction labelled through a v1 replica
            for pid in v1_ids[10:15]:
                post(c0, pid, ("v1", v1.sha256), "regulator")  # a v1 prediction through the v2 replica
            counted += labels_counted(c0)
        # Rollback: the canary is gone (a graceful stop). Its predictions still take labels, through v1.
        assert canary.poll() is not None
        for pid in v2_ids[5:]:
            post(s1, pid, ("v2", v2.sha256))
        for pid in v1_ids[15:]:
            post(s0, pid, ("v1", v1.sha256))
        # Retries of acknowledged labels, on other replicas: stored and counted once.
        assert label(s1, v1_ids[0]).status_code == 200 and label(s0, v2_ids[0]).status_code == 200
        counted += labels_counted(s0) + labels_counted(s1)
        for _, proc in stable:  # every pod deleted at once, without a graceful stop
            proc.send_signal(signal.SIGKILL)
        for _, proc in stable:
            proc.wait(10)

    assert counted == len(acknowledged) == 30, "the labels the retraining gate sums: each exactly once"
    with replicas(1, v1, model, "v1", postgres.dsn, tmp_path / "after") as [(fresh, _)]:
        for key, (version, sha256) in acknowledged.items():
            pid, stakeholder = key.split("/")
            view = fresh.get(f"/feedback/{pid}")
            assert view.status_code == 200, view.text
            body = view.json()
            assert (body["prediction"]["version"], body["prediction"]["sha256"]) == (version, sha256)
            found = [f for f in body["feedback"] if f["stakeholder"] == stakeholder]
            assert [(f["version"], f["sha256"], f["track"]) for f in found] == [
                (version, sha256, "stable" if version == "v1" else "canary")]
