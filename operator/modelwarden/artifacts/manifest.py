"""``manifest.json``: every file of a model artifact directory with its SHA256 and size, plus the history.

The history is the chain of earlier versions, oldest first. Each entry names the SHA256 of that version's
own ``manifest.json`` bytes and of the manifest before it, so ``history[-1]`` is the version this one
replaced (the runbook's ``manifest.history[n-1]``: the rollback target) and the chain can be checked link
by link. A manifest cannot contain its own hash; ``manifest_sha256(dir)`` is how others refer to it.

Manifests are written canonically (sorted keys, two-space indent, trailing newline) so the same content
always has the same SHA256.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelwarden.artifacts.hashing import is_sha256_hex, sha256_bytes, sha256_file

MANIFEST_FILENAME = "manifest.json"
# The OpenSSF model-signing signature (see .signing) covers every file, the manifest included, so it is
# written last and is the one file a manifest never lists.
SIGNATURE_FILENAME = "model.sig"
MANIFEST_SCHEMA: Final = "modelwarden.io/manifest/v1"

ModelFormat = Literal["skops", "onnx", "joblib"]


def _check_sha(value: str) -> str:
    if not is_sha256_hex(value):
        raise ValueError("must be 64 lower-case hex digits")
    return value


def _check_relative_path(value: str) -> str:
    """Manifest paths are POSIX, relative, normalised and stay inside the directory."""
    path = PurePosixPath(value)
    if (not value or value.startswith("/") or "\\" in value or str(path) != value
            or any(part in ("", ".", "..") for part in path.parts)):
        raise ValueError(f"{value!r} is not a normalised relative path inside the artifact directory")
    return value


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _check_relative_path(value)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        return _check_sha(value)


class HistoryEntry(BaseModel):
    """One earlier version: its manifest's SHA256 and the link to the manifest before it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    model_sha256: str
    manifest_sha256: str
    previous_manifest_sha256: str | None = None
    created_at: AwareDatetime
    uri: str | None = None

    @field_validator("model_sha256", "manifest_sha256", "previous_manifest_sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        return None if value is None else _check_sha(value)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["modelwarden.io/manifest/v1"] = Field(default=MANIFEST_SCHEMA, alias="schema")
    model: str = Field(min_length=1)
    version: str = Field(min_length=1)
    format: ModelFormat
    model_file: str
    created_at: AwareDatetime
    files: tuple[ManifestFile, ...] = Field(min_length=1)
    previous_manifest_sha256: str | None = None
    history: tuple[HistoryEntry, ...] = ()

    @field_validator("model_file")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _check_relative_path(value)

    @field_validator("previous_manifest_sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        return None if value is None else _check_sha(value)

    def file(self, path: str) -> ManifestFile | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def model_sha256(self) -> str | None:
        """The listed SHA256 of the model file (``None`` if the manifest does not list it)."""
        entry = self.file(self.model_file)
        return entry.sha256 if entry else None

    def to_bytes(self) -> bytes:
        """The canonical encoding; ``sha256_bytes(m.to_bytes())`` is the manifest's identity."""
        doc = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    def history_entry(self, manifest_sha256: str, uri: str | None = None) -> HistoryEntry:
        """This version as an entry in its successor's history."""
        model_sha = self.model_sha256
        if model_sha is None:
            raise ValueError(f"manifest does not list its model file {self.model_file!r}")
        return HistoryEntry(version=self.version, model_sha256=model_sha, manifest_sha256=manifest_sha256,
                            previous_manifest_sha256=self.previous_manifest_sha256, created_at=self.created_at,
                            uri=uri)


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with an artifact directory; ``path`` names the file (or ``manifest.json``)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _listable_files(directory: Path) -> list[str]:
    """Every entry under ``directory`` except the manifest and the signature, as POSIX relative paths."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(directory).as_posix()
            if rel not in (MANIFEST_FILENAME, SIGNATURE_FILENAME):
                found.append(rel)
    return found


def build_manifest(directory: str | Path, *, model: str, version: str, format: ModelFormat, model_file: str,
                   created_at: datetime, previous: Manifest | None = None,
                   previous_uri: str | None = None) -> Manifest:
    """A manifest listing every file now in ``directory``; ``previous`` (the version this one replaces)
    becomes the last history entry."""
    directory = Path(directory)
    files = tuple(
        ManifestFile(path=rel, sha256=sha256_file(directory / rel), size=(directory / rel).stat().st_size)
        for rel in _listable_files(directory))
    history: tuple[HistoryEntry, ...] = ()
    previous_sha = None
    if previous is not None:
        previous_sha = sha256_bytes(previous.to_bytes())
        history = (*previous.history, previous.history_entry(previous_sha, uri=previous_uri))
    return Manifest(model=model, version=version, format=format, model_file=model_file, created_at=created_at,
                    files=files, previous_manifest_sha256=previous_sha, history=history)


def write_manifest(directory: str | Path, manifest: Manifest) -> str:
    """Write ``DIR/manifest.json`` canonically; returns its SHA256."""
    data = manifest.to_bytes()
    (Path(directory) / MANIFEST_FILENAME).write_bytes(data)
    return sha256_bytes(data)


def read_manifest(directory: str | Path) -> Manifest:
    """Parse ``DIR/manifest.json`` (raises ``OSError`` or ``pydantic.ValidationError``)."""
    return Manifest.model_validate_json((Path(directory) / MANIFEST_FILENAME).read_bytes())


def manifest_sha256(directory: str | Path) -> str:
    """SHA256 of the manifest file's bytes: how a successor's history refers to this version."""
    return sha256_file(Path(directory) / MANIFEST_FILENAME)


def verify_history(manifest: Manifest) -> list[ManifestProblem]:
    """Check the history chain links: each entry points at the one before it, the manifest at the last."""
    problems = []
    previous: str | None = None
    for i, entry in enumerate(manifest.history):
        if entry.previous_manifest_sha256 != previous:
            problems.append(ManifestProblem(MANIFEST_FILENAME, (
                f"history[{i}] ({entry.version}) links to {entry.previous_manifest_sha256}, "
                f"expected {previous}")))
        previous = entry.manifest_sha256
    if manifest.previous_manifest_sha256 != previous:
        problems.append(ManifestProblem(MANIFEST_FILENAME, (
            f"previous_manifest_sha256 is {manifest.previous_manifest_sha256}, "
            f"but the last history entry is {previous}")))
    return problems


def verify_manifest(directory: str | Path) -> list[ManifestProblem]:
    """Everything wrong with ``directory`` against its manifest, one problem per bad file; ``[]`` when
    every listed file is present with its size and SHA256, nothing unlisted is there, and the history
    chain is consistent."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except FileNotFoundError:
        return [ManifestProblem(MANIFEST_FILENAME, "missing")]
    except OSError as e:
        return [ManifestProblem(MANIFEST_FILENAME, f"unreadable: {e.strerror or e}")]
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        return [ManifestProblem(MANIFEST_FILENAME, f"invalid: {details}")]

    problems: list[ManifestProblem] = []
    listed = [f.path for f in manifest.files]
    for dup in sorted(p for p, n in Counter(listed).items() if n > 1):
        problems.append(ManifestProblem(dup, "listed more than once"))
    if manifest.model_file not in listed:
        problems.append(ManifestProblem(manifest.model_file, "model file is not listed in the manifest"))
    root = directory.resolve()
    for entry in manifest.files:
        problems.extend(_check_file(root, entry))
    for rel in _listable_files(directory):
        if rel not in listed:
            problems.append(ManifestProblem(rel, "present but not listed in the manifest"))
    problems.extend(verify_history(manifest))
    return problems


def _check_file(root: Path, entry: ManifestFile) -> list[ManifestProblem]:
    path = root / entry.path
    try:
        st = path.lstat()
    except FileNotFoundError:
        return [ManifestProblem(entry.path, "missing")]
    except OSError as e:
        return [ManifestProblem(entry.path, f"unreadable: {e.strerror or e}")]
    # A symlink could point anywhere (and change after verification); artifacts are plain files.
    if not stat.S_ISREG(st.st_mode) or not path.resolve().is_relative_to(root):
        return [ManifestProblem(entry.path, "not a regular file")]
    if st.st_size != entry.size:
        return [ManifestProblem(entry.path, f"size {st.st_size} != {entry.size} listed")]
    try:
        actual = sha256_file(path)
    except OSError as e:
        return [ManifestProblem(entry.path, f"unreadable: {e.strerror or e}")]
    if actual != entry.sha256:
        return [ManifestProblem(entry.path, f"sha256 {actual} != {entry.sha256} listed")]
    return []
