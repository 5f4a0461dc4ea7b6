"""Pool look: what the loads of ``RetrainPipeline._pool_look`` cost by the length of the history before the change,
loaded whole (as before issue 17, item 5) and bounded (since).

The issue's item: "The pool look reads only the rows it scores plus what production_best needs, bounded."

A pool look scores the former champions on the labelled rows since the change point and needs production's best
level (``production_best``: the served predictions' lowest error on at most 50 stretches of as many rows as there
are since the change, evenly spread over the history before it) for the leakage gate. It used to load the whole
history (365 days by default, features decoded into a pandas frame by ``load_dataset``) to use those two parts of
it. Now it loads with features only the rows since the change (``load_dataset`` from the change point) and reads
production's best level from the store (``stored_production_best``: a count of the history's labelled rows, then
only the served columns of the rows of the stretches, numbered by ``row_number()`` in the loader's order), both in
one repeatable-read snapshot. Scoring the former champions and the gates are the same either way and not timed.

What it measures, for each N in ``--rows`` (default 10,000, 100,000 and 1,000,000), in a fresh schema of a real
PostgreSQL:

* The rows. One model, ``churn`` (binary classification, positive class 1). N labelled predictions spread
  uniformly over the 360 days before the change point, and ``--since`` (default 500) after it, in the 5 hours
  before the trigger; each with 8 numeric features and one categorical (``plan``), a ``region`` segment, the served
  prediction and class probabilities (better in some weeks than others), and one outcome 5 minutes later. Loaded
  with COPY (predictions and outcomes), then ``VACUUM ANALYZE``.
* The two ways, each in a fresh Python process (so that its peak RSS is its own), ``--repeat`` times, in turns:
  "whole": ``load_dataset`` of the 365 days before the trigger, the rows since the change taken from the frame,
  and ``production_best`` over the rows before it (the code before this change); "bounded": ``load_dataset`` from
  the change point and ``stored_production_best``, in one read-only repeatable-read transaction (the pool look's
  code now). Each prints the time of its two parts, its peak RSS (``VmHWM``) and the RSS it had before loading
  (the imports and a connection: the same for both), and its results, which must be equal (rows since the change,
  their prediction ids, and production's best error and accuracy), else the bench stops.

It starts its own PostgreSQL server (``pitstop.stack.start_postgres``) in a temporary folder and stops it at the
end, unless PITSTOP_DATABASE_URL is set (then it uses that, with fresh schemas it drops). Progress goes to stderr,
the table to stdout.

Run from the repository root::

    .venv/bin/python bench/pool_look.py                                 # 10k, 100k, 1M, --repeat 3
    .venv/bin/python bench/pool_look.py --rows 10000,100000 --repeat 1  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._postgres import database, machine  # noqa: E402
from feedback.config import parse_config  # noqa: E402
from feedback.store import drop_store, ensure_partitions, index_loaded_predictions, migrate  # noqa: E402
from retrain_worker.dataset import SNAPSHOT, DatasetSpec, load_dataset  # noqa: E402
from retrain_worker.pipeline import best_level_starts, production_best, stored_production_best  # noqa: E402

MODEL = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\n').models["churn"]
DECIDED = datetime(2027, 3, 1, tzinfo=UTC)  # the trigger's decision: the cutoff
CHANGE = DECIDED - timedelta(hours=5)
HISTORY = DECIDED - timedelta(seconds=MODEL.retrain.history_s)  # 365 days, the default
SPREAD = timedelta(days=360)  # the history's rows lie in [CHANGE - SPREAD, CHANGE)
FEATURES = 8
CHUNK = 100_000
WAYS = ("whole", "bounded")


def _stop(msg: str) -> NoReturn:
    raise SystemExit(msg)


def _log(msg: str) -> None:
    print(f"[pool_look {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the rows ----------------------------------------------------------------------------------------------------

def _chunks(n: int, since: int, seed: int) -> Iterator[tuple[str, str]]:
    """COPY text of the predictions and outcomes, CHUNK rows at a time: n before the change, ``since`` after it."""
    rng = np.random.default_rng(seed)
    total = n + since
    for lo in range(0, total, CHUNK):
        i = np.arange(lo, min(lo + CHUNK, total))
        before = i < n
        offset = np.where(before, (i / max(n, 1)) * SPREAD.total_seconds() - SPREAD.total_seconds(),
                          (i - n) / since * (DECIDED - CHANGE - timedelta(minutes=10)).total_seconds())
        at = np.datetime64(CHANGE.replace(tzinfo=None), "us") + (offset * 1e6).astype("timedelta64[us]")
        seen = at + np.timedelta64(5, "m")
        label = (rng.random(len(i)) < 0.4).astype(int)
        quality = 0.5 + 0.5 * np.sin(offset / (7 * 86_400.0))  # 1: served right and sure
        p1 = np.clip(0.5 + (label - 0.5) * quality * 0.9 + rng.normal(0, 0.1, len(i)), 0.01, 0.99)
        x = np.round(rng.normal(size=(len(i), FEATURES)), 3)
        plan = rng.choice(["basic", "pro", "team"], len(i))
        region = rng.choice(["eu", "us", "apac"], len(i))
        at_s = np.datetime_as_string(at, unit="us", timezone="UTC")
        seen_s = np.datetime_as_string(seen, unit="us", timezone="UTC")
        preds, outs = [], []
        for k in range(len(i)):
            feats = ", ".join(f'"x{j}": {x[k, j]}' for j in range(FEATURES))
            preds.append(f"p{i[k]}\tchurn\tv1\t{at_s[k]}\t{{{feats}, \"plan\": \"{plan[k]}\"}}\t{int(p1[k] >= 0.5)}\t"
                         f'{{"0": {1 - p1[k]:.4f}, "1": {p1[k]:.4f}}}\t{{"region": "{region[k]}"}}\t5.0\n')
            outs.append(f"p{i[k]}\t{seen_s[k]}\t{label[k]}\tbench\n")
        yield "".join(preds), "".join(outs)


def load(database_url: str, schema: str, n: int, since: int, seed: int) -> None:
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        with conn.transaction(), conn.cursor() as cur:
            weeks = [CHANGE - SPREAD + timedelta(days=d) for d in range((DECIDED - CHANGE + SPREAD).days + 2)]
            ensure_partitions(cur, {"predictions": weeks, "outcomes": weeks})
            for p, o in _chunks(n, since, seed):
                with cur.copy("COPY predictions (prediction_id, model_name, model_version, predicted_at, features,"
                              " prediction, probabilities, segment, latency_ms) FROM STDIN") as copy:
                    copy.write(p)
                with cur.copy("COPY outcomes (prediction_id, observed_at, label, source) FROM STDIN") as copy:
                    copy.write(o)
            index_loaded_predictions(cur)
        for table in ("predictions", "outcomes"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


# --- one way, in a process of its own ----------------------------------------------------------------------------

def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, in MiB. Not ``ru_maxrss``: Linux keeps it across
    exec, so a child started by a large parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    _stop(f"no {field} in /proc/self/status")


def child(database_url: str, schema: str, way: str) -> dict[str, Any]:
    """One way's loads, timed, with the process's RSS before them and its peak."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        rss_before = _rss_mib("VmRSS")
        started = time.perf_counter()
        if way == "whole":
            frame = load_dataset(conn, DatasetSpec(model_name=MODEL.name, cutoff=DECIDED, since=HISTORY,
                                                   change_point=CHANGE)).frame
            since = frame[frame["predicted_at"] >= CHANGE]
            loaded = time.perf_counter()
            best = production_best(MODEL, frame[frame["predicted_at"] < CHANGE], len(since))
        else:
            with conn.transaction():
                conn.execute(SNAPSHOT)
                since = load_dataset(conn, DatasetSpec(model_name=MODEL.name, cutoff=DECIDED,
                                                       since=max(CHANGE, HISTORY), change_point=CHANGE)).frame
                loaded = time.perf_counter()
                best = stored_production_best(conn, MODEL, cutoff=DECIDED, since=HISTORY, until=CHANGE,
                                              block=len(since))
        done = time.perf_counter()
    return {"since_s": loaded - started, "best_s": done - loaded, "total_s": done - started,
            "rss_before_mib": rss_before, "rss_peak_mib": _rss_mib("VmHWM"), "since_rows": len(since),
            "since_ids": since["prediction_id"].tolist(), "best": list(best),
            "features": sorted(c for c in since.columns if c.startswith("x") or c == "plan")}


def run_child(database_url: str, schema: str, way: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", way, "--url", database_url, "--schema", schema],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        _stop(f"the {way} child failed:\n{out.stderr}")
    return json.loads(out.stdout)


# --- one row count -----------------------------------------------------------------------------------------------

def run_count(database_url: str, n: int, since: int, repeat: int, seed: int) -> dict[str, Any]:
    schema = f"bench_pool_{os.getpid()}_{n}"
    migrate(database_url, schema)
    try:
        t0 = time.perf_counter()
        load(database_url, schema, n, since, seed)
        _log(f"N={n:,}: {n + since:,} labelled predictions loaded in {time.perf_counter() - t0:.1f} s")
        runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        loads = []
        for r in range(repeat):
            for way in WAYS:
                loads.append(os.getloadavg()[0])
                runs[way].append(run_child(database_url, schema, way))
                got = runs[way][-1]
                _log(f"N={n:,} #{r + 1} {way}: {got['total_s']:.2f} s (since {got['since_s']:.2f} s, best "
                     f"{got['best_s']:.2f} s), peak RSS {got['rss_peak_mib']:.0f} MiB; best {got['best']}")
        first = runs["whole"][0]
        for got in [g for way in WAYS for g in runs[way]]:
            for key in ("since_rows", "since_ids", "best", "features"):
                if got[key] != first[key]:
                    _stop(f"N={n:,}: the ways differ on {key}: {got[key]!r:.200} != {first[key]!r:.200}")
        if first["since_rows"] != since:
            _stop(f"N={n:,}: {first['since_rows']} rows since the change, not {since}")
        stretches = best_level_starts(n, since)
        return {"rows": n, "since": since, "runs": runs, "best": first["best"], "load": (min(loads), max(loads)),
                "stretch_rows": len(stretches) * since, "stretches": len(stretches)}
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            drop_store(conn, schema)


# --- the report --------------------------------------------------------------------------------------------------

def _median(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def print_report(results: list[dict[str, Any]], info: dict[str, Any], repeat: int) -> None:
    print(f"\nPool look loads, {info['date']}: {info['nproc']} cores, Python {info['python']}, PostgreSQL "
          f"{info['postgres']} ({', '.join(f'{k} {v}' for k, v in info['settings'].items())}); {repeat} run(s) a way, "
          "each in a process of its own; seconds as median (min-max)\n")
    print("| history rows | way | rows since (with features) | history rows read | since load s | best level s "
          "| total s | peak RSS MiB (before loading) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for way in WAYS:
            runs = r["runs"][way]
            read = f"{r['rows']:,} (with features)" if way == "whole" else (
                f"{r['stretch_rows']:,} ({r['stretches']} stretches, served columns)")
            peak = max(g["rss_peak_mib"] for g in runs)
            before = max(g["rss_before_mib"] for g in runs)
            print(f"| {r['rows']:,} | {way} | {r['since']:,} | {read} | {_median(runs, 'since_s')} | "
                  f"{_median(runs, 'best_s')} | {_median(runs, 'total_s')} | {peak:.0f} ({before:.0f}) |")
    print()
    for r in results:
        print(f"N={r['rows']:,}: production's best (log loss, accuracy) {r['best']}, equal both ways; load average "
              f"{r['load'][0]:.2f}-{r['load'][1]:.2f} during the runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="labelled history rows before the change")
    parser.add_argument("--since", type=int, default=500, help="labelled rows since the change")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.url, args.schema, args.child)))
        return 0
    counts = [int(x) for x in args.rows.split(",") if x.strip()]
    if not counts or min(counts) < 1 or args.since < 1 or args.repeat < 1:
        parser.error("--rows, --since and --repeat need counts of at least 1")
    started = time.perf_counter()
    with database("pitstop-bench-pool-") as url:
        _log(f"postgres {url}; load average {os.getloadavg()}")
        info = machine(url)
        results = [run_count(url, n, args.since, args.repeat, args.seed) for n in counts]
    print_report(results, info, args.repeat)
    print(f"\nwhole run {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
