"""`modelwarden evidence` usage errors: what a user sees before any cluster or bundle is involved."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from modelwarden.cli.main import main


def test_export_needs_a_version_and_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evidence", "m"]) == 2
    assert "needs --version V and -o FILE.tar.gz" in capsys.readouterr().err


def test_verify_refuses_what_is_not_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.tar.gz").write_text("hello")
    assert main(["evidence", "verify", str(tmp_path / "x.tar.gz")]) == 2
    assert "is not a readable .tar.gz" in capsys.readouterr().err
    assert main(["evidence", "verify"]) == 2
    with tarfile.open(tmp_path / "two.tar.gz", "w:gz") as tar:
        for name in ("a/x", "b/y"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    assert main(["evidence", "verify", str(tmp_path / "two.tar.gz")]) == 2
    assert "expected one top directory" in capsys.readouterr().err


def test_a_bundle_without_its_manifest_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("m-v1-evidence/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert main(["evidence", "verify", str(tmp_path / "b.tar.gz"), "--format", "json"]) == 1
    assert '"member": "BUNDLE-MANIFEST.json"' in capsys.readouterr().out
