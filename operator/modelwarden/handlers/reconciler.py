"""One pass for one model: observe → ``engine.decide`` (and ``decide_retraining``) → apply → write status once.

Its inputs are explicit: the model as the watch caches hold it (:class:`ModelState`), what the last metrics
cycle learned (:class:`FleetReading`) and the time. It reads only what the caches cannot hold (the router's current
weight; report files), asks the verification pool (handlers/verification.py) for the artifact's verdict (its
sha256 and, when the spec requires one, its directory's signature against the trusted keys), and returns what
the caller must do next (:class:`Outcome`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from modelwarden.adapters.artifact_store import (
    ArtifactError,
    ArtifactInvalid,
    ArtifactStore,
    ByteLimits,
    ReportReader,
    sibling,
)
from modelwarden.adapters.kube import Conflict, EventRecorder, KubeError, ModelStatusWriter, Workloads
from modelwarden.adapters.ledger import LedgerBroken, LedgerWriter
from modelwarden.adapters.manifests import ModelObject
from modelwarden.adapters.model_actions import ActionStatusWriter, requests_of, unrecorded
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.actions import Event
from modelwarden.engine.conditions import get_condition, set_condition
from modelwarden.engine.decision import ArtifactCheck, Observation, SignatureVerdict
from modelwarden.engine.ledger import Entry, action_entry, decision_entries
from modelwarden.engine.model_actions import (
    Admission,
    Plan,
    handled,
    ignoring_annotations,
    outcome,
    plan,
    promoters,
    prune_handled,
    verified,
    with_accountable,
)
from modelwarden.engine.retraining import Report, RetrainingObservation, decide_retraining, due_window
from modelwarden.engine.rollout import artifact_to_check, decide
from modelwarden.handlers import metrics as own_metrics
from modelwarden.handlers.actions import ActionApplier
from modelwarden.handlers.caches import ModelState
from modelwarden.handlers.fleet import FleetReading
from modelwarden.handlers.verification import VerificationPool

log = logging.getLogger("modelwarden.reconciler")

# A rollback's page or annotation that failed is tried again this often (the notifier retries briefly itself).
UNDELIVERED_RETRY_SECONDS = 15.0
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
    # issue 24: where artifacts are verified (never on the reconcile workers); the controller's wakes the model
    verification: VerificationPool = field(default_factory=lambda: VerificationPool(wake=lambda key: None))
    # The rollback each model's latest pass decided to walk (the controller pages with it when passes keep failing
    # before its status write: the same id, hence the same page, as the rollback's own).
    rolling_back: dict[tuple[str, str], api.Rollback] = field(default_factory=dict)

    async def reconcile(self, state: ModelState, reading: FleetReading, now: dt.datetime) -> Outcome:
        meta = state.body["metadata"]
        model = ModelObject(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        spec = state.spec
        router = self.router_for(spec)
        # ModelActions: every pending one is settled now or admitted; the most urgent admitted one is fed to this
        # pass (each is acted on alone), the others wait on their own.
        requests = requests_of(state.actions) if self.action_status is not None else []
        actions = (plan(spec, state.status, requests, now, model_uid=model.uid,
                        model_created=meta.get("creationTimestamp") or "")
                   if self.action_status is not None else Plan())
        observation = await self._observe(model, state, router, reading, actions.admission)
        if actions.admission is not None and actions.admission.verify is not None:
            actions = verified(actions, observation.artifact)  # refused before anything moves, if it must be
            if actions.fed is None:
                observation = replace(observation, rollback=None)
        decision = decide(spec, state.status, observation, now)
        rollback_target = artifact_to_check(spec, decision.status, state.standby)
        if (decision.status.phase == api.Phase.ROLLING_BACK and decision.requeue_after == 0
                and rollback_target is not None
                and rollback_target != artifact_to_check(spec, state.status, state.standby)):
            # A rollback just started and asks for its target's sha256: hash it now and walk the next step in
            # this same pass, so traffic moves before the ledger and status writes; were those to fail (a ledger
            # or API server outage), the retried pass starts the same rollback (same id) and acts the same again.
            observation = replace(observation,
                                  artifact=await self._verify(model, state.spec, rollback_target))
            step = decide(spec, decision.status, observation, now)
            decision = replace(step, actions=(*decision.actions, *step.actions),
                               events=(*decision.events, *step.events))
        key = (model.namespace, model.name)
        if decision.status.phase == api.Phase.ROLLING_BACK and decision.status.last_rollback is not None:
            self.rolling_back[key] = decision.status.last_rollback  # if this pass fails, the rollback it acts on
        else:
            self.rolling_back.pop(key, None)
        # Retraining decides on what the rollout decided (the stable version, the conditions) and adds to it.
        retraining = decide_retraining(spec, decision.status,
                                       await self._observe_retraining(model, state, decision.status, reading, now),
                                       now, model=model.name, generation=observation.generation)
        status = ignoring_annotations(retraining.status, meta.get("annotations") or {}, now, observation.generation)
        status = with_accountable(state.status, status, state.approvals, promoters(requests, state.status))
        status = prune_handled(status, requests)
        status = await self._settle(model, spec, state.status, status, actions, now)
        # The decision ledger: recorded before acting, except a rollback's, which acts first (traffic back on the
        # prior SHA is what protects users) and is recorded right after, in the same pass and retry loop.
        entries = self._ledger_entries(state, observation, (*decision.events, *retraining.events), status)
        acts_first = any(e.recorded_after_acting for e in entries)
        head = None
        broken: LedgerBroken | None = None
        if not acts_first:
            try:
                head = await self._append(model, entries, observation.generation, now)
            except LedgerBroken as e:
                # Decided but not recordable: nothing of this pass is carried out (a rollback, which acts first,
                # still is); the model says why and a person is paged.
                return await self._ledger_broken(model, state, state.status, e, observation.generation, now)
        await self.applier.apply(model, spec, router, (*decision.actions, *retraining.actions), now.timestamp())
        undelivered = await self.applier.deliver_pending(model)
        if acts_first:
            try:
                head = await self._append(model, entries, observation.generation, now)
            except LedgerBroken as e:
                broken = e
        if broken is not None:
            return await self._ledger_broken(model, state, status, broken, observation.generation, now)
        if head is not None:
            status = status.model_copy(update={"ledger": head})
            own_metrics.ledger_head(model.namespace, model.name, head.seq, head.hash)
            if get_condition(status.conditions, api.ConditionType.LEDGER_BROKEN) is not None:
                status = status.model_copy(update={"conditions": set_condition(
                    status.conditions, type=api.ConditionType.LEDGER_BROKEN, status=False,
                    reason=api.Reason.LEDGER_INTACT, message="the stored chain ends at the operator's checkpoint",
                    now=now, generation=observation.generation)})
        outcome_written, conflict = await self._write_status(state.body, state.status, status)
        if self.fault is not None and actions.fed is not None and outcome_written is not None:
            self.fault("after-action-committed")
        if self.action_status is not None and not conflict:
            await self._record_actions(state, outcome_written, now)
        for event in (*decision.events, *retraining.events, *_annotation_events(state.status, status)):
            if event.reason == api.Reason.ROLLBACK_STARTED and decision.status.last_rollback is not None:
                own_metrics.rollback_started(model.namespace, model.name, decision.status.last_rollback.id)
            if event.reason in LOGGED_REASONS:
                log.warning("%s/%s %s: %s", model.namespace, model.name, event.reason, event.message)
            try:
                await self.events.record(model, event.type, event.reason, event.message)
            except KubeError as e:
                log.warning("could not record Event %s for %s/%s: %s", event.reason, model.namespace, model.name, e)
        waits = [w for w in (decision.requeue_after, retraining.requeue_after) if w is not None]
        if {h.uid for h in status.handled_actions} - {h.uid for h in state.status.handled_actions}:
            waits.append(1.0)  # outcomes to copy to the actions, and what the next pass admits
        elif actions.fed is not None:
            waits.append(5.0)  # an admitted action waiting to be carried out (or to expire)
        if undelivered:
            waits.append(UNDELIVERED_RETRY_SECONDS)
        return Outcome(requeue_after=min([*waits, self.resync_seconds]), written=outcome_written, conflict=conflict)

    async def _ledger_broken(self, model: ModelObject, state: ModelState, status: api.MLModelStatus,
                             broken: LedgerBroken, generation: int, now: dt.datetime) -> Outcome:
        """``LedgerBroken=True`` with the reason, written once; a page when it is new. Nothing is appended,
        re-chained or re-signed: repairing the chain is a person's decision."""
        was = get_condition(state.status.conditions, api.ConditionType.LEDGER_BROKEN)
        status = status.model_copy(update={"conditions": set_condition(
            status.conditions, type=api.ConditionType.LEDGER_BROKEN, status=True, reason=broken.reason,
            message=broken.message, now=now, generation=generation)})
        log.error("%s/%s: %s: %s", model.namespace, model.name, broken.reason, broken.message)
        written, conflict = await self._write_status(state.body, state.status, status)
        if was is None or was.status != "True" or was.reason != broken.reason:
            summary = f"decision ledger broken ({broken.reason}): {broken.message}"
            failure = await self.applier.notifier.notify(model.name, model.namespace, "page", summary, None)
            if failure:
                log.warning("%s/%s: could not page about the ledger: %s", model.namespace, model.name, failure)
            try:
                await self.events.record(model, "Warning", api.ConditionType.LEDGER_BROKEN, broken.message)
            except KubeError as e:
                log.warning("could not record Event LedgerBroken for %s/%s: %s", model.namespace, model.name, e)
        return Outcome(requeue_after=self.resync_seconds, written=written, conflict=conflict)

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
        return entries

    async def _append(self, model: ModelObject, entries: list[Entry], generation: int,
                      now: dt.datetime) -> api.LedgerHead | None:
        if self.ledger is None or not entries:
            return None
        return await self.ledger.append(model, entries, generation=generation, now=now)

    async def _settle(self, model: ModelObject, spec: api.MLModelSpec, old: api.MLModelStatus,
                      new: api.MLModelStatus, actions: Plan, now: dt.datetime) -> api.MLModelStatus:
        """``new`` with the outcome of every request this pass settled, and of the fed one if it was carried out."""
        results = list(actions.settled)
        request, admission = actions.fed, actions.admission
        if request is not None and admission is not None:
            failure = None
            if admission.reenable:
                # Every pod of each serving track (their calls' failures name the pod).
                problems = [(await self.applier.server_admin.reenable(model, track, request.requester,
                                                                      request.reason))[1]
                            for track in ("stable", "canary") if getattr(new, track) is not None]
                failure = "; ".join(p for p in problems if p) or None
            found = outcome(request, old, new, failure)
            if found is not None:
                results.append((request, found))
        for r, result in results:
            version = (old.canary.version if r.verb == "promote" and old.canary is not None
                       else old.stable.version if old.stable is not None else spec.version)
            log.info("%s/%s: ModelAction %s (%s by %s): %s %s", model.namespace, model.name, r.name, r.verb,
                     r.requester, result[0], result[2])
            new = handled(new, r, result, now, version)
        return new

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
                    ledger_seq=status.ledger.seq if status.ledger is not None else None, version=h.version))
            except KubeError as e:
                log.warning("%s: %s", meta["name"], e)

    async def _observe(self, model: ModelObject, state: ModelState, router: TrafficRouter,
                       reading: FleetReading, admission: Admission | None = None) -> Observation:
        check = None
        # A rollback's target is read again before the action is admitted (engine.model_actions.verified).
        uri = (admission.verify.uri if admission is not None and admission.verify is not None
               else artifact_to_check(state.spec, state.status, state.standby))
        if uri is not None:
            check = await self._verify(model, state.spec, uri)
        route_weight = None
        try:
            route_weight = await router.canary_weight(model)
        except KubeError as e:
            log.warning("%s/%s: %s", model.namespace, model.name, e)
        meta = state.body["metadata"]
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
            # Only a ModelAction admitted into this pass (a proven requester) decides these.
            promote=admission.promote if admission else None,
            resume=admission.resume if admission else None,
            rollback=admission.rollback if admission else None,
            metrics=reading.view(model.namespace, model.name, state.spec),
            metrics_configured=reading.configured,
            metrics_error=reading.error,
        )

    async def _verify(self, model: ModelObject, spec: api.MLModelSpec, uri: str) -> ArtifactCheck:
        """The verdict on ``uri`` from the verification pool, or a pending check (the verdict wakes the model)."""
        limits = spec.artifact.limits
        byte_limits = ByteLimits(max_file_bytes=limits.max_file_bytes, max_artifact_bytes=limits.max_artifact_bytes)
        signature = spec.artifact.signature

        async def run() -> ArtifactCheck:
            try:
                check = ArtifactCheck(uri=uri, actual=await self.artifacts.sha256(uri, byte_limits))
                if signature is not None:
                    check = replace(check, signature=await self._verify_signature(model, uri, signature, byte_limits))
            except ArtifactError as e:  # only ArtifactInvalid proves anything about the bytes
                return ArtifactCheck(uri=uri, error=str(e), failure=e.reason, invalid=isinstance(e, ArtifactInvalid))
            return check

        ident = (uri, byte_limits, signature.config_map_name if signature is not None else None)
        verdict = await self.verification.verdict((model.namespace, model.name), ident, run, uri=uri,
                                                  deadline_seconds=limits.verify_timeout_seconds)
        return verdict if verdict is not None else ArtifactCheck(uri=uri, pending=True)

    async def _verify_signature(self, model: ModelObject, uri: str, signature: api.ArtifactSignature,
                                limits: ByteLimits) -> SignatureVerdict:
        try:
            keys = await self.workloads.read_trusted_keys(model.namespace, signature.config_map_name)
        except KubeError as e:
            return SignatureVerdict(False, api.Reason.TRUSTED_KEYS_UNAVAILABLE,
                                    f"trusted keys (ConfigMap {signature.config_map_name}): {e}")
        if not keys:
            return SignatureVerdict(False, api.Reason.TRUSTED_KEYS_UNAVAILABLE,
                                    f"no public key in ConfigMap {signature.config_map_name} is trusted by the "
                                    f"cluster's TrustPolicy {api.TRUST_POLICY_NAME} (a namespace may only narrow "
                                    "it)")
        return await self.artifacts.verify_signature(uri, keys, limits)

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
        except ArtifactError as e:
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


def _annotation_events(old: api.MLModelStatus, new: api.MLModelStatus) -> list[Event]:
    """A Warning when a removed annotation is first seen set (the condition says it as long as it stays)."""
    def ignored(status: api.MLModelStatus) -> api.Condition | None:
        return next((c for c in status.conditions if c.type == api.ConditionType.ANNOTATIONS_IGNORED), None)
    was, now = ignored(old), ignored(new)
    if now is None or (was is not None and was.message == now.message):
        return []
    return [Event("Warning", api.ConditionType.ANNOTATIONS_IGNORED, now.message)]
