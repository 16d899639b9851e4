"""Install ModelWarden into the local cluster and run the operator as a local process.

The operator runs as the ``modelwarden-operator`` user, bound to exactly the roles shipped in ``manifests/rbac``
(the ClusterRole, and the leader-election Role in modelwarden-system) — so tests exercise the least-privilege
RBAC, not admin.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localenv._proc import (
    REPO_ROOT,
    EnvironmentStartError,
    free_port,
    log_tail,
    run,
    start_process,
    stop_pid,
    wait_until,
)
from localenv.cluster import Cluster
from modelwarden.artifacts.ledger_keys import LedgerSigner

BINDINGS = [
    # The operator's own ServiceAccount: the local user asks TokenRequest for its tokens (the admin API's proof),
    # exactly as the chart's pod does.
    {"apiVersion": "v1", "kind": "ServiceAccount",
     "metadata": {"name": "modelwarden-operator", "namespace": "modelwarden-system"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "modelwarden-operator-token-local-user", "namespace": "modelwarden-system"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "modelwarden-operator-token"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "modelwarden-operator"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-operator-issuer-keys-local-user"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "modelwarden-operator-issuer-keys"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "modelwarden-operator"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-operator-local-user"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelwarden-operator"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "modelwarden-operator"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "modelwarden-operator-leader-election-local-user", "namespace": "modelwarden-system"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                 "name": "modelwarden-operator-leader-election"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "modelwarden-operator"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-operator-ledger-local-user"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelwarden-operator-ledger"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "modelwarden-operator"}]},
    # Everyone may file approvals and actions and read models; the admission policies decide which stand.
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-approval-editors-local"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "modelwarden-approval-editor"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-action-requesters-local"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "modelwarden-action-requester"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "modelwarden-ledger-readers-local"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelwarden-ledger-reader"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
]


def install(cluster: Cluster) -> None:
    """Apply CRDs, the approval admission policy and RBAC (server-side apply: idempotent). The admission file
    creates the modelwarden-system namespace, which the leader-election Role lives in."""
    for path in ("crds", "manifests/admission", "manifests/rbac"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / path))
    cluster.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(b) for b in BINDINGS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/mlmodels.modelwarden.io", "crd/modelapprovals.modelwarden.io",
                    "crd/modelactions.modelwarden.io", "crd/modelledgers.modelwarden.io",
                    "crd/modelledgercheckpoints.modelwarden.io", "crd/trustpolicies.modelwarden.io")
    trusted_ledger_key(cluster)


LEDGER_KEY_FILE = "ledger-key.pem"
TRUST_POLICY = "cluster"


def trusted_ledger_key(cluster: Cluster) -> Path:
    """The local cluster's ledger signing key (made once, kept in its state directory, like a mounted Secret), and
    the cluster's TrustPolicy listing its public key: what a cluster administrator does when installing. Applied
    as admin (server-side apply: idempotent); tests that need another policy apply their own."""
    path = cluster.state_dir / LEDGER_KEY_FILE
    if not path.exists():
        path.write_bytes(LedgerSigner.generate().private_pem())
        path.chmod(0o600)
    signer = LedgerSigner.from_pem(path.read_bytes())
    policy = {"apiVersion": "modelwarden.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": TRUST_POLICY},
              "spec": {"ledgerKeys": [{"keyId": signer.key_id, "publicKey": signer.public_pem(),
                                       "notBefore": "2020-01-01T00:00:00Z"}]}}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(policy))
    return path


def trust_artifact_keys(cluster: Cluster, keys: dict[str, str], manager: str) -> None:
    """As the cluster administrator: the cluster's TrustPolicy trusts these artifact keys (name → PEM), under field
    manager ``manager`` (so the ledger key :func:`trusted_ledger_key` put there stays). A namespace's ConfigMap can
    only narrow this list (issue 27)."""
    policy = {"apiVersion": "modelwarden.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": TRUST_POLICY},
              "spec": {"artifactKeys": [{"name": name, "publicKey": pem} for name, pem in keys.items()]}}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-f", "-",
                    input=json.dumps(policy))


OPERATOR_NAMESPACE = "modelwarden-system"
OPERATOR_SERVICE_ACCOUNT = "modelwarden-operator"


def service_account_token(cluster: Cluster, audience: str, *, namespace: str = OPERATOR_NAMESPACE,
                          name: str = OPERATOR_SERVICE_ACCOUNT, user: str = "admin", seconds: int = 600) -> str:
    """A TokenRequest token of ServiceAccount ``namespace/name`` for ``audience``, asked for as ``user`` (the
    tests' and the demo's way to call a server's admin API: as cluster-admin, with the operator's identity)."""
    out = cluster.kubectl("create", "token", name, "-n", namespace, f"--audience={audience}",
                          f"--duration={seconds}s", user=user)
    return str(out.stdout).strip()


def server_auth_env(cluster: Cluster, *, fault_injection: bool = False, shadow_namespace: str = "default") -> dict[
        str, str]:
    """The environment a model server started as a local process needs to verify its callers, as the operator
    would put it into the model's Deployment: the cluster's issuer keys and issuer, the operator's subject."""
    jwks = str(cluster.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
    token = service_account_token(cluster, "modelwarden.io/admin")
    payload = token.split(".")[1]
    issuer = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"]
    env = {"SERVICE_ACCOUNT_JWKS": jwks, "SERVICE_ACCOUNT_ISSUER": issuer,
           "ADMIN_SUBJECT": f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}",
           "SHADOW_SUBJECT": f"system:serviceaccount:{shadow_namespace}:modelwarden-model-server"}
    if fault_injection:
        env["FAULT_INJECTION"] = "true"
    return env


GATEWAY_API_VERSION = "v1.3.0"


def install_gateway_api(cluster: Cluster) -> None:
    """The Gateway API CRDs, as shipped inside the ``sigs.k8s.io/gateway-api`` Go module (standard channel)."""
    out = run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"],
              "downloading the Gateway API module")
    crds = Path(json.loads(out)["Dir"]) / "config" / "crd" / "standard"
    cluster.kubectl("apply", "--server-side", "-f", str(crds / "gateway.networking.k8s.io_httproutes.yaml"),
                    "-f", str(crds / "gateway.networking.k8s.io_gateways.yaml"),
                    "-f", str(crds / "gateway.networking.k8s.io_gatewayclasses.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/httproutes.gateway.networking.k8s.io")


@dataclass
class OperatorProcess:
    """The operator as a child process; ``kill()`` is a crash (SIGKILL), ``stop()`` a clean shutdown."""

    cluster: Cluster
    log_path: Path
    user: str = "modelwarden-operator"
    env: dict[str, str] = field(default_factory=dict)
    # the user's own kubeconfig unless given (e.g. one naming localenv.apiserver_front instead of the API server)
    kubeconfig: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    liveness_port: int = 0
    metrics_port: int = 0

    def start(self) -> OperatorProcess:
        self.liveness_port, self.metrics_port = free_port(), free_port()
        # The local environment is where model servers may serve /admin/faults (tests call it as cluster-admin).
        env = {"KUBECONFIG": str(self.kubeconfig or self.cluster.kubeconfigs[self.user]),
               "MODELWARDEN_SERVER_FAULT_INJECTION": "true",
               "MODELWARDEN_LEDGER_KEY_FILE": str(self.cluster.state_dir / LEDGER_KEY_FILE), **self.env}
        self.process = start_process(
            [sys.executable, "-m", "modelwarden.handlers",
             f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
             f"--metrics-address=127.0.0.1:{self.metrics_port}"],
            self.log_path, env=env, cwd=REPO_ROOT)
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"

        def alive() -> bool:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until(alive, timeout=60, what="modelwarden operator", log_path=self.log_path, process=self.process)
        return self

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, timeout=15)
            self.process.wait()
            self.process = None

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise EnvironmentStartError(f"the operator died:\n{log_tail(self.log_path, 40)}")

    def metrics(self) -> str:
        """The operator's /metrics page (Prometheus text format)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
