"""A real monitor worker's memory (RSS) with N models: at start, after its first round, after steady rounds; its peak.

Issue 17's target: "A monitor worker with 1,000 models under 1 GiB RSS". ``bench/triggers.py`` measures the
monitor's kept state inside its own process; this bench runs the worker itself (``pitstop monitor-worker``, the
process ``pitstop up`` starts) and reads its memory from /proc.

What it does, reusing ``bench/triggers.py``'s workload (its docstring says what the N models and their windows are):

* Starts a PostgreSQL server in a temporary folder (``triggers.start_stack``; PITSTOP_DATABASE_URL, when set, is
  used instead, with a fresh schema it drops at the end) and a memory-only Tansu broker
  (``pitstop.stack.start_broker``; the worker needs one for its summaries and the outbox) with the stack's topics,
  both on 127.0.0.1.
* Builds the N models' store in a fresh schema without the ingest (``triggers.populate``: a reference profile each,
  26 hours of windows of 1,200 labelled predictions an hour) and writes their configuration (``triggers.config_for``'s
  TOML) to a temporary file.
* Starts one monitor worker: ``pitstop monitor-worker`` run by ``pitstop.cli.main`` (what ``python -m pitstop.cli
  monitor-worker``, ``pitstop.stack.start_monitor_worker``'s command, runs) in ``<python> -c LAUNCHER``, which first
  wraps ``Monitor.run_once`` to print one line a round to the log: the worker logs no round duration, and a round
  seen from outside (its advisory locks) is not told apart from the next when they run back to back. The line: the
  round's start and end, the process's CPU time in it (all threads), the versions it evaluated, the result rows it
  wrote, VmRSS and VmHWM at its start and end. Its environment: the bench's without any PITSTOP_* variable, plus
  PITSTOP_DATABASE_URL, PITSTOP_DB_SCHEMA, PITSTOP_CONFIG, PITSTOP_KAFKA_BOOTSTRAP, PITSTOP_STATE_DIR (a temporary
  folder, so that no running stack's configuration is picked up) and PITSTOP_MONITOR_INTERVAL_S (``--interval``,
  5 s). A thread samples its /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile) every second.
* Waits for the worker's first round to end, then, ``--steady`` times (5): waits for a round where nothing changed
  to end, writes one steady hour to every model (``triggers.write_steady`` of ``triggers.steady_delta``: 1,200 new
  labelled predictions in the newest window, 100 late labels in each of the 3 windows before it; the next rounds,
  back to back at 1,000 models, run meanwhile), and waits for the first round ending after that commit that
  evaluated something: the round that read the hour (one that began before the commit may have taken its snapshot
  after it; the rounds between evaluate nothing).
* Then lets it run ``--idle`` seconds (20) more, and stops it by its PID (SIGTERM, SIGKILL after 30 s), the broker
  and the server; on an error or Ctrl-C too.

Reported: RSS at the start of the first round (the worker started, nothing loaded), after the first round, after
each steady round, at the end, and the peak (VmHWM) at each of those points; each measured round's duration, CPU
time, versions evaluated and result rows written; the rounds where nothing changed; the load average; the warnings
and errors the worker logged. Progress to stderr, the report to stdout; ``--json`` also writes every round and
sample, ``--log`` keeps the worker's log (the temporary folder is removed).

Run from the repository root::

    .venv/bin/python bench/monitor_rss.py --models 10 --steady 2   # a quick check: ~2 min
    .venv/bin/python bench/monitor_rss.py --models 1000 --json /tmp/rss.json --log /tmp/rss.log  # ~30 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triggers  # noqa: E402  (bench/triggers.py; it puts the repository root on sys.path)
from triggers import (  # noqa: E402
    CONFIG_HEAD,
    CONFIG_MODEL,
    WORKLOADS,
    config_for,
    model_name,
    populate,
    reference_profile,
    start_stack,
    steady_delta,
    stop_stack,
    workload_delta,
    write_steady,
)

from feedback.config import load_config  # noqa: E402
from feedback.monitoring.windows import WindowUpdater  # noqa: E402
from feedback.store import FeedbackStore, migrate  # noqa: E402
from feedback.topics import Topics  # noqa: E402
from pitstop import stack  # noqa: E402

_log = triggers._log
MIB = 1024  # /proc/PID/status gives kB (KiB)

#: the worker's process: ``pitstop monitor-worker`` through ``pitstop.cli.main``, as ``python -m pitstop.cli
#: monitor-worker`` runs it, with ``Monitor.run_once`` wrapped to print one line a round (the worker logs no round
#: duration): its wall-clock start and end, the process's CPU time in it, what it evaluated and wrote, and the
#: process's VmRSS and VmHWM at its start and end
LAUNCHER = r"""
import json, sys, time
from feedback.monitoring.round import Monitor

def memory():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out

run_once = Monitor.run_once

def timed_run_once(self, *args, **kwargs):
    start, cpu, before, result = time.time(), time.process_time(), memory(), None
    try:
        result = run_once(self, *args, **kwargs)
        return result
    finally:
        line = {"start": start, "end": time.time(), "cpu_s": time.process_time() - cpu, "ok": result is not None,
                "claimed": len(self.claimed), "evaluated": None if result is None else len(result.evaluations),
                "written": None if result is None else result.results_written,
                "rss_start": before["VmRSS"], "hwm_start": before["VmHWM"], **memory()}
        print("bench-round " + json.dumps(line), file=sys.stderr, flush=True)

Monitor.run_once = timed_run_once
from pitstop.cli import main
sys.argv = ["pitstop", "monitor-worker"]
sys.exit(main())
"""
ROUND_TAG = "bench-round "


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid``, in MiB (empty once it has gone)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / MIB
    return out


class Sampler:
    """A thread: the worker's /proc/PID/status every ``every_s`` seconds, with the load average."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[dict[str, float]] = []  # t (time.time()), VmRSS, VmHWM, RssAnon, RssFile, load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            mem = proc_memory(self.pid)
            if mem:
                self.samples.append({"t": time.time(), **mem, "load": os.getloadavg()[0]})
            if self._stop.wait(self.every_s):
                return


class Rounds:
    """The worker's rounds, read from the lines :data:`LAUNCHER` prints to its log."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.rounds: list[dict[str, Any]] = []
        self._offset = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset += len(chunk)
            *lines, self._rest = (self._rest + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith(ROUND_TAG):
                    with contextlib.suppress(ValueError):
                        self.rounds.append(json.loads(line[len(ROUND_TAG):]))
        return self.rounds

    def wait(self, worker: subprocess.Popen[bytes], timeout_s: float, *, ended_after: float,
             evaluated: bool | None = None) -> dict[str, Any]:
        """The first round that ended after ``ended_after`` (time.time()), that evaluated some version (``evaluated``
        True), none (False) or either (None)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for r in self.read():
                if r["end"] > ended_after and (evaluated is None or bool(r["evaluated"]) == evaluated):
                    return r
            if worker.poll() is not None:
                msg = f"the monitor worker exited with code {worker.returncode}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"no such round within {timeout_s:.0f} s"
                raise TimeoutError(msg)
            time.sleep(0.5)


def config_text(n: int) -> str:
    """The models' TOML, as ``triggers.config_for`` parses it."""
    return CONFIG_HEAD + "".join(CONFIG_MODEL.format(name=model_name(i)) for i in range(n))


def worker_env(database_url: str, schema: str, config_path: Path, bootstrap: str, state_dir: Path,
               interval_s: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update({
        "PITSTOP_DATABASE_URL": database_url,
        "PITSTOP_DB_SCHEMA": schema,
        "PITSTOP_CONFIG": str(config_path),
        "PITSTOP_KAFKA_BOOTSTRAP": bootstrap,
        "PITSTOP_STATE_DIR": str(state_dir),
        "PITSTOP_MONITOR_INTERVAL_S": f"{interval_s:g}",
        "PITSTOP_LOG_LEVEL": "INFO",
    })
    return env


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    """SIGTERM to the worker's PID, SIGKILL after ``timeout_s`` (it ends a round before it stops)."""
    if proc.poll() is not None:
        return f"had exited ({proc.returncode})"
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
        return f"stopped by SIGTERM ({proc.returncode})"
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return f"killed after {timeout_s:.0f} s of SIGTERM"


def log_lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()
    return []


def uptime() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    return f"load average {os.getloadavg()}"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    n, k = args.models, args.steady
    res: dict[str, Any] = {"models": n, "steady_hours": k, "interval_s": args.interval,
                           "date": datetime.now(UTC).isoformat(timespec="seconds"), "uptime_start": uptime()}
    ctx = start_stack()
    _log(f"postgres {ctx.database_url}")
    broker: stack.ProcessRecord | None = None
    worker: subprocess.Popen[bytes] | None = None
    sampler: Sampler | None = None
    log_path = ctx.state_dir / "monitor-worker.log"
    try:
        config = config_for(n)
        profile = reference_profile(config, args.seed)
        counter = WindowUpdater(config)
        workloads = range(min(n, len(WORKLOADS)))
        t0 = time.perf_counter()
        deltas = {i: workload_delta(counter, profile, i, args.seed) for i in workloads}
        steady = [{i: steady_delta(counter, profile, i, args.seed, rep) for i in workloads} for rep in range(k)]
        _log(f"counted {len(deltas)} workloads and {k} steady hours in {time.perf_counter() - t0:.1f} s")

        schema = f"bench_rss_{ctx.tag}"
        ctx.schemas.append(schema)
        migrate(ctx.database_url, schema)
        ingest = WindowUpdater(config)
        with FeedbackStore(ctx.database_url, schema, max_size=2, windows=ingest) as store:
            _log(f"populating {n} models")
            res["setup"] = populate(store, ingest, profile, deltas, n)
            _log(f"populated in {res['setup']['populate_s']:.0f} s ({res['setup']['window_counts_rows']:,} "
                 "window_counts rows)")

            config_path = ctx.state_dir / "models.toml"
            config_path.write_text(config_text(n))
            assert load_config(str(config_path)).models == config.models, "the TOML is the bench's configuration"
            broker = stack.start_broker(ctx.state_dir / "broker")
            topics = Topics()
            stack.ensure_topics(broker.address, topics.all(), 1, compacted=topics.compacted())
            _log(f"broker on {broker.address}")

            env = worker_env(ctx.database_url, schema, config_path, broker.address, ctx.state_dir / "state",
                             args.interval)
            with open(log_path, "ab") as out:
                worker = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=triggers.ROOT)
            spawned = time.time()
            sampler = Sampler(worker.pid).start()
            rounds = Rounds(log_path)
            _log(f"monitor worker pid {worker.pid}, a round every {args.interval:g} s; log {log_path}")

            first = rounds.wait(worker, args.timeout, ended_after=spawned)
            res["load_after_first"] = os.getloadavg()[0]
            res["first_round_starts_after_spawn_s"] = first["start"] - spawned
            _log(f"first round: {first['end'] - first['start']:.0f} s, {first['evaluated']} versions evaluated, "
                 f"{first['written']:,} result rows, VmRSS {first['VmRSS']:,.0f} MiB, VmHWM {first['VmHWM']:,.0f} MiB")
            with store.pool.connection() as conn:
                res["result_rows_after_first"] = conn.execute("SELECT count(*) FROM monitor_results").fetchone()[0]
            measured = [("first", first)]
            last = first
            for rep in range(k):
                # one round where nothing changed first: the hour is written while it or the next runs
                last = rounds.wait(worker, args.timeout, ended_after=last["end"], evaluated=False)
                t_write = time.time()
                write_steady(store, ingest, steady[rep], n)
                committed = time.time()
                # the round that read the hour: the first to evaluate after the commit (one that began before the
                # commit may have taken its snapshot after it)
                last = rounds.wait(worker, args.timeout, ended_after=committed, evaluated=True)
                last["write_s"], last["committed_before_end_s"] = committed - t_write, last["end"] - committed
                measured.append((f"steady {rep + 1}", last))
                _log(f"steady hour {rep + 1} written in {committed - t_write:.1f} s; its round "
                     f"{last['end'] - last['start']:.1f} s, {last['evaluated']} versions evaluated, "
                     f"{last['written']:,} result rows, VmRSS {last['VmRSS']:,.0f} MiB, VmHWM {last['VmHWM']:,.0f} MiB")
            time.sleep(args.idle)
            res["at_end"] = proc_memory(worker.pid)
            res["load_end"] = os.getloadavg()[0]
            res["uptime_end"] = uptime()
            res["measured"] = [{"round": name, **r} for name, r in measured]
            res["rounds"] = rounds.read()
            res["samples"] = sampler.samples
            res["spawned"] = spawned
    finally:
        if sampler is not None:
            sampler.stop()
        if worker is not None:
            res["worker_stop"] = stop_worker(worker)
            _log(f"monitor worker {res['worker_stop']}")
        lines = log_lines(log_path)
        res["log_alerts"] = sum(" pitstop.alerts: " in x for x in lines)  # the trigger engine's alerts
        res["log_warnings"] = [x for x in lines if (" WARNING " in x or " ERROR " in x or "Traceback" in x)
                               and " pitstop.alerts: " not in x]
        if args.log is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(log_path, args.log)
        if broker is not None:
            stack.stop_process(broker)
        stop_stack(ctx)
    return res


def report(res: dict[str, Any]) -> None:
    def mem(rss: float, hwm: float) -> str:
        return f"VmRSS {rss:7,.0f} MiB  VmHWM {hwm:7,.0f} MiB"

    s = res["setup"]
    print(f"\n{res['models']:,} models, a round every {res['interval_s']:g} s; {res['date']}; "
          f"{s['window_counts_rows']:,} window_counts rows, populated in {s['populate_s']:.0f} s; "
          f"{res['result_rows_after_first']:,} monitor_results rows after the first round")
    print(f"worker: {sys.executable} -c LAUNCHER (pitstop.cli.main(['monitor-worker']), Monitor.run_once timed); "
          f"{res['worker_stop']}")
    print(f"load: {res['uptime_start']}  ->  after the first round {res['load_after_first']:.2f}  ->  "
          f"{res['uptime_end']}")
    first = res["measured"][0]
    print(f"\nat start (the first round's start, {res['first_round_starts_after_spawn_s']:.1f} s after the spawn): "
          f"{mem(first['rss_start'], first['hwm_start'])}")
    for m in res["measured"]:
        extra = (f"; hour written in {m['write_s']:.1f} s, committed {m['committed_before_end_s']:.1f} s before the "
                 "round ended") if "write_s" in m else ""
        print(f"after {m['round'] + ' round':<15} {mem(m['VmRSS'], m['VmHWM'])}  round {m['end'] - m['start']:7.1f} s, "
              f"CPU {m['cpu_s']:6.1f} s, {m['evaluated']:,} versions evaluated, {m['written']:,} result rows{extra}")
    quiet = [r for r in res["rounds"] if r["evaluated"] == 0]
    if quiet:
        d = sorted(r["end"] - r["start"] for r in quiet)
        print(f"rounds where nothing changed: {len(quiet)}, {d[0]:.2f}-{d[-1]:.2f} s (median {d[len(d) // 2]:.2f})")
    failed = [r for r in res["rounds"] if not r["ok"]]
    print(f"rounds: {len(res['rounds'])} logged, {len(failed)} failed")
    e = res["at_end"]
    print(f"at the end: {mem(e.get('VmRSS', 0), e.get('VmHWM', 0))} (RssAnon {e.get('RssAnon', 0):,.0f}, "
          f"RssFile {e.get('RssFile', 0):,.0f})")
    peak = max(res["samples"], key=lambda x: x["VmRSS"])
    print(f"highest VmRSS sampled {peak['VmRSS']:,.0f} MiB, {peak['t'] - res['spawned']:.0f} s after the spawn; "
          f"peak (VmHWM) {e.get('VmHWM', 0):,.0f} MiB = {e.get('VmHWM', 0) / 1024:.2f} GiB")
    print(f"worker log: {res['log_alerts']:,} alert lines (pitstop.alerts), {len(res['log_warnings'])} other "
          "warning/error lines")
    for line in res["log_warnings"][:10]:
        print(f"  {line[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--steady", type=int, default=5, help="steady hours written, a worker's round after each")
    parser.add_argument("--interval", type=float, default=5.0, help="PITSTOP_MONITOR_INTERVAL_S of the worker")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the worker runs after the last steady round")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a round")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write every figure and sample to this file")
    parser.add_argument("--log", type=Path, help="keep a copy of the worker's log here")
    args = parser.parse_args(argv)
    if args.models < 1 or args.steady < 0:
        parser.error("--models needs at least 1 and --steady at least 0")
    t0 = time.perf_counter()
    res = measure(args)
    res["wall_s"] = time.perf_counter() - t0
    report(res)
    print(f"whole run {res['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
