"""Which windows changed since a monitor round: read from ``window_changes`` (migration 015), which every writer of
the window accumulators marks with its transaction's id in the same transaction.

A round begins by taking the database's current snapshot (:func:`snapshot`) and reads the accumulators after it,
so everything committed before the snapshot is in what it reads. The next round asks for the windows whose
marking transaction that snapshot did not see (:func:`changed_since`): committed after it was taken, or still
running then. Transactions commit in any order, so "changed since" is a question of visibility, not of a larger
id: a transaction that began before a round and committed after it has a smaller id than some the round saw, and
is still found. A window read again because it changed while the round was reading costs one evaluation more,
never a missed change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

#: rows whose marking transaction the snapshot did not see: at or past its xmin (every older one it saw) and not
#: visible in it
_CHANGED = """
SELECT model_name, model_version, window_s, segment, window_start FROM window_changes
WHERE changed >= pg_snapshot_xmin(%(since)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(changed, %(since)s::pg_snapshot)
  AND model_name = ANY(%(models)s)
"""


@dataclass(frozen=True, slots=True, order=True)
class ChangedWindow:
    """One window of one segment of a version whose accumulators changed."""

    model_name: str
    model_version: str
    window_s: int
    segment: str
    window_start: datetime


def snapshot(cur: psycopg.Cursor[Any]) -> str:
    """The database's current snapshot, as text (``xmin:xmax:xip,...``): take it before reading the accumulators."""
    return str(cur.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]


def changed_since(cur: psycopg.Cursor[Any], since: str, models: Sequence[str]) -> list[ChangedWindow]:
    """The windows of ``models`` whose accumulators a transaction not visible in ``since`` changed, sorted."""
    rows = cur.execute(_CHANGED, {"since": since, "models": list(models)}).fetchall()
    return sorted(ChangedWindow(*r) for r in rows)
