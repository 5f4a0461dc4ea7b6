"""Row weights for training on the current concept: recency decay, a step window, and the change point.

Seed 003's retraining trap: appending months of old data and refitting fits every distribution and none of
them. Recent rows weigh more: ``0.5 ** (age / half_life)``, whose default half-life of 50 days gives about
seed 003's "last week 1.0, last month 0.7, last quarter 0.3". After a drift or performance trigger the rows
before its change point are excluded or down-weighted: a refit at the trigger on all data fits the old concept
(shared measurements: the post-change labels carry 0.5-5% of the recency-weighted sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

DAY_S = 86_400.0
DEFAULT_HALF_LIFE_S = 50 * DAY_S

Scheme = Literal["exponential", "step"]
BeforeChange = Literal["exclude", "downweight", "keep"]


def recency_weights(age_s: np.ndarray, half_life_s: float) -> np.ndarray:
    """``0.5 ** (age / half_life)``: 1 for a row of the cutoff, 0.5 one half-life before it.

    >>> recency_weights(np.array([0.0, 3600.0]), half_life_s=3600.0)
    array([1. , 0.5])
    >>> np.round(recency_weights(np.array([7, 30, 90]) * DAY_S, DEFAULT_HALF_LIFE_S), 2)
    array([0.91, 0.66, 0.29])
    """
    if half_life_s <= 0:
        msg = f"half_life_s must be > 0, got {half_life_s}"
        raise ValueError(msg)
    return np.power(0.5, np.maximum(np.asarray(age_s, dtype=np.float64), 0.0) / half_life_s)


def label_recency_weights(n: int, half_life_rows: float) -> np.ndarray:
    """Recency counted in labels, for ``n`` rows oldest first: ``0.5 ** (rows newer than this one / half_life)``.
    A change's transition rows weigh less as the labels after it accumulate, whatever the traffic's rate.

    >>> label_recency_weights(4, half_life_rows=2.0)
    array([0.35355339, 0.5       , 0.70710678, 1.        ])
    """
    if half_life_rows <= 0:
        msg = f"half_life_rows must be > 0, got {half_life_rows}"
        raise ValueError(msg)
    return np.power(0.5, np.arange(n - 1, -1, -1, dtype=np.float64) / half_life_rows)


def step_weights(age_s: np.ndarray, window_s: float) -> np.ndarray:
    """1 inside the last ``window_s`` before the cutoff, 0 before it.

    >>> step_weights(np.array([0.0, 10.0, 11.0]), window_s=10.0)
    array([1., 1., 0.])
    """
    return (np.asarray(age_s, dtype=np.float64) <= window_s).astype(np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightPolicy:
    """How rows are weighed; recorded in the candidate's lineage as it is (:meth:`describe`)."""

    scheme: Scheme = "exponential"
    half_life_s: float = DEFAULT_HALF_LIFE_S
    window_s: float = 90 * DAY_S  # the step scheme's window
    before_change: BeforeChange = "exclude"
    before_change_factor: float = 0.1  # the down-weighting of rows before the change point

    def describe(self) -> dict[str, object]:
        return {"scheme": self.scheme, "half_life_days": self.half_life_s / DAY_S, "window_days": self.window_s / DAY_S,
                "before_change": self.before_change, "before_change_factor": self.before_change_factor}


def row_weights(predicted_at: np.ndarray, cutoff: datetime, policy: WeightPolicy,
                change_point: datetime | None = None) -> np.ndarray:
    """Each row's weight from its prediction time (numpy datetime64[us] in UTC) at ``cutoff``.

    Rows before ``change_point`` are dropped (weight 0), down-weighted by ``before_change_factor``, or kept,
    as the policy says; without a change point (calendar, volume, manual triggers) only recency counts.

    >>> from datetime import UTC
    >>> cutoff = datetime(2026, 3, 31, tzinfo=UTC)
    >>> at = np.array(["2026-03-30T00:00", "2026-03-01T00:00", "2025-12-31T00:00"], dtype="datetime64[us]")
    >>> np.round(row_weights(at, cutoff, WeightPolicy()), 3)
    array([0.986, 0.66 , 0.287])
    >>> row_weights(at, cutoff, WeightPolicy(), change_point=datetime(2026, 3, 15, tzinfo=UTC)).round(3)
    array([0.986, 0.   , 0.   ])
    """
    cut = _utc64(cutoff)
    age_s = (cut - predicted_at.astype("datetime64[us]")).astype("timedelta64[us]").astype(np.float64) / 1e6
    if policy.scheme == "exponential":
        weights = recency_weights(age_s, policy.half_life_s)
    else:
        weights = step_weights(age_s, policy.window_s)
    if change_point is not None and policy.before_change != "keep":
        before = predicted_at < _utc64(change_point)
        factor = 0.0 if policy.before_change == "exclude" else policy.before_change_factor
        weights = np.where(before, weights * factor, weights)
    return weights


def _utc64(at: datetime) -> np.datetime64:
    """An aware instant as numpy datetime64[us] in UTC (numpy has no time zones)."""
    if at.tzinfo is None:
        msg = f"a timezone-aware instant is needed, got {at!r}"
        raise ValueError(msg)
    return np.datetime64(at.astimezone(UTC).replace(tzinfo=None), "us")
