"""One pass for one model: observe → ``engine.decide`` (and ``decide_retraining``) → apply → write status once.

Its inputs are explicit: the model as the watch caches hold it (:class:`ModelState`), what the last metrics
cycle learned (:class:`FleetReading`) and the time. It reads only what the caches cannot hold (the artifact's
sha256, the router's current weight, report files), and returns what the caller must do next
(:class:`Outcome`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelwarden.adapters.artifact_store import ArtifactStore, ArtifactUnavailable, ReportReader, sibling
from modelwarden.adapters.kube import Conflict, EventRecorder, KubeError, ModelStatusWriter
from modelwarden.adapters.manifests import ModelObject
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.decision import ArtifactCheck, Observation
from modelwarden.engine.retraining import Report, RetrainingObservation, decide_retraining, due_window
from modelwarden.engine.rollout import artifact_to_check, decide
from modelwarden.handlers import metrics as own_metrics
from modelwarden.handlers.actions import ActionApplier
from modelwarden.handlers.caches import ModelState
from modelwarden.handlers.fleet import FleetReading

log = logging.getLogger("modelwarden.reconciler")

# Worth a line in the operator's log: what an on-call engineer looks for first.
LOGGED_REASONS = (api.Reason.ROLLBACK_STARTED, api.Reason.TRAFFIC_RESTORED, api.Reason.ROLLBACK_COMPLETE)


@dataclass(frozen=True)
class Outcome:
    requeue_after: float
    # the object as our status write returned it (None: status unchanged, or the write lost a race)
    written: dict[str, Any] | None = None
    # someone else wrote first: a newer object is on its way through the watch, decide again then
    conflict: bool = False


@dataclass
class Reconciler:
    artifacts: ArtifactStore
    reports: ReportReader
    router_for: Callable[[api.MLModelSpec], TrafficRouter]
    applier: ActionApplier
    status_writer: ModelStatusWriter
    events: EventRecorder
    resync_seconds: float = 60.0

    async def reconcile(self, state: ModelState, reading: FleetReading, now: dt.datetime) -> Outcome:
        meta = state.body["metadata"]
        model = ModelObject(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        spec = state.spec
        router = self.router_for(spec)
        observation = await self._observe(model, state, router, reading)
        decision = decide(spec, state.status, observation, now)
        # Retraining decides on what the rollout decided (the stable version, the conditions) and adds to it.
        retraining = decide_retraining(spec, decision.status,
                                       await self._observe_retraining(model, state, decision.status, reading, now),
                                       now, model=model.name, generation=observation.generation)
        await self.applier.apply(model, spec, router, (*decision.actions, *retraining.actions), now.timestamp())
        outcome_written, conflict = await self._write_status(state.body, state.status, retraining.status)
        for event in (*decision.events, *retraining.events):
            if event.reason == api.Reason.ROLLBACK_STARTED and decision.status.last_rollback is not None:
                own_metrics.rollback_started(model.namespace, model.name, decision.status.last_rollback.id)
            if event.reason in LOGGED_REASONS:
                log.warning("%s/%s %s: %s", model.namespace, model.name, event.reason, event.message)
            try:
                await self.events.record(model, event.type, event.reason, event.message)
            except KubeError as e:
                log.warning("could not record Event %s for %s/%s: %s", event.reason, model.namespace, model.name, e)
        waits = [w for w in (decision.requeue_after, retraining.requeue_after) if w is not None]
        return Outcome(requeue_after=min([*waits, self.resync_seconds]), written=outcome_written, conflict=conflict)

    async def _observe(self, model: ModelObject, state: ModelState, router: TrafficRouter,
                       reading: FleetReading) -> Observation:
        check = None
        uri = artifact_to_check(state.spec, state.status)
        if uri is not None:
            try:
                check = ArtifactCheck(uri=uri, actual=await self.artifacts.sha256(uri))
            except ArtifactUnavailable as e:
                check = ArtifactCheck(uri=uri, error=str(e))
        route_weight = None
        try:
            route_weight = await router.canary_weight(model)
        except KubeError as e:
            log.warning("%s/%s: %s", model.namespace, model.name, e)
        meta = state.body["metadata"]
        annotations = meta.get("annotations") or {}
        return Observation(
            generation=int(meta.get("generation", 0)),
            approvals=state.approvals,
            stable=state.stable,
            canary=state.canary,
            services_present=self.applier.router_ready(model, state.spec),
            route_canary_weight=route_weight,
            artifact=check,
            promote=annotations.get(api.ANNOTATION_PROMOTE),
            resume=annotations.get(api.ANNOTATION_RESUME),
            rollback=annotations.get(api.ANNOTATION_ROLLBACK),
            metrics=reading.view(model.namespace, model.name, state.spec),
            metrics_configured=reading.configured,
            metrics_error=reading.error,
        )

    async def _observe_retraining(self, model: ModelObject, state: ModelState, status: api.MLModelStatus,
                                  reading: FleetReading, now: dt.datetime) -> RetrainingObservation:
        r = status.retraining
        job = None
        if r is not None and r.last_job is not None and r.last_job.outcome == "Running":
            job = state.jobs.get(r.last_job.name)
        if due_window(state.spec, status, now) is None:
            return RetrainingObservation(job=job)
        # Read at the window: the serving artifact's bias report, the feature audit, and this cycle's metrics.
        bias = None
        if status.stable is not None:
            bias = await self._report(sibling(status.stable.uri, "bias-report.json"), "status")
        audit = None
        if state.spec.retraining.feature_audit_uri:
            audit = await self._report(state.spec.retraining.feature_audit_uri, "share")
        return RetrainingObservation(job=job, gates=reading.gate_inputs(model.namespace, model.name, now, bias, audit),
                                     metrics_error=reading.error)

    async def _report(self, uri: str, field: str) -> Report:
        try:
            doc = await self.reports.read_json(uri)
        except ArtifactUnavailable as e:
            return Report(uri, error=str(e))
        if not isinstance(doc, dict):
            return Report(uri, error="not a JSON object")
        value = doc.get(field)
        return Report(uri, value=None if value is None else str(value))

    async def _write_status(self, body: dict[str, Any], old: api.MLModelStatus, new: api.MLModelStatus,
                            ) -> tuple[dict[str, Any] | None, bool]:
        """Write status once and only on change: (the written object, whether someone else wrote first)."""
        if new.wire() == old.wire():
            return None, False
        try:
            return await self.status_writer.replace_status(body, new), False
        except Conflict:
            meta = body["metadata"]
            log.info("%s/%s changed while deciding; deciding again", meta["namespace"], meta["name"])
            return None, True
