"""The ``replicas`` router: one Service selects both Deployments, so the weight *is* the replica ratio.

The canary gets ``ceil(N*w/100)`` replicas and the stable keeps enough that the canary's share never exceeds
``w`` (it may be lower: a ratio of whole pods cannot hit every percentage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelwarden.engine.traffic import TrafficPlan, before_routing, canary_replicas

NAME = "replicas"


@dataclass(frozen=True)
class ReplicaRatioPlanner:
    weighted_route: bool = False

    def plan(self, replicas: int, weight: int, *, canary_ready: bool) -> TrafficPlan:
        early = before_routing(replicas, weight, canary_ready=canary_ready)
        if early is not None:
            return early
        if weight == 100:
            return TrafficPlan(stable_replicas=0, canary_replicas=replicas, canary_weight=100)
        canary = canary_replicas(replicas, weight)
        stable = max(replicas - canary, math.ceil(canary * (100 - weight) / weight))
        return TrafficPlan(stable_replicas=stable, canary_replicas=canary,
                           canary_weight=math.floor(100 * canary / (canary + stable)))


PLANNER = ReplicaRatioPlanner()
