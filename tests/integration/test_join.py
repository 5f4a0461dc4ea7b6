"""The join in Postgres: every arrival order, duplicates, corrections and redeliveries end in the
same rows, checked with exact counts and raw SQL over the stored rows."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback.store import FeedbackStore
from feedback.store.ingest import InboundMessage, Ingestor
from schemas import EventKind, OutcomeEvent, PredictionEvent, encode_batch, encode_event
from tests.factories import NOW, T0, outcome, prediction

P_TOPIC, O_TOPIC = "in.predictions", "in.outcomes"
KINDS = {P_TOPIC: EventKind.PREDICTION, O_TOPIC: EventKind.OUTCOME}


class Feeder:
    """Turns events into Kafka-shaped messages with increasing offsets and ingests them."""

    def __init__(self, store: FeedbackStore, per_txn: int = 5000) -> None:
        self.ingestor = Ingestor(store, KINDS, clock=lambda: NOW, max_events_per_txn=per_txn)
        self.offset = 0

    def message(self, topic: str, value: bytes, key: bytes | None = None) -> InboundMessage:
        self.offset += 1
        return InboundMessage(topic=topic, partition=0, offset=self.offset, key=key, value=value)

    def event_message(self, event: PredictionEvent | OutcomeEvent) -> InboundMessage:
        topic = P_TOPIC if isinstance(event, PredictionEvent) else O_TOPIC
        return self.message(topic, encode_event(event), event.prediction_id.encode())

    def feed(self, *events: PredictionEvent | OutcomeEvent) -> Any:
        return self.ingestor.ingest([self.event_message(e) for e in events])


def counts(store: FeedbackStore) -> dict[str, int]:
    return {t: store.scalar(f"SELECT count(*) FROM {t}") for t in
            ("predictions", "outcomes", "current_labels", "dead_letters")}


def feedback_rows(store: FeedbackStore) -> dict[str, tuple[Any, ...]]:
    rows = store.rows("SELECT prediction_id, label, labeled_at, label_delay FROM feedback")
    return {r[0]: r[1:] for r in rows}


def test_prediction_then_outcome_joins(store: FeedbackStore) -> None:
    """The usual order: a prediction, later its outcome, gives one labelled feedback row."""
    f = Feeder(store)
    f.feed(prediction(1))
    assert feedback_rows(store)["p-1"] == (None, None, None)
    f.feed(outcome(1, label=0, after_s=7200))
    assert feedback_rows(store)["p-1"] == (0, T0 + timedelta(minutes=1, hours=2), timedelta(hours=2))
    assert counts(store) == {"predictions": 1, "outcomes": 1, "current_labels": 1, "dead_letters": 0}


def test_outcome_before_prediction_joins_when_prediction_arrives(store: FeedbackStore) -> None:
    """An outcome that arrives first waits, unmatched, and joins when its prediction lands."""
    f = Feeder(store)
    f.feed(outcome(2, label=1))
    assert feedback_rows(store) == {}
    assert store.scalar("SELECT count(*) FROM unmatched_outcomes") == 1
    f.feed(prediction(2))
    assert feedback_rows(store)["p-2"][0] == 1
    assert store.scalar("SELECT count(*) FROM unmatched_outcomes") == 0


def test_outcome_months_later_joins(store: FeedbackStore) -> None:
    """A label 90 days after its prediction is joined with the right delay."""
    f = Feeder(store)
    f.feed(prediction(3))
    f.feed(*[prediction(100 + i) for i in range(10)])
    f.feed(outcome(3, label=1, after_s=90 * 86400))
    assert feedback_rows(store)["p-3"][2] == timedelta(days=90)


def test_duplicates_of_either_count_once(store: FeedbackStore) -> None:
    """The same prediction and the same outcome, each sent three times, are stored once."""
    f = Feeder(store)
    result = f.feed(prediction(4), prediction(4), outcome(4), prediction(4), outcome(4), outcome(4))
    assert counts(store) == {"predictions": 1, "outcomes": 1, "current_labels": 1, "dead_letters": 0}
    assert (result.stats.predictions, result.stats.outcomes) == (1, 1)


def test_duplicate_prediction_with_other_content_keeps_the_first(store: FeedbackStore) -> None:
    """A second prediction under an existing id does not overwrite the stored one."""
    f = Feeder(store)
    f.feed(prediction(5, prediction=0))
    f.feed(prediction(5, prediction=1, model_version="v2"))
    assert store.rows("SELECT prediction, model_version FROM predictions") == [(0, "v1")]


def test_chunks_written_beside_the_decode_commit_one_at_a_time_in_order(store: FeedbackStore) -> None:
    """A call of many chunks: each is a transaction of its own, they commit in the order of the messages (the
    first of a prediction's differing copies wins, in a later chunk than its duplicates too)."""
    f = Feeder(store, per_txn=2)
    events = [prediction(i) for i in range(9)] + [prediction(0, prediction=1, model_version="v2")]
    f.feed(*events)
    rows = store.rows("SELECT prediction_id, ingested_at FROM predictions ORDER BY predicted_at")
    assert [r[0] for r in rows] == [f"p-{i}" for i in range(9)]
    starts = [r[1] for r in rows]
    assert starts == sorted(starts)
    assert len(set(starts)) == 5  # chunks of two: (0 1) (2 3) (4 5) (6 7) (8 0'), one transaction each
    assert store.rows("SELECT prediction, model_version FROM predictions WHERE prediction_id = 'p-0'") == [(0, "v1")]


def test_a_store_fault_in_a_chunk_written_beside_the_decode_stops_the_call_there(store: FeedbackStore) -> None:
    """A store fault raised in the writer thread reaches the caller, and no chunk after it is written: the
    messages stay unacked and come again after restart."""
    f = Feeder(store, per_txn=1)
    f.feed(prediction(0))  # the partitions ahead are made by the first write
    with store.pool.connection() as conn:
        conn.execute("ALTER TABLE outcomes RENAME TO outcomes_away")
    messages = [f.event_message(prediction(1)), f.event_message(outcome(1)), f.event_message(prediction(2))]
    with pytest.raises(psycopg.errors.UndefinedTable):
        f.ingestor.ingest(messages)
    assert store.rows("SELECT prediction_id FROM predictions ORDER BY 1") == [("p-0",), ("p-1",)]
    assert store.scalar("SELECT count(*) FROM dead_letters") == 0


def test_correction_replaces_the_label_and_keeps_history(store: FeedbackStore) -> None:
    """A later outcome corrects the label; the earlier one stays in the history."""
    f = Feeder(store)
    f.feed(prediction(6), outcome(6, label=1, after_s=60))
    f.feed(outcome(6, label=0, after_s=120))
    assert feedback_rows(store)["p-6"][0] == 0
    history = store.rows("SELECT label, observed_at FROM outcomes ORDER BY observed_at")
    assert [h[0] for h in history] == [1, 0]


def test_stale_correction_arriving_late_does_not_win(store: FeedbackStore) -> None:
    """An outcome observed earlier than the current label, arriving later, loses to it."""
    f = Feeder(store)
    f.feed(prediction(7), outcome(7, label=0, after_s=500))
    result = f.feed(outcome(7, label=1, after_s=100))
    assert feedback_rows(store)["p-7"][0] == 0
    assert result.stats.outcomes == 1 and result.stats.labels_corrected == 0
    assert counts(store)["outcomes"] == 2


def test_tie_on_observed_at_is_broken_by_label_in_every_order(services: Any, db_schema: str) -> None:
    """Two labels observed at the same instant: the larger jsonb label wins whatever the order."""
    for order in ([outcome(8, label="a"), outcome(8, label="b")], [outcome(8, label="b"), outcome(8, label="a")]):
        with psycopg.connect(services.database_url, options=f"-c search_path={db_schema}") as conn:
            conn.execute("TRUNCATE outcomes, current_labels")
        with FeedbackStore(services.database_url, db_schema) as store:
            f = Feeder(store)
            for o in order:
                f.feed(o)
            assert store.scalar("SELECT label FROM current_labels WHERE prediction_id = 'p-8'") == "b"


def test_redelivered_batch_changes_nothing(store: FeedbackStore) -> None:
    """Ingesting the very same messages again writes no row and reports zero new rows."""
    f = Feeder(store)
    messages = [
        f.message(P_TOPIC, encode_batch([prediction(i) for i in range(50)])),
        f.message(O_TOPIC, encode_batch([outcome(i, label=i % 2) for i in range(0, 50, 2)])),
        f.message(O_TOPIC, b"{broken"),
    ]
    first = f.ingestor.ingest(messages)
    before = counts(store)
    again = f.ingestor.ingest(messages)
    assert counts(store) == before == {"predictions": 50, "outcomes": 25, "current_labels": 25, "dead_letters": 1}
    assert (first.stats.predictions, first.stats.outcomes, first.stats.dead_letters) == (50, 25, 1)
    assert (again.stats.predictions, again.stats.outcomes, again.stats.dead_letters) == (0, 0, 0)


def test_bad_elements_in_a_batch_go_to_dead_letters_with_provenance(store: FeedbackStore) -> None:
    """Only the bad elements of a batch are dead-lettered, each with offset, index, bytes and reason."""
    f = Feeder(store)
    good = encode_batch([prediction(i) for i in range(3)])
    value = good[:-1] + b',{"schema_version":1},' + encode_event(prediction(3)) + b',"x"]'
    message = f.message(P_TOPIC, value)
    f.ingestor.ingest([message])
    assert counts(store)["predictions"] == 4
    letters = store.rows(
        "SELECT source_topic, source_partition, source_offset, element_index, raw, reason"
        " FROM dead_letters ORDER BY element_index")
    assert [(r[0], r[1], r[2], r[3]) for r in letters] == [
        (P_TOPIC, 0, message.offset, 3), (P_TOPIC, 0, message.offset, 5)]
    assert bytes(letters[0][4]) == b'{"schema_version":1}'
    assert letters[0][5].startswith("schema: prediction is missing prediction_id")


def test_event_the_database_refuses_is_isolated_and_dead_lettered(store: FeedbackStore) -> None:
    """An event the contract allows but Postgres refuses is dead-lettered alone; its batch lands."""
    f = Feeder(store)
    # a database stricter than the contract (a 401-digit score, once, is now the decoder's out_of_range)
    with store.pool.connection() as conn:
        conn.execute("ALTER TABLE predictions ADD CONSTRAINT score_at_most_1 CHECK (score <= 1)")
    value = encode_batch([prediction(10), prediction(11, score=1.5), prediction(12)])
    message = f.message(P_TOPIC, value)
    result = f.ingestor.ingest([message])
    assert [r[0] for r in store.rows("SELECT prediction_id FROM predictions ORDER BY 1")] == ["p-10", "p-12"]
    letters = store.rows("SELECT source_offset, element_index, reason FROM dead_letters")
    assert len(letters) == 1
    assert letters[0][:2] == (message.offset, 1)
    assert letters[0][2].startswith("database: CheckViolation")
    assert [d.element_index for d in result.dead_letters] == [1]


# ------------------------------------------------------------------------------------------------
# the property: any order, any duplication, any batching ends in the same rows


def _scenario(seed: int) -> list[PredictionEvent | OutcomeEvent]:
    rng = random.Random(seed)
    events: list[PredictionEvent | OutcomeEvent] = []
    for i in range(30):
        events.append(prediction(i))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):  # none, one, or corrections (ties included)
            events.append(outcome(i, label=rng.choice([0, 1, "x", True]), after_s=rng.choice([60, 120, 3600])))
    return events


def _expected(events: list[PredictionEvent | OutcomeEvent]) -> dict[str, Any]:
    """The final label per prediction, computed in Python: max (observed_at, label in jsonb order)."""
    def jsonb_key(label: Any) -> tuple[int, Any]:
        # jsonb orders strings before numbers before booleans
        return (0, label) if isinstance(label, str) else (2, label) if isinstance(label, bool) else (1, label)

    best: dict[str, OutcomeEvent] = {}
    for e in events:
        if isinstance(e, OutcomeEvent):
            cur = best.get(e.prediction_id)
            if cur is None or (e.observed_at, jsonb_key(e.label)) > (cur.observed_at, jsonb_key(cur.label)):
                best[e.prediction_id] = e
    return {pid: o.label for pid, o in best.items()}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), order_seed=st.integers(0, 10_000), batch=st.integers(1, 40),
       dup_rate=st.sampled_from([0.0, 0.1, 0.5]), per_txn=st.integers(1, 50))
def test_any_order_duplication_and_batching_ends_in_the_same_rows(
    services: Any, db_schema: str, seed: int, order_seed: int, batch: int, dup_rate: float, per_txn: int
) -> None:
    """Shuffled, duplicated, re-batched events give exactly the rows a Python model of the join gives."""
    events = _scenario(seed)
    rng = random.Random(order_seed)
    stream = events + [e for e in events if rng.random() < dup_rate]
    rng.shuffle(stream)
    with psycopg.connect(services.database_url, options=f"-c search_path={db_schema}", autocommit=True) as conn:
        conn.execute("TRUNCATE predictions, outcomes, current_labels, dead_letters")
    with FeedbackStore(services.database_url, db_schema) as store:
        f = Feeder(store, per_txn)
        for start in range(0, len(stream), batch):
            chunk = stream[start:start + batch]
            preds = [e for e in chunk if isinstance(e, PredictionEvent)]
            outs = [e for e in chunk if isinstance(e, OutcomeEvent)]
            messages = []
            if preds:
                messages.append(f.message(P_TOPIC, encode_batch(preds)))
            if outs:
                messages.append(f.message(O_TOPIC, encode_batch(outs)))
            f.ingestor.ingest(messages)
        distinct_outcomes = {(e.prediction_id, e.observed_at, str(e.label)) for e in events
                             if isinstance(e, OutcomeEvent)}
        assert counts(store) == {
            "predictions": 30, "outcomes": len(distinct_outcomes),
            "current_labels": len(_expected(events)), "dead_letters": 0,
        }
        stored = {pid: label for pid, label, *_ in store.rows("SELECT prediction_id, label FROM feedback")
                  if label is not None}
        assert stored == _expected(events)


@pytest.mark.parametrize("label", [True, 0, 1.5, "churned"])
def test_label_coverage_view_counts_labelled_predictions(store: FeedbackStore, label: Any) -> None:
    """label_coverage gives predictions, labelled count and share per model version."""
    f = Feeder(store)
    f.feed(*[prediction(i) for i in range(10)], *[prediction(20 + i, model_version="v2") for i in range(4)])
    f.feed(*[outcome(i, label=label) for i in range(0, 10, 2)], outcome(20, label=label))
    rows = store.rows("SELECT model_version, predictions, labeled, coverage FROM label_coverage ORDER BY 1")
    assert rows == [("v1", 10, 5, 0.5), ("v2", 4, 1, 0.25)]
    assert store.scalar("SELECT label FROM feedback WHERE prediction_id = 'p-0'") == label
