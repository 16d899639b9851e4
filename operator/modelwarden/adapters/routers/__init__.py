"""Traffic routers' adapters, one module per router (as Flagger does), behind :class:`TrafficRouter`.

Each adapter owns every object its router needs (Services, route weights) and names itself with the ``NAME`` of
its planner in ``engine/routers/``. Adding a router = one module here and one there, each listed in its
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from modelwarden.adapters.kube import KubeClient
from modelwarden.adapters.manifests import ModelObject
from modelwarden.adapters.routers import gateway_api, replicas
from modelwarden.api.v1alpha1 import MLModelSpec
from modelwarden.engine.traffic import Endpoints


class TrafficRouter(Protocol):
    async def ensure_objects(self, model: ModelObject, endpoints: Endpoints) -> None:
        """Create (server-side apply) everything the router needs for ``model``: its Services, …, the user-facing
        ones selecting ``endpoints``."""

    async def canary_weight(self, model: ModelObject) -> int | None:
        """The canary's weight as the router carries it now (None: not applicable or not found)."""

    async def set_canary_weight(self, model: ModelObject, weight: int) -> None: ...


ADAPTERS: dict[str, Callable[[MLModelSpec, KubeClient], TrafficRouter]] = {
    replicas.NAME: replicas.from_spec,
    gateway_api.NAME: gateway_api.from_spec,
}


def router_for(spec: MLModelSpec, kube: KubeClient) -> TrafficRouter:
    return ADAPTERS[spec.rollout.traffic_routing.type](spec, kube)
