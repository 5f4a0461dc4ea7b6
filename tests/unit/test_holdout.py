"""The frozen held-out set's plan: when a retrain freezes one, gates on it, retires it after a change, refreshes
it, and says it is stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from retrain_worker.dataset import Dataset, DatasetSpec
from retrain_worker.holdout import Holdout, plan

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def dataset(n: int, *, cutoff_days: float = 1.0, change: datetime | None = None, test_rows: int = 200) -> Dataset:
    """``n`` labelled rows one minute apart from T0, the newest ``test_rows`` the recent window."""
    at = pd.to_datetime([T0 + timedelta(minutes=i) for i in range(n)], utc=True)
    frame = pd.DataFrame({"x": np.arange(n, dtype=float), "prediction_id": [f"p{i}" for i in range(n)],
                          "predicted_at": at, "label": np.arange(n) % 2, "weight": np.ones(n)})
    spec = DatasetSpec(model_name="churn", cutoff=T0 + cutoff_days * DAY, change_point=change)
    return Dataset(spec=spec, frame=frame, features=("x",), test_start=at[n - test_rows].to_pydatetime())


def existing(first: int, last: int, *, created: datetime = T0 + DAY) -> Holdout:
    return Holdout(model_name="churn", created_at=created, trigger_id="t0", holdout_id=7,
                   window=(T0 + timedelta(minutes=first), T0 + timedelta(minutes=last)),
                   prediction_ids=frozenset(f"p{i}" for i in range(first, last + 1)))


def make(ds: Dataset, current: Holdout | None, **kw: object):
    args = {"rows": 100, "refresh": 7 * DAY, "max_age": 30 * DAY, "min_rows": 200, "min_train_rows": 300,
            "trigger_id": "t1"} | kw
    return plan(ds, current, **args)  # type: ignore[arg-type]


def test_the_first_retrain_freezes_the_newest_rows_before_the_recent_window_and_does_not_gate_on_them() -> None:
    p = make(dataset(3000), None)
    assert p.new is not None and p.gate_on is None
    assert p.new.prediction_ids == frozenset(f"p{i}" for i in range(2700, 2800))
    assert p.exclude == p.new.prediction_ids and p.new.created_at == T0 + DAY
    ds = dataset(3000)
    trained = Dataset(spec=ds.spec, frame=ds.frame, features=ds.features, test_start=ds.test_start,
                      held_out=p.exclude).train
    assert len(trained) == 2700 and not set(trained["prediction_id"]) & p.exclude


def test_too_few_rows_freeze_nothing() -> None:
    """A set of 100 is frozen from at least ten times as many rows before the recent window: 999 do not do."""
    p = make(dataset(1199), None)
    assert p.new is None and p.exclude == frozenset()
    assert p.notes[0] == "no new held-out set: fewer than 1,000 labelled rows before the recent window"
    assert make(dataset(1200), None).new is not None


def test_a_later_retrain_gates_on_the_set_and_keeps_it_out_of_training() -> None:
    current = existing(2300, 2799)
    p = make(dataset(5000, cutoff_days=3), current)
    assert p.new is None and p.gate_on is not None
    assert set(p.gate_on["prediction_id"]) == current.prediction_ids and p.exclude == current.prediction_ids
    assert p.lineage(T0 + 3 * DAY)["used"]["age_days"] == 2.0


def test_a_change_after_the_set_retires_it_and_freezes_one_from_the_new_concept() -> None:
    change = T0 + timedelta(minutes=3000)
    p = make(dataset(5000, cutoff_days=3, change=change), existing(2300, 2799))
    assert p.gate_on is None and p.current is None
    assert "is before the change point" in p.notes[0]
    assert p.new is not None and min(p.new.prediction_ids, key=lambda s: int(s[1:])) == "p4700"
    assert p.new.window[0] >= change


def test_an_old_set_is_refreshed_and_one_that_cannot_be_is_stale() -> None:
    old = existing(100, 599, created=T0 - 40 * DAY)
    refreshed = make(dataset(5000), old)  # 5,000 rows: a new set can be frozen; the old one still gates this time
    assert refreshed.new is not None and refreshed.gate_on is not None and refreshed.stale is None
    assert refreshed.exclude == old.prediction_ids | refreshed.new.prediction_ids
    stale = make(dataset(1400), old)  # 1,200 rows before the window less the old set's 500: too few
    assert stale.new is None and stale.gate_on is not None
    assert stale.stale is not None and "is 41 days old" in stale.stale and "maximum 30 days" in stale.stale
    fresh = make(dataset(2000, cutoff_days=3), existing(100, 599, created=T0 - 2 * DAY))  # 5 days: not due
    assert fresh.new is None and fresh.stale is None


def test_a_set_mostly_outside_the_loaded_history_is_not_gated_on() -> None:
    p = make(dataset(3000), existing(-450, 49))  # only 50 of its rows are in the frame (min_rows 200)
    assert p.gate_on is None and "50 of its 500 rows loaded" in p.notes[0]


def test_no_rows_means_no_held_out_set() -> None:
    p = make(dataset(5000), existing(2300, 2799), rows=0)
    assert (p.gate_on, p.new, p.exclude) == (None, None, frozenset())


def test_the_set_never_overlaps_the_recent_window() -> None:
    ds = dataset(3000)
    p = make(ds, None)
    assert p.new is not None and not set(ds.test["prediction_id"]) & p.new.prediction_ids
