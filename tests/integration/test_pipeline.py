"""A retrain from trigger to outcome on the real database: trained on the new concept, gated, registered with
its artifact, the candidate event in the outbox, the outcome recorded once; failures and bad data recorded with
their reasons."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from feedback.config import parse_config
from feedback.registry.versions import Registry
from feedback.store import FeedbackStore, connect_kwargs, lock_key
from feedback.triggers.engine import PostgresLedger
from retrain_worker.dataset import DatasetSpec, load_dataset, load_stretches
from retrain_worker.intake import TriggerEvent, decode_trigger
from retrain_worker.pipeline import (
    BEST_LEVEL_BLOCKS,
    RetrainPipeline,
    best_level_starts,
    production_best,
    stored_production_best,
)
from tests.factories import T0, outcome, prediction

TOML = """
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
window = "1h"
[models.churn.retrain]
budget = "120s"
min_train_rows = 1000
min_test_rows = 200
# one recipe: the search over recency in labels trains four models more a retrain (a process each); it is
# tested with it on in test_retrain_recipe.py
recency_search = []
promotion = "after-gates"
"""
CHANGE = T0 + timedelta(hours=6)
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "candidate.schema.json").read_text())


def _concept_change(store: FeedbackStore, hours: int = 12, per_hour: int = 600) -> None:
    """Labels follow age before CHANGE and tenure after it; the served model still follows age."""
    rng = random.Random(3)
    preds, labels = [], []
    for i in range(hours * per_hour):
        at = T0 + timedelta(seconds=i * 3600 / per_hour)
        age, tenure = rng.gauss(40, 10), rng.gauss(24, 12)
        p_age = 1 / (1 + 2.718 ** (-(age - 40) / 4))
        preds.append(prediction(i, predicted_at=at, features={"age": age, "tenure": tenure,
                                                              "plan": rng.choice(["basic", "pro"])},
                                prediction=int(p_age > 0.5), probabilities={"0": 1 - p_age, "1": p_age},
                                segment={"region": rng.choice(["eu", "us"])}))
        signal = tenure - 24 if at >= CHANGE else age - 40
        labels.append(outcome(i, label=int(signal + rng.gauss(0, 4) > 0), observed_at=at + timedelta(minutes=5)))
    store.write_batch(preds, labels)


def _trigger(kind: str = "drift", hours_after: int = 12) -> TriggerEvent:
    return TriggerEvent(trigger_id=f"churn/{kind}/v1/{CHANGE:%Y-%m-%dT%H:%M:%SZ}", model_name="churn",
                        model_version="v1", kind=kind, urgency="elevated",
                        decided_at=T0 + timedelta(hours=hours_after), change_point=CHANGE if kind == "drift" else None,
                        labels_since_change=3600, reason="drift on 1 of 3 features", requested_by=None)


def test_a_drift_trigger_makes_a_gated_candidate_trained_on_the_new_concept(store: FeedbackStore) -> None:
    """The candidate trains only on rows since the change point, beats the served model on the recent window,
    becomes champion (promotion after-gates), and its event is in the outbox; the same trigger again changes
    nothing."""
    _concept_change(store)
    config = parse_config(TOML)
    pipeline = RetrainPipeline(store, config)
    result = pipeline.handle(_trigger())
    assert result.result == "candidate", result.sentence
    assert result.lineage["train_window"][0] >= CHANGE.isoformat()
    names = {g.name for g in result.gates if g.passed}
    assert {"log_loss_vs_champion", "auc_error_vs_champion"} <= names, [g.sentence for g in result.gates]
    with store.pool.connection() as conn, conn.cursor() as cur:
        champion = Registry().champion(cur, "churn")
        assert champion is not None and champion.version == result.version
        model = Registry().load(cur, champion)
    [(step, detail)] = store.rows("SELECT step, detail FROM retrain_progress")
    assert (step, detail) == ("done", f"candidate: {result.sentence}")
    [(event,)] = store.rows("SELECT payload FROM outbox WHERE topic = 'candidates'")
    jsonschema.Draft202012Validator(SCHEMA).validate(event)
    assert event["artifact_sha256"] == champion.artifact.hexdigest and event["stage"] == "champion"
    assert store.rows("SELECT outcome FROM retrain_outcomes") == [("candidate",)]
    assert hasattr(model, "predict_proba")
    # monitoring of the new version starts from its training data: a profile of its features, its own
    # predictions and scores, and the labels, counted over the training rows
    [(source, n_rows, series)] = store.rows(
        "SELECT source, n_rows, (SELECT array_agg(s->>'name' ORDER BY s->>'name') FROM "
        "jsonb_array_elements(profile->'series') s) FROM reference_profiles WHERE model_version = %s",
        (result.version,))
    assert source == f"training data of {_trigger().trigger_id}"
    # the registered model is the gated recipe fitted again with the recent window (final_fit = "all")
    assert result.lineage["final_fit"] == {"rows": result.lineage["train_rows"] + result.lineage["test_rows"],
                                           "recent_window": True}
    assert n_rows == result.lineage["final_fit"]["rows"]
    # its tested level (the gated recipe on the recent window, before the refit): the floor of its baseline
    expected = result.lineage["expected"]
    assert expected["metric"] == config.models["churn"].metric and expected["n"] == result.lineage["test_rows"]
    assert expected["ci_low"] < expected["value"] < expected["ci_high"]
    assert series == ["__label__", "__prediction__", "__score__", "age", "plan", "tenure"]

    again = pipeline.handle(_trigger())
    assert again.result == "candidate" and again.version is None  # the stored outcome, nothing redone
    assert store.scalar("SELECT count(*) FROM model_versions") == 1
    assert store.scalar("SELECT count(*) FROM outbox") == 1


def test_a_trainer_that_raises_fails_the_trigger_with_its_reason(store: FeedbackStore) -> None:
    """A broken trainer makes a failed outcome naming it; no version is registered, no event is written."""
    _concept_change(store, hours=6)
    config = parse_config(TOML.replace('budget = "120s"',
                                       'budget = "120s"\ntrainer = "tests.trainer_fixtures:raising"'))
    result = RetrainPipeline(store, config).handle(_trigger(kind="manual"))
    assert result.result == "failed" and "tests.trainer_fixtures:raising" in result.sentence
    assert "\n" not in result.sentence
    assert store.scalar("SELECT count(*) FROM model_versions") == 0
    assert store.rows("SELECT outcome, sentence FROM retrain_outcomes") == [("failed", result.sentence)]


def test_retrain_wait_follows_the_training_to_its_outcome(services, db_schema, store: FeedbackStore, tmp_path,
                                                          pitstop_main) -> None:
    """`pitstop retrain --wait` follows the training its request starts, as the retrain worker's pipeline records it:
    with no worker it gives up after its wait (exit 1, the request stands), and a second request held back by it
    is not followed; the first request again follows the pipeline through to its candidate (exit 0), whose version
    --json names as the registry does."""
    _concept_change(store)
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    env = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
           "PITSTOP_CONFIG": str(config), "PITSTOP_STATE_DIR": str(tmp_path / "state")}
    request = ("retrain", "--model", "churn", "--reason", "new plan tiers", "--id", "r-1", "--by", "ana", "--json")
    alone = pitstop_main(env, *request, "--wait", "1")
    assert alone.returncode == 1, alone
    doc = json.loads(alone.stdout)
    assert (doc["status"], doc["training"]["outcome"]) == ("fired", "timeout"), doc
    assert "(no retrain worker has taken it); the request stands" in doc["training"]["sentence"]
    behind = pitstop_main(env, "retrain", "--model", "churn", "--reason", "other", "--id", "r-2", "--json",
                          "--wait", "1")  # r-1 counts as a running training: r-2 is held back, nothing to follow
    doc = json.loads(behind.stdout)
    assert behind.returncode == 1 and (doc["status"], doc["training"]) == ("suppressed", None), doc
    assert doc["suppressed_by"] == "a training for this model is already running (trigger churn/manual/r-1)", doc

    [(payload,)] = store.rows("SELECT payload FROM outbox WHERE topic = 'retrain-triggers'")
    trigger = decode_trigger(json.dumps(payload).encode())
    assert trigger.trigger_id == "churn/manual/r-1"
    results: list[Any] = []

    def worker() -> None:  # the retrain worker's pipeline, a moment after the command starts following
        time.sleep(1.0)
        results.append(RetrainPipeline(store, parse_config(TOML)).handle(trigger))

    thread = threading.Thread(target=worker)
    thread.start()
    followed = pitstop_main(env, *request, "--wait", "120")
    thread.join()
    assert followed.returncode == 0, followed
    doc = json.loads(followed.stdout)
    [result] = results
    [(version,)] = store.rows("SELECT version FROM model_versions WHERE trigger_id = %s", (trigger.trigger_id,))
    assert doc["training"]["outcome"] == "candidate" and doc["training"]["version"] == version == result.version
    assert doc["training"]["waited_s"] >= 1.0, doc["training"]  # it waited for the worker, then read its outcome
    assert doc["training"]["sentence"] == f"churn: training candidate ({version}): {result.sentence}"
    assert doc["already_recorded_at"] is not None  # one request, followed twice


def test_too_little_data_is_rejected_before_training(store: FeedbackStore) -> None:
    """With fewer rows since the change than the minimum, the retrain is rejected with the data check's sentence."""
    _concept_change(store, hours=7)
    result = RetrainPipeline(store, parse_config(TOML)).handle(_trigger(hours_after=7))
    assert result.result == "rejected" and result.sentence.startswith("data checks failed: ")
    assert "training rows (weight > 0) < minimum 1,000" in result.sentence
    assert store.rows("SELECT outcome FROM retrain_outcomes") == [("rejected",)]


def test_a_trigger_event_on_the_broker_becomes_a_candidate_event(services, db_schema, topics, store: FeedbackStore,
                                                                   tmp_path: Path) -> None:
    """End to end on the real broker: a trigger published on the trigger topic is answered by the retrain worker,
    whose candidate event (schema-valid, pointing at the registered artifact) arrives on the candidates topic, and
    the trigger's offset is committed after its outcome."""
    import threading

    import orjson
    from kafka import KafkaConsumer, KafkaProducer

    from feedback.triggers.engine import Decision, trigger_event
    from pitstop import retrain_service
    from pitstop.settings import Settings
    from tests.conftest import wait_until

    _concept_change(store)
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    settings = Settings.from_env({"PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
                                  "PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
                                  "PITSTOP_TOPIC_PREFIX": topics.prefix, "PITSTOP_CONFIG": str(config),
                                  "PITSTOP_APP_ID": db_schema, "PITSTOP_STATE_DIR": str(tmp_path / "state")})
    trigger = _trigger()
    event = trigger_event(Decision(
        decision_id=trigger.trigger_id, model_name="churn", model_version="v1", kind="drift", urgency="elevated",
        status="fired", sentence=trigger.reason, decided_at=trigger.decided_at, change_point=trigger.change_point,
        labels_since_change=trigger.labels_since_change))
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    producer.send(topics.retrain_triggers, key=b"churn", value=orjson.dumps(event))
    producer.flush()
    producer.close()
    stop = threading.Event()
    worker = threading.Thread(target=retrain_service.run, args=(settings,), kwargs={"should_stop": stop.is_set})
    worker.start()
    try:
        wait_until(lambda: store.scalar("SELECT count(*) FROM outbox WHERE topic = 'candidates' "
                                        "AND sent_at IS NOT NULL") == 1, 120,
                   lambda: f"{store.rows('SELECT * FROM retrain_outcomes')}")
    finally:
        stop.set()
        worker.join(timeout=30)
    consumer = KafkaConsumer(topics.candidates, bootstrap_servers=services.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=2000)
    events = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert len(events) == 1, events
    jsonschema.Draft202012Validator(SCHEMA).validate(events[0])
    assert events[0]["trigger_id"] == trigger.trigger_id
    assert events[0]["artifact_sha256"] == store.scalar("SELECT encode(sha256, 'hex') FROM model_artifacts")
    group = KafkaConsumer(bootstrap_servers=services.kafka_bootstrap, group_id=retrain_service.retrain_group(settings),
                          enable_auto_commit=False)
    from kafka.structs import TopicPartition

    committed = [group.committed(TopicPartition(topics.retrain_triggers, p)) for p in range(4)]
    group.close()
    assert sum(c or 0 for c in committed) == 1  # the one trigger, committed after its outcome


def test_one_training_per_model_across_workers(store: FeedbackStore) -> None:
    """While another worker holds the model's training lock, a trigger of that model waits (ModelBusy) and
    nothing is recorded; once the lock is free it is answered."""
    import psycopg

    from retrain_worker.pipeline import RETRAIN_LOCK_CLASS, ModelBusy

    _concept_change(store, hours=7)
    pipeline = RetrainPipeline(store, parse_config(TOML))
    with psycopg.connect(store.database_url, **connect_kwargs(store.schema)) as other:  # a worker of this store
        other.execute(f"SELECT pg_advisory_lock(%s, {lock_key()})", (RETRAIN_LOCK_CLASS, "churn"))
        with pytest.raises(ModelBusy, match="being trained by another worker"):
            pipeline.handle(_trigger(hours_after=7))
        assert store.scalar("SELECT count(*) FROM retrain_outcomes") == 0
        # released here: closing the connection releases it too, but the server ends the session after the
        # client has gone on (a race)
        other.execute(f"SELECT pg_advisory_unlock(%s, {lock_key()})", (RETRAIN_LOCK_CLASS, "churn"))
    assert pipeline.handle(_trigger(hours_after=7)).result == "rejected"  # too few rows: but answered now


def test_a_worker_killed_mid_training_leaves_the_champion_and_the_trigger_for_the_next(
        services, db_schema, topics, store: FeedbackStore, tmp_path: Path) -> None:
    """SIGKILL while the trainer runs: no version, no outcome, the offset not committed; a restarted worker
    answers the redelivered trigger."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    import orjson
    import psutil
    from kafka import KafkaProducer

    from feedback.triggers.engine import Decision, trigger_event
    from tests.conftest import wait_until
    from tests.trainer_fixtures import HELPER_PID_FILE

    _concept_change(store)
    trigger = _trigger()
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    producer.send(topics.retrain_triggers, key=b"churn", value=orjson.dumps(trigger_event(Decision(
        decision_id=trigger.trigger_id, model_name="churn", model_version="v1", kind="drift", urgency="elevated",
        status="fired", sentence=trigger.reason, decided_at=trigger.decided_at, change_point=trigger.change_point,
        labels_since_change=trigger.labels_since_change))))
    producer.flush()
    producer.close()

    def start(toml: str) -> subprocess.Popen[bytes]:
        config = tmp_path / f"pitstop-{len(toml)}.toml"
        config.write_text(toml)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
        env.update(PITSTOP_KAFKA_BOOTSTRAP=services.kafka_bootstrap, PITSTOP_DATABASE_URL=services.database_url,
                   PITSTOP_DB_SCHEMA=db_schema, PITSTOP_TOPIC_PREFIX=topics.prefix, PITSTOP_CONFIG=str(config),
                   PITSTOP_APP_ID=db_schema, PITSTOP_STATE_DIR=str(tmp_path / "state"))
        env[HELPER_PID_FILE] = str(helper_pid)  # written by the hanging trainer from within its fit
        with open(tmp_path / "worker.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "pitstop.cli", "retrain-worker"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    helper_pid = tmp_path / "helper.pid"
    hanging = start(TOML.replace('budget = "120s"', 'budget = "120s"\ntrainer = "tests.trainer_fixtures:hanging"'))
    trainer: list[psutil.Process] = []
    try:
        wait_until(lambda: store.scalar("SELECT count(*) FROM retrain_intake") == 1, 60,
                   lambda: (tmp_path / "worker.log").read_text())
        # inside the trainer's fit now: it has started its helper process and written the helper's pid
        wait_until(lambda: helper_pid.exists() and helper_pid.read_text().strip(), 60,
                   lambda: (tmp_path / "worker.log").read_text())
        trainer = psutil.Process(hanging.pid).children(recursive=True)
        assert trainer, "no trainer process was running"
        os.killpg(hanging.pid, signal.SIGKILL)
    finally:
        hanging.wait(timeout=30)
    for orphan in trainer:  # the trainer's process group is its own: it is stopped as its worker would stop it
        with contextlib.suppress(psutil.NoSuchProcess):
            orphan.kill()
    assert store.scalar("SELECT count(*) FROM retrain_outcomes") == 0
    assert store.scalar("SELECT count(*) FROM model_versions") == 0
    record = tmp_path / "state" / "run" / "trainer-servers" / str(hanging.pid)
    left = Path(record.read_text())
    assert left.name.startswith("pymp-") and left.is_dir()  # the killed worker's trainer server's, left behind
    worker = start(TOML)
    try:
        wait_until(lambda: store.scalar("SELECT count(*) FROM retrain_outcomes") == 1, 120,
                   lambda: (tmp_path / "worker.log").read_text()[-3000:])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert store.rows("SELECT outcome FROM retrain_outcomes") == [("candidate",)]
    assert store.scalar("SELECT stage FROM model_versions") == "champion"
    assert not left.exists() and not record.exists()  # removed by the next worker's start


def _concepts(store: FeedbackStore, schedule: list[tuple[int, int, str]], per_hour: int = 600) -> None:
    """(first hour, last hour, 'age' or 'tenure'): which feature the labels follow; the served model knows nothing
    (probability 0.5), so any learned concept beats it."""
    rng = random.Random(11)
    preds, labels = [], []
    for first, last, concept in schedule:
        for i in range(first * per_hour, last * per_hour):
            at = T0 + timedelta(seconds=i * 3600 / per_hour)
            age, tenure = rng.gauss(40, 10), rng.gauss(24, 12)
            preds.append(prediction(i, predicted_at=at, features={"age": age, "tenure": tenure},
                                    prediction=int(rng.random() < 0.5), probabilities={"0": 0.5, "1": 0.5},
                                    segment={"region": "eu"}))
            signal = age - 40 if concept == "age" else tenure - 24
            labels.append(outcome(i, label=int(signal + rng.gauss(0, 4) > 0),
                                  observed_at=at + timedelta(minutes=5)))
    store.write_batch(preds, labels)


def test_the_pool_proposes_a_former_champion_when_a_concept_returns(store: FeedbackStore) -> None:
    """Concept A, then B, then A again: the champion trained on A, replaced by one trained on B, is proposed again
    when A returns, because it beats a model trained on the few rows since the return."""
    _concepts(store, [(0, 6, "age"), (6, 12, "tenure"), (12, 14, "age")])
    config = parse_config(TOML.replace("min_train_rows = 1000", "min_train_rows = 500").replace(
        'promotion = "after-gates"', 'promotion = "after-gates"\n[models.churn.retrain.gates]\nleakage_ratio = 0.05\n'
        # the served "model" is a constant 0.5, calibrated in aggregate; a tree model on 2,400 rows is not quite
        'calibration_tolerance = 0.05'))
    pipeline = RetrainPipeline(store, config)

    def trigger(n: int, hours: float, change: float | None) -> TriggerEvent:
        at = T0 + timedelta(hours=hours)
        return TriggerEvent(trigger_id=f"churn/t{n}", model_name="churn", model_version="v1",
                            kind="drift" if change is not None else "manual", urgency="elevated", decided_at=at,
                            change_point=None if change is None else T0 + timedelta(hours=change),
                            labels_since_change=None, reason="test", requested_by=None)

    first = pipeline.handle(trigger(1, 6, None))  # learns A
    second = pipeline.handle(trigger(2, 12, 6))  # learns B since the change
    assert (first.result, second.result) == ("candidate", "candidate"), (
        second.sentence, [g.sentence for g in second.gates if not g.passed])
    third = pipeline.handle(trigger(3, 13.5, 12))  # A returns: 900 rows since
    assert third.result == "candidate" and third.version == first.version, third.sentence
    assert f"model pool: former champion {first.version}" in third.sentence
    assert third.lineage["pool"][first.version] < third.lineage["pool"]["fresh"]
    stages = dict(store.rows("SELECT version, stage FROM model_versions"))
    assert stages == {first.version: "champion", second.version: "previous"}
    events = [p for (p,) in store.rows("SELECT payload FROM outbox WHERE topic = 'candidates' ORDER BY id")]
    assert [e["version"] for e in events] == [first.version, second.version, first.version]
    assert events[2]["candidate_id"] == f"churn/{first.version}@churn/t3" and events[2]["trigger_id"] == "churn/t3"
    for event in events:
        jsonschema.Draft202012Validator(SCHEMA).validate(event)


def test_the_held_out_set_is_frozen_once_then_gated_on_and_never_trained_on(store: FeedbackStore) -> None:
    """The first retrain freezes 200 rows before its recent window (no gate on them: the served model may have
    seen them); the next gates on them as "holdout", beside the recent window, and trains without them."""
    _concepts(store, [(0, 12, "age")])
    config = parse_config(TOML.replace('promotion = "after-gates"', 'promotion = "after-gates"\nholdout_rows = 200\n'
                                       '[models.churn.retrain.gates]\ncalibration_tolerance = 0.05\n'
                                       'leakage_ratio = 0.05'))  # the served "model" is a coin
    pipeline = RetrainPipeline(store, config)

    def manual(n: int, hours: int) -> TriggerEvent:
        return TriggerEvent(trigger_id=f"churn/manual/{n}", model_name="churn", model_version=None, kind="manual",
                            urgency="routine", decided_at=T0 + timedelta(hours=hours), change_point=None,
                            labels_since_change=None, reason="test", requested_by="ana")

    first = pipeline.handle(manual(1, 6))
    assert first.result == "candidate", first.sentence
    [(holdout_id, ids, created)] = store.rows("SELECT holdout_id, prediction_ids, created_at FROM holdout_sets")
    assert len(ids) == 200 and created == T0 + timedelta(hours=6)
    assert first.lineage["holdout"]["frozen"]["rows"] == 200 and first.lineage["holdout"]["used"] is None
    assert "holdout" not in {g.set_name for g in first.gates}
    # 3,551 labelled rows at the cutoff: about 710 recent, 200 held out (of at least 2,000), the rest trained on
    loaded = store.scalar("SELECT count(*) FROM predictions p WHERE predicted_at < %s AND EXISTS (SELECT 1 FROM "
                          "outcomes o WHERE o.prediction_id = p.prediction_id AND o.observed_at <= %s)",
                          (T0 + timedelta(hours=6), T0 + timedelta(hours=6)))
    assert first.lineage["rows_loaded"] == loaded == 3551  # observed at or before the cutoff
    assert first.lineage["train_rows"] == loaded - first.lineage["test_rows"] - 200
    second = pipeline.handle(manual(2, 12))
    assert second.result == "candidate", second.sentence
    assert second.lineage["holdout"]["used"]["holdout_id"] == holdout_id
    assert second.lineage["train_rows"] == second.lineage["rows_loaded"] - second.lineage["test_rows"] - 200
    holdout_gates = store.rows("SELECT name, passed, sample_size FROM model_gate_results "
                               "WHERE version = %s AND set_name = 'holdout'", (second.version,))
    assert {"log_loss_vs_champion", "calibration"} <= {n for n, _, _ in holdout_gates}
    assert {size for _, _, size in holdout_gates if size is not None} == {200}
    assert store.scalar("SELECT count(*) FROM holdout_sets") == 1  # not due for a refresh within 7 days


def test_a_pool_look_proposes_a_former_champion_without_training(store: FeedbackStore) -> None:
    """A, then B, then A again: 300 rows after A returns, a "pool" trigger proposes the champion trained on A
    (it beats the B model on them), trains nothing and freezes nothing; a second look, with that champion back,
    finds no former champion better and records "unchanged", which the circuit breaker does not count."""

    _concepts(store, [(0, 6, "age"), (6, 12, "tenure"), (12, 14, "age")])
    config = parse_config(TOML.replace("min_train_rows = 1000", "min_train_rows = 500").replace(
        'promotion = "after-gates"', 'promotion = "after-gates"\n[models.churn.retrain.gates]\nleakage_ratio = 0.05\n'
        'calibration_tolerance = 0.05'))
    pipeline = RetrainPipeline(store, config)

    def trigger(n: int, kind: str, hours: float, change: float | None) -> TriggerEvent:
        return TriggerEvent(trigger_id=f"churn/t{n}", model_name="churn", model_version="v1", kind=kind,
                            urgency="elevated", decided_at=T0 + timedelta(hours=hours),
                            change_point=None if change is None else T0 + timedelta(hours=change),
                            labels_since_change=None, reason="test", requested_by=None)

    a = pipeline.handle(trigger(1, "manual", 6, None))
    b = pipeline.handle(trigger(2, "drift", 12, 6))
    assert (a.result, b.result) == ("candidate", "candidate"), (a.sentence, b.sentence)
    versions, holdouts = store.scalar("SELECT count(*) FROM model_versions"), store.scalar(
        "SELECT count(*) FROM holdout_sets")
    back = pipeline.handle(trigger(3, "pool", 12.6, 12))  # 360 rows since A returned, 5 minutes' labels short
    assert back.result == "candidate" and back.version == a.version, back.sentence
    assert back.sentence.startswith(f"{a.version}: model pool: former champion {a.version} (log loss ")
    assert "beats the champion (log loss" in back.sentence and "rows since the change" in back.sentence
    with store.pool.connection() as conn, conn.cursor() as cur:
        assert Registry().champion(cur, "churn").version == a.version  # type: ignore[union-attr]
    assert store.scalar("SELECT count(*) FROM model_versions") == versions  # nothing trained
    assert store.scalar("SELECT count(*) FROM holdout_sets") == holdouts  # nor froze anything
    again = pipeline.handle(trigger(4, "pool", 13, 12))
    assert again.result == "unchanged"
    assert again.sentence.startswith(f"model pool: no former champion clearly beats the champion {a.version}")
    with store.pool.connection() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, recorded_at) VALUES "
                    "('r1', 'churn', 'rejected', now() - interval '3 minutes'), "
                    "('r2', 'churn', 'rejected', now() + interval '1 minute')")
        history = PostgresLedger(cur, max_training_s={}).history("churn", T0 + timedelta(hours=14))
    assert history.rejected_in_row == 1  # r2, then "unchanged" skipped, then candidates break the run




CHURN, MODE, ETA = (parse_config("""
[models.churn]
task = "classification"
positive_class = 1
[models.mode]
task = "classification"
[models.eta]
task = "regression"
""").models[name] for name in ("churn", "mode", "eta"))
SCORED = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\nscore = "score"').models["churn"]


def _served_history(store: FeedbackStore, decided: datetime, change: datetime, history: datetime) -> None:
    """For "churn" (binary), "mode" (3 classes) and "eta" (regression): 3,000 predictions between ``history`` and
    ``change``, ten to an instant, with ids that sort neither by time nor by number, served better in some
    stretches than in others; 5% never labelled, 5% labelled only after ``decided``, 5% corrected after it; 300
    predictions after the change; and 200 before ``history``, served perfectly (a loader that read them, or the
    late labels, would find another best level)."""
    rng = np.random.default_rng(7)
    classes = ("bike", "bus", "car")
    n, after, before = 3_000, 300, 200
    preds, labels = [], []
    for name in ("churn", "mode", "eta"):
        for i in range(-before, n + after):
            at = (history + timedelta(minutes=i) if i < 0 else history + (change - history) * (i // 10) / (n // 10)
                  if i < n else change + (decided - change) * (i - n) / (after + 1))
            quality = 1.0 if i < 0 else 0.5 + 0.5 * math.sin(i / 170.0)  # 1: served right and sure
            pid = f"{name}-{(i * 7919) % 100_003:x}"
            served: dict[str, Any]
            if name == "eta":
                truth: Any = float(rng.normal(20, 5))
                served = {"prediction": truth + (1 - quality) * float(rng.normal(0, 8))}
                wrong: Any = truth + 100.0
            elif name == "mode":
                truth = str(rng.choice(classes))
                top = truth if rng.random() < 0.4 + 0.6 * quality else str(rng.choice(classes))
                p_top = 0.34 + 0.6 * quality * float(rng.random())
                served = {"prediction": top, "probabilities": {c: p_top if c == top else (1 - p_top) / 2
                                                               for c in classes}}
                wrong = classes[(classes.index(truth) + 1) % 3]
            else:
                truth = int(rng.random() < 0.4)
                p1 = float(np.clip(0.5 + (truth - 0.5) * quality * 0.9 + rng.normal(0, 0.1), 0.01, 0.99))
                served = {"prediction": int(p1 >= 0.5), "probabilities": {"0": 1 - p1, "1": p1},
                          "score": float(np.clip(p1 + rng.normal(0, 0.05), 0.01, 0.99))}
                wrong = 1 - truth
            preds.append(prediction(0, prediction_id=pid, model_name=name, predicted_at=at, features={"x": i},
                                    **served))
            fate = rng.random()
            if fate < 0.05:
                continue  # never labelled
            seen = decided + timedelta(minutes=1) if fate < 0.10 else at + timedelta(minutes=1)
            labels.append(outcome(0, prediction_id=pid, label=truth, observed_at=seen))
            if fate > 0.95:  # corrected after the cutoff: the label as it stood at the cutoff counts
                labels.append(outcome(0, prediction_id=pid, label=wrong, observed_at=decided + timedelta(hours=1)))
    store.write_batch(preds, labels)


def test_production_best_from_the_store_equals_it_over_the_whole_history(store: FeedbackStore) -> None:
    """Production's best level as the pool look reads it from the store (only the rows of the stretches it scores,
    without features) is exactly production_best over the history loaded whole, as load_dataset loads it, for a
    binary model (by probabilities and by score), a multiclass one and a regression: stretches of the 300-odd rows
    since the change (as the pool look passes them: end to end), of 40 and 7 rows (50 stretches, gaps between
    them), the whole history as one stretch, and one row longer (none)."""
    decided, change, history = T0 + timedelta(days=3), T0 + timedelta(days=2), T0
    _served_history(store, decided, change, history)
    with store.pool.connection() as conn:
        for model in (CHURN, SCORED, MODE, ETA):
            frame = load_dataset(conn, DatasetSpec(model_name=model.name, cutoff=decided, since=history)).frame
            before, since = frame[frame["predicted_at"] < change], frame[frame["predicted_at"] >= change]
            assert 2_500 < len(before) < 2_900 and 250 < len(since) < 300  # the labelled ones at the cutoff
            for block in (len(since), 40, 7, len(before), len(before) + 1):
                expected = production_best(model, before, block)
                assert (expected == (None, None)) == (block > len(before)), (model.name, block)
                found = stored_production_best(conn, model, cutoff=decided, since=history, until=change, block=block)
                assert found == expected, (model.name, model.score, block)
                starts = best_level_starts(len(before), block)
                stretches = load_stretches(conn, model.name, cutoff=decided, since=history, until=change,
                                           block=block, starts=lambda _, s=starts: s)
                assert [len(s) for s in stretches] == [block] * len(starts) and len(starts) <= BEST_LEVEL_BLOCKS


MODE_TOML = """
[models.mode]
task = "classification"
metric = "macro_f1"
window = "1h"
[models.mode.retrain]
budget = "120s"
min_train_rows = 800
min_test_rows = 200
recency_search = []
promotion = "after-gates"
"""


def test_a_multiclass_model_is_retrained_on_its_new_concept_and_gated(store: FeedbackStore) -> None:
    """A 3-class model (no positive_class) whose concept changes is retrained by the default trainer on the rows
    since the change; the multiclass gates (log loss of the true class, macro AUC, top-label ECE) pass it against
    the served predictions, and its profile's score series is its top-label confidence."""
    rng = random.Random(5)
    classes = ("bike", "bus", "car")
    preds, labels = [], []
    for i in range(10 * 300):
        at = T0 + timedelta(seconds=i * 12)
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        served = classes[0 if a < -0.5 else 1 if a < 0.5 else 2]
        preds.append(prediction(i, model_name="mode", predicted_at=at, features={"a": a, "b": b}, prediction=served,
                                probabilities={c: 0.8 if c == served else 0.1 for c in classes}, segment={}))
        signal = b if at >= CHANGE else a
        truth = classes[0 if signal < -0.5 else 1 if signal < 0.5 else 2]
        if rng.random() < 0.05:
            truth = rng.choice(classes)
        labels.append(outcome(i, label=truth, observed_at=at + timedelta(minutes=5)))
    store.write_batch(preds, labels)
    trigger = TriggerEvent(trigger_id=f"mode/drift/v1/{CHANGE:%Y-%m-%dT%H:%M:%SZ}", model_name="mode",
                           model_version="v1", kind="drift", urgency="elevated", decided_at=T0 + timedelta(hours=10),
                           change_point=CHANGE, labels_since_change=1200, reason="drift", requested_by=None)
    result = RetrainPipeline(store, parse_config(MODE_TOML)).handle(trigger)
    assert result.result == "candidate", result.sentence
    ratio = next(g for g in result.gates if g.name == "log_loss_vs_champion" and g.set_name == "recent")
    assert ratio.passed and ratio.observed < 0.5 * ratio.threshold, ratio.sentence  # far better than the stale one
    assert any(g.name == "calibration" and g.passed for g in result.gates)
    [(series,)] = store.rows("SELECT profile FROM reference_profiles WHERE model_version = %s", (result.version,))
    score = next(s for s in series["series"] if s["name"] == "__score__")
    assert sum(score["counts"]) == result.lineage["final_fit"]["rows"] and score["edges"][0] > 1 / 3
