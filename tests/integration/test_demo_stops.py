"""`pitstop demo` stops everything it started whatever happens to its output: a reader that leaves (`| head`), or
Ctrl-C on a pipeline (`make demo | tee log`: the demo and tee get SIGINT together)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from pitstop import stack
from tests.conftest import Services

LINES_READ = 25


def _recorded(state_dir: Path) -> dict[int, stack.ProcessRecord]:
    with contextlib.suppress(ValueError, KeyError, TypeError):  # a file being replaced
        record = stack.StackRecord.load(state_dir)
        return {p.pid: p for p in (record.supervisor, record.broker, record.postgres, *record.workers) if p}
    return {}


def test_demo_stops_its_stack_when_its_output_goes(services: Services, db_schema: str, unique_name: str,
                                                   tmp_path: Path) -> None:
    """The demo's stdout is a pipe whose reader closes it after 25 lines (as `head -n 25` does), and a SIGINT follows
    (Ctrl-C on the pipeline: it reaches the demo while it stops); the demo exits with the status of a closed pipe,
    one line on stderr and no traceback, and no process the stack recorded is left running."""
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")} | {
        "PITSTOP_STATE_DIR": str(state_dir), "PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
        "PITSTOP_TOPIC_PREFIX": f"{unique_name}.", "PITSTOP_APP_ID": unique_name}
    log_path = tmp_path / "demo.err"
    seen: dict[int, stack.ProcessRecord] = {}
    with open(log_path, "wb") as err:
        demo = subprocess.Popen([sys.executable, "-m", "pitstop.cli", "demo", "--duration", "30"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert demo.stdout is not None
        lines = [demo.stdout.readline() for _ in range(LINES_READ)]
        seen.update(_recorded(state_dir))
        demo.stdout.close()
        demo.send_signal(signal.SIGINT)  # Ctrl-C on the pipeline: with the closed pipe, or as the demo meets it
        demo.wait(60)
        assert any(b"workers" in line for line in lines), lines
        started = {p.name for p in seen.values()}
        assert {"supervisor", "worker-0", "monitor-0", "retrain-0", "rollout-0"} <= started, seen
        left = [f"{p.name} (pid {p.pid})" for p in seen.values() if stack.is_ours(p)]
        assert left == [], f"left running: {left}; stderr: {log_path.read_text()[-2000:]}"
        assert not (state_dir / stack.STACK_FILE).exists()
        assert demo.returncode == 141, log_path.read_text()
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
        assert log_path.read_text().strip().endswith("pitstop demo: the output was closed; stopped")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for record in seen.values():
            stack.stop_process(record)  # what the demo left, so that a failure leaks nothing either
