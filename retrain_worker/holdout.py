"""The frozen held-out set: a fixed block of a model's labelled predictions that no model trains on after it
is frozen, so that every later candidate and champion are scored on the same rows.

The recent test window moves with every retrain; the held-out set stays, so a gate on it compares a candidate
with the champion on data neither has seen, and a slow slide of quality shows as a trend on one yardstick.

- **Frozen** by a retrain, from the newest labelled rows before its recent test window (and after its change
  point, when the trigger has one), only when those rows are at least ten times ``holdout_rows`` (at the
  first refits after a change there are too few, and the new concept's rows go to training). Its rows are
  stored by prediction id in ``holdout_sets``; its age is the event time since it was frozen.
- **Used** by every later retrain: its rows are taken out of training and gated on as the ``holdout`` set (the
  labels as they stand at that retrain's cutoff). The retrain that freezes a set does not gate on it: the
  champion may have trained on those rows.
- **Retired** when a trigger's change point is after its rows (a set from the old concept would judge the new
  model on what it was built to forget): the retrain gates on the recent window alone, and freezes a new set
  from post-change rows as soon as there are enough.
- **Refreshed** once it is older than ``holdout_refresh``; a set older than ``holdout_max_age`` (30 days by
  default; not refreshed, too few rows since) raises a ``holdout_stale`` alert with each retrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg

from retrain_worker.dataset import Dataset

#: a set is frozen only from at least this many times its rows: the newest rows before the recent window are
#: the best of the new concept, and the demo's first retrain after a drift, 2,800 rows, lost 500 of them to
#: the set and trained on the transition (accuracy 0.69-0.71 against 0.73-0.74)
HOLDOUT_SHARE = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Holdout:
    """A frozen held-out set."""

    model_name: str
    created_at: datetime  # event time: the cutoff of the retrain that froze it
    trigger_id: str | None
    window: tuple[datetime, datetime]  # the prediction times of its first and last rows
    prediction_ids: frozenset[str]
    holdout_id: int | None = None  # set once stored

    def describe(self, at: datetime) -> dict[str, Any]:
        return {"holdout_id": self.holdout_id, "created_at": self.created_at.isoformat(),
                "rows": len(self.prediction_ids), "window": [w.isoformat() for w in self.window],
                "age_days": round((at - self.created_at) / timedelta(days=1), 2)}


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldoutPlan:
    """What one retrain does with the held-out set."""

    gate_on: pd.DataFrame | None  # the rows to gate on (the current set's, as loaded at this cutoff), if any
    exclude: frozenset[str]  # prediction ids no model of this retrain may train on
    new: Holdout | None  # a set frozen by this retrain, stored with its outcome
    current: Holdout | None
    stale: str | None  # the alert's sentence, when the set in use is older than the maximum age
    notes: tuple[str, ...]

    def lineage(self, at: datetime) -> dict[str, Any]:
        return {"used": self.current.describe(at) if self.gate_on is not None and self.current else None,
                "frozen": self.new.describe(at) if self.new else None, "notes": list(self.notes)}


_LATEST = """
SELECT holdout_id, created_at, trigger_id, window_start, window_end, prediction_ids FROM holdout_sets
WHERE model_name = %s ORDER BY holdout_id DESC LIMIT 1
"""
_SAVE = """
INSERT INTO holdout_sets (model_name, created_at, trigger_id, window_start, window_end, prediction_ids)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING holdout_id
"""


def latest(cur: psycopg.Cursor[Any], model: str) -> Holdout | None:
    """The model's newest frozen set."""
    row = cur.execute(_LATEST, (model,)).fetchone()
    if row is None:
        return None
    holdout_id, created_at, trigger_id, start, end, ids = row
    return Holdout(model_name=model, created_at=created_at, trigger_id=trigger_id, window=(start, end),
                   prediction_ids=frozenset(ids), holdout_id=holdout_id)


def save(cur: psycopg.Cursor[Any], holdout: Holdout) -> int:
    """Store ``holdout``; returns its id."""
    return cur.execute(_SAVE, (holdout.model_name, holdout.created_at, holdout.trigger_id, holdout.window[0],
                               holdout.window[1], sorted(holdout.prediction_ids))).fetchone()[0]


def plan(dataset: Dataset, current: Holdout | None, *, rows: int, refresh: timedelta, max_age: timedelta,
         min_rows: int, min_train_rows: int, trigger_id: str | None) -> HoldoutPlan:
    """Which held-out rows this retrain gates on and keeps out of training, and whether it freezes a new set.

    ``rows`` is the size of a new set (0: no held-out set); a set with fewer than ``min_rows`` rows loaded is not
    gated on.
    """
    if rows <= 0:
        return HoldoutPlan(gate_on=None, exclude=frozenset(), new=None, current=None, stale=None, notes=())
    spec, frame = dataset.spec, dataset.frame
    cutoff, change = spec.cutoff, spec.change_point
    notes: list[str] = []
    usable = current is not None and (change is None or current.window[0] >= change)
    gate_on, stale = None, None
    if current is not None and not usable:
        notes.append(f"held-out set {current.holdout_id} (frozen {current.created_at:%Y-%m-%d %H:%M} UTC) is before "
                     f"the change point {change:%Y-%m-%d %H:%M} UTC: retired")
    if usable:
        assert current is not None
        age = cutoff - current.created_at
        loaded = frame[frame["prediction_id"].isin(current.prediction_ids)]
        if len(loaded) >= min_rows:
            gate_on = loaded
        else:
            notes.append(f"held-out set {current.holdout_id}: {len(loaded):,} of its {len(current.prediction_ids):,} "
                         f"rows loaded (< {min_rows:,}): not gated on")
        if age > max_age:
            stale = (f"{spec.model_name}: the held-out set {current.holdout_id} is {age / timedelta(days=1):.0f} days "
                     f"old (frozen {current.created_at:%Y-%m-%d %H:%M} UTC; maximum {max_age / timedelta(days=1):.0f}"
                     " days): too few new rows to refresh it, so candidates are gated on old data")
    due = not usable or (current is not None and cutoff - current.created_at > refresh)
    new = _freeze(dataset, current if usable else None, rows=rows, min_train_rows=min_train_rows,
                  trigger_id=trigger_id) if due else None
    if due and new is None:
        notes.append(f"no new held-out set: fewer than {max(HOLDOUT_SHARE * rows, rows + min_train_rows):,} "
                     f"labelled rows {'since the change ' if change else ''}before the recent window")
    if new is not None:
        notes.append(f"froze a held-out set of {len(new.prediction_ids):,} rows "
                     f"({new.window[0]:%Y-%m-%d %H:%M} to {new.window[1]:%Y-%m-%d %H:%M} UTC), gated on from the "
                     "next retrain")
    if new is not None:
        stale = None  # refreshed by this retrain
    exclude = frozenset(current.prediction_ids if usable and current else ()) | (
        new.prediction_ids if new else frozenset())
    return HoldoutPlan(gate_on=gate_on, exclude=exclude, new=new, current=current if usable else None, stale=stale,
                       notes=tuple(notes))


def _freeze(dataset: Dataset, current: Holdout | None, *, rows: int, min_train_rows: int,
            trigger_id: str | None) -> Holdout | None:
    """The newest ``rows`` labelled rows before the recent window (since the change point), when they are at
    most a tenth of those rows and ``min_train_rows`` others remain to train on."""
    frame, spec = dataset.frame, dataset.spec
    pool = frame if dataset.test_start is None else frame[frame["predicted_at"] < dataset.test_start]
    if spec.change_point is not None:
        pool = pool[pool["predicted_at"] >= spec.change_point]
    if current is not None:
        pool = pool[~pool["prediction_id"].isin(current.prediction_ids)]
    if len(pool) < max(HOLDOUT_SHARE * rows, rows + min_train_rows):
        return None
    chosen = pool.tail(rows)
    return Holdout(model_name=spec.model_name, created_at=spec.cutoff, trigger_id=trigger_id,
                   window=(chosen["predicted_at"].iloc[0].to_pydatetime(),
                           chosen["predicted_at"].iloc[-1].to_pydatetime()),
                   prediction_ids=frozenset(chosen["prediction_id"].tolist()))
