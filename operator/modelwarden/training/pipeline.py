"""``modelwarden train``: config → data → scikit-learn model → one verified artifact directory per format.

``OUT/skops/`` and ``OUT/onnx/`` are each a complete artifact directory (model file, ``model_meta.json``,
the three reports, the model card as JSON and Markdown, ``manifest.json``, and ``model.sig`` when signed),
because an MLModel names one model file whose directory holds the manifest. Apart from the model file, the
manifest and the signature, their files are byte-identical.

Nothing depends on the clock or the machine's hash seed: ``trained_at`` comes from the config (or the
generated data's as-of date), the seed drives the data, the split and the estimator, and the model files are
canonicalised (see :mod:`.serialize`). Same config, data and library versions ⇒ same bytes, same SHA256s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelwarden.artifacts import (
    MANIFEST_FILENAME,
    MODEL_META_FILENAME,
    Manifest,
    ModelFormat,
    ModelMeta,
    build_manifest,
    read_manifest,
    sha256_bytes,
    sha256_file,
    signing,
    write_manifest,
)
from modelwarden.training import data as data_mod
from modelwarden.training import metrics, serialize
from modelwarden.training.card import write_model_card
from modelwarden.training.config import TrainingConfig
from modelwarden.training.reports import BIAS_REPORT, EVALUATION_REPORT, REPRODUCIBILITY_REPORT, write_report

MODEL_FILES: dict[ModelFormat, str] = {"skops": "model.skops", "onnx": "model.onnx", "joblib": "model.joblib"}
LIBRARIES = ("numpy", "scipy", "scikit-learn", "skops", "skl2onnx", "onnx", "onnxruntime", "modelwarden")
ONNX_PARITY_TOLERANCE = 1e-4  # float32 inside ONNX vs float64 in scikit-learn


class TrainingError(ValueError):
    """The inputs cannot be trained on as configured (a usage error: exit code 2)."""


@dataclass(frozen=True)
class FormatArtifact:
    format: ModelFormat
    directory: Path
    model_file: str
    sha256: str
    manifest_sha256: str
    signer_fingerprint: str | None = None


@dataclass(frozen=True)
class TrainResult:
    out: Path
    artifacts: list[FormatArtifact]
    bias_status: str
    evaluation_status: str
    failures: list[str] = field(default_factory=list)
    features: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.bias_status == "pass" and self.evaluation_status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "out": str(self.out), "features": list(self.features),
            "bias_status": self.bias_status, "evaluation_status": self.evaluation_status,
            "failures": self.failures,
            "artifacts": [{"format": a.format, "directory": str(a.directory), "model_file": a.model_file,
                           "sha256": a.sha256, "manifest_sha256": a.manifest_sha256,
                           "signer_fingerprint": a.signer_fingerprint} for a in self.artifacts],
        }


def load_dataset(config: TrainingConfig) -> data_mod.Dataset:
    if config.data.synthetic is not None:
        return data_mod.generate(config.data.synthetic, config.seed)
    assert config.data.path is not None
    return data_mod.load_file(config.data.path)


def _columns_role(config: TrainingConfig) -> tuple[str | None, str | None]:
    """The time and return columns, with the signal generator's names as defaults for synthetic signal data."""
    synthetic_signal = config.data.synthetic is not None and config.data.synthetic.kind == "signal"
    time_col = config.data.time_column or ("date" if synthetic_signal else None)
    return_col = config.data.return_column or ("forward_return" if synthetic_signal else None)
    return time_col, return_col


def select_features(config: TrainingConfig, dataset: data_mod.Dataset) -> tuple[str, ...]:
    time_col, return_col = _columns_role(config)
    if config.data.features is not None:
        features = config.data.features
        for name in features:
            if not dataset.is_numeric(name):
                raise TrainingError(f"feature {name!r} is not numeric")
    else:
        reserved = {config.data.label, config.data.protected_attribute, config.data.entity_column, time_col,
                    return_col}
        features = tuple(n for n in dataset.columns if n not in reserved and dataset.is_numeric(n))
    if not features:
        raise TrainingError("no numeric feature columns to train on")
    if config.data.protected_attribute in features:
        raise TrainingError(f"the protected attribute {config.data.protected_attribute!r} may not be a feature")
    for name in features:
        missing = int(np.isnan(dataset.numeric(name)).sum())
        if missing:
            raise TrainingError(f"feature {name!r} has {missing} missing values; impute them before training")
    return tuple(features)


def split(config: TrainingConfig, dataset: data_mod.Dataset) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Train and test row indices: chronological when there is a time column, seeded shuffle otherwise."""
    n = dataset.n_rows
    time_col, _ = _columns_role(config)
    if time_col is not None:
        times = dataset.numeric(time_col)
        periods = np.unique(times)
        cut = periods[int(len(periods) * (1 - config.split.test_fraction))]
        train_idx, test_idx = np.flatnonzero(times < cut), np.flatnonzero(times >= cut)
    else:
        order = np.random.default_rng(config.seed).permutation(n)
        n_test = round(n * config.split.test_fraction)
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise TrainingError(f"the split leaves an empty train or test set ({n} rows)")
    return train_idx, test_idx


def make_estimator(config: TrainingConfig) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    params = dict(config.estimator.params)
    params.setdefault("random_state", config.seed)
    try:
        if config.estimator.kind == "logistic":
            params.setdefault("max_iter", 1000)
            return LogisticRegression(**params)
        return GradientBoostingClassifier(**params)
    except TypeError as e:
        raise TrainingError(f"estimator.params: {e}") from e


def pipeline_commit(config: TrainingConfig) -> str:
    if config.pipeline_commit:
        return config.pipeline_commit
    if env := os.environ.get("MODELWARDEN_PIPELINE_COMMIT"):
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def config_sha256(config: TrainingConfig) -> str:
    """SHA256 of the canonical config, with the data path reduced to its file name (machine-independent)."""
    doc = config.model_dump(mode="json")
    if config.data.path is not None:
        doc["data"]["path"] = config.data.path.name
    return sha256_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def trained_at(config: TrainingConfig, dataset: data_mod.Dataset) -> datetime:
    if config.trained_at is not None:
        return config.trained_at
    if dataset.as_of is not None:
        return dataset.as_of
    raise TrainingError("set trained_at in the config (an ISO time with a zone): it is never read from the clock")


def _previous_manifest(previous: Path | None, fmt: ModelFormat) -> Manifest | None:
    if previous is None:
        return None
    for candidate in (previous / fmt, previous):
        if (candidate / MANIFEST_FILENAME).is_file():
            manifest = read_manifest(candidate)
            if manifest.format == fmt:
                return manifest
    raise TrainingError(f"--previous {previous}: no {fmt} manifest.json there (or in {previous / fmt})")


def train(config: TrainingConfig, out: str | Path, *, previous: str | Path | None = None,
          force: bool = False, signing_key: str | Path | None = None) -> TrainResult:
    """Train and write one artifact directory per format; with ``signing_key`` (PEM, elliptic curve) each
    directory is signed in the OpenSSF model-signing format (``model.sig``) after its manifest."""
    out = Path(out)
    previous_dir = Path(previous) if previous is not None else None
    if signing_key is not None:
        signing.load_private_key(signing_key)  # a bad key fails before training, not after
    for fmt in config.formats:
        if (out / fmt).exists() and not force:
            raise TrainingError(f"{out / fmt} exists; choose another --out or pass --force to replace it")

    dataset = load_dataset(config)
    features = select_features(config, dataset)
    labels = dataset.numeric(config.data.label)
    if not set(np.unique(labels).tolist()) <= {0.0, 1.0}:
        raise TrainingError(f"label column {config.data.label!r} must hold 0 and 1 only")
    groups = dataset.column(config.data.protected_attribute)
    x = np.column_stack([dataset.numeric(f) for f in features])
    train_idx, test_idx = split(config, dataset)
    when = trained_at(config, dataset)

    estimator = make_estimator(config)
    estimator.fit(x[train_idx], labels[train_idx].astype(int))
    if list(estimator.classes_) != [0, 1]:
        raise TrainingError("the training rows must contain both labels 0 and 1")
    test_scores = np.asarray(estimator.predict_proba(x[test_idx])[:, 1], dtype=np.float64)
    train_scores = np.asarray(estimator.predict_proba(x[train_idx])[:, 1], dtype=np.float64)
    threshold = config.bias.decision_threshold

    bias = metrics.bias_report(test_scores, labels[test_idx], groups[test_idx],
                               attribute=config.data.protected_attribute, thresholds=config.bias,
                               evaluated_on=f"test split ({len(test_idx)} rows)")
    time_col, return_col = _columns_role(config)
    backtest = None
    if config.task == "signal":
        if return_col is None or time_col is None:
            raise TrainingError("a signal model needs data.return_column and data.time_column for its backtest")
        backtest = metrics.backtest(test_scores, dataset.numeric(return_col)[test_idx],
                                    dataset.numeric(time_col)[test_idx], threshold)

    model_files = {"skops": serialize.skops_bytes(estimator, x[test_idx][:64])} if "skops" in config.formats \
        else {}
    parity: float | None = None
    if "onnx" in config.formats:
        model_files["onnx"] = serialize.onnx_bytes(estimator, len(features))
        parity = float(np.max(np.abs(serialize.onnx_scores(model_files["onnx"], x[test_idx]) - test_scores)))
        if parity > ONNX_PARITY_TOLERANCE:
            raise TrainingError(f"the ONNX export disagrees with scikit-learn by {parity} (> {ONNX_PARITY_TOLERANCE})")

    evaluation = metrics.evaluation_report(
        config.task, type(estimator).__name__, metrics.classifier_metrics(test_scores, labels[test_idx], threshold),
        config.acceptance, backtest,
        {"split": {"train_rows": len(train_idx), "test_rows": len(test_idx),
                   "method": "chronological" if time_col else "seeded shuffle"},
         "onnx_parity_max_abs_diff": parity})
    feature_store = {"contract": config.contract_name, "features": list(features), "ref": config.feature_store_ref}
    reproducibility = {
        "schema": "modelwarden.io/reproducibility-report/v1",
        "model": config.model, "version": config.version, "seed": config.seed,
        "trained_at": when.isoformat(), "config_sha256": config_sha256(config),
        "pipeline_commit": pipeline_commit(config),
        "data": {"source": dataset.source, "sha256": dataset.snapshot_sha256, "rows": dataset.n_rows,
                 "columns": list(dataset.columns)},
        "feature_store": {**feature_store, "sha256": sha256_bytes(
            json.dumps(feature_store, sort_keys=True, separators=(",", ":")).encode())},
        "libraries": library_versions(),
    }
    meta = ModelMeta.build(features, when, feature_contract=config.contract_name,
                           feature_samples=x[train_idx].tolist(), prediction_sample=train_scores.tolist())
    meta = ModelMeta.model_validate({
        **meta.model_dump(mode="json", exclude_none=True), "model": config.model, "version": config.version,
        "task": config.task, "estimator": type(estimator).__name__, "label": config.data.label,
        "protected_attribute": config.data.protected_attribute})

    out.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for fmt in config.formats:
        final, partial = out / fmt, out / f".{fmt}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        model_file = MODEL_FILES[fmt]
        (partial / model_file).write_bytes(model_files[fmt])
        (partial / MODEL_META_FILENAME).write_text(meta.to_json())
        write_report(partial, REPRODUCIBILITY_REPORT, reproducibility)
        write_report(partial, BIAS_REPORT, bias)
        write_report(partial, EVALUATION_REPORT, evaluation)
        write_model_card(partial, config.card)
        manifest = build_manifest(partial, model=config.model, version=config.version, format=fmt,
                                  model_file=model_file, created_at=when,
                                  previous=_previous_manifest(previous_dir, fmt))
        manifest_sha = write_manifest(partial, manifest)
        signer = signing.sign_directory(partial, signing_key) if signing_key is not None else None
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        artifacts.append(FormatArtifact(format=fmt, directory=final, model_file=model_file,
                                        sha256=sha256_file(final / model_file), manifest_sha256=manifest_sha,
                                        signer_fingerprint=signer))
    return TrainResult(out=out, artifacts=artifacts, bias_status=bias["status"],
                       evaluation_status=evaluation["status"],
                       failures=[*(f"bias: {f}" for f in bias["failures"]),
                                 *(f"evaluation: {f}" for f in evaluation["failures"])],
                       features=features)
