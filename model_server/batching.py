"""Micro-batching: requests that reach the model within one event-loop turn are scored in one call.

A scikit-learn or onnxruntime call costs tens of microseconds before it touches a row, so at concurrency 32
scoring the waiting requests together is far cheaper than 32 calls; at concurrency 1 the cost is one extra
loop turn. Rows are independent, so a row's score does not depend on its batch-mates. If a batch call
fails, each request is scored alone so that one bad request cannot fail its neighbours.

Scoring runs on the event loop thread: the GIL would serialise a worker thread anyway, and the hop would
cost more than small batches take.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np

from model_server.arrays import Matrix, ScoreFn, Scores

Observer = Callable[[Matrix, Scores], None]
_SMALL = 64  # up to this many scores, checking Python floats beats numpy's per-call overhead (~0.5 vs ~3 µs)


def all_finite(values: Scores, as_list: list[float] | None = None) -> bool:
    """``np.isfinite(values).all()``, cheaper for the few values of a typical request (``as_list``: the same
    values as Python floats, when the caller has them already)."""
    if values.ndim == 1 and len(values) <= _SMALL:
        return all(map(math.isfinite, values.tolist() if as_list is None else as_list))
    return bool(np.isfinite(values).all())


class MicroBatcher:
    """``observe`` (e.g. the drift window) sees every scored batch once, rather than once per request."""

    def __init__(self, score: ScoreFn, max_rows: int = 4096, observe: Observer | None = None) -> None:
        self._score = score
        self._max_rows = max_rows
        self._observe = observe
        self._pending: list[tuple[Matrix, asyncio.Future[Scores]]] = []
        self._scheduled = False
        self.batches = 0
        self.rows = 0

    def submit(self, rows: Matrix) -> asyncio.Future[Scores]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scores] = loop.create_future()
        self._pending.append((rows, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.run_pending)
        return future

    def run_pending(self) -> None:
        """Score everything submitted so far (also what ``/admin/flush`` calls to drain the queue), in groups of
        at most ``max_rows`` rows (a request larger than that alone)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        group: list[tuple[Matrix, asyncio.Future[Scores]]] = []
        total = 0
        for item in pending:
            n = len(item[0])
            if group and total + n > self._max_rows:
                self._run_group(group, total)
                group, total = [], 0
            group.append(item)
            total += n
        if group:
            self._run_group(group, total)

    def _run_group(self, group: list[tuple[Matrix, asyncio.Future[Scores]]], total: int) -> None:
        self.batches += 1
        self.rows += total
        if len(group) == 1:
            self._resolve(*group[0])
            return
        matrix = np.concatenate([rows for rows, _ in group])
        try:
            scores = self._score(matrix)
        except Exception:
            for rows, future in group:
                self._resolve(rows, future)
            return
        self._observed(matrix, scores)
        start = 0
        for rows, future in group:
            if not future.done():
                future.set_result(scores[start:start + len(rows)])
            start += len(rows)

    def _resolve(self, rows: Matrix, future: asyncio.Future[Scores]) -> None:
        if future.done():  # the request was cancelled (client went away)
            return
        try:
            scores = self._score(rows)
        except Exception as e:
            future.set_exception(e)
            return
        self._observed(rows, scores)
        future.set_result(scores)

    def _observed(self, rows: Matrix, scores: Scores) -> None:
        if self._observe is not None and all_finite(scores):
            self._observe(rows, scores)

    @property
    def pending(self) -> int:
        return len(self._pending)
