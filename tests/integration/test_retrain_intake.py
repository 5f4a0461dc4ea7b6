"""The retrain worker's intake on the real broker and database: a trigger is taken once per id, and a malformed
event on the trigger topic goes to the dead-letter table and topic with its reason."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import jsonschema
import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from feedback.store import FeedbackStore
from feedback.store.ingest import InboundMessage
from feedback.triggers.engine import Decision, trigger_event
from pitstop import retrain_service, stack
from pitstop.settings import Settings, Topics
from pitstop.topic_ids import TopicIds
from retrain_worker.intake import TriggerIntake, decode_trigger, publish_dead_letters
from tests.conftest import Services, wait_until
from tests.factories import T0

DEAD_LETTER_SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "dead_letter.schema.json").read_text())


def _trigger(n: int) -> bytes:
    return orjson.dumps(trigger_event(Decision(
        decision_id=f"churn/drift/v1/2026-03-01T1{n}:00:00Z", model_name="churn", model_version="v1", kind="drift",
        urgency="elevated", status="fired", sentence="drift on 2 of 4 features", decided_at=T0 + timedelta(hours=n),
        change_point=T0, labels_since_change=5200, evidence={"windows": []})))


def _consume(services: Services, topic: str) -> list[InboundMessage]:
    consumer = KafkaConsumer(topic, bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1500)
    try:
        return [InboundMessage(topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value)
                for m in consumer]
    finally:
        consumer.close()


def test_triggers_are_taken_once_and_malformed_ones_dead_lettered(services: Services, topics: Topics,
                                                                    store: FeedbackStore) -> None:
    """Two triggers (one republished), a non-JSON value, a schema violation and a bad timestamp: two triggers
    seen for the first time, one duplicate, three dead letters in the table and on the topic; the same batch
    again gives the same triggers (their outcomes decide) and no new dead letter rows."""
    bad_time = orjson.loads(_trigger(3)) | {"decided_at": "yesterday"}
    values = [_trigger(1), _trigger(2), _trigger(1), b"{not json", orjson.dumps({"schema_version": 1}),
              orjson.dumps(bad_time)]
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    for value in values:
        producer.send(topics.retrain_triggers, key=b"churn", value=value)
    producer.flush()
    messages = sorted(_consume(services, topics.retrain_triggers), key=lambda m: (m.partition, m.offset))
    assert len(messages) == len(values)

    intake = TriggerIntake(store)
    result = intake.receive(messages)
    assert [t.trigger_id for t in result.triggers] == ["churn/drift/v1/2026-03-01T11:00:00Z",
                                                       "churn/drift/v1/2026-03-01T12:00:00Z"]
    assert result.triggers[0].change_point == T0 and result.duplicates == 1 and result.first_seen == 2
    reasons = sorted(r.split(":")[0] for (r,) in store.rows("SELECT reason FROM dead_letters"))
    assert reasons == ["not_json", "schema", "timestamp"]
    assert all(d.dead_letter_id is not None for d in result.dead_letters)

    publish_dead_letters(lambda t, k, v: producer.send(t, key=k, value=v), topics.dead_letter, result.dead_letters)
    producer.flush()
    producer.close()
    letters = [orjson.loads(m.value) for m in _consume(services, topics.dead_letter)]
    validator = jsonschema.Draft202012Validator(DEAD_LETTER_SCHEMA)
    for letter in letters:
        validator.validate(letter)
    assert sorted(e["dead_letter_id"] for e in letters) == sorted(d.dead_letter_id for d in result.dead_letters)
    assert {e["source_topic"] for e in letters} == {topics.retrain_triggers}

    again = intake.receive(messages)  # a redelivery after a crash before the offsets were committed
    assert len(again.triggers) == 2 and again.first_seen == 0 and again.duplicates == 3
    assert store.scalar("SELECT count(*) FROM dead_letters") == 3
    assert store.scalar("SELECT count(*) FROM retrain_intake") == 2


def test_decoding_a_trigger_names_what_is_wrong() -> None:
    """Each malformed trigger is refused with a one-line reason naming the field."""
    good = orjson.loads(_trigger(1))
    assert decode_trigger(_trigger(1)).labels_since_change == 5200
    for doc, reason in [
        (good | {"kind": "hunch"}, "schema: 'hunch' is not one of"),
        (good | {"urgency": None}, "(at urgency)"),
        ({k: v for k, v in good.items() if k != "reason"}, "'reason' is a required property"),
        (good | {"change_point": "2026-03-01T12:00:00"}, "timestamp: change_point '2026-03-01T12:00:00' has no offset"),
    ]:
        try:
            decode_trigger(orjson.dumps(doc))
        except ValueError as exc:
            assert reason in str(exc) and "\n" not in str(exc), str(exc)
        else:
            msg = f"accepted {doc}"
            raise AssertionError(msg)


def test_the_topic_id_of_each_local_broker_life_keeps_its_trigger_dead_letters_apart(
    stack_dir: Path, store: FeedbackStore
) -> None:
    """Two lives of a real local broker: the intake's topic ids differ, so 5 malformed triggers at offsets 0-4 in
    each life are 10 rows, and the second life's messages delivered again add none."""
    topic = "life.retrain-triggers"
    ids: list[str] = []
    for life in range(2):
        broker = stack.start_broker(stack_dir / f"life-{life}")
        try:
            stack.ensure_topics(broker.address, [topic], 1)
            topic_ids = TopicIds(broker.address)
            intake = TriggerIntake(store, topic_id=topic_ids)
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


def test_the_retrain_worker_keys_its_dead_letters_by_the_topic_id(services: Services, db_schema: str, topics: Topics,
                                                                  store: FeedbackStore, tmp_path: Path) -> None:
    """`pitstop retrain-worker` on the real broker: a malformed trigger's row carries the id the broker gave the
    trigger topic."""
    settings = Settings.from_env({"PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
                                  "PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
                                  "PITSTOP_TOPIC_PREFIX": topics.prefix, "PITSTOP_APP_ID": db_schema,
                                  "PITSTOP_STATE_DIR": str(tmp_path / "state")})
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    producer.send(topics.retrain_triggers, key=b"churn", value=b"{not json")
    producer.flush()
    producer.close()
    stop = threading.Event()
    worker = threading.Thread(target=retrain_service.run, args=(settings,), kwargs={"should_stop": stop.is_set})
    worker.start()
    try:
        wait_until(lambda: store.scalar("SELECT count(*) FROM dead_letters") == 1, 60, lambda: "no dead letter row")
    finally:
        stop.set()
        worker.join(timeout=30)
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        (described,) = admin.describe_topics([topics.retrain_triggers])
    finally:
        admin.close()
    assert store.rows("SELECT source_topic, source_topic_id FROM dead_letters") == [
        (topics.retrain_triggers, described["topic_id"])]
