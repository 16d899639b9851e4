"""The evidence bundle of a real story, checked offline.

v1 and v2 are trained and signed by `modelwarden train --signing-key`, each approved by finance and
regulatory (as those users, through the admission policy), rolled out by the production Controller on the
real control plane, and v2 is rolled back on critical feedback labelled on a real server. `modelwarden
evidence` then exports each version from the cluster; `modelwarden evidence verify` checks the bundles with
nothing but the file and the public key, and names any member that was altered, removed or added. The
bundle holds the model's decision ledger as the operator wrote it, verified against its published key at export
and re-checked offline (hashes, links, the head in the MLModel's status).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localenv import cluster as cluster_env
from localenv import prometheus as prometheus_env
from localenv.cluster import Cluster
from localenv.modelwarden import server_auth_env
from model_server.testing import http_client, serve_subprocess
from modelwarden.adapters.server_admin import HTTPServerAdmin
from modelwarden.api.v1alpha1 import Phase
from modelwarden.artifacts import sha256_bytes, sha256_file
from modelwarden.artifacts.signing import key_fingerprint
from tests.integration.modelwarden_helpers import Models, approval, mlmodel
from tests.integration.test_rollback_triggers import InProcessOperator, budget_series, feedback_series
from tests.unit.test_artifacts_signing import write_key
from tests.unit.test_training_card import STATEMENT
from tests.unit.test_training_pipeline import config_doc


def cli(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelwarden.cli.main", *argv], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "KUBECONFIG": str(cluster.admin_kubeconfig)})


def trained(tmp_path: Path, version: str, key: Path) -> Path:
    config = tmp_path / f"{version}.yaml"
    config.write_text(yaml.safe_dump(config_doc(model="m", version=version, card=STATEMENT, formats=["onnx"],
                                                seed={"v1": 3, "v2": 4}[version])))
    done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "train", str(config), "--out",
                           str(tmp_path / version), "--signing-key", str(key)], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return tmp_path / version / "onnx"


def rewrite(bundle: Path, out: Path, change: Callable[[str, bytes], bytes | None],
            extra: dict[str, bytes] | None = None) -> Path:
    """A copy of ``bundle`` with each member passed through ``change`` (``None`` drops it)."""
    with tarfile.open(bundle, "r:gz") as src, gzip.open(out, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as dst:
        members = src.getmembers()
        top = members[0].name.split("/")[0]
        for m in members:
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            new = change(m.name.split("/", 1)[1], data)
            if new is not None:
                m.size = len(new)
                dst.addfile(m, io.BytesIO(new))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def flip(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


@pytest.fixture(scope="module")
def story(modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("story")
    namespace = f"evidence-{os.getpid()}"
    client.CoreV1Api(api_clients["admin"]).create_namespace(cluster_env.simulated_nodes_namespace(namespace))
    key, public = write_key(tmp_path, "release")
    (tmp_path / "release.pub").write_bytes(public)
    artifacts = {v: trained(tmp_path, v, key) for v in ("v1", "v2")}
    shas = {v: sha256_file(d / "model.onnx") for v, d in artifacts.items()}
    features = json.loads((artifacts["v2"] / "model_meta.json").read_text())["features"]

    env = {"MODEL_NAME": "m", "MODEL_VERSION": "v2", "ARTIFACT_DIR": str(artifacts["v2"]),
           "ARTIFACT_SHA256": shas["v2"], "MODEL_FORMAT": "onnx", **server_auth_env(modelwarden_installed),
           "WARMUP_ROUNDS": "1",
           "FEEDBACK_DSN": str(tmp_path / "fb.sqlite3")}
    with serve_subprocess(env, log_path=tmp_path / "server.log") as (url, _), http_client(url) as http:
        ids = []
        for i, stakeholder in enumerate(("finance", "regulator", "finance")):
            response = http.post("/predict", json={"features": dict.fromkeys(features, float(i))})
            assert response.status_code == 200, response.text
            pid = response.json()["predictionId"]
            assert http.post("/feedback", json={"predictionId": pid, "label": "wrong", "severity": "critical",
                                                "stakeholder": stakeholder}).status_code == 201
            ids.append(pid)

        op = InProcessOperator(modelwarden_installed, namespace)
        admin = Models(api_clients["admin"], namespace)
        for version in ("v1", "v2"):
            uri = (artifacts[version] / "model.onnx").as_uri()
            for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
                Models(api_clients[user], namespace).approve(approval("m", version, shas[version], role, user))
            if version == "v1":
                body = mlmodel("m", "v1", uri, shas["v1"], steps=[{"setWeight": 100, "pauseSeconds": 0}])
                body["spec"]["artifact"]["format"] = "onnx"
                admin.create(body)
            else:
                admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri, "sha256": shas["v2"],
                                                                     "format": "onnx"},
                                       "rollout": {"steps": [{"setWeight": 50, "pauseSeconds": 0},
                                                             {"setWeight": 100, "pauseSeconds": 0}]}})
            op.until("m", lambda s, v=version: s.phase == Phase.STABLE and s.stable is not None
                     and s.stable.version == v)
        op.controller.applier.server_admin = HTTPServerAdmin(op.identity.token, url_template=url)
        prom = prometheus_env.start(tmp_path / "prometheus", backfilled=[
            budget_series("v2", 0), feedback_series("finance", [50, 20]), feedback_series("regulator", [5])])
        try:
            op.evaluate(prom.url)
            status = op.until("m", lambda s: s.phase == Phase.HALTED)
        finally:
            prom.stop()
    assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"

    bundles = {}
    for version in ("v1", "v2"):
        bundles[version] = tmp_path / f"m-{version}.tar.gz"
        done = cli(modelwarden_installed, "evidence", "m", "-n", namespace, "--version", version, "-o",
                   str(bundles[version]), "--public-key", str(tmp_path / "release.pub"), "--format", "json")
        assert done.returncode == 0, done.stderr
    yield {"tmp": tmp_path, "bundles": bundles, "shas": shas, "ids": ids, "public": public,
           "rollback": status.last_rollback, "cluster": modelwarden_installed}
    client.CoreV1Api(api_clients["admin"]).delete_namespace(namespace)


def verify(story: dict[str, Any], bundle: Path, *keys: Path) -> tuple[int, dict[str, Any]]:
    argv = ["evidence", "verify", str(bundle), "--format", "json"]
    for key in keys:
        argv += ["--public-key", str(key)]
    done = cli(story["cluster"], *argv)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_the_bundles_of_the_story_verify_offline(story: dict[str, Any]) -> None:
    code, result = verify(story, story["bundles"]["v2"], story["tmp"] / "release.pub")
    assert code == 0, result["problems"]
    assert (result["version"], result["sha256"]) == ("v2", story["shas"]["v2"])
    assert result["signature"]["ok"] is True
    assert result["signature"]["signerFingerprint"] == key_fingerprint(story["public"])
    assert {(a["role"], a["approver"], a["counts"]) for a in result["approvals"]} == {
        ("finance", "finance-approver", True), ("regulatory", "regulatory-approver", True)}
    assert result["ledger"]["ok"] is True and result["ledger"]["reachesHead"] is True
    assert result["ledger"]["records"] > 0 and result["ledger"]["verificationAtExport"]["ok"] is True
    code, result = verify(story, story["bundles"]["v1"], story["tmp"] / "release.pub")
    assert code == 0 and result["sha256"] == story["shas"]["v1"]
    # without a key everything but the signature is checked, and it says so
    code, result = verify(story, story["bundles"]["v2"])
    assert code == 0 and result["signature"]["checked"] is False


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_bundle_holds_the_change_record(story: dict[str, Any]) -> None:
    content = members(story["bundles"]["v2"])
    change = json.loads(content["change-record.json"])
    assert change["history"]["outcome"] == "RolledBack"
    assert change["signer"] == key_fingerprint(story["public"]) and change["signatureVerified"] is True
    incident = json.loads(content[f"incidents/{story['rollback'].id}.json"])
    assert incident["incident"]["trigger"] == "CriticalFeedback"
    assert {"TriggerFired", "TrafficRestored"} <= {e["event"] for e in incident["incident"]["timeline"]}
    assert [r["predictionId"] for r in incident["feedbackRecords"]] == story["ids"]
    analysis = json.loads(content["analysis.json"])
    assert [s["reason"] for s in analysis["steps"] if s["reason"] == "StepAdvanced"], analysis
    assert analysis["gap"] and any("canary analysis" in g for g in change["gaps"])
    for name in ("artifact/manifest.json", "artifact/model.onnx", "artifact/model.sig", "artifact/model-card.md",
                 "artifact/reproducibility-report.json", "cluster/approvals.json", "README.md"):
        assert name in content
    listed = {f["path"]: f["sha256"] for f in json.loads(content["BUNDLE-MANIFEST.json"])["files"]}
    assert listed == {n: sha256_bytes(d) for n, d in content.items() if n != "BUNDLE-MANIFEST.json"}
    # the decision ledger: every record of the model, verified at export, its head the MLModel's status.ledger
    ledger = json.loads(content["ledger/ledger.json"])
    records = [json.loads(line) for line in content["ledger/records.jsonl"].decode().splitlines()]
    model = json.loads(content["cluster/mlmodel.json"])
    assert ledger["present"] is True and ledger["absentReason"] is None and ledger["records"] == len(records) > 0
    assert ledger["modelUid"] == model["metadata"]["uid"] and ledger["head"] == model["status"]["ledger"]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert ledger["verificationAtExport"]["checked"] is True and ledger["verificationAtExport"]["ok"] is True
    assert ledger["publicKeys"] and all(r["keyId"] in ledger["publicKeys"] for r in records)
    assert ledger["versionSeqs"] == [r["seq"] for r in records if r["version"] == "v2"] != []
    assert any(r["decision"] == "RollbackStarted" and r["inputs"]["rollback"] == story["rollback"].id
               for r in records)
    assert change["ledger"]["present"] is True and change["ledger"]["verifiedAtExport"] is True
    assert not any("decision ledger" in g for g in change["gaps"])
    # v1's bundle has the same incident: it is the version traffic went back to
    assert f"incidents/{story['rollback'].id}.json" in members(story["bundles"]["v1"])


def test_altering_any_member_fails_verification_naming_it(story: dict[str, Any]) -> None:
    bundle, key = story["bundles"]["v2"], story["tmp"] / "release.pub"
    for i, name in enumerate(sorted(members(bundle))):
        altered = rewrite(bundle, story["tmp"] / f"altered-{i}.tar.gz",
                          lambda m, d, name=name: flip(d) if m == name else d)
        code, result = verify(story, altered, key)
        assert code == 1, name
        named = {p["member"] for p in result["problems"]} | {
            "BUNDLE-MANIFEST.json" for p in result["problems"] if "BUNDLE-MANIFEST.json" in p["problem"]}
        assert name in named, (name, result["problems"])


def test_a_removed_or_added_member_and_an_untrusted_key_fail(story: dict[str, Any]) -> None:
    bundle, tmp = story["bundles"]["v2"], story["tmp"]
    removed = rewrite(bundle, tmp / "removed.tar.gz", lambda m, d: None if m == "cluster/approvals.json" else d)
    code, result = verify(story, removed, tmp / "release.pub")
    assert code == 1 and {"member": "cluster/approvals.json",
                          "problem": "listed in BUNDLE-MANIFEST.json but missing"} in result["problems"]
    added = rewrite(bundle, tmp / "added.tar.gz", lambda m, d: d, extra={"notes.txt": b"trust me"})
    code, result = verify(story, added, tmp / "release.pub")
    assert code == 1 and {"member": "notes.txt",
                          "problem": "present but not listed in BUNDLE-MANIFEST.json"} in result["problems"]
    _, other = write_key(tmp, "other")
    (tmp / "other.pub").write_bytes(other)
    code, result = verify(story, bundle, tmp / "other.pub")
    assert code == 1
    [problem] = result["problems"]
    assert problem["member"] == "artifact/model.sig" and problem["problem"].startswith("SignerUntrusted")


def test_the_bundled_ledger_is_rechecked_offline(story: dict[str, Any]) -> None:
    """A record changed and the bundle manifest made to match: only the ledger's own chain can tell."""
    bundle, tmp = story["bundles"]["v2"], story["tmp"]
    lines = members(bundle)["ledger/records.jsonl"].decode().splitlines()
    record = json.loads(lines[1])
    record["outcome"] = "Rejected"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    forged = ("\n".join(lines) + "\n").encode()

    def change(member: str, data: bytes) -> bytes:
        if member == "ledger/records.jsonl":
            return forged
        if member == "BUNDLE-MANIFEST.json":
            listing = json.loads(data)
            for f in listing["files"]:
                if f["path"] == "ledger/records.jsonl":
                    f["sha256"], f["size"] = sha256_bytes(forged), len(forged)
            return json.dumps(listing).encode()
        return data

    code, result = verify(story, rewrite(bundle, tmp / "ledger-forged.tar.gz", change), tmp / "release.pub")
    assert code == 1 and result["ledger"]["ok"] is False
    [problem] = result["problems"]
    assert problem["member"] == "ledger/records.jsonl" and problem["problem"].startswith(
        f"record {record['seq']} altered"), problem
    # the records are `ledger export -o jsonl`: `ledger verify --records` re-checks their signatures offline
    content = members(bundle)
    (tmp / "records.jsonl").write_bytes(content["ledger/records.jsonl"])
    (tmp / "keys.json").write_text(json.dumps(json.loads(content["ledger/ledger.json"])["publicKeys"]))
    head = json.loads(content["ledger/ledger.json"])["head"]
    done = cli(story["cluster"], "ledger", "verify", "m", "--records", str(tmp / "records.jsonl"), "--public-keys",
               str(tmp / "keys.json"), "--head", f"{head['seq']}:{head['hash']}")
    assert done.returncode == 0, done.stdout + done.stderr
