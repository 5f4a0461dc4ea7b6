"""Retention: the weekly partitions of ``predictions`` and ``outcomes`` past the store's retention are dropped whole
(migration 022; docs/design.md "Partitions and retention").

A partition goes when its week ended longer ago than the longest retention of the configured models and the
default (a week's partition holds every model's rows). Retention runs on event time, as windows do: "now" is the
store's watermark, the first instant of the newest week holding predictions (:func:`watermark`; a week early at
most, so rows are kept up to a week longer, never shorter). A replay of old data into a store of its own keeps it
all; the same rows replayed into a store of newer ones go at the next prune. An idle store drops nothing.

A partition of predictions stays, whatever its age, while a registered version's data points into it: the newest
held-out set of each model, and the training and test windows of the versions in a live stage (candidate, shadow,
canary, champion, previous). Windows, decisions, registry and rollout history are other tables, never pruned.

Dropping is done so that the ingest never waits on it:

1. ``DETACH PARTITION ... CONCURRENTLY``, which takes the parent in SHARE UPDATE EXCLUSIVE mode only; a detach a
   crash interrupted is finished (``FINALIZE``);
2. for a partition of predictions, the rows of its ids in the narrow per-id tables (``prediction_index``,
   ``current_labels``, ``shadow_predictions``, ``ramp_rows``) are deleted in chunks of :data:`CHUNK` ids, each its
   own transaction;
3. ``DROP TABLE`` of the detached table, which no query reads any more.

A prune that stops anywhere is taken up by the next: a table it detached (its comment says so) is finished first; a
partition someone else detached, to archive it say, is left alone.
Labels whose prediction never came and dead letters past the retention are deleted too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

#: ids whose per-id rows one transaction deletes
CHUNK = 1_000
#: the tables partitioned by week, and the column each is partitioned by
PARTITIONED = {"predictions": "predicted_at", "outcomes": "observed_at"}
#: the comment a prune puts on a partition before detaching it: a detached table without it was detached by someone
#: else (to archive it, say) and is left alone
DETACHING = "pitstop prune: detaching, to drop"
#: the stages whose versions' data windows keep their rows
LIVE_STAGES = ("candidate", "shadow", "canary", "champion", "previous")

_NAME = re.compile(r"^(predictions|outcomes)_(\d{8})$")
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    table: str
    name: str
    lower: datetime
    upper: datetime
    rows: int | None  # PostgreSQL's estimate (pg_class.reltuples); None until ANALYZE (or autovacuum) counted it
    attached: bool
    ours: bool  # detached, by a prune that stopped before dropping it (its comment is DETACHING)


@dataclass(frozen=True, slots=True)
class Pin:
    """Rows a registered version's data points to: predictions in [start, end]."""

    what: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Step:
    partition: Partition
    drop: bool
    reason: str
    #: past, leftover (dropped); within, pinned, foreign (kept: in the retention, pointed into, detached by another)
    kind: str


@dataclass(slots=True)
class PruneResult:
    watermark: datetime | None  # the "now" retention counts back from (None: the store holds no prediction)
    cutoff: datetime | None  # rows before it are past the retention
    steps: list[Step]
    dropped: list[str] = field(default_factory=list)
    ids_cleared: int = 0
    unmatched_labels: int = 0
    dead_letters: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # by phase: detach, clear ids, drop, the rest


def partitions(conn: psycopg.Connection[Any]) -> list[Partition]:
    """The weekly partitions of the event tables, attached or left detached by an interrupted prune, oldest first."""
    found: list[Partition] = []
    rows = conn.execute(
        "SELECT c.relname, p.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint,"
        " obj_description(c.oid, 'pg_class') = %s"
        " FROM pg_class c LEFT JOIN pg_inherits h ON h.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = h.inhparent"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        " AND c.relname ~ '^(predictions|outcomes)_[0-9]{8}$'", (DETACHING,)).fetchall()
    for name, parent, bound, reltuples, ours in rows:
        match = _NAME.match(name)
        if match is None:
            continue
        table = match[1]
        if parent is not None and (bounds := _BOUNDS.search(bound or "")):
            lower, upper = (datetime.fromisoformat(b).astimezone(UTC) for b in bounds.groups())
        else:  # detached: its name is its week
            lower = datetime.strptime(match[2], "%Y%m%d").replace(tzinfo=UTC)
            upper = lower + timedelta(weeks=1)
        found.append(Partition(table, name, lower, upper, None if reltuples < 0 else int(reltuples),
                               parent is not None, parent is None and bool(ours)))
    return sorted(found, key=lambda p: (p.lower, p.table))


def pins(conn: psycopg.Connection[Any]) -> list[Pin]:
    """What registered versions' data points to: each model's newest held-out set, and the training and test windows
    of every version in a live stage."""
    found = [Pin(f"{model}'s held-out set {holdout_id}", start, end) for model, holdout_id, start, end in conn.execute(
        "SELECT DISTINCT ON (model_name) model_name, holdout_id, window_start, window_end FROM holdout_sets"
        " ORDER BY model_name, holdout_id DESC").fetchall()]
    for model, version, stage, lineage in conn.execute(
            "SELECT model_name, version, stage, lineage FROM model_versions WHERE stage = ANY(%s)",
            (list(LIVE_STAGES),)).fetchall():
        for key in ("train_window", "test_window"):
            window = _window(lineage.get(key)) if isinstance(lineage, dict) else None
            if window is not None:
                found.append(Pin(f"{model} {version}'s {key.replace('_', ' ')} ({stage})", *window))
    return found


def watermark(conn: psycopg.Connection[Any], found: list[Partition]) -> datetime | None:
    """The first instant of the newest week whose partition of predictions holds a row (None: no rows at all): one
    look at the first row of each partition, newest first (the weeks made ahead are empty)."""
    for part in sorted((p for p in found if p.table == "predictions" and p.attached), key=lambda p: p.lower,
                       reverse=True):
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(part.name))).fetchone()
        if row and row[0]:
            return part.lower
    return None


def plan(conn: psycopg.Connection[Any], *, retention: timedelta,
         now: datetime | None = None) -> tuple[datetime | None, datetime | None, list[Step]]:
    """"Now" (``now``, else the store's :func:`watermark`; None for a store without predictions), the cutoff (now
    less ``retention``) and, for every partition, whether it goes and why."""
    found = partitions(conn)
    now = now if now is not None else watermark(conn, found)
    cutoff = now - retention if now is not None else None
    kept_for = pins(conn)
    steps = []
    for part in found:
        if not part.attached:
            steps.append(Step(part, True, "detached by an earlier prune that stopped before dropping it", "leftover")
                         if part.ours else
                         Step(part, False, "detached by someone else (not by a prune): left alone", "foreign"))
        elif cutoff is None:
            steps.append(Step(part, False, "the store holds no prediction: nothing is past the retention", "within"))
        elif part.upper > cutoff:
            steps.append(Step(part, False, f"within the retention ({_days(retention)}: rows after "
                                           f"{cutoff:%Y-%m-%d %H:%M} UTC are kept)", "within"))
        elif part.table == "predictions" and (pin := next((p for p in kept_for if _overlaps(p, part)), None)):
            steps.append(Step(part, False, f"past the retention, kept: {pin.what} points into it", "pinned"))
        else:
            steps.append(Step(part, True, f"past the retention ({_days(retention)}): its week ended before "
                                          f"{cutoff:%Y-%m-%d %H:%M} UTC", "past"))
    return now, cutoff, steps


class PruneRunning(Exception):  # noqa: N818 - a state, not an error of the caller's
    """Another prune of the same store holds its lock."""


def prune(database_url: str, schema: str, *, retention: timedelta, now: datetime | None = None,
          dry_run: bool = False) -> PruneResult:
    """Drop the partitions past ``retention`` (see the module's docstring); ``dry_run``: only the plan. One prune of
    a store at a time: another running raises :class:`PruneRunning`."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(hashtext(current_schema() || ' prune'))").fetchone()
        if not (locked and locked[0]):
            msg = f"another prune of schema {schema} is running; try again when it is done"
            raise PruneRunning(msg)
        now, cutoff, steps = plan(conn, now=now, retention=retention)
        result = PruneResult(now, cutoff, steps)
        if dry_run or cutoff is None:
            return result
        seconds = dict.fromkeys(("detach", "clear ids", "drop"), 0.0)
        for step in (s for s in steps if s.drop):
            part = step.partition
            started = time.monotonic()
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(part.name), sql.Literal(DETACHING)))
            _detach(conn, part)
            seconds["detach"] += time.monotonic() - started
            if part.table == "predictions":
                started = time.monotonic()
                result.ids_cleared += _clear_ids(conn, part.name)
                seconds["clear ids"] += time.monotonic() - started
            started = time.monotonic()
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
            seconds["drop"] += time.monotonic() - started
            result.dropped.append(part.name)
        result.seconds.update(seconds)
        started = time.monotonic()
        result.unmatched_labels = conn.execute(
            "DELETE FROM current_labels c WHERE c.observed_at < %s"
            " AND NOT EXISTS (SELECT 1 FROM prediction_index i WHERE i.prediction_id = c.prediction_id)",
            (cutoff,)).rowcount
        result.dead_letters = conn.execute("DELETE FROM dead_letters WHERE received_at < %s", (cutoff,)).rowcount
        result.seconds["unmatched labels and dead letters"] = time.monotonic() - started
    return result


def _detach(conn: psycopg.Connection[Any], part: Partition) -> None:
    pending = conn.execute(
        "SELECT h.inhdetachpending FROM pg_inherits h WHERE h.inhrelid = %s::regclass", (part.name,)).fetchone()
    if pending is None:
        return  # detached already
    how = "FINALIZE" if pending[0] else "CONCURRENTLY"
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} {}").format(
        sql.Identifier(part.table), sql.Identifier(part.name), sql.SQL(how)))


_CLEAR = """
WITH ids AS (
    SELECT prediction_id, predicted_at, model_name FROM {part} WHERE prediction_id > %(after)s
    ORDER BY prediction_id LIMIT %(n)s
), index_rows AS (
    DELETE FROM prediction_index i USING ids
    WHERE i.prediction_id = ids.prediction_id AND i.predicted_at = ids.predicted_at
), labels AS (
    DELETE FROM current_labels c USING ids WHERE c.prediction_id = ids.prediction_id
), shadows AS (  -- by its key: every version of the prediction's model (a shadow's, or a champion's in a ramp)
    DELETE FROM shadow_predictions s USING ids JOIN model_versions v ON v.model_name = ids.model_name
    WHERE s.model_name = v.model_name AND s.version = v.version AND s.prediction_id = ids.prediction_id
), ramps AS (
    DELETE FROM ramp_rows r USING ids WHERE r.prediction_id = ids.prediction_id
)
SELECT max(prediction_id), count(*) FROM ids
"""


def _clear_ids(conn: psycopg.Connection[Any], name: str) -> int:
    """Delete the per-id rows of a detached partition's predictions, :data:`CHUNK` ids a transaction, in id order
    (a prune taken up again starts over: the deletes find nothing the second time)."""
    statement = sql.SQL(_CLEAR).format(part=sql.Identifier(name))
    after, cleared = "", 0
    # Each chunk's commit does not wait for its WAL to reach the disk: a thousand fsyncs of its own are a thousand the
    # ingest's commits may queue behind (BENCHMARKS.md "What the ingest waits on during a prune": this leaves the
    # pauses' cause, the WAL the clearing writes, in place). A crash loses at most the last chunks' deletes, which the
    # next prune makes again; the drop that follows commits synchronously, and with it every chunk before it.
    conn.execute("SET synchronous_commit = off")
    try:
        while True:
            last, n = conn.execute(statement, {"after": after, "n": CHUNK}).fetchone()  # type: ignore[misc]
            cleared += n
            if last is None or n < CHUNK:
                return cleared
            after = last
    finally:
        conn.execute("RESET synchronous_commit")


def _window(value: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(value, Iterable) or isinstance(value, str | bytes | dict):
        return None
    bounds = [v for v in value if isinstance(v, str)]
    if len(bounds) != 2:
        return None
    try:
        start, end = (datetime.fromisoformat(b) for b in bounds)
    except ValueError:
        return None
    return (start if start.tzinfo else start.replace(tzinfo=UTC), end if end.tzinfo else end.replace(tzinfo=UTC))


def _overlaps(pin: Pin, part: Partition) -> bool:
    return pin.start < part.upper and pin.end >= part.lower


def _days(span: timedelta) -> str:
    return f"{span.days} days" if span.days * 86_400 == span.total_seconds() else str(span)
