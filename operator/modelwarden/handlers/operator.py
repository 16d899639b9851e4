"""The kopf layer: watch MLModels, ModelApprovals and our Deployments, and hand them to the controller.

Handlers only feed caches and wake models; every decision is made in :mod:`modelwarden.engine` by the
:class:`~modelwarden.handlers.controller.Controller`. Only ``on.event`` handlers are used, so kopf itself
writes nothing to the objects (no finalizers, no progress annotations) — the operator never touches ``spec``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from kubernetes import client, config

from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.adapters.kube import KubeWorkloads
from modelwarden.adapters.routers import GatewayAPIRouter, ReplicasRouter, TrafficRouter
from modelwarden.api import v1alpha1 as api
from modelwarden.handlers.controller import Controller

_REPLICAS = ReplicasRouter()


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    api_client = _api_client()
    workloads = KubeWorkloads(api_client)

    def router_for(spec: api.MLModelSpec) -> TrafficRouter:
        routing = spec.rollout.traffic_routing
        if routing.type == "gatewayAPI" and routing.gateway_api is not None:
            return GatewayAPIRouter(api_client, routing.gateway_api.http_route)
        return _REPLICAS

    controller = Controller(
        workloads=workloads, status_writer=workloads, events=workloads, artifacts=URIArtifactStore(),
        router_for=router_for,
        resync_seconds=float(os.environ.get("MODELWARDEN_RESYNC_SECONDS", "60")),
    )
    # kopf starts watching only after the startup handlers: the listing below is never newer than its events.
    namespaces = [n for n in os.environ.get("MODELWARDEN_NAMESPACES", "").split(",") if n]
    controller.prime(await workloads.list_all(namespaces))
    controller.start()
    memo["controller"] = controller


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()


@kopf.on.event(api.GROUP, api.VERSION, api.MLMODEL_PLURAL)
async def mlmodel_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].observe_model(event.get("type"), event["object"])


@kopf.on.event(api.GROUP, api.VERSION, api.APPROVAL_PLURAL)
async def approval_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].observe_approval(event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels={api.LABEL_MANAGED_BY: "modelwarden"})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].observe_deployment(event.get("type"), event["object"])
