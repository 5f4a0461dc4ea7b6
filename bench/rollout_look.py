"""Rollout look: the cost of one ``Controller.look()`` on a ramp, by the number of labelled ramp rows.

The issue's target: "a rollout look at most 20 ms with 1M labelled ramp rows, flat from 10k to 1M".

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
  changes nothing else (checked: the bench stops if a look changes the ramp).
* The rows. N predictions spread uniformly over the ramp's 8 hours (T0 .. T0 + 8 h), from N / 5 users
  (``routing_key`` ``u{k}``, drawn uniformly), each user routed to ``v2`` while its fixed hash (a seeded uniform
  draw per user) is below the step's share, as the router's salted hash does; ``segment`` ``{"region": ...}`` by
  user; 8 numeric features; latency 5 to 15 ms; 0.1% of the requests failed (``error`` set, prediction
  ``"error"``) on both arms; every request labelled (a row in ``outcomes`` and its ``current_labels`` row, observed
  10 minutes later). The champion errs on 30% of the requests; the challenger errs only where the champion would
  have, on 27 / 30 of them (hard requests are hard for both), and the champion's shadow score of each challenger
  request is in ``shadow_predictions`` (the rollout worker scores them during a ramp), so the strata's CUPED
  adjustment applies. No rows before the ramp and no other model: the tables hold the ramp alone. Loaded with
  COPY (no ingest, no monitoring windows), then ``VACUUM ANALYZE`` (as autovacuum would leave them).

Then, with one connection pool (2 connections) and a ``Controller`` whose alert sink only counts: one untimed
look (it proves the path: its sentence, and the whole-ramp ``arm_stats`` call's labelled rows per arm, which must
add up to the N - failed requests; the bench stops otherwise), then ``--repeat`` timed looks, each after the
rollout row is restored (untimed) to its state before the first look, so each repetition is the same look. The
table shows the median and the min-max spread, in ms. The breakdown (of the median repetition, so its parts add
up) is timed by wrapping, during the looks: ``arm_stats`` (the module function ``_Look.ramp`` calls: over the whole
ramp, "arm_stats" (until 2026-12-06 also over the current step, which now only counts its requests:
``arm_requests``, in "rest"); called from ``strata``, one per step, counted in "strata"),
``_Look.strata``, and ``psycopg.Cursor.execute`` / ``fetchall`` (the SQL by statement: the watermark, ``_TRAFFIC``,
``_LABELLED``, the rest; fetchall is psycopg turning the result into Python rows). "pandas+py" is the arm_stats
calls' time (both columns) less their SQL and fetch. ``--explain`` prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the
watermark, ``_TRAFFIC`` and ``_LABELLED`` over the whole ramp at the largest N.

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
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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

import feedback.rollout.controller as ctl  # noqa: E402
import feedback.rollout.shadow as shadow_module  # noqa: E402
from feedback.config import parse_config  # noqa: E402
from feedback.registry.versions import ModelVersion, Registry  # noqa: E402
from feedback.rollout.controller import Controller, publish_deployment, record_event  # noqa: E402
from feedback.rollout.rules import PromotionTest  # noqa: E402
from feedback.store import FeedbackStore, migrate  # noqa: E402
from pitstop import stack  # noqa: E402

TARGET_MS = 20.0
MODEL, CHAMPION, CHALLENGER = "churn", "v1", "v2"
ROLLOUT_ID = f"{MODEL}/{CHALLENGER}"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
SPAN_H = 8
STEP_STARTS_H = (0, 2, 4)
SHARES = (0.05, 0.10, 0.25)
CHAMPION_ERROR, CHALLENGER_ERROR, FAILURE = 0.30, 0.27, 0.001
REGIONS = ("eu", "us", "apac")
FEATURES = 8
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

def copy_text(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """COPY text (in chunks) for predictions, outcomes, current_labels and shadow_predictions; and the counts."""
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
    return out, counts


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
            for table, statement in _COPY.items():
                with cur.copy(statement) as copy:
                    for part in text[table]:
                        copy.write(part)
        for table in _COPY:
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


# --- the ramp ----------------------------------------------------------------------------------------------------

def rollout_row(config: Any) -> dict[str, Any]:
    cfg = config.model(MODEL).rollout
    test = PromotionTest(tau2=1e-3, ratio=cfg.promote_ratio, alpha=cfg.alpha).to_json()
    return {"state": "ramping", "step": len(SHARES) - 1, "share": SHARES[-1], "started_at": T0,
            "step_started_at": T0 + timedelta(hours=STEP_STARTS_H[-1]), "test": test,
            "sentence": f"{CHALLENGER} serves {SHARES[-1]:.0%} (bench)"}


def setup_ramp(store: FeedbackStore, config: Any) -> None:
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


# --- the timers --------------------------------------------------------------------------------------------------

class Timers:
    """Wraps arm_stats, _Look.strata and psycopg's Cursor.execute/fetchall while active; times by part."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.ramp_stats: list[dict[str, Any]] = []  # what the calls of arm_stats outside strata returned
        self.strata_stats: list[tuple[Any, Any]] = []
        self.in_strata = self.in_arm = False

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
        saved = ctl.arm_stats, ctl._Look.strata, psycopg.Cursor.execute, psycopg.Cursor.fetchall
        statements = {shadow_module._WATERMARK: "sql watermark", ctl._TRAFFIC: "sql traffic",
                      ctl._LABELLED: "sql labelled"}
        ctl.arm_stats = self.timed(  # type: ignore[assignment]
            saved[0], lambda *a: "arm_stats in strata" if self.in_strata else "arm_stats", "in_arm",
            lambda out: None if self.in_strata else self.ramp_stats.append(out))
        ctl._Look.strata = self.timed(  # type: ignore[method-assign]
            saved[1], lambda *a: "strata", "in_strata", lambda out: setattr(self, "strata_stats", out))
        psycopg.Cursor.execute = self.timed(  # type: ignore[method-assign]
            saved[2], lambda cur, query, *a: statements.get(query, "sql other") if isinstance(query, str)
            else "sql other")
        psycopg.Cursor.fetchall = self.timed(  # type: ignore[method-assign]
            saved[3], lambda *a: "fetch in arm_stats" if self.in_arm else "fetch other")
        try:
            yield
        finally:
            ctl.arm_stats, ctl._Look.strata, psycopg.Cursor.execute, psycopg.Cursor.fetchall = saved  # type: ignore


# --- one row count -----------------------------------------------------------------------------------------------

def run_count(database_url: str, n: int, repeat: int, seed: int, explain: bool) -> dict[str, Any]:
    schema = f"bench_look_{os.getpid()}_{n}"
    t0 = time.perf_counter()
    text, counts = copy_text(n, seed)
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
            _log(f"N={n:,}: loaded and vacuumed in {time.perf_counter() - t0:.1f} s")
            controller, row = Controller(store, config, SimpleNamespace(send=lambda alert: None)), rollout_row(config)
            proof = Timers()
            with proof.active():
                looked = controller.look()
            if len(looked) != 1:
                _stop(f"the look returned {looked} (a failed look is logged above)")
            first = looked[0]
            if first.changed or first.state != "ramping":
                _stop(f"the look changed the ramp ({first.state}): {first.sentence}")
            whole = proof.ramp_stats[0]
            read = {v: whole[v].labelled for v in (CHAMPION, CHALLENGER)}
            expected = {CHAMPION: counts["labelled_v1"], CHALLENGER: counts["labelled_v2"]}
            if read != expected:
                _stop(f"the look read labelled rows {read}, expected {expected}")
            res["sentence"], res["read"] = first.sentence, read
            res["strata"] = [(c.labelled, a.labelled) for c, a in proof.strata_stats]
            res["arm_calls"] = dict(proof.calls)
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
                res["reps"].append({"look": total, **timers.ms})
            res["load_end"] = os.getloadavg()
            if explain:
                res["explain"] = explain_queries(store)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return res


def explain_queries(store: FeedbackStore) -> dict[str, str]:
    since, until = T0, T0 + timedelta(hours=SPAN_H)
    queries = {"watermark": (shadow_module._WATERMARK, {"model": MODEL}),
               "traffic": (ctl._TRAFFIC, (MODEL, [CHAMPION, CHALLENGER], since, until)),
               "labelled": (ctl._LABELLED, (CHAMPION, MODEL, [CHAMPION, CHALLENGER], since, until))}
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
          "for an even count; arm_stats: the whole ramp; strata: one arm_stats a step)")
    head = f"{'rows':>10} | {'look ms':>26} | {'arm_stats':>9} | {'strata':>9} | {'rest':>7} | {'target':>8} | verdict"
    print(head)
    print("-" * len(head))
    for r in results:
        looks = [x["look"] for x in r["reps"]]
        med, arm, strata = statistics.median(looks), _med(r, "arm_stats"), _med(r, "strata")
        rest = _med(r, "look") - arm - strata
        cell = f"{med:,.1f} [{min(looks):,.1f}-{max(looks):,.1f}]"
        verdict = "meets" if med <= TARGET_MS else f"misses ({med / TARGET_MS:,.0f}x)"
        print(f"{r['rows']:>10,} | {cell:>26} | {arm:>9,.1f} | {strata:>9,.1f} | {rest:>7,.1f} | "
              f"{TARGET_MS:>6g}ms | {verdict}")
    print("\nwhere the time goes in the median repetition, ms (SQL: execute, server + transfer; fetch: rows to "
          "Python; pandas+py: the arm_stats calls less their SQL and fetch)")
    keys = ("sql watermark", "sql traffic", "sql labelled", "sql other", "fetch in arm_stats", "fetch other")
    head = f"{'rows':>10} | " + " | ".join(f"{k.replace('sql ', ''):>13}" for k in keys) + f" | {'pandas+py':>9}"
    print(head)
    print("-" * len(head))
    for r in results:
        arm_calls = _med(r, "arm_stats") + _med(r, "arm_stats in strata")
        sql_in_arm = _med(r, "sql traffic") + _med(r, "sql labelled") + _med(r, "fetch in arm_stats")
        print(f"{r['rows']:>10,} | " + " | ".join(f"{_med(r, k):>13,.1f}" for k in keys)
              + f" | {arm_calls - sql_in_arm:>9,.1f}")
    print("\nwhat the first (untimed) look read and said")
    for r in results:
        print(f"  N={r['rows']:,}: {r['users']:,} users, {r['failed']:,} failed; whole-ramp arm_stats labelled "
              f"{r['read']} (sum {sum(r['read'].values()):,} = N - failed); per step (challenger, champion) "
              f"{r['strata']}; calls {r['arm_calls']}")
        print(f"    sentence: {r['sentence']}")
        print(f"    load average during the timed looks: {r['load_start'][0]:.2f} -> {r['load_end'][0]:.2f}")
    for r in results:
        for name, plan in r.get("explain", {}).items():
            print(f"\nEXPLAIN ANALYZE {name}, N={r['rows']:,}:\n{plan}")


def machine(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers',"
                                     " 'work_mem', 'jit')").fetchall())
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "postgres": pg, "settings": settings,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


@contextlib.contextmanager
def database() -> Iterator[str]:
    url = os.environ.get("PITSTOP_DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="pitstop-bench-look-"))
    try:
        record = stack.start_postgres(folder / "pgdata")
        try:
            yield stack.postgres_url(record.address)
        finally:
            stack.stop_postgres(folder / "pgdata")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="labelled ramp rows, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the look's queries at the largest N")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.rows.split(",") if x.strip()]
    if not counts or min(counts) < 10 or args.repeat < 1:
        parser.error("--rows needs counts of at least 10 and --repeat at least 1")
    started = time.perf_counter()
    with database() as url:
        _log(f"postgres {url}; load average {os.getloadavg()}")
        info = machine(url)
        results = [run_count(url, n, args.repeat, args.seed, args.explain and n == max(counts)) for n in counts]
    print_report(results, info, args.repeat)
    print(f"\nwhole run {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
