"""The shadow stage in the server (issue 20), on real servers over loopback: the stable mirrors sampled answered
requests to the candidate, which compares and exports the comparison; no shadow answer is recorded, counted
toward an SLO or governance, and a full mirror queue drops (counted) without touching the stable's answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.shadow import score_psi
from model_server.testing import LOOPBACK, TokenIssuer, http_client, serve_in_thread, wait_until

ISSUER = TokenIssuer()
POD_ACCOUNT = "system:serviceaccount:default:modelwarden-model-server"  # the model's pods, in its namespace


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoArtifact]:
    root = tmp_path_factory.mktemp("shadow")
    trained = train("logistic", 4, 400, seed=3)
    shifted_estimator, sample = train("logistic", 4, 400, seed=3)
    shifted_estimator.intercept_ = shifted_estimator.intercept_ + 2.5  # a retrained model with shifted scores
    return {"v1": build_demo_artifact(root / "v1", trained=trained),
            "same": build_demo_artifact(root / "same", trained=trained),
            "shifted": build_demo_artifact(root / "shifted", trained=(shifted_estimator, sample)),
            "other-contract": build_demo_artifact(root / "other", trained=train("logistic", 5, 400, seed=4))}


def settings(art: DemoArtifact, version: str, track: str, tmp: Path, **extra: str) -> Settings:
    env = {**art.env("m", version), "MODEL_TRACK": track, "WARMUP_ROUNDS": "1", "DRIFT_INTERVAL_SECONDS": "0.2",
           "FEEDBACK_DSN": str(tmp / f"{version}-{track}.sqlite3"), **ISSUER.server_env(shadow_subject=POD_ACCOUNT),
           **extra}
    return Settings.from_env(env)


@contextmanager
def pair(artifacts: dict[str, DemoArtifact], candidate: str, tmp: Path, **stable_env: str) -> Iterator[
        tuple[str, str]]:
    # What the kubelet projects into the stable's pods (audience modelwarden.io/shadow).
    token_file = tmp / "shadow-token"
    token_file.write_text(ISSUER.token(POD_ACCOUNT, "modelwarden.io/shadow"))
    with ExitStack() as stack:
        cand = stack.enter_context(serve_in_thread(ModelServer(settings(artifacts[candidate], "v2", "canary", tmp))))
        stable = stack.enter_context(serve_in_thread(ModelServer(settings(
            artifacts["v1"], "v1", "stable", tmp, SHADOW_TARGET_URL=cand, SHADOW_TOKEN_FILE=str(token_file),
            **stable_env))))
        yield stable, cand


def send(url: str, art: DemoArtifact, n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(7)
    answers = []
    with http_client(url) as c:
        for _ in range(n):
            row = dict(zip(art.features, rng.normal(size=len(art.features)).tolist(), strict=True))
            r = c.post("/predict", json={"features": row})
            assert r.status_code == 200, r.text
            answers.append(r.json())
    return answers


def test_an_agreeing_candidate_compares_every_mirrored_row_and_records_nothing(
        artifacts: dict[str, DemoArtifact], tmp_path: Path) -> None:
    with pair(artifacts, "same", tmp_path, SHADOW_PERCENT="100") as (stable, cand):
        answers = send(stable, artifacts["v1"], 300)
        wait_until(lambda: metric(cand, "ml_shadow_compared_total") == 300, 30, "300 compared rows")
        assert metric(cand, "ml_shadow_agreements_total", track="shadow") == 300
        assert metric(cand, "ml_shadow_score_difference_bucket", le="0.001") == 300
        wait_until(lambda: metric(cand, "ml_shadow_score_psi") < 0.01, 10, "a PSI near 0")
        assert metric(stable, "ml_shadow_mirrored_total", result="sent") == 300
        # every user answer came from the stable; the candidate answered nobody and recorded nothing
        assert {a["version"] for a in answers} == {"v1"}
        assert metric(cand, "ml_inference_requests_total") == 0
        assert metric(cand, "ml_inference_latency_seconds_count") == 0
        assert metric(cand, "ml_model_errors_total") == 0
        status = httpx.get(f"{cand}/status").json()
        assert status["requests"] == 0 and status["pending_records"] == 0 and status["ml_state"] == "ENABLED|OK"


def test_a_shifted_candidate_disagrees_in_its_metrics(artifacts: dict[str, DemoArtifact], tmp_path: Path) -> None:
    with pair(artifacts, "shifted", tmp_path, SHADOW_PERCENT="100") as (stable, cand):
        send(stable, artifacts["v1"], 300)
        wait_until(lambda: metric(cand, "ml_shadow_compared_total") == 300, 30, "300 compared rows")
        assert metric(cand, "ml_shadow_agreements_total") < 270
        assert metric(cand, "ml_shadow_score_difference_bucket", le="0.05") < 270  # p99 above 0.05
        wait_until(lambda: metric(cand, "ml_shadow_score_psi") > 0.2, 10, "a large PSI")


def test_sampling_mirrors_about_the_share_asked(artifacts: dict[str, DemoArtifact], tmp_path: Path) -> None:
    with pair(artifacts, "same", tmp_path, SHADOW_PERCENT="10") as (stable, cand):
        send(stable, artifacts["v1"], 400)
        wait_until(lambda: metric(stable, "ml_shadow_mirrored_total") == metric(cand, "ml_shadow_compared_total"),
                   30, "every mirrored row compared")
        assert 10 <= metric(cand, "ml_shadow_compared_total") <= 80  # 40 expected


def test_a_feature_mismatch_counts_on_the_shadow_track_only(artifacts: dict[str, DemoArtifact],
                                                            tmp_path: Path) -> None:
    with pair(artifacts, "other-contract", tmp_path, SHADOW_PERCENT="100") as (stable, cand):
        send(stable, artifacts["v1"], 20)
        wait_until(lambda: metric(cand, "ml_shadow_errors_total", kind="FEATURE_MISMATCH") == 20, 30,
                   "20 mismatches")
        assert metric(cand, "ml_shadow_compared_total") == 0
        assert metric(cand, "ml_model_errors_total") == 0, "not the candidate's governance errors"
        assert metric(stable, "ml_shadow_mirrored_total", result="failed") == 20


def test_a_full_mirror_queue_drops_counted_copies_and_the_stable_answers_all(
        artifacts: dict[str, DemoArtifact], tmp_path: Path) -> None:
    # A candidate that accepts connections and never answers: both senders hang until their timeout.
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(64)
    try:
        target = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        app = ModelServer(settings(artifacts["v1"], "v1", "stable", tmp_path, SHADOW_TARGET_URL=target,
                                   SHADOW_PERCENT="100", SHADOW_QUEUE_SIZE="5", SHADOW_TIMEOUT_SECONDS="2"))
        with serve_in_thread(app) as stable:
            answers = send(stable, artifacts["v1"], 100)
            assert len(answers) == 100 and {a["version"] for a in answers} == {"v1"}
            assert metric(stable, "ml_inference_requests_total", outcome="success") == 100
            # The 2 senders hang on the silent candidate with what they took, 5 copies wait in the queue, and
            # the rest were dropped — none waited for. Once the hung posts time out, every copy is accounted for.
            dropped = metric(stable, "ml_shadow_mirrored_total", result="dropped")
            assert 0 < dropped <= 100 - 5 - 2
            wait_until(lambda: metric(stable, "ml_shadow_mirrored_total", result="failed") + dropped == 100, 30,
                       "every copy dropped or failed")
            assert metric(stable, "ml_shadow_mirrored_total", result="sent") == 0
    finally:
        silent.close()


def test_only_the_models_own_pods_may_compare_and_the_threshold_is_the_candidates(
        artifacts: dict[str, DemoArtifact], tmp_path: Path) -> None:
    art = artifacts["v1"]
    with serve_in_thread(ModelServer(settings(art, "v2", "canary", tmp_path, SHADOW_DECISION_THRESHOLD="0.5"))) as cand:
        rows = [dict(zip(art.features, [0.0] * len(art.features), strict=True))]
        with http_client(cand) as c:
            candidate_score = c.post("/predict", json={"features": rows[0]}).json()["prediction"]
        # A stable score on the other side of 0.5 from the candidate's: a disagreement at the candidate's threshold.
        stable_score = 0.99 if candidate_score < 0.5 else 0.01
        forged = {"rows": rows, "scores": [stable_score], "threshold": 1.5}

        def post(token: str | None, body: dict[str, object] = forged) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{cand}/shadow/compare", json=body, headers=headers)

        assert post(None).status_code == 401
        other_namespace = post(ISSUER.token("system:serviceaccount:team-b:modelwarden-model-server",
                                            "modelwarden.io/shadow"))
        assert other_namespace.status_code == 403 and other_namespace.json()["reason"] == "WRONG_SUBJECT"
        assert post(ISSUER.token(POD_ACCOUNT, "modelwarden.io/admin")).json()["reason"] == "WRONG_AUDIENCE"
        assert post(ISSUER.token()).json()["reason"] == "WRONG_AUDIENCE", "not even the operator's admin token"
        assert metric(cand, "ml_shadow_compared_total") == 0, "nothing refused was compared"
        # With threshold 1.5 both scores would be "negative" and agree; the candidate's own 0.5 says they disagree.
        answer = post(ISSUER.token(POD_ACCOUNT, "modelwarden.io/shadow"))
        assert answer.status_code == 200 and answer.json() == {"compared": 1, "agreed": 0}


def test_score_psi_is_zero_for_the_same_scores_and_large_for_shifted_ones() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=2000).tolist()
    assert score_psi(scores, scores) == pytest.approx(0.0, abs=1e-9)
    assert score_psi(scores, [min(1.0, s + 0.3) for s in scores]) > 0.5
