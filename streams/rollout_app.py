"""The rollout worker's Faust app: the candidates agent (each candidate starts its shadow) and the rollout rounds
(shadow scoring and judging, then the ramp controller's look), in a consumer group of its own so that nothing here
can slow the ingest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust

from feedback import metrics
from feedback.alerts import alert_sink
from feedback.rollout.shadow import CandidateIntake
from feedback.rollout.tick import RolloutTick
from feedback.store import FeedbackStore
from feedback.store.ingest import TRANSIENT_ERRORS
from pitstop.outbox_relay import OutboxPublisher, publish_outbox
from pitstop.settings import Settings
from pitstop.topic_ids import TopicIds
from streams.app import faust_app, handle_then_ack
from streams.consumer import set_fetch_max_wait

log = logging.getLogger(__name__)

#: the rollout worker's app id (and consumer group) is the ingest's with this suffix
APP_SUFFIX = "-rollout"
#: the shadow scoring's time budget in a round (a slow shadow model waits for the next round)
SCORE_BUDGET_S = 5.0
#: rounds between shadow verdicts (settings.rollout_interval_s apart): a look loads every labelled row of a shadow
#: (0.8 s for 200,000 rows on a laptop), and verdicts measured in hours of event time lose nothing by waiting
JUDGE_EVERY_ROUNDS = 5
CANDIDATE_BATCH = 50


def rollout_app_id(settings: Settings) -> str:
    """The rollout worker's app id and consumer group: never the ingest's."""
    return settings.app_id + APP_SUFFIX


def build_rollout_app(settings: Settings, *, ready_file: Path | None = None) -> faust.App:
    """The rollout app: one agent takes candidate events, one timer runs the rollout rounds in a thread."""
    bootstrap, database_url = settings.require_services()
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    topics = settings.topics
    app_id = rollout_app_id(settings)
    app = faust_app(settings, app_id, bootstrap, ready_file=ready_file)
    candidates = app.topic(topics.candidates, value_type=bytes, key_type=bytes, value_serializer="raw",
                           key_serializer="raw")
    dead_letter = app.topic(topics.dead_letter, value_type=bytes, key_type=bytes, value_serializer="raw",
                            key_serializer="raw")
    store = FeedbackStore(database_url, settings.db_schema, max_size=4)
    alerts = alert_sink(settings.alert_webhook, settings.alert_format)
    tick = RolloutTick(store, settings.monitoring, alerts, score_budget_s=SCORE_BUDGET_S,
                       judge_every_s=JUDGE_EVERY_ROUNDS * settings.rollout_interval_s)
    topic_ids = TopicIds(bootstrap, client_id=f"{app_id}-topic-ids")
    intake = CandidateIntake(store, settings.monitoring, registry=tick.registry, alerts=alerts, models=tick.models,
                             topic_id=topic_ids)

    @app.on_rebalance_complete.connect
    async def _forget_topic_ids(sender: faust.App, **_: Any) -> None:
        topic_ids.forget()  # a broker that came back (topics made again) is rejoined through a rebalance

    @app.agent(candidates, name="candidates", concurrency=1)
    async def take_candidates(stream: faust.StreamT[Any]) -> None:
        # acked only once every candidate of the batch has started its shadow or is a stored dead letter
        async for events in stream.noack_take(CANDIDATE_BATCH, within=0.5):
            await handle_then_ack(stream, events, intake.receive, dead_letter)

    outbox = OutboxPublisher(bootstrap, topics.prefix, client_id=f"{app_id}-outbox")

    def ramp_round() -> None:
        # a ramp's deployment message goes out at once (the ingest's relay would publish it within seconds)
        looks = tick.ramps()
        if any(look.changed for look in looks):
            publish_outbox(outbox, store)
        metrics.count_rollbacks(looks)
        with store.pool.connection() as conn, conn.cursor() as cur:
            metrics.set_rollout(cur)

    # The tick's rounds (feedback/rollout/tick.py), in order, each in a worker thread: shadows score and are
    # judged, then the ramp controller looks (a shadow that passed starts its ramp in the same tick). A failure in
    # the first does not stop the second.
    rounds: list[Callable[[], object]] = [tick.shadows, ramp_round]

    @app.timer(interval=settings.rollout_interval_s)
    async def rollout_rounds() -> None:
        for run in rounds:
            await asyncio.to_thread(run_round, run)

    @app.on_before_shutdown.connect
    async def _stop(sender: faust.App, **_: Any) -> None:
        intake.stop()
        await asyncio.to_thread(outbox.close)
        await asyncio.to_thread(alerts.close)

    settings.serve_metrics(app_id)
    store.open(wait=False)  # connects in the background; the first batch and round wait for it
    return app


def run_round(run: Callable[[], object]) -> None:
    """One rollout round; a failure is logged and the next tick starts afresh (the rounds keep their state in
    the database, and each model's own errors are handled inside them)."""
    try:
        run()
    except TRANSIENT_ERRORS as exc:
        log.warning("rollout round skipped, database unavailable: %s", exc)
    except Exception:
        log.exception("rollout round failed; the next round starts afresh")
