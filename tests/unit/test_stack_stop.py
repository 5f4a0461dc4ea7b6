"""Stopping processes: several together, SIGTERM first, SIGKILL for one that ignores it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pitstop import stack

#: a worker's stand-in: on SIGTERM it notes the time, takes a second to leave (as a worker leaves its group), notes
#: the time again and exits; or it ignores SIGTERM
_CHILD = """
import signal, sys, time
from pathlib import Path
folder, name, ignore = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "ignore"
def leave(*_):
    (folder / f"term-{name}").write_text(repr(time.time()))
    time.sleep(1.0)
    (folder / f"exit-{name}").write_text(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else leave)
(folder / f"ready-{name}").write_text("")
time.sleep(60)
"""


def _start(folder: Path, name: str, *, ignore: bool = False) -> stack.ProcessRecord:
    proc = stack._spawn([sys.executable, "-c", _CHILD, str(folder), name, "ignore" if ignore else "leave"],
                        folder / f"{name}.log")
    deadline = time.monotonic() + 30
    while not (folder / f"ready-{name}").exists():
        assert time.monotonic() < deadline and proc.poll() is None, (folder / f"{name}.log").read_text()
        time.sleep(0.02)
    return stack.ProcessRecord.of(proc.pid, name, _CHILD)


def test_workers_are_signalled_together_and_one_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    """Every process gets its SIGTERM before any has finished leaving (so stopping a stack takes its slowest
    worker's time, not the sum); one that ignores SIGTERM is killed at the timeout; one already gone is reported
    as not running."""
    gone = _start(tmp_path, "gone")
    stack.kill_process(gone)
    records = [_start(tmp_path, "a"), _start(tmp_path, "b"), _start(tmp_path, "deaf", ignore=True), gone]
    assert stack.stop_processes(records, timeout_s=5) == [True, True, True, False]
    assert not any(stack.is_ours(r) for r in records)
    termed = [float((tmp_path / f"term-{n}").read_text()) for n in ("a", "b")]
    exited = [float((tmp_path / f"exit-{n}").read_text()) for n in ("a", "b")]
    assert max(termed) < min(exited)
    assert not (tmp_path / "term-deaf").exists()
    assert stack.stop_process(records[0]) is False  # the same command twice: nothing left to stop
