"""The retrain worker's intake: trigger events from `pitstop.retrain-triggers`, checked against their schema;
a malformed event goes to the dead-letter table and topic with its reason.

The relay republishes an event whose sent mark did not commit (feedback/outbox.py), so the same id can
arrive twice: ``retrain_intake`` remembers the ids seen and when, and the retrain's recorded outcome makes
handling a trigger twice harmless (retrain_worker/pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from feedback.store import DeadLetterRecord, FeedbackStore, insert_dead_letters
from feedback.store.ingest import InboundMessage, dead_letter_key, encode_dead_letter
from schemas.validation import InvalidDocument, load_document, utc_time

_TAKE = """
INSERT INTO retrain_intake (trigger_id, model_name, source_partition, source_offset)
SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[]) ON CONFLICT (trigger_id) DO NOTHING
RETURNING trigger_id
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerEvent:
    """A retrain trigger as published (schemas/retrain_trigger.schema.json)."""

    trigger_id: str
    model_name: str
    model_version: str | None
    kind: str
    urgency: str
    decided_at: datetime
    change_point: datetime | None
    labels_since_change: int | None
    reason: str
    requested_by: str | None
    evidence: Mapping[str, Any] = field(default_factory=dict)


class TriggerRejected(ValueError):
    """A message on the trigger topic that is not a valid trigger event; ``str()`` is the one-line reason."""




def decode_trigger(value: bytes | None) -> TriggerEvent:
    """The trigger event in a message value, or :class:`TriggerRejected` saying what is wrong.

    >>> decode_trigger(b'{"schema_version": 1}')
    Traceback (most recent call last):
    ...
    retrain_worker.intake.TriggerRejected: schema: 'trigger_id' is a required property (at the top level)
    """
    try:
        doc = load_document(value, "retrain_trigger.schema.json")
        times = {key: utc_time(doc, key) for key in ("decided_at", "change_point")}
    except InvalidDocument as exc:
        raise TriggerRejected(str(exc)) from None
    return TriggerEvent(
        trigger_id=doc["trigger_id"], model_name=doc["model_name"], model_version=doc["model_version"],
        kind=doc["kind"], urgency=doc["urgency"], decided_at=times["decided_at"], change_point=times["change_point"],
        labels_since_change=doc["labels_since_change"], reason=doc["reason"], requested_by=doc["requested_by"],
        evidence=doc["evidence"],
    )


@dataclass(slots=True)
class IntakeResult:
    """What one batch of trigger messages gave: its distinct valid triggers in order (those seen before too: a
    worker that crashed mid-training sees its trigger again, and the recorded outcome, not the intake, says
    whether it is done), how many were seen for the first time, the repeats, and the dead letters."""

    triggers: list[TriggerEvent] = field(default_factory=list)
    first_seen: int = 0
    duplicates: int = 0
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)


class TriggerIntake:
    """Takes batches of trigger messages: records the new trigger ids and the dead letters in one transaction.
    ``topic_id(topic)`` is the id the broker gave the topic (pitstop/topic_ids.py), which keys a dead letter's row
    by the topic's life; "" keys it without one."""

    def __init__(self, store: FeedbackStore, *, topic_id: Callable[[str], str] = lambda topic: "",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.topic_id = topic_id
        self.clock = clock

    def receive(self, messages: Sequence[InboundMessage]) -> IntakeResult:
        """Decode ``messages``; returns the triggers seen for the first time, in message order."""
        result = IntakeResult()
        good: list[tuple[InboundMessage, TriggerEvent]] = []
        now = self.clock()
        for m in messages:
            try:
                good.append((m, decode_trigger(m.value)))
            except TriggerRejected as exc:
                result.dead_letters.append(DeadLetterRecord(
                    source_topic=m.topic, source_topic_id=self.topic_id(m.topic), source_partition=m.partition,
                    source_offset=m.offset, element_index=-1, key=m.key, raw=m.value or b"", reason=str(exc),
                    received_at=now))
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            taken: set[str] = set()
            if good:
                rows = cur.execute(_TAKE, (
                    [t.trigger_id for _, t in good], [t.model_name for _, t in good],
                    [m.partition for m, _ in good], [m.offset for m, _ in good])).fetchall()
                taken = {r[0] for r in rows}
            if result.dead_letters:
                result.dead_letters = insert_dead_letters(cur, result.dead_letters)
        seen: set[str] = set()
        for _, trigger in good:
            if trigger.trigger_id in seen:
                result.duplicates += 1
                continue
            seen.add(trigger.trigger_id)
            result.triggers.append(trigger)
            if trigger.trigger_id in taken:
                result.first_seen += 1
            else:
                result.duplicates += 1
        return result


def publish_dead_letters(send: Callable[[str, bytes | None, bytes], Any], topic: str,
                         letters: Sequence[DeadLetterRecord]) -> None:
    """Hand each dead letter (already in the table) to ``send`` as its bounded dead-letter event."""
    for letter in letters:
        send(topic, dead_letter_key(letter), encode_dead_letter(letter))
