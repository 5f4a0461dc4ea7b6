"""The demo's model server: each request routed by the serving router on its customer's id, served by the registry
version the router loaded, and its event tagged with that version.

The run's first version (the world's built-in model, :func:`pitstop.demo.world.builtin_model`) is registered as
the model's champion when the run starts, and the demo publishes the first deployment itself (champion only,
state ``steady``) through the outbox, as the rollout controller publishes every later one
(:func:`feedback.rollout.controller.publish_deployment`): the deployments topic is empty until a ramp starts,
and a router with no deployment has nothing to route to. The feed starts once the router has applied it, so
every prediction of the run is served from the registry, the first version's included.

:class:`RoutedServer` routes every request with :meth:`pitstop.serving.ServingRouter.route` (the deployment's
hash on ``customer-<id>``: a customer stays on one version at a given share).
:meth:`~pitstop.serving.ServingRouter.predict` serves one request at a time, about 11 ms for the linear pipeline on
a laptop core (13-16 ms on these 2-core VMs, bench/serving.py): 200 requests a second would need two cores or more. So
the first :data:`TIMED_PER_VERSION` requests of each version in a tick are served one at a time by ``predict``
itself (their ``latency_ms`` is that request's), and the others in one call to the model the router loaded, with no
latency (``latency_ms`` NULL: the rollback rules read latency from the timed requests only). A batch's time spread
over its requests would not do: it grows with the batch, so it would depend on the arm's share (a challenger at 100%
in its hold looked twice as slow as the champion had at 50% before it, and was rolled back). A model that raises
fails every request of its call, with the error on each event, as ``predict`` does for one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer

from feedback.features import feature_frame, model_answers
from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import publish_deployment
from feedback.store import FeedbackStore
from pitstop.demo.world import MODEL_NAME, builtin_model
from pitstop.errors import StackError
from pitstop.router import Router
from pitstop.serving import ModelCache, ServingRouter, class_probabilities, error_text, to_value
from schemas import PredictionEvent
from schemas.events import Value

#: wall seconds the router has to take up the run's first deployment before the demo gives up
FIRST_DEPLOYMENT_TIMEOUT_S = 30.0
#: how often a tick routes its requests again when a deployment applied meanwhile unloaded a version
ROUTE_TRIES = 3
#: requests of each version in a tick served (and timed) one at a time: 12 a second for each arm with traffic (a 5%
#: canary gets about 5 a tick at the demo's rate), so an arm has the rollback rules' 200 timed requests
#: (``min_latency_samples``), which the step to 100% waits for, about 17 event hours into a ramp; they cost about
#: 11 ms each on a laptop core (13-16 ms here), 130 ms a tick for two arms
TIMED_PER_VERSION = 6

_ACTIVE_ROLLOUT = """
SELECT challenger, state FROM rollouts WHERE model_name = %s AND state IN ('ramping', 'paused', 'holding')
"""


class RoutedServer:
    """Serves the world's requests through a :class:`~pitstop.serving.ServingRouter` (see the module docstring)."""

    def __init__(self, serving: ServingRouter, *, model: str = MODEL_NAME, timed: int = TIMED_PER_VERSION) -> None:
        self.serving = serving
        self.model = model
        self.timed = timed

    def serve(self, requests: Sequence[PredictionEvent]) -> list[PredictionEvent]:
        """The requests as served, in their order, each by the version its routing key gets."""
        if not requests:
            return []
        groups, models = self._route(requests)
        served = list(requests)
        for version, indexes in groups.items():
            for i in indexes[:self.timed]:
                r = requests[i]
                served[i] = self.serving.predict(self.model, r.routing_key or r.prediction_id, r.features,
                                                 prediction_id=r.prediction_id, predicted_at=r.predicted_at,
                                                 segment=r.segment)
            rest = indexes[self.timed:]
            for i, event in zip(rest, self._call(version, models[version], [requests[i] for i in rest]),
                                strict=True):
                served[i] = event
        return served

    def _route(self, requests: Sequence[PredictionEvent]) -> tuple[dict[str, list[int]], dict[str, Any]]:
        for _ in range(ROUTE_TRIES):
            groups: dict[str, list[int]] = {}
            for i, request in enumerate(requests):
                key = request.routing_key or request.prediction_id
                groups.setdefault(self.serving.route(self.model, key), []).append(i)
            try:
                return groups, {v: self.serving.cache.get(self.model, v) for v in groups}
            except LookupError:  # a deployment applied between the route and the lookup unloaded a version
                continue
        msg = f"{self.model}: the routed versions kept being unloaded while routing ({ROUTE_TRIES} tries)"
        raise LookupError(msg)

    def _call(self, version: str, model: Any, batch: Sequence[PredictionEvent]) -> list[PredictionEvent]:
        """``batch`` served in one call to ``model``, as ``version``, without latency."""
        if not batch:
            return []
        error_prediction: Value = self.serving.error_prediction
        answers: list[tuple[Value, dict[str, float] | None, str | None]]
        try:
            X = feature_frame(r.features for r in batch)
            predicted, proba = model_answers(model, X, probabilities=hasattr(model, "classes_"))
            answers = [_answer(predicted[j], None if proba is None else (model.classes_, proba[j]), error_prediction)
                       for j in range(len(batch))]
        except Exception as exc:  # the model's failure is data on the events, not the server's crash
            answers = [(error_prediction, None, error_text(exc))] * len(batch)
        return [replace(r, model_version=version, prediction=prediction, probabilities=probabilities, score=None,
                        latency_ms=None, error=error)
                for r, (prediction, probabilities, error) in zip(batch, answers, strict=True)]


def _answer(raw: Any, proba: tuple[Any, Any] | None,
            error_prediction: Value) -> tuple[Value, dict[str, float] | None, str | None]:
    """One row's prediction and probabilities as ``ServingRouter.predict`` makes them, or its error."""
    try:
        return to_value(raw), None if proba is None else class_probabilities(*proba), None
    except ValueError as exc:
        return error_prediction, None, error_text(exc)


def register_first_champion(store: FeedbackStore, version: str, *, at: datetime, registry: Registry | None = None,
                            model: str = MODEL_NAME) -> str:
    """Register the world's built-in model as ``version``, make it the champion, and write the first deployment
    (champion only) with its deployments message to the outbox, in one transaction; returns the sentence.

    Refuses (:class:`~pitstop.errors.StackError`) while a ramp of an earlier run is under way in this store: its
    deployment would be overwritten under the controller's feet.
    """
    registry = registry or Registry()
    sentence = (f"{version}, the demo's built-in model (the world's own weights in the linear trainer's pipeline), "
                "is registered as champion and serves every customer")
    artifact = serialise(builtin_model(), "skops")
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        active = cur.execute(_ACTIVE_ROLLOUT, (model,)).fetchone()
        if active is not None:
            msg = (f"a ramp of {model} {active[0]} is under way ({active[1]}) in this store, from an earlier run; "
                   f"end it with `pitstop rollback --model {model}` or run the demo on a stack of its own")
            raise StackError(msg)
        registry.register(cur, ModelVersion(model_name=model, version=version, stage="candidate",
                                            trainer="pitstop.demo.world:builtin_model", lineage={"demo": "built-in"}),
                          artifact, reason="the demo's built-in model")
        registry.move(cur, model, version, "champion", reason=sentence)
        publish_deployment(cur, model, champion=version, challenger=None, share=0.0, salt=f"{model}/{version}",
                           state="steady", reason=sentence, at=at)
    return sentence


def start_serving(store: FeedbackStore, bootstrap: str, topic: str, *, champion: str, model: str = MODEL_NAME,
                  timeout_s: float = FIRST_DEPLOYMENT_TIMEOUT_S) -> ServingRouter:
    """A serving router following ``topic``, once it serves ``champion`` (the run's first deployment): raises
    :class:`~pitstop.errors.StackError` with the router's last load failure if it does not within ``timeout_s``."""
    router = Router(lambda: KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          client_id="pitstop-demo-router"), topic)
    serving = ServingRouter(router, ModelCache(store)).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deployment = serving.deployment(model)
        if deployment is not None and deployment.champion == champion:
            return serving
        time.sleep(0.1)
    serving.close()
    held = serving.deployment(model)
    why = (serving.failures[-1].reason if serving.failures else "no message of it on the topic yet" if held is None
           else f"message {held.message_version} serves {held.champion}")
    msg = f"the serving router did not take up {model} {champion} within {timeout_s:g} s: {why}"
    raise StackError(msg)
