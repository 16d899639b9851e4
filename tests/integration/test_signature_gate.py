"""A required artifact signature as a gate, on the real control plane with the production Controller.

The MLModel names a ConfigMap of trusted public keys (`spec.artifact.signature.configMapName`). A signed v1
is verified and deployed with its signer in status; then versions whose directory has one byte changed, a
file added or removed, a signature by an untrusted key, or no signature are each refused before approvals
count — `ArtifactVerified=False` with the reason — while v1 keeps serving. A rollback target whose directory
no longer verifies is refused too. A key only the namespace's ConfigMap lists (not the cluster's TrustPolicy) is not
trusted, and approvals given under a signature requirement stop counting when `spec.artifact.signature` is dropped
(issue 27).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from localenv.modelwarden import trust_artifact_keys
from model_server.demo_artifact import build_demo_artifact, train
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from modelwarden.artifacts import SIGNATURE_FILENAME, sha256_file
from modelwarden.artifacts.signing import key_fingerprint, sign_directory
from tests.integration.modelwarden_helpers import Models, approval, cli, mlmodel
from tests.integration.test_rollback_triggers import InProcessOperator
from tests.unit.test_artifacts_signing import write_key


def condition(status: api.MLModelStatus, type: str) -> api.Condition:
    found = next((c for c in status.conditions if c.type == type), None)
    assert found is not None, status.conditions
    return found


def flip_model(d: Path) -> None:
    path = d / "model.skops"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def add_file(d: Path) -> None:
    (d / "extra.bin").write_bytes(b"not signed")


def remove_file(d: Path) -> None:
    (d / "model_meta.json").unlink()


CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("one byte of the model changed", flip_model, "ContentChanged", "model.skops changed"),
    ("a file added", add_file, "ContentChanged", "extra.bin added"),
    ("a file removed", remove_file, "ContentChanged", "model_meta.json removed"),
    ("signed by an untrusted key", lambda d: None, "SignerUntrusted", "not among the trusted keys"),
    # issue 27: the namespace's ConfigMap lists this key, the cluster's TrustPolicy does not: it counts for nothing
    ("signed by a key only the namespace trusts", lambda d: None, "SignerUntrusted", "not among the trusted keys"),
    ("no signature", lambda d: (d / SIGNATURE_FILENAME).unlink(), "SignatureMissing", "model.sig is missing"),
]


@contextlib.contextmanager
def served_over_http(root: Path) -> Iterator[str]:
    """``root`` on a loopback HTTP server, as an artifact store (or the local environment) serves it to pods."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_signature_gate_refuses_bad_artifacts_and_keeps_the_previous_version(
        scheme: str, modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    """Over HTTP the operator fetches the directory the signature covers (an operator in a pod cannot read
    file://)."""
    with served_over_http(tmp_path) as base_url:
        _signature_gate_story(scheme, base_url, modelwarden_installed, api_clients, namespace, tmp_path)


def _signature_gate_story(scheme: str, base_url: str, modelwarden_installed: Cluster,
                          api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path) -> None:
    release, release_pub = write_key(tmp_path, "release")
    other, _ = write_key(tmp_path, "other")
    tenant, tenant_pub = write_key(tmp_path, "tenant")
    # The cluster administrator trusts the release key cluster-wide (issue 27); the namespace lists it and, to try
    # widening the cluster's trust, a key of its own.
    trust_artifact_keys(modelwarden_installed, {"release": release_pub.decode()}, "signature-gate-test")
    client.CoreV1Api(api_clients["admin"]).create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="trusted-keys"),
        data={"release.pub": release_pub.decode(), "tenant.pub": tenant_pub.decode()}))
    trained = train("logistic", 3, 200, seed=2)
    source = build_demo_artifact(tmp_path / "source", fmt="skops", trained=trained).directory

    def version_dir(version: str, key: Path, damage: Callable[[Path], None] = lambda d: None) -> tuple[str, str]:
        d = tmp_path / version
        shutil.copytree(source, d)
        sign_directory(d, key)
        damage(d)
        uri = (d / "model.skops").as_uri() if scheme == "file" else f"{base_url}/{version}/model.skops"
        return uri, sha256_file(d / "model.skops")

    op = InProcessOperator(modelwarden_installed, namespace)
    admin = Models(api_clients["admin"], namespace)

    def approve(version: str, sha: str, signer: str | None = key_fingerprint(release_pub)) -> None:
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("m", version, sha, role, user, signer=signer))

    uri, sha_v1 = version_dir("v1", release)
    approve("v1", sha_v1)
    body = mlmodel("m", "v1", uri, sha_v1, steps=[{"setWeight": 100, "pauseSeconds": 0}])
    body["spec"]["artifact"]["signature"] = {"configMapName": "trusted-keys"}
    # No warm standby: the rollback below takes the artifact store's path, where the altered directory is refused
    # (a standby serves the bytes its pods verified before the alteration: test_rollback_standby.py).
    body["spec"]["rollback"] = {"standby": {"replicas": 0}}
    admin.create(body)
    status = op.until("m", lambda s: s.phase == Phase.STABLE)
    verified = condition(status, "ArtifactVerified")
    assert (verified.status, verified.reason) == ("True", "SignatureVerified")
    assert status.verified_signer == key_fingerprint(release_pub) and key_fingerprint(release_pub) in verified.message
    assert status.history[-1].signer == key_fingerprint(release_pub)
    shown = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "status", "m", "-n", namespace],
                           capture_output=True, text=True, check=False, timeout=60,
                           env={**os.environ, "KUBECONFIG": str(modelwarden_installed.admin_kubeconfig)})
    assert f"signer  {key_fingerprint(release_pub)}" in shown.stdout, shown.stdout + shown.stderr

    # Over HTTP a file the manifest does not list is never fetched, by the operator or by the server's fetch:
    # it cannot be served, so only a local directory can show it.
    cases = CASES if scheme == "file" else [c for c in CASES if c[0] != "a file added"]
    for i, (case, damage, reason, says) in enumerate(cases):
        version = f"v2-{i}"
        key = {"signed by an untrusted key": other, "signed by a key only the namespace trusts": tenant}.get(case,
                                                                                                         release)
        uri, sha = version_dir(version, key, damage)
        approve(version, sha)  # approvals exist, yet they must not count
        admin.patch_spec("m", {"version": version, "artifact": {"uri": uri, "sha256": sha}})
        status = op.passes("m", 3)
        verified = condition(status, "ArtifactVerified")
        assert (verified.status, verified.reason) == ("False", reason), (case, verified)
        assert says in verified.message, (case, verified.message)
        assert status.phase == Phase.FAILED, case
        stalled = condition(status, "Stalled")  # what Flux and the Argo CD health check read
        assert (stalled.status, stalled.reason) == ("True", reason), (case, stalled)
        # the approvals of the refused version were never counted: the quorum in status is still v1's
        assert f"approved for {version}" not in condition(status, "Approved").message, case
        assert not [e for e in admin.events("m") if e.reason == "QuorumMet" and version in e.message], case
        assert status.stable is not None and status.stable.sha256 == sha_v1, case
        deployment = admin.deployment("m-stable")
        assert deployment is not None
        assert deployment.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha_v1, case
        assert admin.deployment("m-canary") is None, case
        events = [e for e in admin.events("m") if e.reason == reason]
        assert events, f"{case}: no {reason} Event"

    # v2 properly signed: deployed. Then v1's directory is altered: a rollback to it is refused.
    uri, sha_v2 = version_dir("v2", release)
    approve("v2", sha_v2)
    admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri, "sha256": sha_v2}})
    status = op.until("m", lambda s: s.phase == Phase.STABLE and s.stable is not None and s.stable.version == "v2")
    if scheme == "file":
        (tmp_path / "v1" / "notes.txt").write_text("added after approval")
        altered = "notes.txt added"
    else:
        meta = tmp_path / "v1" / "model_meta.json"
        meta.write_text(meta.read_text().replace("{", '{"edited": true, ', 1))
        altered = "model_meta.json changed"
    done = cli(modelwarden_installed, "oncall", "rollback", "m", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = op.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.stable is not None and status.stable.sha256 == sha_v2, "v2 keeps serving"
    assert status.last_rollback is not None
    rejected = [t for t in status.last_rollback.timeline if t.event == "TargetRejected"]
    assert rejected and "signature ContentChanged" in rejected[0].message and altered in rejected[0].message
    deployment = admin.deployment("m-stable")
    assert deployment is not None
    assert deployment.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha_v2

    # Issue 27: approvals bind the signature requirement. v3, signed and approved with its signer, then set in spec
    # with the requirement dropped: the approvals do not count, nothing moves until people approve again.
    uri, sha_v3 = version_dir("v3", release)
    approve("v3", sha_v3)
    admin.patch_spec("m", {"version": "v3", "artifact": {"uri": uri, "sha256": sha_v3, "signature": None}})
    status = op.passes("m", 3)
    approved = condition(status, "Approved")
    assert approved.status == "False", approved
    assert "another signature requirement (now: no signature)" in approved.message, approved.message
    assert status.stable is not None and status.stable.sha256 == sha_v2 and status.canary is None


def test_the_crd_requires_a_config_map_name(modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
                                            namespace: str, tmp_path: Path) -> None:
    body = mlmodel("bad", "v1", "file:///x/model.skops", "0" * 64)
    body["spec"]["artifact"]["signature"] = {}
    with pytest.raises(client.exceptions.ApiException) as e:
        Models(api_clients["admin"], namespace).create(body)
    assert e.value.status == 422 and "spec.artifact.signature.configMapName" in (e.value.body or "")
