"""Benchmark: apply an approved MLModel → its stable Deployment exists. Real control plane, real operator.

    .venv/bin/python -m bench.apply_latency [--models 50]

For each model, the clock starts when the MLModel create call returns and stops when a watch in this
process sees the ``<model>-stable`` Deployment ADDED. The baseline, measured the same way in the same run,
is this process creating a Deployment itself: the API round trip plus watch delivery that no operator can
beat. Reported: p50/p95 of both, and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import client, config

from bench.common import FEEDBACK_STORE, Approvers, DeploymentWatch, baseline_deployment, percentile
from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from modelwarden.api import v1alpha1 as api


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=50)
    args = parser.parse_args()

    cluster = cluster_env.up()
    modelwarden_env.install(cluster)
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    core, apps, custom = client.CoreV1Api(admin), client.AppsV1Api(admin), client.CustomObjectsApi(admin)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(cluster_env.simulated_nodes_namespace(ns))
    work = Path(tempfile.mkdtemp(prefix="modelwarden-bench-"))
    operator = modelwarden_env.OperatorProcess(cluster, work / "operator.log").start()
    try:
        seen = DeploymentWatch(apps, ns)

        # Baseline: this process creating Deployments directly.
        baseline = []
        for i in range(args.models):
            name = f"baseline-{i}"
            start = time.monotonic()
            apps.create_namespaced_deployment(ns, baseline_deployment(name))
            seen.wait([name], 30)
            baseline.append(seen.seen[name] - start)

        # Approved models: approvals exist before the model, so the quorum is there at once.
        data = b"bench model"
        (work / "m.skops").write_bytes(data)
        uri, sha = (work / "m.skops").as_uri(), hashlib.sha256(data).hexdigest()
        approvers = Approvers(cluster)
        for i in range(args.models):
            approvers.approve(ns, f"m{i}", "v1", sha)
        measured = []
        for i in range(args.models):
            body = {"apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": f"m{i}"},
                    "spec": {"version": "v1", "artifact": {"uri": uri, "sha256": sha},
                             "featureContract": {"name": "fc", "features": ["a"], "nFeatures": 1},
                             "serving": {"replicas": 1, "feedbackStore": FEEDBACK_STORE}}}
            start = time.monotonic()
            custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.MLMODEL_PLURAL, body)
            seen.wait([f"m{i}-stable"], 60)
            measured.append(seen.seen[f"m{i}-stable"] - start)
        seen.stop()
    finally:
        operator.stop()
        core.delete_namespace(ns)

    def ms(v: float) -> str:
        return f"{v * 1000:7.1f} ms"

    b50, b95 = percentile(baseline, 0.5), percentile(baseline, 0.95)
    m50, m95 = percentile(measured, 0.5), percentile(measured, 0.95)
    print(f"apply → stable Deployment, {args.models} models, one at a time (Kubernetes {cluster_env.K8S_VERSION})")
    print(f"  baseline (direct create):  p50 {ms(b50)}  p95 {ms(b95)}  mean {ms(statistics.mean(baseline))}")
    print(f"  modelwarden operator:      p50 {ms(m50)}  p95 {ms(m95)}  mean {ms(statistics.mean(measured))}")
    print(f"  ratio operator/baseline:   p50 {m50 / b50:5.1f}x  p95 {m95 / b95:5.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
