"""Ingest benchmark: Kafka -> Faust worker -> PostgreSQL, against references from the same run.

What it measures (see BENCHMARKS.md for the targets and the latest figures):

* Throughput. N predictions plus N outcomes (publish order shuffled in blocks, 10% of outcomes
  published before their prediction, 5% of events published twice) are preloaded onto fresh
  topics, once as batched messages (JSON arrays of 500 events, as ``PitstopProducer`` sends them)
  and once as single-event messages keyed by ``prediction_id``. Then one ingest worker
  (``python -m streams worker``) drains them until the ``feedback`` view shows every prediction
  with its final label (polled every 0.2 s). Joined events/s is every event consumed
  (predictions, outcomes, duplicates) over the sustained drain time, from the start of the
  worker's first write transaction to the last label visible; the rate from the worker's ready
  file (so with the consumer group start-up) is printed beside it. Row counts and the label sum
  are checked exactly.
* Reference 1, the bare agent (``bench/_bare_agent.py``): a Faust agent with the worker's Faust
  settings that only counts messages, over the same preloaded topics, in the worker's
  ``noack_take`` shape and as a plain ``async for``; sustained from its first count to its last.
* Reference 2, COPY-staged upsert: the same message values decoded in this process and written
  with ``FeedbackStore.write_batch`` in chunks of 5000 events into a fresh schema.
* Latency: a paced producer process (``PitstopProducer``, 100 events a message) offers 10k
  events/s for 30 s to a running worker; a poller asks Postgres every 20 ms which of the
  published, not yet seen prediction ids (and labels) are visible. Publish-to-visible p50/p99/max;
  the rows' ``ingested_at`` (transaction start) gives a lower bound beside it.
* Memory (``--memory-events``): that many events streamed through one worker while its RSS is
  sampled every 2 s; RSS at 0/25/50/75/100% of the events and the slope after 25%.
* Monitoring (``--monitor``): each throughput scenario's topics are drained again by workers
  with ``PITSTOP_CONFIG=bench/monitoring.toml`` (the churn model, 3-minute windows), each with a monitor worker
  beside it running its rounds at their default interval (`pitstop monitor-worker`, as `pitstop up` runs it),
  alternating with plain drains, ``--monitor-rounds`` of each in
  the order A B B A ... (A off, B on); the target is the median monitored rate over the median
  plain one. Before a monitored worker starts, its schema gets each version's reference profile,
  built from 5,000 predictions of a sample with another seed, so every event is counted from the
  first batch (left to itself the worker's monitor round builds the profile only once 5,000
  predictions are stored, then recounts). Afterwards the windows are checked exactly against the
  rows: the ``__rows__`` series of segment '*' sums to the distinct predictions, every feature,
  prediction and score series to the same, the label series and the performance aggregates' n to
  the labelled predictions, the detectors saw one error per label, and no label is left
  uncounted. The COPY reference is run a second time through a store that keeps the windows.
* Diagnostics, not targets: the latency run again with the worker's ``PITSTOP_FETCH_MAX_WAIT_MS``
  set to Faust's own 1500 ms (``--diag-fetch-wait-ms``, on by default), and the
  single-event drain with a larger ``PITSTOP_BATCH_MESSAGES`` (``--diag-batch-messages``).

It starts its own Tansu broker and PostgreSQL server in a temporary folder and stops them at the
end, unless PITSTOP_KAFKA_BOOTSTRAP and PITSTOP_DATABASE_URL are both set (then it uses those,
with fresh topic prefixes, schemas and app ids per scenario, and drops its schemas and deletes
its topics at the end). Everything listens on 127.0.0.1. Progress goes to stderr, the table to
stdout.

Run from the repository root::

    .venv/bin/python bench/ingest.py                       # N = 200,000, about 7 minutes
    .venv/bin/python bench/ingest.py --n 20000             # a quick check
    .venv/bin/python bench/ingest.py --only memory --memory-events 5000000   # about 4 minutes
    .venv/bin/python bench/ingest.py --diag-batch-messages 5000 --json /tmp/ingest.json
    .venv/bin/python bench/ingest.py --only batched --monitor --bare-modes "" --n 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from kafka import KafkaProducer
from psycopg import sql

from feedback.config import ModelConfig, MonitoringConfig, load_config
from feedback.monitoring.profile import LABEL, PREDICTION, ROWS, SCORE, ReferenceProfile, build_profile, category_key
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns
from feedback.store import FeedbackStore, drop_store, migrate
from pitstop import stack
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from schemas import (
    EventKind,
    OutcomeEvent,
    PredictionEvent,
    decode_message,
    encode_batch,
    encode_event,
)

BENCH_DIR = Path(__file__).resolve().parent
BARE_AGENT = BENCH_DIR / "_bare_agent.py"
MONITOR_CONFIG = BENCH_DIR / "monitoring.toml"

BATCH_EVENTS = 500  # events a batched message holds (PitstopProducer's default)
COPY_CHUNK_EVENTS = 5000  # events per write_batch in the COPY reference (the worker's default)
EARLY_OUTCOMES = 0.10  # share of outcomes published before their prediction
DUPLICATES = 0.05  # share of events published a second time

SCENARIOS = frozenset(("batched", "single", "latency", "memory"))

# targets from the issue
TARGET_BATCHED_EVENTS_S = 30_000.0
TARGET_BATCHED_VS_COPY = 0.5
TARGET_SINGLE_VS_BARE = 0.8
TARGET_P99_S = 1.0
TARGET_MEMORY_GROWTH = 0.10  # RSS at 100% within 10% of RSS at 25% (after warm-up)
TARGET_MONITORED_VS_PLAIN = 0.85  # monitoring on costs under 15% of the worker's throughput

# ---------------------------------------------------------------------------------------------
# the events

BASE_TIME = datetime(2025, 6, 1, tzinfo=UTC)
COUNTRIES = ("de", "fr", "us", "gb", "es", "it", "nl", "pl")
DEVICES = ("ios", "android", "web")


def prediction_id(index: int) -> str:
    """Zero-padded, so text order is index order (the latency poller relies on it)."""
    return f"p{index:010d}"


def _index(pid: str) -> int:
    return int(pid[1:])


@dataclass(slots=True)
class StreamStats:
    predictions: int = 0
    events: int = 0
    duplicates: int = 0
    label_sum: int = 0


def _pair(index: int, rng: random.Random) -> tuple[PredictionEvent, OutcomeEvent]:
    """One prediction of a churn model (8 numeric, 2 categorical features) and its outcome."""
    r = rng.random
    tenure = rng.randint(1, 120)
    calls = rng.randint(0, 9)
    days = rng.randint(0, 60)
    sessions = rng.randint(0, 40)
    device = DEVICES[int(r() * len(DEVICES))]
    features: dict[str, Any] = {
        "tenure_months": tenure,
        "monthly_spend": round(20 + 80 * r(), 2),
        "support_calls": calls,
        "days_since_login": days,
        "sessions_7d": sessions,
        "avg_session_min": round(abs(rng.gauss(12, 5)), 2),
        "discount_rate": round(0.3 * r(), 3),
        "balance": round(rng.gauss(150, 60), 2),
        "country": COUNTRIES[int(r() * len(COUNTRIES))],
        "device": device,
    }
    z = (
        -1.0
        + 0.25 * calls
        + 0.04 * days
        - 0.02 * tenure
        - 0.03 * sessions
        + (0.4 * (device == "web"))
    )
    p = 1 / (1 + math.exp(-z))
    predicted_at = BASE_TIME + timedelta(milliseconds=25 * index)
    pid = prediction_id(index)
    prediction = PredictionEvent(
        prediction_id=pid,
        model_name="churn",
        model_version="v8" if index % 5 == 0 else "v7",
        predicted_at=predicted_at,
        features=features,
        prediction=round(p, 4),
        score=round(z, 4),
        latency_ms=round(2 + abs(rng.gauss(0, 1.5)), 2),
    )
    outcome = OutcomeEvent(
        prediction_id=pid,
        label=1 if r() < p else 0,
        observed_at=predicted_at + timedelta(seconds=rng.randint(3600, 14 * 86400)),
        source="billing",
    )
    return prediction, outcome


def event_stream(
    n: int, seed: int, *, block: int = 2000, stats: StreamStats | None = None
) -> Iterator[PredictionEvent | OutcomeEvent]:
    """``n`` predictions and their outcomes in a deterministic, shuffled publish order.

    Publishing goes block by block (``block`` predictions each), each block shuffled. Block k
    holds the predictions of block k, the outcomes of block k-1 (published after their
    prediction), 10% of the outcomes of block k+1 (published before their prediction) and a
    second copy of 5% of the events of block k-1. Streams: nothing is held beyond three blocks.
    """
    stats = stats if stats is not None else StreamStats()
    rng = random.Random(seed)
    nblocks = -(-n // block)
    made: dict[int, tuple[list[PredictionEvent], list[OutcomeEvent], list[OutcomeEvent]]] = {}
    generated = 0

    def blk(k: int) -> tuple[list[PredictionEvent], list[OutcomeEvent], list[OutcomeEvent]]:
        nonlocal generated
        while generated <= k:
            j = generated
            generated += 1
            preds: list[PredictionEvent] = []
            late: list[OutcomeEvent] = []
            early: list[OutcomeEvent] = []
            for i in range(j * block, min(n, (j + 1) * block)):
                p, o = _pair(i, rng)
                preds.append(p)
                (early if rng.random() < EARLY_OUTCOMES else late).append(o)
                stats.label_sum += int(o.label)
            made[j] = (preds, late, early)
        return made[k]

    previous: list[PredictionEvent | OutcomeEvent] = []
    for k in range(-1, nblocks + 1):
        items: list[PredictionEvent | OutcomeEvent] = []
        if 0 <= k < nblocks:
            items.extend(blk(k)[0])
        if 0 <= k - 1 < nblocks:
            items.extend(blk(k - 1)[1])
        if 0 <= k + 1 < nblocks:
            items.extend(blk(k + 1)[2])
        fresh = list(items)
        dups = [e for e in previous if rng.random() < DUPLICATES]
        items.extend(dups)
        rng.shuffle(items)
        made.pop(k - 1, None)
        stats.predictions += len(blk(k)[0]) if 0 <= k < nblocks else 0
        stats.events += len(items)
        stats.duplicates += len(dups)
        previous = fresh
        yield from items


def encode_messages(
    events: Iterator[PredictionEvent | OutcomeEvent], topics: Topics, batch_size: int
) -> Iterator[tuple[str, bytes | None, bytes, int]]:
    """(topic, key, value, events) exactly as ``PitstopProducer`` would send them."""
    if batch_size == 1:
        for e in events:
            topic = topics.predictions if type(e) is PredictionEvent else topics.outcomes
            yield topic, e.prediction_id.encode(), encode_event(e), 1
        return
    preds: list[PredictionEvent] = []
    outs: list[OutcomeEvent] = []
    for e in events:
        if type(e) is PredictionEvent:
            preds.append(e)
            if len(preds) >= batch_size:
                yield topics.predictions, None, encode_batch(preds), len(preds)
                preds = []
        else:
            outs.append(e)  # type: ignore[arg-type]
            if len(outs) >= batch_size:
                yield topics.outcomes, None, encode_batch(outs), len(outs)
                outs = []
    if preds:
        yield topics.predictions, None, encode_batch(preds), len(preds)
    if outs:
        yield topics.outcomes, None, encode_batch(outs), len(outs)


@dataclass(slots=True)
class Content:
    """A preloaded topic pair and what it holds."""

    name: str
    topics: Topics
    messages: list[tuple[str, bytes | None, bytes]]
    stats: StreamStats
    publish_s: float = 0.0

    @property
    def events(self) -> int:
        return self.stats.events


# ---------------------------------------------------------------------------------------------
# the stack


@dataclass
class Ctx:
    bootstrap: str
    database_url: str
    state_dir: Path
    tag: str
    partitions: int
    external: bool
    broker: stack.ProcessRecord | None = None
    postgres: stack.ProcessRecord | None = None
    pgdata: Path | None = None
    started: list[stack.ProcessRecord] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    topic_names: list[str] = field(default_factory=list)
    workers: int = 0

    def names(self, scenario: str) -> tuple[Topics, str, str]:
        """Fresh topic prefix, schema and app id for one scenario."""
        key = f"{self.tag}_{scenario}"
        schema = f"bench_{key}".lower()
        self.schemas.append(schema)
        return Topics(prefix=f"bench.{key}."), schema, f"bench-{key}"

    def worker_env(self, topics: Topics, schema: str, app_id: str, ready: Path) -> dict[str, str]:
        return {
            "PITSTOP_KAFKA_BOOTSTRAP": self.bootstrap,
            "PITSTOP_DATABASE_URL": self.database_url,
            "PITSTOP_TOPIC_PREFIX": topics.prefix,
            "PITSTOP_DB_SCHEMA": schema,
            "PITSTOP_STATE_DIR": str(self.state_dir),
            "PITSTOP_APP_ID": app_id,
            "PITSTOP_READY_FILE": str(ready),
            "PITSTOP_PARTITIONS": str(self.partitions),
        }

    def connect(self, schema: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.database_url, autocommit=True, options=f"-c search_path={schema}"
        )


def start_stack(args: argparse.Namespace) -> Ctx:
    tag = f"{os.getpid() % 10000}{int(time.time()) % 100000}"
    state_dir = Path(tempfile.mkdtemp(prefix="pitstop-bench-"))
    bootstrap = os.environ.get("PITSTOP_KAFKA_BOOTSTRAP")
    database_url = os.environ.get("PITSTOP_DATABASE_URL")
    if bootstrap and database_url:
        return Ctx(bootstrap, database_url, state_dir, tag, args.partitions, external=True)
    ctx = Ctx("", "", state_dir, tag, args.partitions, external=False)
    try:
        ctx.broker = stack.start_broker(state_dir)
        ctx.pgdata = state_dir / "pgdata"
        ctx.postgres = stack.start_postgres(ctx.pgdata)
    except BaseException:
        stop_stack(ctx, keep=False)
        raise
    ctx.bootstrap = ctx.broker.address
    ctx.database_url = stack.postgres_url(ctx.postgres.address)
    return ctx


def set_pg_settings(ctx: Ctx, settings: list[str]) -> None:
    """``NAME=VALUE`` server parameters for every later connection (diagnostics only)."""
    if not settings:
        return
    if ctx.external:
        msg = "--diag-pg-set needs the bench's own PostgreSQL (PITSTOP_DATABASE_URL is set)"
        raise SystemExit(msg)
    with psycopg.connect(ctx.database_url, autocommit=True) as conn:
        for setting in settings:
            name, _, value = setting.partition("=")
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
        for setting in settings:
            name = setting.partition("=")[0]
            _log(f"postgres: {name} = {scalar(conn, f'SHOW {name}')}")  # type: ignore[misc]


def stop_stack(ctx: Ctx, *, keep: bool) -> None:
    for record in reversed(ctx.started):
        with contextlib.suppress(Exception):
            stack.stop_process(record)
    if ctx.external:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(ctx.database_url, autocommit=True) as conn,
        ):
            for schema in ctx.schemas:
                drop_store(conn, schema)
        with contextlib.suppress(Exception):
            from kafka.admin import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap, request_timeout_ms=15000)
            admin.delete_topics(ctx.topic_names)
            admin.close()
    if ctx.pgdata is not None:
        with contextlib.suppress(Exception):
            stack.stop_postgres(ctx.pgdata)
    if ctx.broker is not None:
        with contextlib.suppress(Exception):
            stack.stop_process(ctx.broker)
    if not keep:
        shutil.rmtree(ctx.state_dir, ignore_errors=True)


def ensure_topics(ctx: Ctx, topics: Topics) -> None:
    stack.ensure_topics(ctx.bootstrap, topics.all(), ctx.partitions)
    ctx.topic_names.extend(topics.all())


class CpuMeter:
    """CPU seconds of the worker, the Postgres server (all backends) and the broker."""

    def __init__(self, ctx: Ctx, worker_pid: int) -> None:
        self.procs: dict[str, Callable[[], float]] = {"worker": lambda: _cpu_s(worker_pid, False)}
        if ctx.postgres is not None:
            pg_pid = ctx.postgres.pid
            self.procs["postgres"] = lambda: _cpu_s(pg_pid, True)
        if ctx.broker is not None:
            broker_pid = ctx.broker.pid
            self.procs["broker"] = lambda: _cpu_s(broker_pid, False)
        self.t0 = time.monotonic()
        self.start = {k: f() for k, f in self.procs.items()}

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {k: round(100 * (f() - self.start[k]) / wall, 1) for k, f in self.procs.items()}


def _cpu_s(pid: int, children: bool) -> float:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if children else [proc]
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _stack_dump(pid: int) -> str:
    """Where a stuck process is (py-spy, when installed), for the error message."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return "(install py-spy for a stack dump)"
    done = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, check=False,
                          timeout=60)
    return done.stdout or done.stderr


def wait_ready(
    ready: Path, record: stack.ProcessRecord, log_path: Path, timeout_s: float = 120
) -> float:
    """Wall-clock time the process wrote its ready file (its mtime)."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if not stack.is_ours(record) or time.monotonic() > deadline:
            what = f"{record.name} (pid {record.pid})"
            msg = f"{what} was not ready in {timeout_s:.0f} s:\n{_tail(log_path)}\n{_stack_dump(record.pid)}"
            raise RuntimeError(msg)
        time.sleep(0.02)
    return ready.stat().st_mtime


def start_worker(
    ctx: Ctx,
    topics: Topics,
    schema: str,
    app_id: str,
    name: str,
    fetch_wait_ms: int = 0,
    extra_env: dict[str, str] | None = None,
) -> tuple[stack.ProcessRecord, float, Path]:
    """The product worker (``python -m streams worker``); ``fetch_wait_ms`` sets its
    PITSTOP_FETCH_MAX_WAIT_MS (0 = the product default)."""
    ready = ctx.state_dir / f"ready-{name}"
    log_path = ctx.state_dir / f"worker-{name}.log"
    ctx.workers += 1
    env = {**ctx.worker_env(topics, schema, app_id, ready), **(extra_env or {})}
    if fetch_wait_ms:
        env["PITSTOP_FETCH_MAX_WAIT_MS"] = str(fetch_wait_ms)
    record = stack.start_worker(env, log_path, 100 + ctx.workers)
    ctx.started.append(record)
    return record, wait_ready(ready, record, log_path), log_path


def start_monitor_worker(ctx: Ctx, topics: Topics, schema: str, app_id: str, name: str,
                         extra_env: dict[str, str]) -> stack.ProcessRecord:
    """The product's monitor worker (``pitstop monitor-worker``: the monitor rounds at their default interval and
    the retrain decisions) beside a monitored worker, on the same machine, as `pitstop up` runs them."""
    ready = ctx.state_dir / f"ready-monitor-{name}"
    log_path = ctx.state_dir / f"monitor-{name}.log"
    env = {**ctx.worker_env(topics, schema, app_id, ready), **extra_env}
    record = stack.start_monitor_worker(env, log_path, 100 + ctx.workers)
    ctx.started.append(record)
    return record


def stop(ctx: Ctx, record: stack.ProcessRecord) -> None:
    stack.stop_process(record)
    with contextlib.suppress(ValueError):
        ctx.started.remove(record)


# ---------------------------------------------------------------------------------------------
# throughput: preload, then drain


def preload(ctx: Ctx, name: str, n: int, seed: int, batch_size: int, topics: Topics) -> Content:
    stats = StreamStats()
    messages = [
        (t, k, v)
        for t, k, v, _ in encode_messages(event_stream(n, seed, stats=stats), topics, batch_size)
    ]
    ensure_topics(ctx, topics)
    producer = KafkaProducer(
        bootstrap_servers=ctx.bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=1024 * 1024,
        max_request_size=16 * 1024 * 1024,
        client_id="pitstop-bench-preload",
    )
    t0 = time.perf_counter()
    try:
        futures = [producer.send(t, key=k, value=v) for t, k, v in messages]
        producer.flush(timeout=300)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()
    return Content(name, topics, messages, stats, time.perf_counter() - t0)


def run_bare(ctx: Ctx, content: Content, mode: str) -> dict[str, Any]:
    name = f"bare_{content.name}_{mode}"
    app_id = f"bench-{ctx.tag}-{name}"
    ready = ctx.state_dir / f"ready-{name}"
    done = ctx.state_dir / f"done-{name}.json"
    log_path = ctx.state_dir / f"{name}.log"
    marker = f"--bench-bare={ctx.tag}-{name}"
    env = {
        **os.environ,
        "BENCH_BOOTSTRAP": ctx.bootstrap,
        "BENCH_TOPICS": f"{content.topics.predictions},{content.topics.outcomes}",
        "BENCH_APP_ID": app_id,
        "BENCH_STATE_DIR": str(ctx.state_dir),
        "BENCH_READY_FILE": str(ready),
        "BENCH_DONE_FILE": str(done),
        "BENCH_EXPECTED_MESSAGES": str(len(content.messages)),
        "BENCH_MODE": mode,
        "BENCH_PARTITIONS": str(ctx.partitions),
    }
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(BARE_AGENT), marker],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = stack.ProcessRecord.of(proc.pid, name, marker)
    ctx.started.append(record)
    try:
        t_ready = wait_ready(ready, record, log_path)
        meter = CpuMeter(ctx, proc.pid)
        deadline = time.monotonic() + 600
        while not done.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                msg = f"{name} did not count {len(content.messages)} messages:\n{_tail(log_path)}"
                raise RuntimeError(msg)
            time.sleep(0.05)
        cpu = meter.percent()
        result = json.loads(done.read_text())
    finally:
        stop(ctx, record)
    # Sustained: from the first count to the last, over the messages counted after the first
    # (the worker's figure likewise starts at its first write). Ready-to-last kept for reference.
    messages = result["messages"]
    seconds = max(result["last"] - result["first"], 1e-6)
    rate = (messages - result["first_count"]) / seconds if messages > result["first_count"] else 0.0
    # the 10-90 % window (issue 19): the messages counted between the first counts past 10 % and past 90 %
    rate_10_90 = (result["n90"] - result["n10"]) / max(result["t90"] - result["t10"], 1e-6)
    return {
        "mode": mode,
        "messages": messages,
        "events": content.events,
        "seconds": seconds,
        "msgs_per_s": rate,
        "events_per_s": rate * content.events / messages,
        "events_per_s_10_90": rate_10_90 * content.events / messages,
        "ready_to_last_s": result["last"] - t_ready,
        "ready_to_last_msgs_per_s": messages / (result["last"] - t_ready),
        "ready_to_first_s": result["first"] - t_ready,
        "cpu_percent": cpu,
    }


COUNTS_SQL = """
SELECT (SELECT count(*) FROM predictions),
       (SELECT count(DISTINCT prediction_id) FROM predictions),
       (SELECT count(*) FROM outcomes),
       (SELECT count(label) FROM feedback),
       (SELECT coalesce(sum(label_value), 0)::bigint FROM feedback),
       (SELECT count(*) FROM dead_letters)
"""


def scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def verify(conn: psycopg.Connection[Any], stats: StreamStats) -> dict[str, Any]:
    row = conn.execute(COUNTS_SQL).fetchone()
    assert row is not None
    counts = dict(
        zip(
            ("predictions", "distinct_ids", "outcomes", "labels", "label_sum", "dead_letters"),
            row,
            strict=True,
        )
    )
    expected = {
        "predictions": stats.predictions,
        "distinct_ids": stats.predictions,
        "outcomes": stats.predictions,
        "labels": stats.predictions,
        "label_sum": stats.label_sum,
        "dead_letters": 0,
    }
    counts["exact"] = all(counts[k] == v for k, v in expected.items())
    counts["expected"] = expected
    return counts


# ---------------------------------------------------------------------------------------------
# monitoring: the reference profiles installed up front, the windows checked exactly

REFERENCE_SEED_OFFSET = 1000  # the profiles' sample is generated with seed + this


def monitoring_config() -> MonitoringConfig:
    return load_config(MONITOR_CONFIG)


def _positive_score(model: ModelConfig, p: PredictionEvent) -> Any:
    """The positive-class probability the monitoring counts, as feedback.monitoring.windows reads it."""
    if model.score == "probabilities" and p.probabilities is not None:
        return p.probabilities.get(category_key(model.positive_class))
    return p.score if model.score == "score" else None


def reference_profiles(config: MonitoringConfig, seed: int) -> list[ReferenceProfile]:
    """Each model version's profile from ``reference_rows`` predictions (with their labels) of a
    sample generated with another seed than the benchmark's, built as the monitor round builds
    one from the first stored predictions (``profile_from_first_predictions``)."""
    model = config.model("churn")
    assert model is not None, f"{MONITOR_CONFIG} does not declare the model 'churn'"
    rng = random.Random(seed)
    sample: dict[str, list[tuple[PredictionEvent, OutcomeEvent]]] = defaultdict(list)
    versions = {"v7", "v8"}  # as _pair assigns them
    i = 0
    while any(len(sample[v]) < model.reference_rows for v in versions):
        pair = _pair(i, rng)
        i += 1
        rows = sample[pair[0].model_version]
        if len(rows) < model.reference_rows:
            rows.append(pair)
    outcome = "categorical" if model.task == "classification" else "numeric"
    kinds = {**model.features, PREDICTION: outcome, LABEL: outcome, SCORE: "numeric"}
    profiles = []
    for version, rows in sorted(sample.items()):
        columns = reference_columns(
            model,
            features=[p.features for p, _ in rows],
            predictions=[p.prediction for p, _ in rows],
            scores=[_positive_score(model, p) for p, _ in rows],
            labels=[o.label for _, o in rows],
        )
        source = f"bench sample, seed {seed}"
        profiles.append(build_profile(model.name, version, columns, kinds, source=source))  # type: ignore[arg-type]
    return profiles


def install_reference_profiles(ctx: Ctx, schema: str, config: MonitoringConfig, seed: int) -> None:
    """Migrate ``schema`` and install the profiles, so the windows count from the first batch
    (the worker's monitor round would build them only after ``reference_rows`` predictions)."""
    migrate(ctx.database_url, schema)
    updater = WindowUpdater(config)
    with (
        FeedbackStore(ctx.database_url, schema, max_size=1, windows=updater) as store,
        store.pool.connection() as conn,
    ):
        for profile in reference_profiles(config, seed + REFERENCE_SEED_OFFSET):
            install_profile(conn, updater, profile)


WINDOW_SERIES_SQL = """
SELECT series, sum(x)::bigint FROM window_counts, unnest(counts) AS x
WHERE segment = '*' GROUP BY series ORDER BY series
"""

WINDOW_TOTALS_SQL = """
SELECT (SELECT count(DISTINCT (model_version, window_start)) FROM window_counts WHERE segment = '*'),
       (SELECT coalesce(sum((stats->>'n')::bigint), 0)::bigint FROM window_performance WHERE segment = '*'),
       (SELECT coalesce(sum(n_updates), 0)::bigint FROM detector_state),
       (SELECT count(*) FROM predictions p JOIN current_labels c USING (prediction_id)
        WHERE c.counted_label IS DISTINCT FROM c.label)
"""


def verify_windows(conn: psycopg.Connection[Any], counts: dict[str, Any]) -> dict[str, Any]:
    """The accumulators against the rows (segment '*'): the __rows__ series sums to the distinct
    predictions, every other series but the label to the same, the label series and the
    performance aggregates' n to the labelled predictions; the detectors saw one error per label
    (this data has no label corrections) and no stored prediction has a label left uncounted."""
    series = dict(conn.execute(WINDOW_SERIES_SQL).fetchall())  # type: ignore[arg-type]
    windows, stats_n, detector_updates, uncounted = conn.execute(WINDOW_TOTALS_SQL).fetchone()  # type: ignore[misc]
    rows, labelled = counts["distinct_ids"], counts["labels"]
    others = {k: v for k, v in series.items() if k not in (ROWS, LABEL)}
    checks = {
        "rows_series": series.get(ROWS, 0) == rows,
        "feature_series": bool(others) and all(v == rows for v in others.values()),
        "label_series": series.get(LABEL, 0) == labelled,
        "stats_n": stats_n == labelled,
        "detector_updates": detector_updates == labelled,
        "uncounted": uncounted == 0,
    }
    return {
        "windows": windows,
        "rows_series": series.get(ROWS, 0),
        "series_sums": series,
        "stats_n": stats_n,
        "detector_updates": detector_updates,
        "uncounted": uncounted,
        "expected": {"rows": rows, "labelled": labelled},
        "checks": checks,
        "exact": all(checks.values()),
    }


def run_worker_drain(
    ctx: Ctx,
    content: Content,
    extra_env: dict[str, str] | None = None,
    suffix: str = "",
    monitor: MonitoringConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Start a worker over preloaded topics; time ready -> every prediction has its label.

    With ``monitor`` the worker counts the monitored model's windows (PITSTOP_CONFIG=bench/monitoring.toml) and
    a monitor worker runs its rounds beside it at the default interval; the schema has the reference profiles
    before they start, and the windows are checked exactly at the end."""
    name = f"{content.name}{suffix}"
    _, schema, app_id = ctx.names(f"w_{name}")
    n = content.stats.predictions
    env = dict(extra_env or {})
    if monitor is not None:
        install_reference_profiles(ctx, schema, monitor, seed)
        env["PITSTOP_CONFIG"] = monitor.path
    record, t_ready, log_path = start_worker(ctx, content.topics, schema, app_id, name, extra_env=env)
    monitor_worker = start_monitor_worker(ctx, content.topics, schema, app_id, name, env) if monitor else None
    meter = CpuMeter(ctx, record.pid)
    rss_peak = rss_start = _rss_mb(record.pid)
    polls = 0
    try:
        with ctx.connect(schema) as conn:
            last_progress, last_count = time.monotonic(), -1
            while True:
                time.sleep(0.2)
                polls += 1
                rss_peak = max(rss_peak, _rss_mb(record.pid))
                labels = scalar(conn, "SELECT count(*) FROM current_labels")
                if labels >= n:
                    preds = scalar(conn, "SELECT count(*) FROM predictions")
                    if preds >= n:
                        joined = scalar(conn, "SELECT count(label) FROM feedback")
                        if joined >= n:
                            t_done = time.time()
                            break
                if labels != last_count:
                    last_progress, last_count = time.monotonic(), labels
                elif time.monotonic() - last_progress > 120 or not stack.is_ours(record):
                    msg = f"worker stalled at {labels}/{n} labels:\n{_tail(log_path)}"
                    raise RuntimeError(msg)
            cpu = meter.percent()
            counts = verify(conn, content.stats)
            windows = verify_windows(conn, counts) if monitor is not None else None
            first, last = conn.execute(
                "SELECT extract(epoch FROM min(ingested_at))::float8,"
                " extract(epoch FROM max(ingested_at))::float8 FROM predictions"
            ).fetchone()  # type: ignore[misc]
            # the 10-90 % window (issue 19): the stored rows' transaction starts, predictions and outcomes alike;
            # the worker's start-up stall (3-7 s on Tansu) and the last transaction's tail are left out
            t10, t90 = conn.execute(
                "SELECT extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY at))::float8,"
                " extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY at))::float8"
                " FROM (SELECT ingested_at AS at FROM predictions UNION ALL SELECT ingested_at FROM outcomes) r"
            ).fetchone()  # type: ignore[misc]
    finally:
        stop(ctx, record)
        if monitor_worker is not None:
            stop(ctx, monitor_worker)
    # Sustained: from the start of the first write transaction (so not the consumer group's
    # start-up, which on Tansu now and then takes seconds) to every label visible.
    seconds = t_done - first
    return {
        "events": content.events,
        "messages": len(content.messages),
        "seconds": seconds,
        "events_per_s": content.events / seconds,
        "events_per_s_10_90": 0.8 * content.events / max(t90 - t10, 1e-6),
        "msgs_per_s": len(content.messages) / seconds,
        "ready_to_done_s": t_done - t_ready,
        "ready_to_done_events_per_s": content.events / (t_done - t_ready),
        "ready_to_first_write_s": first - t_ready,
        "last_write_start_to_done_s": t_done - last,
        "cpu_percent": cpu,
        "rss_start_mb": rss_start,
        "rss_peak_mb": rss_peak,
        "poll_interval_s": 0.2,
        "counts": counts,
        "monitor": monitor is not None,
        "windows": windows,
    }


def run_copy_reference(
    ctx: Ctx, content: Content, monitor: MonitoringConfig | None = None, seed: int = 0
) -> dict[str, Any]:
    """Decode the same message values here and write them with FeedbackStore.write_batch; with
    ``monitor``, through a store that keeps the windows (profiles installed first)."""
    _, schema, _ = ctx.names(f"copy_{content.name}{'_mon' if monitor is not None else ''}")
    if monitor is not None:
        install_reference_profiles(ctx, schema, monitor, seed)
    else:
        migrate(ctx.database_url, schema)
    kinds = {
        content.topics.predictions: EventKind.PREDICTION,
        content.topics.outcomes: EventKind.OUTCOME,
    }
    now = datetime.now(UTC)
    decode_s = write_s = 0.0
    windows = WindowUpdater(monitor) if monitor is not None else None
    store = FeedbackStore(ctx.database_url, schema, max_size=1, windows=windows).open()
    try:
        preds: list[PredictionEvent] = []
        outs: list[OutcomeEvent] = []
        chunks = 0

        def flush() -> None:
            nonlocal write_s, chunks, preds, outs
            t = time.perf_counter()
            store.write_batch(preds, outs)
            write_s += time.perf_counter() - t
            chunks += 1
            preds, outs = [], []

        for topic, _key, value in content.messages:
            t = time.perf_counter()
            decoded = decode_message(kinds[topic], value, now=now)
            for e in decoded.events:
                (preds if type(e) is PredictionEvent else outs).append(e)
            decode_s += time.perf_counter() - t
            if len(preds) + len(outs) >= COPY_CHUNK_EVENTS:
                flush()
        if preds or outs:
            flush()
        with ctx.connect(schema) as conn:
            counts = verify(conn, content.stats)
            window_check = verify_windows(conn, counts) if monitor is not None else None
    finally:
        store.close()
    return {
        "events": content.events,
        "chunks": chunks,
        "decode_s": decode_s,
        "write_s": write_s,
        "write_events_per_s": content.events / write_s,
        "decode_write_events_per_s": content.events / (decode_s + write_s),
        "decode_events_per_s": content.events / decode_s,
        "counts": counts,
        "monitor": monitor is not None,
        "windows": window_check,
    }


# ---------------------------------------------------------------------------------------------
# latency: paced producer (a process of its own) and a poller here


def _paced_producer(
    bootstrap: str,
    prefix: str,
    n: int,
    seed: int,
    rate: float,
    batch_size: int,
    hi_pred: Any,
    hi_out: Any,
    out_path: str,
) -> None:
    pub_pred = np.full(n, np.nan)
    pub_out = np.full(n, np.nan)
    stats = StreamStats()
    producer = PitstopProducer(bootstrap, topics=Topics(prefix=prefix), batch_size=batch_size)
    t0 = time.time()
    k = 0
    for k, event in enumerate(event_stream(n, seed, block=200, stats=stats)):
        due = t0 + k / rate
        now = time.time()
        if due - now > 0.002:
            time.sleep(due - now)
            now = time.time()
        i = _index(event.prediction_id)
        if type(event) is PredictionEvent:
            if math.isnan(pub_pred[i]):
                pub_pred[i] = now
            producer.publish(event)
            if i > hi_pred.value:
                hi_pred.value = i
        else:
            if math.isnan(pub_out[i]):
                pub_out[i] = now
            producer.publish(event)
            if i > hi_out.value:
                hi_out.value = i
    producer.close()
    elapsed = time.time() - t0
    np.savez(out_path, pub_pred=pub_pred, pub_out=pub_out)
    Path(out_path + ".json").write_text(
        json.dumps(
            {
                "events": stats.events,
                "predictions": stats.predictions,
                "duplicates": stats.duplicates,
                "label_sum": stats.label_sum,
                "seconds": elapsed,
                "offered_events_per_s": (k + 1) / elapsed,
                "messages": producer.messages_sent,
            }
        )
    )


def _poll(
    conn: psycopg.Connection[Any], query: str, seen: np.ndarray, lo: int, hi: int, cap: int = 20000
) -> int:
    """Mark the ids in [lo, hi] that became visible; returns the new lowest unseen index."""
    unseen = np.isnan(seen[lo : hi + 1])
    first = int(np.argmax(unseen)) if unseen.any() else hi + 1 - lo
    lo += first
    candidates = lo + np.flatnonzero(unseen[first:])[:cap]
    if candidates.size:
        ids = [prediction_id(int(i)) for i in candidates]
        t = time.time()  # the snapshot is taken after this: a row seen was visible by then
        for (pid,) in conn.execute(query, (ids,), prepare=True):
            seen[_index(pid)] = t
    return lo


def _percentiles(values: np.ndarray) -> dict[str, float]:
    v = values[~np.isnan(values)]
    if not v.size:
        return {"n": 0}
    return {
        "n": int(v.size),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "min": float(v.min()),
    }


def run_latency(
    ctx: Ctx,
    rate: float,
    seconds: float,
    seed: int,
    interval_s: float = 0.02,
    batch_size: int = 100,
    fetch_wait_ms: int = 0,
) -> dict[str, Any]:
    name = f"latency_fw{fetch_wait_ms}" if fetch_wait_ms else "latency"
    topics, schema, app_id = ctx.names(name)
    ensure_topics(ctx, topics)
    n = int(rate * seconds / (2 * (1 + DUPLICATES)))
    record, _, log_path = start_worker(ctx, topics, schema, app_id, name, fetch_wait_ms)
    spawn = mp.get_context("spawn")
    hi_pred, hi_out = spawn.RawValue("q", -1), spawn.RawValue("q", -1)
    out_path = str(ctx.state_dir / f"{name}-publish")
    producer = spawn.Process(
        target=_paced_producer,
        args=(ctx.bootstrap, topics.prefix, n, seed, rate, batch_size, hi_pred, hi_out, out_path),
    )
    seen_pred = np.full(n, np.nan)
    seen_label = np.full(n, np.nan)
    lo_p = lo_l = 0
    poll_times: list[float] = []
    rss: list[float] = []
    q_pred = "SELECT prediction_id FROM predictions WHERE prediction_id = ANY(%s::text[])"
    q_label = "SELECT prediction_id FROM current_labels WHERE prediction_id = ANY(%s::text[])"
    try:
        with ctx.connect(schema) as conn:
            producer.start()
            meter = CpuMeter(ctx, record.pid)
            deadline = None
            next_tick = time.monotonic()
            while True:
                t = time.perf_counter()
                lo_p = _poll(conn, q_pred, seen_pred, lo_p, hi_pred.value)
                lo_l = _poll(conn, q_label, seen_label, lo_l, hi_out.value)
                poll_times.append(time.perf_counter() - t)
                if len(poll_times) % 100 == 0:
                    rss.append(_rss_mb(record.pid))
                if not producer.is_alive():
                    if deadline is None:
                        cpu = meter.percent()
                        deadline = time.monotonic() + 60
                    if lo_p >= n and lo_l >= n:
                        break
                    if time.monotonic() > deadline:
                        seen = f"{lo_p}/{n} predictions seen after 60 s"
                        msg = f"latency run: {seen}:\n{_tail(log_path)}"
                        raise RuntimeError(msg)
                next_tick += interval_s
                time.sleep(max(0.0, next_tick - time.monotonic()))
            if producer.exitcode != 0:
                msg = f"the paced producer exited with {producer.exitcode}"
                raise RuntimeError(msg)
            info = json.loads(Path(out_path + ".json").read_text())
            stats = StreamStats(
                predictions=info["predictions"],
                events=info["events"],
                duplicates=info["duplicates"],
                label_sum=info["label_sum"],
            )
            counts = verify(conn, stats)
            ingested = np.full(n, np.nan)
            labeled = np.full(n, np.nan)
            for pid, ts in conn.execute(
                "SELECT prediction_id, extract(epoch FROM ingested_at)::float8 FROM predictions"
            ):
                ingested[_index(pid)] = ts
            for pid, ts in conn.execute(
                "SELECT prediction_id, extract(epoch FROM updated_at)::float8 FROM current_labels"
            ):
                labeled[_index(pid)] = ts
    finally:
        if producer.is_alive():
            producer.kill()
        stop(ctx, record)
    published = np.load(out_path + ".npz")
    pub_pred, pub_out = published["pub_pred"], published["pub_out"]
    joined_pub = np.fmax(pub_pred, pub_out)
    return {
        "fetch_wait_ms": fetch_wait_ms or 1500,
        "offered_events_per_s": info["offered_events_per_s"],
        "events": info["events"],
        "producer_messages": info["messages"],
        "producer_batch_events": batch_size,
        "seconds": info["seconds"],
        "poll_interval_s": interval_s,
        "poll_query_s": _percentiles(np.array(poll_times)),
        "prediction_visible_s": _percentiles(seen_pred - pub_pred),
        "label_joined_s": _percentiles(np.fmax(seen_pred, seen_label) - joined_pub),
        "prediction_txn_start_s": _percentiles(ingested - pub_pred),
        "label_txn_start_s": _percentiles(np.fmax(ingested, labeled) - joined_pub),
        "cpu_percent": cpu,
        "rss_mb": rss,
        "counts": counts,
    }


# ---------------------------------------------------------------------------------------------
# memory


def _bulk_producer(bootstrap: str, prefix: str, n: int, seed: int, out_path: str) -> None:
    stats = StreamStats()
    t0 = time.time()
    with PitstopProducer(
        bootstrap, topics=Topics(prefix=prefix), batch_size=BATCH_EVENTS
    ) as producer:
        for k, event in enumerate(event_stream(n, seed, stats=stats)):
            producer.publish(event)
            if k % 200_000 == 199_999:
                producer.flush()  # bounds the futures held and reports failures early
    Path(out_path).write_text(
        json.dumps(
            {
                "events": stats.events,
                "predictions": stats.predictions,
                "duplicates": stats.duplicates,
                "label_sum": stats.label_sum,
                "seconds": time.time() - t0,
            }
        )
    )


# the tables are partitioned by week (migration 022): the counters are the partitions'
PROGRESS_SQL = """
SELECT coalesce(sum(s.n_tup_ins), 0)::bigint FROM pg_stat_user_tables s JOIN pg_inherits i ON i.inhrelid = s.relid
WHERE i.inhparent IN ('predictions'::regclass, 'outcomes'::regclass)
"""


# rows of predictions plus rows of current_labels: 2 n when every prediction has its label
EXACT_ROWS_SQL = "SELECT (SELECT count(*) FROM predictions) + (SELECT count(*) FROM current_labels)"


def run_memory(ctx: Ctx, events: int, seed: int, sample_s: float = 2.0) -> dict[str, Any]:
    topics, schema, app_id = ctx.names("memory")
    ensure_topics(ctx, topics)
    n = int(events / (2 * (1 + DUPLICATES)))
    record, _, log_path = start_worker(ctx, topics, schema, app_id, "memory")
    out_path = str(ctx.state_dir / "memory-producer.json")
    producer = mp.get_context("spawn").Process(
        target=_bulk_producer, args=(ctx.bootstrap, topics.prefix, n, seed, out_path)
    )
    samples: list[
        tuple[float, float, int, float]
    ] = []  # (t, worker rss MB, rows inserted, broker MB)
    broker_pid = ctx.broker.pid if ctx.broker else None
    try:
        with ctx.connect(schema) as conn:
            rss0 = _rss_mb(record.pid)
            t0 = time.monotonic()
            samples.append((0.0, rss0, 0, _rss_mb(broker_pid) if broker_pid else float("nan")))
            producer.start()
            meter = CpuMeter(ctx, record.pid)
            last_progress, last_rows = time.monotonic(), -1
            while True:
                time.sleep(sample_s)
                if producer.is_alive():
                    # cheap, but the server publishes these counters late (up to 10 s when idle)
                    rows = scalar(conn, PROGRESS_SQL)
                else:
                    rows = scalar(conn, EXACT_ROWS_SQL)
                samples.append(
                    (
                        time.monotonic() - t0,
                        _rss_mb(record.pid),
                        rows,
                        _rss_mb(broker_pid) if broker_pid else float("nan"),
                    )
                )
                if rows >= 2 * n and not producer.is_alive():
                    break
                if rows != last_rows:
                    last_progress, last_rows = time.monotonic(), rows
                elif time.monotonic() - last_progress > 180 or not stack.is_ours(record):
                    msg = f"memory run stalled at {rows}/{2 * n} rows:\n{_tail(log_path)}"
                    raise RuntimeError(msg)
            cpu = meter.percent()
            elapsed = time.monotonic() - t0
            info = json.loads(Path(out_path).read_text())
            stats = StreamStats(
                predictions=info["predictions"],
                events=info["events"],
                duplicates=info["duplicates"],
                label_sum=info["label_sum"],
            )
            counts = verify(conn, stats)
    finally:
        if producer.is_alive():
            producer.kill()
        stop(ctx, record)
    rss = np.array([s[1] for s in samples])
    done = np.array([s[2] for s in samples], dtype=float) / (2 * n)
    at = {f"{int(q * 100)}%": float(np.interp(q, done, rss)) for q in (0.0, 0.25, 0.5, 0.75, 1.0)}
    at["0%"] = float(rss0)
    late = done >= 0.25
    slope = (
        float(np.polyfit(done[late] * info["events"] / 1e6, rss[late], 1)[0])
        if late.sum() > 2
        else 0.0
    )
    return {
        "events": info["events"],
        "producer_s": info["seconds"],
        "seconds": elapsed,
        "events_per_s": info["events"] / elapsed,
        "rss_mb_at": at,
        "rss_peak_mb": float(rss.max()),
        "slope_mb_per_million_events_after_25pct": slope,
        "growth_25_to_100": (at["100%"] - at["25%"]) / at["25%"],
        "broker_rss_mb_end": samples[-1][3],
        "cpu_percent": cpu,
        "samples": [[round(a, 1), round(b, 1), c, round(d, 1)] for a, b, c, d in samples],
        "counts": counts,
    }


# ---------------------------------------------------------------------------------------------
# report


def _cpu(percent: dict[str, float]) -> str:
    short = {"worker": "worker", "postgres": "pg", "broker": "broker"}
    return ", ".join(f"{short.get(k, k)} {v:.0f}" for k, v in percent.items())


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []
    add = rows.append
    for content, label in (
        ("batched", "batched msgs (500 ev/msg)"),
        ("single", "single-event msgs"),
    ):
        r = results.get(content)
        if not r:
            continue
        w, copy, bare = r["worker"], r["copy"], r["bare"]
        c = w["counts"]
        add(
            (
                label,
                "events consumed / predictions",
                f"{r['events']:,} / {r['predictions']:,}",
                f"{r['messages']:,} messages",
                "",
            )
        )
        add(
            (
                "",
                "worker: joined events/s, sustained",
                f"{w['events_per_s']:,.0f}",
                f"{w['msgs_per_s']:,.0f} msg/s",
                "",
            )
        )
        add(
            (
                "",
                "worker: from ready file (start-up)",
                f"{w['ready_to_done_events_per_s']:,.0f}",
                f"ready->first write {w['ready_to_first_write_s']:.2f} s",
                "",
            )
        )
        add(
            (
                "",
                "CPU % of one core",
                _cpu(w["cpu_percent"]),
                "",
                "",
            )
        )
        add(
            (
                "",
                "rows: predictions, labels, exact",
                f"{c['predictions']:,}, {c['labels']:,}",
                f"{c['expected']['predictions']:,} each",
                _verdict(c["exact"]),
            )
        )
        for mode, b in bare.items():
            add(
                (
                    "",
                    f"ref bare agent ({mode}): msg/s",
                    f"{b['msgs_per_s']:,.0f}" if b["msgs_per_s"] else "(one batch)",
                    f"= {b['events_per_s']:,.0f} ev/s; "
                    + f"from ready {b['ready_to_last_msgs_per_s']:,.0f} msg/s",
                    "",
                )
            )
        add(
            (
                "",
                "ref COPY upsert: events/s",
                f"{copy['write_events_per_s']:,.0f}",
                f"decode+write {copy['decode_write_events_per_s']:,.0f}",
                "",
            )
        )
        if content == "batched":
            ok = w["events_per_s"] >= TARGET_BATCHED_EVENTS_S
            add(
                (
                    "",
                    "target: worker events/s",
                    f"{w['events_per_s']:,.0f}",
                    f">= {TARGET_BATCHED_EVENTS_S:,.0f}",
                    _verdict(ok),
                )
            )
            ratio = w["events_per_s"] / copy["write_events_per_s"]
            add(
                (
                    "",
                    "target: worker / COPY reference",
                    f"{ratio:.2f}x",
                    f">= {TARGET_BATCHED_VS_COPY}x",
                    _verdict(ratio >= TARGET_BATCHED_VS_COPY),
                )
            )
        elif "take" in bare:
            ref = bare["take"]["events_per_s"]
            ratio = w["events_per_s"] / ref
            ratio_10_90 = w["events_per_s_10_90"] / bare["take"]["events_per_s_10_90"]
            add(
                (
                    "",
                    "target: worker / bare agent (take), 10-90 % of rows",
                    f"{ratio_10_90:.2f}x",
                    f">= {TARGET_SINGLE_VS_BARE}x",
                    _verdict(ratio_10_90 >= TARGET_SINGLE_VS_BARE),
                )
            )
            add(("", "   the same, first write to last (biased by the start-up stall)", f"{ratio:.2f}x",
                 "(information)", ""))
            d = r.get("worker_diag")
            if d:
                ratio = d["events_per_s"] / ref
                add(
                    (
                        "",
                        f"diag: PITSTOP_BATCH_MESSAGES={d['batch_messages']}",
                        f"{d['events_per_s']:,.0f}",
                        f"= {ratio:.2f}x bare (take)",
                        "",
                    )
                )
            if "iter" in bare:
                add(
                    (
                        "",
                        "   worker / bare agent (iter)",
                        f"{w['events_per_s'] / bare['iter']['events_per_s']:.2f}x",
                        "(information)",
                        "",
                    )
                )
        if r.get("monitor_ab"):
            rows.extend(_monitor_rows(r["monitor_ab"], copy, r["copy_monitored"]))
    for key in ("latency", "latency_diag"):
        lat = results.get(key)
        if not lat:
            continue
        pv, lj, pt = (
            lat["prediction_visible_s"],
            lat["label_joined_s"],
            lat["prediction_txn_start_s"],
        )
        diag = key == "latency_diag"
        title = (
            f"diagnostic: fetch_max_wait {lat['fetch_wait_ms']} ms"
            if diag
            else f"latency ({lat['producer_batch_events']} ev/msg)"
        )
        offered = f"{lat['offered_events_per_s']:,.0f}"
        add((title, "offered events/s", offered, f"for {lat['seconds']:.0f} s", ""))
        add(
            (
                "",
                "publish->visible p50 / p99 / max",
                f"{_ms(pv['p50'])} / {_ms(pv['p99'])} / {_ms(pv['max'])} ms",
                "(not the product)" if diag else f"p99 < {_ms(TARGET_P99_S)} ms",
                "" if diag else _verdict(pv["p99"] < TARGET_P99_S),
            )
        )
        add(
            (
                "",
                "label joined p50 / p99 / max",
                f"{_ms(lj['p50'])} / {_ms(lj['p99'])} / {_ms(lj['max'])} ms",
                "",
                "",
            )
        )
        add(
            (
                "",
                "publish->txn start p50 / p99 (lower bd)",
                f"{_ms(pt['p50'])} / {_ms(pt['p99'])} ms",
                f"poll every {_ms(lat['poll_interval_s'])} ms, "
                + f"query p50 {_ms(lat['poll_query_s']['p50'])} ms",
                "",
            )
        )
        cpu = _cpu(lat["cpu_percent"])
        add(("", "CPU % of one core", cpu, "", ""))
        c = lat["counts"]
        add(
            (
                "",
                "rows: predictions, labels, exact",
                f"{c['predictions']:,}, {c['labels']:,}",
                f"{c['expected']['predictions']:,} each",
                _verdict(c["exact"]),
            )
        )
    mem = results.get("memory")
    if mem:
        at = mem["rss_mb_at"]
        add(
            (
                f"memory ({mem['events']:,} events)",
                "worker RSS MB 0/25/50/75/100%",
                " / ".join(f"{v:.0f}" for v in at.values()),
                "",
                "",
            )
        )
        add(
            (
                "",
                "RSS growth 25%->100%",
                f"{mem['growth_25_to_100'] * 100:+.1f}%",
                f"< +{TARGET_MEMORY_GROWTH * 100:.0f}%",
                _verdict(mem["growth_25_to_100"] < TARGET_MEMORY_GROWTH),
            )
        )
        add(
            (
                "",
                "slope after 25% (MB / 1M events)",
                f"{mem['slope_mb_per_million_events_after_25pct']:+.2f}",
                "",
                "",
            )
        )
        add(("", "events/s (producer concurrent)", f"{mem['events_per_s']:,.0f}", "", ""))
        c = mem["counts"]
        add(
            (
                "",
                "rows: predictions, labels, exact",
                f"{c['predictions']:,}, {c['labels']:,}",
                f"{c['expected']['predictions']:,} each",
                _verdict(c["exact"]),
            )
        )
    return rows


def _monitor_rows(
    drains: list[dict[str, Any]], copy: dict[str, Any], copy_mon: dict[str, Any]
) -> list[tuple[str, str, str, str, str]]:
    """The monitoring A/B of one throughput scenario: every drain, the windows' checks, the
    COPY reference with the windows, and the target on the medians."""
    plain = [d for d in drains if not d["monitor"]]
    mon = [d for d in drains if d["monitor"]]
    order = " ".join("B" if d["monitor"] else "A" for d in drains)

    def rates(ds: list[dict[str, Any]]) -> str:
        return " / ".join(f"{d['events_per_s']:,.0f}" for d in ds)

    def mean_cpu(ds: list[dict[str, Any]]) -> dict[str, float]:
        return {k: float(np.mean([d["cpu_percent"][k] for d in ds])) for k in ds[0]["cpu_percent"]}

    ratio = float(np.median([d["events_per_s"] for d in mon]) / np.median([d["events_per_s"] for d in plain]))
    windows = [d["windows"] for d in mon]
    w = windows[0]
    exact = all(x["exact"] for x in windows) and all(d["counts"]["exact"] for d in drains)
    copy_ratio = copy_mon["write_events_per_s"] / copy["write_events_per_s"]
    return [
        ("", "monitoring off (A): joined events/s", rates(plain), f"order {order}", ""),
        ("", "monitoring on (B): joined events/s", rates(mon), "bench/monitoring.toml", ""),
        ("", "CPU % of one core, off (A) / on (B)", _cpu(mean_cpu(plain)), _cpu(mean_cpu(mon)), ""),
        (
            "",
            "windows: rows, labels (stats n), ver-windows",
            f"{w['rows_series']:,}, {w['stats_n']:,}, {w['windows']}",
            f"{w['expected']['rows']:,}, {w['expected']['labelled']:,} (every B drain)",
            _verdict(exact),
        ),
        (
            "",
            "ref COPY upsert + windows: events/s",
            f"{copy_mon['write_events_per_s']:,.0f}",
            f"= {copy_ratio:.2f}x COPY; windows exact {copy_mon['windows']['exact']}",
            "",
        ),
        (
            "",
            "target: monitored / plain worker",
            f"{ratio:.2f}x",
            f">= {TARGET_MONITORED_VS_PLAIN}x (medians)",
            _verdict(ratio >= TARGET_MONITORED_VS_PLAIN),
        ),
    ]


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("scenario", "figure", "value", "target / note", "result")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for r in rows:
        if r[0] and r is not rows[0]:
            print(line)
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(line)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------


def run_monitor_ab(
    ctx: Ctx,
    content: Content,
    plain: dict[str, Any],
    monitor: MonitoringConfig,
    rounds: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Drains of the same topics with monitoring off (A) and on (B), ``rounds`` of each, in the
    order A B B A A B ...: the scenario's own drain (``plain``) is the first A."""
    drains = [plain]
    for k in range(2 * rounds - 1):
        monitored = (k // 2) % 2 == 0
        label = "mon" if monitored else "plain"
        drain = run_worker_drain(
            ctx, content, suffix=f"_{label}{k}", monitor=monitor if monitored else None, seed=seed
        )
        windows = drain["windows"]
        _log(
            f"{content.name}: worker, monitoring {'on' if monitored else 'off'}: "
            + f"{drain['events_per_s']:,.0f} events/s, rows exact {drain['counts']['exact']}"
            + (f", windows {windows['checks']}" if windows else "")
        )
        drains.append(drain)
    return drains


def run(args: argparse.Namespace, ctx: Ctx) -> dict[str, Any]:
    only = set(args.only.split(",")) if args.only else {"batched", "single", "latency"}
    if args.memory_events and not args.only:
        only.add("memory")
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "external": ctx.external}
    monitor = monitoring_config() if args.monitor else None
    for content_name, batch_size in (("batched", BATCH_EVENTS), ("single", 1)):
        if content_name not in only:
            continue
        topics, _, _ = ctx.names(f"t_{content_name}")
        _log(f"{content_name}: generating and preloading {args.n:,} predictions + outcomes")
        content = preload(ctx, content_name, args.n, args.seed, batch_size, topics)
        _log(
            f"{content_name}: {len(content.messages):,} messages, {content.events:,} events "
            f"published in {content.publish_s:.1f} s"
        )
        bare = {}
        for mode in [m for m in args.bare_modes.split(",") if m]:
            bare[mode] = run_bare(ctx, content, mode)
            _log(f"{content_name}: bare agent ({mode}) {bare[mode]['msgs_per_s']:,.0f} msg/s")
        worker = run_worker_drain(ctx, content)
        _log(
            f"{content_name}: worker {worker['events_per_s']:,.0f} events/s, "
            + f"counts {worker['counts']}"
        )
        ab: list[dict[str, Any]] = []
        if monitor is not None:
            ab = run_monitor_ab(ctx, content, worker, monitor, args.monitor_rounds, args.seed)
        diag = None
        if content_name == "single" and args.diag_batch_messages:
            diag = run_worker_drain(
                ctx,
                content,
                {"PITSTOP_BATCH_MESSAGES": str(args.diag_batch_messages)},
                f"_bm{args.diag_batch_messages}",
            )
            diag["batch_messages"] = args.diag_batch_messages
            _log(
                f"{content_name}: worker, batch of {args.diag_batch_messages} messages: "
                f"{diag['events_per_s']:,.0f} events/s"
            )
        copy = run_copy_reference(ctx, content)
        _log(
            f"{content_name}: COPY reference {copy['write_events_per_s']:,.0f} events/s "
            + "(write only)"
        )
        copy_mon = None
        if monitor is not None:
            copy_mon = run_copy_reference(ctx, content, monitor, args.seed)
            _log(
                f"{content_name}: COPY reference with windows "
                + f"{copy_mon['write_events_per_s']:,.0f} events/s (write only), "
                + f"windows exact {copy_mon['windows']['exact']}"
            )
        results[content_name] = {
            "events": content.events,
            "predictions": content.stats.predictions,
            "duplicates": content.stats.duplicates,
            "messages": len(content.messages),
            "publish_s": content.publish_s,
            "bare": bare,
            "worker": worker,
            "copy": copy,
            "worker_diag": diag,
            "monitor_ab": ab,
            "copy_monitored": copy_mon,
        }
        content.messages.clear()
    if "latency" in only:
        _log(f"latency: {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s")
        results["latency"] = run_latency(ctx, args.latency_rate, args.latency_seconds, args.seed)
        _log(f"latency: {results['latency']['prediction_visible_s']}")
        if args.diag_fetch_wait_ms:
            _log(f"latency diagnostic: worker with fetch_max_wait_ms={args.diag_fetch_wait_ms}")
            results["latency_diag"] = run_latency(
                ctx,
                args.latency_rate,
                args.latency_seconds,
                args.seed,
                fetch_wait_ms=args.diag_fetch_wait_ms,
            )
            _log(f"latency diagnostic: {results['latency_diag']['prediction_visible_s']}")
    if "memory" in only and args.memory_events:
        _log(f"memory: {args.memory_events:,} events through one worker")
        results["memory"] = run_memory(ctx, args.memory_events, args.seed)
        _log(f"memory: RSS {results['memory']['rss_mb_at']}")
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--n", type=int, default=200_000, help="predictions per throughput scenario"
    )
    parser.add_argument(
        "--memory-events",
        type=int,
        default=0,
        help="events to stream through one worker for the memory check (0 = skip)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-rate", type=float, default=10_000.0, help="offered events/s")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--diag-batch-messages",
        type=int,
        default=0,
        help="also drain the single-event topics with a worker whose PITSTOP_BATCH_MESSAGES is "
        "this (a setting, the code unchanged); 0 = skip",
    )
    parser.add_argument(
        "--diag-fetch-wait-ms",
        type=int,
        default=1500,
        help="also run the latency scenario with the worker's PITSTOP_FETCH_MAX_WAIT_MS set to "
        "this (1500 is what Faust hard-codes); 0 = skip",
    )
    parser.add_argument(
        "--diag-pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a server parameter on the bench's own PostgreSQL (ALTER SYSTEM) for the whole "
        "run, e.g. plan_cache_mode=force_custom_plan; a diagnostic, not the product's setup",
    )
    parser.add_argument(
        "--bare-modes",
        default="take,iter",
        help="bare agent shapes to measure (take = the worker's noack_take; iter); empty = none",
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="also drain each throughput scenario with monitoring on (PITSTOP_CONFIG="
        "bench/monitoring.toml, reference profiles installed first), alternating with plain "
        "drains of the same topics, and run the COPY reference with the windows too",
    )
    parser.add_argument(
        "--monitor-rounds",
        type=int,
        default=2,
        help="with --monitor: drains with monitoring off and on, this many of each (order A B B A ...)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated subset of batched,single,latency,memory"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - SCENARIOS if args.only else set()
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; expected some of {sorted(SCENARIOS)}")

    ctx = start_stack(args)
    _log(f"broker {ctx.bootstrap}, postgres {ctx.database_url}, state {ctx.state_dir}")
    try:
        set_pg_settings(ctx, args.diag_pg_set)
        results = run(args, ctx)
        results["pg_settings"] = args.diag_pg_set
    finally:
        stop_stack(ctx, keep=args.keep_state)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    m = results["machine"]
    print(
        f"\nmachine: {m['nproc']} cpu ({m['cpu']}), {m['ram_gb']} GB, Python {m['python']}, "
        f"load avg at start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}"
    )
    if results["pg_settings"]:
        print(f"diagnostic: the bench's PostgreSQL with {', '.join(results['pg_settings'])}")
    print_table(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
