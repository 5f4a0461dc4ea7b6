"""A worker with a monitoring configuration: windows counted from the stream, rounds published on the topic."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from kafka import KafkaConsumer

from feedback.store import FeedbackStore
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from tests.conftest import Services, wait_until
from tests.factories import T0, outcome, prediction

TOML = """
[models.churn]
task = "classification"
positive_class = 1
window = "1h"
span = 4
min_rows = 200
min_labels = 100
reference_rows = 300
"""
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "monitoring.schema.json").read_text())


def test_worker_counts_windows_and_publishes_rounds(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """Predictions and labels through Kafka: the worker builds the profile from the first 300, counts every
    prediction and label exactly once, and publishes a schema-valid round that flags the shifted feature."""
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    ingest = start_worker(PITSTOP_CONFIG=str(config), wait=False)  # both start at once: neither waits for the other
    monitor = start_worker(kind="monitor", PITSTOP_CONFIG=str(config), PITSTOP_MONITOR_INTERVAL_S="1", wait=False)
    ingest.wait_ready()
    monitor.wait_ready()

    def tail() -> str:  # what both logged, for a failure's message
        return f"ingest:\n{ingest.log_tail()}\nmonitor:\n{monitor.log_tail()}"

    rng = np.random.default_rng(8)
    n = 1200
    shift = [0.0 if i < 600 else 1.5 for i in range(n)]
    preds = [prediction(i, predicted_at=T0 + timedelta(seconds=9 * i),
                        features={"x": float(rng.normal(shift[i])), "plan": "a" if rng.random() < 0.6 else "b"})
             for i in range(n)]
    labels = [outcome(i, label=int(rng.random() < 0.3)) for i in range(n)]
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=100) as producer:
        for event in [*preds, *labels, *labels[:100]]:
            producer.publish(event)

    def totals() -> tuple[int, int]:
        rows = store.scalar("SELECT coalesce(sum(counts[1]), 0) FROM window_counts"
                            " WHERE series = '__rows__' AND segment = '*'")
        labelled = store.scalar("SELECT coalesce(sum((stats->>'n')::int), 0) FROM window_performance"
                                " WHERE segment = '*'")
        return int(rows), int(labelled)

    wait_until(lambda: totals() == (n, n), 90, lambda: f"windows hold {totals()}\n{tail()}")
    consumer = KafkaConsumer(topics.monitoring, bootstrap_servers=services.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    events: list[dict[str, Any]] = []

    def flagged_round() -> bool:
        events.extend(json.loads(m.value) for m in consumer)
        return any(e["drift"]["flagged"] == ["x"] for e in events)

    wait_until(flagged_round, 60, lambda: f"rounds: {events[-2:]}\n{tail()}")
    consumer.close()
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    for event in events:
        validator.validate(event)
    assert store.scalar("SELECT source FROM reference_profiles") == "first 300 predictions"
