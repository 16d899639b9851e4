"""Build a small, complete model artifact directory from generated data (no downloads).

For tests, benchmarks and trying the server locally; the real ones come from the training pipeline.

    python -m model_server.demo_artifact OUT_DIR [--kind logistic|gbm] [--format skops|onnx|joblib]
                                                 [--features 28] [--rows 2000] [--seed 0]

prints the environment to serve it with ``python -m model_server``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelwarden.artifacts import (
    MODEL_META_FILENAME,
    Manifest,
    ModelFormat,
    ModelMeta,
    build_manifest,
    sha256_file,
    write_manifest,
)

Kind = Literal["logistic", "gbm"]
MODEL_FILES = {"skops": "model.skops", "onnx": "model.onnx", "joblib": "model.joblib"}
TRAINED_AT = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)  # fixed: the same inputs give the same files


@dataclass(frozen=True)
class DemoArtifact:
    directory: Path
    model_file: str
    sha256: str
    features: tuple[str, ...]
    contract: str
    manifest: Manifest
    estimator: Any
    sample: np.ndarray  # the generated training rows, in contract order

    def env(self, model: str = "demo", version: str = "1.0.0") -> dict[str, str]:
        """The environment variables that serve this artifact."""
        return {"MODEL_NAME": model, "MODEL_VERSION": version, "ARTIFACT_DIR": str(self.directory),
                "ARTIFACT_SHA256": self.sha256, "MODEL_FORMAT": self.manifest.format}


def feature_names(n: int) -> tuple[str, ...]:
    return tuple(f"feature_{i:02d}" for i in range(n))


def train(kind: Kind, n_features: int, rows: int, seed: int) -> tuple[Any, np.ndarray]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features))
    weights = rng.normal(size=n_features)
    y = (x @ weights + 0.5 * np.sin(3 * x[:, 0]) + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    estimator: Any = (LogisticRegression(max_iter=1000) if kind == "logistic"
                      else GradientBoostingClassifier(n_estimators=50, max_depth=3, random_state=seed))
    estimator.fit(x, y)
    return estimator, x


def save_model(estimator: Any, sample: np.ndarray, fmt: ModelFormat, path: Path) -> None:
    if fmt == "skops":
        import skops.io as sio  # type: ignore[import-untyped]

        sio.dump(estimator, path)
    elif fmt == "onnx":
        from skl2onnx import to_onnx  # type: ignore[import-untyped]

        # zipmap=False: probabilities as a plain [N, 2] tensor rather than a list of dicts.
        onx = to_onnx(estimator, sample[:1].astype(np.float32), options={id(estimator): {"zipmap": False}})
        path.write_bytes(onx.SerializeToString())
    else:
        import joblib  # type: ignore[import-untyped]

        joblib.dump(estimator, path)


def build_demo_artifact(directory: str | Path, *, kind: Kind = "logistic", fmt: ModelFormat = "skops",
                        n_features: int = 8, rows: int = 2000, seed: int = 0, model: str = "demo",
                        version: str = "1.0.0", contract: str = "demo-v1", previous: Manifest | None = None,
                        trained: tuple[Any, np.ndarray] | None = None) -> DemoArtifact:
    """Train (or reuse ``trained``), save in ``fmt``, write ``model_meta.json`` and ``manifest.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    estimator, sample = trained or train(kind, n_features, rows, seed)
    features = feature_names(sample.shape[1])
    model_file = MODEL_FILES[fmt]
    save_model(estimator, sample, fmt, directory / model_file)
    meta = ModelMeta.build(features, TRAINED_AT, feature_contract=contract, feature_samples=sample.tolist(),
                           prediction_sample=estimator.predict_proba(sample)[:, 1].tolist())
    (directory / MODEL_META_FILENAME).write_text(meta.to_json())
    manifest = build_manifest(directory, model=model, version=version, format=fmt, model_file=model_file,
                              created_at=TRAINED_AT, previous=previous)
    write_manifest(directory, manifest)
    return DemoArtifact(directory=directory, model_file=model_file, sha256=sha256_file(directory / model_file),
                        features=features, contract=contract, manifest=manifest, estimator=estimator,
                        sample=sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.demo_artifact", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", choices=["logistic", "gbm"], default="logistic")
    parser.add_argument("--format", dest="fmt", choices=list(MODEL_FILES), default="skops")
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    artifact = build_demo_artifact(args.out_dir, kind=args.kind, fmt=args.fmt, n_features=args.features,
                                   rows=args.rows, seed=args.seed)
    for name, value in artifact.env().items():
        print(f"export {name}={value}")
    if args.fmt == "joblib":
        print("export ALLOW_JOBLIB=true")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
