"""Conformance with Open Inference Protocol clients nobody here wrote: NVIDIA's ``tritonclient.http`` and the
KServe SDK's ``InferenceRESTClient``, each with its defaults (binary tensor data on), against the real server on
a loopback port. Every score is compared with what ``/predict`` answers for the same rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, ModelFormat, build_demo_artifact, train
from model_server.testing import http_client, serve_in_thread

MODEL = "credit"
N_FEATURES = 8
TRAINED = train("logistic", N_FEATURES, 1000, seed=21)


@pytest.fixture(scope="module", params=["skops", "onnx"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[str, DemoArtifact]]:
    fmt: ModelFormat = request.param
    artifact = build_demo_artifact(tmp_path_factory.mktemp(fmt), fmt=fmt, trained=TRAINED)
    settings = Settings(model_name=MODEL, model_version="1.2.0", artifact_dir=artifact.directory,
                        artifact_sha256=artifact.sha256, model_format=fmt, warmup_rounds=1,
                        feedback_dsn=str(tmp_path_factory.mktemp("store") / "fb.sqlite3"))
    with serve_in_thread(ModelServer(settings)) as url:
        yield url, artifact


@pytest.fixture
def http(served: tuple[str, DemoArtifact]) -> Iterator[httpx.Client]:
    with http_client(served[0]) as c:
        yield c


@pytest.fixture
def triton_client(served: tuple[str, DemoArtifact]) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=served[0].removeprefix("http://"))
    yield client
    client.close()


def rows_as(artifact: DemoArtifact, datatype: str, n: int = 5) -> np.ndarray:
    return artifact.sample[10:10 + n].astype(np.float32 if datatype == "FP32" else np.float64)


def predict(http: httpx.Client, artifact: DemoArtifact, rows: np.ndarray) -> list[float]:
    """What /predict answers for the same rows (float32 rows are sent as the float64 values they are)."""
    instances = [dict(zip(artifact.features, r.astype(np.float64).tolist(), strict=True)) for r in rows]
    return [p["prediction"] for p in http.post("/predict", json={"instances": instances}).json()["predictions"]]


def triton_inputs(artifact: DemoArtifact, rows: np.ndarray, datatype: str, per_feature: bool,
                  binary: bool = True) -> list[triton.InferInput]:
    tensors = ([(f, rows[:, j].copy()) for j, f in enumerate(artifact.features)] if per_feature
               else [("input-0", rows)])
    inputs = []
    for name, data in tensors:
        tensor = triton.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs


# ---------------------------------------------------------------- tritonclient.http

@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("per_feature", [False, True], ids=["tensor", "per-feature"])
def test_triton_defaults(served: tuple[str, DemoArtifact], http: httpx.Client,
                         triton_client: triton.InferenceServerClient, datatype: str, per_feature: bool) -> None:
    artifact = served[1]
    rows = rows_as(artifact, datatype)
    result = triton_client.infer(MODEL, triton_inputs(artifact, rows, datatype, per_feature))
    np.testing.assert_allclose(result.as_numpy("prediction"), predict(http, artifact, rows), rtol=1e-12)
    ids = result.as_numpy("prediction_id")
    assert ids is not None and len({bytes(i) for i in ids}) == len(rows)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(rows)


@pytest.mark.parametrize("binary", [True, False])
def test_triton_requested_outputs(served: tuple[str, DemoArtifact], http: httpx.Client,
                                  triton_client: triton.InferenceServerClient, binary: bool) -> None:
    artifact = served[1]
    rows = rows_as(artifact, "FP64", 3)
    result = triton_client.infer(MODEL, triton_inputs(artifact, rows, "FP64", per_feature=False, binary=binary),
                                 outputs=[triton.InferRequestedOutput("prediction", binary_data=binary)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["prediction"]
    assert result.as_numpy("prediction_id") is None
    np.testing.assert_allclose(result.as_numpy("prediction"), predict(http, artifact, rows), rtol=1e-12)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_triton_compressed_requests(served: tuple[str, DemoArtifact], http: httpx.Client,
                                    triton_client: triton.InferenceServerClient, algorithm: str) -> None:
    artifact = served[1]
    rows = rows_as(artifact, "FP32", 4)
    result = triton_client.infer(MODEL, triton_inputs(artifact, rows, "FP32", per_feature=True),
                                 request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("prediction"), predict(http, artifact, rows), rtol=1e-12)


def test_triton_metadata_and_health(served: tuple[str, DemoArtifact],
                                    triton_client: triton.InferenceServerClient) -> None:
    artifact = served[1]
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    meta = triton_client.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == list(artifact.features)
    assert meta["parameters"]["tensor_input"]["shape"] == [-1, N_FEATURES]
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]


def test_triton_users_see_the_error_text(served: tuple[str, DemoArtifact],
                                         triton_client: triton.InferenceServerClient) -> None:
    artifact = served[1]
    short = np.zeros((2, N_FEATURES - 1), dtype=np.float64)
    tensor = triton.InferInput("input-0", list(short.shape), "FP64")
    tensor.set_data_from_numpy(short)
    with pytest.raises(InferenceServerException) as mismatch:
        triton_client.infer(MODEL, [tensor])
    assert mismatch.value.status() == "422"
    assert f"expects {N_FEATURES} features, got {N_FEATURES - 1}" in mismatch.value.message()
    assert artifact.features[-1] in mismatch.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer("no-such-model", triton_inputs(artifact, rows_as(artifact, "FP64"), "FP64", False))
    assert unknown.value.status() == "404" and MODEL in unknown.value.message()


# ---------------------------------------------------------------- KServe SDK

def kserve_infer(url: str, request: InferRequest, model: str = MODEL) -> Any:
    async def run() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        try:
            return await client.infer(url, request, model_name=model)
        finally:
            await client.close()

    return asyncio.run(run())


def kserve_inputs(artifact: DemoArtifact, rows: np.ndarray, datatype: str, per_feature: bool) -> list[InferInput]:
    tensors = ([(f, rows[:, j].copy()) for j, f in enumerate(artifact.features)] if per_feature
               else [("input-0", rows)])
    inputs = []
    for name, data in tensors:
        tensor = InferInput(name=name, shape=list(data.shape), datatype=datatype)
        tensor.set_data_from_numpy(data)  # binary_data=True by default
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("per_feature", [False, True], ids=["tensor", "per-feature"])
def test_kserve_defaults(served: tuple[str, DemoArtifact], http: httpx.Client, datatype: str,
                         per_feature: bool) -> None:
    url, artifact = served
    rows = rows_as(artifact, datatype)
    response = kserve_infer(url, InferRequest(MODEL, kserve_inputs(artifact, rows, datatype, per_feature)))
    outputs = {o.name: o for o in response.outputs}
    np.testing.assert_allclose(outputs["prediction"].as_numpy(), predict(http, artifact, rows), rtol=1e-12)
    assert len(set(outputs["prediction_id"].data)) == len(rows)


def test_kserve_binary_outputs(served: tuple[str, DemoArtifact], http: httpx.Client) -> None:
    url, artifact = served
    rows = rows_as(artifact, "FP64", 3)
    request = InferRequest(MODEL, kserve_inputs(artifact, rows, "FP64", per_feature=False),
                           request_outputs=[RequestedOutput("prediction", {"binary_data": True})])
    response = kserve_infer(url, request)
    assert [o.name for o in response.outputs] == ["prediction"]
    np.testing.assert_allclose(response.outputs[0].as_numpy(), predict(http, artifact, rows), rtol=1e-12)


def test_kserve_users_see_the_error_text(served: tuple[str, DemoArtifact]) -> None:
    url, _ = served
    short = np.zeros((1, N_FEATURES + 2), dtype=np.float64)
    tensor = InferInput(name="input-0", shape=list(short.shape), datatype="FP64")
    tensor.set_data_from_numpy(short)
    with pytest.raises(httpx.HTTPStatusError) as mismatch:
        kserve_infer(url, InferRequest(MODEL, [tensor]))
    assert mismatch.value.response.status_code == 422
    assert f"expects {N_FEATURES} features, got {N_FEATURES + 2}" in str(mismatch.value)

