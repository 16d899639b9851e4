"""Flux in the local environment: source-controller and kustomize-controller built from the Go module proxy
(``hack/build-flux.sh``), their CRDs and RBAC taken from the same modules, both run as processes on the host, and
a Git repository served on loopback (``git http-backend`` behind a small HTTP server) that tests and the demo
commit to.

Identities. Each controller runs as a ServiceAccount of its own in ``flux-system`` (a TokenRequest token in a
kubeconfig) bound to the ClusterRole its module ships (``config/rbac/role.yaml``). Flux's manifests also bind
kustomize-controller to ``cluster-admin`` (``cluster-reconciler``); we do not. kustomize-controller applies
nothing as itself: every Kustomization names who it applies as (Flux's multi-tenancy lockdown):

- ``<models ns>/models`` applies ``./models`` as the ServiceAccount ``models-applier`` of that namespace (may edit
  MLModels there, nothing else); kustomize-controller may impersonate exactly that ServiceAccount;
- ``flux-system/<models ns>-approvals-<role>`` applies ``./approvals/<role>`` with the approver's own kubeconfig
  (a Secret in ``flux-system``, outside the tenant namespace), so the approval admission policy still checks
  that ``spec.approver`` is the user applying it and that they are in the role's group. Whoever may push to
  ``approvals/<role>/`` in the repository approves as that person: protect that path (CODEOWNERS) — see
  docs/gitops-flux.md and docs/threat-model.md.

    python -m localenv.flux build | crds
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from localenv._proc import (
    REPO_ROOT,
    EnvironmentStartError,
    cache_dir,
    free_port,
    progress,
    start_process,
    stop_pid,
    wait_until,
)
from localenv.cluster import Cluster

SOURCE_CONTROLLER_VERSION = os.environ.get("SOURCE_CONTROLLER_VERSION", "v1.9.0")
KUSTOMIZE_CONTROLLER_VERSION = os.environ.get("KUSTOMIZE_CONTROLLER_VERSION", "v1.9.0")
NAMESPACE = "flux-system"
MODULES = {"source-controller": ("github.com/fluxcd/source-controller", SOURCE_CONTROLLER_VERSION),
           "kustomize-controller": ("github.com/fluxcd/kustomize-controller", KUSTOMIZE_CONTROLLER_VERSION)}
APPLIER = "models-applier"
# How often source-controller asks the repository for a new commit (a Flux Receiver webhook would make it
# immediate; polling keeps the environment to the two controllers).
GIT_POLL_INTERVAL = "3s"


def binaries_dir() -> Path:
    return cache_dir() / "flux" / f"sc-{SOURCE_CONTROLLER_VERSION}-kc-{KUSTOMIZE_CONTROLLER_VERSION}" / "bin"


def build(timeout: float = 3600) -> Path:
    """The controllers' binaries: built on first use, or waited for while ``make test``'s background build runs
    (hack/build-flux.sh holds a lock while it builds)."""
    done_stamp = binaries_dir().parent / ".complete"
    if not done_stamp.exists():
        progress("flux", "waiting for hack/build-flux.sh (source- and kustomize-controller from the Go module proxy)")
    env = {**os.environ, "MODELWARDEN_CACHE": str(cache_dir()), "SOURCE_CONTROLLER_VERSION": SOURCE_CONTROLLER_VERSION,
           "KUSTOMIZE_CONTROLLER_VERSION": KUSTOMIZE_CONTROLLER_VERSION}
    try:
        done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-flux.sh")], env=env, check=False,
                              stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentStartError(f"building Flux took over {e.timeout:.0f}s; run `bash hack/build-flux.sh` by "
                                    "hand to see its progress") from e
    bin_dir = binaries_dir()
    if done.returncode != 0 or not all((bin_dir / c).is_file() for c in MODULES):
        raise EnvironmentStartError(f"building Flux failed (hack/build-flux.sh exited {done.returncode}); see its "
                                    "output above")
    return bin_dir


def module_dir(controller: str) -> Path:
    """The controller's module in the Go module cache (the build downloaded it; this only looks it up)."""
    module, version = MODULES[controller]
    done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                          check=False, env={**os.environ, "GOFLAGS": "-mod=mod"}, cwd="/")
    try:
        return Path(json.loads(done.stdout)["Dir"])
    except (ValueError, KeyError):
        raise EnvironmentStartError(f"cannot find {module}@{version} in the Go module cache: {done.stderr}") from None


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input="\n---\n".join(json.dumps(o) for o in objects))


def install(cluster: Cluster) -> None:
    """Flux's CRDs (from the modules), the flux-system namespace, each controller's ServiceAccount and ClusterRole
    (its module's ``config/rbac/role.yaml``, renamed after the controller). Idempotent."""
    crds: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for controller in MODULES:
        root = module_dir(controller) / "config"
        for path in sorted((root / "crd" / "bases").glob("*.yaml")):
            crds.extend(_docs(path))
        role = next(d for d in _docs(root / "rbac" / "role.yaml") if d["kind"] == "ClusterRole")
        role["metadata"] = {"name": f"flux-{controller}"}
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": controller, "namespace": NAMESPACE}},
            role,
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"flux-{controller}"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"flux-{controller}"},
             "subjects": [{"kind": "ServiceAccount", "name": controller, "namespace": NAMESPACE}]},
        ]
    _apply(cluster, crds)
    _apply(cluster, objects)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{c['metadata']['name']}" for c in crds))


def kubeconfig(cluster: Cluster, token: str, user: str) -> dict[str, Any]:
    """A self-contained kubeconfig (the CA inline): what kustomize-controller reads from a ``kubeConfig`` Secret."""
    ca = (cluster.state_dir / "pki" / "ca.crt").read_bytes()
    return {"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": cluster.server,
                                                       "certificate-authority-data": base64.b64encode(ca).decode()}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}], "current-context": user}


@dataclass
class Controllers:
    """Both controllers as host processes; ``applies()`` reads what kustomize-controller applied from its log."""

    logs: Path
    pids: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        for pid in self.pids.values():
            stop_pid(pid)
        self.pids.clear()

    @property
    def kustomize_log(self) -> Path:
        return self.logs / "kustomize-controller.log"

    def applies(self, kind: str, namespace: str, name: str) -> list[str]:
        """Every server-side apply kustomize-controller reported for the object, in order: ``created``,
        ``configured`` (it wrote) or ``unchanged`` (its dry run found nothing to change)."""
        key = f"{kind}/{namespace}/{name}"
        actions = []
        for line in self.kustomize_log.read_text(errors="replace").splitlines():
            if "server-side apply completed" not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            output = entry.get("output") or {}
            if key in output:
                actions.append(str(output[key]))
        return actions


def start(cluster: Cluster, work: Path) -> Controllers:
    """Run both controllers (``install`` first). source-controller serves the artifacts it builds on loopback;
    kustomize-controller fetches them from there."""
    bin_dir = build()
    work.mkdir(parents=True, exist_ok=True)
    controllers = Controllers(logs=work / "logs")
    storage_port = free_port()
    (work / "storage").mkdir(exist_ok=True)
    try:
        for controller in MODULES:
            token = cluster.kubectl("create", "token", controller, "-n", NAMESPACE, "--duration=24h").stdout.strip()
            config_path = work / f"{controller}.kubeconfig"
            config_path.write_text(json.dumps(kubeconfig(cluster, token, controller)))
            config_path.chmod(0o600)
            health = free_port()
            args: list[str | Path] = [bin_dir / controller, "--watch-all-namespaces", "--log-encoding=json",
                                      f"--metrics-addr=127.0.0.1:{free_port()}", f"--health-addr=127.0.0.1:{health}",
                                      "--events-addr="]
            if controller == "source-controller":
                args += [f"--storage-path={work / 'storage'}", f"--storage-addr=127.0.0.1:{storage_port}",
                         f"--storage-adv-addr=127.0.0.1:{storage_port}"]
            else:
                # A new commit (the fix) need not wait for the health check of the broken one to time out.
                args += ["--feature-gates=CancelHealthCheckOnNewRevision=true"]
            log = controllers.logs / f"{controller}.log"
            progress("flux", f"starting {controller} as system:serviceaccount:{NAMESPACE}:{controller}")
            proc = start_process(args, log, env={"KUBECONFIG": str(config_path), "RUNTIME_NAMESPACE": NAMESPACE,
                                                 "TUF_ROOT": str(work / "sigstore"), "TMPDIR": str(work)})
            controllers.pids[controller] = proc.pid

            def healthy(port: int = health) -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    return bool(resp.status == 200)

            wait_until(healthy, timeout=60, what=controller, log_path=log, process=proc)
    except BaseException:
        controllers.stop()
        raise
    return controllers


# --- the Git repository -------------------------------------------------------------------------------------


class GitServer:
    """Bare repositories under ``root`` served read-only over Git's smart HTTP protocol (``git http-backend``
    as CGI) on loopback."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._backend()

            def do_POST(self) -> None:
                self._backend()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _backend(self) -> None:
                path, _, query = self.path.partition("?")
                body = self._body()
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(owner.root),
                       "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
                       "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
                done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for raw in head.decode("latin-1").split("\r\n"):
                    name, _, value = raw.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GitRepo:
    """A repository the test or demo commits to (a checkout pushing to a bare repository the server serves)."""

    def __init__(self, server: GitServer, name: str) -> None:
        self.bare = server.root / f"{name}.git"
        self.checkout = server.root / f"{name}-checkout"
        self.url = f"{server.url}/{name}.git"
        self._git("init", "--bare", "--initial-branch=main", str(self.bare), cwd=server.root)
        self._git("init", "--initial-branch=main", str(self.checkout), cwd=server.root)
        self._git("remote", "add", "origin", str(self.bare))

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "ModelWarden demo", "GIT_AUTHOR_EMAIL": "demo@modelwarden.invalid",
               "GIT_COMMITTER_NAME": "ModelWarden demo", "GIT_COMMITTER_EMAIL": "demo@modelwarden.invalid"}
        done = subprocess.run(["git", *args], cwd=cwd or self.checkout, capture_output=True, text=True, env=env,
                              check=False)
        if done.returncode != 0:
            raise EnvironmentStartError(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def commit(self, files: Mapping[str, Any | None], message: str) -> str:
        """Write (text, or an object or list of objects as YAML) or delete (``None``) each path, commit, push; the
        commit's sha."""
        for rel, content in files.items():
            path = self.checkout / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content + "\n")
                continue
            docs = content if isinstance(content, list) else [content]
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self._git("add", "-A")
        self._git("commit", "--allow-empty", "-m", message)
        self._git("push", "-q", "origin", "main")
        return self._git("rev-parse", "HEAD")


# --- what a platform team sets up once per model namespace ------------------------------------------------------


APPROVERS = {"finance": "finance-approver", "regulatory": "regulatory-approver"}


def approvals_kustomization(namespace: str, role: str) -> str:
    return f"{namespace}-approvals-{role}"


def sync(cluster: Cluster, namespace: str, repo_url: str, timeout: str = "10m") -> Synced:
    """Flux objects that apply ``./models`` into ``namespace`` (as its ``models-applier`` ServiceAccount; prune,
    wait for health) and ``./approvals/<role>`` as each approver (from ``flux-system``)."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": APPLIER, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": APPLIER, "namespace": namespace},
         "rules": [{"apiGroups": ["modelwarden.io"], "resources": ["mlmodels"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": APPLIER, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": APPLIER},
         "subjects": [{"kind": "ServiceAccount", "name": APPLIER, "namespace": namespace}]},
        # kustomize-controller may act as this one ServiceAccount, nothing else.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "flux-impersonates-models-applier", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "resourceNames": [APPLIER],
                    "verbs": ["impersonate"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "flux-impersonates-models-applier", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "flux-impersonates-models-applier"},
         "subjects": [{"kind": "ServiceAccount", "name": "kustomize-controller", "namespace": NAMESPACE}]},
        # The approvers' identities apply (server-side apply: patch) and prune (delete) their approvals. Approvals
        # stay immutable (the admission policy); withdrawing one never rolls anything back.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "gitops-approvers", "namespace": namespace},
         "rules": [{"apiGroups": ["modelwarden.io"], "resources": ["modelapprovals"], "verbs": ["patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "gitops-approvers", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gitops-approvers"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                      for user in APPROVERS.values()]},
    ]
    for ns, name in ((namespace, "models"), (NAMESPACE, f"{namespace}-models")):
        objects.append({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {"url": repo_url, "interval": GIT_POLL_INTERVAL, "ref": {"branch": "main"}}})
    objects.append({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                    "metadata": {"name": "models", "namespace": namespace},
                    "spec": {"interval": "10m", "retryInterval": "10s", "sourceRef": {"kind": "GitRepository",
                                                                                        "name": "models"},
                             "path": "./models", "prune": True, "wait": True, "timeout": timeout,
                             "serviceAccountName": APPLIER, "targetNamespace": namespace}})
    for role, user in APPROVERS.items():
        secret = f"approver-{user}"
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": NAMESPACE},
                        "stringData": {"value": json.dumps(kubeconfig(cluster, cluster.tokens[user], user))}})
        objects.append({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                        "metadata": {"name": approvals_kustomization(namespace, role), "namespace": NAMESPACE},
                        "spec": {"interval": "10m", "retryInterval": "10s",
                                 "sourceRef": {"kind": "GitRepository", "name": f"{namespace}-models"},
                                 "path": f"./approvals/{role}", "prune": True, "targetNamespace": namespace,
                                 "kubeConfig": {"secretRef": {"name": secret, "key": "value"}}}})
    _apply(cluster, objects)
    return Synced(cluster, namespace)


FLUX_KINDS = "kustomizations.kustomize.toolkit.fluxcd.io,gitrepositories.source.toolkit.fluxcd.io"


@dataclass
class Synced:
    """The Flux objects ``sync`` made for one namespace. ``stop()`` deletes them while the controllers still run:
    their finalizers would otherwise hold the namespace in Terminating and leave the ``flux-system`` ones behind."""

    cluster: Cluster
    namespace: str

    def stop(self) -> None:
        self.cluster.kubectl("delete", FLUX_KINDS, "--all", "-n", self.namespace, "--ignore-not-found",
                             "--timeout=60s", check=False)
        names = [f"kustomizations.kustomize.toolkit.fluxcd.io/{approvals_kustomization(self.namespace, role)}"
                 for role in APPROVERS]
        self.cluster.kubectl("delete", "-n", NAMESPACE, "--ignore-not-found", "--timeout=60s", *names,
                             f"gitrepositories.source.toolkit.fluxcd.io/{self.namespace}-models", check=False)


def kustomization(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "kustomizations.kustomize.toolkit.fluxcd.io", name, "-n", namespace, "-o", "json")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ready(k: dict[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of a Kustomization's Ready condition."""
    for c in (k.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status")), str(c.get("reason")), str(c.get("message"))
    return "Unknown", "", ""


def applied_revision(k: dict[str, Any]) -> str:
    """The commit sha of the Kustomization's last applied revision (``main@sha1:<sha>``)."""
    match = re.search(r"sha1:([0-9a-f]{40})", (k.get("status") or {}).get("lastAppliedRevision") or "")
    return match.group(1) if match else ""


@dataclass
class Writes:
    """Every write to one MLModel, as a watch on the API server reports it: ``spec`` (``metadata.generation``
    moved: only an apply of a commit may do that), ``status`` (the operator), ``metadata`` (annotations, labels)."""

    custom: Any
    namespace: str
    name: str
    counts: dict[str, int] = field(default_factory=lambda: {"created": 0, "spec": 0, "status": 0, "metadata": 0})
    generations: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Writes:
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        from kubernetes import watch

        last: dict[str, Any] | None = None
        resource_version = ""
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                        self.custom.list_namespaced_custom_object, "modelwarden.io", "v1alpha1", self.namespace,
                        "mlmodels", field_selector=f"metadata.name={self.name}", resource_version=resource_version,
                        timeout_seconds=30):
                    obj = event["object"]
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED" and (last is None or last["metadata"]["uid"] != obj["metadata"]["uid"]):
                        self.counts["created"] += 1
                    elif event["type"] == "MODIFIED" and last is not None:
                        if obj["metadata"]["generation"] != last["metadata"]["generation"]:
                            self.counts["spec"] += 1
                        elif obj.get("status") != last.get("status"):
                            self.counts["status"] += 1
                        else:
                            self.counts["metadata"] += 1
                    if event["type"] != "DELETED":
                        self.generations.append(int(obj["metadata"]["generation"]))
                    last = obj
                    if self._stop.is_set():
                        break
            except Exception:  # a dropped watch: resume from the last resourceVersion seen
                resource_version = ""
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()


def spec_owners(obj: dict[str, Any]) -> set[str]:
    """The field managers owning anything under ``spec`` (the status subresource's managers excluded)."""
    return {m["manager"] for m in obj["metadata"].get("managedFields") or []
            if m.get("subresource") != "status" and "f:spec" in (m.get("fieldsV1") or {})}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    try:
        if args == ["build"]:
            print(build())
        elif args == ["crds"]:
            for controller in MODULES:
                print(module_dir(controller) / "config" / "crd" / "bases")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except EnvironmentStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
