"""The ingest: decode a batch of Kafka messages, write the good events and the dead letters in one
transaction, and wait out a database outage rather than lose or skip anything.

The caller (a Faust agent) acks the messages only after :meth:`Ingestor.ingest` returns, so every
offset committed to Kafka is covered by a committed transaction, and a redelivered batch writes
nothing new.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import orjson
import psycopg
from psycopg_pool import PoolTimeout

from feedback.errors import IngestStopped
from feedback.store.database import DeadLetterRecord, FeedbackStore, WriteStats
from schemas import EventKind, Limits, OutcomeEvent, PredictionEvent, decode_message, encode_event

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Failures that go away by themselves: the server is down or restarting, the pool has no
#: connection yet, or the transaction lost a deadlock or serialization race.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.TransactionRollback,
    PoolTimeout,
)

#: Failures that one event's values cause (out of range for its column, say); the ingest
#: isolates the event and dead-letters it. Anything else is a bug, and is raised.
DATA_ERRORS: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError)


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """One consumed Kafka message, as the ingest needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class IngestResult:
    """What a call to :meth:`Ingestor.ingest` did."""

    stats: WriteStats = field(default_factory=WriteStats)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    events: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff between attempts, capped.

    >>> [Backoff().delay_s(n) for n in range(1, 5)]
    [0.1, 0.2, 0.4, 0.8]
    """

    first_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2 ** (attempt - 1))


class Ingestor:
    """Turns batches of messages into committed rows; thread-safe for one caller at a time."""

    def __init__(
        self,
        store: FeedbackStore,
        kinds: Mapping[str, EventKind],
        *,
        limits: Limits | None = None,
        max_events_per_txn: int = 5000,
        backoff: Backoff = Backoff(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.kinds = dict(kinds)
        self.limits = limits or Limits()
        self.max_events_per_txn = max_events_per_txn
        self.backoff = backoff
        self.clock = clock
        self.stopping = threading.Event()

    def ingest(self, messages: Sequence[InboundMessage]) -> IngestResult:
        """Decode and write ``messages``; returns once every event in them is committed.

        Raises :class:`IngestStopped` only when :meth:`stop` is called during an outage; then
        nothing of the unwritten part is acked and it is redelivered after restart.
        """
        result = IngestResult()
        now = self.clock()
        chunk: list[tuple[InboundMessage, list[PredictionEvent], list[OutcomeEvent]]] = []
        size = 0
        pending_dead: list[DeadLetterRecord] = []
        for message in messages:
            kind = self._kind(message.topic)
            decoded = decode_message(kind, message.value, now=now, limits=self.limits)
            # a message holds events of its topic's kind only
            predictions = decoded.events if kind is EventKind.PREDICTION else []
            outcomes = decoded.events if kind is EventKind.OUTCOME else []
            pending_dead.extend(
                DeadLetterRecord(
                    source_topic=message.topic, source_partition=message.partition,
                    source_offset=message.offset, element_index=r.index, key=message.key, raw=r.raw,
                    reason=r.reason, received_at=now,
                )
                for r in decoded.rejected
            )
            chunk.append((message, predictions, outcomes))
            size += len(decoded.events)
            result.events += len(decoded.events)
            if size >= self.max_events_per_txn:
                self._write_chunk(chunk, pending_dead, result)
                chunk, size, pending_dead = [], 0, []
        if chunk or pending_dead:
            self._write_chunk(chunk, pending_dead, result)
        return result

    def stop(self) -> None:
        """Make a call blocked on a database outage give up (at shutdown)."""
        self.stopping.set()

    def _kind(self, topic: str) -> EventKind:
        try:
            return self.kinds[topic]
        except KeyError:
            msg = f"no event kind is configured for topic {topic!r}; known: {sorted(self.kinds)}"
            raise ValueError(msg) from None

    def _write_chunk(
        self,
        chunk: Sequence[tuple[InboundMessage, list[PredictionEvent], list[OutcomeEvent]]],
        dead: list[DeadLetterRecord],
        result: IngestResult,
    ) -> None:
        predictions = [p for _, ps, _ in chunk for p in ps]
        outcomes = [o for _, _, os_ in chunk for o in os_]
        try:
            stats = written = self._with_retry(lambda: self.store.write_batch(predictions, outcomes, dead), result)
        except DATA_ERRORS as exc:
            # Not transient: some event the contract allowed, the database refuses. Find it
            # by writing message by message, then event by event, and dead-letter it alone.
            log.warning("batch of %d events refused (%s); isolating the refused events", len(predictions)
                        + len(outcomes), _one_line(exc))
            stats = written = self._with_retry(lambda: self.store.write_batch([], [], dead), result)
            for message, ps, os_ in chunk:
                stats += self._write_isolating(message, ps, os_, result)
        result.stats += stats
        result.dead_letters.extend(_with_ids(dead, written))

    def _write_isolating(
        self, message: InboundMessage, predictions: list[PredictionEvent], outcomes: list[OutcomeEvent],
        result: IngestResult,
    ) -> WriteStats:
        try:
            return self._with_retry(lambda: self.store.write_batch(predictions, outcomes), result)
        except DATA_ERRORS:
            pass
        stats = WriteStats()
        for event in (*predictions, *outcomes):
            single_p = [event] if type(event) is PredictionEvent else []
            single_o = [event] if type(event) is OutcomeEvent else []
            try:
                stats += self._with_retry(partial(self.store.write_batch, single_p, single_o), result)
            except DATA_ERRORS as exc:
                letter = DeadLetterRecord(
                    source_topic=message.topic, source_partition=message.partition,
                    source_offset=message.offset, element_index=_index_in(message, event, self.limits),
                    key=message.key, raw=encode_event(event), reason=f"database: {_one_line(exc)}",
                    received_at=self.clock(),
                )
                written = self._with_retry(partial(self.store.write_batch, [], [], [letter]), result)
                stats += written
                result.dead_letters.extend(_with_ids([letter], written))
        return stats

    def _with_retry(self, write: Callable[[], WriteStats], result: IngestResult) -> WriteStats:
        return retry_transient(write, backoff=self.backoff, stopping=self.stopping, held="stream",
                               on_retry=lambda: setattr(result, "retries", result.retries + 1))


def retry_transient(call: Callable[[], T], *, backoff: Backoff, stopping: threading.Event, held: str,
                    on_retry: Callable[[], object] = lambda: None) -> T:
    """``call()`` until the database answers, backing off between attempts (the ``held`` input waits);
    :class:`IngestStopped` when ``stopping`` is set meanwhile: the batch stays unacked and is redelivered."""
    attempt = 0
    while True:
        try:
            return call()
        except TRANSIENT_ERRORS as exc:
            attempt += 1
            on_retry()
            delay = backoff.delay_s(attempt)
            log.warning("database unavailable (%s); retry %d in %.1f s, %s held", _one_line(exc), attempt, delay,
                        held)
            if stopping.wait(delay):
                msg = f"stopped while waiting for the database ({held} held); the batch stays unacked"
                raise IngestStopped(msg) from exc


#: Raw bytes a dead-letter event carries at most, as a prefix: the whole input stays in the ``dead_letters``
#: row the event names. Base64 makes it 4/3 larger, still far below the 1 MiB a Kafka producer sends by
#: default, where the whole of an 8 MiB message was not (the worker could not publish it, exited unacked,
#: and was restarted into the same batch forever).
DEAD_LETTER_RAW_PREFIX_BYTES = 64 * 1024
#: Bytes of the original Kafka key the dead-letter message is keyed by at most (the table keeps it whole).
DEAD_LETTER_KEY_BYTES = 1024
#: Characters of the reason an event carries at most (a reason may quote a long field of the input).
DEAD_LETTER_REASON_CHARS = 1000
#: What a dead-letter message (value and key) can reach at most, whatever the input.
DEAD_LETTER_MAX_BYTES = 128 * 1024
DEAD_LETTER_SCHEMA_VERSION = 2


def dead_letter_key(letter: DeadLetterRecord) -> bytes | None:
    """The dead-letter message's key: the original key, cut to :data:`DEAD_LETTER_KEY_BYTES`."""
    return None if letter.key is None else letter.key[:DEAD_LETTER_KEY_BYTES]


def encode_dead_letter(letter: DeadLetterRecord, *, raw_prefix_bytes: int = DEAD_LETTER_RAW_PREFIX_BYTES) -> bytes:
    """The dead-letter topic's message value (schemas/dead_letter.schema.json): where the input came from, why
    it was refused, and the ``dead_letters`` row that holds it whole; of the bytes, at most a prefix.

    >>> letter = DeadLetterRecord(source_topic="in", source_partition=0, source_offset=7, element_index=-1,
    ...     key=b"k" * 5000, raw=b"x" * 8_000_000, reason="not_json: " + "y" * 9000,
    ...     received_at=datetime(2026, 1, 1, tzinfo=UTC), dead_letter_id=42)
    >>> value = encode_dead_letter(letter)
    >>> len(value) + len(dead_letter_key(letter) or b"") <= DEAD_LETTER_MAX_BYTES
    True
    >>> event = orjson.loads(value)
    >>> event["dead_letter_id"], event["raw_size"], event["raw_truncated"], event["key_size"], event["key_truncated"]
    (42, 8000000, True, 5000, True)
    >>> len(base64.b64decode(event["raw_base64"])) == DEAD_LETTER_RAW_PREFIX_BYTES, len(event["reason"])
    (True, 1000)
    """
    if letter.dead_letter_id is None:
        msg = f"dead letter {letter.source_topic}[{letter.source_partition}]@{letter.source_offset} has no row id yet"
        raise ValueError(msg)
    prefix = letter.raw[: max(0, min(raw_prefix_bytes, DEAD_LETTER_RAW_PREFIX_BYTES))]
    reason = letter.reason
    if len(reason) > DEAD_LETTER_REASON_CHARS:
        reason = reason[: DEAD_LETTER_REASON_CHARS - 3] + "..."
    return orjson.dumps({
        "schema_version": DEAD_LETTER_SCHEMA_VERSION,
        "dead_letter_id": letter.dead_letter_id,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "element_index": letter.element_index,
        "raw_base64": base64.b64encode(prefix).decode(),
        "raw_size": len(letter.raw),
        "raw_sha256": hashlib.sha256(letter.raw).hexdigest(),
        "raw_truncated": len(prefix) < len(letter.raw),
        "key_size": None if letter.key is None else len(letter.key),
        "key_truncated": letter.key is not None and len(letter.key) > DEAD_LETTER_KEY_BYTES,
        "reason": reason,
        "received_at": letter.received_at.isoformat(),
    })


def _with_ids(letters: Sequence[DeadLetterRecord], written: WriteStats) -> list[DeadLetterRecord]:
    """``letters`` with the ids of the rows their write stored them in."""
    return [replace(d, dead_letter_id=i) for d, i in zip(letters, written.dead_letter_ids, strict=True)]


def _index_in(message: InboundMessage, event: PredictionEvent | OutcomeEvent, limits: Limits) -> int:
    """The event's position in its batch message; -1 (the whole message) for a single event."""
    try:
        doc = json.loads(message.value or b"")
    except ValueError:
        return -1
    if not isinstance(doc, list):
        return -1
    kind = EventKind.PREDICTION if type(event) is PredictionEvent else EventKind.OUTCOME
    for i, element in enumerate(doc):
        decoded = decode_message(kind, json.dumps(element).encode(), now=_FAR_FUTURE, limits=limits)
        if decoded.events == [event]:
            return i
    return -1


_FAR_FUTURE = datetime(2199, 1, 1, tzinfo=UTC)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 300 else f"{line[:297]}..."
