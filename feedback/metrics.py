"""The workers' metrics for Prometheus, after prometheus_client's conventions: the ``pitstop_`` prefix, base units
(seconds, ratios), counters ending in ``_total``, and labels bounded (a model, a version, at most a segment; a dead
letter's reason is its category, never its text).

Every worker process serves its own (:func:`serve`): the ingest workers their events, joins, dead letters, consumer
lag and batch latency; the monitor workers their rounds, windows and decisions; the retrain worker its trainings;
the rollout worker each version's stage and traffic share, and its rollbacks. A worker started by `pitstop up`
writes where it serves to a file Prometheus's ``file_sd_configs`` reads and `pitstop status` lists.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from feedback.monitoring.evaluate import Evaluation

log = logging.getLogger(__name__)

# --- the ingest --------------------------------------------------------------------------------------------------
EVENTS = Counter("pitstop_events", "Messages read from the input topics, by kind", ["kind"])
STORED = Counter("pitstop_events_stored", "Events new to the store (a redelivery counts zero), by kind", ["kind"])
JOINED = Counter("pitstop_labels_joined", "Labels joined to a prediction: set for the first time or corrected",
                 ["change"])
DEAD_LETTERS = Counter("pitstop_dead_letters", "Messages dead-lettered, by the category of their reason", ["reason"])
BATCH_SECONDS = Histogram("pitstop_ingest_batch_seconds", "Time to store one batch (its transaction included)",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_MESSAGES = Histogram("pitstop_ingest_batch_messages", "Messages in one batch (PITSTOP_BATCH_MESSAGES at most)",
                           buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10_000, 50_000))
BATCH_BYTES = Histogram("pitstop_ingest_batch_bytes", "Keys' and values' bytes in one batch (PITSTOP_BATCH_BYTES at "
                        "most, and one message)", buckets=tuple(2.0 ** k for k in range(10, 28, 2)))
CONSUMER_LAG = Gauge("pitstop_consumer_lag_messages", "Messages behind the end of each assigned input partition",
                     ["topic", "partition"])
# --- the monitor ---------------------------------------------------------------------------------------------------
ROUND_SECONDS = Histogram("pitstop_monitor_round_seconds", "Time of one monitor round and its decisions",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ROUNDS_FAILED = Counter("pitstop_monitor_rounds_failed", "Monitor rounds skipped by an error (the next starts afresh)")
WINDOWS = Gauge("pitstop_windows", "Windows of each version's span (all traffic) by status", ["model", "version",
                                                                                               "status"])
DECISIONS = Counter("pitstop_retrain_decisions", "Retrain decisions new or changed, by kind and status",
                    ["model", "kind", "status"])
# --- the retrain worker --------------------------------------------------------------------------------------------
TRAINING_SECONDS = Histogram("pitstop_training_seconds", "Time from a trigger to its outcome", ["model"],
                             buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
TRAININGS = Counter("pitstop_trainings", "Trainings by outcome (candidate, rejected, unchanged, failed, ...)",
                    ["model", "outcome"])
# --- the rollout worker --------------------------------------------------------------------------------------------
TRAFFIC_SHARE = Gauge("pitstop_traffic_share_ratio", "Share of the model's requests each version serves",
                      ["model", "version"])
STAGE = Gauge("pitstop_version_stage", "1 for each version's current registry stage", ["model", "version", "stage"])
ROLLBACKS = Counter("pitstop_rollbacks", "Ramps the rollout worker rolled back on its rules", ["model"])


def count_batch(result: Any, kinds: Mapping[str, int], nbytes: int, seconds: float) -> None:
    """One ingested batch (:class:`feedback.store.ingest.IngestResult`): its messages by kind and its bytes, what was
    new to the store, the labels joined, its dead letters by reason, and its time."""
    for kind, n in kinds.items():
        EVENTS.labels(kind).inc(n)
    BATCH_MESSAGES.observe(sum(kinds.values()))
    BATCH_BYTES.observe(nbytes)
    stats = result.stats
    STORED.labels("prediction").inc(stats.predictions)
    STORED.labels("outcome").inc(stats.outcomes)
    JOINED.labels("set").inc(stats.labels_set)
    JOINED.labels("corrected").inc(stats.labels_corrected)
    for letter in result.dead_letters:
        DEAD_LETTERS.labels(reason_category(letter.reason)).inc()
    BATCH_SECONDS.observe(seconds)


def reason_category(reason: str) -> str:
    """A dead letter's reason as a bounded label: the word before its first colon (every reason Pitstop writes starts
    with one: ``schema``, ``not_json``, ``too_large``, ``database``, ...), in lower case with spaces as underscores;
    ``other`` when that is not a word of at most 40 letters, digits and underscores (a reason carrying data), and
    ``unknown`` when empty.

    >>> reason_category("schema: prediction_id is required")
    'schema'
    >>> reason_category("database: value too long for type character varying(10)")
    'database'
    >>> reason_category("message of 9,000,001 bytes")
    'other'
    """
    head = reason.split(":", 1)[0].strip().lower().replace(" ", "_")
    if not head:
        return "unknown"
    return head if _CATEGORY.fullmatch(head) else "other"


WINDOW_STATUSES = ("degraded", "drift", "stable", "unjudged")
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,39}")


def count_windows(evaluation: Evaluation, metric: str) -> dict[str, int]:
    """A version's windows (all traffic) by status: ``degraded`` when its main metric is, else ``drift`` when a
    feature drifts in it, ``stable`` when judged, ``unjudged`` otherwise (every status present, zeros included)."""
    seen: dict[datetime, set[str]] = {}
    for r in evaluation.drift:
        if r.segment == "*" and r.metric == "drift":
            seen.setdefault(r.window_start, set()).add(r.status)
    drift = {start: "drift" if "drift" in statuses else "stable" if statuses - {"unjudged"} else "unjudged"
             for start, statuses in seen.items()}
    degraded = {r.window_start for r in evaluation.performance
                if r.segment == "*" and r.metric == metric and r.status == "degraded"}
    counts = dict.fromkeys(WINDOW_STATUSES, 0)
    for start in set(drift) | degraded:
        counts["degraded" if start in degraded else drift[start]] += 1
    return counts


def set_windows(evaluation: Evaluation, metric: str) -> None:
    """The windows gauge of ``evaluation``'s version."""
    for status, n in count_windows(evaluation, metric).items():
        WINDOWS.labels(evaluation.model_name, evaluation.model_version, status).set(n)


# every registered version not archived, its stage and the share of requests it serves now
_VERSIONS = """
SELECT v.model_name, v.version, v.stage,
       CASE WHEN d.challenger = v.version THEN d.challenger_share
            WHEN d.champion = v.version THEN 1 - CASE WHEN d.challenger IS NULL THEN 0 ELSE d.challenger_share END
            ELSE 0 END
FROM model_versions v LEFT JOIN deployments d USING (model_name)
WHERE v.stage <> 'archived'
"""


def set_rollout(cur: Any) -> None:
    """Each version's stage and traffic share, read from the registry and the deployments (archived versions
    leave the gauges)."""
    rows = cur.execute(_VERSIONS).fetchall()
    STAGE.clear()
    TRAFFIC_SHARE.clear()
    for model, version, stage, share in rows:
        STAGE.labels(model, version, stage).set(1)
        TRAFFIC_SHARE.labels(model, version).set(share)


def count_rollbacks(looks: Iterable[Any]) -> None:
    """The rollbacks among a round's looks (:class:`feedback.rollout.controller.LookResult`)."""
    for look in looks:
        if look.changed and look.state == "rolled_back":
            ROLLBACKS.labels(look.model_name).inc()


def serve(port: int | None, *, address: str = "127.0.0.1", target_file: Path | None = None,
          worker: str | None = None) -> str | None:
    """Serve this process's metrics on ``address:port`` (0: a free port) from a daemon thread; None: not served.
    Returns ``host:port``. With ``target_file``, writes it there as a Prometheus file_sd target labelled ``worker``
    with the file's name (`pitstop up` names it after the worker: ``monitor-1.json``), else with ``worker``
    (replaced atomically; `pitstop status` reads it too)."""
    if port is None:
        return None
    server, _ = start_http_server(port, addr=address)
    where = f"{address}:{server.server_port}"
    if target_file is not None:
        target_file.parent.mkdir(parents=True, exist_ok=True)
        part = target_file.with_suffix(".part")
        part.write_text(json.dumps([{"targets": [where], "labels": {"worker": target_file.stem,
                                                                    "pid": str(os.getpid())}}]))
        part.replace(target_file)
    log.info("metrics on http://%s/metrics", where)
    return where


def read_target(target_file: Path) -> str | None:
    """The ``host:port`` a worker wrote to ``target_file`` (None: none, or unreadable)."""
    try:
        return json.loads(target_file.read_text())[0]["targets"][0]
    except (OSError, ValueError, LookupError, TypeError):
        return None
