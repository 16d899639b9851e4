"""An MLModel served for real: the operator's pods run on the real node from the locally built server image, under
the `restricted` Pod Security level, fetch their artifact over HTTP, and answer through the model's Service via
kube-proxy. Killing a server container gets it restarted by the kubelet while the model keeps serving. Then
feedback through the Service: 1,000 predictions, a label for each, every label read back through the Service (either
replica, one shared PostgreSQL store), and again after every pod was deleted."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv import images
from localenv import node as real_node
from localenv.artifacts import ArtifactServer
from localenv.modelwarden import OperatorProcess
from model_server.demo_artifact import build_demo_artifact
from modelwarden.api.v1alpha1 import Phase
from tests.integration.modelwarden_helpers import Models, approval

MODEL = "scorer"
PREDICTIONS = 1000


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, client.exceptions.ApiException):
            pass
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.load(resp))


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.load(resp))


def _post_status(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def _label_state(url: str, prediction_id: str) -> str:
    """``labelled`` when the label posted for ``prediction_id`` is returned with its prediction, else why not."""
    try:
        body = _get(url)
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    if body["prediction"] is None:
        return "no prediction"
    return "labelled" if [f["label"] for f in body["feedback"]] == [1] else f"labels {body['feedback']}"


def _infer(base: str, features: list[str]) -> dict[str, Any]:
    body = {"inputs": [{"name": f, "shape": [1], "datatype": "FP64", "data": [0.5]} for f in features]}
    req = urllib.request.Request(f"{base}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.load(resp))


def _pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"modelwarden.io/model={MODEL}").items)


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def test_model_pods_run_on_the_real_node_serve_through_the_service_and_survive_a_killed_server(
        operator: OperatorProcess, api_clients: dict[str, client.ApiClient], real_namespace: str,
        tmp_path: Path, pods_feedback_store: dict[str, Any]) -> None:
    cluster = operator.cluster
    artifact = build_demo_artifact(tmp_path / "v1", model=MODEL, version="v1", n_features=3, rows=300)
    features = list(artifact.features)
    admin = Models(api_clients["admin"], real_namespace)
    core = client.CoreV1Api(api_clients["admin"])
    with ArtifactServer(tmp_path) as artifacts:
        uri = artifacts.uri(artifact.directory / artifact.model_file)
        admin.create({
            "apiVersion": "modelwarden.io/v1alpha1", "kind": "MLModel", "metadata": {"name": MODEL},
            "spec": {"version": "v1", "artifact": {"uri": uri, "sha256": artifact.sha256, "format": "skops"},
                     "featureContract": {"name": artifact.contract, "features": features,
                                         "nFeatures": len(features)},
                     # One PostgreSQL store for every pod (issue 16), reached over the node's bridge.
                     "serving": {"replicas": 2, "feedbackStore": pods_feedback_store,
                                 "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                               "limits": {"memory": "768Mi"}}}},
        })
        Models(api_clients["finance-approver"], real_namespace).approve(
            approval(MODEL, "v1", artifact.sha256, "finance", "finance-approver"))
        Models(api_clients["regulatory-approver"], real_namespace).approve(
            approval(MODEL, "v1", artifact.sha256, "regulatory", "regulatory-approver"))
        admin.wait_phase(MODEL, Phase.STABLE, timeout=300, check=operator.check_alive)

        pods = _pods(core, real_namespace)
        assert len(pods) == 2 and all(_ready(p) for p in pods)
        for pod in pods:
            assert pod.spec.node_name == real_node.NODE_NAME, "a real pod, not a simulated one"
            assert pod.status.phase == "Running"
            server = next(c for c in pod.status.container_statuses if c.name == "server")
            assert server.image == images.SERVER_IMAGE and server.state.running is not None
            fetch = pod.status.init_container_statuses[0]
            assert fetch.state.terminated is not None and fetch.state.terminated.exit_code == 0

        vip = core.read_namespaced_service(MODEL, real_namespace).spec.cluster_ip
        base = f"http://{vip}:8080"
        _wait(lambda: _get(f"{base}/v2/models/{MODEL}")["parameters"]["sha256"] == artifact.sha256, 60,
              "the model's metadata through its Service")
        answer = _infer(base, features)
        assert answer["model_name"] == MODEL and answer["model_version"] == "v1"

        # Kill one server container's process for real (through containerd), keep asking through the Service.
        victim = pods[0]
        container_id = next(c for c in victim.status.container_statuses if c.name == "server").container_id
        ctr = ["ctr", "--address", str(cluster.state_dir / "node" / "containerd" / "containerd.sock"), "-n", "k8s.io"]
        subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", container_id.split("://", 1)[1]],
                       check=True, capture_output=True)
        answered, failed = 0, 0

        def restarted_and_ready() -> bool:
            nonlocal answered, failed
            try:
                _infer(base, features)
                answered += 1
            except (OSError, urllib.error.HTTPError):
                failed += 1
            pod = core.read_namespaced_pod(victim.metadata.name, real_namespace)
            server = next(c for c in pod.status.container_statuses if c.name == "server")
            return server.restart_count >= 1 and _ready(pod)

        _wait(restarted_and_ready, 120, "the kubelet to restart the killed server container")
        assert answered > failed, f"the model kept serving through the restart ({answered} answered, {failed} failed)"
        after = {p.metadata.name for p in _pods(core, real_namespace)}
        assert victim.metadata.name in after, "the container was restarted in place, not the pod replaced"
        for _ in range(20):
            assert _infer(base, features)["model_version"] == "v1"

        # Feedback through the Service (issue 16): kube-proxy sends each request to either replica, so about half
        # the labels reach a pod that did not make the prediction; the shared store finds it anyway.
        with ThreadPoolExecutor(8) as pool:
            predictions = list(pool.map(lambda i: _post(f"{base}/predict", {"features": {
                f: 0.01 * ((i + k) % 97) for k, f in enumerate(features)}})["predictionId"], range(PREDICTIONS)))
            statuses = list(pool.map(lambda pid: _post_status(f"{base}/feedback", {
                "predictionId": pid, "label": 1, "severity": "minor", "stakeholder": "operations"}), predictions))
        assert Counter(statuses) == Counter({201: PREDICTIONS}), f"feedback through the Service: {Counter(statuses)}"

        def labels_readable() -> Counter[str]:
            with ThreadPoolExecutor(8) as pool:
                return Counter(pool.map(lambda pid: _label_state(f"{base}/feedback/{pid}", pid), predictions))

        assert labels_readable() == Counter({"labelled": PREDICTIONS})

        # Every pod deleted: the replacements serve from the same store, and every acknowledged label is there.
        before = {p.metadata.name for p in _pods(core, real_namespace)}
        core.delete_collection_namespaced_pod(real_namespace, label_selector=f"modelwarden.io/model={MODEL}")

        def replaced() -> bool:
            pods = _pods(core, real_namespace)
            return len(pods) == 2 and not {p.metadata.name for p in pods} & before and all(_ready(p) for p in pods)

        _wait(replaced, 180, "two new Ready pods")
        _wait(lambda: _infer(base, features)["model_version"] == "v1", 60, "the new pods serving")
        assert labels_readable() == Counter({"labelled": PREDICTIONS}), "after every pod was replaced"
