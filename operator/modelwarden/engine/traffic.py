"""How a canary weight becomes replicas and route weights: the planner each traffic router provides.

A router is a pair (Flagger-style): a pure planner here, under ``engine/routers/``, and an adapter under
``adapters/routers/`` that owns every object the router needs. The engine asks the planner, never the router's
name. Adding a router = one module on each side, listed in both registries (``routers/__init__.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

# Which pods the model's user-facing Service selects (every router's adapter maps it to its selectors):
# "model": every pod of the model (pods created before every pod carried the serving label);
# "serving": pods labelled serving=true (never a shadow candidate or the standby);
# "standby": the warm standby's pods only (a rollback served them: the stable's pods are the rolled-back version).
Endpoints = Literal["model", "serving", "standby"]


@dataclass(frozen=True)
class TrafficPlan:
    stable_replicas: int
    canary_replicas: int
    # percent of requests, as the router realises it
    canary_weight: int

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight


class RouterPlanner(Protocol):
    # The router carries the weight on a route of its own (the engine sets and reads it with SetRouteWeight);
    # False: the weight is the replica ratio, and the stable must grow before a canary pod joins.
    @property
    def weighted_route(self) -> bool: ...

    def plan(self, replicas: int, weight: int, *, canary_ready: bool) -> TrafficPlan:
        """Replicas and weights for ``weight`` percent on the canary; no traffic while it is not Ready."""


def before_routing(replicas: int, weight: int, *, canary_ready: bool) -> TrafficPlan | None:
    """What every router plans the same way: no canary at 0%, and an unready canary beside a full stable."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} outside 0..100")
    if weight == 0:
        return TrafficPlan(stable_replicas=replicas, canary_replicas=0, canary_weight=0)
    if not canary_ready:
        return TrafficPlan(stable_replicas=replicas, canary_replicas=canary_replicas(replicas, weight),
                           canary_weight=0)
    return None


def canary_replicas(replicas: int, weight: int) -> int:
    return max(1, math.ceil(replicas * weight / 100))
