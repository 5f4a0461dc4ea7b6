"""The ingest worker's Faust app: the input topics, the ingest agent (which also counts the monitored models'
windows in its transaction) and the dead-letter topic. The monitor rounds, the retrain decisions and the outbox
relay run in the monitor worker (pitstop/monitor_service.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from feedback import metrics
from feedback.errors import IngestStopped
from feedback.monitoring.windows import WindowUpdater
from feedback.store import DeadLetterRecord, FeedbackStore
from feedback.store.ingest import (
    DEAD_LETTER_RAW_PREFIX_BYTES,
    InboundMessage,
    Ingestor,
    IngestResult,
    dead_letter_key,
    encode_dead_letter,
)
from pitstop.settings import Settings
from pitstop.topic_ids import TopicIds
from schemas import EventKind
from streams.consumer import set_fetch_max_wait
from streams.drain import use_direct_hand_off
from streams.take import bound_stream_buffers, message_bytes, take_batches

log = logging.getLogger(__name__)

#: Exit status of a worker that stopped on an unexpected error (EX_SOFTWARE).
EXIT_INGEST_BUG = 70


def build_app(settings: Settings, *, ready_file: Path | None = None) -> faust.App:
    """The ingest app: one agent consumes predictions and outcomes and writes them to Postgres."""
    bootstrap, database_url = settings.require_services()
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    use_direct_hand_off()
    topics = settings.topics
    app = faust_app(settings, settings.app_id, bootstrap, ready_file=ready_file)
    bound_stream_buffers(app, settings.batch_bytes)  # a backlog of large messages waits in Kafka, not here
    inputs = app.topic(topics.predictions, topics.outcomes, value_type=bytes, key_type=bytes,
                       value_serializer="raw", key_serializer="raw")
    dead_letter = app.topic(topics.dead_letter, value_type=bytes, key_type=bytes,
                            value_serializer="raw", key_serializer="raw")
    windows = WindowUpdater(settings.monitoring)
    store = FeedbackStore(database_url, settings.db_schema, windows=windows)
    topic_ids = TopicIds(bootstrap, client_id=f"{settings.app_id}-topic-ids")
    ingestor = Ingestor(
        store,
        {topics.predictions: EventKind.PREDICTION, topics.outcomes: EventKind.OUTCOME},
        limits=settings.limits,
        max_events_per_txn=settings.max_events_per_txn,
        topic_id=topic_ids,
    )

    @app.on_rebalance_complete.connect
    async def _forget_topic_ids(sender: faust.App, **_: Any) -> None:
        topic_ids.forget()  # a broker that came back (topics made again) is rejoined through a rebalance

    kinds = {topics.predictions: "prediction", topics.outcomes: "outcome"}

    def counted_ingest(messages: list[InboundMessage]) -> IngestResult:
        started = time.monotonic()
        result = ingestor.ingest(messages)
        metrics.count_batch(result, Counter(kinds.get(m.topic, "other") for m in messages),
                            sum(map(message_bytes, messages)), time.monotonic() - started)
        return result

    @app.agent(inputs, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[Any]) -> None:
        # A batch is acked only after the transaction holding it has committed (feedback.store.ingest).
        # Reading the next batch while writing this one measured no faster (BENCHMARKS.md).
        async for events in take_batches(stream, settings.batch_messages, settings.batch_bytes,
                                         settings.batch_within_s):
            await handle_then_ack(stream, events, counted_ingest, dead_letter)
            _record_lag(app, events)

    @app.on_before_shutdown.connect
    async def _stop_ingest(sender: faust.App, **_: Any) -> None:
        ingestor.stop()

    settings.serve_metrics(settings.app_id)
    store.open(wait=False)  # connects in the background; the first batch waits for it
    return app


def _record_lag(app: faust.App, events: list[Any]) -> None:
    """Each partition of the batch: how many messages its end is ahead of the batch's last (the consumer lag).
    The batch is acked already; a partition revoked meanwhile (aiokafka asserts it is assigned) leaves its gauge as
    it was: a metric never stops the agent."""
    last = {e.message.tp: e.message.offset for e in events}
    for tp, offset in last.items():
        try:
            highwater = app.consumer.highwater(tp)
        except Exception:  # revoked by a rebalance, or a consumer going away
            continue
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset - 1))


def faust_app(settings: Settings, app_id: str, bootstrap: str, *, ready_file: Path | None = None) -> faust.App:
    """A Faust app (``app_id`` is its consumer group) as every Pitstop worker runs one: no web server, topics made by
    `pitstop topics` only, a new group reads from the start, every message acknowledged by all in-sync replicas;
    after each rebalance it writes its assigned partitions to ``ready_file`` (the supervisor waits for it)."""
    datadir = settings.state_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        web_enabled=False,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=1,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )

    @app.on_rebalance_complete.connect
    async def _mark_ready(sender: faust.App, **_: Any) -> None:
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.write_text(str(sorted(str(tp) for tp in app.consumer.assignment())))

    return app


class _Handled(Protocol):
    dead_letters: list[DeadLetterRecord]


async def handle_then_ack(stream: faust.StreamT[Any], events: list[Any],
                          handle: Callable[[list[InboundMessage]], _Handled], dead_letter: faust.TopicT) -> None:
    """Hand a batch to ``handle`` in a thread (it commits its effects and its dead letters to the database), publish
    the dead letters, then ack the batch. Shutting down leaves the batch unacked (redelivered); anything else that
    raises is a bug: the worker exits with the batch unacked (:func:`_exit_unacked`)."""
    try:
        result = await asyncio.to_thread(handle, [_inbound(e.message) for e in events])
        await publish_dead_letters(dead_letter, result.dead_letters)
    except IngestStopped:
        return  # shutting down: the batch stays unacked and is redelivered
    except Exception:
        _exit_unacked(events)
    for event in events:
        await stream.ack(event)


async def publish_dead_letters(topic: faust.TopicT, letters: list[DeadLetterRecord]) -> None:
    """Publish the dead letters of a batch, already committed to the table, on the dead-letter topic.

    An event is bounded (feedback.store.ingest.DEAD_LETTER_MAX_BYTES); should the topic still refuse it as too
    large (a broker or topic configured for smaller messages), it goes again without the bytes' prefix, and
    failing that is left to the table, logged: a refusal that every retry meets must not stop the stream.
    """
    for letter in letters:
        key = dead_letter_key(letter)
        for raw_prefix_bytes in (DEAD_LETTER_RAW_PREFIX_BYTES, 0):
            try:
                await (await topic.send(key=key, value=encode_dead_letter(letter, raw_prefix_bytes=raw_prefix_bytes)))
                break
            except Exception as exc:
                if not _too_large(exc):
                    raise
                log.warning("dead letter %d (%s[%d]@%d) too large for %s with %d bytes of its input: %s",
                            letter.dead_letter_id, letter.source_topic, letter.source_partition,
                            letter.source_offset, topic.get_topic_name(), raw_prefix_bytes, exc)
        else:
            log.error("dead letter %d is in the dead_letters table only: the dead-letter topic refused it",
                      letter.dead_letter_id)


def _too_large(exc: BaseException | None) -> bool:
    # Faust wraps the producer's own refusal in ProducerSendError; the broker's comes back as it is
    while exc is not None:
        if isinstance(exc, _TOO_LARGE):
            return True
        exc = exc.__cause__
    return False


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def _exit_unacked(events: list[Any]) -> NoReturn:
    """A bug, not bad input: exit at once so that nothing is acked past the batch in hand.

    Faust would ack a message whose agent raised and restart the agent past it; exiting leaves
    the offsets uncommitted, and the restarted worker (``pitstop up`` restarts it) reads the
    batch again.
    """
    first = events[0].message if events else None
    where = f"{first.topic}[{first.partition}]@{first.offset}" if first is not None else "?"
    log.critical("a batch from %s failed unexpectedly; exiting with the batch unacked", where, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_INGEST_BUG)


def _inbound(message: Any) -> InboundMessage:
    return InboundMessage(topic=message.topic, partition=message.partition, offset=message.offset,
                          key=message.key, value=message.value)
