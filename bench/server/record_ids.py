"""What the prediction id's shape costs the feedback store: records written with random ids against
time-first ids (``model_server.dataplane.PredictionIds``), in flushes of 250 into a SQLite store of 200,000 rows.

    .venv/bin/python bench/server/record_ids.py [--rounds 2]

The id is the primary key: random ids put every record of a flush on its own index page (each written to the WAL
and fsynced at the commit); time-first ids append. Process CPU time per record and wall time per flush, the two
shapes alternating.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "operator")]

from model_server.dataplane import PredictionIds  # noqa: E402
from model_server.store import PredictionRecord, SqliteFeedbackStore  # noqa: E402

ROW = orjson.dumps({f"feature_{i:02d}": 0.123456789 * i for i in range(28)}).decode()
PREFILL, FLUSHES, FLUSH_RECORDS = 200_000, 40, 250


def random_ids(n: int) -> list[str]:
    return [os.urandom(16).hex() for _ in range(n)]


def records(ids: list[str]) -> list[PredictionRecord]:
    return [PredictionRecord(i, "m", "v", "stable", "ENABLED|OK", ROW, 0.5, time.time(), "s") for i in ids]


def measure(ids: Callable[[int], list[str]]) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="mw-ids-"))
    try:
        store = SqliteFeedbackStore(work / "feedback.sqlite3")
        store.migrate()
        for _ in range(PREFILL // 5000):
            store.record_predictions(records(ids(5000)))
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(FLUSHES):
            store.record_predictions(records(ids(FLUSH_RECORDS)))
        result = ((time.process_time() - cpu) / (FLUSHES * FLUSH_RECORDS) * 1e6,
                  (time.perf_counter() - wall) / FLUSHES * 1e3)
        store.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| ids | µs CPU per record | ms wall per flush of 250 |\n|---|---:|---:|")
    for _ in range(args.rounds):
        for name, ids in (("random 128 bits", random_ids), ("time-first (48-bit ms + 80 random bits)",
                                                            PredictionIds().take)):
            cpu, wall = measure(ids)
            print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
