"""Property-based fuzzing of every endpoint that takes a body: whatever arrives, the answer is never a 5xx
and always a JSON object with an ``error`` string when it is not a success (OIP shapes, binary tensor data and
numbers at the float limits included)."""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import TokenIssuer, http_client, serve_in_thread

ISSUER = TokenIssuer()
TOKEN = ISSUER.token(lifetime=3600)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), trained=train("logistic", 4, 300, seed=5))


@pytest.fixture(scope="module")
def client(artifact: DemoArtifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    s = Settings(model_name="fuzz", model_version="1", artifact_dir=artifact.directory,
                 artifact_sha256=artifact.sha256, model_format="skops", **ISSUER.settings(), warmup_rounds=1,
                 feedback_dsn=str(tmp_path_factory.mktemp("store") / "fb.sqlite3"), max_batch_rows=50,
                 feedback_join_wait_seconds=0)  # one replica: no other's flush to wait for
    s = replace(s, max_body_bytes=64 * 1024)
    with serve_in_thread(ModelServer(s)) as url, http_client(url) as c:
        yield c


scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=15)
numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    json_length = int(response.headers.get("inference-header-content-length", len(response.content)))
    body = json.loads(response.content[:json_length])
    if response.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@st.composite
def feature_rows(draw: st.DrawFn, features: tuple[str, ...]) -> dict[str, Any]:
    """Mostly-valid rows: drop, add or retype some features."""
    row: dict[str, Any] = {f: draw(numbers) for f in features}
    for name in draw(st.lists(st.sampled_from(features), max_size=2)):
        row.pop(name, None)
    for name in draw(st.lists(st.text(max_size=10), max_size=2)):
        row[name] = draw(numbers)
    for name in draw(st.lists(st.sampled_from(features), max_size=2)):
        row[name] = draw(json_values)
    return row


@FUZZ
@given(data=st.data())
def test_predict_never_5xx(client: httpx.Client, artifact: DemoArtifact, data: st.DataObject) -> None:
    rows = feature_rows(artifact.features)
    body = data.draw(st.one_of(
        st.builds(lambda r: encode({"features": r}), rows),
        st.builds(lambda rs: encode({"instances": rs}), st.lists(rows | json_values, max_size=60)),
        st.builds(lambda d: encode({"features": d}), json_values),
        st.builds(encode, json_values),
        st.binary(max_size=200),
    ))
    check(client.post("/predict", content=body))


@FUZZ
@given(data=st.data())
def test_infer_never_5xx(client: httpx.Client, artifact: DemoArtifact, data: st.DataObject) -> None:
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(artifact.features) | st.text(max_size=8),
        "shape": st.lists(st.integers(-2, 8), max_size=3),
        "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL"]) | st.text(max_size=5),
        "data": st.lists(numbers | json_values, max_size=40) | st.lists(st.lists(numbers, max_size=5), max_size=5),
    })
    body = data.draw(st.one_of(
        st.builds(lambda ts: encode({"inputs": ts}), st.lists(tensor, max_size=5)),
        st.builds(lambda ts, i: encode({"inputs": ts, "id": i}), st.lists(tensor, min_size=1, max_size=2),
                  json_values),
        st.builds(encode, json_values),
    ))
    check(client.post("/v2/models/fuzz/infer", content=body))


@FUZZ
@given(data=st.data())
def test_feedback_never_5xx(client: httpx.Client, artifact: DemoArtifact, data: st.DataObject) -> None:
    known = client.post("/predict", json={"features": dict.fromkeys(artifact.features, 0.5)}).json()
    pid = known.get("predictionId", "x")
    body = data.draw(st.one_of(
        st.builds(encode, st.fixed_dictionaries(
            {"predictionId": st.just(pid) | st.text(max_size=40) | json_values,
             "label": json_values,
             "severity": st.sampled_from(["info", "minor", "major", "critical"]) | json_values,
             "stakeholder": st.sampled_from(["finance", "regulator", "other"]) | json_values},
            optional={"comment": json_values, "author": json_values, "extra": json_values})),
        st.builds(encode, json_values),
        st.binary(max_size=100),
    ))
    check(client.post("/feedback", content=body))
    check(client.get(f"/feedback/{quote(data.draw(st.text(min_size=1, max_size=40)), safe='')}"))


@FUZZ
@given(body=st.builds(encode, json_values) | st.binary(max_size=50),
       token=st.just(TOKEN) | st.text(string.ascii_letters + string.digits, min_size=1, max_size=10))
def test_admin_never_5xx(client: httpx.Client, body: bytes, token: str) -> None:
    check(client.post("/admin/reenable", content=body, headers={"Authorization": f"Bearer {token}"}))


# ---------------------------------------------------------------- OIP shapes and numbers at the float limits

limit_numbers = st.sampled_from([
    sys.float_info.max, -sys.float_info.max, 3.4028235e38, -3.4028235e38, 3.5e38, -3.5e38, sys.float_info.min,
    5e-324, -5e-324, 0.0, -0.0, 2**63 - 1, -(2**63), 2**64 - 1, 1e300, -1e300]) | numbers
huge_ints = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 2**31, 2**62, 2**63 - 1, 10**9, 10**18])


@FUZZ
@given(data=st.data())
def test_infer_shapes_and_limit_numbers_never_5xx(client: httpx.Client, artifact: DemoArtifact,
                                                  data: st.DataObject) -> None:
    n = len(artifact.features)
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(["x", *artifact.features]),
        "shape": st.lists(huge_ints, max_size=6) | st.lists(st.sampled_from([0, 1, 2, n, 2**62]), max_size=300)
        | st.builds(lambda r: [r, n], st.integers(0, 120)),
        "datatype": st.sampled_from(["FP64", "FP32", "FP16", "INT64", "UINT8"]),
        "data": st.lists(limit_numbers, max_size=4 * n),
    }, optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data_size": huge_ints})})
    body = {"inputs": data.draw(st.lists(tensor, min_size=1, max_size=n + 1)),
            "outputs": data.draw(st.none() | st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["prediction", "prediction_id", "other"])},
                optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans() | json_values})}),
                max_size=3))}
    check(client.post("/v2/models/fuzz/infer", content=encode(body)))


@FUZZ
@given(rows=st.integers(1, 60), values=st.lists(limit_numbers, min_size=1, max_size=8), datatype=st.sampled_from(
    ["FP64", "FP32"]), tail=st.binary(max_size=64), announced=huge_ints, extra=st.integers(-8, 8))
def test_binary_infer_never_5xx(client: httpx.Client, artifact: DemoArtifact, rows: int, values: list[float],
                                datatype: str, tail: bytes, announced: int, extra: int) -> None:
    n = len(artifact.features)
    with np.errstate(over="ignore"):
        raw = np.resize(np.array(values, dtype=np.float64), rows * n).astype("<f8" if datatype == "FP64" else "<f4")
    payload = raw.tobytes() + tail
    header = encode({"inputs": [{"name": "x", "shape": [rows, n], "datatype": datatype,
                                 "parameters": {"binary_data_size": len(raw.tobytes()) + extra}}],
                     "parameters": {"binary_data_output": True}})
    for length in (len(header), announced):
        check(client.post("/v2/models/fuzz/infer", content=header + payload,
                          headers={"Inference-Header-Content-Length": str(length)}))


@FUZZ
@given(values=st.lists(limit_numbers, min_size=1, max_size=12))
def test_predict_limit_numbers_never_5xx(client: httpx.Client, artifact: DemoArtifact, values: list[float]) -> None:
    row = {f: values[i % len(values)] for i, f in enumerate(artifact.features)}
    response = client.post("/predict", content=encode({"features": row}))
    check(response)
    if response.status_code == 422:
        assert response.json()["error"] in ("INPUT_OUT_OF_RANGE", "INVALID_INPUT"), response.json()
