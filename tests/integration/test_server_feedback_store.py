"""One feedback-store suite, run against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localenv import postgres as postgres_env
from model_server.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    FeedbackRecord,
    FeedbackStore,
    PostgresFeedbackStore,
    PredictionRecord,
    SqliteFeedbackStore,
    open_store,
)

StoreFactory = Callable[[], FeedbackStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_new(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens (another) store on the same database; every store opened is closed afterwards."""
    dsn = str(tmp_path / "feedback.sqlite3")
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres").dsn
    opened: list[FeedbackStore] = []

    def factory() -> FeedbackStore:
        opened.append(open_store(dsn))
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def model() -> str:
    """A model name of its own: the PostgreSQL database is shared by the whole session."""
    return f"m-{uuid.uuid4().hex[:8]}"


def _prediction(model: str, created_at: float, version: str = "1.0.0") -> PredictionRecord:
    return PredictionRecord(uuid.uuid4().hex, model, version, "stable", "ENABLED|OK", '{"a": 1.5, "b": -2}', 0.25,
                            created_at)


def _feedback(p: PredictionRecord, severity: str = "critical", stakeholder: str = "finance",
              received_at: float | None = None, label: str = '"wrong"') -> FeedbackRecord:
    return FeedbackRecord(uuid.uuid4().hex, p.prediction_id, p.model, p.version, label, severity, stakeholder,
                          "note", "alice", received_at if received_at is not None else time.time())


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a.db")), SqliteFeedbackStore)
    assert isinstance(open_store(f"sqlite://{tmp_path}/b.db"), SqliteFeedbackStore)
    assert isinstance(open_store("postgresql://user@127.0.0.1:1/db"), PostgresFeedbackStore)


def test_predictions_round_trip_and_writes_are_idempotent(open_new: StoreFactory, model: str) -> None:
    store = open_new()
    records = [_prediction(model, 1000.0 + i) for i in range(3)]
    store.record_predictions(records)
    store.record_predictions(records[:1])  # a retry after an ambiguous failure
    got = store.prediction(records[1].prediction_id)
    assert got is not None
    assert (got.model, got.version, got.state, got.output, got.created_at) == (model, "1.0.0", "ENABLED|OK", 0.25,
                                                                               1001.0)
    assert json.loads(got.inputs) == {"a": 1.5, "b": -2}
    assert store.prediction("missing") is None


def test_a_large_batch_round_trips_every_record_exactly(open_new: StoreFactory, model: str) -> None:
    """What a flush after a long store outage writes: more rows than one statement takes, retried with a
    duplicate inside, every float exact (the PostgreSQL store sends the batch as JSON)."""
    store = open_new()
    now = time.time()
    outputs = [0.1 + 0.2, 1e-300, -0.0, 1.7976931348623157e308, 2.0 / 3.0]
    records = [PredictionRecord(uuid.uuid4().hex, model, "1.0.0", "canary", "ENABLED|OK",
                                json.dumps({"a": i / 7, "text": "é\u2028\"q\""}), outputs[i % len(outputs)],
                                now + i / 1e6, "ab" * 32) for i in range(2500)]
    store.record_predictions(records)
    store.record_predictions([records[7], *records[2400:], records[7]])  # a retry after an ambiguous commit
    for r in records[::97] + records[-6:]:
        got = store.prediction(r.prediction_id)
        assert got is not None
        assert got[:5] == r[:5] and got.created_at == r.created_at and got.sha256 == r.sha256
        assert json.loads(got.inputs) == json.loads(r.inputs)
        assert got.output == r.output


def test_feedback_is_joined_in_order_and_durable_across_reopen(open_new: StoreFactory, model: str) -> None:
    store = open_new()
    p = _prediction(model, time.time())
    store.record_predictions([p])
    first = _feedback(p, "critical", "regulator", received_at=2000.0, label='"should have flagged"')
    second = _feedback(p, "minor", "finance", received_at=2001.0, label="0.5")
    store.add_feedback(second)
    store.add_feedback(first)
    store.add_feedback(first)  # idempotent by feedback id
    store.close()

    reopened = open_new()
    joined = reopened.feedback_for(p.prediction_id)
    assert joined.prediction is not None and joined.prediction.prediction_id == p.prediction_id
    assert [(f.severity, f.stakeholder, json.loads(f.label)) for f in joined.feedback] == [
        ("critical", "regulator", "should have flagged"), ("minor", "finance", 0.5)]
    assert joined.feedback[0].comment == "note" and joined.feedback[0].author == "alice"
    empty = reopened.feedback_for("no-such-prediction")
    assert empty.prediction is None and empty.feedback == []


def test_counting_critical_labels_in_a_window(open_new: StoreFactory, model: str) -> None:
    """What the rollback trigger needs: an exact count, never an extrapolation."""
    store = open_new()
    p = _prediction(model, time.time())
    store.record_predictions([p])
    now = time.time()
    for stakeholder, severity, age in [("finance", "critical", 10), ("regulator", "critical", 3000),
                                       ("regulator", "critical", 4000), ("customer", "critical", 10),
                                       ("finance", "minor", 10)]:
        store.add_feedback(_feedback(p, severity, stakeholder, received_at=now - age))
    assert store.count_feedback(model, now - 3600, ["finance", "regulator"], "critical") == 2
    assert store.count_feedback(model, now - 7200, ["finance", "regulator"], "critical") == 3
    assert store.count_feedback(model, now - 7200, [], "critical") == 0


def test_retention_keeps_predictions_with_feedback(open_new: StoreFactory, model: str) -> None:
    store = open_new()
    now = time.time()
    old = [_prediction(model, now - 100_000 - i) for i in range(3)]
    recent = [_prediction(model, now - 10 * i) for i in range(5)]
    store.record_predictions(old + recent)
    store.add_feedback(_feedback(old[0]))
    store.add_feedback(_feedback(recent[4]))

    assert store.purge_predictions(model, older_than=now - 50_000, keep_at_most=1000) == 2
    assert store.prediction(old[0].prediction_id) is not None  # evidence is kept
    assert store.prediction(old[1].prediction_id) is None

    # The row bound drops the oldest predictions without feedback first.
    assert store.purge_predictions(model, older_than=now - 50_000, keep_at_most=4) == 2
    left = {r.prediction_id for r in [*old, *recent] if store.prediction(r.prediction_id) is not None}
    assert left == {old[0].prediction_id, recent[0].prediction_id, recent[1].prediction_id,
                    recent[4].prediction_id}


def test_postgres_store_reconnects_after_a_server_restart(postgres: postgres_env.Postgres, model: str) -> None:
    store = PostgresFeedbackStore(postgres.dsn)
    try:
        p = _prediction(model, time.time())
        store.record_predictions([p])
        postgres.restart()
        store.add_feedback(_feedback(p))  # the old connection is dead: one retry on a fresh one
        assert len(store.feedback_for(p.prediction_id).feedback) == 1
    finally:
        store.close()


def test_sqlite_store_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SqliteFeedbackStore(tmp_path / "f.db")
    try:
        rows = store._query("PRAGMA journal_mode", ())
        assert rows == [("wal",)]
        assert store._query("PRAGMA synchronous", ()) == [(2,)]  # FULL
    finally:
        store.close()
    assert os.path.exists(tmp_path / "f.db")


def test_finding_the_predictions_behind_critical_labels(open_new: StoreFactory, model: str) -> None:
    store = open_new()
    now = time.time()
    ps = [_prediction(model, now - 100 * i) for i in range(4)]
    store.record_predictions(ps)
    store.add_feedback(_feedback(ps[0], "critical", "finance", received_at=now - 50))
    store.add_feedback(_feedback(ps[1], "critical", "regulator", received_at=now - 200))
    store.add_feedback(_feedback(ps[1], "critical", "finance", received_at=now - 100))
    store.add_feedback(_feedback(ps[2], "critical", "customer", received_at=now - 10))
    store.add_feedback(_feedback(ps[3], "critical", "finance", received_at=now - 9000))
    found = store.predictions_with_feedback(model, now - 3600, ["finance", "regulator"], "critical", 10)
    assert found == [ps[1].prediction_id, ps[0].prediction_id], "each once, oldest label first"
    assert store.predictions_with_feedback(model, now - 3600, ["finance", "regulator"], "critical", 1) == [
        ps[1].prediction_id]


# ---------------------------------------------------------------- issue 16: schema versions, retention, export


def _fresh_database(postgres: postgres_env.Postgres) -> str:
    """A database of its own (the session's is shared, and these tests are about an empty or an old schema)."""
    import psycopg

    name = f"mw_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


def test_replicas_starting_at_once_migrate_the_schema_once(postgres: postgres_env.Postgres) -> None:
    import psycopg

    dsn = _fresh_database(postgres)
    stores = [PostgresFeedbackStore(dsn) for _ in range(6)]
    start = threading.Barrier(len(stores))
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def replica(store: PostgresFeedbackStore) -> None:
        start.wait()
        try:
            applied.append(store.migrate())
        except BaseException as e:  # a race would show here as a duplicate table or key
            errors.append(e)

    threads = [threading.Thread(target=replica, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert sorted(applied) == [[] for _ in stores[1:]] + [[m.version for m in MIGRATIONS]], \
            "exactly one replica applied every step"
        assert all(s.schema_version() == SCHEMA_VERSION for s in stores)
        with psycopg.connect(dsn) as conn:
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS]
    finally:
        for s in stores:
            s.close()


OLD_SCHEMA = {  # what servers created before the schema was versioned (issue 16)
    "sqlite": [
        "CREATE TABLE predictions (prediction_id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, "
        "track TEXT NOT NULL, state TEXT NOT NULL, inputs TEXT NOT NULL, output REAL NOT NULL, "
        "created_at REAL NOT NULL)",
        "CREATE TABLE feedback (feedback_id TEXT PRIMARY KEY, prediction_id TEXT NOT NULL, model TEXT NOT NULL, "
        "version TEXT NOT NULL, label TEXT NOT NULL, severity TEXT NOT NULL, stakeholder TEXT NOT NULL, comment TEXT, "
        "author TEXT, received_at REAL NOT NULL)",
        "INSERT INTO predictions VALUES ('p-old', 'm', '0.9.0', 'canary', 'ENABLED|OK', '{\"a\": 1}', 0.5, 1000)",
        "INSERT INTO feedback VALUES ('f-old', 'p-old', 'm', '0.9.0', '\"wrong\"', 'critical', 'finance', NULL, NULL, "
        "1001)",
    ],
    "postgresql": [
        "CREATE TABLE model_predictions (prediction_id text PRIMARY KEY, model text NOT NULL, version text NOT NULL, "
        "track text NOT NULL, state text NOT NULL, inputs jsonb NOT NULL, output double precision NOT NULL, "
        "created_at double precision NOT NULL)",
        "CREATE TABLE model_feedback (feedback_id text PRIMARY KEY, prediction_id text NOT NULL, model text NOT NULL, "
        "version text NOT NULL, label jsonb NOT NULL, severity text NOT NULL, stakeholder text NOT NULL, "
        "comment text, author text, received_at double precision NOT NULL)",
        "INSERT INTO model_predictions VALUES ('p-old', 'm', '0.9.0', 'canary', 'ENABLED|OK', '{\"a\": 1}', 0.5, "
        "1000)",
        "INSERT INTO model_feedback VALUES ('f-old', 'p-old', 'm', '0.9.0', '\"wrong\"', 'critical', 'finance', NULL, "
        "NULL, 1001)",
    ],
}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_same_named_models_in_two_namespaces_never_mix(backend: str, tmp_path: Path, model: str,
                                                           request: pytest.FixtureRequest) -> None:
    """Issue 27 item 9: one database, model ``model`` in team-a and in team-b. Neither sees the other's evidence,
    purges the other's labels or predictions, nor accepts the other's prediction ids."""
    dsn = request.getfixturevalue("postgres").dsn if backend == "postgresql" else str(tmp_path / "shared.sqlite3")
    a, b = open_store(dsn, namespace="team-a"), open_store(dsn, namespace="team-b")
    try:
        now = time.time()
        pa, pb = _prediction(model, now - 10), _prediction(model, now - 10)
        a.record_predictions([pa])
        b.record_predictions([pb])
        a.add_feedback(_feedback(pa))
        assert b.prediction(pa.prediction_id) is None, "team-b cannot label team-a's prediction"
        assert b.feedback_for(pa.prediction_id).prediction is None and b.feedback_for(pa.prediction_id).feedback == []
        assert a.count_feedback(model, 0, ["finance"], "critical") == 1
        assert b.count_feedback(model, 0, ["finance"], "critical") == 0, "no evidence from the other namespace"
        assert b.predictions_with_feedback(model, 0, ["finance"], "critical", 10) == []
        assert b.feedback_page(model, 0, now + 1, None, 10) == []
        # team-b's retention purges everything of its own; team-a keeps its prediction and its label.
        assert b.purge_feedback(model, now + 1) == 0
        assert b.purge_predictions(model, now + 1, 1000) == 1
        assert a.prediction(pa.prediction_id) is not None and b.prediction(pb.prediction_id) is None
        assert a.purge_predictions(model, now + 1, 0) == 0, "a labelled prediction is kept"
        assert [f.prediction_id for f in a.feedback_for(pa.prediction_id).feedback] == [pa.prediction_id]
    finally:
        a.close()
        b.close()


def test_the_operators_evidence_query_is_limited_to_the_models_namespace(postgres: postgres_env.Postgres,
                                                                          model: str) -> None:
    """The operator's read of a rollback's evidence (adapters/feedback_store.py) on the same shared database."""
    import asyncio

    from modelwarden.adapters.feedback_store import PostgresFeedbackEvidence
    from modelwarden.adapters.manifests import ModelObject

    a, b = open_store(postgres.dsn, namespace="team-a"), open_store(postgres.dsn, namespace="team-b")
    try:
        pa, pb = _prediction(model, time.time()), _prediction(model, time.time())
        a.record_predictions([pa])
        b.record_predictions([pb])
        a.add_feedback(_feedback(pa))
        b.add_feedback(_feedback(pb))
        reader = PostgresFeedbackEvidence(postgres.dsn)
        for namespace, own in (("team-a", pa), ("team-b", pb)):
            evidence = asyncio.run(reader.critical_feedback(ModelObject(namespace, model, "u"), 0, ("finance",)))
            assert evidence.error is None
            assert [r["predictionId"] for r in evidence.records] == [own.prediction_id]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_store_from_before_schema_versions_is_migrated_keeping_its_labels(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "postgresql":
        import psycopg

        dsn = _fresh_database(request.getfixturevalue("postgres"))
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in OLD_SCHEMA[backend]:
                conn.execute(statement)
    else:
        dsn = str(tmp_path / "old.sqlite3")
        with sqlite3.connect(dsn) as conn:
            for statement in OLD_SCHEMA[backend]:
                conn.execute(statement)
        conn.close()
    store = open_store(dsn)
    try:
        assert store.migrate() in ([1, 2, 3], [])  # PostgreSQL migrates on its first connection
        assert store.schema_version() == SCHEMA_VERSION
        found = store.feedback_for("p-old")
        assert found.prediction is not None and found.prediction.sha256 == "", "unknown for old records, not made up"
        assert [(f.feedback_id, f.version, f.track) for f in found.feedback] == [("f-old", "0.9.0", "canary")], \
            "the label's track comes from its prediction"
        p = PredictionRecord("p-new", "m", "1.0.0", "stable", "ENABLED|OK", "{}", 0.1, 2000, "ab" * 32)
        store.record_predictions([p])
        stored, new = store.add_feedback(FeedbackRecord(
            "f-new", "p-new", "m", "1.0.0", '"ok"', "info", "finance", None, None, 2001, "stable", "ab" * 32))
        assert new and (stored.track, stored.sha256) == ("stable", "ab" * 32)
    finally:
        store.close()
    reopened = open_store(dsn)
    try:
        assert reopened.migrate() == [] and reopened.schema_version() == SCHEMA_VERSION, "each step applied once"
    finally:
        reopened.close()


def test_labels_are_kept_for_their_retention_then_purged(open_new: StoreFactory, model: str) -> None:
    store = open_new()
    now = time.time()
    old, kept = _prediction(model, now - 400 * 86400), _prediction(model, now - 10 * 86400)
    store.record_predictions([old, kept])
    store.add_feedback(_feedback(old, received_at=now - 366 * 86400))
    store.add_feedback(_feedback(kept, received_at=now - 10 * 86400))
    assert store.purge_feedback(model, older_than=now - 365 * 86400) == 1
    assert store.feedback_for(old.prediction_id).feedback == []
    assert len(store.feedback_for(kept.prediction_id).feedback) == 1
    # Its prediction, no longer evidence, goes with the predictions' own retention.
    assert store.purge_predictions(model, older_than=now - 30 * 86400, keep_at_most=1000) == 1
    assert store.prediction(kept.prediction_id) is not None


def test_export_writes_every_label_with_its_prediction_in_pages(open_new: StoreFactory, model: str,
                                                                 request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    store = open_new()
    now = time.time()
    predictions = [_prediction(model, now - 100 + i * 0.01) for i in range(1203)]
    store.record_predictions(predictions)
    for i, p in enumerate(predictions):
        # Two labels share each received_at, so paging must not lose ties.
        store.add_feedback(_feedback(p, received_at=now - 50 + (i // 2) * 0.01))
    store.add_feedback(_feedback(_prediction(f"{model}-other", now), received_at=now - 1))
    backend = request.node.callspec.params["open_new"]
    dsn = request.getfixturevalue("postgres").dsn if backend == "postgresql" else str(tmp_path / "feedback.sqlite3")
    done = subprocess.run([sys.executable, "-m", "model_server.export", "--model", model, "--dsn", dsn,
                           "--since", str(now - 60)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["predictionId"] for r in lines) == sorted(p.prediction_id for p in predictions)
    assert len({r["feedbackId"] for r in lines}) == 1203
    assert all(r["prediction"]["model"] == model and r["stakeholder"] == "finance" for r in lines)
    assert b"exported 1203 labels" in done.stderr
