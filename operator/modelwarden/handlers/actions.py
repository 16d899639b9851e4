"""Applying the engine's actions: one ``match`` over :data:`modelwarden.engine.actions.Action`, in one place.

Traffic actions (tracks, route weights, the router's objects) raise on failure: the pass is retried. What
follows a rollback's traffic move (flush/warm-up, Grafana, incident record, evidence, notification) is best
effort: each failure — a missing configuration included — is logged and recorded as a Warning Event
``<Action>Failed``, and blocks nothing; a rollback's notification and Grafana annotation that failed are tried
again on the model's later passes, and each is delivered once per rollback id. Adding an action = its dataclass
in ``engine/actions.py`` and one ``case`` here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelwarden.adapters.feedback_store import FeedbackEvidence
from modelwarden.adapters.kube import EventRecorder, KubeError, Workloads
from modelwarden.adapters.manifests import ModelObject
from modelwarden.adapters.notify import Annotator, LogOnly, Notifier
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.adapters.server_admin import HTTPServerAdmin, ServerAdmin
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import (
    Action,
    AnnotateGrafana,
    ApplyTrack,
    CollectFeedbackEvidence,
    CreateRetrainingJob,
    DeleteTrack,
    EnsureServices,
    FlushAndWarm,
    Notify,
    RecordIncident,
    SetRouteWeight,
)
from modelwarden.engine.traffic import Endpoints

log = logging.getLogger("modelwarden.actions")

Key = tuple[str, str]  # (namespace, name)
Clock = Callable[[], float]  # unix seconds


def router_shape(spec: api.MLModelSpec) -> str:
    """What the router's objects depend on besides the endpoints: a change (another router, a shadow stage's
    mirror Service) applies them again."""
    return spec.rollout.traffic_routing.type + ("/shadow" if spec.rollout.shadow is not None else "")


@dataclass
class ActionApplier:
    workloads: Workloads
    events: EventRecorder
    notifier: Notifier = field(default_factory=LogOnly)
    annotator: Annotator = field(default_factory=LogOnly)
    # Without an identity every admin call fails, and says why: missing configuration is reported, never skipped.
    server_admin: ServerAdmin = field(default_factory=lambda: HTTPServerAdmin(None))
    # Where a CriticalFeedback rollback's evidence is read: the feedback store itself (complete whichever pods are
    # gone); unset, the servers' admin API of the rolled-back track (only what live pods reach).
    feedback_evidence: FeedbackEvidence | None = None
    # What this process has applied once and need not apply again: per model, the router shape whose objects
    # exist and what its user-facing Service selects; namespaces that hold the servers' ServiceAccount and
    # RoleBinding.
    routers_ensured: dict[Key, tuple[str, Endpoints]] = field(default_factory=dict)
    identities_ensured: set[str] = field(default_factory=set)
    # A rollback's notifications and annotations this process delivered, keyed by the rollback's id: a pass
    # retried after a later failure (the ledger, the status write) does not send them again. Across a restart
    # the notifier's dedup key (the rollback id) keeps it one incident.
    delivered: set[tuple[str, str, str]] = field(default_factory=set)
    # What failed to be delivered, per model, retried on the model's later passes (in this process).
    undelivered: dict[Key, list[AnnotateGrafana | Notify]] = field(default_factory=dict)

    def endpoints_applied(self, model: ModelObject, spec: api.MLModelSpec) -> Endpoints | None:
        """What the model's user-facing Service selects, as applied by this process (None: not applied yet)."""
        shape, endpoints = self.routers_ensured.get((model.namespace, model.name), ("", "serving"))
        return endpoints if shape == router_shape(spec) else None

    def forget(self, key: Key) -> None:
        self.routers_ensured.pop(key, None)
        self.undelivered.pop(key, None)

    async def apply(self, model: ModelObject, spec: api.MLModelSpec, router: TrafficRouter,
                    actions: Iterable[Action], now: float) -> None:
        # Deployments first: Services can follow a moment later. The pods' ServiceAccount cannot: a pod created
        # without it fails, and the ReplicaSet controller backs off for minutes. It is per namespace, once.
        for action in sorted(actions, key=lambda a: type(a) is EnsureServices):
            await self._apply_one(model, spec, router, action, now)

    async def _apply_one(self, model: ModelObject, spec: api.MLModelSpec, router: TrafficRouter, action: Action,
                         now: float) -> None:
        failure: str | None = None
        match action:
            case EnsureServices(endpoints=endpoints):
                await router.ensure_objects(model, endpoints)
                self.routers_ensured[(model.namespace, model.name)] = (router_shape(spec), endpoints)
            case ApplyTrack(track=track, artifact=artifact, replicas=replicas, fingerprint=fingerprint, mirror=mirror,
                            hidden=hidden):
                if model.namespace not in self.identities_ensured:
                    await self.workloads.ensure_server_identity(model.namespace)
                    self.identities_ensured.add(model.namespace)
                await self.workloads.apply_track(model, spec, track, artifact, replicas, fingerprint, mirror=mirror,
                                                 hidden=hidden)
            case DeleteTrack(track=track):
                await self.workloads.delete_track(model, track)
            case SetRouteWeight(canary_weight=weight):
                await router.set_canary_weight(model, weight)
            case CreateRetrainingJob(name=name):
                await self.workloads.create_retraining_job(model, spec, action)
                log.info("%s/%s: retraining Job %s created", model.namespace, model.name, name)
            case RecordIncident(rollback=rollback):
                failure = await _kube_failure(self.workloads.record_incident(model, rollback))
            case CollectFeedbackEvidence(rollback=rollback, track=track, since_seconds=since, stakeholders=who):
                evidence: dict[str, Any]
                if self.feedback_evidence is not None:
                    read = await self.feedback_evidence.critical_feedback(model, now - since, who)
                    failure = read.error
                    evidence = {"source": "feedbackStore", "records": read.records, "truncated": read.truncated,
                                "error": failure}
                else:
                    records, calls, failure = await self.server_admin.feedback(model, track, now - since, who)
                    evidence = {"source": f"servers ({track} track)", "records": records, "error": failure,
                                "calls": [c.wire() for c in calls]}
                failure = await _kube_failure(self.workloads.record_evidence(
                    model, rollback, "feedback.json", evidence)) or failure
            case AnnotateGrafana() | Notify():
                failure = await self._deliver(model, action)
            case FlushAndWarm(flush_track=flush_track, warm_track=warm_track, rollback=rollback):
                problems: list[str | None] = []
                for admin_track, what in ((flush_track, "flush"), (warm_track, "warmup")):
                    if admin_track is None:
                        continue
                    calls, problem = await self.server_admin.call(model, admin_track, what)
                    problems.append(problem)
                    if rollback is not None:
                        # Which replica was flushed or warmed, and which was not, in the incident's record.
                        problems.append(await _kube_failure(self.workloads.record_evidence(
                            model, rollback, f"admin-{what}.json",
                            {"track": admin_track, "calls": [c.wire() for c in calls], "error": problem})))
                failure = "; ".join(p for p in problems if p) or None
        if failure:
            what = type(action).__name__
            log.warning("%s/%s: %s failed: %s", model.namespace, model.name, what, failure)
            with contextlib.suppress(KubeError):
                await self.events.record(model, "Warning", f"{what}Failed", failure)

    async def _deliver(self, model: ModelObject, action: AnnotateGrafana | Notify) -> str | None:
        """A rollback's notification or annotation, once per rollback id: skipped when this process delivered it,
        kept for :meth:`deliver_pending` when it failed (the pager down at 3 a.m. must not mean no page)."""
        rollback = action.rollback
        if isinstance(action, AnnotateGrafana):
            done = ("annotate", action.rollback.id, "")
        else:
            done = ("notify", rollback.id if rollback else "", action.summary)
        if rollback is not None and done in self.delivered:
            return None
        if isinstance(action, AnnotateGrafana):
            failure = await self.annotator.annotate(model.name, model.namespace, action.rollback)
        else:
            failure = await self.notifier.notify(model.name, model.namespace, action.severity, action.summary,
                                                 rollback)
        key = (model.namespace, model.name)
        pending = [a for a in self.undelivered.get(key, []) if a != action]
        if failure is None:
            self.delivered.add(done)
        elif rollback is not None:
            pending.append(action)
        if pending:
            self.undelivered[key] = pending
        else:
            self.undelivered.pop(key, None)
        return failure

    async def deliver_pending(self, model: ModelObject) -> bool:
        """Try again what failed to reach the pager or Grafana; whether anything is still undelivered."""
        for action in list(self.undelivered.get((model.namespace, model.name), [])):
            failure = await self._deliver(model, action)
            if failure:
                log.warning("%s/%s: %s still failing: %s", model.namespace, model.name, type(action).__name__,
                            failure)
        return bool(self.undelivered.get((model.namespace, model.name)))


async def _kube_failure(write: Any) -> str | None:
    """Await a best-effort write: its KubeError as text, or None."""
    try:
        await write
    except KubeError as e:
        return str(e)
    return None
