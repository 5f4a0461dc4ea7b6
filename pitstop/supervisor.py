"""Bring the whole stack up (broker, database, migrations, topics, workers), keep workers alive,
and take down exactly what was brought up."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg

from feedback.config import load_config
from feedback.errors import ModelConfigError
from feedback.metrics import read_target
from feedback.store import migrate
from pitstop import stack
from pitstop.errors import StackError
from pitstop.settings import ENV_FILE_NAME, STACK_DIR_VAR, Settings, redact

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0
#: A worker that exits is restarted, at most once in this many seconds.
RESTART_INTERVAL_S = 5.0
#: `pitstop status` calls a worker unhealthy once it was restarted this many times ...
UNHEALTHY_RESTARTS = 3
#: ... within this many seconds (the supervisor keeps the instants of this long).
RESTART_WINDOW_S = 600.0
#: Lines of a worker's log kept from the run before its last restart.
RESTART_LOG_LINES = 5
#: Retrain worker processes `pitstop up` starts (trainings of different models run in parallel across them).
RETRAIN_WORKERS = 1
#: Rollout worker processes `pitstop up` starts (shadow scoring and the ramp; more would share the models' locks).
ROLLOUT_WORKERS = 1


@dataclass(slots=True)
class RunningStack:
    """What ``start_stack`` started, and the addresses to reach it."""

    settings: Settings
    kafka_bootstrap: str
    database_url: str
    record: stack.StackRecord
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir


def start_stack(settings: Settings, workers: int, *, on_step: Callable[[str], None] = lambda _: None) -> RunningStack:
    """Start what is not configured externally, migrate, create topics, start ``workers`` workers."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = stack.StackRecord.load(state_dir)
    if previous.supervisor is not None and stack.is_ours(previous.supervisor):
        msg = f"a Pitstop stack is already running (pid {previous.supervisor.pid}); run `pitstop down` first"
        raise StackError(msg)
    stop_recorded(previous)  # leftovers of a stack whose supervisor died
    (state_dir / ENV_FILE_NAME).unlink(missing_ok=True)
    record = stack.StackRecord()
    record.supervisor = stack.ProcessRecord.of(os.getpid(), "supervisor", " ".join(psutil.Process().cmdline()))
    running = RunningStack(settings, "", "", record)
    try:
        if settings.external_kafka:
            assert settings.kafka_bootstrap is not None
            running.kafka_bootstrap = settings.kafka_bootstrap
        else:
            record.broker = stack.start_broker(state_dir)
            running.kafka_bootstrap = record.broker.address
            on_step(f"broker    Tansu on {record.broker.address} (memory only)")
        record.save(state_dir)
        if settings.external_database:
            assert settings.database_url is not None
            running.database_url = settings.database_url
        else:
            pgdata = state_dir / "pgdata"
            leftover = stack.postgres_pid(pgdata)
            if leftover is not None:  # no stack runs here (checked above): nobody's server, on our data
                stack.stop_postgres(pgdata)
                on_step(f"database  stopped PostgreSQL (pid {leftover}), left running on {pgdata} outside any stack")
            record.postgres = stack.start_postgres(pgdata)
            record.pgdata = str(pgdata.resolve())
            running.database_url = stack.postgres_url(record.postgres.address)
            on_step(f"database  PostgreSQL on {record.postgres.address} (data in {pgdata})")
        record.save(state_dir)
        applied = migrate(running.database_url, settings.db_schema)
        on_step(f"schema    {settings.db_schema}: {len(applied)} migration(s) applied")
        stack.ensure_topics(running.kafka_bootstrap, settings.topics.all(), settings.partitions,
                            compacted=settings.topics.compacted())
        on_step(f"topics    {', '.join(settings.topics.all())} ({settings.partitions} partitions)")
        record.config, record.config_from = _record_config(settings)
        record.save(state_dir)
        running.worker_env = {
            **{k: v for k, v in os.environ.items() if k.startswith("PITSTOP_") and k != STACK_DIR_VAR},
            "PITSTOP_KAFKA_BOOTSTRAP": running.kafka_bootstrap,
            "PITSTOP_DATABASE_URL": running.database_url,
            "PITSTOP_STATE_DIR": str(state_dir.resolve()),
            "PITSTOP_CONFIG": record.config,  # the copy: what the commands read is what the workers run with
        }
        shutil.rmtree(state_dir / "metrics", ignore_errors=True)  # the addresses of an earlier stack's workers
        for index in range(workers):
            record.workers.append(_start_worker(running, index))
        record.save(state_dir)
        _wait_ready(running)
        on_step(f"workers   {workers} ingest worker(s) ready (logs in {state_dir / 'logs'})")
        for index in range(settings.monitor_workers):
            record.workers.append(_start_monitor_worker(running, index))
        record.save(state_dir)
        on_step(f"monitor   {settings.monitor_workers} monitor worker(s) started (monitor rounds and retrain "
                "decisions, the models shared between them; outbox relay)")
        for index in range(RETRAIN_WORKERS):
            record.workers.append(_start_retrain_worker(running, index))
        record.save(state_dir)
        on_step(f"retrain   {RETRAIN_WORKERS} retrain worker(s) started (one training per model at a time)")
        for index in range(ROLLOUT_WORKERS):
            record.workers.append(_start_rollout_worker(running, index))
        record.save(state_dir)
        on_step(f"rollout   {ROLLOUT_WORKERS} rollout worker(s) started (shadow evaluation of candidates)")
        record.workers.append(_start_dashboard(running))
        record.save(state_dir)
        on_step(f"dashboard {dashboard_url(state_dir, wait_s=30) or 'starting (pitstop status shows where)'}")
        (state_dir / ENV_FILE_NAME).write_text(
            f"PITSTOP_KAFKA_BOOTSTRAP={running.kafka_bootstrap}\nPITSTOP_DATABASE_URL={running.database_url}\n"
            f"{STACK_DIR_VAR}={state_dir.resolve()}\n"
        )
        record.ready = True
        record.save(state_dir)
        return running
    except BaseException:
        stop_stack(running)
        raise


def _record_config(settings: Settings) -> tuple[str, str]:
    """Copy the configuration this stack runs with into its state dir; (the copy, the original), both absolute.

    The workers read the copy, and so do commands run against the stack without PITSTOP_CONFIG: an edit of the
    original (or another ./pitstop.toml) takes effect at the next `pitstop up`, for both at once."""
    source = settings.monitoring.path
    text = Path(source).read_text(encoding="utf-8-sig") if source else ""
    origin = str(Path(source).resolve()) if source else ""
    copy = (settings.state_dir / stack.CONFIG_FILE).resolve()
    copy.write_text(f"# the configuration of this stack's workers, copied by `pitstop up` from {origin or '(none)'}\n"
                    f"{text}")
    return str(copy), origin


def _ready_file(running: RunningStack, index: int) -> Path:
    return running.state_dir / "run" / f"worker-{index}.ready"


def _log_path(running: RunningStack, index: int) -> Path:
    return running.state_dir / "logs" / f"worker-{index}.log"


#: each kind of worker's first metrics port past PITSTOP_METRICS_PORT, when it is set (one port each: up to 64
#: ingest and 64 monitor workers); unset, every worker serves on a free port, as its file says
_METRICS_SLOTS = {"worker-": 0, stack.MONITOR_PREFIX: 64, stack.RETRAIN_PREFIX: 128, stack.ROLLOUT_PREFIX: 129}


#: the processes besides the ingest workers: each logs to ``<name>.log`` and is ready once it runs
_NAMED_PREFIXES = (stack.RETRAIN_PREFIX, stack.ROLLOUT_PREFIX, stack.MONITOR_PREFIX, stack.DASHBOARD_PREFIX)


def metrics_file(state_dir: Path, name: str) -> Path:
    """Where the worker ``name`` writes the address of its metrics (a Prometheus file_sd target)."""
    return state_dir / "metrics" / f"{name}.json"


def _metrics_env(running: RunningStack, prefix: str, index: int) -> dict[str, str]:
    base = running.settings.metrics_port
    port = 0 if base is None else base + _METRICS_SLOTS[prefix] + index
    return {"PITSTOP_METRICS_PORT": str(port),
            "PITSTOP_METRICS_FILE": str(metrics_file(running.state_dir, f"{prefix}{index}").resolve())}


def _start_retrain_worker(running: RunningStack, index: int) -> stack.ProcessRecord:
    log_path = running.state_dir / "logs" / f"{stack.RETRAIN_PREFIX}{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**running.worker_env, **_metrics_env(running, stack.RETRAIN_PREFIX, index)}
    return stack.start_retrain_worker(env, log_path, index)


def _start_monitor_worker(running: RunningStack, index: int) -> stack.ProcessRecord:
    log_path = running.state_dir / "logs" / f"{stack.MONITOR_PREFIX}{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**running.worker_env, **_metrics_env(running, stack.MONITOR_PREFIX, index)}
    return stack.start_monitor_worker(env, log_path, index)


def _start_rollout_worker(running: RunningStack, index: int) -> stack.ProcessRecord:
    log_path = running.state_dir / "logs" / f"{stack.ROLLOUT_PREFIX}{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**running.worker_env, **_metrics_env(running, stack.ROLLOUT_PREFIX, index)}
    return stack.start_rollout_worker(env, log_path, index)


def dashboard_file(state_dir: Path) -> Path:
    """Where the dashboard `pitstop up` started writes its URL."""
    return state_dir / "run" / "dashboard.url"


def _start_dashboard(running: RunningStack) -> stack.ProcessRecord:
    """The dashboard, on PITSTOP_DASHBOARD_PORT (8765 by default, or a free port when it is taken)."""
    log_path = running.state_dir / "logs" / f"{stack.DASHBOARD_PREFIX}0.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    address = dashboard_file(running.state_dir)
    address.parent.mkdir(parents=True, exist_ok=True)
    address.unlink(missing_ok=True)
    return stack.start_dashboard(running.worker_env, log_path, address.resolve(), running.settings.dashboard_port)


def dashboard_url(state_dir: Path, *, wait_s: float = 0.0) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(OSError):
            return dashboard_file(state_dir).read_text().strip() or None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _restart(running: RunningStack, worker: stack.ProcessRecord, position: int) -> stack.ProcessRecord:
    """Start again the worker recorded at ``position``, of its own kind."""
    if worker.name.startswith(stack.DASHBOARD_PREFIX):
        return _start_dashboard(running)
    if worker.name.startswith(stack.RETRAIN_PREFIX):
        return _start_retrain_worker(running, int(worker.name.removeprefix(stack.RETRAIN_PREFIX)))
    if worker.name.startswith(stack.ROLLOUT_PREFIX):
        return _start_rollout_worker(running, int(worker.name.removeprefix(stack.ROLLOUT_PREFIX)))
    if worker.name.startswith(stack.MONITOR_PREFIX):
        return _start_monitor_worker(running, int(worker.name.removeprefix(stack.MONITOR_PREFIX)))
    return _start_worker(running, position)


def _worker_log(running: RunningStack, worker: stack.ProcessRecord, position: int) -> Path:
    if worker.name.startswith(_NAMED_PREFIXES):
        return running.state_dir / "logs" / f"{worker.name}.log"
    return _log_path(running, position)


def _start_worker(running: RunningStack, index: int) -> stack.ProcessRecord:
    ready = _ready_file(running, index)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    log_path = _log_path(running, index)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**running.worker_env, "PITSTOP_READY_FILE": str(ready.resolve()), **_metrics_env(running, "worker-", index)}
    return stack.start_worker(env, log_path, index)


def _wait_ready(running: RunningStack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for index, worker in enumerate(running.record.workers):
        if worker.name.startswith(_NAMED_PREFIXES):
            continue  # ready when it polls: nothing waits on it
        while not _ready_file(running, index).exists():
            if not stack.is_ours(worker):
                log_path = running.state_dir / "logs" / f"worker-{index}.log"
                msg = f"worker {index} exited during start; see {log_path}: {_tail(log_path)}"
                raise StackError(msg)
            if time.monotonic() > deadline:
                msg = f"worker {index} was not ready within {READY_TIMEOUT_S:.0f} s; see its log in .pitstop/logs"
                raise StackError(msg)
            time.sleep(0.1)


def supervise(running: RunningStack, should_stop: Callable[[], bool]) -> None:
    """Restart workers that exit (a worker exits on purpose when it cannot go on safely), and record each
    restart in stack.json with the exit status and the last log lines of the run that ended."""
    restarts = [0.0] * len(running.record.workers)
    while not should_stop():
        for index, worker in enumerate(running.record.workers):
            if not stack.is_ours(worker) and time.monotonic() >= restarts[index]:
                code = stack.exit_code(worker)
                lines = _last_lines(_worker_log(running, worker, index), RESTART_LOG_LINES)
                log.warning("%s (pid %d) exited (%s); restarting it", worker.name, worker.pid, _exit_text(code))
                history = running.record.restarts.setdefault(worker.name, stack.RestartRecord())
                history.add(datetime.now(UTC), exit_code=code, log_lines=lines, keep_s=RESTART_WINDOW_S)
                running.record.workers[index] = _restart(running, worker, index)
                running.record.save(running.state_dir)
                restarts[index] = time.monotonic() + RESTART_INTERVAL_S
        time.sleep(min(0.5, RESTART_INTERVAL_S))


def stop_stack(running: RunningStack) -> None:
    """Stop what this stack started, workers first; leaves the database's data on disk."""
    stop_recorded(running.record)
    _forget(running.state_dir)


def _forget(state_dir: Path) -> None:
    """Remove what says a stack runs here: its env file, its configuration's copy, its record."""
    for name in (ENV_FILE_NAME, stack.CONFIG_FILE, stack.STACK_FILE):
        (state_dir / name).unlink(missing_ok=True)


def stop_recorded(record: stack.StackRecord) -> list[str]:
    """Stop every process in ``record`` that is still ours; returns what was stopped."""
    # the workers together (each takes a second or two to leave its group), then what they use
    stopped = [w.name for w, running in zip(record.workers, stack.stop_processes(record.workers), strict=True)
               if running]
    if record.broker is not None and stack.stop_process(record.broker):
        stopped.append("broker")
    if record.postgres is not None and record.pgdata and stack.is_ours(record.postgres):
        stack.stop_postgres(Path(record.pgdata))
        stopped.append("postgres")
    return stopped


def run_foreground(settings: Settings, workers: int, say: Callable[[str], None]) -> int:
    """`pitstop up`: start, then supervise until SIGINT/SIGTERM, then stop everything."""
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, _on_signal)
    running = start_stack(settings, workers, on_step=say)
    try:
        say(f"ready     PITSTOP_KAFKA_BOOTSTRAP={running.kafka_bootstrap}")
        say(f"          PITSTOP_DATABASE_URL={running.database_url}")
        supervise(running, lambda: stopping)
    finally:
        try:
            say("stopping ...")  # a reader of stdout that left raises here: the stack is stopped all the same
        finally:
            stop_stack(running)
        say("stopped")
    return 0


def run_detached(settings: Settings, workers: int, say: Callable[[str], None]) -> int:
    """`pitstop up --detach`: run `pitstop up` in the background, return once it is ready."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "up.log"
    with open(log_path, "ab") as out:
        start = out.tell()  # what earlier runs wrote is not this one's to quote
        proc = subprocess.Popen(
            [sys.executable, "-m", "pitstop.cli", "up", "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = (f"`pitstop up` exited with code {proc.returncode}: {_tail(log_path, since=start)} "
                   f"(full log: {log_path})")
            raise StackError(msg)
        record = stack.StackRecord.load(state_dir)
        if record.ready and record.supervisor is not None and record.supervisor.pid == proc.pid:
            env_file = state_dir / ENV_FILE_NAME
            say(f"Pitstop is up (supervisor pid {proc.pid}); services written to {env_file}:")
            say(env_file.read_text().rstrip())
            say(f"dashboard {dashboard_url(state_dir) or 'starting (pitstop status shows where)'}")
            return 0
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    msg = f"`pitstop up` was not ready in time; see {log_path}"
    raise StackError(msg)


def take_down(settings: Settings) -> list[str]:
    """`pitstop down`: stop the supervisor (which stops the rest), then any leftovers."""
    record = stack.StackRecord.load(settings.state_dir)
    stopped = []
    if record.supervisor is not None and stack.stop_process(record.supervisor, timeout_s=60):
        stopped.append("supervisor")
    stopped += stop_recorded(record)  # whatever the supervisor could not stop
    # the server that owns the stack's data, whoever started it (restarted by hand, its record lost)
    for pgdata in dict.fromkeys(p.resolve() for p in (settings.state_dir / "pgdata", Path(record.pgdata or "."))
                                if (p / "PG_VERSION").exists()):
        pid = stack.postgres_pid(pgdata)
        if pid is not None:
            stack.stop_postgres(pgdata)
            stopped.append(f"postgres (pid {pid}, not the one the stack started)")
    _forget(settings.state_dir)
    return stopped


def health(settings: Settings, *, now: datetime | None = None) -> list[tuple[str, str, bool, str]]:
    """(component, address, healthy, detail) for `pitstop status`; ``now`` (default: the clock) judges how
    recent a worker's restarts are."""
    now = datetime.now(UTC) if now is None else now
    record = stack.StackRecord.load(settings.state_dir)
    rows: list[tuple[str, str, bool, str]] = []
    if record.supervisor is not None:
        alive = stack.is_ours(record.supervisor)
        rows.append(("supervisor", f"pid {record.supervisor.pid}", alive, "running" if alive else "not running"))
    bootstrap, database_url = settings.kafka_bootstrap, settings.database_url
    if bootstrap is None:
        rows.append(("broker", "-", False, "not configured: run `pitstop up --detach` or set PITSTOP_KAFKA_BOOTSTRAP"))
    else:
        kind = "external" if settings.external_kafka else "local Tansu"
        if not settings.external_kafka and record.broker is not None:
            kind += f" (pid {record.broker.pid})"
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        try:  # every broker address is checked, external ones too
            socket.create_connection((host, int(port)), timeout=2).close()
            rows.append(("broker", bootstrap, True, f"{kind}, accepting connections"))
        except OSError as exc:
            rows.append(("broker", bootstrap, False, f"{kind}, not reachable ({exc})"))
    if database_url is None:
        rows.append(("database", "-", False, "not configured: run `pitstop up --detach` or set PITSTOP_DATABASE_URL"))
    else:
        kind = "external" if settings.external_database else "local PostgreSQL"
        if not settings.external_database and record.postgres is not None:
            kind = f"local PostgreSQL (pid {record.postgres.pid})"
        try:
            with psycopg.connect(database_url, connect_timeout=3) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            rows.append(("database", redact(database_url), True, f"{kind} {version[0] if version else ''}"))
        except psycopg.Error as exc:
            rows.append(("database", redact(database_url), False, f"{kind}, {str(exc).strip().splitlines()[0]}"))
    if record.config and record.supervisor is not None:
        try:
            models, readable = ", ".join(sorted(load_config(record.config).models)) or "none", True
        except ModelConfigError as exc:
            models, readable = f"unreadable ({exc})", False
        rows.append(("config", record.config, readable, f"the workers' configuration, copied from "
                     f"{record.config_from or '(none)'}; models: {models}"))
    for worker in record.workers:
        healthy, detail = _worker_health(worker, record.restarts.get(worker.name), now)
        served = read_target(metrics_file(settings.state_dir, worker.name))
        if served is not None:
            detail += f"; metrics http://{served}/metrics"
        if worker.name.startswith(stack.DASHBOARD_PREFIX) and (url := dashboard_url(settings.state_dir)):
            detail += f"; {url}"
        rows.append((worker.name, f"pid {worker.pid}", healthy, detail))
    return rows


def _worker_health(
    worker: stack.ProcessRecord, history: stack.RestartRecord | None, now: datetime
) -> tuple[bool, str]:
    """A worker is healthy when it runs and was not restarted UNHEALTHY_RESTARTS times in RESTART_WINDOW_S: a
    worker that keeps exiting on the same batch runs most of the time, and ingests nothing."""
    alive = stack.is_ours(worker)
    detail = "running" if alive else "not running"
    recent = 0 if history is None else history.since(now - timedelta(seconds=RESTART_WINDOW_S))
    if history is None or recent == 0:
        return alive, detail
    restarts = (f"restarted {recent} time{'' if recent == 1 else 's'} in the last {RESTART_WINDOW_S / 60:.0f} min"
                f" (last {_exit_text(history.last_exit_code)})")
    if recent < UNHEALTHY_RESTARTS:
        return alive, f"{detail}; {restarts}"
    last_line = next((line for line in reversed(history.last_log_lines) if line.strip()), "(none)")
    if len(last_line) > 300:
        last_line = f"{last_line[:297]}..."
    return False, f"{restarts}; last log line: {last_line.strip()}"


def _exit_text(code: int | None) -> str:
    """How a worker's run ended, in words.

    >>> _exit_text(70), _exit_text(-9), _exit_text(None)
    ('exit code 70', 'killed by SIGKILL', 'exit status unknown')
    """
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a log, reading only its end (a worker's log grows over every restart)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16 * 1024))
            tail = f.read()
    except FileNotFoundError:
        return []
    return tail.decode(errors="replace").splitlines()[-n:]


def _tail(path: Path, lines: int = 3, *, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after its first ``since`` bytes (the log of this run, in a file
    earlier runs appended to)."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(nothing logged)"
