"""The reconcile loop: observe (from watch caches) → ``engine.decide`` → apply actions → write status once.

kopf's watch streams feed the caches (:meth:`Controller.observe_*`) and wake the affected model; workers take
keys off a deduplicating queue. All state is read before deciding; the status is written only when it
changed, guarded by resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from modelwarden.adapters.artifact_store import (
    ArtifactStore,
    ArtifactUnavailable,
    ReportReader,
    URIArtifactStore,
    sibling,
)
from modelwarden.adapters.kube import (
    Conflict,
    EventRecorder,
    KubeError,
    ModelObject,
    ModelStatusWriter,
    Workloads,
    job_state,
)
from modelwarden.adapters.kube import track_state as deployment_track_state
from modelwarden.adapters.notify import Annotator, LogOnly, Notifier
from modelwarden.adapters.prometheus import FleetMetrics, MetricsProvider, MetricsUnavailable, RetrainingQuery
from modelwarden.adapters.routers import TrafficRouter
from modelwarden.adapters.server_admin import ServerAdmin
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.approvals import Approval
from modelwarden.engine.health import MetricsView
from modelwarden.engine.retraining import (
    CreateRetrainingJob,
    GateInputs,
    Report,
    RetrainingDecision,
    RetrainingObservation,
    decide_retraining,
    due_window,
    label_window_start,
)
from modelwarden.engine.rollout import (
    AnnotateGrafana,
    ApplyTrack,
    ArtifactCheck,
    CollectFeedbackEvidence,
    Decision,
    DeleteTrack,
    EnsureServices,
    FlushAndWarm,
    Notify,
    Observation,
    RecordIncident,
    SetRouteWeight,
    SignatureVerdict,
    TrackState,
    artifact_to_check,
    decide,
)
from modelwarden.handlers import metrics as own_metrics
from modelwarden.handlers.workqueue import WorkQueue

log = logging.getLogger("modelwarden.controller")

Key = tuple[str, str]  # (namespace, name)
Clock = Callable[[], dt.datetime]


def _older(body: Mapping[str, Any], cached: Mapping[str, Any] | None) -> bool:
    """A watch event older than what we already hold (e.g. our own status write, cached on return)."""
    if cached is None:
        return False
    new, have = body["metadata"].get("resourceVersion", ""), cached["metadata"].get("resourceVersion", "")
    # resourceVersions are etcd revisions here; compare only when both are plain integers.
    return bool(new.isdigit() and have.isdigit() and int(new) < int(have))


def _cached(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the caches keep it: without managedFields (often most of its size, never read here)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Controller:
    workloads: Workloads
    status_writer: ModelStatusWriter
    events: EventRecorder
    artifacts: ArtifactStore
    router_for: Callable[[api.MLModelSpec], TrafficRouter]
    clock: Clock = utcnow
    resync_seconds: float = 60.0
    workers: int = 4
    metrics: MetricsProvider | None = None
    evaluation_interval: float = 30.0
    notifier: Notifier = field(default_factory=LogOnly)
    annotator: Annotator = field(default_factory=LogOnly)
    server_admin: ServerAdmin | None = None
    reports: ReportReader = field(default_factory=URIArtifactStore)

    models: dict[Key, dict[str, Any]] = field(default_factory=dict)
    approvals: dict[Key, dict[str, Approval]] = field(default_factory=dict)
    deployments: dict[Key, dict[str, TrackState]] = field(default_factory=dict)
    # our retraining Jobs, by model then Job name
    jobs: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # (model key, router type) pairs whose Services this process has applied
    services_ensured: set[tuple[Key, str]] = field(default_factory=set)
    _parsed: dict[Key, tuple[str, api.MLModelSpec, api.MLModelStatus]] = field(default_factory=dict)
    # namespaces where this process has applied the servers' ServiceAccount and RoleBinding
    identities_ensured: set[str] = field(default_factory=set)
    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    fleet: FleetMetrics | None = None
    metrics_error: str | None = None
    # The evaluation cycle in flight: when it started and the models it has not decided yet (for its log line).
    _cycle_started: float = 0.0
    _cycle_pending: set[Key] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # --- feeding the caches (called from kopf event handlers) ---

    def observe_model(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.models.pop(key, None)
            self._parsed.pop(key, None)
            self.deployments.pop(key, None)
            self.jobs.pop(key, None)
            self.services_ensured = {s for s in self.services_ensured if s[0] != key}
            self._decided(key)
            return
        if _older(body, self.models.get(key)):
            return
        self.models[key] = _cached(body)
        self.queue.add(key)

    def observe_approval(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        key = (meta["namespace"], (spec.get("modelRef") or {}).get("name", ""))
        per_model = self.approvals.setdefault(key, {})
        if event_type == "DELETED":
            per_model.pop(meta["name"], None)
        else:
            per_model[meta["name"]] = Approval(
                name=meta["name"], role=spec.get("role", ""), approver=spec.get("approver", ""),
                version=spec.get("version", ""), sha256=spec.get("sha256", ""),
                approved_at=meta.get("creationTimestamp"))
        self.queue.add(key)

    def observe_deployment(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        model, track = labels.get(api.LABEL_MODEL), labels.get(api.LABEL_TRACK)
        if not model or track not in ("stable", "canary"):
            return
        key = (meta["namespace"], model)
        tracks = self.deployments.setdefault(key, {})
        if event_type == "DELETED":
            tracks.pop(track, None)
        else:
            # Only what the engine reads is kept, and only a change to it wakes the model: most Deployment
            # events are status churn that decides nothing.
            state = deployment_track_state(body)
            if tracks.get(track) == state:
                return
            tracks[track] = state
        self.queue.add(key)

    def observe_job(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        model = (meta.get("labels") or {}).get(api.LABEL_MODEL)
        if not model or api.LABEL_RETRAINING_WINDOW not in (meta.get("labels") or {}):
            return
        key = (meta["namespace"], model)
        jobs = self.jobs.setdefault(key, {})
        if event_type == "DELETED":
            jobs.pop(meta["name"], None)
        else:
            jobs[meta["name"]] = dict(body)
        self.queue.add(key)

    def prime(self, snapshot: Mapping[str, list[dict[str, Any]]]) -> None:
        """Fill the caches from a full listing before the workers start (see ``KubeWorkloads.list_all``).
        A listing is the whole truth: what it does not hold is gone."""
        self.deployments.clear()
        self.approvals.clear()
        self.jobs.clear()
        listed = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in snapshot.get("mlmodels", [])}
        for key in [k for k in self.models if k not in listed]:
            del self.models[key]
            self._parsed.pop(key, None)
        for body in snapshot.get("deployments", []):
            self.observe_deployment(None, body)
        for body in snapshot.get("modelapprovals", []):
            self.observe_approval(None, body)
        for body in snapshot.get("jobs", []):
            self.observe_job(None, body)
        for body in snapshot.get("mlmodels", []):
            self.observe_model(None, body)

    # --- the loop ---

    def start(self) -> None:
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"modelwarden-worker-{i}"))
        if self.metrics is not None:
            self._tasks.append(asyncio.create_task(self._evaluate_forever(), name="modelwarden-evaluation"))

    async def evaluate_once(self) -> None:
        """One evaluation cycle: a fixed set of batched queries for the whole fleet, then every model decides."""
        assert self.metrics is not None
        specs = []
        now = self.clock()
        retraining: RetrainingQuery | None = None
        for key, body in list(self.models.items()):
            try:
                spec, status = self._parse(key, body)
            except ValidationError:
                continue
            specs.append(spec)
            # Retraining gate history only when some window is due: two more queries, for the whole fleet.
            window = due_window(spec, status, now)
            if window is not None:
                since = label_window_start(spec, status, window).timestamp()
                budget = spec.retraining.budget_window_seconds
                retraining = RetrainingQuery(budget, since) if retraining is None else RetrainingQuery(
                    max(budget, retraining.budget_seconds), min(since, retraining.labels_since))
        budget_lookback = max([s.rollback.sustain_seconds for s in specs] or [900]) + 300
        feedback_lookback = max([s.rollback.critical_feedback.window_seconds for s in specs] or [3600]) + 300
        started = asyncio.get_running_loop().time()
        try:
            self.fleet = await self.metrics.evaluate(
                now.timestamp(), budget_lookback_seconds=budget_lookback, feedback_lookback_seconds=feedback_lookback,
                analysis_seconds=int(self.evaluation_interval), retraining=retraining)
            own_metrics.EVALUATION_QUERIES.set(self.fleet.queries)
            self.metrics_error = None
            log.info("evaluation: %d queries for %d models in %.3fs", self.fleet.queries, len(self.models),
                     asyncio.get_running_loop().time() - started)
        except MetricsUnavailable as e:
            self.fleet, self.metrics_error = None, str(e)
            log.warning("metrics unavailable: %s", e)
        own_metrics.EVALUATION_SECONDS.observe(asyncio.get_running_loop().time() - started)
        self._cycle_started, self._cycle_pending = started, set(self.models)
        for key in list(self.models):
            self.queue.add(key, sweep=True)

    def _decided(self, key: Key) -> None:
        if key not in self._cycle_pending:
            return
        self._cycle_pending.discard(key)
        if not self._cycle_pending:
            log.info("evaluation cycle: every model decided %.3fs after it started",
                     asyncio.get_running_loop().time() - self._cycle_started)

    async def _evaluate_forever(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self.evaluate_once()
            except Exception:
                log.exception("evaluation cycle failed")
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self.evaluation_interval - elapsed))

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                with own_metrics.RECONCILE_SECONDS.time():
                    requeue = await self.reconcile(key)
                own_metrics.RECONCILES.labels(result="success").inc()
            except Exception:
                own_metrics.RECONCILES.labels(result="error").inc()
                log.exception("reconciling %s/%s failed; retrying", *key)
                requeue = 5.0
            finally:
                self.queue.done(key)
                self._decided(key)
            if requeue is not None and key in self.models:
                self.queue.add_after(key, requeue, sweep=requeue >= self.resync_seconds)

    def _parse(self, key: Key, body: Mapping[str, Any]) -> tuple[api.MLModelSpec, api.MLModelStatus]:
        """Spec and status of a cached object, parsed once per resourceVersion: every cycle reads every model,
        and parsing is most of what an unchanged model costs. (The engine never mutates them.)"""
        version = body["metadata"].get("resourceVersion") or ""
        hit = self._parsed.get(key)
        if hit is not None and version and hit[0] == version:
            return hit[1], hit[2]
        spec = api.MLModelSpec.model_validate(body.get("spec") or {})
        status = api.MLModelStatus.model_validate(body.get("status") or {})
        self._parsed[key] = (version, spec, status)
        return spec, status

    async def reconcile(self, key: Key) -> float | None:
        """One pass for one model; returns seconds until it wants to run again."""
        body = self.models.get(key)
        if body is None:
            return None
        meta = body["metadata"]
        model = ModelObject(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        try:
            spec, status = self._parse(key, body)
        except ValidationError as e:
            # The CRD schema should make this impossible; say so loudly rather than guess.
            log.error("%s/%s does not parse: %s", model.namespace, model.name, e)
            return None
        router = self.router_for(spec)

        observation = await self._observe(key, body, spec, status, model, router)
        now = self.clock()
        decision = decide(spec, status, observation, now)
        # Retraining decides on what the rollout decided (the stable version, the conditions) and adds to it.
        retraining = decide_retraining(spec, decision.status,
                                       await self._observe_retraining(key, spec, decision.status, now),
                                       now, model=model.name, generation=observation.generation)
        await self._apply(model, spec, router, decision)
        await self._apply_retraining(model, spec, retraining)
        await self._write_status(key, body, status, retraining.status)
        for event in (*decision.events, *retraining.events):
            if event.reason == api.Reason.ROLLBACK_STARTED and decision.status.last_rollback is not None:
                own_metrics.rollback_started(model.namespace, model.name, decision.status.last_rollback.id)
            if event.reason in (api.Reason.ROLLBACK_STARTED, api.Reason.TRAFFIC_RESTORED, api.Reason.ROLLBACK_COMPLETE):
                log.warning("%s/%s %s: %s", model.namespace, model.name, event.reason, event.message)
            try:
                await self.events.record(model, event.type, event.reason, event.message)
            except KubeError as e:
                log.warning("could not record Event %s for %s/%s: %s", event.reason, *key, e)
        waits = [w for w in (decision.requeue_after, retraining.requeue_after) if w is not None]
        return min([*waits, self.resync_seconds])

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

    async def _observe(self, key: Key, body: Mapping[str, Any], spec: api.MLModelSpec, status: api.MLModelStatus,
                       model: ModelObject, router: TrafficRouter) -> Observation:
        tracks = self.deployments.get(key, {})
        check = None
        uri = artifact_to_check(spec, status)
        if uri is not None:
            try:
                check = ArtifactCheck(uri=uri, actual=await self.artifacts.sha256(uri))
            except ArtifactUnavailable as e:
                check = ArtifactCheck(uri=uri, error=str(e))
            if spec.artifact.signature is not None and check.error is None:
                check = replace(check, signature=await self._verify_signature(model, uri, spec.artifact.signature))
        route_weight = None
        if spec.rollout.traffic_routing.type == "gatewayAPI":
            try:
                route_weight = await router.canary_weight(model)
            except KubeError as e:
                log.warning("%s/%s: %s", *key, e)
        annotations = body["metadata"].get("annotations") or {}
        return Observation(
            generation=int(body["metadata"].get("generation", 0)),
            approvals=tuple(self.approvals.get(key, {}).values()),
            stable=tracks.get("stable"),
            canary=tracks.get("canary"),
            services_present=(key, spec.rollout.traffic_routing.type) in self.services_ensured,
            route_canary_weight=route_weight,
            artifact=check,
            promote=annotations.get(api.ANNOTATION_PROMOTE),
            resume=annotations.get(api.ANNOTATION_RESUME),
            rollback=annotations.get(api.ANNOTATION_ROLLBACK),
            metrics=self._metrics_view(model, spec),
            metrics_configured=self.metrics is not None,
            metrics_error=self.metrics_error,
        )

    async def _observe_retraining(self, key: Key, spec: api.MLModelSpec, status: api.MLModelStatus,
                                  now: dt.datetime) -> RetrainingObservation:
        r = status.retraining
        job = None
        if r is not None and r.last_job is not None and r.last_job.outcome == "Running":
            body = self.jobs.get(key, {}).get(r.last_job.name)
            job = job_state(body) if body is not None else None
        window = due_window(spec, status, now)
        if window is None:
            return RetrainingObservation(job=job)
        return RetrainingObservation(job=job, gates=await self._gate_inputs(key, spec, status))

    async def _gate_inputs(self, key: Key, spec: api.MLModelSpec, status: api.MLModelStatus) -> GateInputs:
        """Read at the window: the serving artifact's bias report, the feature audit, and this cycle's metrics."""
        bias = None
        if status.stable is not None:
            uri = sibling(status.stable.uri, "bias-report.json")
            bias = await self._report(uri, lambda doc: doc.get("status"))
        audit = None
        if spec.retraining.feature_audit_uri:
            audit = await self._report(spec.retraining.feature_audit_uri, lambda doc: doc.get("share"))
        fleet = self.fleet
        if self.metrics is None:
            return GateInputs(at=self.clock().timestamp(), bias=bias, feature_audit=audit)
        if fleet is None or fleet.retraining_at is None:
            return GateInputs(at=0.0, bias=bias, feature_audit=audit, metrics_error=self.metrics_error)
        model_key = fleet.for_model(*key)
        return GateInputs(at=fleet.retraining_at, bias=bias, feature_audit=audit,
                          budget=fleet.retraining_budget.get(model_key),
                          labels=tuple(s for per_version in fleet.retraining_labels.get(model_key, {}).values()
                                       for s in per_version))

    async def _report(self, uri: str, pick: Callable[[dict[str, Any]], Any]) -> Report:
        try:
            doc = await self.reports.read_json(uri)
        except ArtifactUnavailable as e:
            return Report(uri, error=str(e))
        if not isinstance(doc, dict):
            return Report(uri, error="not a JSON object")
        value = pick(doc)
        return Report(uri, value=None if value is None else str(value))

    async def _apply_retraining(self, model: ModelObject, spec: api.MLModelSpec,
                                decision: RetrainingDecision) -> None:
        for action in decision.actions:
            if isinstance(action, CreateRetrainingJob):
                await self.workloads.create_retraining_job(model, spec, action)
                log.info("%s/%s: retraining Job %s created", model.namespace, model.name, action.name)
            else:
                await self._side_effect(model, action)

    def _metrics_view(self, model: ModelObject, spec: api.MLModelSpec) -> MetricsView | None:
        fleet = self.fleet
        if fleet is None:
            return None
        key = fleet.for_model(model.namespace, model.name)
        counted = set(spec.rollback.critical_feedback.stakeholders)
        return MetricsView(
            at=fleet.at, step_seconds=fleet.step_seconds,
            budget=fleet.budget.get(key, {}),
            critical_feedback={version: [s for who, series in by_stakeholder.items() if who in counted
                                         for s in series]
                               for version, by_stakeholder in fleet.feedback.get(key, {}).items()},
            burn=fleet.burn.get(key, {}),
            canary=fleet.canary.get(key, {}),
        )

    async def _apply(self, model: ModelObject, spec: api.MLModelSpec, router: TrafficRouter,
                     decision: Decision) -> None:
        key = (model.namespace, model.name)
        # Deployments first: Services can follow a moment later. The pods' ServiceAccount cannot: a pod created
        # without it fails, and the ReplicaSet controller backs off for minutes. It is per namespace, once.
        ordered = sorted(decision.actions, key=lambda a: isinstance(a, EnsureServices))
        for action in ordered:
            if isinstance(action, EnsureServices):
                await self.workloads.ensure_services(model, spec.rollout.traffic_routing.type)
                self.services_ensured.add((key, spec.rollout.traffic_routing.type))
            elif isinstance(action, ApplyTrack):
                if model.namespace not in self.identities_ensured:
                    await self.workloads.ensure_server_identity(model.namespace)
                    self.identities_ensured.add(model.namespace)
                await self.workloads.apply_track(model, spec, action.track, action.artifact, action.replicas,
                                                 action.fingerprint)
            elif isinstance(action, DeleteTrack):
                await self.workloads.delete_track(model, action.track)
            elif isinstance(action, SetRouteWeight):
                await router.set_canary_weight(model, action.canary_weight)
            else:
                await self._side_effect(model, action)

    async def _side_effect(self, model: ModelObject,
                           action: FlushAndWarm | AnnotateGrafana | RecordIncident | CollectFeedbackEvidence | Notify,
                           ) -> None:
        """After traffic is back: best effort, each failure recorded as a Warning Event, none blocking."""
        failure: str | None = None
        what = type(action).__name__
        if isinstance(action, RecordIncident):
            try:
                await self.workloads.record_incident(model, action.rollback, {})
            except KubeError as e:
                failure = str(e)
        elif isinstance(action, CollectFeedbackEvidence):
            since = self.clock().timestamp() - action.since_seconds
            records: list[Any] = []
            if self.server_admin is None:
                failure = "no admin token configured (MODELWARDEN_ADMIN_TOKEN): feedback records not collected"
            else:
                records, failure = await self.server_admin.feedback(model, action.track, since, action.stakeholders)
            try:
                await self.workloads.record_evidence(model, action.rollback, "feedback.json",
                                                     {"records": records, "error": failure})
            except KubeError as e:
                failure = str(e)
        elif isinstance(action, AnnotateGrafana):
            failure = await self.annotator.annotate(model.name, model.namespace, action.rollback)
        elif isinstance(action, Notify):
            failure = await self.notifier.notify(model.name, model.namespace, action.severity, action.summary,
                                                 action.rollback)
        elif isinstance(action, FlushAndWarm) and self.server_admin is not None:
            problems = []
            if action.flush_track is not None:
                problems.append(await self.server_admin.call(model, action.flush_track, "flush"))
            problems.append(await self.server_admin.call(model, action.warm_track, "warmup"))
            failure = "; ".join(p for p in problems if p) or None
        if failure:
            log.warning("%s/%s: %s failed: %s", model.namespace, model.name, what, failure)
            with contextlib.suppress(KubeError):
                await self.events.record(model, "Warning", f"{what}Failed", failure)

    async def _write_status(self, key: Key, body: dict[str, Any], old: api.MLModelStatus,
                            new: api.MLModelStatus) -> None:
        if new.wire() == old.wire():
            return
        try:
            written = await self.status_writer.replace_status(body, new)
        except Conflict:
            # A newer object is on its way through the watch; it will wake us.
            log.info("%s/%s changed while deciding; deciding again", *key)
            self.queue.add_after(key, 0.5)
            return
        # Keep our cache at least as new as what we wrote, so the next pass does not decide on stale status;
        # unless the watch already delivered something newer while we were writing.
        cached = self.models.get(key)
        based_on = body["metadata"].get("resourceVersion")
        if cached is not None and cached["metadata"].get("resourceVersion") == based_on and written.get("metadata"):
            self.models[key] = _cached(written)
