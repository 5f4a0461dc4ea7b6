"""Rebalances with exact counts: workers joining and leaving one consumer group mid-stream (kept apart from
test_faults.py so that the two long files run on different xdist workers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from feedback.store import FeedbackStore
from pitstop import stack
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from tests.conftest import Services, wait_until
from tests.factories import outcome, prediction
from tests.integration.test_faults import _counts

#: messages a second the producer keeps to: slower than a worker ingests, so the stream lasts through both
#: rebalances whatever the machine's speed (a preloaded stream once ended before the second worker had joined)
RATE = 2_500


def _publish_paced(services: Services, topics: Topics, n: int, done: threading.Event) -> None:
    """Each id's prediction and outcome, and a correction for every tenth, one message each, at :data:`RATE`."""
    started, sent = time.monotonic(), 0
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=1) as producer:
        for i in range(n):
            producer.publish(prediction(i))
            producer.publish(outcome(i, label=i % 2))
            sent += 2
            if i % 10 == 0:
                producer.publish(outcome(i, label=5, after_s=99_999))
                sent += 1
            if i % 100 == 99:
                time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
    done.set()


def test_single_event_messages_through_two_rebalances_land_exactly_once(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """One message an event (the direct hand-off of streams/drain.py at its busiest): a second worker joins the
    group mid-stream and later leaves it, each a rebalance moving partitions between workers mid-batch; every row
    lands exactly once."""
    n = 20_000
    first = start_worker(0)
    published = threading.Event()
    producer = threading.Thread(target=_publish_paced, args=(services, topics, n, published))
    producer.start()
    try:
        wait_until(lambda: _counts(store)[0] >= n * 0.15, 90, lambda: f"{_counts(store)}\n{first.log_tail()}",
                   interval_s=0.02)
        second = start_worker(1)  # waits for its assignment: the group has rebalanced
        joined = _counts(store)[0]
        wait_until(lambda: _counts(store)[0] >= min(n - 1, joined + n * 0.1), 90,
                   lambda: f"{_counts(store)}\n{second.log_tail()}", interval_s=0.02)
        stack.stop_process(second.record, timeout_s=15)  # leaves: a rebalance again, the first takes all back
        left = _counts(store)[0]
    finally:
        producer.join(timeout=120)
    assert published.is_set()
    assert joined < n and left < n, f"the stream ended before both rebalances ({joined}, {left})"
    expected = (n, n + n // 10, n)
    wait_until(lambda: _counts(store) == expected, 120, lambda: f"{_counts(store)}\n{first.log_tail()}")
    assert store.scalar("SELECT count(*) FROM current_labels WHERE label = '5'") == n // 10
    assert store.scalar("SELECT count(*) FROM prediction_index") == n
