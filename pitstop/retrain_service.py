"""`pitstop retrain-worker`: one retrain worker process (settings, Kafka clients, signals) around
retrain_worker/worker.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

from feedback.alerts import alert_sink
from feedback.store import FeedbackStore
from pitstop.outbox_relay import OutboxPublisher
from pitstop.settings import Settings
from pitstop.stopping import stop_requested
from pitstop.topic_ids import TopicIds
from retrain_worker.pipeline import RetrainPipeline
from retrain_worker.trainers import start_trainer_server
from retrain_worker.worker import RetrainWorker

log = logging.getLogger(__name__)

GROUP_SUFFIX = "-retrain"


def retrain_group(settings: Settings) -> str:
    """The retrain workers' consumer group: the app id's, with a suffix (never the ingest's group)."""
    return settings.app_id + GROUP_SUFFIX


class ForgetTopicIds(ConsumerRebalanceListener):
    """A kafka-python consumer's rebalance listener that makes ``topic_ids`` look again after each assignment: a
    broker that came back (topics made again) is rejoined through a rebalance, as the Faust workers do. (Here, not in
    pitstop/topic_ids.py: the Faust workers import that module, and kafka-python only for a dead letter's lookup.)"""

    def __init__(self, topic_ids: TopicIds) -> None:
        self.topic_ids = topic_ids

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.topic_ids.forget()


def run(settings: Settings, *, should_stop: Callable[[], bool] | None = None) -> int:
    """Run one retrain worker until SIGINT/SIGTERM (or ``should_stop()``); returns the exit status."""
    bootstrap, database_url = settings.require_services()
    stopping = stop_requested(should_stop)
    longest = max((m.retrain.budget_s for m in settings.monitoring.models.values()), default=600)
    topic_ids = TopicIds(bootstrap, client_id=f"{retrain_group(settings)}-topic-ids")
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=retrain_group(settings),
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=round(settings.kafka_session_timeout_s * 1000), heartbeat_interval_ms=1000,
        max_poll_records=20, max_poll_interval_ms=max(300_000, int(longest * 2000)),  # a training between polls
    )
    # a broker that came back (topics made again) is rejoined through a rebalance
    consumer.subscribe([settings.topics.retrain_triggers], listener=ForgetTopicIds(topic_ids))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id=f"{retrain_group(settings)}-dlq")
    outbox = OutboxPublisher(bootstrap, settings.topics.prefix, client_id=f"{retrain_group(settings)}-outbox")
    store = FeedbackStore(database_url, settings.db_schema, max_size=3).open()
    alerts = alert_sink(settings.alert_webhook, settings.alert_format)  # a stale held-out set
    worker = RetrainWorker(
        store, RetrainPipeline(store, settings.monitoring, alerts=alerts), consumer,
        dead_letter_topic=settings.topics.dead_letter,
        send_dead_letter=lambda t, k, v: producer.send(t, key=k, value=v),
        flush_dead_letters=lambda: producer.flush(timeout=30), publish=lambda: outbox.publish(store),
        topic_id=topic_ids,
    )
    settings.serve_metrics(retrain_group(settings))
    log.info("retrain worker: consuming %s (group %s)", settings.topics.retrain_triggers, retrain_group(settings))
    try:
        start_trainer_server(settings.state_dir / "run" / "trainer-servers")  # and a killed worker's folder goes
        worker.run(stopping)
    finally:
        for close in (consumer.close, lambda: producer.close(timeout=10), outbox.close, store.close,
                      alerts.close):
            try:
                close()
            except Exception:  # a clean-up failure must not hide the original error
                log.exception("retrain worker clean-up failed")
    return 0
