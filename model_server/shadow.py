"""The shadow stage's two halves (issue 20): the stable mirrors, the candidate compares.

**Mirror** (the stable's pods, ``SHADOW_TARGET_URL`` set). After the model answered a request, a sampled
share (``SHADOW_PERCENT``) of its rows and the scores the user got are put on a bounded queue — O(1) on the
request path; when the queue is full the copy is dropped and counted, never waited for. Sender tasks take
what is queued (after :data:`LINGER_SECONDS`, up to :data:`MAX_ROWS_PER_POST` rows per POST) and send it to
the candidate's ``POST /shadow/compare`` with a timeout, with the pod's projected ServiceAccount token
(``SHADOW_TOKEN_FILE``, audience ``modelwarden.io/shadow``). Nothing the candidate answers reaches a user: the
user's answer was the stable's, computed before the copy existed.

**Comparator** (the candidate's pods). ``POST /shadow/compare`` scores the rows on the ``shadow`` track —
same feature contract, same model, but no prediction record (nothing can take feedback), no
``ml_inference_requests_total``, no latency sample, no drift observation and no governance error: a shadow
answer counts toward no SLO or governance state of either version. It compares each score with the stable's
and exports the comparison (the names are an API: DESIGN §4, docs/model-server.md). It accepts only a token of
audience ``modelwarden.io/shadow`` for the model's own pod ServiceAccount (``SHADOW_SUBJECT``; see
:mod:`model_server.auth`), and decides agreement with its own ``SHADOW_DECISION_THRESHOLD``:

* ``ml_shadow_compared_total{model,version,track="shadow"}`` — rows compared;
* ``ml_shadow_agreements_total{…}`` — rows whose decision (score >= ``SHADOW_DECISION_THRESHOLD``) agrees;
* ``ml_shadow_score_difference{…}`` — histogram of |candidate score - stable score|;
* ``ml_shadow_score_psi{…}`` — PSI of the candidate's scores against the stable's over the last
  :data:`PSI_WINDOW` compared rows (NaN until :data:`PSI_MIN_ROWS`: no number is not a pass);
* ``ml_shadow_errors_total{…,kind}`` — rows the candidate could not compare (``FEATURE_MISMATCH``,
  ``INVALID_INPUT``, ``PREDICT_ERROR``, ``NON_FINITE_OUTPUT``, ``UNAVAILABLE``);

and on the stable, ``ml_shadow_mirrored_total{model,version,result}`` with ``result`` one of ``sent``,
``dropped`` (queue full), ``failed`` (timeout, refused, error answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from model_server.http import HttpError, Params, Receive, Response, Scope, read_json
from model_server.logs import EventLog

COMPARE_PATH = "/shadow/compare"
SHADOW_TRACK = "shadow"
MAX_ROWS_PER_POST = 256
SENDERS = 2
# A sender that took a copy waits up to this long for a full batch before it posts: an httpx POST costs the
# stable's loop about a millisecond of CPU, so what matters is POSTs per second, not rows (one POST per mirrored
# request cost a third of the throughput at 10%; a 50 ms wait, still 10% of the stable's CPU per request).
LINGER_SECONDS = 0.25
PSI_WINDOW = 5000
PSI_MIN_ROWS = 200
PSI_BINS = 10
MIRROR_RESULTS = ("sent", "dropped", "failed")
SHADOW_ERROR_KINDS = ("FEATURE_MISMATCH", "INVALID_INPUT", "PREDICT_ERROR", "NON_FINITE_OUTPUT", "UNAVAILABLE")
DIFFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


class ShadowMetrics:
    """Every shadow series, created at 0 (NaN for the PSI) on the server's registry."""

    def __init__(self, registry: CollectorRegistry, model: str, version: str) -> None:
        shadow = (model, version, SHADOW_TRACK)
        self.mirrored = Counter("ml_shadow_mirrored", "Copies of answered requests the stable mirrored, by result.",
                                ["model", "version", "result"], registry=registry)
        self.mirrored_child = {r: self.mirrored.labels(model, version, r) for r in MIRROR_RESULTS}
        self.compared = Counter("ml_shadow_compared", "Mirrored rows the candidate scored and compared.",
                                ["model", "version", "track"], registry=registry).labels(*shadow)
        self.agreements = Counter("ml_shadow_agreements", "Compared rows whose decision agrees with the stable's.",
                                  ["model", "version", "track"], registry=registry).labels(*shadow)
        self.difference = Histogram("ml_shadow_score_difference",
                                    "Absolute difference between the candidate's and the stable's score.",
                                    ["model", "version", "track"], buckets=DIFFERENCE_BUCKETS,
                                    registry=registry).labels(*shadow)
        self.psi = Gauge("ml_shadow_score_psi", "PSI of the candidate's scores against the stable's (NaN: too few).",
                         ["model", "version", "track"], registry=registry).labels(*shadow)
        self.psi.set(math.nan)
        errors = Counter("ml_shadow_errors", "Mirrored rows the candidate could not compare, by kind.",
                         ["model", "version", "track", "kind"], registry=registry)
        self.error = {k: errors.labels(*shadow, k) for k in SHADOW_ERROR_KINDS}


def score_psi(expected: Sequence[float], actual: Sequence[float], bins: int = PSI_BINS) -> float:
    """PSI of ``actual`` against ``expected`` on the expected scores' quantile bins (a small floor per bin)."""
    ref = np.asarray(expected, dtype=np.float64)
    cur = np.asarray(actual, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    ref_share, cur_share = np.maximum(ref_share, 1e-4), np.maximum(cur_share, 1e-4)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


class Mirror:
    """The stable's side: sample, queue (bounded), send after the answer."""

    def __init__(self, target_url: str, percent: float, queue_size: int, timeout_seconds: float, model: str,
                 version: str, metrics: ShadowMetrics, log: EventLog, *, token_file: Path | None = None,
                 rng: random.Random | None = None) -> None:
        self.url = target_url.rstrip("/") + COMPARE_PATH
        # The pod's projected ServiceAccount token (audience modelwarden.io/shadow): the candidate accepts only it.
        self.token_file = token_file
        self.share = percent / 100
        self.timeout = timeout_seconds
        self.model, self.version = model, version
        self.queue: asyncio.Queue[tuple[list[dict[str, Any]], list[float]]] = asyncio.Queue(queue_size)
        self._sent, self._dropped, self._failed = (metrics.mirrored_child[r] for r in MIRROR_RESULTS)
        self._log = log
        self._random = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._batch_ready = asyncio.Event()

    def offer(self, rows: list[dict[str, Any]], scores: list[float]) -> None:
        """On the request path, after scoring: never waits, never raises."""
        if self._random.random() >= self.share:
            return
        try:
            self.queue.put_nowait((rows, scores))
        except asyncio.QueueFull:
            self._dropped.inc(len(rows))
            return
        if self.queue.qsize() >= MAX_ROWS_PER_POST:
            self._batch_ready.set()

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(max_connections=SENDERS))
        self._tasks = [asyncio.create_task(self._send_forever()) for _ in range(SENDERS)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    async def _send_forever(self) -> None:
        while True:
            first_rows, first_scores = await self.queue.get()
            rows, scores = list(first_rows), list(first_scores)  # the request's own lists stay untouched
            if self.queue.qsize() < MAX_ROWS_PER_POST:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_ready.wait(), LINGER_SECONDS)
            self._batch_ready.clear()
            while len(rows) < MAX_ROWS_PER_POST and not self.queue.empty():
                more_rows, more_scores = self.queue.get_nowait()
                rows.extend(more_rows)
                scores.extend(more_scores)
            await self._send(rows, scores)

    async def _send(self, rows: list[dict[str, Any]], scores: list[float]) -> None:
        assert self._client is not None
        body = orjson.dumps({"model": self.model, "version": self.version, "rows": rows, "scores": scores})
        headers = {"content-type": "application/json"}
        if self.token_file is not None:
            # Re-read per batch: the kubelet replaces the file before the token expires.
            with contextlib.suppress(OSError):
                headers["authorization"] = "Bearer " + self.token_file.read_text(encoding="utf-8").strip()
        try:
            answer = await self._client.post(self.url, content=body, headers=headers)
            ok = answer.status_code == 200
            detail = f"HTTP {answer.status_code}"
        except httpx.HTTPError as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        if ok:
            self._sent.inc(len(rows))
        else:
            # A row the candidate refused (FEATURE_MISMATCH...) is counted there; here it is a failed copy.
            self._failed.inc(len(rows))
            self._log.throttled("SHADOW_MIRROR_FAILED", 30.0, "SHADOW", "SHADOW_MIRROR_FAILED",
                                f"mirroring to {self.url} failed: {detail}", rows=len(rows))


class Comparator:
    """The candidate's side: score mirrored rows on the shadow track and compare with the stable's scores."""

    def __init__(self, threshold: float, metrics: ShadowMetrics, max_rows: int, max_body_bytes: int,
                 score: Callable[[list[dict[str, Any]]], Sequence[float]]) -> None:
        self.threshold = threshold
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self._score = score  # raises HttpError (with a kind) for rows it cannot score
        self._stable: deque[float] = deque(maxlen=PSI_WINDOW)
        self._candidate: deque[float] = deque(maxlen=PSI_WINDOW)

    async def endpoint(self, scope: Scope, receive: Receive, params: Params) -> Response:
        doc = await read_json(scope, receive, self.max_body_bytes)
        rows = doc.get("rows") if isinstance(doc, dict) else None
        scores = doc.get("scores") if isinstance(doc, dict) else None
        if (not isinstance(rows, list) or not isinstance(scores, list) or not rows or len(rows) != len(scores)
                or len(rows) > self.max_rows or not all(isinstance(r, dict) for r in rows)
                or not all(type(v) in (int, float) for v in scores)):
            # Not a mirror's body: refused, and not counted as a kind (it would read as the candidate's fault).
            raise HttpError(422, "INVALID_INPUT", '{"rows": [{name: number}], "scores": [number]} of equal length')
        try:
            candidate = self._score(rows)
        except HttpError as e:
            # Counted on the shadow track only: never ml_model_errors_total, never governance.
            self.metrics.error[e.kind if e.kind in self.metrics.error else "INVALID_INPUT"].inc(len(rows))
            raise HttpError(e.status, e.code, e.message, outcome=e.outcome, **e.fields) from None
        # The candidate's own threshold (its MLModel's spec): a "threshold" in the body is ignored.
        agreed = self.compare([float(s) for s in scores], list(candidate), self.threshold)
        return Response(200, orjson.dumps({"compared": len(rows), "agreed": agreed}))

    def compare(self, stable: list[float], candidate: list[float], threshold: float) -> int:
        agreed = 0
        observe = self.metrics.difference.observe
        for s, c in zip(stable, candidate, strict=True):
            observe(abs(c - s))
            agreed += (s >= threshold) == (c >= threshold)
        self.metrics.compared.inc(len(stable))
        self.metrics.agreements.inc(agreed)
        self._stable.extend(stable)
        self._candidate.extend(candidate)
        return agreed

    def update_psi(self) -> None:
        """Off the hot path (the server's periodic job): PSI over the window, NaN while it is too small."""
        if len(self._stable) < PSI_MIN_ROWS:
            self.metrics.psi.set(math.nan)
            return
        self.metrics.psi.set(score_psi(list(self._stable), list(self._candidate)))


def unavailable(reason: str) -> HttpError:
    return HttpError(503, "MODEL_UNAVAILABLE", reason, kind="UNAVAILABLE", outcome="unavailable")


def non_finite() -> HttpError:
    return HttpError(422, "NON_FINITE_OUTPUT", "the candidate answered a non-finite score", kind="NON_FINITE_OUTPUT")


def predict_error(e: Exception) -> HttpError:
    return HttpError(500, "PREDICT_ERROR", f"{type(e).__name__}", kind="PREDICT_ERROR", outcome="error")


