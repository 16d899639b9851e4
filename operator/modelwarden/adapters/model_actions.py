"""ModelActions at the Kubernetes edge: parse the cached objects, write each one's outcome to its status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from modelwarden.adapters.kube import KubeClient
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.model_actions import DEFAULT_TTL_SECONDS, ActionRequest


def requests_of(bodies: Iterable[Mapping[str, Any]]) -> list[ActionRequest]:
    out = []
    for body in bodies:
        meta, spec = body["metadata"], body.get("spec") or {}
        status = body.get("status") or {}
        out.append(ActionRequest(uid=meta.get("uid", ""), name=meta["name"], verb=spec.get("verb", ""),
                                 requester=spec.get("requester", ""), to=spec.get("to"),
                                 reason=spec.get("reason", ""), created=meta.get("creationTimestamp") or "",
                                 model_uid=spec.get("modelUid") or None,
                                 ttl_seconds=int(spec.get("ttlSeconds") or DEFAULT_TTL_SECONDS),
                                 recorded_outcome=status.get("outcome") or "",
                                 recorded_version=status.get("version") or ""))
    return out


def unrecorded(bodies: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """uid -> action whose status holds no outcome yet."""
    return {b["metadata"].get("uid", ""): b for b in bodies if not (b.get("status") or {}).get("outcome")}


class ActionStatusWriter(Protocol):
    async def record(self, namespace: str, name: str, status: api.ModelActionStatus) -> None: ...


class KubeActionStatusWriter:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def record(self, namespace: str, name: str, status: api.ModelActionStatus) -> None:
        await self._kube.call_discarding(
            f"record the outcome of ModelAction {namespace}/{name}",
            self._kube.custom.patch_namespaced_custom_object_status, api.GROUP, api.VERSION, namespace,
            api.ACTION_PLURAL, name, {"status": status.wire()})
