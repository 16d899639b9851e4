"""The model card `modelwarden train` writes (JSON and Markdown) and what `verify-artifacts` finds wrong with one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelwarden.artifacts import build_manifest, read_manifest, write_manifest
from modelwarden.cli.main import main
from modelwarden.training.config import ConfigError, load_config
from tests.unit.test_training_pipeline import write_config

STATEMENT = {"intended_use": "Rank consumer loan applications for a human underwriter.",
             "out_of_scope_uses": ["Automatic decline without human review"],
             "limitations": ["Trained on generated data only", "Not evaluated for applicants under 21"]}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("card")
    assert main(["train", str(write_config(d / "credit.yaml", card=STATEMENT)), "--out", str(d / "out"),
                 "-o", "json"]) == 0
    return d / "out"


def card(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((directory / "model-card.json").read_text())
    return doc


def test_the_card_says_what_the_owners_and_the_reports_say(out: Path) -> None:
    directory = out / "skops"
    c = card(directory)
    repro = json.loads((directory / "reproducibility-report.json").read_text())
    bias = json.loads((directory / "bias-report.json").read_text())
    evaluation = json.loads((directory / "evaluation-report.json").read_text())
    meta = json.loads((directory / "model_meta.json").read_text())
    assert (c["model"], c["version"]) == ("credit", "1.0.0")
    assert c["intended_use"] == STATEMENT["intended_use"]
    assert c["limitations"] == STATEMENT["limitations"]
    assert c["features"]["names"] == meta["features"] and c["features"]["contract"] == "credit-v1"
    assert c["training_data"]["sha256"] == repro["data"]["sha256"]
    assert c["training_data"]["feature_store_sha256"] == repro["feature_store"]["sha256"]
    assert c["evaluation"]["status"] == evaluation["status"] and c["evaluation"]["metrics"] == evaluation["metrics"]
    assert c["bias"]["status"] == bias["status"] and set(c["bias"]["groups"]) == set(bias["groups"])
    markdown = (directory / "model-card.md").read_text()
    for text in (STATEMENT["intended_use"], *STATEMENT["limitations"], repro["data"]["sha256"],
                 f"## Bias: {bias['status']}", *meta["features"]):
        assert text in markdown
    listed = {f.path for f in read_manifest(directory).files}
    assert {"model-card.json", "model-card.md"} <= listed
    # the formats of one run share their card byte for byte
    assert (out / "onnx" / "model-card.md").read_bytes() == markdown.encode()


def test_a_card_without_the_owners_statement_says_so(tmp_path: Path) -> None:
    assert main(["train", str(write_config(tmp_path / "c.yaml")), "--out", str(tmp_path / "out"),
                 "--force", "-o", "json"]) == 0
    c = card(tmp_path / "out" / "onnx")
    assert (c["intended_use"], c["limitations"]) == (None, [])
    assert "_not stated in the training config_" in (tmp_path / "out" / "onnx" / "model-card.md").read_text()


def _rewrite(directory: Path, name: str, text: str) -> None:
    """Change a file and rebuild the manifest, so only the card check can notice."""
    (directory / name).write_text(text)
    old = read_manifest(directory)
    write_manifest(directory, build_manifest(directory, model=old.model, version=old.version, format=old.format,
                                             model_file=old.model_file, created_at=old.created_at))


def _problems(capsys: pytest.CaptureFixture[str], directory: Path) -> set[tuple[str, str]]:
    assert main(["verify-artifacts", str(directory), "-o", "json"]) == 1
    return {(p["file"], p["problem"]) for p in json.loads(capsys.readouterr().out)["artifacts"][0]["problems"]}


def test_verify_artifacts_catches_a_card_that_disagrees_with_its_reports(
        out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = Path(shutil.copytree(out / "skops", tmp_path / "skops"))
    doc = card(directory)
    doc["evaluation"]["metrics"]["auc"] = 0.99
    _rewrite(directory, "model-card.json", json.dumps(doc))
    assert _problems(capsys, directory) == {
        ("model-card.json", "does not match its sources in: evaluation"),
        ("model-card.md", "is not the rendering of model-card.json")}


def test_verify_artifacts_catches_an_edited_markdown_card(out: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = Path(shutil.copytree(out / "onnx", tmp_path / "onnx"))
    text = (directory / "model-card.md").read_text().replace("Trained on generated data only", "Fully validated")
    _rewrite(directory, "model-card.md", text)
    assert _problems(capsys, directory) == {("model-card.md", "is not the rendering of model-card.json")}


def test_a_missing_card_is_named(out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = Path(shutil.copytree(out / "onnx", tmp_path / "onnx"))
    (directory / "model-card.json").unlink()
    assert ("model-card.json", "missing") in _problems(capsys, directory)


def test_unknown_card_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"card\.limitation"):
        load_config(write_config(tmp_path / "c.yaml", card={"limitation": ["typo"]}))
