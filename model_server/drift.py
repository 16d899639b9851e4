"""Drift: PSI of a sliding window of recent inputs and scores against the training reference.

The request path only copies rows into a ring buffer (one vectorised slice assignment); the histogram and
PSI are computed periodically on a snapshot, off the request path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model_server.metrics import PREDICTION_SCORE_FEATURE
from modelwarden.artifacts import DriftReference, psi


class DriftWindow:
    def __init__(self, features: tuple[str, ...], reference: DriftReference, size: int, min_samples: int) -> None:
        self._size = size
        self._min_samples = min_samples
        # Column j of the buffer is feature j (contract order); the last column is the prediction score.
        self._columns: list[tuple[str, int, npt.NDArray[np.float64], tuple[float, ...]]] = []
        for j, name in enumerate(features):
            ref = reference.features.get(name)
            if ref is not None:
                self._columns.append((name, j, np.asarray(ref.bin_edges[1:-1]), ref.proportions))
        if reference.prediction is not None:
            ref = reference.prediction
            self._columns.append((PREDICTION_SCORE_FEATURE, len(features), np.asarray(ref.bin_edges[1:-1]),
                                  ref.proportions))
        self._buffer = np.zeros((size, len(features) + 1), dtype=np.float64)
        self._next = 0
        self._filled = 0

    @property
    def tracked(self) -> list[str]:
        """The ``feature`` label values this window publishes."""
        return [name for name, _, _, _ in self._columns]

    @property
    def samples(self) -> int:
        return self._filled

    def observe(self, rows: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> None:
        if not self._columns:
            return
        n = len(rows)
        if n == 1:  # the usual batch at low concurrency: one row assignment, one scalar
            start = self._next
            self._buffer[start, :-1] = rows[0]
            self._buffer[start, -1] = scores[0]
            self._next = (start + 1) % self._size
            self._filled = min(self._size, self._filled + 1)
            return
        if n >= self._size:  # a batch larger than the window: keep its tail
            rows, scores, n = rows[-self._size:], scores[-self._size:], self._size
        start = self._next
        first = min(n, self._size - start)
        self._buffer[start:start + first, :-1] = rows[:first]
        self._buffer[start:start + first, -1] = scores[:first]
        if first < n:  # wrap around
            self._buffer[:n - first, :-1] = rows[first:]
            self._buffer[:n - first, -1] = scores[first:]
        self._next = (start + n) % self._size
        self._filled = min(self._size, self._filled + n)

    def snapshot(self) -> npt.NDArray[np.float64] | None:
        """A copy of the window (taken on the event loop), or ``None`` before ``min_samples`` rows."""
        if self._filled < self._min_samples or not self._columns:
            return None
        return self._buffer[:self._filled].copy()

    def compute(self, window: npt.NDArray[np.float64]) -> dict[str, float]:
        """PSI per tracked column of a snapshot (safe to run in a worker thread)."""
        total = len(window)
        result = {}
        for name, column, inner_edges, expected in self._columns:
            counts = np.bincount(np.searchsorted(inner_edges, window[:, column], side="right"),
                                 minlength=len(expected))
            result[name] = psi(expected, (counts / total).tolist())
        return result
