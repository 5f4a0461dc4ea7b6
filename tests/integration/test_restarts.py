"""Worker restarts: the supervisor records them in stack.json, and `pitstop status` calls a worker that keeps
restarting unhealthy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pitstop import stack, supervisor
from pitstop.settings import Settings, Topics
from tests.conftest import Services, wait_until

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LAST_LINE = "faust.exceptions.ProducerSendError: Error while sending: MessageSizeTooLargeError('...')"


def _process(name: str) -> dict[str, Any]:
    """A record of a process that runs (this test's own), standing in for a worker."""
    me = stack.ProcessRecord.of(os.getpid(), name, " ".join(sys.argv))
    return {"pid": me.pid, "name": name, "marker": me.marker, "address": "", "created": me.created}


def _write_stack(state_dir: Path, now: datetime) -> None:
    # stack.json as the supervisor writes it: worker-0 restarted 5 times in the last 10 minutes (and twice
    # an hour ago), worker-1 twice
    state_dir.mkdir(parents=True, exist_ok=True)
    recent = [(now - timedelta(minutes=m)).isoformat() for m in (9, 7, 5, 3, 1)]
    older = [(now - timedelta(minutes=m)).isoformat() for m in (65, 62)]
    doc = {
        "supervisor": _process("supervisor"),
        "workers": [_process("worker-0"), _process("worker-1")],
        "ready": True,
        "restarts": {
            "worker-0": {"count": 7, "restarted_at": older + recent, "last_exit_code": 70,
                         "last_log_lines": ["Traceback (most recent call last):", LAST_LINE]},
            "worker-1": {"count": 2, "restarted_at": recent[-2:], "last_exit_code": -9, "last_log_lines": []},
        },
    }
    (state_dir / stack.STACK_FILE).write_text(json.dumps(doc))


def _env(services: Services, state_dir: Path) -> dict[str, str]:
    return {"PITSTOP_STATE_DIR": str(state_dir), "PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
            "PITSTOP_DATABASE_URL": services.database_url}


def test_health_calls_a_worker_that_keeps_restarting_unhealthy(services: Services, tmp_path: Path) -> None:
    """Five restarts in the last ten minutes make a running worker unhealthy, with its last log line; two do not."""
    state_dir = tmp_path / "state"
    _write_stack(state_dir, NOW)
    rows = {c: (a, h, d) for c, a, h, d in supervisor.health(Settings.from_env(_env(services, state_dir)), now=NOW)}
    assert rows["worker-0"][1] is False, rows["worker-0"]
    assert rows["worker-0"][2] == (
        f"restarted 5 times in the last 10 min (last exit code 70); last log line: {LAST_LINE}")
    assert rows["worker-1"][1:] == (True, "running; restarted 2 times in the last 10 min (last killed by SIGKILL)")
    assert all(h for c, (_, h, _) in rows.items() if c != "worker-0")
    # an hour later the restarts are history
    later = supervisor.health(Settings.from_env(_env(services, state_dir)), now=NOW + timedelta(hours=1))
    assert all(h for _, _, h, _ in later), later


def test_status_command_exits_1_for_a_worker_that_keeps_restarting(services: Services, tmp_path: Path) -> None:
    """`pitstop status` prints the restarting worker's one-line detail and exits with 1."""
    state_dir = tmp_path / "state"
    _write_stack(state_dir, datetime.now(UTC))  # the command judges by the wall clock
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")} | _env(services, state_dir)
    for args in (["status"], ["status", "--json"]):
        done = subprocess.run([sys.executable, "-m", "pitstop.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"restarted 5 times in the last 10 min (last exit code 70); last log line: {LAST_LINE}" in done.stdout
    rows = {r["component"]: r for r in json.loads(done.stdout)}
    assert (rows["worker-0"]["healthy"], rows["worker-1"]["healthy"]) == (False, True)


def test_stack_record_without_restarts_still_loads(services: Services, tmp_path: Path) -> None:
    """A stack.json written before restarts were recorded (nor start times) loads, and its worker is healthy."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    worker = {"pid": os.getpid(), "name": "worker-0", "marker": "python", "address": ""}
    (state_dir / stack.STACK_FILE).write_text(json.dumps({"workers": [worker], "ready": True}))
    record = stack.StackRecord.load(state_dir)
    assert record.restarts == {}
    rows = supervisor.health(Settings.from_env(_env(services, state_dir)), now=NOW)
    assert [r[1:] for r in rows if r[0] == "worker-0"] == [(f"pid {os.getpid()}", True, "running")]


@pytest.fixture
def supervised(services: Services, db_schema: str, topics: Topics, unique_name: str,
               tmp_path: Path) -> Iterator[supervisor.RunningStack]:
    """A stack record of this test's own, with services and topics, whose workers are all stopped afterwards."""
    state_dir = tmp_path / "state"
    settings = Settings.from_env(_env(services, state_dir))
    running = supervisor.RunningStack(settings, services.kafka_bootstrap, services.database_url, stack.StackRecord())
    running.worker_env = {**_env(services, state_dir), "PITSTOP_DB_SCHEMA": db_schema,
                          "PITSTOP_TOPIC_PREFIX": topics.prefix, "PITSTOP_APP_ID": unique_name}
    try:
        yield running
    finally:
        for worker in running.record.workers:
            stack.stop_process(worker, timeout_s=15)


def _supervise_until(running: supervisor.RunningStack, done: Any, timeout_s: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.supervise, args=(running, stop.is_set), daemon=True)
    thread.start()
    try:
        wait_until(done, timeout_s, lambda: f"{stack.StackRecord.load(running.state_dir)}")
    finally:
        stop.set()
        thread.join(10)


def test_supervisor_records_a_restart_of_a_worker_killed_with_sigkill(supervised: supervisor.RunningStack) -> None:
    """A worker killed with SIGKILL is restarted, and stack.json says when, and how it ended."""
    running = supervised
    running.record.workers.append(supervisor._start_worker(running, 0))
    first = running.record.workers[0]
    os.kill(first.pid, signal.SIGKILL)

    def restarted() -> bool:
        return "worker-0" in stack.StackRecord.load(running.state_dir).restarts

    _supervise_until(running, restarted, 30)
    saved = stack.StackRecord.load(running.state_dir)
    history = saved.restarts["worker-0"]
    assert (history.count, len(history.restarted_at), history.last_exit_code) == (1, 1, -signal.SIGKILL)
    assert saved.workers[0].pid != first.pid and stack.is_ours(saved.workers[0])
    row = next(r for r in supervisor.health(running.settings) if r[0] == "worker-0")
    assert row[2:] == (True, "running; restarted 1 time in the last 10 min (last killed by SIGKILL)")


def test_supervisor_makes_a_crash_looping_worker_unhealthy(
    supervised: supervisor.RunningStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that exits at once at every start is restarted, and after three restarts status says so."""
    monkeypatch.setattr(supervisor, "RESTART_INTERVAL_S", 0.2)  # not 5 s between restarts: a quicker test
    running = supervised
    running.worker_env["PITSTOP_BATCH_WITHIN_S"] = "-1"  # every start exits with a one-line error
    running.record.workers.append(supervisor._start_worker(running, 0))

    def looping() -> bool:
        history = stack.StackRecord.load(running.state_dir).restarts.get("worker-0")
        return history is not None and history.count >= 3

    _supervise_until(running, looping, 60)
    rows = {r[0]: r for r in supervisor.health(running.settings)}
    assert rows["worker-0"][2] is False
    assert rows["worker-0"][3].startswith("restarted ")
    assert rows["worker-0"][3].endswith(
        "(last exit code 78); last log line: "
        "pitstop worker: PITSTOP_BATCH_WITHIN_S='-1': expected seconds > 0, at most 86400"), rows["worker-0"][3]
