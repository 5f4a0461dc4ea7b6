"""The demo's runs in process, on the real store: two runs on one store keep their windows apart, and a run
through the real monitor, trigger engine and retrain pipeline closes the loop (a gated champion, accuracy back)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest

from feedback.monitoring.config import load_config
from feedback.monitoring.profile import ROWS
from feedback.monitoring.round import Monitor, exact_stats
from feedback.monitoring.windows import WindowUpdater, window_start
from feedback.registry.versions import Registry
from feedback.store import FeedbackStore
from feedback.triggers.engine import TRIGGER_TOPIC, TriggerEngine
from pitstop.demo import world
from pitstop.demo.scenario import ChampionWatch, demo_config_path
from retrain_worker.intake import TriggerEvent, decode_trigger
from retrain_worker.pipeline import Outcome, RetrainPipeline
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


# --- the loop closes: the demo's world, its configuration and the real pipeline, in process ------------------

#: the whole path at the demo's rate (200 predictions an event hour): drift from hour 24 (complete at 30), the
#: drift retrain at about hour 47, then a day of the champion's predictions; rounds every 3 event hours as the
#: demo's workers run them (every 3 wall seconds, an event hour a second)
LOOP_HOURS = 80
ROUND_EVERY_H = 3
RECOVERY = 0.04


class _NoAlerts:
    def send(self, alert: object) -> None:
        pass

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def _triggers(store: FeedbackStore) -> list[TriggerEvent]:
    """The trigger events the engine queued, as the retrain worker receives them; marked sent."""
    with store.pool.connection() as conn, conn.transaction():
        rows = conn.execute("SELECT payload FROM outbox WHERE sent_at IS NULL AND topic = %s ORDER BY id",
                            (TRIGGER_TOPIC,)).fetchall()
        conn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
    return [decode_trigger(orjson.dumps(payload)) for (payload,) in rows]


def play_loop(store: FeedbackStore, feed: world.DemoFeed, *, hours: int = LOOP_HOURS) -> list[Outcome]:
    """What the demo's stack does with what ``feed`` publishes, an event hour at a time and without Kafka: the
    ingest's batch write (windows counted with it), a monitor round with the trigger engine every few hours, the
    retrain worker's pipeline for each trigger it queued, and the demo's model server taking up a new champion
    from the registry (:class:`ChampionWatch`); then the outcomes still due, a day at a time."""
    assert store.windows is not None
    monitor = Monitor(store, store.windows)
    engine = TriggerEngine(CONFIG, _NoAlerts())
    pipeline = RetrainPipeline(store, CONFIG)
    watch = ChampionWatch(store, feed, every_s=1.0, say=lambda line: None)
    outcomes = []
    hour = 0
    while hour < hours or feed.pending:
        hour += 1 if hour < hours else 24
        if hour <= hours:
            watch.poll(float(hour))
        step = feed.advance(feed.clock_start + timedelta(hours=hour), PREDICTIONS_PER_HOUR if hour <= hours else 0)
        events = [d.event for d in step.deliveries]
        store.write_batch([e for e in events if isinstance(e, PredictionEvent)],
                          [e for e in events if isinstance(e, OutcomeEvent)])
        if hour % ROUND_EVERY_H == 0 or hour > hours:
            monitor.run_once(after=lambda conn, evaluations: engine.run(conn, evaluations))
            if hour <= hours:
                outcomes += [pipeline.handle(trigger) for trigger in _triggers(store)]
    return outcomes


def _per_window(store: FeedbackStore, version: str) -> dict[datetime, tuple[int, int]]:
    """(labelled, correct) predictions of ``version`` per window, as the monitor's accumulators hold them."""
    return _windows(store, version)[1]


def _raw_by_version(store: FeedbackStore, version: str) -> dict[datetime, tuple[int, int]]:
    """The same, counted afresh from the raw tables."""
    n, correct = Counter(), Counter()
    for at, right in store.rows("SELECT p.predicted_at, p.prediction = l.label FROM predictions p "
                                "JOIN current_labels l USING (prediction_id) WHERE p.model_version = %s", (version,)):
        start = window_start(at, CHURN.window_s)
        n[start] += 1
        correct[start] += int(right)
    return {start: (n[start], correct[start]) for start in n}


def _accuracy(windows: dict[datetime, tuple[int, int]],
              keep: Callable[[datetime], bool] = lambda start: True) -> tuple[float, int]:
    """Accuracy and labelled predictions over the windows ``keep`` keeps."""
    kept = [nc for start, nc in windows.items() if keep(start)]
    n = sum(k for k, _ in kept)
    return sum(c for _, c in kept) / max(n, 1), n


def test_the_drift_retrain_becomes_champion_and_accuracy_recovers(monitored: tuple[FeedbackStore, Monitor]) -> None:
    """The demo's world and configuration through the real monitor, trigger engine and retrain pipeline: the drift
    trigger's candidate passes every offline gate and becomes champion (promotion after-gates), the feed serves
    with it from the registry (its version and its probabilities on every later prediction), the monitor counts
    and judges the new version (counts checked against the raw tables), and its accuracy is back above the drifted
    model's, near the level before the drift."""
    store, _ = monitored
    feed = world.feed_for_run(FIRST_START)
    first = feed.model_version
    drift_starts = feed.clock_start + timedelta(seconds=world.DRIFT_STARTS_AFTER_S)
    drift_full = drift_starts + timedelta(seconds=world.DRIFT_RAMP_S)
    outcomes = play_loop(store, feed)

    # the trigger -> a candidate that passed every gate -> champion
    drift = [o for o in outcomes if o.trigger_id.startswith(f"churn/drift/{first}/")]
    assert len(drift) == 1, outcomes
    outcome = drift[0]
    failed = [g.sentence for g in outcome.gates if g.passed is False]
    assert outcome.result == "candidate" and failed == [], (outcome.sentence, failed)
    version = outcome.version
    assert version is not None and feed.versions[:2] == [first, version], feed.versions
    fired = store.rows("SELECT kind, status, model_version FROM retrain_decisions WHERE decision_id = %s",
                       (outcome.trigger_id,))
    assert fired == [("drift", "fired", first)]
    assert store.rows("SELECT outcome FROM retrain_outcomes WHERE trigger_id = %s",
                      (outcome.trigger_id,)) == [("candidate",)]
    stages = [s for (s,) in store.rows("SELECT to_stage FROM model_stage_changes WHERE version = %s "
                                       "ORDER BY change_id", (version,))]
    assert stages[:2] == ["candidate", "champion"], stages
    gates = store.rows("SELECT name, passed FROM model_gate_results WHERE version = %s", (version,))
    assert ("calibration", True) in gates and all(passed is not False for _, passed in gates), gates

    # every prediction after the switch is the champion's, with the probabilities its registered artifact gives
    spans = dict((v, (lo, hi, n)) for v, lo, hi, n in store.rows(
        "SELECT model_version, min(predicted_at), max(predicted_at), count(*) FROM predictions GROUP BY 1"))
    assert spans[first][1] < spans[version][0], spans
    assert spans[version][2] >= 1000, spans
    served = store.rows("SELECT features, prediction, (probabilities->>'1')::float FROM predictions "
                        "WHERE model_version = %s ORDER BY predicted_at LIMIT 300", (version,))
    with store.pool.connection() as conn, conn.cursor() as cur:
        entry = Registry().get(cur, world.MODEL_NAME, version)
        assert entry is not None
        model = Registry().load(cur, entry)
    features = pd.DataFrame.from_records([f for f, _, _ in served])
    recomputed = model.predict_proba(features)[:, [str(c) for c in model.classes_].index("1")]
    assert all(abs(p - round(float(q), 4)) < 1e-9 for (_, _, p), q in zip(served, recomputed, strict=True))
    assert [int(v) for v in model.predict(features)] == [v for _, v, _ in served]

    # the monitor's windows of both versions are the raw tables' counts ...
    old, new = _per_window(store, first), _per_window(store, version)
    assert (old, new) == (_raw_by_version(store, first), _raw_by_version(store, version))
    labelled = sum(n for n, _ in _raw(store, feed.id_prefix)[1].values())
    assert labelled == sum(n for n, _ in (*old.values(), *new.values()))  # no third version, no row elsewhere
    # ... the champion's accuracy is back above the drifted model's, near the level before the drift ...
    before, n_before = _accuracy(old, lambda s: s + timedelta(seconds=CHURN.window_s) <= drift_starts)
    drifted, n_drifted = _accuracy(old, lambda s: s >= drift_full)
    recovered, n_new = _accuracy(new)
    assert min(n_before, n_drifted, n_new) >= 1000, (n_before, n_drifted, n_new)
    assert drifted < before - 0.04 and recovered >= drifted + RECOVERY and recovered >= before - 0.03, \
        (before, drifted, recovered)
    assert all(c / n > drifted for n, c in new.values() if n >= 500), (drifted, new)
    # ... and judged by the monitor on the new version's own windows, against its training data
    judged = store.rows("SELECT window_start, value, sample_size, status FROM performance_by_window WHERE "
                        "model_version = %s AND segment = '*' AND metric = 'accuracy' AND status <> 'unjudged'",
                        (version,))
    assert len(judged) >= 3, judged
    for start, value, sample_size, status in judged:
        assert status in ("baseline", "ok"), judged
        n, correct = new[start]
        assert (sample_size, value) == (n, pytest.approx(correct / n)), (start, value, sample_size, new[start])
    assert store.rows("SELECT source FROM reference_profiles WHERE model_version = %s", (version,)) == [
        (f"training data of {outcome.trigger_id}",)]
