"""Shared steps for tests that drive ModelWarden on the real control plane."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localenv.cluster import Cluster
from localenv.modelwarden import OperatorProcess
from modelwarden.api import v1alpha1 as api

FEATURES = ["f1", "f2", "f3"]


def cli(cluster: Cluster, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``modelwarden ARGS`` as ``user`` runs it (their kubeconfig)."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfigs[user])}
    return subprocess.run([sys.executable, "-m", "modelwarden.cli.main", *args], env=env, capture_output=True,
                          text=True, check=False, timeout=60)


def act(cluster: Cluster, user: str, verb: str, model: str, namespace: str, *args: str) -> None:
    """``modelwarden VERB MODEL`` as ``user``: a ModelAction (the annotations that used to ask for this decide
    nothing)."""
    done = cli(cluster, user, verb, model, "-n", namespace, *args)
    assert done.returncode == 0, done.stderr


def artifact(directory: Path, version: str, payload: bytes | None = None) -> tuple[str, str]:
    """Write a model file; return (file:// uri, sha256)."""
    data = payload if payload is not None else f"model {version}".encode() * 64
    path = directory / f"model-{version}.skops"
    path.write_bytes(data)
    return path.as_uri(), hashlib.sha256(data).hexdigest()


# A Secret the pods would read their PostgreSQL DSN from (issue 16: every MLModel names a store that outlives its
# pods). The simulated nodes run no pods, so it need not exist for the operator's tests.
FEEDBACK_STORE: dict[str, Any] = {"dsnSecretRef": {"name": "feedback-store", "key": "dsn"}}


def mlmodel(name: str, version: str, uri: str, sha256: str, *, steps: list[dict[str, Any]] | None = None,
            replicas: int = 2, routing: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {"steps": steps or [{"setWeight": 10, "pauseSeconds": 1},
                                                  {"setWeight": 100, "pauseSeconds": 1}]}
    if routing is not None:
        rollout["trafficRouting"] = routing
    return {
        "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": name},
        "spec": {
            "version": version,
            "artifact": {"uri": uri, "sha256": sha256, "format": "skops"},
            "featureContract": {"name": "demo", "features": FEATURES, "nFeatures": len(FEATURES)},
            "serving": {"replicas": replicas, "feedbackStore": FEEDBACK_STORE},
            "rollout": rollout,
            **spec,
        },
    }


def approval(model: str, version: str, sha256: str, role: str, approver: str, name: str | None = None,
             signer: str | None = None) -> dict[str, Any]:
    """``signer``: the artifact signer signed off, for a model that requires a signature (issue 27)."""
    spec: dict[str, Any] = {"modelRef": {"name": model}, "version": version, "sha256": sha256, "role": role,
                            "approver": approver}
    if signer is not None:
        spec["signer"] = signer
    return {"apiVersion": api.API_VERSION, "kind": "ModelApproval",
            "metadata": {"name": name or f"{model}-{version}-{role}-{approver}"}, "spec": spec}


class Models:
    """MLModel and ModelApproval calls in one namespace, as one user."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace,
                                                                api.MLMODEL_PLURAL, body))

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace,
                                                             api.MLMODEL_PLURAL, name))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace,
                                                               api.MLMODEL_PLURAL, name, {"spec": spec}))

    def approve(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace,
                                                                api.APPROVAL_PLURAL, body))

    def status(self, name: str) -> api.MLModelStatus:
        return api.MLModelStatus.model_validate(self.get(name).get("status") or {})

    def deployment(self, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except client.exceptions.ApiException as e:
            if e.status == 404:
                return None
            raise

    def events(self, name: str) -> list[client.CoreV1Event]:
        return list(self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=MLModel").items)

    def wait_phase(self, name: str, phase: str, timeout: float = 60, check: Callable[[], None] | None = None,
                   until: Callable[[api.MLModelStatus], bool] | None = None) -> api.MLModelStatus:
        """Wait for ``phase`` (and ``until`` of the status, when given)."""
        deadline = time.monotonic() + timeout
        status = api.MLModelStatus()
        while time.monotonic() < deadline:
            if check is not None:
                check()
            status = self.status(name)
            if status.phase == phase and (until is None or until(status)):
                return status
            time.sleep(0.2)
        pytest.fail(f"{name} not {phase} after {timeout}s; status: {status.model_dump_json(indent=1)}")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# Leader election as the chart runs it: the shipped leader-election Role names exactly this Lease.
LEASE_NAMESPACE, LEASE_NAME = "modelwarden-system", "modelwarden-operator"
LEADER_ELECTION_ENV = {"MODELWARDEN_LEADER_ELECTION": "true", "MODELWARDEN_LEASE_NAMESPACE": LEASE_NAMESPACE,
                       "MODELWARDEN_LEASE_NAME": LEASE_NAME}


def lease_holder(leases: client.CoordinationV1Api) -> str:
    """Who holds the operator's Lease now ("" if nobody, or no Lease)."""
    try:
        return str(leases.read_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE).spec.holder_identity or "")
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return ""
        raise


def campaign_identity(proc: OperatorProcess) -> str:
    """The identity an operator process campaigns for the Lease under (from its log)."""
    found = re.search(r"campaigning for Lease \S+ as (\S+)", proc.log())
    assert found, f"no campaign line in the log:\n{proc.log()[-2000:]}"
    return found.group(1)
