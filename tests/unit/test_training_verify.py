"""`modelwarden verify-artifacts` and `validate-metadata`: JSON out, exit 0 ok / 1 check failed / 2 usage error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelwarden.artifacts import build_manifest, read_manifest, sha256_file, write_manifest
from modelwarden.cli.main import main
from modelwarden.training.config import TrainingConfig
from modelwarden.training.pipeline import train

FILES = ["model.skops", "model_meta.json", "manifest.json", "reproducibility-report.json", "bias-report.json",
         "evaluation-report.json", "model-card.json", "model-card.md"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(TrainingConfig.model_validate({
        "model": "credit", "version": "1.0.0", "seed": 5, "trained_at": "2026-01-13T02:00:00Z",
        "feature_contract": "credit-v1", "pipeline_commit": "test", "data": {"synthetic": {"rows": 800}},
        "bias": {"max_demographic_parity_difference": 0.5, "min_demographic_parity_ratio": 0.5,
                 "max_equalized_odds_difference": 0.5}}), out)
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "copy"))


def test_a_fresh_training_output_verifies(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run(capsys, "verify-artifacts", str(trained))
    assert code == 0 and result["ok"] is True and result["problems"] == []
    assert [a["format"] for a in result["artifacts"]] == ["onnx", "skops"]
    code, result = run(capsys, "verify-artifacts", str(trained / "skops"))
    assert code == 0 and len(result["artifacts"]) == 1


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipping_one_byte_of_any_file_fails_and_names_it(copy: Path, capsys: pytest.CaptureFixture[str],
                                                         name: str, where: str) -> None:
    path = copy / "skops" / name
    data = bytearray(path.read_bytes())
    i = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    code, result = run(capsys, "verify-artifacts", str(copy))
    assert code == 1 and result["ok"] is False
    skops = next(a for a in result["artifacts"] if a["format"] in ("skops", None))
    assert name in {p["file"] for p in skops["problems"]}, skops["problems"]
    assert any(name in p for p in result["problems"])
    assert next(a for a in result["artifacts"] if a["directory"].endswith("onnx"))["ok"] is True


def test_missing_and_extra_files_are_named(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "onnx" / "bias-report.json").unlink()
    (copy / "onnx" / "notes.txt").write_text("hi")
    code, result = run(capsys, "verify-artifacts", str(copy / "onnx"))
    assert code == 1
    assert {(p["file"], p["problem"]) for p in result["artifacts"][0]["problems"]} >= {
        ("bias-report.json", "missing"), ("notes.txt", "present but not listed in the manifest")}


def _rewrite(directory: Path, name: str, doc: dict[str, Any]) -> None:
    """Change a file *and* re-sign the manifest: integrity holds, so the schema check has to catch it."""
    (directory / name).write_text(json.dumps(doc))
    old = read_manifest(directory)
    write_manifest(directory, build_manifest(directory, model=old.model, version=old.version, format=old.format,
                                             model_file=old.model_file, created_at=old.created_at))


@pytest.mark.parametrize(("name", "key"), [("bias-report.json", "groups"), ("evaluation-report.json", "metrics"),
                                           ("reproducibility-report.json", "seed")])
def test_report_schemas_are_checked(copy: Path, capsys: pytest.CaptureFixture[str], name: str, key: str) -> None:
    directory = copy / "skops"
    doc = json.loads((directory / name).read_text())
    del doc[key]
    _rewrite(directory, name, doc)
    code, result = run(capsys, "verify-artifacts", str(directory))
    assert code == 1
    [problem] = result["artifacts"][0]["problems"]
    assert problem["file"] == name and key in problem["problem"]


def test_n_features_must_equal_the_features_listed(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = copy / "skops"
    meta = json.loads((directory / "model_meta.json").read_text())
    meta["n_features"] = 5
    _rewrite(directory, "model_meta.json", meta)
    code, result = run(capsys, "verify-artifacts", str(directory))
    assert code == 1
    assert result["artifacts"][0]["problems"] == [
        {"file": "model_meta.json", "problem": "n_features 5 != len(features) 6"}]
    assert run(capsys, "validate-metadata", str(directory))[0] == 1


def test_contract_comparison(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features = ["income", "debt_ratio", "utilization", "late_payments", "tenure_years", "age"]
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "credit-v1", "features": features, "nFeatures": 6}))
    assert run(capsys, "verify-artifacts", str(trained), "--contract", str(good))[0] == 0
    mlmodel = tmp_path / "mlmodel.yaml"  # an MLModel manifest works too: its spec.featureContract
    mlmodel.write_text(f"apiVersion: modelwarden.io/v1alpha1\nkind: MLModel\nspec:\n  featureContract:\n"
                       f"    name: credit-v1\n    nFeatures: 6\n    features: {json.dumps(features)}\n")
    assert run(capsys, "verify-artifacts", str(trained), "--contract", str(mlmodel))[0] == 0
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(json.dumps({"name": "credit-v1", "features": features[::-1]}))
    code, result = run(capsys, "verify-artifacts", str(trained), "--contract", str(reordered))
    assert code == 1 and "same names, different order" in result["problems"][0]
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps({"name": "credit-v1", "features": features[:5]}))
    code, result = run(capsys, "verify-artifacts", str(trained / "onnx"), "--contract", str(fewer))
    assert code == 1 and any("n_features 6 != contract's 5" in p for p in result["problems"])
    inconsistent = tmp_path / "inconsistent.json"
    inconsistent.write_text(json.dumps({"name": "x", "features": features, "nFeatures": 7}))
    assert run(capsys, "verify-artifacts", str(trained), "--contract", str(inconsistent))[0] == 2


def test_same_as_compares_every_sha256(trained: Path, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "verify-artifacts", str(trained), "--same-as", str(copy))[0] == 0
    _rewrite(copy / "onnx", "bias-report.json", {**json.loads((copy / "onnx/bias-report.json").read_text()),
                                                  "evaluated_on": "elsewhere"})
    code, result = run(capsys, "verify-artifacts", str(trained), "--same-as", str(copy))
    assert code == 1
    onnx = next(a for a in result["artifacts"] if a["format"] == "onnx")
    assert {p["file"] for p in onnx["problems"]} == {"bias-report.json", "manifest.json"}
    # On its own the re-manifested copy's card no longer says what its bias report says, and its formats no
    # longer agree with each other.
    code, result = run(capsys, "verify-artifacts", str(copy))
    assert code == 1 and [a["ok"] for a in result["artifacts"]] == [False, False]
    onnx_problems = {(p["file"], p["problem"]) for p in result["artifacts"][0]["problems"]}
    assert ("model-card.json", "derived from a different bias-report.json (sha256 "
            f"{sha256_file(trained / 'onnx/bias-report.json')}, the file has "
            f"{sha256_file(copy / 'onnx/bias-report.json')})") in onnx_problems
    [problem] = result["artifacts"][1]["problems"]
    assert problem["file"] == "bias-report.json" and "not come from the same training run" in problem["problem"]


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-artifacts", str(tmp_path / "nope")]) == 2
    assert main(["validate-metadata", str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["verify-artifacts"])
    assert e.value.code == 2
    code, result = run(capsys, "verify-artifacts", str(tmp_path))  # a directory without any manifest
    assert code == 1 and result["artifacts"][0]["problems"][0] == {"file": "manifest.json", "problem": "missing"}


def test_validate_metadata(trained: Path, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run(capsys, "validate-metadata", str(trained / "skops"), str(trained / "onnx/model_meta.json"))
    assert code == 0 and [r["ok"] for r in result["results"]] == [True, True]
    meta = json.loads((copy / "onnx/model_meta.json").read_text())
    del meta["feature_contract"]
    meta["reference"]["features"].pop("age")
    (copy / "onnx/model_meta.json").write_text(json.dumps(meta))
    code, result = run(capsys, "validate-metadata", str(copy / "skops"), str(copy / "onnx"))
    assert code == 1
    assert [r["ok"] for r in result["results"]] == [True, False]
    assert {p["problem"] for p in result["results"][1]["problems"]} == {
        "names no feature_contract", "no drift reference distribution for ['age']",
        "sha256 differs from the manifest's"}
