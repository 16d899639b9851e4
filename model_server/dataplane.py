"""The data plane: rows in, scores out, every answer recorded. No HTTP here (no scope, body or response): the
endpoints of each protocol (:mod:`model_server.rest`) translate their requests into rows and the result back.

What it decides: whether the model answers or the neutral prediction does (governance, the load state), the
rows as a matrix in the contract's order (a structured 4xx error when they do not fit it), a non-finite score
as the client's or the model's fault, and the record of every answer for the feedback join. The model it
scores with is installed by :mod:`model_server.lifecycle` once loaded and warmed up.
"""

from __future__ import annotations

import operator
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import orjson

from model_server import oip
from model_server.arrays import Matrix, Scores
from model_server.batching import MicroBatcher, all_finite
from model_server.config import Settings
from model_server.drift import DriftWindow
from model_server.governance import Governance, GovernanceState, TrainingRange
from model_server.http import HttpError, invalid_input
from model_server.loader import LoadedModel
from model_server.records import RecordBuffer
from model_server.shadow import Mirror, non_finite, predict_error, unavailable
from model_server.store import PredictionRecord
from modelwarden.artifacts import FeatureContract, FeatureMismatch

_NUMBER_TYPES = frozenset((float, int))

LoadStatus = Literal["not_loaded", "loading", "loaded", "failed"]


class PredictionIds:
    """Prediction ids as 32 hex digits: the time in milliseconds (48 bits, as UUIDv7 does), then 80 random bits.

    Time first, because the id is the feedback store's primary key: records written in one flush then land at
    the end of its index instead of one page each all over it (with random ids, every record of a flush dirtied
    its own page; SQLite wrote each to the WAL and fsynced it: 27-42 µs of store-thread CPU per record against
    10-11 µs time-ordered, on a 200,000-row table; ``bench/server/README.md``). 80 random bits keep an id
    unguessable, so nobody labels a prediction they were not given. One urandom call serves 256 ids: a syscall
    per id showed in the request profile."""

    _BATCH = 256
    _RANDOM_HEX = 20  # 80 bits

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0
        self._ms = -1
        self._ms_hex = ""

    def take(self, n: int) -> list[str]:
        ids = []
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:  # formatted once per millisecond: requests within one share it
            self._ms, self._ms_hex = ms, f"{ms & 0xFFFF_FFFF_FFFF:012x}"
        now = self._ms_hex
        for _ in range(n):
            if self._next >= len(self._hex):
                self._hex, self._next = os.urandom(self._RANDOM_HEX // 2 * self._BATCH).hex(), 0
            ids.append(now + self._hex[self._next:self._next + self._RANDOM_HEX])
            self._next += self._RANDOM_HEX
        return ids


def tune_for_serving(platform: str) -> None:
    """Settings for scoring on the event loop thread (call it there): one BLAS thread (one process per pod;
    the loop needs the other core); for scikit-learn, no finiteness scan (inputs are checked here first) and
    no per-call warning for models fitted on DataFrames (their feature names were checked at load)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1)
    if platform == "sklearn":
        import sklearn

        sklearn.set_config(assume_finite=True)  # thread-local: hence on the loop thread, where scoring runs
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


class Scored(NamedTuple):
    """What scoring rows answered: one id and score per row, whether the neutral prediction answered, and
    the governance state it answered in. (A tuple: one per request; a frozen dataclass took 2.5 times as long.)"""

    ids: list[str]
    scores: list[float]
    neutral: bool
    state: GovernanceState


class DataPlane:
    """Scores rows with the installed model (or answers neutral) and records every answer."""

    def __init__(self, settings: Settings, governance: Governance, records: RecordBuffer,
                 mirror: Mirror | None) -> None:
        self._settings = settings
        self._governance = governance
        self._records = records
        self._mirror = mirror
        self.model: LoadedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.drift: DriftWindow | None = None
        self.load_status: LoadStatus = "not_loaded"
        self.load_error: str | None = None
        self.ready_for_traffic = False
        self._neutral = settings.neutral_prediction
        self._ids = PredictionIds()
        # contract.reorder as one C call (operator.itemgetter), for the contract of the loaded model.
        self._pick: Callable[[dict[str, Any]], Sequence[Any]] = lambda row: ()
        self._pick_contract: FeatureContract | None = None
        self._training_range = TrainingRange.unknown(0)
        self._fault_ratio = 0.0
        self._fault_random = random.Random()

    # ------------------------------------------------------------------ what the lifecycle installs

    def install(self, model: LoadedModel) -> DriftWindow:
        """Serve ``model`` (verified, loaded and warmed up) from now on; its drift window."""
        s = self._settings
        features = model.contract.features
        getter = operator.itemgetter(*features)
        self._pick = getter if len(features) > 1 else lambda row: (getter(row),)
        self._pick_contract = model.contract
        self._training_range = TrainingRange.of(model.meta)
        self.model = model
        self.drift = DriftWindow(model.contract.features, model.meta.reference, s.drift_window_size,
                                 s.drift_min_samples)
        self.batcher = MicroBatcher(model.score, max_rows=max(s.max_batch_rows, 1024), observe=self.drift.observe)
        self.load_status = "loaded"
        self.ready_for_traffic = True
        return self.drift

    def load_failed(self, message: str) -> None:
        self.load_status = "failed"
        self.load_error = message
        self.ready_for_traffic = False

    def set_fault_ratio(self, ratio: float) -> None:
        self._fault_ratio = ratio

    # ------------------------------------------------------------------ scoring

    def contract(self) -> FeatureContract | None:
        """The contract of the loaded model, else the one the settings name (None: unknown yet)."""
        return self.model.contract if self.model is not None else self._settings.feature_contract

    def checking_contract(self) -> FeatureContract | None:
        """The contract requests are checked against now: none while the neutral prediction answers."""
        return self.model.contract if self.model is not None and self._governance.state.serves_model else None

    def rows_to_matrix(self, rows: list[dict[str, Any]], contract: FeatureContract, batch: bool) -> Matrix:
        flat: list[Any] = []
        n_features = contract.n_features
        pick = self._pick if contract is self._pick_contract else None
        for i, row in enumerate(rows):
            try:
                # contract.reorder, in C for the usual well-formed row; reorder itself explains a mismatch.
                if pick is not None and len(row) == n_features:
                    try:
                        values: Sequence[Any] = pick(row)
                    except KeyError:
                        values = contract.reorder(row)
                else:
                    values = contract.reorder(row)
            except FeatureMismatch as e:
                raise oip.feature_mismatch(e, **({"row": i} if batch else {})) from None
            if not _NUMBER_TYPES.issuperset(map(type, values)):  # bool, str, None, lists... are refused
                name = next(n for n, v in zip(contract.features, values, strict=True) if type(v) not in _NUMBER_TYPES)
                raise invalid_input(f"feature {name!r} must be a number", feature=name,
                                    **({"row": i} if batch else {}))
            if len(rows) == 1:
                # No finiteness scan: orjson refuses NaN, Infinity, 1e400 and integers beyond 64 bits, so every
                # parsed number converts to a finite float64.
                return np.array([values], dtype=np.float64)
            flat.extend(values)
        return np.array(flat, dtype=np.float64).reshape(len(rows), n_features)

    def _serving(self) -> tuple[bool, GovernanceState]:
        """Whether the model answers (else the neutral prediction does), and the state to report.
        A model still loading after the kill switch was lifted answers neutral rather than an error."""
        state = self._governance.state
        if not state.serves_model:
            return False, state
        if self.model is not None:
            return True, state
        if self.load_status == "failed":
            raise HttpError(503, "MODEL_UNAVAILABLE", self.load_error, outcome="unavailable")
        if not self.ready_for_traffic:
            raise HttpError(503, "MODEL_UNAVAILABLE", "model is loading", outcome="unavailable")
        return False, state

    async def score_rows(self, rows: list[dict[str, Any]], batch: bool, matrix: Matrix | None = None) -> Scored:
        """Score rows (or answer neutral); records every answer for the feedback join. ``matrix``: the same rows
        already checked and in contract order (OIP binary tensors), so they are not converted again."""
        serving, state = self._serving()
        now = time.time()
        ids = self._ids.take(len(rows))
        if not serving:
            scores = [self._neutral] * len(rows)
        else:
            model, batcher = self.model, self.batcher
            assert model is not None and batcher is not None
            if matrix is None:
                matrix = self.rows_to_matrix(rows, model.contract, batch)
            if self._fault_ratio and self._fault_random.random() < self._fault_ratio:
                raise HttpError(500, "INJECTED_FAULT", "fault injected by /admin/faults", outcome="error")
            try:
                result = await batcher.submit(matrix)
            except Exception as e:
                raise HttpError(500, "PREDICT_ERROR", "the model failed on this input", kind="PREDICT_ERROR",
                                outcome="error", detail=f"{type(e).__name__}: {e}") from None
            scores = result.tolist()
            if not all_finite(result, scores):
                raise self._non_finite(matrix, result, batch)
            if self._mirror is not None:
                self._mirror.offer(rows, scores)  # O(1): sent by a background task after this answer
        self._record(ids, rows, scores, state, now)
        return Scored(ids, scores, not serving, state)

    def shadow_score(self, rows: list[dict[str, Any]]) -> list[float]:
        """Score mirrored rows on the shadow track: the same contract and model, but nothing recorded, no SLO
        outcome, no drift observation, no governance error (the caller counts failures on the shadow track)."""
        model = self.model
        if model is None or not self._governance.state.serves_model:
            raise unavailable("the candidate does not serve its model now")
        matrix = self.rows_to_matrix(rows, model.contract, True)
        try:
            scores = model.score(matrix)
        except Exception as e:
            raise predict_error(e) from None
        if not all_finite(scores):
            raise non_finite()
        result: list[float] = scores.tolist()
        return result

    def _non_finite(self, matrix: Matrix, scores: Scores, batch: bool) -> HttpError:
        """A non-finite score: the client's when every row that got one has an input far outside the training
        range (see :class:`~model_server.governance.TrainingRange`), else the model's fault."""
        bad = ~np.isfinite(scores)
        extreme = self._training_range.extreme_rows(matrix)
        if extreme[bad].all():
            rows = np.flatnonzero(bad)[:20].tolist()
            features = self._training_range.extreme_features(matrix[rows[0]])
            return HttpError(422, "INPUT_OUT_OF_RANGE", "inputs this far outside the model's training range make "
                             "its score non-finite", kind="INVALID_INPUT", features=features[:20],
                             **({"rows": rows} if batch else {}))
        return HttpError(422, "NON_FINITE_OUTPUT", "the model produced a non-finite score for this input",
                         kind="NON_FINITE_OUTPUT", outcome="error", detail="the model answered a non-finite score")

    def _record(self, ids: list[str], rows: list[dict[str, Any]], scores: list[float], state: GovernanceState,
                now: float) -> None:
        s = self._settings
        name, version, track, state_value = s.model_name, s.model_version, s.model_track, state.value
        sha = s.artifact_sha256
        if len(rows) == 1:  # the usual request: no list built around its one record
            self._records.append(PredictionRecord(ids[0], name, version, track, state_value,
                                                  orjson.dumps(rows[0]).decode(), scores[0], now, sha))
            return
        self._records.add([PredictionRecord(pid, name, version, track, state_value, orjson.dumps(row).decode(),
                                            score, now, sha) for pid, row, score in zip(ids, rows, scores,
                                                                                         strict=True)])
