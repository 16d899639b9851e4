"""Feedback endpoints and the thread that owns the feedback store.

``POST /feedback`` answers ``201`` only once the label is durable; ``GET /feedback/{predictionId}`` and the
admin listing read the same view (what incident records quote). Prediction records buffered on the event
loop are written first, in the same store-thread call, so feedback on an answer given a moment ago finds it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from model_server.config import Settings
from model_server.http import HttpError, Params, Receive, Response, Scope, json_response, read_json
from model_server.logs import EventLog
from model_server.metrics import STAKEHOLDERS, ServerMetrics
from model_server.priority import CoreLender, background_priority
from model_server.records import RecordBuffer
from model_server.schemas import PREDICTION_ID_PATTERN, FeedbackIn
from model_server.store import (
    FeedbackRecord,
    FeedbackStore,
    PredictionFeedback,
    StoreUnavailable,
    feedback_id,
    iso,
)

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)
ERROR_LOG_INTERVAL = 10.0
JOIN_POLL_SECONDS = 0.1
# The durability contract's one gap, said where a client meets it (README "Feedback durability").
UNKNOWN_PREDICTION_TEXT = ("no such prediction in the feedback store: unknown, past its retention, or never "
                           "recorded (a server killed within RECORD_FLUSH_SECONDS of answering loses the record)")
_PREDICTION_ID = re.compile(PREDICTION_ID_PATTERN)


def validate(model: type[ModelT], doc: Any) -> ModelT:
    """``doc`` as ``model``, or 422 ``INVALID_INPUT`` listing the fields that do not match."""
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        errors = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
                  for err in e.errors(include_url=False, include_input=False, include_context=False)]
        raise HttpError(422, "INVALID_INPUT", "request body does not match the schema", kind="INVALID_INPUT",
                        errors=errors[:20]) from None


RETRY_AFTER_SECONDS = 1


def store_unavailable(message: str) -> HttpError:
    """Nothing was stored or read: try again (the server serves on; the store comes back)."""
    return HttpError(503, "STORE_UNAVAILABLE", message[:300],
                     headers=[(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])


class StoreThread:
    """The one thread that talks to the feedback store: SQLite wants one writer, and FIFO order keeps "flush
    records, then add feedback" sequential without locks."""

    def __init__(self, factory: Callable[[str], FeedbackStore], *, idle_class: bool = False) -> None:
        self._factory = factory
        # In the idle class (where the container's cgroup is the server's own), lent the loop's core when starved;
        # elsewhere at nice 5.
        self.lender = CoreLender() if idle_class else None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="feedback-store",
                                            initializer=self.lender.initializer if self.lender else background_priority)
        self.store: FeedbackStore | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self.lender is None:
            return await loop.run_in_executor(self._executor, fn)
        self.lender.submitted(loop)
        try:
            return await loop.run_in_executor(self._executor, fn)
        finally:
            self.lender.finished()

    async def connect(self, dsn: str) -> tuple[FeedbackStore, list[int]]:
        """Open the store and bring its schema up to date (replicas starting together: see model_server.store);
        the store is used only once both succeeded. The migration versions applied; raises if it cannot."""
        def connect() -> tuple[FeedbackStore, list[int]]:
            store = self._factory(dsn)
            try:
                return store, store.migrate()
            except BaseException:
                store.close()
                raise

        store, migrated = await self.run(connect)
        self.store = store
        return store, migrated

    def require(self) -> FeedbackStore:
        if self.store is None:
            raise store_unavailable("the feedback store is not reachable yet; retry")
        return self.store

    async def close(self) -> None:
        try:
            if self.store is not None:
                await self.run(self.store.close)
        finally:
            if self.lender is not None:
                self.lender.close()
            self._executor.shutdown(wait=True)


class FeedbackDesk:
    """Writes prediction records and feedback labels through the store thread; the three feedback routes."""

    def __init__(self, settings: Settings, store: StoreThread, records: RecordBuffer, metrics: ServerMetrics,
                 log: EventLog) -> None:
        self._settings = settings
        self._store = store
        self._records = records
        self._metrics = metrics
        self._log = log
        self._up = False
        metrics.store_up_child.set(0)

    def store_up(self, up: bool) -> None:
        """What the last call to the store said: up, or down (``ml_feedback_store_up``)."""
        if up != self._up:
            self._up = up
            self._metrics.store_up_child.set(1 if up else 0)
            if up:
                self._log.event("FEEDBACK_STORE", "STORE_AVAILABLE", "the feedback store answers",
                                pending=len(self._records))

    def _down(self, e: StoreUnavailable) -> None:
        self.store_up(False)
        self._log.throttled("STORE_UNAVAILABLE", ERROR_LOG_INTERVAL, "FEEDBACK_STORE", "STORE_UNAVAILABLE",
                            str(e), level=logging.ERROR, pending=len(self._records))

    async def flush_records(self) -> int:
        """Write buffered prediction records to the store; on failure they are kept for the next try (in the
        bounded buffer: what overflows it is counted). While the store is down and nothing is pending, this asks
        it whether it is back, so feedback is taken again without waiting for a record."""
        store = self._store.store
        self._metrics.records_pending_child.set(len(self._records))
        if store is None or (not len(self._records) and self._up):
            return 0
        try:
            with self._records.taken() as batch:
                await self._store.run(lambda: store.record_predictions(batch) if batch else store.schema_version())
        except StoreUnavailable as e:
            self._down(e)
            return 0
        self.store_up(True)
        self._metrics.records_pending_child.set(len(self._records))
        return len(batch)

    async def post(self, scope: Scope, receive: Receive, params: Params) -> Response:
        feedback = validate(FeedbackIn, await read_json(scope, receive, self._settings.max_body_bytes))
        store = self._store.require()
        received = time.time()
        label = orjson.dumps(feedback.label).decode()
        try:
            with self._records.taken() as pending:
                def store_feedback() -> tuple[FeedbackRecord, bool] | None:
                    # In the store thread, in order: the prediction may still be in the batch just handed over.
                    store.record_predictions(pending)
                    prediction = store.prediction(feedback.prediction_id)
                    if prediction is None:
                        return None
                    record = FeedbackRecord(feedback_id(prediction.prediction_id, feedback.stakeholder),
                                            prediction.prediction_id, prediction.model, prediction.version, label,
                                            feedback.severity, feedback.stakeholder, feedback.comment,
                                            feedback.author, received, prediction.track, prediction.sha256)
                    return store.add_feedback(record)

                stored = await self._store.run(store_feedback)
            # Not in the store: maybe another replica answered it a moment ago and has not flushed its record yet.
            # Wait for that flush (bounded, off the loop) rather than answer 404; nothing is accepted unjoined.
            deadline = time.monotonic() + self._settings.feedback_join_wait_seconds
            while stored is None and time.monotonic() < deadline:
                await asyncio.sleep(JOIN_POLL_SECONDS)
                with self._records.taken() as pending:
                    stored = await self._store.run(store_feedback)
        except StoreUnavailable as e:
            self._down(e)
            raise store_unavailable("feedback was not stored; retry") from None
        self.store_up(True)
        if stored is None:
            raise HttpError(404, "UNKNOWN_PREDICTION", UNKNOWN_PREDICTION_TEXT, predictionId=feedback.prediction_id)
        record, new = stored
        created = {"feedbackId": record.feedback_id, "predictionId": record.prediction_id, "model": record.model,
                   "version": record.version, "receivedAt": iso(record.received_at)}
        if not new:
            # A retry, or this stakeholder's second word on the prediction: the first label stands, counted once.
            if not _same_label(record, label, feedback.severity):
                raise HttpError(409, "FEEDBACK_CONFLICT", f"{record.stakeholder} already labelled this prediction "
                                "differently; one label per prediction and stakeholder", stored=created,
                                label=orjson.loads(record.label), severity=record.severity)
            return json_response({**created, "duplicate": True}, 200)
        self._metrics.count_feedback(record.model, record.version, record.severity, record.stakeholder)
        self._log.event("FEEDBACK", "FEEDBACK_RECORDED", f"{record.severity} label from {record.stakeholder}",
                        prediction_id=record.prediction_id, feedback_id=record.feedback_id,
                        severity=record.severity, stakeholder=record.stakeholder, prediction_version=record.version)
        return json_response(created, 201)

    async def get(self, scope: Scope, receive: Receive, params: Params) -> Response:
        prediction_id = params["prediction_id"]
        if not _PREDICTION_ID.match(prediction_id):
            raise HttpError(404, "UNKNOWN_PREDICTION", predictionId=prediction_id[:200])
        store = self._store.require()
        try:
            with self._records.taken() as pending:
                def read() -> PredictionFeedback:
                    store.record_predictions(pending)
                    return store.feedback_for(prediction_id)

                found = await self._store.run(read)
        except StoreUnavailable as e:
            self._down(e)
            raise store_unavailable(str(e)) from None
        if found.prediction is None and not found.feedback:
            raise HttpError(404, "UNKNOWN_PREDICTION", predictionId=prediction_id)
        return json_response(feedback_view(prediction_id, found))

    async def recent(self, scope: Scope, receive: Receive, params: Params) -> Response:
        """The predictions behind recent feedback, as `GET /feedback/{id}` shows each: for incident records."""
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            since = float(query.get("since", ["0"])[0])
            limit = max(1, min(int(query.get("limit", ["100"])[0]), 1000))
        except ValueError:
            raise HttpError(400, "INVALID_QUERY", "since (unix seconds) and limit must be numbers") from None
        severity = query.get("severity", ["critical"])[0]
        stakeholders = query.get("stakeholder", []) or list(STAKEHOLDERS)
        store = self._store.require()
        model = self._settings.model_name

        def read() -> list[tuple[str, PredictionFeedback]]:
            ids = store.predictions_with_feedback(model, since, stakeholders, severity, limit)
            return [(i, store.feedback_for(i)) for i in ids]

        try:
            found = await self._store.run(read)
        except StoreUnavailable as e:
            self._down(e)
            raise store_unavailable(str(e)) from None
        return json_response({"records": [feedback_view(i, f) for i, f in found]})

    async def purge(self) -> None:
        s = self._settings
        store = self._store.store
        if store is None:
            return  # not reachable yet: the next round purges
        cutoff = time.time() - s.prediction_retention_seconds
        deleted = await self._store.run(
            lambda: store.purge_predictions(s.model_name, cutoff, s.prediction_retention_max_rows))
        if deleted:
            self._log.event("FEEDBACK_STORE", "PREDICTIONS_PURGED", f"{deleted} prediction records past retention",
                            deleted=deleted)
        label_cutoff = time.time() - s.feedback_retention_seconds
        labels = await self._store.run(lambda: store.purge_feedback(s.model_name, label_cutoff))
        if labels:
            self._log.event("FEEDBACK_STORE", "FEEDBACK_PURGED", f"{labels} feedback labels past retention",
                            deleted=labels)


def _same_label(record: FeedbackRecord, label: str, severity: str) -> bool:
    stored, offered = orjson.loads(record.label), orjson.loads(label)
    return record.severity == severity and type(stored) is type(offered) and stored == offered


def feedback_view(prediction_id: str, found: PredictionFeedback) -> dict[str, Any]:
    p = found.prediction
    return {
        "predictionId": prediction_id,
        "prediction": None if p is None else {
            "model": p.model, "version": p.version, "track": p.track, "sha256": p.sha256, "state": p.state,
            "features": orjson.loads(p.inputs), "prediction": p.output, "createdAt": iso(p.created_at)},
        "feedback": [{"feedbackId": f.feedback_id, "label": orjson.loads(f.label), "severity": f.severity,
                      "stakeholder": f.stakeholder, "comment": f.comment, "author": f.author,
                      "version": f.version, "track": f.track, "sha256": f.sha256,
                      "receivedAt": iso(f.received_at)} for f in found.feedback],
    }
