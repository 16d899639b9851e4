"""`modelwarden train --signing-key`, `modelwarden sign` and `modelwarden verify-signature` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelwarden.artifacts import SIGNATURE_FILENAME
from modelwarden.artifacts.signing import key_fingerprint
from modelwarden.cli.main import main
from tests.unit.test_artifacts_signing import write_key
from tests.unit.test_training_pipeline import write_config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main([*argv, "-o", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    d = tmp_path_factory.mktemp("train")
    key, pub = write_key(d, "release")
    assert main(["train", str(write_config(d / "credit.yaml")), "--out", str(d / "out"), "--signing-key",
                 str(key), "-o", "json"]) == 0
    return d / "out", key, pub


def test_train_signs_every_format_and_verify_signature_accepts_it(
        trained: tuple[Path, Path, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _, pub = trained
    assert (out / "skops" / SIGNATURE_FILENAME).is_file() and (out / "onnx" / SIGNATURE_FILENAME).is_file()
    (tmp_path / "release.pub").write_bytes(pub)
    code, result = run(capsys, "verify-signature", str(out), "--public-key", str(tmp_path / "release.pub"))
    assert code == 0 and result["ok"] is True
    assert {a["signerFingerprint"] for a in result["artifacts"]} == {key_fingerprint(pub)}
    # verify-artifacts is not disturbed by the signature beside the manifest
    code, result = run(capsys, "verify-artifacts", str(out))
    assert code == 0, result["problems"]


def test_verify_signature_fails_with_the_changed_file_named(
        trained: tuple[Path, Path, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _, pub = trained
    copy = tmp_path / "skops"
    shutil.copytree(out / "skops", copy)
    (copy / "bias-report.json").write_text((copy / "bias-report.json").read_text().replace("pass", "pasS", 1))
    (tmp_path / "release.pub").write_bytes(pub)
    code, result = run(capsys, "verify-signature", str(copy), "--public-key", str(tmp_path / "release.pub"))
    assert code == 1
    assert result["problems"] == [f"{copy}: ContentChanged: files differ from what was signed: "
                                  "bias-report.json changed"]


def test_sign_an_artifact_trained_elsewhere(trained: tuple[Path, Path, bytes], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = trained
    copy = tmp_path / "onnx"
    shutil.copytree(out / "onnx", copy)
    (copy / SIGNATURE_FILENAME).unlink()
    key, _ = write_key(tmp_path, "team")
    code, result = run(capsys, "sign", str(copy), "--key", str(key), "--public-key-out", str(tmp_path / "team.pub"))
    assert code == 0 and result["ok"] is True
    code, result = run(capsys, "verify-signature", str(copy), "--public-key", str(tmp_path / "team.pub"))
    assert code == 0
    # the training key is not trusted for it
    (tmp_path / "release.pub").write_bytes(trained[2])
    code, result = run(capsys, "verify-signature", str(copy), "--public-key", str(tmp_path / "release.pub"))
    assert code == 1 and result["artifacts"][0]["reason"] == "SignerUntrusted"


def test_a_bad_signing_key_stops_training_before_it_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "key.pem").write_text("not a key")
    code = main(["train", str(write_config(tmp_path / "credit.yaml")), "--out", str(tmp_path / "out"),
                 "--signing-key", str(tmp_path / "key.pem")])
    assert code == 2 and "is not a usable PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
