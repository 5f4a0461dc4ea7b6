"""The serving router on the real broker and the real registry: one running ServingRouter follows a ramp from
5% to 50% to the challenger's promotion, loading each version once, and serves the new table within seconds of
the message being published."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer
from sklearn.ensemble import HistGradientBoostingClassifier

from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.store import FeedbackStore
from pitstop.router import Deployment, KillSwitch, Router
from pitstop.serving import ModelCache, ServingRouter
from pitstop.settings import Topics

KEYS = [f"user-{i}" for i in range(2_000)]
FEATURES = {"a": 0.7, "b": -0.2, "c": 0.1}


def _deployment(number: int, champion: str, challenger: str | None, share: float, state: str) -> Deployment:
    return Deployment(model_name="churn", message_version=number, champion=champion, challenger=challenger,
                      challenger_share=share, salt="rollout-7", state=state, reason="test",
                      decided_at=datetime(2026, 3, 2, 12, tzinfo=UTC))


def _register(store: FeedbackStore, version: str, column: str) -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, (x[column] > 0).astype(int))
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        Registry().register(cur, ModelVersion(model_name="churn", version=version, stage="candidate"),
                            serialise(model), reason="test")


def _router(bootstrap: str, topic: str) -> Router:
    return Router(lambda: KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                        value_deserializer=None, consumer_timeout_ms=1000),
                  topic, kill_switch=KillSwitch({}), poll_ms=100)


def _seconds_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> float:
    """Seconds until ``condition()`` holds, polled every 10 ms; fails after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not reached within {timeout_s:.0f} s")
        time.sleep(0.01)
    return time.monotonic() - started


def test_the_serving_router_follows_a_ramp_to_promotion(services, topics: Topics, store: FeedbackStore) -> None:
    """5% -> 50% -> promoted, read by one running ServingRouter: each step routes exactly the hash's keys, events
    name the serving version, the versions load once, and each switch lands within 5 s of the publish."""
    _register(store, "v1", "a")
    _register(store, "v2", "b")
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    serving = ServingRouter(_router(services.kafka_bootstrap, topics.deployments), ModelCache(store)).start()
    try:
        assert serving.wait_caught_up(30)
        with pytest.raises(ValueError, match="wrap it before it starts"):
            ServingRouter(serving.table, ModelCache(store))
        lags_s = []
        for step in (_deployment(1, "v1", "v2", 0.05, "canary"), _deployment(2, "v1", "v2", 0.5, "ramp"),
                     _deployment(3, "v2", None, 0.0, "promoted")):
            producer.send(topics.deployments, key=b"churn", value=json.dumps(step.to_json()).encode())
            producer.flush(timeout=30)
            lags_s.append(_seconds_until(lambda step=step: serving.deployment("churn") == step))
            expected = [step.route(k) for k in KEYS]
            assert [serving.route("churn", k) for k in KEYS] == expected
            events = [serving.predict("churn", k, FEATURES, prediction_id=f"{step.message_version}-{k}")
                      for k in KEYS[:200]]
            assert [e.model_version for e in events] == expected[:200]
            assert all(e.error is None and e.latency_ms is not None and e.latency_ms > 0 for e in events)
            share = expected.count("v2") / len(KEYS)
            assert share == pytest.approx(step.challenger_share if step.challenger else 1.0, abs=0.02)
        assert max(lags_s) < 5.0, f"switch lags {lags_s}"
        assert serving.cache.loads == 2 and serving.cache.warm("churn") == ["v1", "v2"]  # v1: the rollback target
        assert serving.failed_loads == 0
    finally:
        serving.close()
        producer.close()
