"""Pure manifest builders: the Kubernetes objects ModelWarden writes for an MLModel, and what it reads back
from them. No client, no I/O: every function maps values to dicts (or dicts to engine values), so each can be
tested as a table. :mod:`modelwarden.adapters.kube` writes what these build.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import CreateRetrainingJob, MirrorTo
from modelwarden.engine.decision import TrackState
from modelwarden.engine.retraining import JobState, window_label
from modelwarden.engine.timestamps import timestamp
from modelwarden.engine.traffic import Endpoints

FIELD_MANAGER = "modelwarden"
SERVER_PORT = 8080
# Bound in each model namespace so the server can watch its own MLModel (the kill switch), read-only.
SERVER_SERVICE_ACCOUNT = "modelwarden-model-server"
SERVER_CLUSTER_ROLE = "modelwarden-model-server"
ANNOTATION_FINGERPRINT = f"{api.GROUP}/fingerprint"
ARTIFACT_MOUNT = "/var/lib/modelwarden"
TRUSTED_KEYS_MOUNT = "/etc/modelwarden/trusted-keys"
# The stable's proof for the shadow comparison: a token of the pods' own ServiceAccount for this audience,
# projected (and refreshed) by the kubelet into the server container only.
SHADOW_AUDIENCE = "modelwarden.io/shadow"
SHADOW_TOKEN_MOUNT = "/var/run/secrets/modelwarden.io/shadow"
SHADOW_TOKEN_SECONDS = 600
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



@dataclass(frozen=True)
class ServerAuth:
    """What a model server needs to verify its callers offline (``model_server/auth.py``): the cluster's
    service-account issuer keys (JWKS JSON), the issuer, and the operator's ServiceAccount (the only admin caller).
    Read by :class:`modelwarden.adapters.operator_identity.OperatorIdentity`."""

    jwks: str
    issuer: str
    admin_subject: str


def auth_env(model: ModelObject, auth: ServerAuth | None, fault_injection: bool) -> list[dict[str, Any]]:
    """The server's caller checks: the operator for /admin/*, the model's own pods for /shadow/compare."""
    env: list[dict[str, Any]] = []
    if auth is not None:
        env += [{"name": "SERVICE_ACCOUNT_JWKS", "value": auth.jwks},
                {"name": "SERVICE_ACCOUNT_ISSUER", "value": auth.issuer},
                {"name": "ADMIN_SUBJECT", "value": auth.admin_subject}]
    env += [{"name": "SHADOW_SUBJECT", "value": f"system:serviceaccount:{model.namespace}:{SERVER_SERVICE_ACCOUNT}"},
            {"name": "SHADOW_TOKEN_FILE", "value": f"{SHADOW_TOKEN_MOUNT}/token"}]
    if fault_injection:
        env.append({"name": "FAULT_INJECTION", "value": "true"})
    return env


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
    # Rolled out as `kubectl rollout status` has it: the controller saw this template, every replica runs it, and
    # no pod of an older template is left (readyReplicas counts those too: while the new pod starts, the old one is
    # the ready one, and a Service switched onto this Deployment then would serve the old version).
    updated = int(status.get("updatedReplicas", 0))
    rolled_out = (int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
                  and updated >= replicas and int(status.get("replicas", 0)) <= updated)
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return TrackState(
        version=(meta.get("labels") or {}).get(api.LABEL_VERSION, ""),
        sha256=annotations.get(api.ANNOTATION_SHA256, ""),
        fingerprint=annotations.get(ANNOTATION_FINGERPRINT, ""),
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)),
        rolled_out=rolled_out or replicas == 0,
        serving=template_labels.get(api.LABEL_SERVING),
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
           {"name": "MODELWARDEN_RETRAINING_WINDOW", "value": timestamp(job.window)},
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


def shadow_env(mirror: MirrorTo, target_host: str) -> list[dict[str, Any]]:
    """The stable's mirror during a shadow stage: the candidate is the ``<model>-canary`` Service (either router
    creates it), by its ClusterIP (``target_host``): no cluster DNS needed, and stable for the Service's life
    (the MLModel owns it)."""
    target = f"http://{target_host}:{SERVER_PORT}"
    return [{"name": "SHADOW_TARGET_URL", "value": target},
            {"name": "SHADOW_PERCENT", "value": str(mirror.percent)}]


def deployment_manifest(model: ModelObject, spec: api.MLModelSpec, track: api.Track,
                        artifact: api.ArtifactVersion, replicas: int, fingerprint: str,
                        server_image: str = DEFAULT_SERVER_IMAGE, *, mirror: MirrorTo | None = None,
                        mirror_host: str = "", hidden: bool = False, auth: ServerAuth | None = None,
                        fault_injection: bool = False) -> dict[str, Any]:
    image = spec.serving.image or server_image
    selector = labels(model, track)
    pod_labels = {**selector, api.LABEL_VERSION: artifact.version}
    # On every pod, never in the Deployment's selector (immutable): flipping it rolls the pods, nothing else. The
    # standby's and a shadow candidate's pods answer no user (engine/standby.py: what the Service selects).
    pod_labels[api.LABEL_SERVING] = "false" if hidden or track == "standby" else "true"
    annotations = {api.ANNOTATION_SHA256: artifact.sha256, ANNOTATION_FINGERPRINT: fingerprint}
    contract = {"name": spec.feature_contract.name, "features": spec.feature_contract.features}
    # The server's environment (`python -m model_server --help-env`). spec.enabled is deliberately not here:
    # the server watches its MLModel, so the kill switch flips without a pod restart.
    env: list[dict[str, Any]] = [
        {"name": "MODEL_NAME", "value": model.name},
        {"name": "MODEL_VERSION", "value": artifact.version},
        # The standby serves only as the restored stable (its metrics count there); the server knows two tracks.
        {"name": "MODEL_TRACK", "value": "stable" if track == "standby" else track},
        {"name": "ARTIFACT_URI", "value": artifact.uri},
        {"name": "ARTIFACT_DIR", "value": f"{ARTIFACT_MOUNT}/artifact"},
        {"name": "ARTIFACT_SHA256", "value": artifact.sha256},
        {"name": "MODEL_FORMAT", "value": artifact.format},
        {"name": "ALLOW_JOBLIB", "value": "true" if spec.artifact.allow_unsafe_joblib else "false"},
        {"name": "NEUTRAL_PREDICTION", "value": spec.serving.neutral_prediction},
        {"name": "SLO_OBJECTIVE", "value": spec.slo.objective},
        {"name": "FEATURE_CONTRACT", "value": json.dumps(contract, separators=(",", ":"))},
        {"name": "FEEDBACK_DSN", "value": f"{ARTIFACT_MOUNT}/feedback.sqlite3"},
        # The container's CPU cgroup holds the server alone: its store thread can run in the idle class.
        {"name": "STORE_THREAD_IDLE", "value": "true"},
        {"name": "MLMODEL_WATCH", "value": "true"},
        {"name": "MLMODEL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "PORT", "value": str(SERVER_PORT)},
    ]
    if spec.rollout.shadow is not None:
        # The candidate compares with its own spec's threshold; nothing in a mirrored request chooses it.
        env.append({"name": "SHADOW_DECISION_THRESHOLD", "value": spec.rollout.shadow.decision_threshold})
    caller_env = auth_env(model, auth, fault_injection)
    if mirror is not None:
        env += shadow_env(mirror, mirror_host or f"{model.deployment_name('canary')}.{model.namespace}.svc")
    if spec.serving.feedback_store.dsn_secret_ref is not None:
        ref = spec.serving.feedback_store.dsn_secret_ref
        env = [e for e in env if e["name"] != "FEEDBACK_DSN"]
        env.append({"name": "FEEDBACK_DSN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    # What the `restricted` Pod Security level admits.
    security = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    volume_mounts = [{"name": "artifact", "mountPath": ARTIFACT_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "artifact", "emptyDir": {"sizeLimit": ARTIFACT_VOLUME_LIMIT}},
                                     {"name": "tmp", "emptyDir": {"sizeLimit": TMP_VOLUME_LIMIT}}]
    fetch_env: list[dict[str, Any]] = list(env)
    env = [*env, *caller_env]
    fetch_mounts: list[dict[str, Any]] = list(volume_mounts)
    # Only the server container holds the shadow token (the kubelet refreshes it before it expires).
    volumes.append({"name": "shadow-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": SHADOW_AUDIENCE, "expirationSeconds": SHADOW_TOKEN_SECONDS, "path": "token"}}]}})
    server_mounts = [*volume_mounts, {"name": "shadow-token", "mountPath": SHADOW_TOKEN_MOUNT, "readOnly": True}]
    if spec.artifact.signature is not None:
        # The fetch step verifies the directory's signature with the trusted keys before anything is loaded.
        volumes.append({"name": "trusted-keys", "configMap": {"name": spec.artifact.signature.config_map_name}})
        fetch_env = [*fetch_env, {"name": "ARTIFACT_TRUSTED_KEYS_DIR", "value": TRUSTED_KEYS_MOUNT}]
        fetch_mounts = [*volume_mounts, {"name": "trusted-keys", "mountPath": TRUSTED_KEYS_MOUNT, "readOnly": True}]
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
        "volumeMounts": server_mounts,
    }
    # Fetch and verify the artifact directory before the server starts (model_server/fetch.py).
    fetch = {"name": "fetch-artifact", "image": image, "command": ["python", "-m", "model_server.fetch"],
             "env": fetch_env, "securityContext": security, "volumeMounts": fetch_mounts,
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
                    "volumes": volumes,
                },
            },
        },
    }


def endpoint_selector(model: ModelObject, endpoints: Endpoints) -> dict[str, str]:
    """The user-facing Service's selector for ``endpoints`` (engine/standby.py decides which)."""
    if endpoints == "standby":
        return {api.LABEL_MODEL: model.name, api.LABEL_TRACK: "standby"}
    if endpoints == "serving":
        return {api.LABEL_MODEL: model.name, api.LABEL_SERVING: "true"}
    return {api.LABEL_MODEL: model.name}


def service_manifest(model: ModelObject, name: str, selector: dict[str, str]) -> dict[str, Any]:
    """A Service ``name`` in front of the pods ``selector`` picks, on the server's port."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": model.namespace, "labels": selector | labels(model),
                     "ownerReferences": [model.owner_reference()]},
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}]},
    }


def server_identity_manifests(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The servers' ServiceAccount in ``namespace`` and its RoleBinding to read their MLModel (the kill switch)."""
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
    return account, binding


def incident_configmap(model: ModelObject, rollback: api.Rollback, filename: str, data: Any) -> dict[str, Any]:
    """The ConfigMap that holds an incident's files, named after the rollback id; ``filename`` holds ``data`` as
    JSON. Each writer applies only its own file (server-side apply merges them)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{model.name}-{rollback.id}"[:253], "namespace": model.namespace,
                     "labels": {**labels(model), f"{api.GROUP}/incident": rollback.id},
                     "ownerReferences": [model.owner_reference()]},
        "data": {filename: json.dumps(data, indent=2, sort_keys=True)},
    }
