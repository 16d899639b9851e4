"""Benchmark: rollback trigger → every answer through the model's Service carries the prior approved SHA256, on the
real node, (a) with the warm standby and the artifact store down, (b) without the standby and the store up; and
the standby's idle cost (CPU, memory of its pod).

    bash realnode.sh .venv/bin/python -m bench.rollback_standby --runs 10      # the real node (realnode.sh: flock)

Each run, in a fresh namespace under the ``restricted`` Pod Security level: v1 then v2 approved and promoted
(``replicas: 2``, one 100% step), answers sent to the Service's ClusterIP through kube-proxy, a new connection each.
The trigger is ``modelwarden rollback`` as the on-call user (a ModelAction the API server attributes); the clock
runs from the CLI's start (its own Python start-up included) to the first batch of 20 answers that all carry v1's
``x-model-sha256``. In (a) the artifact server is stopped before the trigger; in (b)
``spec.rollback.standby.replicas: 0``.
The idle cost is read from the kubelet's summary API (the standby pod's CPU and working set, sampled for 20 s).

The same story, with assertions and one run of each, is ``tests/integration/test_real_node_standby.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from kubernetes import client, config

from bench.common import percentile
from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from localenv import node as real_node
from localenv.artifacts import ArtifactServer
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from modelwarden.api import v1alpha1 as api

MODEL = "scorer"
REPLICAS = 2
RESOURCES = {"requests": {"cpu": "20m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}
# A development store: this story is about serving, not feedback.
FEEDBACK_STORE = {"type": "sqlite", "acceptFeedbackLoss": True}


def build_artifacts(directory: Path) -> dict[str, DemoArtifact]:
    trained = {v: train("logistic", 3, 300, seed=s) for v, s in (("v1", 1), ("v2", 2))}
    return {v: build_demo_artifact(directory / v, model=MODEL, version=v, fmt="onnx", trained=trained[v])
            for v in ("v1", "v2")}


def model_spec(version: str, uri: str, artifact: DemoArtifact, standby_replicas: int,
               feedback_store: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": version, "artifact": {"uri": uri, "sha256": artifact.sha256, "format": "onnx"},
            "featureContract": {"name": artifact.contract, "features": list(artifact.features),
                                "nFeatures": len(artifact.features)},
            "serving": {"replicas": REPLICAS, "resources": RESOURCES,
                        "feedbackStore": feedback_store or FEEDBACK_STORE},
            "rollout": {"steps": [{"setWeight": 100, "pauseSeconds": 0}]},
            "rollback": {"standby": {"replicas": standby_replicas}}}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@dataclass
class Story:
    """One model in one namespace, driven through v1 → v2 promoted → rollback, as its users and approvers."""

    cluster: cluster_env.Cluster
    namespace: str
    artifacts: dict[str, DemoArtifact]

    def __post_init__(self) -> None:
        self.clients = {u: config.new_client_from_config(config_file=str(p))  # type: ignore[no-untyped-call]
                        for u, p in self.cluster.kubeconfigs.items()}
        self.core = client.CoreV1Api(self.clients["admin"])
        self.custom = client.CustomObjectsApi(self.clients["admin"])

    def create_namespace(self) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=self.namespace, labels={"pod-security.kubernetes.io/enforce": "restricted",
                                         "pod-security.kubernetes.io/enforce-version": "latest"})))

    def approve(self, version: str) -> None:
        sha = self.artifacts[version].sha256
        for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver")):
            client.CustomObjectsApi(self.clients[user]).create_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.APPROVAL_PLURAL, {
                    "apiVersion": api.API_VERSION, "kind": "ModelApproval",
                    "metadata": {"name": f"{MODEL}-{version}-{role}"},
                    "spec": {"modelRef": {"name": MODEL}, "version": version, "sha256": sha, "role": role,
                             "approver": user}})

    def status(self) -> api.MLModelStatus:
        body = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.MLMODEL_PLURAL,
                                                        MODEL)
        return api.MLModelStatus.model_validate(body.get("status") or {})

    def pods(self, track: str | None = None) -> list[client.V1Pod]:
        selector = f"{api.LABEL_MODEL}={MODEL}" + (f",{api.LABEL_TRACK}={track}" if track else "")
        return [p for p in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
                if p.metadata.deletion_timestamp is None]

    def stable_on(self, version: str) -> bool:
        st = self.status()
        return (st.phase == api.Phase.STABLE and st.stable is not None and st.stable.version == version
                and len(self.pods("stable")) == REPLICAS and all(ready(p) for p in self.pods("stable")))

    def promote_v1_then_v2(self, uris: dict[str, str], standby_replicas: int, check: Callable[[], None],
                           feedback_store: dict[str, Any] | None = None) -> None:
        """``feedback_store``: ``serving.feedbackStore`` (default: a development SQLite store in each pod)."""
        def stable(version: str) -> Callable[[], bool]:
            def done() -> bool:
                check()
                return self.stable_on(version)
            return done

        self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.MLMODEL_PLURAL, {
            "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": MODEL},
            "spec": model_spec("v1", uris["v1"], self.artifacts["v1"], standby_replicas, feedback_store)})
        self.approve("v1")
        wait_for(stable("v1"), 300, "v1 Stable with every pod Ready")
        self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.MLMODEL_PLURAL, MODEL,
                                                   {"spec": model_spec("v2", uris["v2"], self.artifacts["v2"],
                                                                       standby_replicas, feedback_store)})
        self.approve("v2")
        wait_for(stable("v2"), 300, "v2 promoted, Stable with every pod Ready")
        if standby_replicas:
            wait_for(lambda: len(self.pods("standby")) == standby_replicas
                     and all(ready(p) for p in self.pods("standby")), 300, "the standby's pods Ready")

    def service_url(self) -> str:
        return f"http://{self.core.read_namespaced_service(MODEL, self.namespace).spec.cluster_ip}:8080"

    def answer(self, url: str, i: int = 0) -> str:
        """One prediction through the Service on a new connection: the sha256 of the server that answered."""
        features = {f: 0.1 * ((i + k) % 7) for k, f in enumerate(self.artifacts["v1"].features)}
        req = urllib.request.Request(f"{url}/predict", data=json.dumps({"features": features}).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return str(resp.headers.get("x-model-sha256", ""))
        except OSError as e:
            return f"error: {type(e).__name__}"

    def answers(self, url: str, n: int) -> list[str]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: self.answer(url, i), range(n)))

    def roll_back(self, meanwhile: Callable[[float], None] = lambda elapsed: None, timeout: float = 600) -> float:
        """``modelwarden rollback`` as on-call: seconds from its start to every answer on v1's sha256.

        ``meanwhile(seconds since the start)`` runs once the request is filed and before each look at the answers:
        where a fault table injects and lifts its fault."""
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfigs["oncall"])}
        url = self.service_url()
        started = time.monotonic()  # the CLI may wait for the operator's outcome: the clock includes it
        done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "rollback", MODEL, "-n", self.namespace],
                              env=env, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"modelwarden rollback: {done.stderr}")
        v1 = self.artifacts["v1"].sha256

        def all_on_v1() -> bool:
            meanwhile(time.monotonic() - started)
            return set(self.answers(url, 20)) == {v1}

        wait_for(all_on_v1, timeout, "every answer on v1's sha256")
        return time.monotonic() - started

    def idle_cost(self, seconds: float = 20) -> tuple[float, float]:
        """The standby pods' CPU (millicores, mean) and working set (MiB, max), from the kubelet's summary API."""
        names = {p.metadata.name for p in self.pods("standby")}
        cpu, memory = [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            raw = self.core.connect_get_node_proxy_with_path(real_node.NODE_NAME, "stats/summary",
                                                             _preload_content=False)
            summary = json.loads(raw.data)
            for pod in summary.get("pods", []):
                if pod["podRef"]["namespace"] == self.namespace and pod["podRef"]["name"] in names:
                    cpu.append(pod.get("cpu", {}).get("usageNanoCores", 0) / 1e6)
                    memory.append(pod.get("memory", {}).get("workingSetBytes", 0) / 2**20)
            time.sleep(5)
        return (sum(cpu) / len(cpu) if cpu else float("nan"), max(memory) if memory else float("nan"))


def run_once(cluster: cluster_env.Cluster, artifacts: dict[str, DemoArtifact], root: Path, *, standby: bool,
             check: Callable[[], None], cost: bool = False) -> tuple[float, tuple[float, float] | None]:
    story = Story(cluster, f"b-{uuid.uuid4().hex[:8]}", artifacts)
    story.create_namespace()
    try:
        server = ArtifactServer(root)
        try:
            uris = {v: server.uri(a.directory / a.model_file) for v, a in artifacts.items()}
            story.promote_v1_then_v2(uris, 1 if standby else 0, check)
            idle = story.idle_cost() if standby and cost else None
            if standby:
                server.close()  # the artifact store is down from here on
            took = story.roll_back()
        finally:
            if not standby:
                server.close()
        return took, idle
    finally:
        story.core.delete_namespace(story.namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    cluster = cluster_env.up()
    if not cluster_env.with_real_node():
        raise SystemExit("needs the real node (run it through realnode.sh)")
    modelwarden_env.install(cluster)
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifacts = build_artifacts(root)
        operator = modelwarden_env.OperatorProcess(cluster, root / "operator.log", env={
            "MODELWARDEN_RESYNC_SECONDS": "5"}).start()
        try:
            results: dict[str, list[float]] = {"standby, store down": [], "no standby, store up": []}
            idle: tuple[float, float] | None = None
            for i in range(args.runs):
                for label, standby in (("standby, store down", True), ("no standby, store up", False)):
                    took, cost = run_once(cluster, artifacts, root, standby=standby, check=operator.check_alive,
                                          cost=i == 0)
                    idle = idle or cost
                    results[label].append(took)
                    print(f"run {i + 1} {label}: {took:.2f}s", flush=True)
        finally:
            operator.stop()
    for label, times in results.items():
        print(f"{label}: trigger → every answer on the prior sha256, {len(times)} runs: "
              f"p50 {percentile(times, 0.5):.2f}s  p95 {percentile(times, 0.95):.2f}s  max {max(times):.2f}s")
    if idle is not None:
        print(f"standby idle cost (1 pod, 20 s): CPU {idle[0]:.1f}m mean, working set {idle[1]:.0f} MiB max")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
