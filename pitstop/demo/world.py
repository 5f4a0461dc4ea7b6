"""The demo's simulated world: a churn model whose inputs and truth drift, its late, duplicated and
corrected outcomes, and deliberately malformed messages. Decides what to publish; publishes nothing."""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta  # noqa: F401  (UTC: the doctests use it)
from typing import Any, Protocol

import numpy as np
import pandas as pd

from feedback.features import feature_frame, model_answers
from schemas import EventKind, OutcomeEvent, PredictionEvent, event_to_dict

SEED = 20260611
MODEL_NAME = "churn"
#: The demo model's version; each run serves it under a version of its own (:func:`run_version`).
BASE_VERSION = "v1"
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


class Classifier(Protocol):
    """What a served model needs: a registry version's loaded object (for instance
    retrain_worker.trainers.TabularModel) reading a DataFrame of the feature columns."""

    classes_: Any

    def predict(self, X: pd.DataFrame) -> Any: ...

    def predict_proba(self, X: pd.DataFrame) -> Any: ...


class ModelServer(Protocol):
    """What serves the world's requests instead of its built-in model: given the built-in model's prediction
    events (their ids, times, features, routing keys and segments are the requests), the events as served, in
    the same order, each tagged with the version that served it (pitstop/demo/server.py routes them through
    the serving router)."""

    def serve(self, requests: Sequence[PredictionEvent]) -> list[PredictionEvent]: ...


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One model serving every request (a registry version), and its version.

    >>> class Half:
    ...     classes_ = np.array([0, 1])
    ...     def predict_proba(self, X): return np.tile([0.25, 0.75], (len(X), 1))
    ...     def predict(self, X): return np.ones(len(X), dtype=int)
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = generate_predictions(np.random.default_rng(1), 2, start_at=t0, end_at=t0 + timedelta(hours=1),
    ...                             clock_start=t0, id_prefix="d-", model_version="v1")
    >>> [(e.model_version, e.prediction, e.probabilities) for e in ServedModel("v2", Half()).serve(
    ...     [r.prediction for r in rows])]
    [('v2', 1, {'0': 0.25, '1': 0.75}), ('v2', 1, {'0': 0.25, '1': 0.75})]
    """

    version: str
    model: Classifier

    def serve(self, requests: Sequence[PredictionEvent]) -> list[PredictionEvent]:
        """The requests served by the model (probabilities rounded as served), under its version."""
        if not requests:
            return []
        X = feature_frame(r.features for r in requests)
        answered, proba = model_answers(self.model, X, probabilities=True)
        classes = [str(c) for c in np.asarray(self.model.classes_).tolist()]
        p1s = np.asarray(proba, dtype=float)[:, classes.index("1")] if "1" in classes else np.zeros(len(X))
        predicted = answered.tolist()
        return [replace(r, model_version=self.version, prediction=int(y),
                        probabilities={"0": round(1.0 - p, 4), "1": p}, score=p)
                for r, y, p in zip(requests, predicted, (round(float(p), 4) for p in p1s), strict=True)]


def builtin_model() -> Any:
    """The built-in model as a registry version serves it: the retrain worker's linear pipeline (imputer, scaler,
    one-hot, logistic regression) with the world's weights set in it, so it predicts what the built-in model of
    :func:`generate_predictions` does, and costs what a model the retrain worker trains costs to serve (the
    latency rollback rule compares the two).

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = generate_predictions(np.random.default_rng(4), 500, start_at=t0, end_at=t0 + timedelta(hours=9),
    ...                             clock_start=t0, id_prefix="d-", model_version="v1")
    >>> X = pd.DataFrame.from_records([r.prediction.features for r in rows])
    >>> p1 = builtin_model().predict_proba(X)[:, 1]
    >>> float(np.abs(p1 - [r.prediction.score for r in rows]).max()) < 1e-4
    True
    """
    from retrain_worker.trainers import linear  # sklearn: loaded when a stack serves the model, not for the world

    names = list(NUMERIC_FEATURES)
    means = np.array([NUMERIC_FEATURES[n][0] for n in names])
    sds = np.array([NUMERIC_FEATURES[n][1] for n in names])
    # every region and plan once at least, so the encoder knows them all; the fit only sets up the pipeline
    combos = [(r, p) for r in REGIONS for p in PLANS]
    X = pd.DataFrame([{**dict(zip(names, means.tolist(), strict=True)), "region": r, "plan": p} for r, p in combos])
    X["support_calls"] = X["support_calls"].round().astype(int)
    fitted = linear("classification").fit(X, pd.Series([i % 2 for i in range(len(X))]), np.ones(len(X)))
    columns = fitted.estimator.named_steps["columns"]
    numbers = columns.named_transformers_["numeric"]
    numbers.named_steps["impute"].statistics_ = means.copy()
    scaler = numbers.named_steps["scale"]
    scaler.mean_, scaler.scale_, scaler.var_ = means.copy(), sds.copy(), sds**2
    regions, plans = columns.named_transformers_["categorical"].categories_
    region_effects = dict(zip(REGIONS, REGION_EFFECTS.tolist(), strict=True))
    plan_effects = dict(zip(PLANS, PLAN_EFFECTS.tolist(), strict=True))
    logistic = fitted.estimator.named_steps["model"]
    logistic.coef_ = np.array([[*MODEL_WEIGHTS.tolist(), *(region_effects[str(r)] for r in regions),
                                *(plan_effects[str(p)] for p in plans)]])
    logistic.intercept_ = np.array([MODEL_INTERCEPT])
    return fitted


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
    model_version: str,
    first_index: int = 0,
    served: ModelServer | None = None,
) -> list[GeneratedRow]:
    """``n`` predictions of the churn model spread over ``[start_at, end_at)``, in time order.

    Features drift with :func:`drift_fraction` of the time since ``clock_start``; the true label
    comes from a logistic ground truth whose weights move away from the model's as they drift.
    The built-in model serves the predictions (its latency simulated), or ``served`` does (a registry
    version, or the serving router's versions); the world (features, labels, everything drawn at random)
    is the same either way.

    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = generate_predictions(np.random.default_rng(1), 3, start_at=t0,
    ...     end_at=t0 + timedelta(hours=1), clock_start=t0, id_prefix="demo-", model_version="v1")
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
    features: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {name: float(values[i, j]) for j, name in enumerate(names)}
        row["support_calls"] = int(values[i, calls])
        row["region"] = REGIONS[region[i]]
        row["plan"] = PLANS[plan[i]]
        features.append(row)
    p1s = [round(float(p), 4) for p in p_churn]
    events = []
    for i in range(n):
        p1 = p1s[i]
        events.append(PredictionEvent(
            prediction_id=f"{id_prefix}{first_index + i:08d}",
            model_name=MODEL_NAME,
            model_version=model_version,
            predicted_at=start_at + timedelta(seconds=float(offsets_s[i])),
            features=features[i],
            prediction=int(p1 >= 0.5),
            probabilities={"0": round(1.0 - p1, 4), "1": p1},
            score=p1,
            routing_key=f"customer-{customers[i]}",
            segment={"region": REGIONS[region[i]]},
            latency_ms=round(float(latency_ms[i]), 2),
        ))
    if served is not None:
        events = served.serve(events)
        if [e.prediction_id for e in events] != [f"{id_prefix}{first_index + i:08d}" for i in range(n)]:
            msg = f"the model server answered {len(events)} events for {n} requests, or out of order"
            raise ValueError(msg)
    return [GeneratedRow(event, int(labels[i]), float(drift[i])) for i, event in enumerate(events)]


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
    ...     end_at=t0 + timedelta(hours=10), clock_start=t0, id_prefix="d-", model_version="v1")
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
    >>> feed = DemoFeed(t0, id_prefix="demo-", model_version="v1")
    >>> step = feed.advance(t0 + timedelta(hours=1), predictions=100)
    >>> sum(d.kind == "prediction" for d in step.deliveries) > 90
    True
    >>> step = feed.advance(t0 + timedelta(days=3), predictions=0)
    >>> sum(d.kind in ("outcome", "late_prediction") for d in step.deliveries) > 90
    True

    From :meth:`serve` on, a model server serves the predictions, each under the version that served it:

    >>> class Always:
    ...     classes_ = np.array([0, 1])
    ...     def predict_proba(self, X): return np.tile([0.1, 0.9], (len(X), 1))
    ...     def predict(self, X): return np.ones(len(X), dtype=int)
    >>> feed.serve(ServedModel("v2", Always()))
    >>> step = feed.advance(t0 + timedelta(days=3, hours=1), predictions=50)
    >>> {(d.event.model_version, d.event.prediction, d.event.score) for d in step.deliveries
    ...  if d.kind == "prediction"}
    {('v2', 1, 0.9)}
    >>> feed.versions
    ['v1', 'v2']
    """

    def __init__(self, clock_start: datetime, *, id_prefix: str, model_version: str, seed: int = SEED) -> None:
        self.clock_start = clock_start
        self.id_prefix = id_prefix
        #: the run's own version: the built-in model's (its malformed messages carry it too)
        self.model_version = model_version
        #: every version that has served this feed's predictions, in the order they first did (the run's own first)
        self.versions = [model_version]
        #: what serves the predictions; None while the built-in model does
        self.served: ModelServer | None = None
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

    def serve(self, served: ModelServer) -> None:
        """Serve the predictions made from now on (event time) with ``served``; the world, and the outcomes of
        what was served before, stay as they were."""
        self.served = served

    def advance(self, event_now: datetime, predictions: int) -> FeedStep:
        """Serve ``predictions`` predictions between the last step and ``event_now``; return
        everything due by ``event_now``, and malformed messages at ``BAD_MESSAGE_SHARE``."""
        if event_now > self.event_now and predictions > 0:
            rows = generate_predictions(
                self.rng, predictions, start_at=self.event_now, end_at=event_now,
                clock_start=self.clock_start, id_prefix=self.id_prefix, model_version=self.model_version,
                first_index=self.generated, served=self.served,
            )
            self.generated += predictions
            for version in dict.fromkeys(r.prediction.model_version for r in rows):
                if version not in self.versions:
                    self.versions.append(version)
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
            clock_start=self.clock_start, id_prefix=f"{self.id_prefix}bad-", model_version=self.model_version,
            first_index=self._malformed,
        )[0]
        self._malformed += 1
        kind, value = bad_message(flaw, row.prediction)
        return MalformedMessage(kind, row.prediction.prediction_id.encode(), value, flaw)


def run_version(wall_start: datetime, base: str = BASE_VERSION) -> str:
    """The model version a demo run started at ``wall_start`` serves: ``base`` and the start, to the second.

    Runs in the same hour make the same event times: a version of its own keeps each run's windows,
    reference profile and tables apart from the earlier runs' in a reused store.

    >>> run_version(datetime(2026, 11, 30, 10, 26, 3, 500_000, tzinfo=UTC))
    'v1-20261130T102603'
    """
    if wall_start.tzinfo is None:
        msg = f"wall_start {wall_start.isoformat()} has no time zone: expected an aware instant"
        raise ValueError(msg)
    return f"{base}-{wall_start.astimezone(UTC):%Y%m%dT%H%M%S}"


def feed_for_run(wall_start: datetime, *, base_version: str = BASE_VERSION) -> DemoFeed:
    """The feed of a demo run started at ``wall_start``: its event clock starts ``EVENT_TIME_BACK``
    earlier, on the hour; its prediction ids and its model version (:func:`run_version`) carry the start,
    since a reused store may hold earlier runs.

    >>> feed = feed_for_run(datetime(2026, 11, 30, 10, 26, 3, tzinfo=UTC))
    >>> feed.clock_start.isoformat(), feed.id_prefix, feed.model_version
    ('2026-10-31T10:00:00+00:00', 'demo-20261130102603-', 'v1-20261130T102603')
    """
    clock_start = (wall_start - EVENT_TIME_BACK).replace(minute=0, second=0, microsecond=0)
    return DemoFeed(clock_start, id_prefix=f"demo-{wall_start:%Y%m%d%H%M%S}-",
                    model_version=run_version(wall_start, base_version))
