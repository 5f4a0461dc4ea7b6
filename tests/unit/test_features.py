"""The frame a model is handed (feedback/features.py): as pandas' from_records builds it, but for the type of its
column names."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from feedback.features import feature_frame, model_answers

#: a feature's value of every JSON type at its extremes, and what a Python caller may pass besides
VALUES = [0, -5, 2**63, 2**64 + 1, -2**63, 1.5, float("inf"), -0.0, 1e308, 5e-324, True, False, "a", "", "é\x00",
          None, [1, 2], {"a": 1}, [], {}]


def test_the_frame_is_from_records_with_object_column_names() -> None:
    """Every pair of values in one column, and in two columns each missing from the other's row."""
    cases = [
        *([{"x": a}, {"x": b}] for a, b in itertools.product(VALUES, VALUES)),
        *([{"x": a}, {"y": b}] for a, b in itertools.product(VALUES, VALUES)),
        [{"x": 1, "y": "a"}, {"y": "b", "x": 2.5, "z": True}],
        [],
    ]
    for rows in cases:
        frame = feature_frame(rows)
        try:
            pd.testing.assert_frame_equal(frame, pd.DataFrame.from_records(rows), check_column_type=False,
                                          check_exact=True)
        except AssertionError as exc:
            msg = f"{rows!r}: {exc}"
            raise AssertionError(msg) from None
        assert frame.columns.dtype == object, rows


def test_requests_without_features_are_rows() -> None:
    """A request with no feature is still a request: one row (from_records gives none when no row has a column)."""
    assert feature_frame([{}, {}]).shape == (2, 0)
    assert feature_frame([]).shape == (0, 0)


class _Asked:
    """A model that counts what it is asked; ``one_pass`` gives it ``predict_and_proba``."""

    classes_ = np.array(["no", "yes"])

    def __init__(self, *, one_pass: bool) -> None:
        self.asked: list[str] = []
        if one_pass:
            self.predict_and_proba = lambda X: (self._ask("both"), np.tile([0.25, 0.75], (len(X), 1)))

    def _ask(self, what: str) -> np.ndarray:
        self.asked.append(what)
        return np.array(["yes"])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self._ask("predict")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self._ask("proba")
        return np.array([[0.4, 0.6]])


@pytest.mark.parametrize(("one_pass", "probabilities", "asked", "proba"), [
    (True, True, ["both"], [[0.25, 0.75]]),
    (False, True, ["predict", "proba"], [[0.4, 0.6]]),
    (True, False, ["predict"], None),
    (False, False, ["predict"], None),
])
def test_model_answers_asks_one_pass_when_the_model_offers_it(one_pass: bool, probabilities: bool,
                                                              asked: list[str], proba: object) -> None:
    model = _Asked(one_pass=one_pass)
    predicted, got = model_answers(model, feature_frame([{"x": 1}]), probabilities=probabilities)
    assert predicted.tolist() == ["yes"] and model.asked == asked
    assert (got if got is None else got.tolist()) == proba


def test_model_answers_without_predict_proba_gives_none() -> None:
    """A regression model has no probabilities to give, asked for them or not."""

    class Regressor:
        def predict(self, X: pd.DataFrame) -> np.ndarray:
            return np.full(len(X), 2.5)

    predicted, proba = model_answers(Regressor(), feature_frame([{"x": 1}, {"x": 2}]), probabilities=True)
    assert predicted.tolist() == [2.5, 2.5] and proba is None
