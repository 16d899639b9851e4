"""``modelwarden verify-artifacts DIR``: is this directory exactly what training wrote, and does it hold up?

DIR is one artifact directory (it has ``manifest.json``) or the output of ``modelwarden train`` (one
artifact directory per format). For each artifact directory:

* every file's size and SHA256 against the manifest, nothing unlisted, the history chain
  (:func:`~modelwarden.artifacts.verify_manifest`);
* ``model_meta.json`` parses, ``n_features == len(features)``, and it is listed in the manifest;
* each report is present, listed, and valid against its schema;
* the model card (``model-card.json`` and ``.md``) is exactly what its sources (meta and reports) give;
* unless ``integrity_only``: the bias and evaluation reports say ``pass``;
* with a contract: its features (names and order) and count equal the model's;
* with ``same_as``: every file has the same SHA256 as in that other directory (reproducibility);
* for a training output: ``model_meta.json`` and the reports are the same in every format directory.

Each problem names the file it is about.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelwarden.artifacts import (
    MANIFEST_FILENAME,
    MODEL_META_FILENAME,
    SIGNATURE_FILENAME,
    FeatureContract,
    ModelMeta,
    read_manifest,
    verify_manifest,
)
from modelwarden.artifacts.hashing import sha256_file
from modelwarden.training.card import CARD_FILES, CARD_SOURCES, check_model_card
from modelwarden.training.reports import BIAS_REPORT, EVALUATION_REPORT, REPORT_FILES, SCHEMAS


class InputError(ValueError):
    """A path or file given on the command line cannot be used (exit code 2)."""


@dataclass
class ArtifactCheck:
    directory: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    format: str | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    manifest_sha256: str | None = None

    def add(self, path: str, problem: str) -> None:
        self.problems.append((path, problem))

    def to_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "ok": not self.problems, "format": self.format,
                "model_file": self.model_file, "model_sha256": self.model_sha256,
                "manifest_sha256": self.manifest_sha256,
                "problems": [{"file": p, "problem": m} for p, m in self.problems]}


def _schema_errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())


def artifact_directories(path: Path) -> list[Path]:
    """``path`` itself if it holds a manifest, else its immediate subdirectories that do."""
    if not path.is_dir():
        raise InputError(f"{path} is not a directory")
    if (path / MANIFEST_FILENAME).exists():
        return [path]
    found = sorted(d for d in path.iterdir() if d.is_dir() and (d / MANIFEST_FILENAME).exists())
    return found or [path]  # no manifest anywhere: report it as missing on DIR itself


def load_contract(path: Path) -> FeatureContract:
    """A feature contract from JSON/YAML: ``{name, features, nFeatures?}``, or an MLModel (its
    ``spec.featureContract``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read contract {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise InputError(f"contract {path} is neither JSON nor YAML: {e}") from e
    if isinstance(doc, Mapping) and isinstance(doc.get("spec"), Mapping):
        doc = doc["spec"].get("featureContract")
    if isinstance(doc, Mapping) and isinstance(doc.get("featureContract"), Mapping):
        doc = doc["featureContract"]
    if not isinstance(doc, Mapping):
        raise InputError(f"{path}: expected a mapping with name and features (or an MLModel)")
    n = doc.get("nFeatures", doc.get("n_features"))
    try:
        contract = FeatureContract(name=doc.get("name") or path.stem, features=tuple(doc.get("features") or ()))
    except ValidationError as e:
        raise InputError(f"{path}: invalid feature contract: {_schema_errors(e)}") from e
    if n is not None and n != contract.n_features:
        raise InputError(f"{path}: nFeatures is {n} but {contract.n_features} features are listed")
    return contract


def check_contract(check: ArtifactCheck, meta: ModelMeta, contract: FeatureContract) -> None:
    if contract.features != meta.features:
        mismatch = contract.mismatch(meta.features)
        detail = "same names, different order" if not (mismatch.missing_features or mismatch.unexpected_features) \
            else f"model lacks {mismatch.missing_features}, model adds {mismatch.unexpected_features}"
        check.add(MODEL_META_FILENAME, f"features disagree with contract {contract.name!r}: {detail}")
    if meta.n_features != contract.n_features:
        check.add(MODEL_META_FILENAME, f"n_features {meta.n_features} != contract's {contract.n_features}")
    if meta.feature_contract is not None and meta.feature_contract != contract.name:
        check.add(MODEL_META_FILENAME, f"feature_contract {meta.feature_contract!r} != {contract.name!r}")


def check_meta(check: ArtifactCheck, directory: Path) -> ModelMeta | None:
    path = directory / MODEL_META_FILENAME
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        check.add(MODEL_META_FILENAME, "missing")
        return None
    except (OSError, ValueError) as e:
        check.add(MODEL_META_FILENAME, f"unreadable: {e}")
        return None
    if isinstance(raw, dict) and isinstance(raw.get("features"), list) and "n_features" in raw \
            and raw["n_features"] != len(raw["features"]):
        check.add(MODEL_META_FILENAME, f"n_features {raw['n_features']} != len(features) {len(raw['features'])}")
        return None
    try:
        return ModelMeta.model_validate(raw)
    except ValidationError as e:
        check.add(MODEL_META_FILENAME, f"invalid: {_schema_errors(e)}")
        return None


def verify_directory(directory: Path, *, contract: FeatureContract | None = None, integrity_only: bool = False,
                     same_as: Path | None = None) -> ArtifactCheck:
    check = ArtifactCheck(directory=directory)
    for problem in verify_manifest(directory):
        check.add(problem.path, problem.problem)
    listed: set[str] = set()
    try:
        manifest = read_manifest(directory)
        listed = {f.path for f in manifest.files}
        check.format, check.model_file, check.model_sha256 = manifest.format, manifest.model_file, \
            manifest.model_sha256
        check.manifest_sha256 = sha256_file(directory / MANIFEST_FILENAME)
    except (OSError, ValidationError):
        pass  # already reported by verify_manifest

    meta = check_meta(check, directory)
    if listed and MODEL_META_FILENAME not in listed:
        check.add(MODEL_META_FILENAME, "not listed in the manifest")
    if meta is not None and contract is not None:
        check_contract(check, meta, contract)

    for name in REPORT_FILES:
        if listed and name not in listed and (directory / name).exists():
            continue  # "present but not listed" is already reported
        try:
            doc = json.loads((directory / name).read_bytes())
        except FileNotFoundError:
            check.add(name, "missing")
            continue
        except (OSError, ValueError) as e:
            check.add(name, f"unreadable: {e}")
            continue
        try:
            report = SCHEMAS[name].model_validate(doc)
        except ValidationError as e:
            check.add(name, f"does not match its schema: {_schema_errors(e)}")
            continue
        if not integrity_only and name in (BIAS_REPORT, EVALUATION_REPORT) and getattr(report, "status", "") != "pass":
            failures = getattr(report, "failures", [])
            check.add(name, f"status {getattr(report, 'status', '?')}: {'; '.join(failures) or 'no reason given'}")

    # A card cannot be judged against a source that is itself broken; that source's problem says enough.
    if not {p for p, _ in check.problems} & set(CARD_SOURCES):
        for card_file, card_problem in check_model_card(directory):
            check.add(card_file, card_problem)

    if same_as is not None:
        compare(check, directory, same_as)
    return check


def compare(check: ArtifactCheck, directory: Path, other: Path) -> None:
    """Every file in either directory has the same SHA256 in both. A signature is left out: ECDSA signatures
    differ on every signing, and what they sign is compared here file by file."""
    if not (other / MANIFEST_FILENAME).exists() and (other / directory.name / MANIFEST_FILENAME).exists():
        other = other / directory.name  # DIR and OTHER are training outputs: compare format with format
    mine = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {SIGNATURE_FILENAME}
    theirs = {p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file()} - {SIGNATURE_FILENAME} \
        if other.is_dir() else set()
    for rel in sorted(mine | theirs):
        if rel not in theirs:
            check.add(rel, f"not in {other}")
        elif rel not in mine:
            check.add(rel, f"only in {other}")
        elif sha256_file(directory / rel) != sha256_file(other / rel):
            check.add(rel, f"sha256 differs from {other / rel}: not reproduced")


def verify_artifacts(path: Path, *, contract: FeatureContract | None = None, integrity_only: bool = False,
                     same_as: Path | None = None) -> dict[str, Any]:
    if same_as is not None and not same_as.is_dir():
        raise InputError(f"--same-as {same_as} is not a directory")
    checks = [verify_directory(d, contract=contract, integrity_only=integrity_only, same_as=same_as)
              for d in artifact_directories(path)]
    # The format directories of one training run share their metadata and reports byte for byte.
    for check in checks[1:]:
        for name in (MODEL_META_FILENAME, *REPORT_FILES, *CARD_FILES):
            mine, first = check.directory / name, checks[0].directory / name
            already = {p for c in (check, checks[0]) for p, _ in c.problems}
            if name not in already and mine.is_file() and first.is_file() and sha256_file(mine) != sha256_file(first):
                check.add(name, f"differs from {first}: the formats do not come from the same training run")
    return {
        "ok": all(not c.problems for c in checks),
        "artifacts": [c.to_dict() for c in checks],
        "problems": [f"{c.directory / p}: {m}" for c in checks for p, m in c.problems],
    }
