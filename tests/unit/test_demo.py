"""The demo's runs and its model server: each run serves its model under a version of its own, carried by every
event it makes; routed through the serving router, each customer's request is served by the version the deployment
gives it, tagged with it."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from feedback.rollout.drill import FailingModel
from pitstop.demo import world
from pitstop.demo.server import TIMED_PER_VERSION, RoutedServer
from pitstop.router import Deployment, KillSwitch, RouteTable
from pitstop.serving import ServingRouter
from schemas import EventKind, OutcomeEvent, PredictionEvent, decode_message, encode_event

WALL_START = datetime(2026, 11, 30, 10, 26, 3, 512_000, tzinfo=UTC)
#: a second run ten minutes later: the same hour, so the same event clock as the first
LATER = WALL_START + timedelta(minutes=10)


def _run_events(feed: world.DemoFeed) -> tuple[list[PredictionEvent], list[OutcomeEvent], list[dict]]:
    """Everything the feed publishes over three event days: predictions, outcomes, malformed documents."""
    predictions: list[PredictionEvent] = []
    outcomes: list[OutcomeEvent] = []
    malformed: list[dict] = []
    for hours, n in ((6, 400), (12, 400), (72, 0)):
        step = feed.advance(feed.clock_start + timedelta(hours=hours), n)
        for d in step.deliveries:
            (predictions if isinstance(d.event, PredictionEvent) else outcomes).append(d.event)
        for bad in step.malformed:
            try:
                malformed.append(json.loads(bad.value))
            except ValueError:
                pass  # the cut-short one
    return predictions, outcomes, malformed


def test_runs_started_at_different_times_serve_different_versions() -> None:
    """Two runs started at different wall times (even within the hour) get different model versions."""
    first, second = world.feed_for_run(WALL_START), world.feed_for_run(LATER)
    assert first.clock_start == second.clock_start  # the same event times: only the version tells them apart
    assert first.model_version != second.model_version
    assert world.feed_for_run(WALL_START).model_version == first.model_version


def test_version_is_readable_and_valid_in_an_event() -> None:
    """The run's version is the base version and the run's wall start, and survives the event contract."""
    version = world.feed_for_run(WALL_START).model_version
    assert version == "v1-20261130T102603"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", version)
    event = PredictionEvent(prediction_id="p-1", model_name=world.MODEL_NAME, model_version=version,
                            predicted_at=WALL_START, features={"usage_gb": 3.5}, prediction=1)
    decoded = decode_message(EventKind.PREDICTION, encode_event(event), now=LATER)
    assert decoded.rejected == []
    assert decoded.events[0].model_version == version


def test_every_event_of_a_run_carries_its_version() -> None:
    """Every prediction a run's feed publishes, malformed ones included, is of the run's model and version,
    and every outcome is for one of them."""
    feed = world.feed_for_run(WALL_START)
    predictions, outcomes, malformed = _run_events(feed)
    assert len(predictions) == 800 and len(outcomes) >= 800
    assert {(p.model_name, p.model_version) for p in predictions} == {("churn", feed.model_version)}
    assert {o.prediction_id for o in outcomes} <= {p.prediction_id for p in predictions}
    versions = {doc.get("model_version") for doc in malformed if "model_name" in doc}
    assert versions <= {feed.model_version}


def test_runs_differ_only_in_ids_and_version() -> None:
    """Two runs within the same hour publish the same world: same times, features, predictions and labels."""
    first, second = world.feed_for_run(WALL_START), world.feed_for_run(LATER)
    (p1, o1, _), (p2, o2, _) = _run_events(first), _run_events(second)

    def same_world(e: PredictionEvent | OutcomeEvent, feed: world.DemoFeed) -> PredictionEvent | OutcomeEvent:
        e = replace(e, prediction_id=e.prediction_id.removeprefix(feed.id_prefix))
        return replace(e, model_version="-") if isinstance(e, PredictionEvent) else e

    assert [same_world(e, first) for e in (*p1, *o1)] == [same_world(e, second) for e in (*p2, *o2)]


class _Constant:
    """A stand-in for a registry version's model: churn with probability 0.9 whatever the features."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        assert list(X.columns)[:2] == ["tenure_months", "monthly_charges"] and len(X.columns) == 8
        return np.tile([0.1, 0.9], (len(X), 1))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.ones(len(X), dtype=int)


def test_a_served_champion_changes_what_is_served_and_nothing_else() -> None:
    """From `serve` on, the feed's predictions are the served model's, under its version; the world (times,
    features, outcomes, labels) is the one the built-in model would have served, so the runs compare."""
    runs = []
    for serve in (False, True):
        feed = world.feed_for_run(WALL_START)
        events = []
        for hours, n in ((6, 400), (12, 400), (72, 0)):
            if serve and hours == 12:
                feed.serve(world.ServedModel("20261102T1200Z-drift-abc123", _Constant()))
            events += [d.event for d in feed.advance(feed.clock_start + timedelta(hours=hours), n).deliveries]
        runs.append((feed, [e for e in events if isinstance(e, PredictionEvent)],
                     [e for e in events if isinstance(e, OutcomeEvent)]))
    (built_in, p1, o1), (served, p2, o2) = runs
    switch = built_in.clock_start + timedelta(hours=6)
    assert served.versions == [built_in.model_version, "20261102T1200Z-drift-abc123"]
    assert len(p1) == len(p2) == 800 and o1 == o2
    pairs = sorted(zip(sorted(p1, key=lambda e: e.prediction_id), sorted(p2, key=lambda e: e.prediction_id),
                       strict=True), key=lambda ab: ab[0].predicted_at)
    before = [(a, b) for a, b in pairs if a.predicted_at < switch]
    after = [(a, b) for a, b in pairs if a.predicted_at >= switch]
    assert len(before) == len(after) == 400
    assert all(a == b for a, b in before)
    assert all(b.model_version == "20261102T1200Z-drift-abc123" and (b.prediction, b.score) == (1, 0.9)
               and b.probabilities == {"0": 0.1, "1": 0.9} for _, b in after)
    assert all(replace(a, model_version="-", prediction=0, probabilities=None, score=None)
               == replace(b, model_version="-", prediction=0, probabilities=None, score=None) for a, b in after)


class _Loaded:
    """A stand-in for the registry's loaded versions (pitstop.serving.ModelCache), without a database."""

    def __init__(self, models: dict[str, object]) -> None:
        self.models = models

    def load(self, model: str, version: str) -> object:
        return self.models[version]

    def get(self, model: str, version: str) -> object:
        return self.models[version]

    def retain(self, model: str, *, champion: str, challenger: str | None) -> list[str]:
        return []


def test_the_routed_server_serves_each_customer_by_the_deployment() -> None:
    """Through the serving router at 25%, each request is served by the version the deployment's hash gives its
    customer and tagged with it: the built-in model's registry form answers what the world's built-in model does,
    the failing model fails each of its requests with the error on the event; the first few requests of each
    version are timed one at a time, the others not; the world's side of each event is kept."""
    requests = [r.prediction for r in world.generate_predictions(
        np.random.default_rng(5), 400, start_at=WALL_START, end_at=WALL_START + timedelta(hours=2),
        clock_start=WALL_START, id_prefix="d-", model_version="v1")]
    serving = ServingRouter(RouteTable(KillSwitch({})), _Loaded({"v1": world.builtin_model(), "bad": FailingModel()}))
    deployment = Deployment(model_name="churn", message_version=1, champion="v1", challenger="bad",
                            challenger_share=0.25, salt="churn/bad", state="ramp", decided_at=WALL_START, reason="test")
    assert serving.apply(deployment).serving == deployment
    served = RoutedServer(serving).serve(requests)

    assert [e.model_version for e in served] == [deployment.route(r.routing_key or "") for r in requests]
    by_version = {v: [(r, e) for r, e in zip(requests, served, strict=True) if e.model_version == v]
                  for v in ("v1", "bad")}
    assert 50 < len(by_version["bad"]) < 150, len(by_version["bad"])
    for r, e in by_version["v1"]:
        assert e.error is None and e.prediction == r.prediction
        assert abs(e.probabilities["1"] - r.probabilities["1"]) < 1e-4
    for _, e in by_version["bad"]:
        assert e.prediction == "error" and e.probabilities is None
        assert e.error == "RuntimeError: pitstop drill: this model fails every request on purpose"
    for pairs in by_version.values():
        timed = [e.latency_ms for _, e in pairs if e.latency_ms is not None]
        assert len(timed) == TIMED_PER_VERSION and min(timed) > 0
    keep = ("prediction_id", "predicted_at", "features", "routing_key", "segment", "model_name")
    assert all(getattr(r, k) == getattr(e, k) for r, e in zip(requests, served, strict=True) for k in keep)
