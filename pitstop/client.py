"""The Python producer for model servers: publishes predictions and outcomes, batched by default.

Any Kafka client can publish single events keyed by ``prediction_id`` (see ``schemas/``); this
one puts up to ``batch_size`` events of one kind into a message (a JSON array), because the
ingest pays per message, and confirms delivery on :meth:`PitstopProducer.flush`.

    with PitstopProducer("127.0.0.1:9092") as producer:
        producer.publish(prediction)
        producer.publish(outcome)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pitstop.errors import PublishError
from pitstop.settings import Topics
from schemas import OutcomeEvent, PredictionEvent, encode_batch, encode_event

log = logging.getLogger(__name__)


class PitstopProducer:
    """Publishes events to the predictions and outcomes topics with delivery confirmation."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topics: Topics | None = None,
        batch_size: int = 500,
        **kafka_options: Any,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size={batch_size}: expected an integer >= 1 (1 publishes single events)"
            raise ValueError(msg)
        self.topics = topics or Topics()
        self.batch_size = batch_size
        options: dict[str, Any] = {"acks": "all", "linger_ms": 5, "max_request_size": 16 * 1024 * 1024,
                                   "client_id": "pitstop-producer"}
        options.update(kafka_options)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, **options)
        self._predictions: list[PredictionEvent] = []
        self._outcomes: list[OutcomeEvent] = []
        self._pending: list[Any] = []
        self.messages_sent = 0

    def publish(self, event: PredictionEvent | OutcomeEvent) -> None:
        """Queue one event; a full batch is handed to the Kafka client at once."""
        if isinstance(event, PredictionEvent):
            buffer: list[Any] = self._predictions
            topic = self.topics.predictions
        elif isinstance(event, OutcomeEvent):
            buffer = self._outcomes
            topic = self.topics.outcomes
        else:
            msg = f"cannot publish {type(event).__name__}: expected a PredictionEvent or an OutcomeEvent"
            raise TypeError(msg)
        if self.batch_size == 1:
            self._send(topic, event.prediction_id.encode(), encode_event(event))
            return
        buffer.append(event)
        if len(buffer) >= self.batch_size:
            self._send(topic, None, encode_batch(buffer))
            buffer.clear()

    def publish_many(self, events: Iterable[PredictionEvent | OutcomeEvent]) -> None:
        for event in events:
            self.publish(event)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Send what is queued and wait until the broker confirmed every message; returns the count.

        Raises PublishError when any message was not confirmed: the caller still holds the
        events and may publish them again (the ingest is idempotent).
        """
        if self._predictions:
            self._send(self.topics.predictions, None, encode_batch(self._predictions))
            self._predictions.clear()
        if self._outcomes:
            self._send(self.topics.outcomes, None, encode_batch(self._outcomes))
            self._outcomes.clear()
        self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        failures = []
        for future in pending:
            try:
                future.get(timeout=timeout_s)
            except KafkaError as exc:
                failures.append(exc)
        if failures:
            msg = f"{len(failures)} of {len(pending)} messages were not confirmed by the broker: {failures[0]}"
            raise PublishError(msg)
        return len(pending)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close()

    def __enter__(self) -> PitstopProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._pending.append(self._producer.send(topic, key=key, value=value))
        self.messages_sent += 1
