"""Governance state of one server: whether the model may answer, or the neutral prediction must.

States (the runbook's, exported as ``ml_governance_state``):

* ``DISABLED_CONFIG`` - the kill switch (MLModel ``spec.enabled: false``): neutral answers, no model
  loading attempts. Fed through :meth:`Governance.set_config_enabled` (see :mod:`model_server.watcher`).
* ``DISABLED_BY_GOVERNANCE`` - counted model errors reached the threshold within the window: neutral answers
  until a human re-enables (:meth:`Governance.reenable`). The latch survives config flips on purpose: the
  errors that tripped it say nothing about whether the config change fixed them.
* ``ENABLED|DEGRADED`` - serving, but counted model errors occurred in the window or drift is significant.
* ``ENABLED|OK`` - serving normally.

Thread-safe: the watcher thread and the event loop both call in.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from modelwarden.artifacts import ModelMeta


class GovernanceState(StrEnum):
    ENABLED_OK = "ENABLED|OK"
    ENABLED_DEGRADED = "ENABLED|DEGRADED"
    DISABLED_CONFIG = "DISABLED_CONFIG"
    DISABLED_BY_GOVERNANCE = "DISABLED_BY_GOVERNANCE"

    @property
    def serves_model(self) -> bool:
        return self in (GovernanceState.ENABLED_OK, GovernanceState.ENABLED_DEGRADED)


# (old state, new state, reason, details)
StateListener = Callable[[GovernanceState, GovernanceState, str, dict[str, object]], None]


class Governance:
    def __init__(self, *, config_enabled: bool, max_model_errors: int, window_seconds: float,
                 counted_kinds: Iterable[str], degraded_psi: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._config_enabled = config_enabled
        self._tripped = False
        self._max_errors = max_model_errors
        self._window = window_seconds
        self._counted = frozenset(counted_kinds)
        self._degraded_psi = degraded_psi
        self._recent: deque[float] = deque()
        self._max_psi = 0.0
        self.model_errors = 0  # every model error since start, counted or not (the HEARTBEAT's model_errors)
        self._listeners: list[StateListener] = []
        self._state = self._compute(clock())

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    @property
    def config_enabled(self) -> bool:
        return self._config_enabled

    @property
    def state(self) -> GovernanceState:
        """The current state; a DEGRADED whose errors have left the window turns back to OK here."""
        if not self._recent:  # nothing can expire: the stored state is current (the hot path; no lock)
            return self._state
        return self.refresh()

    def window_errors(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._recent)

    def set_config_enabled(self, enabled: bool, source: str = "config") -> None:
        """The kill switch. ``False`` ⇒ ``DISABLED_CONFIG`` at once; ``True`` lifts it (not a governance trip)."""
        with self._lock:
            if self._config_enabled == enabled:
                return
            self._config_enabled = enabled
        self._transition("CONFIG_ENABLED" if enabled else "CONFIG_DISABLED", {"source": source})

    def record_model_error(self, kind: str) -> None:
        """Count one model error; counted kinds can trip ``DISABLED_BY_GOVERNANCE``."""
        details: dict[str, object] = {}
        with self._lock:
            self.model_errors += 1
            if kind not in self._counted or not self._config_enabled or self._tripped:
                return
            now = self._clock()
            self._recent.append(now)
            self._expire(now)
            if len(self._recent) >= self._max_errors:
                self._tripped = True
                details = {"window_errors": len(self._recent), "threshold": self._max_errors,
                           "window_seconds": self._window, "last_kind": kind}
        self._transition("MODEL_ERRORS_OVER_THRESHOLD" if details else f"MODEL_ERROR_{kind}", details)

    def set_drift(self, max_psi: float) -> None:
        with self._lock:
            self._max_psi = max_psi
        self._transition("DRIFT", {"max_psi": round(max_psi, 4)})

    def reenable(self, actor: str, reason: str) -> bool:
        """A human lifts ``DISABLED_BY_GOVERNANCE``; the error window starts afresh. False if it was not set."""
        with self._lock:
            if not self._tripped:
                return False
            self._tripped = False
            self._recent.clear()
        self._transition("REENABLED_BY_HUMAN", {"actor": actor, "reason": reason})
        return True

    def refresh(self) -> GovernanceState:
        return self._transition("WINDOW", {})

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - self._window:
            self._recent.popleft()

    def _compute(self, now: float) -> GovernanceState:
        if not self._config_enabled:
            return GovernanceState.DISABLED_CONFIG
        if self._tripped:
            return GovernanceState.DISABLED_BY_GOVERNANCE
        self._expire(now)
        if self._recent or self._max_psi >= self._degraded_psi:
            return GovernanceState.ENABLED_DEGRADED
        return GovernanceState.ENABLED_OK

    def _transition(self, reason: str, details: dict[str, object]) -> GovernanceState:
        with self._lock:
            old = self._state
            new = self._state = self._compute(self._clock())
        if new is not old:
            for listener in self._listeners:
                listener(old, new, reason, details)
        return new


# ---------------------------------------------------------------- where a client's fault ends and the model's begins

EXTREME_INPUT_FACTOR = 1e6


class TrainingRange:
    """What a model may be blamed for. A non-finite score counts as a model fault (``NON_FINITE_OUTPUT``,
    towards ``DISABLED_BY_GOVERNANCE`` and the SLO) unless the row that got it carries an input *extreme*: more
    than ``EXTREME_INPUT_FACTOR`` (a million) widths of the feature's training range outside that range, where
    the width is the largest of the range's span, its bounds' magnitudes, and 1. Such a score is the client's
    doing (``422 INPUT_OUT_OF_RANGE``, ``outcome="client_error"``): 1.7e308 overflows a logistic model's dot
    product, 3.5e38 a float32 ONNX model's input cast. A feature without a training reference has the range
    [0, 0], so beyond ±1e6 is extreme. Inputs outside the range that still score finitely are served as usual:
    the line matters only when the model cannot answer."""

    def __init__(self, low: npt.NDArray[np.float64], high: npt.NDArray[np.float64]) -> None:
        self.low, self.high = low, high
        self._features: tuple[str, ...] = ()

    @classmethod
    def unknown(cls, n_features: int) -> TrainingRange:
        return cls(np.full(n_features, -math.inf), np.full(n_features, math.inf))

    @classmethod
    def of(cls, meta: ModelMeta) -> TrainingRange:
        low, high = np.zeros(meta.n_features), np.zeros(meta.n_features)
        for j, name in enumerate(meta.features):
            reference = meta.reference.features.get(name)
            lo, hi = (reference.bin_edges[0], reference.bin_edges[-1]) if reference is not None else (0.0, 0.0)
            width = max(hi - lo, abs(lo), abs(hi), 1.0)
            low[j], high[j] = lo - EXTREME_INPUT_FACTOR * width, hi + EXTREME_INPUT_FACTOR * width
        limits = cls(low, high)
        limits._features = meta.features
        return limits

    def extreme_rows(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Per row: whether any input is extreme."""
        return np.asarray(((rows < self.low) | (rows > self.high)).any(axis=1), dtype=np.bool_)

    def extreme_features(self, row: npt.NDArray[np.float64]) -> list[str]:
        return [self._features[j] for j in np.flatnonzero((row < self.low) | (row > self.high)).tolist()
                if j < len(self._features)]
