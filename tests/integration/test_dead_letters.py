"""Dead letters at their limits: messages and keys larger than the dead-letter topic takes, and Kafka
coordinates that repeat (a broker that forgot its offsets, a re-created topic: a topic id of its own)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
from kafka import KafkaConsumer, KafkaProducer

from feedback.store import DeadLetterRecord, FeedbackStore, drop_store, migrate
from feedback.store.database import _migration_files
from feedback.store.ingest import DEAD_LETTER_RAW_PREFIX_BYTES, InboundMessage, Ingestor
from pitstop import stack
from pitstop.settings import Topics
from pitstop.topic_ids import TopicIds
from schemas import SCHEMA_DIR, EventKind
from tests.conftest import Services, wait_until
from tests.factories import NOW, prediction_dict

MIB = 1024 * 1024
#: What the producers of the worker (aiokafka, like most clients) send at most by default.
DEFAULT_MAX_REQUEST_BYTES = 1_048_576
DEAD_LETTER_SCHEMA = json.loads((SCHEMA_DIR / "dead_letter.schema.json").read_text())


def _dead_letter_messages(services: Services, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=20_000, group_id=None, max_partition_fetch_bytes=16 * MIB,
                             fetch_max_bytes=64 * MIB)
    found: list[Any] = []
    try:
        for message in consumer:
            found.append(message)
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    return found


def test_large_bad_messages_and_keys_never_stop_the_worker(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """Bad messages of 2 MiB and 7.9 MiB, and a 2 MiB key, are stored whole and published bounded; the worker
    keeps running and ingests the good predictions around them."""
    worker = start_worker()
    big = {
        b"big-2mib": b"not json " + b"x" * (2 * MIB),
        b"big-7.9mib": b"not json " + bytes(range(256)) * int(7.9 * MIB / 256),
        b"k" * (2 * MIB): b"{not json either",
    }
    assert all(len(v) < 8 * MIB for v in big.values())  # under PITSTOP_MAX_MESSAGE_BYTES: not too_large
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all", max_request_size=16 * MIB)
    good = iter(range(40))
    for key, value in big.items():
        for i in (next(good) for _ in range(10)):
            doc = prediction_dict(i)
            producer.send(topics.predictions, key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
        producer.send(topics.predictions, key=key, value=value)
    for i in good:
        doc = prediction_dict(i)
        producer.send(topics.predictions, key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()

    def counts() -> tuple[int, int]:
        return (store.scalar("SELECT count(*) FROM predictions"), store.scalar("SELECT count(*) FROM dead_letters"))

    wait_until(lambda: counts() == (40, 3) or not stack.is_ours(worker.record), 90,
               lambda: f"counts {counts()}\n{worker.log_tail()}")
    assert stack.is_ours(worker.record), f"the worker exited:\n{worker.log_tail()}"
    assert counts() == (40, 3)

    # the table holds every byte of the message and of the key
    rows = store.rows("SELECT id, key, octet_length(raw), sha256(raw), reason FROM dead_letters")
    by_digest = {bytes(digest): (row_id, bytes(key), size, reason) for row_id, key, size, digest, reason in rows}
    for key, value in big.items():
        row_id, stored_key, size, reason = by_digest[hashlib.sha256(value).digest()]
        assert (stored_key, size) == (key, len(value))
        assert reason.startswith("not_json:")

    # the topic holds a bounded event per dead letter that points at its row
    letters = _dead_letter_messages(services, topics.dead_letter, 3)
    assert len(letters) == 3
    for message in letters:
        assert len(message.value) + len(message.key or b"") < DEFAULT_MAX_REQUEST_BYTES // 4
        event = json.loads(message.value)
        jsonschema.Draft202012Validator(DEAD_LETTER_SCHEMA).validate(event)
        value = next(v for v in big.values() if hashlib.sha256(v).hexdigest() == event["raw_sha256"])
        row_id, stored_key, size, _ = by_digest[hashlib.sha256(value).digest()]
        assert event["dead_letter_id"] == row_id
        truncated = len(value) > DEAD_LETTER_RAW_PREFIX_BYTES
        assert (event["raw_size"], event["raw_truncated"]) == (len(value), truncated)
        prefix = base64.b64decode(event["raw_base64"])
        assert value.startswith(prefix) and len(prefix) == min(len(value), DEAD_LETTER_RAW_PREFIX_BYTES)
        assert message.key == stored_key[: len(message.key)]
        assert event["key_truncated"] == (len(message.key) < len(stored_key))
        assert event["key_size"] == len(stored_key)
    assert stack.is_ours(worker.record), f"the worker exited:\n{worker.log_tail()}"
    assert "exiting with the batch unacked" not in worker.log_path.read_text(errors="replace")


def _letter(offset: int, raw: bytes, *, element_index: int = -1) -> DeadLetterRecord:
    return DeadLetterRecord(source_topic="in.predictions", source_partition=0, source_offset=offset,
                            element_index=element_index, key=b"k", raw=raw, reason="not_json: test",
                            received_at=NOW)


def test_dead_letters_at_repeated_coordinates_are_kept_and_redeliveries_collapse(store: FeedbackStore) -> None:
    """A different message at coordinates that once held another is a new row; the same bytes again are not."""
    first = store.write_batch([], [], [_letter(0, b"{first")])
    second = store.write_batch([], [], [_letter(0, b"{second, after the broker forgot its offsets")])
    again = store.write_batch(
        [], [], [_letter(0, b"{first"), _letter(0, b"{second, after the broker forgot its offsets")])
    assert (first.dead_letters, second.dead_letters, again.dead_letters) == (1, 1, 0)
    rows = store.rows("SELECT source_offset, element_index, raw FROM dead_letters ORDER BY id")
    assert [(o, i, bytes(r)) for o, i, r in rows] == [
        (0, -1, b"{first"), (0, -1, b"{second, after the broker forgot its offsets")]
    assert store.scalar(
        "SELECT count(*) FROM dead_letters WHERE (source_topic, source_partition, source_offset, element_index)"
        " = ('in.predictions', 0, 0, -1)") == 2
    # the redelivery is told which rows already hold it
    assert again.dead_letter_ids == first.dead_letter_ids + second.dead_letter_ids


def test_dead_letters_of_two_broker_lives_at_the_same_coordinates_are_two_rows(store: FeedbackStore) -> None:
    """The same bytes at the same coordinates in two lives of a topic (the local broker forgot its offsets and made
    the topic again, with a new id) are two rows; a redelivery within one life stays one row."""
    def letter(topic_id: str) -> DeadLetterRecord:
        return DeadLetterRecord(source_topic="in.predictions", source_topic_id=topic_id, source_partition=0,
                                source_offset=0, element_index=-1, key=b"k", raw=b"{bad", reason="not_json: test",
                                received_at=NOW)

    first = store.write_batch([], [], [letter("01a249f7-b2aa-7900-8cf7-c6607945cb01")])
    redelivered = store.write_batch([], [], [letter("01a249f7-b2aa-7900-8cf7-c6607945cb01")])
    second_life = store.write_batch([], [], [letter("01a249f7-b348-7d71-937f-ad5ab278148b")])
    assert (first.dead_letters, redelivered.dead_letters, second_life.dead_letters) == (1, 0, 1)
    assert redelivered.dead_letter_ids == first.dead_letter_ids != second_life.dead_letter_ids
    assert store.rows("SELECT source_topic_id FROM dead_letters ORDER BY id") == [
        ("01a249f7-b2aa-7900-8cf7-c6607945cb01",), ("01a249f7-b348-7d71-937f-ad5ab278148b",)]


def test_the_topic_id_of_each_local_broker_life_keeps_its_dead_letters_apart(
    services: Services, stack_dir: Path, store: FeedbackStore
) -> None:
    """Two lives of a real local broker: the worker's topic ids differ, so 5 bad messages at offsets 0-4 in each
    life are 10 rows, and the second life's messages delivered again add none."""
    topic = "life.predictions"
    ids: list[str] = []
    for life in range(2):
        broker = stack.start_broker(stack_dir / f"life-{life}")
        try:
            stack.ensure_topics(broker.address, [topic], 1)
            topic_ids = TopicIds(broker.address)
            ingestor = Ingestor(store, {topic: EventKind.PREDICTION}, clock=lambda: NOW, topic_id=topic_ids)
            messages = [InboundMessage(topic=topic, partition=0, offset=i, key=b"k", value=b"{bad %d" % i)
                        for i in range(5)]
            result = ingestor.ingest(messages)
            assert result.stats.dead_letters == 5
            assert ingestor.ingest(messages).stats.dead_letters == 0  # a redelivery
            ids.append(topic_ids(topic))
        finally:
            stack.stop_process(broker)
    assert ids[0] != ids[1] and all(len(i) == 36 for i in ids), ids
    rows = store.rows("SELECT source_topic_id, count(*) FROM dead_letters GROUP BY 1 ORDER BY min(id)")
    assert rows == [(ids[0], 5), (ids[1], 5)]


def test_dead_letters_migration_keeps_existing_rows(services: Services, unique_name: str) -> None:
    """Dead letters stored before 003_dead_letters.sql keep their bytes and get an id and a digest."""
    schema = f"{unique_name}_m"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute(f'CREATE SCHEMA "{schema}"')
                conn.execute(f'SET LOCAL search_path TO "{schema}"')
                conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY,"
                             " applied_at timestamptz NOT NULL DEFAULT now())")
                for name, text in _migration_files():
                    if name < "003":
                        conn.execute(text)  # type: ignore[arg-type]
                        conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                conn.execute("INSERT INTO dead_letters (source_topic, source_partition, source_offset, element_index,"
                             " raw, reason, received_at) VALUES ('t', 0, 5, -1, '\\x7b'::bytea, 'not_json: x', %s)",
                             (NOW - timedelta(days=1),))
            assert "003_dead_letters.sql" in migrate(services.database_url, schema)
            row = conn.execute(f'SELECT id, raw, raw_sha256, source_offset FROM "{schema}".dead_letters').fetchone()
            assert row is not None
            assert (bytes(row[1]), bytes(row[2]), row[3]) == (b"{", hashlib.sha256(b"{").digest(), 5)
            assert isinstance(row[0], int)
        finally:
            drop_store(conn, schema)


def test_topic_id_migration_keeps_existing_rows_and_their_key(services: Services, unique_name: str) -> None:
    """Dead letters stored before 010 keep their rows, with an empty topic id (a life unknown), and a redelivery of
    one still finds its row; the same bytes from a known topic life are a row of their own."""
    schema = f"{unique_name}_m"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute(f'CREATE SCHEMA "{schema}"')
                conn.execute(f'SET LOCAL search_path TO "{schema}"')
                conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY,"
                             " applied_at timestamptz NOT NULL DEFAULT now())")
                for name, text in _migration_files():
                    if name < "010":
                        conn.execute(text)  # type: ignore[arg-type]
                        conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                conn.execute("INSERT INTO dead_letters (source_topic, source_partition, source_offset, element_index,"
                             " raw, reason, received_at) VALUES ('in.predictions', 0, 0, -1, '{bad', 'not_json: x',"
                             " %s)", (NOW - timedelta(days=1),))
            applied = migrate(services.database_url, schema)
            assert [n for n in applied if n.startswith("010")], applied
            with FeedbackStore(services.database_url, schema) as store:
                old = store.rows("SELECT id, source_topic_id, raw FROM dead_letters")
                assert [(t, bytes(r)) for _, t, r in old] == [("", b"{bad")]
                again = store.write_batch([], [], [_letter(0, b"{bad")])
                other_life = store.write_batch([], [], [replace(_letter(0, b"{bad"), source_topic_id="t-2")])
                assert (again.dead_letters, again.dead_letter_ids) == (0, (old[0][0],))
                assert other_life.dead_letters == 1
        finally:
            drop_store(conn, schema)
