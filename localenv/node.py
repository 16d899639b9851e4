"""A real worker node beside the KWOK nodes: containerd, runc and the CNI plugins from Debian, kubelet and
kube-proxy (iptables mode) built from the same pinned ``k8s.io/kubernetes`` module as the control plane.

Networks stay on this machine. Everything lives in 198.18.0.0/15 (RFC 2544, benchmarking — never a real
network): pods in 198.18.0.0/16 (this node's pods on 198.18.0.0/24 behind the bridge ``mw-br0``, whose address
198.18.0.1 is also the API server's), Services in 198.19.0.0/16. Before any pod starts:

* a guard chain first in ``FORWARD`` (mangle table: before any filter rule kube-proxy adds) drops everything
  forwarded between the bridge and any other interface (and, if forwarding was off before we started, everything
  forwarded that does not stay on the bridge), because the CNI bridge plugin turns ``net.ipv4.ip_forward`` on at
  the first pod;
* the Service range is routed to the bridge and the rest of 198.18.0.0/15 is a blackhole, so an address not (yet)
  rewritten by kube-proxy — or a KWOK pod's made-up address — can never leave through the uplink;
* no masquerade (the bridge's ``ipMasq`` is off), pods resolve names against their own loopback only, and every
  registry a pull could try is pointed at a closed loopback port: images come from :mod:`localenv.images`.

Teardown undoes all of it, and puts back every kernel setting it or the kubelet changed.
One real node per machine: the bridge, the iptables chains and the ``kubepods`` cgroups are machine-wide.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from localenv import images
from localenv._proc import (
    EnvironmentStartError,
    cache_dir,
    pid_alive,
    progress,
    require_debian_package,
    run,
    start_process,
    stop_pid,
    wait_until,
)

NODE_NAME = "modelwarden-node-0"
BRIDGE = "mw-br0"
HOST_IP = "198.18.0.1"  # the bridge's address: API server, kubelet and the pods' gateway
LOCAL_RANGE = "198.18.0.0/15"
POD_CIDR = "198.18.0.0/16"
NODE_POD_CIDR = "198.18.0.0/24"
SERVICE_CIDR = "198.19.0.0/16"
API_SERVICE_IP = "198.19.0.1"  # first address of the Service range: the `kubernetes` Service
# KWOK's made-up pod and node addresses: inside the blackholed range, never routed anywhere.
KWOK_POD_CIDR = "198.18.255.1/24"
KWOK_NODE_IP = "198.18.255.1"
# The taint that keeps real workloads off KWOK nodes; namespaces that want simulated pods tolerate it.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
GUARD_CHAIN = "MW-NODE-GUARD"
GUARD_TABLE = "mangle"
KUBELET_PORT = 10250
CLOSED_LOOPBACK_REGISTRY = "http://127.0.0.1:9"

# Kernel settings this node (the CNI bridge plugin, the kubelet, us) may change; each is put back on teardown.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINERD_SHARED_DIRS = (Path("/run/containerd/s"), Path("/run/containerd/runc/k8s.io"))
CNI_RESULTS = Path("/var/lib/cni/results")
CNI_NETWORK = "modelwarden-pods"
# Which local environment's state directory owns the machine-wide parts (bridge, chains, cgroups) right now.
OWNER_FILE = Path("/run/modelwarden-real-node.json")


@dataclass(frozen=True)
class NodePaths:
    state: Path  # removed by teardown

    @property
    def pids_file(self) -> Path:
        """Written as each process starts, so a start that fails half-way can still be stopped."""
        return self.state / "pids.json"

    def record(self, pids: dict[str, int]) -> None:
        self.pids_file.write_text(json.dumps(pids))

    def recorded(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.pids_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def containerd_state(self) -> Path:
        return self.state / "containerd"

    @property
    def socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state / "kubelet"

    @property
    def cni_conf(self) -> Path:
        return self.state / "cni" / "net.d"

    @property
    def registry_hosts(self) -> Path:
        return self.state / "registry-hosts"


def containerd_root() -> Path:
    """containerd's image store: kept across clusters so imported images are reused."""
    return cache_dir() / "containerd-root"


def _host_settings_file() -> Path:
    # Outside the cluster's state directory, and written only once: a crashed run must not record the values it
    # changed itself as "the original".
    return cache_dir() / "node-host-settings.json"


def _sysctl_read(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _sysctl_write(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        (Path("/proc/sys") / name).write_text(value + "\n")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise EnvironmentStartError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _iptables(family: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([family, "-w", "5", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise EnvironmentStartError(f"`{family} {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


# --- one real node per machine ------------------------------------------------------------------------------------

def _alive_owner() -> Path | None:
    """The state directory of the environment whose real node runs on this machine now, if any."""
    try:
        owner = Path(json.loads(OWNER_FILE.read_text())["state_dir"])
    except (OSError, ValueError, KeyError):
        return None
    pids: list[int] = list(NodePaths(owner / "node").recorded().values())
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids += [int(p) for p in json.loads((owner / "cluster.json").read_text())["pids"].values()]
    return owner if any(pid_alive(p) for p in pids) else None


def claim(state_dir: Path) -> None:
    """Take the machine-wide parts for ``state_dir``; refuse while another environment's node runs."""
    owner = _alive_owner()
    if owner is not None and owner.resolve() != state_dir.resolve():
        raise EnvironmentStartError(
            f"the real node of another local environment is running on this machine (state in {owner}); there can "
            "be one per machine (its bridge, iptables chains and kubepods cgroups are machine-wide). Stop it with "
            f"`MODELWARDEN_CACHE={owner.parent} make cluster-down`, or use that environment")
    OWNER_FILE.write_text(json.dumps({"state_dir": str(state_dir.resolve())}))


# --- network: created before the API server binds to HOST_IP, removed last --------------------------------------

def prepare_network(state_dir: Path) -> None:
    """The bridge with the host's address, the guard chain and the routes — before anything can send a packet."""
    claim(state_dir)
    require_debian_package("ip", "iproute2", ["/usr/sbin", "/sbin", "/bin"])
    require_debian_package("iptables", "iptables", ["/usr/sbin"])
    require_debian_package("conntrack", "conntrack", ["/usr/sbin"])
    settings = _host_settings_file()
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({name: _sysctl_read(name) for name in SYSCTLS}, indent=2))
    before = json.loads(settings.read_text())

    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "replace", f"{HOST_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")

    forwarding_was_off = before.get("net/ipv4/ip_forward") == "0"
    for family in ("iptables", "ip6tables"):
        # In the mangle table, whose FORWARD hook runs before the filter table's: kube-proxy inserts its own jumps
        # at the head of filter/FORWARD, and nothing it or the CNI plugins add can come before the guard here.
        guard = (family, "-t", GUARD_TABLE)
        if _iptables(*guard, "-n", "-L", GUARD_CHAIN, check=False).returncode != 0:
            _iptables(*guard, "-N", GUARD_CHAIN)
        _iptables(*guard, "-F", GUARD_CHAIN)
        _iptables(*guard, "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        _iptables(*guard, "-A", GUARD_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP")
        if forwarding_was_off:
            # Nothing on this machine forwarded before; the bridge plugin switching forwarding on must not make it
            # a router for anyone else either.
            _iptables(*guard, "-A", GUARD_CHAIN, "!", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        while _iptables(*guard, "-D", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode == 0:
            pass
        _iptables(*guard, "-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    _ip("route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", HOST_IP)
    _ip("route", "replace", "blackhole", LOCAL_RANGE)
    # Pod-to-Service traffic between two pods on the same bridge must pass kube-proxy's iptables rules.
    if not Path("/proc/sys/net/bridge").is_dir():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    if not Path("/proc/sys/net/bridge").is_dir():
        raise EnvironmentStartError("br_netfilter is not available: pod-to-Service traffic on the bridge would "
                                    "bypass kube-proxy")
    else:
        _sysctl_write("net/bridge/bridge-nf-call-iptables", "1")
        _sysctl_write("net/bridge/bridge-nf-call-ip6tables", "1")


def remove_network() -> None:
    """Undo :func:`prepare_network` and everything kube-proxy and the CNI plugins added; safe when nothing is there."""
    for family in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle"):
            rules = subprocess.run([f"{family}-save", "-t", table], capture_output=True, text=True,
                                   check=False).stdout
            chains = [line[1:].split()[0] for line in rules.splitlines() if line.startswith(":")]
            ours = [c for c in chains if c.startswith(("KUBE-", "CNI-")) or c == GUARD_CHAIN]
            # First every jump into our chains from a built-in one, then the chains themselves.
            for line in rules.splitlines():
                parts = shlex.split(line)  # comments are quoted and contain spaces
                if line.startswith("-A ") and "-j" in parts and parts[parts.index("-j") + 1] in ours \
                        and parts[1] not in ours:
                    _iptables(family, "-t", table, "-D", *parts[1:], check=False)
            for chain in ours:
                _iptables(family, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _iptables(family, "-t", table, "-X", chain, check=False)
    _ip("route", "del", "blackhole", LOCAL_RANGE, check=False)
    _ip("route", "del", SERVICE_CIDR, check=False)
    _ip("link", "del", BRIDGE, check=False)
    for cidr in (POD_CIDR, SERVICE_CIDR):
        for direction in ("--orig-dst", "--orig-src"):
            subprocess.run(["conntrack", "-D", direction, cidr], capture_output=True, check=False)
    settings = _host_settings_file()
    if settings.exists():
        for name, value in json.loads(settings.read_text()).items():
            if value is not None and _sysctl_read(name) != value:
                _sysctl_write(name, value)
        settings.unlink()


# --- certificates and configuration -------------------------------------------------------------------------------

def make_node_pki(pki: Path) -> None:
    """Credentials signed by the cluster CA: the kubelet's client (system:node:<name> in system:nodes) and serving
    certificates, kube-proxy's client (system:kube-proxy, bound by the default system:node-proxier binding), and the
    API server's client certificate for the kubelet (logs, exec)."""
    ossl = shutil.which("openssl") or "openssl"
    what = "creating the node's certificates"

    def issue(name: str, subject: str, ext: str | None = None) -> None:
        run([ossl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / f"{name}.key", "-out",
             pki / f"{name}.csr", "-subj", subject], what)
        extra: list[str | os.PathLike[str]] = []
        if ext:
            (pki / f"{name}.ext").write_text(ext)
            extra = ["-extfile", pki / f"{name}.ext"]
        run([ossl, "x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
             "-CAcreateserial", "-out", pki / f"{name}.crt", "-days", "3650", *extra], what)

    issue("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
          "extendedKeyUsage=clientAuth\n")
    issue("kubelet-serving", f"/O=system:nodes/CN=system:node:{NODE_NAME}",
          f"subjectAltName=IP:{HOST_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n")
    issue("kube-proxy", "/CN=system:kube-proxy", "extendedKeyUsage=clientAuth\n")
    issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
          "extendedKeyUsage=clientAuth\n")


def _cert_kubeconfig(path: Path, server: str, pki: Path, name: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": name, "user": {"client-certificate": str(pki / f"{name}.crt"),
                                          "client-key": str(pki / f"{name}.key")}}],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        "current-context": name,
    }, indent=2))
    path.chmod(0o600)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))


def _write_containerd_config(paths: NodePaths) -> Path:
    # Every registry a pull could name — and any other, via _default — goes to a closed port on loopback: the
    # node never reaches out for an image (they are imported), and a missing one fails at once instead.
    for host in ("_default", "docker.io", "ghcr.io", "registry.k8s.io", "quay.io", "localhost"):
        d = paths.registry_hosts / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(f'server = "{CLOSED_LOOPBACK_REGISTRY}"\n\n'
                                      f'[host."{CLOSED_LOOPBACK_REGISTRY}"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = {_toml_str(containerd_root())}
state = {_toml_str(paths.containerd_state / "state")}

[grpc]
  address = {_toml_str(paths.socket)}

[ttrpc]
  address = {_toml_str(str(paths.socket) + ".ttrpc")}

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = {_toml_str(shutil.which("runc") or "/usr/sbin/runc")}

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {_toml_str(paths.cni_conf)}

[{cri}.registry]
  config_path = {_toml_str(paths.registry_hosts)}
"""
    path = paths.state / "containerd.toml"
    path.write_text(config)
    return path


def _write_cni_config(paths: NodePaths) -> None:
    paths.cni_conf.mkdir(parents=True, exist_ok=True)
    (paths.cni_conf / "10-modelwarden.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_POD_CIDR, "gateway": HOST_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))
    (paths.cni_conf / "99-loopback.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "lo",
                                                                 "type": "loopback"}))


def _write_kubelet_config(paths: NodePaths, pki: Path) -> Path:
    resolv = paths.state / "resolv.conf"
    # Pods resolve against their own loopback: no cluster DNS here, and no query ever leaves the machine. (An empty
    # file would make containerd copy the host's resolv.conf into the pods.)
    resolv.write_text("nameserver 127.0.0.1\n")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # This machine kind: cgroup v1, no systemd as PID 1, no CAP_SYS_RESOURCE, no logind.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": True, "cgroupRoot": "/",
        "enforceNodeAllocatable": ["pods"], "oomScoreAdj": 0, "failSwapOn": False,
        "protectKernelDefaults": False, "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
        "address": HOST_IP, "port": KUBELET_PORT, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "readOnlyPort": 0, "rotateCertificates": False, "serverTLSBootstrap": False,
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "resolvConf": str(resolv), "hairpinMode": "hairpin-veth",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "clusterDomain": "cluster.local",
        # A busy shared 2-core machine: don't evict pods over image-disk use on a large, mostly unrelated disk.
        "imageGCHighThresholdPercent": 100, "evictionHard": {"memory.available": "100Mi"},
        "podCIDR": NODE_POD_CIDR, "maxPods": 110,
    }
    path = paths.state / "kubelet.json"
    path.write_text(json.dumps(config, indent=2))
    return path


# --- start and stop ------------------------------------------------------------------------------------------------

def _containerd_ready(ctr: Path, socket: Path) -> bool:
    return subprocess.run([str(ctr), "--address", str(socket), "version"], capture_output=True,
                          check=False).returncode == 0


def _import_images(ctr: Path, paths: NodePaths, built: list[images.BuiltImage]) -> None:
    marker_dir = containerd_root() / "modelwarden-imported"
    marker_dir.mkdir(parents=True, exist_ok=True)
    present = subprocess.run([str(ctr), "--address", str(paths.socket), "-n", "k8s.io", "images", "ls", "-q"],
                             capture_output=True, text=True, check=False).stdout.split()
    for image in built:
        marker = marker_dir / image.archive.name
        if image.reference in present and marker.exists():
            continue
        started = time.monotonic()
        progress("node", f"importing {image.reference} into containerd")
        run([ctr, "--address", paths.socket, "-n", "k8s.io", "images", "import", "--no-unpack",
             image.archive], f"importing {image.reference}")
        for old in marker_dir.glob(image.archive.name.rsplit("-", 1)[0] + "-*"):
            old.unlink()
        marker.touch()
        progress("node", f"imported {image.reference} in {time.monotonic() - started:.0f}s")


def refresh_images(state_dir: Path) -> None:
    """Import into a running node's containerd the images built since it started: a reused cluster must not run
    new pods from images of older sources (the tag stays, the content changes)."""
    paths = NodePaths(state_dir / "node")
    if not paths.socket.exists():
        return
    _import_images(require_debian_package("ctr", "containerd"), paths, images.build_all())


def start(state_dir: Path, server: str, pki: Path, bin_dir: Path, admin_kubectl: list[str]) -> dict[str, int]:
    """Start containerd, import the images, then kubelet and kube-proxy; wait until the node is Ready.

    Returns the PIDs to record (the real processes, started directly, no wrapper shell)."""
    paths = NodePaths(state_dir / "node")
    paths.logs.mkdir(parents=True, exist_ok=True)
    containerd = require_debian_package("containerd", "containerd")
    ctr = require_debian_package("ctr", "containerd")
    require_debian_package("runc", "runc", ["/usr/sbin"])
    require_debian_package("bridge", "containernetworking-plugins", ["/usr/lib/cni"])
    for binary in ("kubelet", "kube-proxy"):
        if not (bin_dir / binary).exists():
            raise EnvironmentStartError(f"{bin_dir / binary} is missing: rebuild with `make cluster-build`")
    built = images.build_all()

    pids: dict[str, int] = {}
    progress("node", "starting containerd (its own root, state and socket)")
    config = _write_containerd_config(paths)
    _write_cni_config(paths)
    proc = start_process([containerd, "--config", config, "--log-level", "warn"], paths.logs / "containerd.log")
    pids["containerd"] = proc.pid
    paths.record(pids)
    wait_until(lambda: _containerd_ready(ctr, paths.socket), timeout=60, what="containerd",
               log_path=paths.logs / "containerd.log", process=proc)
    _import_images(ctr, paths, built)

    kubelet_kubeconfig = paths.state / "kubelet.kubeconfig"
    proxy_kubeconfig = paths.state / "kube-proxy.kubeconfig"
    _cert_kubeconfig(kubelet_kubeconfig, server, pki, "kubelet-client")
    _cert_kubeconfig(proxy_kubeconfig, server, pki, "kube-proxy")
    kubelet_config = _write_kubelet_config(paths, pki)
    progress("node", f"starting kubelet as {NODE_NAME} ({HOST_IP})")
    kubelet = start_process([
        bin_dir / "kubelet", f"--config={kubelet_config}", f"--kubeconfig={kubelet_kubeconfig}",
        f"--root-dir={paths.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={HOST_IP}",
        "--node-labels=modelwarden.io/real-node=true", "--v=1",
    ], paths.logs / "kubelet.log")
    pids["kubelet"] = kubelet.pid
    paths.record(pids)
    progress("node", "starting kube-proxy (iptables mode)")
    proxy = start_process([
        bin_dir / "kube-proxy", f"--kubeconfig={proxy_kubeconfig}", f"--hostname-override={NODE_NAME}",
        "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}", f"--nodeport-addresses={HOST_IP}/32",
        "--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249",
        "--iptables-localhost-nodeports=false",
        # Change no host sysctl: leave conntrack's table size and timeouts as they are.
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0", "--v=1",
    ], paths.logs / "kube-proxy.log")
    pids["kube-proxy"] = proxy.pid
    paths.record(pids)

    def node_ready() -> bool:
        out = subprocess.run([*admin_kubectl, "get", "node", NODE_NAME, "-o",
                              "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                             capture_output=True, text=True, check=False).stdout
        return out.strip() == "True"

    wait_until(node_ready, timeout=120, what=f"node {NODE_NAME} Ready", log_path=paths.logs / "kubelet.log",
               process=kubelet)

    def proxy_synced() -> bool:
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False).stdout
        return f"-d {API_SERVICE_IP}/32" in rules

    wait_until(proxy_synced, timeout=60, what="kube-proxy programming the kubernetes Service",
               log_path=paths.logs / "kube-proxy.log", process=proxy)
    return pids


def _cgroup_dirs(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, deepest first. The kubelet and containerd remove cgroups while we walk
    (a pod's teardown races ours): ``os.walk`` skips a directory that vanished where ``Path.rglob`` raises."""
    return [Path(d) for d, _, _ in os.walk(top, topdown=False)]


def _kill_cgroup_tree(name: str) -> None:
    """Kill every process in the ``name`` cgroup (all hierarchies) and remove the cgroups, deepest first."""
    for _ in range(3):
        for hierarchy in CGROUP_ROOT.iterdir():
            for d in _cgroup_dirs(hierarchy / name):
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.3)
        for hierarchy in CGROUP_ROOT.iterdir():
            for d in _cgroup_dirs(hierarchy / name):
                with contextlib.suppress(OSError):
                    d.rmdir()


def _unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below ``root`` (the kubelet's volumes, its self bind-mount, pod netns
    files, container root filesystems), deepest first."""
    prefix = str(root.resolve())
    for _ in range(3):
        mounts = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == prefix or point.startswith(prefix + "/"):
                    mounts.append(point)
        if not mounts:
            return
        for point in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _containerd_shims(socket: Path) -> list[int]:
    shims = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in cmdline:
                shims.append(int(proc.name))
    return shims


def stop(state_dir: Path, pids: dict[str, int]) -> None:
    """Stop the node and remove every trace of it except containerd's image store. Safe when nothing runs."""
    paths = NodePaths(state_dir / "node")
    pids = {**paths.recorded(), **pids}
    for name in ("kube-proxy", "kubelet"):
        if pids.get(name):
            stop_pid(pids[name])
    owner = _alive_owner()
    if owner is not None and owner.resolve() != state_dir.resolve():
        # Another environment's node owns the machine-wide parts: leave them (and its pods) alone.
        if pids.get("containerd"):
            stop_pid(pids["containerd"])
        return
    _kill_cgroup_tree("kubepods")
    for shim in _containerd_shims(paths.socket):
        stop_pid(shim, timeout=2)
    if pids.get("containerd"):
        stop_pid(pids["containerd"])
    _kill_cgroup_tree("kubepods")
    _unmount_under(paths.state)
    _unmount_under(containerd_root())
    # The shims and runc keep these under /run/containerd whatever containerd's own state directory is.
    for d in CONTAINERD_SHARED_DIRS:
        shutil.rmtree(d, ignore_errors=True)
    for d in (Path("/run/containerd/runc"), Path("/run/containerd")):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if nothing else left anything there
    for stale in CNI_RESULTS.glob(f"{CNI_NETWORK}-*"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(Path("/var/lib/cni/networks") / CNI_NETWORK, ignore_errors=True)
    for netns in (paths.containerd_state / "state").rglob("netns") if paths.containerd_state.exists() else []:
        _unmount_under(netns)
    remove_network()
    OWNER_FILE.unlink(missing_ok=True)


def running(pids: dict[str, int]) -> bool:
    return all(pid_alive(pids[name]) for name in ("containerd", "kubelet", "kube-proxy") if name in pids)
