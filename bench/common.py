"""What the operator benchmarks share: a metrics exporter that plays models, watches and log parsing."""

from __future__ import annotations

import collections
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client, config, watch

from localenv.cluster import Cluster
from modelwarden.api import v1alpha1 as api

# Every MLModel names a feedback store that outlives its pods (issue 16); the simulated nodes run no pods, so the
# Secret need not exist.
FEEDBACK_STORE: dict[str, Any] = {"dsnSecretRef": {"name": "feedback-store", "key": "dsn"}}

ModelKey = tuple[str, str]  # (namespace, model)


class Approvers:
    """Both sign-offs, each from its own identity: ModelApprovals are admitted only from the approver named in
    them, a member of the role's group (manifests/admission)."""

    def __init__(self, cluster: Cluster) -> None:
        self._apis = {
            (role, user): client.CustomObjectsApi(
                config.new_client_from_config(config_file=str(cluster.kubeconfigs[user])))  # type: ignore[no-untyped-call]
            for role, user in (("finance", "finance-approver"), ("regulatory", "regulatory-approver"))}

    def approve(self, namespace: str, model: str, version: str, sha256: str) -> None:
        for (role, user), custom in self._apis.items():
            custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.APPROVAL_PLURAL, {
                "apiVersion": api.API_VERSION, "kind": "ModelApproval",
                "metadata": {"name": f"{model}-{version}-{role}"},
                "spec": {"modelRef": {"name": model}, "version": version, "sha256": sha256, "role": role,
                         "approver": user}})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Exporter:
    """Serves every model's metrics as Prometheus would get them from its servers and recording rules:
    healthy v1 and v2 (so a canary passes analysis), except that ``bad`` models' v2 burns its budget 100x."""

    def __init__(self, models: Iterable[ModelKey] = ()) -> None:
        self.models: list[ModelKey] = list(models)
        self.bad: set[ModelKey] = set()
        self.started = time.time()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.server.server_address[1]}"

    def render(self) -> str:
        requests = int((time.time() - self.started) * 100)
        lines = []
        for key in list(self.models):
            ns, m = key
            for v in ("v1", "v2"):
                burn = 100.0 if (key in self.bad and v == "v2") else 0.0
                labels = f'namespace="{ns}",model="{m}",version="{v}"'
                lines += [
                    f'ml_inference_requests_total{{{labels},track="canary",outcome="success"}} {requests}',
                    f"ml_inference_error_budget_remaining{{{labels}}} 0.9",
                    f"ml:inference_burn_rate:rate1h{{{labels}}} {burn}",
                    f"ml:inference_burn_rate:rate5m{{{labels}}} {burn}",
                ]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()


def restored_on(apps: client.AppsV1Api, namespace: str, model: str, sha: str) -> bool:
    """The stable Deployment fully rolled out and Ready on ``sha``, and no canary left."""
    d: Any = apps.read_namespaced_deployment(f"{model}-stable", namespace)
    ready = (d.status.ready_replicas or 0) >= d.spec.replicas and (d.status.updated_replicas or 0) >= d.spec.replicas
    current = d.status.observed_generation == d.metadata.generation
    canary_gone = not apps.list_namespaced_deployment(namespace,
                                                      label_selector=f"{api.LABEL_MODEL}={model},"
                                                                     f"{api.LABEL_TRACK}=canary").items
    return bool(d.spec.template.metadata.annotations[api.ANNOTATION_SHA256] == sha and ready and current
                and canary_gone)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(log: str, needle: str) -> list[tuple[float, str]]:
    """(epoch seconds, line) of every operator log line containing ``needle``."""
    out = []
    for line in log.splitlines():
        m = LOG_TIME.match(line)
        if m and needle in line:
            # logging's asctime is local time, as is a naive datetime's .timestamp()
            stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007
            out.append((stamp, line))
    return out


class DeploymentWatch:
    """Records when each Deployment in a namespace is first seen."""

    def __init__(self, apps: client.AppsV1Api, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(apps, namespace), daemon=True)
        self._thread.start()
        time.sleep(1.0)  # the watch is open before anything is created

    def _run(self, apps: client.AppsV1Api, namespace: str) -> None:
        w = watch.Watch()
        for event in w.stream(apps.list_namespaced_deployment, namespace, timeout_seconds=600):
            name = event["object"].metadata.name
            self.seen.setdefault(name, time.monotonic())
            if self._stop.is_set():
                w.stop()

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n in self.seen for n in names):
            time.sleep(0.05)
        missing = [n for n in names if n not in self.seen]
        if missing:
            raise TimeoutError(f"{len(missing)} Deployments never appeared, e.g. {missing[:3]}")

    def stop(self) -> None:
        self._stop.set()


def status_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Names of what moved between two MLModel statuses: top-level fields, and conditions by type and part."""
    out = [k for k in sorted(set(before) | set(after)) if k != "conditions" and before.get(k) != after.get(k)]
    old = {c["type"]: c for c in before.get("conditions", [])}
    for c in after.get("conditions", []):
        prev = old.get(c["type"], {})
        out += [f"conditions[{c['type']}].{part}" for part in ("status", "reason", "message")
                if prev.get(part) != c.get(part)]
    return out


class PhaseWatch:
    """Every MLModel's latest status, from one cluster-wide watch (polling a list of 1,000 objects would itself
    load the API server the benchmark measures)."""

    def __init__(self, custom: client.CustomObjectsApi) -> None:
        self.status: dict[ModelKey, api.MLModelStatus] = {}
        # While ``recording``: what each status change changed (a top-level field, or a condition's type and
        # whether its status, reason or message moved), to tell which decision rewrites status.
        self.recording = False
        self.changed: collections.Counter[str] = collections.Counter()
        self._raw: dict[ModelKey, dict[str, Any]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(custom,), daemon=True).start()

    def _run(self, custom: client.CustomObjectsApi) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.MLMODEL_PLURAL,
                                      timeout_seconds=300):
                    obj = event["object"]
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    if event["type"] == "DELETED":
                        self.status.pop(key, None)
                    else:
                        raw = obj.get("status") or {}
                        if self.recording and key in self._raw:
                            self.changed.update(status_changes(self._raw[key], raw))
                        self._raw[key] = raw
                        self.status[key] = api.MLModelStatus.model_validate(raw)
                    if self._stop.is_set():
                        w.stop()
            except Exception:
                time.sleep(1)

    def count(self, keys: Iterable[ModelKey], ok: Callable[[api.MLModelStatus], bool]) -> int:
        return sum(1 for k in keys if (s := self.status.get(k)) is not None and ok(s))

    def stop(self) -> None:
        self._stop.set()


class ReadyWatch:
    """Which Deployments matching a label selector, in any namespace, are fully Ready (one watch)."""

    def __init__(self, apps: client.AppsV1Api, selector: str) -> None:
        self.ready: set[ModelKey] = set()
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(apps, selector), daemon=True).start()

    def _run(self, apps: client.AppsV1Api, selector: str) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(apps.list_deployment_for_all_namespaces, label_selector=selector,
                                      timeout_seconds=300):
                    d = event["object"]
                    key = (d.metadata.namespace, d.metadata.name)
                    if (d.status.ready_replicas or 0) >= (d.spec.replicas or 0) and event["type"] != "DELETED":
                        self.ready.add(key)
                    if self._stop.is_set():
                        w.stop()
            except Exception:
                time.sleep(1)

    def stop(self) -> None:
        self._stop.set()


def baseline_deployment(name: str, replicas: int = 0) -> client.V1Deployment:
    """A Deployment this process creates itself: what the control plane does with no operator in the way."""
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={"modelwarden.io/bench": "baseline"}),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels={"b": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"b": name}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]))))
