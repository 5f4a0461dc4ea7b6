"""The weekly partitions of predictions and outcomes (migration 022) and the prune that drops them past the
retention, against the stored rows."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from feedback.store import FeedbackStore, drop_store, migrate
from feedback.store.database import _migration_files
from feedback.store.retention import DETACHING, prune
from tests.conftest import Services
from tests.factories import outcome, prediction

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)  # a week's first instant


def _connect(services: Services, schema: str) -> psycopg.Connection[Any]:
    return psycopg.connect(services.database_url, autocommit=True, options=f"-c search_path={schema}")


def _partitions(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
        " WHERE h.inhparent = %s::regclass ORDER BY 1", (table,)).fetchall()]


def test_an_existing_store_migrates_in_place_rows_views_triggers_and_grants_kept(services: Services,
                                                                                 unique_name: str) -> None:
    files = _migration_files()
    before = [(name, text) for name, text in files if name < "022"]
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(f"CREATE SCHEMA {unique_name}")  # type: ignore[arg-type]  # a test's own name
            conn.execute(f"SET LOCAL search_path TO {unique_name}")  # type: ignore[arg-type]
            conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL"
                         " DEFAULT now())")
            for name, text in before:
                conn.execute(text)  # type: ignore[arg-type]
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
    try:
        with _connect(services, unique_name) as conn:  # the store as 021 left it, written as 021's writer did
            for i in range(30):
                conn.execute("INSERT INTO predictions (prediction_id, model_name, model_version, predicted_at,"
                             " features, prediction) VALUES (%s, 'churn', 'v1', %s, '{}', '1')",
                             (f"p-{i}", MONDAY + timedelta(days=i)))
                if i % 3 == 0:
                    conn.execute("INSERT INTO outcomes (prediction_id, observed_at, label) VALUES (%s, %s, '1')",
                                 (f"p-{i}", MONDAY + timedelta(days=i, hours=5)))
                    conn.execute("INSERT INTO current_labels (prediction_id, label, observed_at) VALUES (%s, '1', %s)",
                                 (f"p-{i}", MONDAY + timedelta(days=i, hours=5)))
            assert "022_partitions.sql" not in {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        assert migrate(services.database_url, unique_name) == [name for name, _ in files if name >= "022"]
        with _connect(services, unique_name) as conn:
            assert {r[0] for r in conn.execute("SELECT c.relname FROM pg_partitioned_table t JOIN pg_class c"
                                               " ON c.oid = t.partrelid WHERE c.relnamespace ="
                                               " current_schema()::regnamespace")} == {"predictions", "outcomes"}
            assert len(_partitions(conn, "predictions")) == 5  # 30 days from a Monday: five weeks
            assert conn.execute("SELECT count(*), count(label) FROM feedback").fetchone() == (30, 10)
            assert conn.execute("SELECT count(*) FROM prediction_index").fetchone() == (30,)
            assert conn.execute("SELECT count(*) FROM outcomes").fetchone() == (10,)
            triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger"
                                                   " WHERE tgrelid = 'predictions'::regclass AND NOT tgisinternal")}
            assert {"ramp_predictions", "prediction_index_deleted", "prediction_index_truncated"} <= triggers
            assert conn.execute("SELECT obj_description('feedback'::regclass, 'pg_class')").fetchone()[0]  # type: ignore[index]
            analyst = f"{unique_name}_analyst"
            assert conn.execute("SELECT has_table_privilege(%s, 'feedback', 'SELECT'),"
                                " has_table_privilege(%s, 'predictions', 'SELECT')", (analyst, analyst)).fetchone() == (
                True, False)
            indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'predictions'")}
            assert {"predictions_pkey", "predictions_model_time"} <= indexes
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            drop_store(conn, unique_name)


def test_partitions_are_made_for_any_time_and_an_id_stays_unique_across_them(store: FeedbackStore) -> None:
    old = prediction(1, predicted_at=datetime(2019, 1, 9, 8, tzinfo=UTC))
    restamped = prediction(1, predicted_at=datetime(2026, 3, 4, tzinfo=UTC), model_version="v9")  # same id, weeks on
    stats = store.write_batch([old, restamped, prediction(2)],
                              [outcome(1, observed_at=datetime(2018, 5, 1, tzinfo=UTC))])
    assert stats.predictions == 2
    store.write_batch([restamped], [outcome(2, label=0)])  # a later batch: still the first arrival's row
    rows = store.rows("SELECT prediction_id, model_version, predicted_at FROM predictions ORDER BY 1")
    assert rows == [("p-1", "v1", old.predicted_at), ("p-2", "v1", prediction(2).predicted_at)]
    made = {r[0] for r in store.rows("SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid")}
    assert {"predictions_20190107", "outcomes_20180430", "predictions_20260223"} <= made
    # this week's and the next two weeks' partitions were made ahead
    this_week = datetime.now(UTC).date() - timedelta(days=datetime.now(UTC).weekday())
    assert {f"predictions_{this_week + timedelta(weeks=k):%Y%m%d}" for k in range(3)} <= made
    assert store.rows("SELECT prediction_id, label FROM feedback WHERE label IS NOT NULL ORDER BY 1") == [
        ("p-1", 1), ("p-2", 0)]
    # a hand-made delete frees the id: the same prediction may be stored again
    store.rows("DELETE FROM predictions WHERE prediction_id = 'p-2' RETURNING 1")
    assert store.scalar("SELECT count(*) FROM prediction_index WHERE prediction_id = 'p-2'") == 0
    assert store.write_batch([prediction(2)], []).predictions == 1


def _week_of_rows(store: FeedbackStore, week: datetime, ids: range, *, labelled: bool = True) -> None:
    preds = [prediction(i, predicted_at=week + timedelta(hours=i % 100)) for i in ids]
    outs = [outcome(i, observed_at=week + timedelta(hours=i % 100, minutes=30)) for i in ids] if labelled else []
    store.write_batch(preds, outs)


def test_prune_drops_the_weeks_past_retention_keeps_what_versions_point_to_and_clears_their_ids(
        services: Services, store: FeedbackStore, monkeypatch: Any) -> None:
    from feedback.store import retention

    monkeypatch.setattr(retention, "CHUNK", 100)  # a dropped week's 300 ids: three chunks, the last one full
    weeks = [MONDAY + timedelta(weeks=k) for k in range(6)]
    for k, week in enumerate(weeks):
        _week_of_rows(store, week, range(k * 1000, k * 1000 + 300))
    with _connect(services, store.schema) as conn:
        # week 1 is pinned by a champion's training window, week 2 by a held-out set of another model
        conn.execute("INSERT INTO model_versions (model_name, version, stage, lineage) VALUES ('churn', 'v1',"
                     " 'champion', %s), ('churn', 'v0', 'archived', %s)",
                     (Jsonb({"train_window": [(weeks[1] + timedelta(days=1)).isoformat(),
                                              (weeks[1] + timedelta(days=2)).isoformat()]}),
                      Jsonb({"train_window": [weeks[0].isoformat(), weeks[0].isoformat()]})))
        conn.execute("INSERT INTO holdout_sets (model_name, created_at, window_start, window_end, prediction_ids)"
                     " VALUES ('fraud', %s, %s, %s, '{}')", (weeks[3], weeks[2] + timedelta(hours=3),
                                                            weeks[2] + timedelta(hours=4)))
        # per-id rows of a dropped week (ids 0-1) and of a kept one (id 4000): a shadow's scores, a ramp's rows
        conn.execute("INSERT INTO shadow_predictions (model_name, version, prediction_id, prediction) VALUES"
                     " ('churn', 'v0', 'p-0', '1'), ('churn', 'v1', 'p-1', '0'), ('churn', 'v1', 'p-4000', '1')")
        conn.execute("INSERT INTO ramp_rows (prediction_id) VALUES ('p-0'), ('p-4000')")
        conn.execute("INSERT INTO current_labels (prediction_id, label, observed_at) VALUES ('never-came', '1', %s),"
                     " ('never-came-recent', '1', %s)", (weeks[0], weeks[5]))
        conn.execute("INSERT INTO dead_letters (source_topic, source_partition, source_offset, element_index, raw,"
                     " reason, received_at) VALUES ('t', 0, 1, -1, 'x', 'schema: old', %s),"
                     " ('t', 0, 2, -1, 'y', 'schema: new', %s)", (weeks[0], weeks[5]))
    now = weeks[5] + timedelta(days=3)
    retention = timedelta(days=8)  # weeks 0-3 end before the cutoff (week 4's Wednesday)

    planned = prune(services.database_url, store.schema, now=now, retention=retention, dry_run=True)
    drops = sorted(s.partition.name for s in planned.steps if s.drop)
    assert drops == [f"outcomes_{w:%Y%m%d}" for w in weeks[:4]] + [f"predictions_{w:%Y%m%d}" for w in (weeks[0],
                                                                                                       weeks[3])]
    kept = {s.partition.name: s.reason for s in planned.steps if not s.drop}
    assert "churn v1's train window (champion)" in kept[f"predictions_{weeks[1]:%Y%m%d}"]
    assert "fraud's held-out set" in kept[f"predictions_{weeks[2]:%Y%m%d}"]
    assert store.scalar("SELECT count(*) FROM predictions") == 1800  # a dry run changes nothing

    result = prune(services.database_url, store.schema, now=now, retention=retention)
    assert sorted(result.dropped) == drops
    assert result.ids_cleared == 600 and result.unmatched_labels == 1 and result.dead_letters == 1
    # independent: the rows left, by raw SQL over what is stored
    by_week = dict(store.rows("SELECT date_trunc('week', predicted_at AT TIME ZONE 'UTC'), count(*) FROM predictions"
                              " GROUP BY 1"))
    assert sorted(by_week.values()) == [300] * 4 and len(by_week) == 4
    assert store.scalar("SELECT count(*) FROM prediction_index") == 1200
    assert store.scalar("SELECT count(*) FROM prediction_index i WHERE NOT EXISTS (SELECT 1 FROM predictions p"
                        " WHERE p.prediction_id = i.prediction_id)") == 0
    assert store.scalar("SELECT count(*) FROM current_labels") == 1200 + 1  # kept predictions' and the recent orphan
    assert store.scalar("SELECT count(*) FROM outcomes") == 600  # observed in weeks 4 and 5
    assert store.scalar("SELECT count(*) FROM dead_letters") == 1
    assert store.rows("SELECT prediction_id FROM shadow_predictions") == [("p-4000",)]
    assert store.rows("SELECT prediction_id FROM ramp_rows") == [("p-4000",)]
    # the same command again: nothing more to drop
    again = prune(services.database_url, store.schema, now=now, retention=retention)
    assert again.dropped == [] and again.ids_cleared == 0


def test_a_prune_stopped_after_the_detach_is_finished_by_the_next(services: Services, store: FeedbackStore) -> None:
    weeks = [MONDAY, MONDAY + timedelta(weeks=5)]
    _week_of_rows(store, weeks[0], range(200))
    _week_of_rows(store, weeks[1], range(1000, 1200))
    _week_of_rows(store, weeks[0] + timedelta(days=1), range(500, 510))  # week 0 again: 210 rows
    with _connect(services, store.schema) as conn:  # a prune killed between its detach and its drop ...
        conn.execute(f"COMMENT ON TABLE predictions_{weeks[0]:%Y%m%d} IS '{DETACHING}'")  # type: ignore[arg-type]
        conn.execute(f"ALTER TABLE predictions DETACH PARTITION predictions_{weeks[0]:%Y%m%d}")  # type: ignore[arg-type]
        # ... and a week someone detached to archive it
        conn.execute(f"ALTER TABLE outcomes DETACH PARTITION outcomes_{weeks[0]:%Y%m%d}")  # type: ignore[arg-type]
    assert store.scalar("SELECT count(*) FROM predictions") == 200
    result = prune(services.database_url, store.schema, now=weeks[1], retention=timedelta(days=1))
    assert result.dropped == [f"predictions_{weeks[0]:%Y%m%d}"] and result.ids_cleared == 210
    assert store.scalar("SELECT count(*) FROM prediction_index") == 200
    assert store.scalar("SELECT to_regclass(%s)", (f"predictions_{weeks[0]:%Y%m%d}",)) is None
    left = {s.partition.name: s.reason for s in result.steps if not s.drop}
    assert "left alone" in left[f"outcomes_{weeks[0]:%Y%m%d}"]
    assert store.scalar(f"SELECT count(*) FROM outcomes_{weeks[0]:%Y%m%d}") == 210  # type: ignore[arg-type]


def test_the_ingest_goes_on_while_a_prune_waits_for_a_long_reader(services: Services, store: FeedbackStore) -> None:
    """DETACH ... CONCURRENTLY waits for the transactions that may read the partition, and blocks no writer meanwhile
    (a plain DETACH or DROP would queue every insert behind its lock)."""
    old, now = MONDAY, MONDAY + timedelta(weeks=10)
    _week_of_rows(store, old, range(100))
    store.write_batch([prediction(4999, predicted_at=now)], [])  # this week's partition, made ahead as writers do
    reader = _connect(services, store.schema)
    reader.autocommit = False
    reader.execute("SELECT count(*) FROM predictions")  # an analyst's transaction left open
    done: list[Any] = []
    pruning = threading.Thread(target=lambda: done.append(
        prune(services.database_url, store.schema, now=now, retention=timedelta(weeks=1))))
    pruning.start()
    try:
        time.sleep(1.0)
        assert pruning.is_alive(), "the detach should wait for the open reader"
        started = time.monotonic()
        store.write_batch([prediction(5000, predicted_at=now)], [outcome(5000, observed_at=now)])
        assert time.monotonic() - started < 2.0  # not queued behind the prune
    finally:
        reader.rollback()
        reader.close()
        pruning.join(timeout=30)
    assert not pruning.is_alive() and done and f"predictions_{old:%Y%m%d}" in done[0].dropped
    assert store.scalar("SELECT count(*) FROM predictions") == 2


def test_db_prune_command_says_what_it_would_drop_and_does_it(services: Services, store: FeedbackStore,
                                                             pitstop_main: Any) -> None:
    """On event time: a store of 2020's rows alone keeps them; once it holds rows of 2026, 2020 is past 400 days."""
    env = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": store.schema}
    _week_of_rows(store, datetime(2020, 1, 6, tzinfo=UTC), range(50))
    alone = json.loads(pitstop_main(env, "db", "prune", "--json").stdout)
    assert alone["dropped"] == [] and alone["watermark"] == "2020-01-06T00:00:00Z"
    _week_of_rows(store, MONDAY, range(1000, 1010))
    dry = pitstop_main(env, "db", "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would drop predictions_20200106 (" in dry.stdout and "past the retention (400 days)" in dry.stdout
    assert store.scalar("SELECT count(*) FROM predictions") == 60
    done = pitstop_main(env, "db", "prune", "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == 0 and doc["dropped"] == ["outcomes_20200106", "predictions_20200106"]
    assert doc["ids_cleared"] == 50 and doc["retention_days"] == 400
    assert store.scalar("SELECT count(*) FROM predictions") == 10
    again = json.loads(pitstop_main(env, "db", "prune", "--json").stdout)
    assert again["dropped"] == [] and again["sentence"].startswith("dropped 0 of")


def test_the_monitor_workers_daily_prune_drops_what_the_command_would(services: Services, store: FeedbackStore,
                                                                      monkeypatch: Any) -> None:
    from pitstop import monitor_service
    from pitstop.settings import Settings

    _week_of_rows(store, datetime(2020, 1, 6, tzinfo=UTC), range(20))
    _week_of_rows(store, MONDAY, range(1000, 1010))
    monkeypatch.setattr(monitor_service, "PRUNE_FIRST_S", 0.0)
    settings = Settings.from_env({"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": store.schema})
    stop = threading.Event()
    worker = threading.Thread(target=monitor_service.prune_daily, args=(settings, stop.is_set))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while store.scalar("SELECT to_regclass('predictions_20200106')") is not None:
            assert time.monotonic() < deadline, "the daily prune did not drop 2020's week"
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert store.scalar("SELECT count(*) FROM predictions") == 10
    assert store.scalar("SELECT count(*) FROM prediction_index") == 10
