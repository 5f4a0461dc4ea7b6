"""Shadow evaluation on the real database (and, end to end, the real broker): a candidate event starts one shadow,
the shadow scores live and backfilled predictions beside the champion, failures and slowness stay in the shadow
path, and the gate moves the registry."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from feedback.alerts import Alert
from feedback.config import MonitoringConfig, parse_config
from feedback.registry.artifacts import Artifact, serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.shadow import (
    CandidateEvent,
    CandidateIntake,
    ScanCursors,
    ShadowModelCache,
    decode_candidate,
    judge_round,
    score_round,
    start_shadow,
)
from feedback.store import FeedbackStore
from feedback.store.ingest import InboundMessage
from retrain_worker.pipeline import candidate_event
from tests.factories import T0, outcome, prediction

TOML = """
[models.churn]
task = "classification"
positive_class = 1
[models.churn.rollout]
shadow_min_labels = 100
shadow_min_duration = "1h"
shadow_backfill = "2h"
"""
CUTOFF = T0 + timedelta(minutes=240)


# --- models: sklearn ones as the retrain worker trains them, and misbehaving ones (pickled, read from the registry)


def _truth(age: float) -> int:
    return int(age > 45)


class Oracle:
    """Predicts the churn factories' truth (age > 45), or its opposite."""

    classes_ = np.array([0, 1])

    def __init__(self, *, wrong: bool = False) -> None:
        self.wrong = wrong

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p1 = np.where(X["age"].to_numpy() > 45, 0.9, 0.1)
        p1 = 1 - p1 if self.wrong else p1
        return np.column_stack([1 - p1, p1])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


class RaisingOver60(Oracle):
    """Raises for any row older than 60, like a model meeting a value it cannot handle."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        old = X["age"].to_numpy() > 60
        if old.any():
            msg = f"age {X['age'].to_numpy()[old][0]} out of range\nsecond line"
            raise ValueError(msg)
        return super().predict(X)


#: set by the sleeping model when it first sleeps; it waits for RELEASE before going on
SLEEPING, RELEASE = threading.Event(), threading.Event()


class Sleepy:
    """Sleeps 0.3 s per call (the first call also waits for RELEASE); no probabilities."""

    classes_ = np.array([0, 1])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if not SLEEPING.is_set():
            SLEEPING.set()
            RELEASE.wait(20)
        time.sleep(0.3)
        return np.zeros(len(X), dtype=int)


def _register(store: FeedbackStore, version: str, model: Any, *, name: str = "churn", stage: str = "candidate",
              cutoff=CUTOFF) -> ModelVersion:
    artifact = model if isinstance(model, Artifact) else serialise(
        model, "pickle" if isinstance(model, Oracle | Sleepy) else "skops")
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        return Registry().register(cur, ModelVersion(
            model_name=name, version=version, stage=stage, trigger_id=f"{name}/drift/v1/{version}",  # type: ignore[arg-type]
            trainer="tests", lineage={"cutoff": cutoff.isoformat()}), artifact, reason="test")


def _event(registered: ModelVersion, **overrides: Any) -> CandidateEvent:
    """The event as the retrain worker publishes it, decoded as the rollout worker reads it."""
    doc = candidate_event(registered, "candidate", [], dict(registered.lineage)) | overrides
    return decode_candidate(orjson.dumps(doc))


def _predictions(store: FeedbackStore, ids: range, *, name: str = "churn", served_noise: int = 10,
                 labelled: bool = False, label_after_min: float = 5.0) -> None:
    """Predictions at T0 + i minutes; the served class is the truth except every ``served_noise``-th request."""
    preds, labels = [], []
    for i in ids:
        age = 30 + (i * 7) % 40
        served = _truth(age) if i % served_noise else 1 - _truth(age)
        preds.append(prediction(i, prediction_id=f"{name}-{i}", model_name=name,
                                features={"age": age, "plan": "pro"}, prediction=served,
                                probabilities={"0": 0.2 if served else 0.8, "1": 0.8 if served else 0.2}))
        if labelled:
            labels.append(outcome(i, label=_truth(age), prediction_id=f"{name}-{i}", after_s=label_after_min * 60))
    store.write_batch(preds, labels)


def _config(text: str = TOML) -> MonitoringConfig:
    return parse_config(text)


def _champion_and_candidate(store: FeedbackStore, candidate: Any = None) -> ModelVersion:
    _register(store, "v1", Oracle(), stage="champion")
    return _register(store, "v2", candidate if candidate is not None else Oracle())


class ListSink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


# --- starting ------------------------------------------------------------------------------------------------


def test_a_candidate_starts_one_shadow_and_the_registry_must_agree(store: FeedbackStore) -> None:
    """A candidate event starts its shadow once (a duplicate changes nothing), at the model's watermark, with the
    cutoff from its lineage; an event whose digest is not the registered one, or whose version the registry does
    not hold, is refused and writes nothing."""
    v2 = _champion_and_candidate(store)
    _predictions(store, range(10))
    config, registry = _config(), Registry()
    with store.pool.connection() as conn:
        forged = start_shadow(conn, registry, _event(v2, artifact_sha256="ab" * 32), config)
        unknown = start_shadow(conn, registry, _event(v2, version="v9"), config)
        assert store.scalar("SELECT count(*) FROM shadows") == 0
        first = start_shadow(conn, registry, _event(v2), config)
        again = start_shadow(conn, registry, _event(v2), config)
    assert forged.outcome == "refused" and "is not the registered" in forged.sentence
    assert unknown.outcome == "refused" and unknown.sentence == "churn v9 is not in the registry"
    assert (first.outcome, again.outcome) == ("started", "duplicate")
    assert store.rows("SELECT version, champion, cutoff, started_at, status FROM shadows") == [
        ("v2", "v1", CUTOFF, T0 + timedelta(minutes=9), "running")]
    assert store.rows("SELECT kind, at, actor FROM rollout_events") == [
        ("shadow_started", T0 + timedelta(minutes=9), "shadow")]
    assert store.rows("SELECT from_stage, to_stage FROM model_stage_changes WHERE version = 'v2' ORDER BY change_id"
                      ) == [(None, "candidate"), ("candidate", "shadow")]
    assert "labels observed after 2026-03-01 16:00 UTC (its training cutoff) judge it" in first.sentence


def test_a_candidate_that_does_not_load_is_rejected_with_the_reason(store: FeedbackStore) -> None:
    """A registered artifact that does not deserialise (its digest matches: the bytes are simply no model) is
    rejected at once, with a shadow_failed event, a failed shadow row and an alert; the event again is a duplicate."""
    _register(store, "v1", Oracle(), stage="champion")
    broken = _register(store, "v2", Artifact(data=b"not a model", format="skops"))
    _predictions(store, range(3))
    sink = ListSink()
    with store.pool.connection() as conn:
        failed = start_shadow(conn, Registry(), _event(broken), _config(), sink)
        again = start_shadow(conn, Registry(), _event(broken), _config(), sink)
    assert failed.outcome == "failed" and failed.sentence.startswith("churn v2 does not load: ")
    assert again.outcome == "duplicate"
    assert store.rows("SELECT status FROM shadows") == [("failed",)]
    assert store.rows("SELECT stage FROM model_versions WHERE version = 'v2'") == [("rejected",)]
    assert store.rows("SELECT kind FROM rollout_events") == [("shadow_failed",)]
    assert [a.kind for a in sink.alerts] == ["shadow_failed"]


class _SlowRegistry(Registry):
    """A registry whose artifact loads wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.loading, self.release = threading.Event(), threading.Event()

    def load(self, cur: Any, version: ModelVersion) -> Any:
        self.loading.set()
        assert self.release.wait(30)
        return super().load(cur, version)


def test_the_candidate_loads_before_the_models_shadow_lock_is_taken(store: FeedbackStore) -> None:
    """Deserialising the candidate (seconds for a large model, or for the process's first skops import) holds no
    lock: the model's scoring and judging rounds go on meanwhile. The start then takes the lock and starts."""
    v2 = _champion_and_candidate(store)
    _predictions(store, range(3))
    registry, started = _SlowRegistry(), []
    with store.pool.connection() as conn:
        pid = conn.info.backend_pid
        thread = threading.Thread(target=lambda: started.append(
            start_shadow(conn, registry, _event(v2), _config(), models=ShadowModelCache())))
        thread.start()
        try:
            assert registry.loading.wait(30)
            held = store.scalar("SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'", (pid,))
            in_transaction = store.scalar("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        finally:
            registry.release.set()
            thread.join(30)
    assert (held, in_transaction) == (0, "idle")
    assert [s.outcome for s in started] == ["started"]
    assert store.rows("SELECT version, status FROM shadows") == [("v2", "running")]


def test_the_intake_dead_letters_what_it_cannot_start(store: FeedbackStore) -> None:
    """Of a batch of candidate messages, one not JSON, one against the schema and one the registry contradicts are
    dead letters with their reasons; the valid one starts its shadow, and the same batch again stores nothing new."""
    v2 = _champion_and_candidate(store)
    good = orjson.dumps(candidate_event(v2, "candidate", [], dict(v2.lineage)))
    forged = orjson.dumps(orjson.loads(good) | {"artifact_sha256": "ab" * 32})
    values = [b"{oops", b'{"schema_version": 2}', forged, good]
    messages = [InboundMessage(topic="t.candidates", partition=0, offset=i, key=b"churn", value=v)
                for i, v in enumerate(values)]
    intake = CandidateIntake(store, _config())
    first = intake.receive(messages)
    second = intake.receive(messages)
    assert [s.outcome for s in first.starts] == ["refused", "started"]
    assert [s.outcome for s in second.starts] == ["refused", "duplicate"]
    reasons = [r for (r,) in store.rows("SELECT reason FROM dead_letters ORDER BY source_offset")]
    assert len(reasons) == 3 and reasons[0].startswith("not_json: ")
    assert reasons[1].startswith("schema: ") and reasons[2].startswith("refused: churn v2: the event's artifact")
    assert [d.dead_letter_id for d in first.dead_letters] == [d.dead_letter_id for d in second.dead_letters]
    assert store.rows("SELECT status FROM shadows") == [("running",)]


def test_the_topic_id_of_each_local_broker_life_keeps_its_candidate_dead_letters_apart(
    stack_dir: Path, store: FeedbackStore
) -> None:
    """Two lives of a real local broker: the intake's topic ids differ, so 5 malformed candidates at offsets 0-4 in
    each life are 10 rows, and the second life's messages delivered again add none."""
    from pitstop import stack
    from pitstop.topic_ids import TopicIds

    topic = "life.candidates"
    ids: list[str] = []
    for life in range(2):
        broker = stack.start_broker(stack_dir / f"life-{life}")
        try:
            stack.ensure_topics(broker.address, [topic], 1)
            topic_ids = TopicIds(broker.address)
            intake = CandidateIntake(store, _config(), topic_id=topic_ids)
            messages = [InboundMessage(topic=topic, partition=0, offset=i, key=b"churn", value=b"{bad %d" % i)
                        for i in range(5)]
            assert [d.dead_letter_id for d in intake.receive(messages).dead_letters] == [
                d.dead_letter_id for d in intake.receive(messages).dead_letters]  # a redelivery finds its rows
            ids.append(topic_ids(topic))
        finally:
            stack.stop_process(broker)
    assert ids[0] != ids[1] and all(len(i) == 36 for i in ids), ids
    rows = store.rows("SELECT source_topic_id, count(*) FROM dead_letters GROUP BY 1 ORDER BY min(id)")
    assert rows == [(ids[0], 5), (ids[1], 5)]


def test_a_shadow_waits_for_a_rollout_and_a_newer_candidate_supersedes_it(store: FeedbackStore) -> None:
    """During an active rollout a candidate's shadow waits; once the rollout ends the scoring round starts it at
    the watermark then; a newer candidate expires it (archived) and runs instead."""
    _register(store, "v1", Oracle(), stage="champion")
    _register(store, "v2", Oracle(), stage="canary")
    v3, v4 = _register(store, "v3", Oracle()), _register(store, "v4", Oracle())
    _predictions(store, range(10))
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share, "
                     "step_started_at, started_at) VALUES ('churn/v2', 'churn', 'v1', 'v2', 's', 'ramping', 0, 0.05, "
                     "%s, %s)", (T0, T0))
        config, registry = _config(), Registry()
        waiting = start_shadow(conn, registry, _event(v3), config)
        assert waiting.outcome == "waiting" and waiting.sentence == "v3 waits for the rollout of v2 to end"
        assert score_round(conn, registry, config).started == []
        conn.execute("UPDATE rollouts SET state = 'promoted'")
        _predictions(store, range(10, 20))
        assert score_round(conn, registry, config).started == ["v3"]
        assert store.rows("SELECT status, started_at FROM shadows") == [("running", T0 + timedelta(minutes=19))]
        assert start_shadow(conn, registry, _event(v4), config).outcome == "started"
    assert store.rows("SELECT version, status, sentence FROM shadows WHERE version = 'v3'") == [
        ("v3", "expired", "superseded by v4")]
    assert store.rows("SELECT version, stage FROM model_versions WHERE version IN ('v3', 'v4') ORDER BY version") == [
        ("v3", "archived"), ("v4", "shadow")]
    assert [k for (k,) in store.rows("SELECT kind FROM rollout_events ORDER BY event_id")] == [
        "shadow_waiting", "shadow_started", "shadow_expired", "shadow_started"]


# --- scoring -------------------------------------------------------------------------------------------------


def test_live_and_backfilled_predictions_are_scored_once(store: FeedbackStore) -> None:
    """Live predictions and those of the backfill window unlabelled at the cutoff are scored, oldest first, with
    the probabilities shaped as served and the first 20 timed; a prediction labelled before the cutoff, or older
    than the window, is not; a second round scores nothing."""
    v2 = _champion_and_candidate(store)
    _predictions(store, range(0, 200))
    _predictions(store, range(200, 240), labelled=True, label_after_min=30)  # observed <= cutoff up to i = 210
    _predictions(store, range(240, 300))
    with store.pool.connection() as conn:
        start_shadow(conn, Registry(), _event(v2), _config())  # started at T0 + 299 min: the window from 179 min
        _predictions(store, range(300, 350))
        stats = score_round(conn, Registry(), _config())
        again = score_round(conn, Registry(), _config())
    rows = store.rows("SELECT s.prediction_id, s.prediction, s.probabilities, s.latency_ms, s.backfilled, s.error "
                      "FROM shadow_predictions s JOIN predictions p USING (prediction_id) ORDER BY p.predicted_at")
    ids = [int(r[0].split("-")[1]) for r in rows]
    expected = [i for i in range(179, 350) if not 200 <= i <= 210]
    assert ids == expected
    assert (stats.scored, stats.backfilled, again.scored) == (len(expected), len([i for i in expected if i < 299]), 0)
    assert all(r[4] == (i < 299) for r, i in zip(rows, ids, strict=True))
    assert all(r[1] == _truth(30 + (i * 7) % 40) and r[5] is None for r, i in zip(rows, ids, strict=True))
    for r, i in zip(rows, ids, strict=True):  # shaped as the served probabilities: {class: p}
        p1 = 0.9 if _truth(30 + (i * 7) % 40) else 0.1
        assert r[2] == {"0": pytest.approx(1 - p1), "1": pytest.approx(p1)}
    assert all(r[3] is not None and r[3] >= 0 for r in rows[:20]) and all(r[3] is None for r in rows[20:])


def test_during_a_ramp_the_champion_scores_the_challengers_requests_only(store: FeedbackStore) -> None:
    """While v2 ramps against v1, each round scores v1 on the requests v2 served since the ramp began (the
    promotion test's covariate), never v1's own requests nor those before the ramp; in the hold, nothing more."""
    _register(store, "v1", Oracle(), stage="champion")
    _register(store, "v2", Oracle(wrong=True), stage="canary")
    ramp_start = T0 + timedelta(minutes=100)
    preds = [prediction(i, prediction_id=f"churn-{i}", model_version="v2" if i % 4 == 0 else "v1",
                        features={"age": 30 + (i * 7) % 40, "plan": "pro"}, prediction=0) for i in range(60, 200)]
    store.write_batch(preds, [])
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
                     " step_started_at, started_at) VALUES ('churn/v2', 'churn', 'v1', 'v2', 's', 'ramping', 0,"
                     " 0.25, %s, %s)", (ramp_start, ramp_start))
        stats = score_round(conn, Registry(), _config(), chunk=7)
        again = score_round(conn, Registry(), _config())
        conn.execute("UPDATE rollouts SET state = 'holding'")
        store.write_batch([prediction(i, prediction_id=f"churn-{i}", model_version="v2") for i in range(200, 220)], [])
        held = score_round(conn, Registry(), _config())
    rows = store.rows("SELECT version, prediction_id, prediction FROM shadow_predictions ORDER BY prediction_id")
    expected = sorted(f"churn-{i}" for i in range(100, 200) if i % 4 == 0)
    assert [r[1] for r in rows] == expected and {r[0] for r in rows} == {"v1"}
    assert all(r[2] == _truth(30 + (int(r[1].split("-")[1]) * 7) % 40) for r in rows)  # v1's answer, not v2's
    assert (stats.scored, again.scored, held.scored) == (len(expected), 0, 0)


def test_a_model_that_raises_on_some_rows_fails_only_those(store: FeedbackStore) -> None:
    """The batch raises, so the rows are scored one by one: each row the model refuses stores its one-line error,
    every other row its prediction."""
    v2 = _champion_and_candidate(store, RaisingOver60())
    _predictions(store, range(60))
    with store.pool.connection() as conn:
        start_shadow(conn, Registry(), _event(v2), _config())
        stats = score_round(conn, Registry(), _config(), timed_rows=5)
    rows = store.rows("SELECT p.features->>'age', s.prediction, s.error FROM shadow_predictions s "
                      "JOIN predictions p USING (prediction_id)")
    assert len(rows) == 60 and stats.failed == sum(int(a) > 60 for a, _, _ in rows) > 0
    for age, predicted, error in rows:
        if int(age) > 60:
            assert predicted is None and error == f"ValueError: age {age} out of range"
        else:
            assert error is None and predicted == _truth(int(age))


def test_a_sleeping_model_slows_only_its_shadow_round(store: FeedbackStore) -> None:
    """While a shadow model sleeps inside its scoring transaction, the ingest writes and commits; the shadow's
    timed rows record the sleep as their latency; another model's shadow is still scored in the same round."""
    SLEEPING.clear()
    RELEASE.clear()
    text = TOML + TOML.replace("churn", "fraud")
    _champion_and_candidate(store, Sleepy())
    _register(store, "v1", Oracle(), name="fraud", stage="champion")
    fraud = _register(store, "v2", Oracle(), name="fraud")
    _predictions(store, range(40))
    _predictions(store, range(40), name="fraud")
    config, registry = _config(text), Registry()
    with store.pool.connection() as conn:
        churn = Registry().get(conn.cursor(), "churn", "v2")
        assert churn is not None
        assert start_shadow(conn, registry, _event(churn), config).outcome == "started"
        assert start_shadow(conn, registry, _event(fraud), config).outcome == "started"
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(stats=score_round(
        store, registry, config, budget_s=0.5, timed_rows=3, models=ShadowModelCache())))
    thread.start()
    try:
        assert SLEEPING.wait(20), "the shadow model was never called"
        store.write_batch([prediction(1000, prediction_id="late-1", model_name="churn")], [])  # the ingest's write
        written_while_asleep = not RELEASE.is_set()
    finally:
        RELEASE.set()
        thread.join(30)
    assert written_while_asleep and store.scalar("SELECT count(*) FROM predictions WHERE prediction_id = 'late-1'")
    latencies = [r[0] for r in store.rows("SELECT latency_ms FROM shadow_predictions WHERE model_name = 'churn' "
                                          "AND latency_ms IS NOT NULL")]
    assert len(latencies) == 3 and min(latencies) >= 300
    assert store.scalar("SELECT count(*) FROM shadow_predictions WHERE model_name = 'fraud'") == 40
    assert (result["stats"].scored, result["stats"].skipped) == (80, [])


def test_a_backlog_larger_than_a_chunk_drains_over_rounds(store: FeedbackStore) -> None:
    """With no time budget a round scores one chunk per shadow; 100 rows take three rounds, the fourth none."""
    v2 = _champion_and_candidate(store)
    _predictions(store, range(100))
    with store.pool.connection() as conn:
        start_shadow(conn, Registry(), _event(v2), _config())
        rounds = [score_round(conn, Registry(), _config(), chunk=40, budget_s=0.0) for _ in range(4)]
    assert [(r.scored, r.out_of_time) for r in rounds] == [(40, True), (40, True), (20, False), (0, False)]
    assert store.scalar("SELECT count(DISTINCT prediction_id) FROM shadow_predictions") == 100


def test_a_resumed_scan_finds_a_late_prediction_at_its_next_full_pass(store: FeedbackStore) -> None:
    """With cursors, a round reads on from where the last one stopped; a prediction that arrives late, behind the
    cursor, is scored at the next full pass of the window."""
    v2 = _champion_and_candidate(store)
    _predictions(store, range(50))
    cursors = ScanCursors(full_pass_rounds=2)
    with store.pool.connection() as conn:
        start_shadow(conn, Registry(), _event(v2), _config())
        scored = [score_round(conn, Registry(), _config(), cursors=cursors).scored]
        _predictions(store, range(50, 60))  # new ones, ahead of the cursor
        _predictions(store, range(45, 46), name="churn-late")  # a late one: predicted at 45 min, behind it
        conn.execute("UPDATE predictions SET model_name = 'churn' WHERE model_name = 'churn-late'")
        scored += [score_round(conn, Registry(), _config(), cursors=cursors).scored for _ in range(3)]
    assert scored == [50, 10, 0, 1]
    assert store.scalar("SELECT count(*) FROM shadow_predictions") == 61


# --- judging -------------------------------------------------------------------------------------------------


def test_judge_round_passes_a_good_candidate_fails_a_bad_one_and_expires_a_starved_one(store: FeedbackStore) -> None:
    """On labels observed after the cutoff, a candidate that beats the champion passes (still in shadow, for the
    ramp), one that is always wrong fails (rejected, alerted, and escalated for its agreement once), and one whose
    labels never suffice expires at its maximum duration (archived); a second look changes nothing."""
    base = TOML.replace('"2h"', '"1d"')  # every prediction in the backfill window
    text = (base + base.replace("churn", "fraud")
            + base.replace("churn", "spam").replace("shadow_min_labels = 100", "shadow_min_labels = 5000\n"
                                                                               "shadow_max_duration = \"2h\""))
    config, registry, sink = _config(text), Registry(), ListSink()
    cutoff = T0 - timedelta(hours=1)
    candidates = {}
    for name, model in (("churn", Oracle()), ("fraud", Oracle(wrong=True)), ("spam", Oracle())):
        _register(store, "v1", Oracle(), name=name, stage="champion")
        candidates[name] = _register(store, "v2", model, name=name, cutoff=cutoff)
        _predictions(store, range(200), name=name, labelled=True)
    with store.pool.connection() as conn:
        for version in candidates.values():
            assert start_shadow(conn, registry, _event(version), config, sink).outcome == "started"
        for name in candidates:
            _predictions(store, range(200, 400), name=name, labelled=True)
        score_round(conn, registry, config)
        judged = {j.model_name: j for j in judge_round(conn, registry, config, sink)}
        assert judge_round(conn, registry, config, sink) == []
    assert {m: j.verdict.status for m, j in judged.items()} == {"churn": "passed", "fraud": "failed",
                                                                 "spam": "expired"}
    assert judged["churn"].verdict.sentence.startswith(
        "passed: challenger error 0 <= 1.10 x champion 0.1 = 0.11 on 400 labelled requests: passed")
    assert judged["spam"].verdict.sentence == "expired: 400 of 5,000 labelled requests after 3.3 h"
    assert dict(store.rows("SELECT model_name, stage FROM model_versions WHERE version = 'v2'")) == {
        "churn": "shadow", "fraud": "rejected", "spam": "archived"}
    assert dict(store.rows("SELECT model_name, status FROM shadows")) == {
        "churn": "passed", "fraud": "failed", "spam": "expired"}
    events = store.rows("SELECT model_name, kind FROM rollout_events WHERE kind <> 'shadow_started' "
                        "ORDER BY event_id")
    assert sorted(events) == [("churn", "shadow_passed"), ("fraud", "shadow_escalated"), ("fraud", "shadow_failed"),
                              ("spam", "shadow_expired")]
    assert sorted(a.kind for a in sink.alerts) == ["shadow_escalated", "shadow_failed"]
    verdict = store.scalar("SELECT verdict FROM shadows WHERE model_name = 'fraud'")
    assert verdict["status"] == "failed" and verdict["challenger_error"] == 1.0 and verdict["n_labelled"] == 400


# --- end to end ----------------------------------------------------------------------------------------------


def test_the_rollout_worker_takes_a_candidate_from_the_broker_and_scores_with_it(
        services, db_schema: str, topics, store: FeedbackStore, unique_name: str, tmp_path: Path) -> None:
    """`pitstop rollout-worker` on the real broker: a candidate event published on the candidates topic starts
    its shadow and the live predictions get scored; a malformed message goes to the dead-letter table (its row
    keyed by the id the broker gave the candidates topic) and topic."""
    import os
    import subprocess
    import sys

    import psutil
    from kafka import KafkaConsumer, KafkaProducer

    from pitstop import stack
    from tests.conftest import wait_until
    from tests.integration.test_pipeline import TOML as RETRAIN_TOML

    config = tmp_path / "pitstop.toml"
    config.write_text(RETRAIN_TOML.replace('promotion = "after-gates"', 'promotion = "shadow"'))
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.normal(45, 10, 400), "plan": rng.choice(["basic", "pro"], 400)})
    from retrain_worker.trainers import linear

    fitted = linear("classification").fit(X, pd.Series((X["age"] > 45).astype(int)), np.ones(400))
    _register(store, "v1", fitted, stage="champion")
    v2 = _register(store, "v2", fitted)
    _predictions(store, range(100))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")} | {
        "PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap, "PITSTOP_DATABASE_URL": services.database_url,
        "PITSTOP_DB_SCHEMA": db_schema, "PITSTOP_TOPIC_PREFIX": topics.prefix, "PITSTOP_APP_ID": unique_name,
        "PITSTOP_CONFIG": str(config), "PITSTOP_STATE_DIR": str(tmp_path / "state")}
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    producer.send(topics.candidates, key=b"churn", value=b"{not json")
    producer.send(topics.candidates, key=b"churn",
                  value=orjson.dumps(candidate_event(v2, "candidate", [], dict(v2.lineage))))
    producer.flush()
    producer.close()
    log_path = tmp_path / "rollout.log"
    # started as an operator starts it: `pitstop rollout-worker` becomes `python -m streams rollout-worker` (the
    # same process: Faust runs only in streams/)
    with open(log_path, "ab") as log:
        started = subprocess.Popen([sys.executable, "-m", "pitstop.cli", "rollout-worker"], env=env,
                                   stdout=log, stderr=log, start_new_session=True)
    worker = stack.ProcessRecord.of(started.pid, "rollout-0", "rollout-worker")
    try:
        def tail() -> str:
            return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

        wait_until(lambda: store.rows("SELECT status FROM shadows") == [("running",)], 60, tail)
        assert psutil.Process(started.pid).cmdline()[1:] == ["-m", "streams", "rollout-worker", "--instance=0"]
        _predictions(store, range(100, 120))  # live traffic after the start
        wait_until(lambda: store.scalar("SELECT count(*) FROM shadow_predictions") == 120, 30, tail)
    finally:
        stack.stop_process(worker, timeout_s=15)
        started.wait(15)  # reaped here: the Popen is ours
    assert store.rows("SELECT status FROM shadows") == [("running",)]
    assert store.scalar("SELECT count(*) FROM shadow_predictions WHERE error IS NOT NULL") == 0
    [(reason, topic_id)] = store.rows("SELECT reason, source_topic_id FROM dead_letters")
    assert reason.startswith("not_json: ")
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        (described,) = admin.describe_topics([topics.candidates])
    finally:
        admin.close()
    assert topic_id == described["topic_id"]
    consumer = KafkaConsumer(topics.dead_letter, bootstrap_servers=services.kafka_bootstrap,
                             auto_offset_reset="earliest")
    letters: list[dict[str, Any]] = []
    try:
        wait_until(lambda: letters.extend(orjson.loads(r.value) for rs in consumer.poll(200).values() for r in rs)
                   or letters, 15, lambda: "no dead letter on the topic")
    finally:
        consumer.close()
    assert [d["reason"] for d in letters] == [reason]
    assert store.scalar("SELECT count(*) FROM shadow_predictions WHERE backfilled") == 99  # 99 min: the start
