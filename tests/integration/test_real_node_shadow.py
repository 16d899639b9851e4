"""The shadow stage on real pods with the ``replicas`` router (issue 20): the model's one Service would select both
tracks' pods, so during the stage the candidate's pods carry ``modelwarden.io/serving=false`` and the Service
selects ``serving=true``; the stable's pods mirror to the ``<model>-canary`` Service by its ClusterIP (no cluster
DNS here), through kube-proxy.

A disagreeing v2 (the same model with shifted scores) is halted in shadow, and every answer through the Service
during its stage carries v1's sha256 (the server's ``x-model-sha256`` header). An agreeing v3 (coefficients within
2%) passes the stage — again with every answer from v1 — and opens step 1: its pods roll once to get the label,
then answer users through the Service. Load goes to the Service's ClusterIP; a real Prometheus scrapes every pod.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from localenv import prometheus as prometheus_env
from localenv._proc import REPO_ROOT
from localenv.artifacts import ArtifactServer
from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from modelwarden.api.v1alpha1 import LABEL_SERVING, MLModelStatus, Phase, Reason
from tests.integration.modelwarden_helpers import Models, wait_for
from tests.integration.test_real_node_traffic import (
    MODEL,
    RESOURCES,
    Load,
    _approve,
    _pods,
    _post,
    _programmed,
    _ready,
)

REPLICAS = 2
EVALUATION_INTERVAL = 5
DURATION = 30
MIN_COMPARED = 100


class RandomLoad(Load):
    """Rows drawn from a continuous range (seeded by ``i``): a PSI over score bins needs a spread of scores — a
    handful of repeated rows puts each score on a bin edge, where a 2% change moves whole bins."""

    def one(self, i: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
        rng = random.Random(i)
        return _post(f"{self.base}/predict", {"features": {f: rng.uniform(-2, 2) for f in self.features}})


class Recorder:
    """Answers through the Service, recorded from a background thread until stopped: (version, sha256, track)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.failures = 0
        self._stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator[Recorder]:
        def run() -> None:
            i = 0
            while not self._stop.wait(0.02):
                i += 1
                try:
                    _, h = self.load.one(i)
                except OSError:
                    self.failures += 1
                    continue
                self.seen[(h["x-model-version"], h["x-model-sha256"], h["x-model-track"])] += 1

        threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in threads:
                t.join()


def _spec(version: str, uri: str, artifact: DemoArtifact, feedback_store: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, "artifact": {"uri": uri, "sha256": artifact.sha256, "format": "onnx"},
            "featureContract": {"name": artifact.contract, "features": list(artifact.features),
                                "nFeatures": len(artifact.features)},
            "serving": {"replicas": REPLICAS, "resources": RESOURCES, "feedbackStore": feedback_store},
            "rollout": {"steps": [{"setWeight": 50}],  # waits for `modelwarden promote`
                        "trafficRouting": {"type": "replicas"},
                        "analysis": {"intervalSeconds": EVALUATION_INTERVAL, "minRequests": 10},
                        "shadow": {"mirrorPercent": 50, "durationSeconds": DURATION,
                                   "minComparedRequests": MIN_COMPARED}},
            "slo": {"objective": "99.0"},
            "rollback": {"sustainSeconds": 3600, "fastBurn": {"enabled": False}}}


def test_shadow_stage_with_the_replicas_router_on_real_pods(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], real_namespace: str,
        tmp_path: Path, prometheus_factory: Callable[..., prometheus_env.Prometheus],
        pods_feedback_store: dict[str, Any]) -> None:
    cluster, namespace = modelwarden_installed, real_namespace
    core = client.CoreV1Api(api_clients["admin"])
    admin = Models(api_clients["admin"], namespace)
    estimator, sample = train("logistic", 3, 600, seed=7)
    close, _ = train("logistic", 3, 600, seed=7)
    close.coef_ = close.coef_ * 1.02
    shifted, _ = train("logistic", 3, 600, seed=7)
    shifted.intercept_ = shifted.intercept_ + 2.0
    built = {v: build_demo_artifact(tmp_path / v, model=MODEL, version=v, fmt="onnx", trained=(est, sample))
             for v, est in (("v1", estimator), ("v2", shifted), ("v3", close))}

    rules = tmp_path / "rules.yaml"
    rules.write_text((REPO_ROOT / "manifests/prometheus/rules.yaml").read_text().replace("interval: 30s",
                                                                                         "interval: 5s"))
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    prom = prometheus_factory(scrape_interval="2s", rule_files=[rules], file_sd=targets)

    def scrape_pods() -> None:
        targets.write_text(json.dumps([{"targets": [f"{p.status.pod_ip}:8080"],
                                        "labels": {"instance": p.metadata.name}}
                                       for p in _pods(core, namespace) if p.status.pod_ip]))

    operator = OperatorProcess(cluster, tmp_path / "operator.log", env={
        "MODELWARDEN_PROMETHEUS_URL": prom.url, "MODELWARDEN_EVALUATION_INTERVAL": str(EVALUATION_INTERVAL),
        "MODELWARDEN_QUERY_STEP": str(EVALUATION_INTERVAL), "MODELWARDEN_RESYNC_SECONDS": "5"}).start()

    def status_when(what: str, ok: Callable[[MLModelStatus], bool], timeout: float = 300) -> MLModelStatus:
        last: list[MLModelStatus] = []

        def check() -> bool:
            operator.check_alive()
            scrape_pods()
            last[:] = [admin.status(MODEL)]
            return ok(last[0])
        try:
            wait_for(check, timeout, what)
        except BaseException:
            print(last[0].model_dump_json(indent=1) if last else "no status")
            raise
        return last[0]

    def in_shadow(version: str) -> Callable[[MLModelStatus], bool]:
        return lambda s: s.shadow is not None and s.shadow.version == version and s.shadow.verdict == "Running"

    def hidden_candidate() -> None:
        """The candidate's pods run, Ready, labelled out of the Service; kube-proxy sends users to the stable's."""
        canary = _pods(core, namespace, "canary")
        stable = _pods(core, namespace, "stable")
        assert canary and all(p.metadata.labels[LABEL_SERVING] == "false" for p in canary)
        assert all(p.metadata.labels[LABEL_SERVING] == "true" for p in stable)
        wait_for(lambda: _programmed(namespace) == {p.status.pod_ip for p in _pods(core, namespace, "stable")},
                 60, "kube-proxy's rules for the Service naming exactly the stable's pods")
        mirror = core.read_namespaced_service(f"{MODEL}-canary", namespace).spec.cluster_ip
        stable_env = {e.name: e.value for e in admin.deployment(f"{MODEL}-stable").spec.template.spec.containers[0].env}
        assert stable_env["SHADOW_TARGET_URL"] == f"http://{mirror}:8080", "the mirror by the candidate's ClusterIP"

    try:
        with ArtifactServer(tmp_path) as artifacts:
            uri = {v: artifacts.uri(a.directory / a.model_file) for v, a in built.items()}
            admin.create({"apiVersion": "modelwarden.io/v1alpha1", "kind": "MLModel", "metadata": {"name": MODEL},
                          "spec": _spec("v1", uri["v1"], built["v1"], pods_feedback_store)})
            _approve(api_clients, namespace, "v1", built["v1"].sha256)
            admin.wait_phase(MODEL, Phase.STABLE, timeout=300, check=operator.check_alive)
            selector = core.read_namespaced_service(MODEL, namespace).spec.selector
            assert selector == {"modelwarden.io/model": MODEL, LABEL_SERVING: "true"}
            vip = core.read_namespaced_service(MODEL, namespace).spec.cluster_ip
            load = RandomLoad(f"http://{vip}:8080", list(built["v1"].features))
            v1 = ("v1", built["v1"].sha256, "stable")

            # A disagreeing v2: halted in shadow, no user answer from it.
            with Recorder(load).running() as users:
                admin.patch_spec(MODEL, _spec("v2", uri["v2"], built["v2"], pods_feedback_store))
                _approve(api_clients, namespace, "v2", built["v2"].sha256)
                status_when("v2 in its shadow stage", in_shadow("v2"))
                hidden_candidate()
                halted = status_when("v2 halted in shadow", lambda s: s.phase == Phase.HALTED)
            assert set(users.seen) == {v1}, f"every answer during v2's stage from v1: {users.seen}"
            assert halted.halt is not None and halted.halt.reason == Reason.SHADOW_DISAGREEMENT
            assert halted.shadow is not None and halted.shadow.verdict == "Failed"
            assert float(halted.shadow.values["compared"]) >= MIN_COMPARED
            print(f"v2 halted in shadow: {dict(halted.shadow.values)}; {sum(users.seen.values())} answers "
                  f"through the Service, all from v1 ({users.failures} connection errors)")
            wait_for(lambda: not _pods(core, namespace, "canary"), 120, "v2's pods gone")

            # An agreeing v3: passes the stage, then step 1 rolls its pods into the Service.
            with Recorder(load).running() as users:
                admin.patch_spec(MODEL, _spec("v3", uri["v3"], built["v3"], pods_feedback_store))
                _approve(api_clients, namespace, "v3", built["v3"].sha256)
                status_when("v3 in its shadow stage", in_shadow("v3"))
                hidden_candidate()
                passed = status_when("v3 passed its shadow stage",
                                     lambda s: s.shadow is not None and s.shadow.verdict == "Passed")
            assert set(users.seen) == {v1}, f"every answer during v3's stage from v1: {users.seen}"
            assert passed.shadow is not None and float(passed.shadow.values["decisionAgreement"]) >= 0.95
            print(f"v3 passed its shadow stage: {dict(passed.shadow.values)}; {sum(users.seen.values())} answers "
                  f"through the Service, all from v1")
            step = status_when("v3 at step 1", lambda s: s.step_started_at is not None and s.canary_weight > 0)
            assert step.phase == Phase.PAUSED and step.halt is None, "step 1 waits for `modelwarden promote`"
            # The Deployment's readyReplicas may still count the old (hidden) pod while the rolled one starts.
            wait_for(lambda: (lambda pods: bool(pods) and all(p.metadata.labels[LABEL_SERVING] == "true" and _ready(p)
                                                          for p in pods))(_pods(core, namespace, "canary")),
                     120, "v3's rolled pods, labelled serving=true, Ready")
            wait_for(lambda: any(h["x-model-version"] == "v3" for _, h in load.many(40)), 120,
                     "v3 answering users through the Service at step 1")
    except BaseException:
        print(operator.log()[-6000:])
        raise
    finally:
        operator.stop()
