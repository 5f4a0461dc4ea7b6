"""The frame a model is handed (feedback/features.py): as pandas' from_records builds it, but for the type of its
column names."""

from __future__ import annotations

import itertools

import pandas as pd

from feedback.features import feature_frame

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
