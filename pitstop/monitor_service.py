"""`pitstop monitor-worker`: the monitor rounds and the retrain decisions in a process of their own (settings,
kafka-python clients, signals), so that the ingest worker only ingests.

Every ``PITSTOP_MONITOR_INTERVAL_S`` (10 s) a monitor round judges the windows that changed
(feedback/monitoring/round.py), the trigger engine decides on its evaluations under the round's locks, and each
evaluated version's summary goes to the monitoring topic. Monitor workers share the models: each takes its share
among the workers alive (rendezvous hashing, `monitor_workers`), under one advisory lock per model, so more models
means more monitor workers, on more machines. Every :data:`OUTBOX_INTERVAL_S` the outbox is relayed:
the decisions of this process and of any other that wrote one without a broker (a manual `pitstop retrain`).

Once a day (:data:`PRUNE_INTERVAL_S`, the first a minute after start) a thread prunes the partitions past the
retention (feedback/store/retention.py), one monitor worker at a time: the others find its lock taken and skip.

Nothing here holds state the database does not: a worker killed mid-round has committed each decision with its
outbox row or not at all, and the next round (of a restarted worker, or of another) decides again from the
store; a decision id is deterministic, so none is made twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from feedback import metrics
from feedback.alerts import alert_sink
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.store import FeedbackStore
from feedback.store.ingest import TRANSIENT_ERRORS
from feedback.triggers.engine import TriggerEngine
from pitstop.outbox_relay import OutboxPublisher, publish_outbox
from pitstop.settings import Settings
from pitstop.stopping import stop_requested

log = logging.getLogger(__name__)

#: seconds between looks at the outbox for events to publish
OUTBOX_INTERVAL_S = 2.0
GROUP_SUFFIX = "-monitor"
#: seconds between the daily prunes, and before the first
PRUNE_INTERVAL_S = 86_400.0
PRUNE_FIRST_S = 60.0


def run(settings: Settings, *, should_stop: Callable[[], bool] | None = None) -> int:
    """Run one monitor worker until SIGINT/SIGTERM (or ``should_stop()``); returns the exit status."""
    bootstrap, database_url = settings.require_services()
    stopping = stop_requested(should_stop)
    client_id = settings.app_id + GROUP_SUFFIX
    windows = WindowUpdater(settings.monitoring)  # the round recounts (profiles, stray labels) as the ingest counts
    store = FeedbackStore(database_url, settings.db_schema, windows=windows, max_size=2).open(wait=False)
    # a share of the models, with the other monitor workers of the store (a worker not heard from for three rounds
    # and two seconds has left its share to the others)
    monitor = Monitor(store, windows, worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                      lease_s=3 * settings.monitor_interval_s + 2)
    alerts = alert_sink(settings.alert_webhook, settings.alert_format)
    engine = TriggerEngine(settings.monitoring, alerts)
    outbox = OutboxPublisher(bootstrap, settings.topics.prefix, client_id=f"{client_id}-outbox")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id=client_id, retries=5,
                             max_block_ms=10_000)
    settings.serve_metrics(client_id)
    ready = os.environ.get("PITSTOP_READY_FILE")
    log.info("monitor worker: a round every %g s over %d model(s)", settings.monitor_interval_s,
             len(settings.monitoring.models))
    pruner = threading.Thread(target=prune_daily, args=(settings, stopping), name="pitstop-prune", daemon=True)
    pruner.start()
    try:
        next_round = time.monotonic()
        share: list[str] | None = None
        while not stopping():
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + settings.monitor_interval_s
                if settings.monitoring.models:
                    for model, value in run_monitor_round(monitor, engine):
                        _send(producer, settings.topics.monitoring, model, value)
                    if monitor.claimed != share:
                        share = list(monitor.claimed)
                        log.info("monitor worker %s: its share is %d of %d model(s): %s", monitor.worker_id,
                                 len(share), len(settings.monitoring.models), ", ".join(share) or "none")
            publish_outbox(outbox, store)
            if ready:
                Path(ready).touch()
                ready = None
            _wait(stopping, min(OUTBOX_INTERVAL_S, max(0.0, next_round - time.monotonic())))
    finally:
        for close in (monitor.leave, lambda: producer.close(timeout=10), outbox.close, store.close, alerts.close):
            try:
                close()
            except Exception:  # a clean-up failure must not hide the original error
                log.exception("monitor worker clean-up failed")
    return 0


def prune_daily(settings: Settings, stopping: Callable[[], bool]) -> None:
    """Prune the store every :data:`PRUNE_INTERVAL_S` until ``stopping()``; a failed prune is logged and tried again
    at the next, and one that another worker runs is skipped."""
    from feedback.store.retention import PruneRunning, prune

    retention = timedelta(seconds=settings.monitoring.longest_retention_s)
    _wait(stopping, PRUNE_FIRST_S)
    while not stopping():
        try:
            result = prune(settings.require_database(), settings.db_schema, retention=retention)
            if result.dropped:
                log.info("prune: dropped %s (rows before %s past the %d-day retention); cleared %d ids' rows",
                         ", ".join(result.dropped), result.cutoff, retention.days, result.ids_cleared)
        except PruneRunning:
            log.debug("prune: another worker is pruning")
        except Exception:  # a prune never stops the monitor worker
            log.exception("prune failed; trying again in %g s", PRUNE_INTERVAL_S)
        _wait(stopping, PRUNE_INTERVAL_S)


def run_monitor_round(monitor: Monitor, engine: TriggerEngine | None = None) -> list[tuple[str, bytes]]:
    """One monitor round, then the retrain decisions on its evaluations (under the round's lock); the summaries of
    the versions it evaluated, as (model, message) pairs. A failed round is logged and skipped: the next round
    evaluates again from the store (a decision already fired stays fired). Its time, windows and decisions go to
    the worker's metrics."""
    started = time.monotonic()

    def after(conn: Any, evaluations: list[Any]) -> None:
        assert engine is not None
        for d in engine.run(conn, evaluations, models=monitor.claimed):
            metrics.DECISIONS.labels(d.model_name, d.kind, d.status).inc()

    try:
        result = monitor.run_once(after=None if engine is None else after)
    except TRANSIENT_ERRORS as exc:
        metrics.ROUNDS_FAILED.inc()
        log.warning("monitor round skipped, database unavailable: %s", exc)
        return []
    except Exception:
        metrics.ROUNDS_FAILED.inc()
        log.exception("monitor round failed; the next round starts afresh")
        return []
    metrics.ROUND_SECONDS.observe(time.monotonic() - started)
    models = monitor.updater.config.models
    for ev in result.evaluations:  # the versions evaluated this round; the others' windows have not moved
        metrics.set_windows(ev, models[ev.model_name].metric)
    for model, version in result.profiles_built:
        log.info("reference profile built for %s %s from its first predictions", model, version)
    return [(s["model_name"], orjson.dumps(s)) for s in result.summaries]


def _send(producer: KafkaProducer, topic: str, model: str, value: bytes) -> None:
    """A round's summary on the monitoring topic; one the broker does not take is logged and dropped (the results
    and decisions it summarises are in the database)."""
    try:
        producer.send(topic, key=model.encode(), value=value).add_errback(
            lambda exc: log.warning("monitoring summary of %s not published: %s", model, exc))
    except Exception as exc:
        log.warning("monitoring summary of %s not published: %s", model, exc)


def _wait(stopping: Callable[[], bool], seconds: float) -> None:
    """Sleep ``seconds``, waking every 0.2 s to see whether to stop."""
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
