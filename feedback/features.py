"""The frame a model is handed (events' features as logged, one row an event), and what it answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd


def feature_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``rows`` (features by name) as a DataFrame, each value's column typed as pandas infers it, a name missing
    from a row missing there. The column names are of numpy's object dtype, not pandas' string dtype: scikit-learn
    checks a frame's names at every step of a pipeline, and with pandas' Arrow strings a one-row prediction of a
    logistic regression took 3.2 ms instead of 2.6 (bench/serving.py).

    >>> frame = feature_frame([{"x": 1.5, "plan": "a"}, {"x": 2}])
    >>> frame.columns.dtype, frame["x"].tolist(), frame["plan"].tolist()
    (dtype('O'), [1.5, 2.0], ['a', nan])
    >>> feature_frame([]).shape, feature_frame([{}]).shape  # a request without features is a row all the same
    ((0, 0), (1, 0))
    """
    rows = [dict(row) for row in rows]
    names = list(dict.fromkeys(name for row in rows for name in row))
    # as pandas.DataFrame.from_records builds it, dtypes and missing values alike (tests/unit/test_features.py),
    # in two thirds of its time; but rows without a feature stay rows (from_records gives no row when no row has a
    # column, so a model without features was handed nothing to predict on)
    return pd.DataFrame([[row.get(name, np.nan) for name in names] for row in rows],
                        columns=pd.Index(names, dtype=object))


def model_answers(model: Any, X: pd.DataFrame, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``model``'s predictions for ``X`` and, if ``probabilities``, its ``predict_proba(X)`` (``None`` when it has
    none). A model with ``predict_and_proba(X)`` answers both in one pass (the default trainers' models do: a
    pipeline's transforms run once, not twice); any other is asked ``predict`` then ``predict_proba``.

    >>> from sklearn.linear_model import LogisticRegression
    >>> X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    >>> fitted = LogisticRegression().fit(X, [0, 0, 1, 1])
    >>> predicted, proba = model_answers(fitted, X, probabilities=True)
    >>> predicted.tolist(), proba.shape, model_answers(fitted, X, probabilities=False)[1]
    ([0, 0, 1, 1], (4, 2), None)
    """
    wants = probabilities and hasattr(model, "predict_proba")
    if wants and hasattr(model, "predict_and_proba"):
        predicted, proba = model.predict_and_proba(X)
        return np.asarray(predicted), np.asarray(proba)
    predicted = np.asarray(model.predict(X))
    return predicted, np.asarray(model.predict_proba(X)) if wants else None
