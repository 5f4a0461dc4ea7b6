"""Whatever one event holds, it never stops a partition: against the real store and through a real worker, every
input ends stored or dead-lettered with a reason, a batch write that fails is bisected down to the events that
fail it, and transient failures are still waited out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from feedback.store import FeedbackStore
from feedback.store.database import WriteStats
from feedback.store.ingest import Backoff, InboundMessage, Ingestor
from pitstop import stack
from pitstop.settings import Topics
from schemas import EventKind, Limits, OutcomeEvent, PredictionEvent, encode_batch, encode_event
from tests.conftest import Services, wait_until
from tests.factories import NOW, outcome, prediction, prediction_dict
from tests.hostile import Corpus, Message, corpus, unaccounted

P_TOPIC, O_TOPIC = "in.predictions", "in.outcomes"
KINDS = {P_TOPIC: EventKind.PREDICTION, O_TOPIC: EventKind.OUTCOME}
TOPIC_OF = {"prediction": P_TOPIC, "outcome": O_TOPIC}
#: a feature past 64 bits in a batch Python's json reads (a NaN element in it): the event of issue 15
BIG_INT_BATCH = (b'[{"x":NaN},' + orjson.dumps(prediction_dict(900))[:-1] + b',"score":0.5}'
                 + b"," + orjson.dumps(prediction_dict(901, features={"x": 1}))
                 .replace(b'"x":1', b'"x":' + str(2**64).encode()) + b"]")
#: a feature past a double's range as a single event (orjson refuses it, Python's json reads an int)
BIG_INT_SINGLE = orjson.dumps(prediction_dict(902, features={"x": 1})).replace(b'"x":1', b'"x":1' + b"0" * 400)


class CountingStore(FeedbackStore):
    """The real store, counting its batch writes (one transaction each)."""

    writes = 0

    def write_batch(self, predictions: Sequence[PredictionEvent], outcomes: Sequence[OutcomeEvent],
                    dead_letters: Sequence[Any] = ()) -> WriteStats:
        self.writes += 1
        return super().write_batch(predictions, outcomes, dead_letters)


class RefusingObserver:
    """A batch observer that fails the write transaction: with ``error`` when a new prediction's id starts with
    ``poison``, and with ``transient`` for the first ``transient_failures`` writes."""

    connection_setup = ""
    enabled = True
    counted_models: Sequence[str] = ()

    def __init__(self, error: BaseException, transient_failures: int = 0) -> None:
        self.error = error
        self.transient_failures = transient_failures

    def lock_shared(self, cur: psycopg.Cursor[Any]) -> None:
        if self.transient_failures > 0:
            self.transient_failures -= 1
            msg = "server closed the connection unexpectedly"
            raise psycopg.OperationalError(msg)

    def apply(self, cur: psycopg.Cursor[Any], new_predictions: Sequence[PredictionEvent], counted: Any) -> None:
        if any(p.prediction_id.startswith("poison") for p in new_predictions):
            raise self.error


@pytest.fixture
def refusing_store(services: Services, db_schema: str) -> Iterator[tuple[CountingStore, RefusingObserver]]:
    observer = RefusingObserver(TypeError("Integer exceeds 64-bit range"))
    with CountingStore(services.database_url, db_schema, windows=observer) as s:  # type: ignore[arg-type]
        yield s, observer


def _messages(values: Sequence[bytes], topic: str = P_TOPIC) -> list[InboundMessage]:
    return [InboundMessage(topic=topic, partition=0, offset=i, key=None, value=v) for i, v in enumerate(values)]


def _ingestor(store: FeedbackStore, **kw: Any) -> Ingestor:
    return Ingestor(store, KINDS, clock=lambda: NOW, backoff=Backoff(first_s=0.01), **kw)


def test_integer_past_64_bits_is_dead_lettered_and_the_rest_stored(store: FeedbackStore) -> None:
    """The event of issue 15 (a feature past 64 bits, which orjson cannot write) is dead-lettered with its reason,
    and the good events around it are stored."""
    good = [encode_event(prediction(i)) for i in range(3)]
    result = _ingestor(store).ingest(_messages([good[0], BIG_INT_BATCH, good[1], BIG_INT_SINGLE, good[2]]))
    assert sorted(r[0] for r in store.rows("SELECT prediction_id FROM predictions")) == ["p-0", "p-1", "p-2", "p-900"]
    letters = store.rows("SELECT source_offset, element_index, reason FROM dead_letters ORDER BY 1, 2")
    assert [(o, i) for o, i, _ in letters] == [(1, 0), (1, 2), (3, -1)]
    assert [r.split(":")[0] for _, _, r in letters] == ["non_finite", "out_of_range", "out_of_range"]
    assert len(result.dead_letters) == 3


def test_any_exception_one_event_causes_is_bisected_out(
    refusing_store: tuple[CountingStore, RefusingObserver],
) -> None:
    """A write failing with any exception (not only a psycopg DataError) is bisected: in 5,000 events in 50 batch
    messages, the one that fails it is found in about 2 log2 n transactions and dead-lettered with the exception as
    its reason and its index in its message; the other 4,999 are stored."""
    store, _ = refusing_store
    events = [prediction(i) for i in range(5000)]
    events[3742] = prediction(3742, prediction_id="poison-3742")
    values = [encode_batch(events[i:i + 100]) for i in range(0, 5000, 100)]
    result = _ingestor(store).ingest(_messages(values))
    assert store.scalar("SELECT count(*) FROM predictions") == 4999
    assert store.scalar("SELECT count(*) FROM predictions WHERE starts_with(prediction_id, 'poison')") == 0
    letters = store.rows("SELECT source_offset, element_index, reason, raw FROM dead_letters")
    assert [(o, i, r) for o, i, r, _ in letters] == [(37, 42, "store: TypeError: Integer exceeds 64-bit range")]
    assert orjson.loads(bytes(letters[0][3]))["prediction_id"] == "poison-3742"
    assert [(d.source_offset, d.element_index) for d in result.dead_letters] == [(37, 42)]
    assert result.stats.predictions == 4999
    bound = 2 * math.ceil(math.log2(5000)) + 2
    assert store.writes <= bound, f"{store.writes} transactions for one bad event in 5,000 (at most {bound})"


def test_several_refused_events_and_decoder_rejects_in_one_batch(
    refusing_store: tuple[CountingStore, RefusingObserver],
) -> None:
    """Refused events spread over messages, a single-event message among them, beside inputs the decoder rejects:
    each is dead-lettered once where it came from, the rest stored; a redelivery adds nothing."""
    store, _ = refusing_store
    values = [
        encode_batch([prediction(0), prediction(1, prediction_id="poison-a"), prediction(2)]),
        encode_event(prediction(3, prediction_id="poison-b")),
        b"{not json",
        encode_batch([prediction(i) for i in range(4, 40)] + [prediction(40, prediction_id="poison-c")]),
        encode_event(prediction(41)),
    ]
    ingestor = _ingestor(store)
    first = ingestor.ingest(_messages(values))
    again = ingestor.ingest(_messages(values))
    assert store.scalar("SELECT count(*) FROM predictions") == 39
    letters = store.rows("SELECT source_offset, element_index, split_part(reason, ':', 1) FROM dead_letters"
                         " ORDER BY 1, 2")
    assert letters == [(0, 1, "store"), (1, -1, "store"), (2, -1, "not_json"), (3, 36, "store")]
    assert sorted(d.dead_letter_id for d in again.dead_letters) == sorted(d.dead_letter_id for d in first.dead_letters)
    assert (again.stats.predictions, again.stats.dead_letters) == (0, 0)


def test_transient_failure_is_retried_never_dead_lettered(
    refusing_store: tuple[CountingStore, RefusingObserver],
) -> None:
    """A database that drops the connection twice is waited out: everything is stored, nothing dead-lettered."""
    store, observer = refusing_store
    observer.transient_failures = 2
    result = _ingestor(store).ingest(_messages([encode_batch([prediction(i) for i in range(10)])]))
    assert (result.retries, store.scalar("SELECT count(*) FROM predictions")) == (2, 10)
    assert store.scalar("SELECT count(*) FROM dead_letters") == 0


def test_a_dead_letter_the_store_refuses_is_raised(
    refusing_store: tuple[CountingStore, RefusingObserver],
) -> None:
    """When even the dead letter cannot be written, that is a bug, and the ingest raises (the batch stays unacked)."""
    store, _ = refusing_store
    with store.pool.connection() as conn:
        conn.execute("ALTER TABLE dead_letters ADD CONSTRAINT refuse_all CHECK (source_offset < 0)")
    for values in ([b"{not json"], [encode_batch([prediction(1), prediction(2, prediction_id="poison")])]):
        with pytest.raises(psycopg.errors.CheckViolation):
            _ingestor(store).ingest(_messages(values))
    assert store.scalar("SELECT count(*) FROM dead_letters") == 0


def test_inputs_just_under_every_limit_are_stored(store: FeedbackStore) -> None:
    """An event of exactly max_event_bytes, a batch message just under max_message_bytes of such events, and an
    instant exactly max_future_skew_s ahead are stored; one byte or one second more is dead-lettered."""
    limits = Limits()

    def event_of(n: int, size: int) -> bytes:
        # nine features, each under the contract's 10,000 characters; é is two bytes in UTF-8
        doc = prediction_dict(n, features={f"pad{j}": "" for j in range(9)})
        filler = size - len(orjson.dumps(doc))
        for j in range(9):
            part = filler // 9 + (filler % 9 if j == 8 else 0)
            doc["features"][f"pad{j}"] = "é" * (part // 2) + "x" * (part % 2)
        value = orjson.dumps(doc)
        assert len(value) == size
        return value

    exact = event_of(0, limits.max_event_bytes)
    over = event_of(1, limits.max_event_bytes + 1)
    per_message = (limits.max_message_bytes - 2) // (limits.max_event_bytes + 1)
    batch = b"[" + b",".join(event_of(10 + i, limits.max_event_bytes) for i in range(per_message)) + b"]"
    assert limits.max_message_bytes - limits.max_event_bytes < len(batch) <= limits.max_message_bytes
    horizon = NOW.timestamp() + limits.max_future_skew_s
    at_horizon = orjson.dumps(prediction_dict(2, predicted_at="2026-06-02T00:00:00Z"))
    past_horizon = orjson.dumps(prediction_dict(3, predicted_at="2026-06-02T00:00:01Z"))
    assert NOW.replace(day=2).timestamp() == horizon
    outcome_at_horizon = orjson.dumps({**orjson.loads(encode_event(outcome(0))), "observed_at": "2026-06-02T00:00:00Z"})
    ingestor = _ingestor(store)
    ingestor.ingest(_messages([exact, over, batch, at_horizon, past_horizon]))
    ingestor.ingest(_messages([outcome_at_horizon], O_TOPIC))
    assert store.scalar("SELECT count(*) FROM predictions") == 2 + per_message
    assert store.scalar("SELECT count(*) FROM outcomes") == 1
    letters = store.rows("SELECT source_offset, split_part(reason, ':', 1) FROM dead_letters ORDER BY 1")
    assert letters == [(1, "too_large"), (4, "timestamp")]
    stored = store.scalar("SELECT features FROM predictions WHERE prediction_id = 'p-0'")
    assert stored == orjson.loads(exact)["features"]


# ------------------------------------------------------------------------------------------------
# the property, at two levels: the Ingestor against the real store, and a real worker process


def _placed(c: Corpus) -> list[Message]:
    for offset, m in enumerate(c.messages):
        m.partition, m.offset = 0, offset
    return c.messages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow, HealthCheck.data_too_large])
@given(c=corpus())
def test_hostile_json_is_stored_or_dead_lettered_never_lost(store: FeedbackStore, c: Corpus) -> None:
    """Generated hostile JSON (numbers past 64 bits or a double's range, NaN, -0.0, 5e-324, deep nesting, lone
    surrogates, NUL and RTL marks, repeated keys, every field's wrong type), alone and in batches, on both topics:
    every good event is stored as sent, every bad one dead-lettered with a reason, none both, none lost."""
    ids = c.ids()
    assume(len(ids) == len(set(ids)))  # the accounting finds an input by its id
    with store.pool.connection() as conn:
        for table in ("predictions", "outcomes", "current_labels", "dead_letters"):  # a few rows: lighter than TRUNCATE
            conn.execute(f"DELETE FROM {table}")  # type: ignore[arg-type]  # our own table names
    messages = _placed(c)
    by_topic = [InboundMessage(topic=TOPIC_OF[m.topic_kind], partition=m.partition, offset=m.offset, key=b"k",
                               value=m.value) for m in messages]
    _ingestor(store).ingest(by_topic)
    problems = unaccounted(store, TOPIC_OF, messages)
    assert not problems, "\n".join(problems)


def test_a_worker_takes_a_hostile_corpus_without_restarting(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """A hypothesis-generated hostile corpus (and the event of issue 15) published to the broker, then good events:
    the worker keeps its PID, every good event is stored and every bad input dead-lettered."""
    corpora: list[Corpus] = []

    @settings(max_examples=40, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def collect(data: st.DataObject) -> None:
        corpora.append(data.draw(corpus(max_messages=4, prefix=f"w{len(corpora)}-")))

    collect()
    messages: list[Message] = [
        Message("prediction", BIG_INT_BATCH, True, []), Message("prediction", BIG_INT_SINGLE, False, [])]
    seen: set[str] = set()
    for c in corpora:
        ids = c.ids()
        if len(ids) == len(set(ids)) and seen.isdisjoint(ids):
            seen.update(ids)
            messages.extend(c.messages)
    assert len(messages) > 40, "hypothesis generated too small a corpus"
    good = [prediction_dict(5000 + i) for i in range(200)]
    messages.extend(Message("prediction", orjson.dumps(doc), False, [(doc, True)]) for doc in good)
    worker = start_worker()
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all", max_request_size=16 * 1024 * 1024)
    topic_of = {"prediction": topics.predictions, "outcome": topics.outcomes}
    futures = [producer.send(topic_of[m.topic_kind], key=b"k", value=m.value) for m in messages]
    producer.flush()
    for m, future in zip(messages, futures, strict=True):
        sent = future.get(timeout=30)
        m.partition, m.offset = sent.partition, sent.offset
    producer.close()
    # the two fixed messages: the batch's NaN and 2**64 elements and the single 10**400 are dead letters
    messages[0].elements = [({"x": math.nan}, False), (prediction_dict(900), True),
                            (prediction_dict(901, features={"x": 2**64}), False)]
    messages[1].elements = [({"prediction_id": "p-902"}, False)]

    def settled() -> bool:
        return not unaccounted(store, topic_of, messages) or not stack.is_ours(worker.record)

    wait_until(settled, 60, lambda: "\n".join(unaccounted(store, topic_of, messages)[:20]) + worker.log_tail())
    assert stack.is_ours(worker.record), f"the worker exited:\n{worker.log_tail()}"
    assert not unaccounted(store, topic_of, messages)
    assert store.scalar("SELECT count(*) FROM predictions WHERE starts_with(prediction_id, 'p-5')") == 200
    assert "exiting with the batch unacked" not in worker.log_path.read_text(errors="replace")
    assert stack.is_ours(worker.record)
