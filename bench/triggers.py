"""Monitor round plus retrain decisions: a round's cost by the number of models, after a steady hour and after none.

How a round's cost grows with the number of monitored models, and what a round costs when little (one steady hour of
new data) or nothing changed since the last one.

What it measures, for each model count N in ``--models`` (default 1, 10, 100; up to 1,000 and more), in a fresh
schema of a real PostgreSQL:

* The workload. N classification models (``m000``..), each with 20 features (15 numeric, 5 categorical), one
  declared segment attribute (``region``: eu / us / apac, so segments ``*`` and three values), window "1h",
  span 24, ``min_rows = 300`` and ``min_labels = 200`` (so every segment's windows are judged: about 480, 360
  and 360 rows each), triggers enabled with their defaults plus ``calendar = "0 0 * * *"``. Each model has a
  reference profile (``install_profile``, built from 5,000 reference rows) and 26 hours of windows of 1,200
  labelled predictions an hour (31,200 per model; 3.1M at N = 100), all judged.
* Ten workloads, by model index mod 10: 0 and 7 drift (two numeric features shift by one sd, one
  categorical moves 15 points of mass, from hour 18) with accuracy falling 0.90 -> 0.81 (an elevated drop: a
  drift retrain fires, unless the last window's interval reaches the critical level); 3 drifts the same way
  with accuracy stable ("watch"); 5 keeps its features and falls to 0.70 accuracy from hour 22 (a critical
  drop: fires at once); 9 drifts from hour 18 and gets no labels from then on ("unjudged" drift: an alert);
  1, 2, 4, 6, 8 are stable. N = 1 is model 0 alone; N = 10, 100 and 1,000 hold the ten workloads 1, 10 and 100
  times.
* How the windows get there. Not through the ingest (3.1M predictions): the ten workloads' events (seeded,
  26 x 1,200 each) are counted in this process by the monitor's own counting code
  (``WindowUpdater._count_predictions`` for the predictions and ``_count_label_group`` for their labels, as the
  ingest transaction calls them) and written with ``WindowUpdater.write`` (the ingest's COPY + upsert, which
  also marks each window it changed in ``window_changes`` with its transaction id) for the models 0-9; models
  10.. get a copy of their workload's model's rows (``INSERT ... SELECT`` into ``window_counts`` and
  ``window_performance``) and their windows are marked changed the same way (``INSERT ... SELECT`` into
  ``window_changes``, ``ON CONFLICT ... DO UPDATE SET changed = pg_current_xact_id()``), in the transaction of
  the copy. The ``predictions`` and ``outcomes`` tables stay empty: a round reads only ``reference_profiles``
  and the window tables (its stray-label sweep and its profile builder find nothing to do, so their cost here
  is that of empty index scans); the detector tables are left empty (the detector trigger is off by default
  and the round does not read them).
* A steady hour (:func:`steady_delta`, seeded, new rows each time). Per model: 1,200 new predictions (one
  event-hour of the workload) in its newest window (hour 25: their timestamps inside it, so the span does not
  slide) with their labels, and 100 late labels in each of the 3 windows before it (hours 22-24: labels of the
  workload's accuracy for that hour, counted as first labels of predictions those windows count; the windows
  already hold a label for every prediction, so their labels pass their rows, by 100 an hour); workload 9
  gets no labels in those windows, as before. Counted like the workload and written in one transaction: models
  0-9 through ``WindowUpdater.write``, models 10.. by copying their workload's model's rows and marks of the
  windows (segment, start) that hour changed, as above.
* The clock. Event time is the data's: the windows end at 2026-03-02 02:00 UTC, and the engine gets that as
  ``wall_now``, so the calendar's latest slot is 2026-03-02 00:00.

Then, N models at a time, with one connection pool (2 connections) and a worker's objects (a fresh
``WindowUpdater``, ``Monitor`` and ``TriggerEngine`` with an alert sink that only counts), in this order:

* first round: the first monitor round of the schema (profiles loaded from the store, no results yet), once,
  untimed in the table's repetitions.
* (a) round: ``Monitor.run_once()``: the stray-label sweep, the profile builder, the versions evaluated and
  their results written, with nothing written to the windows since the first round (so a round that evaluates
  only the versions whose windows changed, and writes only the result rows that differ, evaluates and writes
  nothing here: then (a) is a round where nothing changed, as the last column below). Its ``after`` only keeps
  the evaluations the round hands it, for (b). During these repetitions the round's steps are timed by
  wrapping the functions ``run_once`` calls (``VersionState.update`` and inside it the reading of the changed rows,
  the statistics of the changed cells, the judging of the span and the building of the changed windows' rows;
  ``summary``, ``write_results``, the sweep and the profile builder): the step table, medians over the
  repetitions.
* (b) decisions: ``TriggerEngine.run(conn, evaluations, wall_now=...)`` on the evaluations the last (a) handed
  its ``after`` (every version's: evaluated this round or as the round kept it), in two states of the decision
  ledger. "First look": before each repetition (untimed) ``retrain_decisions``,
  ``outbox`` and ``trigger_state`` are emptied and every model's calendar slot set to the day before, so every
  window verdict is recorded for the first time and every model's calendar slot is due (fired, or suppressed
  when a drift or critical retrain fired in the same look). "Steady": the same look again with the ledger as
  the previous one left it: nothing new, the watch and unjudged rows re-saved, the fired ones final. Steady is
  what most rounds of a running worker see.
* (c) round + decisions: ``Monitor.run_once(after=...)`` calling ``engine.run``, the way the worker runs it,
  first look (the ledger reset before each repetition, untimed). Steady, it differs from (c) by the
  difference between the two (b) columns. The decisions recorded after the last (c) are counted by kind and
  status.
* Steady round: ``Monitor.run_once()`` with, before each repetition (untimed), one more steady hour written to
  every model: each repetition adds 1,200 more predictions to the same newest window and late labels to the
  same 3 windows before it, so each is a round after a real steady hour. Its steps are timed as (a)'s: the
  second step table.
* Steady round + decisions: ``run_once(after=...)`` calling ``engine.run`` as (c), each repetition after one
  more steady hour, with the ledger as the previous round left it (no reset). The decisions recorded after
  these rounds are counted by kind and status, as after (c), and printed side by side.
* Nothing changed: ``run_once()`` once, untimed, then timed ``run_once()`` repetitions with nothing written to
  the windows before or between them: each is the second of two rounds with no write between. Then the same with
  the decisions (``run_once(after=...)`` calling ``engine.run`` over every model, as the worker's round does), and,
  unless ``--no-profile``, one of those under cProfile at the largest N.

For every round measured (first, (a), (c), steady, steady + decisions, nothing changed) the result rows it wrote
to ``monitor_results`` are counted, untimed: the round's ``RoundResult.results_written`` when it has that field,
else the rows whose ``recorded_at`` (the start of the writing transaction) is at or after the database's clock
(``clock_timestamp()``) read just before the round; the table says which.

``--repeat`` timed repetitions of each; the tables show the median and the min-max spread, in ms, and the
median per model. The step tables also count the calls of ``evaluate._prepare`` that miss its cache of stacked
profile arrays (it holds 1,024 profiles) and their time. While each series is timed, a thread samples every
0.25 s whether an autovacuum worker is running (a round that rewrites result rows leaves as many dead rows); the
share of samples and the load average are printed under the tables. Finally, unless ``--no-profile``, one steady
round + decisions at the largest N is run under cProfile (after one more steady hour, with the ledger as the steady
rounds left it) and the functions with the most own and cumulative time are printed (cProfile inflates
Python-heavy parts; the table's wall times are the figures).

It starts its own PostgreSQL server (``pitstop.stack.start_postgres``) in a temporary folder and stops it at
the end, unless PITSTOP_DATABASE_URL is set (then it uses that, with fresh schemas it drops at the end).
Progress goes to stderr, the tables to stdout.

Run from the repository root::

    .venv/bin/python bench/triggers.py                           # N = 1, 10, 100, --repeat 3: ~7 min
    .venv/bin/python bench/triggers.py --models 1,10 --repeat 2  # a quick check: ~1 min
    .venv/bin/python bench/triggers.py --json /tmp/triggers.json
    .venv/bin/python bench/triggers.py --models 1000 --repeat 1 --no-profile  # ~35 min, 5.5 GB, a 6 GB schema
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import feedback.monitoring.evaluate as evaluate_module  # noqa: E402
import feedback.monitoring.round as round_module  # noqa: E402
from feedback.alerts import Alert  # noqa: E402
from feedback.config import ModelConfig, MonitoringConfig, parse_config  # noqa: E402
from feedback.monitoring.evaluate import Evaluation  # noqa: E402
from feedback.monitoring.incremental import VersionState  # noqa: E402
from feedback.monitoring.profile import ReferenceProfile, build_profile  # noqa: E402
from feedback.monitoring.round import Monitor, RoundResult  # noqa: E402
from feedback.monitoring.windows import (  # noqa: E402
    WindowDelta,
    WindowUpdater,
    install_profile,
    reference_columns,
    series_kinds,
)
from feedback.store import FeedbackStore, drop_store, migrate  # noqa: E402
from feedback.triggers.engine import Decision, TriggerEngine  # noqa: E402
from pitstop import stack  # noqa: E402
from schemas import PredictionEvent  # noqa: E402

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOURS = 26  # windows written per model; the span judges the last 24
PER_HOUR = 1_200
REFERENCE_ROWS = 5_000
VERSION = "v1"
NUMERIC = tuple(f"n{i:02d}" for i in range(15))
CATEGORICAL = tuple(f"c{i}" for i in range(5))
CATEGORIES = ("a", "b", "c", "d")
CATEGORY_P = (0.4, 0.3, 0.2, 0.1)
CATEGORY_P_SHIFTED = (0.25, 0.3, 0.2, 0.25)  # c0 under drift: 15 points from "a" to "d"
REGIONS = ("eu", "us", "apac")
REGION_P = (0.4, 0.3, 0.3)
CALENDAR = "0 0 * * *"
DRIFT_HOUR = 18
CRITICAL_HOUR = 22
LATE_WINDOWS = 3  # a steady hour brings late labels to this many windows before the newest
LATE_LABELS = 100  # late labels a window gets in a steady hour


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    shift_from: int | None = None  # hour the features drift from
    accuracy_from: int | None = None  # hour the accuracy changes from
    accuracy_after: float = 0.90
    labels_until: int | None = None  # no labels from this hour on


STABLE = Workload("stable")
#: by model index mod 10
WORKLOADS: tuple[Workload, ...] = (
    Workload("drift+drop", DRIFT_HOUR, DRIFT_HOUR, 0.81),
    STABLE,
    STABLE,
    Workload("drift, accuracy stable", DRIFT_HOUR),
    STABLE,
    Workload("critical drop", None, CRITICAL_HOUR, 0.70),
    STABLE,
    Workload("drift+drop", DRIFT_HOUR, DRIFT_HOUR, 0.81),
    STABLE,
    Workload("drift, no labels", DRIFT_HOUR, labels_until=DRIFT_HOUR),
)

CONFIG_HEAD = f"""
[defaults]
window = "1h"
span = 24
min_rows = 300
min_labels = 200

[defaults.triggers]
calendar = "{CALENDAR}"
"""

CONFIG_MODEL = """
[models.{name}]
task = "classification"
positive_class = 1
segments = ["region"]
"""


def model_name(i: int) -> str:
    return f"m{i:03d}"


def config_for(n: int) -> MonitoringConfig:
    return parse_config(CONFIG_HEAD + "".join(CONFIG_MODEL.format(name=model_name(i)) for i in range(n)))


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


class NullAlerts:
    """An alert sink that counts what it is sent."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, alert: Alert) -> None:
        self.sent += 1

    def close(self, timeout_s: float = 5.0) -> None:
        pass


# --- the data --------------------------------------------------------------------------------------------


def _rows(rng: np.random.Generator, n: int, *, shifted: bool) -> dict[str, Any]:
    """``n`` rows of features, region, positive-class probability and prediction, as numpy columns."""
    cols: dict[str, Any] = {}
    for j, name in enumerate(NUMERIC):
        x = rng.normal(0.0, 1.0, n) * (1 + j % 3) + j
        if shifted and j < 2:
            x = x + (1 + j % 3)  # one sd
        cols[name] = x
    for j, name in enumerate(CATEGORICAL):
        p = CATEGORY_P_SHIFTED if shifted and j == 0 else CATEGORY_P
        cols[name] = np.asarray(CATEGORIES)[rng.choice(len(CATEGORIES), n, p=p)]
    cols["region"] = np.asarray(REGIONS)[rng.choice(len(REGIONS), n, p=REGION_P)]
    cols["p1"] = rng.random(n)
    cols["prediction"] = (cols["p1"] > 0.5).astype(np.int64)
    return cols


def _features(cols: dict[str, Any], n: int) -> list[dict[str, Any]]:
    num = {name: cols[name].tolist() for name in NUMERIC}
    cat = {name: cols[name].tolist() for name in CATEGORICAL}
    return [{**{k: v[i] for k, v in num.items()}, **{k: v[i] for k, v in cat.items()}} for i in range(n)]


def reference_profile(config: MonitoringConfig, seed: int) -> ReferenceProfile:
    """The reference every model shares (its content; each model stores its own copy): stable rows."""
    model = config.models[model_name(0)]
    rng = np.random.default_rng([seed, 999])
    cols = _rows(rng, REFERENCE_ROWS, shifted=False)
    predictions = cols["prediction"].tolist()
    right = rng.random(REFERENCE_ROWS) < 0.9
    labels = [p if r else 1 - p for p, r in zip(predictions, right.tolist(), strict=True)]
    columns = reference_columns(model, features=_features(cols, REFERENCE_ROWS), predictions=predictions,
                                scores=cols["p1"].tolist(), labels=labels)
    return build_profile(model.name, VERSION, columns, series_kinds(model), source=f"bench reference, seed {seed}")


def _shifted(work: Workload, hour: int) -> bool:
    return work.shift_from is not None and hour >= work.shift_from


def _labelled(work: Workload, hour: int) -> bool:
    return work.labels_until is None or hour < work.labels_until


def _accuracy(work: Workload, hour: int) -> float:
    return work.accuracy_after if work.accuracy_from is not None and hour >= work.accuracy_from else 0.90


def _events(config: ModelConfig, rng: np.random.Generator, work: Workload, hour: int, n: int,
            tag: str) -> list[PredictionEvent]:
    """``n`` predictions of the workload's ``hour``, spread over that hour's window (ids ``<model>-<tag>-<k>``)."""
    cols = _rows(rng, n, shifted=_shifted(work, hour))
    start = T0 + timedelta(hours=hour)
    features = _features(cols, n)
    p1 = cols["p1"].tolist()
    predictions = cols["prediction"].tolist()
    regions = cols["region"].tolist()
    return [
        PredictionEvent(prediction_id=f"{config.name}-{tag}-{k}", model_name=config.name, model_version=VERSION,
                        predicted_at=start + timedelta(seconds=k * 3600 / n), features=features[k],
                        prediction=predictions[k], probabilities={"0": 1 - p1[k], "1": p1[k]},
                        segment={"region": regions[k]})
        for k in range(n)
    ]


def _count_labels(updater: WindowUpdater, delta: WindowDelta, config: ModelConfig, profile: ReferenceProfile,
                  rng: np.random.Generator, work: Workload, hour: int, events: list[PredictionEvent]) -> None:
    """Count first labels of ``events`` (right at the workload's accuracy for ``hour``), as the ingest counts the
    rows its label-counting statement returns: id, old label (none), new label, observed_at, model, version,
    predicted_at, prediction, probabilities, score, segment."""
    right = (rng.random(len(events)) < _accuracy(work, hour)).tolist()
    rows = [
        (e.prediction_id, None, e.prediction if r else 1 - e.prediction, e.predicted_at + timedelta(hours=1),
         config.name, VERSION, e.predicted_at, e.prediction, e.probabilities, None, e.segment)
        for e, r in zip(events, right, strict=True)
    ]
    updater._count_label_group(None, delta, config, profile, rows)  # type: ignore[arg-type]


def _own_profile(profile: ReferenceProfile, model: str) -> ReferenceProfile:
    return ReferenceProfile(model_name=model, model_version=VERSION, source=profile.source, n_rows=profile.n_rows,
                            series=profile.series)


def workload_delta(updater: WindowUpdater, profile: ReferenceProfile, index: int, seed: int) -> WindowDelta:
    """The window accumulators of one workload's HOURS x PER_HOUR labelled predictions, counted by the monitor's
    own code as the ingest counts new predictions and their labels (for model ``index``)."""
    work = WORKLOADS[index % len(WORKLOADS)]
    config = updater.config.models[model_name(index)]
    updater._segments[config.name] = {}  # no segment values seen yet (instead of asking window_counts)
    profile = _own_profile(profile, config.name)
    delta = WindowDelta()
    rng = np.random.default_rng([seed, index])
    for hour in range(HOURS):
        events = _events(config, rng, work, hour, PER_HOUR, str(hour))
        updater._count_predictions(None, delta, config, profile, events)  # type: ignore[arg-type]
        if _labelled(work, hour):
            _count_labels(updater, delta, config, profile, rng, work, hour, events)
    return delta


def steady_delta(updater: WindowUpdater, profile: ReferenceProfile, index: int, seed: int, rep: int) -> WindowDelta:
    """One steady hour of model ``index``'s workload (its ``rep``-th): PER_HOUR new predictions in its newest
    window with their labels, and LATE_LABELS late labels in each of the LATE_WINDOWS windows before it (labels of
    predictions those windows already count, which hold a label each already: the late ones are counted as
    first labels, so a window's labels pass its rows), counted as :func:`workload_delta` counts. A workload
    without labels from some hour on gets none in those windows. Call after :func:`workload_delta` (the segment
    values it saw are the ones known)."""
    work = WORKLOADS[index % len(WORKLOADS)]
    config = updater.config.models[model_name(index)]
    profile = _own_profile(profile, config.name)
    delta = WindowDelta()
    rng = np.random.default_rng([seed, index, 1 + rep])
    newest = HOURS - 1
    new = _events(config, rng, work, newest, PER_HOUR, f"steady{rep}")
    updater._count_predictions(None, delta, config, profile, new)  # type: ignore[arg-type]
    if _labelled(work, newest):
        _count_labels(updater, delta, config, profile, rng, work, newest, new)
    for hour in range(newest - LATE_WINDOWS, newest):
        if _labelled(work, hour):
            late = _events(config, rng, work, hour, LATE_LABELS, f"steady{rep}-{hour}")
            _count_labels(updater, delta, config, profile, rng, work, hour, late)
    return delta


def rename(delta: WindowDelta, model: str) -> WindowDelta:
    out = WindowDelta()
    out.counts = {(model, *k[1:]): v for k, v in delta.counts.items()}
    for k, v in delta.stats.items():
        out.stats[(model, *k[1:])] = v
    return out


# --- the stack -------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    database_url: str
    state_dir: Path
    tag: str
    external: bool
    pgdata: Path | None = None
    schemas: list[str] = field(default_factory=list)


def start_stack() -> Ctx:
    tag = f"{os.getpid() % 10000}{int(time.time()) % 100000}"
    state_dir = Path(tempfile.mkdtemp(prefix="pitstop-bench-triggers-"))
    database_url = os.environ.get("PITSTOP_DATABASE_URL")
    if database_url:
        return Ctx(database_url, state_dir, tag, external=True)
    ctx = Ctx("", state_dir, tag, external=False, pgdata=state_dir / "pgdata")
    try:
        record = stack.start_postgres(ctx.pgdata)  # type: ignore[arg-type]
    except BaseException:
        stop_stack(ctx)
        raise
    ctx.database_url = stack.postgres_url(record.address)
    return ctx


def stop_stack(ctx: Ctx) -> None:
    if ctx.external:
        with contextlib.suppress(Exception), psycopg.connect(ctx.database_url, autocommit=True) as conn:
            for schema in ctx.schemas:
                drop_store(conn, schema)
    if ctx.pgdata is not None:
        with contextlib.suppress(Exception):
            stack.stop_postgres(ctx.pgdata)
    shutil.rmtree(ctx.state_dir, ignore_errors=True)


# --- one model count -------------------------------------------------------------------------------------

# A model 10.. copies its workload's model's rows of the windows (segment, start) a delta changed, and marks them
# changed (window_changes, as WindowUpdater.write marks the windows it writes), in the transaction of the copy; a row
# whose counts are the same is left alone, mark included, as the ingest leaves a series no event of the delta touched.
_THOSE_WINDOWS = "(segment, window_start) IN (SELECT * FROM unnest(%(segments)s::text[], %(starts)s::timestamptz[]))"
_COPY_COUNTS = f"""
INSERT INTO window_counts AS w (model_name, model_version, window_s, segment, window_start, series, counts)
SELECT %(to)s, model_version, window_s, segment, window_start, series, counts FROM window_counts
WHERE model_name = %(src)s AND {_THOSE_WINDOWS}
ON CONFLICT (model_name, model_version, window_s, segment, window_start, series)
DO UPDATE SET counts = excluded.counts, changed = pg_current_xact_id() WHERE w.counts <> excluded.counts
"""
_COPY_PERF = f"""
INSERT INTO window_performance AS w (model_name, model_version, window_s, segment, window_start, stats)
SELECT %(to)s, model_version, window_s, segment, window_start, stats FROM window_performance
WHERE model_name = %(src)s AND {_THOSE_WINDOWS}
ON CONFLICT (model_name, model_version, window_s, segment, window_start)
DO UPDATE SET stats = excluded.stats, changed = pg_current_xact_id() WHERE w.stats <> excluded.stats
"""
_COPY_MARKS = f"""
INSERT INTO window_changes (model_name, model_version, window_s, segment, window_start)
SELECT %(to)s, model_version, window_s, segment, window_start FROM window_changes
WHERE model_name = %(src)s AND {_THOSE_WINDOWS}
ON CONFLICT (model_name, model_version, window_s, segment, window_start) DO UPDATE SET changed = pg_current_xact_id()
"""


def delta_windows(delta: WindowDelta) -> dict[str, list[Any]]:
    """The windows (segment, start) a delta changes, as the parameters of the copy statements."""
    keys = sorted({k[2:4] for k in delta.counts} | {k[2:4] for k in delta.stats})
    return {"segments": [seg for seg, _ in keys], "starts": [start for _, start in keys]}


def copy_models(cur: psycopg.Cursor[Any], deltas: dict[int, WindowDelta], n: int) -> None:
    """Give the models 10.. the rows their workload's model (0-9) has in the windows its delta changed (written
    before, by ``WindowUpdater.write``): their counts and aggregates replaced, the windows marked changed."""
    windows = {i: delta_windows(delta) for i, delta in deltas.items()}
    for i in range(len(WORKLOADS), n):
        params = {"to": model_name(i), "src": model_name(i % len(WORKLOADS)), **windows[i % len(WORKLOADS)]}
        cur.execute(_COPY_COUNTS, params)
        cur.execute(_COPY_PERF, params)
        cur.execute(_COPY_MARKS, params)


def populate(store: FeedbackStore, updater: WindowUpdater, profile: ReferenceProfile,
             deltas: dict[int, WindowDelta], n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with store.pool.connection() as conn:
        for i in range(n):
            install_profile(conn, updater, _own_profile(profile, model_name(i)))
        t_profiles = time.perf_counter() - t0
        for i in range(min(n, len(WORKLOADS))):
            with conn.transaction(), conn.cursor() as cur:
                updater.write(cur, rename(deltas[i], model_name(i)))
        with conn.transaction(), conn.cursor() as cur:
            copy_models(cur, deltas, n)
        conn.execute("VACUUM ANALYZE window_counts")
        conn.execute("VACUUM ANALYZE window_performance")
        conn.execute("VACUUM ANALYZE window_changes")
        conn.execute("ANALYZE reference_profiles")
        counts = conn.execute("SELECT count(*), sum(cardinality(counts)) FROM window_counts").fetchone()
        perf = conn.execute("SELECT count(*) FROM window_performance").fetchone()[0]
        marks = conn.execute("SELECT count(*) FROM window_changes").fetchone()[0]
    return {"populate_s": time.perf_counter() - t0, "profiles_s": t_profiles, "window_counts_rows": counts[0],
            "window_counts_cells": int(counts[1]), "window_performance_rows": perf, "window_changes_rows": marks}


def write_steady(store: FeedbackStore, updater: WindowUpdater, deltas: dict[int, WindowDelta], n: int) -> None:
    """Add one steady hour (:func:`steady_delta`) to every model, in one transaction: models 0-9 through
    ``WindowUpdater.write``, models 10.. by copying their workload's model's changed windows."""
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        for i in range(min(n, len(WORKLOADS))):
            updater.write(cur, rename(deltas[i], model_name(i)))
        copy_models(cur, deltas, n)


def reset_ledger(store: FeedbackStore, config: MonitoringConfig, slot: datetime) -> None:
    """Empty the decisions, the outbox and the calendar state; every model's last calendar slot the day before."""
    with store.pool.connection() as conn, conn.transaction():
        conn.execute("DELETE FROM retrain_decisions")
        conn.execute("DELETE FROM outbox")
        conn.execute("DELETE FROM trigger_state")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO trigger_state (model_name, calendar_slot) VALUES (%s, %s)",
                            [(m, slot - timedelta(days=1)) for m in sorted(config.models)])
    with store.pool.connection() as conn:
        conn.execute("VACUUM ANALYZE retrain_decisions")


class Phases:
    """Wall time spent in the round's steps, by wrapping the functions ``Monitor.run_once`` looks up in its module
    (a few microseconds per call; the rest of a round is its queries for versions, profiles and the lock)."""

    FUNCTIONS = ("summary", "write_results")
    METHODS = ("_sweep", "_build_profiles")
    STATE_METHODS = ("update", "_read", "_compute", "_judge", "_build")

    def __init__(self) -> None:
        self.current: dict[str, float] = dict.fromkeys((*self.FUNCTIONS, *self.METHODS, *self.STATE_METHODS,
                                                        "prepare_misses", "prepare_miss_s"), 0.0)
        self.runs: list[dict[str, float]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap_prepare(self, fn: Callable[[ReferenceProfile], Any]) -> Callable[[ReferenceProfile], Any]:
        # evaluate._prepare caches a profile's stacked arrays (at most 1,024 profiles); count the calls that miss
        def wrapper(profile: ReferenceProfile) -> Any:
            hit = evaluate_module._PREPARED.get(id(profile))
            if hit is not None and hit[0] is profile:
                return fn(profile)
            t0 = time.perf_counter()
            try:
                return fn(profile)
            finally:
                self.current["prepare_misses"] += 1
                self.current["prepare_miss_s"] += time.perf_counter() - t0
        return wrapper

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - t0
        return wrapper

    def __enter__(self) -> Phases:
        for owner, names in ((round_module, self.FUNCTIONS), (Monitor, self.METHODS),
                             (VersionState, self.STATE_METHODS)):
            for name in names:
                fn = getattr(owner, name)
                self._saved.append((owner, name, fn))
                setattr(owner, name, self._wrap(name, fn))
        fn = evaluate_module._prepare
        self._saved.append((evaluate_module, "_prepare", fn))
        evaluate_module._prepare = self._wrap_prepare(fn)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()

    def start(self) -> None:
        self.current = dict.fromkeys(self.current, 0.0)

    def stop(self, total_s: float) -> None:
        c = {k: v * 1e3 for k, v in self.current.items()}
        self.runs.append({
            "queries: watermark, earliest windows, fingerprints": c["update"] - c["_read"] - c["_judge"],
            "read changed rows (queries, parse)": c["_read"] - c["_compute"],
            "statistics of the changed cells": c["_compute"],
            "judge the span (Holm, floors, baseline)": c["_judge"] - c["_build"],
            "build the rows of changed parts": c["_build"],
            "summary": c["summary"],
            "write_results (fingerprints, COPY)": c["write_results"],
            "sweep + profile builder": c["_sweep"] + c["_build_profiles"],
            "rest (lock, marks, versions, profiles)": total_s * 1e3 - c["update"] - c["summary"]
            - c["write_results"] - c["_sweep"] - c["_build_profiles"],
            "  of the cells: profile arrays rebuilt (cache misses)": c["prepare_miss_s"],
            "  cache misses (count)": self.current["prepare_misses"],
        })

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in self.runs) for k in self.runs[0]} if self.runs else {}


class Autovacuum:
    """Samples, from its own connection every 0.25 s, whether an autovacuum worker is running on the server (a
    round rewrites every result row of the span: the dead rows it leaves are vacuumed while later rounds run)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.timing = False
        self.samples: list[bool] = []
        self.tables: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autovacuum-sampler", daemon=True)

    def __enter__(self) -> Autovacuum:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with contextlib.suppress(Exception), psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.wait(0.25):
                if not self.timing:
                    continue
                rows = conn.execute("SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                                    ).fetchall()
                self.samples.append(bool(rows))
                self.tables.update(r[0].removeprefix("autovacuum: ") for r in rows if r[0])

    def begin(self) -> None:
        self.samples, self.timing = [], True

    def end(self) -> float | None:
        self.timing = False
        return round(100 * sum(self.samples) / len(self.samples)) if self.samples else None


class Written:
    """The result rows a round wrote to ``monitor_results``: ``results_written`` of the round's result when it has
    one, else the rows whose ``recorded_at`` (the writing transaction's start) is at or after the database's clock
    read just before the round (:meth:`mark`)."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self.since: datetime | None = None
        #: how the last count was taken
        self.counted_by = ""

    def mark(self) -> None:
        with self.store.pool.connection() as conn:
            self.since = conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def count(self, result: RoundResult | None) -> int:
        written = getattr(result, "results_written", None)
        if written is not None:
            self.counted_by = "RoundResult.results_written"
            return int(written)
        self.counted_by = "rows whose recorded_at is at or after the clock read before the round"
        with self.store.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM monitor_results WHERE recorded_at >= %s",
                                (self.since,)).fetchone()[0]


def timed(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None,
          phases: Phases | None = None, autovacuum: Autovacuum | None = None,
          written: Written | None = None) -> dict[str, Any]:
    """``repeat`` timed calls of ``fn`` (``before`` untimed ahead of each): median, min, max in ms, the load
    average at the start and the end, and the share of 0.25 s samples that found an autovacuum worker running.
    With ``written`` (``fn`` returns a round's result), the result rows each call wrote, counted untimed."""
    times = []
    rows = []
    out = None
    load = os.getloadavg()[0]
    if autovacuum is not None:
        autovacuum.begin()
    for _ in range(repeat):
        if autovacuum is not None:
            autovacuum.timing = False
        if before is not None:
            before()
        if written is not None:
            written.mark()
        if autovacuum is not None:
            autovacuum.timing = True
        if phases is not None:
            phases.start()
        t0 = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t0
        if phases is not None:
            phases.stop(elapsed)
        times.append(elapsed * 1e3)
        if written is not None:
            if autovacuum is not None:
                autovacuum.timing = False
            rows.append(written.count(out))
            if autovacuum is not None:
                autovacuum.timing = True
    busy = autovacuum.end() if autovacuum is not None else None
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs_ms": times,
            "load": [load, os.getloadavg()[0]], "autovacuum_pct": busy, "rows_written": rows or None, "last": out}


def recorded_decisions(store: FeedbackStore) -> dict[str, int]:
    """The decisions in the ledger, by kind and status (and what suppressed them)."""
    with store.pool.connection() as conn:
        return dict(conn.execute(
            "SELECT kind || ' ' || status "
            "|| coalesce(' (' || split_part(split_part(suppressed_by, ':', 1), ' (', 1) || ')', ''), count(*) "
            "FROM retrain_decisions GROUP BY 1 ORDER BY 1").fetchall())


def first_round(monitor: Monitor, written: Written, n: int) -> tuple[float, int, datetime]:
    """The schema's first round: its time in ms, the result rows it wrote and its evaluations' time (the newest
    window's end; its evaluations are not kept: at 1,000 models they hold millions of result rows)."""
    written.mark()
    t0 = time.perf_counter()
    first = monitor.run_once()
    elapsed = (time.perf_counter() - t0) * 1e3
    assert first is not None and len(first.evaluations) == n, "every model evaluated"
    return elapsed, written.count(first), first.evaluations[0].evaluated_at


def run_count(ctx: Ctx, n: int, profile: ReferenceProfile, deltas: dict[int, WindowDelta],
              steady: list[dict[int, WindowDelta]], repeat: int, profile_calls: bool) -> dict[str, Any]:
    config = config_for(n)
    schema = f"bench_triggers_{ctx.tag}_{n}"
    ctx.schemas.append(schema)
    migrate(ctx.database_url, schema)
    ingest = WindowUpdater(config)
    res: dict[str, Any] = {"models": n, "load_start": os.getloadavg()[0]}
    with FeedbackStore(ctx.database_url, schema, max_size=2, windows=ingest) as store, \
            Autovacuum(ctx.database_url) as autovacuum:
        _log(f"N={n}: populating {n} models")
        res["setup"] = populate(store, ingest, profile, deltas, n)
        _log(f"N={n}: populated in {res['setup']['populate_s']:.1f} s "
             f"({res['setup']['window_counts_rows']:,} window_counts rows)")
        # a fresh updater, as a worker that just started: the first round loads the profiles from the store
        monitor = Monitor(store, WindowUpdater(config))
        alerts = NullAlerts()
        engine = TriggerEngine(config, alerts)
        written = Written(store)

        gc.collect()
        rss_before = _rss_mb()
        res["first_round_ms"], res["first_round_written"], wall_now = first_round(monitor, written, n)
        slot = wall_now.replace(hour=0, minute=0)
        with store.pool.connection() as conn:
            res["result_rows"] = conn.execute("SELECT count(*) FROM monitor_results").fetchone()[0]
        _log(f"N={n}: first round {res['first_round_ms']:.0f} ms, {res['result_rows']:,} result rows, "
             f"{res['first_round_written']:,} written")

        evaluations: list[Evaluation] = []

        def keep(conn: psycopg.Connection[Any], handed: list[Evaluation]) -> None:
            evaluations[:] = handed

        with Phases() as phases:
            res["a_round"] = timed(lambda: monitor.run_once(after=keep), repeat, phases=phases, autovacuum=autovacuum,
                                   written=written)
        res["a_phases"] = phases.medians()
        res["a_round"].pop("last")
        res["b_evaluations"] = len(evaluations)
        _log(f"N={n}: (a) round median {res['a_round']['median_ms']:.0f} ms")

        def engine_run() -> list[Decision]:
            with store.pool.connection() as conn:
                return engine.run(conn, evaluations, wall_now=wall_now)

        reset = lambda: reset_ledger(store, config, slot)  # noqa: E731
        res["b_first_look"] = timed(engine_run, repeat, before=reset, autovacuum=autovacuum)
        res["b_first_look"]["changed"] = len(res["b_first_look"].pop("last"))
        res["b_steady"] = timed(engine_run, repeat, autovacuum=autovacuum)
        res["b_steady"]["changed"] = len(res["b_steady"].pop("last"))
        _log(f"N={n}: (b) decisions median {res['b_first_look']['median_ms']:.0f} ms first look, "
             f"{res['b_steady']['median_ms']:.0f} ms steady")

        changed: list[list[Decision]] = []

        def whole_round() -> RoundResult | None:
            found: list[Decision] = []
            out = monitor.run_once(after=lambda conn, evs: found.extend(engine.run(conn, evs, wall_now=wall_now)))
            changed.append(found)
            return out

        res["c_first_look"] = timed(whole_round, repeat, before=reset, autovacuum=autovacuum, written=written)
        res["c_first_look"].pop("last")
        res["c_first_look"]["changed"] = len(changed[-1])
        res["decisions"] = recorded_decisions(store)
        with store.pool.connection() as conn:
            res["outbox"] = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        res["alerts_sent"] = alerts.sent
        _log(f"N={n}: (c) round + decisions median {res['c_first_look']['median_ms']:.0f} ms (first look); "
             f"decisions {res['decisions']}")

        hours = iter(steady)

        def add_hour() -> None:
            write_steady(store, ingest, next(hours), n)

        with Phases() as phases:
            res["steady_round"] = timed(monitor.run_once, repeat, before=add_hour, phases=phases,
                                        autovacuum=autovacuum, written=written)
        res["steady_phases"] = phases.medians()
        res["steady_round"].pop("last")
        res["steady_decisions"] = timed(whole_round, repeat, before=add_hour, autovacuum=autovacuum, written=written)
        res["steady_decisions"].pop("last")
        res["steady_decisions"]["changed"] = [len(found) for found in changed[-repeat:]]
        res["decisions_after_steady"] = recorded_decisions(store)
        if profile_calls:
            add_hour()
            res["profiled_ms"], res["profile"] = profiled(whole_round)
        _log(f"N={n}: steady round median {res['steady_round']['median_ms']:.0f} ms, with decisions "
             f"{res['steady_decisions']['median_ms']:.0f} ms; decisions {res['decisions_after_steady']}")

        monitor.run_once()  # the first of two rounds with nothing written between them
        res["nothing_changed"] = timed(monitor.run_once, repeat, autovacuum=autovacuum, written=written)
        res["nothing_changed"].pop("last")
        # what the worker's round where nothing changed costs: the round and the decisions over every model
        res["idle_decisions"] = timed(whole_round, repeat, autovacuum=autovacuum, written=written)
        res["idle_decisions"].pop("last")
        if profile_calls:
            res["idle_profiled_ms"], res["idle_profile"] = profiled(whole_round)
        gc.collect()
        res["rss_mb"] = {"before_first_round": rss_before, "after_rounds": _rss_mb(),
                         "kept_states": len(monitor._states), "kept_mb": deep_size(monitor._states) / 2**20}
        res["written_counted_by"] = written.counted_by
        _log(f"N={n}: nothing changed: round median {res['nothing_changed']['median_ms']:.0f} ms")

        with store.pool.connection() as conn:
            res["table_sizes"] = dict(conn.execute(
                "SELECT relname, pg_size_pretty(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = current_schema() "
                "AND relname IN ('window_counts', 'window_performance', 'window_changes', 'monitor_results', "
                "'retrain_decisions')"
            ).fetchall())
            res["monitor_results_stats"] = dict(zip(
                ("live_rows", "dead_rows", "autovacuums", "autoanalyzes"),
                conn.execute("SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count "
                             "FROM pg_stat_user_tables WHERE relid = 'monitor_results'::regclass").fetchone(),
                strict=True))
            res["autovacuum_tables"] = sorted(autovacuum.tables)
    res["load_end"] = os.getloadavg()[0]
    return res


def profiled(call: Callable[[], Any]) -> tuple[float, dict[str, Any]]:
    """One call under cProfile: its wall time in ms and :func:`top_costs`."""
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    call()
    ms = (time.perf_counter() - t0) * 1e3
    prof.disable()
    return ms, top_costs(prof)


def top_costs(prof: cProfile.Profile, top: int = 20) -> dict[str, Any]:
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} {func}"
        rows.append({"function": where, "calls": nc, "own_ms": tt * 1e3, "cum_ms": ct * 1e3})
    total = sum(r["own_ms"] for r in rows)
    return {"total_ms": total, "top_own": sorted(rows, key=lambda r: -r["own_ms"])[:top],
            "top_cum": sorted(rows, key=lambda r: -r["cum_ms"])[:top]}


# --- report ----------------------------------------------------------------------------------------------


def machine(database_url: str) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(database_url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'fsync', 'synchronous_commit', "
            "'max_wal_size', 'work_mem')").fetchall())
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "psycopg": psycopg.__version__, "postgres": pg, "pg_settings": settings,
            "platform": platform.platform(), "date": datetime.now(UTC).isoformat(timespec="seconds")}


def _cell(t: dict[str, Any]) -> str:
    return f"{t['median_ms']:,.0f} [{t['min_ms']:,.0f}-{t['max_ms']:,.0f}]"


def _rows_cell(t: dict[str, Any]) -> str:
    """The result rows each repetition wrote: one figure when they all wrote as many."""
    rows = t["rows_written"]
    return f"{rows[0]:,}" if len(set(rows)) == 1 else " / ".join(f"{x:,}" for x in rows)


def _grid(head: tuple[str, ...], rows: list[tuple[str, ...]], *, label_column: bool = False) -> None:
    """Print a table between rules: columns right-aligned (the first left-aligned with ``label_column``)."""
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if label_column and i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    print(line)
    print(fmt(head))
    print(line)
    for row in rows:
        print(fmt(row))
    print(line)


def print_table(results: list[dict[str, Any]], repeat: int) -> None:
    head = ("models", "first round", "(a) round", "(b) decisions, 1st look", "(b) steady",
            "(c) round + decisions", "(a) / model", "(b) 1st / model", "(b) steady / model", "(c) / model")
    rows = []
    for r in results:
        n = r["models"]
        rows.append((
            str(n), f"{r['first_round_ms']:,.0f}", _cell(r["a_round"]), _cell(r["b_first_look"]),
            _cell(r["b_steady"]), _cell(r["c_first_look"]), f"{r['a_round']['median_ms'] / n:.1f}",
            f"{r['b_first_look']['median_ms'] / n:.2f}", f"{r['b_steady']['median_ms'] / n:.2f}",
            f"{r['c_first_look']['median_ms'] / n:.1f}",
        ))
    print(f"ms, median [min-max] of {repeat} repetitions; per model: the median / N")
    _grid(head, rows)


def print_steady(results: list[dict[str, Any]], repeat: int) -> None:
    """The steady rounds (an hour of new data before each) and the round with nothing changed since the last."""
    head = ("models", "(a) round", "steady round", "steady round + decisions", "nothing changed",
            "(a) / model", "steady / model", "steady + decisions / model", "nothing changed / model")
    rows = [(
        str(r["models"]), _cell(r["a_round"]), _cell(r["steady_round"]), _cell(r["steady_decisions"]),
        _cell(r["nothing_changed"]),
        *(f"{r[key]['median_ms'] / r['models']:.1f}"
          for key in ("a_round", "steady_round", "steady_decisions", "nothing_changed")),
    ) for r in results]
    print(f"steady rounds: ms, median [min-max] of {repeat} repetitions, each after one more hour of new labelled "
          f"predictions in every model's newest window and {LATE_LABELS} late labels in each of the "
          f"{LATE_WINDOWS} windows before it; nothing changed: the second of two rounds without a write between")
    _grid(head, rows)


def print_written(results: list[dict[str, Any]]) -> None:
    """The result rows each measured round wrote to monitor_results (one figure a repetition when they differ)."""
    head = ("result rows written", "first round", "(a) round", "(c) round + decisions", "steady round",
            "steady round + decisions", "nothing changed")
    rows = [(
        f"N={r['models']}", f"{r['first_round_written']:,}",
        *(_rows_cell(r[key]) for key in ("a_round", "c_first_look", "steady_round", "steady_decisions",
                                         "nothing_changed")),
    ) for r in results]
    counted_by = ", ".join(sorted({r["written_counted_by"] for r in results}))
    print(f"result rows a round wrote to monitor_results, one figure a repetition when they differ; counted as "
          f"{counted_by}")
    _grid(head, rows, label_column=True)


def print_decisions(results: list[dict[str, Any]]) -> None:
    """The decisions in the ledger after the (c) rounds (first look) and after the steady rounds, by kind."""
    kinds = sorted({k for r in results for k in (*r["decisions"], *r["decisions_after_steady"])})
    head = ("decisions recorded",
            *(f"N={r['models']} {when}" for r in results for when in ("after (c)", "after steady")))
    rows = [(kind, *(str(r[key].get(kind, 0)) for r in results for key in ("decisions", "decisions_after_steady")))
            for kind in kinds]
    _grid(head, rows, label_column=True)
    print("decisions changed by each steady round + decisions: "
          + "; ".join(f"N={r['models']} {r['steady_decisions']['changed']}" for r in results))


def print_phases(results: list[dict[str, Any]], key: str, round_key: str, title: str) -> None:
    """Where a round spends its time: each step's median over the repetitions, total and per model."""
    names = list(results[0][key])
    head = (f"{title}, by step: ms (ms per model)", *(f"N={r['models']}" for r in results))
    rows = [(name, *(f"{r[key][name]:,.0f} ({r[key][name] / r['models']:.1f})" for r in results)) for name in names]
    rows.append(("round (median)", *(f"{r[round_key]['median_ms']:,.0f} ({r[round_key]['median_ms'] / r['models']:.1f})"
                                     for r in results)))
    _grid(head, rows, label_column=True)


def deep_size(root: object) -> int:
    """Bytes held by ``root`` and everything it references (each object once; numpy arrays by their buffers;
    classes, functions and modules not followed): what the monitor keeps between rounds."""
    seen: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | type(deep_size) | type(sys)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            continue  # getsizeof counts the buffer of an array that owns it
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__slots__") or hasattr(obj, "__dict__"):
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(obj, name):
                        stack.append(getattr(obj, name))
            if hasattr(obj, "__dict__"):
                stack.append(obj.__dict__)
    return total


def _rss_mb() -> float:
    """This process's resident memory, MiB."""
    return psutil.Process().memory_info().rss / 2**20


def print_details(results: list[dict[str, Any]]) -> None:
    for r in results:
        s = r["setup"]
        m = r["rss_mb"]
        print(f"N={r['models']}: process RSS {m['before_first_round']:,.0f} MiB before the first round (the bench's "
              f"own data), {m['after_rounds']:,.0f} MiB after the rounds, {m['kept_states']:,} versions kept: "
              f"{m['after_rounds'] - m['before_first_round']:+,.0f} MiB, the monitor's kept state and what the rounds "
              f"left allocated; the kept state itself (deep size of Monitor._states) {m['kept_mb']:,.1f} MiB")
        print(f"N={r['models']}: {s['window_counts_rows']:,} window_counts rows ({s['window_counts_cells']:,} counts), "
              f"{s['window_performance_rows']:,} window_performance rows, {s['window_changes_rows']:,} window_changes "
              f"rows, populated in {s['populate_s']:.1f} s; "
              f"{r['result_rows']:,} monitor_results rows after the first round; first look: "
              f"{r['c_first_look']['changed']} decisions changed, recorded {r['decisions']}, outbox {r['outbox']}, "
              f"{r['alerts_sent']} alerts in the whole run; (b) on {r['b_evaluations']} evaluations, steady (b): "
              f"{r['b_steady']['changed']} changed; "
              f"load {r['load_start']:.2f} -> {r['load_end']:.2f}; sizes {r['table_sizes']}; monitor_results at "
              f"the end {r['monitor_results_stats']}")
        during = "; ".join(
            f"{label} load {r[key]['load'][0]:.2f} -> {r[key]['load'][1]:.2f}, autovacuum running in "
            + ("no sample (too short)" if r[key]["autovacuum_pct"] is None
               else f"{r[key]['autovacuum_pct']}% of samples")
            for label, key in (("(a)", "a_round"), ("(b) 1st look", "b_first_look"), ("(b) steady", "b_steady"),
                               ("(c)", "c_first_look"), ("steady round", "steady_round"),
                               ("steady round + decisions", "steady_decisions"),
                               ("nothing changed", "nothing_changed")))
        print(f"  while timing: {during}; autovacuum seen on: {', '.join(r['autovacuum_tables']) or '-'}")


def print_profile(r: dict[str, Any], key: str = "profile", what: str = "one steady round + decisions") -> None:
    p = r[key]
    ms = r["profiled_ms" if key == "profile" else "idle_profiled_ms"]
    print(f"\ncProfile of {what}, N={r['models']}: {ms:,.0f} ms wall under the profiler; most own time:")
    for x in p["top_own"]:
        print(f"  {x['own_ms']:9.1f} ms own {x['cum_ms']:9.1f} ms cum {x['calls']:9,}x  {x['function']}")
    print("most cumulative time:")
    for x in p["top_cum"]:
        print(f"  {x['cum_ms']:9.1f} ms cum {x['own_ms']:9.1f} ms own {x['calls']:9,}x  {x['function']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", default="1,10,100", help="comma-separated model counts")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of each measurement")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile round at the largest N")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    counts = sorted({int(x) for x in args.models.split(",") if x.strip()})
    if not counts or min(counts) < 1 or args.repeat < 1:
        parser.error("--models needs positive counts and --repeat at least 1")

    started = time.perf_counter()
    ctx = start_stack()
    _log(f"postgres {ctx.database_url}")
    try:
        info = machine(ctx.database_url)
        config = config_for(max(max(counts), len(WORKLOADS)))
        profile = reference_profile(config, args.seed)
        t0 = time.perf_counter()
        counter = WindowUpdater(config)
        workloads = range(min(max(counts), len(WORKLOADS)))
        deltas = {i: workload_delta(counter, profile, i, args.seed) for i in workloads}
        # the steady hours: one a repetition, of the steady round and of the steady round + decisions
        steady = [{i: steady_delta(counter, profile, i, args.seed, rep) for i in workloads}
                  for rep in range(2 * args.repeat + 1)]  # and one for the profiled round
        _log(f"counted {len(deltas)} workloads of {HOURS} x {PER_HOUR:,} predictions and {len(steady)} steady hours "
             f"in {time.perf_counter() - t0:.1f} s")
        results = [run_count(ctx, n, profile, deltas, steady, args.repeat, not args.no_profile and n == max(counts))
                   for n in counts]
    finally:
        stop_stack(ctx)
    info["wall_s"] = time.perf_counter() - started

    print(f"\nmachine: {info['nproc']} cpu ({info['cpu']}), Python {info['python']}, numpy {info['numpy']}, "
          f"psycopg {info['psycopg']}, PostgreSQL {info['postgres']} {info['pg_settings']}; {info['date']}; "
          f"whole run {info['wall_s']:.0f} s")
    print(f"workload: per model 20 features, segments * + region x 3, window 1h, span 24 (of {HOURS} windows), "
          f"{PER_HOUR:,} labelled predictions an hour; triggers: defaults + calendar '{CALENDAR}'\n")
    print_table(results, args.repeat)
    print()
    print_steady(results, args.repeat)
    print()
    print_written(results)
    print()
    print_decisions(results)
    print()
    print_phases(results, "a_phases", "a_round", "(a) round")
    print()
    print_phases(results, "steady_phases", "steady_round", "steady round")
    print()
    print_details(results)
    for r in results:
        print(f"\nN={r['models']}: a round where nothing changed, with the decisions (the worker's): "
              f"{_cell(r['idle_decisions'])} ms, against {_cell(r['nothing_changed'])} for the round alone")
        if "profile" in r:
            print_profile(r)
        if "idle_profile" in r:
            print_profile(r, "idle_profile", "one round where nothing changed + decisions")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
