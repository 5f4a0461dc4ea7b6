"""Lines to stdout that survive a reader who leaves (`pitstop demo | head`, Ctrl-C on `make demo | tee log`)."""

from __future__ import annotations

import contextlib
import os
import sys

#: the exit status of a command whose output was closed: a shell's for a process SIGPIPE killed (128 + 13)
OUTPUT_CLOSED = 141


def say(line: str = "") -> None:
    """Print one line now. When the reader has gone, stdout is pointed at /dev/null first (later lines, and the
    interpreter's flush at exit, go nowhere instead of failing), then BrokenPipeError is raised once, so the command
    ends through its clean-up, which prints without failing."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null (what Python's documentation advises on SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
