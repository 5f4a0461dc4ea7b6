"""The serving router's serving half: registry models loaded before a deployment routes to them, and predictions.

:class:`ModelCache` loads versions from the model registry (the artifact's sha256 is checked against the
registered digest before anything is deserialised) and keeps, per model, the champion, the challenger and the
last ``keep_previous`` champions warm, so a rollback needs no load. :class:`ServingRouter` wraps a
:class:`~pitstop.router.Router` (or a bare :class:`~pitstop.router.RouteTable`) and applies a deployment only
once every version it names is loaded, so :meth:`ServingRouter.route` never answers with a version that cannot
serve. Loading happens in the router's background thread: a new message reloads without a restart, and the
requests keep being served by the last good table meanwhile.

The rules for a message, in order:

1. not newer than the model's current one (``message_version``): ignored, nothing loaded;
2. its champion does not load (not in the registry, no artifact, digest mismatch, not deserialisable, the
   database away): refused; the failure is counted and logged with its reason; the last good table serves;
3. its challenger does not load: applied without the challenger (every key to the champion), the failure
   counted and logged; the next message naming that challenger tries again;
4. otherwise applied as published.

A ramp's rollback target is its champion, and rule 2 makes it loaded before the first key goes to the
challenger; a promotion's replaced champion stays warm (``keep_previous``). The kill switch
(:class:`~pitstop.router.KillSwitch`) still sends every key to the champion, which is always loaded.

:meth:`ServingRouter.predict` routes, predicts on a one-row DataFrame, times the call with
``time.perf_counter`` and returns a :class:`~schemas.PredictionEvent` tagged with the version that served it.
A model that raises gives an event with ``error`` set to ``"ExcType: message"`` and ``prediction`` set to
``error_prediction`` (``"error"`` by default): the prediction schema requires a prediction (a number, a bool
or a non-empty class label; null is not allowed), and a string no numeric model can produce is skipped by the
regression metrics (classification counts it as a wrong answer, which is what the caller got).

Usage::

    from kafka import KafkaConsumer
    from feedback.store import FeedbackStore
    from pitstop.router import Router
    from pitstop.serving import ModelCache, ServingRouter
    from schemas import encode_event

    store = FeedbackStore(database_url, "pitstop").open()
    router = Router(lambda: KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False),
                    "pitstop.deployments")
    with ServingRouter(router, ModelCache(store)).start() as serving:
        serving.wait_caught_up(30)
        event = serving.predict("churn", "user-91", {"tenure_months": 14, "plan": "pro"},
                                prediction_id="req-8812")
        producer.publish(event)  # event.model_version is the version that served it
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from feedback.features import feature_frame, model_answers
from feedback.monitoring.profile import category_key
from feedback.registry.versions import Registry
from feedback.store import FeedbackStore
from pitstop.router import Deployment, Router, RouteTable
from schemas import PredictionEvent
from schemas.events import Value

log = logging.getLogger(__name__)

#: how many characters of an exception's message an event's ``error`` keeps
ERROR_CHARS = 500

ConnectionFactory = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


def _connections(source: ConnectionPool | FeedbackStore | ConnectionFactory) -> ConnectionFactory:
    if isinstance(source, FeedbackStore):
        return source.pool.connection
    if isinstance(source, ConnectionPool):
        return source.connection
    return source  # psycopg.connect(...) and the like: a connection closes at the end of its with-block


class ModelCache:
    """Registry versions loaded into memory, per model: the champion, the challenger and the last
    ``keep_previous`` champions; :meth:`retain` evicts the rest.

    ``connections`` is a ``psycopg_pool.ConnectionPool``, a :class:`~feedback.store.FeedbackStore` (its pool,
    whose connections already use its schema), or a function returning a connection whose ``search_path`` is
    the registry's schema. ``loads`` counts the versions read from the registry.
    """

    def __init__(self, connections: ConnectionPool | FeedbackStore | ConnectionFactory, *,
                 registry: Registry | None = None, keep_previous: int = 2) -> None:
        if keep_previous < 0:
            msg = f"keep_previous={keep_previous}: expected an integer >= 0"
            raise ValueError(msg)
        self.connections = connections
        self.registry = registry or Registry()
        self.keep_previous = keep_previous
        self.loads = 0
        self._connect = _connections(connections)
        self._models: dict[tuple[str, str], Any] = {}
        self._champion: dict[str, str] = {}
        self._previous: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def load(self, model: str, version: str) -> Any:
        """The loaded version, from memory or else from the registry (digest checked); raises what the
        registry raises: ``LookupError`` for a version or artifact it does not hold,
        :class:`~feedback.registry.artifacts.DigestMismatch`, or the deserialiser's error."""
        with self._lock:
            if (model, version) in self._models:
                return self._models[(model, version)]
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            registered = self.registry.get(cur, model, version)
            if registered is None:
                msg = f"{model} {version} is not in the registry"
                raise LookupError(msg)
            loaded = self.registry.load(cur, registered)
        with self._lock:
            self.loads += 1
            return self._models.setdefault((model, version), loaded)

    def get(self, model: str, version: str) -> Any:
        """The loaded version; ``LookupError`` if it is not in memory (this never reads the registry)."""
        with self._lock:
            try:
                return self._models[(model, version)]
            except KeyError:
                msg = f"{model} {version} is not loaded"
                raise LookupError(msg) from None

    def warm(self, model: str) -> list[str]:
        """The model's versions in memory, sorted."""
        with self._lock:
            return sorted(v for m, v in self._models if m == model)

    def retain(self, model: str, *, champion: str, challenger: str | None) -> list[str]:
        """Keep the model's ``champion``, ``challenger`` and last ``keep_previous`` champions; returns the
        versions evicted. A champion replaced since the last call becomes the newest previous one."""
        with self._lock:
            previous = self._previous.setdefault(model, [])
            replaced = self._champion.get(model)
            if replaced is not None and replaced != champion:
                previous.insert(0, replaced)
            previous[:] = [v for i, v in enumerate(previous) if v != champion and v not in previous[:i]]
            del previous[self.keep_previous:]
            self._champion[model] = champion
            keep = {champion, challenger, *previous}
            evicted = sorted(v for m, v in self._models if m == model and v not in keep)
            for version in evicted:
                del self._models[(model, version)]
            return evicted


class Outcome(enum.Enum):
    """What became of a deployments message."""

    APPLIED = "applied"
    APPLIED_WITHOUT_CHALLENGER = "applied_without_challenger"
    STALE = "stale"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadFailure:
    """A version a message named that did not load, and why."""

    model_name: str
    version: str
    role: str  # "champion" or "challenger"
    message_version: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """A message's outcome, the deployment now serving the model (None before any) and a sentence."""

    outcome: Outcome
    serving: Deployment | None
    sentence: str


class ServingRouter:
    """Routes requests to loaded registry versions and serves predictions with them (see the module's rules).

    ``table`` is a :class:`~pitstop.router.Router` not yet started (its messages then reach :meth:`apply` in
    its thread) or a :class:`~pitstop.router.RouteTable` fed by calling :meth:`apply`; nothing may have been
    applied to it directly. ``failures`` holds the last 100 :class:`LoadFailure`, ``failed_loads`` counts
    them all. ``error_prediction`` is the ``prediction`` of an event whose model raised.
    """

    def __init__(self, table: RouteTable, cache: ModelCache, *, error_prediction: Value = "error") -> None:
        if isinstance(table, Router):
            if table.running:
                msg = "the router already follows its topic: wrap it before it starts, then start the ServingRouter"
                raise ValueError(msg)
            table.apply_with = self.apply
        self.table = table
        self.cache = cache
        self.error_prediction = error_prediction
        self.failures: deque[LoadFailure] = deque(maxlen=100)
        self.failed_loads = 0
        self._applying = threading.Lock()  # one message at a time
        self._serving = threading.Lock()  # a route and its model lookup see one table

    def start(self) -> ServingRouter:
        """Start following the deployments topic (a :class:`~pitstop.router.Router` only)."""
        if isinstance(self.table, Router):
            self.table.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Whether the router read, loaded and applied the topic up to where it ended at start."""
        return self.table.wait_caught_up(timeout_s) if isinstance(self.table, Router) else True

    def close(self) -> None:
        if isinstance(self.table, Router):
            self.table.close()

    def __enter__(self) -> ServingRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deployment(self, model: str) -> Deployment | None:
        """The deployment serving ``model`` (after the load rules: possibly without its challenger)."""
        return self.table.deployment(model)

    def route(self, model: str, routing_key: str) -> str:
        """The loaded version serving ``routing_key``; ``LookupError`` for a model with no deployment yet."""
        with self._serving:
            return self.table.route(model, routing_key)

    def apply(self, deployment: Deployment) -> ApplyResult:
        """Load the versions ``deployment`` names, then apply it by the module's rules; never raises for a
        version that does not load."""
        with self._applying:
            model, number = deployment.model_name, deployment.message_version
            held = self.table.deployment(model)
            if held is not None and number <= held.message_version:
                self.table.apply(deployment)  # counts and logs the stale message
                return ApplyResult(outcome=Outcome.STALE, serving=held,
                                   sentence=f"{model} message {number} ignored: message {held.message_version} "
                                            "is newer or the same")
            failure = self._load(deployment, deployment.champion, "champion")
            if failure is not None:
                keeps = "no deployment yet" if held is None else f"message {held.message_version} still serves"
                return ApplyResult(outcome=Outcome.REFUSED, serving=held,
                                   sentence=f"{model} message {number} refused: champion {deployment.champion} "
                                            f"did not load ({failure.reason}); {keeps}")
            outcome, sentence = Outcome.APPLIED, f"{model} message {number} applied"
            if deployment.challenger is not None:
                failure = self._load(deployment, deployment.challenger, "challenger")
                if failure is not None:
                    outcome = Outcome.APPLIED_WITHOUT_CHALLENGER
                    sentence = (f"{model} message {number} applied without challenger {deployment.challenger} "
                                f"({failure.reason}): every key to champion {deployment.champion}")
                    deployment = replace(deployment, challenger=None, challenger_share=0.0)
            with self._serving:
                self.table.apply(deployment)
                evicted = self.cache.retain(model, champion=deployment.champion, challenger=deployment.challenger)
            if evicted:
                log.info("serving: %s versions %s unloaded", model, ", ".join(evicted))
            return ApplyResult(outcome=outcome, serving=deployment, sentence=sentence)

    def predict(self, model: str, routing_key: str, features: Mapping[str, Any], *, prediction_id: str,
                predicted_at: datetime | None = None, segment: Mapping[str, str] | None = None) -> PredictionEvent:
        """Serve one request with the version its routing key gets; the event says which version served it.

        ``predicted_at`` defaults to now (UTC). A model that raises gives an event with ``error`` set (see the
        module's docstring); ``LookupError`` if the model has no deployment yet.
        """
        with self._serving:
            version = self.table.route(model, routing_key)
            loaded = self.cache.get(model, version)
        at = predicted_at if predicted_at is not None else datetime.now(UTC)
        prediction: Value = self.error_prediction
        probabilities: dict[str, float] | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            predicted, proba = model_answers(loaded, feature_frame([features]),
                                             probabilities=hasattr(loaded, "classes_"))
            prediction = to_value(predicted[0])
            if proba is not None:
                probabilities = class_probabilities(loaded.classes_, proba[0])
        except Exception as exc:  # the model's failure is data on the event, not the caller's crash
            prediction, probabilities, error = self.error_prediction, None, error_text(exc)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return PredictionEvent(prediction_id=prediction_id, model_name=model, model_version=version,
                               predicted_at=at, features=dict(features), prediction=prediction,
                               probabilities=probabilities, routing_key=routing_key,
                               segment=dict(segment) if segment is not None else None, latency_ms=latency_ms,
                               error=error)

    def _load(self, deployment: Deployment, version: str, role: str) -> LoadFailure | None:
        try:
            self.cache.load(deployment.model_name, version)
        except Exception as exc:  # any failure refuses the version; the router must keep serving
            failure = LoadFailure(model_name=deployment.model_name, version=version, role=role,
                                  message_version=deployment.message_version, reason=error_text(exc))
            self.failures.append(failure)
            self.failed_loads += 1
            log.warning("serving: %s %s %s (message %d) did not load: %s", deployment.model_name, role, version,
                        deployment.message_version, failure.reason)
            return failure
        return None


def to_value(raw: Any) -> Value:
    """A model's output for one row as an event's prediction: a Python number, bool or non-empty string.

    >>> to_value(np.int64(1)), to_value(np.float32(0.5)), to_value(np.bool_(True)), to_value(np.str_("churn"))
    (1, 0.5, True, 'churn')
    >>> to_value(float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: the model predicted nan: an event's prediction must be a finite number, a bool or a class label
    """
    value = raw.item() if isinstance(raw, np.generic) else raw
    if isinstance(value, bool | str) and value != "":
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    msg = f"the model predicted {value!r}: an event's prediction must be a finite number, a bool or a class label"
    raise ValueError(msg)


def class_probabilities(classes: Any, row: Any) -> dict[str, float]:
    """A classifier's probabilities for one row, keyed as the monitor reads them (``category_key``).

    >>> class_probabilities(np.array([0, 1]), np.array([0.25, 0.75]))
    {'0': 0.25, '1': 0.75}
    >>> class_probabilities(np.array([False, True]), [1.0, 0.0])
    {'false': 1.0, 'true': 0.0}
    """
    probabilities = np.asarray(row, dtype=float)
    if not np.isfinite(probabilities).all():
        msg = f"the model's probabilities {probabilities.tolist()} are not all finite"
        raise ValueError(msg)
    # clipped: a sum of floats may land a hair outside [0, 1], which the schema refuses
    return {category_key(to_value(c)): float(p)
            for c, p in zip(np.asarray(classes), np.clip(probabilities, 0.0, 1.0), strict=True)}


def error_text(exc: BaseException) -> str:
    """``"ExcType: message"``, cut to :data:`ERROR_CHARS` characters.

    >>> error_text(ValueError("X has 2 features, but the model expects 3"))
    'ValueError: X has 2 features, but the model expects 3'
    """
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."
