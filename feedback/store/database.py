"""The PostgreSQL feedback store: migrations, the pooled connection, and the batch write."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import resources
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from schemas import OutcomeEvent, PredictionEvent

log = logging.getLogger(__name__)

_MIGRATIONS_LOCK = 0x5049_5453  # "PITS": one migrator at a time across processes


def lock_key(name: str = "%s") -> str:
    """SQL for the advisory lock key of ``name`` (an SQL expression, by default a parameter) in the store of the
    connection's schema: stores in other schemas of the same database never wait on each other's locks.

    >>> lock_key(), lock_key("m || '/' || v")
    ("hashtext(current_schema() || '/' || %s)", "hashtext(current_schema() || '/' || m || '/' || v)")
    """
    return f"hashtext(current_schema() || '/' || {name})"

_STAGE_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS _in_predictions (
    prediction_id text, model_name text, model_version text, predicted_at timestamptz,
    features jsonb, prediction jsonb, probabilities jsonb, score double precision,
    routing_key text, segment jsonb, latency_ms double precision, error text, ord integer
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _in_outcomes (
    prediction_id text, observed_at timestamptz, label jsonb, source text
) ON COMMIT DELETE ROWS;
"""

_COPY_PREDICTIONS = "COPY _in_predictions FROM STDIN"
_COPY_OUTCOMES = "COPY _in_outcomes FROM STDIN"

# Sorted by key so that concurrent writers take row locks in one order and never deadlock; of
# duplicates inside one batch the first wins, as it does across batches. prediction_index holds each id once across
# the partitions of predictions (migration 022): a prediction is new when its id is.
_INSERT_PREDICTIONS = """
WITH first AS (
    SELECT DISTINCT ON (prediction_id) * FROM _in_predictions ORDER BY prediction_id, ord
), fresh AS (
    INSERT INTO prediction_index (prediction_id, predicted_at)
    SELECT prediction_id, predicted_at FROM first ORDER BY prediction_id
    ON CONFLICT (prediction_id) DO NOTHING
    RETURNING prediction_id
)
INSERT INTO predictions (prediction_id, model_name, model_version, predicted_at, features,
    prediction, probabilities, score, routing_key, segment, latency_ms, error)
SELECT prediction_id, model_name, model_version, predicted_at, features,
    prediction, probabilities, score, routing_key, segment, latency_ms, error
FROM first JOIN fresh USING (prediction_id)
"""
# a monitored store counts the new ones (feedback/monitoring/windows.py)
_INSERT_PREDICTIONS_RETURNING = _INSERT_PREDICTIONS + "RETURNING prediction_id\n"

# New history rows only; of those, the latest (observed_at, label) per prediction competes
# with the stored current label and replaces it only when it is later, so any arrival order,
# duplicates and redeliveries end in the same current label.
_NEW_OUTCOMES = """
WITH new AS (
    INSERT INTO outcomes (prediction_id, observed_at, label, source)
    SELECT * FROM _in_outcomes ORDER BY prediction_id, observed_at, label
    ON CONFLICT DO NOTHING
    RETURNING prediction_id, observed_at, label, source
), latest AS (
    SELECT DISTINCT ON (prediction_id) prediction_id, label, observed_at, source
    FROM new ORDER BY prediction_id, observed_at DESC, label DESC
)"""

_INSERT_OUTCOMES = _NEW_OUTCOMES + """, changed AS (
    INSERT INTO current_labels AS cur (prediction_id, label, observed_at, source)
    SELECT * FROM latest ORDER BY prediction_id
    ON CONFLICT (prediction_id) DO UPDATE
        SET label = excluded.label, observed_at = excluded.observed_at,
            source = excluded.source, updated_at = now()
        WHERE (excluded.observed_at, excluded.label) > (cur.observed_at, cur.label)
    RETURNING (xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM new),
       count(*) FILTER (WHERE inserted),
       count(*) FILTER (WHERE NOT inserted)
FROM changed
"""

# The same for a monitored store, which also counts in the windows (feedback/monitoring/windows.py) every
# changed label whose prediction is stored, of a monitored model with a profile: counted_label is
# set in this upsert (one row version instead of an insert and an update) and the counted rows
# come back as JSON; the rest wait for their prediction.
_INSERT_OUTCOMES_COUNTED = _NEW_OUTCOMES + """, joined AS (
    SELECT l.*, p.model_name, p.model_version, p.predicted_at, p.prediction, p.probabilities, p.score, p.segment,
           p.model_name = ANY(%(models)s) AND EXISTS (
               SELECT 1 FROM reference_profiles r
               WHERE r.model_name = p.model_name AND r.model_version = p.model_version) AS countable
    FROM latest l
    LEFT JOIN prediction_index i USING (prediction_id)
    LEFT JOIN LATERAL (SELECT * FROM predictions p
                       WHERE p.prediction_id = l.prediction_id AND p.predicted_at = i.predicted_at OFFSET 0) p ON true
), changed AS (
    INSERT INTO current_labels AS cur (prediction_id, label, observed_at, source, counted_label)
    SELECT prediction_id, label, observed_at, source, CASE WHEN countable THEN label END
    FROM joined ORDER BY prediction_id
    ON CONFLICT (prediction_id) DO UPDATE
        SET label = excluded.label, observed_at = excluded.observed_at, source = excluded.source, updated_at = now(),
            counted_label = coalesce(excluded.counted_label, cur.counted_label)
        WHERE (excluded.observed_at, excluded.label) > (cur.observed_at, cur.label)
    RETURNING prediction_id, (xmax = 0) AS inserted, old.counted_label AS old_counted,
              new.counted_label IS NOT DISTINCT FROM new.label AS counted
)
SELECT (SELECT count(*) FROM new),
       count(*) FILTER (WHERE c.inserted),
       count(*) FILTER (WHERE NOT c.inserted),
       coalesce(json_agg(json_build_array(
           c.prediction_id, c.old_counted, j.label, j.observed_at, j.model_name, j.model_version, j.predicted_at,
           j.prediction, j.probabilities, j.score, j.segment)) FILTER (WHERE c.counted AND j.countable), '[]')
FROM changed c JOIN joined j USING (prediction_id)
"""

# A redelivery (same topic life, coordinates and bytes) finds the row it already has; a message at coordinates
# that repeat (a broker or topic that started its offsets again: a new topic id) is a row of its own.
_INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (source_topic, source_topic_id, source_partition, source_offset, element_index, key, raw,
                          reason, received_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (source_topic, source_topic_id, source_partition, source_offset, element_index, raw_sha256) DO NOTHING
RETURNING id
"""
_DEAD_LETTER_ID = """
SELECT id FROM dead_letters
WHERE source_topic = %s AND source_topic_id = %s AND source_partition = %s AND source_offset = %s
    AND element_index = %s AND raw_sha256 = %s
"""


#: A label the counting outcome upsert counted: (prediction_id, old counted label, new label, observed_at,
#: model_name, model_version, predicted_at, prediction, probabilities, score, segment).
CountedLabel = tuple[Any, ...]


class BatchObserver(Protocol):
    """What a batch write notifies, inside its transaction (monitoring's window accumulators implement it).

    The store knows nothing of what the observer keeps; it tells it which predictions were new to the
    store and which labels its outcome upsert counted, so that every effect of a batch commits together.
    """

    #: SQL run once on every new connection (the observer's staging tables)
    connection_setup: str

    @property
    def enabled(self) -> bool:
        """Whether anything is observed at all (no monitored model: the plain, faster write)."""
        ...

    @property
    def counted_models(self) -> Sequence[str]:
        """Models whose labels the outcome upsert counts (when their version has a reference profile)."""
        ...

    def lock_shared(self, cur: psycopg.Cursor[Any]) -> None:
        """Take the observer's shared locks before the batch writes anything."""
        ...

    def apply(
        self, cur: psycopg.Cursor[Any], new_predictions: Sequence[PredictionEvent], counted: Sequence[CountedLabel]
    ) -> None:
        """Add the effect of the batch's new predictions and of the labels it counted."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRecord:
    """An input that broke the contract, where it came from, and the one-line reason."""

    source_topic: str
    #: the id the broker gave the topic (its life: the local broker makes every topic again at each start and
    #: starts its offsets at 0); empty when unknown
    source_topic_id: str = ""
    source_partition: int
    source_offset: int
    element_index: int
    key: bytes | None
    raw: bytes
    reason: str
    received_at: datetime
    #: the ``dead_letters`` row holding it, once written
    dead_letter_id: int | None = None

    def __post_init__(self) -> None:
        # a reason may quote the input (a key, an exception's message); it must still be text that Postgres
        # and the dead-letter topic take, or the dead letter of a bad input could not be written
        object.__setattr__(self, "reason", printable_reason(self.reason))


def printable_reason(text: str) -> str:
    r"""``text`` as one line of printable text: line breaks, NUL and other control or format characters and lone
    surrogates escaped as Python writes them.

    >>> print(printable_reason("schema: unknown field(s) a\x00b\nc\u200f\ud800 é"))
    schema: unknown field(s) a\x00b\nc\u200f\ud800 é
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one batch write changed: rows new to the store (redeliveries count zero), and the ids of the
    rows holding the batch's dead letters, in their order (new rows or the ones a redelivery found)."""

    predictions: int = 0
    outcomes: int = 0
    labels_set: int = 0
    labels_corrected: int = 0
    dead_letters: int = 0
    dead_letter_ids: tuple[int, ...] = ()

    def __add__(self, other: WriteStats) -> WriteStats:
        return WriteStats(
            self.predictions + other.predictions,
            self.outcomes + other.outcomes,
            self.labels_set + other.labels_set,
            self.labels_corrected + other.labels_corrected,
            self.dead_letters + other.dead_letters,
            self.dead_letter_ids + other.dead_letter_ids,
        )


def connect_kwargs(schema: str) -> dict[str, Any]:
    """Connection options that put every statement in the configured schema."""
    return {"options": f"-c search_path={schema}", "autocommit": True}


def migrate(database_url: str, schema: str) -> list[str]:
    """Apply the migrations not yet applied to ``schema``; returns the names applied.

    Safe to run from several processes at once: they queue on an advisory lock.
    """
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=30) as conn:
        with conn.transaction():
            # a migration stuck behind another session's lock fails loudly instead of hanging
            conn.execute("SET LOCAL lock_timeout = '60s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATIONS_LOCK,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for name, text in _migration_files():
                if name in done:
                    continue
                conn.execute(text)  # type: ignore[arg-type]  # our own files, not user input
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
    for name in applied:
        log.info("applied migration %s to schema %s", name, schema)
    return applied


def analyst_role(schema: str) -> str:
    """The analysts' role of the store in ``schema`` (migration 020): ``<schema>_analyst``, as PostgreSQL cuts a name
    (63 bytes)."""
    return (schema + "_analyst").encode()[:63].decode(errors="ignore")


def drop_store(conn: psycopg.Connection[Any], schema: str) -> None:
    """Drop the store in ``schema``: the schema with everything in it, and its analysts' role."""
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(analyst_role(schema))))


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("feedback") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name, f.read_text()) for f in files]


class FeedbackStore:
    """Pooled access to one schema of the feedback store.

    Connections are autocommit; every write opens an explicit transaction.
    """

    def __init__(
        self,
        database_url: str,
        schema: str,
        *,
        max_size: int = 4,
        timeout_s: float = 5.0,
        windows: BatchObserver | None = None,
    ) -> None:
        self.database_url = database_url
        self.schema = schema
        self._partitions_due = 0.0  # monotonic time the partitions ahead are next made
        #: keeps the monitoring windows in step with every write, when models are monitored
        self.windows = windows if windows is not None and windows.enabled else None
        self.pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            kwargs=connect_kwargs(schema),
            configure=partial(_configure, setup=self.windows.connection_setup if self.windows else ""),
            check=ConnectionPool.check_connection,
            timeout=timeout_s,
            reconnect_timeout=0,  # keep trying while the database is away: the ingest waits for it
            open=False,
            name=f"pitstop-{schema}",
        )

    def open(self, wait: bool = True) -> FeedbackStore:
        self.pool.open(wait=wait)
        return self

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> FeedbackStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_batch(
        self,
        predictions: Sequence[PredictionEvent],
        outcomes: Sequence[OutcomeEvent],
        dead_letters: Sequence[DeadLetterRecord] = (),
    ) -> WriteStats:
        """Write one batch in one transaction; a redelivered batch changes nothing.

        The weekly partitions of the coming weeks are made ahead, at most once an hour (:meth:`ensure_partitions`);
        a batch holding a time no partition covers (an old prediction replayed, a late label) rolls back, has its
        partitions made, and is written again."""
        if time.monotonic() >= self._partitions_due:
            try:  # a prune detaching a partition holds the lock attaching takes: try again in a minute
                self.ensure_partitions(partitions_ahead(datetime.now(UTC)), lock_timeout_s=1.0)
                self._partitions_due = time.monotonic() + PARTITIONS_AHEAD_EVERY_S
            except psycopg.errors.LockNotAvailable:
                self._partitions_due = time.monotonic() + 60.0
        try:
            return self._write_batch(predictions, outcomes, dead_letters)
        except psycopg.errors.CheckViolation as exc:
            if not str(exc).startswith("no partition of relation"):
                raise
        made = self.ensure_partitions({"predictions": [p.predicted_at for p in predictions],
                                       "outcomes": [o.observed_at for o in outcomes]})
        if made:  # else another writer made them meanwhile
            log.info("made partitions %s for a batch", ", ".join(made))
        return self._write_batch(predictions, outcomes, dead_letters)

    def ensure_partitions(self, times: Mapping[str, Iterable[datetime]], *,
                          lock_timeout_s: float | None = None) -> list[str]:
        """:func:`ensure_partitions` in a transaction of its own, waiting at most ``lock_timeout_s`` for a lock
        (``psycopg.errors.LockNotAvailable`` past it), else as long as it takes."""
        with self.pool.connection() as conn, conn.transaction():
            if lock_timeout_s is not None:
                timeout = sql.Literal(f"{lock_timeout_s * 1000:.0f}ms")
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(timeout))
            return ensure_partitions(conn, times)

    def _write_batch(
        self,
        predictions: Sequence[PredictionEvent],
        outcomes: Sequence[OutcomeEvent],
        dead_letters: Sequence[DeadLetterRecord],
    ) -> WriteStats:
        n_outcomes = labels_set = labels_corrected = 0
        counted: list[Any] = []
        windows = self.windows
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if windows is not None:
                windows.lock_shared(cur)
            n_predictions, new_ids = (
                _insert_predictions(cur, predictions, returning=windows is not None) if predictions else (0, set())
            )
            if outcomes:
                with cur.copy(_COPY_OUTCOMES) as copy:
                    write = copy.write_row
                    for o in outcomes:
                        write((o.prediction_id, o.observed_at, _json(o.label), o.source))
                if windows is None:
                    cur.execute(_INSERT_OUTCOMES)
                    n_outcomes, labels_set, labels_corrected = cur.fetchone() or (0, 0, 0)
                else:
                    cur.execute(_INSERT_OUTCOMES_COUNTED, {"models": sorted(windows.counted_models)}, prepare=False)
                    n_outcomes, labels_set, labels_corrected, doc = cur.fetchone() or (0, 0, 0, [])
                    counted = parse_counted(doc)
            if windows is not None:
                windows.apply(cur, _first_of_each(predictions, new_ids), counted)
            n_dead, dead_ids = _insert_dead_letters(cur, dead_letters)
        return WriteStats(n_predictions, n_outcomes, labels_set, labels_corrected, n_dead, dead_ids)

    def scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row of a read-only query."""
        with self.pool.connection() as conn:
            row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a read-only query."""
        with self.pool.connection() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


#: How far ahead of now the writers keep the event tables' partitions made, and how often they check.
PARTITIONS_AHEAD = timedelta(weeks=2)
PARTITIONS_AHEAD_EVERY_S = 3600.0


def partitions_ahead(now: datetime) -> dict[str, list[datetime]]:
    """The times whose weekly partitions the writers keep made: this week's and the next :data:`PARTITIONS_AHEAD`'s
    (an event may be up to a day ahead of the clock, ``Limits.max_future_skew_s``)."""
    weeks = [now + timedelta(weeks=k) for k in range(PARTITIONS_AHEAD // timedelta(weeks=1) + 1)]
    return {"predictions": weeks, "outcomes": weeks}


def ensure_partitions(conn: psycopg.Connection[Any] | psycopg.Cursor[Any],
                      times: Mapping[str, Iterable[datetime]]) -> list[str]:
    """Make the weekly partitions of each event table (``predictions``, ``outcomes``) that ``times`` fall in and that
    are missing (migration 022); returns the partitions made."""
    made: list[str] = []
    for table, at in times.items():
        days = sorted({t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) for t in at})
        if days:
            row = conn.execute("SELECT ensure_partitions(%s, %s)", (table, days)).fetchone()
            made += row[0] if row else []
    return made


def index_loaded_predictions(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> int:
    """For a loader that writes ``predictions`` itself (a bench, a test) rather than through :meth:`write_batch`:
    index the ids it stored, so that their labels find them and their ids stay unique; returns how many."""
    return conn.execute("INSERT INTO prediction_index (prediction_id, predicted_at)"
                        " SELECT prediction_id, predicted_at FROM predictions ON CONFLICT DO NOTHING").rowcount


def _configure(conn: psycopg.Connection[Any], *, setup: str) -> None:
    # jsonb read back (the monitor's label counting) parsed by orjson, several times faster than json
    set_json_loads(orjson.loads, conn)
    conn.execute(_STAGE_TABLES)
    if setup:
        conn.execute(setup)  # type: ignore[arg-type]  # the observer's own constant SQL


def parse_counted(doc: Any) -> list[CountedLabel]:
    """The label rows the counting outcome upsert returns as JSON, shaped as :data:`CountedLabel`."""
    rows = orjson.loads(doc) if isinstance(doc, str | bytes) else doc
    return [
        (pid, old, new, datetime.fromisoformat(observed), model, version, datetime.fromisoformat(predicted), prediction,
         probabilities, score, segment)
        for pid, old, new, observed, model, version, predicted, prediction, probabilities, score, segment in rows
    ]


def _insert_predictions(
    cur: psycopg.Cursor[Any], predictions: Sequence[PredictionEvent], *, returning: bool
) -> tuple[int, set[str]]:
    """Insert the batch's predictions; returns how many were new, and (``returning``) their ids."""
    with cur.copy(_COPY_PREDICTIONS) as copy:
        write = copy.write_row
        for i, p in enumerate(predictions):
            write((
                p.prediction_id, p.model_name, p.model_version, p.predicted_at,
                _json(p.features), _json(p.prediction),
                None if p.probabilities is None else _json(p.probabilities),
                p.score, p.routing_key,
                None if p.segment is None else _json(p.segment),
                p.latency_ms, p.error, i,
            ))
    if not returning:
        cur.execute(_INSERT_PREDICTIONS)
        return cur.rowcount, set()
    cur.execute(_INSERT_PREDICTIONS_RETURNING)
    ids = {row[0] for row in cur.fetchall()}
    return len(ids), ids


def insert_dead_letters(cur: psycopg.Cursor[Any], letters: Sequence[DeadLetterRecord]) -> list[DeadLetterRecord]:
    """Store dead letters inside the caller's transaction (other consumers' bad input: the trigger topic's);
    returns them with their row ids. A redelivery (same topic life, coordinates and bytes) keeps its first row."""
    _, ids = _insert_dead_letters(cur, letters)
    return [replace(d, dead_letter_id=i) for d, i in zip(letters, ids, strict=True)]


def _insert_dead_letters(cur: psycopg.Cursor[Any], letters: Sequence[DeadLetterRecord]) -> tuple[int, tuple[int, ...]]:
    """Insert the dead letters not stored yet; returns how many were new, and every letter's row id."""
    n_new, ids = 0, []
    for d in letters:
        cur.execute(_INSERT_DEAD_LETTER, (d.source_topic, d.source_topic_id, d.source_partition, d.source_offset,
                                          d.element_index, d.key, d.raw, d.reason, d.received_at))
        row = cur.fetchone()
        if row is None:  # a redelivery: the row is there (a new statement sees one another worker just committed)
            cur.execute(_DEAD_LETTER_ID, (d.source_topic, d.source_topic_id, d.source_partition, d.source_offset,
                                          d.element_index, hashlib.sha256(d.raw).digest()))
            row = cur.fetchone()
        else:
            n_new += 1
        if row is None:
            msg = (f"dead letter {d.source_topic}[{d.source_partition}]@{d.source_offset} element {d.element_index}"
                   " was neither inserted nor found (deleted meanwhile?)")
            raise RuntimeError(msg)
        ids.append(int(row[0]))
    return n_new, tuple(ids)


def _first_of_each(predictions: Sequence[PredictionEvent], ids: set[str]) -> list[PredictionEvent]:
    """The events behind ``ids``: for an id given twice in the batch, the first, as stored."""
    firsts: dict[str, PredictionEvent] = {}
    for p in predictions:
        if p.prediction_id in ids:
            firsts.setdefault(p.prediction_id, p)
    return list(firsts.values())


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
