"""The rollout end to end on the real broker and database: a candidate event on the candidates topic, a real
`pitstop rollout-worker` process (shadow, judge, ramp controller), and a model server routing every request with
`ServingRouter` on the deployments topic and storing what it served. The candidate passes its shadow, walks every
step to champion, and the routers follow; then `pitstop drill` deploys a challenger that fails every request: the
controller rolls it back, every router switches within the drill's limit, and the drill reports its timing."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from kafka import KafkaConsumer
from sklearn.linear_model import LogisticRegression

from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import publish_deployment
from feedback.store import FeedbackStore
from pitstop import rollout_cli, stack
from pitstop.outbox_relay import OutboxPublisher
from pitstop.router import Router
from pitstop.serving import ModelCache, ServingRouter
from pitstop.settings import Settings
from retrain_worker.pipeline import candidate_event
from schemas import OutcomeEvent
from tests.conftest import wait_until

T0 = datetime(2026, 6, 1, tzinfo=UTC)
TOML = """
[models.churn]
task = "classification"
positive_class = 1
metric = "accuracy"
[models.churn.features]
age = "numeric"
[models.churn.retrain]
promotion = "shadow"
[models.churn.rollout]
shadow_min_labels = 200
shadow_min_duration = "1h"
# shares of 20 % and up: the first step has the evidence it needs in an hour or two (at 5 % it took seven)
steps = [0.2, 0.3, 0.4, 0.5, 1.0]
dwell = ["1h", "1h", "1h", "1h"]
hold = "1h"
step_min_requests = 30
# the test process times its own predictions on a busy machine (two test processes, a broker, a database and a
# worker on 2 cores): its latency is noise, and the latency rules are tested in tests/unit/test_rollout_rules.py
latency_margin_ms = 100
"""


def _fit(threshold: float) -> LogisticRegression:
    """A model that answers in a fraction of a millisecond (the serving loop predicts one request at a time)."""
    X = pd.DataFrame({"age": np.random.default_rng(1).normal(45, 10, 2_000)})
    return LogisticRegression(C=100.0).fit(X, (X["age"] > threshold).astype(int))


class Server:
    """A model server: each event hour, requests from 1,000 users routed and predicted by the serving router, the
    labels (the truth: age above 50, 5% flipped) one minute later, both written to the store (at the end of the hour,
    or every ``write_every`` requests)."""

    def __init__(self, store: FeedbackStore, serving: ServingRouter) -> None:
        self.store = store
        self.serving = serving
        self.rng = np.random.default_rng(2)
        self.at = T0
        self.seq = 0

    def hour(self, requests: int = 600, write_every: int | None = None) -> dict[str, int]:
        events, outcomes, served = [], [], {}
        for k in range(requests):
            if write_every is not None and len(events) == write_every:
                self.store.write_batch(events, outcomes)
                events, outcomes = [], []
            self.seq += 1
            age = float(self.rng.normal(45, 10))
            at = self.at + timedelta(seconds=3_600 * k / requests)
            event = self.serving.predict("churn", f"u{self.rng.integers(1_000)}", {"age": age},
                                         prediction_id=f"r{self.seq}", predicted_at=at)
            served[event.model_version] = served.get(event.model_version, 0) + 1
            events.append(event)
            truth = int(age > 50) if self.rng.random() > 0.05 else int(age <= 50)
            outcomes.append(OutcomeEvent(prediction_id=f"r{self.seq}", label=truth,
                                         observed_at=at + timedelta(minutes=1)))
        self.store.write_batch(events, outcomes)
        self.at += timedelta(hours=1)
        return served


def _settle(store: FeedbackStore, at_most_s: float = 1.5) -> None:
    """Give the worker's rounds (0.5 s apart) the time to look at the new hour: until an event, or until two of the
    ramp controller's looks began after it was written (the second in a round that began after it, its shadow
    scoring included), or at most 1.5 s. A look that waits (for its dwell, requests or evidence) records its sentence
    in the ramp's row, whose ``updated_at`` is the look's transaction start; the shadow's rounds and the hold record
    nothing, and there the 1.5 s hold as before."""
    written = store.scalar("SELECT clock_timestamp()")  # after the hour's commit
    before = store.scalar("SELECT count(*) FROM rollout_events")
    looks: set[datetime] = set()
    deadline = time.monotonic() + at_most_s
    while time.monotonic() < deadline and store.scalar("SELECT count(*) FROM rollout_events") == before:
        looks.update(at for (at,) in store.rows("SELECT updated_at FROM rollouts WHERE state = 'ramping' "
                                                "AND updated_at > %s", (written,)))
        if len(looks) >= 2:
            return
        time.sleep(0.1)


def test_a_candidate_goes_through_shadow_and_ramp_to_champion_then_a_drill_is_rolled_back(
        services, db_schema: str, topics, store: FeedbackStore, unique_name: str, tmp_path: Path) -> None:
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")} | {
        "PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap, "PITSTOP_DATABASE_URL": services.database_url,
        "PITSTOP_DB_SCHEMA": db_schema, "PITSTOP_TOPIC_PREFIX": topics.prefix, "PITSTOP_APP_ID": unique_name,
        "PITSTOP_CONFIG": str(config), "PITSTOP_STATE_DIR": str(tmp_path / "state"),
        "PITSTOP_ROLLOUT_INTERVAL_S": "0.5"}
    settings = Settings.from_env(env)
    registry = Registry()
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        registry.register(cur, ModelVersion(model_name="churn", version="v1", stage="champion"),
                          serialise(_fit(45)), reason="the first champion")
        v2 = registry.register(cur, ModelVersion(model_name="churn", version="v2", stage="candidate",
                                                 lineage={"cutoff": T0.isoformat()}),
                               serialise(_fit(50)), reason="trained on the new concept")
        publish_deployment(cur, "churn", champion="v1", challenger=None, share=0.0, salt="churn/v1",
                           state="steady", reason="the first champion", at=T0)
        cur.execute("INSERT INTO outbox (event_id, topic, key, payload) VALUES ('c/v2', 'candidates', 'churn', %s)",
                    (orjson.dumps(candidate_event(v2, "candidate", [], dict(v2.lineage))).decode(),))
    outbox = OutboxPublisher(services.kafka_bootstrap, topics.prefix)
    assert outbox.publish(store) == 2
    outbox.close()
    router = Router(lambda: KafkaConsumer(bootstrap_servers=services.kafka_bootstrap, enable_auto_commit=False),
                    topics.deployments)
    log_path = tmp_path / "rollout.log"
    worker = stack.start_rollout_worker(env, log_path, 0)

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    with ServingRouter(router, ModelCache(store)).start() as serving:
        try:
            assert serving.wait_caught_up(30)
            wait_until(lambda: store.rows("SELECT status FROM shadows") == [("running",)], 60, tail)
            server = Server(store, serving)
            served: list[dict[str, int]] = []
            for _ in range(40):
                served.append(server.hour())
                state = store.rows("SELECT state FROM rollouts")
                if state == [("promoted",)]:
                    break
                _settle(store)
            kinds = [r[0] for r in store.rows("SELECT kind FROM rollout_events ORDER BY event_id")]
            assert kinds == ["shadow_started", "shadow_passed", "step", "step", "step", "step", "holding",
                             "promoted"], (kinds, tail())
            wait_until(lambda: serving.route("churn", "u1") == "v2" and serving.deployment("churn").challenger is None,
                       10, lambda: str(serving.deployment("churn")))
            assert {"v1", "v2"} <= {v for hour in served for v in hour}  # both arms served during the ramp
            assert server.hour() == {"v2": 600}

            said: list[str] = []
            result: list[int] = []
            drill = threading.Thread(target=lambda: result.append(
                rollout_cli.drill(settings, "churn", switch_s=3.0, wait_s=60.0, settle_s=1.0, say=said.append,
                                  as_json=True)))
            drill.start()
            while drill.is_alive():
                # the drill times when the last request its version served reached the store: written as served
                # (as a model server publishes each request), not at the end of an hour that takes seconds to serve
                server.hour(write_every=20)
            assert result == [0], said
        finally:
            stack.stop_process(worker, timeout_s=15)
    rolled_back = store.rows("SELECT sentence FROM rollout_events WHERE kind = 'rolled_back'")
    assert len(rolled_back) == 1 and "fails every request" not in rolled_back[0][0]
    assert "failed" in rolled_back[0][0] and "(100.0%)" in rolled_back[0][0]
    [report] = [json.loads(s) for s in said]  # --json: one object at the end
    assert report["passed"] is True and "switched within 3 s" in report["sentence"], report
    version = report["version"]
    at = datetime.fromisoformat(report["rolled_back_at"])
    served, after = store.rows("SELECT count(*) FILTER (WHERE ingested_at <= %s), count(*) FILTER (WHERE ingested_at"
                               " > %s) FROM predictions WHERE model_version = %s", (at, at, version))[0]
    assert (report["served"], report["served_after"]) == (served, after) and served > 0
    assert report["rolled_back"] == rolled_back[0][0]
    last = store.scalar("SELECT max(ingested_at) - %s FROM predictions WHERE model_version = %s",
                        (datetime.fromisoformat(report["rolled_back_at"]), version))
    assert report["last_request_after_s"] == pytest.approx(last.total_seconds()), report
    assert store.rows("SELECT stage FROM model_versions WHERE version LIKE 'drill-%%'") == [("rejected",)]
    assert store.scalar("SELECT count(*) FROM rollback_latches") == 0  # the drill cleared its own latch
    assert serving.route("churn", "u1") == "v2"
