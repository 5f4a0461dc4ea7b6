"""Shadow evaluation: a candidate scores its model's predictions beside the champion that served them, and a gate
judges it on the labels that arrive after its training cutoff.

    start_shadow     a candidate event -> a ``shadows`` row (running, or waiting while a rollout is under way),
                     the registry stage candidate -> shadow; a newer candidate supersedes an older shadow
    score_round      each running shadow scores the predictions it has not scored yet, in chunks, within a time
                     budget: live ones, and backfilled ones (made before it started, unlabelled at its cutoff)
    shadow_verdict   the gate, a pure function over numpy arrays (feedback/rollout/shadow_gate.py)
    judge_round      the verdict applied: passed, failed (registry: rejected, and an alert), expired (archived)

Event time drives every duration: a shadow's clock is its model's watermark, the newest ``predicted_at``
(:func:`model_watermark`), so a replay judges as the live run did. Only labels observed after the candidate's
training cutoff judge it, and only on predictions none of whose outcomes was observed at or before the cutoff:
the candidate may have trained on those. The cutoff is the version's lineage ``cutoff`` (the retrain worker
records it), else its trigger's ``retrain_decisions.decided_at``, else the shadow's start.

The shadow path never touches the served one: it runs in the rollout worker's own process and consumer group
(streams/rollout_app.py), reads predictions already stored, and writes only ``shadow_predictions``, ``shadows``
and ``rollout_events``. A model that raises fails its rows, not the round; a model that sleeps uses the round's
time budget, nothing else. Several processes may run the rounds: each model is scored and judged under a
transaction-level advisory lock, and every write is idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from feedback.alerts import Alert, AlertSink
from feedback.config import ModelConfig, MonitoringConfig, RolloutConfig
from feedback.errors import IngestStopped
from feedback.features import feature_frame, model_answers
from feedback.monitoring.profile import category_key
from feedback.registry.artifacts import ArtifactRef
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.shadow_gate import ShadowRows, ShadowVerdict, finite, probability_gap, shadow_verdict, span
from feedback.rollout.urgency import answers_later_change, degradation
from feedback.store import DeadLetterRecord, FeedbackStore, insert_dead_letters, lock_key
from feedback.store.ingest import TRANSIENT_ERRORS, Backoff, InboundMessage, retry_transient
from schemas.validation import InvalidDocument, load_document, utc_time

log = logging.getLogger(__name__)

SHADOW_LOCK_CLASS = 0x5348  # advisory lock class of "a model's shadows" (start, scoring, judging)
ACTOR = "shadow"
#: characters of a failure kept in ``shadow_predictions.error``
ERROR_CHARS = 300
ACTIVE = ("waiting", "running")
INTAKE_BACKOFF = Backoff()

ShadowStatus = Literal["waiting", "running", "passed", "failed", "expired"]
StartOutcome = Literal["started", "waiting", "duplicate", "ignored", "refused", "failed"]


# --- the candidate event ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateEvent:
    """A candidate as published on `pitstop.candidates` (schemas/candidate.schema.json); the model itself is
    loaded from the registry only, never from the message."""

    candidate_id: str
    model_name: str
    version: str
    trigger_id: str | None
    artifact_sha256: str
    stage: str
    lineage: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime


class CandidateRejected(ValueError):
    """A message on the candidates topic that is not a valid candidate event; ``str()`` is the one-line reason."""




def decode_candidate(value: bytes | None) -> CandidateEvent:
    """The candidate event in a message value, or :class:`CandidateRejected` saying what is wrong.

    >>> decode_candidate(b'{"schema_version": 1, "candidate_id": "churn/v2"}')
    Traceback (most recent call last):
    ...
    feedback.rollout.shadow.CandidateRejected: schema: 'model_name' is a required property (at the top level)
    """
    try:
        doc = load_document(value, "candidate.schema.json")
        created = utc_time(doc, "created_at")
    except InvalidDocument as exc:
        raise CandidateRejected(str(exc)) from None
    return CandidateEvent(candidate_id=doc["candidate_id"], model_name=doc["model_name"], version=doc["version"],
                          trigger_id=doc["trigger_id"], artifact_sha256=doc["artifact_sha256"], stage=doc["stage"],
                          lineage=doc["lineage"], created_at=created)


# --- loaded models ---------------------------------------------------------------------------------------------


class ShadowModelCache:
    """Loaded shadow models, by artifact digest (a digest names the bytes, so two versions or two schemas with
    the same artifact share one object); the least recently used beyond ``max_models`` is dropped."""

    def __init__(self, max_models: int = 8) -> None:
        self.max_models = max_models
        self._models: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cur: psycopg.Cursor[Any], registry: Registry, version: ModelVersion) -> Any:
        """The version's model, loaded from the registry (digest checked) on first use."""
        if version.artifact is None:
            msg = f"{version.model_name} {version.version} has no artifact"
            raise LookupError(msg)
        key = version.artifact.sha256
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        return self.put(version, registry.load(cur, version))

    def put(self, version: ModelVersion, model: Any) -> Any:
        assert version.artifact is not None
        with self._lock:
            self._models[version.artifact.sha256] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return model


#: the cache of this process, when the caller gives none
MODELS = ShadowModelCache()


# --- starting a shadow -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowStart:
    """What became of a candidate event: started, waiting (a rollout is under way), duplicate (the shadow exists),
    ignored (not for shadow evaluation here), refused (the registry contradicts the event) or failed (the
    version does not load)."""

    model_name: str
    version: str
    outcome: StartOutcome
    sentence: str


_WATERMARK = """
WITH RECURSIVE versions AS (
    (SELECT model_version FROM predictions WHERE model_name = %(model)s ORDER BY model_version LIMIT 1)
    UNION ALL
    SELECT (SELECT p.model_version FROM predictions p
            WHERE p.model_name = %(model)s AND p.model_version > v.model_version
            ORDER BY p.model_version LIMIT 1)
    FROM versions v WHERE v.model_version IS NOT NULL
)
SELECT max((SELECT max(p.predicted_at) FROM predictions p
            WHERE p.model_name = %(model)s AND p.model_version = v.model_version))
FROM versions v WHERE v.model_version IS NOT NULL
"""
_LOCK = f"SELECT pg_advisory_xact_lock(%s, {lock_key()})"
_TRY_LOCK = f"SELECT pg_try_advisory_xact_lock(%s, {lock_key()})"
_SHADOW = "SELECT status, cutoff, started_at, verdict FROM shadows WHERE model_name = %s AND version = %s FOR UPDATE"
_ACTIVE_ROLLOUT = """
SELECT challenger, state FROM rollouts WHERE model_name = %s AND state IN ('ramping', 'paused', 'holding')
ORDER BY started_at DESC LIMIT 1
"""
_INSERT_SHADOW = """
INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, sentence, decided_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (model_name, version) DO UPDATE SET champion = excluded.champion, cutoff = excluded.cutoff,
    started_at = excluded.started_at, status = excluded.status, sentence = excluded.sentence, verdict = '{}',
    decided_at = excluded.decided_at, updated_at = now()
WHERE shadows.status NOT IN ('waiting', 'running')
"""
_END_SHADOW = """
UPDATE shadows SET status = %s, sentence = %s, verdict = %s, decided_at = %s, updated_at = now()
WHERE model_name = %s AND version = %s
"""
_EVENT = """
INSERT INTO rollout_events (model_name, version, kind, at, sentence, evidence, actor)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""


def model_watermark(cur: psycopg.Cursor[Any], model: str) -> datetime | None:
    """The model's event time: its newest ``predicted_at`` over every served version (None before its first
    prediction). One index probe per version (a skip scan of ``predictions_model_time``), never a table scan."""
    row = cur.execute(_WATERMARK, {"model": model}).fetchone()
    if row is None:
        return None
    return row["max"] if isinstance(row, dict) else row[0]


def start_shadow(conn: psycopg.Connection[Any], registry: Registry, candidate: CandidateEvent,
                 config: MonitoringConfig, alerts: AlertSink | None = None, *,
                 models: ShadowModelCache | None = None) -> ShadowStart:
    """Start the shadow evaluation of a candidate event, in one transaction; a duplicate event changes nothing.

    The registry must hold the version, at stage ``candidate``, with the event's digest (else ``refused``, and
    nothing is written); the version is loaded once, digest checked, to prove it loads (else it is rejected:
    ``failed``, a ``shadow_failed`` event and an alert). Its shadow runs at once, or waits while a rollout of
    the model is under way (the scoring round starts it when none is); an older waiting or running shadow of
    the model is superseded (expired, its version archived). A candidate answering a later change than the ramp's
    challenger does not wait: one episode, one ramp (the controller ends the earlier episode's ramp once this
    shadow passes); nor does one arriving in the hold, when the challenger serves every request (it takes over
    only if its shadow shows it better on them).

    The shadow's clock starts at the model's watermark; a model with no prediction yet starts at the cutoff, and
    one with neither at the event's ``created_at``, the only time there is.
    """
    name, version_name = candidate.model_name, candidate.version

    def result(outcome: StartOutcome, sentence: str) -> ShadowStart:
        (log.warning if outcome in ("refused", "failed") else log.info)("candidate %s: %s: %s",
                                                                         candidate.candidate_id, outcome, sentence)
        return ShadowStart(model_name=name, version=version_name, outcome=outcome, sentence=sentence)

    model = config.models.get(name)
    if model is None:
        return result("ignored", f"model {name!r} is not configured here")
    if candidate.stage != "candidate":
        return result("ignored", f"{version_name} was published as {candidate.stage}: no shadow evaluation")
    if not model.retrain.shadowed:
        return result("ignored", f"{name} promotes {model.retrain.promotion}: no shadow evaluation")
    failure: Alert | None = None
    cache = models or MODELS
    preloaded = _preload(conn, registry, cache, candidate)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_LOCK, (SHADOW_LOCK_CLASS, name))
        version = registry.get(cur, name, version_name)
        if version is None:
            return result("refused", f"{name} {version_name} is not in the registry")
        registered = version.artifact.hexdigest if version.artifact is not None else "none"
        if registered != candidate.artifact_sha256:
            return result("refused", f"{name} {version_name}: the event's artifact sha256 "
                          f"{candidate.artifact_sha256[:16]}... is not the registered {registered[:16]}...")
        existing = cur.execute(_SHADOW, (name, version_name)).fetchone()
        if existing is not None and (existing[0] in ACTIVE or version.stage != "candidate"):
            return result("duplicate", f"{name} {version_name} has a shadow already ({existing[0]})")
        if version.stage != "candidate":
            return result("refused", f"{name} {version_name} is at stage {version.stage}, not candidate")
        watermark = model_watermark(cur, name)
        cutoff, cutoff_source = _cutoff(cur, version)
        started_at = watermark or cutoff or candidate.created_at
        cutoff = cutoff or started_at
        champion = registry.champion(cur, name)
        champion_name = champion.version if champion is not None else None
        evidence = {"candidate_id": candidate.candidate_id, "trigger_id": version.trigger_id,
                    "cutoff": cutoff.isoformat(), "cutoff_source": cutoff_source, "champion": champion_name}
        status, sentence = "running", ""
        try:
            if preloaded is None or preloaded[0] != version.artifact:  # the registry row changed since: load it here
                cache.put(version, registry.load(cur, version))
            elif isinstance(preloaded[1], Exception):
                raise preloaded[1]
        except psycopg.Error:
            raise  # the database, not the artifact: the transaction is gone, the intake retries
        except Exception as exc:  # a corrupt artifact, a type skops does not trust, a class that is gone
            sentence = f"{version_name} does not load: {_one_line(exc)}"
            cur.execute(_INSERT_SHADOW, (name, version_name, champion_name, cutoff, started_at, "failed", sentence,
                                         started_at))
            registry.move(cur, name, version_name, "rejected", reason=f"shadow: {sentence}")
            cur.execute(_EVENT, (name, version_name, "shadow_failed", started_at, sentence, Jsonb(evidence), ACTOR))
            failure = Alert.create(model_name=name, kind="shadow_failed", sentence=f"{name} {sentence}",
                                   at=started_at, details=evidence, key=version_name)
        else:
            _supersede(cur, registry, name, version_name, started_at)
            active = cur.execute(_ACTIVE_ROLLOUT, (name,)).fetchone()
            if (active is not None and active[1] != "holding"
                    and not answers_later_change(cur, registry, name, version_name, active[0])):
                status, kind = "waiting", "shadow_waiting"
                sentence = f"{version_name} waits for the rollout of {active[0]} to end"
            else:
                status, kind = "running", "shadow_started"
                sentence = _started_sentence(version_name, champion_name, started_at, cutoff, cutoff_source,
                                             model.rollout)
            cur.execute(_INSERT_SHADOW, (name, version_name, champion_name, cutoff, started_at, status, sentence,
                                         None))
            registry.move(cur, name, version_name, "shadow", reason=sentence)
            cur.execute(_EVENT, (name, version_name, kind, started_at, sentence, Jsonb(evidence), ACTOR))
    if failure is not None:
        if alerts is not None:
            alerts.send(failure)
        return result("failed", failure.sentence)
    return result("waiting" if status == "waiting" else "started", sentence)


def _preload(conn: psycopg.Connection[Any], registry: Registry, cache: ShadowModelCache,
             candidate: CandidateEvent) -> tuple[ArtifactRef, Any] | None:
    """The candidate's artifact and its model loaded into ``cache`` (or the exception loading it raised), before
    the model's shadow lock is taken: deserialising a large model, and the process's first skops import (seconds on
    a busy machine), must not hold back the model's scoring and judging rounds. None when the registry has no such
    candidate with the event's digest (the locked transaction says why). A database error is raised: the intake
    retries."""
    with conn.cursor() as cur:
        version = registry.get(cur, candidate.model_name, candidate.version)
        if (version is None or version.artifact is None or version.stage != "candidate"
                or version.artifact.hexdigest != candidate.artifact_sha256):
            return None
        try:
            return version.artifact, cache.get(cur, registry, version)
        except psycopg.Error:
            raise
        except Exception as exc:  # a corrupt artifact, a type skops does not trust, a class that is gone
            return version.artifact, exc


def _cutoff(cur: psycopg.Cursor[Any], version: ModelVersion) -> tuple[datetime | None, str]:
    """The version's training cutoff and where it was read: its lineage, else its trigger's decision time."""
    raw = version.lineage.get("cutoff")
    if isinstance(raw, str):
        try:
            at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            at = None
        if at is not None and at.tzinfo is not None:
            return at.astimezone(UTC), "lineage"
    if version.trigger_id is not None:
        row = cur.execute("SELECT decided_at FROM retrain_decisions WHERE decision_id = %s",
                          (version.trigger_id,)).fetchone()
        if row is not None:
            return row[0], "trigger"
    return None, "start"


def _started_sentence(version: str, champion: str | None, started_at: datetime, cutoff: datetime, source: str,
                      rollout: RolloutConfig) -> str:
    beside = f"beside champion {champion}" if champion is not None else "with no champion"
    why = {"lineage": "its training cutoff", "trigger": "its trigger's decision",
           "start": "no cutoff recorded: the shadow's start"}[source]
    return (f"shadow of {version} started at {_at(started_at)} {beside}; labels observed after {_at(cutoff)} "
            f"({why}) judge it, on predictions since {span(rollout.shadow_backfill_s)} before the start")


def _supersede(cur: psycopg.Cursor[Any], registry: Registry, model: str, newer: str, at: datetime) -> None:
    """End every other waiting or running shadow of ``model``: one shadow per model, the newest candidate's."""
    rows = cur.execute("SELECT version FROM shadows WHERE model_name = %s AND version <> %s AND status IN "
                       "('waiting', 'running') ORDER BY version FOR UPDATE", (model, newer)).fetchall()
    for (old,) in rows:
        sentence = f"superseded by {newer}"
        cur.execute(_END_SHADOW, ("expired", sentence, Jsonb({"superseded_by": newer}), at, model, old))
        current = registry.get(cur, model, old)
        if current is not None and current.stage == "shadow":
            registry.move(cur, model, old, "archived", reason=f"shadow: {sentence}")
        cur.execute(_EVENT, (model, old, "shadow_expired", at, sentence, Jsonb({"superseded_by": newer}), ACTOR))


# --- the candidate intake (what the rollout worker's agent calls) ---------------------------------------------


@dataclass(slots=True)
class CandidateIntakeResult:
    """What one batch of candidate messages gave: each valid event's start, and the dead letters (in the table
    already, with their row ids; the caller publishes them on the dead-letter topic)."""

    starts: list[ShadowStart] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    retries: int = 0


class CandidateIntake:
    """Takes batches of candidate messages: a malformed one, or one the registry contradicts, becomes a dead
    letter with its reason; a valid one starts its shadow. A database outage is waited out with backoff, the
    stream held (:meth:`stop` gives up, raising :class:`IngestStopped`: nothing is acked); any other error is
    retried ``max_tries`` times, then the message is a dead letter naming it, never silently dropped.
    ``topic_id(topic)`` is the id the broker gave the topic (pitstop/topic_ids.py), which keys a dead letter's row
    by the topic's life; "" keys it without one."""

    def __init__(self, store: FeedbackStore, config: MonitoringConfig, *, registry: Registry | None = None,
                 alerts: AlertSink | None = None, models: ShadowModelCache | None = None,
                 backoff: Backoff = INTAKE_BACKOFF, max_tries: int = 3,
                 topic_id: Callable[[str], str] = lambda topic: "",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.topic_id = topic_id
        self.config = config
        self.registry = registry or Registry()
        self.alerts = alerts
        self.models = models
        self.backoff = backoff
        self.max_tries = max_tries
        self.clock = clock
        self.stopping = threading.Event()

    def receive(self, messages: Sequence[InboundMessage]) -> CandidateIntakeResult:
        """Handle ``messages`` in order; returns once each has started its shadow or is a stored dead letter."""
        result = CandidateIntakeResult()
        now = self.clock()
        dead: list[DeadLetterRecord] = []
        for m in messages:
            try:
                candidate = decode_candidate(m.value)
            except CandidateRejected as exc:
                reason = str(exc)
            else:
                start, reason = self._start(candidate, result)
                if start is not None:
                    result.starts.append(start)
                    if start.outcome != "refused":
                        continue
                    reason = f"refused: {start.sentence}"
            dead.append(DeadLetterRecord(source_topic=m.topic, source_topic_id=self.topic_id(m.topic),
                                         source_partition=m.partition, source_offset=m.offset, element_index=-1,
                                         key=m.key, raw=m.value or b"", reason=reason, received_at=now))
        if dead:
            result.dead_letters = self._retrying(lambda: self._store_dead_letters(dead), result)
        return result

    def stop(self) -> None:
        """Make a call blocked on a database outage give up (at shutdown)."""
        self.stopping.set()

    def _start(self, candidate: CandidateEvent, result: CandidateIntakeResult) -> tuple[ShadowStart | None, str]:
        tries = 0
        while True:
            try:
                return self._retrying(lambda: self._start_once(candidate), result), ""
            except IngestStopped:
                raise
            except Exception as exc:  # a bug or a state nobody foresaw: retried, then a dead letter, never a loop
                tries += 1
                log.exception("candidate %s: shadow start failed (try %d of %d)", candidate.candidate_id, tries,
                              self.max_tries)
                if tries >= self.max_tries:
                    return None, f"shadow start failed after {tries} tries: {_one_line(exc)}"
                if self.stopping.wait(self.backoff.delay_s(tries)):
                    msg = "candidate intake stopped; the batch stays unacked"
                    raise IngestStopped(msg) from exc

    def _start_once(self, candidate: CandidateEvent) -> ShadowStart:
        with self.store.pool.connection() as conn:
            return start_shadow(conn, self.registry, candidate, self.config, self.alerts, models=self.models)

    def _store_dead_letters(self, letters: list[DeadLetterRecord]) -> list[DeadLetterRecord]:
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return insert_dead_letters(cur, letters)

    def _retrying(self, call: Callable[[], Any], result: CandidateIntakeResult) -> Any:
        return retry_transient(call, backoff=self.backoff, stopping=self.stopping, held="candidates",
                               on_retry=lambda: setattr(result, "retries", result.retries + 1))


# --- scoring ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowScore:
    """What a shadow model answered for one row: its prediction (and class probabilities, shaped as
    ``predictions.probabilities``), or the failure; ``latency_ms`` for a row scored alone and timed."""

    prediction: Any = None
    probabilities: Mapping[str, float] | None = None
    latency_ms: float | None = None
    error: str | None = None


def score_rows(fitted: Any, features: Sequence[Mapping[str, Any]], *, task: str,
               timed_rows: int) -> list[ShadowScore]:
    """Score rows of features (as logged) with a model reading a DataFrame, as ``retrain_worker`` trains them.

    The first ``timed_rows`` are predicted one at a time and timed; the rest in one batch call. If the batch
    raises, the rest is scored row by row, so that each failing row gets its own error and the others their
    prediction. A regression prediction that is not a finite number is a failure too.

    >>> class Half:
    ...     def predict(self, X):
    ...         if (X["x"] < 0).any(): raise ValueError("negative x")
    ...         return X["x"].to_numpy() / 2
    >>> [(s.prediction, s.error) for s in score_rows(Half(), [{"x": 4.0}, {"x": -1.0}, {"x": 1.0}], task="regression",
    ...                                               timed_rows=1)]
    [(2.0, None), (None, 'ValueError: negative x'), (0.5, None)]
    """
    frame = feature_frame(features)
    n = len(frame)
    timed = min(max(timed_rows, 0), n)
    out: list[ShadowScore] = []
    for i in range(timed):
        started = time.perf_counter()
        try:
            [score] = _predict(fitted, frame.iloc[i:i + 1], task)
        except Exception as exc:
            out.append(ShadowScore(error=_one_line(exc, ERROR_CHARS)))
            continue
        latency = (time.perf_counter() - started) * 1000.0
        out.append(score if score.error is not None else
                   ShadowScore(prediction=score.prediction, probabilities=score.probabilities, latency_ms=latency))
    if timed < n:
        try:
            out.extend(_predict(fitted, frame.iloc[timed:], task))
        except Exception:
            for i in range(timed, n):
                try:
                    out.extend(_predict(fitted, frame.iloc[i:i + 1], task))
                except Exception as exc:
                    out.append(ShadowScore(error=_one_line(exc, ERROR_CHARS)))
    return out


def _predict(fitted: Any, X: pd.DataFrame, task: str) -> list[ShadowScore]:
    predicted, proba = model_answers(fitted, X, probabilities=task == "classification")
    predicted = predicted.reshape(-1)
    if len(predicted) != len(X):
        msg = f"the model answered {len(predicted)} predictions for {len(X)} rows"
        raise ValueError(msg)
    probabilities: list[dict[str, float] | None] = [None] * len(X)
    if proba is not None:
        proba = proba.astype(np.float64, copy=False)
        classes = [category_key(_plain(c)) for c in np.asarray(fitted.classes_).tolist()]
        if proba.shape != (len(X), len(classes)):
            msg = f"predict_proba answered shape {proba.shape} for {len(X)} rows and {len(classes)} classes"
            raise ValueError(msg)
        probabilities = [dict(zip(classes, (float(p) for p in row), strict=True)) for row in proba]
    out = []
    for value, proba_row in zip(predicted.tolist(), probabilities, strict=True):
        value = _plain(value)
        if task == "regression":
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan
            if not np.isfinite(number):
                out.append(ShadowScore(error=f"not a finite number: {value!r}"[:ERROR_CHARS]))
                continue
            value = number
        out.append(ShadowScore(prediction=value, probabilities=proba_row))
    return out


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON stores."""
    return value.item() if isinstance(value, np.generic) else value


#: where a scan of predictions stands: (served model_version, predicted_at, prediction_id) of the last row read,
#: the order of the index ``predictions_model_time``, so that a chunk reads its rows and stops
Position = tuple[str, datetime, str]


class ScanCursors:
    """Where each shadow's scan of predictions resumes (:data:`Position`), so that a round reads the predictions
    that are new, not the whole window again.

    A prediction that arrives late, behind the cursor, is not seen by the resumed scan: every
    ``full_pass_rounds`` rounds a shadow's scan starts from the beginning of its window again, so such a
    prediction is scored that much later, never missed. In memory: a restarted process starts with a full pass.
    """

    def __init__(self, full_pass_rounds: int = 30) -> None:
        self.full_pass_rounds = full_pass_rounds
        self._at: dict[tuple[str, str, datetime], tuple[Position, int]] = {}
        self._lock = threading.Lock()

    def start(self, model: str, version: str, started_at: datetime) -> Position | None:
        """Where this round's scan of the shadow begins: None for a full pass."""
        key = (model, version, started_at)
        with self._lock:
            cursor = self._at.get(key)
            if cursor is None or cursor[1] >= self.full_pass_rounds:
                self._at.pop(key, None)
                return None
            self._at[key] = (cursor[0], cursor[1] + 1)
            return cursor[0]

    def advance(self, model: str, version: str, started_at: datetime, position: Position) -> None:
        """The scan of the shadow has read every row up to ``position``."""
        key = (model, version, started_at)
        with self._lock:
            self._at[key] = (position, self._at.get(key, (position, 0))[1])


_BEGINNING: Position = ("", datetime(1, 1, 1, tzinfo=UTC), "")


@dataclass(slots=True)
class ScoreStats:
    """What a scoring round did: rows scored (of them failed, backfilled), shadows started after waiting, models
    skipped (busy in another process, or an error, logged), and whether the round ran out of time."""

    scored: int = 0
    failed: int = 0
    backfilled: int = 0
    chunks: int = 0
    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    out_of_time: bool = False


# In the order of predictions_model_time (served version, then oldest first: the backfilled rows, whose labels come
# sooner, before the live ones), after a keyset cursor, so that a chunk reads its rows and stops. Both
# NOT EXISTS stay per-row index probes (the OR keeps the first one a subplan; OFFSET 0 keeps the second from being
# pulled up into an anti join): a shadow_predictions table whose statistics lag its growth, as a new one always
# does, made the planner scan it once per prediction (58 s for 100,000 rows where the probes take 0.2 s).
_UNSCORED = """
SELECT p.prediction_id, p.features, p.predicted_at < %(started)s, p.model_version, p.predicted_at
FROM predictions p
WHERE p.model_name = %(model)s AND p.predicted_at >= %(since)s
  AND (p.model_version, p.predicted_at, p.prediction_id) > (%(after_version)s, %(after_at)s, %(after_id)s)
  AND (p.predicted_at >= %(started)s
       OR NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.prediction_id = p.prediction_id AND o.observed_at <= %(cutoff)s))
  AND NOT EXISTS (SELECT 1 FROM shadow_predictions s
                  WHERE s.model_name = %(model)s AND s.version = %(version)s AND s.prediction_id = p.prediction_id
                  OFFSET 0)
ORDER BY p.model_version, p.predicted_at, p.prediction_id
LIMIT %(chunk)s
"""
# during a ramp: the requests its challenger served, which the champion scores (the promotion test's covariate)
_UNSCORED_SERVED = _UNSCORED.replace("WHERE p.model_name = %(model)s", "WHERE p.model_name = %(model)s "
                                     "AND p.model_version = %(served)s")
# the ramps whose champion is scored beside its challenger (rules.cuped_units): not in the hold, where the
# challenger serves every request and nothing is compared
_RAMPS = """
SELECT model_name, champion, challenger, started_at FROM rollouts WHERE state IN ('ramping', 'paused')
ORDER BY model_name
"""
_RAMP = "SELECT 1 FROM rollouts WHERE model_name = %s AND champion = %s AND challenger = %s AND started_at = %s " \
        "AND state IN ('ramping', 'paused')"
_INSERT_SCORES = """
INSERT INTO shadow_predictions (model_name, version, prediction_id, prediction, probabilities, latency_ms, error,
                                backfilled)
SELECT %s, %s, id, prediction::jsonb, probabilities::jsonb, latency_ms, error, backfilled
FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::bool[])
    AS t(id, prediction, probabilities, latency_ms, error, backfilled)
ON CONFLICT (model_name, version, prediction_id) DO NOTHING
"""


@contextmanager
def _connection(store_or_conn: FeedbackStore | psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(store_or_conn, FeedbackStore):
        with store_or_conn.pool.connection() as conn:
            yield conn
    else:
        yield store_or_conn


def score_round(store_or_conn: FeedbackStore | psycopg.Connection[Any], registry: Registry,
                config: MonitoringConfig, *, chunk: int = 2000, budget_s: float = 5.0,
                timed_rows: int | None = None, models: ShadowModelCache | None = None,
                cursors: ScanCursors | None = None, clock: Callable[[], float] = time.monotonic) -> ScoreStats:
    """Start the waiting shadows no rollout holds back any more, then let each running shadow score the
    predictions it has not scored yet, ``chunk`` rows at a time, until none is left or ``budget_s`` is spent.
    During a ramp (not its hold) the champion scores the requests its challenger served since the ramp began, in
    the same way: the promotion test's covariate (:func:`feedback.rollout.rules.cuped_units`).

    Each model gets an equal slice of the budget and at least one chunk, so a slow model delays the others by one
    chunk at most. A backlog larger than the round drains over the next rounds. An error in one model's scoring
    is logged and the model skipped this round; a model another process is scoring is skipped too. Within a round
    the scan resumes after the last row it selected; across rounds too with ``cursors`` (:class:`ScanCursors`),
    else each round starts from the beginning of the window. ``timed_rows``: rows of each chunk predicted one at a
    time and timed (default: the model's ``rollout.shadow_latency_rows``); the others are scored in one batch call,
    which has no per-request latency (their ``latency_ms`` is NULL).
    """
    stats = ScoreStats()
    cursors = cursors or ScanCursors()
    begun = clock()
    with _connection(store_or_conn) as conn:
        _start_waiting(conn, stats)
        shadows = [(*r, None) for r in conn.execute("SELECT model_name, version, started_at FROM shadows "
                                                    "WHERE status = 'running' ORDER BY model_name, version")
                   if r[0] in config.models]
        shadows += [(model, champion, started_at, challenger)
                    for model, champion, challenger, started_at in conn.execute(_RAMPS) if model in config.models]
        for i, (model, version, started_at, served) in enumerate(shadows):
            deadline = begun + budget_s * (i + 1) / len(shadows)
            after = cursors.start(model, version, started_at) or _BEGINNING
            first = True
            while first or clock() < deadline:
                first = False
                try:
                    done = _score_chunk(conn, registry, config.models[model], version, started_at, after, chunk,
                                        timed_rows, models or MODELS, stats, served=served)
                except TRANSIENT_ERRORS as exc:
                    log.warning("shadow %s %s: not scored this round, database unavailable: %s", model, version, exc)
                    stats.skipped.append(model)
                    break
                except Exception:
                    log.exception("shadow %s %s: scoring failed; skipped this round", model, version)
                    stats.skipped.append(model)
                    break
                if done is None:
                    stats.skipped.append(model)  # another process scores it right now, or it just ended
                    break
                n, last = done
                if last is not None:
                    after = last
                    cursors.advance(model, version, started_at, last)
                if n < chunk:
                    break
            else:
                stats.out_of_time = True
    return stats


def _start_waiting(conn: psycopg.Connection[Any], stats: ScoreStats) -> None:
    """Start each waiting shadow whose model has no active rollout any more, or one in its hold (the challenger
    serves every request), its clock at the watermark then."""
    waiting = conn.execute("SELECT model_name, version FROM shadows WHERE status = 'waiting' "
                           "ORDER BY model_name, version").fetchall()
    for model, version in waiting:
        try:
            with conn.transaction(), conn.cursor() as cur:
                if not cur.execute(_TRY_LOCK, (SHADOW_LOCK_CLASS, model)).fetchone()[0]:
                    continue
                row = cur.execute(_SHADOW, (model, version)).fetchone()
                if row is None or row[0] != "waiting":
                    continue
                active = cur.execute(_ACTIVE_ROLLOUT, (model,)).fetchone()
                if active is not None and active[1] != "holding":
                    continue
                started_at = model_watermark(cur, model) or row[2]
                sentence = (f"shadow of {version} started at {_at(started_at)}: " + (
                    f"no rollout of {model} is under way" if active is None else
                    f"{active[0]} serves every request in its hold; {version} takes over only if shown better"))
                cur.execute("UPDATE shadows SET status = 'running', started_at = %s, sentence = %s, "
                            "updated_at = now() WHERE model_name = %s AND version = %s",
                            (started_at, sentence, model, version))
                cur.execute(_EVENT, (model, version, "shadow_started", started_at, sentence, Jsonb({}), ACTOR))
            stats.started.append(version)
        except Exception:
            log.exception("shadow %s %s: could not start after waiting; tried again next round", model, version)


def _score_chunk(conn: psycopg.Connection[Any], registry: Registry, model: ModelConfig, version_name: str,
                 started: datetime, after: Position, chunk: int, timed_rows: int | None, models: ShadowModelCache,
                 stats: ScoreStats, *, served: str | None = None) -> tuple[int, Position | None] | None:
    """Score up to ``chunk`` unscored rows of one shadow after ``after`` in one transaction under the model's lock;
    how many rows it selected and the last one's position. None: another process holds the lock, or the shadow is
    not the one running since ``started`` any more.

    ``served``: the challenger of a ramp that started at ``started``, whose champion ``version_name`` scores the
    requests it served (none before the ramp's start: nothing is backfilled)."""
    with conn.transaction(), conn.cursor() as cur:
        if not cur.execute(_TRY_LOCK, (SHADOW_LOCK_CLASS, model.name)).fetchone()[0]:
            return None
        if served is None:
            row = cur.execute(_SHADOW, (model.name, version_name)).fetchone()
            if row is None or row[0] != "running" or row[2] != started:
                return None
            _, cutoff, started_at, _ = row
            since = started_at - timedelta(seconds=model.rollout.shadow_backfill_s)
        elif cur.execute(_RAMP, (model.name, version_name, served, started)).fetchone() is None:
            return None
        else:
            cutoff = started_at = since = started
        version = registry.get(cur, model.name, version_name)
        if version is None:
            msg = f"{model.name} {version_name} has a running shadow but is not in the registry"
            raise LookupError(msg)
        fitted = models.get(cur, registry, version)
        rows = cur.execute(_UNSCORED if served is None else _UNSCORED_SERVED, {
            "model": model.name, "version": version_name, "started": started_at, "since": since, "cutoff": cutoff,
            "chunk": chunk, "after_version": after[0], "after_at": after[1], "after_id": after[2],
            "served": served}).fetchall()
        if not rows:
            return 0, None
        scores = score_rows(fitted, [_features(r[1]) for r in rows], task=model.task,
                            timed_rows=model.rollout.shadow_latency_rows if timed_rows is None else timed_rows)
        cur.execute(_INSERT_SCORES, (
            model.name, version_name, [r[0] for r in rows],
            [None if s.error is not None else _json(s.prediction) for s in scores],
            [None if s.probabilities is None else _json(s.probabilities) for s in scores],
            [s.latency_ms for s in scores], [s.error for s in scores], [bool(r[2]) for r in rows]))
    stats.chunks += 1
    stats.scored += len(rows)
    stats.failed += sum(s.error is not None for s in scores)
    stats.backfilled += sum(bool(r[2]) for r in rows)
    return len(rows), (rows[-1][3], rows[-1][4], rows[-1][0])


def _features(raw: Any) -> Mapping[str, Any]:
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw


_LABELLED = """
SELECT f.label, f.served_prediction, f.shadow_prediction, f.shadow_error IS NOT NULL,
       CASE WHEN jsonb_typeof(f.served_probabilities -> %(positive)s) = 'number'
            THEN (f.served_probabilities ->> %(positive)s)::float8 END,
       CASE WHEN jsonb_typeof(f.shadow_probabilities -> %(positive)s) = 'number'
            THEN (f.shadow_probabilities ->> %(positive)s)::float8 END,
       (SELECT p.score FROM predictions p WHERE p.prediction_id = f.prediction_id AND %(score)s),
       CASE WHEN %(multiclass)s THEN f.served_probabilities END,
       CASE WHEN %(multiclass)s THEN f.shadow_probabilities END,
       coalesce(f.routing_key, f.prediction_id)
FROM shadow_feedback f
WHERE f.model_name = %(model)s AND f.shadow_version = %(version)s AND f.labeled_at > %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.prediction_id = f.prediction_id AND o.observed_at <= %(cutoff)s)
"""
_SCORED = """
SELECT count(*), count(error), count(latency_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
FROM shadow_predictions WHERE model_name = %s AND version = %s
"""
_SERVED_LATENCY = """
SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY p.latency_ms)
FROM shadow_predictions s JOIN predictions p USING (prediction_id)
WHERE s.model_name = %s AND s.version = %s AND s.latency_ms IS NOT NULL
"""


def load_shadow_rows(cur: psycopg.Cursor[Any], model: ModelConfig, version: str, cutoff: datetime) -> ShadowRows:
    """A shadow's rows for its verdict, from ``shadow_feedback``: those whose current label was observed after the
    cutoff, of predictions none of whose outcomes was observed at or before it; and the scoring counts.

    The view has no served ``score``: for a model whose served probability is its score (``score = "score"``)
    it is read from ``predictions``.
    """
    positive = category_key(model.positive_class) if model.positive_class is not None else "1"
    rows = cur.execute(_LABELLED, {"model": model.name, "version": version, "cutoff": cutoff, "positive": positive,
                                   "score": model.score == "score", "multiclass": model.multiclass}).fetchall()
    scored, failures, timed, shadow_p99 = cur.execute(_SCORED, (model.name, version)).fetchone()  # type: ignore[misc]
    served_p99 = cur.execute(_SERVED_LATENCY, (model.name, version)).fetchone()[0] if timed else None  # type: ignore[index]
    failed = np.array([r[3] for r in rows], dtype=bool)
    if model.task == "regression":
        labels, served, shadow = (np.array([_number(r[i]) for r in rows], dtype=np.float64) for i in (0, 1, 2))
    else:
        labels, served, shadow = (np.array([category_key(r[i]) for r in rows], dtype=object) for i in (0, 1, 2))
    served_proba = shadow_proba = proba_gap = None
    if model.multiclass:
        proba_gap = np.array([probability_gap(r[7], r[8]) for r in rows], dtype=np.float64)
    elif model.task == "classification":
        shadow_proba = np.array([np.nan if r[5] is None else r[5] for r in rows], dtype=np.float64)
        if model.score == "score":
            served_proba = np.array([np.nan if r[6] is None else r[6] for r in rows], dtype=np.float64)
        elif model.score == "probabilities":
            served_proba = np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64)
    return ShadowRows(labels=labels, served=served, shadow=shadow, failed=failed, served_proba=served_proba,
                      shadow_proba=shadow_proba, proba_gap=proba_gap, scored=int(scored), failures=int(failures),
                      latency={"timed": int(timed), "shadow_p99_ms": finite(shadow_p99),
                               "served_p99_ms": finite(served_p99)},
                      units=np.array([r[9] for r in rows], dtype=object))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


# --- judging ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowJudgement:
    """One look at a running shadow: its verdict, whether it ended the shadow, and whether it escalated."""

    model_name: str
    version: str
    verdict: ShadowVerdict
    at: datetime
    ended: bool
    escalated: bool


_END = {"passed": ("shadow_passed", None), "failed": ("shadow_failed", "rejected"),
        "expired": ("shadow_expired", "archived")}


def judge_round(store_or_conn: FeedbackStore | psycopg.Connection[Any], registry: Registry,
                config: MonitoringConfig, alerts: AlertSink | None = None) -> list[ShadowJudgement]:
    """Look at each running shadow and apply its verdict: ``passed`` (the registry stage stays ``shadow``: the
    rollout controller starts the ramp from a passed shadow), ``failed`` (rejected, with an alert) or ``expired``
    (archived), each with its ``rollout_events`` row; ``waiting`` writes nothing but the figures, when they
    changed. Low agreement is escalated to a person once. A model another process is judging is skipped; an
    error in one model is logged and the others are judged."""
    judgements = []
    with _connection(store_or_conn) as conn:
        shadows = conn.execute("SELECT model_name, version FROM shadows WHERE status = 'running' "
                               "ORDER BY model_name, version").fetchall()
        for model, version in shadows:
            if model not in config.models:
                continue
            try:
                judged, sends = _judge(conn, registry, config.models[model], version)
            except TRANSIENT_ERRORS as exc:
                log.warning("shadow %s %s: not judged this round, database unavailable: %s", model, version, exc)
                continue
            except Exception:
                log.exception("shadow %s %s: judging failed; judged again next round", model, version)
                continue
            if judged is None:
                continue
            judgements.append(judged)
            if judged.ended:
                log.info("shadow %s %s: %s", model, version, judged.verdict.sentence)
            for alert in sends:
                if alerts is not None:
                    alerts.send(alert)
    return judgements


def _judge(conn: psycopg.Connection[Any], registry: Registry, model: ModelConfig, version: str
           ) -> tuple[ShadowJudgement | None, list[Alert]]:
    alerts: list[Alert] = []
    with conn.transaction(), conn.cursor() as cur:
        if not cur.execute(_TRY_LOCK, (SHADOW_LOCK_CLASS, model.name)).fetchone()[0]:
            return None, []
        row = cur.execute(_SHADOW, (model.name, version)).fetchone()
        if row is None or row[0] != "running":
            return None, []
        _, cutoff, started_at, stored = row
        at = max(model_watermark(cur, model.name) or started_at, started_at)
        champion = cur.execute("SELECT champion FROM shadows WHERE model_name = %s AND version = %s",
                               (model.name, version)).fetchone()[0]  # type: ignore[index]
        verdict = shadow_verdict(load_shadow_rows(cur, model, version, cutoff), model.rollout, task=model.task,
                                 positive_class=model.positive_class,
                                 duration_s=(at - started_at).total_seconds(),
                                 urgent=degradation(cur, registry, model.name, version, champion))
        figures = _jsonable(verdict.figures)
        escalated = False
        if verdict.escalate and not cur.execute(
                "SELECT 1 FROM rollout_events WHERE model_name = %s AND version = %s AND kind = 'shadow_escalated'",
                (model.name, version)).fetchone():
            sentence = next(c.sentence for c in verdict.checks if c.name == "agreement")
            cur.execute(_EVENT, (model.name, version, "shadow_escalated", at, sentence, Jsonb(figures), ACTOR))
            alerts.append(Alert.create(model_name=model.name, kind="shadow_escalated", at=at, key=version,
                                       sentence=f"{model.name} {version} in shadow: {sentence}", details=figures))
            escalated = True
        ended = verdict.status in _END
        if ended:
            kind, stage = _END[verdict.status]
            cur.execute(_END_SHADOW, (verdict.status, verdict.sentence, Jsonb(figures), at, model.name, version))
            if stage is not None:
                registry.move(cur, model.name, version, stage, reason=f"shadow: {verdict.sentence}")  # type: ignore[arg-type]
            cur.execute(_EVENT, (model.name, version, kind, at, verdict.sentence, Jsonb(figures), ACTOR))
            if verdict.status == "failed":
                alerts.append(Alert.create(model_name=model.name, kind="shadow_failed", at=at, key=version,
                                           sentence=f"{model.name} {version}: shadow {verdict.sentence}",
                                           details=figures))
        elif stored != figures:
            cur.execute("UPDATE shadows SET verdict = %s, updated_at = now() WHERE model_name = %s AND version = %s",
                        (Jsonb(figures), model.name, version))
    return ShadowJudgement(model_name=model.name, version=version, verdict=verdict, at=at, ended=ended,
                           escalated=escalated), alerts


# --- formatting ------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Figures as JSON holds them: numpy scalars as numbers, non-finite numbers as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _at(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``"ExcType: first line"``, at most ``limit`` characters.

    >>> _one_line(RuntimeError("no good\\nat all"))
    'RuntimeError: no good'
    """
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return line if len(line) <= limit else f"{line[:limit - 3]}..."
