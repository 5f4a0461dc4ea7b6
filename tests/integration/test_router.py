"""The router on the real broker: it reads the deployments topic from its start, keeps the newest message
per model (a stale one published late is ignored, an invalid one too), follows a new message while it runs,
and a router started later reaches the same table."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer

from pitstop.router import Deployment, KillSwitch, Router
from pitstop.settings import Topics


def _deployment(model: str, version: int, share: float) -> Deployment:
    return Deployment(model_name=model, message_version=version, champion="v1", challenger="v2",
                      challenger_share=share, salt="r1", state="canary", reason="test",
                      decided_at=datetime(2026, 3, 2, 12, tzinfo=UTC))


def _router(bootstrap: str, topic: str) -> Router:
    return Router(lambda: KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                        value_deserializer=None, consumer_timeout_ms=1000),
                  topic, kill_switch=KillSwitch({})).start()


def _wait(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_router_follows_the_deployments_topic(services, topics: Topics) -> None:
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    send = lambda d: producer.send(topics.deployments, key=d.model_name.encode(),  # noqa: E731
                                   value=json.dumps(d.to_json()).encode())
    for d in (_deployment("churn", 1, 0.05), _deployment("churn", 3, 0.25), _deployment("eta", 1, 0.10),
              _deployment("churn", 2, 0.50)):  # the last is stale
        send(d)
    producer.send(topics.deployments, key=b"churn", value=b"not json")
    producer.flush(timeout=30)
    router = _router(services.kafka_bootstrap, topics.deployments)
    later = None
    try:
        assert router.wait_caught_up(30), "the router did not read the topic to its end"
        assert router.deployment("churn").message_version == 3  # type: ignore[union-attr]
        assert router.deployment("eta").challenger_share == 0.10  # type: ignore[union-attr]
        assert (router.ignored, router.invalid) == (1, 1)
        keys = [f"user-{i}" for i in range(2_000)]
        routed = [router.route("churn", k) for k in keys]
        assert routed == [_deployment("churn", 3, 0.25).route(k) for k in keys]
        send(_deployment("churn", 4, 1.0))
        producer.flush(timeout=30)
        assert _wait(lambda: router.route("churn", "user-1") == "v2" and router.route("churn", "user-7") == "v2")
        later = _router(services.kafka_bootstrap, topics.deployments)
        assert later.wait_caught_up(30)
        assert later.deployment("churn") == router.deployment("churn")
        assert later.deployment("eta") == router.deployment("eta")
    finally:
        router.close()
        if later is not None:
            later.close()
        producer.close()
