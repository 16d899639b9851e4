"""Drift window (ring buffer, PSI off the request path), settings from the environment, the MLModel
kill-switch reading."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from model_server.config import ConfigError, Settings
from model_server.drift import DriftWindow
from model_server.logs import EventLog
from model_server.metrics import PREDICTION_SCORE_FEATURE
from model_server.watcher import MLModelWatcher, enabled_from
from modelwarden.artifacts import ModelMeta, psi

SHA = "a" * 64


def _meta(rng: np.random.Generator) -> ModelMeta:
    x = rng.normal(size=(4000, 3))
    return ModelMeta.build(("a", "b", "c"), datetime(2026, 1, 1, tzinfo=UTC), feature_samples=x.tolist(),
                           prediction_sample=rng.uniform(size=4000).tolist())


def test_drift_window_psi_matches_the_reference_computation() -> None:
    rng = np.random.default_rng(0)
    meta = _meta(rng)
    window = DriftWindow(meta.features, meta.reference, size=1000, min_samples=100)
    assert window.tracked == ["a", "b", "c", PREDICTION_SCORE_FEATURE]
    assert window.snapshot() is None
    rows = rng.normal(size=(1500, 3))
    rows[:, 1] += 2.0  # feature b drifts
    scores = rng.uniform(size=1500)
    for start in range(0, 1500, 7):  # uneven batches exercise the wrap-around
        window.observe(rows[start:start + 7], scores[start:start + 7])
    snapshot = window.snapshot()
    assert snapshot is not None and snapshot.shape == (1000, 4)
    values = window.compute(snapshot)
    last = rows[-1000:]
    expected_b = psi(meta.reference.features["b"].proportions, meta.reference.features["b"].proportions_of(
        last[:, 1].tolist()))
    assert values["b"] == pytest.approx(expected_b)
    assert values["b"] > 1.0
    assert values["a"] < 0.05 and values["c"] < 0.05
    assert values[PREDICTION_SCORE_FEATURE] < 0.05


def test_batch_larger_than_the_window_keeps_its_tail() -> None:
    rng = np.random.default_rng(1)
    meta = _meta(rng)
    window = DriftWindow(meta.features, meta.reference, size=10, min_samples=1)
    rows = np.arange(75, dtype=np.float64).reshape(25, 3)
    window.observe(rows, np.arange(25, dtype=np.float64))
    snapshot = window.snapshot()
    assert snapshot is not None
    assert sorted(snapshot[:, 3]) == list(range(15, 25))


def _env(**extra: str) -> dict[str, str]:
    return {"MODEL_NAME": "m", "MODEL_VERSION": "1", "ARTIFACT_DIR": "artifact", "ARTIFACT_SHA256": SHA,
            "MODEL_FORMAT": "skops", **extra}


def test_settings_defaults() -> None:
    s = Settings.from_env(_env())
    assert (s.model_track, s.neutral_prediction, s.model_enabled, s.allow_joblib) == ("stable", 0.0, True, False)
    assert s.artifact_dir == Path("artifact")
    assert s.host == "127.0.0.1"
    assert s.governance_error_kinds == {"PREDICT_ERROR", "NON_FINITE_OUTPUT"}
    assert s.mlmodel_name == "m"


def test_settings_parse_everything() -> None:
    s = Settings.from_env(_env(MODEL_TRACK="canary", NEUTRAL_PREDICTION="-1.5", MODEL_ENABLED="false",
                               FEATURE_CONTRACT='{"name": "c", "features": ["x", "y"]}', ADMIN_SUBJECT="t",
                               GOVERNANCE_ERROR_KINDS="PREDICT_ERROR, FEATURE_MISMATCH"))
    assert s.model_track == "canary"
    assert s.neutral_prediction == -1.5
    assert s.model_enabled is False
    assert s.feature_contract is not None and s.feature_contract.features == ("x", "y")
    assert s.governance_error_kinds == {"PREDICT_ERROR", "FEATURE_MISMATCH"}


@pytest.mark.parametrize(("override", "message"), [
    ({"MODEL_NAME": ""}, "MODEL_NAME is required"),
    ({"MODEL_TRACK": "beta"}, "MODEL_TRACK must be one of stable | canary"),
    ({"MODEL_FORMAT": "pickle"}, "MODEL_FORMAT must be one of"),
    ({"ARTIFACT_SHA256": "abc"}, "ARTIFACT_SHA256 must be 64 hex digits"),
    ({"NEUTRAL_PREDICTION": "nan"}, "NEUTRAL_PREDICTION must be a finite number"),
    ({"NEUTRAL_PREDICTION": "zero"}, "NEUTRAL_PREDICTION must be a number"),
    ({"ALLOW_JOBLIB": "maybe"}, "ALLOW_JOBLIB must be true or false"),
    ({"PORT": "70000"}, "PORT must be within"),
    ({"FEATURE_CONTRACT": '{"name": "c", "features": ["x", "x"]}'}, "FEATURE_CONTRACT is not a valid"),
])
def test_settings_errors_name_the_variable(override: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(_env(**override))


def test_spec_enabled_is_read_defensively() -> None:
    assert enabled_from({"spec": {"enabled": False}}) is False
    assert enabled_from({"spec": {}}) is True  # the CRD default
    assert enabled_from({"spec": {"enabled": "false"}}) is None  # not a boolean: change nothing
    assert enabled_from({}) is None


def test_watcher_feeds_the_kill_switch() -> None:
    seen: list[tuple[bool, str]] = []
    watcher = MLModelWatcher("ns", "fraud", lambda enabled, source: seen.append((enabled, source)),
                             EventLog("fraud", "1", "stable"))
    watcher.apply({"spec": {"enabled": False}})
    watcher.apply({"spec": {"enabled": 1}})
    watcher.apply({"spec": {}})
    assert seen == [(False, "mlmodel ns/fraud"), (True, "mlmodel ns/fraud")]
