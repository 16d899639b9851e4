"""The warm standby of the prior approved version (issue 24), and which pods the user-facing Service selects.

After a promotion the prior approved version — the rollback target by the engine's rule — keeps
``spec.rollback.standby.replicas`` ready pods for ``durationSeconds`` from its retirement. Its pods verify their
bytes at start like every pod and carry ``serving=false``: no user reaches them until a rollback to that very
version moves the user-facing Service onto them (``Endpoints`` "standby") and scales them to the model's replicas —
no artifact store, no cold start. The stable Deployment meanwhile rolls to the restored version (that needs the
store, which may be down); once it is Ready the Service goes back to the serving pods, and only on a later pass is
the standby removed. A rollback in progress keeps its standby whatever the window says.

A selector changes only once every pod it will select carries what it asks (DESIGN §8): the serving label is on
every pod template; a model whose pods predate it keeps selecting every pod until they all carry it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from modelwarden.api.v1alpha1 import ArtifactVersion, HistoryEntry, MLModelSpec, MLModelStatus
from modelwarden.engine.actions import DeleteTrack, EnsureServices
from modelwarden.engine.decision import Decision, Observation, Pass, TrackState
from modelwarden.engine.rollback import rollback_target
from modelwarden.engine.timestamps import seconds_since
from modelwarden.engine.traffic import Endpoints


def standby_target(spec: MLModelSpec, status: MLModelStatus, now: datetime) -> tuple[HistoryEntry, float] | None:
    """The version to keep warm and the seconds its window has left (None: no standby wanted)."""
    policy = spec.rollback.standby
    if policy.replicas == 0 or status.stable is None:
        return None
    entry = rollback_target(status.history, status.stable)
    # Only a version a promotion retired: after a rollback, the version before the restored one is not kept warm.
    if entry is None or entry.outcome != "Superseded" or entry.retired_at is None:
        return None
    remaining = policy.duration_seconds - seconds_since(entry.retired_at, now)
    return (entry, remaining) if remaining > 0 else None


def _settled(track: TrackState, replicas: int) -> bool:
    return track.rolled_out and track.replicas == replicas and track.ready_replicas >= replicas


def served_by_standby(spec: MLModelSpec, status: MLModelStatus, obs: Observation) -> bool:
    """Whether the standby's pods serve users now, or should.

    During a rollback of the stable to the standby's version, once a standby pod is Ready; after it, until the
    stable Deployment serves the restored version with every replica Ready."""
    standby, stable = obs.standby, status.stable
    if standby is None or standby.ready_replicas < 1 or stable is None:
        return False
    rb = status.last_rollback
    if (rb is not None and rb.completed_at is None and rb.to_version is not None
            and (rb.from_version, rb.from_sha256) == (stable.version, stable.sha256)
            and (standby.version, standby.sha256) == (rb.to_version, rb.to_sha256)):
        return True
    live = obs.stable
    return standby.serves(stable) and not (live is not None and live.serves(stable) and live.serving == "true"
                                           and _settled(live, spec.serving.replicas))


def desired_endpoints(spec: MLModelSpec, status: MLModelStatus, obs: Observation) -> Endpoints | None:
    """What the user-facing Service should select (None: leave it as it is for now)."""
    if served_by_standby(spec, status, obs):
        return "standby"
    applied = obs.endpoints if obs.services_present else None
    if applied in ("serving", "standby"):
        return "serving"  # every template carries the label from then on
    tracks = [t for t in (obs.stable, obs.canary) if t is not None]
    if all(t.serving is not None and _settled(t, t.replicas) for t in tracks):
        return "serving"
    if applied is None and any(t.serving is None for t in tracks):
        return "model"  # pods from before the label: select them as before, until they all carry it
    return applied  # the label is rolling out: switch once every pod carries it


def plan(spec: MLModelSpec, decision: Decision, obs: Observation, now: datetime) -> Decision:
    """``decision`` with the Service's selector and the standby's Deployment made to match it."""
    p = Pass(spec=spec, old=decision.status, obs=obs, now=now, status=decision.status)
    endpoints = desired_endpoints(spec, decision.status, obs)
    applied = obs.endpoints if obs.services_present else None
    if endpoints is not None and endpoints != applied:
        p.actions.append(EnsureServices(endpoints))
    served = served_by_standby(spec, decision.status, obs)
    wanted = standby_target(spec, decision.status, now)
    if served:
        assert obs.standby is not None
        # Scale the standby to the model's replicas (same template: no restart, no fetch).
        entry = next((h for h in reversed(decision.status.history)
                      if (h.version, h.sha256) == (obs.standby.version, obs.standby.sha256)), None)
        if entry is not None:
            p.apply_track("standby", _artifact(entry), spec.serving.replicas)
    elif applied == "standby":
        pass  # the Service leaves the standby first; it goes on a later pass
    elif wanted is not None and applied == "serving":
        entry, remaining = wanted
        p.apply_track("standby", _artifact(entry), spec.rollback.standby.replicas)
        p.requeue(remaining)
    elif obs.standby is not None:
        p.actions.append(DeleteTrack("standby"))
    if not p.actions and p.requeue_after is None:
        return decision
    requeue = decision.requeue_after
    if p.requeue_after is not None:
        requeue = p.requeue_after if requeue is None else min(requeue, p.requeue_after)
    return replace(decision, actions=decision.actions + tuple(p.actions), requeue_after=requeue)


def _artifact(entry: HistoryEntry) -> ArtifactVersion:
    return ArtifactVersion(version=entry.version, sha256=entry.sha256, uri=entry.uri, format=entry.format)
