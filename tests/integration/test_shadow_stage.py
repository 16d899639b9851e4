"""The shadow stage end to end on real parts (issue 20): the real control plane (the Deployments on KWOK nodes),
the production Controller in this process as the least-privilege operator user, real `model_server` processes
standing in for the stable's and the candidate's pods (configured from the environment the operator wrote into
the stable's Deployment), and a real Prometheus scraping them.

While the stage runs, every answer the user path (the route's 100% backend: the stable) gives comes from the
stable; an agreeing candidate opens step 1, a disagreeing one is halted in shadow, too few compared requests
hold the stage without a verdict, and a full mirror queue drops counted copies without touching the stable's
answers. (On real pods once the real-node work has landed: here the processes are the pods.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from localenv import modelwarden as modelwarden_env
from localenv import prometheus as prometheus_env
from localenv.cluster import Cluster
from localenv.modelwarden import service_account_token
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import LOOPBACK, http_client, serve_subprocess
from modelwarden.adapters.manifests import SERVER_SERVICE_ACCOUNT
from modelwarden.adapters.prometheus import PrometheusMetrics
from modelwarden.api.v1alpha1 import MLModelStatus, Phase, Reason
from tests.integration.modelwarden_helpers import Models, approval, mlmodel
from tests.integration.test_rollback_triggers import InProcessOperator

DURATION = 30
MIN_COMPARED = 150


@pytest.fixture(scope="module")
def gateway_api(modelwarden_installed: Cluster) -> Cluster:
    modelwarden_env.install_gateway_api(modelwarden_installed)
    return modelwarden_installed


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoArtifact]:
    root = tmp_path_factory.mktemp("shadow-artifacts")
    estimator, sample = train("logistic", 8, 2000, seed=11)
    v1 = build_demo_artifact(root / "v1", trained=(estimator, sample), version="v1")
    # An agreeing retrain: coefficients within 2%. A disagreeing one: the same model with shifted scores.
    close, _ = train("logistic", 8, 2000, seed=11)
    close.coef_ = close.coef_ * 1.02
    shifted, _ = train("logistic", 8, 2000, seed=11)
    shifted.intercept_ = shifted.intercept_ + 2.0
    return {"v1": v1, "agreeing": build_demo_artifact(root / "agreeing", trained=(close, sample), version="v2"),
            "shifted": build_demo_artifact(root / "shifted", trained=(shifted, sample), version="v2")}


class Stage:
    """One model through its shadow stage: the operator, the servers, Prometheus and a user."""

    def __init__(self, op: InProcessOperator, admin: Models, namespace: str, tmp: Path,
                 prom: prometheus_env.Prometheus, targets: Path) -> None:
        self.op, self.admin, self.namespace, self.tmp = op, admin, namespace, tmp
        self.prom, self.targets = prom, targets
        self.stack = contextlib.ExitStack()
        self.urls: dict[str, str] = {}
        self.cluster: Cluster | None = None

    def passes(self, count: int = 2) -> MLModelStatus:
        self.op.now = dt.datetime.now(dt.UTC)
        return self.op.passes("m", count)

    def evaluate(self) -> MLModelStatus:
        time.sleep(2)  # a scrape after the last request (1 s interval)
        self.op.now = dt.datetime.now(dt.UTC)
        self.op.controller.evaluator.metrics = PrometheusMetrics(self.prom.url, step_seconds=1)
        asyncio.run(self.op.controller.evaluate_once())
        fleet = self.op.controller.fleet
        assert fleet is not None and fleet.queries == 9, "one query more than before, whatever the fleet"
        return self.op.passes("m", 2)

    def deployment_env(self, track: str) -> dict[str, str]:
        deployment = self.admin.apps.read_namespaced_deployment(f"m-{track}", self.namespace)
        return {e.name: e.value for e in deployment.spec.template.spec.containers[0].env if e.value is not None}

    def serve(self, name: str, art: DemoArtifact, version: str, track: str, **env: str) -> str:
        full = {**art.env("m", version), "MODEL_TRACK": track, "WARMUP_ROUNDS": "1", "DRIFT_INTERVAL_SECONDS": "1",
                "FEEDBACK_DSN": str(self.tmp / f"{name}.sqlite3"), **env}
        url, _ = self.stack.enter_context(serve_subprocess(full, log_path=self.tmp / f"{name}.log"))
        self.urls[name] = url
        self.targets.write_text(json.dumps([{"targets": [u.removeprefix("http://")],
                                             "labels": {"namespace": self.namespace, "instance": n}}
                                            for n, u in self.urls.items()]))
        return url

    def users(self, url: str, art: DemoArtifact, n: int) -> set[tuple[str, str]]:
        """``n`` user requests through the user path; every answer's (version, track)."""
        rng = np.random.default_rng(5)
        seen = set()
        with http_client(url) as c:
            for row in rng.normal(size=(n, len(art.features))):
                r = c.post("/predict", json={"features": dict(zip(art.features, row.tolist(), strict=True))})
                assert r.status_code == 200, r.text
                seen.add((r.json()["version"], r.json()["track"]))
        return seen

    def scraped(self, query: str, at_least: float) -> None:
        deadline = time.monotonic() + 60
        while True:
            rows = self.prom.query(query)
            if rows and float(rows[0]["value"][1]) >= at_least:
                return
            assert time.monotonic() < deadline, f"{query} never reached {at_least}: {rows}"
            time.sleep(0.5)


@pytest.fixture
def stage(gateway_api: Cluster, api_clients: dict[str, client.ApiClient], namespace: str, tmp_path: Path,
          artifacts: dict[str, DemoArtifact],
          prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> Iterator[Stage]:
    admin = Models(api_clients["admin"], namespace)
    admin.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "scoring"},
        "spec": {"parentRefs": [{"name": "public"}],
                 "rules": [{"backendRefs": [{"name": "m-stable", "port": 8080, "weight": 100},
                                            {"name": "m-canary", "port": 8080, "weight": 0}]}]}})
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    s = Stage(InProcessOperator(gateway_api, namespace), admin, namespace, tmp_path,
              prometheus_factory(file_sd=targets), targets)
    s.cluster = gateway_api
    with s.stack:
        yield s


def route_weights(stage: Stage) -> dict[str, int]:
    route: Any = stage.admin.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", stage.namespace,
                                                                 "httproutes", "scoring")
    return {ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]}


def into_shadow(stage: Stage, api_clients: dict[str, client.ApiClient], v1: DemoArtifact, v2: DemoArtifact,
                mirror_percent: int) -> tuple[str, str]:
    """v1 stable, v2 approved and in its shadow stage; the servers started as the operator configured the pods.
    Returns the user path's URL (the stable's) and the candidate's."""
    for version, art in (("v1", v1), ("v2", v2)):
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            Models(api_clients[user], stage.namespace).approve(approval("m", version, art.sha256, role, user))
    body = mlmodel("m", "v1", (v1.directory / v1.model_file).as_uri(), v1.sha256,
                   steps=[{"setWeight": 25, "pauseSeconds": 600}, {"setWeight": 100, "pauseSeconds": 1}],
                   routing={"type": "gatewayAPI", "gatewayAPI": {"httpRoute": "scoring"}})
    body["spec"]["rollout"]["shadow"] = {"mirrorPercent": mirror_percent, "durationSeconds": DURATION,
                                         "minComparedRequests": MIN_COMPARED}
    stage.admin.create(body)
    stage.op.until("m", lambda s: s.phase == Phase.STABLE)
    stage.admin.patch_spec("m", {"version": "v2", "artifact": {"uri": (v2.directory / v2.model_file).as_uri(),
                                                                "sha256": v2.sha256}})
    status = stage.op.until("m", lambda s: s.shadow is not None and s.shadow.verdict == "Running")
    assert status.canary is not None and status.canary.version == "v2" and status.canary_weight == 0
    assert route_weights(stage) == {"m-stable": 100, "m-canary": 0}
    env = stage.deployment_env("stable")
    cluster_ip = stage.admin.core.read_namespaced_service("m-canary", stage.namespace).spec.cluster_ip
    assert env["SHADOW_TARGET_URL"] == f"http://{cluster_ip}:8080", "the candidate's Service by its ClusterIP"
    assert env["SHADOW_PERCENT"] == str(mirror_percent) and env["SHADOW_DECISION_THRESHOLD"] == "0.5"
    candidate_env = stage.deployment_env("canary")
    assert "SHADOW_TARGET_URL" not in candidate_env and candidate_env["SHADOW_DECISION_THRESHOLD"] == "0.5"
    # Each server checks its callers as the operator configured its pods: the issuer keys, the model's pod account.
    callers = {k: candidate_env[k] for k in ("SERVICE_ACCOUNT_JWKS", "SERVICE_ACCOUNT_ISSUER", "ADMIN_SUBJECT",
                                             "SHADOW_SUBJECT", "SHADOW_DECISION_THRESHOLD")}
    # What the kubelet would project into the stable's pods: a real TokenRequest token of the pods' account.
    token_file = stage.tmp / "shadow-token"
    assert stage.cluster is not None
    token_file.write_text(service_account_token(stage.cluster, "modelwarden.io/shadow", namespace=stage.namespace,
                                                name=SERVER_SERVICE_ACCOUNT))
    # No cluster DNS here: the stand-in for the candidate's Service is its process's loopback URL.
    candidate = stage.serve("candidate", v2, "v2", "canary", **callers)
    mirror = {k: v for k, v in env.items() if k.startswith("SHADOW_")} | {
        "SHADOW_TARGET_URL": candidate, "SHADOW_TOKEN_FILE": str(token_file)}
    return stage.serve("stable", v1, "v1", "stable", **(callers | mirror)), candidate


def compared_query(namespace: str) -> str:
    return f'sum(ml_shadow_compared_total{{namespace="{namespace}"}})'


def test_an_agreeing_candidate_passes_into_step_one(stage: Stage, api_clients: dict[str, client.ApiClient],
                                                    artifacts: dict[str, DemoArtifact]) -> None:
    user_path, _ = into_shadow(stage, api_clients, artifacts["v1"], artifacts["agreeing"], mirror_percent=50)
    started = time.monotonic()
    assert stage.users(user_path, artifacts["v1"], 500) == {("v1", "stable")}, "no user answer from v2"
    stage.scraped(compared_query(stage.namespace), MIN_COMPARED)
    stage.scraped(f'max(ml_shadow_score_psi{{namespace="{stage.namespace}"}}) >= 0', 0)  # the PSI is published
    time.sleep(max(0.0, DURATION + 1 - (time.monotonic() - started)))
    status = stage.evaluate()
    assert status.shadow is not None and status.shadow.verdict == "Passed", status.model_dump_json(indent=1)
    assert float(status.shadow.values["decisionAgreement"]) >= 0.95
    status = stage.op.until("m", lambda s: s.canary_weight == 25)
    assert route_weights(stage) == {"m-stable": 75, "m-canary": 25}
    assert "SHADOW_TARGET_URL" not in stage.deployment_env("stable"), "the mirror stops with the stage"
    events = stage.admin.core.list_namespaced_event(stage.namespace).items
    assert {Reason.SHADOW_RUNNING, Reason.SHADOW_PASSED} <= {e.reason for e in events}


def test_a_disagreeing_candidate_is_stopped_in_shadow(stage: Stage, api_clients: dict[str, client.ApiClient],
                                                      artifacts: dict[str, DemoArtifact]) -> None:
    user_path, _ = into_shadow(stage, api_clients, artifacts["v1"], artifacts["shifted"], mirror_percent=50)
    assert stage.users(user_path, artifacts["v1"], 500) == {("v1", "stable")}, "no user answer from v2"
    stage.scraped(compared_query(stage.namespace), MIN_COMPARED)
    stage.scraped(f'max(ml_shadow_score_psi{{namespace="{stage.namespace}"}}) >= 0', 0)
    stage.evaluate()  # a breach needs no duration: halted as soon as the minimum is compared
    status = stage.op.until("m", lambda s: s.phase == Phase.HALTED)
    assert status.halt is not None and status.halt.reason == Reason.SHADOW_DISAGREEMENT
    assert status.shadow is not None and status.shadow.verdict == "Failed"
    rb = status.last_rollback
    assert rb is not None and rb.trigger == Reason.SHADOW_DISAGREEMENT and rb.from_version == "v2"
    assert float(rb.values["decisionAgreement"]) < 0.95 or float(rb.values["scorePsi"]) > 0.2
    assert status.stable is not None and status.stable.version == "v1" and status.canary is None
    assert route_weights(stage) == {"m-stable": 100, "m-canary": 0}
    assert stage.admin.deployment("m-canary") is None
    reasons = {e.reason for e in stage.admin.core.list_namespaced_event(stage.namespace).items}
    assert {Reason.SHADOW_DISAGREEMENT, Reason.ROLLBACK_COMPLETE} <= reasons
    incidents = [c for c in stage.admin.core.list_namespaced_config_map(stage.namespace).items
                 if rb.id in c.metadata.name]
    assert incidents, "the incident record"


def test_too_few_compared_requests_is_no_verdict(stage: Stage, api_clients: dict[str, client.ApiClient],
                                                 artifacts: dict[str, DemoArtifact]) -> None:
    user_path, _ = into_shadow(stage, api_clients, artifacts["v1"], artifacts["shifted"], mirror_percent=10)
    started = time.monotonic()
    assert stage.users(user_path, artifacts["v1"], 200) == {("v1", "stable")}  # ~20 mirrored, 150 needed
    stage.scraped(compared_query(stage.namespace), 1)
    time.sleep(max(0.0, DURATION + 1 - (time.monotonic() - started)))
    status = stage.evaluate()
    assert status.phase == Phase.PROGRESSING and status.halt is None and status.canary_weight == 0
    assert status.shadow is not None and status.shadow.verdict == "Running"
    assert int(status.shadow.values["compared"]) < MIN_COMPARED
    progressing = next(c for c in status.conditions if c.type == "Progressing")
    assert progressing.reason == Reason.SHADOW_NO_VERDICT
    assert route_weights(stage) == {"m-stable": 100, "m-canary": 0}


def test_a_full_mirror_queue_drops_counted_copies_and_every_user_is_answered(
        tmp_path: Path, artifacts: dict[str, DemoArtifact],
        prometheus_factory: Callable[..., prometheus_env.Prometheus]) -> None:
    silent = socket.socket()  # a candidate that accepts connections and never answers
    silent.bind((LOOPBACK, 0))
    silent.listen(64)
    v1 = artifacts["v1"]
    env = {**v1.env("m", "v1"), "WARMUP_ROUNDS": "1", "FEEDBACK_DSN": str(tmp_path / "s.sqlite3"),
           "SHADOW_TARGET_URL": f"http://{LOOPBACK}:{silent.getsockname()[1]}", "SHADOW_PERCENT": "100",
           "SHADOW_QUEUE_SIZE": "10", "SHADOW_TIMEOUT_SECONDS": "3"}
    try:
        with serve_subprocess(env, log_path=tmp_path / "stable.log") as (url, _):
            prom = prometheus_factory(scrape_targets=[url.removeprefix("http://")])
            rng = np.random.default_rng(1)
            with http_client(url) as c:
                for row in rng.normal(size=(300, len(v1.features))):
                    r = c.post("/predict", json={"features": dict(zip(v1.features, row.tolist(), strict=True))})
                    assert r.status_code == 200 and r.json()["version"] == "v1"
            # 2 senders hang with what they took, 10 copies wait, the rest are dropped; once the hung posts time
            # out, every copy is dropped or failed — and Prometheus has both counts.
            query = 'sum(ml_shadow_mirrored_total{result=~"dropped|failed"})'
            deadline = time.monotonic() + 60
            while True:
                rows = prom.query(query)
                if rows and float(rows[0]["value"][1]) == 300:
                    break
                assert time.monotonic() < deadline, rows
                time.sleep(0.5)
            dropped = float(prom.query('ml_shadow_mirrored_total{result="dropped"}')[0]["value"][1])
            assert 0 < dropped <= 300 - 10 - 2
            answered = prom.query('ml_inference_requests_total{outcome="success"}')
            assert float(answered[0]["value"][1]) == 300
    finally:
        silent.close()
