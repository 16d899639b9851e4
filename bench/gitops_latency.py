"""Benchmark: a Git commit → Flux applied it → the operator acted on it. Real control plane, real Flux
(source- and kustomize-controller from hack/build-flux.sh), real operator process, Git served on loopback.

    .venv/bin/python -m bench.gitops_latency [--commits 5]

Each commit changes one MLModel's spec (a new approved version: the version's two approvals are committed with
it). The clock starts before ``git push`` and stops when a poll of the MLModel (every 0.1 s) sees
``metadata.generation`` move (Flux applied it) and then ``status.observedGeneration`` catch up (the operator
acted). source-controller polls the repository every ``GIT_POLL_INTERVAL`` (3 s), which bounds the first part; a
Flux Receiver webhook would remove most of it. Pods are on the simulated KWOK nodes.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from bench.common import FEEDBACK_STORE
from localenv import cluster as cluster_env
from localenv import flux as flux_env
from localenv import modelwarden as modelwarden_env
from modelwarden.api import v1alpha1 as api


def mlmodel(version: str, uri: str, sha: str) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": "m"},
            "spec": {"version": version, "artifact": {"uri": uri, "sha256": sha, "format": "skops"},
                     "featureContract": {"name": "f", "features": ["a", "b"], "nFeatures": 2},
                     "serving": {"replicas": 1, "feedbackStore": FEEDBACK_STORE},
                     "rollout": {"steps": [{"setWeight": 100, "pauseSeconds": 0}]}}}


def approvals(version: str, sha: str) -> dict[str, Any]:
    return {f"approvals/{role}/m-{version}.yaml": {
        "apiVersion": api.API_VERSION, "kind": "ModelApproval", "metadata": {"name": f"m-{version}-{role}"},
        "spec": {"modelRef": {"name": "m"}, "version": version, "sha256": sha, "role": role, "approver": user}}
        for role, user in flux_env.APPROVERS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=5)
    args = parser.parse_args()

    cluster = cluster_env.up()
    modelwarden_env.install(cluster)
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(cluster_env.simulated_nodes_namespace(ns))
    work = Path(tempfile.mkdtemp(prefix="modelwarden-bench-"))
    flux_env.install(cluster)
    controllers = flux_env.start(cluster, work / "flux")
    git = flux_env.GitServer(work)
    operator = modelwarden_env.OperatorProcess(cluster, work / "operator.log").start()
    try:
        repo = flux_env.GitRepo(git, "models")
        flux_env.sync(cluster, ns, repo.url)

        def generations() -> tuple[int, int]:
            try:
                obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, "m")
            except client.ApiException:
                return 0, 0
            return int(obj["metadata"]["generation"]), int((obj.get("status") or {}).get("observedGeneration") or 0)

        def until(check: Any, timeout: float = 120) -> float:
            deadline = time.monotonic() + timeout
            while not check():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not within {timeout}s; kustomize-controller log: {controllers.kustomize_log}")
                time.sleep(0.1)
            return time.monotonic()

        applied, acted = [], []
        for i in range(args.commits + 1):  # the first commit creates the MLModel: not counted
            version = f"v{i + 1}"
            data = f"model {version}".encode()
            (work / f"{version}.skops").write_bytes(data)
            uri, sha = (work / f"{version}.skops").as_uri(), hashlib.sha256(data).hexdigest()
            before = generations()[0]
            start = time.monotonic()
            repo.commit({"models/m.yaml": mlmodel(version, uri, sha), **approvals(version, sha)}, version)
            t_applied = until(lambda b=before: generations()[0] > b)
            t_acted = until(lambda: generations()[1] >= generations()[0])
            if i:
                applied.append(t_applied - start)
                acted.append(t_acted - start)
                print(f"commit {i}: Flux applied {applied[-1]:.2f}s, operator acted {acted[-1]:.2f}s", flush=True)
            time.sleep(2)
        print(f"commit → Flux applied: p50 {statistics.median(applied):.2f}s (max {max(applied):.2f}s); "
              f"commit → operator acted: p50 {statistics.median(acted):.2f}s (max {max(acted):.2f}s); "
              f"{args.commits} commits, source-controller polling every {flux_env.GIT_POLL_INTERVAL}")
    finally:
        operator.stop()
        controllers.stop()
        git.stop()
        core.delete_namespace(ns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
