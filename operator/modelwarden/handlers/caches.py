"""The watch caches: what kopf's watch streams delivered, kept per model, the only state read before deciding.

Each ``observe_*`` stores what the engine reads and wakes the model it concerns (``wake``); a deleted MLModel
is forgotten (``forget``). Nothing here decides or talks to the API server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelwarden.adapters.manifests import job_state
from modelwarden.adapters.manifests import track_state as deployment_track_state
from modelwarden.api import v1alpha1 as api
from modelwarden.engine.approvals import Approval
from modelwarden.engine.decision import TrackState
from modelwarden.engine.retraining import JobState

Key = tuple[str, str]  # (namespace, name)


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


@dataclass(frozen=True)
class ModelState:
    """One model as the caches hold it: the reconciler's whole input from the watches."""

    body: dict[str, Any]
    spec: api.MLModelSpec
    status: api.MLModelStatus
    approvals: tuple[Approval, ...]
    stable: TrackState | None
    canary: TrackState | None
    jobs: Mapping[str, JobState]
    standby: TrackState | None = None
    # the model's ModelActions (issue 18), as raw objects
    actions: tuple[dict[str, Any], ...] = ()


@dataclass
class WatchCaches:
    wake: Callable[[Key], None]
    forget: Callable[[Key], None] = lambda key: None

    models: dict[Key, dict[str, Any]] = field(default_factory=dict)
    approvals: dict[Key, dict[str, Approval]] = field(default_factory=dict)
    deployments: dict[Key, dict[str, TrackState]] = field(default_factory=dict)
    # our retraining Jobs, by model then Job name
    jobs: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # ModelActions, by model then name
    actions: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _parsed: dict[Key, tuple[str, api.MLModelSpec, api.MLModelStatus]] = field(default_factory=dict)

    def observe_model(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.models.pop(key, None)
            self._parsed.pop(key, None)
            self.deployments.pop(key, None)
            self.jobs.pop(key, None)
            self.actions.pop(key, None)
            self.forget(key)
            return
        if _older(body, self.models.get(key)):
            return
        self.models[key] = _cached(body)
        self.wake(key)

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
                approved_at=meta.get("creationTimestamp"), signer=spec.get("signer"))
        self.wake(key)

    def observe_deployment(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        model, track = labels.get(api.LABEL_MODEL), labels.get(api.LABEL_TRACK)
        if not model or track not in ("stable", "canary", "standby"):
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
        self.wake(key)

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
        self.wake(key)

    def observe_action(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        key = (meta["namespace"], (spec.get("modelRef") or {}).get("name", ""))
        per_model = self.actions.setdefault(key, {})
        if event_type == "DELETED":
            per_model.pop(meta["name"], None)
            return
        cached = per_model.get(meta["name"])
        if _older(body, cached):
            return
        per_model[meta["name"]] = _cached(body)
        if not (body.get("status") or {}).get("outcome"):
            self.wake(key)

    def prime(self, snapshot: Mapping[str, list[dict[str, Any]]]) -> None:
        """Fill the caches from a full listing before the workers start (see ``KubeClient.list_all``).
        A listing is the whole truth: what it does not hold is gone."""
        self.deployments.clear()
        self.approvals.clear()
        self.jobs.clear()
        self.actions.clear()
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
        for body in snapshot.get("modelactions", []):
            self.observe_action(None, body)
        for body in snapshot.get("mlmodels", []):
            self.observe_model(None, body)

    def parse(self, key: Key, body: Mapping[str, Any]) -> tuple[api.MLModelSpec, api.MLModelStatus]:
        """Spec and status of a cached object, parsed once per resourceVersion: every cycle reads every model,
        and parsing is most of what an unchanged model costs. (The engine never mutates them.)
        Raises pydantic's ValidationError for an object the CRD schema should have refused."""
        version = body["metadata"].get("resourceVersion") or ""
        hit = self._parsed.get(key)
        if hit is not None and version and hit[0] == version:
            return hit[1], hit[2]
        spec = api.MLModelSpec.model_validate(body.get("spec") or {})
        status = api.MLModelStatus.model_validate(body.get("status") or {})
        self._parsed[key] = (version, spec, status)
        return spec, status

    def state(self, key: Key) -> ModelState | None:
        """Everything cached for one model (raises ValidationError like :meth:`parse`); None: no such model."""
        body = self.models.get(key)
        if body is None:
            return None
        spec, status = self.parse(key, body)
        tracks = self.deployments.get(key, {})
        return ModelState(body=body, spec=spec, status=status,
                          approvals=tuple(self.approvals.get(key, {}).values()),
                          stable=tracks.get("stable"), canary=tracks.get("canary"), standby=tracks.get("standby"),
                          jobs={name: job_state(job) for name, job in self.jobs.get(key, {}).items()},
                          actions=tuple(self.actions.get(key, {}).values()))

    def store_written(self, key: Key, based_on: dict[str, Any], written: dict[str, Any]) -> None:
        """Keep the cache at least as new as our own status write, so the next pass does not decide on stale
        status; unless the watch already delivered something newer while we were writing."""
        cached = self.models.get(key)
        if (cached is not None and written.get("metadata")
                and cached["metadata"].get("resourceVersion") == based_on["metadata"].get("resourceVersion")):
            self.models[key] = _cached(written)
