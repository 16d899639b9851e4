"""The ``replicas`` router: one Service, ``<model>``, selects both tracks; the weight *is* the replica ratio the
engine plans, applied through the Deployments, so there is no route weight to read or set.

The Service selects ``LABEL_SERVING=true`` once every pod carries it (``endpoints``): a shadow stage's candidate
(until step 1 opens) and the warm standby carry "false"; after a rollback onto the standby it selects the
standby's pods only. With a shadow stage ``<model>-canary`` selects the candidate's pods: the stable's mirror
target (by its ClusterIP)."""

from __future__ import annotations

from modelwarden.adapters.kube import KubeClient
from modelwarden.adapters.manifests import ModelObject, endpoint_selector, labels, service_manifest
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.routers.replicas import NAME
from modelwarden.engine.traffic import Endpoints

__all__ = ["NAME", "ReplicasRouter", "from_spec"]


class ReplicasRouter:
    def __init__(self, kube: KubeClient, *, shadow: bool = False) -> None:
        self._kube = kube
        self._shadow = shadow

    async def ensure_objects(self, model: ModelObject, endpoints: Endpoints) -> None:
        if self._shadow:
            await self._kube.apply(self._kube.core.patch_namespaced_service,
                                   service_manifest(model, model.deployment_name("canary"), labels(model, "canary")))
        await self._kube.apply(self._kube.core.patch_namespaced_service,
                               service_manifest(model, model.name, endpoint_selector(model, endpoints)))

    async def canary_weight(self, model: ModelObject) -> int | None:
        return None

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None:
        return None


def from_spec(spec: api.MLModelSpec, kube: KubeClient) -> ReplicasRouter:
    return ReplicasRouter(kube, shadow=spec.rollout.shadow is not None)
