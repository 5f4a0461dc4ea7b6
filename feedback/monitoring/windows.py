"""Window accumulators, updated inside the ingest's transaction for the rows that transaction adds.

Per monitored model version, segment and tumbling window of ``predicted_at``:

* ``window_counts``: counts per reference bin of every feature, the prediction, the score,
  the label, and the row count, from predictions new to the store;
* ``window_performance``: additive performance aggregates (feedback/monitoring/performance.py) of the
  labelled predictions;
* ``detector_state``: river detectors on the version's error stream, in label arrival order;
* ``window_changes``: the id of the transaction that last changed each window (per segment), so that a monitor
  round evaluates only what changed (feedback/monitoring/changes.py).

Replays count nothing twice because only rows the transaction actually inserted are counted,
and a label is counted through ``current_labels.counted_label``: the label whose contribution
the windows hold. Counting a label moves the contribution from ``counted_label`` to ``label``
in the same statement that sets one to the other, so a correction moves a prediction from its
old label to its new one exactly once. A prediction and its label written at the same moment
by two workers can each miss the other; the pair then stays in the ``current_labels_uncounted``
index and :func:`count_uncounted` (run before every evaluation) counts it.

Nothing is counted for a version until it has a reference profile; creating the profile
counts everything stored so far (:func:`install_profile`), under an exclusive advisory lock
that every ingest transaction writing that version holds shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from feedback.config import DetectorConfig, ModelConfig, MonitoringConfig
from feedback.monitoring import performance
from feedback.monitoring.detectors import ErrorStreamDetectors, config_document
from feedback.monitoring.profile import (
    LABEL,
    PREDICTION,
    ROWS,
    SCORE,
    FeatureKind,
    ReferenceProfile,
    build_profile,
    category_key,
)
from feedback.store.database import lock_key
from schemas import PredictionEvent

log = logging.getLogger(__name__)

ALL = "*"  # the segment of all traffic
PROFILE_LOCK_CLASS = 0x5052  # advisory lock class of "a version's profile and its windows"

STAGE_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS _in_counts (
    model_name text, model_version text, window_s integer, segment text, window_start timestamptz,
    series text, counts bigint[]
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _in_stats (
    model_name text, model_version text, window_s integer, segment text, window_start timestamptz,
    stats jsonb
) ON COMMIT DELETE ROWS;
"""

# The staged rows are taken out as they are upserted: a transaction that writes several deltas (installing a
# profile recounts a backlog chunk by chunk) must not upsert one chunk's rows again with the next.
_UPSERT_COUNTS = """
WITH staged AS (DELETE FROM _in_counts RETURNING *)
INSERT INTO window_counts AS w (model_name, model_version, window_s, segment, window_start, series, counts)
SELECT * FROM staged ORDER BY model_name, model_version, window_s, segment, window_start, series
ON CONFLICT (model_name, model_version, window_s, segment, window_start, series)
DO UPDATE SET counts = add_counts(w.counts, excluded.counts), changed = pg_current_xact_id()
"""

_UPSERT_STATS = """
WITH staged AS (DELETE FROM _in_stats RETURNING *)
INSERT INTO window_performance AS w (model_name, model_version, window_s, segment, window_start, stats)
SELECT * FROM staged ORDER BY model_name, model_version, window_s, segment, window_start
ON CONFLICT (model_name, model_version, window_s, segment, window_start)
DO UPDATE SET stats = add_stats(w.stats, excluded.stats), changed = pg_current_xact_id()
"""

# The windows a transaction changed, marked with its id (migration 015): written after the counts and the
# aggregates, in key order, so that every writer takes the rows' locks in one order (counts, aggregates, marks).
# A window marked twice by one transaction is left alone the second time.
_MARK_CHANGED = """
INSERT INTO window_changes AS c (model_name, model_version, window_s, segment, window_start, changed)
SELECT m, v, w, s, t, pg_current_xact_id()
FROM unnest(%(m)s::text[], %(v)s::text[], %(w)s::int4[], %(s)s::text[], %(t)s::timestamptz[]) AS k(m, v, w, s, t)
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (model_name, model_version, window_s, segment, window_start)
DO UPDATE SET changed = excluded.changed WHERE c.changed <> excluded.changed
"""

# Moves each listed prediction's contribution from the label it counted to its current label;
# predictions not stored yet, or of versions without a profile, are left for later.
_COUNT_LABELS = """
WITH todo AS MATERIALIZED (
    -- driven by the ids, each prediction fetched by its key (OFFSET 0 keeps the planner from
    -- flattening the lateral): left alone, with statistics a bulk load had outdated, it walked
    -- every prediction of the version against the id list, for minutes at 200k predictions
    SELECT c.prediction_id, p.model_name, p.model_version, p.predicted_at, p.prediction, p.probabilities,
           p.score, p.segment
    FROM current_labels c
    CROSS JOIN LATERAL (
        SELECT * FROM predictions p WHERE p.prediction_id = c.prediction_id OFFSET 0
    ) p
    WHERE c.prediction_id = ANY(%(ids)s)
      AND c.counted_label IS DISTINCT FROM c.label
      AND p.model_name = ANY(%(models)s)
      AND EXISTS (SELECT 1 FROM reference_profiles r
                  WHERE r.model_name = p.model_name AND r.model_version = p.model_version)
)
UPDATE current_labels c SET counted_label = c.label
FROM todo t
WHERE c.prediction_id = t.prediction_id
  AND c.prediction_id = ANY(ARRAY(SELECT prediction_id FROM todo))  -- by key, not a scan of the table
RETURNING c.prediction_id, old.counted_label, new.label, c.observed_at, t.model_name, t.model_version,
          t.predicted_at, t.prediction, t.probabilities, t.score, t.segment
"""

# the partial index holds exactly these: labels not counted yet, including outcomes whose prediction has
# not arrived or is of an unmonitored model (count_labels skips those, and they may stay for ever); the
# sweep walks the index in chunks from a cursor, so such labels never hide the ones after them
_UNCOUNTED = """
SELECT prediction_id FROM current_labels WHERE counted_label IS DISTINCT FROM label AND prediction_id > %s
ORDER BY prediction_id LIMIT %s
"""
SWEEP_CHUNK = 50_000

_SEGMENTS = """
SELECT DISTINCT segment FROM window_counts WHERE model_name = %s AND series = '__rows__' AND segment <> '*'
"""

_PROFILE_STAMPS = """
SELECT model_name, model_version, created_at FROM reference_profiles
WHERE (model_name, model_version) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

_PROFILES = """
SELECT model_name, model_version, source, n_rows, profile, created_at FROM reference_profiles
WHERE (model_name, model_version) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

# Every transaction that counts holds its models' locks shared; installing a profile holds its
# model's lock exclusively, so it never interleaves with counting.
_LOCK_SHARED = f"""
SELECT count(pg_advisory_xact_lock_shared(%s, {lock_key("m")}))
FROM (SELECT m FROM unnest(%s::text[]) AS t(m) ORDER BY m) AS sorted
"""

# A version's detectors are updated by one transaction at a time: the lock is taken before the state is
# read, so it also covers the first write, when there is no row yet for FOR UPDATE to lock.
_LOCK_DETECTORS = f"""
SELECT count(pg_advisory_xact_lock(%s, {lock_key("m || '/' || v")}))
FROM (SELECT * FROM unnest(%s::text[], %s::text[]) AS t(m, v) ORDER BY m, v) AS sorted
"""
DETECTOR_LOCK_CLASS = 0x5044  # advisory lock class of "a version's detector state"

_DETECTOR_STATE = """
SELECT model_name, model_version, n_updates, state, config FROM detector_state
WHERE (model_name, model_version) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

_SAVE_DETECTOR = """
INSERT INTO detector_state (model_name, model_version, n_updates, state, config, updated_at)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (model_name, model_version) DO UPDATE
SET n_updates = excluded.n_updates, state = excluded.state, config = excluded.config, updated_at = now()
"""

# the version's counted labels in label arrival order, but those of the transaction at hand
_ERROR_STREAM = """
SELECT c.counted_label, p.prediction FROM current_labels c JOIN predictions p USING (prediction_id)
WHERE p.model_name = %s AND p.model_version = %s AND c.counted_label IS NOT NULL
  AND NOT c.prediction_id = ANY(%s)
ORDER BY c.observed_at, c.prediction_id
"""

_DETECTOR_EVENT = """
INSERT INTO detector_events (model_name, model_version, detector, label_index, change_index, prediction_id,
    predicted_at, observed_at, error_mean_before, error_mean_after)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

Version = tuple[str, str]
WindowKey = tuple[str, str, str, datetime]  # model, version, segment, window start


@dataclass(slots=True)
class WindowDelta:
    """Everything one transaction adds to the accumulators, before it is written."""

    counts: dict[tuple[str, str, str, datetime, str], np.ndarray] = field(default_factory=dict)
    stats: dict[WindowKey, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    errors: dict[Version, list[tuple[float, str, datetime, datetime]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def add_counts(self, key: tuple[str, str, str, datetime, str], counts: np.ndarray) -> None:
        have = self.counts.get(key)
        self.counts[key] = counts if have is None else have + counts


def window_start(at: datetime, window_s: int) -> datetime:
    """The start of the tumbling window holding ``at`` (windows align to the Unix epoch, so to UTC days).

    >>> window_start(datetime(2026, 3, 1, 10, 59, tzinfo=UTC), 3600)
    datetime.datetime(2026, 3, 1, 10, 0, tzinfo=datetime.timezone.utc)
    """
    ts = int(at.timestamp())
    return datetime.fromtimestamp(ts - ts % window_s, tz=UTC)


class _Cells:
    """Window starts and segment lists for one batch, each computed once per distinct input."""

    def __init__(self, config: ModelConfig, known: dict[str, set[str]]) -> None:
        self.config = config
        self.known = known
        self._starts: dict[int, datetime] = {}
        self._segments: dict[tuple[Any, ...], list[str]] = {}

    def start(self, at: datetime) -> datetime:
        bucket = int(at.timestamp()) // self.config.window_s
        found = self._starts.get(bucket)
        if found is None:
            found = self._starts[bucket] = window_start(at, self.config.window_s)
        return found

    def segments(self, segment: Mapping[str, str] | None) -> list[str]:
        values = segment or {}
        key = tuple(values.get(a) for a in self.config.segments)
        found = self._segments.get(key)
        if found is None:
            found = self._segments[key] = segments_of(self.config, segment, self.known)
        return found


OTHER_SEGMENT = "__other__"
MISSING_SEGMENT = "__missing__"
#: a segment value longer than this (UTF-8 bytes) is keyed by its first SEGMENT_PREFIX characters, '…' and its md5
SEGMENT_VALUE_BYTES = 128
SEGMENT_PREFIX = 32


def segment_value(value: str) -> str:
    """``value`` as the window and ramp tables key it: itself, or past SEGMENT_VALUE_BYTES its first SEGMENT_PREFIX
    characters, '…' and its md5 (distinct values stay distinct). A btree entry holds at most 2,704 bytes, and the
    contract allows 10,000 characters; the ramp's SQL (``ramp_part``, migration 023) writes the same.

    >>> segment_value("eu"), segment_value("x" * 200)
    ('eu', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…30a83621ce5422fbdfdd539777458c78')
    """
    if len(value) <= SEGMENT_PREFIX or len(raw := value.encode("utf-8", "surrogatepass")) <= SEGMENT_VALUE_BYTES:
        return value
    return f"{value[:SEGMENT_PREFIX]}…{hashlib.md5(raw).hexdigest()}"  # noqa: S324  # a key, not a secret


def segments_of(
    config: ModelConfig, segment: Mapping[str, str] | None, known: Mapping[str, set[str]] | None = None
) -> list[str]:
    r"""The segments an event counts in: all traffic, and one per declared attribute.

    With ``known`` (the values each attribute has had), a value beyond the attribute's first
    ``max_segment_values`` is pooled as ``__other__``, so a high-cardinality attribute (a user
    id declared by mistake) cannot multiply the windows without bound.

    >>> from feedback.config import parse_config
    >>> c = parse_config('[models.m]\ntask = "regression"\nsegments = ["region"]').models["m"]
    >>> segments_of(c, {"region": "eu"}), segments_of(c, None)
    (['*', 'region=eu'], ['*', 'region=__missing__'])
    >>> [segments_of(c, {"region": v})[1] for v in (None, 5, True)]  # not from the contract: stored, or by hand
    ['region=None', 'region=5', 'region=True']
    >>> capped = parse_config('[models.m]\ntask = "regression"\nsegments = ["r"]\nmax_segment_values = 2').models["m"]
    >>> known = {}
    >>> [segments_of(capped, {"r": v}, known)[1] for v in "abca"]
    ['r=a', 'r=b', 'r=__other__', 'r=a']
    """
    values = segment or {}
    out = [ALL]
    for a in config.segments:
        value = segment_value(str(values.get(a, MISSING_SEGMENT)))  # as the key was written: a stored None is 'None'
        if known is not None:
            seen = known.setdefault(a, set())
            if value not in seen:
                if len(seen) >= config.max_segment_values:
                    value = OTHER_SEGMENT
                seen.add(value)
        out.append(f"{a}={value}")
    return out


class WindowUpdater:
    """Computes and writes accumulator deltas for the monitored models of a :class:`MonitoringConfig`."""

    def __init__(self, config: MonitoringConfig) -> None:
        self.config = config
        self._profiles: dict[Version, ReferenceProfile] = {}
        self._stamps: dict[Version, datetime] = {}
        self._segments: dict[str, dict[str, set[str]]] = {}
        self._detectors: dict[Version, tuple[int, ErrorStreamDetectors]] = {}
        #: versions seen without a profile, for the profile builder to look at
        self.unprofiled: set[Version] = set()
        #: where the stray-label sweep (:func:`count_uncounted`) goes on from
        self.sweep_after = ""

    #: the staging tables :meth:`write` copies into, on every connection of the store
    connection_setup = STAGE_TABLES

    @property
    def enabled(self) -> bool:
        return bool(self.config.models)

    @property
    def counted_models(self) -> list[str]:
        return sorted(self.config.models)

    # --- the ingest transaction -------------------------------------------------------------

    def apply(
        self, cur: psycopg.Cursor[Any], new_predictions: Sequence[PredictionEvent], counted: Sequence[Any] = ()
    ) -> None:
        """Add the effect of this transaction's new predictions and of the labels it counted.

        ``counted``: the label rows the store's outcome upsert counted (``feedback.store.CountedLabel``).
        The caller holds the shared locks (:meth:`lock_shared`) since before that statement.
        """
        monitored = [p for p in new_predictions if p.model_name in self.config.models]
        if not monitored and not counted:
            return
        versions = {(p.model_name, p.model_version) for p in monitored}
        # one look at the profiles per batch: the labels counted below are of profiled versions
        profiles = self.profiles(cur, versions | {(r[4], r[5]) for r in counted})
        delta = WindowDelta()
        by_version: dict[Version, list[PredictionEvent]] = defaultdict(list)
        for p in monitored:
            by_version[(p.model_name, p.model_version)].append(p)
        for version, events in by_version.items():
            profile = profiles.get(version)
            if profile is None:
                self.unprofiled.add(version)
                continue
            self._count_predictions(cur, delta, self.config.models[version[0]], profile, events)
        # new predictions whose label came first: counted now
        ids = [p.prediction_id for p in monitored if (p.model_name, p.model_version) in profiles]
        rows = self._count_label_rows(cur, ids) if ids else []
        self._add_label_rows(cur, delta, [*rows, *counted], detectors=True)
        self.write(cur, delta)

    def count_labels(
        self, cur: psycopg.Cursor[Any], ids: Sequence[str], delta: WindowDelta, *, detectors: bool = True
    ) -> int:
        """Count the labels of ``ids`` whose counted label differs from their label; returns how many."""
        rows = self._count_label_rows(cur, ids)
        self.profiles(cur, {(r[4], r[5]) for r in rows})
        self._add_label_rows(cur, delta, rows, detectors=detectors)
        return len(rows)

    def _count_label_rows(self, cur: psycopg.Cursor[Any], ids: Sequence[str]) -> list[Any]:
        # never prepared: a generic plan cannot see how many ids there are (measured 0.12x vs 0.48x
        # of the plain ingest with plan_cache_mode=force_custom_plan)
        cur.execute(_COUNT_LABELS, {"ids": list(ids), "models": sorted(self.config.models)}, prepare=False)
        return cur.fetchall()

    def _add_label_rows(self, cur: psycopg.Cursor[Any], delta: WindowDelta, rows: list[Any], *,
                        detectors: bool) -> None:
        """Count label rows of versions whose profiles are loaded."""
        if not rows:
            return
        by_version: dict[Version, list[Any]] = defaultdict(list)
        for row in rows:
            by_version[(row[4], row[5])].append(row)
        for (model, version), group in by_version.items():
            self._count_label_group(cur, delta, self.config.models[model], self._profiles[(model, version)], group)
        if detectors:
            # label arrival order (the order rows come back in is arbitrary)
            rows.sort(key=lambda r: (r[3], r[0]))
            for prediction_id, _, new_label, observed_at, model, version, predicted_at, prediction, *_ in rows:
                delta.errors[(model, version)].append(
                    (_error(self.config.models[model], new_label, prediction), prediction_id, predicted_at,
                     observed_at)
                )

    def _count_label_group(
        self, cur: psycopg.Cursor[Any], delta: WindowDelta, config: ModelConfig, profile: ReferenceProfile,
        rows: Sequence[Any],
    ) -> None:
        """One version's label changes: each prediction leaves its old label's cells and joins its new one's."""
        predictions = [r[7] for r in rows]
        # the positive class's probability (binary), or the event's class probabilities (multiclass)
        scored = [_scored(config, r[8], r[9]) for r in rows]
        new = _contributions(config, [r[2] for r in rows], predictions, scored)
        had_old = [i for i, r in enumerate(rows) if r[1] is not None]
        old = dict(zip(had_old, _contributions(
            config, [rows[i][1] for i in had_old], [predictions[i] for i in had_old], [scored[i] for i in had_old]
        ), strict=True))
        label_series = profile.series.get(LABEL)
        if label_series is not None:
            new_bins = label_series.bin_values([r[2] for r in rows]).tolist()
            old_bins = dict(zip(had_old, label_series.bin_values([rows[i][1] for i in had_old]).tolist(),
                                strict=True))
        cells = _Cells(config, self._known_segments(cur, config.name))
        version = profile.model_version
        # rows sharing every segment and the window share every cell: sum them once per such
        # group, then add the group to each of its cells (all traffic, one per attribute)
        groups: dict[tuple[tuple[str, ...], datetime], tuple[dict[str, int], np.ndarray | None]] = {}
        for i, row in enumerate(rows):
            key = (tuple(cells.segments(row[10])), cells.start(row[6]))
            group = groups.get(key)
            if group is None:
                counts = None if label_series is None else np.zeros(label_series.n_bins, dtype=np.int64)
                group = groups[key] = ({}, counts)
            stats, counts = group
            performance.add(stats, new[i])
            if i in old:
                performance.add(stats, old[i], -1)
            if counts is not None:
                counts[new_bins[i]] += 1
                if i in old_bins:
                    counts[old_bins[i]] -= 1
        for (segments, start), (stats, counts) in groups.items():
            for seg in segments:
                cell = (config.name, version, seg, start)
                performance.add(delta.stats[cell], stats)
                if counts is not None:
                    delta.add_counts((*cell, LABEL), counts.copy())

    def write(self, cur: psycopg.Cursor[Any], delta: WindowDelta) -> None:
        """Write a delta's counts, aggregates and detector updates."""
        counts = [
            (m, v, self.config.models[m].window_s, seg, start, series, c.tolist())
            for (m, v, seg, start, series), c in sorted(delta.counts.items(), key=lambda kv: kv[0])
            if c.any()
        ]
        if counts:
            with cur.copy("COPY _in_counts FROM STDIN") as copy:
                copy.set_types(["text", "text", "int4", "text", "timestamptz", "text", "int8[]"])
                for row in counts:
                    copy.write_row(row)
            cur.execute(_UPSERT_COUNTS)
        stats = [
            # the stdlib writes integers of any size (a regression's e**4 sums pass 2**64; orjson refuses)
            (m, v, self.config.models[m].window_s, seg, start, json.dumps(s))
            for (m, v, seg, start), s in sorted(delta.stats.items(), key=lambda kv: kv[0])
            if any(s.values())
        ]
        if stats:
            with cur.copy("COPY _in_stats FROM STDIN") as copy:
                for row in stats:
                    copy.write_row(row)
            cur.execute(_UPSERT_STATS)
        changed = sorted({row[:5] for row in counts} | {row[:5] for row in stats})
        if changed:
            cur.execute(_MARK_CHANGED, dict(zip("mvwst", (list(c) for c in zip(*changed, strict=True)), strict=True)))
        if delta.errors:
            self._update_detectors(cur, delta.errors)

    # --- counting -----------------------------------------------------------------------------

    def _count_predictions(
        self, cur: psycopg.Cursor[Any], delta: WindowDelta, config: ModelConfig, profile: ReferenceProfile,
        events: Sequence[PredictionEvent],
    ) -> None:
        cells = _Cells(config, self._known_segments(cur, config.name))
        starts = [cells.start(p.predicted_at) for p in events]
        segs = [cells.segments(p.segment) for p in events]
        groups = sorted({(seg, s) for ss, s in zip(segs, starts, strict=True) for seg in ss})
        index = {g: i for i, g in enumerate(groups)}
        # each event belongs to one group per segment dimension
        gid = np.array([[index[(seg, s)] for seg in ss] for ss, s in zip(segs, starts, strict=True)],
                       dtype=np.int64).T
        key_base = (config.name, events[0].model_version)
        for name, series in profile.series.items():
            if name == LABEL:
                continue
            values = _series_values(config, name, events)
            bins = series.bin_values(values)
            flat = (gid * series.n_bins + bins).ravel()
            table = np.bincount(flat, minlength=len(groups) * series.n_bins).reshape(len(groups), series.n_bins)
            for (seg, s), i in index.items():
                if table[i].any():
                    delta.add_counts((*key_base, seg, s, name), table[i])
        rows = np.bincount(gid.ravel(), minlength=len(groups))
        for (seg, s), i in index.items():
            delta.add_counts((*key_base, seg, s, ROWS), rows[i : i + 1].copy())

    def _known_segments(self, cur: psycopg.Cursor[Any], model: str) -> dict[str, set[str]]:
        """The values each segment attribute of ``model`` has had (loaded once, then kept up to date here).

        Other workers' new values are not seen until restart, so past the cap two workers can pool
        a value differently; below it every value is its own segment everywhere.
        """
        known = self._segments.get(model)
        if known is None:
            known = {}
            cur.execute(_SEGMENTS, (model,))
            for (segment,) in cur.fetchall():
                attribute, _, value = segment.partition("=")
                known.setdefault(attribute, set()).add(value)
            self._segments[model] = known
        return known

    # --- profiles -------------------------------------------------------------------------------

    def lock_shared(self, cur: psycopg.Cursor[Any]) -> None:
        """Hold every monitored model's profile lock shared until the transaction ends."""
        cur.execute(_LOCK_SHARED, (PROFILE_LOCK_CLASS, sorted(self.config.models)))

    def profiles(self, cur: psycopg.Cursor[Any], versions: Iterable[Version]) -> dict[Version, ReferenceProfile]:
        """The current profiles of ``versions`` that exist; a profile replaced since it was cached is reloaded."""
        versions = sorted(versions)
        if not versions:
            return {}
        models, names = [m for m, _ in versions], [v for _, v in versions]
        cur.execute(_PROFILE_STAMPS, (models, names))
        stamps = {(m, v): at for m, v, at in cur.fetchall()}
        stale = [v for v, at in stamps.items() if self._stamps.get(v) != at]
        if stale:
            cur.execute(_PROFILES, ([m for m, _ in stale], [v for _, v in stale]))
            for model, version, source, n_rows, doc, at in cur.fetchall():
                self._profiles[(model, version)] = ReferenceProfile.from_row(model, version, source, n_rows, doc)
                self._stamps[(model, version)] = at
        return {v: self._profiles[v] for v in versions if v in stamps}

    # --- detectors ------------------------------------------------------------------------------

    def _update_detectors(
        self, cur: psycopg.Cursor[Any], errors: Mapping[Version, list[tuple[float, str, datetime, datetime]]]
    ) -> None:
        versions = sorted(errors)
        names = ([m for m, _ in versions], [v for _, v in versions])
        cur.execute(_LOCK_DETECTORS, (DETECTOR_LOCK_CLASS, *names))
        cur.execute(_DETECTOR_STATE, names)
        stored = {(m, v): (n, state, config) for m, v, n, state, config in cur.fetchall()}
        for version in versions:
            config = self.config.models[version[0]].detectors
            wanted = config_document(config)
            n_stored, state, stored_config = stored.get(version, (0, None, None))
            cached = self._detectors.get(version)
            if cached is not None and cached[0] == n_stored and stored_config == wanted:
                detectors = cached[1]
            elif state is None:
                detectors = ErrorStreamDetectors(config)
            else:
                detectors = self._restore(cur, version, config, state, stored_config,
                                          [pid for _, pid, _, _ in errors[version]])
            for error, prediction_id, predicted_at, observed_at in errors[version]:
                for hit in detectors.update(error):
                    cur.execute(_DETECTOR_EVENT, (
                        *version, hit.detector, hit.label_index, hit.change_index, prediction_id, predicted_at,
                        observed_at, hit.mean_before, hit.mean_after,
                    ))
            cur.execute(_SAVE_DETECTOR, (*version, detectors.n, detectors.dumps(), Jsonb(wanted)))
            self._detectors[version] = (detectors.n, detectors)

    def _restore(
        self, cur: psycopg.Cursor[Any], version: Version, config: DetectorConfig, state: bytes,
        stored_config: Mapping[str, Any], batch_ids: Sequence[str],
    ) -> ErrorStreamDetectors:
        """The stored detectors, or, when their config changed or their state cannot be read, new ones fed the
        version's stored error stream (without the batch at hand, which the caller feeds)."""
        if stored_config == config_document(config):
            try:
                return ErrorStreamDetectors.loads(state, config)
            except Exception as exc:  # a river upgrade can break unpickling in many ways; the store has the errors
                why = f"its state cannot be read ({type(exc).__name__}: {exc})"
        else:
            why = "its configuration changed"
        model_config = self.config.models[version[0]]
        detectors = ErrorStreamDetectors(config)
        with cur.connection.cursor(name="pitstop_error_stream") as stream:  # server side: never one giant fetch
            stream.execute(_ERROR_STREAM, (*version, list(batch_ids)))
            while rows := stream.fetchmany(10_000):
                for label, prediction in rows:
                    detectors.update(_error(model_config, label, prediction))  # past detections: not re-recorded
        log.warning("detectors of %s %s rebuilt from %d stored labels: %s", *version, detectors.n, why)
        return detectors


def count_uncounted(cur: psycopg.Cursor[Any], updater: WindowUpdater, *, chunk: int = SWEEP_CHUNK) -> int:
    """Count labels whose prediction was stored by a concurrent transaction; returns how many.

    Looks at the next ``chunk`` uncounted labels after ``updater.sweep_after``, and moves that cursor on
    (back to the start once the end is reached: ``updater.sweep_after == ""``).
    """
    updater.lock_shared(cur)
    cur.execute(_UNCOUNTED, (updater.sweep_after, chunk))
    ids = [r[0] for r in cur.fetchall()]
    updater.sweep_after = ids[-1] if len(ids) == chunk else ""
    if not ids:
        return 0
    delta = WindowDelta()
    n = updater.count_labels(cur, ids, delta)
    updater.write(cur, delta)
    return n


def _series_values(config: ModelConfig, name: str, events: Sequence[PredictionEvent]) -> list[Any]:
    if name == PREDICTION:
        return [p.prediction for p in events]
    if name == SCORE:
        return [_score_value(config, p.prediction, p.probabilities, p.score) for p in events]
    return [p.features.get(name) for p in events]


def _positive_probability(config: ModelConfig, probabilities: Mapping[str, float] | None, score: float | None):
    if config.score == "score":
        return score
    if config.score == "probabilities" and probabilities is not None:
        return probabilities.get(category_key(config.positive_class))
    return None


def _score_value(config: ModelConfig, prediction: Any, probabilities: Mapping[str, float] | None,
                 score: float | None) -> float | None:
    """The score series' value of one prediction: the positive class's probability, or for a multiclass model
    the probability the model gave its own prediction (its top-label confidence)."""
    if not config.multiclass:
        return _positive_probability(config, probabilities, score)
    if config.score == "probabilities" and probabilities is not None:
        return probabilities.get(category_key(performance.class_value(prediction)))
    return None


def _scored(config: ModelConfig, probabilities: Mapping[str, float] | None, score: float | None) -> Any:
    """What the performance aggregates read of a prediction's scores: the positive-class probability, or the
    whole class probabilities of a multiclass model (None without them, or with ``score = "none"``)."""
    if not config.multiclass:
        return _positive_probability(config, probabilities, score)
    return probabilities if config.score == "probabilities" else None


def _contributions(
    config: ModelConfig, labels: Sequence[Any], predictions: Sequence[Any], scored: Sequence[Any]
) -> list[dict[str, int]]:
    """Each labelled prediction's performance aggregates; a non-numeric regression pair contributes nothing.

    ``scored``: per prediction, what :func:`_scored` reads (the positive-class probability, or the class
    probabilities of a multiclass model)."""
    if config.multiclass:
        return performance.multiclass_contributions(labels, predictions, scored)
    if config.task == "classification":
        return performance.classification_contributions(labels, predictions, scored, positive=config.positive_class)
    numeric = [i for i, (y, f) in enumerate(zip(labels, predictions, strict=True))
               if type(y) in (int, float) and type(f) in (int, float)]
    out: list[dict[str, int]] = [{} for _ in labels]
    found = performance.regression_contributions([float(labels[i]) for i in numeric],
                                                 [float(predictions[i]) for i in numeric])
    for i, c in zip(numeric, found, strict=True):
        out[i] = c
    return out


def _error(config: ModelConfig, label: Any, prediction: Any) -> float:
    if config.task == "classification":
        return 0.0 if performance.same_label(label, prediction) else 1.0
    if type(label) not in (int, float) or type(prediction) not in (int, float):
        return 0.0
    return abs(float(prediction) - float(label))


# --- profiles: installing one recounts the version ---------------------------------------------

_LOCK_EXCLUSIVE = f"SELECT pg_advisory_xact_lock(%s, {lock_key()})"

_SAVE_PROFILE = """
INSERT INTO reference_profiles (model_name, model_version, source, n_rows, profile)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (model_name, model_version) DO UPDATE
SET source = excluded.source, n_rows = excluded.n_rows, profile = excluded.profile, created_at = now()
"""

_FORGET_WINDOWS = (
    # every window of the version changes: those the recount leaves empty too
    "UPDATE window_changes SET changed = pg_current_xact_id() WHERE model_name = %(m)s AND model_version = %(v)s",
    "DELETE FROM window_counts WHERE model_name = %(m)s AND model_version = %(v)s",
    "DELETE FROM window_performance WHERE model_name = %(m)s AND model_version = %(v)s",
    """UPDATE current_labels c SET counted_label = NULL FROM predictions p
    WHERE p.prediction_id = c.prediction_id AND p.model_name = %(m)s AND p.model_version = %(v)s
      AND c.counted_label IS NOT NULL""",
)

_VERSION_PREDICTIONS = """
SELECT prediction_id, model_name, model_version, predicted_at, features, prediction, probabilities, score, segment
FROM predictions WHERE model_name = %s AND model_version = %s
"""

_FIRST_PREDICTIONS = """
SELECT features, prediction, probabilities, score, l.label
FROM predictions p LEFT JOIN current_labels l USING (prediction_id)
WHERE model_name = %s AND model_version = %s
ORDER BY predicted_at, prediction_id
LIMIT %s
"""

REBUILD_CHUNK = 5000
_VERSION_COUNT = "SELECT count(*) FROM predictions WHERE model_name = %s AND model_version = %s"


def install_profile(conn: psycopg.Connection[Any], updater: WindowUpdater, profile: ReferenceProfile, *,
                    progress: Callable[[int, int], object] | None = None) -> int:
    """Store ``profile`` for its version and recount every stored row of the version in its bins.

    Runs in one transaction under the version's exclusive lock, so no ingest transaction
    writes the version meanwhile; returns the number of predictions counted. ``progress`` is called with the rows
    recounted so far and their total after each chunk.
    """
    version = (profile.model_name, profile.model_version)
    config = updater.config.models[profile.model_name]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_LOCK_EXCLUSIVE, (PROFILE_LOCK_CLASS, version[0]))
        cur.execute(_SAVE_PROFILE, (*version, profile.source, profile.n_rows, profile.to_json().decode()))
        for statement in _FORGET_WINDOWS:
            cur.execute(statement, {"m": version[0], "v": version[1]})
        updater.profiles(cur, [version])
        n = 0
        total = cur.execute(_VERSION_COUNT, version).fetchone()[0] if progress is not None else 0
        with conn.cursor(name="pitstop_rebuild") as rows:
            rows.execute(_VERSION_PREDICTIONS, version)
            while chunk := rows.fetchmany(REBUILD_CHUNK):
                events = [_event_of(r) for r in chunk]
                delta = WindowDelta()
                updater._count_predictions(cur, delta, config, updater._profiles[version], events)
                updater.count_labels(cur, [e.prediction_id for e in events], delta, detectors=False)
                updater.write(cur, delta)
                n += len(events)
                if progress is not None:
                    progress(n, max(total, n))
        updater.unprofiled.discard(version)
    return n


def profile_from_first_predictions(
    cur: psycopg.Cursor[Any], config: ModelConfig, model_version: str
) -> ReferenceProfile | None:
    """The version's profile from its first ``reference_rows`` predictions, once that many are stored."""
    cur.execute(_FIRST_PREDICTIONS, (config.name, model_version, config.reference_rows))
    rows = cur.fetchall()
    if len(rows) < config.reference_rows:
        return None
    columns = reference_columns(
        config,
        features=[r[0] for r in rows],
        predictions=[r[1] for r in rows],
        scores=[_score_value(config, r[1], r[2], r[3]) for r in rows],
        labels=[r[4] for r in rows],
    )
    return build_profile(config.name, model_version, columns, series_kinds(config),
                         source=f"first {len(rows)} predictions")


def reference_columns(
    config: ModelConfig,
    *,
    features: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    predictions: Sequence[Any] | None,
    scores: Sequence[Any] | None,
    labels: Sequence[Any] | None,
) -> dict[str, Sequence[Any]]:
    """The columns a profile is built from: features, prediction, score and label (when present)."""
    if isinstance(features, Mapping):
        columns: dict[str, Sequence[Any]] = dict(features)
    else:
        names = sorted({k for f in features for k in f})
        columns = {n: [f.get(n) for f in features] for n in names}
    if predictions is not None:
        columns[PREDICTION] = predictions
    if scores is not None and config.score != "none":
        columns[SCORE] = scores
    # a prediction without a label has no label yet (it is not a missing value): left out
    present = [v for v in labels or () if v is not None]
    if present:
        columns[LABEL] = present
    return columns


def series_kinds(config: ModelConfig) -> dict[str, FeatureKind]:
    """The declared kind of every series: the features', and the outcome's and score's by the task."""
    outcome: FeatureKind = "categorical" if config.task == "classification" else "numeric"
    return {**config.features, PREDICTION: outcome, LABEL: outcome, SCORE: "numeric"}


def _event_of(row: Sequence[Any]) -> PredictionEvent:
    pid, model, version, predicted_at, features, prediction, probabilities, score, segment = row
    return PredictionEvent(
        prediction_id=pid, model_name=model, model_version=version, predicted_at=predicted_at, features=features,
        prediction=prediction, probabilities=probabilities, score=score, segment=segment,
    )
