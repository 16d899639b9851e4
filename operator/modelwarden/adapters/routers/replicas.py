"""The ``replicas`` router: one Service, ``<model>``, selects both tracks; the weight *is* the replica ratio the
engine plans, applied through the Deployments, so there is no route weight to read or set."""

from __future__ import annotations

from modelwarden.adapters.kube import KubeClient
from modelwarden.adapters.manifests import ModelObject, service_manifest
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.routers.replicas import NAME

__all__ = ["NAME", "ReplicasRouter", "from_spec"]


class ReplicasRouter:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def ensure_objects(self, model: ModelObject) -> None:
        await self._kube.apply(self._kube.core.patch_namespaced_service,
                               service_manifest(model, model.name, {api.LABEL_MODEL: model.name}))

    async def canary_weight(self, model: ModelObject) -> int | None:
        return None

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None:
        return None


def from_spec(spec: api.MLModelSpec, kube: KubeClient) -> ReplicasRouter:
    return ReplicasRouter(kube)
