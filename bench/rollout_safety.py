"""Rollout safety: planted harmful candidates go through Pitstop's shadow gate and ramp, and none may reach 100%.

Issue 16: "planted harmful candidates (worse overall by a little, worse on one declared segment, well on labels but
failing 3 % of requests, slower by 40 ms). None of them may reach 100 % on any stream."

Each run is the staged loop of ``bench/_pitstop_loop.py`` (:class:`StagedLoop`: a stream played window by window in
event time, 250 samples an event-hour, user ``u{i % 2000}``, predictions routed by the deployment, labels ``delay``
samples later, a real PostgreSQL, the monitor, the trigger engine, the shadow rounds and the rollout controller)
with one planted candidate; the retrain pipeline does not run (see below). A plant is registered in the model
registry at stage ``candidate`` and its candidate event is put in the outbox in one transaction, as the retrain
pipeline does (``candidate_event``); the loop's shadow intake decodes it (``decode_candidate``) and everything after
is Pitstop's own code. The run ends when the plant's story ends (shadow failed or expired, ramp rolled back,
champion kept, abandoned, promoted) or at the stream's end.

What this bench adds to the staged loop, in this file only (hooks of :class:`StagedLoop`):

* a declared segment, ``region``: user ``u{k}`` lives in region ``r{k % 5}`` (400 users, 20%, each); it is on every
  event's ``segment`` and, so that a model can act on it, among its features (a categorical feature the models
  train on; it carries no information about the label);
* every served request records ``latency_ms``: 5 to 15 ms (uniform, seeded) for every version, 40 ms more for the
  slow plant; the failing plant's requests fail at 3% (seeded), each with ``error`` set and the ``prediction``
  ``"error"``, as ``pitstop.serving.ServingRouter`` records a model that raised.

The plants, one a run, each built from the current champion or trained the same way (``gradient_boosting``) on the
recent labelled rows:

1. ``worse``: at sample 7,000 (a stable stretch; the first champion serves from 5,499) the champion itself with its
   answers spoilt on a seeded, row-determined share of requests: classification flips that share of predictions
   (probabilities swapped, confidently wrong), regression adds seeded noise; the share or the noise is calibrated on
   the champion's last 1,500 to 2,000 labelled requests to 1.15 x its error. A champion that makes no error there
   (S2 and S4: noise-free concepts a tree learns exactly) cannot be made 1.15 x worse: at least 0.2% of the
   requests are flipped (and at least one feature combination: STAGGER has 27). No trigger: a version registered
   without one.
2. ``segment``: a model trained on the rows since the change (better overall than the stale champion), made much
   worse on region r0 (20% of the users): its error there is the champion's own error + 15 points
   (classification: a seeded share of r0's predictions flipped), or 1.5 x the champion's MAE (regression: a bias
   on r0's predictions).
3. ``fail3``: the model trained on the rows since the change, unchanged (its labels beat the stale champion's, so
   the promotion test passes on error alone); the requests it serves fail at 3%. The model itself never raises: the
   shadow, which scores the artifact, cannot see the failures; the ramp must.
4. ``slow40``: the same model; every request it serves takes 40 ms more. The shadow times the artifact (and only
   reports latency); the ramp must judge it.

Plants 2 to 4 answer the stream's first drift the way the retrain worker answers it: the first drift, performance
or detector trigger decided at or after the drift point is handled by publishing the plant instead of running the
pipeline (the plant carries the trigger's id and change point, and the trigger gets its outcome row); if no such
trigger comes within 5,000 samples of the drift, the plant is published then, without one. The loop's other
triggers, before the plant and after it, are closed unhandled (outcome "unchanged"): no other candidate competes with
the plant, so the champion at the plant is the first one, stale after the drift, and the run measures the plant
alone (it also spares the trainings that dominate a staged run's time). A plant answering a fired drift or
performance decision takes the urgent path when its shadow shows the gain (the shadow may pass early, the ramp
starts at 25% and its dwells are waived): the riskiest path there is.

A fifth run, ``control``, publishes the same fresh model as 3 and 4 without a flaw, the same way: it should reach
100% (it is no failure when it does). Where it does not, a harmful plant's stop there does not show that a rule
caught it, and the summary says so.

Each post-drift plant runs as the drift trigger's answer (``kind:trigger``) or, published at the same moment,
without the link (``kind:none``: a version registered without a trigger; the cautious path: the full shadow, then
every step with its dwell).

Settings: ``ds`` (Pitstop's rollout defaults) and ``dsf`` (``FAST_ROLLOUT``: 6 h shadow, 1 h dwells, 6 h hold).
Streams are cut where the concept the plants answer ends: S2 at 30,000 (the first concept returns), S5 and S6 at
28,000 (the second change), S1 and S4 at 38,000; and the middle of the first stable stretch is left out (from
10,000 to 3,000 samples before the drift: 7,000 samples of S1 and S4, 2,000 of S2, 1,000 of S5 and S6), so the
runs reach the drift sooner. A ramp still open at the end passes only if it never reached 100%.

Outcome per plant: where it ended, the highest share it served, and the samples from its candidate event to the
end. A plant that reached 100% (holding or promoted) is a FAILURE, printed loudly; the exit code is then 1.

Run from the repository root (one stream at a time; each run starts a fresh schema in one PostgreSQL server)::

    .venv/bin/python bench/rollout_safety.py                         # S1 S2 S4 S5 S6, every plant, ds and dsf
    .venv/bin/python bench/rollout_safety.py S1 --plants segment:none,control:none --settings dsf --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._loop_streams import Stream, load_stream  # noqa: E402
from bench._pitstop_loop import (  # noqa: E402
    FAST_ROLLOUT,
    INITIAL,
    MODEL,
    USERS,
    StagedLoop,
    _Database,
    at,
    database,
    index_of,
)
from feedback import topics  # noqa: E402
from feedback.monitoring.profile import build_profile  # noqa: E402
from feedback.monitoring.windows import install_profile, reference_columns, series_kinds  # noqa: E402
from feedback.outbox import enqueue  # noqa: E402
from feedback.registry.artifacts import serialise  # noqa: E402
from feedback.registry.versions import ModelVersion  # noqa: E402
from retrain_worker.pipeline import candidate_event  # noqa: E402
from retrain_worker.trainers import TabularModel, gradient_boosting  # noqa: E402
from schemas import PredictionEvent  # noqa: E402

log = logging.getLogger("bench.rollout_safety")

PLANTS = ("worse", "segment", "fail3", "slow40")
#: the same fresh model as fail3 and slow40 without a flaw: it should reach 100%, else "no plant reached 100%" proves
#: nothing (a path that promotes nothing stops every plant too)
CONTROL = "control"
KINDS = (*PLANTS, CONTROL)
SETTINGS = {"ds": "", "dsf": FAST_ROLLOUT}
SETTING_LABELS = {"ds": "defaults", "dsf": "fast"}
DEFAULT_STREAMS = ("S1", "S2", "S4", "S5", "S6")
#: where each stream is cut: the end of the concept the post-drift plants answer (see the module's docstring)
SAMPLES = {"S1": 38_000, "S2": 30_000, "S4": 38_000, "S5": 28_000, "S6": 28_000}
DEFAULT_SAMPLES = 40_000

REGIONS = 5
HARMED = "r0"
STABLE_AT = 7_000  # the worse-overall plant: a stable stretch after the first champion serves
CALIBRATION_ROWS = 2_000
WORSE_RATIO = 1.15  # the worse-overall plant's error over the champion's
MIN_FLIP = 0.002  # a champion without an error cannot be made 1.15 x worse: this share of flips instead
SEGMENT_POINTS = 0.15  # the segment plant's error on r0: the champion's + this (classification) ...
SEGMENT_MAE_RATIO = 1.5  # ... or this x the champion's MAE (regression)
FAIL_SHARE = 0.03
SLOW_MS = 40.0
LATENCY_MS = (5.0, 15.0)
FALLBACK_AFTER = 5_000  # samples after the drift point: published without a trigger if none came
MIN_TRAIN_ROWS = 500
HELD_AFTER = 4_000  # samples after a passed shadow without a ramp: held (a latched rollback, say)
TRIGGER_KINDS = ("drift", "performance", "detector")
#: what a post-drift plant answers: the drift's trigger (its id and change point in the lineage, as the retrain worker
#: records them; with the champion confirmed degraded this opens the urgent path), or none (a version registered
#: without a trigger, published at the same moment: the cautious path)
ANSWERS = ("trigger", "none")
DEFAULT_RUNS = ("worse", "segment:trigger", "segment:none", "fail3:trigger", "fail3:none", "slow40:trigger",
                "slow40:none", "control:trigger", "control:none")
KEEP_STABLE = 10_000
ENDED = ("rolled_back", "kept_champion", "abandoned", "promoted")
FAILED_REQUEST = "TimeoutError: planted failure (bench/rollout_safety.py)"

_RECORD = """
INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, sentence) VALUES (%s, %s, %s, %s)
ON CONFLICT (trigger_id) DO NOTHING
"""


# --- the planted models ------------------------------------------------------------------------------------------


def region(i: int) -> str:
    """Sample ``i``'s region: its user's number modulo 5 (``u{i % 2000}``; 400 users a region).

    >>> region(0), region(7), region(2_003)
    ('r0', 'r2', 'r3')
    """
    return f"r{(i % USERS) % REGIONS}"


def _token(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return f"{float(value):.9g}"
    return str(value)


def row_uniform(X: pd.DataFrame, salt: str) -> np.ndarray:
    """A number in [0, 1) per row, decided by the row's feature values and ``salt`` only: the same request gets the
    same number whether the bench serves it or the shadow scores it from the logged features (numbers compared to
    nine significant digits, so an int and the float JSON returns for it agree).

    >>> X = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    >>> u = row_uniform(X, "s")
    >>> bool(((u >= 0) & (u < 1)).all()), bool((row_uniform(X.astype({"a": float})[["b", "a"]], "s") == u).all())
    (True, True)
    """
    columns = sorted(str(c) for c in X.columns)
    values = X[columns].astype(object).to_numpy()
    out = np.empty(len(X))
    for k, row in enumerate(values):
        text = salt + "|" + "|".join(_token(v) for v in row)
        out[k] = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2.0 ** 64
    return out


class PlantedModel:
    """A fitted model with a planted flaw, decided per request by its features (:func:`row_uniform`).

    ``mode``: ``"flip"`` (classification: on the requests whose number is at most ``amount`` the two most likely
    classes swap their probabilities, so the answer is confidently the other one; :func:`flip_threshold`),
    ``"noise"`` (regression: ``amount`` x a standard normal number per request is added) or ``"bias"``
    (regression: ``amount`` is added). ``where`` (a feature and a value) limits the flaw to those requests.
    """

    def __init__(self, base: Any, *, task: str, mode: str, amount: float, salt: str,
                 where: tuple[str, str] | None = None) -> None:
        self.base = base
        self.task = task
        self.mode = mode
        self.amount = amount
        self.salt = salt
        self.where = where

    @property
    def classes_(self) -> np.ndarray:
        return self.base.classes_

    def _within(self, X: pd.DataFrame) -> np.ndarray:
        if self.where is None:
            return np.ones(len(X), dtype=bool)
        column, value = self.where
        return (X[column].astype(str) == value).to_numpy() if column in X.columns else np.zeros(len(X), dtype=bool)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        proba = np.array(self.base.predict_proba(X), dtype=np.float64)
        hit = self._within(X) & (row_uniform(X, self.salt) <= self.amount)
        if proba.shape[1] >= 2 and hit.any():
            order = np.argsort(-proba, axis=1)
            rows = np.flatnonzero(hit)
            first, second = order[rows, 0], order[rows, 1]
            top = proba[rows, first].copy()
            proba[rows, first] = proba[rows, second]
            proba[rows, second] = top
        return proba

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(self.classes_)[np.argmax(self.predict_proba(X), axis=1)]
        predicted = np.asarray(self.base.predict(X), dtype=np.float64)
        within = self._within(X)
        if self.mode == "bias":
            return predicted + np.where(within, self.amount, 0.0)
        z = norm.ppf(np.clip(row_uniform(X, self.salt), 1e-12, 1 - 1e-12))
        return predicted + np.where(within, self.amount * z, 0.0)

    def __repr__(self) -> str:
        where = f", where {self.where[0]} = {self.where[1]}" if self.where else ""
        return f"PlantedModel({self.mode} {self.amount:.4g}{where}, base {self.base!r})"


def flip_share(error: float, target: float) -> float:
    """The share of answers to flip so that a classifier with ``error`` errs at ``target`` (a flipped right answer
    becomes wrong, a flipped wrong one right: ``error + q (1 - 2 error) = target``), within [0, 1].

    >>> round(flip_share(0.02, 0.023), 6), flip_share(0.1, 0.05), flip_share(0.5, 0.6)
    (0.003125, 0.0, 1.0)
    """
    if target <= error:
        return 0.0
    if error >= 0.5:
        return 1.0
    return float(min(1.0, (target - error) / (1 - 2 * error)))


def flip_threshold(u: np.ndarray, share: float) -> float:
    """The threshold on the rows' numbers (:func:`row_uniform`) under which about ``share`` of the rows ``u`` fall,
    and at least one: with few distinct feature rows (STAGGER has 27) the numbers repeat, and a threshold of
    ``share`` itself could catch none of them.

    >>> u = np.array([0.5, 0.5, 0.9, 0.9])
    >>> flip_threshold(u, 0.001), flip_threshold(u, 0.5), flip_threshold(u, 1.0), flip_threshold(u, 0.0)
    (0.5, 0.5, 1.0, -1.0)
    """
    if share <= 0 or not len(u):
        return -1.0
    if share >= 1:
        return 1.0
    k = max(1, round(share * len(u)))
    return float(np.sort(u)[k - 1])


def scale_for_mae(predicted: np.ndarray, y: np.ndarray, z: np.ndarray, target: float) -> float:
    """The ``s >= 0`` with ``mean |predicted + s z - y| = target`` (bisection; 0 when the MAE is there already).

    >>> y = np.zeros(4); p = np.zeros(4)
    >>> round(scale_for_mae(p, y, np.array([1.0, -1.0, 2.0, -2.0]), 3.0), 6)
    2.0
    """
    def mae(s: float) -> float:
        return float(np.mean(np.abs(predicted + s * z - y)))

    if mae(0.0) >= target or not np.any(z):
        return 0.0
    low, high = 0.0, 1.0
    while mae(high) < target:
        high *= 2
        if high > 1e9:
            return high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if mae(mid) < target else (low, mid)
    return (low + high) / 2


# --- the loop with a plant ---------------------------------------------------------------------------------------


@dataclass
class Plant:
    """The planted candidate as published: its version, where and why, and how it was calibrated."""

    version: str
    kind: str
    at: int
    trigger_id: str | None
    change_point: str | None
    calibration: dict[str, Any]


class PlantedLoop(StagedLoop):
    """The staged loop with a declared segment, per-request latency and failures, and one planted candidate."""

    MODEL_TOML = 'segments = ["region"]'

    def __init__(self, stream: Stream, *, delay: int, db: _Database, kind: str, settings: str, answer: str = "trigger",
                 seed: int = 0) -> None:
        super().__init__(stream, delay=delay, db=db, extra_toml=SETTINGS[settings], name=settings,
                         label=f"({settings}) Pitstop staged, plant {kind}")
        if kind not in KINDS or answer not in ANSWERS:
            msg = f"unknown plant {kind!r} or answer {answer!r}: one of {', '.join(KINDS)}; one of {', '.join(ANSWERS)}"
            raise ValueError(msg)
        self.kind = kind
        self.answer = "none" if kind == "worse" else answer
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.latency_ms = rng.uniform(*LATENCY_MS, len(self.ys))
        self.fail_u = rng.random(len(self.ys))
        self.drift_point = stream.drift_points[0] if stream.drift_points else None
        self.drift_end = stream.drift_ends[0] if stream.drift_ends else None
        self.plant: Plant | None = None
        self.last_step = 0
        self.dropped: list[dict[str, Any]] = []

    # --- what a server records ---------------------------------------------------------------------------------

    def _served(self, version: str, i: int, event: PredictionEvent) -> PredictionEvent:
        planted = self.plant is not None and version == self.plant.version
        latency = float(self.latency_ms[i]) + (SLOW_MS if planted and self.kind == "slow40" else 0.0)
        segment = {"region": region(i)}
        if planted and self.kind == "fail3" and self.fail_u[i] < FAIL_SHARE:
            return replace(event, prediction="error", probabilities=None, error=FAILED_REQUEST, latency_ms=latency,
                           segment=segment)
        return replace(event, latency_ms=latency, segment=segment)

    def _events(self, start: int, end: int, version: str, fitted: Any | None) -> list[PredictionEvent]:
        events = super()._events(start, end, version, fitted)
        return [replace(e, segment={"region": region(i)}, latency_ms=float(self.latency_ms[i]))
                for i, e in zip(range(start, end), events, strict=True)]

    # --- planting ----------------------------------------------------------------------------------------------

    def _handle(self, trigger: Any, end: int) -> None:
        """The plant answers the first trigger of the drift; every other trigger is closed unhandled, with the
        outcome "unchanged" (no candidate competes with the plant, and an open trigger would count as a training
        running for a day and hold back the next one)."""
        if (self.plant is None and self.kind != "worse" and self.drift_point is not None
                and trigger.kind in TRIGGER_KINDS and index_of(trigger.decided_at) >= self.drift_point):
            self._plant(end, trigger)
            if self.answer == "trigger":
                return
        self.dropped.append({"at": end, "trigger": trigger.trigger_id, "kind": trigger.kind})
        with self.store.pool.connection() as conn, conn.transaction():
            conn.execute(_RECORD, (trigger.trigger_id, MODEL, "unchanged",
                                   "not handled: bench/rollout_safety.py runs one candidate, the plant"))

    def _stop_after(self, step: int) -> bool:
        self.last_step = step
        if step % 5_000 == 0:
            _log(f"  ... {step:,} samples played")
        if self.plant is None:
            if self.kind == "worse" and step >= STABLE_AT:
                self._plant(step, None)
            elif (self.kind != "worse" and self.drift_point is not None
                  and step >= self.drift_point + FALLBACK_AFTER):
                self._plant(step, None)
            return False
        return self._story_over(step)

    def _current_champion(self) -> str:
        deployment = self._deployment()
        return deployment.champion if deployment is not None else self._champion_version()

    def _plant(self, step: int, trigger: Any | None) -> None:
        """Build the plant (trained on the rows since ``trigger``'s change point, labelled at its decision), register
        it and publish its candidate event: as the trigger's answer (its id and change point in the lineage) when
        the plant answers it, else as a version registered without a trigger."""
        cutoff = trigger.decided_at if trigger is not None else at(step)
        known = min(step, index_of(cutoff)) - self.delay  # samples 0 .. known - 1 have labels at the cutoff
        champion = self._model(self._current_champion())
        if self.kind == "worse":
            fitted, rows, calibration = self._worse(champion, known)
        else:
            change = trigger.change_point if trigger is not None else None
            first = index_of(change) if change is not None else self.drift_point
            first = max(0, min(first or 0, known - MIN_TRAIN_ROWS))
            fitted, rows, calibration = self._fresh(champion, first, known)
        fitted_for = trigger
        if self.answer != "trigger":
            trigger = None  # the same model, published without the link
        change_point = trigger.change_point.isoformat() if trigger is not None and trigger.change_point else None
        calibration["trained_for"] = fitted_for.trigger_id if fitted_for is not None else None
        version = f"{cutoff.astimezone(UTC):%Y%m%dT%H%MZ}-plant-{self.kind}"
        lineage = {"cutoff": cutoff.isoformat(), "since": None, "change_point": change_point,
                   "train_rows": len(rows), "features": list(self.X.columns),
                   "trigger_id": trigger.trigger_id if trigger is not None else None,
                   "trigger_kind": trigger.kind if trigger is not None else None,
                   "trainer": f"bench.rollout_safety:{self.kind}", "planted": calibration}
        self._publish(version, fitted, rows, lineage, trigger)
        self.plant = Plant(version=version, kind=self.kind, at=step,
                           trigger_id=trigger.trigger_id if trigger is not None else None,
                           change_point=change_point, calibration=calibration)
        log.info("step %d: planted %s (%s)", step, version, calibration)

    def _worse(self, champion: Any, known: int) -> tuple[Any, list[int], dict[str, Any]]:
        """The champion with its answers spoilt to 1.15 x its error on its last labelled requests."""
        rows = list(range(max(INITIAL, known - CALIBRATION_ROWS), known))
        X, y = self.X.iloc[rows], np.asarray([self.ys[i] for i in rows])
        predicted = np.asarray(champion.predict(X))
        salt = f"worse/{self.seed}"
        if self.stream.task == "classification":
            error = float(np.mean(predicted != y))
            share = max(flip_share(error, WORSE_RATIO * error), MIN_FLIP)
            threshold = flip_threshold(row_uniform(X, salt), share)
            fitted = PlantedModel(champion, task="classification", mode="flip", amount=threshold, salt=salt)
            planted_error = float(np.mean(np.asarray(fitted.predict(X)) != y))
            return fitted, rows, {"champion_error": error, "flip_share": share, "flip_threshold": threshold,
                                  "flipped": float(np.mean(row_uniform(X, salt) <= threshold)),
                                  "planted_error": planted_error,
                                  "ratio": planted_error / error if error else None, "rows": len(rows)}
        mae = float(np.mean(np.abs(predicted - y)))
        z = norm.ppf(np.clip(row_uniform(X, salt), 1e-12, 1 - 1e-12))
        scale = scale_for_mae(predicted, y, z, WORSE_RATIO * mae)
        fitted = PlantedModel(champion, task="regression", mode="noise", amount=scale, salt=salt)
        planted_mae = float(np.mean(np.abs(np.asarray(fitted.predict(X)) - y)))
        return fitted, rows, {"champion_mae": mae, "noise_sd": scale, "planted_mae": planted_mae,
                              "ratio": planted_mae / mae if mae else None, "rows": len(rows)}

    def _fresh(self, champion: Any, first: int, known: int) -> tuple[Any, list[int], dict[str, Any]]:
        """A model trained the pipeline's way on the rows since the change; for ``segment``, spoilt on region r0."""
        rows = list(range(first, known))
        X, y = self.X.iloc[rows], pd.Series([self.ys[i] for i in rows])
        base = gradient_boosting(self.stream.task).fit(X, y, np.ones(len(rows)))
        settled = [i for i in rows if self.drift_end is None or i >= self.drift_end] or rows
        champion_answers = np.asarray(champion.predict(self.X.iloc[settled]))
        settled_y = np.asarray([self.ys[i] for i in settled])
        # the base's own error out of sample: a model on the first 75% of the rows, judged on the rest
        split = int(len(rows) * 0.75)
        aux = gradient_boosting(self.stream.task).fit(X.iloc[:split], y.iloc[:split], np.ones(split))
        held_answers, held_y = np.asarray(aux.predict(X.iloc[split:])), y.iloc[split:].to_numpy()
        calibration: dict[str, Any] = {"train_rows": len(rows), "first": first, "known": known}
        if self.stream.task == "classification":
            champion_error = float(np.mean(champion_answers != settled_y))
            base_error = float(np.mean(held_answers != held_y))
            calibration.update(champion_error=champion_error, base_error=base_error)
        else:
            champion_error = float(np.mean(np.abs(champion_answers.astype(float) - settled_y.astype(float))))
            base_error = float(np.mean(np.abs(held_answers - held_y)))
            calibration.update(champion_mae=champion_error, base_mae=base_error)
        if self.kind != "segment":
            return base, rows, calibration
        salt = f"segment/{self.seed}"
        if self.stream.task == "classification":
            target = min(champion_error + SEGMENT_POINTS, 0.99)
            share = flip_share(base_error, target)
            harmed = (X["region"].astype(str) == HARMED).to_numpy()
            threshold = flip_threshold(row_uniform(X[harmed], salt), share)
            fitted = PlantedModel(base, task="classification", mode="flip", amount=threshold, salt=salt,
                                  where=("region", HARMED))
            calibration.update(segment=HARMED, target_error=target, flip_share=share, flip_threshold=threshold,
                               flipped=float(np.mean(row_uniform(X[harmed], salt) <= threshold)),
                               expected_overall=0.8 * base_error + 0.2 * target)
        else:
            target = SEGMENT_MAE_RATIO * champion_error
            bias = scale_for_mae(held_answers, held_y, np.ones(len(held_y)), target)
            fitted = PlantedModel(base, task="regression", mode="bias", amount=bias, salt=salt,
                                  where=("region", HARMED))
            calibration.update(segment=HARMED, target_mae=target, bias=bias,
                               expected_overall=0.8 * base_error + 0.2 * target)
        return fitted, rows, calibration

    def _publish(self, version: str, fitted: Any, rows: list[int], lineage: dict[str, Any], trigger: Any | None
                 ) -> None:
        """Register the plant at stage candidate with its training profile and put its candidate event in the
        outbox, in one transaction, as the retrain pipeline does; the trigger it answers gets its outcome."""
        X = self.X.iloc[rows]
        predictions = np.asarray(fitted.predict(X)).tolist()
        scores = None
        if self.model.multiclass:
            scores = np.asarray(fitted.predict_proba(X)).max(axis=1).tolist()
        elif self.stream.task == "classification":
            scores = np.asarray(fitted.predict_proba(X))[:, list(fitted.classes_).index(1)].tolist()
        columns = reference_columns(self.model, features={name: X[name].tolist() for name in X.columns},
                                    predictions=predictions, scores=scores, labels=[self.ys[i] for i in rows])
        profile = build_profile(MODEL, version, columns, series_kinds(self.model), source="planted candidate")
        artifact = serialise(fitted, "skops" if isinstance(fitted, TabularModel) else "pickle")
        sentence = f"{version}: planted {self.kind} candidate (bench/rollout_safety.py)"
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            entry = ModelVersion(model_name=MODEL, version=version, stage="candidate",
                                 trigger_id=trigger.trigger_id if trigger is not None else None,
                                 trainer=lineage["trainer"], lineage=lineage, metrics={})
            ref = self.registry.register(cur, entry, artifact, reason=sentence)
            enqueue(cur, f"{MODEL}/{version}", topics.CANDIDATES, MODEL, candidate_event(ref, "candidate", [], lineage))
            if trigger is not None:
                cur.execute(_RECORD, (trigger.trigger_id, MODEL, "candidate", sentence))
            install_profile(conn, self.updater, profile)

    # --- the plant's story ------------------------------------------------------------------------------------

    def _story_over(self, step: int) -> bool:
        assert self.plant is not None
        rollout = self.store.rows("SELECT state FROM rollouts WHERE model_name = %s AND challenger = %s "
                                  "ORDER BY started_at DESC LIMIT 1", (MODEL, self.plant.version))
        if rollout:
            return rollout[0][0] in ENDED
        shadow = self.store.rows("SELECT status, decided_at FROM shadows WHERE model_name = %s AND version = %s",
                                 (MODEL, self.plant.version))
        if not shadow:
            # the candidate never started a shadow (refused, failed to load): nothing more will happen
            return any(c["version"] == self.plant.version for c in self.candidates)
        status, decided_at = shadow[0]
        if status in ("failed", "expired"):
            return True
        return status == "passed" and decided_at is not None and step - index_of(decided_at) > HELD_AFTER

    def result(self) -> dict[str, Any]:
        """Where the plant ended, the highest share it served, and the samples from its candidate to the end."""
        if self.plant is None:
            return {"harmful": self.kind in PLANTS, "outcome": "not planted", "max_share": 0.0, "reached_full": False,
                    "samples": None,
                    "sentence": "no plant was published before the stream's end", "version": None}
        version = self.plant.version
        candidate_at = next((c["at"] for c in self.candidates if c["version"] == version), None)
        start = next((c for c in self.candidates if c["version"] == version), None)
        shadow = self.store.rows("SELECT status, sentence, decided_at FROM shadows WHERE model_name = %s "
                                 "AND version = %s", (MODEL, version))
        # the whole row as JSON: the urgency column is new (migration 014), read when it is there
        rollout = [(r["state"], r["share"], r["sentence"], r["ended_at"], r.get("urgency")) for (r,) in self.store.rows(
            "SELECT to_jsonb(r) FROM rollouts r WHERE model_name = %s AND challenger = %s ORDER BY started_at DESC "
            "LIMIT 1", (MODEL, version))]
        events = self.store.rows("SELECT kind, share, sentence, evidence, at FROM rollout_events "
                                 "WHERE model_name = %s AND version = %s ORDER BY event_id", (MODEL, version))
        shares = [float(s) for k, s, _, _, _ in events if s is not None and k in ("step", "holding", "promoted")]
        max_share = max(shares, default=0.0)
        end_at, cause, where = self.last_step, None, ""
        if rollout:
            state, share, sentence, ended_at, urgency = rollout[0]
            where = "ramp"
            reached = [float(s) for k, s, _, _, _ in events if k in ("step", "holding") and s is not None]
            last_share = reached[-1] if reached else 0.0
            if ended_at is not None:
                end_at = index_of(datetime.fromisoformat(ended_at))
            if state == "rolled_back":
                findings = [e for k, _, _, e, _ in events if k == "rolled_back"]
                cause = ", ".join((findings[-1] or {}).get("findings", [])) if findings else None
                outcome = f"ramp rolled back at {last_share:.0%}"
            elif state == "kept_champion":
                outcome = f"champion kept at {last_share:.0%}"
            elif state == "abandoned":
                outcome, where = "abandoned (no ramp)", "plan"
            elif state == "promoted":
                outcome = "PROMOTED"
            elif state == "holding":
                outcome = "HOLDING at 100% at the end"
            else:
                outcome = f"still open at {float(share):.0%} ({state})"
            extra = {"urgency": urgency}
        elif shadow:
            status, sentence, decided_at = shadow[0]
            where = "shadow"
            if decided_at is not None and status in ("failed", "expired"):
                end_at = index_of(decided_at)
            outcome = {"failed": "shadow failed", "expired": "shadow expired", "passed": "passed shadow, no ramp",
                       }.get(status, f"shadow still {status} at the end")
            extra = {}
        else:
            outcome = f"candidate {start['start'] if start else 'not taken up'}"
            sentence = start["sentence"] if start else "the candidate event was not consumed"
            extra = {}
        reached_full = max_share >= 1.0 or (bool(rollout) and rollout[0][0] in ("holding", "promoted"))
        return {"harmful": self.kind in PLANTS, "version": version, "planted_at": self.plant.at,
                "candidate_at": candidate_at,
                "trigger_id": self.plant.trigger_id, "change_point": self.plant.change_point,
                "calibration": self.plant.calibration, "outcome": outcome, "stage": where, "cause": cause,
                "max_share": max_share, "reached_full": reached_full,
                "samples": end_at - candidate_at if candidate_at is not None else None, "ended_at": end_at,
                "sentence": sentence, "shadow": shadow[0][1] if shadow else None,
                "events": [{"kind": k, "share": s, "at": index_of(t), "sentence": sen} for k, s, sen, _, t in events],
                "dropped_triggers": len(self.dropped), "errors": self.errors.records, **extra}


# --- running and reporting ---------------------------------------------------------------------------------------


_SKIPPED: dict[str, tuple[int, int]] = {}


def prepare(stream: Stream, keep_stable: int | None) -> Stream:
    """The stream as the runs play it: the middle of its first stable stretch left out (samples ``keep_stable`` to
    3,000 before the first drift; a concept's samples are independent draws, so nothing shows where the stretch was
    cut, and the runs spend less time before the drift), then each sample's region among its features (so that a
    model can act on it; the region follows the sample's new position, as the user does)."""
    samples = list(stream.samples)
    points, ends = stream.drift_points, stream.drift_ends
    if keep_stable is not None and points and points[0] - 3_000 > keep_stable:
        cut = points[0] - 3_000 - keep_stable
        samples = samples[:keep_stable] + samples[keep_stable + cut:]
        points, ends = tuple(p - cut for p in points), tuple(e - cut for e in ends)
        _SKIPPED[stream.name] = (keep_stable, keep_stable + cut)
    samples = [({**x, "region": region(i)}, y) for i, (x, y) in enumerate(samples)]
    return replace(stream, samples=samples, drift_points=points, drift_ends=ends)


def stream_skips(stream: Stream) -> list[int] | None:
    """The original samples a run left out, [first, last)."""
    skipped = _SKIPPED.get(stream.name)
    return list(skipped) if skipped else None


def run_one(stream: Stream, kind: str, answer: str, settings: str, *, delay: int, database_url: str, seed: int,
            code: dict[str, Any] | None = None) -> dict[str, Any]:
    """One plant through one staged run on a fresh schema; ``code`` is recorded with it."""
    started = time.perf_counter()
    with database(database_url) as db:
        loop = PlantedLoop(stream, delay=delay, db=db, kind=kind, settings=settings, answer=answer, seed=seed)
        try:
            loop.run()
            row = loop.result()
        finally:
            loop.close()
    return {"stream": stream.name, "plant": kind, "answer": loop.answer, "settings": settings,
            "seconds": time.perf_counter() - started, "skipped": stream_skips(stream),
            "played": loop.last_step, "code": code or _code_state(), **row}


def _short(text: str | None, limit: int = 150) -> str:
    text = (text or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = ["| stream | plant | answers | settings | path | outcome | cause | max share | samples "
             "| deciding sentence |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        samples = f"{r['samples']:,}" if r.get("samples") is not None else "-"
        outcome = f"**{r['outcome']}**" if r.get("reached_full") and r.get("harmful") else r["outcome"]
        setting = f"{r['settings']} ({SETTING_LABELS[r['settings']]})"
        answers = "the drift's trigger" if r.get("trigger_id") else "no trigger"
        path = "urgent" if r.get("urgency") or "passed early" in (r.get("shadow") or "") else "cautious"
        lines.append(f"| {r['stream']} | {r['plant']} | {answers} | {setting} | {path} | {outcome} | "
                     f"{r.get('cause') or '-'} | {r['max_share']:.0%} | {samples} | {_short(r.get('sentence'))} |")
    return "\n".join(lines)


def _code_state() -> dict[str, Any]:
    """The commit and the uncommitted changes of the code, read when the process starts: it imports Pitstop's
    modules once, so later edits on disk (others work on feedback/) do not change what its runs measure."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""
    diff = git("diff", "HEAD", "--", "feedback", "retrain_worker", "pitstop", "bench/_pitstop_loop.py")
    return {"commit": git("rev-parse", "HEAD").strip(), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest(),
            "dirty": git("status", "--short").splitlines()}


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _runs(values: Sequence[str]) -> list[tuple[str, str]]:
    """``kind`` or ``kind:answer`` items, comma-separated, as (kind, answer) pairs."""
    out = []
    for item in (p.strip() for v in values for p in v.split(",") if p.strip()):
        kind, _, answer = item.partition(":")
        answer = answer or ("none" if kind == "worse" else "trigger")
        if kind not in KINDS or answer not in ANSWERS:
            msg = f"unknown plant {item!r}: one of {', '.join(KINDS)}, optionally :{' or :'.join(ANSWERS)}"
            raise SystemExit(msg)
        out.append((kind, answer))
    return out


def _settings(values: Sequence[str]) -> list[str]:
    out = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if any(p not in SETTINGS for p in out):
        msg = f"unknown settings in {out}: ds, dsf"
        raise SystemExit(msg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("streams", nargs="*", default=list(DEFAULT_STREAMS), help="S1..S9 (default S1 S2 S4 S5 S6)")
    parser.add_argument("--plants", action="append", default=[],
                        help=f"comma-separated kind[:answer], kinds {', '.join(KINDS)}, answers {', '.join(ANSWERS)} "
                             f"(default {','.join(DEFAULT_RUNS)})")
    parser.add_argument("--keep-stable", type=int, default=KEEP_STABLE,
                        help=f"the first stable stretch is cut from here to 3,000 before the drift (default "
                             f"{KEEP_STABLE:,}; 0: play it whole)")
    parser.add_argument("--settings", action="append", default=[], help="ds (defaults), dsf (fast); default both")
    parser.add_argument("--delay", type=int, default=500, help="label delay in samples (default 500)")
    parser.add_argument("--samples", type=int, default=None, help="cut every stream here (default: per stream)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", default=None, help="else PITSTOP_DATABASE_URL, else a server of its own")
    parser.add_argument("--json", type=Path, default=None, help="write every run's record here")
    args = parser.parse_args(argv)
    runs = _runs(args.plants or list(DEFAULT_RUNS))
    settings = _settings(args.settings) or list(SETTINGS)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    code = _code_state()
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    with database(args.database_url) as server:
        for name in args.streams:
            n = args.samples or SAMPLES.get(name.upper(), DEFAULT_SAMPLES)
            stream = prepare(load_stream(name, n), args.keep_stable or None)
            for setting in settings:
                for kind, answer in runs:
                    what = f"{stream.name} {kind}:{answer} ({setting})"
                    _log(f"{what}: {len(stream.samples):,} samples at most")
                    row = run_one(stream, kind, answer, setting, delay=args.delay, database_url=server.url,
                                  seed=args.seed, code=code)
                    rows.append(row)
                    _log(f"{what}: {row['outcome']}, max share {row['max_share']:.0%}, "
                         f"{row['played']:,} samples played, {row['seconds']:.0f} s"
                         + ("  <<< REACHED 100% >>>" if row["reached_full"] else ""))
                    if args.json is not None:  # written after every run: a long run's partial results survive
                        args.json.write_text(json.dumps({"delay": args.delay, "rows": rows}, indent=1, default=str))
    print(table(rows))
    failures = [r for r in rows if r["reached_full"] and r["harmful"]]
    states = sorted({(r["code"]["commit"][:7], r["code"]["diff_sha256"][:12]) for r in rows})
    print(f"\n{len(rows)} runs, {time.perf_counter() - began:.0f} s; code (commit, sha256 of the uncommitted diff of "
          f"feedback/, retrain_worker/, pitstop/, bench/_pitstop_loop.py): {', '.join(f'{c} {d}' for c, d in states)}")
    for r in rows:
        if not r["harmful"] and not r["reached_full"]:
            print(f"note: the control on {r['stream']} ({r['answer']}, {r['settings']}) did not reach 100% either "
                  f"({r['outcome']}): there a plant's stop does not show that a rule caught it")
    for r in failures:
        print(f"\nFAILURE: {r['stream']} {r['plant']}:{r['answer']} ({r['settings']}) REACHED 100%: {r['outcome']}: "
              f"{r['sentence']}")
    if not failures:
        print("no harmful plant reached 100% on any stream")
    return 1 if failures else 0


if __name__ == "__main__":
    # run as bench.rollout_safety, so that the pickled plants name their class by its module, not "__main__"
    from bench import rollout_safety

    sys.exit(rollout_safety.main())
