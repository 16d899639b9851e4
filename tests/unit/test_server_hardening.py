"""Issue 15: what a hostile or careless client could do to model_server, each as a regression test against a
real server on a loopback port (small, valid-looking requests)."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_server.app import ModelServer
from model_server.batching import MicroBatcher
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, ModelFormat, build_demo_artifact, train
from model_server.testing import LOOPBACK, TokenIssuer, http_client, serve_in_thread

ISSUER = TokenIssuer()
TOKEN = ISSUER.token(lifetime=3600)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
N_FEATURES = 28
MAX_ROWS = 10_000
# A logistic model whose coefficients have both signs: huge inputs of both signs overflow its dot product
# to inf - inf = NaN (checked below, so that the test cannot pass for the wrong reason).
TRAINED = train("logistic", N_FEATURES, 2000, seed=7)


def settings_for(artifact: DemoArtifact, tmp: Path, fmt: ModelFormat = "skops", **overrides: Any) -> Settings:
    s = Settings(model_name="credit", model_version="4.0.0", artifact_dir=artifact.directory,
                 artifact_sha256=artifact.sha256, model_format=fmt, **ISSUER.settings(),
                 feedback_dsn=str(tmp / "feedback.sqlite3"), warmup_rounds=1, drift_min_samples=1_000_000,
                 governance_max_model_errors=3, max_batch_rows=MAX_ROWS, feedback_join_wait_seconds=0)
    return replace(s, **overrides)


@pytest.fixture(scope="module", params=["skops", "onnx"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ModelServer, str, DemoArtifact]]:
    fmt: ModelFormat = request.param
    artifact = build_demo_artifact(tmp_path_factory.mktemp(fmt), fmt=fmt, trained=TRAINED)
    app = ModelServer(settings_for(artifact, tmp_path_factory.mktemp("store"), fmt))
    with serve_in_thread(app) as url:
        yield app, url, artifact


@pytest.fixture
def client(served: tuple[ModelServer, str, DemoArtifact]) -> Iterator[httpx.Client]:
    with http_client(served[1]) as c:
        yield c


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def row(artifact: DemoArtifact, i: int = 0) -> dict[str, float]:
    return dict(zip(artifact.features, artifact.sample[i].tolist(), strict=True))


def extreme_row(artifact: DemoArtifact, fmt: str) -> dict[str, float]:
    """Finite values that make this model's score non-finite: 1.7e308 (float64) or 3.5e38 (beyond float32,
    which the ONNX model casts to) for every feature; with coefficients of both signs, inf - inf."""
    return dict.fromkeys(artifact.features, 1.7e308 if fmt == "skops" else 3.5e38)


# ---------------------------------------------------------------- a client cannot switch the model off

def test_extreme_inputs_are_the_clients_fault_and_cannot_disable_the_model(
        served: tuple[ModelServer, str, DemoArtifact], client: httpx.Client) -> None:
    app, _, artifact = served
    fmt = app.settings.model_format
    extreme = extreme_row(artifact, fmt)
    assert app.model is not None
    with np.errstate(all="ignore"):
        score = app.model.score(np.array([[extreme[f] for f in artifact.features]]))
    assert not np.isfinite(score).all(), "precondition: these inputs must make the model's score non-finite"
    errors_before = metric(client, "ml_inference_requests_total", outcome="error")
    client_errors_before = metric(client, "ml_inference_requests_total", outcome="client_error")
    non_finite_before = metric(client, "ml_model_errors_total", kind="NON_FINITE_OUTPUT")

    for _ in range(3 * app.settings.governance_max_model_errors):
        answer = client.post("/predict", json={"features": extreme})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == "INPUT_OUT_OF_RANGE"
        assert answer.json()["features"] == list(artifact.features[:20])
    batch = client.post("/predict", json={"instances": [row(artifact, 0), extreme, row(artifact, 1)]})
    assert (batch.status_code, batch.json()["rows"]) == (422, [1])
    tensor = client.post("/v2/models/credit/infer", json={"inputs": [
        {"name": "x", "shape": [1, N_FEATURES], "datatype": "FP64", "data": list(extreme.values())}]})
    assert (tensor.status_code, tensor.json()["code"]) == (422, "INPUT_OUT_OF_RANGE")

    assert client.get("/status").json()["ml_state"] == "ENABLED|OK"
    normal = client.post("/predict", json={"features": row(artifact)}).json()
    assert (normal["neutral"], normal["state"]) == (False, "ENABLED|OK")
    assert metric(client, "ml_inference_requests_total", outcome="error") == errors_before
    assert metric(client, "ml_inference_requests_total", outcome="client_error") == client_errors_before + 11
    assert metric(client, "ml_model_errors_total", kind="NON_FINITE_OUTPUT") == non_finite_before


def test_out_of_range_inputs_that_score_finitely_are_served(served: tuple[ModelServer, str, DemoArtifact],
                                                            client: httpx.Client) -> None:
    """Far outside the training range but the model answers: nothing to blame anyone for."""
    _, _, artifact = served
    far = dict.fromkeys(artifact.features, 1e12)
    answer = client.post("/predict", json={"features": far})
    assert answer.status_code == 200, answer.text
    assert 0.0 <= answer.json()["prediction"] <= 1.0


def test_a_non_finite_score_on_ordinary_inputs_is_a_model_fault(tmp_path: Path) -> None:
    """The other side of the line: inputs inside the training range, a NaN from the model. That is counted,
    burns the error budget and, over the threshold, switches the model off."""
    artifact = build_demo_artifact(tmp_path / "a", trained=TRAINED)
    app = ModelServer(settings_for(artifact, tmp_path))
    with serve_in_thread(app) as url, http_client(url) as c:
        app.batcher = MicroBatcher(lambda x: np.full(len(x), np.nan))  # the model now answers NaN
        for _ in range(3):
            answer = c.post("/predict", json={"features": row(artifact)})
            assert (answer.status_code, answer.json()["error"]) == (422, "NON_FINITE_OUTPUT")
        assert metric(c, "ml_model_errors_total", kind="NON_FINITE_OUTPUT") == 3
        assert metric(c, "ml_inference_requests_total", outcome="error") == 3
        assert c.get("/status").json()["ml_state"] == "DISABLED_BY_GOVERNANCE"


def test_non_finite_binary_inputs_are_refused_before_the_model(client: httpx.Client) -> None:
    data = np.full((1, N_FEATURES), 0.5)
    data[0, 3] = np.nan
    response = post_binary(client, "/v2/models/credit/infer", "x", data)
    assert response.status_code == 422
    assert response.json()["code"] == "INVALID_INPUT" and "finite" in response.json()["error"]


# ---------------------------------------------------------------- bounded before proportional work

@pytest.mark.parametrize("shape", [
    [2**62] * 600,                          # 5.8 KB of huge dimensions: was a 500 (formatting their product)
    [10**9, 10**9],
    [2**70, 1],
    [3, 2, N_FEATURES],
    [],
])
def test_absurd_shapes_are_422_before_any_arithmetic(client: httpx.Client, shape: list[int]) -> None:
    response = client.post("/v2/models/credit/infer", json={"inputs": [
        {"name": "x", "shape": shape, "datatype": "FP64", "data": [0.0]}]})
    assert response.status_code == 422, response.text[:300]
    assert response.json()["code"] == "INVALID_INPUT"
    assert len(response.content) < 2000


def test_a_body_of_huge_dimensions_is_refused(client: httpx.Client) -> None:
    shape = [2**62] * 190_000  # 4.0 MB: just under the 4 MiB body limit
    body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP64", "data": []}]}).encode()
    response = client.post("/v2/models/credit/infer", content=body)
    assert response.status_code == 422
    assert client.get("/v2/health/live").json() == {"live": True}


def test_the_single_tensor_path_keeps_the_row_limit(client: httpx.Client) -> None:
    rows = MAX_ROWS + 1
    too_many = post_binary(client, "/v2/models/credit/infer", "x", np.zeros((rows, N_FEATURES)))
    assert too_many.status_code == 422 and f"at most {MAX_ROWS} rows" in too_many.json()["error"]
    as_json = client.post("/v2/models/credit/infer", json={"inputs": [
        {"name": "x", "shape": [rows, N_FEATURES], "datatype": "FP32", "data": [0.0] * rows * N_FEATURES}]})
    assert as_json.status_code == 422


@pytest.mark.parametrize("per_feature", [False, True])
def test_an_empty_tensor_is_422_like_an_empty_batch(client: httpx.Client, served: tuple[ModelServer, str, DemoArtifact],
                                                    per_feature: bool) -> None:
    inputs = ([{"name": f, "shape": [0], "datatype": "FP64", "data": []} for f in served[2].features] if per_feature
              else [{"name": "x", "shape": [0, N_FEATURES], "datatype": "FP64", "data": []}])
    response = client.post("/v2/models/credit/infer", json={"inputs": inputs})
    assert (response.status_code, response.json()["error"]) == (422, "no rows")
    assert client.post("/predict", json={"instances": []}).status_code == 422


def test_while_neutral_the_request_is_still_bounded(served: tuple[ModelServer, str, DemoArtifact],
                                                    client: httpx.Client) -> None:
    """With the kill switch on no contract is checked, but the known contract's width still bounds the work."""
    app = served[0]
    app.set_config_enabled(False, "test")
    try:
        wide = post_binary(client, "/v2/models/credit/infer", "x", np.zeros((1000, 4 * N_FEATURES)))
        assert wide.status_code == 422 and "at most" in wide.json()["error"]
        narrow = post_binary(client, "/v2/models/credit/infer", "x", np.zeros((3, N_FEATURES)))
        assert narrow.status_code == 200
        assert narrow.json()["parameters"]["neutral"] is True
    finally:
        app.set_config_enabled(True, "test")


def test_a_mismatch_lists_at_most_100_names_and_counts_all(client: httpx.Client,
                                                           served: tuple[ModelServer, str, DemoArtifact]) -> None:
    features = {**row(served[2]), **{f"extra_{i}": 0.0 for i in range(5000)}}
    body = client.post("/predict", json={"features": features}).json()
    assert (body["error"], body["provided_count"], len(body["unexpected_features"])) == ("FEATURE_MISMATCH",
                                                                                         N_FEATURES + 5000, 100)


def test_binary_framing_errors_are_4xx(client: httpx.Client) -> None:
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP64",
                                     "parameters": {"binary_data_size": 8 * N_FEATURES}}]}).encode()
    data = np.zeros(N_FEATURES).tobytes()
    cases = [
        (header + data[:-8], str(len(header))),             # shorter than announced
        (header + data + b"\0" * 8, str(len(header))),      # bytes after the last tensor
        (header + data, str(len(header) + 10**12)),          # header length beyond the body
        (header + data, "-5"),
        (header + data, "twelve"),
    ]
    for body, length in cases:
        response = client.post("/v2/models/credit/infer", content=body,
                               headers={"Inference-Header-Content-Length": length})
        assert 400 <= response.status_code < 500, (length, response.text)
        assert isinstance(response.json()["error"], str) and response.json()["code"]


# ---------------------------------------------------------------- feedback: labels, not requests

def test_retried_feedback_counts_once(client: httpx.Client, served: tuple[ModelServer, str, DemoArtifact]) -> None:
    artifact = served[2]
    pid = client.post("/predict", json={"features": row(artifact, 7)}).json()["predictionId"]
    labels = {"model": "credit", "version": "4.0.0", "severity": "critical"}
    before = metric(client, "ml_feedback_labels_total", **labels, stakeholder="finance")
    label = {"predictionId": pid, "label": "wrong", "severity": "critical", "stakeholder": "finance"}
    first = client.post("/feedback", json=label)
    assert first.status_code == 201
    for _ in range(3):
        retry = client.post("/feedback", json=label)
        assert retry.status_code == 200
        assert retry.json() == {**first.json(), "duplicate": True}
    assert metric(client, "ml_feedback_labels_total", **labels, stakeholder="finance") == before + 1
    changed = client.post("/feedback", json={**label, "label": "right"})
    assert changed.status_code == 409
    assert (changed.json()["error"], changed.json()["label"]) == ("FEEDBACK_CONFLICT", "wrong")
    other = client.post("/feedback", json={**label, "stakeholder": "regulator"})
    assert other.status_code == 201
    view = client.get(f"/feedback/{pid}").json()
    assert [(f["stakeholder"], f["label"]) for f in view["feedback"]] in (
        [("finance", "wrong"), ("regulator", "wrong")],)
    assert metric(client, "ml_feedback_labels_total", **labels, stakeholder="finance") == before + 1


# ---------------------------------------------------------------- compression, outputs, errors, metadata

@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_requests(client: httpx.Client, served: tuple[ModelServer, str, DemoArtifact],
                             encoding: str, compress: Any) -> None:
    artifact = served[2]
    plain = client.post("/predict", json={"features": row(artifact, 2)}).json()["prediction"]
    body = compress(json.dumps({"features": row(artifact, 2)}).encode())
    squeezed = client.post("/predict", content=body, headers={"Content-Encoding": encoding})
    assert squeezed.status_code == 200, squeezed.text
    assert squeezed.json()["prediction"] == plain
    infer = compress(json.dumps({"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP64",
                                             "data": artifact.sample[2].tolist()}]}).encode())
    oip = client.post("/v2/models/credit/infer", content=infer, headers={"Content-Encoding": encoding})
    assert oip.json()["outputs"][0]["data"] == [plain]


def test_a_decompression_bomb_is_413(client: httpx.Client) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")  # 64 MiB of JSON in ~64 KB
    response = client.post("/predict", content=bomb, headers={"Content-Encoding": "gzip"})
    assert (response.status_code, response.json()["error"]) == (413, "BODY_TOO_LARGE")


@pytest.mark.parametrize(("encoding", "body", "status"), [
    ("br", b"\x0b\x02\x80{}\x03", 415), ("gzip", b"not gzip", 400), ("gzip", gzip.compress(b"{}")[:-6], 400)])
def test_bad_encodings_are_4xx(client: httpx.Client, encoding: str, body: bytes, status: int) -> None:
    response = client.post("/predict", content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


def test_requested_outputs_are_filtered(client: httpx.Client, served: tuple[ModelServer, str, DemoArtifact]) -> None:
    artifact = served[2]
    request = {"inputs": [{"name": "x", "shape": [2, N_FEATURES], "datatype": "FP64",
                           "data": artifact.sample[:2].tolist()}]}
    only_ids = client.post("/v2/models/credit/infer", json={**request, "outputs": [{"name": "prediction_id"}]})
    assert [o["name"] for o in only_ids.json()["outputs"]] == ["prediction_id"]
    unknown = client.post("/v2/models/credit/infer", json={**request, "outputs": [{"name": "probabilities"}]})
    assert unknown.status_code == 422 and "prediction" in unknown.json()["error"]


def test_oip_errors_carry_text_in_error_and_the_code_beside_it(client: httpx.Client) -> None:
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "this server serves 'credit'", "code": "MODEL_NOT_FOUND"}
    own = client.post("/predict", content=b"{")
    assert own.json()["error"] == "MALFORMED_JSON", "the server's own API keeps code in error"


def test_metadata_advertises_the_tensor_form_and_the_binary_extension(client: httpx.Client) -> None:
    meta = client.get("/v2/models/credit").json()
    assert len(meta["inputs"]) == N_FEATURES
    assert meta["parameters"]["tensor_input"]["shape"] == [-1, N_FEATURES]
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


# ---------------------------------------------------------------- slow clients

@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifact = build_demo_artifact(tmp_path_factory.mktemp("g"), trained=train("logistic", 4, 200, seed=3))
    app = ModelServer(settings_for(artifact, tmp_path_factory.mktemp("gs"), http_header_timeout_seconds=0.5,
                                   http_body_timeout_seconds=0.5))
    with serve_in_thread(app) as url:
        yield url


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, int(url.rsplit(":", 1)[1])))
    sock.settimeout(30)  # a guard only: the server's deadline is 0.5 s
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("sent", [b"", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"])
def test_unfinished_headers_get_408_and_the_connection_closed(guarded: str, sent: bytes) -> None:
    with _connect(guarded) as sock:
        sock.sendall(sent)
        answer = _read_all(sock)  # returns once the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "REQUEST_TIMEOUT"


def test_a_short_body_gets_408_and_the_connection_closed(guarded: str) -> None:
    with _connect(guarded) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"features\":")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_kept_alive_connection_is_timed_per_request_not_from_its_start(guarded: str) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(guarded) as sock:
        for _ in range(3):  # 1.2 s on one connection, idle between requests longer than the 0.5 s deadlines
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.6)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")  # then one that stalls is still cut off
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_connections_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    artifact = build_demo_artifact(tmp_path / "a", trained=train("logistic", 4, 200, seed=3))
    app = ModelServer(settings_for(artifact, tmp_path, max_connections=8))
    with serve_in_thread(app) as url:
        held = [_connect(url) for _ in range(12)]
        try:
            for sock in held[8:]:
                refused = _read_all(sock)
                assert refused.startswith(b"HTTP/1.1 503 ") and b"TOO_MANY_CONNECTIONS" in refused
            held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 "), "connections within the cap are served"
        finally:
            for sock in held:
                sock.close()
        with http_client(url) as c:  # once they are gone, new connections are served again
            assert c.get("/v2/health/live").status_code == 200


# ---------------------------------------------------------------- helpers

def post_binary(client: httpx.Client, path: str, name: str, data: np.ndarray,
                datatype: str = "FP64") -> httpx.Response:
    raw = data.astype("<f8" if datatype == "FP64" else "<f4").tobytes()
    header = json.dumps({"inputs": [{"name": name, "shape": list(data.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return client.post(path, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header)),
                                                           "Content-Type": "application/octet-stream"})

