"""What a decision asks the handler to do, and the Events it records: the types every engine module shares.

Each action is a frozen dataclass; the handler applies them with one ``match`` (``handlers/actions.py``).
Adding an action = a dataclass here, in :data:`Action`, and one ``case`` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from modelwarden.api.v1alpha1 import ArtifactVersion, Rollback, Track
from modelwarden.engine.traffic import Endpoints


@dataclass(frozen=True)
class EnsureServices:
    """The objects the model's traffic router needs (its Services, …), created by the router's adapter, with the
    user-facing Service selecting ``endpoints``."""

    endpoints: Endpoints = "serving"


@dataclass(frozen=True)
class MirrorTo:
    """The stable's pods mirror this percent of answered requests to the candidate's Service (shadow stage)."""

    percent: int
    decision_threshold: str


@dataclass(frozen=True)
class ApplyTrack:
    track: Track
    artifact: ArtifactVersion
    replicas: int
    fingerprint: str
    mirror: MirrorTo | None = None
    # A shadow-stage candidate under the replicas router: its pods are not endpoints of the user-facing Service.
    hidden: bool = False


@dataclass(frozen=True)
class DeleteTrack:
    track: Track


@dataclass(frozen=True)
class SetRouteWeight:
    canary_weight: int


@dataclass(frozen=True)
class FlushAndWarm:
    """Drop the aborted version's queued work, warm the restored version's caches (best effort)."""

    flush_track: Track | None
    warm_track: Track | None
    rollback: Rollback | None = None  # the incident each pod's outcome is recorded in


@dataclass(frozen=True)
class AnnotateGrafana:
    rollback: Rollback


@dataclass(frozen=True)
class RecordIncident:
    rollback: Rollback


@dataclass(frozen=True)
class CollectFeedbackEvidence:
    """Before traffic moves: keep the feedback records behind a CriticalFeedback trigger for the incident
    (a server's SQLite store goes with its pods)."""

    rollback: Rollback
    track: Track
    since_seconds: int
    stakeholders: tuple[str, ...]


@dataclass(frozen=True)
class Notify:
    severity: Literal["page", "warning", "info"]
    summary: str
    rollback: Rollback | None = None


@dataclass(frozen=True)
class CreateRetrainingJob:
    name: str
    window: datetime
    # what the Job is told (env): the version it retrains from, and the window
    stable_version: str | None
    stable_uri: str | None


Action = (EnsureServices | ApplyTrack | DeleteTrack | SetRouteWeight | FlushAndWarm | AnnotateGrafana
          | RecordIncident | CollectFeedbackEvidence | Notify | CreateRetrainingJob)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
