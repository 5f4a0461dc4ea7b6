"""The demo's runs in process, on the real store: two runs on one store keep their windows apart, and a run through
the real monitor, trigger engine, retrain pipeline, shadow and ramp controller, served through the serving router,
plays both of the demo's acts (a candidate ramped to champion, accuracy back; a bad candidate rolled back)."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pandas as pd
import pytest

from feedback import topics
from feedback.config import load_config
from feedback.monitoring.incremental import exact_stats
from feedback.monitoring.profile import ROWS
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater, window_start
from feedback.registry.versions import Registry
from feedback.rollout.shadow import (
    decode_candidate,
    start_shadow,
)
from feedback.rollout.tick import RolloutTick
from feedback.store import FeedbackStore
from feedback.triggers.engine import TriggerEngine
from pitstop.demo import world
from pitstop.demo.acts import Acts
from pitstop.demo.console import timeline
from pitstop.demo.scenario import demo_config_path
from pitstop.demo.server import RoutedServer, register_first_champion
from pitstop.router import Deployment, KillSwitch, RouteTable
from pitstop.serving import ModelCache, ServingRouter
from retrain_worker.intake import decode_trigger
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


# --- the acts, in process: the demo's world, server and configuration through the real loop ---------------------

#: rounds every 3 event hours as the demo's workers run them (every 3 wall seconds, an event hour a second)
ROUND_EVERY_H = 3
#: the acts play within this many event hours (act one's promotion near hour 80, act two's rollback 4 hours later)
MAX_HOURS = 130
RECOVERY = 0.04
#: demo.toml's rollout with its durations scaled down (the ramp's rules, steps and tests as they are), so that both
#: acts play in about 85 event hours at 200 predictions an hour instead of about 190 (about 15 s)
# single-row predictions, timed, were most of this test: the shadow times 2 rows a chunk (the production 20 are
# reported, not judged) and the server 2 requests a version a tick, enough for latency rules judging from 60
FAST_ROLLOUT = {"shadow_min_duration_s": 8 * 3600, "dwell_s": (3600, 3600, 3600, 4 * 3600),
                "step_min_requests": 30, "hold_s": 6 * 3600, "shadow_latency_rows": 2, "min_latency_samples": 60}
FAST_CONFIG = replace(CONFIG, models={**CONFIG.models, world.MODEL_NAME: replace(
    CHURN, rollout=replace(CHURN.rollout, **FAST_ROLLOUT))})


class _NoAlerts:
    def send(self, alert: object) -> None:
        pass

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def _outbox(store: FeedbackStore, topic: str, decode: Callable[[bytes], Any]) -> list[Any]:
    """The unsent events of ``topic`` in the outbox, decoded as their consumer decodes them; marked sent."""
    with store.pool.connection() as conn, conn.transaction():
        rows = conn.execute("SELECT id, payload FROM outbox WHERE sent_at IS NULL AND topic = %s ORDER BY id",
                            (topic,)).fetchall()
        conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", ([i for i, _ in rows],))
    return [decode(orjson.dumps(payload)) for _, payload in rows]


def _deployment(store: FeedbackStore) -> Deployment | None:
    """The model's deployment as its newest message on the deployments topic says it (the deployments row)."""
    rows = store.rows("SELECT message_version, champion, challenger, challenger_share, salt, state, decided_at, "
                      "reason FROM deployments WHERE model_name = %s", (world.MODEL_NAME,))
    if not rows:
        return None
    number, champion, challenger, share, salt, state, decided_at, reason = rows[0]
    return Deployment(model_name=world.MODEL_NAME, message_version=number, champion=champion, challenger=challenger,
                      challenger_share=share, salt=salt, state=state, decided_at=decided_at, reason=reason)


@dataclass
class PlayedActs:
    acts: Acts
    outcomes: list[Outcome]
    said: list[str]
    hours: int
    #: (wall instant, the feed's event time then), one an event hour
    clock: list[tuple[datetime, datetime]] = field(default_factory=list)

    def event_time_of(self, wall: datetime) -> datetime:
        return self.clock[max(0, bisect_right([w for w, _ in self.clock], wall) - 1)][1]


def play_acts(store: FeedbackStore, feed: world.DemoFeed, *, max_hours: int = MAX_HOURS) -> PlayedActs:
    """What the demo and its stack do with ``feed``, an event hour at a time, without Kafka: the run's first version
    registered and deployed (server.py), every prediction routed by a ServingRouter (fed the deployments row, as
    its router is fed the topic) and served through the demo's RoutedServer; the ingest's batch write, a monitor
    round with the trigger engine every few hours, the retrain pipeline for each trigger, each candidate's shadow
    started, and the rollout worker's round (shadow scoring, judging, the controller's look); then the demo's acts."""
    assert store.windows is not None
    monitor = Monitor(store, store.windows)
    engine = TriggerEngine(FAST_CONFIG, _NoAlerts())
    pipeline = RetrainPipeline(store, FAST_CONFIG)
    registry = Registry()
    tick = RolloutTick(store, FAST_CONFIG, _NoAlerts(), registry=registry)
    since = datetime.now(UTC) - timedelta(seconds=1)
    register_first_champion(store, feed.model_version, at=feed.clock_start, registry=registry)
    serving = ServingRouter(RouteTable(KillSwitch({})), ModelCache(store))
    feed.serve(RoutedServer(serving, timed=2))
    said: list[str] = []
    acts = Acts(store, tick.controller, wall_start=since, drill_version="bad-test", publish=lambda: None,
                say=said.append, tag=str, registry=registry)
    played = PlayedActs(acts=acts, outcomes=[], said=said, hours=0)
    while not acts.done and played.hours < max_hours:
        played.hours += 1
        hour = played.hours
        played.clock.append((datetime.now(UTC), feed.clock_start + timedelta(hours=hour)))
        deployment = _deployment(store)
        if deployment is not None:
            serving.apply(deployment)  # an older or the same message is ignored, as on the topic
        step = feed.advance(feed.clock_start + timedelta(hours=hour), PREDICTIONS_PER_HOUR)
        events = [d.event for d in step.deliveries]
        store.write_batch([e for e in events if isinstance(e, PredictionEvent)],
                          [e for e in events if isinstance(e, OutcomeEvent)])
        if hour % ROUND_EVERY_H == 0:
            monitor.run_once(after=lambda conn, evaluations: engine.run(conn, evaluations))
            played.outcomes += [pipeline.handle(t) for t in _outbox(store, topics.RETRAIN_TRIGGERS, decode_trigger)]
        for candidate in _outbox(store, topics.CANDIDATES, decode_candidate):
            with store.pool.connection() as conn:
                start_shadow(conn, registry, candidate, FAST_CONFIG, models=tick.models)
        tick()
        acts.poll()
    return played


def _accuracy(windows: dict[datetime, tuple[int, int]],
              keep: Callable[[datetime], bool] = lambda start: True) -> tuple[float, int]:
    """Accuracy and labelled predictions over the windows ``keep`` keeps."""
    kept = [nc for start, nc in windows.items() if keep(start)]
    n = sum(k for k, _ in kept)
    return sum(c for _, c in kept) / max(n, 1), n


def _accuracy_of(store: FeedbackStore, version: str, since: datetime | None = None) -> tuple[float, int]:
    """The labelled accuracy and count of ``version``'s predictions (made from ``since`` on)."""
    n, right = store.rows("SELECT count(*), sum((p.prediction = l.label)::int) FROM predictions p "
                          "JOIN current_labels l USING (prediction_id) WHERE p.model_version = %s "
                          "AND p.predicted_at >= coalesce(%s, '-infinity'::timestamptz)", (version, since))[0]
    return (right or 0) / max(n, 1), n


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


#: the timeline's steps of act one (for its candidate) and act two (for the bad candidate), in order
ACT_ONE = ("decision", "training", "gates", "shadow started", "shadow passed", "ramp 25%", "ramp 50%", "hold 100%",
           "promoted")
ACT_TWO = ("ramp 5%", "rolled back", "latch cleared")


def test_the_acts_play_through_the_serving_router(monitored: tuple[FeedbackStore, Monitor]) -> None:
    """The demo's world, server and configuration (its rollout's durations scaled down) through the real monitor,
    trigger engine, retrain pipeline, shadow and ramp controller: act one's drift retrain passes its gates and its
    shadow, walks 25-50% (its champion confirmed degraded, the shadow's gain significant), is held at 100% and
    becomes champion, each prediction served by the version the
    router's hash gives its customer (its registered artifact's probabilities), accuracy back near the level before
    the drift; act two's bad candidate fails every request it gets at 5% and is rolled back by the controller, the
    latch cleared by the demo; the timeline lists both acts in order, from the database."""
    store, _ = monitored
    feed = world.feed_for_run(FIRST_START)
    first = feed.model_version
    drift_starts = feed.clock_start + timedelta(seconds=world.DRIFT_STARTS_AFTER_S)
    drift_full = drift_starts + timedelta(seconds=world.DRIFT_RAMP_S)
    played = play_acts(store, feed)
    acts = played.acts
    assert acts.done and acts.succeeded, (played.hours, acts.where(), played.said)
    version = acts.champion
    assert version is not None

    # act one: the drift trigger -> a candidate that passed every gate -> its shadow -> the ramp -> champion
    drift = [o for o in played.outcomes if o.version == version]
    assert len(drift) == 1 and drift[0].result == "candidate", played.outcomes
    assert [g.sentence for g in drift[0].gates if g.passed is False] == []
    stages = [s for (s,) in store.rows("SELECT to_stage FROM model_stage_changes WHERE version = %s "
                                       "ORDER BY change_id", (version,))]
    assert stages == ["candidate", "shadow", "canary", "champion"], stages
    steps = [(kind, share) for kind, share in store.rows(
        "SELECT kind, share FROM rollout_events WHERE version = %s ORDER BY event_id", (version,))]
    # the drift's decision confirmed the champion degraded and the shadow showed the candidate better: the shorter
    # path, from 25% (issue 16), said in the ramp's first sentence
    assert [s for s in steps if s[0] in ("step", "holding", "promoted")] == [
        ("step", 0.25), ("step", 0.5), ("holding", 1.0), ("promoted", 1.0)], steps
    [(first_step,)] = store.rows("SELECT sentence FROM rollout_events WHERE version = %s AND kind = 'step' "
                                 "ORDER BY event_id LIMIT 1", (version,))
    assert f"champion {first} degraded since " in first_step and "starting the ramp at 25%" in first_step, first_step

    # every prediction is tagged with a version the deployments named; routed on its customer by the hash
    served = dict(store.rows("SELECT model_version, count(*) FROM predictions GROUP BY 1"))
    assert set(served) == {first, version, "bad-test"}, served
    events = store.rows("SELECT at, share FROM rollout_events WHERE rollout_id = %s AND kind = 'step' "
                        "ORDER BY event_id", (f"churn/{version}",))
    for (start, share), (end, _) in zip(events, events[1:], strict=False):
        settle = min(timedelta(hours=1), (end - start) / 4)  # the routers follow a step within seconds
        (n, to_challenger), = store.rows(
            "SELECT count(*), count(*) FILTER (WHERE model_version = %s) FROM predictions "
            "WHERE predicted_at > %s AND predicted_at <= %s AND model_version IN (%s, %s)",
            (version, start + settle, end, version, first))
        assert n >= 100 and abs(to_challenger / n - share) < 0.06, (share, n, to_challenger)
    # ... with the probabilities of its registered artifact
    with store.pool.connection() as conn, conn.cursor() as cur:
        loaded = {v: Registry().load(cur, Registry().get(cur, world.MODEL_NAME, v)) for v in (first, version)}
    rows = []
    for v, model in loaded.items():
        mine = store.rows("SELECT model_version, features, prediction, (probabilities->>'1')::float, latency_ms "
                          "FROM predictions WHERE model_version = %s ORDER BY predicted_at DESC LIMIT 300", (v,))
        features = pd.DataFrame.from_records([r[1] for r in mine])
        p1 = model.predict_proba(features)[:, [str(c) for c in model.classes_].index("1")]
        assert len(mine) == 300 and all(abs(r[3] - q) < 1e-9 for r, q in zip(mine, p1, strict=True)), v
        assert [int(x) for x in model.predict(features)] == [r[2] for r in mine]
        rows += mine
    timed = [r[4] for r in rows if r[4] is not None]
    assert 0 < len(timed) < len(rows) and min(timed) > 0  # a few requests a version a tick, one at a time

    # the monitor's windows of both versions are the raw tables' counts; the champion's accuracy recovered
    old, new = _per_window(store, first), _per_window(store, version)
    assert (old, new) == (_raw_by_version(store, first), _raw_by_version(store, version))
    before, n_before = _accuracy(old, lambda s: s + timedelta(seconds=CHURN.window_s) <= drift_starts)
    drifted, n_drifted = _accuracy(old, lambda s: s >= drift_full)
    recovered, n_new = _accuracy_of(store, version)
    assert min(n_before, n_drifted, n_new) >= 1000, (n_before, n_drifted, n_new)
    assert drifted < before - 0.04 and recovered >= drifted + RECOVERY and recovered >= before - 0.03, \
        (before, drifted, recovered)

    # act two: the bad candidate failed every request it got at 5%, was rolled back, and the latch is cleared
    (n_bad, failed), = store.rows("SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL) FROM predictions "
                                  "WHERE model_version = 'bad-test'")
    assert n_bad == failed >= CHURN.rollout.min_requests, (n_bad, failed)
    (state, sentence), = store.rows("SELECT state, sentence FROM rollouts WHERE rollout_id = 'churn/bad-test'")
    assert state == "rolled_back" and "failed" in sentence, sentence
    assert store.rows("SELECT count(*) FROM rollback_latches") == [(0,)]
    assert [line.split()[1] for line in played.said] == ["one", "two", "two", "two"], played.said

    # the timeline: both acts in order, every step with its sentence
    entries = timeline(store, model=world.MODEL_NAME, versions=[first, version, "bad-test"],
                       since=acts.wall_start, event_time_of=played.event_time_of)
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    mine = [e.step for e in entries if e.version == version and e.step in ACT_ONE]
    fired = [i for i, e in enumerate(entries) if e.step == "decision" and "FIRED" in e.sentence
             and e.sentence.startswith(("drift", "performance"))]
    assert fired and fired[0] < [e.version for e in entries].index(version), [
        (e.at, e.step, e.version, e.sentence[:60]) for e in entries]
    assert mine == list(ACT_ONE[1:]), mine
    bad = [(e.step, e.sentence) for e in entries if e.version == "bad-test"]
    assert [step for step, _ in bad] == list(ACT_TWO), bad
    assert bad[0][1].endswith("(by pitstop demo)") and bad[2][1].endswith("(by pitstop demo)")
    assert all(e.sentence for e in entries)
