"""Publishing the outbox to Kafka: the relay of feedback/outbox.py with a kafka-python producer."""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaProducer

from feedback.outbox import relay
from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0


class OutboxPublisher:
    """Publishes committed outbox rows (acks from every in-sync replica) and marks them sent; one per process,
    used from one thread at a time. The producer connects on first use."""

    def __init__(self, bootstrap: str, topic_prefix: str, *, client_id: str = "pitstop-outbox") -> None:
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.client_id = client_id
        self._producer: KafkaProducer | None = None
        self._futures: list[Any] = []

    def publish(self, store: FeedbackStore) -> int:
        """Publish what the outbox holds; returns how many events went out (0 when another relay runs)."""
        with store.pool.connection() as conn:
            return relay(conn, self._send, self._flush, topic_prefix=self.topic_prefix)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", client_id=self.client_id,
                                           retries=5, max_block_ms=10_000)
        self._futures.append(self._producer.send(topic, key=key, value=value))

    def _flush(self) -> None:
        futures, self._futures = self._futures, []
        if self._producer is not None:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        for future in futures:
            future.get(timeout=FLUSH_TIMEOUT_S)  # raises the broker's refusal, if any


def publish_outbox(outbox: OutboxPublisher, store: FeedbackStore) -> int:
    """Publish committed decisions' events; a failure is logged and retried on the next tick (the rows stay)."""
    try:
        return outbox.publish(store)
    except Exception as exc:  # the broker or the database away: the outbox keeps the events
        log.warning("outbox not published yet, retried on the next tick: %s", exc)
        return 0
