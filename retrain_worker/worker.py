"""The retrain worker's loop: consume `pitstop.retrain-triggers` (kafka-python, a consumer group of its own: training
never runs on a Faust event loop) and answer each trigger with a recorded outcome.

A trigger's offset is committed only after its outcome (candidate, rejection or failure) is recorded; a crash
before that redelivers it, and the pipeline returns the recorded outcome of a trigger already answered. One
training per model at a time across every worker process (the pipeline's advisory lock): a trigger whose model
is being trained elsewhere waits. A trigger whose handling raises is retried, and after ``max_tries`` recorded
as failed with the reason, never left to loop. The process shell (settings, Kafka clients, signals) is
`pitstop retrain-worker` (pitstop/retrain_service.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka.structs import OffsetAndMetadata, TopicPartition

from feedback import metrics
from feedback.store import FeedbackStore
from feedback.store.ingest import TRANSIENT_ERRORS, InboundMessage
from retrain_worker.intake import TriggerEvent, TriggerIntake, publish_dead_letters
from retrain_worker.pipeline import ModelBusy, RetrainPipeline
from retrain_worker.trainers import start_trainer_server

log = logging.getLogger(__name__)

BUSY_WAIT_S = 2.0
_ATTEMPT = """
UPDATE retrain_intake SET attempts = attempts + 1, last_error = %s WHERE trigger_id = %s RETURNING attempts
"""


class RetrainWorker:
    """Poll triggers, answer each, commit its offset. The Kafka clients and the outbox publishing come from the
    caller: ``consumer`` (kafka-python, subscribed, auto-commit off), ``send_dead_letter(topic, key, value)`` with
    ``flush_dead_letters()``, ``publish()`` (the outbox relay) and ``topic_id(topic)``, the id the broker gave the
    topic, which keys a dead letter's row by the topic's life (pitstop/topic_ids.py)."""

    def __init__(self, store: FeedbackStore, pipeline: RetrainPipeline, consumer: Any, *, dead_letter_topic: str,
                 send_dead_letter: Callable[[str, bytes | None, bytes], Any], flush_dead_letters: Callable[[], Any],
                 publish: Callable[[], Any], topic_id: Callable[[str], str] = lambda topic: "",
                 max_tries: int = 3) -> None:
        self.store = store
        self.pipeline = pipeline
        self.consumer = consumer
        self.intake = TriggerIntake(store, topic_id=topic_id)
        self.dead_letter_topic = dead_letter_topic
        self.send_dead_letter = send_dead_letter
        self.flush_dead_letters = flush_dead_letters
        self.publish = publish
        self.max_tries = max_tries

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Poll and answer until ``should_stop()``; the trainer server starts loading its imports meanwhile."""
        start_trainer_server()
        while not should_stop():
            batches = self.consumer.poll(timeout_ms=1000)
            for tp, records in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
                messages = [InboundMessage(topic=r.topic, partition=r.partition, offset=r.offset, key=r.key,
                                           value=r.value) for r in records]
                if not self.take(tp, messages, should_stop):
                    return

    def take(self, tp: TopicPartition, messages: list[InboundMessage], should_stop: Callable[[], bool]) -> bool:
        """Answer a batch of one partition and commit past it; False when asked to stop before the end."""
        result = self.intake.receive(messages)
        if result.dead_letters:
            publish_dead_letters(self.send_dead_letter, self.dead_letter_topic, result.dead_letters)
            self.flush_dead_letters()
        for trigger in result.triggers:
            if not self._answer(trigger, should_stop):
                return False  # this trigger's offset stays uncommitted: it is redelivered
        self.consumer.commit({tp: OffsetAndMetadata(messages[-1].offset + 1, None, -1)})
        return True

    def _answer(self, trigger: TriggerEvent, should_stop: Callable[[], bool]) -> bool:
        """Handle ``trigger`` until it has an outcome; False when asked to stop first. The training's time and
        outcome go to the worker's metrics."""
        started = time.monotonic()
        while not should_stop():
            try:
                outcome = self.pipeline.handle(trigger)
            except ModelBusy:
                time.sleep(BUSY_WAIT_S)
                continue
            except TRANSIENT_ERRORS as exc:
                log.warning("trigger %s: database unavailable (%s); retrying", trigger.trigger_id, exc)
                time.sleep(BUSY_WAIT_S)
                continue
            except Exception as exc:  # a bug or a bad model: retried, then recorded as failed, never a loop
                text = str(exc).strip().splitlines()
                reason = f"{type(exc).__name__}: {text[0] if text else ''}"
                tries = self._attempt(trigger, reason)
                log.exception("trigger %s: attempt %d of %d failed", trigger.trigger_id, tries, self.max_tries)
                if tries >= self.max_tries:
                    self.pipeline.give_up(trigger, f"gave up after {tries} tries: {reason}")
                    metrics.TRAININGS.labels(trigger.model_name, "failed").inc()
                    return True
                continue
            log.info("trigger %s: %s: %s", trigger.trigger_id, outcome.result, outcome.sentence)
            metrics.TRAINING_SECONDS.labels(trigger.model_name).observe(time.monotonic() - started)
            metrics.TRAININGS.labels(trigger.model_name, outcome.result).inc()
            try:
                self.publish()
            except Exception as exc:  # the ingest workers' relay publishes it later
                log.warning("candidate event stays in the outbox for now: %s", exc)
            return True
        return False

    def _attempt(self, trigger: TriggerEvent, reason: str) -> int:
        with self.store.pool.connection() as conn:
            row = conn.execute(_ATTEMPT, (reason[:500], trigger.trigger_id)).fetchone()
        return int(row[0]) if row else self.max_tries
