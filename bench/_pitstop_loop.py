"""Strategy (d) of bench/loop_quality.py: Pitstop's own loop, run in-process against a real PostgreSQL.

A stream's samples become a model's prediction and outcome events in event time: sample ``i`` is predicted at
``T0 + i x STEP`` (250 samples an event-hour, so one monitoring window of "1h" holds 250 predictions) and its
label is observed ``delay`` samples later. The first 5,000 samples' labels train the first champion (the
same HistGradientBoosting every batch strategy starts from, fitted by Pitstop's default trainer), which is
registered in the model registry with its training profile and serves from ``5,000 + delay - 1`` on; the
samples before that are stored as served by a placeholder version ``bootstrap`` (the class frequencies or the
mean: they are not scored, and they are in the store for the retrains to learn from, as a model's history is).

Then the loop advances one window (250 samples) at a time, and at every step does what the running services
do, through their code: the champion predicts the window's samples (``predict_proba``; the events carry its
version), the window's predictions and the outcomes observed in it are written with ``FeedbackStore``'s
batch write (the ingest's path: windows counted in the same transaction), a monitor round runs
(``Monitor.run_once``) with the trigger engine after it (``TriggerEngine.run``, event time as its clock), and
every trigger event the engine put in the outbox is decoded as the retrain worker decodes it
(``decode_trigger``) and handled by ``RetrainPipeline.handle`` (dataset at the cutoff, checks, training in a
process of its own, the model pool, the gates, the registry; ``promotion = "after-gates"``). A new champion
serves from the next window on. What Kafka would carry between these steps is skipped, nothing else.

The model's configuration is Pitstop's defaults except for what a stream's time scale needs (the window,
the minimum rows and labels to judge a window) and ``promotion = "after-gates"``; ``EXTRA_TOML`` adds to it
(a ``--pitstop-toml`` file of loop_quality.py), so a setting's effect can be measured.

The staged strategies (:data:`STAGED`, :class:`StagedLoop`) are the same loop with ``promotion = "shadow"``:
a candidate goes live through the rollout's code, in event time. Each sample belongs to user ``u{i % 2000}``
(its routing key) and is served by the version the router's hash gives that user under the current
``deployments`` row (``pitstop.router.Deployment.route``; the registry's champion before the first rollout),
loaded from the registry and tagged on the event. After each window's monitor round and triggers, the
candidate events the pipeline put in the outbox are decoded as the rollout worker decodes them
(``decode_candidate``) and start shadows (``start_shadow``), then one rollout tick runs (``RolloutTick``: shadow
scoring with no time budget, judging, the controller's look), as the rollout worker does every few seconds; a
new deployment serves from the next window. ``ds`` keeps Pitstop's rollout defaults (24 h shadow, dwells of 2, 2,
6 and 24 h, a 48 h hold: 26,500 samples at 250 an event-hour); ``dsf`` sets :data:`FAST_ROLLOUT`. No latency is
recorded (the latency rules do not apply), and nobody clears a latched rollback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._loop_streams import StrategyRun, Stream  # noqa: E402
from feedback import topics  # noqa: E402
from feedback.alerts import Alert  # noqa: E402
from feedback.config import MonitoringConfig, parse_config  # noqa: E402
from feedback.monitoring.profile import build_profile  # noqa: E402
from feedback.monitoring.round import Monitor  # noqa: E402
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns, series_kinds  # noqa: E402
from feedback.registry.artifacts import serialise  # noqa: E402
from feedback.registry.versions import ModelVersion, Registry  # noqa: E402
from feedback.rollout.shadow import (  # noqa: E402
    decode_candidate,
    start_shadow,
)
from feedback.rollout.tick import RolloutTick  # noqa: E402
from feedback.store import FeedbackStore, drop_store, migrate  # noqa: E402
from feedback.triggers.engine import TriggerEngine  # noqa: E402
from pitstop import stack  # noqa: E402
from pitstop.router import Deployment  # noqa: E402
from retrain_worker.intake import decode_trigger  # noqa: E402
from retrain_worker.pipeline import RetrainPipeline  # noqa: E402
from retrain_worker.trainers import gradient_boosting  # noqa: E402
from schemas import OutcomeEvent, PredictionEvent  # noqa: E402

log = logging.getLogger("bench.pitstop_loop")

MODEL = "loop"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PER_WINDOW = 250
STEP = timedelta(seconds=3_600 / PER_WINDOW)
INITIAL = 5_000
BOOTSTRAP = "bootstrap"
FIRST = "v1"

TOML = """
[models.{model}]
task = "{task}"
{positive}
metric = "{metric}"
score = "{score}"
window = "1h"
span = 24
min_rows = 200
min_labels = 200

[models.{model}.features]
{features}

[models.{model}.retrain]
promotion = "{promotion}"
budget = "600s"
"""


def config_for(stream: Stream, extra_toml: str = "", promotion: str = "after-gates",
               model_toml: str = "") -> MonitoringConfig:
    """The bench model's configuration: Pitstop's defaults at the stream's time scale, plus ``extra_toml``;
    ``model_toml`` adds keys to the model's own table (``segments = ["region"]``: TOML defines a table once)."""
    x0 = features(stream.samples[0][0])
    kinds = "\n".join(f'{name} = "{"categorical" if isinstance(v, str) else "numeric"}"' for name, v in x0.items())
    classification = stream.task == "classification"
    labels = {_label(stream, y) for _, y in stream.samples[:INITIAL]}
    # a stream of 0/1 labels is a binary model; any other classification stream (S7's four classes) is monitored
    # as a multiclass model, without positive_class
    positive = "positive_class = 1" if classification and labels <= {0, 1} else ""
    if model_toml:
        positive = f"{positive}\n{model_toml}"
    text = TOML.format(model=MODEL, task=stream.task, positive=positive,
                       metric="accuracy" if classification else "mae",
                       score="probabilities" if classification else "none", features=kinds, promotion=promotion)
    return parse_config(text + "\n" + extra_toml)


@dataclass
class _Database:
    url: str
    schema: str
    pgdata: Path | None = None
    state_dir: Path | None = None
    schemas: list[str] = field(default_factory=list)


@contextlib.contextmanager
def database(database_url: str | None = None) -> Iterator[_Database]:
    """``database_url`` (or PITSTOP_DATABASE_URL) with a fresh schema dropped at the end, or a PostgreSQL server
    of its own in a temporary folder, stopped and removed at the end."""
    url = database_url or os.environ.get("PITSTOP_DATABASE_URL")
    schema = f"bench_loop_{os.getpid()}_{int(time.time())}"
    if url:
        db = _Database(url, schema)
        try:
            yield db
        finally:
            with contextlib.suppress(Exception), psycopg.connect(url, autocommit=True) as conn:
                drop_store(conn, schema)
        return
    state_dir = Path(tempfile.mkdtemp(prefix="pitstop-bench-loop-"))
    db = _Database("", schema, pgdata=state_dir / "pgdata", state_dir=state_dir)
    try:
        record = stack.start_postgres(db.pgdata)  # type: ignore[arg-type]
        db.url = stack.postgres_url(record.address)
        yield db
    finally:
        with contextlib.suppress(Exception):
            stack.stop_postgres(db.pgdata)  # type: ignore[arg-type]
        shutil.rmtree(state_dir, ignore_errors=True)


class _CountingAlerts:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def at(i: int) -> datetime:
    """The event time of sample ``i``."""
    return T0 + i * STEP


def index_of(when: datetime) -> int:
    """The first sample predicted at or after ``when``."""
    return int(np.ceil((when - T0) / STEP))


def _label(stream: Stream, y: Any) -> Any:
    """A label as an event carries it: booleans as 0/1 (SEA and STAGGER yield booleans), numpy scalars as Python."""
    if isinstance(y, bool | np.bool_):
        return int(y)
    if isinstance(y, np.generic):
        y = y.item()
    return y if stream.task == "classification" else float(y)


def features(x: dict[Any, Any]) -> dict[str, Any]:
    """A sample's features as an event carries them: names as strings (SEA's are 0, 1, 2), Python scalars."""
    return {str(k): v.item() if isinstance(v, np.generic) else v for k, v in x.items()}


def _frame(xs: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(xs)


class Loop:
    """One stream through Pitstop's loop; :meth:`run` returns strategy (d)'s run."""

    #: keys a subclass adds to the model's own table (bench/rollout_safety.py declares a segment); none here
    MODEL_TOML = ""

    def __init__(self, stream: Stream, *, delay: int, db: _Database, extra_toml: str = "",
                 promotion: str = "after-gates") -> None:
        self.stream = stream
        self.delay = delay
        self.config = config_for(stream, extra_toml, promotion, model_toml=self.MODEL_TOML)
        self.model = self.config.models[MODEL]
        self.xs = [features(x) for x, _ in stream.samples]
        self.ys = [_label(stream, y) for _, y in stream.samples]
        self.X = _frame(self.xs)
        migrate(db.url, db.schema)
        self.updater = WindowUpdater(self.config)
        self.store = FeedbackStore(db.url, db.schema, windows=self.updater, max_size=3).open()
        self.monitor = Monitor(self.store, self.updater)
        self.alerts = _CountingAlerts()
        self.engine = TriggerEngine(self.config, self.alerts)
        self.registry = Registry()
        self.pipeline = RetrainPipeline(self.store, self.config, registry=self.registry,
                                        progress=lambda step: log.debug("%s", step))
        self.predictions: list[Any] = [None] * len(self.ys)
        self.deployed_at: list[int] = []
        self.triggered_at: list[int] = []
        self.refits_at: list[int] = []
        self.pool_at: list[int] = []
        self.refresh_at: list[int] = []
        self.outcomes: list[dict[str, Any]] = []

    def close(self) -> None:
        self.store.close()

    # --- serving -----------------------------------------------------------------------------------------

    def _events(self, start: int, end: int, version: str, fitted: Any | None) -> list[PredictionEvent]:
        X = self.X.iloc[start:end]
        classification = self.stream.task == "classification"
        if fitted is None:  # the bootstrap placeholder: class frequencies or the mean of the first labels
            known = pd.Series(self.ys[:INITIAL])
            if classification:
                shares = known.value_counts(normalize=True).sort_index()
                classes, proba = list(shares.index), np.tile(shares.to_numpy(), (end - start, 1))
                predicted = np.full(end - start, shares.idxmax())
            else:
                predicted = np.full(end - start, float(known.mean()))
        else:
            predicted = np.asarray(fitted.predict(X))
            if classification:
                classes, proba = list(fitted.classes_), fitted.predict_proba(X)
        events = []
        for k, i in enumerate(range(start, end)):
            value = predicted[k].item()
            if fitted is not None:
                self.predictions[i] = value
            events.append(PredictionEvent(
                prediction_id=f"s{i}", model_name=MODEL, model_version=version, predicted_at=at(i),
                features=self.xs[i], prediction=value,
                probabilities={str(c): float(proba[k, j]) for j, c in enumerate(classes)} if classification
                else None))
        return events

    def _labels(self, start: int, end: int) -> list[OutcomeEvent]:
        """The outcomes observed in steps [start, end): those of samples start - delay .. end - delay - 1."""
        first, last = max(0, start - self.delay), max(0, end - self.delay)
        return [OutcomeEvent(prediction_id=f"s{i}", label=self.ys[i], observed_at=at(i + self.delay))
                for i in range(first, last)]

    # --- the first champion ------------------------------------------------------------------------------

    def _first_champion(self) -> Any:
        X, y = self.X.iloc[:INITIAL], pd.Series(self.ys[:INITIAL])
        fitted = gradient_boosting(self.stream.task).fit(X, y, np.ones(INITIAL))
        features = {name: X[name].tolist() for name in X.columns}
        scores = None
        if self.model.multiclass:  # the score series of a model without positive_class: its top-label confidence
            scores = fitted.predict_proba(X).max(axis=1).tolist()
        elif self.stream.task == "classification":
            scores = fitted.predict_proba(X)[:, list(fitted.classes_).index(1)].tolist()
        columns = reference_columns(self.model, features=features, predictions=np.asarray(fitted.predict(X)).tolist(),
                                    scores=scores, labels=y.tolist())
        profile = build_profile(MODEL, FIRST, columns, series_kinds(self.model), source="first 5,000 labels")
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            entry = ModelVersion(model_name=MODEL, version=FIRST, stage="candidate", trigger_id=None,
                                 trainer="retrain_worker.trainers:gradient_boosting",
                                 lineage={"features": list(X.columns), "train_rows": INITIAL,
                                          "cutoff": at(INITIAL).isoformat()}, metrics={})
            self.registry.register(cur, entry, serialise(fitted, "skops"), reason="the bench's first model")
            self.registry.move(cur, MODEL, FIRST, "champion", reason="the bench's first model")
            install_profile(conn, self.updater, profile)
        return fitted

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> StrategyRun:
        started = time.perf_counter()
        n = len(self.ys)
        first_served = INITIAL + self.delay - 1
        self.store.write_batch(self._events(0, first_served, BOOTSTRAP, None), self._labels(0, first_served))
        champion, version = self._first_champion(), FIRST
        start = first_served
        while start < n:
            end = min(n, (start // PER_WINDOW + 1) * PER_WINDOW)
            self.store.write_batch(self._events(start, end, version, champion), self._labels(start, end))
            now = at(end)
            self.monitor.run_once(after=lambda conn, evaluations, now=now: self.engine.run(
                conn, evaluations, wall_now=now))
            for trigger in self._triggers():
                self._handle(trigger, end)
                new = self._champion()
                if new is not None and new[1] != version:
                    champion, version = new
                    self.deployed_at.append(end)
            start = end
        return StrategyRun(name="d", label="(d) Pitstop's loop", predictions=self.predictions,
                           deployed_at=self.deployed_at, triggered_at=self.triggered_at,
                           seconds=time.perf_counter() - started,
                           notes={"refits_at": self.refits_at, "pool_at": self.pool_at, "refresh_at": self.refresh_at,
                                  "detected_at": self._detected_at(),
                                  "outcomes": self.outcomes, "alerts": len(self.alerts.alerts),
                                  "decisions": self._decisions()})

    def _handle(self, trigger: Any, end: int) -> None:
        """The retrain worker's answer to one trigger, noted: a detection's trigger, or one of the planned steps
        after one (the ladder's refits and the early pool looks: notes["refits_at"], notes["pool_at"]), or a scheduled
        refresh (notes["refresh_at"]): none of them a detection."""
        planned = {"refit": self.refits_at, "pool": self.pool_at, "refresh": self.refresh_at}
        planned.get(trigger.kind, self.triggered_at).append(index_of(trigger.decided_at))
        outcome = self.pipeline.handle(trigger)
        self.outcomes.append({"at": end, "trigger": trigger.trigger_id, "kind": trigger.kind,
                              "change_point": index_of(trigger.change_point) if trigger.change_point else None,
                              "labels_since_change": trigger.labels_since_change, "result": outcome.result,
                              "version": outcome.version, "sentence": outcome.sentence,
                              "failed": [g.sentence for g in outcome.gates if g.passed is False],
                              "pool": outcome.lineage.get("pool"),
                              "pool_rejected": outcome.lineage.get("pool_rejected")})
        log.info("step %d: %s -> %s", end, trigger.trigger_id, outcome.sentence)

    def _triggers(self) -> list[Any]:
        """The unsent trigger events in the outbox, as the worker would receive them; marked sent."""
        with self.store.pool.connection() as conn, conn.transaction():
            rows = conn.execute("SELECT id, payload FROM outbox WHERE sent_at IS NULL AND topic = %s ORDER BY id",
                                (topics.RETRAIN_TRIGGERS,)).fetchall()
            conn.execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
        return [decode_trigger(orjson.dumps(payload)) for _, payload in rows]

    def _champion(self) -> tuple[Any, str] | None:
        with self.store.pool.connection() as conn, conn.cursor() as cur:
            found = self.registry.champion(cur, MODEL)
            return None if found is None else (self.registry.load(cur, found), found.version)

    def _detected_at(self) -> list[int]:
        """When each drift, performance or detector decision was first recorded (pending, watch or fired)."""
        rows = self.store.rows("SELECT first_decided_at FROM retrain_decisions WHERE kind IN "
                               "('drift', 'performance', 'detector') ORDER BY first_decided_at")
        return [index_of(r[0]) for r in rows]

    def _decisions(self) -> list[dict[str, Any]]:
        rows = self.store.rows("SELECT decision_id, kind, status, urgency, change_point, decided_at, sentence "
                               "FROM retrain_decisions ORDER BY first_decided_at")
        return [{"id": r[0], "kind": r[1], "status": r[2], "urgency": r[3],
                 "change_point": index_of(r[4]) if r[4] else None, "at": index_of(r[5]), "sentence": r[6]}
                for r in rows]


# --- the staged mode: candidates through the shadow gate and the ramp --------------------------------------------

USERS = 2_000

#: strategy dsf's rollout, set under [defaults.rollout] so a --pitstop-toml [models.loop.rollout] still overrides it:
#: the event-time durations scaled to the stream (a concept lasts 56 to 80 event-hours here, where the defaults'
#: shadow, dwells and hold add up to 106 h); the shadow's 1,000 labels, each arm's 200 requests a step and the
#: statistics stay Pitstop's defaults (they are counts, not durations)
FAST_ROLLOUT = """
[defaults.rollout]
shadow_min_duration = "6h"
dwell = ["1h", "1h", "1h", "1h"]
hold = "6h"
"""

#: the staged strategies: name -> the rollout configuration added to the model's
STAGED: dict[str, str] = {"ds": "", "dsf": FAST_ROLLOUT}


def routing_key(i: int) -> str:
    """Sample ``i``'s user: 2,000 users in turn, a request each every 2,000 samples (8 event-hours)."""
    return f"u{i % USERS}"


class _ErrorLog(logging.Handler):
    """What the rollout code logged at ERROR: the exceptions its rounds and looks catch and log, then go on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.records: list[dict[str, Any]] = []
        self.step = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"at": self.step, "message": self.format(record)})


class StagedLoop(Loop):
    """One stream through Pitstop's loop with ``promotion = "shadow"``: every candidate goes through the shadow
    gate and the ramp (feedback/rollout/) before it serves everyone; :meth:`run` returns the staged run."""

    def __init__(self, stream: Stream, *, delay: int, db: _Database, extra_toml: str = "", name: str = "ds",
                 label: str = "(ds) Pitstop staged") -> None:
        super().__init__(stream, delay=delay, db=db, extra_toml=extra_toml, promotion="shadow")
        self.name, self.label = name, label
        self.tick = RolloutTick(self.store, self.config, self.alerts, registry=self.registry)
        self.served: dict[str, Any] = {}  # version -> the fitted model, loaded from the registry
        self.candidates: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self._last_event = 0
        self.errors = _ErrorLog()

    # --- serving through the deployment ------------------------------------------------------------------------

    def _deployment(self) -> Deployment | None:
        """The deployment the routers follow (the ``deployments`` row): None before the first rollout."""
        rows = self.store.rows("SELECT message_version, champion, challenger, challenger_share, salt, state, "
                               "decided_at, reason FROM deployments WHERE model_name = %s", (MODEL,))
        if not rows:
            return None
        version, champion, challenger, share, salt, state, decided_at, reason = rows[0]
        return Deployment(model_name=MODEL, message_version=version, champion=champion, challenger=challenger,
                          challenger_share=share, salt=salt, state=state, decided_at=decided_at, reason=reason)

    def _model(self, version: str) -> Any:
        if version not in self.served:
            with self.store.pool.connection() as conn, conn.cursor() as cur:
                found = self.registry.get(cur, MODEL, version)
                if found is None:
                    msg = f"the deployment routes to {version}, which is not in the registry"
                    raise LookupError(msg)
                self.served[version] = self.registry.load(cur, found)
        return self.served[version]

    def _routed_events(self, start: int, end: int, route: Callable[[str], str]) -> list[PredictionEvent]:
        """The window's predictions, each served by the version the router gives its user, tagged with it."""
        rows: dict[str, list[int]] = {}
        for i in range(start, end):
            rows.setdefault(route(routing_key(i)), []).append(i)
        classification = self.stream.task == "classification"
        events: dict[int, PredictionEvent] = {}
        for version, indices in rows.items():
            fitted = self._model(version)
            X = self.X.iloc[indices]
            predicted = np.asarray(fitted.predict(X))
            if classification:
                classes, proba = list(fitted.classes_), fitted.predict_proba(X)
            for k, i in enumerate(indices):
                value = predicted[k].item()
                self.predictions[i] = value
                events[i] = self._served(version, i, PredictionEvent(
                    prediction_id=f"s{i}", model_name=MODEL, model_version=version, predicted_at=at(i),
                    features=self.xs[i], prediction=value, routing_key=routing_key(i),
                    probabilities={str(c): float(proba[k, j]) for j, c in enumerate(classes)} if classification
                    else None))
        return [events[i] for i in range(start, end)]

    def _served(self, version: str, i: int, event: PredictionEvent) -> PredictionEvent:
        """Sample ``i``'s event as ``version`` served it. Here the model's answer as it is, with no latency and no
        failure; a subclass adds what a server would record (bench/rollout_safety.py: latency, failed requests,
        the segment)."""
        return event

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> StrategyRun:
        rollout_log = logging.getLogger("feedback.rollout")
        rollout_log.addHandler(self.errors)
        try:
            return self._run()
        finally:
            rollout_log.removeHandler(self.errors)

    def _run(self) -> StrategyRun:
        started = time.perf_counter()
        n = len(self.ys)
        first_served = INITIAL + self.delay - 1
        self.store.write_batch(self._events(0, first_served, BOOTSTRAP, None), self._labels(0, first_served))
        self.served[FIRST] = self._first_champion()
        everyone, shown = FIRST, None  # the version serving every request; the deployment last recorded
        start = first_served
        while start < n:
            end = min(n, (start // PER_WINDOW + 1) * PER_WINDOW)
            self.errors.step = end
            deployment = self._deployment()
            if deployment is None:
                champion = self._champion_version()
                route: Callable[[str], str] = lambda _key, v=champion: v  # noqa: E731
                full: str | None = champion
            else:
                route = deployment.route
                full = (deployment.challenger if deployment.challenger and deployment.threshold >= 10_000
                        else deployment.champion if deployment.threshold == 0 else None)
                key = (deployment.champion, deployment.challenger, deployment.challenger_share)
                if key != shown:
                    shown = key
                    self.deployments.append({"at": start, "champion": deployment.champion,
                                             "challenger": deployment.challenger,
                                             "share": deployment.challenger_share, "state": deployment.state})
            if full is not None and full != everyone:
                everyone = full
                self.deployed_at.append(start)
            self.store.write_batch(self._routed_events(start, end, route), self._labels(start, end))
            now = at(end)
            self.monitor.run_once(after=lambda conn, evaluations, now=now: self.engine.run(
                conn, evaluations, wall_now=now))
            for trigger in self._outbox(topics.RETRAIN_TRIGGERS, decode_trigger):
                self._handle(trigger, end)
            for candidate in self._outbox(topics.CANDIDATES, decode_candidate):
                with self.store.pool.connection() as conn:
                    begun = start_shadow(conn, self.registry, candidate, self.config, self.alerts,
                                         models=self.tick.models)
                self.candidates.append({"at": end, "version": candidate.version, "stage": candidate.stage,
                                        "start": begun.outcome, "sentence": begun.sentence})
            self.tick()
            self._new_events(end)
            start = end
            if self._stop_after(end):
                break
        return StrategyRun(name=self.name, label=self.label, predictions=self.predictions,
                           deployed_at=self.deployed_at, triggered_at=self.triggered_at,
                           seconds=time.perf_counter() - started,
                           notes={"refits_at": self.refits_at, "pool_at": self.pool_at, "refresh_at": self.refresh_at,
                                  "detected_at": self._detected_at(),
                                  "outcomes": self.outcomes, "alerts": len(self.alerts.alerts),
                                  "decisions": self._decisions(), "rollout": self._rollout_notes()})

    def _stop_after(self, step: int) -> bool:
        """Whether the run ends after the step ending at ``step``: never here, the whole stream is played; a
        subclass may act between steps and end early (bench/rollout_safety.py)."""
        return False

    def _outbox(self, topic: str, decode: Callable[[bytes], Any]) -> list[Any]:
        """The unsent events of ``topic`` in the outbox, decoded as their consumer decodes them; marked sent."""
        with self.store.pool.connection() as conn, conn.transaction():
            rows = conn.execute("SELECT id, payload FROM outbox WHERE sent_at IS NULL AND topic = %s ORDER BY id",
                                (topic,)).fetchall()
            conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", ([r[0] for r in rows],))
        return [decode(orjson.dumps(payload)) for _, payload in rows]

    def _champion_version(self) -> str:
        with self.store.pool.connection() as conn, conn.cursor() as cur:
            found = self.registry.champion(cur, MODEL)
        if found is None:
            msg = f"{MODEL} has no champion and no deployment"
            raise LookupError(msg)
        return found.version

    def _new_events(self, step: int) -> None:
        """The rollout events since the last step, with the step after which they took effect."""
        rows = self.store.rows("SELECT event_id, version, kind, share, sentence FROM rollout_events "
                               "WHERE model_name = %s AND event_id > %s ORDER BY event_id", (MODEL, self._last_event))
        for event_id, version, kind, share, sentence in rows:
            self._last_event = event_id
            self.events.append({"at": step, "version": version, "kind": kind, "share": share, "sentence": sentence})

    def _rollout_notes(self) -> dict[str, Any]:
        """The rollout's story and its counts: candidates, shadows, ramps, and the samples each stage took."""
        shadows = [{"version": v, "status": st, "started": index_of(s0), "decided": index_of(d) if d else None,
                    "sentence": sen}
                   for v, st, s0, d, sen in self.store.rows(
                       "SELECT version, status, started_at, decided_at, sentence FROM shadows WHERE model_name = %s "
                       "ORDER BY started_at, version", (MODEL,))]
        rollouts = [{"rollout_id": r, "champion": c, "challenger": ch, "state": st, "started": index_of(s0),
                     "ended": index_of(e) if e else None, "sentence": sen}
                    for r, c, ch, st, s0, e, sen in self.store.rows(
                        "SELECT rollout_id, champion, challenger, state, started_at, ended_at, sentence FROM rollouts "
                        "WHERE model_name = %s ORDER BY started_at", (MODEL,))]
        candidate_at: dict[str, int] = {}
        for c in self.candidates:
            candidate_at.setdefault(c["version"], c["at"])  # a version proposed again keeps its first candidacy
        full = [e for e in self.events if e["kind"] == "holding" or (e["kind"] == "promoted" and e["share"] == 1.0
                and not any(h["kind"] == "holding" and h["version"] == e["version"] for h in self.events))]
        to_full = [{"version": e["version"], "candidate": candidate_at.get(e["version"]), "full": e["at"],
                    "samples": e["at"] - candidate_at[e["version"]] if e["version"] in candidate_at else None}
                   for e in full]
        ramp_start: dict[str, int] = {}
        for e in self.events:
            if e["kind"] == "step":
                ramp_start.setdefault(e["version"], e["at"])
        shadow_ends = Counter(s["status"] for s in shadows)
        superseded = sum(1 for s in shadows if s["status"] == "expired" and s["sentence"].startswith("superseded"))
        return {
            "candidates": self.candidates,
            "shadows": shadows,
            "rollouts": rollouts,
            "events": self.events,
            "deployments": self.deployments,
            "to_full": to_full,
            "candidate_to_ramp": [{"version": v, "samples": a - candidate_at[v]} for v, a in ramp_start.items()
                                  if v in candidate_at],
            "counts": {
                "candidates": len(candidate_at),
                "shadows_passed": shadow_ends.get("passed", 0),
                "shadows_failed": shadow_ends.get("failed", 0),
                "shadows_expired": shadow_ends.get("expired", 0) - superseded,
                "shadows_superseded": superseded,
                "shadows_open": shadow_ends.get("running", 0) + shadow_ends.get("waiting", 0),
                **{f"rollouts_{k}": v for k, v in Counter(r["state"] for r in rollouts).items()},
            },
            "errors": self.errors.records,
        }


def run_pitstop_staged(stream: Stream, *, delay: int, database_url: str | None = None, extra_toml: str = "",
                       name: str = "ds") -> StrategyRun:
    """Strategy ``name`` of :data:`STAGED`: ``stream`` through Pitstop's loop and its rollout (the module's
    docstring)."""
    with database(database_url) as db:
        loop = StagedLoop(stream, delay=delay, db=db, extra_toml=STAGED[name] + "\n" + extra_toml, name=name,
                          label=f"({name}) Pitstop staged")
        try:
            return loop.run()
        finally:
            loop.close()


def run_pitstop(stream: Stream, *, delay: int, database_url: str | None = None, extra_toml: str = ""
                ) -> StrategyRun:
    """Strategy (d): ``stream`` through Pitstop's loop (see the module's docstring)."""
    with database(database_url) as db:
        loop = Loop(stream, delay=delay, db=db, extra_toml=extra_toml)
        try:
            return loop.run()
        finally:
            loop.close()
