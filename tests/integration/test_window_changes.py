"""Which windows changed since a round (feedback/monitoring/changes.py): marked by the transaction that changes
the accumulators, found by visibility in the round's snapshot, whatever order transactions commit in."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from feedback.monitoring.changes import ChangedWindow, changed_since, snapshot
from feedback.monitoring.profile import ROWS
from feedback.monitoring.windows import WindowDelta, install_profile
from feedback.store import FeedbackStore
from tests.factories import T0, outcome
from tests.integration import test_windows
from tests.integration.test_windows import events, reference

HOUR = timedelta(hours=1)
#: a store that counts windows, with the model's profile installed (test_windows' fixture)
monitored = test_windows.monitored


def _snapshot(store: FeedbackStore) -> str:
    with store.pool.connection() as conn, conn.cursor() as cur:
        return snapshot(cur)


def _changed(store: FeedbackStore, since: str) -> set[tuple[str, datetime]]:
    with store.pool.connection() as conn, conn.cursor() as cur:
        found = changed_since(cur, since, ["churn"])
    assert all(isinstance(c, ChangedWindow) and c.model_version == "v1" and c.window_s == 3600 for c in found)
    return {(c.segment, c.window_start) for c in found}


def _windows(store: FeedbackStore, sql: str) -> set[tuple[str, datetime]]:
    return {(segment, start) for segment, start in store.rows(sql)}


def test_an_ingest_marks_the_windows_it_counted_and_a_later_round_sees_nothing_new(monitored: FeedbackStore) -> None:
    """Every (segment, window) the batch counted is marked, and only those; a snapshot after the batch finds
    none; a late label marks its prediction's window only."""
    before = _snapshot(monitored)
    batch = events(40)  # 7 minutes apart: 5 windows, segments eu and us
    monitored.write_batch(batch, [])
    counted = _windows(monitored, "SELECT DISTINCT segment, window_start FROM window_counts")
    assert len(counted) == 5 * 3  # '*', eu and us in every window of 40 rows
    assert _changed(monitored, before) == counted
    after = _snapshot(monitored)
    assert _changed(monitored, after) == set()

    late = batch[3]  # predicted in the first window
    monitored.write_batch([], [outcome(3, 1)])
    first = T0.replace(minute=0)
    assert late.predicted_at < first + HOUR
    assert _changed(monitored, after) == {("*", first), (f"region={late.segment['region']}", first)}


def test_a_transaction_that_commits_after_the_round_is_found_by_the_next_one(monitored: FeedbackStore) -> None:
    """A writer that began first (the smaller transaction id) and commits after a round read is found by the next
    round; a writer the round saw is not found twice. A "larger id than the last one seen" rule misses the first."""
    start = _snapshot(monitored)
    slow_window = datetime(2026, 3, 5, 10, tzinfo=T0.tzinfo)
    with monitored.pool.connection() as slow, slow.transaction(), slow.cursor() as cur:
        delta = WindowDelta()
        delta.add_counts(("churn", "v1", "*", slow_window, ROWS), np.array([1]))
        monitored.windows.write(cur, delta)  # the slow writer's transaction has its id now
        monitored.write_batch(events(3), [])  # a later transaction, committed first
        first_round = _snapshot(monitored)
        committed = _windows(monitored, "SELECT DISTINCT segment, window_start FROM window_counts")
        assert ("*", slow_window) not in committed
        assert _changed(monitored, start) == committed  # the slow writer's window is not visible yet
    # the slow writer has committed
    assert _changed(monitored, first_round) == {("*", slow_window)}
    assert _changed(monitored, _snapshot(monitored)) == set()


def test_a_profile_recount_marks_every_window_of_the_version(monitored: FeedbackStore) -> None:
    """Installing a profile again recounts the version: every window is marked, those left empty too."""
    monitored.write_batch(events(40), [])
    marked = _windows(monitored, "SELECT segment, window_start FROM window_changes")
    since = _snapshot(monitored)
    with monitored.pool.connection() as conn:
        install_profile(conn, monitored.windows, reference())
    assert _changed(monitored, since) == marked
