"""Prediction records written to the SQLite feedback store in flushes of any size: each once, each intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_server.records import RecordBuffer
from model_server.store import PredictionRecord, SqliteFeedbackStore


def _records(first: int, n: int) -> list[PredictionRecord]:
    return [PredictionRecord(f"{i:032x}", "fraud", "2.1.0", "canary", "ENABLED|OK", json.dumps({"amount": i}),
                             i / 1000, 1_700_000_000.0 + i, "ab" * 32) for i in range(first, first + n)]


@pytest.mark.parametrize("flush", [1, 7, 63, 64, 65, 200, 1000])
def test_a_flush_of_any_size_stores_each_record_once_and_intact(tmp_path: Path, flush: int) -> None:
    store = SqliteFeedbackStore(tmp_path / "feedback.sqlite3", namespace="risk")
    try:
        records = _records(10, flush)
        store.record_predictions(records)
        store.record_predictions(records[: flush // 2 + 1])  # a retry after an ambiguous failure
        store.record_predictions([*_records(10_000, 3), records[-1]])  # a later flush overlapping the last one
        for record in [*records, *_records(10_000, 3)]:
            assert store.prediction(record.prediction_id) == record
        (stored,) = store._query("SELECT count(*) FROM predictions WHERE namespace = ?", ("risk",))[0]
        assert stored == flush + 3
    finally:
        store.close()


def test_a_full_buffer_drops_and_counts_the_oldest_records_first() -> None:
    dropped: list[int] = []
    buffer = RecordBuffer(max_pending=5, on_drop=dropped.append)
    records = _records(0, 9)
    buffer.add(records[:3])
    for record in records[3:7]:
        buffer.append(record)  # one request's record: the usual case
    buffer.add(records[7:])
    assert sum(dropped) == 4
    with buffer.taken() as batch:
        assert batch == records[4:]
