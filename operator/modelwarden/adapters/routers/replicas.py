"""The ``replicas`` router: one Service, ``<model>``, selects both tracks; the weight *is* the replica ratio the
engine plans, applied through the Deployments, so there is no route weight to read or set.

With a shadow stage the Service also selects ``LABEL_SERVING=true``, which the stage's candidate pods lack until
step 1 opens (so they answer only mirrored requests), and ``<model>-canary`` selects the candidate's pods: the
stable's mirror target (by its ClusterIP)."""

from __future__ import annotations

from modelwarden.adapters.kube import KubeClient
from modelwarden.adapters.manifests import ModelObject, labels, service_manifest
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.routers.replicas import NAME, gates_endpoints

__all__ = ["NAME", "ReplicasRouter", "from_spec"]


class ReplicasRouter:
    def __init__(self, kube: KubeClient, *, gated: bool = False) -> None:
        self._kube = kube
        self._gated = gated

    async def ensure_objects(self, model: ModelObject) -> None:
        selector = {api.LABEL_MODEL: model.name}
        if self._gated:
            selector[api.LABEL_SERVING] = "true"
            await self._kube.apply(self._kube.core.patch_namespaced_service,
                                   service_manifest(model, model.deployment_name("canary"), labels(model, "canary")))
        await self._kube.apply(self._kube.core.patch_namespaced_service, service_manifest(model, model.name, selector))

    async def canary_weight(self, model: ModelObject) -> int | None:
        return None

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None:
        return None


def from_spec(spec: api.MLModelSpec, kube: KubeClient) -> ReplicasRouter:
    return ReplicasRouter(kube, gated=gates_endpoints(spec))
