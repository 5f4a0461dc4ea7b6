"""The events Pitstop consumes, as frozen dataclasses mirroring the JSON Schemas beside them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCHEMA_VERSION = 1

#: A feature value: number, string, bool or null.
FeatureValue = float | int | str | bool | None
#: A prediction or a label: a regression value or a class label.
Value = float | int | str | bool


class EventKind(enum.Enum):
    """Which contract an input topic carries."""

    PREDICTION = "prediction"
    OUTCOME = "outcome"


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionEvent:
    """One prediction served by a model.

    >>> from datetime import UTC, datetime
    >>> PredictionEvent(prediction_id="p-1", model_name="churn", model_version="v1",
    ...     predicted_at=datetime(2026, 1, 1, tzinfo=UTC), features={"age": 41},
    ...     prediction=1).schema_version
    1
    """

    prediction_id: str
    model_name: str
    model_version: str
    predicted_at: datetime
    features: dict[str, FeatureValue]
    prediction: Value
    probabilities: dict[str, float] | None = None
    score: float | None = None
    routing_key: str | None = None
    segment: dict[str, str] | None = None
    latency_ms: float | None = None
    error: str | None = None
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeEvent:
    """The observed outcome of one prediction; a later ``observed_at`` corrects an earlier one.

    >>> from datetime import UTC, datetime
    >>> OutcomeEvent(prediction_id="p-1", label=0,
    ...     observed_at=datetime(2026, 1, 2, tzinfo=UTC)).source is None
    True
    """

    prediction_id: str
    label: Value
    observed_at: datetime
    source: str | None = None
    schema_version: int = SCHEMA_VERSION


Event = PredictionEvent | OutcomeEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedInput:
    """An input that failed the contract: the bytes as received (or the batch element), and why.

    ``index`` is the element's position in a batch message, or -1 when the whole message failed.
    """

    index: int
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """What one Kafka message held: the events that passed and the inputs that did not."""

    events: list[Any]
    rejected: list[RejectedInput]
