"""Window accumulators against the rows they summarise: counts, performance, replays, races, profiles."""

from __future__ import annotations

import io
import random
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from feedback.config import parse_config
from feedback.monitoring import performance
from feedback.monitoring.incremental import exact_stats
from feedback.monitoring.profile import LABEL, PREDICTION, ROWS, SCORE, build_profile
from feedback.monitoring.windows import (
    WindowUpdater,
    count_uncounted,
    install_profile,
    profile_from_first_predictions,
    segment_value,
)
from feedback.store import FeedbackStore
from tests.factories import T0, outcome, prediction

CONFIG_TEXT = """
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
window = "1h"
reference_rows = 100
"""
CONFIG = parse_config(CONFIG_TEXT)
CHURN = CONFIG.models["churn"]


def events(n: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p1 = round(rng.random(), 3)
        out.append(prediction(
            i,
            predicted_at=T0 + timedelta(minutes=7 * i),
            features={"age": rng.randint(18, 80), "income": round(rng.gauss(3000, 800), 2),
                      "plan": rng.choice(["basic", "pro", "max", "new"]), "active": rng.random() < 0.5},
            prediction=int(p1 > 0.5),
            probabilities={"0": round(1 - p1, 3), "1": p1},
            segment={"region": rng.choice(["eu", "us"])},
        ))
    return out


def reference(n: int = 400):
    ev = events(n, seed=99)
    columns: dict[str, list[Any]] = {k: [e.features[k] for e in ev] for k in ("age", "income", "plan", "active")}
    columns[PREDICTION] = [e.prediction for e in ev]
    columns[SCORE] = [e.probabilities["1"] for e in ev]
    columns[LABEL] = [e.prediction for e in ev]
    return build_profile("churn", "v1", columns, {PREDICTION: "categorical", LABEL: "categorical"}, source="test")


@pytest.fixture
def monitored(services, db_schema) -> Iterator[FeedbackStore]:
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as s:
        with s.pool.connection() as conn:
            install_profile(conn, s.windows, reference())
        yield s


def window_tables(store: FeedbackStore) -> tuple[dict, dict]:
    counts = {
        (seg, start, series): tuple(c)
        for seg, start, series, c in store.rows(
            "SELECT segment, window_start, series, counts FROM window_counts WHERE counts <> '{}'"
        )
        if any(c)
    }
    stats = {
        (seg, start): exact_stats(s)
        for seg, start, s in store.rows("SELECT segment, window_start, stats::text FROM window_performance")
        if s != "{}"
    }
    return counts, stats


def test_feature_counts_equal_a_recount_of_the_stored_rows(monitored: FeedbackStore) -> None:
    """Every window's feature counts equal the stored predictions binned afresh with numpy."""
    ev = events(300)
    for i in range(0, 300, 70):
        monitored.write_batch(ev[i : i + 70], [])
    profile = reference()
    counts, _ = window_tables(monitored)
    rows = monitored.rows("SELECT predicted_at, features, segment FROM predictions")
    for name in ("age", "income", "plan", "active"):
        series = profile.series[name]
        expected: dict[tuple[str, Any], np.ndarray] = {}
        for at, features, segment in rows:
            start = at.replace(minute=0, second=0, microsecond=0)
            for seg in ("*", f"region={segment['region']}"):
                c = expected.setdefault((seg, start), np.zeros(series.n_bins, dtype=np.int64))
                value = features[name]
                if series.kind == "numeric":
                    c[int(np.searchsorted(series.edges, value, side="right"))] += 1
                else:
                    cats = list(series.categories)
                    key = {True: "true", False: "false"}.get(value, value)
                    c[cats.index(key) if key in cats else len(cats)] += 1
        got = {(seg, start): c for (seg, start, s), c in counts.items() if s == name}
        assert {k: tuple(v) for k, v in expected.items()} == got
    total = sum(c[0] for (seg, _, s), c in counts.items() if s == ROWS and seg == "*")
    assert total == 300


def test_segment_values_of_any_length_are_stored_and_counted_apart(monitored: FeedbackStore) -> None:
    """Segment values up to the contract's 10,000 characters, multibyte ones included, are stored and counted in
    windows of their own (keyed by segment_value: a btree entry holds 2,704 bytes); values that share their first
    32 characters stay apart, and one at exactly 128 bytes is keyed as itself."""
    rng = random.Random(5)
    alphabet = "abcdé漢😀"
    values = ["x" * 128, "é" * 64, "😀" * 33, *("".join(rng.choice(alphabet) for _ in range(n))
                                            for n in (200, 1_000, 3_000, 10_000)), "s" * 32 + "a" * 200,
              "s" * 32 + "b" * 200]
    ev = [prediction(i, predicted_at=T0 + timedelta(minutes=i), segment={"region": v}) for i, v in enumerate(values)]
    monitored.write_batch(ev, [outcome(i) for i in range(len(ev))])
    assert monitored.scalar("SELECT count(*) FROM predictions") == len(values)
    assert monitored.scalar("SELECT count(*) FROM dead_letters") == 0
    keys = {seg for (seg,) in monitored.rows("SELECT DISTINCT segment FROM window_performance WHERE segment <> '*'")}
    assert keys == {f"region={segment_value(v)}" for v in values} and len(keys) == len(values)
    assert {"region=" + "x" * 128, "region=" + "é" * 64} <= keys
    assert max(len(k.encode()) for k in keys) <= len("region=") + 128 + 3 + 32


def test_performance_matches_sklearn_on_rows_queried_back(monitored: FeedbackStore) -> None:
    """Pooled window aggregates give sklearn's metrics on the joined rows read back from Postgres."""
    ev = events(400)
    rng = random.Random(5)
    labels = [outcome(i, label=int(rng.random() < 0.4), after_s=rng.uniform(-600, 86400 * 30)) for i in range(400)]
    order = [*ev, *labels]
    rng.shuffle(order)
    for i in range(0, len(order), 90):
        part = order[i : i + 90]
        monitored.write_batch([e for e in part if hasattr(e, "features")], [e for e in part if hasattr(e, "label")])
    acc: dict[str, int] = {}
    for (seg, _), s in window_tables(monitored)[1].items():
        if seg == "*":
            performance.add(acc, s)
    got = performance.classification_metrics(acc)
    rows = monitored.rows(
        "SELECT label::int, prediction::int, (probabilities->>'1')::float8 FROM feedback WHERE label IS NOT NULL"
    )
    y, yhat, p = (np.array(c) for c in zip(*rows, strict=True))
    assert len(y) == 400
    assert got["accuracy"].value == pytest.approx(skm.accuracy_score(y, yhat), abs=1e-12)
    assert got["f1"].value == pytest.approx(skm.f1_score(y, yhat), abs=1e-12)
    assert got["precision"].value == pytest.approx(skm.precision_score(y, yhat), abs=1e-12)
    assert got["recall"].value == pytest.approx(skm.recall_score(y, yhat), abs=1e-12)
    assert got["log_loss"].value == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-6)
    assert abs(got["roc_auc"].value - skm.roc_auc_score(y, p)) <= performance.auc_max_error(acc) + 1e-12


def test_a_corrected_label_moves_its_contribution(monitored: FeedbackStore) -> None:
    """A correction moves the prediction from its old label to its new one; a stale one changes nothing."""
    ev = events(50)
    monitored.write_batch(ev, [outcome(i, label=0) for i in range(50)])
    before = window_tables(monitored)
    monitored.write_batch([], [outcome(3, label=1, after_s=7200)])
    monitored.write_batch([], [outcome(3, label=0, after_s=5000)])  # older than the correction: ignored
    counts, stats = window_tables(monitored)
    start = T0 + timedelta(minutes=21)
    key = ("*", start.replace(minute=0))
    label_counts_before = np.array(before[0][("*", key[1], LABEL)])
    label_counts_after = np.array(counts[("*", key[1], LABEL)])
    assert (label_counts_after - label_counts_before).tolist() == [-1, 1, 0, 0]
    assert stats[key]["n"] == before[1][key]["n"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 60))
def test_any_order_duplicates_and_batching_give_identical_windows(monitored: FeedbackStore, seed: int,
                                                                   batch: int) -> None:
    """Shuffled, duplicated, re-batched events with corrections leave the same windows as one clean pass."""
    ev = events(120)
    labels = [outcome(i, label=i % 3 % 2) for i in range(0, 120, 2)]
    corrections = [outcome(i, label=1 - i % 3 % 2, after_s=90_000) for i in range(0, 120, 6)]
    rng = random.Random(seed)
    stream = [*ev, *labels, *corrections, *rng.sample(ev, 30), *rng.sample(labels, 20)]
    rng.shuffle(stream)
    _reset(monitored)
    for i in range(0, len(stream), batch):
        part = stream[i : i + batch]
        monitored.write_batch([e for e in part if hasattr(e, "features")], [e for e in part if hasattr(e, "label")])
    got = window_tables(monitored)
    _reset(monitored)
    monitored.write_batch(ev, labels)
    monitored.write_batch([], corrections)
    assert got == window_tables(monitored)


def _reset(store: FeedbackStore) -> None:
    with store.pool.connection() as conn:
        conn.execute("TRUNCATE predictions, outcomes, current_labels, window_counts, window_performance,"
                     " detector_state, detector_events")


def test_a_label_missed_by_a_concurrent_writer_is_counted_later(services, db_schema, monitored) -> None:
    """A label stored without counting (as when its prediction's writer ran concurrently) is counted by the sweep."""
    ev = events(20)
    monitored.write_batch(ev, [])
    with FeedbackStore(services.database_url, db_schema) as plain:  # writes rows, counts nothing
        plain.write_batch([], [outcome(i, label=1) for i in range(20)])
    assert all(s.get("n", 0) == 0 for s in window_tables(monitored)[1].values())
    with monitored.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        assert count_uncounted(cur, monitored.windows) == 20
    assert sum(s["n"] for (seg, _), s in window_tables(monitored)[1].items() if seg == "*") == 20


def test_first_predictions_profile_counts_what_came_before(services, db_schema) -> None:
    """Without an imported reference, the first N predictions become the profile and are counted then."""
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as s:
        ev = events(150)
        s.write_batch(ev[:60], [outcome(i) for i in range(10)])
        assert s.windows.unprofiled == {("churn", "v1")}
        with s.pool.connection() as conn, conn.cursor() as cur:
            assert profile_from_first_predictions(cur, CHURN, "v1") is None
            s.write_batch(ev[60:120], [])
            profile = profile_from_first_predictions(cur, CHURN, "v1")
        assert profile is not None and profile.source == "first 100 predictions"
        with s.pool.connection() as conn:
            assert install_profile(conn, s.windows, profile) == 120
        s.write_batch(ev[120:], [outcome(i) for i in range(10, 20)])
        counts, stats = window_tables(s)
        assert sum(c[0] for (seg, _, name), c in counts.items() if name == ROWS and seg == "*") == 150
        assert sum(st["n"] for (seg, _), st in stats.items() if seg == "*") == 20


def test_detector_state_survives_a_restart(services, db_schema, monitored) -> None:
    """A new process continues the stored detectors: same detections as one process that never stopped."""
    ev = events(600)
    labels = [outcome(i, label=int(ev[i].prediction) if i < 300 else 1 - int(ev[i].prediction)) for i in range(600)]
    monitored.write_batch(ev, [])
    for i in range(0, 300, 50):
        monitored.write_batch([], labels[i : i + 50])
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as restarted:
        for i in range(300, 600, 50):
            restarted.write_batch([], labels[i : i + 50])
    found = monitored.rows("SELECT detector, label_index FROM detector_events ORDER BY label_index")
    n = monitored.scalar("SELECT n_updates FROM detector_state")
    assert n == 600
    assert found and all(300 < idx <= 600 for _, idx in found), found


def test_regression_windows_match_sklearn_on_rows_queried_back(services, db_schema) -> None:
    """A regression model's windows give sklearn's MAE, RMSE and R^2 on the joined rows read back from Postgres."""
    config = parse_config('[models.price]\ntask = "regression"\nwindow = "1h"\nreference_rows = 100\n')
    rng = random.Random(9)
    ev = [prediction(i, model_name="price", predicted_at=T0 + timedelta(minutes=3 * i),
                     features={"area": rng.uniform(20, 200)}, prediction=round(rng.gauss(300, 80), 2),
                     probabilities=None, segment=None)
          for i in range(300)]
    labels = [outcome(i, label=round(ev[i].prediction + rng.gauss(5, 30), 2)) for i in range(300)]
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as s:
        profile = build_profile("price", "v1", {"area": [rng.uniform(20, 200) for _ in range(500)]}, {},
                                source="test")
        with s.pool.connection() as conn:
            install_profile(conn, s.windows, profile)
        s.write_batch(ev[:150], labels[100:])
        s.write_batch(ev[150:], labels[:100])
        s.write_batch([], [outcome(7, label=1000.0, after_s=9000)])  # a correction
        acc: dict[str, int] = {}
        for (seg, _), st in window_tables(s)[1].items():
            if seg == "*":
                performance.add(acc, st)
        rows = s.rows("SELECT label_value, prediction_value FROM feedback WHERE label IS NOT NULL")
    y, yhat = (np.array(c) for c in zip(*rows, strict=True))
    got = performance.regression_metrics(acc)
    assert len(y) == 300 and acc["n"] == 300
    assert got["mae"].value == pytest.approx(skm.mean_absolute_error(y, yhat), abs=1e-6)
    assert got["rmse"].value == pytest.approx(np.sqrt(skm.mean_squared_error(y, yhat)), abs=1e-6)
    assert got["r2"].value == pytest.approx(skm.r2_score(y, yhat), abs=1e-6)


#: the recount's chunk in these tests (5,000 in production): the backlog is two and a half chunks, a tenth of
#: the rows it took at the real size
CHUNK = 500
BACKLOG = 1_250


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from feedback.monitoring import windows

    monkeypatch.setattr(windows, "REBUILD_CHUNK", CHUNK)


def _backlog(store: FeedbackStore) -> None:
    """``BACKLOG`` predictions (every third labelled) stored before their version has a profile, in two batches."""
    ev = events(BACKLOG, seed=3)
    labels = [outcome(i, label=i % 2) for i in range(0, BACKLOG, 3)]
    half = BACKLOG // 2
    for i in range(0, BACKLOG, half):
        store.write_batch(ev[i : i + half], [o for o in labels if i <= int(o.prediction_id[2:]) < i + half])


def _assert_counted_once(store: FeedbackStore) -> None:
    """Every window's row count and label count equal a recount of the stored rows with SQL."""
    expected_rows = dict(store.rows(
        "SELECT date_trunc('hour', predicted_at), count(*) FROM predictions GROUP BY 1"))
    expected_labels = dict(store.rows(
        "SELECT date_trunc('hour', predicted_at), count(*) FROM feedback WHERE label IS NOT NULL GROUP BY 1"))
    counts, stats = window_tables(store)
    rows = {start: c[0] for (seg, start, name), c in counts.items() if name == ROWS and seg == "*"}
    labelled = {start: s["n"] for (seg, start), s in stats.items() if seg == "*"}
    assert sum(rows.values()) == BACKLOG and rows == expected_rows
    assert labelled == expected_labels


def test_a_first_n_profile_over_a_large_backlog_counts_every_row_once(services, db_schema, small_chunks) -> None:
    """A profile built from the first N predictions over a backlog of many recount chunks counts each row once."""
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as s:
        _backlog(s)
        with s.pool.connection() as conn:
            with conn.cursor() as cur:
                profile = profile_from_first_predictions(cur, CHURN, "v1")
            assert profile is not None
            assert install_profile(conn, s.windows, profile) == BACKLOG
        _assert_counted_once(s)


def test_an_imported_reference_over_a_large_backlog_counts_every_row_once(services, db_schema, tmp_path,
                                                                          monkeypatch, small_chunks) -> None:
    """`pitstop reference import` over a backlog of many recount chunks counts each row once, and again when re-run;
    on a terminal its progress bar follows the recount to the stored total, then clears."""
    import pandas as pd

    from pitstop.monitoring_cli import import_reference
    from pitstop.settings import Settings

    config = tmp_path / "pitstop.toml"
    config.write_text('[models.churn]\ntask = "classification"\npositive_class = 1\nsegments = ["region"]\n'
                      'window = "1h"\nreference_rows = 100\n')
    settings = Settings.from_env({"PITSTOP_CONFIG": str(config), "PITSTOP_DATABASE_URL": services.database_url,
                                  "PITSTOP_DB_SCHEMA": db_schema, "PITSTOP_STATE_DIR": str(tmp_path / "state")})
    ref = events(400, seed=99)
    csv = tmp_path / "train.csv"
    pd.DataFrame([{**e.features, "prediction": e.prediction} for e in ref]).to_csv(csv, index=False)
    class Terminal(io.StringIO):  # stderr on a terminal: the progress bar is drawn
        def isatty(self) -> bool:
            return True

    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(settings.monitoring)) as s:
        _backlog(s)
        stored = s.scalar("SELECT count(*) FROM predictions WHERE model_version = 'v1'")
        for _ in range(2):  # the same command twice
            terminal = Terminal()
            monkeypatch.setattr(sys, "stderr", terminal)
            assert import_reference(settings, "churn", "v1", csv, label_column=None, prediction_column=None,
                                    score_column=None, say=lambda _: None) == 0
            _assert_counted_once(s)
            drawn = [w.replace("\x1b[K", "") for w in terminal.getvalue().split("\r")[1:]]
            recounts = [int(w.split("% ")[1].split("/")[0].replace(",", "")) for w in drawn if "recounted" in w]
            assert recounts == sorted(recounts) and len(recounts) > 2, drawn  # the backlog is many chunks
            assert drawn[-2].endswith(f"100% {stored:,}/{stored:,} predictions recounted"), drawn
            assert drawn[-1] == "", drawn  # cleared: the answer's line starts clean


def test_the_sweep_reaches_a_missed_label_behind_many_uncountable_ones(services, db_schema, monitored) -> None:
    """Labels that can never be counted (their prediction never comes) do not hide a missed pair from the sweep."""
    from feedback.monitoring.round import Monitor

    with monitored.pool.connection() as conn:  # 60,000 outcomes whose predictions never come, sorting first
        conn.execute("INSERT INTO current_labels (prediction_id, label, observed_at) "
                     "SELECT 'a-' || lpad(i::text, 6, '0'), '1', %s FROM generate_series(1, 60000) AS i", (T0,))
    monitored.write_batch(events(20), [])
    with FeedbackStore(services.database_url, db_schema) as plain:  # writes rows, counts nothing
        plain.write_batch([], [outcome(i, label=1) for i in range(20)])
    Monitor(monitored, monitored.windows).run_once()
    assert sum(s["n"] for (seg, _), s in window_tables(monitored)[1].items() if seg == "*") == 20


def _errors(delta_errors: int, start: int) -> Any:
    from feedback.monitoring.windows import WindowDelta

    delta = WindowDelta()
    delta.errors[("churn", "v1")] = [(float(i % 2), f"p-{i}", T0, T0) for i in range(start, start + delta_errors)]
    return delta


def test_two_workers_creating_the_first_detector_state_both_count(services, db_schema, monitored) -> None:
    """The first detector state of a version, written by two transactions at once, holds both of their errors."""
    import threading

    second = WindowUpdater(CONFIG)  # another worker: its own caches
    with FeedbackStore(services.database_url, db_schema, windows=second) as other:
        with monitored.pool.connection() as conn:
            with conn.transaction(), conn.cursor() as cur:
                monitored.windows.write(cur, _errors(50, 0))

                def concurrent() -> None:
                    with other.pool.connection() as c2, c2.transaction(), c2.cursor() as cur2:
                        second.write(cur2, _errors(30, 50))

                thread = threading.Thread(target=concurrent)
                thread.start()
                thread.join(timeout=1.0)  # it waits for this transaction, or (the defect) goes ahead alone
            thread.join(timeout=30)
    assert monitored.scalar("SELECT n_updates FROM detector_state") == 80


def test_a_changed_detector_config_reaches_existing_state(services, db_schema, monitored) -> None:
    """State written under one detector config continues under a changed pitstop.toml, with the new parameters."""
    from feedback.monitoring.detectors import ErrorStreamDetectors

    ev = events(300)
    monitored.write_batch(ev, [outcome(i, label=i % 2) for i in range(200)])
    changed = parse_config(CONFIG_TEXT + "[models.churn.detectors]\nadwin_delta = 0.1\npage_hinkley_threshold = 12\n")
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(changed)) as s:
        s.write_batch([], [outcome(i, label=i % 2) for i in range(200, 300)])
        (state,) = s.rows("SELECT n_updates, state FROM detector_state")
    detectors = ErrorStreamDetectors.loads(state[1], changed.models["churn"].detectors)
    assert state[0] == 300 and detectors.n == 300
    assert detectors.adwin.delta == 0.1 and detectors.page_hinkley.threshold == 12


def test_unreadable_detector_state_is_rebuilt_from_the_store(services, db_schema, monitored) -> None:
    """Detector state that cannot be unpickled (a river upgrade) is rebuilt from the stored labels, not fatal."""
    ev = events(300)
    monitored.write_batch(ev, [outcome(i, label=i % 2) for i in range(200)])
    with monitored.pool.connection() as conn:
        conn.execute("UPDATE detector_state SET state = 'not a pickle'")
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as s:
        s.write_batch([], [outcome(i, label=i % 2) for i in range(200, 300)])
        assert s.scalar("SELECT n_updates FROM detector_state") == 300
