"""Test data: events with fixed, timezone-aware instants."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import OutcomeEvent, PredictionEvent

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: The ingest clock tests decode with: comfortably after every factory instant.
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def prediction(i: int, **overrides: Any) -> PredictionEvent:
    fields: dict[str, Any] = {
        "prediction_id": f"p-{i}",
        "model_name": "churn",
        "model_version": "v1",
        "predicted_at": T0 + timedelta(minutes=i),
        "features": {"age": 30 + i % 40, "income": 1000.5 * (i % 7), "plan": "pro", "active": True,
                     "region": None},
        "prediction": i % 2,
        "probabilities": {"0": 0.25, "1": 0.75},
        "segment": {"region": "eu"},
        "latency_ms": 3.5,
    }
    fields.update(overrides)
    return PredictionEvent(**fields)


def outcome(i: int, label: Any = 1, *, after_s: float = 3600.0, **overrides: Any) -> OutcomeEvent:
    fields: dict[str, Any] = {
        "prediction_id": f"p-{i}",
        "label": label,
        "observed_at": T0 + timedelta(minutes=i, seconds=after_s),
    }
    fields.update(overrides)
    return OutcomeEvent(**fields)


def prediction_dict(i: int = 0, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "prediction_id": f"p-{i}",
        "model_name": "churn",
        "model_version": "v1",
        "predicted_at": "2026-03-01T12:00:00+00:00",
        "features": {"age": 41, "plan": "pro"},
        "prediction": 1,
    }
    doc.update(overrides)
    return doc


def outcome_dict(i: int = 0, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "prediction_id": f"p-{i}",
        "label": 1,
        "observed_at": "2026-03-02T12:00:00Z",
    }
    doc.update(overrides)
    return doc


#: the monitoring and trigger settings of the drifting workload below
DRIFT_TOML = """
[models.churn]
task = "classification"
positive_class = 1
window = "1h"
span = 12
min_rows = 500
min_labels = 300
reference_rows = 1000
[models.churn.performance]
baseline_windows = 2
[models.churn.triggers]
min_labels_since_change = 5000
cooldown = "6h"
pool_labels = 0                  # one decision per episode here; the early pool look has its own tests
[models.churn.triggers.drift]
windows = 2
"""

#: the drifting workload of the trigger tests: labelled predictions an hour, and the hour the drift begins
PER_HOUR = 2000
DRIFT_HOUR = 5


def drifting_hour(hour: int, *, drift: bool = True, seed: int = 1, accuracy_after: float = 0.83,
                  per_hour: int = PER_HOUR) -> tuple[list[PredictionEvent], list[OutcomeEvent]]:
    """``per_hour`` labelled predictions of one hour after T0; from DRIFT_HOUR (when ``drift``) two of four
    features (age, tenure) shift by one sd and accuracy falls from about 90% to ``accuracy_after`` (by default an
    elevated drop, not a critical one)."""
    rng = random.Random(seed * 1000 + hour)
    shifted = drift and hour >= DRIFT_HOUR
    preds, labels = [], []
    for k in range(per_hour):
        i = hour * per_hour + k
        p1 = rng.random()
        preds.append(prediction(
            i, predicted_at=T0 + timedelta(hours=hour, seconds=k * 3600 / per_hour),
            features={"age": rng.gauss(50 if shifted else 40, 10), "income": rng.gauss(3000, 500),
                      "tenure": rng.gauss(36 if shifted else 24, 12), "plan": rng.choice("abc")},
            prediction=int(p1 > 0.5), probabilities={"0": 1 - p1, "1": p1}))
        right = rng.random() < (accuracy_after if shifted else 0.90)
        labels.append(outcome(i, label=int(p1 > 0.5) if right else 1 - int(p1 > 0.5)))
    return preds, labels
