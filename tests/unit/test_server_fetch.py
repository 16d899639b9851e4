"""The init container's fetch: the whole artifact directory, each file checked, or nothing at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from model_server.demo_artifact import build_demo_artifact, train
from model_server.fetch import FetchError, fetch


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    demo = build_demo_artifact(tmp_path_factory.mktemp("src"), fmt="onnx", trained=train("logistic", 3, 200, seed=1))
    return demo.directory, (demo.directory / demo.model_file).as_uri(), demo.sha256


def test_fetch_copies_and_verifies_every_file(source: tuple[Path, str, str], tmp_path: Path) -> None:
    _, uri, sha = source
    manifest = fetch(uri, sha, tmp_path / "artifact")
    assert sorted(p.name for p in (tmp_path / "artifact").iterdir()) == sorted(
        [f.path for f in manifest.files] + ["manifest.json"])


def test_fetch_refuses_a_sha256_the_mlmodel_did_not_approve(source: tuple[Path, str, str], tmp_path: Path) -> None:
    _, uri, _ = source
    with pytest.raises(FetchError, match="the MLModel says"):
        fetch(uri, "0" * 64, tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists() and not (tmp_path / "artifact.partial").exists()


def test_fetch_refuses_a_file_changed_behind_the_manifest(source: tuple[Path, str, str], tmp_path: Path) -> None:
    directory, _, _ = source
    copy = tmp_path / "src"
    copy.mkdir()
    for f in directory.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = copy / "model_meta.json"
    meta.write_text(meta.read_text().replace("feature_00", "feature_xx"))
    model = next(p for p in copy.iterdir() if p.suffix == ".onnx")
    with pytest.raises(FetchError, match=r"model_meta\.json"):
        fetch(model.as_uri(), hashlib.sha256(model.read_bytes()).hexdigest(), tmp_path / "artifact")
