"""The monitor's round: build missing profiles, count stray labels, judge every version's windows, store results."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg

from feedback.config import ModelConfig
from feedback.monitoring.changes import changed_since, snapshot
from feedback.monitoring.evaluate import (
    Evaluation,
    baseline_of,
    evaluate_drift,
    evaluate_performance,
    summary,
    to_window_data,
)
from feedback.monitoring.profile import ROWS, ReferenceProfile
from feedback.monitoring.windows import (
    ALL,
    WindowUpdater,
    count_uncounted,
    install_profile,
    profile_from_first_predictions,
)
from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

#: advisory lock class of "the monitor round of a schema": one round at a time across the workers of one store
#: (keyed by the schema, so that stores in other schemas of the same database never wait for it)
MONITOR_LOCK = 0x5049_4D4E
#: chunks of the stray-label sweep per round (feedback.monitoring.windows.SWEEP_CHUNK labels each)
SWEEP_CHUNKS = 4
#: a monitor evaluates every version again every this many rounds, changed or not (an hour at the default
#: 10 s interval): what no window change marks (a tested level registered late) is seen within it
FULL_PASS_ROUNDS = 360

_TRY_ROUND_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"
_ROUND_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))"

# a loose index scan over predictions_model_time: the model's versions without a profile
_UNPROFILED = """
WITH RECURSIVE v AS (
    (SELECT model_version FROM predictions WHERE model_name = %(m)s ORDER BY model_version LIMIT 1)
    UNION ALL
    SELECT (SELECT p.model_version FROM predictions p
            WHERE p.model_name = %(m)s AND p.model_version > v.model_version
            ORDER BY p.model_version LIMIT 1)
    FROM v WHERE v.model_version IS NOT NULL
)
SELECT model_version FROM v
WHERE model_version IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM reference_profiles r WHERE r.model_name = %(m)s AND r.model_version = v.model_version)
"""

_VERSIONS = """
SELECT model_name, model_version FROM reference_profiles WHERE model_name = ANY(%s) ORDER BY 1, 2
"""

_WATERMARK = """
SELECT max(window_start) FROM window_counts
WHERE model_name = %s AND model_version = %s AND window_s = %s AND segment = '*' AND series = %s
"""

_WINDOW_COUNTS = """
SELECT segment, window_start, series, counts FROM window_counts
WHERE model_name = %s AND model_version = %s AND window_s = %s AND window_start >= %s AND window_start <= %s
"""

_WINDOW_PERF = """
SELECT segment, window_start, stats::text FROM window_performance
WHERE model_name = %s AND model_version = %s AND window_s = %s AND window_start >= %s AND window_start <= %s
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

# what the retrain worker measured of the version before it was deployed (None for a model registered by hand)
_TESTED_LEVEL = """
SELECT lineage->'expected' FROM model_versions WHERE model_name = %s AND version = %s
"""

# the windows (segment, start) of a version whose rows a round writes again, or which it no longer produces
_WINDOW_KEYS = "(segment, window_start) IN (SELECT * FROM unnest(%s::text[], %s::timestamptz[]))"
# every version's tested level, to tell one that changed since its evaluation (registered after its windows)
_TESTED_LEVELS = """
SELECT model_name, version, (lineage->'expected')::text FROM model_versions WHERE model_name = ANY(%s)
"""

_FORGET_RESULTS = f"DELETE FROM monitor_results WHERE model_name = %s AND model_version = %s AND {_WINDOW_KEYS}"
_FORGET_WINDOWS = f"DELETE FROM monitor_windows WHERE model_name = %s AND model_version = %s AND {_WINDOW_KEYS}"
_STORED_WINDOWS = """
SELECT segment, window_start, fingerprint FROM monitor_windows
WHERE model_name = %s AND model_version = %s AND window_start = ANY(%s)
"""
_WINDOW_COLUMNS = "model_name, model_version, segment, window_start, fingerprint, evaluated_at"

_STAGE_RESULTS = """
CREATE TEMP TABLE IF NOT EXISTS _in_results (LIKE monitor_results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""

_RESULT_COLUMNS = (
    "model_name, model_version, segment, window_start, window_end, kind, metric, feature, value, threshold, "
    "p_value, ci_low, ci_high, status, sample_size, label_coverage, sentence, evaluated_at"
)

_UPSERT_RESULTS = f"""
INSERT INTO monitor_results AS r ({_RESULT_COLUMNS})
SELECT {_RESULT_COLUMNS} FROM _in_results
ORDER BY model_name, model_version, segment, window_start, kind, metric, feature
ON CONFLICT (model_name, model_version, segment, window_start, kind, metric, feature) DO UPDATE SET
    window_end = excluded.window_end, value = excluded.value, threshold = excluded.threshold,
    p_value = excluded.p_value, ci_low = excluded.ci_low, ci_high = excluded.ci_high, status = excluded.status,
    sample_size = excluded.sample_size, label_coverage = excluded.label_coverage, sentence = excluded.sentence,
    evaluated_at = excluded.evaluated_at, recorded_at = now()
"""


#: what runs at the end of a round, under its lock: (connection, the round's evaluations)
AfterRound = Callable[[psycopg.Connection[Any], list[Evaluation]], object]


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one monitor round did."""

    evaluations: list[Evaluation]
    summaries: list[dict[str, Any]]
    profiles_built: list[tuple[str, str]]
    labels_swept: int
    #: result rows written (the rows of the windows whose results changed)
    results_written: int = 0


class Monitor:
    """Runs monitor rounds against one store; safe to run from every worker (one round at a time).

    A round evaluates only the versions whose windows changed since this monitor's last round of their model
    (``window_changes``, feedback/monitoring/changes.py): the others keep the evaluation of the round that last
    evaluated them, slimmed to what the trigger engine and the round's summary read (:func:`slim`). An evaluation
    is a function of the version's windows, its profile (reinstalling one marks every window) and its tested level
    (compared at every round); every ``full_every`` rounds every version is evaluated again all the same (cheap: a
    window's rows are written only when they differ).
    """

    def __init__(self, store: FeedbackStore, updater: WindowUpdater, *, full_every: int = FULL_PASS_ROUNDS) -> None:
        self.store = store
        self.updater = updater
        self.full_every = full_every
        #: per model, the snapshot under which this monitor's last round of it read its windows
        self._since: dict[str, str] = {}
        #: per version, its evaluation as of the round that last evaluated it (slimmed), and its tested level then
        self._kept: dict[tuple[str, str], tuple[Evaluation, str | None]] = {}
        self._rounds = 0

    def run_once(
        self, *, models: Sequence[str] | None = None, write: bool = True, after: AfterRound | None = None
    ) -> RoundResult | None:
        """One round; ``None`` when another process holds the round.

        ``after`` runs at the end of the round, still under its lock, with the evaluation of every version (those
        evaluated this round whole, the others as kept; the trigger engine decides there: one decider at a time
        across workers). ``evaluations`` and ``summaries`` of the result are those of the versions evaluated this
        round. ``write=False`` (a look that stores nothing) evaluates every version and keeps nothing.
        """
        config = self.updater.config
        names = sorted(models if models is not None else config.models)
        with self.store.pool.connection() as conn:
            if not conn.execute(_TRY_ROUND_LOCK, (MONITOR_LOCK,)).fetchone()[0]:
                return None
            try:
                built = self._build_profiles(conn)
                swept = self._sweep(conn)
                evaluations, summaries, kept = [], [], []
                with conn.cursor() as cur:
                    seen_at = snapshot(cur)  # before any accumulator is read: nothing committed after it is lost
                    changed = self._changed(cur, names) if write else None
                    tested = {(m, v): level for m, v, level in cur.execute(_TESTED_LEVELS, (names,)).fetchall()}
                    for model, version in cur.execute(_VERSIONS, (names,)).fetchall():
                        key = (model, version)
                        have = self._kept.get(key)
                        if changed is not None and key not in changed and have and have[1] == tested.get(key):
                            kept.append(have[0])
                            continue
                        mc = config.models[model]
                        profile = self.updater.profiles(cur, [key]).get(key)
                        if profile is None:
                            continue
                        evaluation = evaluate_version(cur, mc, profile)
                        if evaluation is None:
                            if write:
                                self._kept.pop(key, None)
                            continue
                        evaluations.append(evaluation)
                        summaries.append(summary(evaluation, mc))
                written = 0
                if write and evaluations:
                    with conn.transaction(), conn.cursor() as cur:
                        written = write_results(cur, evaluations)
                if write:
                    self._remember(names, seen_at, evaluations, tested)
                if after is not None:
                    after(conn, evaluations + kept)
            finally:
                conn.execute(_ROUND_UNLOCK, (MONITOR_LOCK,))
        return RoundResult(evaluations, summaries, built, swept, written)

    def _changed(self, cur: psycopg.Cursor[Any], names: Sequence[str]) -> set[tuple[str, str]] | None:
        """The versions of ``names`` with a window changed since this monitor's last round of their model; None
        when every version is to be evaluated (a full pass is due)."""
        if self._rounds % self.full_every == 0:
            return None
        found: set[tuple[str, str]] = set()
        by_snapshot: dict[str, list[str]] = defaultdict(list)
        for name in names:
            if name in self._since:
                by_snapshot[self._since[name]].append(name)
        for since, models in by_snapshot.items():
            found.update((c.model_name, c.model_version) for c in changed_since(cur, since, models))
        return found  # a version kept by no earlier round is evaluated whether it is here or not

    def _remember(self, names: Sequence[str], seen_at: str, evaluations: Sequence[Evaluation],
                  tested: Mapping[tuple[str, str], str | None]) -> None:
        """After a round's results are stored: its snapshot for its models, and its evaluations, slimmed, with the
        tested level each was judged with."""
        self._rounds += 1
        for name in names:
            self._since[name] = seen_at
        for ev in evaluations:
            key = (ev.model_name, ev.model_version)
            self._kept[key] = (slim(ev, self.updater.config.models[ev.model_name]), tested.get(key))

    def _sweep(self, conn: psycopg.Connection[Any]) -> int:
        """Count labels a race left uncounted: up to ``SWEEP_CHUNKS`` chunks a round, one transaction each."""
        swept = 0
        for _ in range(SWEEP_CHUNKS):
            with conn.transaction(), conn.cursor() as cur:
                swept += count_uncounted(cur, self.updater)
            if not self.updater.sweep_after:
                break  # the whole index was seen
        return swept

    def _build_profiles(self, conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
        built = []
        with conn.cursor() as cur:
            for model in sorted(self.updater.config.models):
                for (version,) in cur.execute(_UNPROFILED, {"m": model}).fetchall():
                    self.updater.unprofiled.add((model, version))
        for model, version in sorted(self.updater.unprofiled):
            config = self.updater.config.models.get(model)
            if config is None:
                continue
            with conn.cursor() as cur:
                if self.updater.profiles(cur, [(model, version)]):
                    self.updater.unprofiled.discard((model, version))
                    continue
                profile = profile_from_first_predictions(cur, config, version)
            if profile is not None:
                n = install_profile(conn, self.updater, profile)
                log.info("reference profile for %s %s from its %s; %d predictions counted",
                         model, version, profile.source, n)
                built.append((model, version))
        return built


def evaluate_version(
    cur: psycopg.Cursor[Any], config: ModelConfig, profile: ReferenceProfile, *, newest: datetime | None = None
) -> Evaluation | None:
    """Judge the version's last ``span`` windows, up to its newest window with data (or up to the window
    starting at ``newest``: `pitstop triggers replay` walks history this way)."""
    key = (config.name, profile.model_version, config.window_s)
    if newest is None:
        newest = cur.execute(_WATERMARK, (*key, ROWS)).fetchone()[0]
    if newest is None:
        return None
    step = timedelta(seconds=config.window_s)
    limit = config.performance.baseline_windows * 8
    early = [
        (start, exact_stats(s), int(rows or 0))
        for start, s, rows in cur.execute(_EARLY_WINDOWS, (*key, ROWS, limit)).fetchall()
    ]
    if not early or early[0][0] > newest:
        return None
    # the span, but no window before the version's first: those hold nothing to judge
    first = max(newest - step * (config.span - 1), early[0][0])
    starts = [first + step * i for i in range(int((newest - first) / step) + 1)]
    counts: dict[str, dict[tuple[datetime, str], Sequence[int]]] = defaultdict(dict)
    for segment, start, series, c in cur.execute(_WINDOW_COUNTS, (*key, first, newest)).fetchall():
        counts[segment][(start, series)] = c
    perf: dict[str, dict[datetime, dict[str, int]]] = defaultdict(dict)
    for segment, start, s in cur.execute(_WINDOW_PERF, (*key, first, newest)).fetchall():
        perf[segment][start] = exact_stats(s)
    tested = cur.execute(_TESTED_LEVEL, (config.name, profile.model_version)).fetchone()
    baseline = baseline_of(config, early, tested[0] if tested else None)
    segments = {
        seg: to_window_data(starts, counts[seg], perf.get(seg, {}), profile)
        for seg in sorted(counts, key=lambda s: (s != ALL, s))
    }
    drift, tests = evaluate_drift(config, profile, segments)
    evaluation = Evaluation(
        model_name=config.name, model_version=profile.model_version, evaluated_at=newest + step, drift=drift,
        tests=tests, baseline=baseline.value if baseline is not None else None,
        observed=baseline.observed if baseline is not None else None,
    )
    for seg, data in segments.items():
        evaluation.performance.extend(evaluate_performance(config, seg, data, baseline))
    return evaluation


def write_results(cur: psycopg.Cursor[Any], evaluations: Sequence[Evaluation]) -> int:
    """Store the result rows of every window whose rows differ from those stored; returns the rows written.

    A window (of one segment of a version) is written whole: its previous rows go and its new ones come, so a
    window that falls back to unjudged keeps no metric of its earlier verdict. Whether its rows differ is told by a
    fingerprint of them (``monitor_windows``), without ``evaluated_at``: a window whose rows are the same keeps the
    rows and the ``evaluated_at`` of the evaluation that last changed them. A (segment, window) stored for a window
    the evaluation covers but no longer produces (its segment lost every row) goes.
    """
    rows: list[tuple[Any, ...]] = []
    saved: list[tuple[Any, ...]] = []
    for ev in evaluations:
        windows = _window_rows(ev)
        fingerprints = {key: _fingerprint(rows) for key, rows in windows.items()}
        stored = {(seg, start): fp for seg, start, fp in cur.execute(_STORED_WINDOWS, (
            ev.model_name, ev.model_version, sorted({start for _, start in windows}))).fetchall()}
        changed = sorted(k for k, fp in fingerprints.items() if stored.get(k) != fp)
        forget = changed + sorted(set(stored) - set(fingerprints))
        if not forget:
            continue
        params = (ev.model_name, ev.model_version, [k[0] for k in forget], [k[1] for k in forget])
        cur.execute(_FORGET_RESULTS, params)
        cur.execute(_FORGET_WINDOWS, params)
        for key in changed:
            rows += [(ev.model_name, ev.model_version, *row, ev.evaluated_at) for row in windows[key]]
            saved.append((ev.model_name, ev.model_version, *key, fingerprints[key], ev.evaluated_at))
    if rows:
        cur.execute(_STAGE_RESULTS)
        with cur.copy(f"COPY _in_results ({_RESULT_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(_UPSERT_RESULTS)
        with cur.copy(f"COPY monitor_windows ({_WINDOW_COLUMNS}) FROM STDIN") as copy:
            for row in saved:
                copy.write_row(row)
    return len(rows)


def _window_rows(ev: Evaluation) -> dict[tuple[str, datetime], list[tuple[Any, ...]]]:
    """The evaluation's result rows (the columns of ``_RESULT_COLUMNS`` after the version and before
    ``evaluated_at``), by (segment, window start)."""
    windows: dict[tuple[str, datetime], list[tuple[Any, ...]]] = defaultdict(list)
    for d in ev.drift:
        windows[(d.segment, d.window_start)].append((
            d.segment, d.window_start, d.window_end, "drift", d.metric, d.feature, _finite(d.value), d.threshold,
            _finite(d.p_value), None, None, d.status, d.sample_size, None, d.sentence))
    for p in ev.performance:
        windows[(p.segment, p.window_start)].append((
            p.segment, p.window_start, p.window_end, "performance", p.metric, "", _finite(p.value), p.threshold,
            None, _finite(p.ci_low), _finite(p.ci_high), p.status, p.sample_size, p.label_coverage, p.sentence))
    return windows


def _fingerprint(rows: Sequence[tuple[Any, ...]]) -> int:
    """A stable 63-bit fingerprint of a window's rows (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(orjson.dumps(rows), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def slim(evaluation: Evaluation, config: ModelConfig) -> Evaluation:
    """What the trigger engine (feedback/triggers/signals.py) and :func:`summary` read of an evaluation, and no
    more: every drift verdict of all traffic, the drift verdicts that flagged a segment, and the main metric of all
    traffic, without their sentences (a round keeps one of these per version between its evaluations).

    >>> from datetime import UTC, datetime
    >>> from feedback.config import parse_config
    >>> from feedback.monitoring.evaluate import DriftResult
    >>> at = datetime(2026, 3, 1, tzinfo=UTC)
    >>> row = dict(window_start=at, window_end=at, feature="age", value=0.3, threshold=0.2, p_value=0.001,
    ...            sample_size=500, sentence="a long sentence")
    >>> ev = Evaluation(model_name="churn", model_version="v1", evaluated_at=at, drift=[
    ...     DriftResult(segment="*", metric="drift", status="drift", **row),
    ...     DriftResult(segment="*", metric="psi", status="drift", **row),
    ...     DriftResult(segment="region=eu", metric="drift", status="drift", **row),
    ...     DriftResult(segment="region=us", metric="drift", status="stable", **row)])
    >>> config = parse_config('[models.churn]\\ntask = "classification"\\npositive_class = 1').models["churn"]
    >>> [(r.segment, r.metric, r.sentence) for r in slim(ev, config).drift]
    [('*', 'drift', ''), ('region=eu', 'drift', '')]
    >>> summary(slim(ev, config), config) == summary(ev, config)
    True
    """
    return replace(
        evaluation,
        drift=[replace(r, sentence="") for r in evaluation.drift
               if r.metric == "drift" and (r.segment == ALL or r.status == "drift")],
        performance=[replace(r, sentence="") for r in evaluation.performance
                     if r.segment == ALL and r.metric == config.metric],
    )


def exact_stats(text: str) -> dict[str, int]:
    """Stored aggregates as exact integers: read as text and parsed by the stdlib (orjson, the pool's
    jsonb parser, turns integers past 64 bits into floats).

    >>> exact_stats('{"n": 3, "sq_err_sq_sum": 240000000000000000001}')["sq_err_sq_sum"]
    240000000000000000001
    """
    return {k: int(v) for k, v in json.loads(text).items()}


def _finite(x: float | None) -> float | None:
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return float(x)
