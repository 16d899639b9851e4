"""Feedback store: prediction records and the human feedback labels joined to them.

One :class:`FeedbackStore` protocol, two implementations:

* :class:`SqliteFeedbackStore` - the default, embedded, one replica. WAL with ``synchronous=FULL``: a
  committed label is on disk, so a ``201`` survives ``kill -9`` (and power loss) a moment later.
* :class:`PostgresFeedbackStore` - for several replicas sharing one database (psycopg 3). Reconnects after the
  database restarts; every write is idempotent (primary keys, ``ON CONFLICT DO NOTHING``) so a retry after
  an ambiguous commit cannot duplicate.

Methods are synchronous and called from one dedicated worker thread. ``add_feedback`` returns only once the
label is durable, and stores a record only once per ``feedback_id`` (the server derives that id from the
prediction and the stakeholder: :func:`feedback_id`). Prediction records are kept for the feedback join up to
a retention bound; a prediction that has feedback is kept as long as its labels (incident evidence); labels
are kept for their own retention (default 365 days: regulated users must keep them at least 6 months).

The schema is versioned (:data:`MIGRATIONS`, recorded in ``schema_migrations``) and migrated by the server on
start: under a PostgreSQL advisory lock (several replicas starting at once apply each step once) or SQLite's
write lock. Migrations only add (tables, columns with defaults, indexes), so a server of an earlier version -
what a rollback starts - keeps working on a schema a later one migrated.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store could not be reached or refused the write; nothing was acknowledged."""


class PredictionRecord(NamedTuple):
    """One answer, kept for the feedback join (a tuple: one is made per scored row on the hot path)."""

    prediction_id: str
    model: str
    version: str
    track: str
    state: str           # governance state when answered; neutral answers are recorded too
    inputs: str          # JSON object: feature name -> value, as received
    output: float        # finite: a non-finite score is refused before its record is made
    created_at: float    # unix seconds
    sha256: str = ""     # of the model file that answered ("" for records written before schema version 2)


@dataclass(frozen=True)
class FeedbackRecord:
    feedback_id: str
    prediction_id: str
    model: str
    version: str          # the version that made the prediction
    label: str            # JSON scalar, as received
    severity: str
    stakeholder: str
    comment: str | None
    author: str | None
    received_at: float
    track: str = ""       # the track and model file sha256 that made the prediction ("" before schema version 2)
    sha256: str = ""


@dataclass(frozen=True)
class PredictionFeedback:
    prediction: PredictionRecord | None
    feedback: list[FeedbackRecord]


class FeedbackStore(Protocol):
    def record_predictions(self, records: Sequence[PredictionRecord]) -> None: ...
    def prediction(self, prediction_id: str) -> PredictionRecord | None: ...
    def add_feedback(self, record: FeedbackRecord) -> tuple[FeedbackRecord, bool]:
        """Store ``record`` unless one with its ``feedback_id`` exists; the stored one and whether it is new."""
    def feedback_for(self, prediction_id: str) -> PredictionFeedback: ...
    def count_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str) -> int: ...
    def predictions_with_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str,
                                  limit: int) -> list[str]:
        """Prediction ids that received matching feedback since ``since``, oldest feedback first."""
    def purge_predictions(self, model: str, older_than: float, keep_at_most: int) -> int: ...
    def purge_feedback(self, model: str, older_than: float) -> int:
        """Delete the model's labels received before ``older_than`` (their retention)."""
    def feedback_page(self, model: str, since: float, until: float, after: tuple[float, str] | None,
                      limit: int) -> list[FeedbackRecord]:
        """Labels received in [since, until), ordered by (received_at, feedback_id), after ``after``: export."""
    def migrate(self) -> list[int]:
        """Bring the schema up to date now; the migration versions this store applied."""
    def schema_version(self) -> int: ...
    def close(self) -> None: ...


def open_store(dsn: str, namespace: str = "") -> FeedbackStore:
    """``postgresql://...`` / ``postgres://...`` ⇒ PostgreSQL; ``sqlite:///path`` or a plain path ⇒ SQLite.

    ``namespace`` is the model's Kubernetes namespace: every row this store writes carries it and every read,
    purge and lookup is limited to it, so two models of the same name in two namespaces on one database never see,
    purge or label each other's records."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresFeedbackStore(dsn, namespace=namespace)
    path = dsn.removeprefix("sqlite://") if dsn.startswith("sqlite://") else dsn
    return SqliteFeedbackStore(Path(path), namespace=namespace)


_FEEDBACK_NAMESPACE = uuid.UUID("6d776664-0000-5000-8000-6d6f64656c77")


def feedback_id(prediction_id: str, stakeholder: str) -> str:
    """The key that makes labels idempotent: one label per prediction and stakeholder, whichever replica
    receives it and however often it is retried (a UUID5 of the two)."""
    return str(uuid.uuid5(_FEEDBACK_NAMESPACE, f"{prediction_id}\x00{stakeholder}"))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


_PREDICTION_COLUMNS = "prediction_id, model, version, track, state, inputs, output, created_at, sha256"
_FEEDBACK_COLUMNS = ("feedback_id, prediction_id, model, version, label, severity, stakeholder, comment, author, "
                     "received_at, track, sha256")
# Written with every row, never read back into a record: the store's own namespace scopes every query.
_WRITE_PREDICTION_COLUMNS = _PREDICTION_COLUMNS + ", namespace"
_WRITE_FEEDBACK_COLUMNS = _FEEDBACK_COLUMNS + ", namespace"
_SQ = "namespace = ? AND model = ?"  # one model's rows (SQLite): parameters (self.namespace, model)
_PQ = "namespace = %s AND model = %s"  # the same, PostgreSQL


class Migration(NamedTuple):
    version: int
    what: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


# Append only; never edit a released step. Additive only (see the module docstring).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "prediction records and feedback labels", (
        """CREATE TABLE IF NOT EXISTS predictions (
            prediction_id TEXT PRIMARY KEY,
            model TEXT NOT NULL, version TEXT NOT NULL, track TEXT NOT NULL, state TEXT NOT NULL,
            inputs TEXT NOT NULL, output REAL NOT NULL, created_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS predictions_model_created ON predictions (model, created_at)",
        """CREATE TABLE IF NOT EXISTS feedback (
            feedback_id TEXT PRIMARY KEY, prediction_id TEXT NOT NULL,
            model TEXT NOT NULL, version TEXT NOT NULL, label TEXT NOT NULL,
            severity TEXT NOT NULL, stakeholder TEXT NOT NULL, comment TEXT, author TEXT, received_at REAL NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback (prediction_id)",
        "CREATE INDEX IF NOT EXISTS feedback_model_received ON feedback (model, received_at)",
    ), (
        """CREATE TABLE IF NOT EXISTS model_predictions (
            prediction_id text PRIMARY KEY,
            model text NOT NULL, version text NOT NULL, track text NOT NULL, state text NOT NULL,
            inputs jsonb NOT NULL, output double precision NOT NULL, created_at double precision NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS model_predictions_model_created ON model_predictions (model, created_at)",
        """CREATE TABLE IF NOT EXISTS model_feedback (
            feedback_id text PRIMARY KEY, prediction_id text NOT NULL,
            model text NOT NULL, version text NOT NULL, label jsonb NOT NULL,
            severity text NOT NULL, stakeholder text NOT NULL, comment text, author text,
            received_at double precision NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS model_feedback_prediction ON model_feedback (prediction_id)",
        "CREATE INDEX IF NOT EXISTS model_feedback_model_received ON model_feedback (model, received_at)",
    )),
    Migration(2, "model file sha256 on predictions; track and sha256 on labels", (
        "ALTER TABLE predictions ADD COLUMN sha256 TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE feedback ADD COLUMN track TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE feedback ADD COLUMN sha256 TEXT NOT NULL DEFAULT ''",
        "UPDATE feedback SET track = (SELECT p.track FROM predictions p "
        "WHERE p.prediction_id = feedback.prediction_id) "
        "WHERE EXISTS (SELECT 1 FROM predictions p WHERE p.prediction_id = feedback.prediction_id)",
    ), (
        "ALTER TABLE model_predictions ADD COLUMN IF NOT EXISTS sha256 text NOT NULL DEFAULT ''",
        "ALTER TABLE model_feedback ADD COLUMN IF NOT EXISTS track text NOT NULL DEFAULT ''",
        "ALTER TABLE model_feedback ADD COLUMN IF NOT EXISTS sha256 text NOT NULL DEFAULT ''",
        "UPDATE model_feedback f SET track = p.track FROM model_predictions p WHERE p.prediction_id = f.prediction_id",
    )),
    # Rows written before it carry namespace '' and are seen by no model: assign them with one UPDATE per
    # namespace (docs/model-server.md) if they must stay evidence.
    Migration(3, "the model's namespace on predictions and labels", (
        "ALTER TABLE predictions ADD COLUMN namespace TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE feedback ADD COLUMN namespace TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS predictions_ns_model_created ON predictions (namespace, model, created_at)",
        "CREATE INDEX IF NOT EXISTS feedback_ns_model_received ON feedback (namespace, model, received_at)",
    ), (
        "ALTER TABLE model_predictions ADD COLUMN IF NOT EXISTS namespace text NOT NULL DEFAULT ''",
        "ALTER TABLE model_feedback ADD COLUMN IF NOT EXISTS namespace text NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS model_predictions_ns_model_created ON model_predictions "
        "(namespace, model, created_at)",
        "CREATE INDEX IF NOT EXISTS model_feedback_ns_model_received ON model_feedback (namespace, model, received_at)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
_MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, what text NOT NULL, "
                     "applied_at double precision NOT NULL)")


def _prediction_row(r: PredictionRecord) -> tuple[Any, ...]:
    return tuple(r)


def _feedback_row(r: FeedbackRecord) -> tuple[Any, ...]:
    return (r.feedback_id, r.prediction_id, r.model, r.version, r.label, r.severity, r.stakeholder, r.comment,
            r.author, r.received_at, r.track, r.sha256)


# Prediction records go to SQLite up to this many rows per INSERT statement: executemany steps the statement once
# per row, and each step releases and retakes the GIL, which the event loop holds; on the serving core each
# handover is a context switch. 64 rows per step: 7.6 instead of 10.5 µs of store-thread CPU per record
# (bench/server/README.md). Sizes are powers of two, so at most seven statements are ever compiled (and cached).
_SQLITE_ROWS_PER_INSERT = 64  # x 10 columns: within SQLite's oldest limit of 999 parameters
_SQLITE_ROW = "(?,?,?,?,?,?,?,?,?,?)"


def _insert_rows(c: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """``INSERT OR IGNORE`` of prediction rows (with their namespace) in statements of many rows each."""
    start, size = 0, _SQLITE_ROWS_PER_INSERT
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        c.execute(f"INSERT OR IGNORE INTO predictions ({_WRITE_PREDICTION_COLUMNS}) VALUES "
                  + ",".join([_SQLITE_ROW] * size), [v for row in rows[start:start + size] for v in row])
        start += size


class SqliteFeedbackStore:
    def __init__(self, path: Path, *, namespace: str = "") -> None:
        self.path = path
        self.namespace = namespace
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by one worker thread at a time (the lock makes direct use from tests safe too).
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit; NORMAL would lose the last commits on power loss.
            self._conn.execute("PRAGMA synchronous=FULL")
        self.applied = self._tx(self._migrate)

    @staticmethod
    def _migrate(c: sqlite3.Connection) -> list[int]:
        """Apply the missing steps in this (BEGIN IMMEDIATE: write-locked) transaction; the versions applied."""
        c.execute(_MIGRATIONS_TABLE)
        done = {int(v) for (v,) in c.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for m in MIGRATIONS:
            if m.version not in done:
                for statement in m.sqlite:
                    c.execute(statement)
                c.execute("INSERT INTO schema_migrations (version, what, applied_at) VALUES (?,?,?)",
                          (m.version, m.what, time.time()))
                applied.append(m.version)
        return applied

    def migrate(self) -> list[int]:
        return self.applied

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return result
            except sqlite3.Error as e:
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise StoreUnavailable(f"sqlite {self.path}: {e}") from e

    def record_predictions(self, records: Sequence[PredictionRecord]) -> None:
        if records:
            rows = [(*_prediction_row(r), self.namespace) for r in records]
            self._tx(lambda c: _insert_rows(c, rows))

    def prediction(self, prediction_id: str) -> PredictionRecord | None:
        rows = self._query(f"SELECT {_PREDICTION_COLUMNS} FROM predictions WHERE prediction_id = ? "
                           "AND namespace = ?", (prediction_id, self.namespace))
        return PredictionRecord(*rows[0]) if rows else None

    def add_feedback(self, record: FeedbackRecord) -> tuple[FeedbackRecord, bool]:
        def add(c: sqlite3.Connection) -> tuple[FeedbackRecord, bool]:
            inserted = c.execute(f"INSERT OR IGNORE INTO feedback ({_WRITE_FEEDBACK_COLUMNS}) "
                                 "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                 (*_feedback_row(record), self.namespace)).rowcount == 1
            row = c.execute(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE feedback_id = ? AND namespace = ?",
                            (record.feedback_id, self.namespace)).fetchone()
            return FeedbackRecord(*row), inserted

        return self._tx(add)

    def feedback_for(self, prediction_id: str) -> PredictionFeedback:
        rows = self._query(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE prediction_id = ? "
                           "AND namespace = ? ORDER BY received_at, feedback_id", (prediction_id, self.namespace))
        return PredictionFeedback(self.prediction(prediction_id), [FeedbackRecord(*r) for r in rows])

    def count_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str) -> int:
        marks = ",".join("?" * len(stakeholders)) or "NULL"
        rows = self._query(f"SELECT count(*) FROM feedback WHERE {_SQ} AND received_at >= ? AND severity = ? "
                           f"AND stakeholder IN ({marks})", (self.namespace, model, since, severity, *stakeholders))
        return int(rows[0][0])

    def predictions_with_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str,
                                  limit: int) -> list[str]:
        marks = ",".join("?" * len(stakeholders)) or "NULL"
        rows = self._query(f"SELECT prediction_id FROM feedback WHERE {_SQ} AND received_at >= ? AND severity = ? "
                           f"AND stakeholder IN ({marks}) GROUP BY prediction_id ORDER BY min(received_at) LIMIT ?",
                           (self.namespace, model, since, severity, *stakeholders, limit))
        return [str(r[0]) for r in rows]

    def purge_predictions(self, model: str, older_than: float, keep_at_most: int) -> int:
        no_feedback = "NOT EXISTS (SELECT 1 FROM feedback f WHERE f.prediction_id = predictions.prediction_id)"

        def purge(c: sqlite3.Connection) -> int:
            deleted = c.execute(f"DELETE FROM predictions WHERE {_SQ} AND created_at < ? AND {no_feedback}",
                                (self.namespace, model, older_than)).rowcount
            (count,) = c.execute(f"SELECT count(*) FROM predictions WHERE {_SQ}", (self.namespace, model)).fetchone()
            if count > keep_at_most:
                deleted += c.execute(
                    f"DELETE FROM predictions WHERE prediction_id IN (SELECT prediction_id FROM predictions "
                    f"WHERE {_SQ} AND {no_feedback} ORDER BY created_at LIMIT ?)",
                    (self.namespace, model, count - keep_at_most)).rowcount
            return int(deleted)

        return self._tx(purge)

    def purge_feedback(self, model: str, older_than: float) -> int:
        return int(self._tx(lambda c: c.execute(f"DELETE FROM feedback WHERE {_SQ} AND received_at < ?",
                                                (self.namespace, model, older_than)).rowcount))

    def feedback_page(self, model: str, since: float, until: float, after: tuple[float, str] | None,
                      limit: int) -> list[FeedbackRecord]:
        at, fid = after if after is not None else (since - 1.0, "")
        rows = self._query(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE {_SQ} AND received_at >= ? "
                           "AND received_at < ? AND (received_at > ? OR (received_at = ? AND feedback_id > ?)) "
                           "ORDER BY received_at, feedback_id LIMIT ?",
                           (self.namespace, model, since, until, at, at, fid, limit))
        return [FeedbackRecord(*r) for r in rows]

    def schema_version(self) -> int:
        return int(self._query("SELECT coalesce(max(version), 0) FROM schema_migrations", ())[0][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PREDICTION_SELECT = "prediction_id, model, version, track, state, inputs::text, output, created_at, sha256"
_FEEDBACK_SELECT = ("feedback_id, prediction_id, model, version, label::text, severity, stakeholder, comment, "
                    "author, received_at, track, sha256")


# Prediction records go to PostgreSQL as one statement per batch whose one parameter is the batch as a JSON array
# (orjson writes it in C, each record's inputs spliced in as they are): executemany ran the statement once per
# row, and psycopg's adaptation of its ten parameters cost ~33 us per record of the store thread's CPU on the
# serving core; this costs ~4.5 (bench/server/pg_records.py).
_PG_ROWS_PER_INSERT = 1000
_PG_INSERT_PREDICTIONS = (
    f"INSERT INTO model_predictions ({_WRITE_PREDICTION_COLUMNS}) "
    "SELECT e->>0, e->>1, e->>2, e->>3, e->>4, e->5, (e->>6)::float8, (e->>7)::float8, e->>8, %s "
    "FROM jsonb_array_elements(%s::jsonb) AS e ON CONFLICT (prediction_id) DO NOTHING")


def _float(value: float) -> float | str:
    """JSON has no NaN or infinity (orjson would write null): those go as the text PostgreSQL's float8 reads. A
    numpy scalar becomes the float it is (orjson writes only Python's)."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def _pg_prediction_batch(records: Sequence[PredictionRecord]) -> str:
    return orjson.dumps([(r.prediction_id, r.model, r.version, r.track, r.state, orjson.Fragment(r.inputs),
                          _float(r.output), _float(r.created_at), r.sha256) for r in records]).decode()


class PostgresFeedbackStore:
    # Replicas starting together would race on CREATE TABLE IF NOT EXISTS (it is not atomic in PostgreSQL) and on
    # each migration step: one transaction-scoped advisory lock serialises them; the second finds the steps done.
    _SCHEMA_LOCK = 0x6D77_6664  # "mwfd"

    def __init__(self, dsn: str, connect_timeout: float = 5.0, *, namespace: str = "") -> None:
        import psycopg

        self.namespace = namespace
        self._psycopg = psycopg
        self._dsn = dsn
        self._timeout = connect_timeout
        self._conn: Any = None
        self._lock = threading.Lock()
        self.applied: list[int] = []

    def _connect(self) -> Any:
        conn = self._psycopg.connect(self._dsn, connect_timeout=max(1, int(self._timeout)), autocommit=True)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._SCHEMA_LOCK,))
            conn.execute(_MIGRATIONS_TABLE)
            done = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            for m in MIGRATIONS:
                if m.version not in done:
                    for statement in m.postgresql:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations (version, what, applied_at) VALUES (%s,%s,%s)",
                                 (m.version, m.what, time.time()))
                    self.applied.append(m.version)
        return conn

    def migrate(self) -> list[int]:
        """Connect now (the server calls this on start): the schema is current before the first request."""
        self._run(lambda c: None)
        return self.applied

    def _run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` in a transaction; after a connection failure, once more on a fresh connection."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    with self._conn.transaction():
                        return fn(self._conn)
                except self._psycopg.OperationalError as e:
                    self._drop()
                    if attempt == 2:
                        raise StoreUnavailable(f"postgresql: {e}") from e
                except self._psycopg.Error as e:
                    self._drop()
                    raise StoreUnavailable(f"postgresql: {e}") from e
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def record_predictions(self, records: Sequence[PredictionRecord]) -> None:
        if not records:
            return
        def insert(c: Any) -> None:
            for start in range(0, len(records), _PG_ROWS_PER_INSERT):
                batch = _pg_prediction_batch(records[start:start + _PG_ROWS_PER_INSERT])
                c.execute(_PG_INSERT_PREDICTIONS, (self.namespace, batch))
        self._run(insert)

    def prediction(self, prediction_id: str) -> PredictionRecord | None:
        row = self._run(lambda c: c.execute(
            f"SELECT {_PREDICTION_SELECT} "
            "FROM model_predictions WHERE prediction_id = %s AND namespace = %s",
            (prediction_id, self.namespace)).fetchone())
        return PredictionRecord(*row) if row else None

    def add_feedback(self, record: FeedbackRecord) -> tuple[FeedbackRecord, bool]:
        # synchronous_commit stays at its default (on): COMMIT returns after the WAL is flushed.
        def add(c: Any) -> tuple[FeedbackRecord, bool]:
            inserted = c.execute(
                f"INSERT INTO model_feedback ({_WRITE_FEEDBACK_COLUMNS}) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (feedback_id) DO NOTHING", (*_feedback_row(record), self.namespace)).rowcount == 1
            row = c.execute(
                f"SELECT {_FEEDBACK_SELECT} FROM model_feedback WHERE feedback_id = %s AND namespace = %s",
                (record.feedback_id, self.namespace)).fetchone()
            return FeedbackRecord(*row), inserted

        return self._run(add)

    def feedback_for(self, prediction_id: str) -> PredictionFeedback:
        def read(c: Any) -> PredictionFeedback:
            p = c.execute(f"SELECT {_PREDICTION_SELECT} "
                          "FROM model_predictions WHERE prediction_id = %s AND namespace = %s",
                          (prediction_id, self.namespace)).fetchone()
            rows = c.execute(
                f"SELECT {_FEEDBACK_SELECT} FROM model_feedback WHERE prediction_id = %s AND namespace = %s "
                "ORDER BY received_at, feedback_id",
                (prediction_id, self.namespace)).fetchall()
            return PredictionFeedback(PredictionRecord(*p) if p else None, [FeedbackRecord(*r) for r in rows])

        return self._run(read)

    def count_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str) -> int:
        row = self._run(lambda c: c.execute(
            f"SELECT count(*) FROM model_feedback WHERE {_PQ} AND received_at >= %s AND severity = %s "
            "AND stakeholder = ANY(%s)", (self.namespace, model, since, severity, list(stakeholders))).fetchone())
        return int(row[0])

    def predictions_with_feedback(self, model: str, since: float, stakeholders: Sequence[str], severity: str,
                                  limit: int) -> list[str]:
        rows = self._run(lambda c: c.execute(
            f"SELECT prediction_id FROM model_feedback WHERE {_PQ} AND received_at >= %s AND severity = %s "
            "AND stakeholder = ANY(%s) GROUP BY prediction_id ORDER BY min(received_at) LIMIT %s",
            (self.namespace, model, since, severity, list(stakeholders), limit)).fetchall())
        return [str(r[0]) for r in rows]

    def purge_predictions(self, model: str, older_than: float, keep_at_most: int) -> int:
        no_feedback = "NOT EXISTS (SELECT 1 FROM model_feedback f WHERE f.prediction_id = p.prediction_id)"

        def purge(c: Any) -> int:
            deleted = c.execute(f"DELETE FROM model_predictions p WHERE {_PQ} AND created_at < %s "
                                f"AND {no_feedback}", (self.namespace, model, older_than)).rowcount
            (count,) = c.execute(f"SELECT count(*) FROM model_predictions WHERE {_PQ}",
                                 (self.namespace, model)).fetchone()
            if count > keep_at_most:
                deleted += c.execute(
                    f"DELETE FROM model_predictions WHERE prediction_id IN (SELECT prediction_id FROM "
                    f"model_predictions p WHERE {_PQ} AND {no_feedback} ORDER BY created_at LIMIT %s)",
                    (self.namespace, model, count - keep_at_most)).rowcount
            return int(deleted)

        return self._run(purge)

    def purge_feedback(self, model: str, older_than: float) -> int:
        return int(self._run(lambda c: c.execute(f"DELETE FROM model_feedback WHERE {_PQ} AND received_at < %s",
                                                 (self.namespace, model, older_than)).rowcount))

    def feedback_page(self, model: str, since: float, until: float, after: tuple[float, str] | None,
                      limit: int) -> list[FeedbackRecord]:
        at, fid = after if after is not None else (since - 1.0, "")
        rows = self._run(lambda c: c.execute(
            f"SELECT {_FEEDBACK_SELECT} FROM model_feedback WHERE {_PQ} AND received_at >= %s "
            "AND received_at < %s AND (received_at, feedback_id) > (%s, %s) ORDER BY received_at, feedback_id "
            "LIMIT %s", (self.namespace, model, since, until, at, fid, limit)).fetchall())
        return [FeedbackRecord(*r) for r in rows]

    def schema_version(self) -> int:
        return int(self._run(lambda c: c.execute(
            "SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone())[0])

    def close(self) -> None:
        with self._lock:
            self._drop()
