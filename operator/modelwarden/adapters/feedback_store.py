"""The feedback behind a rollback, read from the models' feedback store (PostgreSQL) rather than from pods.

A CriticalFeedback rollback's incident must list every label behind it, also when every pod of the rolled-back
version is already gone (the store outlives them: issue 16). The operator reads the store directly with its own
DSN (``MODELWARDEN_FEEDBACK_DSN``; a role that may SELECT the two tables is enough; ``{namespace}`` and
``{model}`` in it are replaced by the model's, for a database per model or per namespace), bounded: at most
:data:`MAX_EVIDENCE_PREDICTIONS` predictions and :data:`MAX_LABELS_PER_PREDICTION` labels each, and says when
it stopped short. Every query is limited to the model's namespace and name (the servers write the namespace
with every row): a same-named model in another namespace on the same database contributes nothing. The rows are
shaped as the server's ``GET /feedback/{predictionId}`` answers them, the tables as ``model_server/store.py``
creates them (read only here; the server owns the schema and its migrations).
Best effort, like the rest of a rollback's evidence: a failure is returned, never raised.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from modelwarden.adapters.manifests import ModelObject

MAX_EVIDENCE_PREDICTIONS = 1000
MAX_LABELS_PER_PREDICTION = 100


@dataclass(frozen=True)
class Evidence:
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None


class FeedbackEvidence(Protocol):
    async def critical_feedback(self, model: ModelObject, since: float, stakeholders: tuple[str, ...]) -> Evidence:
        """Every prediction of ``model`` with critical feedback from ``stakeholders`` received since ``since``
        (unix seconds), oldest first, each with all its labels; or what went wrong."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


class PostgresFeedbackEvidence:
    def __init__(self, dsn: str, *, timeout_seconds: int = 5, limit: int = MAX_EVIDENCE_PREDICTIONS) -> None:
        self._dsn, self._timeout, self._limit = dsn, timeout_seconds, limit

    async def critical_feedback(self, model: ModelObject, since: float, stakeholders: tuple[str, ...]) -> Evidence:
        try:
            dsn = self._dsn.replace("{namespace}", model.namespace).replace("{model}", model.name)
            return await asyncio.to_thread(self._read, dsn, model.namespace, model.name, since, stakeholders)
        except Exception as e:  # psycopg.Error and anything the driver raises: evidence is best effort
            return Evidence(error=f"feedback store: {type(e).__name__}: {e}"[:500])

    def _read(self, dsn: str, namespace: str, model: str, since: float, stakeholders: tuple[str, ...]) -> Evidence:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=self._timeout, autocommit=True,
                             options=f"-c statement_timeout={self._timeout * 1000}") as conn:
            ids = [str(r[0]) for r in conn.execute(
                "SELECT prediction_id FROM model_feedback WHERE namespace = %s AND model = %s AND received_at >= %s "
                "AND severity = 'critical' AND stakeholder = ANY(%s) GROUP BY prediction_id "
                "ORDER BY min(received_at), prediction_id LIMIT %s",
                (namespace, model, since, list(stakeholders), self._limit + 1)).fetchall()]
            truncated = len(ids) > self._limit
            ids = ids[:self._limit]
            predictions = {r[0]: r for r in conn.execute(
                "SELECT prediction_id, model, version, track, state, inputs::text, output, created_at, sha256 "
                "FROM model_predictions WHERE namespace = %s AND prediction_id = ANY(%s)", (namespace, ids)).fetchall()}
            labels: dict[str, list[tuple[Any, ...]]] = {i: [] for i in ids}
            for row in conn.execute(
                    "SELECT prediction_id, feedback_id, label::text, severity, stakeholder, comment, author, version, "
                    "track, sha256, received_at FROM (SELECT *, row_number() OVER (PARTITION BY prediction_id "
                    "ORDER BY received_at, feedback_id) AS n FROM model_feedback WHERE namespace = %s "
                    "AND prediction_id = ANY(%s)) f WHERE n <= %s ORDER BY received_at, feedback_id",
                    (namespace, ids, MAX_LABELS_PER_PREDICTION + 1)).fetchall():
                labels[row[0]].append(row)
        records = []
        for pid in ids:
            p = predictions.get(pid)
            rows = labels[pid]
            truncated = truncated or len(rows) > MAX_LABELS_PER_PREDICTION
            records.append({
                "predictionId": pid,
                "prediction": None if p is None else {
                    "model": p[1], "version": p[2], "track": p[3], "sha256": p[8], "state": p[4],
                    "features": json.loads(p[5]), "prediction": p[6], "createdAt": _iso(p[7])},
                "feedback": [{"feedbackId": r[1], "label": json.loads(r[2]), "severity": r[3], "stakeholder": r[4],
                              "comment": r[5], "author": r[6], "version": r[7], "track": r[8], "sha256": r[9],
                              "receivedAt": _iso(r[10])} for r in rows[:MAX_LABELS_PER_PREDICTION]],
            })
        return Evidence(records, truncated)
