"""Soak: millions of predictions and outcomes through one ingest worker with monitoring on; throughput over time,
the workers' memory at start and end, and every stored row and window checked exactly at the end.

Issue 19's target: the ingest worker's RSS grows at most 10 % over the run.

What it does (reusing ``bench/ingest.py``'s stack, events and checks):

* Starts a Tansu broker (memory storage) and a PostgreSQL server in a temporary folder, both on 127.0.0.1
  (PITSTOP_KAFKA_BOOTSTRAP and PITSTOP_DATABASE_URL, when both set, are used instead, with a fresh topic prefix
  and schema, removed at the end).
* Migrates a fresh schema and installs the churn model's reference profiles (``bench/monitoring.toml``: 3-minute
  windows, 25 ms of event time a prediction), so that the windows count every event from the first batch.
* Publishes ``--events`` events (``ingest.event_stream``: predictions and their outcomes, shuffled in blocks,
  10 % of the outcomes before their prediction, 5 % published twice) as ``PitstopProducer`` sends them (JSON
  arrays of 500 events), from a producer process of its own, before any worker runs: a backlog, so that what is
  timed is the worker and not the producer (``--live`` publishes while the worker runs instead).
* Starts one ingest worker (``python -m streams worker`` with ``PITSTOP_CONFIG``: it counts the windows as it
  writes) and one monitor worker beside it (``pitstop monitor-worker``: its rounds at their default interval, the
  drift and performance results, the retrain decisions), and samples both workers' RSS every 2 s and the stored
  rows every 10 s until every prediction is stored with its label.
* Checks the store exactly (``ingest.verify``: row counts, distinct ids, the label sum, no dead letter) and the
  windows against the rows (``ingest.verify_windows``).

Reported: the throughput over time (events stored a minute, from the rows' ``ingested_at``, predictions and
outcomes; the first and last minutes are partial); the worker's RSS at its start (ready, nothing consumed), at
10/25/50/75/100 % of the rows, its peak, and the growth from start and from 10 % (after the warm-up: the pool's
connections, Faust's buffers, the first partitions and windows) to the end; the monitor worker's RSS likewise;
the CPU of the workers, PostgreSQL and the broker; the load average. Progress to stderr, the report to stdout;
``--json`` writes every sample too.

Run from the repository root::

    .venv/bin/python bench/soak.py                       # 5,000,000 events, about 15 minutes
    .venv/bin/python bench/soak.py --events 200000       # a quick check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest as bench  # noqa: E402  (bench/ingest.py: the stack, the events and the checks)

from pitstop import stack  # noqa: E402

TARGET_RSS_GROWTH = 0.10
SAMPLE_S = 2.0
ROWS_EVERY_S = 10.0

# rows stored a minute by kind: the consumer takes the two topics' partitions at its own pace (in a backlog the
# outcomes, cheaper to write, went first), so the rate is read by kind as well as summed
THROUGHPUT_SQL = """
SELECT extract(epoch FROM date_trunc('minute', at))::float8 AS minute, count(*) FILTER (WHERE kind = 'p'),
       count(*) FILTER (WHERE kind = 'o')
FROM (SELECT ingested_at AS at, 'p' AS kind FROM predictions UNION ALL SELECT ingested_at, 'o' FROM outcomes) r
GROUP BY 1 ORDER BY 1
"""

# the outcome events stored (duplicates rejected by the join are not rows), per ingested minute, against the
# events consumed: the worker's rate in events is rows x events / rows over the run
ROWS_SQL = "SELECT (SELECT count(*) FROM predictions) + (SELECT count(*) FROM outcomes)"


class Sampler(threading.Thread):
    """Both workers' RSS (MiB) every ``SAMPLE_S`` and the stored rows every ``ROWS_EVERY_S``, in a thread."""

    def __init__(self, ctx: bench.Ctx, schema: str, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.ctx, self.schema, self.pids = ctx, schema, pids
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, dict[str, float]]] = []
        self.rows: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.ctx.connect(self.schema) as conn:
            next_rows = 0.0
            while not self.done.is_set():
                t = time.monotonic() - self.t0
                self.rss.append((t, {name: bench._rss_mb(pid) for name, pid in self.pids.items()}))
                if t >= next_rows:
                    self.rows.append((t, int(bench.scalar(conn, ROWS_SQL))))
                    next_rows = t + ROWS_EVERY_S
                self.done.wait(SAMPLE_S)

    def rss_at_rows(self, name: str, share: float, total_rows: int) -> float:
        """RSS when the stored rows reached ``share`` of ``total_rows`` (interpolated in time)."""
        rows_t = np.array([t for t, _ in self.rows])
        rows_n = np.array([n for _, n in self.rows], dtype=float)
        when = float(np.interp(share * total_rows, rows_n, rows_t))
        rss_t = np.array([t for t, _ in self.rss])
        return float(np.interp(when, rss_t, np.array([s[name] for _, s in self.rss])))


def run(args: argparse.Namespace, ctx: bench.Ctx) -> dict[str, Any]:
    topics, schema, app_id = ctx.names("soak")
    bench.ensure_topics(ctx, topics)
    monitor = bench.monitoring_config()
    bench._log("installing the reference profiles")
    bench.install_reference_profiles(ctx, schema, monitor, args.seed)
    n = int(args.events / (2 * (1 + bench.DUPLICATES)))
    out_path = str(ctx.state_dir / "soak-producer.json")
    producer = mp.get_context("spawn").Process(
        target=bench._bulk_producer, args=(ctx.bootstrap, topics.prefix, n, args.seed, out_path))
    producer.start()
    if not args.live:
        bench._log(f"publishing {n:,} predictions and their outcomes (a backlog)")
        producer.join()
        if producer.exitcode != 0:
            msg = f"the producer failed (exit {producer.exitcode})"
            raise RuntimeError(msg)
        bench._log(f"published in {json.loads(Path(out_path).read_text())['seconds']:.0f} s")
    env = {"PITSTOP_CONFIG": str(bench.MONITOR_CONFIG), **dict(kv.split("=", 1) for kv in args.worker_env)}
    worker, _, log_path = bench.start_worker(ctx, topics, schema, app_id, "soak", extra_env=env)
    monitor_worker = bench.start_monitor_worker(ctx, topics, schema, app_id, "soak", env)
    sampler = Sampler(ctx, schema, {"worker": worker.pid, "monitor": monitor_worker.pid})
    meter = bench.CpuMeter(ctx, worker.pid)
    monitor_cpu0 = bench._cpu_s(monitor_worker.pid, False)
    sampler.start()
    try:
        with ctx.connect(schema) as conn:
            last_progress, last_stored = time.monotonic(), -1
            while True:
                time.sleep(ROWS_EVERY_S)
                predictions, labels = conn.execute(
                    "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM current_labels)").fetchone()
                if predictions >= n and labels >= n and not producer.is_alive() and (
                        bench.scalar(conn, "SELECT count(label) FROM feedback") >= n):
                    break
                if predictions + labels != last_stored:
                    last_progress, last_stored = time.monotonic(), predictions + labels
                elif time.monotonic() - last_progress > 180 or not stack.is_ours(worker):
                    msg = (f"the worker stalled at {predictions:,} predictions and {labels:,} labels of {n:,}:\n"
                           f"{bench._tail(log_path)}")
                    raise RuntimeError(msg)
                bench._log(f"{predictions:,} predictions and {labels:,} labels of {n:,} stored; worker RSS "
                           f"{sampler.rss[-1][1]['worker']:.0f} MiB")
            seconds = time.monotonic() - sampler.t0
            cpu = meter.percent()
            cpu["monitor"] = round(100 * (bench._cpu_s(monitor_worker.pid, False) - monitor_cpu0) / seconds, 1)
            sampler.done.set()
            sampler.join()
            total_rows = int(bench.scalar(conn, ROWS_SQL))
            sampler.rows.append((seconds, total_rows))
            info = json.loads(Path(out_path).read_text())
            stats = bench.StreamStats(predictions=info["predictions"], events=info["events"],
                                      duplicates=info["duplicates"], label_sum=info["label_sum"])
            counts = bench.verify(conn, stats)
            windows = bench.verify_windows(conn, counts)
            minutes = conn.execute(THROUGHPUT_SQL).fetchall()
            monitor_rounds, windows_judged = conn.execute(
                "SELECT count(DISTINCT recorded_at), count(DISTINCT (model_version, window_start))"
                " FROM monitor_results").fetchone()
    finally:
        sampler.done.set()
        if producer.is_alive():
            producer.kill()
        bench.stop(ctx, worker)
        bench.stop(ctx, monitor_worker)
    events_per_row = info["events"] / total_rows
    per_minute = [(float(m), (int(p) + int(o)) * events_per_row / 60) for m, p, o in minutes]
    by_kind = [(float(m), int(p) / 60, int(o) / 60) for m, p, o in minutes]
    rss: dict[str, dict[str, float]] = {}
    for name in ("worker", "monitor"):
        at = {f"{int(q * 100)}%": sampler.rss_at_rows(name, q, total_rows) for q in (0.1, 0.25, 0.5, 0.75, 1.0)}
        start = sampler.rss[0][1][name]
        rss[name] = {"start": start, **at, "peak": max(s[name] for _, s in sampler.rss),
                     "growth_from_start": at["100%"] / start - 1, "growth_from_10%": at["100%"] / at["10%"] - 1}
    full = [r for _, r in per_minute[1:-1]]  # the first and last minutes are partial
    quarter = max(1, len(full) // 4)
    return {
        "events": info["events"],
        "predictions": n,
        "live": args.live,
        "producer_s": info["seconds"],
        "seconds": seconds,
        "events_per_s": info["events"] / seconds,
        "per_minute_events_per_s": per_minute,
        "per_minute_rows_per_s_by_kind": by_kind,
        "worker_env": env,
        "first_quarter_events_per_s": float(np.mean(full[:quarter])) if full else float("nan"),
        "last_quarter_events_per_s": float(np.mean(full[-quarter:])) if full else float("nan"),
        "rss_mb": rss,
        "cpu_percent": cpu,
        "monitor_rounds": monitor_rounds,
        "windows_judged": windows_judged,
        "counts": counts,
        "windows": windows,
        "samples": {"rss": sampler.rss, "rows": sampler.rows},
    }


def report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['nproc']} cpu ({m['cpu']}), {m['ram_gb']} GB, Python {m['python']}, "
          f"load avg at start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}")
    print(f"{r['events']:,} events ({r['predictions']:,} predictions and their outcomes, 5 % twice), "
          f"{'published while the worker ran' if r['live'] else 'a backlog published first'} "
          f"(producer {r['producer_s']:.0f} s); drained in {r['seconds']:.0f} s = {r['events_per_s']:,.0f} events/s")
    print(f"store exact: {r['counts']['exact']}; windows exact: {r['windows']['exact']} "
          f"({r['windows']['windows']} windows); the monitor judged {r['windows_judged']} of them "
          f"in {r['monitor_rounds']} transactions")
    print("events/s a minute: " + ", ".join(f"{v:,.0f}" for _, v in r["per_minute_events_per_s"]))
    print("predictions stored a second, a minute: " + ", ".join(f"{p:,.0f}" for _, p, _ in
                                                                  r["per_minute_rows_per_s_by_kind"]))
    print("outcomes stored a second, a minute: " + ", ".join(f"{o:,.0f}" for _, _, o in
                                                               r["per_minute_rows_per_s_by_kind"]))
    print(f"first quarter of the full minutes {r['first_quarter_events_per_s']:,.0f} events/s, "
          f"last quarter {r['last_quarter_events_per_s']:,.0f} "
          f"({r['last_quarter_events_per_s'] / r['first_quarter_events_per_s']:.2f}x)")
    for name, at in r["rss_mb"].items():
        print(f"{name} RSS MiB: start {at['start']:.0f}, at 10/25/50/75/100 % of the rows "
              f"{at['10%']:.0f} / {at['25%']:.0f} / {at['50%']:.0f} / {at['75%']:.0f} / {at['100%']:.0f}, "
              f"peak {at['peak']:.0f}; growth from start {at['growth_from_start']:+.1%}, "
              f"from 10 % {at['growth_from_10%']:+.1%}")
    growth = r["rss_mb"]["worker"]["growth_from_start"]
    print(f"target: the ingest worker's RSS growth at most {TARGET_RSS_GROWTH:.0%}: {growth:+.1%} from its start, "
          f"{'PASS' if growth <= TARGET_RSS_GROWTH else 'MISS'}")
    print("CPU %: " + ", ".join(f"{k} {v}" for k, v in r["cpu_percent"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5_000_000, help="events to stream (about 5 %% duplicates)")
    parser.add_argument("--live", action="store_true", help="publish while the worker runs, not before")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for both workers (a diagnostic: PITSTOP_BATCH_BYTES=4194304)")
    parser.add_argument("--json", type=Path, help="also write every figure and sample to this file")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary folder (the logs)")
    args = parser.parse_args(argv)
    ctx = bench.start_stack(args)
    bench._log(f"broker {ctx.bootstrap}, postgres {ctx.database_url}, state {ctx.state_dir}")
    try:
        result = {"machine": bench.machine(), **run(args, ctx)}
        result["machine"]["loadavg_end"] = os.getloadavg()
    finally:
        bench.stop_stack(ctx, keep=args.keep_state)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
