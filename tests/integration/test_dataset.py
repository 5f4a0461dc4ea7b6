"""Point-in-time training sets from the real store: only what was knowable at the cutoff, split by time, streamed
in chunks, weighed by recency and the change point, and checked before training."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from feedback.store import FeedbackStore
from retrain_worker.dataset import DatasetSpec, load_dataset
from retrain_worker.validation import DataRules, failures, validate
from retrain_worker.weights import DAY_S, WeightPolicy, recency_weights
from tests.factories import T0, outcome, prediction

CUTOFF = T0 + timedelta(days=10)


def _write_history(store: FeedbackStore, n: int = 3000) -> None:
    """``n`` predictions over 10 days, each labelled one hour later; a few special cases around the cutoff."""
    preds = [prediction(i, predicted_at=T0 + timedelta(seconds=i * 10 * 86_400 / n - 7200),
                        features={"x": float(i % 97), "plan": "ab"[i % 2]}, prediction=i % 2) for i in range(n)]
    labels = [outcome(i, label=(i // 3) % 2, observed_at=p.predicted_at + timedelta(hours=1))
              for i, p in enumerate(preds)]
    store.write_batch(preds, labels)


def _rows(store: FeedbackStore) -> dict[str, int]:
    return {pid: label for pid, label in store.rows("SELECT prediction_id, label::int FROM current_labels")}


def test_only_what_was_knowable_at_the_cutoff_enters(store: FeedbackStore) -> None:
    """An outcome observed after the cutoff never enters, a correction after it neither (the label as it stood
    is used), a prediction made after it neither; the rows equal an independent SQL count."""
    _write_history(store)
    late = prediction(90_001, predicted_at=CUTOFF - timedelta(hours=3), features={"x": 1.0, "plan": "a"})
    corrected = prediction(90_002, predicted_at=CUTOFF - timedelta(hours=3), features={"x": 2.0, "plan": "b"})
    after = prediction(90_003, predicted_at=CUTOFF + timedelta(minutes=1), features={"x": 3.0, "plan": "a"})
    store.write_batch([late, corrected, after], [
        outcome(90_001, label=1, observed_at=CUTOFF + timedelta(seconds=1)),  # known only after the cutoff
        outcome(90_002, label=0, observed_at=CUTOFF - timedelta(hours=1)),
        outcome(90_002, label=1, observed_at=CUTOFF + timedelta(days=2)),  # a correction after the cutoff
        outcome(90_003, label=1, observed_at=CUTOFF + timedelta(hours=1)),
    ])
    with store.pool.connection() as conn:
        ds = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF))
    ids = set(ds.frame["prediction_id"])
    assert "p-90001" not in ids and "p-90003" not in ids
    assert ds.frame.loc[ds.frame["prediction_id"] == "p-90002", "label"].tolist() == [0]
    assert _rows(store)["p-90002"] == 1  # the store's current label is the correction
    expected = store.scalar(
        "SELECT count(*) FROM predictions p WHERE p.predicted_at < %s AND EXISTS ("
        "SELECT 1 FROM outcomes o WHERE o.prediction_id = p.prediction_id AND o.observed_at <= %s)", (CUTOFF, CUTOFF))
    assert len(ds.frame) == expected
    assert (ds.frame["labelled_at"] <= CUTOFF).all() and (ds.frame["predicted_at"] < CUTOFF).all()
    assert set(ds.features) == {"x", "plan"}


def test_the_split_is_by_time_and_chunks_change_nothing(store: FeedbackStore) -> None:
    """The recent test window is the newest fifth of the rows, all after every training row; a backlog many
    times the chunk size loads the same frame as one chunk."""
    _write_history(store)
    with store.pool.connection() as conn:
        whole = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF), chunk_rows=100_000)
        seen: list[int] = []
        chunked = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF), chunk_rows=250,
                               progress=seen.append)
    assert chunked.frame.equals(whole.frame)
    assert seen[-1] == len(whole.frame) and len(seen) >= len(whole.frame) // 250
    train, test = whole.train, whole.test
    assert len(train) + len(test) == len(whole.frame)
    assert train["predicted_at"].max() < test["predicted_at"].min()
    assert len(test) == int(np.ceil(0.2 * len(whole.frame)))
    lineage = whole.lineage()
    assert lineage["train_rows"] == len(train) and lineage["test_rows"] == len(test)
    assert lineage["weights"]["half_life_days"] == 50


def test_training_starts_at_the_change_point(store: FeedbackStore) -> None:
    """With a change point, rows before it weigh nothing (excluded) or a tenth (down-weighted); after it,
    recency alone."""
    _write_history(store)
    change = T0 + timedelta(days=6)
    with store.pool.connection() as conn:
        excluded = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF, change_point=change))
        down = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF, change_point=change,
                                              weights=WeightPolicy(before_change="downweight")))
    assert excluded.train["predicted_at"].min() >= change
    before = down.frame["predicted_at"] < change
    age_s = np.array([(CUTOFF - at).total_seconds() for at in down.frame["predicted_at"]])
    expected = recency_weights(age_s, 50 * DAY_S) * np.where(before, 0.1, 1.0)
    assert np.allclose(down.frame["weight"], expected)


@pytest.mark.parametrize(("days", "weight"), [(7, 0.907), (30, 0.660), (90, 0.287)])
def test_recency_weights_at_a_week_a_month_a_quarter(days: int, weight: float) -> None:
    """The default half-life of 50 days gives seed 003's 'week 1.0, month 0.7, quarter 0.3', about."""
    at = np.array([np.datetime64(CUTOFF.replace(tzinfo=None) - timedelta(days=days), "us")])
    from retrain_worker.weights import row_weights

    assert row_weights(at, CUTOFF, WeightPolicy())[0] == pytest.approx(weight, abs=1e-3)


def test_a_bad_dataset_is_rejected_with_the_reason(store: FeedbackStore) -> None:
    """One label only, a feature mostly missing, too few rows, a champion feature gone: each check says so."""
    preds = [prediction(i, predicted_at=T0 + timedelta(minutes=i), features={"x": None if i % 4 else 1.0},
                        prediction=0) for i in range(300)]
    store.write_batch(preds, [outcome(i, label=1) for i in range(300)])
    with store.pool.connection() as conn:
        ds = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=datetime(2026, 6, 1, tzinfo=UTC)))
    checks = {c.name: c for c in validate(ds, task="classification", rules=DataRules(),
                                          champion_features=["x", "tenure"])}
    assert not checks["train_rows"].passed and "< minimum 500" in checks["train_rows"].sentence
    assert not checks["labels"].passed and checks["labels"].sentence.startswith("one label only (1)")
    assert not checks["null_rate"].passed and "x 75%" in checks["null_rate"].sentence
    assert not checks["feature_set"].passed and "missing: tenure" in checks["feature_set"].sentence
    reason = failures(checks.values())
    assert reason is not None and "\n" not in reason and reason.count("failed") == 4


def test_with_a_change_point_the_test_window_is_cut_from_the_new_concept(store: FeedbackStore) -> None:
    """A change one day before the cutoff (a tenth of the rows): the test window is the newest fifth of the rows
    since the change, and rows since the change remain to train on (a fifth of the whole history would reach back
    past the change and leave none)."""
    _write_history(store)
    change = CUTOFF - timedelta(days=1)
    with store.pool.connection() as conn:
        ds = load_dataset(conn, DatasetSpec(model_name="churn", cutoff=CUTOFF, change_point=change, min_test_rows=50))
    since = ds.frame[ds.frame["predicted_at"] >= change]
    assert ds.test["predicted_at"].min() >= change
    assert len(ds.test) == int(np.ceil(0.2 * len(since)))
    assert len(ds.train) == len(since) - len(ds.test) > 0
