"""The existing model_server loads what `modelwarden train` wrote (skops and ONNX) and answers with the contract."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model_server.app import ModelServer
from model_server.config import Settings
from model_server.testing import http_client, serve_in_thread
from modelwarden.artifacts import read_model_meta, sha256_file
from modelwarden.training.config import TrainingConfig
from modelwarden.training.data import generate
from modelwarden.training.pipeline import load_dataset, train

CONFIG = TrainingConfig.model_validate({
    "model": "credit", "version": "1.0.0", "seed": 9, "trained_at": "2026-01-13T02:00:00Z",
    "feature_contract": "credit-v1", "pipeline_commit": "test", "data": {"synthetic": {"rows": 800}},
    "estimator": {"kind": "gradient_boosting", "params": {"n_estimators": 20, "max_depth": 2}},
    "bias": {"max_demographic_parity_difference": 1, "min_demographic_parity_ratio": 0,
             "max_equalized_odds_difference": 1}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(CONFIG, out)
    return out


@pytest.mark.parametrize("fmt", ["skops", "onnx"])
def test_server_loads_the_trained_artifact_and_predicts(trained: Path, tmp_path: Path, fmt: str) -> None:
    directory = trained / fmt
    model_file = directory / f"model.{fmt}"
    meta = read_model_meta(directory)
    settings = replace(Settings(model_name="credit", model_version="1.0.0", artifact_dir=directory,
                                artifact_sha256=sha256_file(model_file), model_format=fmt,  # type: ignore[arg-type]
                                feedback_dsn=str(tmp_path / "feedback.sqlite3")),
                       warmup_rounds=1, drift_min_samples=1_000_000)
    app = ModelServer(settings)
    assert CONFIG.data.synthetic is not None
    dataset = generate(CONFIG.data.synthetic, CONFIG.seed)
    assert load_dataset(CONFIG).snapshot_sha256 == dataset.snapshot_sha256
    rows = [{f: float(dataset.numeric(f)[i]) for f in meta.features} for i in range(5)]

    import skops.io as sio  # type: ignore[import-untyped]

    skops_bytes = (trained / "skops/model.skops").read_bytes()
    estimator = sio.loads(skops_bytes, trusted=sio.get_untrusted_types(data=skops_bytes))
    expected = estimator.predict_proba(np.array([[r[f] for f in meta.features] for r in rows]))[:, 1]

    with serve_in_thread(app) as url, http_client(url) as client:
        info = client.get("/v2/models/credit").json()
        assert [i["name"] for i in info["inputs"]] == list(meta.features)
        assert info["parameters"]["sha256"] == sha256_file(model_file)
        single = client.post("/predict", json={"features": dict(reversed(rows[0].items()))})
        assert single.status_code == 200
        assert single.json()["prediction"] == pytest.approx(expected[0], abs=1e-5)
        batch = client.post("/predict", json={"instances": rows}).json()
        np.testing.assert_allclose([p["prediction"] for p in batch["predictions"]], expected, atol=1e-5)
        wrong = client.post("/predict", json={"features": {**rows[0], "group": 1.0}})
        assert wrong.status_code == 422
        body = wrong.json()
        assert body["error"] == "FEATURE_MISMATCH" and body["contract"] == "credit-v1"
        assert body["expected_count"] == 6 and body["unexpected_features"] == ["group"]
    assert json.loads((directory / "manifest.json").read_text())["format"] == fmt
