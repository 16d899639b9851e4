"""One pass for one model: observe → ``engine.decide`` (and ``decide_retraining``) → apply → write status once.

Its inputs are explicit: the model as the watch caches hold it (:class:`ModelState`), what the last metrics
cycle learned (:class:`FleetReading`) and the time. It reads only what the caches cannot hold (the artifact's
sha256 and, when the spec requires one, its directory's signature against the trusted keys; the router's
current weight; report files), and returns what the caller must do next (:class:`Outcome`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from modelwarden.adapters.artifact_store import ArtifactStore, ArtifactUnavailable, ReportReader, sibling
from modelwarden.adapters.kube import Conflict, EventRecorder, KubeError, ModelStatusWriter, Workloads
from modelwarden.adapters.ledger import LedgerWriter
from modelwarden.adapters.manifests import ModelObject
from modelwarden.adapters.model_actions import ActionStatusWriter, requests_of, unrecorded
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import Event
from modelwarden.engine.decision import ArtifactCheck, Observation, SignatureVerdict
from modelwarden.engine.ledger import Entry, action_entry, annotation_entry, decision_entries
from modelwarden.engine.model_actions import ActionRequest, Admission, admit, handled, outcome, pending
from modelwarden.engine.retraining import Report, RetrainingObservation, decide_retraining, due_window
from modelwarden.engine.rollout import artifact_to_check, decide, promote_token
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
    # reads the trusted public keys of spec.artifact.signature
    workloads: Workloads
    resync_seconds: float = 60.0
    # issue 18: where each ModelAction's outcome is recorded (None: ModelActions are not handled)
    action_status: ActionStatusWriter | None = None
    # issue 18: the decision ledger (None: no records, e.g. unit tests of the rollout)
    ledger: LedgerWriter | None = None
    # tests only: called at named points so a test can kill the process exactly there (MODELWARDEN_FAULT)
    fault: Callable[[str], None] | None = None

    async def reconcile(self, state: ModelState, reading: FleetReading, now: dt.datetime) -> Outcome:
        meta = state.body["metadata"]
        model = ModelObject(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        spec = state.spec
        router = self.router_for(spec)
        # ModelActions: the oldest pending one is admitted into this pass (one per pass: each is acted on alone).
        request: ActionRequest | None = None
        admission: Admission | None = None
        if self.action_status is not None:
            todo = pending(requests_of(state.actions), state.status)
            if todo:
                request = todo[0]
                admission = admit(spec, state.status, request)
        observation = await self._observe(model, state, router, reading, admission)
        decision = decide(spec, state.status, observation, now)
        # Retraining decides on what the rollout decided (the stable version, the conditions) and adds to it.
        retraining = decide_retraining(spec, decision.status,
                                       await self._observe_retraining(model, state, decision.status, reading, now),
                                       now, model=model.name, generation=observation.generation)
        status = retraining.status
        if request is not None and admission is not None:
            status = await self._settle(model, spec, state.status, status, request, admission, now)
        # The decision ledger: recorded before acting, except a rollback's, which acts first (traffic back on the
        # prior SHA is what protects users) and is recorded right after, in the same pass and retry loop.
        entries = self._ledger_entries(state, observation, (*decision.events, *retraining.events), status)
        acts_first = any(e.recorded_after_acting for e in entries)
        head = None
        if not acts_first:
            head = await self._append(model, entries, observation.generation, now)
        await self.applier.apply(model, spec, router, (*decision.actions, *retraining.actions), now.timestamp())
        if acts_first:
            head = await self._append(model, entries, observation.generation, now)
        if head is not None:
            status = status.model_copy(update={"ledger": head})
            own_metrics.ledger_head(model.namespace, model.name, head.seq, head.hash)
        outcome_written, conflict = await self._write_status(state.body, state.status, status)
        if self.fault is not None and request is not None and outcome_written is not None:
            self.fault("after-action-committed")
        if self.action_status is not None and not conflict:
            await self._record_actions(state, outcome_written, now)
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
        if request is not None:
            waits.append(1.0)  # the next pending action, if any, in the next pass
        return Outcome(requeue_after=min([*waits, self.resync_seconds]), written=outcome_written, conflict=conflict)

    def _ledger_entries(self, state: ModelState, observation: Observation, events: tuple[Event, ...],
                        new: api.MLModelStatus) -> list[Entry]:
        if self.ledger is None:
            return []
        old, spec = state.status, state.spec
        entries = decision_entries(events, old, new, spec_version=spec.version, spec_sha256=spec.artifact.sha256,
                                   decision_key=str(state.body["metadata"].get("resourceVersion", "")))
        done = {h.uid for h in old.handled_actions}
        requests = {r.uid: r for r in requests_of(state.actions)}
        for h in new.handled_actions:
            if h.uid not in done:
                r = requests.get(h.uid)
                sha = next((x.sha256 for x in new.history if x.version == h.version), spec.artifact.sha256)
                entries.insert(0, action_entry(h, to=r.to if r else None, why=r.reason if r else "", sha256=sha))
        entries += self._annotation_entries(state, observation, new)
        return entries

    @staticmethod
    def _annotation_entries(state: ModelState, observation: Observation, new: api.MLModelStatus) -> list[Entry]:
        """The deprecated annotations, when they (not a ModelAction) carried something out: identity unknown."""
        annotations = state.body["metadata"].get("annotations") or {}
        old, out = state.status, []
        for verb, key in (("promote", api.ANNOTATION_PROMOTE), ("resume", api.ANNOTATION_RESUME),
                          ("rollback", api.ANNOTATION_ROLLBACK)):
            value = annotations.get(key)
            if not value or getattr(observation, verb) != value:
                continue  # absent, or a ModelAction took its place in this pass
            synthetic = ActionRequest(uid=value, name="", verb=verb, requester="")
            if verb == "promote" and (old.canary is None or old.current_step_index is None
                                      or promote_token(old.canary.version, old.current_step_index) != value):
                continue
            if verb == "resume" and (old.halt is None or old.halt.id != value):
                continue
            if outcome(synthetic, old, new) is None:
                continue
            version = old.canary.version if verb == "promote" and old.canary else (
                old.stable.version if old.stable else state.spec.version)
            out.append(annotation_entry(verb, value, version=version, sha256=""))
        return out

    async def _append(self, model: ModelObject, entries: list[Entry], generation: int,
                      now: dt.datetime) -> api.LedgerHead | None:
        if self.ledger is None or not entries:
            return None
        return await self.ledger.append(model, entries, generation=generation, now=now)

    async def _settle(self, model: ModelObject, spec: api.MLModelSpec, old: api.MLModelStatus,
                      new: api.MLModelStatus, request: ActionRequest, admission: Admission,
                      now: dt.datetime) -> api.MLModelStatus:
        """``new`` with the admitted request recorded as handled, when this pass carried it out or rejected it."""
        if admission.rejected is not None:
            result = (api.ActionOutcome.REJECTED, *admission.rejected)
        else:
            failure = None
            if admission.reenable:
                # Every pod of each serving track (their calls' failures name the pod).
                problems = [(await self.applier.server_admin.reenable(model, track, request.requester,
                                                                      request.reason))[1]
                            for track in ("stable", "canary") if getattr(new, track) is not None]
                failure = "; ".join(p for p in problems if p) or None
            found = outcome(request, old, new, failure)
            if found is None:
                return new
            result = found
        version = (old.canary.version if request.verb == "promote" and old.canary is not None
                   else old.stable.version if old.stable is not None else spec.version)
        log.info("%s/%s: ModelAction %s (%s by %s): %s %s", model.namespace, model.name, request.name, request.verb,
                 request.requester, result[0], result[2])
        return handled(new, request, result, now, version)

    async def _record_actions(self, state: ModelState, written: dict[str, Any] | None, now: dt.datetime) -> None:
        """Copy each handled action's outcome to its status (after the model's status write: the commit point).
        A failure is retried on a later pass: the action stays without outcome, its uid in handledActions."""
        assert self.action_status is not None
        status = state.status
        if written is not None:
            status = api.MLModelStatus.model_validate(written.get("status") or {})
        waiting = unrecorded(state.actions)
        for h in status.handled_actions:
            body = waiting.get(h.uid)
            if body is None:
                continue
            meta = body["metadata"]
            try:
                await self.action_status.record(meta["namespace"], meta["name"], api.ModelActionStatus(
                    outcome=h.outcome, reason=h.reason, message=h.message, handled_at=h.at,
                    model_generation=int(state.body["metadata"].get("generation", 0)),
                    ledger_seq=status.ledger.seq if status.ledger is not None else None))
            except KubeError as e:
                log.warning("%s: %s", meta["name"], e)

    async def _observe(self, model: ModelObject, state: ModelState, router: TrafficRouter,
                       reading: FleetReading, admission: Admission | None = None) -> Observation:
        check = None
        uri = artifact_to_check(state.spec, state.status, state.standby)
        if uri is not None:
            try:
                check = ArtifactCheck(uri=uri, actual=await self.artifacts.sha256(uri))
            except ArtifactUnavailable as e:
                check = ArtifactCheck(uri=uri, error=str(e))
            signature = state.spec.artifact.signature
            if signature is not None and check.error is None:
                try:
                    check = replace(check, signature=await self._verify_signature(model, uri, signature))
                except ArtifactUnavailable as e:  # the directory the signature covers could not be fetched
                    check = ArtifactCheck(uri=uri, error=str(e))
        route_weight = None
        try:
            route_weight = await router.canary_weight(model)
        except KubeError as e:
            log.warning("%s/%s: %s", model.namespace, model.name, e)
        meta = state.body["metadata"]
        annotations = meta.get("annotations") or {}
        endpoints = self.applier.endpoints_applied(model, state.spec)
        return Observation(
            generation=int(meta.get("generation", 0)),
            approvals=state.approvals,
            stable=state.stable,
            canary=state.canary,
            standby=state.standby,
            services_present=endpoints is not None,
            endpoints=endpoints or "serving",
            route_canary_weight=route_weight,
            artifact=check,
            # A ModelAction admitted into this pass, else the deprecated annotations (identity unknown).
            promote=admission.promote if admission and admission.promote else annotations.get(api.ANNOTATION_PROMOTE),
            resume=admission.resume if admission and admission.resume else annotations.get(api.ANNOTATION_RESUME),
            rollback=(admission.rollback if admission and admission.rollback
                      else annotations.get(api.ANNOTATION_ROLLBACK)),
            metrics=reading.view(model.namespace, model.name, state.spec),
            metrics_configured=reading.configured,
            metrics_error=reading.error,
        )

    async def _verify_signature(self, model: ModelObject, uri: str,
                                signature: api.ArtifactSignature) -> SignatureVerdict:
        try:
            keys = await self.workloads.read_trusted_keys(model.namespace, signature.config_map_name)
        except KubeError as e:
            return SignatureVerdict(False, api.Reason.TRUSTED_KEYS_UNAVAILABLE,
                                    f"trusted keys (ConfigMap {signature.config_map_name}): {e}")
        if not keys:
            return SignatureVerdict(False, api.Reason.TRUSTED_KEYS_UNAVAILABLE,
                                    f"ConfigMap {signature.config_map_name} holds no public key")
        return await self.artifacts.verify_signature(uri, keys)

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
