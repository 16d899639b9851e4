"""A 201 from POST /feedback survives kill -9 of the server a moment later (SQLite and PostgreSQL), and a
graceful stop answers in-flight requests and flushes their prediction records. Real server processes."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    # ONNX: the server then never imports scikit-learn and starts in a fraction of the time.
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), fmt="onnx",
                               trained=train("logistic", 5, 300, seed=2))


def _env(artifact: DemoArtifact, dsn: str) -> dict[str, str]:
    return {**artifact.env("durable", "3.0.0"), "FEEDBACK_DSN": dsn, "WARMUP_ROUNDS": "1", "LOG_LEVEL": "WARNING"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_feedback_survives_kill_9(artifact: DemoArtifact, tmp_path: Path, backend: str,
                                               request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("postgres").dsn if backend == "postgresql" else str(tmp_path / "fb.sqlite3")
    env = _env(artifact, dsn)
    log = tmp_path / "server.log"
    row = dict.fromkeys(artifact.features, 0.25)
    with serve_subprocess(env, log_path=log) as (url, proc), http_client(url) as c:
        prediction = c.post("/predict", json={"features": row}).json()
        created = c.post("/feedback", json={"predictionId": prediction["predictionId"], "label": "wrong",
                                            "severity": "critical", "stakeholder": "regulator"})
        assert created.status_code == 201
        proc.send_signal(signal.SIGKILL)  # no shutdown hook, no flush: only what was durable survives
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL

    with serve_subprocess(env, log_path=log) as (url, _), http_client(url) as c:
        view = c.get(f"/feedback/{prediction['predictionId']}")
        assert view.status_code == 200, view.text
        body = view.json()
        assert body["prediction"]["prediction"] == prediction["prediction"]
        assert body["prediction"]["version"] == "3.0.0"
        assert [(f["label"], f["severity"], f["stakeholder"]) for f in body["feedback"]] == [
            ("wrong", "critical", "regulator")]
        assert body["feedback"][0]["feedbackId"] == created.json()["feedbackId"]


def test_graceful_stop_answers_in_flight_requests_and_flushes_records(artifact: DemoArtifact,
                                                                       tmp_path: Path) -> None:
    env = {**_env(artifact, str(tmp_path / "fb.sqlite3")), "MAX_BATCH_ROWS": "50000",
           "MAX_BODY_BYTES": str(64 * 1024 * 1024), "LOG_LEVEL": "INFO"}
    log = tmp_path / "server.log"
    rows = [dict.fromkeys(artifact.features, float(i % 7)) for i in range(10_000)]
    answers: list[httpx.Response] = []
    with serve_subprocess(env, log_path=log) as (url, proc):
        client = http_client(url, timeout=60)
        in_flight = threading.Thread(target=lambda: answers.append(client.post("/predict", json={"instances": rows})))
        in_flight.start()
        time.sleep(0.2)  # the request is being received or scored
        proc.send_signal(signal.SIGTERM)
        in_flight.join(60)
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "terminated".
        assert proc.wait(30) == -signal.SIGTERM
        client.close()
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    stopped = [json.loads(line) for line in log.read_text().splitlines() if '"SERVER_STOPPED"' in line]
    assert len(stopped) == 1 and stopped[0]["unsaved_records"] == 0
    predictions = answers[0].json()["predictions"]
    assert len(predictions) == 10_000

    with serve_subprocess(env, log_path=log) as (url, _), http_client(url) as c:
        last = c.get(f"/feedback/{predictions[-1]['predictionId']}")
        assert last.status_code == 200, last.text  # recorded at shutdown although no feedback came yet
        assert last.json()["prediction"]["prediction"] == predictions[-1]["prediction"]
