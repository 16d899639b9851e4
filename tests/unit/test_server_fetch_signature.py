"""The init container's fetch with a required signature: the real model-signing verification before loading,
and the Deployment that mounts the trusted keys for it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_server.demo_artifact import build_demo_artifact, train
from model_server.fetch import FetchError, fetch, trusted_keys
from modelwarden.adapters.manifests import TRUSTED_KEYS_MOUNT, ModelObject, deployment_manifest
from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts import SIGNATURE_FILENAME, build_manifest, read_manifest, sha256_file, write_manifest
from modelwarden.artifacts.signing import sign_directory
from tests.unit.test_artifacts_signing import write_key


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    d = tmp_path_factory.mktemp("signed")
    key, public = write_key(d, "release")
    _, other = write_key(d, "other")
    demo = build_demo_artifact(d / "src", fmt="onnx", trained=train("logistic", 3, 200, seed=1))
    sign_directory(demo.directory, key)
    return demo.directory, public, other


def uri_sha(directory: Path) -> tuple[str, str]:
    return (directory / "model.onnx").as_uri(), sha256_file(directory / "model.onnx")


def test_a_signed_directory_is_fetched_with_its_signature(signed: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    source, public, _ = signed
    fetch(*uri_sha(source), tmp_path / "artifact", [public])
    assert (tmp_path / "artifact" / SIGNATURE_FILENAME).is_file()


@pytest.mark.parametrize(("case", "expected"), [
    ("untrusted key", "SignerUntrusted"), ("missing signature", "SignatureMissing"),
    ("file changed", "ContentChanged: files differ from what was signed: manifest.json changed; "
                     "model_meta.json changed")])
def test_a_bad_signature_stops_the_pod_before_loading(signed: tuple[Path, bytes, bytes], tmp_path: Path,
                                                      case: str, expected: str) -> None:
    source, public, other = signed
    copy = Path(shutil.copytree(source, tmp_path / "src"))
    keys = [other] if case == "untrusted key" else [public]
    if case == "missing signature":
        (copy / SIGNATURE_FILENAME).unlink()
    if case == "file changed":  # and the manifest rewritten to match: only the signature can tell
        meta = copy / "model_meta.json"
        meta.write_text(meta.read_text().replace("feature_00", "feature_xx"))
        old = read_manifest(copy)
        write_manifest(copy, build_manifest(copy, model=old.model, version=old.version, format=old.format,
                                            model_file=old.model_file, created_at=old.created_at))
    with pytest.raises(FetchError, match=expected):
        fetch(*uri_sha(copy), tmp_path / "artifact", keys)
    assert not (tmp_path / "artifact").exists() and not (tmp_path / "artifact.partial").exists()


def test_the_fetch_command_reads_the_mounted_keys(signed: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    source, _, other = signed
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "other.pub").write_bytes(other)
    (keys / "..data").mkdir()  # a mounted ConfigMap's bookkeeping is not a key
    assert trusted_keys(keys) == [other]
    uri, sha = uri_sha(source)
    done = subprocess.run([sys.executable, "-m", "model_server.fetch"], capture_output=True, text=True, timeout=120,
                          check=False, env={"ARTIFACT_URI": uri, "ARTIFACT_SHA256": sha,
                                            "ARTIFACT_DIR": str(tmp_path / "artifact"),
                                            "ARTIFACT_TRUSTED_KEYS_DIR": str(keys), "PATH": ""})
    assert done.returncode == 1 and "SignerUntrusted" in done.stderr


def test_the_deployment_mounts_the_trusted_keys_for_the_fetch_only() -> None:
    spec = api.MLModelSpec.model_validate({
        "version": "v1", "artifact": {"uri": "file:///a/model.onnx", "sha256": "0" * 64, "format": "onnx",
                                      "signature": {"configMapName": "trusted-keys"}},
        "featureContract": {"name": "c", "features": ["x"], "nFeatures": 1}})
    artifact = api.ArtifactVersion(version="v1", sha256="0" * 64, uri="file:///a/model.onnx", format="onnx")
    pod = deployment_manifest(ModelObject("ns", "m", "uid"), spec, "stable", artifact, 1, "fp")["spec"]["template"]
    [fetch_container] = pod["spec"]["initContainers"]
    assert {"name": "ARTIFACT_TRUSTED_KEYS_DIR", "value": TRUSTED_KEYS_MOUNT} in fetch_container["env"]
    assert {"name": "trusted-keys", "mountPath": TRUSTED_KEYS_MOUNT, "readOnly": True} in fetch_container[
        "volumeMounts"]
    assert {"name": "trusted-keys", "configMap": {"name": "trusted-keys"}} in pod["spec"]["volumes"]
    assert all(m["name"] != "trusted-keys" for m in pod["spec"]["containers"][0]["volumeMounts"])
