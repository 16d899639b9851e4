"""metav1.Condition bookkeeping: ``lastTransitionTime`` moves only when ``status`` changes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from modelwarden.api.v1alpha1 import Condition
from modelwarden.engine.timestamps import timestamp

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(conditions: Iterable[Condition], *, type: str, status: bool | None, reason: str, message: str,
                  now: datetime, generation: int | None) -> list[Condition]:
    """Return ``conditions`` with ``type`` set; its transition time is kept if its status is unchanged."""
    value: ConditionStatus = "Unknown" if status is None else ("True" if status else "False")
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type:
            out.append(c)
            continue
        found = True
        since = c.last_transition_time if c.status == value else timestamp(now)
        out.append(Condition(type=type, status=value, reason=reason, message=message,
                             last_transition_time=since, observed_generation=generation))
    if not found:
        out.append(Condition(type=type, status=value, reason=reason, message=message,
                             last_transition_time=timestamp(now), observed_generation=generation))
    return out


def get_condition(conditions: Iterable[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def is_true(conditions: Iterable[Condition], type: str) -> bool:
    c = get_condition(conditions, type)
    return c is not None and c.status == "True"
