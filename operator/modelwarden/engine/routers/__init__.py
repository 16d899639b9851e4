"""The traffic routers' planners, by the name ``spec.rollout.trafficRouting.type`` gives them."""

from __future__ import annotations

from modelwarden.api.v1alpha1 import MLModelSpec
from modelwarden.engine.routers import gateway_api, replicas
from modelwarden.engine.traffic import RouterPlanner

PLANNERS: dict[str, RouterPlanner] = {router.NAME: router.PLANNER for router in (replicas, gateway_api)}


def planner_for(spec: MLModelSpec) -> RouterPlanner:
    return PLANNERS[spec.rollout.traffic_routing.type]
