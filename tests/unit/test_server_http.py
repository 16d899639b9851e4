"""The HTTP contract of model_server, against a real uvicorn server on a loopback port in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from model_server.app import ModelServer
from model_server.batching import MicroBatcher
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.metrics import (
    ERROR_KINDS,
    FOLD_ANSWERS,
    LATENCY_BUCKETS,
    OUTCOMES,
    SEVERITIES,
    STAKEHOLDERS,
    ServerMetrics,
)
from model_server.testing import TokenIssuer, http_client, serve_in_thread, wait_until

ISSUER = TokenIssuer()
TOKEN = ISSUER.token(lifetime=3600)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    trained = train("logistic", 6, 600, seed=11)
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), trained=trained)


def settings_for(artifact: DemoArtifact, tmp: Path, **overrides: Any) -> Settings:
    s = Settings(model_name="fraud", model_version="2.1.0", model_track="canary", artifact_dir=artifact.directory,
                 artifact_sha256=artifact.sha256, model_format="skops",
                 **ISSUER.settings(fault_injection=True), feedback_dsn=str(tmp / "feedback.sqlite3"), warmup_rounds=2,
                 drift_interval_seconds=0.2,
                 drift_min_samples=1_000_000,  # repeated test rows would read as drift (tested on its own)
                 governance_max_model_errors=3)
    return replace(s, **overrides)


@pytest.fixture(scope="module")
def served(artifact: DemoArtifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelServer, str]]:
    app = ModelServer(settings_for(artifact, tmp_path_factory.mktemp("store")))
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def client(served: tuple[ModelServer, str]) -> Iterator[httpx.Client]:
    with http_client(served[1]) as c:
        yield c


def row(artifact: DemoArtifact, i: int = 0) -> dict[str, float]:
    return dict(zip(artifact.features, artifact.sample[i].tolist(), strict=True))


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


# ---------------------------------------------------------------- health and metadata

def test_health_and_metadata(client: httpx.Client, artifact: DemoArtifact) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json()["state"] == "ENABLED|OK"
    meta = client.get("/v2/models/fraud").json()
    assert meta["name"] == "fraud"
    assert meta["versions"] == ["2.1.0"]
    assert [i["name"] for i in meta["inputs"]] == list(artifact.features)
    assert meta["parameters"]["sha256"] == artifact.sha256
    assert client.get("/v2/models/fraud/versions/2.1.0").status_code == 200
    assert client.get("/v2/models/fraud/versions/2.1.0/ready").json()["ready"] is True
    assert client.get("/v2/models/other").json()["code"] == "MODEL_NOT_FOUND"
    assert client.get("/v2/models/fraud/versions/9").status_code == 404
    assert client.get("/v2").json()["name"] == "modelwarden-model-server"


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    wrong = client.get("/predict")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert client.post("/v2/models/fraud/nope").status_code == 404


def test_openapi_document_covers_the_api(client: httpx.Client, artifact: DemoArtifact) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/predict", "/feedback", "/feedback/{predictionId}", "/metrics", "/v2/health/ready",
                 "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", "/admin/flush",
                 "/admin/warmup", "/admin/reenable"):
        assert path in doc["paths"], path
    features = doc["components"]["schemas"]["PredictRequest"]["properties"]["features"]
    assert features["required"] == list(artifact.features)
    assert features["additionalProperties"] is False
    assert doc["components"]["schemas"]["FeedbackIn"]["required"] == ["predictionId", "label", "severity",
                                                                      "stakeholder"]
    # The durability contract is where a client reads the API (issue 16).
    contract = doc["paths"]["/feedback"]["post"]["description"]
    assert all(term in contract for term in ("`201` means the label is committed", "kill -9", "UNKNOWN_PREDICTION",
                                             "FEEDBACK_RETENTION_SECONDS", "python -m model_server.export"))


# ---------------------------------------------------------------- predict

def test_predict_single_reorders_by_name(client: httpx.Client, artifact: DemoArtifact) -> None:
    features = row(artifact, 3)
    reversed_order = dict(reversed(list(features.items())))
    body = client.post("/predict", json={"features": reversed_order}).json()
    expected = artifact.estimator.predict_proba(artifact.sample[3:4])[0, 1]
    assert body["prediction"] == pytest.approx(expected, rel=1e-12)
    assert body | {"prediction": None, "predictionId": None} == {
        "model": "fraud", "version": "2.1.0", "track": "canary", "state": "ENABLED|OK", "neutral": False,
        "prediction": None, "predictionId": None}
    assert len(body["predictionId"]) == 32


def test_predict_batch(client: httpx.Client, artifact: DemoArtifact) -> None:
    rows = [row(artifact, i) for i in range(20)]
    body = client.post("/predict", json={"instances": rows}).json()
    got = [p["prediction"] for p in body["predictions"]]
    np.testing.assert_allclose(got, artifact.estimator.predict_proba(artifact.sample[:20])[:, 1], rtol=1e-12)
    assert len({p["predictionId"] for p in body["predictions"]}) == 20


def test_feature_mismatch_is_422_with_details_and_counted(client: httpx.Client, artifact: DemoArtifact) -> None:
    before = metric(client, "ml_model_errors_total", kind="FEATURE_MISMATCH", track="canary", version="2.1.0")
    features = row(artifact)
    del features["feature_02"]
    features["feature_02_v2"] = 1.0
    features["spread"] = 0.5
    response = client.post("/predict", json={"features": features})
    assert response.status_code == 422
    assert response.json() == {
        "error": "FEATURE_MISMATCH", "contract": "demo-v1", "expected_count": 6, "provided_count": 7,
        "missing_features": ["feature_02"], "unexpected_features": ["feature_02_v2", "spread"]}
    after = metric(client, "ml_model_errors_total", kind="FEATURE_MISMATCH", track="canary", version="2.1.0")
    assert after == before + 1


def test_feature_mismatch_in_a_batch_names_the_row(client: httpx.Client, artifact: DemoArtifact) -> None:
    rows = [row(artifact, 0), {k: v for k, v in row(artifact, 1).items() if k != "feature_05"}]
    body = client.post("/predict", json={"instances": rows}).json()
    assert body["row"] == 1
    assert body["missing_features"] == ["feature_05"]


@pytest.mark.parametrize(("payload", "status", "error"), [
    (b"{not json", 400, "MALFORMED_JSON"),
    (b"", 400, "MALFORMED_JSON"),
    (b"[1, 2]", 422, "INVALID_INPUT"),
    (b'{"features": [1, 2]}', 422, "INVALID_INPUT"),
    (b'{"instances": []}', 422, "INVALID_INPUT"),
    (b'{"instances": [1]}', 422, "INVALID_INPUT"),
    (b'{"features": {}, "instances": []}', 422, "INVALID_INPUT"),
    (b'{"features": {"feature_00": NaN}}', 400, "MALFORMED_JSON"),
])
def test_malformed_bodies_are_4xx_with_a_code(client: httpx.Client, payload: bytes, status: int, error: str) -> None:
    response = client.post("/predict", content=payload)
    assert (response.status_code, response.json()["error"]) == (status, error)


@pytest.mark.parametrize("bad", ["1.5", None, True, [1.0], {"v": 1}])
def test_wrong_value_types_name_the_feature(client: httpx.Client, artifact: DemoArtifact, bad: object) -> None:
    features: dict[str, object] = dict(row(artifact))
    features["feature_04"] = bad
    body = client.post("/predict", json={"features": features})
    assert body.status_code == 422
    assert body.json()["feature"] == "feature_04"


def test_oversized_body_is_413(client: httpx.Client) -> None:
    response = client.post("/predict", content=b"[" + b"1," * 3_000_000 + b"1]")
    assert response.status_code == 413
    assert response.json()["error"] == "BODY_TOO_LARGE"


# ---------------------------------------------------------------- OIP infer

def test_infer_by_named_tensors(client: httpx.Client, artifact: DemoArtifact) -> None:
    inputs = [{"name": f, "shape": [3], "datatype": "FP64", "data": artifact.sample[:3, j].tolist()}
              for j, f in reversed(list(enumerate(artifact.features)))]
    body = client.post("/v2/models/fraud/versions/2.1.0/infer", json={"id": "r1", "inputs": inputs}).json()
    assert body["id"] == "r1"
    assert body["model_version"] == "2.1.0"
    prediction, ids = body["outputs"]
    assert prediction["name"] == "prediction" and prediction["shape"] == [3]
    np.testing.assert_allclose(prediction["data"], artifact.estimator.predict_proba(artifact.sample[:3])[:, 1],
                               rtol=1e-12)
    assert ids["datatype"] == "BYTES" and len(ids["data"]) == 3


def test_infer_positional_tensor_is_checked_by_count(client: httpx.Client, artifact: DemoArtifact) -> None:
    ok = client.post("/v2/models/fraud/infer", json={"inputs": [
        {"name": "input-0", "shape": [2, 6], "datatype": "FP32", "data": artifact.sample[:2].tolist()}]})
    assert ok.status_code == 200
    short = client.post("/v2/models/fraud/infer", json={"inputs": [
        {"name": "input-0", "shape": [1, 5], "datatype": "FP64", "data": [0.0] * 5}]})
    assert short.status_code == 422
    assert short.json() | {"missing_features": None, "error": None} == {
        "error": None, "code": "FEATURE_MISMATCH", "contract": "demo-v1", "expected_count": 6, "provided_count": 5,
        "missing_features": None, "unexpected_features": []}
    assert "expects 6 features, got 5" in short.json()["error"], "OIP clients show their users this text"
    assert short.json()["missing_features"] == ["feature_05"]


def test_infer_named_tensors_with_a_wrong_name(client: httpx.Client, artifact: DemoArtifact) -> None:
    inputs = [{"name": f if f != "feature_01" else "feature_1", "shape": [1], "datatype": "FP64", "data": [0.0]}
              for f in artifact.features]
    body = client.post("/v2/models/fraud/infer", json={"inputs": inputs}).json()
    assert (body["code"], body["missing_features"], body["unexpected_features"]) == (
        "FEATURE_MISMATCH", ["feature_01"], ["feature_1"])


def test_infer_shape_must_match_data(client: httpx.Client) -> None:
    body = client.post("/v2/models/fraud/infer", json={"inputs": [
        {"name": "input-0", "shape": [2, 6], "datatype": "FP64", "data": [0.0] * 11}]})
    assert body.status_code == 422
    assert "needs 12 values" in body.json()["error"]


# ---------------------------------------------------------------- feedback

def test_feedback_is_joined_to_its_prediction(client: httpx.Client, artifact: DemoArtifact) -> None:
    prediction = client.post("/predict", json={"features": row(artifact, 5)}).json()
    pid = prediction["predictionId"]
    before = metric(client, "ml_feedback_labels_total", severity="critical", stakeholder="regulator",
                    version="2.1.0")
    created = client.post("/feedback", json={"predictionId": pid, "label": "should have flagged",
                                              "severity": "critical", "stakeholder": "regulator",
                                              "comment": "see case 41", "author": "r.smith"})
    assert created.status_code == 201
    assert created.json()["predictionId"] == pid
    client.post("/feedback", json={"predictionId": pid, "label": 0, "severity": "minor", "stakeholder": "finance"})
    view = client.get(f"/feedback/{pid}").json()
    assert view["predictionId"] == pid
    assert view["prediction"]["prediction"] == prediction["prediction"]
    assert view["prediction"]["features"] == row(artifact, 5)
    assert view["prediction"] | {"features": None, "prediction": None, "createdAt": None} == {
        "model": "fraud", "version": "2.1.0", "track": "canary", "sha256": artifact.sha256, "state": "ENABLED|OK",
        "features": None, "prediction": None, "createdAt": None}
    assert [(f["label"], f["severity"], f["stakeholder"]) for f in view["feedback"]] == [
        ("should have flagged", "critical", "regulator"), (0, "minor", "finance")]
    # Each label carries what made the prediction it labels: version, track and the model file's sha256.
    assert {(f["version"], f["track"], f["sha256"]) for f in view["feedback"]} == {
        ("2.1.0", "canary", artifact.sha256)}
    assert view["feedback"][0]["comment"] == "see case 41"
    after = metric(client, "ml_feedback_labels_total", severity="critical", stakeholder="regulator",
                   version="2.1.0")
    assert after == before + 1


def test_feedback_for_an_unknown_prediction_is_404(client: httpx.Client) -> None:
    response = client.post("/feedback", json={"predictionId": "0" * 32, "label": 1, "severity": "info",
                                              "stakeholder": "other"})
    assert response.status_code == 404
    assert response.json()["error"] == "UNKNOWN_PREDICTION"
    assert client.get(f"/feedback/{'0' * 32}").status_code == 404
    assert client.get("/feedback/..%2F..%2Fetc").status_code == 404


@pytest.mark.parametrize("body", [
    {"predictionId": "abc", "label": 1, "severity": "urgent", "stakeholder": "finance"},
    {"predictionId": "abc", "label": 1, "severity": "critical", "stakeholder": "ceo"},
    {"predictionId": "abc", "label": [1], "severity": "critical", "stakeholder": "finance"},
    {"predictionId": 7, "label": 1, "severity": "critical", "stakeholder": "finance"},
    {"predictionId": "abc", "severity": "critical", "stakeholder": "finance"},
    {"predictionId": "abc", "label": 1, "severity": "critical", "stakeholder": "finance", "extra": 1},
    {"predictionId": "a b", "label": 1, "severity": "critical", "stakeholder": "finance"},
])
def test_invalid_feedback_is_422_with_the_fields(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/feedback", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "INVALID_INPUT"
    assert response.json()["errors"]


# ---------------------------------------------------------------- admin

def test_admin_requires_the_operators_token(client: httpx.Client) -> None:
    assert client.post("/admin/flush").status_code == 401
    assert client.post("/admin/flush", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    wrong = client.post("/admin/flush", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 403 and wrong.json()["reason"] == "MALFORMED_TOKEN"
    model_pod = ISSUER.token("system:serviceaccount:default:modelwarden-model-server")
    other = client.post("/admin/flush", headers={"Authorization": f"Bearer {model_pod}"})
    assert other.status_code == 403 and other.json() == {
        "error": "FORBIDDEN", "message": "the token does not prove the caller this endpoint accepts",
        "reason": "WRONG_SUBJECT", "audience": "modelwarden.io/admin"}
    flushed = client.post("/admin/flush", headers=ADMIN)
    assert flushed.status_code == 200
    assert flushed.json()["flushed"]["unsaved_records"] == 0
    warmed = client.post("/admin/warmup", headers=ADMIN)
    assert warmed.status_code == 200 and warmed.json()["warmed"] is True
    assert client.post("/admin/reenable", headers=ADMIN, json={"actor": "a", "reason": "r"}).status_code == 409


def test_admin_is_refused_without_a_configured_verifier(artifact: DemoArtifact, tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path, service_account_jwks=None))
    with serve_in_thread(app) as url:
        assert httpx.post(f"{url}/admin/flush", headers=ADMIN).json()["error"] == "ADMIN_DISABLED"


# ---------------------------------------------------------------- metrics

def test_a_scrape_counts_every_answer_given_before_it() -> None:
    metrics = ServerMetrics("fraud", "2.1.0", "canary", "ab" * 32, ())
    registry = CollectorRegistry()
    observed = Histogram("ml_inference_latency_seconds", "Inference request latency (server side).",
                         ["model", "version", "track"], buckets=LATENCY_BUCKETS, registry=registry)
    # Across a batch fold and up to a scrape: values on bucket bounds, between them, and beyond the last.
    latencies = [*LATENCY_BUCKETS, 0.0, 3e-5, 0.0003, 0.07, 9.0] * (FOLD_ANSWERS // 10 + 1)
    for i, seconds in enumerate(latencies):
        metrics.answered("error" if i % 3 == 0 else "success", seconds)
        observed.labels("fraud", "2.1.0", "canary").observe(seconds)

    def samples(text: bytes, family: str) -> dict[tuple[str, str, str], float]:
        return {(s.name, s.labels.get("le", ""), s.labels.get("outcome", "")): s.value
                for f in text_string_to_metric_families(text.decode()) if f.name == family for s in f.samples}

    scraped = metrics.render()
    assert samples(scraped, "ml_inference_latency_seconds") == pytest.approx(
        samples(generate_latest(registry), "ml_inference_latency_seconds")), "as if each answer were observed"
    outcomes = samples(scraped, "ml_inference_requests")
    assert outcomes[("ml_inference_requests_total", "", "error")] == len(range(0, len(latencies), 3))
    assert outcomes[("ml_inference_requests_total", "", "success")] == len(latencies) - len(range(0, len(latencies), 3))


def test_every_label_set_starts_at_zero(artifact: DemoArtifact, tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path))
    with serve_in_thread(app) as url:
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    mv = {"model": "fraud", "version": "2.1.0"}
    mvt = {**mv, "track": "canary"}

    def labels(name: str, suffix: str = "") -> list[dict[str, str]]:
        return [s.labels for s in families[name].samples if s.name == name + suffix]

    def values(name: str, suffix: str = "") -> list[float]:
        return [s.value for s in families[name].samples if s.name == name + suffix]

    assert labels("ml_inference_requests", "_total") == [{**mvt, "outcome": o} for o in OUTCOMES]
    assert labels("ml_model_errors", "_total") == [{**mvt, "kind": k} for k in ERROR_KINDS]
    assert labels("ml_feedback_labels", "_total") == [
        {**mv, "severity": s, "stakeholder": h} for s in SEVERITIES for h in STAKEHOLDERS]
    assert set(values("ml_inference_requests", "_total") + values("ml_model_errors", "_total")
               + values("ml_feedback_labels", "_total")) == {0.0}
    assert labels("ml_inference_latency_seconds", "_count") == [mvt]
    assert {s.labels["state"]: s.value for s in families["ml_governance_state"].samples} == {
        "ENABLED|OK": 1.0, "ENABLED|DEGRADED": 0.0, "DISABLED_CONFIG": 0.0, "DISABLED_BY_GOVERNANCE": 0.0}
    assert [(s.labels, s.value) for s in families["ml_model_info"].samples] == [
        ({**mv, "sha256": artifact.sha256}, 1.0)]
    drift = {s.labels["feature"] for s in families["ml_feature_drift_psi"].samples}
    assert drift == {*artifact.features, "__prediction__"}
    assert set(values("ml_feature_drift_psi")) == {0.0}


def test_drift_is_computed_off_the_request_path(artifact: DemoArtifact, tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path, drift_window_size=400, drift_min_samples=400))
    shifted = artifact.sample[:400].copy()
    shifted[:, 2] += 5.0
    rows = [dict(zip(artifact.features, r.tolist(), strict=True)) for r in shifted]
    with serve_in_thread(app) as url, http_client(url) as c:
        c.post("/predict", json={"instances": rows[:200]})
        time.sleep(0.5)
        assert metric(c, "ml_feature_drift_psi", feature="feature_02") == 0.0  # too few samples yet
        c.post("/predict", json={"instances": rows[200:]})
        wait_until(lambda: metric(c, "ml_feature_drift_psi", feature="feature_02") > 1.0, 10, "drift PSI")
        assert metric(c, "ml_feature_drift_psi", feature="feature_00") < 0.1
        assert metric(c, "ml_feature_drift_psi", feature="__prediction__") > 0.0
        assert c.get("/status").json()["ml_state"] == "ENABLED|DEGRADED"


# ---------------------------------------------------------------- governance and the kill switch

def test_kill_switch_answers_neutral_without_restart(served: tuple[ModelServer, str], client: httpx.Client,
                                                     artifact: DemoArtifact) -> None:
    app = served[0]
    app.set_config_enabled(False, "test")
    try:
        body = client.post("/predict", json={"features": row(artifact)}).json()
        assert (body["prediction"], body["state"], body["neutral"]) == (0.0, "DISABLED_CONFIG", True)
        # While disabled the contract is not consulted: every predict answers neutral.
        assert client.post("/predict", json={"features": {"x": 1}}).json()["prediction"] == 0.0
        assert metric(client, "ml_governance_state", state="DISABLED_CONFIG") == 1.0
        assert client.get("/v2/health/ready").status_code == 200
        view = client.get(f"/feedback/{body['predictionId']}").json()
        assert view["prediction"]["state"] == "DISABLED_CONFIG"
    finally:
        app.set_config_enabled(True, "test")
    assert client.post("/predict", json={"features": row(artifact)}).json()["state"] == "ENABLED|OK"


def test_model_errors_over_threshold_disable_until_reenabled(artifact: DemoArtifact, tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path, neutral_prediction=0.5))
    with serve_in_thread(app) as url, http_client(url) as c:
        real = app.batcher

        def broken(x: np.ndarray) -> np.ndarray:
            raise RuntimeError("model blew up")

        app.batcher = MicroBatcher(broken)
        for _ in range(3):
            failed = c.post("/predict", json={"features": row(artifact)})
            assert (failed.status_code, failed.json()["error"]) == (500, "PREDICT_ERROR")
        app.batcher = real
        neutral = c.post("/predict", json={"features": row(artifact)}).json()
        assert (neutral["prediction"], neutral["state"]) == (0.5, "DISABLED_BY_GOVERNANCE")
        assert metric(c, "ml_model_errors_total", kind="PREDICT_ERROR") == 3
        assert metric(c, "ml_inference_requests_total", outcome="error") == 3
        assert metric(c, "ml_inference_requests_total", outcome="neutral") == 1
        assert c.get("/status").json()["ml_state"] == "DISABLED_BY_GOVERNANCE"
        assert c.post("/admin/reenable", json={"actor": "oncall"}, headers=ADMIN).status_code == 422
        lifted = c.post("/admin/reenable", json={"actor": "oncall", "reason": "fixed"}, headers=ADMIN)
        assert lifted.json() == {"reenabled": True, "state": "ENABLED|OK"}
        assert c.post("/predict", json={"features": row(artifact)}).json()["neutral"] is False


def test_started_disabled_never_loads_the_model(artifact: DemoArtifact, tmp_path: Path) -> None:
    """The kill switch means no loading attempts: even a tampered artifact is not touched until enabled."""
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in artifact.directory.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    (tampered / "model.skops").write_bytes(b"tampered")
    app = ModelServer(settings_for(artifact, tmp_path, artifact_dir=tampered, model_enabled=False))
    with serve_in_thread(app) as url, http_client(url) as c:
        body = c.post("/predict", json={"features": {"anything": 1}}).json()
        assert (body["prediction"], body["state"]) == (0.0, "DISABLED_CONFIG")
        assert app.load_status == "not_loaded"
        assert metric(c, "ml_model_info") == 0.0
        app.set_config_enabled(True, "test")
        wait_until(lambda: app.load_status == "failed", 10, "the load attempt")
        assert c.get("/v2/health/ready").status_code == 503
        assert c.post("/predict", json={"features": row(artifact)}).status_code == 503


def test_tampered_artifact_is_not_ready_and_serves_nothing(artifact: DemoArtifact, tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path, artifact_sha256="0" * 64))
    with serve_in_thread(app, wait_ready=False) as url, http_client(url) as c:
        wait_until(lambda: app.load_status == "failed", 10, "the load attempt")
        assert c.get("/v2/health/live").status_code == 200
        ready = c.get("/v2/health/ready")
        assert ready.status_code == 503
        assert f"!= expected {'0' * 64}" in ready.json()["reason"]
        refused = c.post("/predict", json={"features": row(artifact)})
        assert (refused.status_code, refused.json()["error"]) == (503, "MODEL_UNAVAILABLE")
        assert metric(c, "ml_model_errors_total", kind="ARTIFACT_REJECTED") == 1
        assert metric(c, "ml_inference_requests_total", outcome="unavailable") == 1


def test_structured_logs(artifact: DemoArtifact, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_server import logs

    logs.configure("INFO")
    app = ModelServer(settings_for(artifact, tmp_path, heartbeat_seconds=0.1))
    with serve_in_thread(app) as url:
        httpx.post(f"{url}/predict", json={"features": {"nope": 1}})
        wait_until(lambda: app.governance.model_errors == 1, 5, "the error to be counted")
        time.sleep(0.3)  # at least one heartbeat after it
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for event in events:
        assert {"ts", "level", "component", "event", "message"} <= set(event)
    heartbeat = [e for e in events if e["event"] == "HEARTBEAT"][-1]
    assert heartbeat["component"] == "ML_GOVERNANCE"
    assert heartbeat["ml_state"] == "ENABLED|OK"
    assert heartbeat["model_errors"] == 1
    assert heartbeat["message"] == "HEARTBEAT ml_state=ENABLED|OK model_errors=1"
    assert (heartbeat["model"], heartbeat["version"], heartbeat["track"]) == ("fraud", "2.1.0", "canary")
    mismatch = next(e for e in events if e["event"] == "FEATURE_MISMATCH")
    assert mismatch["component"] == "FEATURE_CONTRACT"
    assert mismatch["expected_count"] == 6 and mismatch["provided_count"] == 1
    assert mismatch["missing_features"] == list(artifact.features)
    loaded = next(e for e in events if e["event"] == "MODEL_LOADED")
    assert loaded["sha256"] == artifact.sha256


def test_injected_faults_are_errors_for_the_sli_but_not_model_errors(client: httpx.Client,
                                                                      artifact: DemoArtifact) -> None:
    labels = {"model": "fraud", "version": "2.1.0", "track": "canary"}
    errors_before = metric(client, "ml_inference_requests_total", **labels, outcome="error")
    model_errors_before = sum(metric(client, "ml_model_errors_total", **labels, kind=k)
                              for k in ("PREDICT_ERROR", "NON_FINITE_OUTPUT"))
    body = {"errorRatio": 1.0, "actor": "chaos", "reason": "rollback drill"}
    assert client.post("/admin/faults", json=body).status_code == 401, "admin only"
    assert client.post("/admin/faults", json=body, headers=ADMIN).status_code == 200
    try:
        resp = client.post("/predict", json={"features": row(artifact)})
        assert resp.status_code == 500 and resp.json()["error"] == "INJECTED_FAULT"
    finally:
        client.post("/admin/faults", json={**body, "errorRatio": 0.0}, headers=ADMIN)
    assert client.post("/predict", json={"features": row(artifact)}).status_code == 200
    assert metric(client, "ml_inference_requests_total", **labels, outcome="error") == errors_before + 1
    assert sum(metric(client, "ml_model_errors_total", **labels, kind=k)
               for k in ("PREDICT_ERROR", "NON_FINITE_OUTPUT")) == model_errors_before
    assert client.post("/admin/faults", json={**body, "errorRatio": 2}, headers=ADMIN).status_code == 422


def test_fault_injection_does_not_exist_unless_the_server_was_started_with_it(artifact: DemoArtifact,
                                                                              tmp_path: Path) -> None:
    app = ModelServer(settings_for(artifact, tmp_path, fault_injection=False))
    with serve_in_thread(app) as url:
        body = {"errorRatio": 1.0, "actor": "chaos", "reason": "drill"}
        assert httpx.post(f"{url}/admin/faults", json=body, headers=ADMIN).status_code == 404
        assert httpx.post(f"{url}/admin/flush", headers=ADMIN).status_code == 200


def test_admin_feedback_lists_the_predictions_behind_critical_labels(client: httpx.Client,
                                                                     artifact: DemoArtifact) -> None:
    since = time.time() - 1
    ids = [client.post("/predict", json={"features": row(artifact, i)}).json()["predictionId"] for i in range(3)]
    for pid, stakeholder, severity in zip(ids, ("finance", "regulator", "risk"), ("critical", "critical", "critical"),
                                          strict=True):
        assert client.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": severity,
                                              "stakeholder": stakeholder}).status_code == 201
    query = {"since": str(since), "stakeholder": ["finance", "regulator"], "severity": "critical"}
    assert client.get("/admin/feedback", params=query).status_code == 401, "admin only"
    found = client.get("/admin/feedback", params=query, headers=ADMIN)
    assert found.status_code == 200, found.text
    records = found.json()["records"]
    assert [r["predictionId"] for r in records] == ids[:2]
    assert records[0] == client.get(f"/feedback/{ids[0]}").json(), "the same view as GET /feedback/{id}"
    assert client.get("/admin/feedback", params={"since": "yesterday"}, headers=ADMIN).status_code == 400
