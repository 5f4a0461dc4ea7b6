"""Monitor results as analysts read them: one current verdict per window, no rows for windows before the data."""

from __future__ import annotations

from datetime import timedelta

from feedback.config import parse_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.store import FeedbackStore
from tests.factories import T0, outcome, prediction

CONFIG = parse_config("""
[models.churn]
task = "classification"
positive_class = 1
window = "1h"
span = 6
min_rows = 50
min_labels = 40
min_label_coverage = 0.5
reference_rows = 100
[models.churn.performance]
baseline_windows = 1
""")


def _hour(store: FeedbackStore, hour: int, n: int, first_id: int, *, labelled: bool = True) -> None:
    ids = range(first_id, first_id + n)
    preds = [prediction(i, predicted_at=T0 + timedelta(hours=hour, seconds=30 * (i - first_id)),
                        features={"age": 20 + i % 50}, prediction=i % 2,
                        probabilities={"0": 0.4, "1": 0.6} if i % 2 else {"0": 0.6, "1": 0.4}) for i in ids]
    store.write_batch(preds, [outcome(i, label=(i // 3) % 2) for i in ids] if labelled else [])


def test_performance_by_window_shows_each_windows_latest_verdict_only(services, db_schema) -> None:
    """A window that falls back to unjudged shows only that verdict, and no window before the data has rows."""
    updater = WindowUpdater(CONFIG)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        for hour in range(3):
            _hour(store, hour, 100, 1000 * hour)
        monitor = Monitor(store, updater)
        monitor.run_once()
        judged = store.rows("SELECT DISTINCT metric FROM performance_by_window WHERE window_start = %s", (T0,))
        assert len(judged) > 1  # the first window was judged: every metric has a row
        _hour(store, 0, 300, 50_000, labelled=False)  # late predictions: its label coverage falls to 25%
        monitor.run_once()
        rows = store.rows("SELECT window_start, metric, status FROM performance_by_window ORDER BY 1, 2")
        first_window = [(metric, status) for start, metric, status in rows if start == T0]
        assert first_window == [("accuracy", "unjudged")], first_window
        assert min(start for start, _, _ in rows) == T0, rows
        drift_before = store.scalar("SELECT count(*) FROM monitor_results WHERE window_start < %s", (T0,))
        assert drift_before == 0


def test_a_version_whose_first_windows_fall_short_of_its_tested_level_is_judged_against_that_level(
        services, db_schema) -> None:
    """A version the retrain worker tested at accuracy 0.90 [0.88, 0.92] that serves 67% from its first window
    (the concept it was tested on is gone) shows degraded windows: its first windows are not its baseline. The
    same windows of a version registered without a tested level keep their first window as the baseline."""
    from feedback.registry.versions import ModelVersion, Registry

    updater = WindowUpdater(CONFIG)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            Registry().register(cur, ModelVersion(
                model_name="churn", version="v1", stage="champion",
                lineage={"expected": {"metric": "accuracy", "value": 0.90, "ci_low": 0.88, "ci_high": 0.92,
                                      "n": 3000}}), None, reason="trained")
        for hour in range(3):
            _hour(store, hour, 100, 1000 * hour)
        monitor = Monitor(store, updater)
        monitor.run_once()
        rows = store.rows("SELECT window_start, status, value, threshold FROM performance_by_window "
                          "WHERE metric = 'accuracy' ORDER BY 1")
        assert [status for _, status, _, _ in rows] == ["degraded"] * 3, rows
        assert all(value < 0.7 and abs(threshold - 0.88 * 0.95) < 1e-12 for _, _, value, threshold in rows), rows

        with store.pool.connection() as conn:  # the same windows without a tested level: the first is the level
            conn.execute("UPDATE model_versions SET lineage = '{}'::jsonb WHERE version = 'v1'")
        monitor.run_once()
        statuses = store.rows("SELECT status FROM performance_by_window WHERE metric = 'accuracy' ORDER BY "
                              "window_start")
        assert [s for (s,) in statuses] == ["baseline", "ok", "ok"], statuses
