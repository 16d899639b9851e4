"""The Kubernetes edge: Deployments, Services, retraining Jobs, status and Events for an MLModel.

Everything we create carries the ``modelwarden.io/*`` labels and an owner reference to its MLModel, and is
written with server-side apply under the field manager ``modelwarden`` — re-applying is a no-op. The
official client is synchronous; calls run in a thread so the kopf event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelwarden.api import v1alpha1 as api
from modelwarden.engine.retraining import CreateRetrainingJob, JobState, window_label
from modelwarden.engine.rollout import TrackState

FIELD_MANAGER = "modelwarden"
SERVER_PORT = 8080
# Bound in each model namespace so the server can watch its own MLModel (the kill switch), read-only.
SERVER_SERVICE_ACCOUNT = "modelwarden-model-server"
SERVER_CLUSTER_ROLE = "modelwarden-model-server"
ANNOTATION_FINGERPRINT = f"{api.GROUP}/fingerprint"
ARTIFACT_MOUNT = "/var/lib/modelwarden"
# The image model_server/Dockerfile documents and the local environment builds; the operator's
# MODELWARDEN_SERVER_IMAGE (the chart's `serverImage`) replaces it, a model's spec.serving.image overrides both.
DEFAULT_SERVER_IMAGE = "ghcr.io/modelwarden/model-server:0.1.0"
# Bounded scratch space: the artifact plus the SQLite feedback store, and /tmp (SQLite spills large sorts there; the
# root filesystem is read-only). Past a limit the kubelet evicts the pod instead of filling the node's disk.
ARTIFACT_VOLUME_LIMIT = "2Gi"
TMP_VOLUME_LIMIT = "1Gi"
# The init container only downloads and hashes; used when spec.serving.resources says nothing.
FETCH_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}
# Seconds a terminating pod keeps serving before SIGTERM, so kube-proxy and routers drop its endpoint first.
DRAIN_SECONDS = 5


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Conflict(KubeError):
    """Someone else wrote first (409): re-read and decide again."""


@dataclass(frozen=True)
class ModelObject:
    """Which MLModel an operation is for: enough to name and own what we create."""

    namespace: str
    name: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": api.API_VERSION, "kind": "MLModel", "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def deployment_name(self, track: api.Track) -> str:
        return f"{self.name}-{track}"


class Workloads(Protocol):
    async def ensure_server_identity(self, namespace: str) -> None: ...
    async def ensure_services(self, model: ModelObject, router: str) -> None: ...
    async def apply_track(self, model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                          artifact: api.ArtifactVersion, replicas: int, fingerprint: str) -> None: ...
    async def delete_track(self, model: ModelObject, track: api.Track) -> None: ...
    async def record_incident(self, model: ModelObject, rollback: api.Rollback, extra: dict[str, Any]) -> None: ...
    async def record_evidence(self, model: ModelObject, rollback: api.Rollback, name: str, data: Any) -> None: ...
    async def create_retraining_job(self, model: ModelObject, spec: api.MLModelSpec,
                                    job: CreateRetrainingJob) -> None: ...


class ModelStatusWriter(Protocol):
    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]: ...


class EventRecorder(Protocol):
    async def record(self, model: ModelObject, type: str, reason: str, message: str) -> None: ...


def _wrap(e: ApiException, what: str) -> KubeError:
    status = int(e.status or 0)
    message = f"{what}: {e.status} {e.reason}"
    if e.body:
        message += f": {e.body!s}"[:600]
    return Conflict(message, status) if status == 409 else KubeError(message, status)


def labels(model: ModelObject, track: api.Track | None = None) -> dict[str, str]:
    out = {api.LABEL_MODEL: model.name, api.LABEL_MANAGED_BY: "modelwarden"}
    if track:
        out[api.LABEL_TRACK] = track
    return out


def track_state(deployment: Mapping[str, Any]) -> TrackState:
    """What the engine needs to know of one of our Deployments (a raw dict, as kopf delivers it)."""
    meta = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    annotations = meta.get("annotations") or {}
    replicas = int(spec.get("replicas", 1))
    rolled_out = (int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
                  and int(status.get("updatedReplicas", 0)) >= replicas)
    return TrackState(
        version=(meta.get("labels") or {}).get(api.LABEL_VERSION, ""),
        sha256=annotations.get(api.ANNOTATION_SHA256, ""),
        fingerprint=annotations.get(ANNOTATION_FINGERPRINT, ""),
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)),
        rolled_out=rolled_out or replicas == 0,
    )


def job_state(job: dict[str, Any]) -> JobState:
    """A retraining Job's outcome from its terminal conditions (Complete / Failed with status True)."""
    name = (job.get("metadata") or {}).get("name", "")
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return JobState(name, "Succeeded", c.get("lastTransitionTime"), c.get("message") or "")
        if c.get("type") == "Failed":
            reason, message = c.get("reason") or "", c.get("message") or ""
            return JobState(name, "Failed", c.get("lastTransitionTime"), f"{reason}: {message}".strip(": "))
    return JobState(name, "Running")


def retraining_job_manifest(model: ModelObject, spec: api.MLModelSpec, job: CreateRetrainingJob) -> dict[str, Any]:
    """A batch/v1 Job from ``spec.retraining.jobTemplate``: our name, labels and owner; every container is told
    the model, the window and the serving version it retrains from (for ``modelwarden train --previous``)."""
    template = json.loads(json.dumps(spec.retraining.job_template or {}))  # a deep copy
    meta = template.get("metadata") or {}
    job_labels = {**(meta.get("labels") or {}), **labels(model),
                  api.LABEL_RETRAINING_WINDOW: window_label(job.window)}
    job_spec = template.get("spec") or {}
    env = [{"name": "MODELWARDEN_MODEL", "value": model.name},
           {"name": "MODELWARDEN_NAMESPACE", "value": model.namespace},
           {"name": "MODELWARDEN_RETRAINING_WINDOW", "value": job.window.strftime("%Y-%m-%dT%H:%M:%SZ")},
           {"name": "MODELWARDEN_STABLE_VERSION", "value": job.stable_version or ""},
           {"name": "MODELWARDEN_STABLE_ARTIFACT_URI", "value": job.stable_uri or ""}]
    pod = job_spec.setdefault("template", {}).setdefault("spec", {})
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        names = {e["name"] for e in env}
        container["env"] = [*env, *[e for e in container.get("env", []) if e.get("name") not in names]]
    pod_meta = job_spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **job_labels}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job.name, "namespace": model.namespace, "labels": job_labels,
                     "annotations": meta.get("annotations") or {},
                     "ownerReferences": [model.owner_reference()]},
        "spec": job_spec,
    }


def deployment_manifest(model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                        artifact: api.ArtifactVersion, replicas: int, fingerprint: str,
                        server_image: str = DEFAULT_SERVER_IMAGE) -> dict[str, Any]:
    image = spec.serving.image or server_image
    selector = labels(model, track)
    pod_labels = {**selector, api.LABEL_VERSION: artifact.version}
    annotations = {api.ANNOTATION_SHA256: artifact.sha256, ANNOTATION_FINGERPRINT: fingerprint}
    contract = {"name": spec.feature_contract.name, "features": spec.feature_contract.features}
    # The server's environment (`python -m model_server --help-env`). spec.enabled is deliberately not here:
    # the server watches its MLModel, so the kill switch flips without a pod restart.
    env: list[dict[str, Any]] = [
        {"name": "MODEL_NAME", "value": model.name},
        {"name": "MODEL_VERSION", "value": artifact.version},
        {"name": "MODEL_TRACK", "value": track},
        {"name": "ARTIFACT_URI", "value": artifact.uri},
        {"name": "ARTIFACT_DIR", "value": f"{ARTIFACT_MOUNT}/artifact"},
        {"name": "ARTIFACT_SHA256", "value": artifact.sha256},
        {"name": "MODEL_FORMAT", "value": artifact.format},
        {"name": "ALLOW_JOBLIB", "value": "true" if spec.artifact.allow_unsafe_joblib else "false"},
        {"name": "NEUTRAL_PREDICTION", "value": spec.serving.neutral_prediction},
        {"name": "SLO_OBJECTIVE", "value": spec.slo.objective},
        {"name": "FEATURE_CONTRACT", "value": json.dumps(contract, separators=(",", ":"))},
        {"name": "FEEDBACK_DSN", "value": f"{ARTIFACT_MOUNT}/feedback.sqlite3"},
        {"name": "MLMODEL_WATCH", "value": "true"},
        {"name": "MLMODEL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "PORT", "value": str(SERVER_PORT)},
    ]
    if spec.serving.feedback_store.dsn_secret_ref is not None:
        ref = spec.serving.feedback_store.dsn_secret_ref
        env = [e for e in env if e["name"] != "FEEDBACK_DSN"]
        env.append({"name": "FEEDBACK_DSN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    # What the `restricted` Pod Security level admits.
    security = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    volume_mounts = [{"name": "artifact", "mountPath": ARTIFACT_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "env": env,
        # A busy node answers a health check in well under a second, but not always; three misses in a row count.
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "securityContext": security,
        "volumeMounts": volume_mounts,
    }
    # Fetch and verify the artifact directory before the server starts (model_server/fetch.py).
    fetch = {"name": "fetch-artifact", "image": image, "command": ["python", "-m", "model_server.fetch"],
             "env": env, "securityContext": security, "volumeMounts": volume_mounts,
             "resources": spec.serving.resources or FETCH_RESOURCES}
    if spec.serving.resources:
        container["resources"] = spec.serving.resources
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": model.deployment_name(track),
            "namespace": model.namespace,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [model.owner_reference()],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": {
                    "serviceAccountName": SERVER_SERVICE_ACCOUNT,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 30,
                    "initContainers": [fetch],
                    "containers": [container],
                    "volumes": [{"name": "artifact", "emptyDir": {"sizeLimit": ARTIFACT_VOLUME_LIMIT}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": TMP_VOLUME_LIMIT}}],
                },
            },
        },
    }


def service_manifests(model: ModelObject, router: str) -> list[dict[str, Any]]:
    """``<model>`` selects both tracks (the replicas router); gatewayAPI also gets one Service per track."""
    def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": model.namespace, "labels": selector | labels(model),
                         "ownerReferences": [model.owner_reference()]},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}]},
        }

    out = [service(model.name, {api.LABEL_MODEL: model.name})]
    if router == "gatewayAPI":
        out += [service(model.deployment_name(t), labels(model, t)) for t in ("stable", "canary")]
    return out


class KubeWorkloads:
    """Workloads, status and Events over the official client (one ApiClient, thread-safe for requests)."""

    def __init__(self, api_client: client.ApiClient, *, concurrency: int = 16, server_image: str | None = None,
                 ) -> None:
        self._api = api_client
        self._server_image = server_image or os.environ.get("MODELWARDEN_SERVER_IMAGE") or DEFAULT_SERVER_IMAGE
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._batch = client.BatchV1Api(api_client)
        # The client blocks: its calls run on these threads (give its connection pool as many connections).
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="kube")

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args,
                                                                                                     **kwargs))
        except ApiException as e:
            raise _wrap(e, what) from e

    async def _call_discarding(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A write whose answer we do not use: skip turning it into client objects (most of a call's CPU)."""
        def call() -> None:
            response = fn(*args, _preload_content=False, **kwargs)
            response.read()
            response.release_conn()

        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as e:
            raise _wrap(e, what) from e

    async def _apply(self, what: str, fn: Any, name: str, namespace: str, body: dict[str, Any]) -> None:
        await self._call_discarding(what, fn, name, namespace, body, field_manager=FIELD_MANAGER, force=True,
                                    _content_type="application/apply-patch+yaml")

    async def ensure_server_identity(self, namespace: str) -> None:
        """The servers' ServiceAccount in a namespace, bound to read their MLModel (the kill switch)."""
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": SERVER_SERVICE_ACCOUNT, "namespace": namespace,
                                "labels": {api.LABEL_MANAGED_BY: "modelwarden"}}}
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": SERVER_SERVICE_ACCOUNT, "namespace": namespace,
                         "labels": {api.LABEL_MANAGED_BY: "modelwarden"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SERVER_CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SERVER_SERVICE_ACCOUNT, "namespace": namespace}],
        }
        await asyncio.gather(
            self._apply("apply ServiceAccount", self._core.patch_namespaced_service_account,
                        SERVER_SERVICE_ACCOUNT, namespace, account),
            self._apply("apply RoleBinding", self._rbac.patch_namespaced_role_binding,
                        SERVER_SERVICE_ACCOUNT, namespace, binding))

    async def ensure_services(self, model: ModelObject, router: str) -> None:
        await asyncio.gather(*(
            self._apply(f"apply Service {svc['metadata']['name']}", self._core.patch_namespaced_service,
                        svc["metadata"]["name"], model.namespace, svc)
            for svc in service_manifests(model, router)))

    async def apply_track(self, model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                          artifact: api.ArtifactVersion, replicas: int, fingerprint: str) -> None:
        body = deployment_manifest(model, spec, track, artifact, replicas, fingerprint, self._server_image)
        await self._apply(f"apply Deployment {body['metadata']['name']}", self._apps.patch_namespaced_deployment,
                          body["metadata"]["name"], model.namespace, body)

    async def delete_track(self, model: ModelObject, track: api.Track) -> None:
        name = model.deployment_name(track)
        try:
            await self._call_discarding(f"delete Deployment {name}", self._apps.delete_namespaced_deployment,
                                        name, model.namespace, propagation_policy="Background")
        except KubeError as e:
            if e.status != 404:
                raise

    async def list_all(self, namespaces: list[str]) -> dict[str, list[dict[str, Any]]]:
        """MLModels, ModelApprovals and our Deployments as raw objects (as watch events carry them), to fill
        the caches before the first decision: deciding on a half-filled cache would undo real state."""
        selector = f"{api.LABEL_MANAGED_BY}=modelwarden"
        out: dict[str, list[dict[str, Any]]] = {"mlmodels": [], "modelapprovals": [], "deployments": [], "jobs": []}
        scopes: list[str | None] = list(namespaces) or [None]
        for ns in scopes:
            for plural in (api.MLMODEL_PLURAL, api.APPROVAL_PLURAL):
                if ns is None:
                    listed = await self._call(f"list {plural}", self._custom.list_cluster_custom_object,
                                              api.GROUP, api.VERSION, plural)
                else:
                    listed = await self._call(f"list {plural}", self._custom.list_namespaced_custom_object,
                                              api.GROUP, api.VERSION, ns, plural)
                out[plural] += listed.get("items", [])
            if ns is None:
                deps = await self._call("list deployments", self._apps.list_deployment_for_all_namespaces,
                                        label_selector=selector)
            else:
                deps = await self._call("list deployments", self._apps.list_namespaced_deployment, ns,
                                        label_selector=selector)
            out["deployments"] += [self._raw(d) for d in deps.items]
            if ns is None:
                jobs = await self._call("list jobs", self._batch.list_job_for_all_namespaces, label_selector=selector)
            else:
                jobs = await self._call("list jobs", self._batch.list_namespaced_job, ns, label_selector=selector)
            out["jobs"] += [self._raw(j) for j in jobs.items]
        return out

    async def create_retraining_job(self, model: ModelObject, spec: api.MLModelSpec,
                                    job: CreateRetrainingJob) -> None:
        """Create the window's Job once: its name is the window's, so a repeat finds it there (409) and stops."""
        body = retraining_job_manifest(model, spec, job)
        try:
            await self._call_discarding(f"create Job {job.name}", self._batch.create_namespaced_job, model.namespace,
                                        body, field_manager=FIELD_MANAGER)
        except Conflict:
            return

    async def record_incident(self, model: ModelObject, rollback: api.Rollback, extra: dict[str, Any]) -> None:
        """The full incident record, beside the model: a ConfigMap named after the rollback id (idempotent)."""
        name = f"{model.name}-{rollback.id}"[:253]
        record = {"model": model.name, "namespace": model.namespace, **rollback.wire(), **extra}
        body = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": model.namespace,
                         "labels": {**labels(model), f"{api.GROUP}/incident": rollback.id},
                         "ownerReferences": [model.owner_reference()]},
            "data": {"incident.json": json.dumps(record, indent=2, sort_keys=True)},
        }
        await self._apply(f"record incident {name}", self._core.patch_namespaced_config_map, name, model.namespace,
                          body)

    async def record_evidence(self, model: ModelObject, rollback: api.Rollback, name: str, data: Any) -> None:
        """One more file in the incident's ConfigMap, written under its own field manager so the final
        incident record (written later) does not take it away."""
        cm_name = f"{model.name}-{rollback.id}"[:253]
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm_name, "namespace": model.namespace,
                             "labels": {**labels(model), f"{api.GROUP}/incident": rollback.id},
                             "ownerReferences": [model.owner_reference()]},
                "data": {name: json.dumps(data, indent=2, sort_keys=True)}}
        await self._call_discarding(f"record evidence {cm_name}", self._core.patch_namespaced_config_map, cm_name,
                                    model.namespace, body, field_manager=f"{FIELD_MANAGER}-evidence", force=True,
                                    _content_type="application/apply-patch+yaml")

    def _raw(self, obj: Any) -> dict[str, Any]:
        """A typed client object as the API's camelCase dict."""
        return dict(self._api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]:
        """Write the whole status once, guarded by resourceVersion (a stale writer gets Conflict)."""
        meta = body["metadata"]
        obj = {"apiVersion": api.API_VERSION, "kind": "MLModel",
               "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                            "resourceVersion": meta["resourceVersion"]},
               "spec": body["spec"], "status": status.wire()}
        result: dict[str, Any] = await self._call(
            f"write status of {meta['namespace']}/{meta['name']}",
            self._custom.replace_namespaced_custom_object_status, api.GROUP, api.VERSION, meta["namespace"],
            api.MLMODEL_PLURAL, meta["name"], obj, field_manager=FIELD_MANAGER)
        return result

    async def record(self, model: ModelObject, type: str, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{model.name}.", namespace=model.namespace),
            involved_object=client.V1ObjectReference(api_version=api.API_VERSION, kind="MLModel", name=model.name,
                                                     namespace=model.namespace, uid=model.uid),
            type=type, reason=reason, message=message[:1024], count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="modelwarden"),
            reporting_component="modelwarden.io/operator", reporting_instance="modelwarden",
        )
        await self._call_discarding(f"record Event {reason}", self._core.create_namespaced_event, model.namespace,
                                    event)
