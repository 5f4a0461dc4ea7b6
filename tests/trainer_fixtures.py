"""Trainers that misbehave, named by spec (``tests.trainer_fixtures:raising``) in the trainer tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

#: where the hanging trainer writes the pid of the process it starts (the tests set it)
HELPER_PID_FILE = "PITSTOP_TEST_TRAINER_HELPER_PID_FILE"

NOT_CALLABLE = 42


class _Raising:
    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> Any:
        msg = "no good\nat all"  # two lines: the error must come back as one
        raise RuntimeError(msg)


class _Hanging:
    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> Any:
        # a process of its own, as a trainer with worker processes would have: stopping must reach it too
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        if path := os.environ.get(HELPER_PID_FILE):
            with open(path, "w") as f:
                f.write(str(helper.pid))
        time.sleep(60)


class _Dying:
    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> Any:
        os._exit(3)


def raising(task: str) -> _Raising:
    """A trainer whose fit raises a two-line RuntimeError."""
    return _Raising()


def hanging(task: str) -> _Hanging:
    """A trainer whose fit starts a sleeping process and sleeps 60 s."""
    return _Hanging()


def dying(task: str) -> _Dying:
    """A trainer whose process exits with code 3 in the middle of fit."""
    return _Dying()


def not_a_trainer(task: str) -> int:
    """A factory that returns something without a fit method."""
    return 7
