"""Storing a round's results: ``monitor_results`` (a row per metric of each series, window and segment) and
``monitor_windows`` (a fingerprint of each window's rows, migration 016).

A window's rows are made of parts: one per series (its drift verdict and the metrics behind it) and one for its
performance. A round fingerprints each part it builds and keeps the fingerprints (feedback/monitoring/incremental.py);
a window's fingerprint is that of its parts' fingerprints. ``monitor_windows`` tells any process what the store
holds: when a window's stored fingerprint is the one the round last wrote, the round writes only the parts that
changed; otherwise (a restarted worker, another monitor worker wrote it since) it writes the window whole. Either
way only the rows whose values differ are written (a row keeps the ``evaluated_at`` of the evaluation that last
changed it) and the rows the evaluation no longer has go (a window fallen back to unjudged keeps no metric of its
earlier verdict).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import psycopg

from feedback.monitoring.evaluate import DriftResult, PerformanceResult

#: a window of one segment
Key = tuple[str, datetime]

_WINDOW_KEYS = "(segment, window_start) IN (SELECT * FROM unnest(%s::text[], %s::timestamptz[]))"
_FORGET_RESULTS = f"DELETE FROM monitor_results WHERE model_name = %s AND model_version = %s AND {_WINDOW_KEYS}"
_FORGET_WINDOWS = f"DELETE FROM monitor_windows WHERE model_name = %s AND model_version = %s AND {_WINDOW_KEYS}"
_STORED_WINDOWS = """
SELECT segment, window_start, fingerprint FROM monitor_windows
WHERE model_name = %s AND model_version = %s AND window_start = ANY(%s)
"""
_WINDOW_COLUMNS = "model_name, model_version, segment, window_start, fingerprint, evaluated_at"

# keyed, so that finding the stored rows a rewritten part no longer has never scans it once per stored row (the
# planner, with no statistics of a temporary table, took that plan: 1.4 s for 3,400 rows)
_STAGE_RESULTS = """
CREATE TEMP TABLE IF NOT EXISTS _in_results (LIKE monitor_results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE INDEX IF NOT EXISTS _in_results_key
    ON _in_results (model_name, model_version, segment, window_start, kind, metric, feature)
"""

RESULT_COLUMNS = (
    "model_name, model_version, segment, window_start, window_end, kind, metric, feature, value, threshold, "
    "p_value, ci_low, ci_high, status, sample_size, label_coverage, sentence, evaluated_at"
)

_UPSERT_RESULTS = f"""
INSERT INTO monitor_results AS r ({RESULT_COLUMNS})
SELECT {RESULT_COLUMNS} FROM _in_results
ORDER BY model_name, model_version, segment, window_start, kind, metric, feature
ON CONFLICT (model_name, model_version, segment, window_start, kind, metric, feature) DO UPDATE SET
    window_end = excluded.window_end, value = excluded.value, threshold = excluded.threshold,
    p_value = excluded.p_value, ci_low = excluded.ci_low, ci_high = excluded.ci_high, status = excluded.status,
    sample_size = excluded.sample_size, label_coverage = excluded.label_coverage, sentence = excluded.sentence,
    evaluated_at = excluded.evaluated_at, recorded_at = now()
WHERE (r.window_end, r.value, r.threshold, r.p_value, r.ci_low, r.ci_high, r.status, r.sample_size,
       r.label_coverage, r.sentence)
  IS DISTINCT FROM (excluded.window_end, excluded.value, excluded.threshold, excluded.p_value, excluded.ci_low,
                    excluded.ci_high, excluded.status, excluded.sample_size, excluded.label_coverage, excluded.sentence)
"""

# the stored rows of the written parts (a whole window when its kind is null) that the evaluation no longer has
_FORGET_STALE = """
DELETE FROM monitor_results r
USING unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[])
    AS k(m, v, s, t, kind, feature)
WHERE r.model_name = k.m AND r.model_version = k.v AND r.segment = k.s AND r.window_start = k.t
  AND (k.kind IS NULL OR (r.kind = k.kind AND r.feature = k.feature))
  AND NOT EXISTS (SELECT 1 FROM _in_results i
                  WHERE (i.model_name, i.model_version, i.segment, i.window_start, i.kind, i.metric, i.feature)
                      = (r.model_name, r.model_version, r.segment, r.window_start, r.kind, r.metric, r.feature))
"""

_SAVE_WINDOWS = f"""
INSERT INTO monitor_windows ({_WINDOW_COLUMNS})
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::bigint[], %s::timestamptz[])
ON CONFLICT (model_name, model_version, segment, window_start)
DO UPDATE SET fingerprint = excluded.fingerprint, evaluated_at = excluded.evaluated_at
"""


@dataclass(frozen=True, slots=True)
class WindowWrite:
    """What to store of one window: the rows of some of its parts, or of all of them (``parts`` None)."""

    key: Key
    #: the rows, as :func:`row_values` gives them
    rows: list[tuple[Any, ...]]
    #: (kind, feature) of each part written whose metrics changed, so that stored rows of metrics it lost may be
    #: left ('performance', '' for the performance part); None: the window is written whole
    parts: tuple[tuple[str, str], ...] | None
    fingerprint: int


@dataclass(frozen=True, slots=True)
class VersionWrites:
    """What a round stores of one version."""

    model_name: str
    model_version: str
    evaluated_at: datetime
    windows: list[WindowWrite]
    #: windows of the span stored but no longer produced (their segment lost every row): they go whole
    gone: list[Key]


def stored_fingerprints(cur: psycopg.Cursor[Any], model: str, version: str, starts: Sequence[datetime]
                        ) -> dict[Key, int]:
    """The fingerprint of each stored window (segment, start) of the version among ``starts``."""
    return {(seg, start): fp for seg, start, fp in cur.execute(_STORED_WINDOWS, (model, version, list(starts)))}


def write_results(cur: psycopg.Cursor[Any], versions: Sequence[VersionWrites]) -> int:
    """Store what the versions' evaluations changed; returns the result rows written (inserted, updated, deleted)."""
    rows: list[tuple[Any, ...]] = []
    parts: list[tuple[Any, ...]] = []
    saved: list[tuple[Any, ...]] = []
    written = 0
    for v in versions:
        if v.gone:
            params = (v.model_name, v.model_version, [k[0] for k in v.gone], [k[1] for k in v.gone])
            written += cur.execute(_FORGET_RESULTS, params).rowcount
            cur.execute(_FORGET_WINDOWS, params)
        for w in v.windows:
            rows += [(v.model_name, v.model_version, *row, v.evaluated_at) for row in w.rows]
            scope = w.parts if w.parts is not None else ((None, None),)
            parts += [(v.model_name, v.model_version, *w.key, kind, feature) for kind, feature in scope]
            saved.append((v.model_name, v.model_version, *w.key, w.fingerprint, v.evaluated_at))
    if not saved:
        return written
    cur.execute(_STAGE_RESULTS)
    if rows:
        with cur.copy(f"COPY _in_results ({RESULT_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    if parts:
        written += cur.execute(_FORGET_STALE, [[p[i] for p in parts] for i in range(6)]).rowcount
    if rows:
        written += cur.execute(_UPSERT_RESULTS).rowcount
    cur.execute(_SAVE_WINDOWS, [[w[i] for w in saved] for i in range(6)])
    return written


def row_values(rows: Sequence[DriftResult | PerformanceResult]) -> list[tuple[Any, ...]]:
    """Result rows as the columns of ``RESULT_COLUMNS`` after the version and before ``evaluated_at``."""
    out = []
    for r in rows:
        if isinstance(r, DriftResult):
            out.append((r.segment, r.window_start, r.window_end, "drift", r.metric, r.feature, _finite(r.value),
                        r.threshold, _finite(r.p_value), None, None, r.status, r.sample_size, None, r.sentence))
        else:
            out.append((r.segment, r.window_start, r.window_end, "performance", r.metric, "", _finite(r.value),
                        r.threshold, None, _finite(r.ci_low), _finite(r.ci_high), r.status, r.sample_size,
                        r.label_coverage, r.sentence))
    return out


def fingerprint(values: Sequence[tuple[Any, ...]]) -> int:
    """A stable 63-bit fingerprint of some rows' values (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(orjson.dumps(values), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def window_fingerprint(parts: np.ndarray) -> int:
    """A window's fingerprint, from those of its parts (int64, in the profile's series order, performance last)."""
    digest = hashlib.blake2b(parts.astype("<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _finite(x: float | None) -> float | None:
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return float(x)
