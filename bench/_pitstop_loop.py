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
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._loop_streams import StrategyRun, Stream  # noqa: E402
from feedback.monitoring.config import MonitoringConfig, parse_config  # noqa: E402
from feedback.monitoring.profile import build_profile  # noqa: E402
from feedback.monitoring.round import Monitor  # noqa: E402
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns, series_kinds  # noqa: E402
from feedback.registry.artifacts import serialise  # noqa: E402
from feedback.registry.versions import ModelVersion, Registry  # noqa: E402
from feedback.store import FeedbackStore, migrate  # noqa: E402
from feedback.triggers.alerts import Alert  # noqa: E402
from feedback.triggers.engine import TRIGGER_TOPIC, TriggerEngine  # noqa: E402
from pitstop import stack  # noqa: E402
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
promotion = "after-gates"
budget = "600s"
"""


def config_for(stream: Stream, extra_toml: str = "") -> MonitoringConfig:
    """The bench model's configuration: Pitstop's defaults at the stream's time scale, plus ``extra_toml``."""
    x0 = features(stream.samples[0][0])
    kinds = "\n".join(f'{name} = "{"categorical" if isinstance(v, str) else "numeric"}"' for name, v in x0.items())
    classification = stream.task == "classification"
    labels = {_label(stream, y) for _, y in stream.samples[:INITIAL]}
    positive = "positive_class = 1" if classification and labels <= {0, 1} else ""
    text = TOML.format(model=MODEL, task=stream.task, positive=positive,
                       metric="accuracy" if classification else "mae",
                       score="probabilities" if classification else "none", features=kinds)
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
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
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

    def __init__(self, stream: Stream, *, delay: int, db: _Database, extra_toml: str = "") -> None:
        self.stream = stream
        self.delay = delay
        self.config = config_for(stream, extra_toml)
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
        if self.stream.task == "classification":
            scores = fitted.predict_proba(X)[:, list(fitted.classes_).index(1)].tolist()
        columns = reference_columns(self.model, features=features, predictions=np.asarray(fitted.predict(X)).tolist(),
                                    scores=scores, labels=y.tolist())
        profile = build_profile(MODEL, FIRST, columns, series_kinds(self.model), source="first 5,000 labels")
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            entry = ModelVersion(model_name=MODEL, version=FIRST, stage="candidate", trigger_id=None,
                                 trainer="retrain_worker.trainers:gradient_boosting",
                                 lineage={"features": list(X.columns), "train_rows": INITIAL}, metrics={})
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
                # a detection's trigger; the ladder's refits and the early pool looks are planned steps after
                # one, not detections (notes["refits_at"], notes["pool_at"])
                planned = {"refit": self.refits_at, "pool": self.pool_at}
                planned.get(trigger.kind, self.triggered_at).append(index_of(trigger.decided_at))
                outcome = self.pipeline.handle(trigger)
                self.outcomes.append({"at": end, "trigger": trigger.trigger_id, "kind": trigger.kind,
                                      "change_point": index_of(trigger.change_point) if trigger.change_point
                                      else None, "labels_since_change": trigger.labels_since_change,
                                      "result": outcome.result, "sentence": outcome.sentence,
                                      "failed": [g.sentence for g in outcome.gates if g.passed is False],
                                      "pool": outcome.lineage.get("pool"),
                                      "pool_rejected": outcome.lineage.get("pool_rejected")})
                log.info("step %d: %s -> %s", end, trigger.trigger_id, outcome.sentence)
                new = self._champion()
                if new is not None and new[1] != version:
                    champion, version = new
                    self.deployed_at.append(end)
            start = end
        return StrategyRun(name="d", label="(d) Pitstop's loop", predictions=self.predictions,
                           deployed_at=self.deployed_at, triggered_at=self.triggered_at,
                           seconds=time.perf_counter() - started,
                           notes={"refits_at": self.refits_at, "pool_at": self.pool_at,
                                  "detected_at": self._detected_at(),
                                  "outcomes": self.outcomes, "alerts": len(self.alerts.alerts),
                                  "decisions": self._decisions()})

    def _triggers(self) -> list[Any]:
        """The unsent trigger events in the outbox, as the worker would receive them; marked sent."""
        with self.store.pool.connection() as conn, conn.transaction():
            rows = conn.execute("SELECT id, payload FROM outbox WHERE sent_at IS NULL AND topic = %s ORDER BY id",
                                (TRIGGER_TOPIC,)).fetchall()
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


def run_pitstop(stream: Stream, *, delay: int, database_url: str | None = None, extra_toml: str = ""
                ) -> StrategyRun:
    """Strategy (d): ``stream`` through Pitstop's loop (see the module's docstring)."""
    with database(database_url) as db:
        loop = Loop(stream, delay=delay, db=db, extra_toml=extra_toml)
        try:
            return loop.run()
        finally:
            loop.close()
