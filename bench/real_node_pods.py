"""Benchmark: pod create → Ready on the real node (kubelet, containerd, runc, CNI bridge), from the locally built
server image, under the `restricted` Pod Security level.

    .venv/bin/python -m bench.real_node_pods [--pods 20]

Each pod is created alone (the previous one is Ready first): the clock starts when the create call returns and stops
when a watch in this process sees the pod's Ready condition True. The pod runs a small HTTP server from the server
image with a TCP readiness probe every second, so a result includes up to one probe period. Then the same number of
pods is created at once and the time until all are Ready is reported.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from kubernetes import client, config, watch

from bench.common import percentile
from localenv import cluster as cluster_env
from localenv import images

SERVER = "import http.server as h; h.ThreadingHTTPServer(('0.0.0.0', 8080), h.BaseHTTPRequestHandler).serve_forever()"


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "pods"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": images.SERVER_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", SERVER],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}}]}}


def ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))


def wait_ready(core: client.CoreV1Api, ns: str, names: set[str], timeout: float = 300) -> None:
    pending = set(names)
    for event in watch.Watch().stream(core.list_namespaced_pod, ns, label_selector="bench=pods",
                                      timeout_seconds=int(timeout)):
        obj = event["object"]
        if obj.metadata.name in pending and ready(obj):
            pending.discard(obj.metadata.name)
            if not pending:
                return
    raise TimeoutError(f"not Ready after {timeout}s: {sorted(pending)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args()
    cluster = cluster_env.up()
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(admin)
    ns = f"bench-pods-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    try:
        one_by_one = []
        for i in range(args.pods):
            started = time.monotonic()
            core.create_namespaced_pod(ns, pod(f"p{i}"))
            wait_ready(core, ns, {f"p{i}"})
            one_by_one.append(time.monotonic() - started)
        core.delete_collection_namespaced_pod(ns, label_selector="bench=pods")
        names = {f"b{i}" for i in range(args.pods)}
        started = time.monotonic()
        for name in sorted(names):
            core.create_namespaced_pod(ns, pod(name))
        wait_ready(core, ns, names)
        at_once = time.monotonic() - started
    finally:
        core.delete_namespace(ns)
    print(f"pod create → Ready on the real node, one at a time, {args.pods} pods: "
          f"p50 {percentile(one_by_one, 0.5):.2f}s  p95 {percentile(one_by_one, 0.95):.2f}s  "
          f"min {min(one_by_one):.2f}s  max {max(one_by_one):.2f}s")
    print(f"{args.pods} pods created at once → all Ready: {at_once:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
