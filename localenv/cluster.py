"""A real Kubernetes cluster on this machine: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
one real worker node (:mod:`localenv.node`: kubelet, kube-proxy, containerd) and KWOK (fake nodes whose pods become
Running and Ready without a kubelet, for scale; tainted, so only pods that ask for them land there — see
:func:`simulated_nodes_namespace`).

The API server listens on the node bridge's address (198.18.0.1, created by the environment; pods reach it there
and through the ``kubernetes`` Service), etcd and the rest on loopback.

Binaries are built once from the Go module proxy by ``hack/build-k8s.sh`` and cached outside the
repository. Authentication is by static tokens; authorization is RBAC. One kubeconfig per user is
written into the state directory; ``up`` prints ``KUBECONFIG=<admin kubeconfig>`` as its last line.

    python -m localenv.cluster up | down | status
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localenv import node as real_node
from localenv._proc import (
    REPO_ROOT,
    EnvironmentStartError,
    cache_dir,
    free_port,
    pid_alive,
    progress,
    run,
    start_process,
    stop_pid,
    wait_until,
)

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.7.0")
FAKE_NODES = 3

# user -> groups. Tokens are random per cluster; the groups are what the tests and policies rely on.
USERS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "finance-approver": ("modelwarden:finance-approvers",),
    "regulatory-approver": ("modelwarden:regulatory-approvers",),
    # One person in both approver groups: must never make a quorum alone.
    "dual-approver": ("modelwarden:finance-approvers", "modelwarden:regulatory-approvers"),
    "developer": (),
    # May ask for rollback, resume and re-enable (ModelActions; manifests/admission/modelwarden-action-policy.yaml).
    "oncall": ("modelwarden:operators",),
    # The identity the operator runs as in tests; bound to exactly the operator's ClusterRole.
    "modelwarden-operator": (),
}


# Namespaces whose pods belong on the simulated KWOK nodes (the operator tests' and benchmarks' fleets of models
# whose servers never need to run): the PodNodeSelector and PodTolerationRestriction admission plugins pin every pod
# created in them there.
SIMULATED_NODES_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps([{**real_node.KWOK_TAINT, "operator": "Equal"}]),
}


def simulated_nodes_namespace(name: str, labels: dict[str, str] | None = None) -> Any:
    """A Namespace whose pods are scheduled onto the KWOK nodes only (a plain body: the Kubernetes client and
    kubectl both take it)."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}, "annotations": dict(SIMULATED_NODES_ANNOTATIONS)}}


@dataclass
class Cluster:
    state_dir: Path
    server: str
    kubeconfigs: dict[str, Path]
    tokens: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfigs["admin"]

    @property
    def bin_dir(self) -> Path:
        return binaries_dir()

    def kubectl(self, *args: str, user: str = "admin", input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl (same release as the API server) as ``user``."""
        done = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfigs[user]), *args],
            input=input, capture_output=True, text=True, check=False,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def healthy(self) -> bool:
        return all(pid_alive(p) for p in self.pids.values()) and _readyz(self.server, self.tokens["admin"],
                                                                           self.state_dir / "pki" / "ca.crt")

    def save(self) -> None:
        data = asdict(self)
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        data["kubeconfigs"] = {u: str(p) for u, p in self.kubeconfigs.items()}
        (self.state_dir / "cluster.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Cluster | None:
        try:
            data = json.loads((state_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            state_dir=Path(data["state_dir"]),
            server=data["server"],
            kubeconfigs={u: Path(p) for u, p in data["kubeconfigs"].items()},
            tokens=data["tokens"],
            pids={k: int(v) for k, v in data["pids"].items()},
        )


def default_state_dir() -> Path:
    return cache_dir() / "cluster"


def binaries_dir() -> Path:
    return cache_dir() / "k8s" / f"{K8S_VERSION}-kwok-{KWOK_VERSION}" / "bin"


BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy", "etcd",
            "kwok")


def build_binaries() -> Path:
    """Build (or reuse) the pinned binaries; the build script prints its own progress."""
    bin_dir = binaries_dir()
    if (bin_dir.parent / ".complete").exists() and all((bin_dir / b).exists() for b in BINARIES):
        return bin_dir
    progress("cluster", f"building Kubernetes {K8S_VERSION} and KWOK {KWOK_VERSION} from the Go module proxy "
             "(once; cached under " + str(bin_dir.parent) + ")")
    env = {**os.environ, "K8S_VERSION": K8S_VERSION, "KWOK_VERSION": KWOK_VERSION,
           "MODELWARDEN_CACHE": str(cache_dir())}
    done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-k8s.sh")], env=env, check=False,
                          stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not (bin_dir.parent / ".complete").exists() \
            or not all((bin_dir / b).exists() for b in BINARIES):
        raise EnvironmentStartError(
            f"building the control plane failed (hack/build-k8s.sh exited {done.returncode}); see its output above")
    return bin_dir


def _readyz(server: str, token: str, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(server + "/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ossl = shutil.which("openssl")
    if not ossl:
        raise EnvironmentStartError("openssl is not installed (apt-get install openssl)")
    what = "creating the cluster's certificates"
    run([ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "ca.key", "-out", pki / "ca.crt",
         "-days", "3650", "-subj", "/CN=modelwarden-local-ca"], what)
    run([ossl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "apiserver.key", "-out",
         pki / "apiserver.csr", "-subj", "/CN=kube-apiserver"], what)
    # The bridge address it listens on and the `kubernetes` Service's VIP: pods reach it through both.
    (pki / "san.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{real_node.HOST_IP},IP:{real_node.API_SERVICE_IP},DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n")
    run([ossl, "x509", "-req", "-in", pki / "apiserver.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
         "-CAcreateserial", "-out", pki / "apiserver.crt", "-days", "3650", "-extfile", pki / "san.ext"], what)
    run([ossl, "genrsa", "-out", pki / "sa.key", "2048"], what)
    run([ossl, "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"], what)
    real_node.make_node_pki(pki)


def _write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "modelwarden-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "modelwarden-local", "user": user}}],
        "current-context": user,
    }, indent=2))
    path.chmod(0o600)


_KWOK_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok"},
    },
    # Real workloads belong on the real node: a pod runs here only if it tolerates this.
    "spec": {"taints": [real_node.KWOK_TAINT]},
    # Sized for bench.scale's 1,000 models promoted with their standbys: up to 4 pods per model (stable, its
    # surge pod, canary, standby) of 50m each. At 32 CPUs the three nodes held 1,920 and promote-all stalled.
    "status": {
        "allocatable": {"cpu": "128", "memory": "512Gi", "pods": "2000"},
        "capacity": {"cpu": "128", "memory": "512Gi", "pods": "2000"},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                     "kubeProxyVersion": "fake"},
    },
}


def with_real_node() -> bool:
    """False when ``MODELWARDEN_NODE=none``: the control plane and KWOK only, on loopback. For a second environment
    on a machine whose one real node another environment holds; tests that need the node then fail and say so."""
    value = os.environ.get("MODELWARDEN_NODE", "real")
    if value not in ("real", "none"):
        raise EnvironmentStartError(f"MODELWARDEN_NODE={value!r}: expected 'real' (the default) or 'none'")
    return value == "real"


def up(state_dir: Path | None = None) -> Cluster:
    """Start the control plane, or return the one already running from ``state_dir``. Idempotent."""
    state_dir = state_dir or default_state_dir()
    has_node = with_real_node()
    existing = Cluster.load(state_dir)
    if existing and existing.healthy():
        progress("cluster", f"already running at {existing.server}")
        if has_node:
            real_node.refresh_images(state_dir)
        return existing
    if existing:
        progress("cluster", "stale state found; restarting")
        down(state_dir)

    bin_dir = build_binaries()
    started = time.monotonic()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    pki, logs = state_dir / "pki", state_dir / "logs"
    logs.mkdir(parents=True)
    # The bridge (and its guard chain and routes) first: the API server binds to its address.
    if has_node:
        real_node.prepare_network(state_dir)
    host = real_node.HOST_IP if has_node else "127.0.0.1"
    _make_pki(pki)

    tokens = {user: secrets.token_hex(16) for user in USERS}
    with (state_dir / "tokens.csv").open("w") as f:
        for i, (user, groups) in enumerate(USERS.items()):
            f.write(f'{tokens[user]},{user},uid-{i},"{",".join(groups)}"\n')

    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://{host}:{api_port}"
    kubeconfigs = {}
    for user in USERS:
        kubeconfigs[user] = state_dir / f"{user}.kubeconfig"
        _write_kubeconfig(kubeconfigs[user], server, pki / "ca.crt", user, tokens[user])
    cluster = Cluster(state_dir=state_dir, server=server, kubeconfigs=kubeconfigs, tokens=tokens)

    try:
        progress("cluster", f"starting etcd on 127.0.0.1:{etcd_port}")
        etcd = start_process([
            bin_dir / "etcd", "--name", "local", "--data-dir", state_dir / "etcd",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], logs / "etcd.log")
        cluster.pids["etcd"] = etcd.pid

        progress("cluster", f"starting kube-apiserver {K8S_VERSION} on {server}")
        apiserver = start_process([
            bin_dir / "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={host}", f"--secure-port={api_port}",
            f"--advertise-address={host}",
            # A loopback address cannot be an endpoint of the `kubernetes` Service; without a node no pod needs one.
            *([] if has_node else ["--endpoint-reconciler-type=none"]),
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={state_dir / 'tokens.csv'}",
            # Client certificates: the kubelet (system:node:<name>) and kube-proxy authenticate with them.
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={real_node.SERVICE_CIDR}",
            "--allow-privileged=true", "--profiling=false",
            f"--cert-dir={pki}",
        ], logs / "kube-apiserver.log")
        cluster.pids["kube-apiserver"] = apiserver.pid
        wait_until(lambda: _readyz(server, tokens["admin"], pki / "ca.crt"), timeout=90,
                   what="kube-apiserver", log_path=logs / "kube-apiserver.log", process=apiserver)

        progress("cluster", "starting kube-controller-manager and kube-scheduler")
        kcm = start_process([
            bin_dir / "kube-controller-manager", f"--kubeconfig={kubeconfigs['admin']}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--controllers=*,-nodeipam",
            # KWOK nodes have no kubelet; on a busy 2-core machine their heartbeats can be late, and the node
            # lifecycle controller would then mark every pod NotReady. It still lifts the startup taints.
            "--node-monitor-grace-period=5m",
        ], logs / "kube-controller-manager.log")
        cluster.pids["kube-controller-manager"] = kcm.pid
        scheduler = start_process([
            bin_dir / "kube-scheduler", f"--kubeconfig={kubeconfigs['admin']}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
        ], logs / "kube-scheduler.log")
        cluster.pids["kube-scheduler"] = scheduler.pid

        progress("cluster", f"starting KWOK {KWOK_VERSION} with {FAKE_NODES} fake nodes")
        kwok = start_process([
            bin_dir / "kwok", f"--kubeconfig={kubeconfigs['admin']}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            "--disregard-status-with-label-selector=",
            f"--cidr={real_node.KWOK_POD_CIDR}", f"--node-ip={real_node.KWOK_NODE_IP}",
            "--node-lease-duration-seconds=40",
        ], logs / "kwok.log")
        cluster.pids["kwok"] = kwok.pid
        cluster.save()

        for i in range(FAKE_NODES):
            node = json.loads(json.dumps(_KWOK_NODE))
            node["metadata"]["name"] = f"kwok-node-{i}"
            node["metadata"]["labels"]["kubernetes.io/hostname"] = f"kwok-node-{i}"
            cluster.kubectl("apply", "-f", "-", input=json.dumps(node))

        def nodes_ready() -> bool:
            out = cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o",
                                  "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").stdout
            taints = cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "jsonpath={.items[*].spec.taints}").stdout
            # Ready, and the node lifecycle controller has lifted the not-ready taint: pods can be scheduled.
            return out.split() == ["True"] * FAKE_NODES and "not-ready" not in taints

        wait_until(nodes_ready, timeout=60, what="KWOK nodes Ready", log_path=logs / "kwok.log", process=kwok)

        def default_service_account() -> bool:
            return cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

        wait_until(default_service_account, timeout=60, what="kube-controller-manager (default ServiceAccount)",
                   log_path=logs / "kube-controller-manager.log", process=kcm)

        admin_kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(kubeconfigs["admin"])]
        if has_node:
            cluster.pids.update(real_node.start(state_dir, server, pki, bin_dir, admin_kubectl))
        else:
            progress("cluster", "no real node (MODELWARDEN_NODE=none): pods run only on the simulated nodes")
        cluster.save()
    except BaseException:
        down(state_dir)
        raise
    progress("cluster", f"ready in {time.monotonic() - started:.1f}s; logs in {logs}")
    return cluster


def down(state_dir: Path | None = None) -> None:
    """Stop every process of the cluster and delete its state. Safe to call when nothing runs."""
    state_dir = state_dir or default_state_dir()
    cluster = Cluster.load(state_dir)
    # The node first (its pods, its network, the kernel settings it changed): even without a saved state.
    real_node.stop(state_dir, cluster.pids if cluster else {})
    if cluster:
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = cluster.pids.get(name)
            if pid:
                stop_pid(pid)
    if state_dir.exists():
        shutil.rmtree(state_dir)


@contextmanager
def running() -> Iterator[Cluster]:
    """The control plane for a test session: reused if `make cluster-up` already started it, else started here and
    stopped at the end."""
    already_running = Cluster.load(default_state_dir())
    reuse = already_running is not None and already_running.healthy()
    cluster = up()
    try:
        yield cluster
    finally:
        if not reuse:
            down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=None, help="default: $MODELWARDEN_CACHE/cluster")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build_binaries())
        elif args.command == "up":
            cluster = up(args.state_dir)
            print(f"KUBECONFIG={cluster.admin_kubeconfig}")
        elif args.command == "down":
            down(args.state_dir)
            progress("cluster", "stopped")
        else:
            found = Cluster.load(args.state_dir or default_state_dir())
            if found and found.healthy():
                print(f"running at {found.server}\nKUBECONFIG={found.admin_kubeconfig}")
            else:
                print("not running")
                return 1
    except EnvironmentStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
