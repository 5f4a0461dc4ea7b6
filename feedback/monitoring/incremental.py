"""A version's evaluation, kept between rounds and brought up to date from what changed.

An evaluation of a version judges every series of every window of its span, in every segment (a *cell*), and
the performance of every window (feedback/monitoring/evaluate.py). Most of it does not change from one round to
the next: an hour of new predictions changes the newest window, late labels change the label series and the
aggregates of older windows. :class:`VersionState` keeps, per window of each segment, the raw statistics of its
cells (:data:`~feedback.monitoring.evaluate.RAW`: sizes, divergences, their lower bounds, raw p-values), the
metrics of its aggregates once it is judged (the aggregates themselves, compressed, until then), and the
fingerprints of the rows it last built, and at each round:

* reads only the accumulator rows a transaction changed since the last round (every row carries the id of the
  transaction that last changed it, migration 017; the windows come from ``window_changes``, migration 015),
  and computes the statistics of those cells only: every statistic works along one cell's bins, so a cell's
  numbers are those a whole evaluation gives it, to the bit;
* judges the whole span again from the kept raw statistics: Holm over every judged test, the floors, the
  baseline (cheap: arrays of a few thousand numbers);
* builds the rows of a window's parts (one per series, one for its performance) only when something they are
  made of changed: the series' statistics or the aggregates, its Holm-adjusted p-values, the number of tests,
  the baseline or the limit; every part of a window the store does not hold as this state last built it
  (feedback/monitoring/results.py stores them). The rest keep the rows the store holds (and, in memory, only
  what the trigger engine reads of them: :func:`slim_rows`).

A whole evaluation (`pitstop monitor`, `pitstop triggers replay`, a version's first round in a process) is the
same code with nothing kept: every row read, every cell computed, every window built.
"""

from __future__ import annotations

import json
import pickle
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from feedback.config import ModelConfig
from feedback.monitoring import performance
from feedback.monitoring.evaluate import (
    RAW,
    Baseline,
    DriftResult,
    Evaluation,
    Limit,
    PerformanceResult,
    baseline_of,
    categorical_statistics,
    cell_widths,
    drift_cell_rows,
    judge_drift,
    judged_performance,
    metrics_of,
    numeric_statistics,
    performance_limit,
    performance_window_rows,
    series_order,
)
from feedback.monitoring.profile import ROWS, ReferenceProfile
from feedback.monitoring.results import (
    VersionWrites,
    WindowWrite,
    fingerprint,
    row_values,
    stored_fingerprints,
    window_fingerprint,
)

ALL = "*"

#: a window of one segment
Key = tuple[str, datetime]

_WATERMARK = """
SELECT max(window_start) FROM window_counts
WHERE model_name = %s AND model_version = %s AND window_s = %s AND segment = '*' AND series = %s
"""

# the earliest windows, for the baseline: their performance and row counts
_EARLY_WINDOWS = """
SELECT c.window_start, coalesce(p.stats, '{}'::jsonb)::text, c.counts[1]
FROM window_counts c
LEFT JOIN window_performance p USING (model_name, model_version, window_s, segment, window_start)
WHERE c.model_name = %s AND c.model_version = %s AND c.window_s = %s AND c.segment = '*' AND c.series = %s
ORDER BY c.window_start
LIMIT %s
"""

# the same, of some windows
_SOME_EARLY_WINDOWS = """
SELECT c.window_start, coalesce(p.stats, '{}'::jsonb)::text, c.counts[1]
FROM window_counts c
LEFT JOIN window_performance p USING (model_name, model_version, window_s, segment, window_start)
WHERE c.model_name = %s AND c.model_version = %s AND c.window_s = %s AND c.segment = '*' AND c.series = %s
  AND c.window_start = ANY(%s)
"""

_SPAN_COUNTS = """
SELECT segment, window_start, series, counts FROM window_counts
WHERE model_name = %s AND model_version = %s AND window_s = %s AND window_start >= %s AND window_start <= %s
"""

_SPAN_PERF = """
SELECT segment, window_start, stats::text FROM window_performance
WHERE model_name = %s AND model_version = %s AND window_s = %s AND window_start >= %s AND window_start <= %s
"""

# the rows of the listed windows: all of them (whole) or those a transaction not visible in the snapshot changed
_CHANGED = """
JOIN unnest(%(s)s::text[], %(t)s::timestamptz[], %(whole)s::bool[]) AS k(segment, window_start, whole)
    USING (segment, window_start)
WHERE x.model_name = %(m)s AND x.model_version = %(v)s AND x.window_s = %(w)s
  AND (k.whole OR (x.changed >= pg_snapshot_xmin(%(since)s::pg_snapshot)
                   AND NOT pg_visible_in_snapshot(x.changed, %(since)s::pg_snapshot)))
"""
_CHANGED_COUNTS = f"SELECT segment, window_start, x.series, x.counts FROM window_counts x {_CHANGED}"
_CHANGED_PERF = f"SELECT segment, window_start, x.stats::text FROM window_performance x {_CHANGED}"

# what the retrain worker measured of the version before it was deployed (None for a model registered by hand)
_TESTED_LEVEL = "SELECT (lineage->'expected')::text FROM model_versions WHERE model_name = %s AND version = %s"


def read_tested_level(cur: psycopg.Cursor[Any], model: str, version: str) -> str | None:
    row = cur.execute(_TESTED_LEVEL, (model, version)).fetchone()
    return row[0] if row else None


@dataclass(slots=True)
class _Window:
    """What a state keeps of one window of one segment."""

    cells: np.ndarray  # (RAW, series) raw statistics
    rows: int = 0  # predictions counted
    n: int = 0  # labels counted
    #: the metrics of its aggregates, computed once it is judged, pickled (read only when the window's performance
    #: rows are built again; as objects, 2.2 KB a window); until then the aggregates themselves, compressed (a
    #: classification window's aggregates are some 450 integers: as a dict, 45 KB a window)
    metrics: bytes | None = None
    stats: bytes | None = None
    #: the series whose statistics, and whether the aggregates or the row count, changed since the rows were built
    dirty: set[int] | None = None
    perf_dirty: bool = True
    p_adj: np.ndarray | None = None  # Holm-adjusted p-values the rows were built with
    parts: np.ndarray | None = None  # fingerprints of the rows of each part (series..., performance), as built
    shapes: np.ndarray | None = None  # of the metrics each part has rows of (hash(), this process only)
    fingerprint: int | None = None  # the window's, as last built
    #: per part, as built: what the engine reads of its rows (None: nothing)
    slim: list[list[DriftResult | PerformanceResult] | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Update:
    """One evaluation of a version: the evaluation (whole rows, or slimmed to what the engine reads) and what to
    store of it."""

    evaluation: Evaluation
    writes: VersionWrites


class VersionState:
    """A version's evaluation kept between rounds (see the module's docstring); one per version and process."""

    def __init__(self, config: ModelConfig, profile: ReferenceProfile) -> None:
        self.config = config
        self.profile = profile
        self.order = series_order(profile)
        self._column = {name: j for j, name in enumerate(self.order)}
        self._numeric = sum(1 for name in self.order if profile.series[name].kind == "numeric")
        self.windows: dict[Key, _Window] = {}
        #: the earliest windows of all traffic (start, aggregates compressed, rows, labels): what the baseline pools
        self.early: list[tuple[datetime, bytes, int, int]] | None = None
        self._baseline_of: tuple[Any, ...] | None = None  # what self.baseline was computed from
        #: what the rows were last built with: the number of tests, the baseline and the limit
        self.tests = -1
        self.baseline: Baseline | None = None
        self.limit: Limit | None = None
        self._zero: np.ndarray | None = None
        self._keep_all = False  # keep every row built, not only the slim ones (a look or a replay)

    # --- reading -------------------------------------------------------------------------------------

    def update(
        self, cur: psycopg.Cursor[Any], *, tested: str | None, since: str | None = None,
        marked: Iterable[Key] = (), newest: datetime | None = None, whole: bool = False,
    ) -> Update | None:
        """Bring the evaluation up to date and return it (None: the version has no window to judge).

        ``since`` is the snapshot under which the state last read the store and ``marked`` the windows changed
        since (``window_changes``); without ``since`` everything is read again. ``tested`` is the version's tested
        level as text (``lineage->'expected'``). ``whole`` returns every result row (a look or a replay);
        otherwise the evaluation holds :func:`slim_rows` and :attr:`Update.writes` what to store of this time's.
        ``newest`` evaluates the span ending at that window instead of the newest with data (a replay).
        """
        config = self.config
        key = (config.name, self.profile.model_version, config.window_s)
        step = timedelta(seconds=config.window_s)
        self._keep_all = whole
        if newest is None:
            newest = cur.execute(_WATERMARK, (*key, ROWS)).fetchone()[0]
        marked = sorted(marked)
        if self.early is None:  # nothing kept yet: read everything
            since = None
        if since is None:
            self.windows, self.early = {}, None
        if newest is None:
            return None
        self._read_early(cur, key, marked)
        if not self.early or self.early[0][0] > newest:
            return None
        first = max(newest - step * (config.span - 1), self.early[0][0])
        starts = tuple(first + step * i for i in range(int((newest - first) / step) + 1))
        span = set(starts)
        self.windows = {k: w for k, w in self.windows.items() if k[1] in span}
        self._read(cur, key, since, [k for k in marked if k[1] in span], first, newest)
        stored = {} if whole else stored_fingerprints(cur, config.name, self.profile.model_version, starts)
        return self._judge(starts, tested, stored, whole)

    def _read_early(self, cur: psycopg.Cursor[Any], key: tuple[str, str, int], marked: Sequence[Key]) -> None:
        """The earliest windows the baseline pools: read whole the first time, then only the marked windows of all
        traffic that can be among them (at or before the last kept, or any while fewer than the limit are kept)."""
        limit = self.config.performance.baseline_windows * 8
        if self.early is None:
            self.early = [(start, _pack(s), int(rows or 0), _labels(s))
                          for start, s, rows in cur.execute(_EARLY_WINDOWS, (*key, ROWS, limit)).fetchall()]
            self._baseline_of = None
            return
        last = self.early[-1][0] if len(self.early) >= limit else None
        starts = sorted({start for segment, start in marked if segment == ALL and (last is None or start <= last)})
        if not starts:
            return
        found = {start: (start, _pack(s), int(rows or 0), _labels(s))
                 for start, s, rows in cur.execute(_SOME_EARLY_WINDOWS, (*key, ROWS, starts)).fetchall()}
        merged = {start: w for start, w in ((w[0], w) for w in self.early)} | found
        self.early = [merged[start] for start in sorted(merged)][:limit]
        self._baseline_of = None

    def _read(self, cur: psycopg.Cursor[Any], key: tuple[str, str, int], since: str | None, marked: Sequence[Key],
              first: datetime, newest: datetime) -> None:
        """Read what changed and compute the changed cells (marked dirty in their windows)."""
        if since is None:
            counts = cur.execute(_SPAN_COUNTS, (*key, first, newest)).fetchall()
            perf = cur.execute(_SPAN_PERF, (*key, first, newest)).fetchall()
            fresh = {(segment, start) for segment, start, *_ in counts}
        elif marked:
            fresh = {k for k in marked if k not in self.windows}
            params = {"s": [k[0] for k in marked], "t": [k[1] for k in marked],
                      "whole": [k in fresh for k in marked], "m": key[0], "v": key[1], "w": key[2], "since": since}
            counts = cur.execute(_CHANGED_COUNTS, params).fetchall()
            perf = cur.execute(_CHANGED_PERF, params).fetchall()
        else:
            return
        zero = self._zero_cells()
        for k in fresh:
            self.windows[k] = _Window(zero.copy())
        todo: dict[Key, dict[str, Sequence[int]]] = {k: {name: () for name in self.order} for k in fresh}
        for segment, start, series, c in counts:
            k = (segment, start)
            w = self.windows.get(k)
            if w is None:  # a row of a window not marked (counts of a segment not in window_changes)
                continue
            if series == ROWS:
                w.rows, w.perf_dirty = int(c[0]), True
            elif series in self._column:
                todo.setdefault(k, {})[series] = c
        for segment, start, s in perf:
            w = self.windows.get((segment, start))
            if w is not None:
                self._aggregates(w, s)
        self._compute(todo)

    def _aggregates(self, w: _Window, text: str) -> None:
        """A window's aggregates as stored: its metrics when it is judged, else the aggregates kept compressed."""
        acc = exact_stats(text)
        w.n, w.perf_dirty = int(acc.get("n", 0)), True
        if judged_performance(self.config, acc, w.rows):
            w.metrics, w.stats = _pack_metrics(metrics_of(self.config, acc)), None
        else:
            w.metrics, w.stats = None, _pack(text) if acc else None

    def _zero_cells(self) -> np.ndarray:
        """The statistics of a window with no rows in any series (every cell unjudged)."""
        if self._zero is None:
            self._zero = np.empty((len(RAW), len(self.order)))
            self._fill(self._zero, {name: () for name in self.order})
        return self._zero

    def _compute(self, todo: Mapping[Key, Mapping[str, Sequence[int]]]) -> None:
        """Compute the statistics of the listed cells (their counts as stored; () for none) into their windows."""
        cells = [(k, name, c) for k, series in todo.items() for name, c in series.items()]
        if not cells:
            return
        values = np.empty((len(RAW), len(cells)))
        self._fill(values, {i: c for i, (_, _, c) in enumerate(cells)}, names=[name for _, name, _ in cells])
        for i, (k, name, _) in enumerate(cells):
            w = self.windows[k]
            w.cells[:, self._column[name]] = values[:, i]
            if w.dirty is None:
                w.dirty = set()
            w.dirty.add(self._column[name])

    def _fill(self, out: np.ndarray, counts: Mapping[Any, Sequence[int]], names: Sequence[str] | None = None) -> None:
        """The raw statistics of cells into the columns of ``out``: ``counts`` by column (by series name when
        ``names`` is None), ``names`` the series of each column."""
        keys = list(counts)
        names = names if names is not None else keys
        numeric_width, categorical_width = cell_widths(self.profile)
        numeric = [i for i, name in enumerate(names) if self._column[name] < self._numeric]
        categorical = [i for i, name in enumerate(names) if self._column[name] >= self._numeric]
        for columns, kind in ((numeric, "numeric"), (categorical, "categorical")):
            if not columns:
                continue
            width = numeric_width if kind == "numeric" else categorical_width
            cur = np.zeros((len(columns), width))
            index = np.empty(len(columns), dtype=np.intp)
            for row, i in enumerate(columns):
                name = names[i]
                index[row] = self._column[name] - (0 if kind == "numeric" else self._numeric)
                c = counts[keys[i]]
                if len(c) != self.profile.series[name].n_bins:
                    continue  # none, or counts of another binning: zeros, as a whole evaluation reads them
                if kind == "numeric":
                    cur[row, : len(c) - 1] = c[:-1]
                    cur[row, -1] = c[-1]
                else:
                    cur[row, : len(c)] = c
            compute = numeric_statistics if kind == "numeric" else categorical_statistics
            out[:, columns] = compute(self.config, self.profile, index, cur)

    # --- judging ---------------------------------------------------------------------------------------

    def _judge(self, starts: tuple[datetime, ...], tested: str | None, stored: Mapping[Key, int], whole: bool
               ) -> Update:
        """Judge the span from the kept statistics; build the parts whose inputs changed, and every part of a window
        the store does not hold as this state last built it."""
        config = self.config
        step = timedelta(seconds=config.window_s)
        segments = sorted({segment for segment, _ in self.windows}, key=lambda s: (s != ALL, s))
        zero = self._zero_cells()
        for seg in segments:  # a segment with no row in a window: zeros, as a whole evaluation counts them
            for start in starts:
                if (seg, start) not in self.windows:
                    self.windows[(seg, start)] = _Window(zero.copy())
        raw = {seg: np.stack([self.windows[(seg, s)].cells for s in starts], axis=-1) for seg in segments}
        arrays = judge_drift(config, self.profile, raw)
        tests = int(np.count_nonzero(arrays.judged))
        baseline = self.baseline
        if self._baseline_of != (tested,):
            early = [(start, _Packed(text, n), rows) for start, text, rows, n in self.early or []]
            baseline = baseline_of(config, early, json.loads(tested) if tested else None)
            self._baseline_of = (tested,)
        limit = performance_limit(config, baseline)
        every_series = tests != self.tests
        every_perf = limit != self.limit or baseline != self.baseline
        self.tests, self.limit, self.baseline = tests, limit, baseline
        width = len(self.order)
        writes: list[WindowWrite] = []
        built: list[DriftResult | PerformanceResult] = []
        for g, seg in enumerate(segments):
            for i, start in enumerate(starts):
                k = (seg, start)
                w = self.windows[k]
                p_adj = arrays.p_adj[g * width:(g + 1) * width, i]
                held = w.fingerprint is not None and stored.get(k) == w.fingerprint
                if whole or not held or w.parts is None or w.p_adj is None:
                    series = range(width)
                    perf = True
                else:
                    moved = np.flatnonzero(~((w.p_adj == p_adj) | (np.isnan(w.p_adj) & np.isnan(p_adj))))
                    series = range(width) if every_series else sorted((w.dirty or set()) | set(moved.tolist()))
                    perf = every_perf or w.perf_dirty
                if not series and not perf and held:
                    continue
                write = self._build(arrays, g * width, i, k, step, w, baseline, limit, tests, series, perf,
                                    whole=not held)
                w.p_adj, w.dirty, w.perf_dirty = p_adj.copy(), None, False
                if whole:
                    built.extend(r for part in w.slim if part for r in part)
                    w.slim = []
                elif write is not None and stored.get(k) != write.fingerprint:
                    writes.append(write)
        if whole:
            drift = [r for r in built if isinstance(r, DriftResult)]
            perf_rows = [r for r in built if isinstance(r, PerformanceResult)]
        else:
            drift, perf_rows = [], []
            for seg in segments:
                for start in starts:
                    for part in self.windows[(seg, start)].slim:
                        for r in part or ():
                            (drift if isinstance(r, DriftResult) else perf_rows).append(r)  # type: ignore[arg-type]
        evaluation = Evaluation(
            model_name=config.name, model_version=self.profile.model_version, evaluated_at=starts[-1] + step,
            drift=drift, performance=perf_rows, tests=tests,
            baseline=baseline.value if baseline is not None else None,
            observed=baseline.observed if baseline is not None else None,
        )
        gone = sorted(set(stored) - {(seg, start) for seg in segments for start in starts})
        return Update(evaluation, VersionWrites(config.name, self.profile.model_version, evaluation.evaluated_at,
                                                writes, gone))

    def _build(self, arrays: Any, row0: int, i: int, k: Key, step: timedelta, w: _Window, baseline: Baseline | None,
               limit: Limit, tests: int, series: Sequence[int], perf: bool, *, whole: bool) -> WindowWrite | None:
        """Build the rows of the listed parts of a window; returns what to store of them (the parts whose rows
        changed, or, ``whole``, every part of the window) or None when no part changed. Keeps the parts' slim rows
        (every row, when the state keeps nothing: a look) and fingerprints."""
        config = self.config
        seg, start = k
        width = len(self.order)
        parts = w.parts.copy() if w.parts is not None else np.zeros(width + 1, dtype=np.int64)
        shapes = w.shapes if w.shapes is not None else np.zeros(width + 1, dtype=np.int64)
        if not w.slim:
            w.slim = [None] * (width + 1)
        rows: list[tuple[Any, ...]] = []
        changed: list[tuple[str, str]] = []  # parts whose metrics changed
        built: list[tuple[int, list[DriftResult | PerformanceResult]]] = []
        end = start + step  # one object for every row of the window (a kept state holds thousands)
        for j in series:
            name = self.order[j]
            built.append((j, drift_cell_rows(config, seg, start, step, self.profile.series[name],
                                             arrays.cell(row0 + j, i), tests, end=end)))
        if perf:
            counted = {"n": w.n}
            if w.metrics is None and judged_performance(config, counted, w.rows):
                w.metrics, w.stats = _pack_metrics(metrics_of(config, _unpack(w.stats))), None
            metrics = pickle.loads(w.metrics) if w.metrics is not None else {}  # noqa: S301  # our own bytes
            built.append((width, performance_window_rows(config, seg, start, step, counted, w.rows, baseline, limit,
                                                         metrics)))
        for j, made in built:
            values = row_values(made)
            fp = fingerprint(values)
            shape = hash(tuple(r.metric for r in made))
            if whole or fp != parts[j] or w.parts is None:
                rows += values
                if shape != shapes[j]:  # rows of other metrics may be stored: those the evaluation lost go
                    changed.append(("performance", "") if j == width else ("drift", self.order[j]))
            parts[j], shapes[j] = fp, shape
            w.slim[j] = made if self._keep_all else (slim_rows(made, config) or None)
        w.parts, w.shapes = parts, shapes
        w.fingerprint = window_fingerprint(parts)
        if not rows:
            return None
        return WindowWrite(k, rows, None if whole else tuple(changed), w.fingerprint)


def slim_rows(rows: Sequence[DriftResult | PerformanceResult], config: ModelConfig
              ) -> list[DriftResult | PerformanceResult]:
    """What the trigger engine (feedback/triggers/signals.py) and the round's summary read of a window's rows: the
    drift verdicts of all traffic and those that flagged a segment, and the main metric of all traffic, without
    their sentences."""
    out: list[DriftResult | PerformanceResult] = []
    for r in rows:
        if isinstance(r, DriftResult):
            keep = r.metric == "drift" and (r.segment == ALL or r.status == "drift")
        else:
            keep = r.segment == ALL and r.metric == config.metric
        if keep:
            out.append(replace(r, sentence=""))
    return out


class _Packed(Mapping[str, int]):
    """Compressed aggregates read as a mapping, unpacked at the first look past their label count (the baseline
    asks every early window whether it is judged and pools only the first few)."""

    def __init__(self, packed: bytes | None, n: int) -> None:
        self._packed = packed
        self._acc: dict[str, int] | None = None
        self._n = n

    def _whole(self) -> dict[str, int]:
        if self._acc is None:
            self._acc = _unpack(self._packed)
        return self._acc

    def get(self, key: str, default: Any = None) -> Any:
        if key == "n" and self._acc is None:
            return self._n if self._n else default
        return self._whole().get(key, default)

    def __getitem__(self, key: str) -> int:
        return self._whole()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())


_LABELS = re.compile(r'"n": *(\d+)')


def _labels(text: str) -> int:
    """The label count ``n`` of stored aggregates, without parsing them.

    >>> _labels('{"n": 12, "n_scored": 3}'), _labels('{"tp": 1}')
    (12, 0)
    """
    found = _LABELS.search(text)
    return int(found.group(1)) if found else 0


def _pack_metrics(metrics: dict[str, performance.MetricValue]) -> bytes:
    return pickle.dumps(metrics, protocol=pickle.HIGHEST_PROTOCOL)


def _pack(text: str) -> bytes:
    return zlib.compress(text.encode(), 1)


def _unpack(packed: bytes | None) -> dict[str, int]:
    return exact_stats(zlib.decompress(packed).decode()) if packed else {}


def exact_stats(text: str) -> dict[str, int]:
    """Stored aggregates as exact integers: read as text and parsed by the stdlib (orjson, the pool's
    jsonb parser, turns integers past 64 bits into floats).

    >>> exact_stats('{"n": 3, "sq_err_sq_sum": 240000000000000000001}')["sq_err_sq_sum"]
    240000000000000000001
    """
    return {k: int(v) for k, v in json.loads(text).items()}
