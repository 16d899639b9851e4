"""Traffic on real pods, counted from what answered: a canary walked through its steps on the real node with the
``replicas`` router, load sent to the model's Service ClusterIP through kube-proxy, every answer carrying the
version and sha256 of the server that made it (``x-model-version`` / ``x-model-sha256``, set by the server).

The replica arithmetic: with ``replicas: 4`` the router gives the canary ``ceil(4*w/100)`` pods and the stable
enough that the canary's pod share never exceeds ``w`` — 1 of 4 pods at 25%, 2 of 4 at 50%, so the pod share *is*
the step weight here. kube-proxy (iptables) picks an endpoint uniformly at random per new connection, and each
request opens its own, so the canary's count over n requests is binomial(n, w): over 2,000 requests its standard
deviation is at most 1.1 points, and ±5 points is more than 4.5 of them (a false failure about once in 10^5 runs).

Then a critical-feedback rollback (three critical labels on the canary's own predictions, scraped by a real
Prometheus from the pods): every answer through the Service carries v1's sha256 again, timed from the third label;
the flush (canary pods), warm-up (stable pods) and feedback evidence (canary pods) are recorded per pod in the
incident, made with the model's own admin credential. Last, the kill switch: ``modelwarden disable`` ⇒ every answer
through the Service is the neutral prediction, and no container restarted."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv import node as real_node
from localenv import prometheus as prometheus_env
from localenv._proc import REPO_ROOT
from localenv.artifacts import ArtifactServer
from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval, cli, wait_for

MODEL = "ranker"
REPLICAS = 4
REQUESTS = 2000
EVALUATION_INTERVAL = 5
RESOURCES = {"requests": {"cpu": "20m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}


def _post(url: str, body: dict[str, Any], timeout: float = 10) -> tuple[dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.load(resp)), {k.lower(): v for k, v in resp.headers.items()}


class Load:
    """Predictions sent to one base URL, each on a new connection (kube-proxy balances connections)."""

    def __init__(self, base: str, features: list[str]) -> None:
        self.base, self.features = base, features

    def one(self, i: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
        return _post(f"{self.base}/predict", {"features": {f: 0.1 * ((i + k) % 7) for k, f in
                                                          enumerate(self.features)}})

    def many(self, n: int) -> list[tuple[dict[str, Any], dict[str, str]]]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(self.one, range(n)))

    @contextlib.contextmanager
    def steady(self, rate: float = 10) -> Iterator[None]:
        """A steady trickle of requests in the background, as a live service has: canary analysis judges the
        canary on recent requests (the counted batches are separate)."""
        stop = threading.Event()

        def run() -> None:
            i = 0
            while not stop.wait(1 / rate):
                i += 1
                with contextlib.suppress(OSError):
                    self.one(i)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _spec(version: str, uri: str, artifact: DemoArtifact, feedback_store: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, "artifact": {"uri": uri, "sha256": artifact.sha256, "format": "onnx"},
            "featureContract": {"name": artifact.contract, "features": list(artifact.features),
                                "nFeatures": len(artifact.features)},
            "serving": {"replicas": REPLICAS, "resources": RESOURCES, "feedbackStore": feedback_store},
            "rollout": {"steps": [{"setWeight": 25}, {"setWeight": 50}],  # each waits for `modelwarden promote`
                        "analysis": {"intervalSeconds": EVALUATION_INTERVAL, "minRequests": 10}},
            "slo": {"objective": "99.0"},
            "rollback": {"sustainSeconds": 3600, "fastBurn": {"enabled": False}}}


def _approve(api_clients: dict[str, client.ApiClient], namespace: str, version: str, sha256: str) -> None:
    for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
        Models(api_clients[user], namespace).approve(approval(MODEL, version, sha256, role, user))


def _pods(core: client.CoreV1Api, namespace: str, track: str | None = None) -> list[client.V1Pod]:
    selector = f"modelwarden.io/model={MODEL}" + (f",modelwarden.io/track={track}" if track else "")
    return [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.metadata.deletion_timestamp is None]


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _programmed(namespace: str) -> set[str]:
    """The pod IPs kube-proxy's iptables rules send the Service's connections to now."""
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    marker = f'--comment "{namespace}/{MODEL}:http -> '
    return {line.split(marker, 1)[1].split(":", 1)[0] for line in nat.splitlines()
            if line.startswith("-A KUBE-SVC-") and marker in line}


def _restarts(core: client.CoreV1Api, namespace: str) -> dict[str, int]:
    return {p.metadata.name: sum(c.restart_count for c in p.status.container_statuses or [])
            for p in _pods(core, namespace)}


def test_canary_share_rollback_and_kill_switch_counted_from_real_answers_through_the_service(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], real_namespace: str,
        tmp_path: Path, prometheus_factory: Callable[..., prometheus_env.Prometheus],
        pods_feedback_store: dict[str, Any]) -> None:
    cluster, namespace = modelwarden_installed, real_namespace
    core = client.CoreV1Api(api_clients["admin"])
    admin = Models(api_clients["admin"], namespace)
    trained = {v: train("logistic", 3, 300, seed=s) for v, s in (("v1", 1), ("v2", 2))}
    built = {v: build_demo_artifact(tmp_path / v, model=MODEL, version=v, fmt="onnx", trained=trained[v])
             for v in ("v1", "v2")}
    assert built["v1"].sha256 != built["v2"].sha256

    # A real Prometheus with the shipped rules, scraping every pod of the model (targets kept current below).
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
    try:
        with ArtifactServer(tmp_path) as artifacts, contextlib.ExitStack() as stack:
            uri = {v: artifacts.uri(a.directory / a.model_file) for v, a in built.items()}
            admin.create({"apiVersion": "modelwarden.io/v1alpha1", "kind": "MLModel", "metadata": {"name": MODEL},
                          "spec": _spec("v1", uri["v1"], built["v1"], pods_feedback_store)})
            _approve(api_clients, namespace, "v1", built["v1"].sha256)
            admin.wait_phase(MODEL, Phase.STABLE, timeout=300, check=operator.check_alive)
            scrape_pods()
            vip = core.read_namespaced_service(MODEL, namespace).spec.cluster_ip
            load = Load(f"http://{vip}:8080", list(built["v1"].features))

            # No admin credential in the namespace: the servers verify the operator's TokenRequest tokens offline.
            assert not [s for s in core.list_namespaced_secret(namespace).items if "admin" in s.metadata.name]
            server_env = {e.name: e.value for e in _pods(core, namespace)[0].spec.containers[0].env}
            assert server_env["ADMIN_SUBJECT"] == "system:serviceaccount:modelwarden-system:modelwarden-operator"
            assert server_env["SERVICE_ACCOUNT_JWKS"] and server_env["SERVICE_ACCOUNT_ISSUER"]

            stack.enter_context(load.steady())
            # v2: approved, canary at 25% (1 of 4 pods), then 50% (2 of 4) after a promote.
            admin.patch_spec(MODEL, _spec("v2", uri["v2"], built["v2"], pods_feedback_store))
            _approve(api_clients, namespace, "v2", built["v2"].sha256)
            shares: dict[int, float] = {}
            seen_last: list[str] = [""]
            for step, weight in enumerate((25, 50)):
                def at_step(step: int = step, weight: int = weight) -> bool:
                    operator.check_alive()
                    st = admin.status(MODEL)
                    pods = _pods(core, namespace)
                    canary = [p for p in pods if p.metadata.labels.get("modelwarden.io/track") == "canary"]
                    seen_last[0] = (f"phase {st.phase} step {st.current_step_index} weight {st.canary_weight}; pods "
                                    f"{[(p.metadata.name, _ready(p)) for p in pods]}; conditions "
                                    f"{[(c.type, c.status, c.reason, c.message) for c in st.conditions]}")
                    return (st.current_step_index == step and st.canary_weight == weight
                            and len(pods) == REPLICAS and all(_ready(p) for p in pods)
                            and len(canary) == REPLICAS * weight // 100)
                try:
                    wait_for(at_step, 300, f"the canary at step {step + 1} ({weight}%), {REPLICAS} pods Ready")
                except pytest.fail.Exception:
                    print(seen_last[0])
                    raise
                scrape_pods()
                for pod in _pods(core, namespace):
                    assert pod.spec.node_name == real_node.NODE_NAME
                # kube-proxy follows the EndpointSlices a moment later, and a pod scaled away keeps answering through
                # its drain until then: count only once its rules name exactly the Ready pods.
                wait_for(lambda: _programmed(namespace) == {p.status.pod_ip for p in _pods(core, namespace)}, 60,
                         "kube-proxy's rules for the Service naming exactly the Ready pods")
                answers = load.many(REQUESTS)
                seen = Counter((h["x-model-version"], h["x-model-sha256"]) for _, h in answers)
                assert set(seen) == {("v1", built["v1"].sha256), ("v2", built["v2"].sha256)}, seen
                assert all(body["version"] == h["x-model-version"] for body, h in answers)
                share = 100 * seen[("v2", built["v2"].sha256)] / REQUESTS
                shares[weight] = share
                print(f"step {step + 1}: weight {weight}%, canary answered {share:.1f}% of {REQUESTS}")
                assert abs(share - weight) <= 5, f"canary share {share:.1f}% at weight {weight}%"
                if step == 0:
                    done = cli(cluster, "finance-approver", "promote", MODEL, "-n", namespace)
                    assert done.returncode == 0, done.stderr

            # Three critical labels on the canary's own predictions, posted to one canary pod (the store is shared).
            canary_pods = sorted(p.metadata.name for p in _pods(core, namespace, "canary"))
            stable_pods = sorted(p.metadata.name for p in _pods(core, namespace, "stable"))
            canary_ip = _pods(core, namespace, "canary")[0].status.pod_ip
            direct = Load(f"http://{canary_ip}:8080", load.features)
            labelled = []
            for i, stakeholder in enumerate(("finance", "regulator", "finance")):
                body, headers = direct.one(i)
                assert headers["x-model-version"] == "v2"
                _post(f"{direct.base}/feedback", {"predictionId": body["predictionId"], "label": "wrong",
                                                  "severity": "critical", "stakeholder": stakeholder})
                labelled.append(body["predictionId"])
            triggered = time.monotonic()

            def all_v1() -> bool:
                operator.check_alive()
                return all(h["x-model-sha256"] == built["v1"].sha256 for _, h in load.many(50))
            wait_for(all_v1, 180, "every answer through the Service from v1's sha256")
            restored = time.monotonic() - triggered
            answers = load.many(200)
            assert {h["x-model-sha256"] for _, h in answers} == {built["v1"].sha256}
            print(f"rollback: every answer from v1's sha256 {restored:.1f}s after the third critical label "
                  f"(evaluation interval {EVALUATION_INTERVAL}s, scrape 2s)")
            status = admin.wait_phase(MODEL, Phase.HALTED, timeout=60, check=operator.check_alive)
            assert status.last_rollback is not None and status.last_rollback.trigger == "CriticalFeedback"

            # The incident says, per pod, what each admin call did — with the model's own token, so they succeeded.
            incident = core.read_namespaced_config_map(f"{MODEL}-{status.last_rollback.id}", namespace)
            flush, warmup = (json.loads(incident.data[f"admin-{what}.json"]) for what in ("flush", "warmup"))
            assert (flush["track"], flush["error"], warmup["track"], warmup["error"]) == (
                "canary", None, "stable", None), (flush, warmup)
            assert sorted(c["pod"] for c in flush["calls"] if c["outcome"] == "ok") == canary_pods, flush
            # The stable is back to all 4 replicas: every one of them was warmed, the 2 that served at 50% included.
            warmed = sorted(c["pod"] for c in warmup["calls"] if c["outcome"] == "ok")
            assert warmed == sorted(p.metadata.name for p in _pods(core, namespace, "stable")), warmup
            assert set(stable_pods) <= set(warmed) and len(warmed) == REPLICAS, warmup
            evidence = json.loads(incident.data["feedback.json"])
            assert evidence["error"] is None, evidence
            assert sorted(c["pod"] for c in evidence["calls"] if c["outcome"] == "ok") == canary_pods
            assert sorted(r["predictionId"] for r in evidence["records"]) == sorted(labelled)
            assert not [e for e in admin.events(MODEL) if e.reason in ("FlushAndWarmFailed",
                                                                       "CollectFeedbackEvidenceFailed")]

            # The kill switch, seen through the Service: neutral answers from every pod, nothing restarted.
            before = _restarts(core, namespace)
            done = cli(cluster, "admin", "disable", MODEL, "-n", namespace)
            assert done.returncode == 0, done.stderr
            disabled_at = time.monotonic()
            wait_for(lambda: all(b["neutral"] and b["state"] == "DISABLED_CONFIG" for b, _ in load.many(50)), 60,
                     "neutral answers through the Service")
            print(f"kill switch: neutral answers from every pod {time.monotonic() - disabled_at:.1f}s after "
                  "`modelwarden disable`")
            answers = load.many(200)
            assert all(b["prediction"] == 0.0 and b["state"] == "DISABLED_CONFIG" for b, _ in answers)
            assert {h["x-model-sha256"] for _, h in answers} == {built["v1"].sha256}
            for pod in _pods(core, namespace):
                ip = pod.status.pod_ip
                body, _ = Load(f"http://{ip}:8080", load.features).one()
                assert body["neutral"] and body["prediction"] == 0.0, f"{pod.metadata.name} answered {body}"
            assert _restarts(core, namespace) == before, "no pod restarted for the kill switch"
    except BaseException:
        print(operator.log()[-6000:])
        raise
    finally:
        operator.stop()
    if not shares:
        pytest.fail("no step was measured")
