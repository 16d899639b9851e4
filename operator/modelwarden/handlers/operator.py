"""The kopf layer: watch MLModels, ModelApprovals, our Deployments and retraining Jobs; hand them to the controller.

Handlers only feed caches and wake models; every decision is made in :mod:`modelwarden.engine` by the
:class:`~modelwarden.handlers.controller.Controller`. Only ``on.event`` handlers are used, so kopf itself
writes nothing to the objects (no finalizers, no progress annotations) — the operator never touches ``spec``.

With leader election (``MODELWARDEN_LEADER_ELECTION=true``) every replica watches and keeps its caches warm, but
only the holder of the Lease runs the controller's workers and evaluation loop: on election it primes the caches
from a full listing (events that arrive during the listing are replayed on top of it), then starts. A replica
that loses the lease exits at once; the Deployment restarts it as a candidate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import kopf
from kubernetes import client, config

from modelwarden.adapters.artifact_store import URIArtifactStore
from modelwarden.adapters.feedback_store import PostgresFeedbackEvidence
from modelwarden.adapters.kube import (
    KubeClient,
    KubeError,
    KubeEventRecorder,
    KubeServerTargets,
    KubeStatusWriter,
    KubeWorkloads,
)
from modelwarden.adapters.leases import KubeLeases
from modelwarden.adapters.ledger import KubeLedger, LedgerSigner, trusted_ledger_key
from modelwarden.adapters.model_actions import KubeActionStatusWriter
from modelwarden.adapters.notify import GrafanaAnnotator, LogOnly, WebhookNotifier
from modelwarden.adapters.operator_identity import OperatorIdentity
from modelwarden.adapters.prometheus import PrometheusMetrics
from modelwarden.adapters.routers import TrafficRouter, router_for
from modelwarden.adapters.server_admin import HTTPServerAdmin, TemplateTargets
from modelwarden.api import v1alpha1 as api
from modelwarden.handlers import metrics
from modelwarden.handlers.caches import WatchCaches
from modelwarden.handlers.controller import Controller
from modelwarden.handlers.leader import ElectionConfig, LeaderElector
from modelwarden.handlers.settings import Settings

log = logging.getLogger("modelwarden.operator")

def _api_client(connections: int) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


Kind = Literal["model", "approval", "action", "deployment", "job"]


class Feed:
    """kopf's watch events into the watch caches. While a listing is in flight (:meth:`prime`), events are
    also recorded and replayed on top of the listing afterwards, so a listing taken while the watches already run
    (a new leader's) never overwrites or forgets what the watches delivered meanwhile."""

    def __init__(self, caches: WatchCaches) -> None:
        self.caches = caches
        self._recording: list[tuple[Kind, str | None, Mapping[str, Any]]] | None = None

    def observe(self, kind: Kind, event_type: str | None, body: Mapping[str, Any]) -> None:
        getattr(self.caches, f"observe_{kind}")(event_type, body)
        if self._recording is not None:
            self._recording.append((kind, event_type, body))

    async def prime(self, listing: Awaitable[Mapping[str, list[dict[str, Any]]]]) -> None:
        self._recording = []
        try:
            snapshot = await listing
        finally:
            replay, self._recording = self._recording, None
        self.caches.prime(snapshot)
        for kind, event_type, body in replay:
            self.observe(kind, event_type, body)


def _exit_now(why: str) -> None:
    """client-go's OnStoppedLeading: a replica that may no longer act must not run one more step."""
    log.critical("exiting: %s", why)
    logging.shutdown()
    os._exit(1)


def _fault(point: str | None) -> Callable[[str], None] | None:
    """Tests only (MODELWARDEN_FAULT): die like a SIGKILL at the named point, e.g. after-action-committed."""
    if not point:
        return None

    def reached(name: str) -> None:
        if name == point:
            log.critical("MODELWARDEN_FAULT=%s: exiting now", name)
            logging.shutdown()
            os._exit(137)

    return reached


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
    kube = KubeClient(api_client, concurrency=config.workers * 2)

    ledger = None
    if config.ledger:
        if config.ledger_key_file:
            with open(config.ledger_key_file, "rb") as f:
                signer = LedgerSigner.from_pem(f.read())
        else:
            signer = LedgerSigner.generate()
            logger.warning("MODELWARDEN_LEDGER_KEY_FILE is not set: the decision ledger is signed with an ephemeral "
                           "key (id %s), published like any other; mount a Secret for a stable key", signer.key_id)
        own_key = await trusted_ledger_key(kube, signer.key_id)
        if own_key is None:
            logger.warning("the ledger key %s is not in the cluster's TrustPolicy (%s): `modelwarden ledger verify` "
                           "will not accept its records until a cluster administrator adds it (an ephemeral key "
                           "never is by default)", signer.key_id, api.TRUST_POLICY_NAME)
        ledger = KubeLedger(kube, signer, key_namespace=config.ledger_key_namespace,
                            retention_days=config.ledger_retention_days, own_key=own_key)
        # In the background: records are signed (and chained) from the start; only verifiers need the public
        # key, and start-up (liveness, reconciling) must not wait for a namespace someone has yet to create.
        memo["ledger_key"] = asyncio.create_task(_publish_ledger_key(ledger, config.ledger_key_namespace))
        metrics.track_ledger(lambda: ledger.writes if ledger else 0, lambda: ledger.records if ledger else 0)
    else:
        logger.warning("MODELWARDEN_LEDGER=false: no decision ledger is written")

    # The operator's proof for its admin calls (TokenRequest for its own ServiceAccount) and what the servers
    # verify it with (the issuer keys, handed to them in each Deployment).
    identity = OperatorIdentity(kube, config.service_account_namespace, config.service_account_name)

    def router_of(spec: api.MLModelSpec) -> TrafficRouter:
        return router_for(spec, kube)

    controller = Controller(
        workloads=KubeWorkloads(kube, server_auth=identity.server_auth,
                                fault_injection=config.server_fault_injection),
        status_writer=KubeStatusWriter(kube), events=KubeEventRecorder(kube),
        artifacts=URIArtifactStore(), router_for=router_of,
        resync_seconds=config.resync_seconds,
        workers=config.workers,
        verification_capacity=config.verifications,
        evaluation_interval=config.evaluation_interval,
        metrics=(PrometheusMetrics(config.prometheus_url, timeout_seconds=config.prometheus_timeout,
                                   step_seconds=config.query_step)
                 if config.prometheus_url else None),
        notifier=(WebhookNotifier(config.webhook_url, config.webhook_flavor, config.pagerduty_routing_key)
                  if config.webhook_url else LogOnly()),
        annotator=GrafanaAnnotator(config.grafana_url, config.grafana_token) if config.grafana_url else LogOnly(),
        server_admin=HTTPServerAdmin(
            identity.token,
            targets=(TemplateTargets(config.server_url_template) if config.server_url_template
                     else KubeServerTargets(kube))),
        feedback_evidence=PostgresFeedbackEvidence(config.feedback_dsn) if config.feedback_dsn else None,
        action_status=KubeActionStatusWriter(kube),
        ledger=ledger,
        fault=_fault(config.fault),
    )
    if controller.metrics is None:
        logger.warning("MODELWARDEN_PROMETHEUS_URL is not set: no canary analysis and no automatic rollback")
    feed = Feed(controller.caches)
    metrics.track_sizes(lambda: len(controller.models), lambda: len(controller.queue))
    memo["controller"], memo["feed"] = controller, feed

    async def lead() -> None:
        await feed.prime(kube.list_all(list(config.namespaces)))
        controller.start()

    if not config.leader_election:
        # In the background, so start-up ends and liveness is served at once, whatever is missing; watch events
        # that arrive during the listing are replayed on top of it (Feed.prime), as for a new leader.
        async def lead_once_listed() -> None:
            await _prime_until_listed(feed, lambda: kube.list_all(list(config.namespaces)))
            controller.start()

        memo["lead"] = asyncio.create_task(lead_once_listed())
        metrics.LEADER.set(1)
        return
    elector = LeaderElector(
        KubeLeases(_api_client(2)),  # its own client and thread: renewals never wait behind reconciles
        ElectionConfig(namespace=config.lease_namespace, name=config.lease_name,
                       identity=f"{socket.gethostname()}_{uuid.uuid4()}", lease_duration=config.lease_duration,
                       renew_deadline=config.renew_deadline, retry_period=config.retry_period),
        on_started=lead, on_stopped=_exit_now)
    memo["elector"] = elector
    elector.start()


# Retries of a missing prerequisite: bounded, jittered (many replicas of many operators do not retry in step).
PREREQUISITE_RETRY_MIN_SECONDS = 2.0
PREREQUISITE_RETRY_MAX_SECONDS = 60.0


async def _publish_ledger_key(ledger: KubeLedger, namespace: str) -> None:
    """Publish the ledger's public key, retrying until it is done; a missing namespace is said once, clearly,
    and as the metric ``modelwarden_prerequisite_missing{prerequisite="ledger-key-namespace/<ns>"}``."""
    name = f"ledger-key-namespace/{namespace}"
    delay, reported = PREREQUISITE_RETRY_MIN_SECONDS, False
    while True:
        try:
            await ledger.publish_key()
        except Exception as e:  # an unreachable API server too: said, retried, never a dead task
            metrics.prerequisite(name, True)
            if not reported:
                why = (f"namespace {namespace} does not exist (create it, or set MODELWARDEN_LEDGER_KEY_NAMESPACE)"
                       if isinstance(e, KubeError) and e.status == 404 else f"{type(e).__name__}: {e}")
                log.error("prerequisite missing: the decision ledger's public key cannot be published: %s; "
                          "records are still written and signed, verifiers cannot check them until it is; "
                          "retrying every %gs at most", why, PREREQUISITE_RETRY_MAX_SECONDS)
                reported = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(PREREQUISITE_RETRY_MAX_SECONDS, delay * 2)
            continue
        metrics.prerequisite(name, False)
        if reported:
            log.warning("prerequisite restored: the decision ledger's public key is published in %s", namespace)
        return


async def _prime_until_listed(feed: Feed, listing: Callable[[], Awaitable[Mapping[str, list[dict[str, Any]]]]],
                              ) -> None:
    """Fill the caches from a full listing, retrying until it succeeds; a missing CRD (or namespace, or a
    permission) is said once, clearly, and as ``modelwarden_prerequisite_missing{prerequisite="listing"}``:
    nothing is decided on a half-filled cache."""
    delay, reported = PREREQUISITE_RETRY_MIN_SECONDS, False
    while True:
        try:
            await feed.prime(listing())
        except Exception as e:  # an unreachable API server too: said, retried, never a dead task
            metrics.prerequisite("listing", True)
            if not reported:
                hint = (" (are the CRDs installed? kubectl apply -f crds/, or the chart)"
                        if isinstance(e, KubeError) and e.status == 404 else "")
                log.error("prerequisite missing: cannot list what the operator manages: %s: %s%s; nothing is "
                          "reconciled until it can; retrying every %gs at most", type(e).__name__, e, hint,
                          PREREQUISITE_RETRY_MAX_SECONDS)
                reported = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(PREREQUISITE_RETRY_MAX_SECONDS, delay * 2)
            continue
        metrics.prerequisite("listing", False)
        if reported:
            log.warning("prerequisite restored: listing works, reconciling")
        return


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for name in ("ledger_key", "lead"):
        task: asyncio.Task[None] | None = memo.get(name)
        if task is not None:
            task.cancel()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    # Only after the workers stopped: then the next leader may act at once.
    elector: LeaderElector | None = memo.get("elector")
    if elector is not None:
        await elector.release()


@kopf.on.event(api.GROUP, api.VERSION, api.MLMODEL_PLURAL)
async def mlmodel_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["feed"].observe("model", event.get("type"), event["object"])


@kopf.on.event(api.GROUP, api.VERSION, api.APPROVAL_PLURAL)
async def approval_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["feed"].observe("approval", event.get("type"), event["object"])


@kopf.on.event(api.GROUP, api.VERSION, api.ACTION_PLURAL)
async def action_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["feed"].observe("action", event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels={api.LABEL_MANAGED_BY: "modelwarden"})
async def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["feed"].observe("deployment", event.get("type"), event["object"])


@kopf.on.event("batch", "v1", "jobs", labels={api.LABEL_MANAGED_BY: "modelwarden"})
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo["feed"].observe("job", event.get("type"), event["object"])
