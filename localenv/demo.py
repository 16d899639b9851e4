"""`make demo`: the whole ModelWarden story on one machine, with real parts.

A real control plane with a real node (kubelet, containerd, kube-proxy); the operator installed by the Helm
chart, running as a pod (its ServiceAccount, its namespaced Role, its Lease); the model's pods on the real
node from the locally built server image, under the `restricted` Pod Security level, fetching their artifacts
over HTTP; a real Prometheus scraping the pods with the shipped rules; a load generator sending to the model's
Service ClusterIP through kube-proxy and counting which version answered (each answer's headers). v1 is
approved by finance and regulatory and deployed; v2 walks its canary steps and is promoted; then errors are
injected into v2 and the operator rolls back to v1's SHA256 by itself, halts, and writes the incident down —
the timeline is printed at the end.

With ``--inject drift`` v2 is healthy by every error metric but scores shifted (v1's model, intercept +2): it goes
through a shadow stage first (the ``replicas`` router: its pods are kept out of the Service) and is halted there,
before any user got an answer from it; the stage's numbers and the answers' versions are printed.

With ``--gitops`` every change is a Git commit that a real Flux applies (``localenv/demo_gitops.py``).

    python -m localenv.demo [--keep] [--inject stable|canary|drift] [--gitops]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from localenv import node as real_node
from localenv import postgres as postgres_env
from localenv import prometheus as prometheus_env
from localenv._proc import REPO_ROOT, EnvironmentStartError, wait_until
from localenv._proc import run as run_command
from localenv.artifacts import ArtifactServer
from localenv.modelwarden import service_account_token
from modelwarden.api import v1alpha1 as api

OPERATOR_SECRET = "modelwarden-demo"
FEEDBACK_SECRET = "feedback-store"
PROGRESS_SECONDS = 5
CHART = REPO_ROOT / "charts" / "modelwarden"
NAMESPACE_PREFIX = "demo"
MODEL = "fraud-scorer"
EVALUATION_INTERVAL = 5


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- things that receive what the operator sends out --------------------------------------------------------


class Receiver:
    """A loopback HTTP endpoint standing in for Grafana and the paging webhook; keeps what it was sent."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
                with contextlib.suppress(ValueError):
                    owner.received.append((self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": 1}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()



# --- the model's pods: Prometheus targets, fault injection ---------------------------------------------------


def model_pods(core: client.CoreV1Api, namespace: str, track: str | None = None) -> list[Any]:
    """The model's pods that are Ready and not going away (those a Service sends traffic to)."""
    selector = f"{api.LABEL_MODEL}={MODEL}" + (f",{api.LABEL_TRACK}={track}" if track else "")
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


@dataclass
class PodTargets:
    """Keeps Prometheus' file_sd list equal to the model's Ready pods (what a ServiceMonitor would do)."""

    core: client.CoreV1Api
    namespace: str
    targets_file: Path
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                targets = [{"targets": [f"{p.status.pod_ip}:8080"], "labels": {"instance": p.metadata.name}}
                           for p in model_pods(self.core, self.namespace)]
                tmp = self.targets_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(targets))
                tmp.replace(self.targets_file)
            self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()


def inject_faults(cluster: cluster_env.Cluster, core: client.CoreV1Api, namespace: str, track: str) -> list[str]:
    """Half of each ``track`` pod's requests fail, set through each pod's /admin/faults (served because the demo's
    operator runs with MODELWARDEN_SERVER_FAULT_INJECTION) with a TokenRequest token of the operator's own
    ServiceAccount, asked for as cluster-admin (trusted in the threat model)."""
    operator_pod: Any = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/name=modelwarden").items[0]
    token = service_account_token(cluster, "modelwarden.io/admin", namespace=namespace,
                                  name=str(operator_pod.spec.service_account_name))
    hit = []
    for pod in model_pods(core, namespace, track):
        resp = httpx.post(f"http://{pod.status.pod_ip}:8080/admin/faults",
                          json={"errorRatio": 0.5, "actor": "demo", "reason": "rollback drill"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
        resp.raise_for_status()
        hit.append(pod.metadata.name)
    return hit


# --- traffic ------------------------------------------------------------------------------------------------


@dataclass
class LoadGenerator:
    """~rate requests/s to the model's Service ClusterIP, through kube-proxy, each on a new connection (kube-proxy
    balances connections). Each answer says which version and sha256 served it (response headers set by the
    server): the split printed is what came back, not the weight in status."""

    base: str
    features: list[str]
    rate: float = 40.0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._send, daemon=True).start()

    def _send(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            started = time.monotonic()
            row = {f: rng.uniform(-2, 2) for f in self.features}
            req = urllib.request.Request(f"{self.base}/predict", data=json.dumps({"features": row}).encode(),
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 "Connection": "close"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    version, sha, outcome = resp.headers["x-model-version"], resp.headers["x-model-sha256"], "ok"
            except urllib.error.HTTPError as e:
                version, sha, outcome = e.headers.get("x-model-version", "?"), e.headers.get("x-model-sha256", "?"), \
                    f"http {e.code}"
            except OSError:
                version, sha, outcome = "?", "?", "unreachable"
            self.counts[(version, outcome)] += 1
            self.recent.append((version, sha, outcome))
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def split(self) -> str:
        """The share of each version among the last answers, as they came back."""
        recent = list(self.recent)
        if not recent:
            return "no answers yet"
        by_version = Counter(v for v, _, _ in recent)
        return f"answered (last {len(recent)}): " + " ".join(
            f"{v} {100 * n / len(recent):.0f}%" for v, n in sorted(by_version.items()))

    def serving(self) -> set[str]:
        """The sha256s among the last 100 answers."""
        return {sha for _, sha, _ in list(self.recent)[-100:]}

    def stop(self) -> None:
        self._stop.set()


# --- the story ----------------------------------------------------------------------------------------------


def start_cluster(parts: dict[str, Any]) -> tuple[cluster_env.Cluster, client.CoreV1Api, client.CustomObjectsApi, str]:
    """The control plane with its real node, ModelWarden's CRDs and identities, and a fresh ``restricted``
    namespace for the story (recorded in ``parts`` for the clean-up)."""
    cluster = cluster_env.up()
    if not cluster_env.with_real_node():
        raise EnvironmentStartError("the demo runs on the real node; MODELWARDEN_NODE=none started without it")
    modelwarden_env.install(cluster)
    admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    namespace = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=namespace, labels={"pod-security.kubernetes.io/enforce": "restricted",
                                "pod-security.kubernetes.io/enforce-version": "latest"})))
    parts.update(cluster=cluster, core=core, namespace=namespace)
    return cluster, core, custom, namespace


def start_platform(cluster: cluster_env.Cluster, core: client.CoreV1Api, namespace: str, work: Path,
                   parts: dict[str, Any]) -> Receiver:
    """PostgreSQL for the model's feedback (every pod of every version shares it), Prometheus scraping the model's
    pods with the shipped rules (evaluated every 5 s), the pager/Grafana receiver, and the operator installed by the
    Helm chart as a pod. Each part goes into ``parts`` to be stopped at the end; the receiver is returned."""
    feedback = postgres_env.start(pods=(real_node.HOST_IP, real_node.POD_CIDR))
    parts["postgres"] = feedback
    feedback_dsn = feedback.add_user("feedback", secrets.token_hex(16))
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=FEEDBACK_SECRET), string_data={"dsn": feedback_dsn}))
    receiver = Receiver(real_node.HOST_IP)
    parts["receiver"] = receiver
    rules = work / "rules.yaml"
    rules.write_text((REPO_ROOT / "manifests/prometheus/rules.yaml").read_text().replace("interval: 30s",
                                                                                           "interval: 5s"))
    targets = work / "targets.json"
    targets.write_text("[]")
    prom = prometheus_env.start(work / "prometheus", scrape_interval="2s", rule_files=[rules], file_sd=targets,
                                host=real_node.HOST_IP)
    parts["prometheus"] = prom
    pod_targets = PodTargets(core, namespace, targets)
    pod_targets.start()
    parts["targets"] = pod_targets
    install_operator(cluster, core, namespace, work, prom.url, receiver.url, feedback_dsn)
    return receiver


def cli(cluster: cluster_env.Cluster, user: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": str(cluster.kubeconfigs[user])}, check=False, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"modelwarden {' '.join(args)} as {user} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def wait_for(what: str, check: Callable[[], bool], timeout: float, progress: Callable[[], str] | None = None) -> float:
    """Poll ``check``; a progress line when the model's status changes, and every few seconds for the traffic
    split (the part after ``; answered``), so the output stays readable."""
    started = time.monotonic()
    last, last_said = "", 0.0
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        if progress is not None:
            line = progress()
            status_changed = line.split("; answered")[0] != last.split("; answered")[0]
            if status_changed or (line != last and time.monotonic() - last_said >= PROGRESS_SECONDS):
                say(f"  … {line}")
                last, last_said = line, time.monotonic()
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def status_line(custom: client.CustomObjectsApi, namespace: str, load: LoadGenerator | None = None) -> str:
    obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL)
    st = api.MLModelStatus.model_validate(obj.get("status") or {})
    step = "" if st.current_step_index is None else f" step {st.current_step_index + 1}"
    canary = f" canary {st.canary.version}{step} (weight {st.canary_weight}%)" if st.canary else ""
    budget = f" budget {st.error_budget.remaining_percent}%" if st.error_budget else ""
    answered = f"; {load.split()}" if load is not None else ""
    return f"phase {st.phase}: stable {st.stable.version if st.stable else '-'}{canary}{budget}{answered}"


def with_fault_injection(rendered: str) -> str:
    """The chart's output with MODELWARDEN_SERVER_FAULT_INJECTION=true on the operator container."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container.setdefault("env", []).append({"name": "MODELWARDEN_SERVER_FAULT_INJECTION", "value": "true"})
    return yaml.safe_dump_all(docs)


def install_operator(cluster: cluster_env.Cluster, core: client.CoreV1Api, namespace: str, work: Path,
                     prometheus_url: str, receiver_url: str, feedback_dsn: str) -> None:
    """The chart, as a user installs it (helm template + server-side apply), into the demo namespace: one
    namespace watched, its Role, its Lease; settings from values, the webhook URL from a Secret. The rendered
    operator Deployment gets MODELWARDEN_SERVER_FAULT_INJECTION (the demo injects faults; no chart value can)."""
    helm = Path(run_command(["bash", str(REPO_ROOT / "hack" / "build-helm.sh")], "building helm").splitlines()[-1])
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=OPERATOR_SECRET),
        string_data={"webhook-url": f"{receiver_url}/webhook", "feedback-dsn": feedback_dsn}))
    values = {"rbac": {"scope": "namespace", "createSharedClusterRoles": False},
              # Nothing enforces NetworkPolicy on this node (a plain bridge), so the demo leaves it out.
              "networkPolicy": {"enabled": False},
              "admission": {"enabled": False, "approverGroups": {"finance": "unused"}},
              "config": {"resyncSeconds": 10, "prometheusUrl": prometheus_url,
                         "evaluationInterval": EVALUATION_INTERVAL, "queryStep": EVALUATION_INTERVAL,
                         "grafanaUrl": receiver_url, "webhookFlavor": "pagerduty"},
              "secrets": {"existingSecret": OPERATOR_SECRET}}
    (work / "values.json").write_text(json.dumps(values))
    # The release is named after the namespace: the chart's cluster-scoped objects (the ledger ClusterRole and its
    # binding) carry the release's name, and "modelwarden" would take over the local environment's own binding.
    rendered = run_command([helm, "template", namespace, CHART, "--namespace", namespace,
                            "-f", work / "values.json"], "helm template")
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=with_fault_injection(rendered))

    def ready() -> bool:
        pods: list[Any] = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=modelwarden").items
        return any(p.spec.node_name == real_node.NODE_NAME and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) for p in pods)

    try:
        wait_until(ready, timeout=180, what="the operator pod Ready")
    except EnvironmentStartError:
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=modelwarden").items
        raise EnvironmentStartError(f"the operator pod did not become Ready: {[p.status for p in pods]}") from None


def model_status(custom: client.CustomObjectsApi, namespace: str) -> api.MLModelStatus:
    obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL)
    return api.MLModelStatus.model_validate(obj.get("status") or {})


# Each stable trigger alone, so the story (and the e2e test) knows which one fires: with fast burn off only the
# budget can; with a sustain longer than the demo waits, only fast burn can.
ROLLBACK_POLICIES: dict[str, dict[str, Any]] = {
    "ErrorBudgetExhausted": {"sustainSeconds": 60, "fastBurn": {"enabled": False}},
    "FastBurn": {"sustainSeconds": 3600},
}


# --inject drift: a short shadow stage at the demo's load (~40 requests/s, half mirrored).
DRIFT_SHADOW: dict[str, Any] = {"mirrorPercent": 50, "durationSeconds": 30, "minComparedRequests": 200}


def drifted(trained: tuple[Any, Any]) -> tuple[Any, Any]:
    """The same model with its scores shifted (intercept +2): as fast and error-free as v1, but it disagrees."""
    estimator, sample = trained
    estimator.intercept_ = estimator.intercept_ + 2.0
    return estimator, sample


def mlmodel_body(version: str, uri: str, sha256: str, features: list[str], trigger: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": MODEL},
        "spec": {
            "version": version,
            "artifact": {"uri": uri, "sha256": sha256, "format": "onnx"},
            "featureContract": {"name": "fraud-features", "features": features, "nFeatures": len(features)},
            "serving": {"replicas": 2, "feedbackStore": {"dsnSecretRef": {"name": FEEDBACK_SECRET, "key": "dsn"}}},
            "rollout": {"steps": [{"setWeight": 25, "pauseSeconds": 15}, {"setWeight": 50, "pauseSeconds": 15},
                                  {"setWeight": 100, "pauseSeconds": 5}],
                        "analysis": {"intervalSeconds": EVALUATION_INTERVAL, "minRequests": 10}},
            "slo": {"objective": "99.9"},
            # Short for the demo: a real model keeps the default 15 minutes.
            "rollback": ROLLBACK_POLICIES[trigger],
        },
    }


@contextlib.contextmanager
def stack(keep: bool) -> Iterator[dict[str, Any]]:
    """Everything started, in order; stopped in reverse however the story ends."""
    parts: dict[str, Any] = {}
    was_running = (lambda c: c is not None and c.healthy())(cluster_env.Cluster.load(cluster_env.default_state_dir()))
    work = Path(tempfile.mkdtemp(prefix="modelwarden-demo-"))
    parts["work"] = work
    try:
        yield parts
    finally:
        # flux_sync before flux: the controllers remove their own finalizers.
        for name in ("load", "writes", "flux_sync", "flux", "git", "targets", "prometheus", "receiver", "artifacts"):
            part = parts.get(name)
            if part is not None:
                with contextlib.suppress(Exception):
                    (getattr(part, "stop", None) or part.close)()
        if "postgres" in parts:
            with contextlib.suppress(Exception):
                parts["postgres"].destroy()
        if not keep:
            if "namespace" in parts and "core" in parts:
                with contextlib.suppress(Exception):
                    parts["core"].delete_namespace(parts["namespace"])
                with contextlib.suppress(Exception):  # the release's cluster-scoped objects outlive its namespace
                    kinds = "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding"
                    parts["cluster"].kubectl("delete", kinds, "--ignore-not-found",
                                             "-l", f"app.kubernetes.io/instance={parts['namespace']}")
            if not was_running:
                cluster_env.down()
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept: cluster, namespace {parts.get('namespace')}, files in {work}")


def run(keep: bool, inject: str, trigger: str = "ErrorBudgetExhausted") -> int:
    from model_server.demo_artifact import build_demo_artifact, train

    started = time.monotonic()
    with stack(keep) as parts:
        work: Path = parts["work"]
        say("1/7 local Kubernetes control plane and its real node (built from the Go module proxy on first use)")
        cluster, core, custom, namespace = start_cluster(parts)

        say("2/7 two model versions: trained, saved as ONNX with manifest.json (sha256 of every file), served over "
            f"HTTP on {real_node.HOST_IP} for the pods to fetch")
        v1 = build_demo_artifact(work / "v1", fmt="onnx", model=MODEL, version="v1",
                                 trained=train("logistic", 8, 800, 1))
        v2 = build_demo_artifact(work / "v2", fmt="onnx", model=MODEL, version="v2",
                                 trained=train("logistic", 8, 800, 2), previous=v1.manifest)
        if inject == "drift":
            v2 = build_demo_artifact(work / "v2-drift", fmt="onnx", model=MODEL, version="v2",
                                     trained=drifted(train("logistic", 8, 800, 1)), previous=v1.manifest)
        features = list(v1.features)
        for v in (v1, v2):
            say(f"    {v.manifest.version}: sha256 {v.sha256}")
        artifacts = ArtifactServer(work)
        parts["artifacts"] = artifacts

        say("3/7 Prometheus with the shipped rules, PostgreSQL for the model's feedback (every pod of every version "
            "shares it), and the operator installed by the Helm chart as a pod")
        receiver = start_platform(cluster, core, namespace, work, parts)
        say(f"    operator pod Ready on {real_node.NODE_NAME} (image from operator/Dockerfile, built here)")
        load: LoadGenerator | None = None

        def line() -> str:
            return status_line(custom, namespace, load)

        def finish(track: str, which: str) -> int:
            assert load is not None
            generator = load
            say(f"6/7 inject errors into {which} (half its requests fail, set on each of its pods) — and wait: "
                "nobody is paged to act")
            hit = inject_faults(cluster, core, namespace, track)
            say(f"    faults set on {', '.join(hit)}")
            took = wait_for("automatic rollback", lambda: model_status(custom, namespace).phase == api.Phase.HALTED,
                            240, line)
            back = wait_for("v1 serving again", lambda: generator.serving() == {v1.sha256}, 120, line)
            status = model_status(custom, namespace)
            say(f"    halted {took:.0f}s after the injection; every answer from v1's sha256 {took + back:.0f}s "
                "after it")
            say(f"    {line()}")

            say("7/7 what was written down")
            print(cli(cluster, "developer", "status", MODEL, "-n", namespace), flush=True)
            rb = status.last_rollback
            assert rb is not None
            print(f"\nIncident {rb.id} — {rb.trigger}: {rb.message}", flush=True)
            for entry in rb.timeline:
                print(f"  {entry.at}  {entry.event:<16} {entry.message}", flush=True)
            print(f"  values: {json.dumps(rb.values)}", flush=True)
            incident: Any = core.read_namespaced_config_map(f"{MODEL}-{rb.id}", namespace)
            for name in sorted(incident.data or {}):
                if name.startswith("admin-"):
                    record = json.loads(incident.data[name])
                    print(f"  {name}: " + ", ".join(f"{c['pod']} {c['outcome']}" for c in record["calls"]), flush=True)
            annotations = [b for p, b in receiver.received if p == "/api/annotations"]
            pages = [b for p, b in receiver.received if p == "/webhook"]
            print(f"\nGrafana annotation received: {annotations[0]['text'] if annotations else 'none'}", flush=True)
            print(f"Page sent (PagerDuty Events v2): {pages[0]['payload']['summary'] if pages else 'none'}", flush=True)
            served = load.serving()
            served_sha = served.pop() if len(served) == 1 else f"mixed {sorted(served)}"
            print(f"\nServed now (the last 100 answers through the Service): {served_sha} — v1's sha256 is "
                  f"{v1.sha256}: {'MATCH' if served_sha == v1.sha256 else 'MISMATCH'}", flush=True)
            print(f"answers by version and outcome: {dict(load.counts)}", flush=True)
            say(f"done in {time.monotonic() - started:.0f}s")
            return 0 if served_sha == v1.sha256 and rb.to_sha256 == v1.sha256 else 1

        def finish_drift() -> int:
            """v2 in its shadow stage: halted there, every answer through the Service from v1 meanwhile."""
            assert load is not None
            generator = load
            before = Counter(generator.counts)
            say(f"    shadow stage: the stable mirrors {DRIFT_SHADOW['mirrorPercent']}% of its answered requests to "
                f"v2's pods (not endpoints of Service {MODEL}); v2 must agree with v1 on at least "
                f"{DRIFT_SHADOW['minComparedRequests']} of them")
            took = wait_for("halted in shadow", lambda: model_status(custom, namespace).phase == api.Phase.HALTED,
                            300, line)
            during = generator.counts - before
            status = model_status(custom, namespace)
            say(f"    halted {took:.0f}s after v2's approval; {line()}")
            say("6/7 what the shadow stage measured")
            print(cli(cluster, "developer", "status", MODEL, "-n", namespace), flush=True)
            shadow, halt, rb = status.shadow, status.halt, status.last_rollback
            assert shadow is not None and halt is not None and rb is not None
            print(f"\nHalted in shadow: {halt.reason} — {rb.message}", flush=True)
            print(f"Shadow stage of {shadow.version}: verdict {shadow.verdict}, numbers {json.dumps(shadow.values)}",
                  flush=True)
            say("7/7 who answered the users")
            from_v2 = sum(n for (version, _), n in during.items() if version == "v2")
            print(f"Answers through the Service during the stage: {sum(during.values())}, by version and outcome "
                  f"{dict(during)}; from v2: {from_v2}", flush=True)
            served = generator.serving()
            served_sha = served.pop() if len(served) == 1 else f"mixed {sorted(served)}"
            print(f"Served now (the last 100 answers through the Service): {served_sha} — v1's sha256 is "
                  f"{v1.sha256}: {'MATCH' if served_sha == v1.sha256 else 'MISMATCH'}", flush=True)
            say(f"done in {time.monotonic() - started:.0f}s")
            ok = (from_v2 == 0 and served_sha == v1.sha256 and halt.reason == api.Reason.SHADOW_DISAGREEMENT
                  and shadow.verdict == "Failed")
            return 0 if ok else 1

        say(f"4/7 apply MLModel {MODEL} v1 — nothing is served without finance and regulatory sign-off")
        body = mlmodel_body("v1", artifacts.uri(v1.directory / v1.model_file), v1.sha256, features, trigger)
        if inject == "drift":
            body["spec"]["rollout"]["shadow"] = DRIFT_SHADOW
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, body)
        wait_for("AwaitingApproval", lambda: model_status(custom, namespace).phase == api.Phase.AWAITING_APPROVAL, 60)
        say(f"    {line()}")
        for user, role in (("finance-approver", "finance"), ("regulatory-approver", "regulatory")):
            say(f"    $ modelwarden approve {MODEL} --role {role}   (as {user})")
            say(f"      {cli(cluster, user, 'approve', MODEL, '-n', namespace, '--role', role)}")
        wait_for("v1 Stable", lambda: model_status(custom, namespace).phase == api.Phase.STABLE, 240, line)
        service: Any = core.read_namespaced_service(MODEL, namespace)
        load = LoadGenerator(f"http://{service.spec.cluster_ip}:8080", features)
        load.start()
        parts["load"] = load
        say(f"    load: ~{load.rate:.0f} requests/s to Service {MODEL} at {service.spec.cluster_ip}:8080 (kube-proxy)")
        wait_for("v1 serving", lambda: load.serving() == {v1.sha256} and len(load.recent) >= 50, 90, line)
        say(f"    {line()}")

        say("5/7 v2: approved, then rolled out as a canary through 25% → 50% → 100% with analysis each step")
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL, {
            "spec": {"version": "v2", "artifact": {"uri": artifacts.uri(v2.directory / v2.model_file),
                                                   "sha256": v2.sha256}}})
        for user, role in (("finance-approver", "finance"), ("regulatory-approver", "regulatory")):
            cli(cluster, user, "approve", MODEL, "-n", namespace, "--role", role)
        say("    approved by finance-approver and regulatory-approver")
        if inject == "drift":
            return finish_drift()
        if inject == "canary":
            wait_for("canary answering", lambda: v2.sha256 in load.serving(), 240, line)
            say(f"    {line()}")
            return finish("canary", "the canary v2")
        wait_for("v2 promoted", lambda: (lambda s: s.phase == api.Phase.STABLE and s.stable is not None
                                         and s.stable.version == "v2")(model_status(custom, namespace)), 420, line)
        wait_for("v2 serving", lambda: load.serving() == {v2.sha256}, 90, line)
        say(f"    {line()}")

        time.sleep(EVALUATION_INTERVAL)
        return finish("stable", "v2, now stable,")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the cluster, namespace and files for a look")
    parser.add_argument("--inject", choices=["stable", "canary", "drift"], default="stable",
                        help="break v2 after its promotion (budget/burn trigger) or during its canary (analysis); "
                             "drift: v2 with shifted scores, stopped in its shadow stage")
    parser.add_argument("--trigger", choices=sorted(ROLLBACK_POLICIES), default="ErrorBudgetExhausted",
                        help="with --inject stable: the one stable trigger that is armed")
    parser.add_argument("--gitops", action="store_true",
                        help="drive the story by commits to a Git repository that Flux applies (errors injected into "
                             "v2's canary)")
    args = parser.parse_args(argv)
    if args.gitops:
        from localenv.demo_gitops import run_gitops

        return run_gitops(args.keep)
    return run(args.keep, args.inject, args.trigger)


if __name__ == "__main__":
    sys.exit(main())
