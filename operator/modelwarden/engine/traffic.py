"""How a canary weight becomes replicas and route weights, per traffic router.

``replicas``: one Service selects both Deployments, so the weight *is* the replica ratio. The canary gets
``ceil(N*w/100)`` replicas and the stable keeps enough that the canary's share never exceeds ``w``
(it may be lower: a ratio of whole pods cannot hit every percentage).

``gatewayAPI``: the HTTPRoute's backend weights carry the exact percentage; each track keeps enough replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RouterType = Literal["replicas", "gatewayAPI"]


@dataclass(frozen=True)
class TrafficPlan:
    stable_replicas: int
    canary_replicas: int
    # percent of requests, as the router realises it
    canary_weight: int

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight


def plan_traffic(router: RouterType, replicas: int, weight: int, *, canary_ready: bool) -> TrafficPlan:
    """Replicas and weights for ``weight`` percent on the canary; no traffic while the canary is not Ready."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} outside 0..100")
    if weight == 0:
        return TrafficPlan(stable_replicas=replicas, canary_replicas=0, canary_weight=0)
    canary = max(1, math.ceil(replicas * weight / 100))
    if not canary_ready:
        # Bring the canary up beside a full stable; route nothing to it yet.
        return TrafficPlan(stable_replicas=replicas, canary_replicas=canary, canary_weight=0)
    if router == "gatewayAPI":
        return TrafficPlan(stable_replicas=replicas if weight < 100 else 0, canary_replicas=canary,
                           canary_weight=weight)
    if weight == 100:
        return TrafficPlan(stable_replicas=0, canary_replicas=replicas, canary_weight=100)
    stable = max(replicas - canary, math.ceil(canary * (100 - weight) / weight))
    return TrafficPlan(stable_replicas=stable, canary_replicas=canary,
                       canary_weight=math.floor(100 * canary / (canary + stable)))
