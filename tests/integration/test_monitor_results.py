"""Monitor results as analysts read them: one current verdict per window, no rows for windows before the data."""

from __future__ import annotations

from datetime import timedelta

from feedback.config import parse_config
from feedback.monitoring.evaluate import summary
from feedback.monitoring.round import MODEL_LOCK, Monitor, owner
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


SEGMENTED_TOML = """
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
window = "1h"
span = 6
min_rows = 50
min_labels = 30
min_label_coverage = 0.5
reference_rows = 100
[models.churn.performance]
baseline_windows = 1
"""
SEGMENTED = parse_config(SEGMENTED_TOML)


def _segmented_hour(store: FeedbackStore, hour: int, n: int, first_id: int, *, labelled: int | None = None) -> None:
    """``n`` predictions in the hour, the first ``labelled`` of them (all by default) with their label."""
    ids = range(first_id, first_id + n)
    preds = [prediction(i, predicted_at=T0 + timedelta(hours=hour, seconds=30 * (i - first_id)),
                        features={"age": 20 + (i * 7) % 50}, prediction=i % 2,
                        segment={"region": "eu" if i % 3 else "us"},
                        probabilities={"0": 0.4, "1": 0.6} if i % 2 else {"0": 0.6, "1": 0.4}) for i in ids]
    store.write_batch(preds, [outcome(i, label=(i // 3) % 2) for i in ids[:labelled]])


def _stored(store: FeedbackStore) -> dict[tuple, tuple]:
    """Every result row by key: its values, the transaction that wrote it (xmin) and its evaluated_at."""
    return {(seg, start, kind, metric, feature): (value, p_value, ci_low, ci_high, status, size, sentence, xmin, at)
            for seg, start, kind, metric, feature, value, p_value, ci_low, ci_high, status, size, sentence, xmin, at
            in store.rows("SELECT segment, window_start, kind, metric, feature, value, p_value, ci_low, ci_high, "
                          "status, sample_size, sentence, xmin::text, evaluated_at FROM monitor_results")}


def _evaluated(monitor: Monitor) -> dict[tuple, tuple]:
    """The same keys and values from a fresh evaluation of the store (written nowhere)."""
    result = monitor.run_once(write=False)
    assert result is not None
    (ev,) = result.evaluations
    rows = {(d.segment, d.window_start, "drift", d.metric, d.feature): (d.value, d.p_value, None, None, d.status,
                                                                        d.sample_size, d.sentence)
            for d in ev.drift}
    rows |= {(p.segment, p.window_start, "performance", p.metric, ""): (p.value, None, p.ci_low, p.ci_high, p.status,
                                                                        p.sample_size, p.sentence)
             for p in ev.performance}
    return rows


def test_a_round_writes_only_the_rows_whose_results_changed(services, db_schema) -> None:
    """The first round writes every row; a round with nothing new writes none; late labels in one window rewrite
    the rows of that window (every segment it has) that they change, its label series and its performance, and
    leave every other row as it was, transaction and evaluated_at included. After each round the table holds
    exactly what a fresh evaluation of the store gives.
    (The late labels keep every test judged as it was: a window newly judged changes the number of tests Holm
    corrects for, and with it every drift row's p-value and sentence.)"""
    updater = WindowUpdater(SEGMENTED)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        for hour in range(4):
            _segmented_hour(store, hour, 120, 1000 * hour, labelled=105 if hour == 1 else None)
        monitor = Monitor(store, updater)
        first = monitor.run_once()
        assert first is not None
        stored = _stored(store)
        assert first.results_written == len(stored) > 0
        assert {k: v[:7] for k, v in stored.items()} == _evaluated(monitor)

        again = monitor.run_once()
        assert again is not None and again.results_written == 0
        assert _stored(store) == stored

        late_hour = T0 + timedelta(hours=1)  # window 1 gets its labels now
        store.write_batch([], [outcome(i, label=(i // 3) % 2) for i in range(1105, 1120)])
        later = monitor.run_once()
        assert later is not None
        now = _stored(store)
        assert {k: v[:7] for k, v in now.items()} == _evaluated(monitor)
        rewritten = {k for k in now if k not in stored or now[k][7] != stored[k][7]}
        assert later.results_written == len(rewritten)
        windows = {(seg, start) for seg, start, *_ in rewritten}
        assert windows >= {(s, late_hour) for s in ("*", "region=eu", "region=us")}
        for k in now:  # a row is written when, and only when, what it says differs
            assert (k in rewritten) == (k not in stored or now[k][:7] != stored[k][:7]), k
        assert not set(stored) - set(now)
        assert {feature for _, start, kind, _, feature in rewritten if kind == "drift"} <= {"__label__"}, rewritten
        untouched = [k for k in now if k[:2] not in windows]
        assert untouched, "every window was rewritten"
        assert all(now[k] == stored[k] for k in untouched)
        assert len(rewritten) < len(now) / 2, (len(rewritten), len(now))


def _plain(name: str) -> str:
    """A classification model without segments, hourly windows over 6 hours."""
    return f"""
[models.{name}]
task = "classification"
positive_class = 1
window = "1h"
span = 6
min_rows = 50
min_labels = 30
reference_rows = 100
"""


TWO_MODELS = parse_config(SEGMENTED_TOML + _plain("other"))


def _two_models_hours(store: FeedbackStore) -> None:
    """Three hours of both TWO_MODELS: the segmented churn's labelled, the other's unlabelled."""
    for hour in range(3):
        _segmented_hour(store, hour, 120, 1000 * hour)
        store.write_batch([prediction(i, model_name="other", predicted_at=T0 + timedelta(hours=hour, seconds=i),
                                      features={"age": 30 + i % 20}, prediction=i % 2)
                           for i in range(50_000 + 1000 * hour, 50_000 + 1000 * hour + 120)], [])


def test_a_round_evaluates_only_the_versions_whose_windows_changed(services, db_schema) -> None:
    """After the first round, a round evaluates the versions with a changed window only; the trigger engine still
    gets every version, the others as the last round that evaluated them found them, with the same window signals
    and summary as a fresh evaluation of the whole store gives."""
    from feedback.triggers.signals import window_signals

    updater = WindowUpdater(TWO_MODELS)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        _two_models_hours(store)
        monitor = Monitor(store, updater)
        seen: list[list] = []

        def after(conn, evaluations) -> None:
            seen.append(evaluations)

        first = monitor.run_once(after=after)
        assert first is not None and sorted(e.model_name for e in first.evaluations) == ["churn", "other"]
        quiet = monitor.run_once(after=after)
        assert quiet is not None and quiet.evaluations == [] and quiet.summaries == [] and quiet.results_written == 0
        store.write_batch([], [outcome(i, label=1) for i in range(2000, 2030)])  # churn's third window only
        later = monitor.run_once(after=after)
        assert later is not None and [e.model_name for e in later.evaluations] == ["churn"]

        fresh = {e.model_name: e for e in Monitor(store, updater).run_once(write=False).evaluations}
        for given in (seen[1], seen[2]):
            assert sorted(e.model_name for e in given) == ["churn", "other"]
        for ev in seen[2]:
            config = TWO_MODELS.models[ev.model_name]
            assert window_signals(ev, config) == window_signals(fresh[ev.model_name], config)
            assert summary(ev, config) == summary(fresh[ev.model_name], config)
            assert (ev.baseline, ev.observed, ev.evaluated_at, ev.tests) == (
                fresh[ev.model_name].baseline, fresh[ev.model_name].observed, fresh[ev.model_name].evaluated_at,
                fresh[ev.model_name].tests)


def _table(store: FeedbackStore) -> dict[tuple, tuple]:
    """Every stored result row of every version by key, with the values a reader sees."""
    return {tuple(r[:6]): tuple(r[6:]) for r in store.rows(
        "SELECT model_version, segment, window_start, kind, metric, feature, window_end, value, threshold, p_value, "
        "ci_low, ci_high, status, sample_size, label_coverage, sentence FROM monitor_results")}


def _whole(monitor: Monitor) -> tuple[dict[tuple, tuple], dict[str, object]]:
    """The same rows from a whole evaluation of the store (every window read and judged, nothing kept), and its
    evaluations by version."""
    result = monitor.run_once(write=False)
    assert result is not None
    rows: dict[tuple, tuple] = {}
    for ev in result.evaluations:
        v = ev.model_version
        rows |= {(v, d.segment, d.window_start, "drift", d.metric, d.feature): (
            d.window_end, d.value, d.threshold, d.p_value, None, None, d.status, d.sample_size, None, d.sentence)
            for d in ev.drift}
        rows |= {(v, p.segment, p.window_start, "performance", p.metric, ""): (
            p.window_end, p.value, p.threshold, None, p.ci_low, p.ci_high, p.status, p.sample_size, p.label_coverage,
            p.sentence) for p in ev.performance}
    return rows, {ev.model_version: ev for ev in result.evaluations}


def test_rounds_that_keep_their_evaluations_store_what_a_whole_evaluation_gives(services, db_schema,
                                                                               monkeypatch) -> None:
    """Side by side, after every round of a workload with two versions, segments, late labels, corrections, a
    drift, a late prediction, the span sliding and the baseline's window changing: every result row the rounds
    (which read only what changed and build only the windows whose inputs changed) leave in the table equals, value
    for value (verdict, statistic, Holm-adjusted p-value, interval, sample, coverage, sentence), what a whole
    evaluation of the store gives; so do the window signals and the summary the trigger engine gets. A round with
    nothing new writes nothing. (The windows that slid out of the span keep the rows of their last evaluation, as
    before.)"""
    import feedback.monitoring.round as round_module
    from feedback.triggers.signals import window_signals

    monkeypatch.setattr(round_module, "WRITE_ROWS", 1)  # every version's results in a transaction of their own
    config = SEGMENTED.models["churn"]
    updater = WindowUpdater(SEGMENTED)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        monitor = Monitor(store, updater)
        given: list[list] = []

        def round_matches(step: str) -> int:
            result = monitor.run_once(after=lambda conn, evaluations: given.append(evaluations))
            assert result is not None, step
            whole, fresh = _whole(Monitor(store, updater))
            span = {(v, start) for v, _, start, *_ in whole}  # the windows before the span keep their last rows
            table = {k: row for k, row in _table(store).items() if (k[0], k[2]) in span}
            assert table.keys() == whole.keys(), (step, table.keys() ^ whole.keys())
            differ = {k: (table[k], whole[k]) for k in table if table[k] != whole[k]}
            assert not differ, (step, list(differ.items())[:3])
            assert sorted(e.model_version for e in given[-1]) == sorted(fresh), step
            for ev in given[-1]:
                ref = fresh[ev.model_version]
                assert window_signals(ev, config) == window_signals(ref, config), step
                assert summary(ev, config) == summary(ref, config), step
                assert (ev.baseline, ev.observed, ev.tests, ev.evaluated_at) == (
                    ref.baseline, ref.observed, ref.tests, ref.evaluated_at), step
            return result.results_written

        def v2_hour(hour: int, shift: int) -> None:
            ids = range(80_000 + 1000 * hour, 80_000 + 1000 * hour + 90)
            store.write_batch([prediction(i, model_version="v2",
                                          predicted_at=T0 + timedelta(hours=hour, seconds=i % 3000),
                                          features={"age": 20 + shift + (i * 7) % 50}, prediction=i % 2,
                                          segment={"region": "eu" if i % 2 else "apac"},
                                          probabilities={"0": 0.3, "1": 0.7}) for i in ids],
                              [outcome(i, label=i % 2) for i in ids[:60]])

        for hour in range(4):
            _segmented_hour(store, hour, 120, 1000 * hour, labelled=105 if hour == 1 else None)
        v2_hour(2, 0)
        v2_hour(3, 0)
        assert round_matches("first") > 0

        store.write_batch([], [outcome(i, label=(i // 3) % 2) for i in range(1105, 1120)])  # late labels, hour 1
        round_matches("late labels")

        store.write_batch([], [outcome(i, label=1 - (i // 3) % 2, after_s=9000) for i in range(2000, 2050)])
        round_matches("corrections")

        for hour in (4, 5):  # v1 drifts: older customers from hour 4
            ids = range(1000 * hour, 1000 * hour + 120)
            store.write_batch([prediction(i, predicted_at=T0 + timedelta(hours=hour, seconds=30 * (i % 1000)),
                                          features={"age": 60 + (i * 7) % 30}, prediction=1,
                                          segment={"region": "eu" if i % 3 else "us"},
                                          probabilities={"0": 0.2, "1": 0.8}) for i in ids],
                              [outcome(i, label=0) for i in ids])
        v2_hour(4, 30)
        round_matches("drift")

        store.write_batch([prediction(70_000 + i, predicted_at=T0 + timedelta(hours=5, seconds=i),
                                      features={"age": 85 + i % 5}, prediction=1, segment={"region": "eu"})
                           for i in range(200)], [])
        round_matches("drift deepens in hour 5")  # hour 4's inputs stay; its Holm-adjusted p-values move

        for hour in (6, 7):  # the span (6 windows) slides past hours 0 and 1
            _segmented_hour(store, hour, 120, 1000 * hour)
        round_matches("span slides")

        store.write_batch([], [outcome(i, label=1 - (i // 3) % 2, after_s=9000) for i in range(0, 60)])
        round_matches("the baseline's window corrected")  # hour 0: out of the span, still the baseline

        store.write_batch([prediction(90_000 + i, predicted_at=T0 + timedelta(hours=5, seconds=i),
                                      features={"age": 33}, prediction=0, segment={"region": "us"})
                           for i in range(150)], [])
        round_matches("late predictions, unlabelled")  # hour 5's coverage falls

        assert round_matches("nothing new") == 0


FOUR_MODELS = parse_config(SEGMENTED_TOML + "".join(_plain(f"m{i}") for i in range(3)))


def test_monitor_workers_share_the_models_and_take_over_a_share_left(services, db_schema) -> None:
    """Two monitors with worker ids share four models: after one round each, their shares are disjoint, cover every
    model, and each writes results for its share only; a model another worker's round holds is skipped, not
    evaluated twice; when one leaves, the other takes every model at its next round."""
    updater = WindowUpdater(FOUR_MODELS)
    names = sorted(FOUR_MODELS.models)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        for hour in range(3):
            store.write_batch([prediction(10_000 * m + 1000 * hour + i, model_name=name,
                                          predicted_at=T0 + timedelta(hours=hour, seconds=i),
                                          features={"age": 30 + i % 20}, prediction=i % 2)
                               for m, name in enumerate(names) for i in range(120)], [])
        a = Monitor(store, updater, worker_id="a", lease_s=60)
        b = Monitor(store, updater, worker_id="b", lease_s=60)
        assert a.run_once().results_written > 0 and a.claimed == names  # alone: every model
        b.run_once()
        a.run_once()
        assert a.claimed and b.claimed and sorted(a.claimed + b.claimed) == names, (a.claimed, b.claimed)
        assert a.claimed == [m for m in names if owner(m, ["a", "b"]) == "a"]

        with store.pool.connection() as held:  # b's share is busy in another round: a never takes it
            held.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema() || '/' || %s))",
                         (MODEL_LOCK, b.claimed[0]))
            busy, share = b.claimed[0], list(b.claimed)
            b.run_once()
            assert b.claimed == [m for m in share if m != busy]
            held.execute("SELECT pg_advisory_unlock_all()")

        b.leave()
        a.run_once()
        assert a.claimed == names
        evaluated = store.rows("SELECT DISTINCT model_name FROM monitor_results ORDER BY 1")
        assert [m for (m,) in evaluated] == names


def test_a_version_whose_counts_are_broken_is_logged_and_the_others_are_judged(services, db_schema, caplog) -> None:
    """A negative count in one model's window (broken accumulators) stops that version's evaluation with a logged
    reason naming it; the other model's rounds go on, and the broken one is judged again once repaired."""
    updater = WindowUpdater(TWO_MODELS)
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        _two_models_hours(store)
        monitor = Monitor(store, updater)
        monitor.run_once()
        with store.pool.connection() as conn, conn.transaction():  # a broken writer: one count below zero
            conn.execute("UPDATE window_counts SET counts[1] = -5, changed = pg_current_xact_id() "
                         "WHERE model_name = 'churn' AND series = 'age' AND segment = '*' AND window_start = %s",
                         (T0 + timedelta(hours=2),))
            conn.execute("UPDATE window_changes SET changed = pg_current_xact_id() WHERE model_name = 'churn'")
        store.write_batch([prediction(i, model_name="other", predicted_at=T0 + timedelta(hours=3, seconds=i % 1000),
                                      features={"age": 30}, prediction=1) for i in range(60_000, 60_120)], [])
        with caplog.at_level("ERROR", logger="feedback.monitoring.round"):
            result = monitor.run_once()
        assert [e.model_name for e in result.evaluations] == ["other"] and result.results_written > 0
        assert "churn v1 not evaluated" in caplog.text and "negative count" in caplog.text
        with store.pool.connection() as conn:
            conn.execute("UPDATE window_counts SET counts[1] = 0 WHERE counts[1] = -5")
        assert [e.model_name for e in monitor.run_once().evaluations] == ["churn"]
