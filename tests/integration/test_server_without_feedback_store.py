"""Issue 24 item 3 on a real server process and a real PostgreSQL that is stopped and started again: the server
starts, becomes ready and answers ``/predict`` without its feedback store; feedback answers 503 with
``Retry-After`` while the store is down (never a 201 it could not keep); prediction records wait in a bounded
buffer and reach the store when it is back, and what overflows the buffer is counted, not silently dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localenv import postgres as postgres_env
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess, wait_until

OUTAGE_BOUND_SECONDS = 60  # how long the server may take to notice the store is back (a bound, not a timing)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("v1"), fmt="onnx", trained=train("logistic", 4, 200, seed=5))


@pytest.fixture
def stopped_postgres(postgres: postgres_env.Postgres) -> Iterator[postgres_env.Postgres]:
    """The session's PostgreSQL, stopped; started again (if the test did not) for the tests after this one."""
    postgres.stop()
    try:
        yield postgres
    finally:
        if not running(postgres):
            postgres.start()


def running(postgres: postgres_env.Postgres) -> bool:
    try:
        psycopg.connect(postgres.dsn, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


@contextmanager
def server(artifact: DemoArtifact, dsn: str, log_dir: Path, **settings: str) -> Iterator[httpx.Client]:
    env = {**artifact.env(f"scorer-{uuid.uuid4().hex[:8]}", "v1"), "FEEDBACK_DSN": dsn, "WARMUP_ROUNDS": "1",
           "LOG_LEVEL": "WARNING", **settings}
    with serve_subprocess(env, log_path=log_dir / "server.log") as (url, _), http_client(url) as client:
        yield client


def predict(client: httpx.Client, artifact: DemoArtifact, x: float) -> str:
    answer = client.post("/predict", json={"features": dict.fromkeys(artifact.features, x)})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["predictionId"])


def label(client: httpx.Client, pid: str) -> httpx.Response:
    return client.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": "critical",
                                          "stakeholder": "finance"})


def metric(client: httpx.Client, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if s.name == name)


def assert_refused_for_now(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "STORE_UNAVAILABLE"
    assert int(answer.headers["retry-after"]) >= 1


def test_a_server_started_while_postgresql_is_down_serves_and_keeps_every_record(
        stopped_postgres: postgres_env.Postgres, artifact: DemoArtifact, tmp_path: Path) -> None:
    with server(artifact, stopped_postgres.dsn, tmp_path) as client:  # ready although the store is down
        assert client.get("/v2/health/ready").status_code == 200
        made = [predict(client, artifact, i / 10) for i in range(50)]
        assert_refused_for_now(label(client, made[0]))
        assert_refused_for_now(client.get(f"/feedback/{made[1]}"))
        assert metric(client, "ml_feedback_store_up") == 0

        stopped_postgres.start()
        wait_until(lambda: metric(client, "ml_feedback_store_up") == 1, OUTAGE_BOUND_SECONDS, "the store back")
        statuses = [label(client, pid).status_code for pid in made]
        assert statuses == [201] * 50, "every answer given during the outage was recorded and can be labelled"
        assert metric(client, "ml_prediction_records_dropped_total") == 0


def test_postgresql_stopped_under_a_running_server_never_gets_a_false_201(
        postgres: postgres_env.Postgres, artifact: DemoArtifact, tmp_path: Path) -> None:
    with server(artifact, postgres.dsn, tmp_path) as client:
        wait_until(lambda: metric(client, "ml_feedback_store_up") == 1, OUTAGE_BOUND_SECONDS, "the store connected")
        before = predict(client, artifact, 0.1)
        assert label(client, before).status_code == 201
        postgres.stop()
        try:
            during = predict(client, artifact, 0.2)  # /predict does not need the store
            refused = label(client, during)
            assert_refused_for_now(refused)
            assert client.get("/v2/health/ready").status_code == 200
        finally:
            postgres.start()
        wait_until(lambda: label(client, during).status_code == 201, OUTAGE_BOUND_SECONDS, "the label stored")
        view = client.get(f"/feedback/{during}")
        assert view.status_code == 200 and [f["stakeholder"] for f in view.json()["feedback"]] == ["finance"]


def test_records_beyond_the_buffer_are_counted_and_the_newest_kept(
        stopped_postgres: postgres_env.Postgres, artifact: DemoArtifact, tmp_path: Path) -> None:
    with server(artifact, stopped_postgres.dsn, tmp_path, RECORD_BUFFER_MAX="20") as client:
        made = [predict(client, artifact, i / 10) for i in range(30)]
        assert metric(client, "ml_prediction_records_dropped_total") == 10
        status: dict[str, Any] = client.get("/status").json()
        assert status["pending_records"] == 20
        stopped_postgres.start()
        wait_until(lambda: metric(client, "ml_feedback_store_up") == 1, OUTAGE_BOUND_SECONDS, "the store back")
        assert [label(client, pid).status_code for pid in made[10:]] == [201] * 20
        dropped = client.post("/feedback", json={"predictionId": made[0], "label": "wrong", "severity": "critical",
                                                 "stakeholder": "finance"})
        assert dropped.status_code == 404, "a dropped record is counted above, and its feedback says unknown"
