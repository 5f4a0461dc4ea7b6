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
#: where the trainer that breaks on its second fit counts its fits (each fit runs in a process of its own)
FITS_FILE = "PITSTOP_TEST_TRAINER_FITS_FILE"

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


class _BrokenSecondFit:
    """A logistic regression that learns the labels inverted from its second fit on (a final fit gone wrong)."""

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=500)

    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> Any:
        path = os.environ[FITS_FILE]
        fits = int(open(path).read() or 0) + 1 if os.path.exists(path) else 1  # noqa: SIM115
        with open(path, "w") as f:
            f.write(str(fits))
        numeric = X.select_dtypes("number").fillna(0)
        labels = y.to_numpy()
        if fits >= 2:
            classes = np.unique(labels)
            labels = np.where(labels == classes[0], classes[-1], classes[0])
        self.model.fit(numeric, labels, sample_weight=sample_weight)
        self.columns = list(numeric.columns)
        self.classes_ = self.model.classes_
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict(X[self.columns].fillna(0))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X[self.columns].fillna(0))


def broken_second_fit(task: str) -> _BrokenSecondFit:
    """A trainer whose first fit is sound and whose later fits learn the labels inverted."""
    return _BrokenSecondFit()


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
