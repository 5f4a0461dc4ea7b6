"""The join: the feedback store (pool, migrations, COPY + upserts) and the ingest (decode, dead letters, retry).

Knows nothing of monitoring: a batch write notifies a :class:`BatchObserver`, which monitoring implements.
"""

from feedback.store.database import (
    BatchObserver,
    CountedLabel,
    DeadLetterRecord,
    FeedbackStore,
    WriteStats,
    analyst_role,
    connect_kwargs,
    drop_store,
    ensure_partitions,
    index_loaded_predictions,
    insert_dead_letters,
    lock_key,
    migrate,
)

__all__ = [
    "BatchObserver",
    "CountedLabel",
    "DeadLetterRecord",
    "FeedbackStore",
    "WriteStats",
    "analyst_role",
    "connect_kwargs",
    "drop_store",
    "ensure_partitions",
    "index_loaded_predictions",
    "insert_dead_letters",
    "lock_key",
    "migrate",
]
