"""Loading: nothing is read as a model before its bytes verify; skops only with trusted types; joblib only
by opt-in; a scikit-learn version mismatch is fatal; the fast paths agree with scikit-learn."""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from model_server import fastpath
from model_server.config import Settings
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.loader import ArtifactRejected, ModelLoadError, check_tree_bounds, load_artifact
from modelwarden.artifacts import (
    FeatureContract,
    build_manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _settings(artifact: DemoArtifact, **overrides: Any) -> Settings:
    s = Settings(model_name="demo", model_version="1.0.0", artifact_dir=artifact.directory,
                 artifact_sha256=artifact.sha256, model_format=artifact.manifest.format)
    return replace(s, **overrides)


def _replace_model_bytes(artifact: DemoArtifact, data: bytes) -> str:
    """Swap the model file AND rewrite the manifest to match: what an attacker with write access does."""
    (artifact.directory / artifact.model_file).write_bytes(data)
    old = read_manifest(artifact.directory)
    write_manifest(artifact.directory, build_manifest(
        artifact.directory, model=old.model, version=old.version, format=old.format, model_file=old.model_file,
        created_at=old.created_at))
    return sha256_file(artifact.directory / artifact.model_file)


@pytest.fixture(scope="module")
def trained() -> tuple[Any, np.ndarray]:
    return train("logistic", 6, 400, seed=3)


@pytest.fixture
def skops_artifact(tmp_path: Path, trained: tuple[Any, np.ndarray]) -> DemoArtifact:
    return build_demo_artifact(tmp_path / "a", fmt="skops", trained=trained)


@pytest.mark.parametrize("fmt", ["skops", "onnx"])
def test_verified_artifact_loads_and_scores_like_the_estimator(tmp_path: Path, trained: tuple[Any, np.ndarray],
                                                              fmt: str) -> None:
    artifact = build_demo_artifact(tmp_path, fmt=fmt, trained=trained)  # type: ignore[arg-type]
    model = load_artifact(_settings(artifact))
    assert model.sha256 == artifact.sha256
    assert model.contract.features == artifact.features
    x = artifact.sample[:50]
    expected = artifact.estimator.predict_proba(x)[:, 1]
    # ONNX computes in float32.
    np.testing.assert_allclose(model.score(x), expected, rtol=1e-5 if fmt == "onnx" else 1e-12, atol=1e-6)


def test_model_file_changed_after_manifest_is_refused(skops_artifact: DemoArtifact) -> None:
    (skops_artifact.directory / "model.skops").write_bytes(b"PK\x03\x04 tampered")
    with pytest.raises(ArtifactRejected, match=r"model\.skops: size .* listed"):
        load_artifact(_settings(skops_artifact))


def test_manifest_rewritten_to_match_is_still_refused(skops_artifact: DemoArtifact,
                                                      trained: tuple[Any, np.ndarray]) -> None:
    """The manifest proves nothing on its own: the expected SHA256 comes from the approved MLModel spec."""
    import skops.io as sio  # type: ignore[import-untyped]

    other = LogisticRegression().fit(trained[1], (trained[1][:, 0] > 0).astype(int))
    _replace_model_bytes(skops_artifact, sio.dumps(other))
    with pytest.raises(ArtifactRejected, match=f"sha256 .* != expected {skops_artifact.sha256}"):
        load_artifact(_settings(skops_artifact))


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickle_smuggled_as_skops_is_refused_and_never_unpickled(skops_artifact: DemoArtifact,
                                                                  tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    sha = _replace_model_bytes(skops_artifact, pickle.dumps(_Payload(marker)))
    # Even with a matching manifest and a matching expected SHA256 (a compromised pipeline), it is refused.
    with pytest.raises(ArtifactRejected, match=r"not a skops archive.*refused, not unpickled"):
        load_artifact(_settings(skops_artifact, artifact_sha256=sha))
    assert not marker.exists()


class UntrustedEstimator(LogisticRegression):  # type: ignore[misc]
    """A type skops does not trust by default (and neither do we)."""


def test_skops_file_with_untrusted_types_is_refused(skops_artifact: DemoArtifact,
                                                    trained: tuple[Any, np.ndarray]) -> None:
    import skops.io as sio

    x = trained[1]
    sha = _replace_model_bytes(skops_artifact, sio.dumps(UntrustedEstimator().fit(x, (x[:, 0] > 0).astype(int))))
    with pytest.raises(ArtifactRejected, match=r"untrusted types \[.*UntrustedEstimator'\]"):
        load_artifact(_settings(skops_artifact, artifact_sha256=sha))


def test_scikit_learn_version_mismatch_is_fatal(skops_artifact: DemoArtifact) -> None:
    path = skops_artifact.directory / "model.skops"
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "schema.json":
                # The version is stored as a JSON string inside a JSON string: \"1.9.1\".
                recorded = f'\\"{sklearn.__version__}\\"'.encode()
                assert recorded in data
                data = data.replace(recorded, b'\\"0.24.2\\"')
            target.writestr(name, data)
    sha = _replace_model_bytes(skops_artifact, buffer.getvalue())
    with pytest.raises(ModelLoadError, match="scikit-learn version mismatch"):
        load_artifact(_settings(skops_artifact, artifact_sha256=sha))


def test_joblib_is_refused_without_opt_in(tmp_path: Path, trained: tuple[Any, np.ndarray]) -> None:
    artifact = build_demo_artifact(tmp_path, fmt="joblib", trained=trained)
    with pytest.raises(ArtifactRejected, match="ALLOW_JOBLIB"):
        load_artifact(_settings(artifact))
    assert load_artifact(_settings(artifact, allow_joblib=True)).estimator == "LogisticRegression"


def test_format_must_match_the_manifest(skops_artifact: DemoArtifact) -> None:
    with pytest.raises(ArtifactRejected, match="MODEL_FORMAT is onnx but the manifest says skops"):
        load_artifact(_settings(skops_artifact, model_format="onnx"))


def test_feature_contract_must_match_model_meta(skops_artifact: DemoArtifact) -> None:
    features = skops_artifact.features
    swapped = FeatureContract(name="c", features=(features[1], features[0], *features[2:]))
    with pytest.raises(ArtifactRejected, match="same names, different order"):
        load_artifact(_settings(skops_artifact, feature_contract=swapped))
    shorter = FeatureContract(name="c", features=features[:-1])
    with pytest.raises(ArtifactRejected, match=r"model adds \['feature_05'\]"):
        load_artifact(_settings(skops_artifact, feature_contract=shorter))
    same = FeatureContract(name="ml_v1", features=features)
    assert load_artifact(_settings(skops_artifact, feature_contract=same)).contract.name == "ml_v1"


def test_tree_ensembles_load_and_corrupt_trees_are_refused(tmp_path: Path) -> None:
    artifact = build_demo_artifact(tmp_path, kind="gbm", fmt="skops", n_features=5, rows=300)
    model = load_artifact(_settings(artifact))
    assert model.estimator == "GradientBoostingClassifier"

    x = artifact.sample
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, (x[:, 0] > 0).astype(int))
    check_tree_bounds(tree)  # a sound tree passes
    state = tree.tree_.__getstate__()
    state["nodes"]["left_child"][0] = 10_000  # out of range: scikit-learn would read out of bounds
    tree.tree_.__setstate__(state)
    with pytest.raises(ArtifactRejected, match="out-of-range"):
        check_tree_bounds(tree)


@pytest.mark.parametrize("kind", ["logistic", "gbm"])
def test_fast_path_is_verified_against_scikit_learn(tmp_path: Path, kind: str) -> None:
    artifact = build_demo_artifact(tmp_path, kind=kind, fmt="skops", n_features=7, rows=500)  # type: ignore[arg-type]
    model = load_artifact(_settings(artifact))
    assert model.fast_path == ("linear-logistic" if kind == "logistic" else "tree-stages")
    assert model.reference_score is not None
    x = np.random.default_rng(7).normal(scale=3, size=(300, 7))
    np.testing.assert_allclose(model.score(x), model.reference_score(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.score(x[:1]), artifact.estimator.predict_proba(x[:1])[:, 1], rtol=1e-12)


def test_a_fast_path_that_disagrees_is_not_used(trained: tuple[Any, np.ndarray]) -> None:
    estimator, x = trained

    def reference(rows: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict_proba(rows)[:, 1]) + 1e-6  # pretend scikit-learn changed

    score, name = fastpath.verified(estimator, reference, x[:32])
    assert name is None
    assert score is reference
