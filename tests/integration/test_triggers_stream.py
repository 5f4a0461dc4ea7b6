"""End to end on the real broker and database: a worker streams a drifting workload and publishes exactly one
retrain trigger with its evidence and change point; a stable workload of the same size publishes none."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
from kafka import KafkaConsumer

from feedback.store import FeedbackStore
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from tests.conftest import Services, wait_until
from tests.factories import DRIFT_HOUR, PER_HOUR, T0, drifting_hour
from tests.integration.test_triggers import TOML

HOURS = 10
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "retrain_trigger.schema.json").read_text())


def _stream(services: Services, topics: Topics, *, drift: bool) -> None:
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=500) as producer:
        for hour in range(HOURS):
            preds, labels = drifting_hour(hour, drift=drift, seed=7)
            producer.publish_many([*preds, *labels])


def _settled(store: FeedbackStore) -> Callable[[], bool]:
    """Every event counted and a round has judged the last window."""
    def check() -> bool:
        labelled = store.scalar("SELECT coalesce(sum((stats->>'n')::int), 0) FROM window_performance"
                                " WHERE segment = '*'")
        judged = store.scalar("SELECT max(window_start) FROM monitor_results WHERE kind = 'performance' "
                              "AND status <> 'unjudged'")
        return labelled == HOURS * PER_HOUR and judged == T0 + timedelta(hours=HOURS - 1)
    return check


def _triggers(services: Services, topics: Topics) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(topics.retrain_triggers, bootstrap_servers=services.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=1500)
    try:
        return [json.loads(m.value) | {"_key": m.key} for m in consumer]
    finally:
        consumer.close()


def test_a_drifting_stream_publishes_exactly_one_trigger(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The worker decides on its rounds and its relay publishes one schema-valid trigger whose change point is the
    drift's first window and whose evidence names the drifted features."""
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    ingest = start_worker(PITSTOP_CONFIG=str(config), wait=False)  # both start at once: neither waits for the other
    monitor = start_worker(kind="monitor", PITSTOP_CONFIG=str(config), PITSTOP_MONITOR_INTERVAL_S="1", wait=False)
    ingest.wait_ready()
    monitor.wait_ready()

    def tail() -> str:  # what both logged, for a failure's message
        return f"ingest:\n{ingest.log_tail()}\nmonitor:\n{monitor.log_tail()}"

    _stream(services, topics, drift=True)
    wait_until(_settled(store), 120, lambda: tail())
    wait_until(lambda: store.scalar("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 1, 30,
               lambda: f"{store.rows('SELECT * FROM retrain_decisions')}\n{tail()}")
    time.sleep(3)  # more rounds: still one
    events = _triggers(services, topics)
    assert len(events) == 1, events
    event = events[0]
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(
        {k: v for k, v in event.items() if k != "_key"})
    change = T0 + timedelta(hours=DRIFT_HOUR)
    assert event["_key"] == b"churn" and event["kind"] == "drift" and event["urgency"] == "elevated"
    assert event["trigger_id"] == f"churn/drift/v1/{change:%Y-%m-%dT%H:%M:%SZ}"
    assert event["change_point"] == change.isoformat().replace("+00:00", "Z")
    assert event["labels_since_change"] >= 5000
    first = event["evidence"]["windows"][0]
    assert first["window_start"] == change.isoformat()
    assert {d["feature"] for d in first["drifted"]} == {"age", "tenure"}
    assert "drift on 2 of 4 features" in event["reason"]
    # one fired decision; a round that saw the pooled drop before the drift was confirmed may have left a pending
    # performance decision of the same change beside it (it fires into a running training: suppressed)
    assert store.scalar("SELECT count(*) FROM retrain_decisions WHERE status = 'fired'") == 1, store.rows(
        "SELECT decision_id, status, sentence FROM retrain_decisions")


def test_a_stable_stream_of_the_same_size_publishes_none(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """Without drift, the same volume of traffic through the same worker decides nothing and publishes nothing."""
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    ingest = start_worker(PITSTOP_CONFIG=str(config), wait=False)  # both start at once: neither waits for the other
    monitor = start_worker(kind="monitor", PITSTOP_CONFIG=str(config), PITSTOP_MONITOR_INTERVAL_S="1", wait=False)
    ingest.wait_ready()
    monitor.wait_ready()

    def tail() -> str:  # what both logged, for a failure's message
        return f"ingest:\n{ingest.log_tail()}\nmonitor:\n{monitor.log_tail()}"

    _stream(services, topics, drift=False)
    wait_until(_settled(store), 120, lambda: tail())
    time.sleep(3)  # several rounds on the complete data
    assert store.rows("SELECT decision_id, status, sentence FROM retrain_decisions") == []
    assert _triggers(services, topics) == []


def _in_round(store: FeedbackStore) -> bool:
    """A monitor round holds the model's lock now (a session-level advisory lock: a killed worker's goes with its
    connection)."""
    from feedback.monitoring.round import MODEL_LOCK

    return bool(store.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
                             "AND objid = hashtext(current_schema() || '/churn')::oid", (MODEL_LOCK,)))


def _share(handle: Any) -> str | None:
    """The last share a monitor worker's log states ("churn", "none"), or None before its first."""
    lines = [line for line in handle.log_tail(400).splitlines() if "its share is" in line]
    return lines[-1].rsplit(": ", 1)[-1].strip() if lines else None


def test_monitor_workers_killed_mid_round_lose_no_decision_make_none_twice_and_share_the_model(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """SIGKILL of the monitor worker while its round holds the model's lock, three times over (the first rounds
    build the profile, judge every window and decide). Then two monitor workers: the model is one worker's share,
    never both's. SIGKILL of the worker whose share it is: the other takes it over within the lease (three rounds
    and two seconds) and judges the hour that comes next. In the end one fired decision, and only its id on the
    triggers topic (a relay killed between publishing and marking the row sent publishes the same id again, which
    consumers ignore)."""
    from pitstop import stack

    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    ingest = start_worker(PITSTOP_CONFIG=str(config))
    _stream(services, topics, drift=True)
    # every event stored (counted once the first round has built the profile)
    stored = "SELECT (SELECT count(*) FROM predictions) + (SELECT count(*) FROM outcomes)"
    wait_until(lambda: store.scalar(stored) == 2 * HOURS * PER_HOUR, 120, lambda: ingest.log_tail())
    env = {"PITSTOP_CONFIG": str(config), "PITSTOP_MONITOR_INTERVAL_S": "0.2"}
    kills = 0
    for _ in range(3):
        monitor = start_worker(kind="monitor", wait=False, **env)
        wait_until(lambda: _in_round(store), 60, lambda m=monitor: m.log_tail(), interval_s=0.005)
        stack.kill_process(monitor.record)
        kills += 1
        wait_until(lambda: not _in_round(store), 30, lambda: "the killed round's lock is still held")

    workers = [start_worker(kind="monitor", **env), start_worker(kind="monitor", **env)]
    wait_until(lambda: sorted(str(_share(w)) for w in workers) == ["churn", "none"] and _settled(store)(), 120,
               lambda: "\n".join(w.log_tail() for w in workers))
    wait_until(lambda: store.scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
               and store.scalar("SELECT count(*) FROM outbox") >= 1, 30, lambda: workers[0].log_tail())
    owner, survivor = sorted(workers, key=lambda w: _share(w) != "churn")
    stack.kill_process(owner.record)
    wait_until(lambda: _share(survivor) == "churn", 30, lambda: survivor.log_tail())
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=500) as producer:
        producer.publish_many([*drifting_hour(HOURS, drift=True, seed=7)[0]])  # one more hour, unlabelled
    newest = T0 + timedelta(hours=HOURS)
    wait_until(lambda: store.scalar("SELECT count(*) FROM monitor_results WHERE window_start = %s", (newest,)) > 0,
               60, lambda: survivor.log_tail())  # the survivor evaluates the model now
    time.sleep(1)  # more rounds: nothing new
    fired = store.rows("SELECT decision_id FROM retrain_decisions WHERE status = 'fired'")
    assert len(fired) == 1, store.rows("SELECT decision_id, status, sentence FROM retrain_decisions")
    assert store.scalar("SELECT count(*) FROM outbox") == 1
    assert {e["trigger_id"] for e in _triggers(services, topics)} == {fired[0][0]}
    assert kills == 3
