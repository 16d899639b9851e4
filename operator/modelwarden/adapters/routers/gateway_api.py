"""The ``gatewayAPI`` router: it sets the backend weights of the HTTPRoute the user names in
``spec.rollout.trafficRouting.gatewayAPI.httpRoute``; the route's backendRefs must point at the
``<model>-stable`` and ``<model>-canary`` Services this router creates (beside ``<model>``, both tracks; the
warm standby's pods are in none of them until a rollback serves them, then in ``<model>-stable`` and ``<model>``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.client.exceptions import ApiException

from modelwarden.adapters.kube import KubeClient, KubeError
from modelwarden.adapters.manifests import ModelObject, endpoint_selector, labels, service_manifest
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.routers.gateway_api import NAME
from modelwarden.engine.traffic import Endpoints

__all__ = ["NAME", "GatewayAPIRouter", "from_spec"]

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"


def weighted_rules(route: dict[str, Any], model: ModelObject, weight: int) -> list[dict[str, Any]]:
    """The route's rules with our two backends weighted ``100-weight`` / ``weight``; others untouched."""
    names = {model.deployment_name("stable"): 100 - weight, model.deployment_name("canary"): weight}
    rules = []
    for rule in route.get("spec", {}).get("rules", []):
        refs = [{**ref, "weight": names[ref["name"]]} if ref.get("name") in names else ref
                for ref in rule.get("backendRefs", [])]
        rules.append({**rule, "backendRefs": refs})
    return rules


def canary_weight_of(route: dict[str, Any], model: ModelObject) -> int | None:
    canary = model.deployment_name("canary")
    for rule in route.get("spec", {}).get("rules", []):
        for ref in rule.get("backendRefs", []):
            if ref.get("name") == canary:
                return int(ref.get("weight", 1))
    return None


class GatewayAPIRouter:
    def __init__(self, kube: KubeClient, route_name: str) -> None:
        self._kube = kube
        self._custom = kube.custom
        self._route = route_name

    async def ensure_objects(self, model: ModelObject, endpoints: Endpoints) -> None:
        # After a rollback onto the warm standby the route's stable backend is the standby's pods.
        stable: api.Track = "standby" if endpoints == "standby" else "stable"
        services = [service_manifest(model, model.name, endpoint_selector(model, endpoints)),
                    service_manifest(model, model.deployment_name("stable"), labels(model, stable)),
                    service_manifest(model, model.deployment_name("canary"), labels(model, "canary"))]
        await asyncio.gather(*(self._kube.apply(self._kube.core.patch_namespaced_service, svc) for svc in services))

    async def _get(self, model: ModelObject) -> dict[str, Any]:
        try:
            route: Any = await asyncio.to_thread(
                self._custom.get_namespaced_custom_object, GATEWAY_GROUP, GATEWAY_VERSION, model.namespace,
                "httproutes", self._route)
        except ApiException as e:
            raise KubeError(f"read HTTPRoute {model.namespace}/{self._route}: {e.status} {e.reason}",
                            int(e.status or 0)) from e
        return dict(route)

    async def canary_weight(self, model: ModelObject) -> int | None:
        return canary_weight_of(await self._get(model), model)

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None:
        route = await self._get(model)
        if canary_weight_of(route, model) is None:
            raise KubeError(f"HTTPRoute {model.namespace}/{self._route} has no backendRef to "
                            f"{model.deployment_name('canary')}: add one (weight 0) so the canary can be routed")
        patch = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                 "spec": {"rules": weighted_rules(route, model, weight)}}
        try:
            await asyncio.to_thread(self._custom.patch_namespaced_custom_object, GATEWAY_GROUP, GATEWAY_VERSION,
                                    model.namespace, "httproutes", self._route, patch)
        except ApiException as e:
            raise KubeError(f"weight HTTPRoute {model.namespace}/{self._route}: {e.status} {e.reason}",
                            int(e.status or 0)) from e


def from_spec(spec: api.MLModelSpec, kube: KubeClient) -> GatewayAPIRouter:
    routing = spec.rollout.traffic_routing.gateway_api
    assert routing is not None, "the CRD requires gatewayAPI.httpRoute with this router"
    return GatewayAPIRouter(kube, routing.http_route)
