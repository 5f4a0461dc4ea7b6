"""The serving half of the router on the real registry (PostgreSQL, no broker): a deployment applies only once the
versions it names are loaded, a challenger that does not load is dropped, a champion that does not load refuses
the message, stale messages load nothing, past champions stay warm, and every event names the version that
served it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources

import jsonschema
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from feedback.registry.artifacts import Artifact, serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.store import FeedbackStore
from pitstop.router import Deployment, KillSwitch, RouteTable
from pitstop.serving import ModelCache, Outcome, ServingRouter
from schemas import EventKind, PredictionEvent, decode_message, encode_event, event_to_dict

AT = datetime(2026, 3, 2, 12, tzinfo=UTC)
KEYS = [f"user-{i}" for i in range(4_000)]


@cache
def _model(column: str) -> HistGradientBoostingClassifier:
    """A small classifier of the sign of one column, fitted on named columns (served from a DataFrame)."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    return HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, (x[column] > 0).astype(int))


def _register(store: FeedbackStore, version: str, artifact: Artifact | None = None, *, column: str = "a") -> None:
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        Registry().register(cur, ModelVersion(model_name="churn", version=version, stage="candidate"),
                            artifact or serialise(_model(column)), reason="test")


def _deployment(number: int, champion: str = "v1", challenger: str | None = "v2",
                share: float = 0.05) -> Deployment:
    return Deployment(model_name="churn", message_version=number, champion=champion, challenger=challenger,
                      challenger_share=share if challenger else 0.0, salt="r1", state="ramp", decided_at=AT,
                      reason="test")


def _serving(store: FeedbackStore, *, keep_previous: int = 2, environ: dict[str, str] | None = None) -> ServingRouter:
    return ServingRouter(RouteTable(KillSwitch({} if environ is None else environ, every_s=0.0)),
                         ModelCache(store, keep_previous=keep_previous))


def _predict(serving: ServingRouter, key: str, features: dict[str, float] | None = None) -> PredictionEvent:
    return serving.predict("churn", key, features or {"a": 0.7, "b": -0.2, "c": 0.1}, prediction_id=f"p-{key}",
                           predicted_at=AT, segment={"region": "eu"})


def _schema_errors(event: PredictionEvent) -> list[str]:
    schema = json.loads(resources.files("schemas").joinpath("prediction.schema.json").read_text())
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(event_to_dict(event))]


def test_a_challenger_is_loaded_then_takes_its_share(store: FeedbackStore) -> None:
    """Both versions load before the message applies; the challenger gets its share of keys, exactly the keys the
    hash gives it, and each event names the version that served it."""
    _register(store, "v1")
    _register(store, "v2", column="b")
    serving = _serving(store)
    result = serving.apply(_deployment(1, share=0.25))
    assert result.outcome is Outcome.APPLIED and result.sentence == "churn message 1 applied"
    assert serving.cache.warm("churn") == ["v1", "v2"] and serving.cache.loads == 2
    routed = [serving.route("churn", k) for k in KEYS]
    assert routed == [_deployment(1, share=0.25).route(k) for k in KEYS]
    assert routed.count("v2") / len(KEYS) == pytest.approx(0.25, abs=0.02)
    sample = KEYS[:200]
    assert [_predict(serving, k).model_version for k in sample] == routed[:200]


def test_an_event_carries_the_served_prediction_its_latency_and_passes_the_schema(store: FeedbackStore) -> None:
    """The prediction and probabilities are the registered model's own on a one-row frame; latency is measured;
    the event passes the JSON Schema and the ingest's codec."""
    _register(store, "v1")
    serving = _serving(store)
    serving.apply(_deployment(1, challenger=None))
    features = {"a": -1.3, "b": 0.4, "c": 2.0}
    event = _predict(serving, "user-1", features)
    frame = pd.DataFrame([features])
    expected = _model("a").predict_proba(frame)[0]
    assert (event.model_version, event.routing_key, event.segment, event.error) == ("v1", "user-1",
                                                                                     {"region": "eu"}, None)
    assert event.prediction == int(_model("a").predict(frame)[0]) and type(event.prediction) is int
    assert event.probabilities == pytest.approx({"0": expected[0], "1": expected[1]})
    assert event.latency_ms is not None and event.latency_ms > 0
    assert _schema_errors(event) == []
    decoded = decode_message(EventKind.PREDICTION, encode_event(event), now=AT)
    assert decoded.rejected == [] and decoded.events[0].model_version == "v1"


@pytest.mark.parametrize(("spoil", "reason"), [
    ("UPDATE model_artifacts SET data = data || '\\x00'::bytea WHERE artifact_id = "
     "(SELECT artifact_id FROM model_versions WHERE version = 'v2')", "DigestMismatch: artifact"),
    ("UPDATE model_artifacts SET format = 'pickle' WHERE artifact_id = "
     "(SELECT artifact_id FROM model_versions WHERE version = 'v2')", "UnpicklingError"),
    ("DELETE FROM model_versions WHERE version = 'v2'", "LookupError: churn v2 is not in the registry"),
], ids=["tampered", "not-deserialisable", "unregistered"])
def test_a_challenger_that_does_not_load_is_dropped(store: FeedbackStore, spoil: str, reason: str) -> None:
    """A challenger whose bytes were altered, that cannot be deserialised or that is not registered: the message
    applies without it, every key goes to the champion, and the failure is counted with its reason."""
    _register(store, "v1")
    _register(store, "v2", column="b")
    with store.pool.connection() as conn:
        conn.execute("DELETE FROM model_stage_changes WHERE version = 'v2'")  # lets the DELETE case through
        conn.execute(spoil)  # type: ignore[arg-type]
    serving = _serving(store)
    result = serving.apply(_deployment(1, share=1.0))
    assert result.outcome is Outcome.APPLIED_WITHOUT_CHALLENGER
    assert serving.deployment("churn") == _deployment(1, challenger=None)
    assert {serving.route("churn", k) for k in KEYS} == {"v1"}
    assert {_predict(serving, k).model_version for k in KEYS[:50]} == {"v1"}
    assert serving.failed_loads == 1 and serving.cache.warm("churn") == ["v1"]
    failure = serving.failures[-1]
    assert (failure.version, failure.role, failure.message_version) == ("v2", "challenger", 1)
    assert reason in failure.reason, failure.reason
    assert "every key to champion v1" in result.sentence


def test_a_champion_that_does_not_load_refuses_the_message(store: FeedbackStore) -> None:
    """The last good table keeps serving when a message's champion is tampered with; with no good table yet, the
    model has no route."""
    _register(store, "v1")
    _register(store, "v2", column="b")
    _register(store, "v3")
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_artifacts SET data = data || '\\x00'::bytea WHERE artifact_id = "
                     "(SELECT artifact_id FROM model_versions WHERE version = 'v3')")
    serving = _serving(store)
    first = serving.apply(_deployment(1, champion="v3", challenger="v2"))
    assert first.outcome is Outcome.REFUSED and first.serving is None
    with pytest.raises(LookupError, match="no deployment of model 'churn'"):
        serving.route("churn", "user-1")
    assert serving.apply(_deployment(2, share=0.5)).outcome is Outcome.APPLIED
    refused = serving.apply(_deployment(3, champion="v3", challenger="v2", share=1.0))
    assert refused.outcome is Outcome.REFUSED and refused.serving == _deployment(2, share=0.5)
    assert "champion v3 did not load (DigestMismatch" in refused.sentence
    assert "message 2 still serves" in refused.sentence
    assert [serving.route("churn", k) for k in KEYS] == [_deployment(2, share=0.5).route(k) for k in KEYS]
    assert serving.failed_loads == 2 and "v3" not in serving.cache.warm("churn")


def test_a_stale_message_is_ignored_and_loads_nothing(store: FeedbackStore) -> None:
    """A message not newer than the one serving changes no route and loads none of the versions it names."""
    _register(store, "v1")
    _register(store, "v2", column="b")
    _register(store, "v3")
    serving = _serving(store)
    serving.apply(_deployment(2, share=0.25))
    for stale in (_deployment(1, challenger="v3", share=1.0), _deployment(2, champion="v3", challenger=None)):
        assert serving.apply(stale).outcome is Outcome.STALE
    assert serving.deployment("churn") == _deployment(2, share=0.25)
    assert serving.cache.loads == 2 and serving.cache.warm("churn") == ["v1", "v2"]
    assert serving.table.ignored == 2


def test_past_champions_stay_warm_and_older_ones_are_unloaded(store: FeedbackStore) -> None:
    """A ramp, a promotion and a rollback load nothing new; with keep_previous=2 the third champion back is
    unloaded, and going back to it loads it again."""
    for version in ("v1", "v2", "v3", "v4"):
        _register(store, version)
    serving = _serving(store, keep_previous=2)
    steps = [("v1", "v2", 0.05), ("v1", "v2", 0.5), ("v2", None, 0.0), ("v1", None, 0.0)]
    for number, (champion, challenger, share) in enumerate(steps, start=1):
        assert serving.apply(_deployment(number, champion, challenger, share)).outcome is Outcome.APPLIED
        assert serving.cache.loads == 2, f"step {number} loaded a version again"
    assert serving.cache.warm("churn") == ["v1", "v2"]  # v2 is the past champion after the rollback
    serving.apply(_deployment(5, "v3", None))
    serving.apply(_deployment(6, "v4", None))  # champions v1, v2, v1, v3, v4: the last two before v4 are v3, v1
    assert serving.cache.warm("churn") == ["v1", "v3", "v4"] and serving.cache.loads == 4
    serving.apply(_deployment(7, "v3", None))
    assert serving.cache.loads == 4
    serving.apply(_deployment(8, "v2", None))
    assert serving.cache.loads == 5 and serving.route("churn", "user-1") == "v2"


def test_a_model_that_raises_gives_an_event_with_its_error(store: FeedbackStore) -> None:
    """Features the model cannot read: the event names the version that failed, carries the exception's type and
    message, no probabilities, and still passes the schema (its prediction is the documented placeholder)."""
    _register(store, "v1")
    serving = _serving(store)
    serving.apply(_deployment(1, challenger=None))
    event = _predict(serving, "user-1", {"a": 0.3})
    assert event.model_version == "v1" and event.routing_key == "user-1"
    assert event.error is not None and event.error.startswith("ValueError: ") and "b" in event.error
    assert (event.prediction, event.probabilities) == ("error", None)
    assert event.latency_ms is not None and event.latency_ms > 0
    assert _schema_errors(event) == []


def test_the_kill_switch_sends_every_key_to_the_champion(store: FeedbackStore) -> None:
    """A full ramp with the kill switch engaged serves every request with the champion."""
    _register(store, "v1")
    _register(store, "v2", column="b")
    environ: dict[str, str] = {}
    serving = _serving(store, environ=environ)
    serving.apply(_deployment(1, share=1.0))
    assert {_predict(serving, k).model_version for k in KEYS[:100]} == {"v2"}
    environ["PITSTOP_KILL_SWITCH"] = "churn"
    assert {_predict(serving, k).model_version for k in KEYS[:100]} == {"v1"}
