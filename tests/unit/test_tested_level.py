"""The tested level a new version carries (``lineage.expected``): the monitoring's main metric of the gated model on
the recent test window, checked against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from feedback.config import parse_config
from retrain_worker.gates import EvalSet
from retrain_worker.pipeline import _tested_level

RNG = np.random.default_rng(11)
N = 3_000


def _config(body: str):
    return next(iter(parse_config(body).models.values()))


def test_binary_f1_and_accuracy_match_scikit_learn() -> None:
    y = RNG.integers(0, 2, N)
    guess = np.where(RNG.random(N) < 0.8, y, 1 - y)
    p = np.clip(0.5 + (guess - 0.5) * RNG.random(N), 0, 1)
    keys = np.array(["0", "1"])
    s = EvalSet(name="recent", y_true=keys[y], challenger=keys[guess], challenger_proba=p, positive_class="1",
                challenger_latency_ms_per_row=0.1)
    for metric, expected in (("accuracy", skm.accuracy_score(y, guess)), ("f1", skm.f1_score(y, guess)),
                             ("log_loss", skm.log_loss(y, p))):
        level = _tested_level(_config(f'[models.m]\ntask = "classification"\npositive_class = 1\n'
                                      f'metric = "{metric}"\n'), s)
        assert level is not None and level["metric"] == metric
        assert level["value"] == pytest.approx(expected, rel=1e-6), metric
        assert level["ci_low"] < level["value"] < level["ci_high"]


def test_multiclass_macro_f1_matches_scikit_learn() -> None:
    names = np.array(["bike", "bus", "car"])
    y = RNG.integers(0, 3, N)
    guess = np.where(RNG.random(N) < 0.7, y, RNG.integers(0, 3, N))
    proba = RNG.dirichlet(np.ones(3), N)
    s = EvalSet(name="recent", y_true=names[y], challenger=names[guess], challenger_proba=proba,
                classes=tuple(names), challenger_latency_ms_per_row=0.1)
    level = _tested_level(_config('[models.m]\ntask = "classification"\nmetric = "macro_f1"\n'), s)
    assert level is not None and level["n"] > 0
    assert level["value"] == pytest.approx(skm.f1_score(y, guess, average="macro"), rel=1e-9)


def test_regression_mae_matches_scikit_learn_and_an_empty_window_has_no_level() -> None:
    y = RNG.normal(10, 3, N)
    guess = y + RNG.normal(0, 1, N)
    config = _config('[models.m]\ntask = "regression"\nmetric = "mae"\n')
    s = EvalSet(name="recent", y_true=y, challenger=guess, challenger_latency_ms_per_row=0.1)
    level = _tested_level(config, s)
    assert level is not None and level["n"] == N
    assert level["value"] == pytest.approx(skm.mean_absolute_error(y, guess), rel=1e-6)
    assert level["ci_low"] < level["value"] < level["ci_high"]
    empty = EvalSet(name="recent", y_true=np.array([]), challenger=np.array([]), challenger_latency_ms_per_row=0.1)
    assert _tested_level(config, empty) is None
