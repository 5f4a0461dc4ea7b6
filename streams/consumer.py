"""Consumer tuning Faust does not expose: how long a fetch may wait on the broker for data."""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_ORIGINAL = AIOKafkaConsumerThread._create_worker_consumer


def set_fetch_max_wait(ms: int) -> None:
    """Make Faust's worker consumer wait at most ``ms`` for a fetch to fill.

    faust-streaming 0.15 hard-codes ``fetch_max_wait_ms=1500`` in its aiokafka driver. A broker
    that does not answer a fetch early when data arrives (Tansu does not) then adds up to 1.5 s
    to every event's publish-to-visible time: measured p99 1.08 s with 1500 ms, 0.34-0.50 s with
    100 ms at 10k events/s (BENCHMARKS.md). The value is set on the consumer before it starts,
    which is when aiokafka builds its fetcher from it.
    """

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _ORIGINAL(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
