"""Production's best level, the leakage gate's reference: the served predictions' lowest error on a stretch of
the history, checked against scikit-learn on that stretch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error

from feedback.config import parse_config
from retrain_worker.pipeline import BEST_LEVEL_BLOCKS, best_level_starts, production_best

CLF = parse_config('[models.m]\ntask = "classification"\npositive_class = 1\n').models["m"]
REG = parse_config('[models.m]\ntask = "regression"\nmetric = "mae"\n').models["m"]


def history(n: int, good_from: int, good_to: int, seed: int = 0) -> pd.DataFrame:
    """Served probabilities that are sharp and right in [good_from, good_to), a coin elsewhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.where((np.arange(n) >= good_from) & (np.arange(n) < good_to), np.where(y == 1, 0.9, 0.1), 0.5)
    p = np.clip(p + rng.normal(0, 0.05, n), 0.01, 0.99)
    return pd.DataFrame({"label": y, "served_prediction": (p >= 0.5).astype(int),
                         "served_probabilities": [{"0": 1 - q, "1": q} for q in p], "served_score": p})


def test_the_best_stretch_is_found_and_scored_as_sklearn_scores_it() -> None:
    frame = history(2000, 800, 1000)
    error, accuracy = production_best(CLF, frame, 200)
    rows = frame.iloc[800:1000]
    p1 = np.array([d["1"] for d in rows["served_probabilities"]])
    assert error == pytest.approx(log_loss(rows["label"], p1, labels=[0, 1]))
    assert accuracy == pytest.approx(accuracy_score(rows["label"], rows["served_prediction"]))


def test_regression_uses_mae_and_too_short_a_history_gives_nothing() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, 1000)
    served = y + np.where(np.arange(1000) < 500, 2.0, 0.1) * rng.normal(0, 1, 1000)
    frame = pd.DataFrame({"label": y, "served_prediction": served})
    error, accuracy = production_best(REG, frame, 250)
    best = min(mean_absolute_error(y[i:i + 250], served[i:i + 250]) for i in range(0, 751, 250))
    assert error == pytest.approx(best) and accuracy is None
    assert production_best(REG, frame.iloc[:100], 250) == (None, None)


def test_at_most_fifty_stretches_evenly_spread_are_scored_and_nothing_between_them() -> None:
    """A long history is scored on BEST_LEVEL_BLOCKS stretches, the first at row 0, a step apart and never
    overlapping (the store's bounded read fetches these rows only): a perfect stretch between two of them is not
    seen, a good one at one of their starts is."""
    starts = best_level_starts(10_000, 30)
    assert starts == range(0, 9971, 200) and len(starts) == BEST_LEVEL_BLOCKS
    assert best_level_starts(900, 300) == range(0, 601, 300) and best_level_starts(10, 0) == range(0)
    frame = history(10_000, 4_000, 4_030)  # a start: scored
    frame.loc[5_050:5_079, "served_probabilities"] = [{"0": 1.0 - y, "1": float(y)}
                                                      for y in frame["label"].iloc[5_050:5_080]]  # between two
    error, _ = production_best(CLF, frame, 30)
    p1 = np.array([d["1"] for d in frame["served_probabilities"].iloc[4_000:4_030]])
    assert error == pytest.approx(log_loss(frame["label"].iloc[4_000:4_030], p1, labels=[0, 1]))
