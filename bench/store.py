"""The store over time (issue 19): its size per million events, a month's prune and the ingest while it runs, and
the write path's throughput on a store holding 50M rows against an empty one.

Three parts, each in a fresh schema of a real PostgreSQL (its own in a temporary folder, unless
PITSTOP_DATABASE_URL is set):

* **size**: ``--size-events`` events (half predictions of one model with 8 numeric features, a categorical and a
  segment; half their outcomes) written through ``FeedbackStore.write_batch`` (the ingest's own write, 5,000
  events a transaction), then every table's size with its indexes (``pg_total_relation_size``, partitions summed),
  per million events.
* **prune**: ``--prune-weeks`` weeks of ``--prune-rows`` predictions each (and their outcomes) bulk-loaded 60 weeks
  ago, plus a current week, then ``retention.prune`` (the code of ``pitstop db prune``) with a retention that
  drops exactly those weeks, while a writer thread stores 100 events every 20 ms through ``write_batch``: the
  prune's time by phase (detach, clearing the ids' rows, drop), and the writer's batch latency before and during;
  meanwhile ``pg_stat_activity`` is sampled every 5 ms, and each writer batch over 100 ms is reported with what
  the writer's backend and every other busy server process waited on during it.
* **big**: a store bulk-loaded (COPY, then the index and labels filled by SQL) with ``--big-rows`` rows
  (predictions and outcomes, half each) over 52 weeks, ``VACUUM ANALYZE``; then ``--throughput-events`` events
  written through ``write_batch`` into this week, against the same into an empty store, ``--repeat`` times each
  in turns: events per second, and the ratio.

Run from the repository root::

    .venv/bin/python bench/store.py                           # all three: 1M events, 5 x 200k weeks, 50M rows
    .venv/bin/python bench/store.py --parts size,prune        # without the 50M-row store
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._postgres import database, machine  # noqa: E402
from feedback.store import FeedbackStore, drop_store, ensure_partitions, migrate  # noqa: E402
from feedback.store.retention import prune  # noqa: E402
from schemas import OutcomeEvent, PredictionEvent  # noqa: E402

PARTS = ("size", "prune", "big")
BATCH = 5_000  # events a write_batch transaction (the ingest worker's max_events_per_txn default)
NOW = datetime.now(UTC).replace(microsecond=0)
COPY_CHUNK = 200_000


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _events(n_predictions: int, start: datetime, span: timedelta, prefix: str,
            seed: int) -> Iterator[tuple[list[PredictionEvent], list[OutcomeEvent]]]:
    """Predictions spread over [start, start + span) with an outcome 5 minutes later each, BATCH events a batch."""
    rng = np.random.default_rng(seed)
    step = span / max(n_predictions, 1)
    half = BATCH // 2
    for lo in range(0, n_predictions, half):
        ids = range(lo, min(lo + half, n_predictions))
        x = np.round(rng.normal(size=(len(ids), 8)), 3).tolist()
        preds = [PredictionEvent(
            prediction_id=f"{prefix}{i}", model_name="churn", model_version="v1", predicted_at=start + step * i,
            features={**{f"x{j}": row[j] for j in range(8)}, "plan": ("basic", "pro", "team")[i % 3]},
            prediction=i % 2, probabilities={"0": 0.4, "1": 0.6}, segment={"region": ("eu", "us")[i % 2]},
            latency_ms=4.0) for i, row in zip(ids, x, strict=True)]
        outs = [OutcomeEvent(prediction_id=p.prediction_id, label=int(rng.random() < 0.4),
                             observed_at=p.predicted_at + timedelta(minutes=5)) for p in preds]
        yield preds, outs


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Bytes of each table with its indexes and TOAST, a partitioned table's partitions summed."""
    return dict(conn.execute(
        "SELECT coalesce(p.relname, c.relname), sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c"
        " LEFT JOIN pg_inherits h ON h.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = h.inhparent"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        " AND coalesce(p.relname, c.relname) IN ('predictions', 'outcomes', 'prediction_index', 'current_labels')"
        " GROUP BY 1").fetchall())


def _fresh(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        drop_store(conn, schema)
    migrate(url, schema)


def run_size(url: str, events: int, seed: int) -> dict[str, Any]:
    schema = "bench_store_size"
    _fresh(url, schema)
    n = events // 2
    started = time.perf_counter()
    with FeedbackStore(url, schema) as store:
        for preds, outs in _events(n, NOW - timedelta(days=6), timedelta(days=6), "s", seed):
            store.write_batch(preds, outs)
        seconds = time.perf_counter() - started
        with store.pool.connection() as conn:
            conn.execute("VACUUM ANALYZE")
            sizes = _sizes(conn)
    per_million = {k: v * 1_000_000 / events for k, v in sizes.items()}
    _log(f"size: {events:,} events in {seconds:.1f} s; bytes per million events {per_million}")
    return {"events": events, "write_seconds": seconds, "bytes": sizes, "bytes_per_million_events": per_million}


def _bulk_load(url: str, schema: str, n_predictions: int, start: datetime, span: timedelta, prefix: str,
               seed: int) -> float:
    """COPY predictions and outcomes, then their index rows and current labels by SQL (what write_batch would have
    made of them); returns the seconds."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    step_us = span / timedelta(microseconds=1) / max(n_predictions, 1)
    base = np.datetime64(start.replace(tzinfo=None), "us")
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        weeks = [start + timedelta(days=d) for d in range(span.days + 2)]
        ensure_partitions(conn, {"predictions": weeks, "outcomes": weeks})
        for lo in range(0, n_predictions, COPY_CHUNK):
            i = np.arange(lo, min(lo + COPY_CHUNK, n_predictions))
            at = base + (i * step_us).astype("timedelta64[us]")
            at_s = np.datetime_as_string(at, unit="us", timezone="UTC")
            seen_s = np.datetime_as_string(at + np.timedelta64(5, "m"), unit="us", timezone="UTC")
            x = np.round(rng.normal(size=(len(i), 3)), 3)
            label = (rng.random(len(i)) < 0.4).astype(int)
            preds = "".join(
                f'{prefix}{k}\tchurn\tv1\t{at_s[j]}\t{{"x0": {x[j, 0]}, "x1": {x[j, 1]}, "x2": {x[j, 2]}, '
                f'"plan": "pro"}}\t{k % 2}\t{{"region": "eu"}}\t4.0\n' for j, k in enumerate(i.tolist()))
            outs = "".join(f"{prefix}{k}\t{seen_s[j]}\t{label[j]}\tbench\n" for j, k in enumerate(i.tolist()))
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY predictions (prediction_id, model_name, model_version, predicted_at, features,"
                              " prediction, segment, latency_ms) FROM STDIN") as copy:
                    copy.write(preds)
                with cur.copy("COPY outcomes (prediction_id, observed_at, label, source) FROM STDIN") as copy:
                    copy.write(outs)
            if (lo // COPY_CHUNK) % 25 == 0:
                _log(f"  loaded {lo + len(i):,} of {n_predictions:,} predictions")
        conn.execute("INSERT INTO prediction_index (prediction_id, predicted_at) SELECT prediction_id, predicted_at"
                     " FROM predictions WHERE prediction_id LIKE %s ON CONFLICT DO NOTHING", (f"{prefix}%",))
        conn.execute("INSERT INTO current_labels (prediction_id, label, observed_at, source) SELECT prediction_id,"
                     " label, observed_at, source FROM outcomes WHERE prediction_id LIKE %s"
                     " ON CONFLICT (prediction_id) DO NOTHING", (f"{prefix}%",))
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def run_prune(url: str, weeks: int, rows: int, seed: int) -> dict[str, Any]:
    schema = "bench_store_prune"
    _fresh(url, schema)
    old = NOW - timedelta(weeks=60)
    old = old - timedelta(days=old.weekday(), hours=old.hour, minutes=old.minute, seconds=old.second)
    load_s = _bulk_load(url, schema, weeks * rows, old, timedelta(weeks=weeks), "old", seed)
    _bulk_load(url, schema, rows, NOW - timedelta(days=3), timedelta(days=3), "now", seed + 1)
    _log(f"prune: {weeks} weeks of {rows:,} predictions and outcomes loaded in {load_s:.0f} s")
    latencies: list[tuple[float, float]] = []  # (monotonic start, seconds) of each writer batch
    stop = threading.Event()
    writer_pid: list[int] = []

    def writer() -> None:
        with FeedbackStore(url, schema, max_size=1) as store:
            writer_pid.append(store.scalar("SELECT pg_backend_pid()"))
            for k, (preds, outs) in enumerate(_events(10**9, NOW - timedelta(hours=1), timedelta(days=365), "w",
                                                      seed + 2)):
                if stop.is_set():
                    return
                begun = time.monotonic()
                store.write_batch(preds[:50], outs[:50])
                latencies.append((begun, time.monotonic() - begun))
                time.sleep(0.02)
                if k > 10**6:
                    return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(5.0)
    waits = WaitSampler(url, writer_pid[0])
    waits.start()
    began = time.monotonic()
    retention = NOW - (old + timedelta(weeks=weeks)) - timedelta(days=1)
    result = prune(url, schema, retention=retention)
    ended = time.monotonic()
    time.sleep(2.0)
    stop.set()
    thread.join(timeout=30)
    waits.done.set()
    waits.join()
    before = [s * 1000 for t, s in latencies if t < began]
    during = [s * 1000 for t, s in latencies if began <= t <= ended]
    figures = {
        "weeks": weeks, "rows_per_week": rows, "dropped": result.dropped, "ids_cleared": result.ids_cleared,
        "prune_seconds": ended - began, "seconds_by_partition": result.seconds,
        "writer_ms_before": _summary(before), "writer_ms_during": _summary(during),
        "slow_batches": [waits.during(t, t + s, began) for t, s in latencies if s > SLOW_S],
        "server_during_prune": waits.tally(began, ended),
    }
    _log(f"prune: {json.dumps(figures, default=str)}")
    return figures


SLOW_S = 0.1  # a writer batch slower than this is a pause (the target: none during a prune)

WAITS_SQL = """
SELECT pid = %s, backend_type, coalesce(wait_event_type || ':' || wait_event, 'CPU'), state
FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (state IS DISTINCT FROM 'idle' OR pid = %s)
"""


class WaitSampler(threading.Thread):
    """What the server's processes wait on, every 5 ms (``pg_stat_activity``): the writer's backend apart, and
    every other busy process by its type (the prune's backend, autovacuum, the checkpointer, the WAL writer)."""

    def __init__(self, url: str, writer_pid: int) -> None:
        super().__init__(daemon=True)
        self.url, self.writer_pid = url, writer_pid
        self.samples: list[tuple[float, str, list[str]]] = []  # (monotonic, writer's wait, the others')
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.is_set():
                rows = conn.execute(WAITS_SQL, (self.writer_pid, self.writer_pid)).fetchall()
                mine = next((f"{w} ({st})" for me, _, w, st in rows if me), "?")
                others = [f"{kind}: {w}" for me, kind, w, st in rows if not me and w not in ("Activity:"
                          "CheckpointerMain", "Activity:WalWriterMain", "Activity:BgWriterHibernate",
                          "Activity:BgWriterMain", "Activity:AutoVacuumMain", "Activity:LogicalLauncherMain")]
                self.samples.append((time.monotonic(), mine, others))
                self.done.wait(0.005)

    def tally(self, start: float, end: float) -> dict[str, dict[str, int]]:
        inside = [(m, o) for t, m, o in self.samples if start <= t <= end]
        writer: dict[str, int] = {}
        others: dict[str, int] = {}
        for mine, rest in inside:
            writer[mine] = writer.get(mine, 0) + 1
            for other in rest:
                others[other] = others.get(other, 0) + 1
        return {"samples": {"n": len(inside)}, "writer": writer, "others": others}

    def during(self, start: float, end: float, origin: float) -> dict[str, Any]:
        return {"at_s": round(start - origin, 3), "ms": round(1000 * (end - start), 1), **self.tally(start, end)}


def _summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": statistics.median(ms), "p99": float(np.percentile(ms, 99)), "max": max(ms)}


def _throughput(url: str, schema: str, events: int, seed: int, prefix: str) -> float:
    batches = list(_events(events // 2, NOW - timedelta(hours=6), timedelta(hours=6), prefix, seed))
    with FeedbackStore(url, schema) as store:
        store.write_batch([], [])  # the pool open and this week's partitions made
        started = time.perf_counter()
        for preds, outs in batches:
            store.write_batch(preds, outs)
        return events / (time.perf_counter() - started)


def run_big(url: str, rows: int, events: int, repeat: int, seed: int) -> dict[str, Any]:
    big, empty = "bench_store_big", "bench_store_empty"
    _fresh(url, big)
    start = NOW - timedelta(weeks=52)
    load_s = _bulk_load(url, big, rows // 2, start, timedelta(weeks=52) - timedelta(days=1), "b", seed)
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={big}") as conn:
        stored = conn.execute("SELECT (SELECT count(*) FROM predictions) + (SELECT count(*) FROM outcomes)").fetchone()
        sizes = _sizes(conn)
    _log(f"big: {stored[0]:,} rows loaded in {load_s:.0f} s; sizes {sizes}")  # type: ignore[index]
    rates: dict[str, list[float]] = {"empty": [], "big": []}
    for r in range(repeat):
        for name in ("empty", "big") if r % 2 == 0 else ("big", "empty"):
            if name == "empty":
                _fresh(url, empty)
            rates[name].append(_throughput(url, big if name == "big" else empty, events, seed + 10 + r, f"t{r}{name}"))
            _log(f"big: run {r + 1} {name}: {rates[name][-1]:,.0f} events/s")
    ratio = statistics.median(rates["big"]) / statistics.median(rates["empty"])
    return {"rows": stored[0], "load_seconds": load_s, "bytes": sizes, "events": events,  # type: ignore[index]
            "events_per_s": rates, "ratio_big_to_empty": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of size,prune,big")
    parser.add_argument("--size-events", type=int, default=1_000_000)
    parser.add_argument("--prune-weeks", type=int, default=5)
    parser.add_argument("--prune-rows", type=int, default=200_000, help="predictions per pruned week")
    parser.add_argument("--big-rows", type=int, default=50_000_000)
    parser.add_argument("--throughput-events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"--parts: one or more of {', '.join(PARTS)}")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with database("pitstop-bench-store-") as url:
        results["machine"] = machine(url) | {"load_average": os.getloadavg()}
        _log(f"postgres {url}; {results['machine']}")
        if "size" in parts:
            results["size"] = run_size(url, args.size_events, args.seed)
        if "prune" in parts:
            results["prune"] = run_prune(url, args.prune_weeks, args.prune_rows, args.seed)
        if "big" in parts:
            results["big"] = run_big(url, args.big_rows, args.throughput_events, args.repeat, args.seed)
    results["seconds"] = time.perf_counter() - started
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
