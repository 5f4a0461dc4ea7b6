"""`pitstop demo`: a synthetic churn model whose data drifts, its late outcomes, the join live."""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import FrameType
from typing import Any

import numpy as np
import psycopg
from kafka import KafkaProducer

from feedback.store import FeedbackStore
from pitstop import stack
from pitstop.client import PitstopProducer
from pitstop.errors import ConfigError, StackError
from pitstop.settings import ENV_FILE_NAME, Settings
from schemas import EventKind, OutcomeEvent, PredictionEvent, event_to_dict

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# the simulated world

SEED = 20260611
MODEL_NAME = "churn"
MODEL_VERSION = "v1"
#: The simulated clock starts this long before the wall clock.
EVENT_TIME_BACK = timedelta(days=30)

#: Numeric features as (mean, standard deviation) of the values the model server sees.
NUMERIC_FEATURES: dict[str, tuple[float, float]] = {
    "tenure_months": (24.0, 12.0),
    "monthly_charges": (70.0, 20.0),
    "support_calls": (1.5, 1.2),
    "usage_gb": (30.0, 10.0),
    "days_since_login": (7.0, 4.0),
    "contract_months_left": (6.0, 4.0),
}
#: The model's logistic weights per standardised numeric feature (in the order above).
MODEL_WEIGHTS = np.array([-0.9, 0.7, 0.8, -0.5, 0.6, -0.4])
MODEL_INTERCEPT = -0.6
REGIONS = ("north", "south", "east", "west")
REGION_SHARES = (0.30, 0.25, 0.25, 0.20)
REGION_EFFECTS = np.array([0.0, 0.1, -0.1, 0.2])
PLANS = ("basic", "standard", "premium")
PLAN_SHARES = (0.50, 0.35, 0.15)
PLAN_EFFECTS = np.array([0.3, 0.0, -0.4])

#: Drift begins this long (event time) after the clock starts: a third into the first 3 days.
DRIFT_STARTS_AFTER_S = 86_400.0
#: ... and has reached its full size this much later.
DRIFT_RAMP_S = 6 * 3600.0
#: The features whose distribution moves, by this many standard deviations at full drift.
DRIFTING_FEATURES = ("monthly_charges", "usage_gb", "days_since_login")
DRIFT_SHIFT_SD = 1.0
#: How the true relationship moves at full drift (added to the model's weights and intercept):
#: the model's accuracy falls from about 76% to about 68% once the late labels land.
TRUTH_WEIGHT_CHANGE = np.array([0.0, -0.7, 0.0, 1.0, 0.5, 0.0])
TRUTH_INTERCEPT_CHANGE = -0.5

#: Outcome delay in event time: lognormal, median 4 h, about 5% later than a day.
LABEL_DELAY_MEDIAN_S = 4 * 3600.0
LABEL_DELAY_SIGMA = 1.1
#: Shares of outcomes that arrive before their prediction, twice, or corrected later.
EARLY_OUTCOME_SHARE = 0.05
DUPLICATE_OUTCOME_SHARE = 0.03
CORRECTED_OUTCOME_SHARE = 0.02
#: Share of published messages that are deliberately malformed (they end as dead letters).
BAD_MESSAGE_SHARE = 0.005
BAD_FLAWS = ("not_json", "nan_feature", "naive_timestamp", "missing_field")

# ---------------------------------------------------------------------------------------------
# how the demo runs

PUBLISH_BATCH_SIZE = 200
TICK_S = 0.5
DISPLAY_EVERY_S = 1.0
HEADER_EVERY_LINES = 20
ACCURACY_WINDOW = timedelta(hours=12)
DRAIN_TIMEOUT_S = 15.0
MONITOR_EVERY_LINES = 5
#: the monitoring configuration of the demo's model (used unless PITSTOP_CONFIG names another)
DEMO_CONFIG = "demo.toml"

_MONITOR_DRIFT = """
SELECT window_start, array_agg(feature ORDER BY feature) FILTER (WHERE status = 'drift'), count(*)
FROM monitor_results
WHERE model_name = %s AND model_version = %s AND segment = '*' AND kind = 'drift' AND metric = 'drift'
  AND status <> 'unjudged' AND left(feature, 2) <> '__'
GROUP BY window_start ORDER BY window_start DESC LIMIT 1
"""

_MONITOR_PERFORMANCE = """
SELECT window_start, metric, value, ci_low, ci_high, status FROM performance_by_window
WHERE model_name = %s AND model_version = %s AND segment = '*' AND metric = 'accuracy'
  AND status <> 'unjudged'
ORDER BY window_start DESC LIMIT 1
"""


def drift_fraction(
    elapsed_s: np.ndarray | float,
    *,
    starts_after_s: float = DRIFT_STARTS_AFTER_S,
    ramp_s: float = DRIFT_RAMP_S,
) -> np.ndarray:
    """How far the drift has gone (0 to 1), ``elapsed_s`` event seconds after the clock started.

    >>> drift_fraction(np.array([0.0, 86_400.0 + 3 * 3600, 5 * 86_400.0]))
    array([0. , 0.5, 1. ])
    """
    return np.clip((np.asarray(elapsed_s, dtype=float) - starts_after_s) / ramp_s, 0.0, 1.0)


def event_clock(start_at: datetime, elapsed_s: float, speed: float, now: datetime) -> datetime:
    """The simulated time ``elapsed_s`` wall seconds after ``start_at``; never later than ``now``.

    Once it has caught up with the wall clock it follows it, so no event is from the future.

    >>> start = datetime(2026, 1, 1, tzinfo=UTC)
    >>> event_clock(start, 10.0, 3600.0, now=datetime(2026, 2, 1, tzinfo=UTC)).isoformat()
    '2026-01-01T10:00:00+00:00'
    >>> event_clock(start, 10.0, 3600.0, now=datetime(2026, 1, 1, 5, tzinfo=UTC)).hour
    5
    """
    return min(start_at + timedelta(seconds=elapsed_s * speed), now)


def sample_label_delays_s(
    rng: np.random.Generator,
    n: int,
    *,
    median_s: float = LABEL_DELAY_MEDIAN_S,
    sigma: float = LABEL_DELAY_SIGMA,
) -> np.ndarray:
    """Event seconds from a prediction to its outcome: lognormal, a few hours, a tail of days.

    >>> delays = sample_label_delays_s(np.random.default_rng(0), 100_000)
    >>> round(float(np.median(delays)) / 3600, 1), 0.03 < float((delays > 86_400).mean()) < 0.08
    (4.0, True)
    """
    return rng.lognormal(mean=math.log(median_s), sigma=sigma, size=n)


@dataclass(frozen=True, slots=True)
class GeneratedRow:
    """One served prediction, the outcome the world will reveal for it, and the drift it saw."""

    prediction: PredictionEvent
    label: int
    drift: float


def generate_predictions(
    rng: np.random.Generator,
    n: int,
    *,
    start_at: datetime,
    end_at: datetime,
    clock_start: datetime,
    id_prefix: str,
    first_index: int = 0,
) -> list[GeneratedRow]:
    """``n`` predictions of the churn model spread over ``[start_at, end_at)``, in time order.

    Features drift with :func:`drift_fraction` of the time since ``clock_start``; the true label
    comes from a logistic ground truth whose weights move away from the model's as they drift.

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = generate_predictions(np.random.default_rng(1), 3, start_at=t0,
    ...     end_at=t0 + timedelta(hours=1), clock_start=t0, id_prefix="demo-")
    >>> [r.prediction.prediction_id for r in rows]
    ['demo-00000000', 'demo-00000001', 'demo-00000002']
    >>> p = rows[0].prediction
    >>> sorted(p.features)[:3], p.probabilities["1"] == p.score, rows[0].drift
    (['contract_months_left', 'days_since_login', 'monthly_charges'], True, 0.0)
    """
    if n <= 0:
        return []
    names = list(NUMERIC_FEATURES)
    calls = names.index("support_calls")
    offsets_s = np.sort(rng.uniform(0.0, (end_at - start_at).total_seconds(), size=n))
    drift = drift_fraction(offsets_s + (start_at - clock_start).total_seconds())
    shift = np.array([DRIFT_SHIFT_SD if name in DRIFTING_FEATURES else 0.0 for name in names])
    z = rng.standard_normal((n, len(names))) + drift[:, None] * shift[None, :]
    region = rng.choice(len(REGIONS), size=n, p=REGION_SHARES)
    plan = rng.choice(len(PLANS), size=n, p=PLAN_SHARES)
    means = np.array([NUMERIC_FEATURES[name][0] for name in names])
    sds = np.array([NUMERIC_FEATURES[name][1] for name in names])
    values = np.round(np.maximum(means + sds * z, 0.0), 2)
    values[:, calls] = np.round(values[:, calls])
    # The model sees the served values (clipped, rounded); the world acts on the latent ones.
    effects = REGION_EFFECTS[region] + PLAN_EFFECTS[plan]
    model_logit = MODEL_INTERCEPT + ((values - means) / sds) @ MODEL_WEIGHTS + effects
    truth_weights = MODEL_WEIGHTS[None, :] + drift[:, None] * TRUTH_WEIGHT_CHANGE[None, :]
    truth_logit = (MODEL_INTERCEPT + drift * TRUTH_INTERCEPT_CHANGE + effects
                   + np.einsum("ij,ij->i", z, truth_weights))
    p_churn = 1.0 / (1.0 + np.exp(-model_logit))
    labels = rng.random(n) < 1.0 / (1.0 + np.exp(-truth_logit))
    latency_ms = rng.lognormal(math.log(12.0), 0.4, size=n)
    customers = rng.integers(0, 50_000, size=n)
    rows = []
    for i in range(n):
        features: dict[str, Any] = {name: float(values[i, j]) for j, name in enumerate(names)}
        features["support_calls"] = int(values[i, calls])
        features["region"] = REGIONS[region[i]]
        features["plan"] = PLANS[plan[i]]
        p1 = round(float(p_churn[i]), 4)
        event = PredictionEvent(
            prediction_id=f"{id_prefix}{first_index + i:08d}",
            model_name=MODEL_NAME,
            model_version=MODEL_VERSION,
            predicted_at=start_at + timedelta(seconds=float(offsets_s[i])),
            features=features,
            prediction=int(p1 >= 0.5),
            probabilities={"0": round(1.0 - p1, 4), "1": p1},
            score=p1,
            routing_key=f"customer-{customers[i]}",
            segment={"region": REGIONS[region[i]]},
            latency_ms=round(float(latency_ms[i]), 2),
        )
        rows.append(GeneratedRow(event, int(labels[i]), float(drift[i])))
    return rows


@dataclass(frozen=True, slots=True, order=True)
class Delivery:
    """One event to publish once the simulated clock reaches ``due_at``.

    ``kind`` is ``prediction``, ``late_prediction`` (held back until after its outcome),
    ``outcome``, ``duplicate`` (the same outcome again) or ``correction`` (a later outcome with
    the other label).
    """

    due_at: datetime
    seq: int
    kind: str = field(compare=False)
    event: PredictionEvent | OutcomeEvent = field(compare=False)


def plan_deliveries(
    rng: np.random.Generator, rows: Sequence[GeneratedRow], first_seq: int = 0
) -> list[Delivery]:
    """When each prediction and outcome reaches the broker, with the quirks of real label feeds.

    Outcomes come a :func:`sample_label_delays_s` delay after their prediction; some arrive
    before their prediction (whose publication is held back an hour or more), some twice, and
    some first with the wrong label and later corrected (the correction carries the true label).

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = generate_predictions(np.random.default_rng(2), 2000, start_at=t0,
    ...     end_at=t0 + timedelta(hours=10), clock_start=t0, id_prefix="d-")
    >>> plan = plan_deliveries(np.random.default_rng(3), rows)
    >>> kinds = {k: sum(d.kind == k for d in plan) for k in ("prediction", "late_prediction")}
    >>> kinds["prediction"] + kinds["late_prediction"], 60 < kinds["late_prediction"] < 140
    (2000, True)
    >>> outcomes = [d for d in plan if d.kind in ("outcome", "correction")]
    >>> all(d.due_at == d.event.observed_at for d in outcomes)
    True
    """
    n = len(rows)
    if n == 0:
        return []
    delays_s = sample_label_delays_s(rng, n)
    early = rng.random(n) < EARLY_OUTCOME_SHARE
    duplicated = rng.random(n) < DUPLICATE_OUTCOME_SHARE
    corrected = rng.random(n) < CORRECTED_OUTCOME_SHARE
    held_back_s = rng.uniform(3600.0, 6 * 3600.0, size=n)
    duplicate_after_s = rng.uniform(0.0, 2 * 3600.0, size=n)
    correction_after_s = rng.lognormal(math.log(86_400.0), 0.5, size=n)
    out: list[Delivery] = []
    seq = first_seq
    for i, row in enumerate(rows):
        p = row.prediction
        observed_at = p.predicted_at + timedelta(seconds=float(delays_s[i]))
        first_label = 1 - row.label if corrected[i] else row.label
        outcome = OutcomeEvent(prediction_id=p.prediction_id, label=first_label,
                               observed_at=observed_at, source="billing")
        if early[i]:
            held_until = observed_at + timedelta(seconds=float(held_back_s[i]))
            out.append(Delivery(held_until, seq, "late_prediction", p))
        else:
            out.append(Delivery(p.predicted_at, seq, "prediction", p))
        out.append(Delivery(observed_at, seq + 1, "outcome", outcome))
        seq += 2
        if duplicated[i]:
            again_at = observed_at + timedelta(seconds=float(duplicate_after_s[i]))
            out.append(Delivery(again_at, seq, "duplicate", outcome))
            seq += 1
        if corrected[i]:
            fixed_at = observed_at + timedelta(seconds=float(correction_after_s[i]))
            fix = OutcomeEvent(prediction_id=p.prediction_id, label=row.label, observed_at=fixed_at,
                               source="billing-correction")
            out.append(Delivery(fixed_at, seq, "correction", fix))
            seq += 1
    return out


def bad_message(flaw: str, prediction: PredictionEvent) -> tuple[EventKind, bytes]:
    """A message value that breaks the contract in one way (a ``BAD_FLAWS`` name), made from a
    good prediction, and the kind of topic it goes to.

    >>> p = PredictionEvent(prediction_id="bad-1", model_name="churn", model_version="v1",
    ...     predicted_at=datetime(2026, 1, 1, tzinfo=UTC), features={"usage_gb": 3.5},
    ...     prediction=1)
    >>> [bad_message(flaw, p)[0].value for flaw in BAD_FLAWS]
    ['prediction', 'prediction', 'prediction', 'outcome']
    >>> bad_message("not_json", p)[1].endswith(b"}")
    False
    >>> bad_message("nan_feature", p)[1].split(b'"features": ')[1]
    b'{"usage_gb": NaN}, "prediction": 1}'
    >>> bad_message("naive_timestamp", p)[1].split(b'"predicted_at": ')[1][:21]
    b'"2026-01-01T00:00:00"'
    >>> b'"label"' in bad_message("missing_field", p)[1]
    False
    """
    doc = event_to_dict(prediction)
    if flaw == "not_json":
        return EventKind.PREDICTION, json.dumps(doc).encode()[:-16]  # cut short in transit
    if flaw == "nan_feature":
        first = next(iter(doc["features"]))
        doc["features"] = {**doc["features"], first: float("nan")}
        return EventKind.PREDICTION, json.dumps(doc, allow_nan=True).encode()
    if flaw == "naive_timestamp":
        doc["predicted_at"] = prediction.predicted_at.strftime("%Y-%m-%dT%H:%M:%S")  # no offset
        return EventKind.PREDICTION, json.dumps(doc).encode()
    if flaw == "missing_field":
        outcome = {"schema_version": 1, "prediction_id": prediction.prediction_id,
                   "observed_at": doc["predicted_at"]}  # no label
        return EventKind.OUTCOME, json.dumps(outcome).encode()
    msg = f"unknown flaw {flaw!r}: expected one of {', '.join(BAD_FLAWS)}"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A deliberately bad message: where it goes, its key and its bytes."""

    kind: EventKind
    key: bytes
    value: bytes
    flaw: str


@dataclass(frozen=True, slots=True)
class FeedStep:
    """What the model server and the label source publish in one step of the simulated clock."""

    deliveries: list[Delivery]
    malformed: list[MalformedMessage]


class DemoFeed:
    """The simulated model server and label source; decides what to publish, publishes nothing.

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> feed = DemoFeed(t0, id_prefix="demo-")
    >>> step = feed.advance(t0 + timedelta(hours=1), predictions=100)
    >>> sum(d.kind == "prediction" for d in step.deliveries) > 90
    True
    >>> step = feed.advance(t0 + timedelta(days=3), predictions=0)
    >>> sum(d.kind in ("outcome", "late_prediction") for d in step.deliveries) > 90
    True
    """

    def __init__(self, clock_start: datetime, *, id_prefix: str, seed: int = SEED) -> None:
        self.clock_start = clock_start
        self.id_prefix = id_prefix
        self.rng = np.random.default_rng(seed)
        self.event_now = clock_start
        self.generated = 0
        self._seq = 0
        self._malformed = 0
        self._queue: list[Delivery] = []

    @property
    def pending(self) -> int:
        """Events planned but not due yet."""
        return len(self._queue)

    def advance(self, event_now: datetime, predictions: int) -> FeedStep:
        """Serve ``predictions`` predictions between the last step and ``event_now``; return
        everything due by ``event_now``, and malformed messages at ``BAD_MESSAGE_SHARE``."""
        if event_now > self.event_now and predictions > 0:
            rows = generate_predictions(
                self.rng, predictions, start_at=self.event_now, end_at=event_now,
                clock_start=self.clock_start, id_prefix=self.id_prefix, first_index=self.generated,
            )
            self.generated += predictions
            planned = plan_deliveries(self.rng, rows, self._seq)
            self._seq += len(planned)
            for delivery in planned:
                heapq.heappush(self._queue, delivery)
        self.event_now = max(self.event_now, event_now)
        due = []
        while self._queue and self._queue[0].due_at <= self.event_now:
            due.append(heapq.heappop(self._queue))
        n_bad = int(self.rng.binomial(len(due), BAD_MESSAGE_SHARE)) if due else 0
        return FeedStep(due, [self._malformed_message() for _ in range(n_bad)])

    def _malformed_message(self) -> MalformedMessage:
        flaw = BAD_FLAWS[int(self.rng.integers(len(BAD_FLAWS)))]
        row = generate_predictions(
            self.rng, 1, start_at=self.event_now - timedelta(seconds=1), end_at=self.event_now,
            clock_start=self.clock_start, id_prefix=f"{self.id_prefix}bad-",
            first_index=self._malformed,
        )[0]
        self._malformed += 1
        kind, value = bad_message(flaw, row.prediction)
        return MalformedMessage(kind, row.prediction.prediction_id.encode(), value, flaw)


# ---------------------------------------------------------------------------------------------
# reading the store

_COUNTS = """
SELECT (SELECT count(*) FROM predictions),
       (SELECT count(*) FROM outcomes),
       (SELECT count(*) FROM current_labels),
       (SELECT count(*) FROM unmatched_outcomes),
       (SELECT count(*) FROM dead_letters)
"""

_ACCURACY = """
SELECT count(*), avg((prediction_value = label_value)::int)
FROM feedback
WHERE model_name = %s AND model_version = %s AND predicted_at > %s AND predicted_at <= %s
  AND label_value IS NOT NULL AND prediction_id LIKE %s
"""

_ACCURACY_BY_PHASE = """
SELECT CASE WHEN predicted_at < %s THEN 'before drift'
            WHEN predicted_at < %s THEN 'while drifting'
            ELSE 'after drift' END,
       count(*), avg((prediction_value = label_value)::int), min(predicted_at)
FROM feedback
WHERE model_name = %s AND model_version = %s AND label_value IS NOT NULL
  AND prediction_id LIKE %s
GROUP BY 1 ORDER BY 4
"""

_COVERAGE = """
SELECT model_name, model_version, predictions, labeled, coverage, median_label_delay
FROM label_coverage ORDER BY model_name, model_version
"""

_DEAD_LETTER_REASONS = """
SELECT count(*), min(reason)
FROM dead_letters WHERE received_at >= %s
GROUP BY split_part(reason, ':', 1) ORDER BY 1 DESC LIMIT 6
"""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Row counts of the feedback store, all from one snapshot.

    >>> c = StoreCounts(predictions=10, outcomes=9, labels=8, waiting=1, dead_letters=2)
    >>> c.joined, c.corrected, (c - c).rows
    (7, 1, 0)
    """

    predictions: int = 0
    outcomes: int = 0  # outcome history rows (identical duplicates are stored once)
    labels: int = 0  # current labels, one per prediction_id
    waiting: int = 0  # current labels whose prediction has not arrived yet
    dead_letters: int = 0

    @property
    def joined(self) -> int:
        """Stored predictions that have a label."""
        return self.labels - self.waiting

    @property
    def corrected(self) -> int:
        """Outcomes that replaced an earlier label of the same prediction."""
        return self.outcomes - self.labels

    @property
    def rows(self) -> int:
        return self.predictions + self.outcomes + self.dead_letters

    def __sub__(self, other: StoreCounts) -> StoreCounts:
        return StoreCounts(
            self.predictions - other.predictions, self.outcomes - other.outcomes,
            self.labels - other.labels, self.waiting - other.waiting,
            self.dead_letters - other.dead_letters,
        )


def read_counts(store: FeedbackStore) -> StoreCounts:
    """The store's row counts (a handful of count(*): fine at demo scale)."""
    return StoreCounts(*(int(v) for v in store.rows(_COUNTS)[0]))


# ---------------------------------------------------------------------------------------------
# running it


def _say(line: str = "") -> None:
    print(line, flush=True)


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g}h"


def _span(seconds: float) -> str:
    """A stretch of time in the unit that reads best.

    >>> _span(3600.0), _span(100_000.0), _span(90.0), _span(20.0)
    ('1 hour', '1.16 days', '1.5 minutes', '20 seconds')
    """
    for unit, size in (("day", 86_400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.3g} {unit}{'' if value == 1 else 's'}"
    return f"{seconds:.3g} second{'' if seconds == 1 else 's'}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class _StopRequest:
    """Counts SIGINT/SIGTERM; the loop checks it, so every stop goes through the clean-up."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1  # no printing here: the handler may run in the middle of a print

    def __bool__(self) -> bool:
        return self.count > 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _set_handlers(handler: _Handler) -> dict[int, _Handler]:
    """Route SIGINT and SIGTERM to ``handler``; returns the previous handlers (none off the
    main thread, where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict[int, _Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


_COLUMNS = (  # (title, width); every value is right-aligned but the event time
    ("wall", 5), ("event time UTC", 14), ("drift", 5), ("sent p", 7), ("sent o", 7),
    ("stored", 7), ("joined", 7), ("cover", 6), ("fixed", 5), ("early", 5), ("dead", 5),
    (f"acc{_hours(ACCURACY_WINDOW)}", 6), ("in/s", 5),
)


def _table_row(values: Sequence[str]) -> str:
    """One line of the live table.

    >>> header = _table_row([title for title, _ in _COLUMNS])
    >>> header[:48], len(header)
    (' wall event time UTC drift  sent p  sent o  stor', 96)
    """
    cells = [
        f"{value:<{width}}" if i == 1 else f"{value:>{width}}"
        for i, (value, (_, width)) in enumerate(zip(values, _COLUMNS, strict=True))
    ]
    return " ".join(cells)


def _format_delay(delay: timedelta | None) -> str:
    """A label delay the way people say it.

    >>> _format_delay(timedelta(hours=3, minutes=20, seconds=20.6)), _format_delay(None)
    ('3h20m', '-')
    """
    if delay is None:
        return "-"
    minutes = int(delay.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _LiveDemo:
    """Publishes what the feed says against a running stack, and shows the store filling up."""

    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *, rate: float,
                 speed: float) -> None:
        self.settings = settings
        self.database_url = database_url
        self.rate = rate
        self.speed = speed
        self.wall_start = datetime.now(UTC)
        clock_start = (self.wall_start - EVENT_TIME_BACK).replace(minute=0, second=0, microsecond=0)
        # A prefix of its own per run: a reused store may hold earlier runs' predictions.
        self.id_prefix = f"demo-{self.wall_start:%Y%m%d%H%M%S}-"
        self.feed = DemoFeed(clock_start, id_prefix=self.id_prefix)
        self.drift_starts_at = clock_start + timedelta(seconds=DRIFT_STARTS_AFTER_S)
        self.drift_full_at = self.drift_starts_at + timedelta(seconds=DRIFT_RAMP_S)
        self.sent = dict.fromkeys(
            ("prediction", "late_prediction", "outcome", "duplicate", "correction", "malformed"), 0
        )
        self.caught_up = False
        self.lines = 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=4)
        self._closers: list[Callable[[], None]] = []
        try:
            self.store = FeedbackStore(database_url, settings.db_schema, max_size=2)
            self.store.open()
            self._closers.append(self.store.close)
            self.baseline = read_counts(self.store)
            self.producer = PitstopProducer(bootstrap, topics=settings.topics,
                                            batch_size=PUBLISH_BATCH_SIZE, client_id="pitstop-demo")
            self._closers.insert(0, self.producer.close)
            # Malformed messages go around the client, which only ever sends valid events.
            self.raw_producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                              client_id="pitstop-demo-malformed")
            self._closers.insert(0, lambda: self.raw_producer.close(timeout=10))
        except BaseException:
            self.close()
            raise

    @property
    def clock_start(self) -> datetime:
        return self.feed.clock_start

    @property
    def event_now(self) -> datetime:
        return self.feed.event_now

    @property
    def predictions_sent(self) -> int:
        return self.sent["prediction"] + self.sent["late_prediction"]

    @property
    def outcomes_sent(self) -> int:
        return self.sent["outcome"] + self.sent["duplicate"] + self.sent["correction"]

    # -- publishing ---------------------------------------------------------------------------

    def tick(self, elapsed_s: float) -> None:
        """Move the clock to ``elapsed_s`` wall seconds in, publish what is due, and flush."""
        unbounded = self.clock_start + timedelta(seconds=elapsed_s * self.speed)
        event_now = event_clock(self.clock_start, elapsed_s, self.speed, datetime.now(UTC))
        if event_now < unbounded and not self.caught_up:
            self.caught_up = True
            _say(f"note      event time has caught up with the wall clock "
                 f"({event_now:%Y-%m-%d %H:%M} UTC); from now on it runs at 1x")
        step = self.feed.advance(event_now, int(self.rate * elapsed_s) - self.feed.generated)
        for delivery in step.deliveries:
            self.producer.publish(delivery.event)
            self.sent[delivery.kind] += 1
        topics = self.settings.topics
        for bad in step.malformed:
            topic = topics.predictions if bad.kind is EventKind.PREDICTION else topics.outcomes
            self.raw_producer.send(topic, key=bad.key, value=bad.value)
            self.sent["malformed"] += 1
        self.flush()

    def flush(self) -> None:
        self.producer.flush()
        self.raw_producer.flush(timeout=30)

    # -- display ------------------------------------------------------------------------------

    def show_intro(self) -> None:
        window = _hours(ACCURACY_WINDOW)
        lines = (
            f"model     {MODEL_NAME} {MODEL_VERSION}: {len(NUMERIC_FEATURES)} numeric and 2 "
            f"categorical features, {self.rate:g} predictions per second",
            f"clock     event time from {self.clock_start:%Y-%m-%d %H:%M} UTC, "
            f"{_span(self.speed)} of it per second",
            f"drift     {', '.join(DRIFTING_FEATURES)} move +{DRIFT_SHIFT_SD:g} sd from "
            f"{self.drift_starts_at:%Y-%m-%d %H:%M} (fully by {self.drift_full_at:%H:%M});",
            "          what drives churn changes too, so accuracy falls once the late labels land",
            f"outcomes  {LABEL_DELAY_MEDIAN_S / 3600:g} h after their prediction (median), a tail "
            f"of days; {EARLY_OUTCOME_SHARE:.0%} arrive before it,",
            f"          {DUPLICATE_OUTCOME_SHARE:.0%} twice, {CORRECTED_OUTCOME_SHARE:.0%} "
            f"corrected later; {BAD_MESSAGE_SHARE:.1%} of all messages are malformed (dead "
            "letters)",
            "columns   sent p/o: predictions/outcomes published   stored: predictions in the "
            "store",
            "          joined: stored predictions with a label     cover: joined / stored",
            "          fixed: labels replaced by a correction      early: outcomes whose "
            "prediction is still to come",
            f"          dead: dead letters     acc{window}: accuracy of the labelled predictions "
            f"of the last {window} (event time)",
            "          in/s: rows stored per second (wall time)",
            "          Ctrl-C stops",
        )
        for line in lines:
            _say(line)

    def display(self, elapsed_s: float) -> None:
        """One line of live figures, all of this run (the store may hold earlier runs too)."""
        try:
            counts = read_counts(self.store) - self.baseline
            accuracy = self._recent_accuracy()
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            _say(f"{elapsed_s:>4.0f}s  the feedback store did not answer: {first_line}")
            return
        # The workers write in batches: a rate over a few seconds reads steadier.
        self.recent.append((elapsed_s, counts.rows))
        then, rows_then = self.recent[0]
        rate = (counts.rows - rows_then) / (elapsed_s - then) if elapsed_s > then else 0.0
        if self.lines % HEADER_EVERY_LINES == 0:
            _say(_table_row([title for title, _ in _COLUMNS]))
        self.lines += 1
        drift = float(drift_fraction((self.event_now - self.clock_start).total_seconds()))
        _say(_table_row([
            f"{elapsed_s:.0f}s",
            f"{self.event_now:%Y-%m-%d %Hh}",
            f"{drift:.0%}",
            f"{self.predictions_sent:,}",
            f"{self.outcomes_sent:,}",
            f"{counts.predictions:,}",
            f"{counts.joined:,}",
            f"{counts.joined / counts.predictions:.1%}" if counts.predictions else "-",
            f"{counts.corrected:,}",
            f"{counts.waiting:,}",
            f"{counts.dead_letters:,}",
            "-" if accuracy is None else f"{accuracy:.1%}",
            f"{rate:,.0f}",
        ]))
        if self.lines % MONITOR_EVERY_LINES == 0:
            self._monitor_line()

    def _monitor_line(self) -> None:
        """The monitor's verdict on the newest judged window, as the workers last stored it."""
        drift = self.store.rows(_MONITOR_DRIFT, (MODEL_NAME, MODEL_VERSION))
        perf = self.store.rows(_MONITOR_PERFORMANCE, (MODEL_NAME, MODEL_VERSION))
        if not drift and not perf:
            return
        parts = []
        if drift:
            start, flagged, judged = drift[0]
            flagged_text = ", ".join(flagged) if flagged else "none"
            parts.append(f"window {start:%m-%d %Hh}: drifting features: {flagged_text} (of {judged})")
        if perf:
            start, metric, value, low, high, status = perf[0]
            parts.append(f"{metric} {value:.3f} [{low:.3f}, {high:.3f}] {status} (window {start:%m-%d %Hh})")
        _say("monitor   " + "; ".join(parts))

    def _recent_accuracy(self) -> float | None:
        since = self.event_now - ACCURACY_WINDOW
        n, accuracy = self.store.rows(
            _ACCURACY, (MODEL_NAME, MODEL_VERSION, since, self.event_now, f"{self.id_prefix}%")
        )[0]
        return float(accuracy) if n >= 50 else None

    # -- the end ------------------------------------------------------------------------------

    def drain(self, stop: _StopRequest, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait (briefly) until the workers have stored what was published; a second Ctrl-C
        stops waiting."""
        deadline = time.monotonic() + timeout_s
        previous, stable = None, 0
        while time.monotonic() < deadline and stop.count < 2 and stable < 3:
            try:
                counts = read_counts(self.store)
            except psycopg.Error:
                return
            stable = stable + 1 if counts == previous else 0
            previous = counts
            time.sleep(0.3)

    def summary(self, elapsed_s: float) -> None:
        """What was published, what the store made of it, and where to look further."""
        try:
            self._summary(elapsed_s)
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            _say(f"summary   the feedback store did not answer: {first_line}")

    def _summary(self, elapsed_s: float) -> None:
        counts = read_counts(self.store) - self.baseline
        sent = self.sent
        cover = f" ({counts.joined / counts.predictions:.1%})" if counts.predictions else ""
        lines = [
            "",
            f"published {self.predictions_sent:,} predictions ({sent['late_prediction']:,} of them "
            f"after their outcome) and {self.outcomes_sent:,} outcomes",
            f"          ({sent['duplicate']:,} duplicates, {sent['correction']:,} corrections), "
            f"plus {sent['malformed']:,} malformed messages, in {elapsed_s:.0f} s",
            f"          event time {self.clock_start:%Y-%m-%d %H:%M} -> "
            f"{self.event_now:%Y-%m-%d %H:%M} UTC",
            f"stored    {counts.predictions:,} predictions; {counts.joined:,} with a label{cover}; "
            f"{counts.corrected:,} labels corrected;",
            f"          {counts.waiting:,} outcomes still waiting for their prediction; "
            f"{counts.dead_letters:,} dead letters",
        ]
        phases = self.store.rows(_ACCURACY_BY_PHASE, (
            self.drift_starts_at, self.drift_full_at, MODEL_NAME, MODEL_VERSION,
            f"{self.id_prefix}%",
        ))
        if phases:
            lines.append("accuracy  of the labelled predictions, by when they were made:")
            lines.append("          " + ", ".join(
                f"{phase} {float(acc):.1%} (n={n:,})" for phase, n, acc, _ in phases
            ))
        lines += [
            "",
            f"{self.settings.db_schema}.label_coverage (the whole store, earlier runs included):",
            f"  {'model':<8} {'version':<8} {'predictions':>11} {'labeled':>9} {'coverage':>8}  "
            "median label delay",
        ]
        for name, version, n, labeled, coverage, delay in self.store.rows(_COVERAGE):
            lines.append(f"  {name:<8} {version:<8} {n:>11,} {labeled:>9,} {coverage:>8.1%}  "
                         f"{_format_delay(delay)}")
        reasons = self.store.rows(_DEAD_LETTER_REASONS, (self.wall_start,))
        if reasons:
            lines += ["", "dead letters of this run, by reason (one example each):"]
            lines += [f"  {n:>5,} x {_clip(example, 88)}" for n, example in reasons]
        for line in lines:
            _say(line)

    def monitor_report(self) -> None:
        """The monitor's tables, as `pitstop monitor --model churn` prints them."""
        if self.settings.monitoring.model(MODEL_NAME) is None:
            return
        from pitstop.monitoring_cli import monitor_report

        _say()
        _say(f"pitstop monitor --model {MODEL_NAME} --version {MODEL_VERSION}:")
        try:
            monitor_report(self.settings, MODEL_NAME, version=MODEL_VERSION, segment="*", windows=12, as_json=False,
                           say=lambda line: _say(f"  {line}"), database_url=self.database_url)
        except psycopg.Error as exc:
            _say(f"  the feedback store did not answer: {str(exc).strip().splitlines()[0]}")

    def close(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:  # a clean-up failure must not hide the original error
                log.exception("demo clean-up failed")


def demo_config_path() -> str:
    """The demo model's pitstop.toml, shipped with the package."""
    return str(resources.files("pitstop") / DEMO_CONFIG)


def with_demo_monitoring(settings: Settings) -> Settings:
    """Settings whose workers monitor the demo model: PITSTOP_CONFIG unless one is set, rounds every 3 s."""
    if settings.monitoring.model(MODEL_NAME) is not None:
        return settings
    os.environ["PITSTOP_CONFIG"] = demo_config_path()
    os.environ.setdefault("PITSTOP_MONITOR_INTERVAL_S", "3")
    return Settings.from_env()


def _check_args(duration_s: float | None, rate: float, speed: float, workers: int) -> None:
    checks = (
        ("--duration", duration_s, duration_s is None or duration_s > 0, "seconds > 0"),
        ("--rate", rate, rate > 0, "predictions per wall second, > 0"),
        ("--speed", speed, speed > 0, "event-time seconds per wall second, > 0"),
        ("--workers", workers, workers >= 1, "an integer >= 1"),
    )
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(key, value, expected)


def _detached_stack_running(settings: Settings) -> bool:
    """True when `pitstop up --detach` runs a stack for this state dir.

    Another demo's stack is not borrowed: it goes away when that demo ends.
    """
    record = stack.StackRecord.load(settings.state_dir)
    running = record.supervisor
    if running is None or not record.ready or not stack.is_ours(running):
        return False
    if " demo" in running.marker:
        msg = (f"another `pitstop demo` (pid {running.pid}) runs a stack in {settings.state_dir}; "
               "stop it, or set PITSTOP_STATE_DIR to another folder")
        raise StackError(msg)
    return True


def _loop(demo: _LiveDemo, stop: _StopRequest, duration_s: float | None) -> float:
    """Tick and display until ``duration_s`` or a stop request; returns the wall seconds run."""
    started = time.monotonic()
    next_tick = started
    next_display = started + DISPLAY_EVERY_S
    elapsed = 0.0
    while not stop:
        elapsed = time.monotonic() - started
        if duration_s is not None and elapsed >= duration_s:
            break
        demo.tick(elapsed)
        if time.monotonic() >= next_display:
            demo.display(elapsed)
            next_display += DISPLAY_EVERY_S
        next_tick += TICK_S
        while not stop and (left := next_tick - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
    return elapsed


def run(
    settings: Settings,
    *,
    duration_s: float | None = None,
    rate: float = 200.0,
    speed: float = 3600.0,
    workers: int = 1,
) -> int:
    """Run the demo for ``duration_s`` wall seconds, or until Ctrl-C/SIGTERM; returns 0.

    Uses the stack `pitstop up --detach` runs, and leaves it running; otherwise starts one
    (``workers`` ingest workers) and stops it at the end.
    """
    from pitstop import supervisor

    _check_args(duration_s, rate, speed, workers)
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its chatter would break the table
    previous = _set_handlers(_raise_interrupt)  # while starting, SIGTERM interrupts as Ctrl-C does
    running = None
    try:
        if _detached_stack_running(settings):
            bootstrap, database_url = settings.require_services()
            _say(f"stack     using the running stack (broker {bootstrap}); it stays up afterwards")
            if settings.monitoring.model(MODEL_NAME) is None:
                _say(f"note      no monitoring configuration for {MODEL_NAME}: start the stack with "
                     f"PITSTOP_CONFIG={demo_config_path()} to see drift")
        else:
            settings = with_demo_monitoring(settings)
            running = supervisor.start_stack(settings, workers, on_step=_say)
            bootstrap, database_url = running.kafka_bootstrap, running.database_url
        stop = _StopRequest()
        _set_handlers(stop)
        demo = _LiveDemo(settings, bootstrap, database_url, rate=rate, speed=speed)
        try:
            demo.show_intro()
            elapsed = _loop(demo, stop, duration_s)
            _say()
            _say("stopping  flushing the producer, letting the workers catch up ...")
            demo.flush()
            demo.drain(stop)
            demo.summary(elapsed)
            demo.monitor_report()
            _say()
            view = f"{settings.db_schema}.label_coverage"
            query = f"psql \"$PITSTOP_DATABASE_URL\" -c 'select * from {view}'"
            env_file = settings.state_dir / ENV_FILE_NAME
            if running is None:
                _say(f"query it  {query}")
                _say(f"          (PITSTOP_DATABASE_URL is in {env_file})")
            else:
                _say(f"query it  the data stays in {settings.state_dir / 'pgdata'}: after "
                     "`pitstop up --detach`,")
                _say(f"          {query}")
                _say(f"          (PITSTOP_DATABASE_URL is then in {env_file})")
        finally:
            demo.close()
    finally:
        if running is not None:
            _say("stopping  the stack this demo started ...")
            supervisor.stop_stack(running)
            _say("stopped")
        _restore_handlers(previous)
    return 0
