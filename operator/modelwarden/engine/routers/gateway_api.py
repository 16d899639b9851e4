"""The ``gatewayAPI`` router: an HTTPRoute's backend weights carry the exact percentage; each track keeps
enough replicas for its share."""

from __future__ import annotations

from dataclasses import dataclass

from modelwarden.engine.traffic import TrafficPlan, before_routing, canary_replicas

NAME = "gatewayAPI"


@dataclass(frozen=True)
class RouteWeightPlanner:
    weighted_route: bool = True

    def plan(self, replicas: int, weight: int, *, canary_ready: bool) -> TrafficPlan:
        early = before_routing(replicas, weight, canary_ready=canary_ready)
        if early is not None:
            return early
        return TrafficPlan(stable_replicas=replicas if weight < 100 else 0,
                           canary_replicas=canary_replicas(replicas, weight), canary_weight=weight)


PLANNER = RouteWeightPlanner()
