"""The buffer of prediction records waiting for the feedback store.

Every answer is recorded (for the feedback join); records are written in batches by the store thread, off the
request path. Whoever writes them *takes* the pending batch and, if the store refuses it, the batch goes back
in front, in order (:meth:`RecordBuffer.taken`). Bounded: beyond ``max_pending`` the oldest are dropped and
counted, so a store that is down cannot grow the process without limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from model_server.store import PredictionRecord

MAX_PENDING_RECORDS = 200_000


class RecordBuffer:
    def __init__(self, max_pending: int = MAX_PENDING_RECORDS,
                 on_drop: Callable[[int], None] = lambda dropped: None) -> None:
        self._pending: list[PredictionRecord] = []
        self._max = max_pending
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, records: list[PredictionRecord]) -> None:
        pending = self._pending
        pending.extend(records)
        overflow = len(pending) - self._max
        if overflow > 0:
            del pending[:overflow]
            self._on_drop(overflow)

    def append(self, record: PredictionRecord) -> None:
        """One record (:meth:`add` of a list of one)."""
        pending = self._pending
        pending.append(record)
        if len(pending) > self._max:
            del pending[0]
            self._on_drop(1)

    @contextmanager
    def taken(self) -> Iterator[list[PredictionRecord]]:
        """Everything pending, handed over; put back in front (before newer records) if the block raises."""
        batch, self._pending = self._pending, []
        try:
            yield batch
        except BaseException:
            self._pending[:0] = batch
            raise
