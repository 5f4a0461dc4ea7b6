"""For benchmarks that compare modes of the same code: each mode measured in a fresh process of its own, so that
what one mode patches, imports or leaves running cannot reach the next. The script runs itself with
``--mode MODE`` and prints its figures as one JSON line, last."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def each_in_its_own_process(script: str, modes: Sequence[str], *args: str) -> dict[str, Any]:
    """``{mode: the JSON the script printed last}``, the modes run one after the other."""
    report: dict[str, Any] = {}
    for mode in modes:
        out = subprocess.run([sys.executable, script, "--mode", mode, *args], check=True, capture_output=True,
                             text=True).stdout
        report[mode] = json.loads(out.strip().splitlines()[-1])
    return report
