"""The kill switch, end to end: `spec.enabled: false` on the MLModel puts a running inference server into
DISABLED_CONFIG (neutral answers) within seconds, without a restart, and a server started while the switch
is off starts disabled. Real API server, real `python -m model_server` process watching its MLModel
read-only (as the `developer` user, who may only read models)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from model_server.demo_artifact import DemoArtifact, build_demo_artifact, train
from model_server.testing import http_client, serve_subprocess
from tests.integration.modelwarden_helpers import FEEDBACK_STORE, Models, mlmodel


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoArtifact:
    return build_demo_artifact(tmp_path_factory.mktemp("artifact"), fmt="onnx",
                               trained=train("logistic", 4, 300, seed=3))


def _predict(url: str, demo: DemoArtifact) -> dict[str, object]:
    with http_client(url) as c:
        resp = c.post("/predict", json={"features": dict.fromkeys(demo.features, 1.5)})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _until(check: object, timeout: float, what: str) -> float:
    assert callable(check)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{what} not within {timeout}s")


def test_kill_switch_flips_running_servers_and_holds_across_restarts(
        modelwarden_installed: Cluster, api_clients: dict[str, client.ApiClient], namespace: str,
        demo: DemoArtifact, tmp_path: Path) -> None:
    admin = Models(api_clients["admin"], namespace)
    admin.create(mlmodel("scorer", "v1", demo.directory.as_uri(), demo.sha256, **{"serving": {
        "replicas": 1, "neutralPrediction": "0.0", "feedbackStore": FEEDBACK_STORE}}))
    env = {**demo.env("scorer", "v1"), "MLMODEL_WATCH": "true", "MLMODEL_NAMESPACE": namespace,
           "KUBECONFIG": str(modelwarden_installed.kubeconfigs["developer"]), "WARMUP_ROUNDS": "1",
           "FEEDBACK_DSN": str(tmp_path / "fb.sqlite3")}

    with serve_subprocess(env, log_path=tmp_path / "server.log") as (url, proc):
        before = _predict(url, demo)
        assert before["state"] == "ENABLED|OK" and before["neutral"] is False
        pid = proc.pid

        # The runbook's emergency disable, as a person would run it.
        done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", "disable", "scorer", "-n", namespace],
                              env={**os.environ, "KUBECONFIG": str(modelwarden_installed.admin_kubeconfig)},
                              capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "DISABLED_CONFIG" in done.stdout and "gitops" in done.stdout
        took = _until(lambda: _predict(url, demo)["state"] == "DISABLED_CONFIG", 10, "DISABLED_CONFIG")
        disabled = _predict(url, demo)
        assert disabled["neutral"] is True and disabled["prediction"] == 0.0
        assert proc.poll() is None and proc.pid == pid, "no restart"
        print(f"kill switch took effect in {took:.2f}s")

    # A server (re)started while the switch is off comes up disabled and answers neutral at once.
    with serve_subprocess(env, log_path=tmp_path / "server.log") as (url, _):
        first = _predict(url, demo)
        assert first["state"] == "DISABLED_CONFIG" and first["neutral"] is True
        admin.patch_spec("scorer", {"enabled": True})
        _until(lambda: _predict(url, demo)["state"] == "ENABLED|OK", 10, "re-enabled")
        assert _predict(url, demo)["neutral"] is False
