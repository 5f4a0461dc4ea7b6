"""What one request costs a model server that serves through `pitstop.serving.ServingRouter`: the router's work
on the model's side of a request (the features as a one-row frame, then ``predict`` and ``predict_proba``), for a
logistic regression fitted on a frame (a model a team brings) and for the default trainers' models (the
linear pipeline and histogram gradient boosting, behind `TabularModel` and its `conform`) on the demo's churn
features. No database or broker: the routing and the event are microseconds beside the model.

Each request is a different row of the demo's world; the figure is the median over rounds of the mean time a
request, in milliseconds.

Run from the repository root::

    .venv/bin/python bench/serving.py                 # 3 rounds of 300 requests
    .venv/bin/python bench/serving.py --rounds 5 --requests 500 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from pitstop.demo import world
from retrain_worker.trainers import gradient_boosting, linear

try:
    from feedback.features import feature_frame
except ImportError:  # a commit before feedback/features.py, measured with this script copied in
    def feature_frame(rows):  # type: ignore[no-untyped-def]
        return pd.DataFrame.from_records([dict(r) for r in rows])
try:
    from feedback.features import model_answers
except ImportError:  # a commit before the one-pass answers
    def model_answers(model, X, *, probabilities):  # type: ignore[no-untyped-def]
        return model.predict(X), model.predict_proba(X) if probabilities else None


def _requests(n: int, seed: int) -> list[dict]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = world.generate_predictions(np.random.default_rng(seed), n, start_at=t0, end_at=t0 + timedelta(hours=10),
                                      clock_start=t0, id_prefix="bench-", model_version="v1")
    return [dict(r.prediction.features) for r in rows]


def _models() -> dict[str, tuple[object, list[dict]]]:
    train = _requests(2_000, seed=1)
    X = pd.DataFrame.from_records(train)
    y = pd.Series((X["support_calls"] > X["support_calls"].median()).astype(int))
    ages = [{"age": float(a)} for a in np.random.default_rng(2).normal(45, 10, 2_000)]
    age_frame = pd.DataFrame.from_records(ages)
    return {
        "logistic regression, 1 feature": (
            LogisticRegression().fit(age_frame, (age_frame["age"] > 50).astype(int)), ages),
        "default linear pipeline, 8 features": (linear("classification").fit(X, y, np.ones(len(X))), train),
        "default gradient boosting, 8 features": (
            gradient_boosting("classification").fit(X, y, np.ones(len(X))), train),
    }


def _serve(model: object, features: dict) -> None:
    model_answers(model, feature_frame([features]), probabilities=True)  # as ServingRouter.predict asks it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for name, (model, rows) in _models().items():
        rows = rows[:args.requests]
        _serve(model, rows[0])  # warm: the first call imports and caches
        means = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for features in rows:
                _serve(model, features)
            means.append((time.perf_counter() - started) / len(rows) * 1000.0)
        results[name] = {"median_ms": round(statistics.median(means), 2), "rounds_ms": [round(m, 2) for m in means]}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name:40s} {r['median_ms']:7.2f} ms a request  (rounds {r['rounds_ms']})")


if __name__ == "__main__":
    main()
