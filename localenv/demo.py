"""`make demo`: the whole ModelWarden story on one machine, with real parts.

A real control plane (KWOK nodes), the real operator (least-privilege user), real `model_server` processes for
the stable and canary tracks (started by a small local "kubelet" that follows the operator's Deployments),
a real Prometheus scraping them with the shipped rules, and a load generator that splits traffic by the
operator's canary weight. v1 is approved by finance and regulatory and deployed; v2 walks its canary steps
and is promoted; then errors are injected into v2 and the operator rolls back to v1's SHA256 by itself,
halts, and writes the incident down — the timeline is printed at the end.

    python -m localenv.demo [--keep] [--inject stable|canary|drift]

``--inject drift``: v2 is healthy by every error metric but its scores are shifted; it goes through a shadow
stage (issue 20) with gatewayAPI routing, disagrees with v1 and is halted there before any user saw it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

from localenv import cluster as cluster_env
from localenv import modelwarden as modelwarden_env
from localenv import prometheus as prometheus_env
from localenv._proc import REPO_ROOT, free_port, stop_pid
from modelwarden.api import v1alpha1 as api

ADMIN_TOKEN = "demo-admin-token"
NAMESPACE_PREFIX = "demo"
MODEL = "fraud-scorer"
EVALUATION_INTERVAL = 5


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- things that receive what the operator sends out --------------------------------------------------------


class Receiver:
    """A loopback HTTP endpoint standing in for Grafana and the paging webhook; keeps what it was sent."""

    def __init__(self) -> None:
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


# --- the local "kubelet" for model servers ------------------------------------------------------------------


@dataclass
class ServerProcess:
    version: str
    sha256: str
    port: int
    process: subprocess.Popen[bytes]
    mirror: str = ""  # the shadow stage's SHADOW_PERCENT when the Deployment asks this server to mirror

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class ServerRunner:
    """Runs one `python -m model_server` per track whose Deployment wants replicas, as its pods would."""

    apps: client.AppsV1Api
    namespace: str
    work: Path
    kubeconfig: Path
    targets_file: Path
    # ready servers, which get traffic (like a Service's endpoints); and ones still starting
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    starting: dict[str, ServerProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._write_targets()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sync()
            self._stop.wait(0.5)

    def sync(self) -> None:
        deployments: list[Any] = self.apps.list_namespaced_deployment(
            self.namespace, label_selector=f"{api.LABEL_MODEL}={MODEL}").items
        wanted: dict[str, dict[str, str]] = {}
        for d in deployments:
            track = d.metadata.labels.get(api.LABEL_TRACK)
            if track and (d.spec.replicas or 0) > 0:
                container = d.spec.template.spec.containers[0]
                wanted[track] = {e.name: e.value for e in container.env if e.value is not None}
        def serves(server: ServerProcess | None, env: dict[str, str]) -> bool:
            return server is not None and (server.version, server.sha256, server.mirror) == (
                env["MODEL_VERSION"], env["ARTIFACT_SHA256"], env.get("SHADOW_PERCENT", ""))

        changed = False
        for track, env in wanted.items():
            if "SHADOW_TARGET_URL" in env and "canary" not in self.servers:
                continue  # the mirror's target (the canary's Service) has no ready endpoint yet
            if not serves(self.servers.get(track), env) and not serves(self.starting.get(track), env):
                if track in self.starting:
                    stop_pid(self.starting.pop(track).process.pid)
                self.starting[track] = self._launch(track, env)
        for track, server in list(self.starting.items()):
            if server.ready():
                # Like a rolling update: the old server goes only once its replacement is ready.
                old = self.servers.get(track)
                self.servers[track] = self.starting.pop(track)
                if old is not None:
                    stop_pid(old.process.pid)
                changed = True
        for track in [t for t in self.servers if t not in wanted]:
            stop_pid(self.servers.pop(track).process.pid)
            changed = True
        if changed:
            self._write_targets()

    def _launch(self, track: str, pod_env: dict[str, str]) -> ServerProcess:
        port = free_port()
        artifact_dir = Path(urllib.parse.unquote(urllib.parse.urlparse(pod_env["ARTIFACT_URI"]).path)).parent
        env = {**os.environ, **pod_env, "HOST": "127.0.0.1", "PORT": str(port), "ARTIFACT_DIR": str(artifact_dir),
               "MLMODEL_NAMESPACE": self.namespace, "KUBECONFIG": str(self.kubeconfig), "ADMIN_TOKEN": ADMIN_TOKEN,
               "FEEDBACK_DSN": str(self.work / f"feedback-{track}.sqlite3"), "WARMUP_ROUNDS": "1",
               "LOG_LEVEL": "WARNING", "HEARTBEAT_SECONDS": "3600"}
        if "SHADOW_TARGET_URL" in pod_env:
            env["SHADOW_TARGET_URL"] = self.servers["canary"].url  # no cluster DNS here: the canary's process
        log = (self.work / f"server-{track}-{pod_env['MODEL_VERSION']}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "model_server"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT)
        return ServerProcess(pod_env["MODEL_VERSION"], pod_env["ARTIFACT_SHA256"], port, proc,
                             pod_env.get("SHADOW_PERCENT", ""))

    def _write_targets(self) -> None:
        targets = [{"targets": [f"127.0.0.1:{s.port}"]} for s in self.servers.values()]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.targets_file)

    def stop(self) -> None:
        self._stop.set()
        for s in [*self.servers.values(), *self.starting.values()]:
            stop_pid(s.process.pid)


# --- traffic ------------------------------------------------------------------------------------------------


@dataclass
class LoadGenerator:
    """~rate requests/s split between the tracks by the operator's current canary weight."""

    runner: ServerRunner
    custom: client.CustomObjectsApi
    namespace: str
    features: list[str]
    rate: float = 60.0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _weight: int = 0

    def start(self) -> None:
        threading.Thread(target=self._follow_weight, daemon=True).start()
        threading.Thread(target=self._send, daemon=True).start()

    def _follow_weight(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                obj: Any = self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace,
                                                                    api.MLMODEL_PLURAL, MODEL)
                self._weight = int((obj.get("status") or {}).get("canaryWeight", 0))
            self._stop.wait(0.5)

    def _send(self) -> None:
        rng = random.Random(7)
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                servers = dict(self.runner.servers)
                track = "canary" if "canary" in servers and rng.random() * 100 < self._weight else "stable"
                server = servers.get(track) or servers.get("stable")
                if server is not None:
                    row = {f: rng.uniform(-2, 2) for f in self.features}
                    try:
                        code = http.post(f"{server.url}/predict", json={"features": row}).status_code
                        self.counts[(server.version, "ok" if code == 200 else f"http {code}")] += 1
                    except httpx.HTTPError:
                        self.counts[(server.version, "unreachable")] += 1
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()


# --- the story ----------------------------------------------------------------------------------------------


def cli(cluster: cluster_env.Cluster, user: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "modelwarden.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": str(cluster.kubeconfigs[user])}, check=False, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"modelwarden {' '.join(args)} as {user} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def wait_for(what: str, check: Callable[[], bool], timeout: float, progress: Callable[[], str] | None = None) -> float:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        if progress is not None:
            line = progress()
            if line != last:
                say(f"  … {line}")
                last = line
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def status_line(custom: client.CustomObjectsApi, namespace: str) -> str:
    obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL)
    st = api.MLModelStatus.model_validate(obj.get("status") or {})
    step = "" if st.current_step_index is None else f" step {st.current_step_index + 1}"
    if st.shadow is not None and st.canary is not None and st.shadow.version == st.canary.version \
            and st.shadow.verdict != "Passed":
        step = f" in shadow ({st.shadow.verdict})"
    canary = f" canary {st.canary.version}{step} at {st.canary_weight}%" if st.canary else ""
    budget = f" budget {st.error_budget.remaining_percent}%" if st.error_budget else ""
    return f"phase {st.phase}: stable {st.stable.version if st.stable else '-'}{canary}{budget}"


def model_status(custom: client.CustomObjectsApi, namespace: str) -> api.MLModelStatus:
    obj: Any = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL)
    return api.MLModelStatus.model_validate(obj.get("status") or {})


# Each stable trigger alone, so the story (and the e2e test) knows which one fires: with fast burn off only the
# budget can; with a sustain longer than the demo waits, only fast burn can.
ROLLBACK_POLICIES: dict[str, dict[str, Any]] = {
    "ErrorBudgetExhausted": {"sustainSeconds": 60, "fastBurn": {"enabled": False}},
    "FastBurn": {"sustainSeconds": 3600},
}


# --inject drift: a shadow stage before the steps (gatewayAPI routing holds the candidate without users). At the
# demo's ~60 requests/s, 50% mirrored reaches 200 compared requests in about 7 s.
SHADOW_ROUTE = "fraud-scoring"
SHADOW = {"mirrorPercent": 50, "durationSeconds": 30, "minComparedRequests": 200}


def with_shadow(body: dict[str, Any]) -> dict[str, Any]:
    body["spec"]["rollout"] |= {"trafficRouting": {"type": "gatewayAPI", "gatewayAPI": {"httpRoute": SHADOW_ROUTE}},
                                "shadow": SHADOW}
    return body


def mlmodel_body(version: str, uri: str, sha256: str, features: list[str], trigger: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION, "kind": "MLModel", "metadata": {"name": MODEL},
        "spec": {
            "version": version,
            "artifact": {"uri": uri, "sha256": sha256, "format": "onnx"},
            "featureContract": {"name": "fraud-features", "features": features, "nFeatures": len(features)},
            "serving": {"replicas": 2},
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
        for name in ("load", "runner", "operator", "prometheus", "receiver"):
            part = parts.get(name)
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if not keep:
            if "namespace" in parts and "core" in parts:
                with contextlib.suppress(Exception):
                    parts["core"].delete_namespace(parts["namespace"])
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
        say("1/7 local Kubernetes control plane (built from the Go module proxy on first use)")
        cluster = cluster_env.up()
        modelwarden_env.install(cluster)
        admin = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
        core, apps, custom = client.CoreV1Api(admin), client.AppsV1Api(admin), client.CustomObjectsApi(admin)
        namespace = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
        core.create_namespace(cluster_env.simulated_nodes_namespace(namespace))
        parts.update(core=core, namespace=namespace)

        say("2/7 two model versions: trained, saved as ONNX with manifest.json (sha256 of every file)")
        v1 = build_demo_artifact(work / "v1", fmt="onnx", model=MODEL, version="v1",
                                 trained=train("logistic", 8, 800, 1))
        trained_v2 = train("logistic", 8, 800, 2)
        if inject == "drift":
            # healthy by every error metric, but a retrain whose scores moved: v1's model with a shifted intercept
            trained_v2 = train("logistic", 8, 800, 1)
            trained_v2[0].intercept_ = trained_v2[0].intercept_ + 2.0
        v2 = build_demo_artifact(work / "v2", fmt="onnx", model=MODEL, version="v2",
                                 trained=trained_v2, previous=v1.manifest)
        features = list(v1.features)
        for v in (v1, v2):
            say(f"    {v.manifest.version}: sha256 {v.sha256}")

        say("3/7 Prometheus with the shipped rules, the operator, and a local runner for the model servers")
        receiver = Receiver()
        parts["receiver"] = receiver
        rules = work / "rules.yaml"
        rules.write_text((REPO_ROOT / "manifests/prometheus/rules.yaml").read_text().replace("interval: 30s",
                                                                                               "interval: 5s"))
        targets = work / "targets.json"
        targets.write_text("[]")
        prom = prometheus_env.start(work / "prometheus", scrape_interval="2s", rule_files=[rules], file_sd=targets)
        parts["prometheus"] = prom
        operator = modelwarden_env.OperatorProcess(cluster, work / "operator.log", env={
            "MODELWARDEN_PROMETHEUS_URL": prom.url, "MODELWARDEN_EVALUATION_INTERVAL": str(EVALUATION_INTERVAL),
            # the demo's rules run every 5 s, so its 60 s sustain window is 12 query steps
            "MODELWARDEN_QUERY_STEP": str(EVALUATION_INTERVAL),
            "MODELWARDEN_GRAFANA_URL": receiver.url, "MODELWARDEN_WEBHOOK_URL": f"{receiver.url}/webhook",
            "MODELWARDEN_WEBHOOK_FLAVOR": "pagerduty", "MODELWARDEN_RESYNC_SECONDS": "10"}).start()
        parts["operator"] = operator
        runner = ServerRunner(apps, namespace, work, cluster.kubeconfigs["developer"], targets)
        runner.start()
        parts["runner"] = runner
        load = LoadGenerator(runner, custom, namespace, features)
        load.start()
        parts["load"] = load

        def finish(target: ServerProcess, which: str) -> int:
            say(f"6/7 inject errors into {which} (half its requests fail) — and wait: nobody is paged to act")
            injected = time.monotonic()
            resp = httpx.post(f"{target.url}/admin/faults",
                              json={"errorRatio": 0.5, "actor": "demo", "reason": "rollback drill"},
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            resp.raise_for_status()
            took = wait_for("automatic rollback", lambda: model_status(custom, namespace).phase == api.Phase.HALTED,
                            240, lambda: status_line(custom, namespace))
            wait_for("v1 serving again",
                     lambda: "stable" in runner.servers and runner.servers["stable"].version == "v1", 60)
            status = model_status(custom, namespace)
            served: Any = apps.read_namespaced_deployment(f"{MODEL}-stable", namespace)
            served_sha = served.spec.template.metadata.annotations[api.ANNOTATION_SHA256]
            say(f"    rolled back {time.monotonic() - injected:.0f}s after the injection (halted after {took:.0f}s)")

            say("7/7 what was written down")
            print(cli(cluster, "developer", "status", MODEL, "-n", namespace), flush=True)
            rb = status.last_rollback
            assert rb is not None
            print(f"\nIncident {rb.id} — {rb.trigger}: {rb.message}", flush=True)
            for entry in rb.timeline:
                print(f"  {entry.at}  {entry.event:<16} {entry.message}", flush=True)
            print(f"  values: {json.dumps(rb.values)}", flush=True)
            annotations = [b for p, b in receiver.received if p == "/api/annotations"]
            pages = [b for p, b in receiver.received if p == "/webhook"]
            print(f"\nGrafana annotation received: {annotations[0]['text'] if annotations else 'none'}", flush=True)
            print(f"Page sent (PagerDuty Events v2): {pages[0]['payload']['summary'] if pages else 'none'}", flush=True)
            print(f"\nServed now: {served_sha} — v1's sha256 is {v1.sha256}: "
                  f"{'MATCH' if served_sha == v1.sha256 else 'MISMATCH'}", flush=True)
            print(f"traffic by version and outcome: {dict(load.counts)}", flush=True)
            say(f"done in {time.monotonic() - started:.0f}s")
            return 0 if served_sha == v1.sha256 and rb.to_sha256 == v1.sha256 else 1


        say(f"4/7 apply MLModel {MODEL} v1 — nothing is served without finance and regulatory sign-off")
        body = mlmodel_body("v1", (v1.directory / v1.model_file).as_uri(), v1.sha256, features, trigger)
        if inject == "drift":
            modelwarden_env.install_gateway_api(cluster)
            custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": SHADOW_ROUTE},
                "spec": {"rules": [{"backendRefs": [{"name": f"{MODEL}-stable", "port": 8080, "weight": 100},
                                                    {"name": f"{MODEL}-canary", "port": 8080, "weight": 0}]}]}})
            body = with_shadow(body)
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, body)
        wait_for("AwaitingApproval", lambda: model_status(custom, namespace).phase == api.Phase.AWAITING_APPROVAL, 60)
        say(f"    {status_line(custom, namespace)}")
        for user, role in (("finance-approver", "finance"), ("regulatory-approver", "regulatory")):
            say(f"    $ modelwarden approve {MODEL} --role {role}   (as {user})")
            say(f"      {cli(cluster, user, 'approve', MODEL, '-n', namespace, '--role', role)}")
        wait_for("v1 Stable", lambda: model_status(custom, namespace).phase == api.Phase.STABLE, 120,
                 lambda: status_line(custom, namespace))
        wait_for("v1 serving", lambda: "stable" in runner.servers and sum(
            n for (v, outcome), n in load.counts.items() if v == "v1" and outcome == "ok") > 50, 90)
        say(f"    {status_line(custom, namespace)}; traffic: {dict(load.counts)}")

        say("5/7 v2: approved, then rolled out as a canary through 25% → 50% → 100% with analysis each step")
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.MLMODEL_PLURAL, MODEL, {
            "spec": {"version": "v2", "artifact": {"uri": (v2.directory / v2.model_file).as_uri(),
                                                   "sha256": v2.sha256}}})
        for user, role in (("finance-approver", "finance"), ("regulatory-approver", "regulatory")):
            cli(cluster, user, "approve", MODEL, "-n", namespace, "--role", role)
        say("    approved by finance-approver and regulatory-approver")
        if inject == "drift":
            return shadow_story(cluster, custom, namespace, runner, load, receiver, started)
        if inject == "canary":
            wait_for("canary serving", lambda: "canary" in runner.servers
                     and model_status(custom, namespace).canary_weight > 0, 120, lambda: status_line(custom, namespace))
            return finish(runner.servers["canary"], "the canary v2")
        wait_for("v2 promoted", lambda: (lambda s: s.phase == api.Phase.STABLE and s.stable is not None
                                         and s.stable.version == "v2")(model_status(custom, namespace)), 240,
                 lambda: status_line(custom, namespace))
        wait_for("v2 serving", lambda: "stable" in runner.servers and runner.servers["stable"].version == "v2", 60)
        say(f"    {status_line(custom, namespace)}; traffic: {dict(load.counts)}")

        time.sleep(EVALUATION_INTERVAL)
        return finish(runner.servers["stable"], "v2, now stable,")



def shadow_story(cluster: cluster_env.Cluster, custom: client.CustomObjectsApi, namespace: str,
                 runner: ServerRunner, load: LoadGenerator, receiver: Receiver, started: float) -> int:
    """--inject drift: v2 in shadow, compared with v1 on mirrored live traffic, halted there."""
    say(f"6/7 shadow stage: v1 mirrors {SHADOW['mirrorPercent']}% of its answered requests to v2, which no user sees")
    wait_for("shadow stage running", lambda: (lambda s: s.shadow is not None and s.shadow.verdict == "Running")(
        model_status(custom, namespace)), 120, lambda: status_line(custom, namespace))
    running = time.monotonic()
    took = wait_for("v2 halted in shadow", lambda: model_status(custom, namespace).phase == api.Phase.HALTED, 240,
                    lambda: status_line(custom, namespace))
    status = model_status(custom, namespace)
    say(f"    halted {took:.0f}s after the stage started ({time.monotonic() - running:.0f}s)")
    say("7/7 what was written down")
    print(cli(cluster, "developer", "status", MODEL, "-n", namespace), flush=True)
    rb = status.last_rollback
    assert rb is not None
    print(f"\nIncident {rb.id} — {rb.trigger}: {rb.message}\n  values: {json.dumps(rb.values)}", flush=True)
    pages = [b for p, b in receiver.received if p == "/webhook"]
    print(f"Page sent (PagerDuty Events v2): {pages[0]['payload']['summary'] if pages else 'none'}", flush=True)
    user_answers_from_v2 = sum(n for (v, _), n in load.counts.items() if v == "v2")
    print(f"traffic by version and outcome: {dict(load.counts)} — user answers from v2: {user_answers_from_v2}",
          flush=True)
    say(f"done in {time.monotonic() - started:.0f}s")
    ok = (status.halt is not None and status.halt.reason == api.Reason.SHADOW_DISAGREEMENT
          and user_answers_from_v2 == 0 and status.stable is not None and status.stable.version == "v1")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the cluster, namespace and files for a look")
    parser.add_argument("--inject", choices=["stable", "canary", "drift"], default="stable",
                        help="break v2 after its promotion (budget/burn trigger) or during its canary (analysis); "
                             "drift: v2 disagrees with v1 and is stopped in its shadow stage")
    parser.add_argument("--trigger", choices=sorted(ROLLBACK_POLICIES), default="ErrorBudgetExhausted",
                        help="with --inject stable: the one stable trigger that is armed")
    args = parser.parse_args(argv)
    return run(args.keep, args.inject, args.trigger)


if __name__ == "__main__":
    sys.exit(main())
