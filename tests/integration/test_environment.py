"""The local environment is the real thing: each test here could only pass against a real control plane,
a real Prometheus or a real PostgreSQL."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localenv import cluster as cluster_env
from localenv import postgres as postgres_env
from localenv import prometheus as prometheus_env
from tests.integration.modelwarden_helpers import wait_for


def test_control_plane_reports_the_pinned_release(cluster: cluster_env.Cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == cluster_env.K8S_VERSION
    assert out["clientVersion"]["gitVersion"] == cluster_env.K8S_VERSION


def test_deployment_becomes_available_on_kwok_nodes(admin_api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(admin_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="example.invalid/web:1")]),
            ),
        ),
    ))

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        return (status.available_replicas or 0) == 2

    wait_for(available, 90, "2 available replicas")
    pods = client.CoreV1Api(admin_api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    assert {p.status.phase for p in pods} == {"Running"}
    assert all(p.spec.node_name.startswith("kwok-node-") for p in pods)


def test_rbac_forbids_developer_but_not_admin(api_clients: dict[str, client.ApiClient]) -> None:
    role = client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name=f"probe-{time.monotonic_ns()}"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])],
    )
    with pytest.raises(ApiException) as denied:
        client.RbacAuthorizationV1Api(api_clients["developer"]).create_cluster_role(role)
    assert denied.value.status == 403
    assert 'User "developer" cannot create resource "clusterroles"' in json.loads(denied.value.body)["message"]

    admin = client.RbacAuthorizationV1Api(api_clients["admin"])
    admin.create_cluster_role(role)
    admin.delete_cluster_role(role.metadata.name)


def test_approver_identities_carry_their_groups(api_clients: dict[str, client.ApiClient]) -> None:
    review = client.AuthenticationV1Api(api_clients["finance-approver"]).create_self_subject_review(
        client.V1SelfSubjectReview())
    assert review.status.user_info.username == "finance-approver"
    assert "modelwarden:finance-approvers" in review.status.user_info.groups


@pytest.fixture
def widget_crd(admin_api: client.ApiClient) -> Iterator[str]:
    ext = client.ApiextensionsV1Api(admin_api)
    group = "envtest.modelwarden.io"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object", "required": ["replicas"],
                        "properties": {"replicas": {"type": "integer", "minimum": 1, "maximum": 10}},
                    }},
                }},
            }],
        },
    }
    ext.create_custom_resource_definition(body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"widgets.{group}")
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_for(established, 30, "CRD Established")
    yield group
    ext.delete_custom_resource_definition(f"widgets.{group}")


def test_crd_schema_rejects_bad_object(admin_api: client.ApiClient, namespace: str, widget_crd: str) -> None:
    custom = client.CustomObjectsApi(admin_api)

    def create(name: str, replicas: object) -> object:
        return custom.create_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", {
            "apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"replicas": replicas},
        })

    # The API server may need a moment to serve a freshly established CRD.
    wait_for(lambda: _creates(lambda: create("good", 3)), 30, "a valid Widget to be accepted")
    with pytest.raises(ApiException) as rejected:
        create("bad", 99)
    assert rejected.value.status == 422
    assert "spec.replicas" in rejected.value.body


def _creates(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


class _Exporter(BaseHTTPRequestHandler):
    body = b"# TYPE envtest_requests_total counter\nenvtest_requests_total{code=\"200\"} 42\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_prometheus_scrapes_an_exporter_and_answers_promql(
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{server.server_address[1]}"])
        query = 'sum(envtest_requests_total{job="test"}) * 2'
        wait_for(lambda: bool(prom.query(query)), 30, "the first scrape")
        assert float(prom.query(query)[0]["value"][1]) == 84.0
    finally:
        server.shutdown()


def test_seven_days_of_backfilled_history_are_queryable(
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    end = math.floor(time.time() / 60) * 60 - 3 * 3600  # history ends hours before now
    start = end - 7 * 86400
    step = 300
    points = [(float(t), 0.5) for t in range(start, end + 1, step)]
    dip_at = start + 3 * 86400
    points = [(t, 0.07 if t == dip_at else v) for t, v in points]
    prom = prometheus_factory(backfilled=[
        prometheus_env.Series("envtest_budget_remaining", {"model": "m1"}, points),
    ])
    at = float(end)
    low = prom.query('min_over_time(envtest_budget_remaining{model="m1"}[7d])', at=at)
    assert float(low[0]["value"][1]) == pytest.approx(0.07)
    count = prom.query('count_over_time(envtest_budget_remaining{model="m1"}[7d])', at=at)
    # Every backfilled sample is there (Prometheus 2.x range selectors include both ends).
    assert int(count[0]["value"][1]) == len(points)


def test_postgres_write_survives_a_server_restart(postgres: postgres_env.Postgres) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS envtest (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO envtest VALUES (1, 'acknowledged') ON CONFLICT (id) DO NOTHING")
    postgres.restart()
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute("SELECT note FROM envtest WHERE id = 1").fetchone()
    assert row == ("acknowledged",)
