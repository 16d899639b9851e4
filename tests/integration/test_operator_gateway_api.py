"""gatewayAPI traffic routing on the real control plane: the operator weights the HTTPRoute's backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv import modelwarden as modelwarden_env
from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, artifact, cli, mlmodel


@pytest.fixture(scope="module")
def gateway_api(modelwarden_installed: Cluster) -> Cluster:
    modelwarden_env.install_gateway_api(modelwarden_installed)
    return modelwarden_installed


def route_weights(custom: client.CustomObjectsApi, namespace: str) -> dict[str, int]:
    route: Any = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes",
                                                     "scoring")
    return {ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_canary_weight_is_carried_by_the_httproute(gateway_api: Cluster, operator: OperatorProcess,
                                                   api_clients: dict[str, client.ApiClient], namespace: str,
                                                   tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    admin.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "scoring"},
        "spec": {"parentRefs": [{"name": "public"}],
                 "rules": [{"backendRefs": [{"name": "scorer-stable", "port": 8080, "weight": 100},
                                            {"name": "scorer-canary", "port": 8080, "weight": 0}]}]},
    })
    routing = {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "scoring"}}
    steps = [{"setWeight": 30}, {"setWeight": 100, "pauseSeconds": 1}]
    uris = {v: artifact(tmp_path, v) for v in ("v1", "v2")}
    for version, (_, sha) in uris.items():
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], namespace).approve(approval("scorer", version, sha, role, user))
    admin.create(mlmodel("scorer", "v1", *uris["v1"], steps=steps, routing=routing))
    admin.wait_phase("scorer", Phase.STABLE, timeout=90, check=operator.check_alive)
    assert route_weights(admin.custom, namespace) == {"scorer-stable": 100, "scorer-canary": 0}

    uri2, sha2 = uris["v2"]
    admin.patch_spec("scorer", {"version": "v2", "artifact": {"uri": uri2, "sha256": sha2}})
    status = admin.wait_phase("scorer", Phase.PAUSED, timeout=90, check=operator.check_alive)
    assert status.canary_weight == 30
    assert route_weights(admin.custom, namespace) == {"scorer-stable": 70, "scorer-canary": 30}
    services = {s.metadata.name for s in admin.core.list_namespaced_service(namespace).items}
    assert {"scorer", "scorer-stable", "scorer-canary"} <= services

    done = cli(gateway_api, "finance-approver", "promote", "scorer", "-n", namespace)
    assert done.returncode == 0, done.stderr
    status = admin.wait_phase("scorer", Phase.STABLE, timeout=90, check=operator.check_alive)
    assert status.stable is not None and status.stable.version == "v2"
    assert route_weights(admin.custom, namespace) == {"scorer-stable": 100, "scorer-canary": 0}
