"""Monitor round plus retrain decisions: how a round's cost grows with the number of monitored models.

What it measures, for each model count N in ``--models`` (default 1, 10, 100), in a fresh schema of a real
PostgreSQL:

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
  1, 2, 4, 6, 8 are stable. N = 1 is model 0 alone; N = 10 and 100 hold the ten workloads once and ten times.
* How the windows get there. Not through the ingest (3.1M predictions): the ten workloads' events (seeded,
  26 x 1,200 each) are counted in this process by the monitor's own counting code
  (``WindowUpdater._count_predictions`` for the predictions and ``_count_label_group`` for their labels, as the
  ingest transaction calls them) and written with ``WindowUpdater.write`` (the ingest's COPY + upsert) for the
  models 0-9; models 10.. get a copy of their workload's rows (``INSERT ... SELECT`` into ``window_counts`` and
  ``window_performance``). The ``predictions`` and ``outcomes`` tables stay empty: a round reads only
  ``reference_profiles``, ``window_counts`` and ``window_performance`` (its stray-label sweep and its
  profile builder find nothing to do, so their cost here is that of empty index scans); the detector tables
  are left empty (the detector trigger is off by default and the round does not read them).
* The clock. Event time is the data's: the windows end at 2026-03-02 02:00 UTC, and the engine gets that as
  ``wall_now``, so the calendar's latest slot is 2026-03-02 00:00.

Then, N models at a time, with one connection pool (2 connections) and a worker's objects (a fresh
``WindowUpdater``, ``Monitor`` and ``TriggerEngine`` with an alert sink that only counts):

* first round: the first monitor round of the schema (profiles loaded from the store, no results yet), once,
  untimed in the table's repetitions.
* (a) round: ``Monitor.run_once()``: the stray-label sweep, the profile builder, every version evaluated and
  its results written. During these repetitions the round's steps are timed by wrapping the functions
  ``run_once`` calls (``evaluate_version`` and inside it ``to_window_data``, ``evaluate_drift``,
  ``evaluate_performance``; ``summary``, ``write_results``, the sweep and the profile builder): the second
  table, medians over the repetitions.
* (b) decisions: ``TriggerEngine.run(conn, evaluations, wall_now=...)`` on the last (a)'s evaluations, in two
  states of the decision ledger. "First look": before each repetition (untimed) ``retrain_decisions``,
  ``outbox`` and ``trigger_state`` are emptied and every model's calendar slot set to the day before, so every
  window verdict is recorded for the first time and every model's calendar slot is due (fired, or suppressed
  when a drift or critical retrain fired in the same look). "Steady": the same look again with the ledger as
  the previous one left it: nothing new, the watch and unjudged rows re-saved, the fired ones final. Steady is
  what most rounds of a running worker see.
* (c) round + decisions: ``Monitor.run_once(after=...)`` calling ``engine.run``, the way the worker runs it,
  first look (the ledger reset before each repetition, untimed). Steady, it differs from (c) by the
  difference between the two (b) columns.

``--repeat`` timed repetitions of each; the table shows the median and the min-max spread, in ms, and the
median per model. The step table also counts the calls of ``evaluate._prepare`` that miss its cache of stacked
profile arrays (it holds 64 profiles) and their time. While each series is timed, a thread samples every 0.25 s
whether an autovacuum worker is running (a round rewrites every result row of its span, leaving as many dead
rows); the share of samples and the load average are printed under the tables. After the last (c) the
decisions recorded are counted by kind and status. Finally one round (c) at the largest N is run under
cProfile (first look) and the functions with the most own and cumulative time are printed (cProfile inflates
Python-heavy parts; the table's wall times are the figures).

It starts its own PostgreSQL server (``pitstop.stack.start_postgres``) in a temporary folder and stops it at
the end, unless PITSTOP_DATABASE_URL is set (then it uses that, with fresh schemas it drops at the end).
Progress goes to stderr, the tables to stdout.

Run from the repository root::

    .venv/bin/python bench/triggers.py                           # N = 1, 10, 100, --repeat 3: ~6 min
    .venv/bin/python bench/triggers.py --models 1,10 --repeat 3  # a quick check
    .venv/bin/python bench/triggers.py --json /tmp/triggers.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
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
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import feedback.monitoring.evaluate as evaluate_module  # noqa: E402
import feedback.monitoring.round as round_module  # noqa: E402
from feedback.alerts import Alert  # noqa: E402
from feedback.config import MonitoringConfig, parse_config  # noqa: E402
from feedback.monitoring.evaluate import Evaluation  # noqa: E402
from feedback.monitoring.profile import ReferenceProfile, build_profile  # noqa: E402
from feedback.monitoring.round import Monitor  # noqa: E402
from feedback.monitoring.windows import (  # noqa: E402
    WindowDelta,
    WindowUpdater,
    install_profile,
    reference_columns,
    series_kinds,
)
from feedback.store import FeedbackStore, migrate  # noqa: E402
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


def workload_delta(updater: WindowUpdater, profile: ReferenceProfile, index: int, seed: int) -> WindowDelta:
    """The window accumulators of one workload's HOURS x PER_HOUR labelled predictions, counted by the monitor's
    own code as the ingest counts new predictions and their labels (for model ``index``)."""
    work = WORKLOADS[index % len(WORKLOADS)]
    config = updater.config.models[model_name(index)]
    updater._segments[config.name] = {}  # no segment values seen yet (instead of asking window_counts)
    profile = ReferenceProfile(model_name=config.name, model_version=VERSION, source=profile.source,
                               n_rows=profile.n_rows, series=profile.series)
    delta = WindowDelta()
    rng = np.random.default_rng([seed, index])
    for hour in range(HOURS):
        shifted = work.shift_from is not None and hour >= work.shift_from
        cols = _rows(rng, PER_HOUR, shifted=shifted)
        start = T0 + timedelta(hours=hour)
        at = [start + timedelta(seconds=k * 3600 / PER_HOUR) for k in range(PER_HOUR)]
        features = _features(cols, PER_HOUR)
        p1 = cols["p1"].tolist()
        predictions = cols["prediction"].tolist()
        regions = cols["region"].tolist()
        events = [
            PredictionEvent(prediction_id=f"{config.name}-{hour}-{k}", model_name=config.name, model_version=VERSION,
                            predicted_at=at[k], features=features[k], prediction=predictions[k],
                            probabilities={"0": 1 - p1[k], "1": p1[k]}, segment={"region": regions[k]})
            for k in range(PER_HOUR)
        ]
        updater._count_predictions(None, delta, config, profile, events)  # type: ignore[arg-type]
        if work.labels_until is not None and hour >= work.labels_until:
            continue
        accuracy = work.accuracy_after if work.accuracy_from is not None and hour >= work.accuracy_from else 0.90
        right = (rng.random(PER_HOUR) < accuracy).tolist()
        # the rows the label-counting statement returns: id, old label, new label, observed_at, model, version,
        # predicted_at, prediction, probabilities, score, segment
        rows = [
            (e.prediction_id, None, e.prediction if r else 1 - e.prediction, e.predicted_at + timedelta(hours=1),
             config.name, VERSION, e.predicted_at, e.prediction, e.probabilities, None, e.segment)
            for e, r in zip(events, right, strict=True)
        ]
        updater._count_label_group(None, delta, config, profile, rows)  # type: ignore[arg-type]
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
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    if ctx.pgdata is not None:
        with contextlib.suppress(Exception):
            stack.stop_postgres(ctx.pgdata)
    shutil.rmtree(ctx.state_dir, ignore_errors=True)


# --- one model count -------------------------------------------------------------------------------------

_COPY_COUNTS = """
INSERT INTO window_counts (model_name, model_version, window_s, segment, window_start, series, counts)
SELECT %(to)s, model_version, window_s, segment, window_start, series, counts FROM window_counts
WHERE model_name = %(src)s
"""
_COPY_PERF = """
INSERT INTO window_performance (model_name, model_version, window_s, segment, window_start, stats)
SELECT %(to)s, model_version, window_s, segment, window_start, stats FROM window_performance
WHERE model_name = %(src)s
"""


def populate(store: FeedbackStore, updater: WindowUpdater, profile: ReferenceProfile,
             deltas: dict[int, WindowDelta], n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with store.pool.connection() as conn:
        for i in range(n):
            name = model_name(i)
            own = ReferenceProfile(model_name=name, model_version=VERSION, source=profile.source,
                                   n_rows=profile.n_rows, series=profile.series)
            install_profile(conn, updater, own)
        t_profiles = time.perf_counter() - t0
        for i in range(min(n, len(WORKLOADS))):
            with conn.transaction(), conn.cursor() as cur:
                updater.write(cur, rename(deltas[i], model_name(i)))
        with conn.transaction(), conn.cursor() as cur:
            for i in range(len(WORKLOADS), n):
                params = {"to": model_name(i), "src": model_name(i % len(WORKLOADS))}
                cur.execute(_COPY_COUNTS, params)
                cur.execute(_COPY_PERF, params)
        conn.execute("VACUUM ANALYZE window_counts")
        conn.execute("VACUUM ANALYZE window_performance")
        conn.execute("ANALYZE reference_profiles")
        counts = conn.execute("SELECT count(*), sum(cardinality(counts)) FROM window_counts").fetchone()
        perf = conn.execute("SELECT count(*) FROM window_performance").fetchone()[0]
    return {"populate_s": time.perf_counter() - t0, "profiles_s": t_profiles, "window_counts_rows": counts[0],
            "window_counts_cells": int(counts[1]), "window_performance_rows": perf}


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

    FUNCTIONS = ("evaluate_version", "to_window_data", "evaluate_drift", "evaluate_performance", "summary",
                 "write_results")
    METHODS = ("_sweep", "_build_profiles")

    def __init__(self) -> None:
        self.current: dict[str, float] = dict.fromkeys((*self.FUNCTIONS, *self.METHODS, "prepare_misses",
                                                        "prepare_miss_s"), 0.0)
        self.runs: list[dict[str, float]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap_prepare(self, fn: Callable[[ReferenceProfile], Any]) -> Callable[[ReferenceProfile], Any]:
        # evaluate._prepare caches a profile's stacked arrays (at most 64 profiles); count the calls that miss
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
        for owner, names in ((round_module, self.FUNCTIONS), (Monitor, self.METHODS)):
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
        inner = c["to_window_data"] + c["evaluate_drift"] + c["evaluate_performance"]
        self.runs.append({
            "read windows (queries, parse, baseline)": c["evaluate_version"] - inner,
            "to_window_data": c["to_window_data"],
            "evaluate_drift": c["evaluate_drift"],
            "evaluate_performance": c["evaluate_performance"],
            "summary": c["summary"],
            "write_results": c["write_results"],
            "sweep + profile builder": c["_sweep"] + c["_build_profiles"],
            "rest (lock, versions, profiles)": total_s * 1e3 - c["evaluate_version"] - c["summary"]
            - c["write_results"] - c["_sweep"] - c["_build_profiles"],
            "  of evaluate_drift: profile arrays rebuilt (cache misses)": c["prepare_miss_s"],
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


def timed(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None,
          phases: Phases | None = None, autovacuum: Autovacuum | None = None) -> dict[str, Any]:
    """``repeat`` timed calls of ``fn`` (``before`` untimed ahead of each): median, min, max in ms, the load
    average at the start and the end, and the share of 0.25 s samples that found an autovacuum worker running."""
    times = []
    out = None
    load = os.getloadavg()[0]
    if autovacuum is not None:
        autovacuum.begin()
    for _ in range(repeat):
        if before is not None:
            if autovacuum is not None:
                autovacuum.timing = False
            before()
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
    busy = autovacuum.end() if autovacuum is not None else None
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs_ms": times,
            "load": [load, os.getloadavg()[0]], "autovacuum_pct": busy, "last": out}


def run_count(ctx: Ctx, n: int, profile: ReferenceProfile, deltas: dict[int, WindowDelta], repeat: int,
              profile_calls: bool) -> dict[str, Any]:
    config = config_for(n)
    schema = f"bench_triggers_{ctx.tag}_{n}"
    ctx.schemas.append(schema)
    migrate(ctx.database_url, schema)
    updater = WindowUpdater(config)
    res: dict[str, Any] = {"models": n, "load_start": os.getloadavg()[0]}
    with FeedbackStore(ctx.database_url, schema, max_size=2, windows=updater) as store, \
            Autovacuum(ctx.database_url) as autovacuum:
        _log(f"N={n}: populating {n} models")
        res["setup"] = populate(store, updater, profile, deltas, n)
        _log(f"N={n}: populated in {res['setup']['populate_s']:.1f} s "
             f"({res['setup']['window_counts_rows']:,} window_counts rows)")
        # a fresh updater, as a worker that just started: the first round loads the profiles from the store
        updater = WindowUpdater(config)
        monitor = Monitor(store, updater)
        alerts = NullAlerts()
        engine = TriggerEngine(config, alerts)

        t0 = time.perf_counter()
        first = monitor.run_once()
        res["first_round_ms"] = (time.perf_counter() - t0) * 1e3
        assert first is not None and len(first.evaluations) == n, "every model evaluated"
        wall_now = first.evaluations[0].evaluated_at
        slot = wall_now.replace(hour=0, minute=0)
        with store.pool.connection() as conn:
            res["result_rows"] = conn.execute("SELECT count(*) FROM monitor_results").fetchone()[0]
        _log(f"N={n}: first round {res['first_round_ms']:.0f} ms, {res['result_rows']:,} result rows")

        with Phases() as phases:
            res["a_round"] = timed(monitor.run_once, repeat, phases=phases, autovacuum=autovacuum)
        res["a_phases"] = phases.medians()
        evaluations: list[Evaluation] = res["a_round"].pop("last").evaluations
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

        def whole_round() -> None:
            found: list[Decision] = []
            monitor.run_once(after=lambda conn, evs: found.extend(engine.run(conn, evs, wall_now=wall_now)))
            changed.append(found)

        res["c_first_look"] = timed(whole_round, repeat, before=reset, autovacuum=autovacuum)
        res["c_first_look"].pop("last")
        res["c_first_look"]["changed"] = len(changed[-1])
        with store.pool.connection() as conn:
            res["decisions"] = dict(conn.execute(
                "SELECT kind || ' ' || status "
                "|| coalesce(' (' || split_part(split_part(suppressed_by, ':', 1), ' (', 1) || ')', ''), count(*) "
                "FROM retrain_decisions GROUP BY 1 ORDER BY 1").fetchall())
            res["outbox"] = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        res["alerts_sent"] = alerts.sent
        _log(f"N={n}: (c) round + decisions median {res['c_first_look']['median_ms']:.0f} ms (first look); "
             f"decisions {res['decisions']}")

        if profile_calls:
            reset()
            prof = cProfile.Profile()
            prof.enable()
            t0 = time.perf_counter()
            whole_round()
            res["profiled_ms"] = (time.perf_counter() - t0) * 1e3
            prof.disable()
            res["profile"] = top_costs(prof)
        with store.pool.connection() as conn:
            res["table_sizes"] = dict(conn.execute(
                "SELECT relname, pg_size_pretty(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = current_schema() "
                "AND relname IN ('window_counts', 'window_performance', 'monitor_results', 'retrain_decisions')"
            ).fetchall())
            res["monitor_results_stats"] = dict(zip(
                ("live_rows", "dead_rows", "autovacuums", "autoanalyzes"),
                conn.execute("SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count "
                             "FROM pg_stat_user_tables WHERE relid = 'monitor_results'::regclass").fetchone(),
                strict=True))
            res["autovacuum_tables"] = sorted(autovacuum.tables)
    res["load_end"] = os.getloadavg()[0]
    return res


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
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    print(f"ms, median [min-max] of {repeat} repetitions; per model: the median / N")
    print(line)
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


def print_phases(results: list[dict[str, Any]]) -> None:
    """Where a round (a) spends its time: each step's median over the repetitions, total and per model."""
    names = list(results[0]["a_phases"])
    head = ("(a) round, by step: ms (ms per model)", *(f"N={r['models']}" for r in results))
    rows = [(name, *(f"{r['a_phases'][name]:,.0f} ({r['a_phases'][name] / r['models']:.1f})" for r in results))
            for name in names]
    rows.append(("round (median)", *(f"{r['a_round']['median_ms']:,.0f} ({r['a_round']['median_ms'] / r['models']:.1f})"
                                     for r in results)))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    print(line)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(line)


def print_details(results: list[dict[str, Any]]) -> None:
    for r in results:
        s = r["setup"]
        print(f"N={r['models']}: {s['window_counts_rows']:,} window_counts rows ({s['window_counts_cells']:,} counts), "
              f"{s['window_performance_rows']:,} window_performance rows, populated in {s['populate_s']:.1f} s; "
              f"{r['result_rows']:,} monitor_results rows a round; first look: {r['c_first_look']['changed']} "
              f"decisions changed, recorded {r['decisions']}, outbox {r['outbox']}, {r['alerts_sent']} alerts in "
              f"the whole run; steady (b): {r['b_steady']['changed']} changed; "
              f"load {r['load_start']:.2f} -> {r['load_end']:.2f}; sizes {r['table_sizes']}; monitor_results at "
              f"the end {r['monitor_results_stats']}")
        during = "; ".join(
            f"{label} load {r[key]['load'][0]:.2f} -> {r[key]['load'][1]:.2f}, autovacuum running in "
            + ("no sample (too short)" if r[key]["autovacuum_pct"] is None
               else f"{r[key]['autovacuum_pct']}% of samples")
            for label, key in (("(a)", "a_round"), ("(b) 1st look", "b_first_look"), ("(b) steady", "b_steady"),
                               ("(c)", "c_first_look")))
        print(f"  while timing: {during}; autovacuum seen on: {', '.join(r['autovacuum_tables']) or '-'}")


def print_profile(r: dict[str, Any]) -> None:
    p = r["profile"]
    print(f"\ncProfile of one round + decisions (first look), N={r['models']}: {r['profiled_ms']:,.0f} ms wall under "
          f"the profiler; most own time:")
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
        deltas = {i: workload_delta(counter, profile, i, args.seed) for i in range(min(max(counts), len(WORKLOADS)))}
        _log(f"counted {len(deltas)} workloads of {HOURS} x {PER_HOUR:,} predictions in "
             f"{time.perf_counter() - t0:.1f} s")
        results = [run_count(ctx, n, profile, deltas, args.repeat, not args.no_profile and n == max(counts))
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
    print_phases(results)
    print()
    print_details(results)
    for r in results:
        if "profile" in r:
            print_profile(r)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
