"""Time from a retrain trigger to a registered candidate, on a model with 100,000 labelled predictions.

What it measures: ``RetrainPipeline.handle`` (what the retrain worker calls for each trigger event) on a real
PostgreSQL, from the call to the recorded outcome, split into its steps by the pipeline's own progress
reports (the same ones `pitstop models show` prints):

* loading: the point-in-time query (each prediction's label as it stood at the cutoff) streamed from a
  server-side cursor in chunks of 20,000 rows, into a DataFrame, with the recency weights;
* checks and training: the data checks, then the default trainer (histogram gradient boosting) fitted in a
  process of its own (spawned, with its time budget);
* evaluating: the challenger and the champion on the recent test window and the frozen held-out set, the
  model pool (former champions scored on the same rows), the gates;
* registering: the artifact (skops), the version, its gate rows, the outcome, the candidate event and the
  new version's reference profile (built from its training rows), in one transaction.

The workload: a classification model with 12 features (9 numeric, 3 categorical with 4-20 values), one
segment attribute, ``--rows`` (default 100,000) labelled predictions over 10 days, labels observed an hour
after each prediction; a champion trained on the first half is registered, with one former champion in the
pool. The trigger is a manual one (no change point: every row is loaded and weighed by recency). Two
triggers are timed (a fresh one each, ``--repeat``); the first run of the process pays the imports.

It starts its own PostgreSQL (``pitstop.stack.start_postgres``) in a temporary folder, or uses
PITSTOP_DATABASE_URL with a fresh schema it drops at the end.

Run from the repository root::

    .venv/bin/python bench/retrain_time.py                 # 100,000 rows, 2 triggers: about a minute
    .venv/bin/python bench/retrain_time.py --rows 400000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._pitstop_loop import database  # noqa: E402
from feedback.config import parse_config  # noqa: E402
from feedback.registry.artifacts import serialise  # noqa: E402
from feedback.registry.versions import ModelVersion, Registry  # noqa: E402
from feedback.store import FeedbackStore, migrate  # noqa: E402
from retrain_worker.intake import TriggerEvent  # noqa: E402
from retrain_worker.pipeline import RetrainPipeline  # noqa: E402
from retrain_worker.trainers import gradient_boosting  # noqa: E402
from schemas import OutcomeEvent, PredictionEvent  # noqa: E402

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 10
TOML = """
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
window = "1h"
[models.churn.retrain]
promotion = "after-gates"
budget = "600s"
"""
NUMERIC = [f"n{i}" for i in range(9)]
CATEGORIES = {"plan": 4, "device": 8, "city": 20}


def workload(rows: int, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.normal(0, 1, rows) for name in NUMERIC})
    for name, k in CATEGORIES.items():
        frame[name] = np.array([f"{name}{j}" for j in range(k)])[rng.integers(0, k, rows)]
    signal = frame["n0"] + 0.5 * frame["n1"] * frame["n2"] + (frame["plan"] == "plan1") * 0.8
    y = (signal + rng.normal(0, 0.8, rows) > 0.3).astype(int).to_numpy()
    return frame, y


def load(store: FeedbackStore, frame: pd.DataFrame, y: np.ndarray, champion) -> None:
    step = timedelta(seconds=DAYS * 86_400 / len(frame))
    proba = champion.predict_proba(frame)[:, 1]
    records = frame.to_dict("records")
    regions = np.array(["eu", "us", "apac"])[np.arange(len(frame)) % 3]
    for start in range(0, len(frame), 20_000):
        preds, outs = [], []
        for i in range(start, min(len(frame), start + 20_000)):
            at = T0 + i * step
            preds.append(PredictionEvent(prediction_id=f"p{i}", model_name="churn", model_version="v1",
                                         predicted_at=at, features=records[i], prediction=int(proba[i] >= 0.5),
                                         probabilities={"0": float(1 - proba[i]), "1": float(proba[i])},
                                         segment={"region": str(regions[i])}))
            outs.append(OutcomeEvent(prediction_id=f"p{i}", label=int(y[i]), observed_at=at + timedelta(hours=1)))
        store.write_batch(preds, outs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = parse_config(TOML)
    frame, y = workload(args.rows)
    half = len(frame) // 2
    with database() as db:
        migrate(db.url, db.schema)
        store = FeedbackStore(db.url, db.schema, max_size=3).open()
        try:
            registry = Registry()
            champion = gradient_boosting("classification").fit(frame.iloc[:half], pd.Series(y[:half]),
                                                               np.ones(half))
            former = gradient_boosting("classification").fit(frame.iloc[:5000], pd.Series(y[:5000]), np.ones(5000))
            with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                for version, model in (("v0", former), ("v1", champion)):
                    registry.register(cur, ModelVersion(model_name="churn", version=version, stage="candidate",
                                                        trigger_id=None, trainer="gradient_boosting",
                                                        lineage={"features": list(frame.columns)}, metrics={}),
                                      serialise(model, "skops"), reason="bench")
                    registry.move(cur, "churn", version, "champion", reason="bench")
            t = time.perf_counter()
            load(store, frame, y, champion)
            print(f"loaded {len(frame):,} labelled predictions in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for k in range(args.repeat):
                marks: list[tuple[str, float]] = []
                pipeline = RetrainPipeline(store, config, registry=registry,
                                           progress=lambda step, marks=marks: marks.append((step, time.perf_counter())))
                trigger = TriggerEvent(trigger_id=f"churn/manual/bench-{k}", model_name="churn", model_version="v1",
                                       kind="manual", urgency="routine",
                                       decided_at=T0 + timedelta(days=DAYS, hours=2 + k), change_point=None,
                                       labels_since_change=None, reason="bench", requested_by="bench")
                started = time.perf_counter()
                outcome = pipeline.handle(trigger)
                total = time.perf_counter() - started
                steps = _steps(marks, started, started + total)
                rows = outcome.lineage.get("rows_loaded")
                print(f"trigger {k + 1}: {outcome.result} in {total:.1f} s ({rows:,} rows loaded; "
                      + ", ".join(f"{name} {s:.1f} s" for name, s in steps) + f"): {outcome.sentence}")
        finally:
            store.close()
    print(f"machine: {os.cpu_count()} cpu, Python {platform.python_version()}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return 0


def _steps(marks: list[tuple[str, float]], started: float, ended: float) -> list[tuple[str, float]]:
    """Seconds per step from the progress reports: loading (to the training report), training (to the
    evaluation report), evaluating and registering (to the end)."""
    def first(word: str) -> float | None:
        return next((t for step, t in marks if word in step), None)

    train, evaluate = first("training"), first("evaluating")
    if train is None or evaluate is None:
        return [("total", ended - started)]
    return [("loading + checks", train - started), ("training", evaluate - train),
            ("evaluating + registering", ended - evaluate)]


if __name__ == "__main__":
    sys.exit(main())
