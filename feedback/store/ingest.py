"""The ingest: decode a batch of Kafka messages, write the good events and the dead letters in one
transaction, and wait out a database outage rather than lose or skip anything.

The caller (a Faust agent) acks the messages only after :meth:`Ingestor.ingest` returns, so every
offset committed to Kafka is covered by a committed transaction, and a redelivered batch writes
nothing new.

No event's content may stop a partition: a write that fails for any reason but a transient one
(:data:`TRANSIENT_ERRORS`, waited out) or a store that is not what the code expects
(:data:`STORE_FAULTS`, raised) is bisected until the events that fail it alone are found; they
are dead-lettered with the exception as the reason, and the rest is stored. One bad event in n
costs about 2 log2 n transactions.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from itertools import count
from typing import TypeVar

import orjson
import psycopg
from psycopg_pool import PoolTimeout

from feedback.errors import IngestStopped
from feedback.store.database import DeadLetterRecord, FeedbackStore, WriteStats
from schemas import DecodedMessage, EventKind, Limits, OutcomeEvent, PredictionEvent, decode_message, encode_event

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Failures that go away by themselves: the server is down or restarting, the pool has no
#: connection yet, or the transaction lost a deadlock or serialization race.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.TransactionRollback,
    PoolTimeout,
)

#: Failures that look transient by class but that retrying never ends: a statement past one of the
#: server's limits (54xxx) fails the same way every time.
NEVER_TRANSIENT: tuple[type[BaseException], ...] = (psycopg.errors.ProgramLimitExceeded,)

#: Failures no event causes: the store is not where or what the code expects (a missing table or
#: column, no privilege) or psycopg is misused. Bisecting would dead-letter every event; they are
#: raised, and the worker exits with the batch unacked. Any other failure of a write is taken to
#: be caused by the events in it, and bisected.
STORE_FAULTS: tuple[type[BaseException], ...] = (psycopg.ProgrammingError, psycopg.InterfaceError,
                                                 psycopg.NotSupportedError)

_ARRAY = re.compile(rb"[ \t\r\n]*\[")


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """One consumed Kafka message, as the ingest needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One event that passed the contract, and where it came from."""

    message: InboundMessage
    #: its position in a batch message, -1 for a message of one event
    element_index: int
    event: PredictionEvent | OutcomeEvent


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
        topic_id: Callable[[str], str] = lambda topic: "",
    ) -> None:
        self.store = store
        self.kinds = dict(kinds)
        self.limits = limits or Limits()
        self.max_events_per_txn = max_events_per_txn
        self.backoff = backoff
        self.clock = clock
        #: the id the broker gave a topic, asked for a dead letter's only (its row is keyed by the topic's life)
        self.topic_id = topic_id
        self.stopping = threading.Event()
        self._write_thread: ThreadPoolExecutor | None = None

    def ingest(self, messages: Sequence[InboundMessage]) -> IngestResult:
        """Decode and write ``messages``; returns once every event in them is committed.

        A full chunk is written by the writer thread while this one decodes the next (psycopg waits on the server
        without the GIL): the chunks still commit one at a time, in order. The last chunk is written here.

        Raises :class:`IngestStopped` only when :meth:`stop` is called during an outage; then
        nothing of the unwritten part is acked and it is redelivered after restart.
        """
        result = IngestResult()
        now = self.clock()
        chunk: list[_Decoded] = []
        pending_dead: list[DeadLetterRecord] = []
        writing: Future[None] | None = None
        try:
            for message in messages:
                kind = self._kind(message.topic)
                decoded = decode_message(kind, message.value, now=now, limits=self.limits)
                pending_dead.extend(
                    DeadLetterRecord(
                        source_topic=message.topic, source_topic_id=self.topic_id(message.topic),
                        source_partition=message.partition,
                        source_offset=message.offset, element_index=r.index, key=message.key, raw=r.raw,
                        reason=r.reason, received_at=now,
                    )
                    for r in decoded.rejected
                )
                chunk.extend(_Decoded(message, i, e) for i, e in zip(_element_indexes(message, decoded),
                                                                     decoded.events, strict=True))
                result.events += len(decoded.events)
                if len(chunk) >= self.max_events_per_txn:
                    if writing is not None:
                        before, writing = writing, None
                        before.result()
                    writing = self._writer().submit(self._write_chunk, chunk, pending_dead, result)
                    chunk, pending_dead = [], []
        finally:
            if writing is not None:  # whatever happened here, no write of this call outlives it
                writing.result()
        if chunk or pending_dead:
            self._write_chunk(chunk, pending_dead, result)
        return result

    def _writer(self) -> ThreadPoolExecutor:
        if self._write_thread is None:
            self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pitstop-ingest-write")
        return self._write_thread

    def stop(self) -> None:
        """Make a call blocked on a database outage give up (at shutdown)."""
        self.stopping.set()

    def _kind(self, topic: str) -> EventKind:
        try:
            return self.kinds[topic]
        except KeyError:
            msg = f"no event kind is configured for topic {topic!r}; known: {sorted(self.kinds)}"
            raise ValueError(msg) from None

    def _write_chunk(self, chunk: Sequence[_Decoded], dead: list[DeadLetterRecord], result: IngestResult) -> None:
        failure = self._try_write(chunk, dead, result)
        if isinstance(failure, WriteStats):  # written, all of it
            result.stats += failure
            result.dead_letters.extend(_with_ids(dead, failure))
            return
        log.warning("batch of %d events refused (%s); bisecting it for the events that fail it", len(chunk),
                    _one_line(failure))
        refused: list[DeadLetterRecord] = []
        stats = self._bisect(chunk, failure, refused, result) if chunk else WriteStats()
        letters = [*dead, *refused]
        if letters:
            # no event in it now: a failure here is the store's, not the input's, and is raised
            written = self._with_retry(partial(self.store.write_batch, [], [], letters), result)
            stats += written
            result.dead_letters.extend(_with_ids(letters, written))
        result.stats += stats

    def _bisect(self, items: Sequence[_Decoded], failure: BaseException, refused: list[DeadLetterRecord],
                result: IngestResult) -> WriteStats:
        """``items`` failed to write with ``failure``: write them in halves, down to the single events that fail
        alone, which go to ``refused``."""
        if len(items) == 1:
            refused.append(self._refused(items[0], failure))
            return WriteStats()
        stats = WriteStats()
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            written = self._try_write(half, [], result)
            stats += (written if isinstance(written, WriteStats)
                      else self._bisect(half, written, refused, result))
        return stats

    def _try_write(self, items: Sequence[_Decoded], dead: list[DeadLetterRecord],
                   result: IngestResult) -> WriteStats | Exception:
        """Write ``items`` and ``dead`` in one transaction; the exception instead, when their content may be
        what failed it."""
        predictions = [i.event for i in items if type(i.event) is PredictionEvent]
        outcomes = [i.event for i in items if type(i.event) is OutcomeEvent]
        try:
            return self._with_retry(partial(self.store.write_batch, predictions, outcomes, dead), result)
        except (IngestStopped, *STORE_FAULTS):
            raise
        except Exception as exc:
            return exc

    def _refused(self, item: _Decoded, failure: BaseException) -> DeadLetterRecord:
        message = item.message
        where = "database" if isinstance(failure, psycopg.Error) else "store"
        return DeadLetterRecord(
            source_topic=message.topic, source_topic_id=self.topic_id(message.topic),
            source_partition=message.partition, source_offset=message.offset,
            element_index=item.element_index, key=message.key,
            raw=(message.value or b"") if item.element_index == -1 else encode_event(item.event),
            reason=f"{where}: {_one_line(failure)}", received_at=self.clock(),
        )

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
            if isinstance(exc, NEVER_TRANSIENT):
                raise
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


def _element_indexes(message: InboundMessage, decoded: DecodedMessage) -> list[int]:
    """Each decoded event's position in its message: -1 for a message of one event; in a batch (a JSON array)
    the elements' positions less those the decoder rejected, which keep the order of the events."""
    if message.value is None or _ARRAY.match(message.value) is None:
        return [-1] * len(decoded.events)
    rejected = {r.index for r in decoded.rejected}
    positions = (i for i in count() if i not in rejected)
    return [next(positions) for _ in decoded.events]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 300 else f"{line[:297]}..."
