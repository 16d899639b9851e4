"""The kopf layer: watch MLModels, ModelApprovals, our Deployments and retraining Jobs; hand them to the controller.

Handlers only feed caches and wake models; every decision is made in :mod:`modelwarden.engine` by the
:class:`~modelwarden.handlers.controller.Controller`. Only ``on.event`` handlers are used, so kopf itself
writes nothing to the objects (no finalizers, no progress annotations) — the operator never touches ``spec``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client, config

from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.adapters.kube import KubeWorkloads
from modelwarden.adapters.notify import GrafanaAnnotator, LogOnly, WebhookNotifier
from modelwarden.adapters.prometheus import PrometheusMetrics
from modelwarden.adapters.routers import GatewayAPIRouter, ReplicasRouter, TrafficRouter
from modelwarden.adapters.server_admin import HTTPServerAdmin
from modelwarden.api import v1alpha1 as api
from modelwarden.handlers.controller import Controller
from modelwarden.handlers.settings import Settings

_REPLICAS = ReplicasRouter()


def _api_client(connections: int) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    # kopf logs every handler call at INFO: a line per watch event, thousands a minute in a large fleet.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    # The resources are named explicitly: no cluster-wide CRD/namespace scanning (and no RBAC for it).
    settings.scanning.disabled = True
    config = Settings.from_env()
    api_client = _api_client(config.workers * 2)
    workloads = KubeWorkloads(api_client, concurrency=config.workers * 2)

    def router_for(spec: api.MLModelSpec) -> TrafficRouter:
        routing = spec.rollout.traffic_routing
        if routing.type == "gatewayAPI" and routing.gateway_api is not None:
            return GatewayAPIRouter(api_client, routing.gateway_api.http_route)
        return _REPLICAS

    controller = Controller(
        workloads=workloads, status_writer=workloads, events=workloads, artifacts=URIArtifactStore(),
        router_for=router_for,
        resync_seconds=config.resync_seconds,
        workers=config.workers,
        evaluation_interval=config.evaluation_interval,
        metrics=(PrometheusMetrics(config.prometheus_url, timeout_seconds=config.prometheus_timeout)
                 if config.prometheus_url else None),
        notifier=(WebhookNotifier(config.webhook_url, config.webhook_flavor, config.pagerduty_routing_key)
                  if config.webhook_url else LogOnly()),
        annotator=GrafanaAnnotator(config.grafana_url, config.grafana_token) if config.grafana_url else LogOnly(),
        server_admin=HTTPServerAdmin(config.admin_token, config.server_url_template) if config.admin_token else None,
    )
    if controller.metrics is None:
        logger.warning("MODELWARDEN_PROMETHEUS_URL is not set: no canary analysis and no automatic rollback")
    # kopf starts watching only after the startup handlers: the listing below is never newer than its events.
    controller.prime(await workloads.list_all(list(config.namespaces)))
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


@kopf.on.event("batch", "v1", "jobs", labels={api.LABEL_MANAGED_BY: "modelwarden"})
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["controller"].observe_job(event.get("type"), event["object"])
