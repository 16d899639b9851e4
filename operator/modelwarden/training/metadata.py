"""``modelwarden validate-metadata DIR...``: each ``model_meta.json`` against its schema.

Each argument is an artifact directory or a ``model_meta.json`` file. Checked: it parses as
:class:`~modelwarden.artifacts.ModelMeta` (ordered, unique ``features``; ``n_features == len(features)``;
``trained_at`` with a zone; reference distributions only for known features, each a valid histogram), names
a feature contract, and carries drift references for every feature and for the prediction; and, when the
directory has a manifest listing it, its SHA256 matches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelwarden.artifacts import MANIFEST_FILENAME, MODEL_META_FILENAME, read_manifest
from modelwarden.artifacts.hashing import sha256_file
from modelwarden.training.verify import ArtifactCheck, InputError, check_meta


def validate_one(path: Path) -> ArtifactCheck:
    if path.is_file():
        if path.name != MODEL_META_FILENAME:
            raise InputError(f"{path}: expected a directory or a {MODEL_META_FILENAME} file")
        path = path.parent
    elif not path.is_dir():
        raise InputError(f"{path} does not exist")
    check = ArtifactCheck(directory=path)
    meta = check_meta(check, path)
    if meta is not None:
        if not meta.feature_contract:
            check.add(MODEL_META_FILENAME, "names no feature_contract")
        lacking = [f for f in meta.features if f not in meta.reference.features]
        if lacking:
            check.add(MODEL_META_FILENAME, f"no drift reference distribution for {lacking}")
        if meta.reference.prediction is None:
            check.add(MODEL_META_FILENAME, "no drift reference distribution for the prediction")
    if (path / MANIFEST_FILENAME).exists():
        try:
            entry = read_manifest(path).file(MODEL_META_FILENAME)
        except (OSError, ValidationError) as e:
            check.add(MANIFEST_FILENAME, f"unreadable: {e}")
            return check
        if entry is None:
            check.add(MODEL_META_FILENAME, "not listed in the manifest")
        elif (path / MODEL_META_FILENAME).exists() and sha256_file(path / MODEL_META_FILENAME) != entry.sha256:
            check.add(MODEL_META_FILENAME, "sha256 differs from the manifest's")
    return check


def validate_metadata(paths: list[Path]) -> dict[str, Any]:
    checks = [validate_one(p) for p in paths]
    return {"ok": all(not c.problems for c in checks),
            "results": [{"directory": str(c.directory), "ok": not c.problems,
                         "problems": [{"file": p, "problem": m} for p, m in c.problems]} for c in checks]}
