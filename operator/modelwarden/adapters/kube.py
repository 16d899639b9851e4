"""The Kubernetes edge: Deployments, retraining Jobs, incident records, status and Events for an MLModel.

One class per Protocol (:class:`KubeWorkloads`, :class:`KubeStatusWriter`, :class:`KubeEventRecorder`), all over
one :class:`KubeClient`. What they write is built by the pure functions of :mod:`modelwarden.adapters.manifests`;
the Services a traffic router needs belong to its adapter (``adapters/routers/``). Everything we create is
written with server-side apply under the field manager ``modelwarden`` — re-applying is a no-op. The official
client is synchronous; calls run in a thread so the kopf event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelwarden.adapters.manifests import (
    DEFAULT_SERVER_IMAGE,
    FIELD_MANAGER,
    SERVER_PORT,
    ModelObject,
    ServerAuth,
    deployment_manifest,
    incident_configmap,
    labels,
    retraining_job_manifest,
    server_identity_manifests,
    service_manifest,
)
from modelwarden.adapters.server_admin import Server
from modelwarden.api import v1alpha1 as api
from modelwarden.artifacts.signing import SigningError, key_fingerprint
from modelwarden.engine.actions import CreateRetrainingJob, MirrorTo


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Conflict(KubeError):
    """Someone else wrote first (409): re-read and decide again."""


class Workloads(Protocol):
    async def ensure_server_identity(self, namespace: str) -> None: ...
    async def apply_track(self, model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                          artifact: api.ArtifactVersion, replicas: int, fingerprint: str,
                          mirror: MirrorTo | None = None, hidden: bool = False) -> None: ...
    async def delete_track(self, model: ModelObject, track: api.Track) -> None: ...
    async def record_incident(self, model: ModelObject, rollback: api.Rollback) -> None: ...
    async def record_evidence(self, model: ModelObject, rollback: api.Rollback, name: str, data: Any) -> None: ...
    async def create_retraining_job(self, model: ModelObject, spec: api.MLModelSpec,
                                    job: CreateRetrainingJob) -> None: ...
    async def read_trusted_keys(self, namespace: str, config_map: str) -> list[bytes]: ...


class ModelStatusWriter(Protocol):
    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]: ...


class EventRecorder(Protocol):
    async def record(self, model: ModelObject, type: str, reason: str, message: str) -> None: ...


def wrap_api_exception(e: ApiException, what: str) -> KubeError:
    status = int(e.status or 0)
    message = f"{what}: {e.status} {e.reason}"
    if e.body:
        message += f": {e.body!s}"[:600]
    return Conflict(message, status) if status == 409 else KubeError(message, status)


class KubeClient:
    """The official client (one ApiClient, thread-safe for requests); its blocking calls run off the event loop."""

    def __init__(self, api_client: client.ApiClient, *, concurrency: int = 16) -> None:
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        # The client blocks: its calls run on these threads (give its connection pool as many connections).
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="kube")

    async def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args,
                                                                                                     **kwargs))
        except ApiException as e:
            raise wrap_api_exception(e, what) from e

    async def call_discarding(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A write whose answer we do not use: skip turning it into client objects (most of a call's CPU)."""
        def call() -> None:
            response = fn(*args, _preload_content=False, **kwargs)
            response.read()
            response.release_conn()

        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as e:
            raise wrap_api_exception(e, what) from e

    async def apply(self, fn: Any, body: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> None:
        """Server-side apply of ``body`` (named by its own metadata) with ``fn``, a ``patch_namespaced_*``."""
        meta = body["metadata"]
        await self.call_discarding(f"apply {body['kind']} {meta['namespace']}/{meta['name']}", fn, meta["name"],
                                   meta["namespace"], body, field_manager=field_manager, force=True,
                                   _content_type="application/apply-patch+yaml")

    def raw(self, obj: Any) -> dict[str, Any]:
        """A typed client object as the API's camelCase dict."""
        return dict(self.api_client.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    async def list_all(self, namespaces: list[str]) -> dict[str, list[dict[str, Any]]]:
        """MLModels, ModelApprovals and our Deployments as raw objects (as watch events carry them), to fill
        the caches before the first decision: deciding on a half-filled cache would undo real state."""
        selector = f"{api.LABEL_MANAGED_BY}=modelwarden"
        out: dict[str, list[dict[str, Any]]] = {"mlmodels": [], "modelapprovals": [], "modelactions": [],
                                                "deployments": [], "jobs": []}
        scopes: list[str | None] = list(namespaces) or [None]
        for ns in scopes:
            for plural in (api.MLMODEL_PLURAL, api.APPROVAL_PLURAL, api.ACTION_PLURAL):
                if ns is None:
                    listed = await self.call(f"list {plural}", self.custom.list_cluster_custom_object,
                                             api.GROUP, api.VERSION, plural)
                else:
                    listed = await self.call(f"list {plural}", self.custom.list_namespaced_custom_object,
                                             api.GROUP, api.VERSION, ns, plural)
                out[plural] += listed.get("items", [])
            if ns is None:
                deps = await self.call("list deployments", self.apps.list_deployment_for_all_namespaces,
                                       label_selector=selector)
            else:
                deps = await self.call("list deployments", self.apps.list_namespaced_deployment, ns,
                                       label_selector=selector)
            out["deployments"] += [self.raw(d) for d in deps.items]
            if ns is None:
                jobs = await self.call("list jobs", self.batch.list_job_for_all_namespaces, label_selector=selector)
            else:
                jobs = await self.call("list jobs", self.batch.list_namespaced_job, ns, label_selector=selector)
            out["jobs"] += [self.raw(j) for j in jobs.items]
        return out


class KubeWorkloads:
    """What serves a model and what it leaves behind: the servers' identity, a Deployment per track, retraining
    Jobs, incident records; and the trusted public keys a model's artifact signature is checked against."""

    def __init__(self, kube: KubeClient, *, server_image: str | None = None,
                 server_auth: Callable[[], Awaitable[ServerAuth]] | None = None,
                 fault_injection: bool = False) -> None:
        self._kube = kube
        # What the servers verify their callers with (the operator's identity); None: admin calls are refused.
        self._server_auth = server_auth
        # Tests and the demo only (MODELWARDEN_SERVER_FAULT_INJECTION): the servers serve /admin/faults.
        self._fault_injection = fault_injection
        # A model's spec.serving.image wins; else this, else the operator's MODELWARDEN_SERVER_IMAGE (the chart's
        # `serverImage`), else the image model_server/Dockerfile documents.
        self._server_image = server_image or os.environ.get("MODELWARDEN_SERVER_IMAGE") or DEFAULT_SERVER_IMAGE

    async def ensure_server_identity(self, namespace: str) -> None:
        """The servers' ServiceAccount in a namespace, bound to read their MLModel (the kill switch)."""
        account, binding = server_identity_manifests(namespace)
        await asyncio.gather(self._kube.apply(self._kube.core.patch_namespaced_service_account, account),
                             self._kube.apply(self._kube.rbac.patch_namespaced_role_binding, binding))

    async def apply_track(self, model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                          artifact: api.ArtifactVersion, replicas: int, fingerprint: str,
                          mirror: MirrorTo | None = None, hidden: bool = False) -> None:
        host = await self._mirror_host(model) if mirror is not None else ""
        auth = await self._server_auth() if self._server_auth is not None else None
        body = deployment_manifest(model, spec, track, artifact, replicas, fingerprint, self._server_image,
                                   mirror=mirror, mirror_host=host, hidden=hidden, auth=auth,
                                   fault_injection=self._fault_injection)
        await self._kube.apply(self._kube.apps.patch_namespaced_deployment, body)

    async def _mirror_host(self, model: ModelObject) -> str:
        """The ClusterIP of ``<model>-canary``, the mirror's target: applied here first (the router's Services
        may follow the Deployments), so it exists before the stable's pods are told where it is."""
        name = model.deployment_name("canary")
        await self._kube.apply(self._kube.core.patch_namespaced_service,
                               service_manifest(model, name, labels(model, "canary")))
        service = self._kube.raw(await self._kube.call(f"read Service {model.namespace}/{name}",
                                                       self._kube.core.read_namespaced_service, name, model.namespace))
        return str(service.get("spec", {}).get("clusterIP") or f"{name}.{model.namespace}.svc")

    async def delete_track(self, model: ModelObject, track: api.Track) -> None:
        name = model.deployment_name(track)
        try:
            await self._kube.call_discarding(f"delete Deployment {name}", self._kube.apps.delete_namespaced_deployment,
                                             name, model.namespace, propagation_policy="Background")
        except KubeError as e:
            if e.status != 404:
                raise

    async def create_retraining_job(self, model: ModelObject, spec: api.MLModelSpec,
                                    job: CreateRetrainingJob) -> None:
        """Create the window's Job once: its name is the window's, so a repeat finds it there (409) and stops."""
        body = retraining_job_manifest(model, spec, job)
        try:
            await self._kube.call_discarding(f"create Job {job.name}", self._kube.batch.create_namespaced_job,
                                             model.namespace, body, field_manager=FIELD_MANAGER)
        except Conflict:
            return

    async def record_incident(self, model: ModelObject, rollback: api.Rollback) -> None:
        """The full incident record, beside the model: a ConfigMap named after the rollback id (idempotent)."""
        record = {"model": model.name, "namespace": model.namespace, **rollback.wire()}
        await self._kube.apply(self._kube.core.patch_namespaced_config_map,
                               incident_configmap(model, rollback, "incident.json", record))

    async def record_evidence(self, model: ModelObject, rollback: api.Rollback, name: str, data: Any) -> None:
        """One more file in the incident's ConfigMap, written under a field manager of its own (one per file) so
        neither the final incident record nor another evidence file (each apply names only its file) takes it
        away."""
        await self._kube.apply(self._kube.core.patch_namespaced_config_map,
                               incident_configmap(model, rollback, name, data),
                               field_manager=f"{FIELD_MANAGER}-evidence-{name.rsplit('.', 1)[0]}"[:128])

    async def read_trusted_keys(self, namespace: str, config_map: str) -> list[bytes]:
        """The PEM public keys an artifact signature may be made with: the entries of the namespace's ConfigMap
        that the cluster's TrustPolicy also trusts (issue 27: a namespace may only narrow the cluster's trust, so
        a key its editor adds there counts for nothing)."""
        cm = await self._kube.call(f"read trusted keys {namespace}/{config_map}",
                                   self._kube.core.read_namespaced_config_map, config_map, namespace)
        try:
            policy = await self._kube.call("read the cluster's TrustPolicy",
                                           self._kube.custom.get_cluster_custom_object, api.GROUP, api.VERSION,
                                           api.TRUST_PLURAL, api.TRUST_POLICY_NAME)
        except KubeError as e:
            if e.status != 404:
                raise
            policy = {}
        cluster = set()
        for key in api.TrustPolicySpec.model_validate(policy.get("spec") or {}).artifact_keys:
            with contextlib.suppress(SigningError):
                cluster.add(key_fingerprint(key.public_key.encode()))
        out = []
        for _, value in sorted((cm.data or {}).items()):
            with contextlib.suppress(SigningError):
                if key_fingerprint(value.encode()) in cluster:
                    out.append(value.encode())
        return out


class KubeServerTargets:
    """The servers of a track: its pods (by the track's labels) that have an address and a running server.

    Every such pod is called, terminating ones included (a canary being scaled away still holds queued work
    during its drain); a pod not Ready yet is listed but not called (it warms up before it becomes Ready)."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def servers(self, model: ModelObject, track: api.Track) -> list[Server]:
        selector = ",".join(f"{k}={v}" for k, v in labels(model, track).items())
        pods = await self._kube.call(f"list {track} pods of {model.namespace}/{model.name}",
                                     self._kube.core.list_namespaced_pod, model.namespace, label_selector=selector)
        out = []
        for pod in sorted(pods.items, key=lambda p: p.metadata.name):
            status = pod.status
            if status is None or not status.pod_ip or status.phase != "Running":
                continue
            running = any(c.name == "server" and c.state is not None and c.state.running is not None
                          for c in status.container_statuses or [])
            ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
            terminating = pod.metadata.deletion_timestamp is not None
            if not running:
                out.append(Server(pod.metadata.name, "", callable=False, why_not="server container not running"))
                continue
            host = f"[{status.pod_ip}]" if ":" in status.pod_ip else status.pod_ip
            callable_ = ready or terminating
            out.append(Server(pod.metadata.name, f"http://{host}:{SERVER_PORT}", callable=callable_,
                              why_not="" if callable_ else "not Ready yet (it warms up before it becomes Ready)"))
        return out


class KubeStatusWriter:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def replace_status(self, body: dict[str, Any], status: api.MLModelStatus) -> dict[str, Any]:
        """Write the whole status once, guarded by resourceVersion (a stale writer gets Conflict)."""
        meta = body["metadata"]
        obj = {"apiVersion": api.API_VERSION, "kind": "MLModel",
               "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                            "resourceVersion": meta["resourceVersion"]},
               "spec": body["spec"], "status": status.wire()}
        result: dict[str, Any] = await self._kube.call(
            f"write status of {meta['namespace']}/{meta['name']}",
            self._kube.custom.replace_namespaced_custom_object_status, api.GROUP, api.VERSION, meta["namespace"],
            api.MLMODEL_PLURAL, meta["name"], obj, field_manager=FIELD_MANAGER)
        return result


class KubeEventRecorder:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

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
        await self._kube.call_discarding(f"record Event {reason}", self._kube.core.create_namespaced_event,
                                         model.namespace, event)
