"""Lines to stdout that survive a reader who leaves (`pitstop demo | head`, Ctrl-C on `make demo | tee log`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import TextIO

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


def json_default(value: object) -> object:
    """How a command's ``--json`` writes what JSON has no type for: times as RFC 3339 UTC, the rest as text."""
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def reply(say_line: Callable[[str], None], as_json: bool, sentence: str, **fields: object) -> None:
    """A command's answer: its sentence, or with ``--json`` one JSON object of ``fields`` and the sentence.

    >>> reply(print, False, "churn v2: approved")
    churn v2: approved
    >>> reply(print, True, "churn v2: approved", model="churn", version="v2")
    {"model": "churn", "version": "v2", "sentence": "churn v2: approved"}
    """
    say_line(json.dumps({**fields, "sentence": sentence}, default=json_default) if as_json else sentence)


class Progress:
    """A progress bar on a terminal, rewritten in place with \\r at most every 2 % (or when its text changes), then
    cleared; silent when the stream is not a terminal (a pipe, a file, a test's capture), so piped output and
    ``--json`` stay clean. It writes to stderr by default: stdout is the command's answer.

    >>> import io
    >>> class Terminal(io.StringIO):
    ...     def isatty(self) -> bool:
    ...         return True
    >>> shown = Terminal()
    >>> bar = Progress("replay churn v1", shown, width=80)
    >>> for done in range(1, 8761):
    ...     bar.update(done, 8760, "windows")
    >>> bar.close()
    >>> writes = [w.replace("\\x1b[K", "") for w in shown.getvalue().split("\\r")[1:]]  # each clears its tail
    >>> len(writes), writes[-2], writes[-1]
    (52, 'replay churn v1 [####################] 100% 8,760/8,760 windows', '')
    >>> writes[25]
    'replay churn v1 [##########..........]  50% 4,380/8,760 windows'
    >>> narrow = Terminal()
    >>> Progress("import a-model-with-a-long-name v20261207", narrow, width=72).update(3, 4, "predictions recounted")
    >>> narrow.getvalue()[1:].replace("\\x1b[K", "")
    'import a-model... [###############.....]  75% 3/4 predictions recounted'
    >>> step = Terminal()
    >>> bar = Progress("train churn", step, width=40)
    >>> bar.status("loading: 120,000 rows loaded, and more text than fits")
    >>> bar.status("loading: 120,000 rows loaded, and more text than fits")  # unchanged: not written again
    >>> step.getvalue().split("\\r")[1:]
    ['train churn: loading: 120,000 rows l...\\x1b[K']
    >>> quiet = io.StringIO()
    >>> Progress("replay", quiet).update(1, 2)
    >>> quiet.getvalue()
    ''
    """

    BAR = 20

    def __init__(self, label: str, stream: TextIO | None = None, *, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.shown: object = None
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError):  # a closed or odd stream
            self.on = False

    def update(self, done: int, total: int, unit: str = "") -> None:
        """``done`` of ``total`` (``unit`` names them), as a bar."""
        if not self.on or total < 1:
            return
        step = done * 50 // total
        if step == self.shown:
            return
        self.shown = step
        filled = done * self.BAR // total
        figures = f"[{'#' * filled}{'.' * (self.BAR - filled)}] {done * 100 // total:>3}% {done:,}/{total:,}"
        line = f"{self.label} {figures} {unit}".rstrip()
        if len(line) > self.limit:  # a narrow terminal keeps the bar and figures: the label gives way first
            room = max(self.limit - len(figures) - len(unit) - 2, 0)
            label = self.label if len(self.label) <= room else self.label[: max(room - 3, 0)] + "..."
            line = f"{label} {figures} {unit}".rstrip()
        self._write(line)

    def status(self, text: str) -> None:
        """A step whose size is not known ahead (a training's 'loading', 'evaluating'), as text after the label."""
        if not self.on or text == self.shown:
            return
        self.shown = text
        self._write(f"{self.label}: {text}")

    @property
    def limit(self) -> int:
        return max(self.width - 1, 10)  # the last column would wrap on some terminals

    def _write(self, line: str) -> None:
        if len(line) > self.limit:
            line = line[: self.limit - 3] + "..."
        self.stream.write(f"\r{line}\x1b[K")  # cleared to the end: a shorter line leaves no tail
        self.stream.flush()

    def close(self) -> None:
        if self.on and self.shown is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = None
