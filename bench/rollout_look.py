"""Rollout look: the cost of one ``Controller.look()`` on a ramp, by the number of labelled ramp rows, and what the
ramp's figures cost the writes.

The issue's target: "a rollout look at most 20 ms with 1M labelled ramp rows, flat from 10k to 1M".

Since commit 7afd1db a look reads the ramp's figures as the store keeps them (migration 019: triggers on
``predictions``, ``current_labels`` and ``shadow_predictions`` add each routed request, label and shadow score to
per-period, per-arm sums; ``feedback/rollout/arms.py`` reads them: ``arms.read``, a ``ramp_arms`` query and a
``ramp_latency`` query) instead of the ramp's rows. A ramp whose figures were never built (``period_starts`` NULL)
has them built on its first look, from the rows stored, once (``_Look.build_figures``, SQL ``ramp_rebuild``).

What it measures, for each row count N in ``--rows`` (default 10,000, 100,000 and 1,000,000), in a fresh schema of
a real PostgreSQL:

* The model. ``churn``, classification, one declared segment attribute (``region``: eu / us / apac by user),
  ``promotion = "shadow"``, Pitstop's rollout defaults (steps 5, 10, 25, 50, 100%; dwells 2 h, 2 h, 6 h, 1 d).
* The ramp. ``v1`` the champion, ``v2`` the challenger, registered in the registry (``v2`` moved candidate ->
  shadow -> canary), its shadow ``passed`` (committed before the ramp, so the look's passed-shadow query finds it
  and skips it, as it does for a ramp under way), and the ramp as the controller leaves it after two steps: the
  ``rollouts`` row in state ``ramping`` at step 2 (25%) since T0 + 4 h, started at T0, a promotion test
  (``PromotionTest``, tau2 1e-3, the configured ratio and alpha), three ``step`` events (5% at T0, 10% at T0 + 2 h,
  25% at T0 + 4 h) and the deployment (``publish_deployment``: row and outbox message). Step 2's dwell (6 h) is not
  reached at the watermark (T0 + 8 h), so a look only waits: it re-saves the rollout's sentence and test and
  changes nothing else (checked: the bench stops if a look changes the ramp, its periods or its figures).
* The rows. N predictions spread uniformly over the ramp's 8 hours (T0 .. T0 + 8 h), from N / 5 users
  (``routing_key`` ``u{k}``, drawn uniformly), each user routed to ``v2`` while its fixed hash (a seeded uniform
  draw per user) is below the step's share, as the router's salted hash does; ``segment`` ``{"region": ...}`` by
  user; 8 numeric features; latency 5 to 15 ms; 0.1% of the requests failed (``error`` set, prediction
  ``"error"``) on both arms; every request labelled (a row in ``outcomes`` and its ``current_labels`` row, observed
  10 minutes later). The champion errs on 30% of the requests; the challenger errs only where the champion would
  have, on 27 / 30 of them (hard requests are hard for both), and the champion's shadow score of each challenger
  request is in ``shadow_predictions`` (the rollout worker scores them during a ramp), so the periods' CUPED
  adjustment applies. No rows before the ramp and no other model: the tables hold the ramp alone. Loaded with
  COPY before the ``rollouts`` row exists (so the triggers return at once: no ramp under way), then ``VACUUM
  ANALYZE`` (as autovacuum would leave them). The rollout row is inserted with ``period_starts`` NULL, as a ramp
  under way before migration 019 is.

Then, with one connection pool (2 connections) and a ``Controller`` whose alert sink only counts:

* The build. One untimed look (timed apart): it builds the figures (``_Look.build_figures``: the periods from the
  ``step`` events, T0, T0 + 2 h, T0 + 4 h; ``ramp_rebuild`` over the ramp's rows), reported as "build (once)", and
  the whole first look beside it. Then ``VACUUM ANALYZE`` of the four ramp tables (``ramp_rows``, ``ramp_units``,
  ``ramp_arms``, ``ramp_latency``), untimed, as autovacuum would after the build's inserts.
* The check. The first look's figures (the ``Figures`` its ``arms.read`` returned) against ``arm_stats`` (the
  reference computation from the raw rows) over the whole ramp (``arms.WHOLE``) and over each period (CUPED
  covariate as the look asks): requests, failures and labelled per arm equal, the error within 1e-9, else the bench
  stops. The users' figures (count, mean and variance of their mean errors, overall and per segment value, CUPED
  adjusted in the periods) and the whole ramp's latency p95 / p99 (buckets 2% wide) are compared and their largest
  differences printed.
* The looks. ``--repeat`` timed looks, each after the rollout row is restored (untimed) to its state before the
  first look, so each repetition is the same look. The table shows the median and the min-max spread, in ms. The
  breakdown (of the median repetition, so its parts add up) is timed by wrapping, during the looks,
  ``psycopg.Cursor.execute`` (by statement: ``ramp_arms`` and ``ramp_latency``, the two reads of ``arms.read``; the
  watermark; the rest of the look's SQL), ``arms.read`` (its SQL, and the rest: fetching the rows and making the
  ``Figures``) and ``Figures.arms`` (the sums turned into ``ArmStats``, CUPED included). ``--explain`` prints
  ``EXPLAIN (ANALYZE, BUFFERS)`` of the ``ramp_arms`` and ``ramp_latency`` reads at the largest N.
* The writes. What the triggers add to writing: 10,000 more labelled requests written as the ingest writes them
  (``FeedbackStore.write_batch``, 5,000 events a transaction, the worker's default, on a store without monitoring
  windows: the predictions, then their outcomes, which set ``current_labels``), three ways in turn, twice (new rows
  each time): routed by the ramp (``churn`` v1 / v2, after the watermark, 0.1% failed, users and shares as above:
  the triggers count them, each in period 2), into a model with no ramp (``other``, while the ramp is under way:
  the triggers look and find nothing to count), and into that model with no ramp under way at all (the rollout row
  set ``rolled_back`` for it, then ``ramping`` again: the triggers return at once, about the cost of writing
  before migration 019). In requests a second over both rounds (the slowest and fastest round beside it), the
  predictions and the outcomes apart. The ramp's figures must grow by exactly the requests, failures and labels
  written, and not at all with the other model's (else the bench stops).

It starts its own PostgreSQL server (``pitstop.stack.start_postgres``) in a temporary folder and stops it at the
end, unless PITSTOP_DATABASE_URL is set (then it uses that, with fresh schemas it drops). Progress goes to stderr,
the tables to stdout.

Run from the repository root::

    .venv/bin/python bench/rollout_look.py                                  # 10k, 100k, 1M, --repeat 3
    .venv/bin/python bench/rollout_look.py --rows 10000,100000 --repeat 3   # a quick check
    .venv/bin/python bench/rollout_look.py --rows 1000000 --repeat 3 --explain
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import feedback.rollout.arms as arms  # noqa: E402
import feedback.rollout.controller as ctl  # noqa: E402
import feedback.rollout.shadow as shadow_module  # noqa: E402
from bench._postgres import database, machine  # noqa: E402
from feedback.config import parse_config  # noqa: E402
from feedback.registry.versions import ModelVersion, Registry  # noqa: E402
from feedback.rollout.controller import Controller, arm_stats, publish_deployment, record_event  # noqa: E402
from feedback.rollout.rules import ArmStats, PromotionTest, UnitStats  # noqa: E402
from feedback.store import FeedbackStore, drop_store, ensure_partitions, index_loaded_predictions, migrate  # noqa: E402
from schemas import OutcomeEvent, PredictionEvent  # noqa: E402

TARGET_MS = 20.0
MODEL, CHAMPION, CHALLENGER, OTHER = "churn", "v1", "v2", "other"
ROLLOUT_ID = f"{MODEL}/{CHALLENGER}"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
SPAN_H = 8
STEP_STARTS_H = (0, 2, 4)
SHARES = (0.05, 0.10, 0.25)
CHAMPION_ERROR, CHALLENGER_ERROR, FAILURE = 0.30, 0.27, 0.001
REGIONS = ("eu", "us", "apac")
FEATURES = 8
WRITE_REQUESTS = 10_000  # labelled requests written through the triggers, per case
WRITE_BATCH = 5_000  # events a write_batch transaction (the ingest worker's max_events_per_txn default)
WRITE_ROUNDS = 2  # the three write cases in turn, this many times
ERROR_TOL = 1e-9
RAMP_TABLES = ("ramp_rows", "ramp_units", "ramp_arms", "ramp_latency")
CONFIG = f"""
[models.{MODEL}]
task = "classification"
positive_class = 1
segments = ["region"]
[models.{MODEL}.retrain]
promotion = "shadow"
"""


def _stop(msg: str) -> NoReturn:
    raise SystemExit(msg)


def _log(msg: str) -> None:
    print(f"[rollout_look {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the rows ----------------------------------------------------------------------------------------------------

def copy_text(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, int], np.ndarray]:
    """COPY text (in chunks) for predictions, outcomes, current_labels and shadow_predictions; the counts; and each
    user's routing hash (the writes after the looks route by it too)."""
    rng = np.random.default_rng(seed)
    users = max(n // 5, 1)
    uid = rng.integers(users, size=n)
    user_hash = rng.random(users)
    t = np.sort(rng.random(n)) * SPAN_H * 3600.0
    step = np.searchsorted(np.array(STEP_STARTS_H) * 3600.0, t, side="right") - 1
    challenger = user_hash[uid] < np.array(SHARES)[step]
    label = rng.integers(2, size=n)
    champion_wrong = rng.random(n) < CHAMPION_ERROR
    wrong = np.where(challenger, champion_wrong & (rng.random(n) < CHALLENGER_ERROR / CHAMPION_ERROR), champion_wrong)
    prediction = np.where(wrong, 1 - label, label)
    shadow = np.where(champion_wrong, 1 - label, label)
    failed = rng.random(n) < FAILURE
    latency = 5.0 + 10.0 * rng.random(n)
    features = np.round(rng.normal(size=(n, FEATURES)), 3)
    at = [(T0 + timedelta(seconds=float(s))) for s in t]
    out: dict[str, list[str]] = defaultdict(list)
    chunk = 50_000
    for lo in range(0, n, chunk):
        p, o, cl, sp = [], [], [], []
        for i in range(lo, min(lo + chunk, n)):
            pid, ts = f"r{i}", at[i].isoformat()
            seen = (at[i] + timedelta(minutes=10)).isoformat()
            version = CHALLENGER if challenger[i] else CHAMPION
            feats = "{" + ", ".join(f'"x{j}": {features[i, j]}' for j in range(FEATURES)) + "}"
            pred, err = ('"error"', "RuntimeError: boom") if failed[i] else (str(prediction[i]), "\\N")
            p.append(f"{pid}\t{MODEL}\t{version}\t{ts}\t{feats}\t{pred}\tu{uid[i]}\t"
                     f'{{"region": "{REGIONS[uid[i] % 3]}"}}\t{latency[i]:.3f}\t{err}\n')
            o.append(f"{pid}\t{seen}\t{label[i]}\tbench\n")
            cl.append(f"{pid}\t{label[i]}\t{seen}\tbench\n")
            if challenger[i]:
                sp.append(f"{MODEL}\t{CHAMPION}\t{pid}\t{shadow[i]}\n")
        for name, part in (("predictions", p), ("outcomes", o), ("current_labels", cl), ("shadow_predictions", sp)):
            out[name].append("".join(part))
    ok = ~failed
    counts = {"predictions": n, "failed": int(failed.sum()), "users": users,
              "labelled_v1": int((ok & ~challenger).sum()), "labelled_v2": int((ok & challenger).sum())}
    return out, counts, user_hash


_COPY = {
    "predictions": "COPY predictions (prediction_id, model_name, model_version, predicted_at, features, prediction,"
                   " routing_key, segment, latency_ms, error) FROM STDIN",
    "outcomes": "COPY outcomes (prediction_id, observed_at, label, source) FROM STDIN",
    "current_labels": "COPY current_labels (prediction_id, label, observed_at, source) FROM STDIN",
    "shadow_predictions": "COPY shadow_predictions (model_name, version, prediction_id, prediction) FROM STDIN",
}


def load(store: FeedbackStore, text: dict[str, list[str]]) -> None:
    with store.pool.connection() as conn:
        with conn.transaction(), conn.cursor() as cur:
            hours = [T0 + timedelta(hours=h) for h in range(-24, 24 * 8)]  # the ramp's rows and their labels
            ensure_partitions(cur, {"predictions": hours, "outcomes": hours})
            for table, statement in _COPY.items():
                with cur.copy(statement) as copy:
                    for part in text[table]:
                        copy.write(part)
            index_loaded_predictions(cur)
        vacuum(store, _COPY)


def vacuum(store: FeedbackStore, tables: Sequence[str]) -> None:
    with store.pool.connection() as conn:
        for table in tables:
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


# --- the ramp ----------------------------------------------------------------------------------------------------

def rollout_row(config: Any) -> dict[str, Any]:
    cfg = config.model(MODEL).rollout
    test = PromotionTest(tau2=1e-3, ratio=cfg.promote_ratio, alpha=cfg.alpha).to_json()
    return {"state": "ramping", "step": len(SHARES) - 1, "share": SHARES[-1], "started_at": T0,
            "step_started_at": T0 + timedelta(hours=STEP_STARTS_H[-1]), "test": test,
            "sentence": f"{CHALLENGER} serves {SHARES[-1]:.0%} (bench)"}


def setup_ramp(store: FeedbackStore, config: Any) -> None:
    """The registry, the passed shadow, the rollout row (``period_starts`` NULL: the first look builds the figures
    and sets its periods, task and segments), its three step events and the deployment."""
    registry = Registry()
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        registry.register(cur, ModelVersion(model_name=MODEL, version=CHAMPION, stage="champion"), None, reason="bench")
        registry.register(cur, ModelVersion(model_name=MODEL, version=CHALLENGER, stage="candidate"), None,
                          reason="bench")
        registry.move(cur, MODEL, CHALLENGER, "shadow", reason="bench shadow")
        cur.execute("INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, sentence,"
                    " decided_at) VALUES (%s, %s, %s, %s, %s, 'passed', 'passed (bench)', %s)",
                    (MODEL, CHALLENGER, CHAMPION, T0 - timedelta(hours=49), T0 - timedelta(hours=48),
                     T0 - timedelta(minutes=1)))
    row = rollout_row(config)
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:  # after the shadow's commit
        registry.move(cur, MODEL, CHALLENGER, "canary", reason="bench ramp")
        cur.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
                    " step_started_at, started_at, test, sentence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s, %s)", (ROLLOUT_ID, MODEL, CHAMPION, CHALLENGER, ROLLOUT_ID, row["state"], row["step"],
                                 row["share"], row["step_started_at"], row["started_at"], Jsonb(row["test"]),
                                 row["sentence"]))
        for hours, share in zip(STEP_STARTS_H, SHARES, strict=True):
            record_event(cur, ROLLOUT_ID, MODEL, CHALLENGER, "step", T0 + timedelta(hours=hours), share,
                         f"{CHALLENGER} serves {share:.0%} (bench)", {})
        publish_deployment(cur, MODEL, champion=CHAMPION, challenger=CHALLENGER, share=SHARES[-1], salt=ROLLOUT_ID,
                           state="ramp", reason="bench", at=T0 + timedelta(hours=STEP_STARTS_H[-1]))


def restore_ramp(store: FeedbackStore, row: dict[str, Any]) -> None:
    with store.pool.connection() as conn:
        conn.execute("UPDATE rollouts SET state = %s, step = %s, share = %s, step_started_at = %s, ended_at = NULL,"
                     " test = %s, sentence = %s WHERE rollout_id = %s",
                     (row["state"], row["step"], row["share"], row["step_started_at"], Jsonb(row["test"]),
                      row["sentence"], ROLLOUT_ID))


def ramp_state(store: FeedbackStore) -> dict[str, Any]:
    """What a waiting look must leave as it was: the rollout row (less the sentence and test it re-saves), its
    events, the deployment, and the ramp's figures and ledger."""
    with store.pool.connection() as conn:
        def rows(query: str) -> list[tuple[Any, ...]]:
            return conn.execute(query).fetchall()
        return {
            "rollout": rows("SELECT state, step, share, step_started_at, started_at, ended_at, period_starts, task,"
                            " segments FROM rollouts ORDER BY rollout_id"),
            "events": rows("SELECT count(*) FROM rollout_events"),
            "deployment": rows("SELECT message_version, challenger_share, state FROM deployments"),
            "ramp_arms": rows("SELECT * FROM ramp_arms ORDER BY rollout_id, period, version, part"),
            "ramp_latency": rows("SELECT period, version, count(*), sum(n), sum(bucket * n) FROM ramp_latency"
                                 " GROUP BY 1, 2 ORDER BY 1, 2"),
            "ledger": rows("SELECT count(*), count(err), count(cov), sum(err), sum(cov) FROM ramp_rows"),
            "units": rows("SELECT count(*), sum(n), sum(e) FROM ramp_units"),
        }


def table_rows(store: FeedbackStore) -> dict[str, int]:
    with store.pool.connection() as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                for t in RAMP_TABLES}


# --- the check against the raw rows ------------------------------------------------------------------------------

def _units_diff(kept: UnitStats, ref: UnitStats) -> tuple[int, float, float]:
    return abs(kept.n - ref.n), abs(kept.mean - ref.mean), abs(kept.var - ref.var)


def _rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    return abs(a - b) / abs(b) if b else abs(a)


def check_figures(store: FeedbackStore, config: Any, figures: arms.Figures, starts: Sequence[datetime],
                  counts: dict[str, int]) -> dict[str, Any]:
    """The look's figures against ``arm_stats`` over the raw rows: the whole ramp and each period. Stops the bench if
    requests, failures or labelled differ, or an error by more than ERROR_TOL; returns the largest differences of
    the rest."""
    model, versions = config.model(MODEL), [CHAMPION, CHALLENGER]
    worst = {"units_n": 0, "units_mean": 0.0, "units_var": 0.0, "p95_rel": 0.0, "p99_rel": 0.0}
    compared: dict[str, Any] = {}
    t0 = time.perf_counter()
    with store.pool.connection() as conn, conn.cursor() as cur:
        now = ctl.watermark(cur, MODEL)
        spans = [(arms.WHOLE, starts[0], now, None)]
        spans += [(k, starts[k], starts[k + 1] if k + 1 < len(starts) else now, (CHALLENGER, CHAMPION))
                  for k in range(len(starts))]
        for period, since, until, covariate in spans:
            ref = arm_stats(cur, model, versions, since, until, covariate=covariate)
            kept = figures.arms(period, versions, covariate=covariate)
            for v in versions:
                a, b = kept[v], ref[v]
                if (a.requests, a.failures, a.labelled) != (b.requests, b.failures, b.labelled) or (
                        (a.error is None) != (b.error is None)
                        or (a.error is not None and abs(a.error - b.error) > ERROR_TOL)):  # type: ignore[operator]
                    _stop(f"the look's figures differ from arm_stats (period {period}, {v}): kept requests "
                          f"{a.requests} failures {a.failures} labelled {a.labelled} error {a.error!r}; arm_stats "
                          f"requests {b.requests} failures {b.failures} labelled {b.labelled} error {b.error!r}")
                if period == arms.WHOLE:  # the whole ramp's users' figures are kept per period only
                    if a.units.n or a.segments:
                        _stop(f"the whole ramp's figures hold users' figures ({a.units}, {sorted(a.segments)})")
                    pairs = []
                elif set(a.segments) != set(b.segments):
                    _stop(f"the look's segment values differ from arm_stats (period {period}, {v}): "
                          f"{sorted(a.segments)} against {sorted(b.segments)}")
                else:
                    pairs = [(a.units, b.units), *((a.segments[s], b.segments[s]) for s in a.segments)]
                for ku, ru in pairs:
                    dn, dm, dv = _units_diff(ku, ru)
                    worst["units_n"] = max(worst["units_n"], dn)
                    worst["units_mean"] = max(worst["units_mean"], dm)
                    worst["units_var"] = max(worst["units_var"], dv)
                if period == arms.WHOLE:
                    worst["p95_rel"] = max(worst["p95_rel"], _rel(a.latency_p95_ms, b.latency_p95_ms))
                    worst["p99_rel"] = max(worst["p99_rel"], _rel(a.latency_p99_ms, b.latency_p99_ms))
                    compared[v] = {"requests": a.requests, "failures": a.failures, "labelled": a.labelled,
                                   "error": a.error}
    labelled = {v: compared[v]["labelled"] for v in versions}
    expected = {CHAMPION: counts["labelled_v1"], CHALLENGER: counts["labelled_v2"]}
    if labelled != expected:
        _stop(f"the look's figures hold labelled {labelled}, the rows loaded {expected}")
    return {"whole": compared, "worst": worst, "periods": len(starts), "seconds": time.perf_counter() - t0}


# --- the timers --------------------------------------------------------------------------------------------------

class Timers:
    """Wraps arms.read, Figures.arms, _Look.build_figures and psycopg's Cursor.execute/fetchall while active;
    times by part; keeps the Figures the look read."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.figures: list[arms.Figures] = []
        self.in_read = False

    def timed(self, fn: Callable[..., Any], key: Callable[..., str], flag: str = "",
              keep: Callable[[Any], None] | None = None) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            if flag:
                setattr(self, flag, True)
            try:
                out = fn(*args, **kwargs)
            finally:
                if flag:
                    setattr(self, flag, False)
                k = key(*args)
                self.ms[k] += (time.perf_counter() - t0) * 1e3
                self.calls[k] += 1
            if keep is not None:
                keep(out)
            return out
        return wrapper

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = (arms.read, arms.Figures.arms, ctl._Look.build_figures, psycopg.Cursor.execute,
                 psycopg.Cursor.fetchall)
        statements = {shadow_module._WATERMARK: "sql watermark", arms._ARMS: "sql ramp_arms",
                      arms._LATENCY: "sql ramp_latency"}
        arms.read = self.timed(saved[0], lambda *a: "arms.read", "in_read",  # type: ignore[assignment]
                               self.figures.append)
        arms.Figures.arms = self.timed(saved[1], lambda *a: "figures.arms")  # type: ignore[method-assign]
        ctl._Look.build_figures = self.timed(saved[2], lambda *a: "build")  # type: ignore[method-assign]
        psycopg.Cursor.execute = self.timed(  # type: ignore[method-assign]
            saved[3], lambda cur, query, *a: statements.get(query, "sql other") if isinstance(query, str)
            else "sql other")
        psycopg.Cursor.fetchall = self.timed(  # type: ignore[method-assign]
            saved[4], lambda *a: "fetch in read" if self.in_read else "fetch other")
        try:
            yield
        finally:
            (arms.read, arms.Figures.arms, ctl._Look.build_figures, psycopg.Cursor.execute,  # type: ignore
             psycopg.Cursor.fetchall) = saved


# --- the writes through the triggers -----------------------------------------------------------------------------

def write_events(n: int, seed: int, user_hash: np.ndarray, start: datetime, *, model: str, prefix: str,
                 ramp: bool) -> tuple[list[PredictionEvent], list[OutcomeEvent], int]:
    """``n`` labelled requests after ``start`` (1 ms apart), as the ingest receives them: routed by the ramp's
    current share (``ramp``) or all ``v1`` of ``model``; and how many failed."""
    rng = np.random.default_rng(seed)
    users = len(user_hash)
    uid = rng.integers(users, size=n)
    challenger = (user_hash[uid] < SHARES[-1]) if ramp else np.zeros(n, dtype=bool)
    label = rng.integers(2, size=n)
    wrong = rng.random(n) < np.where(challenger, CHALLENGER_ERROR, CHAMPION_ERROR)
    failed = rng.random(n) < FAILURE
    latency = 5.0 + 10.0 * rng.random(n)
    features = np.round(rng.normal(size=(n, FEATURES)), 3)
    predictions, outcomes = [], []
    for i in range(n):
        at = start + timedelta(milliseconds=i + 1)
        pid = f"{prefix}{i}"
        predictions.append(PredictionEvent(
            prediction_id=pid, model_name=model, model_version=CHALLENGER if challenger[i] else CHAMPION,
            predicted_at=at, features={f"x{j}": float(features[i, j]) for j in range(FEATURES)},
            prediction="error" if failed[i] else int(1 - label[i] if wrong[i] else label[i]),
            routing_key=f"u{uid[i]}", segment={"region": REGIONS[uid[i] % 3]}, latency_ms=float(latency[i]),
            error="RuntimeError: boom" if failed[i] else None))
        outcomes.append(OutcomeEvent(prediction_id=pid, label=int(label[i]), observed_at=at + timedelta(minutes=10),
                                     source="bench"))
    return predictions, outcomes, int(failed.sum())


def timed_writes(store: FeedbackStore, predictions: list[PredictionEvent],
                 outcomes: list[OutcomeEvent]) -> dict[str, float]:
    """The predictions, then the outcomes, through ``write_batch`` in transactions of WRITE_BATCH events; seconds."""
    out = {}
    for name, events in (("predictions", predictions), ("outcomes", outcomes)):
        t0 = time.perf_counter()
        for lo in range(0, len(events), WRITE_BATCH):
            part = events[lo:lo + WRITE_BATCH]
            if name == "predictions":
                written = store.write_batch(part, []).predictions  # type: ignore[arg-type]
            else:
                written = store.write_batch([], part).outcomes  # type: ignore[arg-type]
            if written != len(part):
                _stop(f"write_batch wrote {written} of {len(part)} {name}")
        out[name] = time.perf_counter() - t0
    return out


def whole_figures(store: FeedbackStore) -> dict[str, ArmStats]:
    with store.pool.connection() as conn, conn.cursor() as cur:
        return arms.read(cur, ROLLOUT_ID).arms(arms.WHOLE, [CHAMPION, CHALLENGER])


def write_cost(store: FeedbackStore, seed: int, user_hash: np.ndarray) -> dict[str, list[dict[str, float]]]:
    """WRITE_REQUESTS labelled requests three ways, WRITE_ROUNDS times in turn: routed by the ramp (counted by the
    triggers), into a model with no ramp while the ramp is under way, and into it with no ramp under way at all."""
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for k in range(WRITE_ROUNDS):
        with store.pool.connection() as conn, conn.cursor() as cur:
            start = max(T0 + timedelta(hours=SPAN_H), ctl.watermark(cur, MODEL) or T0)
        before = whole_figures(store)
        preds, outs, failed = write_events(WRITE_REQUESTS, seed + 10 * k + 1, user_hash, start, model=MODEL,
                                           prefix=f"w{k}_", ramp=True)
        out["ramp"].append(timed_writes(store, preds, outs))
        after = whole_figures(store)
        grew = {f: sum(getattr(after[v], f) - getattr(before[v], f) for v in (CHAMPION, CHALLENGER))
                for f in ("requests", "failures", "labelled")}
        expected = {"requests": WRITE_REQUESTS, "failures": failed, "labelled": WRITE_REQUESTS - failed}
        if grew != expected:
            _stop(f"the ramp's figures grew by {grew} over the writes, expected {expected}")
        preds, outs, _ = write_events(WRITE_REQUESTS, seed + 10 * k + 2, user_hash, start, model=OTHER,
                                      prefix=f"o{k}_", ramp=False)
        out["other model, ramp under way"].append(timed_writes(store, preds, outs))
        if whole_figures(store) != after:
            _stop("writing another model's rows changed the ramp's figures")
        with store.pool.connection() as conn:
            conn.execute("UPDATE rollouts SET state = 'rolled_back' WHERE rollout_id = %s", (ROLLOUT_ID,))
        preds, outs, _ = write_events(WRITE_REQUESTS, seed + 10 * k + 3, user_hash, start, model=OTHER,
                                      prefix=f"z{k}_", ramp=False)
        out["other model, no ramp under way"].append(timed_writes(store, preds, outs))
        with store.pool.connection() as conn:
            conn.execute("UPDATE rollouts SET state = 'ramping' WHERE rollout_id = %s", (ROLLOUT_ID,))
    return out


# --- one row count -----------------------------------------------------------------------------------------------

def run_count(database_url: str, n: int, repeat: int, seed: int, explain: bool) -> dict[str, Any]:
    schema = f"bench_look_{os.getpid()}_{n}"
    t0 = time.perf_counter()
    text, counts, user_hash = copy_text(n, seed)
    _log(f"N={n:,}: rows generated in {time.perf_counter() - t0:.1f} s; loading")
    migrate(database_url, schema)
    config = parse_config(CONFIG)
    res: dict[str, Any] = {"rows": n, **counts}
    try:
        with FeedbackStore(database_url, schema, max_size=2) as store:
            t0 = time.perf_counter()
            load(store, text)
            del text
            setup_ramp(store, config)
            _log(f"N={n:,}: loaded and vacuumed in {time.perf_counter() - t0:.1f} s; the first look builds the "
                 "figures")
            controller, row = Controller(store, config, SimpleNamespace(send=lambda alert: None)), rollout_row(config)
            proof = Timers()
            res["load_build"] = os.getloadavg()
            with proof.active():
                t0 = time.perf_counter()
                looked = controller.look()
                res["first_look_ms"] = (time.perf_counter() - t0) * 1e3
            if len(looked) != 1:
                _stop(f"the look returned {looked} (a failed look is logged above)")
            first = looked[0]
            if first.changed or first.state != "ramping":
                _stop(f"the look changed the ramp ({first.state}): {first.sentence}")
            if proof.calls.get("build") != 1 or len(proof.figures) != 1:
                _stop(f"the first look built the figures {proof.calls.get('build', 0)} times and read them "
                      f"{len(proof.figures)} times (expected once each)")
            res["build_ms"] = proof.ms["build"]
            res["sentence"] = first.sentence
            _log(f"N={n:,}: built in {res['build_ms'] / 1e3:.1f} s (first look {res['first_look_ms'] / 1e3:.1f} s)")
            state = ramp_state(store)
            starts = state["rollout"][0][6]
            expected_starts = [T0 + timedelta(hours=h) for h in STEP_STARTS_H]
            if starts != expected_starts or state["rollout"][0][7:] != ("classification", ["region"]):
                _stop(f"the build set periods {starts}, task and segments {state['rollout'][0][7:]}; expected "
                      f"{expected_starts}, classification, ['region']")
            res["tables"] = table_rows(store)
            vacuum(store, RAMP_TABLES)
            res["check"] = check_figures(store, config, proof.figures[0], starts, counts)
            _log(f"N={n:,}: figures equal to arm_stats (checked in {res['check']['seconds']:.1f} s); timing looks")
            state = ramp_state(store)
            res["reps"] = []
            res["load_start"] = os.getloadavg()
            for _ in range(repeat):
                restore_ramp(store, row)
                timers = Timers()
                with timers.active():
                    t0 = time.perf_counter()
                    [result] = controller.look()
                    total = (time.perf_counter() - t0) * 1e3
                if result.changed:
                    _stop(f"a timed look changed the ramp: {result.sentence}")
                if timers.calls.get("build"):
                    _stop("a timed look built the figures again")
                res["reps"].append({"look": total, **timers.ms})
            res["load_end"] = os.getloadavg()
            after = ramp_state(store)
            if after != state:
                changed = [k for k in state if state[k] != after[k]]
                _stop(f"the timed looks changed the ramp: {changed}")
            if explain:
                res["explain"] = explain_queries(store)
            _log(f"N={n:,}: looks done; writing {WRITE_REQUESTS:,} requests three ways, {WRITE_ROUNDS} times")
            res["load_write"] = os.getloadavg()
            res["writes"] = write_cost(store, seed, user_hash)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            drop_store(conn, schema)
    return res


def explain_queries(store: FeedbackStore) -> dict[str, str]:
    queries = {"ramp_arms": (arms._ARMS, (ROLLOUT_ID,)),
               "ramp_latency": (arms._LATENCY, {"rollout": ROLLOUT_ID, "periods": None})}
    out = {}
    with store.pool.connection() as conn:
        for name, (query, params) in queries.items():
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
            out[name] = "\n".join(r[0] for r in rows)
    return out


# --- the report --------------------------------------------------------------------------------------------------

def _med(res: dict[str, Any], key: str) -> float:
    """``key``'s time in the median repetition (the lower median for an even count): its parts add up to its look."""
    reps = sorted(res["reps"], key=lambda r: r["look"])
    return reps[(len(reps) - 1) // 2].get(key, 0.0)


def print_report(results: list[dict[str, Any]], info: dict[str, Any], repeat: int) -> None:
    print(f"\nmachine: {info['nproc']} cpu, Python {info['python']}, psycopg {psycopg.__version__}, PostgreSQL "
          f"{info['postgres']} {info['settings']}; {info['date']}")
    print(f"ramp: {SPAN_H} h, steps {', '.join(f'{s:.0%}' for s in SHARES)} so far, segments region x 3, N / 5 users, "
          f"all labelled, {FAILURE:.1%} failed; target: a look <= {TARGET_MS:g} ms at 1M labelled ramp rows, flat "
          "from 10k to 1M\n")
    print(f"look, median of {repeat} [min-max], ms; the parts are the median repetition's (the lower middle one "
          "for an even count); build (once): the first look's build of the figures, s")
    head = (f"{'rows':>10} | {'look ms':>20} | {'ramp_arms':>9} | {'ramp_lat':>8} | {'read rest':>9} | "
            f"{'watermark':>9} | {'fig.arms':>8} | {'other sql':>9} | {'rest':>6} | {'build s':>8} | "
            f"{'target':>6} | verdict")
    print(head)
    print("-" * len(head))
    for r in results:
        looks = [x["look"] for x in r["reps"]]
        med = statistics.median(looks)
        read, ra, rl = _med(r, "arms.read"), _med(r, "sql ramp_arms"), _med(r, "sql ramp_latency")
        wm, fa, other = _med(r, "sql watermark"), _med(r, "figures.arms"), _med(r, "sql other")
        rest = _med(r, "look") - read - wm - fa - other
        cell = f"{med:,.1f} [{min(looks):,.1f}-{max(looks):,.1f}]"
        verdict = "meets" if med <= TARGET_MS else f"misses ({med / TARGET_MS:,.1f}x)"
        print(f"{r['rows']:>10,} | {cell:>20} | {ra:>9,.2f} | {rl:>8,.2f} | {read - ra - rl:>9,.2f} | {wm:>9,.2f} | "
              f"{fa:>8,.2f} | {other:>9,.2f} | {rest:>6,.2f} | {r['build_ms'] / 1e3:>8,.1f} | {TARGET_MS:>4g}ms | "
              f"{verdict}")
    print("\n(ramp_arms, ramp_lat: the two reads of arms.read, execute = server + transfer; read rest: fetching their "
          "rows and making the Figures; watermark: its SQL; fig.arms: Figures.arms, sums to ArmStats with CUPED; "
          "other sql: the look's other statements, its lock, the rollout row, the passed shadow, the episode, the "
          "re-save; rest: Python of the look)")
    print(f"\nwrites: {WRITE_REQUESTS:,} labelled requests through FeedbackStore.write_batch ({WRITE_BATCH:,} events a "
          f"transaction): predictions, then outcomes (current_labels); the three cases in turn, {WRITE_ROUNDS} times; "
          "rows (requests) a second over the rounds [slowest-fastest round], and predictions and outcomes apart")
    cases = ("ramp", "other model, ramp under way", "other model, no ramp under way")
    head = f"{'rows':>10} | " + " | ".join(f"{c:>42}" for c in cases)
    print(head)
    print("-" * len(head))
    for r in results:
        cells = []
        for c in cases:
            rounds = r["writes"][c]
            rates = [WRITE_REQUESTS / (w["predictions"] + w["outcomes"]) for w in rounds]
            pred, outc = (WRITE_REQUESTS * len(rounds) / sum(w[part] for w in rounds)
                          for part in ("predictions", "outcomes"))
            total = WRITE_REQUESTS * len(rounds) / sum(w["predictions"] + w["outcomes"] for w in rounds)
            cells.append(f"{total:,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] (p {pred:,.0f}, o {outc:,.0f})")
        print(f"{r['rows']:>10,} | " + " | ".join(f"{c:>42}" for c in cells))
    print("\nthe build and the check against arm_stats (raw rows)")
    for r in results:
        c = r["check"]
        w = c["worst"]
        print(f"  N={r['rows']:,}: {r['users']:,} users, {r['failed']:,} failed; build {r['build_ms'] / 1e3:,.2f} s, "
              f"first look {r['first_look_ms'] / 1e3:,.2f} s; ramp tables after the build {r['tables']}")
        print(f"    whole ramp, kept = arm_stats (requests, failures, labelled equal; error within {ERROR_TOL:g}) "
              f"and the {c['periods']} periods too: {c['whole']}")
        print(f"    largest differences, users' figures (overall and per region, periods CUPED): n {w['units_n']}, "
              f"mean {w['units_mean']:.2e}, var {w['units_var']:.2e}; whole-ramp latency p95 {w['p95_rel']:.2%}, "
              f"p99 {w['p99_rel']:.2%} (relative)")
        print(f"    sentence: {r['sentence']}")
        print(f"    load average: build {r['load_build'][0]:.2f}; timed looks {r['load_start'][0]:.2f} -> "
              f"{r['load_end'][0]:.2f}; writes {r['load_write'][0]:.2f}")
    for r in results:
        for name, plan in r.get("explain", {}).items():
            print(f"\nEXPLAIN ANALYZE {name}, N={r['rows']:,}:\n{plan}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="labelled ramp rows, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--explain", action="store_true",
                        help="EXPLAIN ANALYZE the ramp_arms and ramp_latency reads at the largest N")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.rows.split(",") if x.strip()]
    if not counts or min(counts) < 10 or args.repeat < 1:
        parser.error("--rows needs counts of at least 10 and --repeat at least 1")
    started = time.perf_counter()
    with database("pitstop-bench-look-") as url:
        _log(f"postgres {url}; load average {os.getloadavg()}")
        info = machine(url)
        results = [run_count(url, n, args.repeat, args.seed, args.explain and n == max(counts)) for n in counts]
    print_report(results, info, args.repeat)
    print(f"\nwhole run {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
