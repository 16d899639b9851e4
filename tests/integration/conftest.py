"""Session fixtures for the real local environment. If a component cannot start, the run fails and
says why (``EnvironmentStartError``); nothing here ever skips."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from localenv import cluster as cluster_env
from localenv import flux as flux_env
from localenv import modelwarden as modelwarden_env
from localenv import node as real_node
from localenv import postgres as postgres_env
from localenv import prometheus as prometheus_env
from tests.integration.modelwarden_helpers import LEASE_NAME, LEASE_NAMESPACE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need Flux run last: `make test` builds it in the background meanwhile (hack/build-flux.sh), and
    only the `flux` fixture waits for that build."""
    items.sort(key=lambda item: "flux" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def cluster() -> Iterator[cluster_env.Cluster]:
    """The control plane: reused if `make cluster-up` already started it, else started (and stopped) here."""
    with cluster_env.running() as running:
        yield running


@pytest.fixture(scope="session")
def api_clients(cluster: cluster_env.Cluster) -> dict[str, client.ApiClient]:
    return {user: config.new_client_from_config(config_file=str(path)) for user, path in cluster.kubeconfigs.items()}


@pytest.fixture
def admin_api(api_clients: dict[str, client.ApiClient]) -> client.ApiClient:
    return api_clients["admin"]


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards. Its pods are pinned to the simulated KWOK nodes (Ready without
    running): the tests using it watch the operator's decisions, not servers."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(cluster_env.simulated_nodes_namespace(name))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def real_namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace whose pods run for real on the real node, enforcing the `restricted` Pod Security level."""
    if not cluster_env.with_real_node():
        pytest.fail("this test needs the real node, and MODELWARDEN_NODE=none started the environment without it")
    name = f"r-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"})))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., prometheus_env.Prometheus]]:
    """Start throw-away Prometheus servers; each is stopped at the end of the test."""
    started: list[prometheus_env.Prometheus] = []

    def start(**kwargs: Any) -> prometheus_env.Prometheus:
        prom = prometheus_env.start(tmp_path / f"prometheus-{len(started)}", **kwargs)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        if prom.running():
            prom.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[postgres_env.Postgres]:
    pg = postgres_env.start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="session")
def pod_reachable_postgres(cluster: cluster_env.Cluster) -> Iterator[postgres_env.Postgres]:
    """A PostgreSQL the real node's pods reach: also on the bridge's address, password logins from the pod range."""
    pg = postgres_env.start(pods=(real_node.HOST_IP, real_node.POD_CIDR))
    yield pg
    pg.destroy()


@pytest.fixture
def pods_feedback_store(real_namespace: str, admin_api: client.ApiClient,
                        pod_reachable_postgres: postgres_env.Postgres) -> dict[str, Any]:
    """``serving.feedbackStore`` for MLModels in ``real_namespace``: a database and role of their own, the DSN in
    the Secret ``feedback-store`` (as a user sets it up)."""
    dsn = pod_reachable_postgres.add_user(real_namespace.replace("-", "_"), secrets.token_hex(16))
    client.CoreV1Api(admin_api).create_namespaced_secret(real_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="feedback-store"), string_data={"dsn": dsn}))
    return {"dsnSecretRef": {"name": "feedback-store", "key": "dsn"}}


@pytest.fixture(scope="session")
def modelwarden_installed(cluster: cluster_env.Cluster) -> cluster_env.Cluster:
    """CRDs, RBAC and the approval admission policy applied to the cluster."""
    modelwarden_env.install(cluster)
    return cluster


@pytest.fixture
def operator(modelwarden_installed: cluster_env.Cluster, tmp_path: Path) -> Iterator[modelwarden_env.OperatorProcess]:
    """A running operator (as the least-privilege `modelwarden-operator` user), stopped after the test."""
    proc = modelwarden_env.OperatorProcess(modelwarden_installed, tmp_path / "operator.log",
                                           env={"MODELWARDEN_RESYNC_SECONDS": "10"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def leases(modelwarden_installed: cluster_env.Cluster, api_clients: dict[str, client.ApiClient],
           ) -> Iterator[client.CoordinationV1Api]:
    """The admin's view of the operator's leader Lease; deleted before and after (a crashed earlier run may have
    left it held)."""
    api = client.CoordinationV1Api(api_clients["admin"])

    def delete() -> None:
        try:
            api.delete_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE)
        except client.exceptions.ApiException as e:
            if e.status != 404:
                raise

    delete()
    yield api
    delete()


@pytest.fixture(scope="session")
def flux(modelwarden_installed: cluster_env.Cluster,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[flux_env.Controllers]:
    """Flux's source-controller and kustomize-controller running against the cluster (waits for their build)."""
    flux_env.build()
    flux_env.install(modelwarden_installed)
    controllers = flux_env.start(modelwarden_installed, tmp_path_factory.mktemp("flux"))
    yield controllers
    controllers.stop()


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[flux_env.GitServer]:
    """Git repositories served on loopback (smart HTTP through `git http-backend`)."""
    server = flux_env.GitServer(tmp_path_factory.mktemp("git"))
    yield server
    server.stop()
