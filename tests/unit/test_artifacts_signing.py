"""OpenSSF model-signing over an artifact directory, with the real library: what verifies and what each
failure is called (missing, malformed, untrusted signer, altered signature, changed/added/removed file)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from model_server.demo_artifact import build_demo_artifact, train
from modelwarden.artifacts import SIGNATURE_FILENAME, sha256_file, verify_manifest
from modelwarden.artifacts.signing import (
    SigningError,
    key_fingerprint,
    sign_directory,
    verify_directory_signature,
)


def write_key(directory: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, bytes]:
    """A PEM private key file and the matching public key PEM."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    d = tmp_path_factory.mktemp("keys")
    return {"release": write_key(d, "release"), "other": write_key(d, "other"),
            "p384": write_key(d, "p384", ec.SECP384R1())}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, bytes]]) -> Path:
    demo = build_demo_artifact(tmp_path_factory.mktemp("signed") / "artifact", fmt="skops",
                               trained=train("logistic", 4, 200, seed=1))
    sign_directory(demo.directory, keys["release"][0])
    return demo.directory


@pytest.fixture
def copy(signed: Path, tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(signed, target)
    return target


def test_signed_directory_verifies_and_names_its_signer(signed: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    release_pub = keys["release"][1]
    check = verify_directory_signature(signed, [keys["other"][1], release_pub])
    assert check.ok and check.reason == "Verified"
    assert check.signer_fingerprint == key_fingerprint(release_pub)
    # The signature sits beside the files it signs without upsetting the manifest check.
    assert (signed / SIGNATURE_FILENAME).is_file() and verify_manifest(signed) == []


def test_the_signature_is_a_model_signing_bundle_over_every_file(signed: Path) -> None:
    bundle = json.loads((signed / SIGNATURE_FILENAME).read_bytes())
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    signed_files = {r["name"] for r in statement["predicate"]["resources"]}
    assert signed_files == {p.name for p in signed.iterdir()} - {SIGNATURE_FILENAME}


@pytest.mark.parametrize("name", ["model.skops", "model_meta.json", "manifest.json"])
def test_one_byte_changed_in_any_file_is_named(copy: Path, keys: dict[str, tuple[Path, bytes]], name: str) -> None:
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    check = verify_directory_signature(copy, [keys["release"][1]])
    assert not check.ok and check.reason == "ContentChanged"
    assert check.changed == (name,) and not check.added and not check.removed
    assert f"{name} changed" in check.message


def test_a_file_added_or_removed_is_named(copy: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    (copy / ".gitignore").write_text("*\n")  # the library would skip .git* paths by default; we do not
    check = verify_directory_signature(copy, [keys["release"][1]])
    assert (check.reason, check.added) == ("ContentChanged", (".gitignore",))
    (copy / ".gitignore").unlink()
    (copy / "model_meta.json").unlink()
    check = verify_directory_signature(copy, [keys["release"][1]])
    assert (check.reason, check.removed) == ("ContentChanged", ("model_meta.json",))
    assert "model_meta.json removed" in check.message


def test_a_signer_outside_the_trusted_keys_is_refused(signed: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    check = verify_directory_signature(signed, [keys["other"][1], keys["p384"][1]])
    assert not check.ok and check.reason == "SignerUntrusted"
    assert check.signer_fingerprint == key_fingerprint(keys["release"][1])
    assert check.signer_fingerprint in check.message


def test_missing_and_malformed_signatures(copy: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    (copy / SIGNATURE_FILENAME).write_text("{not json")
    assert verify_directory_signature(copy, [keys["release"][1]]).reason == "SignatureMalformed"
    (copy / SIGNATURE_FILENAME).unlink()
    check = verify_directory_signature(copy, [keys["release"][1]])
    assert not check.ok and check.reason == "SignatureMissing" and check.signer_fingerprint is None


def test_a_signed_file_list_rewritten_to_match_altered_files_does_not_verify(
        copy: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    """Someone swaps the model and edits its digest in the signature: the signature no longer verifies."""
    (copy / "model.skops").write_bytes(b"not the approved model")
    bundle = json.loads((copy / SIGNATURE_FILENAME).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.skops":
            resource["digest"] = sha256_file(copy / "model.skops")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (copy / SIGNATURE_FILENAME).write_text(json.dumps(bundle))
    check = verify_directory_signature(copy, [keys["release"][1]])
    assert not check.ok and check.reason == "SignatureInvalid"
    assert check.signer_fingerprint == key_fingerprint(keys["release"][1])


def test_p384_keys_sign_too(copy: Path, keys: dict[str, tuple[Path, bytes]]) -> None:
    assert sign_directory(copy, keys["p384"][0]) == key_fingerprint(keys["p384"][1])
    assert verify_directory_signature(copy, [keys["p384"][1]]).ok


def test_unusable_keys_are_clear_errors(copy: Path, tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_path = tmp_path / "ed.pem"
    ed_path.write_bytes(ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    with pytest.raises(SigningError, match="elliptic-curve key on P-256"):
        sign_directory(copy, ed_path)
    with pytest.raises(SigningError, match="cannot read signing key"):
        sign_directory(copy, tmp_path / "absent.pem")
    with pytest.raises(SigningError, match="not a PEM public key"):
        verify_directory_signature(copy, [b"hello"])
    with pytest.raises(SigningError, match="no trusted public key"):
        verify_directory_signature(copy, [])
