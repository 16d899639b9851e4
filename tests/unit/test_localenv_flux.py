"""The local environment's Git server and the reading of kustomize-controller's log (localenv/flux.py), without a
cluster: what the Flux tests and the demo count on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from localenv import flux as flux_env


def test_commits_are_served_over_smart_http(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    server = flux_env.GitServer(tmp_path / "srv")
    try:
        repo = flux_env.GitRepo(server, "models")
        first = repo.commit({"models/m.yaml": {"kind": "MLModel", "metadata": {"name": "m"}}}, "v1")
        subprocess.run(["git", "clone", "-q", repo.url, str(tmp_path / "clone")], check=True, capture_output=True)
        assert yaml.safe_load((tmp_path / "clone" / "models" / "m.yaml").read_text())["metadata"]["name"] == "m"
        second = repo.commit({"models/m.yaml": None}, "retire m")
        subprocess.run(["git", "-C", str(tmp_path / "clone"), "pull", "-q"], check=True, capture_output=True)
        assert not (tmp_path / "clone" / "models" / "m.yaml").exists()
        log = subprocess.run(["git", "-C", str(tmp_path / "clone"), "log", "--format=%H"], check=True,
                             capture_output=True, text=True).stdout.split()
        assert log == [second, first]
    finally:
        server.stop()


def test_applies_are_read_per_object_from_kustomize_controllers_log(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [
        {"level": "info", "msg": "server-side apply completed", "output": {"MLModel/ns/m": "created"}},
        {"level": "info", "msg": "Reconciliation finished"},
        {"level": "info", "msg": "server-side apply completed",
         "output": {"MLModel/ns/m": "unchanged", "MLModel/ns/other": "configured"}},
        {"level": "info", "msg": "server-side apply completed", "output": {"MLModel/ns/m": "configured"}},
    ]
    (logs / "kustomize-controller.log").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    controllers = flux_env.Controllers(logs=logs)
    assert controllers.applies("MLModel", "ns", "m") == ["created", "unchanged", "configured"]
    assert controllers.applies("MLModel", "ns", "other") == ["configured"]


def test_spec_owners_ignore_the_status_subresource() -> None:
    obj = {"metadata": {"managedFields": [
        {"manager": "kustomize-controller", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": "modelwarden", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}},
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {}}},
    ]}}
    assert flux_env.spec_owners(obj) == {"kustomize-controller"}
