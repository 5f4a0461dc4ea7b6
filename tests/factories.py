"""Test data: events with fixed, timezone-aware instants."""

from __future__ import annotations

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
