"""`pitstop demo` end to end: its own stack, the join filling up, and nothing left running."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pitstop import stack, supervisor
from pitstop.demo import world

# drift starts 24 s in and is complete at 30 s; a 6-hour window fills in 21.6 s
DEMO_SECONDS = 60
TIMEOUT_S = 180.0


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, f"no match for {pattern!r} in the demo's output:\n{text}"
    return int(match.group(1).replace(",", ""))


def _recorded(state_dir: Path) -> list[stack.ProcessRecord]:
    record = stack.StackRecord.load(state_dir)
    found = [record.supervisor, record.broker, record.postgres, *record.workers]
    return [p for p in found if p is not None]


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose command line or environment names ``text`` (this test's state dir)."""
    hits = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid == os.getpid():
                continue
            if text in " ".join(proc.info["cmdline"] or ()):
                hits.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])}")
            elif any(text in value for value in proc.environ().values()):
                hits.append(f"{proc.pid} (environment): {' '.join(proc.info['cmdline'] or ())}")
    return hits


def test_demo_joins_outcomes_and_leaves_nothing_running(tmp_path: Path, stack_dir: Path) -> None:
    """`pitstop demo --duration 60` without configured services starts a stack, stores and joins
    predictions with their outcomes, dead-letters the malformed messages, shows drift on exactly
    the shifted features, exits 0, and stops every process it started."""
    state_dir = (stack_dir / "state").resolve()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PITSTOP_KAFKA_BOOTSTRAP", "PITSTOP_DATABASE_URL")}
    env["PITSTOP_STATE_DIR"] = str(state_dir)
    output = tmp_path / "demo.out"
    seen: dict[int, stack.ProcessRecord] = {}
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pitstop.cli", "demo", "--duration", str(DEMO_SECONDS)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ValueError, KeyError, TypeError):  # a file being replaced
                    seen.update((p.pid, p) for p in _recorded(state_dir))
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # too slow: stop it the way an operator would, then for sure
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                supervisor.stop_recorded(stack.StackRecord.load(state_dir))
    text = output.read_text(errors="replace")

    assert proc.returncode == 0, f"demo exited with {proc.returncode}:\n{text}"
    stored = _number(r"stored\s+([\d,]+) predictions;", text)
    joined = _number(r"([\d,]+) with a label", text)
    dead_letters = _number(r"([\d,]+) dead letters\n", text)
    published = _number(r"published ([\d,]+) predictions", text)
    assert 0 < stored <= published
    assert 0 < joined <= stored
    assert dead_letters > 0
    assert re.search(r"^stopped$", text, re.MULTILINE), text
    # the monitor's drift table: status per feature in the newest judged window
    table = dict(re.findall(r"^\s{4}([a-z][a-z_]*)\s+(drift|stable)\s", text, re.MULTILINE))
    assert set(table) == set(world.NUMERIC_FEATURES) | {"region", "plan"}, text
    assert {f for f, status in table.items() if status == "drift"} == set(world.DRIFTING_FEATURES), text
    assert re.search(r"accuracy\s+0\.\d+ \[0\.\d+, 0\.\d+\]", text), text
    # the drift makes one retrain decision: it fires once (pending first, unless a round saw every label at once)
    fired = re.findall(r"^decision  FIRED drift retrain, elevated: (.*)$", text, re.MULTILINE)
    assert len(fired) == 1 and "drift on 3 of 8 features" in fired[0], text
    pending = text.find("decision  PENDING drift retrain")
    assert pending == -1 or pending < text.find("decision  FIRED drift retrain"), text
    assert re.search(r"^  fired +drift elevated; trigger event published: churn/drift/v1-", text, re.MULTILINE), text

    assert {"broker", "postgres", "worker-0"} <= {p.name for p in seen.values()}, seen
    still_running = [f"{p.name} (pid {p.pid})" for p in seen.values() if stack.is_ours(p)]
    assert still_running == [], f"left running: {still_running}"
    assert not (state_dir / stack.STACK_FILE).exists()
    assert _processes_mentioning(str(state_dir)) == []
