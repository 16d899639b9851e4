"""The real node: pods that really run (containerd, runc, CNI bridge) from images built locally from our own
Dockerfiles, Service traffic through kube-proxy, the API server reachable from a pod, and the network guard in place
before any pod starts."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import client

from localenv import cluster as cluster_env
from localenv import images
from localenv import node as real_node
from tests.integration.modelwarden_helpers import wait_for

# A restricted-level container: what the `restricted` Pod Security level admits.
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
              "seccompProfile": {"type": "RuntimeDefault"}}

# Serves "<pod name>" on :8080, exits on SIGTERM (python's default handler for it is to die).
ECHO_SERVER = """
import http.server, os
name = os.environ["POD_NAME"].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(name))); self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# Lists pods in its own namespace through the `kubernetes` Service VIP, verifying the API server's certificate with
# the ServiceAccount's CA (so the VIP must be in the serving certificate) and authenticating with its token.
API_CLIENT = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ns = open(sa + "namespace").read()
req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/pods",
                             headers={"Authorization": "Bearer " + open(sa + "token").read()})
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
    print("via", host, "status", resp.status, "pods", len(json.load(resp)["items"]))
"""


def _pod(name: str, script: str, *, labels: dict[str, str] | None = None, restart: str = "Always",
         ports: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main", "image": images.SERVER_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", script],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "securityContext": RESTRICTED,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
    }
    if ports:
        container["ports"] = [{"name": "http", "containerPort": 8080}]
        container["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "timeoutSeconds": 1}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5, "containers": [container]}}


def test_real_node_is_registered_with_its_own_credentials(cluster: cluster_env.Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", real_node.NODE_NAME, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == cluster_env.K8S_VERSION
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": real_node.HOST_IP} in node["status"]["addresses"]
    assert not node["spec"].get("taints"), "real workloads must be schedulable on the real node"
    # NodeRestriction is on: the node's own credentials cannot touch another node.
    kubelet_kubeconfig = cluster.state_dir / "node" / "kubelet.kubeconfig"
    other = subprocess.run([str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(kubelet_kubeconfig), "label",
                            "node", "kwok-node-0", "stolen=yes"], capture_output=True, text=True, check=False)
    assert other.returncode != 0 and "forbidden" in other.stderr.lower(), other.stderr
    kwok = json.loads(cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert kwok and all(real_node.KWOK_TAINT in n["spec"].get("taints", []) for n in kwok)


def test_network_guard_and_routes_are_in_place(cluster: cluster_env.Cluster) -> None:
    # mangle/FORWARD runs before filter/FORWARD, where kube-proxy puts its own rules first.
    forward = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    rules = [line for line in forward if line.startswith("-A FORWARD")]
    assert rules[0] == f"-A FORWARD -j {real_node.GUARD_CHAIN}", "the guard comes before every other FORWARD rule"
    guard = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S", real_node.GUARD_CHAIN], capture_output=True,
                           text=True, check=True).stdout
    assert f"-A {real_node.GUARD_CHAIN} -i {real_node.BRIDGE} ! -o {real_node.BRIDGE} -j DROP" in guard
    assert f"-A {real_node.GUARD_CHAIN} ! -i {real_node.BRIDGE} -o {real_node.BRIDGE} -j DROP" in guard
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert "MASQUERADE" not in "\n".join(
        line for line in nat.splitlines() if "KUBE-" not in line), "no masquerade other than kube-proxy's own"
    for address in (real_node.API_SERVICE_IP, "198.19.200.7", "198.18.255.9", "198.18.77.1"):
        matching = json.loads(subprocess.run(["ip", "-j", "route", "show", "match", address], capture_output=True,
                                             text=True, check=True).stdout)
        # The most specific route decides: it must keep the address on the bridge or drop it here.
        best = max(matching, key=lambda r: int(r["dst"].partition("/")[2] or 32) if r["dst"] != "default" else 0)
        assert best.get("dev") == real_node.BRIDGE or best.get("type") == "blackhole", \
            f"{address} must stay on this machine, but routes via {best}"


def test_pods_run_from_the_locally_built_image_and_serve_through_a_service(
        admin_api: client.ApiClient, real_namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    for i in range(2):
        core.create_namespaced_pod(real_namespace, _pod(f"echo-{i}", ECHO_SERVER, labels={"app": "echo"}, ports=True))
    core.create_namespaced_service(real_namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}})

    def both_ready() -> bool:
        pods = core.list_namespaced_pod(real_namespace, label_selector="app=echo").items
        return len(pods) == 2 and all(
            any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])) for p in pods)

    wait_for(both_ready, 120, "two echo pods Ready on the real node")
    pods = core.list_namespaced_pod(real_namespace, label_selector="app=echo").items
    assert {p.spec.node_name for p in pods} == {real_node.NODE_NAME}
    assert all(p.status.pod_ip.startswith("198.18.0.") for p in pods)
    assert {p.status.container_statuses[0].image for p in pods} == {images.SERVER_IMAGE}

    vip = core.read_namespaced_service("echo", real_namespace).spec.cluster_ip
    assert vip.startswith("198.19.")

    def endpoints_ready() -> bool:
        slices = client.DiscoveryV1Api(admin_api).list_namespaced_endpoint_slice(
            real_namespace, label_selector="kubernetes.io/service-name=echo").items
        return sum(len(s.endpoints or []) for s in slices) == 2

    wait_for(endpoints_ready, 30, "the echo Service's two endpoints")
    answers: dict[str, int] = {}

    def ask() -> bool:
        with urllib.request.urlopen(f"http://{vip}/", timeout=5) as resp:
            who = resp.read().decode()
        answers[who] = answers.get(who, 0) + 1
        return True

    wait_for(lambda: _quietly(ask), 30, "the first answer through the Service VIP")
    # kube-proxy programs each endpoint when it syncs, a moment after the EndpointSlice lists it (longer on a
    # loaded machine): wait until both pods have answered once, then count a fresh round.
    wait_for(lambda: _quietly(ask) and len(answers) == 2, 60, "both pods answering through the Service VIP")
    answers.clear()
    for _ in range(200):
        ask()
    assert set(answers) == {"echo-0", "echo-1"}, f"kube-proxy spreads requests over both pods: {answers}"


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
        admin_api: client.ApiClient, real_namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    client.RbacAuthorizationV1Api(admin_api).create_namespaced_role_binding(real_namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "default-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": real_namespace}]})
    core.create_namespaced_pod(real_namespace, _pod("api-client", API_CLIENT, restart="Never"))

    def finished() -> bool:
        return core.read_namespaced_pod("api-client", real_namespace).status.phase in ("Succeeded", "Failed")

    wait_for(finished, 120, "the API client pod to finish")
    # The log comes through the API server from the kubelet (its serving certificate and client authentication).
    log = core.read_namespaced_pod_log("api-client", real_namespace)
    assert core.read_namespaced_pod("api-client", real_namespace).status.phase == "Succeeded", log
    assert f"via {real_node.API_SERVICE_IP} status 200 pods 1" in log


def _quietly(fn: Callable[[], bool]) -> bool:
    try:
        return fn()
    except OSError:
        return False


def test_an_image_that_was_not_built_here_is_never_pulled_from_outside(
        admin_api: client.ApiClient, real_namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    pod = _pod("elsewhere", "pass", restart="Never")
    pod["spec"]["containers"][0]["image"] = "registry.example.org/team/model-server:9.9.9"
    core.create_namespaced_pod(real_namespace, pod)
    messages: list[str] = []

    def pull_failed() -> bool:
        events = core.list_namespaced_event(real_namespace, field_selector="involvedObject.name=elsewhere").items
        messages[:] = [e.message or "" for e in events]
        return any("Failed to pull image" in m for m in messages)

    wait_for(pull_failed, 60, "the kubelet's pull attempt")
    failure = next(m for m in messages if "Failed to pull image" in m)
    # Every registry resolves to a closed port on loopback: no DNS query, no connection leaves the machine.
    assert "127.0.0.1:9" in failure and "connection refused" in failure, failure
