"""manifest.json: every file with SHA256 and size, problems named per file, the history chain."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelwarden.artifacts import (
    MANIFEST_FILENAME,
    Manifest,
    build_manifest,
    manifest_sha256,
    read_manifest,
    sha256_bytes,
    sha256_file,
    verify_history,
    verify_manifest,
    write_manifest,
)

T0 = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)


def _artifact(directory: Path, model_bytes: bytes = b"model-v1", version: str = "1.0.0",
              previous: Manifest | None = None) -> Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.skops").write_bytes(model_bytes)
    (directory / "model_meta.json").write_text('{"n_features": 1}\n')
    (directory / "reports").mkdir(exist_ok=True)
    (directory / "reports" / "bias-report.json").write_text('{"status": "pass"}\n')
    manifest = build_manifest(directory, model="m", version=version, format="skops", model_file="model.skops",
                              created_at=T0, previous=previous)
    write_manifest(directory, manifest)
    return manifest


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 7)  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data)
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_manifest_lists_every_file_with_size_and_sha(tmp_path: Path) -> None:
    manifest = _artifact(tmp_path)
    assert [(f.path, f.size) for f in manifest.files] == [
        ("model.skops", 8), ("model_meta.json", 18), ("reports/bias-report.json", 19)]
    assert manifest.model_sha256 == sha256_bytes(b"model-v1")
    assert read_manifest(tmp_path) == manifest
    assert verify_manifest(tmp_path) == []


def test_manifest_bytes_are_canonical(tmp_path: Path) -> None:
    """Same content, same bytes, same SHA256: a successor can refer to a manifest by hash."""
    manifest = _artifact(tmp_path)
    raw = (tmp_path / MANIFEST_FILENAME).read_bytes()
    assert raw == manifest.to_bytes() == read_manifest(tmp_path).to_bytes()
    assert raw.endswith(b"}\n")
    assert list(json.loads(raw)) == sorted(json.loads(raw))
    assert manifest_sha256(tmp_path) == sha256_bytes(raw)


@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda d: (d / "model.skops").write_bytes(b"model-v2"), "model.skops: sha256 "),
    (lambda d: (d / "model.skops").write_bytes(b"model-v1+"), "model.skops: size 9 != 8 listed"),
    (lambda d: (d / "reports" / "bias-report.json").unlink(), "reports/bias-report.json: missing"),
    (lambda d: (d / "extra.pkl").write_bytes(b"x"), "extra.pkl: present but not listed in the manifest"),
    (lambda d: (d / MANIFEST_FILENAME).unlink(), "manifest.json: missing"),
    (lambda d: (d / MANIFEST_FILENAME).write_text("{"), "manifest.json: invalid"),
])
def test_each_tampering_is_named(tmp_path: Path, tamper: object, expected: str) -> None:
    _artifact(tmp_path)
    tamper(tmp_path)  # type: ignore[operator]
    problems = [str(p) for p in verify_manifest(tmp_path)]
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_several_bad_files_are_all_reported(tmp_path: Path) -> None:
    _artifact(tmp_path)
    (tmp_path / "model.skops").write_bytes(b"MODEL-V1")
    (tmp_path / "model_meta.json").write_text("{}")
    assert sorted(p.path for p in verify_manifest(tmp_path)) == ["model.skops", "model_meta.json"]


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    """A symlink could point outside the directory, or be re-pointed after verification."""
    artifact = tmp_path / "a"
    _artifact(artifact)
    outside = tmp_path / "outside"
    outside.write_bytes(b"model-v1")
    (artifact / "model.skops").unlink()
    (artifact / "model.skops").symlink_to(outside)
    assert [str(p) for p in verify_manifest(artifact)] == ["model.skops: not a regular file"]


@pytest.mark.parametrize("bad_path", ["../escape", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b", ""])
def test_manifest_paths_must_stay_inside(tmp_path: Path, bad_path: str) -> None:
    manifest = _artifact(tmp_path)
    doc = json.loads(manifest.to_bytes())
    doc["files"][0]["path"] = bad_path
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps(doc))
    problems = verify_manifest(tmp_path)
    assert len(problems) == 1
    assert problems[0].path == MANIFEST_FILENAME
    assert "normalised relative path" in problems[0].problem


def test_history_chains_versions_by_manifest_sha(tmp_path: Path) -> None:
    v1 = _artifact(tmp_path / "v1", b"one", "1.0.0")
    v2 = _artifact(tmp_path / "v2", b"two", "2.0.0", previous=v1)
    v3 = _artifact(tmp_path / "v3", b"three", "3.0.0", previous=v2)

    assert [e.version for e in v3.history] == ["1.0.0", "2.0.0"]
    prior = v3.history[-1]  # the rollback target: manifest.history[n-1]
    assert prior.model_sha256 == sha256_bytes(b"two")
    assert prior.manifest_sha256 == manifest_sha256(tmp_path / "v2")
    assert prior.previous_manifest_sha256 == manifest_sha256(tmp_path / "v1")
    assert v3.previous_manifest_sha256 == manifest_sha256(tmp_path / "v2")
    assert verify_history(v3) == []
    assert verify_manifest(tmp_path / "v3") == []


def test_a_broken_history_link_is_reported(tmp_path: Path) -> None:
    v1 = _artifact(tmp_path / "v1", b"one", "1.0.0")
    v2 = _artifact(tmp_path / "v2", b"two", "2.0.0", previous=v1)
    v3 = _artifact(tmp_path / "v3", b"three", "3.0.0", previous=v2)
    forged = v3.model_copy(update={"history": (v3.history[0].model_copy(
        update={"manifest_sha256": "0" * 64}), v3.history[1])})
    write_manifest(tmp_path / "v3", forged)
    problems = [str(p) for p in verify_manifest(tmp_path / "v3")]
    assert problems == [f"manifest.json: history[1] (2.0.0) links to {v3.history[0].manifest_sha256}, "
                        f"expected {'0' * 64}"]


def test_model_file_must_be_listed(tmp_path: Path) -> None:
    manifest = _artifact(tmp_path)
    write_manifest(tmp_path, manifest.model_copy(update={"model_file": "other.skops"}))
    assert [str(p) for p in verify_manifest(tmp_path)] == [
        "other.skops: model file is not listed in the manifest"]
