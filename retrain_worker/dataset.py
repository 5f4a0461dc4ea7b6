"""Point-in-time training sets from the feedback store.

Only what was knowable at the cutoff enters: predictions made before it, with their features as logged at
prediction time, and each one's label as it stood at the cutoff, from the outcome history (the latest outcome
observed at or before the cutoff, ties to the larger label as ``current_labels`` breaks them): an outcome
observed later, or a correction after the cutoff, never enters. Rows are split by time, never shuffled: the
newest labelled predictions are the recent test window, the rows before it the training rows, weighed by
recency and by the trigger's change point (retrain_worker/weights.py). Rows stream from a server-side cursor in
chunks, never one giant fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from retrain_worker.weights import WeightPolicy, row_weights

log = logging.getLogger(__name__)

CHUNK_ROWS = 20_000

# each prediction's label as of the cutoff, by the outcome history's primary key (prediction_id, observed_at, label)
_LABEL = """
    SELECT o.label, o.observed_at FROM outcomes o
    WHERE o.prediction_id = p.prediction_id AND o.observed_at <= %(cutoff)s
    ORDER BY o.observed_at DESC, o.label DESC
    LIMIT 1
"""
_MADE = """p.model_name = %(model)s AND p.predicted_at < %(cutoff)s
  AND p.predicted_at >= coalesce(%(since)s, '-infinity'::timestamptz)"""
_ORDER = "ORDER BY p.predicted_at, p.prediction_id"
_POINT_IN_TIME = f"""
SELECT p.prediction_id, p.predicted_at, p.features, p.prediction, p.segment, l.label, l.observed_at,
       p.probabilities, p.score, p.model_version
FROM predictions p
CROSS JOIN LATERAL ({_LABEL}) l
WHERE {_MADE}
{_ORDER}
"""
# the same rows made before %(until)s (a prediction has a label at the cutoff if an outcome of it was observed by
# then: the planner may join the outcomes as a whole), how many, and the served columns of those numbered (from 0,
# in load_dataset's order) first + k * step to first + k * step + block - 1, below %(end)s, their labels looked up
# alone; the features are never read
_BEFORE = f"""FROM predictions p WHERE {_MADE} AND p.predicted_at < %(until)s
  AND EXISTS (SELECT 1 FROM outcomes o WHERE o.prediction_id = p.prediction_id AND o.observed_at <= %(cutoff)s)"""
_COUNT = f"SELECT count(*) {_BEFORE}"
_STRETCHES = f"""
SELECT l.label, p.prediction, p.probabilities, p.score
FROM (SELECT p.prediction_id, row_number() OVER ({_ORDER}) - 1 AS i {_BEFORE}) n
JOIN predictions p USING (prediction_id)
CROSS JOIN LATERAL ({_LABEL}) l
WHERE n.i >= %(first)s AND n.i < %(end)s AND (n.i - %(first)s) %% %(step)s < %(block)s
ORDER BY n.i
"""
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

#: columns the builder adds beside the features
META = ("prediction_id", "predicted_at", "label", "labelled_at", "served_prediction", "served_probabilities",
        "served_score", "served_version", "weight")
SEGMENT_PREFIX = "segment:"


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec:
    """What to load: a model's labelled predictions made in [since, cutoff) as they stood at the cutoff."""

    model_name: str
    cutoff: datetime
    since: datetime | None = None
    change_point: datetime | None = None
    weights: WeightPolicy = field(default_factory=WeightPolicy)
    #: the newest labelled predictions held out as the recent test window: this share of the rows ...
    test_share: float = 0.2
    #: ... but at least this many (when there are enough rows)
    min_test_rows: int = 200
    #: the champion's training cutoff: the test window starts no earlier, so that the champion is never judged
    #: on rows it learnt (it would win on them), as long as ``min_test_rows`` rows remain after it
    unseen_after: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """A point-in-time training set: one row per labelled prediction, oldest first, and how it splits."""

    spec: DatasetSpec
    frame: pd.DataFrame  # feature columns, "segment:<attr>" columns, and META
    features: tuple[str, ...]
    test_start: datetime | None  # the first prediction time of the recent test window
    #: prediction ids of the frozen held-out set(s), never trained on (retrain_worker/holdout.py)
    held_out: frozenset[str] = frozenset()

    @property
    def train(self) -> pd.DataFrame:
        """Rows before the test window with a weight above zero, the held-out rows excepted."""
        rows = self.frame if self.test_start is None else self.frame[self.frame["predicted_at"] < self.test_start]
        if self.held_out:
            rows = rows[~rows["prediction_id"].isin(self.held_out)]
        return rows[rows["weight"] > 0]

    @property
    def fit_rows(self) -> pd.DataFrame:
        """The rows a final fit learns from: the training rows and the recent test window, the held-out rows
        excepted, with a weight above zero."""
        rows = self.frame[~self.frame["prediction_id"].isin(self.held_out)] if self.held_out else self.frame
        return rows[rows["weight"] > 0]

    @property
    def test(self) -> pd.DataFrame:
        """The recent test window: the newest labelled predictions (weights do not apply)."""
        if self.test_start is None:
            return self.frame.iloc[0:0]
        return self.frame[self.frame["predicted_at"] >= self.test_start]

    def lineage(self) -> dict[str, Any]:
        """What the candidate's lineage records of its data."""
        train, test = self.train, self.test
        return {
            "cutoff": self.spec.cutoff.isoformat(),
            "since": self.spec.since.isoformat() if self.spec.since else None,
            "change_point": self.spec.change_point.isoformat() if self.spec.change_point else None,
            "rows_loaded": len(self.frame),
            "train_rows": len(train),
            "test_rows": len(test),
            "train_window": _span(train),
            "test_window": _span(test),
            "weights": self.spec.weights.describe(),
            "weight_sum": float(train["weight"].sum()),
            "features": list(self.features),
        }


def load_dataset(conn: psycopg.Connection[Any], spec: DatasetSpec, *, chunk_rows: int = CHUNK_ROWS,
                 progress: Callable[[int], None] = lambda _: None) -> Dataset:
    """Stream the point-in-time rows of ``spec`` from a server-side cursor and weigh and split them.

    ``progress`` is called with the rows loaded so far after each chunk.
    """
    if spec.cutoff.tzinfo is None:
        msg = f"cutoff must be timezone-aware, got {spec.cutoff!r}"
        raise ValueError(msg)
    parts: list[pd.DataFrame] = []
    loaded = 0
    with conn.transaction(), conn.cursor(name="pitstop_dataset") as cur:
        cur.itersize = chunk_rows
        cur.execute(_POINT_IN_TIME, {"model": spec.model_name, "cutoff": spec.cutoff, "since": spec.since})
        while rows := cur.fetchmany(chunk_rows):
            parts.append(_frame(rows))
            loaded += len(rows)
            progress(loaded)
    frame = pd.concat(parts, ignore_index=True) if parts else _frame([])
    features = tuple(c for c in frame.columns if c not in META and not c.startswith(SEGMENT_PREFIX))
    at = frame["predicted_at"].dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    frame["weight"] = row_weights(at, spec.cutoff, spec.weights, spec.change_point) if len(frame) else []
    return Dataset(spec=spec, frame=frame, features=features, test_start=_test_start(frame, spec))


def load_stretches(conn: psycopg.Connection[Any], model_name: str, *, cutoff: datetime, since: datetime | None,
                   until: datetime, block: int, starts: Callable[[int], range]) -> list[pd.DataFrame]:
    """Stretches of ``block`` consecutive rows of the point-in-time rows of ``model_name`` made in [since, until)
    as they stood at ``cutoff``, in load_dataset's order; ``starts`` chooses where they begin from the number of
    those rows (a range whose step is at least ``block``: stretches never overlap, and each ends within the rows).

    Only the columns of the served predictions are read (label, served_prediction, served_probabilities,
    served_score), and only the rows of the stretches: their memory is bounded by the stretches, not the history.
    The count and the rows come from one snapshot: the caller's transaction, or a repeatable-read one of its own on
    an autocommit connection that is in none.
    """
    params = {"model": model_name, "cutoff": cutoff, "since": since, "until": until}
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor() as cur:
        if own:
            cur.execute(SNAPSHOT)
        found = starts(cur.execute(_COUNT, params).fetchone()[0])
        if not found:
            return []
        if len(found) > 1 and found.step < block:
            msg = f"stretches of {block} rows every {found.step} rows overlap"
            raise ValueError(msg)
        rows = cur.execute(_STRETCHES, {**params, "first": found.start, "end": found[-1] + block,
                                        "step": found.step, "block": block}).fetchall()
    served = pd.DataFrame({"label": [r[0] for r in rows], "served_prediction": [r[1] for r in rows],
                           "served_probabilities": [r[2] for r in rows], "served_score": [r[3] for r in rows]})
    return [served.iloc[k * block:(k + 1) * block] for k in range(len(found))]


def _frame(rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """One chunk as columns: the features as logged, the segment attributes, the label and its time."""
    features = pd.DataFrame.from_records([r[2] for r in rows]) if rows else pd.DataFrame()
    segments = pd.DataFrame.from_records([r[4] or {} for r in rows]) if rows else pd.DataFrame()
    meta = pd.DataFrame({
        "prediction_id": [r[0] for r in rows],
        "predicted_at": pd.to_datetime([r[1] for r in rows], utc=True),
        "label": [r[5] for r in rows],
        "labelled_at": pd.to_datetime([r[6] for r in rows], utc=True),
        "served_prediction": [r[3] for r in rows],
        "served_probabilities": [r[7] for r in rows],
        "served_score": [r[8] for r in rows],
        "served_version": [r[9] for r in rows],
    })
    segments.columns = [f"{SEGMENT_PREFIX}{c}" for c in segments.columns]
    return pd.concat([features, segments, meta], axis=1)


def _test_start(frame: pd.DataFrame, spec: DatasetSpec) -> datetime | None:
    """Where the recent test window begins: the newest ``test_share`` of the rows (at least ``min_test_rows``),
    on a prediction-time boundary so that no instant is split between training and test.

    With a change point the share is of the rows since the change: the window judges the new concept, and a
    share of the whole history could reach back past the change and leave no post-change row to train on.
    """
    rows = frame
    if spec.change_point is not None:
        since = frame[frame["predicted_at"] >= spec.change_point]
        rows = since if len(since) else frame
    n = len(rows)
    if n == 0:
        return None
    k = min(n, max(int(np.ceil(n * spec.test_share)), spec.min_test_rows))
    start = rows["predicted_at"].iloc[n - k]
    if spec.unseen_after is not None and start < spec.unseen_after:
        unseen = int((rows["predicted_at"] >= spec.unseen_after).sum())
        if unseen >= spec.min_test_rows:
            start = rows["predicted_at"].iloc[n - unseen]
    return start.to_pydatetime()


def _span(rows: pd.DataFrame) -> list[str] | None:
    if rows.empty:
        return None
    return [rows["predicted_at"].iloc[0].isoformat(), rows["predicted_at"].iloc[-1].isoformat()]
