"""Another tenant cannot stall a rollback (issue 24, item 5), on the real API server with the operator process.

Ten hostile artifacts in another namespace (trickling bytes, huge declared sizes, a manifest declaring a huge
file, an endless body, a big signed model within and over its limits) are being verified while an on-call
engineer rolls a fully promoted model back here: the rollback completes (100% on the prior SHA256), and each
hostile model ends with its own ArtifactVerified reason. Times are measured in bench/hostile_tenants.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localenv import cluster as cluster_env
from localenv.hostile_store import HostileStore, signed_directory, ten_hostile_models, write_key
from localenv.modelwarden import OperatorProcess, trust_artifact_keys
from modelwarden.api import v1alpha1 as api
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel, wait_for

MiB = 1 << 20


@pytest.fixture
def hostile_namespace(admin_api: client.ApiClient) -> Iterator[str]:
    name = f"h-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(cluster_env.simulated_nodes_namespace(name))
    yield name
    core.delete_namespace(name)


def artifact_reason(models: Models, name: str) -> str | None:
    status = models.status(name)
    found = next((c for c in status.conditions if c.type == api.ConditionType.ARTIFACT_VERIFIED), None)
    return found.reason if found is not None else None


def approve(api_clients: dict[str, client.ApiClient], namespace: str, model: str, version: str, sha: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(model, version, sha, role, user))


def test_a_rollback_completes_while_another_namespace_serves_ten_hostile_artifacts(
        operator: OperatorProcess, api_clients: dict[str, client.ApiClient], namespace: str,
        hostile_namespace: str, tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    steps = [{"setWeight": 100, "pauseSeconds": 0}]
    uri1, sha1 = artifact(tmp_path, "v1")
    uri2, sha2 = artifact(tmp_path, "v2")
    approve(api_clients, namespace, "m", "v1", sha1)
    approve(api_clients, namespace, "m", "v2", sha2)
    # No warm standby: the rollback must take the artifact store's path, through the verification pool the hostile
    # tenants are filling (a standby would serve v1 without verifying anything).
    admin.create(mlmodel("m", "v1", uri1, sha1, steps=steps, rollback={"standby": {"replicas": 0}}))
    admin.wait_phase("m", Phase.STABLE, timeout=90, check=operator.check_alive)
    admin.patch_spec("m", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    wait_for(lambda: (s := admin.status("m")).phase == Phase.STABLE and s.stable is not None
             and s.stable.version == "v2", timeout=90, what="v2 fully promoted")

    key, public = write_key(tmp_path)
    big_sha = signed_directory(tmp_path / "store" / "big", key, model_bytes=64 * MiB)
    # the cluster's TrustPolicy trusts the key (issue 27); the namespace's ConfigMap narrows to it
    trust_artifact_keys(operator.cluster, {"release": public.decode()}, "hostile-tenants-test")
    client.CoreV1Api(api_clients["admin"]).create_namespaced_config_map(hostile_namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="trusted-keys"), data={"release.pub": public.decode()}))
    tenant = Models(api_clients["admin"], hostile_namespace)
    with HostileStore(tmp_path / "store") as store:
        hostile = ten_hostile_models(store.url, big_sha, "trusted-keys")
        for model in hostile:
            body = mlmodel(model.name, "v1", "file:///unused", "0" * 64, steps=steps)
            body["spec"]["artifact"] = {"format": "skops", **model.artifact}
            tenant.create(body)
        # The hostile verifications have begun: the operator answers for them before this model's rollback.
        wait_for(lambda: any(artifact_reason(tenant, m.name) == api.Reason.VERIFICATION_PENDING for m in hostile),
                 timeout=60, what="a hostile verification in flight")

        filed = cli(operator.cluster, "oncall", "rollback", "m", "-n", namespace, "-o", "json")
        assert filed.returncode == 0, filed.stderr
        wait_for(lambda: (s := admin.status("m")).last_rollback is not None
                 and s.last_rollback.traffic_restored_at is not None, timeout=120, what="the rollback's traffic back")
        operator.check_alive()
        status = admin.status("m")
        assert status.stable is not None and (status.stable.version, status.stable.sha256) == ("v1", sha1)
        assert status.last_rollback is not None
        assert "TargetVerified" in [t.event for t in status.last_rollback.timeline]
        stable = admin.deployment("m-stable")
        assert stable is not None and stable.spec.template.metadata.annotations["modelwarden.io/sha256"] == sha1
        assert admin.deployment("m-canary") is None

        expected = {m.name: m.reason for m in hostile}
        wait_for(lambda: {m.name: artifact_reason(tenant, m.name) for m in hostile} == expected, timeout=240,
                 what=f"every hostile model's own condition {expected}")
        operator.check_alive()
        for model in hostile:
            status = tenant.status(model.name)
            assert status.phase != Phase.FAILED, f"{model.name}: nothing proven about its bytes is not a mismatch"
            assert status.stable is None, f"{model.name}: nothing unverified is served"
        assert "/manifest-huge/weights.bin" not in store.requested
    timed_out = next(line for line in operator.metrics().splitlines()
                     if line.startswith('modelwarden_artifact_verifications_total{outcome="VerificationTimedOut"}'))
    assert float(timed_out.split()[-1]) >= 4
