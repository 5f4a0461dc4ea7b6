"""Rebalances with exact counts: workers joining and leaving one consumer group mid-stream (kept apart from
test_faults.py so that the two long files run on different xdist workers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from feedback.store import FeedbackStore
from pitstop import stack
from pitstop.settings import Topics
from tests.conftest import Services, wait_until
from tests.integration.test_faults import _counts, _publish


def test_single_event_messages_through_two_rebalances_land_exactly_once(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """One message an event (the direct hand-off of streams/drain.py at its busiest): a second worker joins the
    group mid-stream and later leaves it, each a rebalance moving partitions between workers mid-batch; every row
    lands exactly once."""
    n = 20_000
    _publish(services, topics, range(n), batch_size=1)
    first = start_worker(0)
    wait_until(lambda: _counts(store)[0] >= n * 0.15, 90, lambda: f"{_counts(store)}\n{first.log_tail()}",
               interval_s=0.02)
    second = start_worker(1)  # waits for its assignment: the group has rebalanced
    joined = _counts(store)[0]
    wait_until(lambda: _counts(store)[0] >= min(n - 1, joined + n * 0.2), 90,
               lambda: f"{_counts(store)}\n{second.log_tail()}", interval_s=0.02)
    stack.stop_process(second.record, timeout_s=15)  # leaves: a rebalance again, the first takes all back
    left = _counts(store)[0]
    assert joined < n and left < n, f"the stream ended before both rebalances ({joined}, {left}); publish more"
    expected = (n, n + n // 10, n)
    wait_until(lambda: _counts(store) == expected, 120, lambda: f"{_counts(store)}\n{first.log_tail()}")
    assert store.scalar("SELECT count(*) FROM current_labels WHERE label = '5'") == n // 10
    assert store.scalar("SELECT count(*) FROM prediction_index") == n
