"""Start-up that says what is missing (issue 24, item 8), on the real API server.

The operator process runs as the README says (``python -m modelwarden.handlers``) as the least-privilege user,
with the CRDs installed but the namespace for the ledger's public keys missing: it serves liveness at once,
reconciles models, says once what is missing (a log line, ``modelwarden_prerequisite_missing``) and publishes the
key when the namespace appears — one key, not a new one per retry.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, mlmodel, wait_for


def missing(operator: OperatorProcess, prerequisite: str) -> float | None:
    pattern = re.compile(r'^modelwarden_prerequisite_missing\{prerequisite="' + re.escape(prerequisite)
                         + r'"\} ([0-9.]+)$', re.MULTILINE)
    found = pattern.search(operator.metrics())
    return float(found.group(1)) if found else None


def test_without_its_key_namespace_the_operator_serves_reconciles_and_says_what_is_missing(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        tmp_path: Path) -> None:
    keys = f"{namespace}-keys"  # does not exist yet
    operator = OperatorProcess(modelwarden_installed, tmp_path / "operator.log",
                               env={"MODELWARDEN_LEDGER_KEY_NAMESPACE": keys, "MODELWARDEN_RESYNC_SECONDS": "10"})
    operator.start()  # waits for liveness: served although the key cannot be published
    core = client.CoreV1Api(api_clients["admin"])
    try:
        admin = Models(api_clients["admin"], namespace)
        uri, sha = artifact(tmp_path, "v1")
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("m", "v1", sha, role, user))
        admin.create(mlmodel("m", "v1", uri, sha, steps=[{"setWeight": 100, "pauseSeconds": 0}]))
        admin.wait_phase("m", Phase.STABLE, timeout=90, check=operator.check_alive)

        assert missing(operator, f"ledger-key-namespace/{keys}") == 1.0
        said = [line for line in operator.log().splitlines() if "prerequisite missing" in line]
        assert len(said) == 1, said
        assert f"namespace {keys} does not exist" in said[0] and "MODELWARDEN_LEDGER_KEY_NAMESPACE" in said[0]

        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=keys)))
        wait_for(lambda: missing(operator, f"ledger-key-namespace/{keys}") == 0.0, timeout=90,
                 what="the ledger key published once its namespace exists")
        published = core.read_namespaced_config_map("modelwarden-ledger-public-keys", keys)
        assert len(published.data) == 1, "one key for the process, not one per retry"
        assert "prerequisite restored" in operator.log()
    finally:
        operator.stop()
        with contextlib.suppress(ApiException):
            core.delete_namespace(keys)
