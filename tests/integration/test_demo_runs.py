"""Two `pitstop demo` runs on one store: the second run's monitoring windows hold its own rows only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from feedback.monitoring.config import load_config
from feedback.monitoring.profile import ROWS
from feedback.monitoring.round import Monitor, exact_stats
from feedback.monitoring.windows import WindowUpdater, window_start
from feedback.store import FeedbackStore
from pitstop.demo import world
from pitstop.demo.scenario import demo_config_path
from schemas import OutcomeEvent, PredictionEvent

CONFIG = load_config(demo_config_path())
CHURN = CONFIG.models[world.MODEL_NAME]
#: the second run starts ten minutes after the first: the same hour, so the same event clock
FIRST_START = datetime(2026, 11, 30, 10, 26, 3, tzinfo=UTC)
SECOND_START = FIRST_START + timedelta(minutes=10)
#: as the demo publishes at its defaults (200 per wall second at 3600x): 1,200 per 6-hour window
PREDICTIONS_PER_HOUR = 200
HOURS = 18

_ROW_WINDOWS = """
SELECT window_start, counts[1] FROM window_counts
WHERE model_name = %s AND model_version = %s AND window_s = %s AND segment = '*' AND series = %s
"""
_PERFORMANCE_WINDOWS = """
SELECT window_start, stats::text FROM window_performance
WHERE model_name = %s AND model_version = %s AND window_s = %s AND segment = '*'
"""
_RAW_PREDICTIONS = "SELECT predicted_at FROM predictions WHERE prediction_id LIKE %s"
_RAW_LABELLED = """
SELECT p.predicted_at, p.prediction = l.label
FROM predictions p JOIN current_labels l USING (prediction_id)
WHERE p.prediction_id LIKE %s
"""


@pytest.fixture
def monitored(services, db_schema) -> Iterator[tuple[FeedbackStore, Monitor]]:
    """The store as the demo's workers use it: window accumulators on every write, and monitor rounds."""
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as store:
        assert store.windows is not None
        yield store, Monitor(store, store.windows)


def _play(store: FeedbackStore, monitor: Monitor, feed: world.DemoFeed) -> None:
    """Write what the run's feed publishes, an event hour at a time with a monitor round after each, then a
    day at a time until its last outcome is out."""
    hour = 0
    while hour < HOURS or feed.pending:
        hour += 1 if hour < HOURS else 24
        step = feed.advance(feed.clock_start + timedelta(hours=hour), PREDICTIONS_PER_HOUR if hour <= HOURS else 0)
        events = [d.event for d in step.deliveries]
        store.write_batch([e for e in events if isinstance(e, PredictionEvent)],
                          [e for e in events if isinstance(e, OutcomeEvent)])
        monitor.run_once()


def _windows(store: FeedbackStore, version: str) -> tuple[dict[datetime, int], dict[datetime, tuple[int, int]]]:
    """The version's windows of all traffic: rows counted, and (labelled, correct) predictions."""
    key = (world.MODEL_NAME, version, CHURN.window_s)
    rows = {start: n for start, n in store.rows(_ROW_WINDOWS, (*key, ROWS)) if n}
    labelled = {}
    for start, text in store.rows(_PERFORMANCE_WINDOWS, key):
        stats = exact_stats(text)
        if stats.get("n"):
            labelled[start] = (stats["n"], stats.get("correct", 0))
    return rows, labelled


def _raw(store: FeedbackStore, id_prefix: str) -> tuple[dict[datetime, int], dict[datetime, tuple[int, int]]]:
    """The same, counted afresh from the run's own rows of the predictions table."""
    rows = Counter(window_start(at, CHURN.window_s) for (at,) in store.rows(_RAW_PREDICTIONS, (f"{id_prefix}%",)))
    n, correct = Counter(), Counter()
    for at, right in store.rows(_RAW_LABELLED, (f"{id_prefix}%",)):
        start = window_start(at, CHURN.window_s)
        n[start] += 1
        correct[start] += int(right)
    return dict(rows), {start: (n[start], correct[start]) for start in n}


def test_a_second_run_has_windows_and_profile_of_its_own(monitored: tuple[FeedbackStore, Monitor]) -> None:
    """Two runs started within the same hour (the same event times) write to one store; each run's version
    windows count exactly that run's predictions and labels, the first run's windows are untouched by the
    second, and each version has a reference profile from its own first predictions."""
    store, monitor = monitored
    first, second = world.feed_for_run(FIRST_START), world.feed_for_run(SECOND_START)
    assert first.clock_start == second.clock_start

    _play(store, monitor, first)
    first_windows = _windows(store, first.model_version)
    assert first_windows == _raw(store, first.id_prefix)
    _play(store, monitor, second)

    second_rows, second_labelled = _windows(store, second.model_version)
    raw_rows, raw_labelled = _raw(store, second.id_prefix)
    assert sum(raw_rows.values()) == HOURS * PREDICTIONS_PER_HOUR
    assert second_rows == raw_rows
    assert second_labelled == raw_labelled
    assert _windows(store, first.model_version) == first_windows

    profiles = dict(store.rows("SELECT model_version, source FROM reference_profiles WHERE model_name = %s",
                               (world.MODEL_NAME,)))
    assert profiles == dict.fromkeys((first.model_version, second.model_version),
                                     f"first {CHURN.reference_rows} predictions")
    judged = store.rows("SELECT DISTINCT model_version FROM monitor_results WHERE model_name = %s "
                        "AND kind = 'drift' AND status <> 'unjudged'", (world.MODEL_NAME,))
    assert {v for (v,) in judged} == {first.model_version, second.model_version}
