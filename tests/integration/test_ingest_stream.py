"""Through the real broker and a real worker process: plain Kafka clients, the Pitstop producer,
arrival orders, and bad input reaching the dead-letter topic and table."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from feedback.store import FeedbackStore
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from schemas import encode_event
from tests.conftest import Services, wait_until
from tests.factories import outcome, outcome_dict, prediction, prediction_dict


def _counts(store: FeedbackStore) -> tuple[int, int, int, int]:
    row = store.rows(
        "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM outcomes),"
        " (SELECT count(*) FROM feedback WHERE label IS NOT NULL), (SELECT count(*) FROM dead_letters)"
    )[0]
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def test_plain_kafka_client_single_events_join_in_any_order(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """Single JSON events from a plain kafka-python producer, keyed by prediction_id, are joined; with a take
    bounded at one byte, every message is a batch (a transaction) of its own."""
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    # outcomes first for ids 0-9, then every prediction, then outcomes for 10-19, a duplicate
    # of each and a correction of id 3
    sends: list[tuple[str, dict[str, Any]]] = []
    sends += [(topics.outcomes, outcome_dict(i, label=i % 2)) for i in range(10)]
    sends += [(topics.predictions, prediction_dict(i)) for i in range(20)]
    sends += [(topics.outcomes, outcome_dict(i, label=i % 2)) for i in range(10, 20)]
    sends += [(topics.outcomes, outcome_dict(i, label=i % 2)) for i in range(20)]
    sends += [(topics.predictions, prediction_dict(i)) for i in range(5)]
    sends += [(topics.outcomes, outcome_dict(3, label=7, observed_at="2026-03-05T00:00:00Z"))]
    worker = start_worker(PITSTOP_BATCH_BYTES="1")
    for topic, doc in sends:
        producer.send(topic, key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()
    wait_until(lambda: _counts(store) == (20, 21, 20, 0), 60,
               lambda: f"counts {_counts(store)}\n{worker.log_tail()}")
    assert store.scalar("SELECT label FROM feedback WHERE prediction_id = 'p-3'") == 7
    assert store.scalar("SELECT count(*) FROM feedback WHERE label_delay = interval '1 day'") == 19
    # each prediction was first stored by a transaction of its own (a take ends at the message crossing the bound)
    assert store.scalar("SELECT count(DISTINCT ingested_at) FROM predictions") == 20


def test_pitstop_producer_batches_are_joined(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """Events published in batches by the Pitstop producer all land, once."""
    start_worker()
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=100) as producer:
        for i in range(1000):
            producer.publish(prediction(i))
            if i % 4 == 0:
                producer.publish(outcome(i, label=1))
        sent = producer.flush()
    assert sent == 10 + 3  # 1000/100 prediction batches, 250 outcomes in 3 batches
    wait_until(lambda: _counts(store) == (1000, 250, 250, 0), 60, lambda: f"counts {_counts(store)}")


def _dead_letter_messages(services: Services, topic: str, expected: int) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=20_000, group_id=None)
    found: list[dict[str, Any]] = []
    try:
        for message in consumer:
            found.append(orjson.loads(message.value))
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    return found


def test_bad_input_goes_to_dead_letter_topic_and_table(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """Each bad-input class, alone and inside a batch, is dead-lettered with its reason; the rest lands."""
    nan_event = (b'{"schema_version":1,"prediction_id":"nan","model_name":"m","model_version":"v",'
                 b'"predicted_at":"2026-03-01T12:00:00Z","features":{"x":NaN},"prediction":1}')
    bad_singles = {
        "not_json": b"{this is not json",
        "schema": orjson.dumps(prediction_dict(50, features=[1, 2])),
        "timestamp": orjson.dumps(prediction_dict(51, predicted_at="2026-03-01T12:00:00")),  # naive
        "absurd": orjson.dumps(prediction_dict(52, predicted_at="1970-01-01T00:00:00Z")),
        "non_finite": nan_event,
        "too_large": orjson.dumps(prediction_dict(53, features={f"f{i}": "x" * 100 for i in range(1000)})),
    }
    batch = (b"[" + encode_event(prediction(60)) + b"," + nan_event + b"," + encode_event(prediction(61)) + b","
             + orjson.dumps(prediction_dict(62, predicted_at="2026-03-01T12:00:00")) + b","
             + orjson.dumps(prediction_dict(63, predicted_at="1970-01-01T00:00:00Z")) + b","
             + orjson.dumps(prediction_dict(64, features={f"f{i}": "x" * 100 for i in range(1000)})) + b","
             + b'{"schema_version":1,"prediction_id":"x"}' + b"," + encode_event(prediction(65)) + b"]")
    start_worker()
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all",
                             max_request_size=4 * 1024 * 1024)
    for reason, value in bad_singles.items():
        producer.send(topics.predictions, key=reason.encode(), value=value)
    producer.send(topics.predictions, key=b"batch", value=batch)
    producer.send(topics.outcomes, key=b"o", value=b'[{"schema_version":1,"prediction_id":"p-60","label":NaN,'
                  b'"observed_at":"2026-03-02T00:00:00Z"},' + encode_event(outcome(60)) + b"]")
    producer.flush()
    producer.close()
    wait_until(lambda: _counts(store) == (3, 1, 1, 12), 60, lambda: f"counts {_counts(store)}")
    rows = store.rows("SELECT key, element_index, reason, raw FROM dead_letters ORDER BY key, element_index")
    by_key = {(bytes(k).decode(), i): (r, bytes(raw)) for k, i, r, raw in rows}
    assert by_key[("not_json", -1)][0].startswith("not_json:")
    assert by_key[("not_json", -1)][1] == b"{this is not json"
    assert by_key[("schema", -1)][0].startswith("schema: features must be an object")
    assert by_key[("timestamp", -1)][0].startswith("timestamp: predicted_at")
    assert by_key[("absurd", -1)][0].startswith("timestamp: predicted_at")
    assert by_key[("non_finite", -1)][0] == "non_finite: features.x is NaN or infinite"
    assert by_key[("too_large", -1)][0].startswith("too_large: event of")
    assert [i for (k, i) in by_key if k == "batch"] == [1, 3, 4, 5, 6]
    assert [by_key[("batch", i)][0].split(":")[0] for i in (1, 3, 4, 5, 6)] == [
        "non_finite", "timestamp", "timestamp", "too_large", "schema"]
    assert by_key[("o", 0)][0] == "non_finite: label is NaN or infinite"
    assert sorted(r[0] for r in store.rows("SELECT prediction_id FROM predictions")) == ["p-60", "p-61", "p-65"]
    # each row knows the life of its topic: the id the broker gave it
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        topic_ids = {t["name"]: t["topic_id"] for t in admin.describe_topics([topics.predictions, topics.outcomes])}
    finally:
        admin.close()
    assert sorted(set(store.rows("SELECT source_topic, source_topic_id FROM dead_letters"))) == sorted(
        topic_ids.items())
    # the same twelve, with their provenance, on the dead-letter topic
    letters = _dead_letter_messages(services, topics.dead_letter, 12)
    assert len(letters) == 12
    assert sorted((m["source_topic"], m["element_index"], m["reason"]) for m in letters) == sorted(
        (topics.predictions if k != "o" else topics.outcomes, i, r) for (k, i), (r, _) in by_key.items()
    )
