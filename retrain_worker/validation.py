"""Checks a training set must pass before anything is trained on it; each check explains itself.

A failed check rejects the retrain with its sentence instead of training on garbage: too few rows or labels,
a single class, a feature mostly missing, or features the champion was trained on and the data no longer has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from retrain_worker.dataset import Dataset


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One data check: what was observed, against what, and a sentence."""

    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRules:
    """The limits of :func:`validate` (defaults suit a few thousand rows; set them per model)."""

    min_train_rows: int = 500
    min_test_rows: int = 200
    max_null_rate: float = 0.5
    min_minority_share: float = 0.01  # classification: the rarest label's share of the training rows


def validate(dataset: Dataset, *, task: str, rules: DataRules = DataRules(),
             champion_features: Sequence[str] | None = None) -> list[Check]:
    """Every check of ``dataset``; the retrain goes on only when all passed.

    >>> from datetime import UTC, datetime
    >>> from retrain_worker.dataset import DatasetSpec
    >>> frame = pd.DataFrame({"x": [1.0, None, 3.0, 4.0], "label": [0, 1, 0, 1], "weight": 1.0,
    ...                       "predicted_at": pd.to_datetime(["2026-01-0%d" % d for d in range(1, 5)], utc=True)})
    >>> ds = Dataset(spec=DatasetSpec(model_name="m", cutoff=datetime(2026, 2, 1, tzinfo=UTC)), frame=frame,
    ...              features=("x",), test_start=datetime(2026, 1, 4, tzinfo=UTC))
    >>> [(c.name, c.passed) for c in validate(ds, task="classification", rules=DataRules(min_train_rows=3,
    ...                                                                                   min_test_rows=1))]
    [('train_rows', True), ('test_rows', True), ('labels', True), ('null_rate', True), ('feature_set', True)]
    """
    train, test = dataset.train, dataset.test
    checks = [
        _at_least("train_rows", len(train), rules.min_train_rows, "training rows (weight > 0)"),
        _at_least("test_rows", len(test), rules.min_test_rows, "rows in the recent test window"),
        _labels(train, task, rules),
        _nulls(train, dataset.features, rules),
        _feature_set(dataset.features, champion_features),
    ]
    return checks


def failures(checks: Sequence[Check]) -> str | None:
    """The failed checks' sentences as one line, or None when every check passed."""
    failed = [c.sentence for c in checks if not c.passed]
    return "; ".join(failed) if failed else None


def _at_least(name: str, n: int, minimum: int, what: str) -> Check:
    ok = n >= minimum
    return Check(name=name, passed=ok, observed=float(n), threshold=float(minimum),
                 sentence=f"{n:,} {what} {'>=' if ok else '<'} minimum {minimum:,}: {'passed' if ok else 'failed'}")


def _labels(train: pd.DataFrame, task: str, rules: DataRules) -> Check:
    labels = train["label"]
    if task == "regression":
        numeric = pd.to_numeric(labels, errors="coerce")
        bad = int(numeric.isna().sum())
        ok = bad == 0 and len(labels) > 0
        return Check(name="labels", passed=ok, observed=float(bad), threshold=0.0,
                     sentence=("every label is a number: passed" if ok else
                               f"{bad:,} of {len(labels):,} labels are not numbers: failed"))
    counts = labels.astype(str).value_counts()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        return Check(name="labels", passed=False, observed=float(len(counts)), threshold=2.0,
                     sentence=f"one label only ({only}) in {len(labels):,} training rows: failed")
    share = float(counts.min() / counts.sum())
    ok = share >= rules.min_minority_share
    return Check(name="labels", passed=ok, observed=share, threshold=rules.min_minority_share,
                 sentence=(f"rarest label {counts.idxmin()!r} is {share:.2%} of the training rows "
                           f"{'>=' if ok else '<'} {rules.min_minority_share:.0%}: {'passed' if ok else 'failed'}"))


def _nulls(train: pd.DataFrame, features: Sequence[str], rules: DataRules) -> Check:
    if train.empty or not features:
        return Check(name="null_rate", passed=True, observed=None, threshold=rules.max_null_rate,
                     sentence="no rows or features to check for missing values")
    rates = train[list(features)].isna().mean()
    worst = rates.idxmax()
    ok = bool(rates.max() <= rules.max_null_rate)
    over = ", ".join(f"{f} {r:.0%}" for f, r in rates[rates > rules.max_null_rate].items())
    return Check(name="null_rate", passed=ok, observed=float(rates.max()), threshold=rules.max_null_rate,
                 sentence=(f"most missing feature {worst} {rates.max():.0%} <= {rules.max_null_rate:.0%}: passed" if ok
                           else f"features missing in more than {rules.max_null_rate:.0%} of rows ({over}): failed"))


def _feature_set(features: Sequence[str], champion: Sequence[str] | None) -> Check:
    if champion is None:
        return Check(name="feature_set", passed=True, observed=float(len(features)), threshold=None,
                     sentence=f"{len(features)} features; no champion to compare with: passed")
    missing = sorted(set(champion) - set(features))
    new = sorted(set(features) - set(champion))
    ok = not missing
    added = f" (new: {', '.join(new)})" if new else ""
    text = (f"features the champion uses are missing: {', '.join(missing)}: failed" if missing
            else f"every champion feature is present{added}: passed")
    return Check(name="feature_set", passed=ok, observed=float(len(missing)), threshold=0.0, sentence=text)
