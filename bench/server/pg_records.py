"""What writing a flush of prediction records costs with the PostgreSQL store: the store's statement (the batch as
one JSON parameter) against the per-row ``executemany`` it replaced, the two alternating, on a real PostgreSQL
(``localenv.postgres``).

    .venv/bin/python bench/server/pg_records.py [--rounds 3] [--flush 575]

``--flush`` records per flush (575: a 0.25 s flush at ~2,300 req/s, the c=1 rate); 40 flushes per round and
method. Per record: the store thread's CPU (this thread's time: the Python and psycopg work that shares the
serving core with the event loop) and the PostgreSQL backend's CPU (its /proc stat); per flush: wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "operator")]

from localenv import postgres as postgres_env  # noqa: E402
from model_server.dataplane import PredictionIds  # noqa: E402
from model_server.store import _WRITE_PREDICTION_COLUMNS, PostgresFeedbackStore, PredictionRecord  # noqa: E402

ROW = orjson.dumps({f"feature_{i:02d}": 0.123456789 * i for i in range(28)}).decode()
FLUSHES = 40


def executemany(store: PostgresFeedbackStore) -> Callable[[Sequence[PredictionRecord]], None]:
    """The statement before: one INSERT per row, psycopg adapting each row's ten parameters."""
    sql = (f"INSERT INTO model_predictions ({_WRITE_PREDICTION_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
           "ON CONFLICT (prediction_id) DO NOTHING")

    def write(records: Sequence[PredictionRecord]) -> None:
        rows = [(*r, store.namespace) for r in records]
        store._run(lambda c: c.cursor().executemany(sql, rows))
    return write


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flush", type=int, default=575)
    args = parser.parse_args()
    ids = PredictionIds()
    pg = postgres_env.start()
    try:
        store = PostgresFeedbackStore(pg.dsn, namespace="bench")
        store.migrate()
        backend = store._run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        methods = {"executemany, one INSERT per row (before)": executemany(store),
                   "one INSERT of the batch as JSON (the store)": store.record_predictions}

        def flush() -> list[PredictionRecord]:
            now = time.time()
            return [PredictionRecord(pid, "m", "1.0.0", "stable", "ENABLED|OK", ROW, 0.5, now, "ab" * 32)
                    for pid in ids.take(args.flush)]

        print(f"{args.flush} records per flush, {FLUSHES} flushes per round and method, {args.rounds} rounds\n")
        print("| method | round | store thread CPU µs/record | PostgreSQL backend CPU µs/record | ms per flush |")
        print("|---|---:|---:|---:|---:|")
        for round_ in range(1, args.rounds + 1):
            for name, write in methods.items():
                write(flush())  # warm: the statement prepared, the pages cached
                flushes = [flush() for _ in range(FLUSHES)]
                cpu, backend0, wall = time.thread_time(), backend_cpu_seconds(backend), time.perf_counter()
                for records in flushes:
                    write(records)
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                backend_cpu = backend_cpu_seconds(backend) - backend0
                n = FLUSHES * args.flush
                print(f"| {name} | {round_} | {1e6 * cpu / n:.1f} | {1e6 * backend_cpu / n:.1f} | "
                      f"{1e3 * wall / FLUSHES:.1f} |", flush=True)
        store.close()
    finally:
        pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
