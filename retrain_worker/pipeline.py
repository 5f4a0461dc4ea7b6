"""One retrain, from a trigger to its outcome: dataset, checks, training, gates, registry, candidate event.

The outcome (a candidate, a rejection with its reasons, or a failure) is recorded in ``retrain_outcomes`` in the
transaction that registers the version and writes the candidate event to the outbox, so a trigger has an
outcome if and only if its effects are committed; handling a trigger that already has one returns it and does
nothing else. One training per model runs at a time across every worker process (a session advisory lock), and
a crash mid-training leaves the champion untouched: nothing is written before the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import psycopg

from feedback import topics
from feedback.alerts import Alert, AlertSink
from feedback.config import ModelConfig, MonitoringConfig
from feedback.monitoring import performance
from feedback.monitoring.evaluate import tested_level
from feedback.monitoring.profile import ReferenceProfile, build_profile, category_key
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns, series_kinds
from feedback.outbox import enqueue
from feedback.registry.artifacts import serialise
from feedback.registry.versions import GateRecord, ModelVersion, Registry
from feedback.store import FeedbackStore, lock_key
from feedback.triggers.rules import CHANGE_KINDS
from retrain_worker import holdout
from retrain_worker.dataset import SEGMENT_PREFIX, SNAPSHOT, Dataset, DatasetSpec, load_dataset, load_stretches
from retrain_worker.gates import (
    EvalSet,
    GateConfig,
    GateResult,
    class_columns,
    multiclass_log_loss,
    run_gates,
    top_label_confidence,
    verdict,
)
from retrain_worker.intake import TriggerEvent
from retrain_worker.trainers import TabularModel, TrainerError, train_with_budget
from retrain_worker.validation import DataRules, failures, validate
from retrain_worker.weights import WeightPolicy, label_recency_weights

log = logging.getLogger(__name__)

#: "unchanged": a pool look that found no former champion better than the champion (nothing trained)
Result = Literal["candidate", "rejected", "failed", "unchanged"]
RETRAIN_LOCK_CLASS = 0x5254  # advisory lock class of "a model's training"

_OUTCOME = "SELECT outcome, sentence FROM retrain_outcomes WHERE trigger_id = %s"
_RECORD = """
INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, sentence) VALUES (%s, %s, %s, %s)
ON CONFLICT (trigger_id) DO NOTHING
"""
_PROGRESS = """
INSERT INTO retrain_progress (trigger_id, model_name, worker, step, detail) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (trigger_id) DO UPDATE SET worker = excluded.worker, step = excluded.step, detail = excluded.detail,
    updated_at = now()
"""
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class ModelBusy(Exception):  # noqa: N818 - a state, not a failure
    """Another worker trains this model right now; the trigger waits (its offset is not committed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of a trigger."""

    trigger_id: str
    model_name: str
    result: Result
    sentence: str
    version: str | None = None
    gates: tuple[GateResult, ...] = ()
    lineage: Mapping[str, Any] = field(default_factory=dict)


def version_name(trigger: TriggerEvent) -> str:
    """A deterministic version for the candidate of ``trigger`` (a retry registers nothing twice).

    >>> t = TriggerEvent(trigger_id="churn/drift/v1/2026-03-01T17:00:00Z", model_name="churn", model_version="v1",
    ...                  kind="drift", urgency="elevated", decided_at=datetime(2026, 3, 1, 20, tzinfo=UTC),
    ...                  change_point=None, labels_since_change=None, reason="r", requested_by=None)
    >>> version_name(t)
    '20260301T2000Z-drift-d9ffb6'
    """
    digest = hashlib.sha256(trigger.trigger_id.encode()).hexdigest()[:6]
    return f"{trigger.decided_at.astimezone(UTC):%Y%m%dT%H%MZ}-{trigger.kind}-{digest}"


def gate_config(model: ModelConfig, *, champion_measured: bool) -> GateConfig:
    """The model's gate thresholds; the latency ratio needs the champion's latency measured the same way."""
    g = model.retrain.gates
    floors = ({"floor_auc": g.floor} if model.task == "classification" else {"floor_r2": g.floor}) \
        if g.floor is not None else {}
    return GateConfig(max_ratio=g.max_ratio, min_improvement=g.min_improvement, leakage_ratio=g.leakage_ratio,
                      leakage_min_gain=g.leakage_min_gain,
                      segment_epsilon=g.segment_epsilon, segment_alpha=g.segment_alpha,
                      calibration_tolerance=g.calibration_tolerance,
                      latency_budget_ms_per_row=g.latency_budget_ms,
                      **({} if champion_measured else {"max_latency_ratio": None}), **floors)


class RetrainPipeline:
    """Answers triggers for the models of ``config`` against one store."""

    def __init__(self, store: FeedbackStore, config: MonitoringConfig, *, registry: Registry | None = None,
                 progress: Callable[[str], None] | None = None, alerts: AlertSink | None = None) -> None:
        self.store = store
        self.alerts = alerts
        self.frozen: holdout.Holdout | None = None
        self.config = config
        self.registry = registry or Registry()
        self.progress = progress or (lambda step: log.info("%s", step))

    def handle(self, trigger: TriggerEvent) -> Outcome:
        """Train, gate and register a candidate for ``trigger``; :class:`ModelBusy` when another worker trains
        the model. Returns the stored outcome when the trigger has one already."""
        model = self.config.models.get(trigger.model_name)
        with self.store.pool.connection() as lock:
            if not lock.execute(f"SELECT pg_try_advisory_lock(%s, {lock_key()})",
                                (RETRAIN_LOCK_CLASS, trigger.model_name)).fetchone()[0]:
                msg = f"{trigger.model_name} is being trained by another worker"
                raise ModelBusy(msg)
            try:
                done = lock.execute(_OUTCOME, (trigger.trigger_id,)).fetchone()
                if done is not None:
                    return Outcome(trigger_id=trigger.trigger_id, model_name=trigger.model_name, result=done[0],
                                   sentence=done[1])
                if model is None:
                    return self._record(trigger, "failed", f"model {trigger.model_name!r} is not configured here")
                if trigger.kind == "pool":
                    return self._pool_look(trigger, model)
                return self._retrain(trigger, model)
            finally:
                lock.execute(f"SELECT pg_advisory_unlock(%s, {lock_key()})", (RETRAIN_LOCK_CLASS, trigger.model_name))

    def give_up(self, trigger: TriggerEvent, reason: str) -> Outcome:
        """Record ``trigger`` as failed with ``reason`` (after its tries ran out)."""
        return self._record(trigger, "failed", reason)

    def _retrain(self, trigger: TriggerEvent, model: ModelConfig) -> Outcome:
        self.frozen = None
        cfg = model.retrain
        # a refresh trains on the current episode's rows: it carries the episode's change point, or none
        change = trigger.change_point if trigger.kind in CHANGE_KINDS or trigger.kind == "refresh" else None
        with self.store.pool.connection() as conn:
            with conn.cursor() as cur:
                champion = self.registry.champion(cur, model.name)
                champion_model = self.registry.load(cur, champion) if champion is not None else None
                current_holdout = holdout.latest(cur, model.name)
            spec = DatasetSpec(
                model_name=model.name, cutoff=trigger.decided_at,
                since=trigger.decided_at - timedelta(seconds=cfg.history_s), change_point=change,
                test_share=cfg.test_share, min_test_rows=cfg.min_test_rows,
                unseen_after=_trained_until(champion),
                weights=WeightPolicy(scheme=cfg.weighting, half_life_s=cfg.half_life_s, window_s=cfg.window_s,
                                     before_change=cfg.before_change, before_change_factor=cfg.before_change_factor),
            )
            self._step(trigger, "loading", "loading the point-in-time dataset")
            dataset = load_dataset(conn, spec, progress=lambda n: self._step(trigger, "loading", f"{n:,} rows loaded"))
        held = holdout.plan(dataset, current_holdout, rows=cfg.holdout_rows,
                            refresh=timedelta(seconds=cfg.holdout_refresh_s),
                            max_age=timedelta(seconds=cfg.holdout_max_age_s), min_rows=cfg.min_test_rows,
                            min_train_rows=cfg.min_train_rows, trigger_id=trigger.trigger_id)
        dataset = replace(dataset, held_out=held.exclude)
        if held.stale is not None:
            log.warning("%s", held.stale)
            if self.alerts is not None:
                self.alerts.send(Alert.create(model_name=model.name, kind="holdout_stale", sentence=held.stale,
                                              at=trigger.decided_at, key=trigger.trigger_id))
        checks = validate(dataset, task=model.task, rules=DataRules(min_train_rows=cfg.min_train_rows,
                                                                     min_test_rows=cfg.min_test_rows),
                          champion_features=(champion.lineage.get("features") if champion else None))
        bad_data = failures(checks)
        lineage = {**dataset.lineage(), "trigger_id": trigger.trigger_id, "trigger_kind": trigger.kind,
                   "trainer": cfg.trainer, "checks": [c.sentence for c in checks],
                   "holdout": held.lineage(trigger.decided_at)}
        if bad_data is not None:
            return self._record(trigger, "rejected", f"data checks failed: {bad_data}", lineage=lineage)
        self.frozen = held.new  # stored with the outcome
        train, test = dataset.train, dataset.test
        X, y = train[list(dataset.features)], train["label"]
        self._step(trigger, "training", f"training {cfg.trainer} on {len(train):,} rows")
        try:
            challenger = train_with_budget(cfg.trainer, model.task, X, y, train["weight"].to_numpy(),
                                           budget_s=cfg.budget_s)
            challenger, half_life = self._recency(trigger, model, dataset, challenger, lineage)
        except TrainerError as exc:
            return self._record(trigger, "failed", str(exc), lineage=lineage)
        shown = f" and {len(held.gate_on):,} held-out rows" if held.gate_on is not None else ""
        self._step(trigger, "evaluating", f"evaluating on {len(test):,} recent rows{shown}")
        error, accuracy = production_best(model, dataset.frame[dataset.frame["predicted_at"] < dataset.test_start]
                                          if dataset.test_start is not None else dataset.frame, len(test))
        eval_set = replace(self._eval_set(model, dataset, test, challenger, champion_model),
                           champion_reference_error=error, champion_reference_accuracy=accuracy)
        sets = [eval_set]
        frames = [("recent", test)]
        if held.gate_on is not None and trigger.kind == "refresh":
            # a refresh follows the newest concept, judged on the newest labels: a held-out set frozen weeks ago
            # holds an older one (measured: drift everywhere, S3, failed two refreshes on it that were better)
            lineage["holdout_gated"] = False
        elif held.gate_on is not None:
            sets.append(replace(self._eval_set(model, dataset, held.gate_on, challenger, champion_model,
                                               name="holdout"),
                                champion_reference_error=error, champion_reference_accuracy=accuracy))
            frames.append(("holdout", held.gate_on))
        config = gate_config(model, champion_measured=champion_model is not None)
        pooled = self._from_pool(trigger, model, dataset, frames, sets, config, lineage)
        if pooled is not None:
            return pooled
        results = run_gates(model.task, sets, config)
        passed, summary = verdict(results)
        version = version_name(trigger)
        if trigger.kind == "refresh":
            kept = _refresh_kept(model, eval_set, passed, summary)
            if kept is not None:  # a refresh that is not clearly better changes nothing, and is no rejection
                return self._record(trigger, "unchanged", f"refresh: {kept}: the champion stays", lineage=lineage)
        if not passed:
            return self._record(trigger, "rejected", f"{version}: {summary}", version=version, gates=results,
                                lineage=lineage, model_object=challenger, stage="rejected")
        stage = "champion" if cfg.promotion == "after-gates" else "candidate"
        lineage["expected"] = _tested_level(model, eval_set)
        final, rows = self._final_fit(trigger, model, dataset, challenger, half_life, lineage)
        if isinstance(final, Outcome):
            return final
        profile = training_profile(model, version, dataset, final, rows=rows,
                                   source=f"training data of {trigger.trigger_id}")
        return self._record(trigger, "candidate", f"{version}: every gate passed ({stage})", version=version,
                            gates=results, lineage=lineage, model_object=final, stage=stage, profile=profile)

    def _recency(self, trigger: TriggerEvent, model: ModelConfig, dataset: Dataset, configured: Any,
                 lineage: dict[str, Any]) -> tuple[Any, float | None]:
        """The recipe's recency: beside the model of the configured weights (``configured``), one trained with
        each half-life in labels of ``recency_search`` (fractions of the training rows); the model with the lowest
        main error on the recent test window, and its half-life in rows (None: the configured weights won). A
        backtest on the newest labels, which no candidate learnt. Raises :class:`TrainerError` as training does."""
        cfg, train, test = model.retrain, dataset.train, dataset.test
        if not cfg.recency_search or len(test) < cfg.min_test_rows:
            return configured, None
        X, y, base = train[list(dataset.features)], train["label"], train["weight"].to_numpy()
        X_test, y_test = test[list(dataset.features)], test["label"].to_numpy()
        scored: list[tuple[float, float | None, Any]] = [
            (float(_main_row_errors(model, configured, X_test, y_test).mean()), None, configured)]
        for fraction in cfg.recency_search:
            h = max(1.0, fraction * len(train))
            self._step(trigger, "training", f"training with a half-life of {h:,.0f} labels")
            fitted = train_with_budget(cfg.trainer, model.task, X, y, base * label_recency_weights(len(train), h),
                                       budget_s=cfg.budget_s)
            scored.append((float(_main_row_errors(model, fitted, X_test, y_test).mean()), h, fitted))
        error, half_life, best = min(scored, key=lambda t: t[0])  # the first (configured) wins a tie
        lineage["recency"] = {"half_life_rows": half_life, "test_errors": {
            ("configured" if h is None else f"{h:.0f} labels"): round(e, 6) for e, h, _ in scored}}
        return best, half_life

    def _final_fit(self, trigger: TriggerEvent, model: ModelConfig, dataset: Dataset, gated: Any,
                   half_life: float | None, lineage: dict[str, Any]) -> tuple[Any, pd.DataFrame] | tuple[Outcome, None]:
        """The model to register and the rows it learnt: with ``final_fit = "all"`` the gated recipe fitted again
        on the training rows and the recent test window (backtest, then refit: the gates judged the recipe on
        rows no model had seen; the registered model learns them too). A refit that does worse on those rows
        than the gated model did unseen is a broken fit: the gated model is kept, and the lineage says so."""
        cfg, train, test = model.retrain, dataset.train, dataset.test
        if cfg.final_fit != "all" or test.empty:
            lineage["final_fit"] = {"rows": len(train), "recent_window": False}
            return gated, train
        rows = dataset.fit_rows
        weights = rows["weight"].to_numpy()
        if half_life is not None:
            weights = weights * label_recency_weights(len(rows), half_life)
        self._step(trigger, "training", f"final fit of the gated recipe on {len(rows):,} rows (with the recent "
                   f"{len(test):,})")
        try:
            final = train_with_budget(cfg.trainer, model.task, rows[list(dataset.features)], rows["label"], weights,
                                      budget_s=cfg.budget_s)
        except TrainerError as exc:
            return self._record(trigger, "failed", f"final fit: {exc}", lineage=lineage), None
        X, y = test[list(dataset.features)], test["label"].to_numpy()
        gated_errors, final_errors = (_row_errors(model, m, X, y) for m in (gated, final))
        refused = _worse_refit(gated_errors, final_errors, cfg.gates.max_ratio)
        if refused is not None:
            lineage["final_fit"] = {"rows": len(train), "recent_window": False, "refused": refused}
            log.warning("trigger %s: final fit refused: %s", trigger.trigger_id, refused)
            return gated, train
        lineage["final_fit"] = {"rows": len(rows), "recent_window": True}
        return final, rows

    def _from_pool(self, trigger: TriggerEvent, model: ModelConfig, dataset: Dataset,
                   frames: list[tuple[str, pd.DataFrame]], fresh_sets: list[EvalSet], config: GateConfig,
                   lineage: dict[str, Any]) -> Outcome | None:
        """A former champion that beats the fresh model on the recent window, proposed again through the same
        gates on the same sets (concepts recur: seasons, campaigns); None when no former champion does, or it
        fails the gates."""
        with self.store.pool.connection() as conn, conn.cursor() as cur:
            pool = [(v, self.registry.load(cur, v))
                    for v in self.registry.past_champions(cur, model.name, limit=model.retrain.pool_size)]
        if not pool:
            return None
        fresh_error = main_error(model.task, fresh_sets[0], "challenger")
        scored = []
        for version, past in pool:
            past_sets = [_beside(self._eval_set(model, dataset, rows, past, None, name=name), f)
                         for (name, rows), f in zip(frames, fresh_sets, strict=True)]
            error = main_error(model.task, past_sets[0], "challenger")
            if error is not None:
                scored.append((error, version.version, version, past_sets))
        lineage["pool"] = {v: e for e, v, _, _ in scored} | {"fresh": fresh_error}
        if not scored or fresh_error is None:
            return None
        error, _, best, best_sets = min(scored, key=lambda t: (t[0], t[1]))
        if error >= fresh_error:  # a new champion either way, gated the same: the lower error is the candidate
            return None
        results = run_gates(model.task, best_sets, config)
        passed, summary = verdict(results)
        label = "log loss" if model.task == "classification" else "MAE"
        why = (f"model pool: former champion {best.version} ({label} {error:.4g}) beats the fresh model "
               f"({label} {fresh_error:.4g}) on the recent window")
        if not passed:
            lineage["pool_rejected"] = f"{why}, but {summary}"
            return None
        return self._propose_again(trigger, model, best, results, lineage, why)

    def _propose_again(self, trigger: TriggerEvent, model: ModelConfig, best: ModelVersion,
                       results: list[GateResult], lineage: dict[str, Any], why: str) -> Outcome:
        """A former champion back as champion (after-gates) or candidate, its event and the outcome: one
        transaction."""
        stage = "champion" if model.retrain.promotion == "after-gates" else "candidate"
        sentence = f"{best.version}: {why}: proposed again, every gate passed ({stage})"
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self.registry.move(cur, model.name, best.version, stage, reason=sentence)  # type: ignore[arg-type]
            again = self.registry.get(cur, model.name, best.version)
            assert again is not None
            enqueue(cur, f"{model.name}/{best.version}@{trigger.trigger_id}", topics.CANDIDATES, model.name,
                    candidate_event(again, stage, results, {**lineage, "proposed_again": True},
                                    trigger_id=trigger.trigger_id))
            cur.execute(_RECORD, (trigger.trigger_id, model.name, "candidate", sentence))
            cur.execute(_PROGRESS, (trigger.trigger_id, model.name, WORKER, "done", f"candidate: {sentence}"))
            self._freeze(cur)
        log.info("trigger %s: candidate: %s", trigger.trigger_id, sentence)
        return Outcome(trigger_id=trigger.trigger_id, model_name=model.name, result="candidate", sentence=sentence,
                       version=best.version, gates=tuple(results), lineage=lineage)

    def _pool_look(self, trigger: TriggerEvent, model: ModelConfig) -> Outcome:
        """A change seen early: the model's former champions scored against the champion on the rows since the
        change point, no training; the best, if it beats the champion and passes the same gates, is proposed
        again at once (a concept that returns needs no new model). Otherwise the outcome is "unchanged".

        Only the rows since the change are loaded with their features; production's best level before the change
        (the leakage gate's reference) is read from the store, bounded by the stretches it scores, in the same
        snapshot: the look's memory no longer grows with the history."""
        self.frozen = None
        cfg, change = model.retrain, trigger.change_point
        if change is None:
            return self._record(trigger, "failed", "a pool look needs the change point")
        history = trigger.decided_at - timedelta(seconds=cfg.history_s)
        spec = DatasetSpec(model_name=model.name, cutoff=trigger.decided_at, since=max(change, history),
                           change_point=change)
        with self.store.pool.connection() as conn, conn.transaction():
            conn.execute(SNAPSHOT)  # the rows since the change and the history before it as of one instant
            self._step(trigger, "loading", "loading the rows since the change for the model pool")
            dataset = load_dataset(conn, spec)
            with conn.cursor() as cur:
                champion = self.registry.champion(cur, model.name)
                champion_model = self.registry.load(cur, champion) if champion is not None else None
                pool = [(v, self.registry.load(cur, v))
                    for v in self.registry.past_champions(cur, model.name, limit=model.retrain.pool_size)]
            since = dataset.frame
            lineage: dict[str, Any] = {"trigger_id": trigger.trigger_id, "trigger_kind": "pool", "rows": len(since),
                                       "change_point": change.isoformat()}
            if champion_model is None or not pool:
                return self._record(trigger, "unchanged", "model pool: no champion or no former champion to compare",
                                    lineage=lineage)
            if len(since) < cfg.min_test_rows:
                return self._record(trigger, "unchanged", f"model pool: {len(since):,} labelled rows since the "
                                    f"change (< {cfg.min_test_rows:,}): nothing compared", lineage=lineage)
            error, accuracy = stored_production_best(conn, model, cutoff=trigger.decided_at, since=history,
                                                     until=change, block=len(since))
        self._step(trigger, "evaluating", f"scoring {len(pool)} former champion(s) on {len(since):,} rows")
        scored = []
        for version, past in pool:
            s = replace(self._eval_set(model, dataset, since, past, champion_model, name="since change"),
                        champion_reference_error=error, champion_reference_accuracy=accuracy)
            past_error = main_error(model.task, s, "challenger")
            if past_error is not None:
                scored.append((past_error, version.version, version, s))
        champion_error = main_error(model.task, scored[0][3], "champion") if scored else None
        lineage["pool"] = {v: e for e, v, _, _ in scored} | {"champion": champion_error}
        label = "log loss" if model.task == "classification" else "MAE"
        if not scored or champion_error is None:
            return self._record(trigger, "unchanged", "model pool: no error could be computed", lineage=lineage)
        best_error, _, best, best_set = min(scored, key=lambda t: (t[0], t[1]))
        p = one_sided_p(_eval_row_errors(model.task, best_set, "challenger"),
                        _eval_row_errors(model.task, best_set, "champion"))
        if best_error > champion_error * (1 - model.retrain.pool_min_gain) or p >= model.retrain.pool_alpha:
            # a swap on noise makes a new champion whose baseline is the degraded stretch, and hides the change
            return self._record(trigger, "unchanged", (
                f"model pool: no former champion clearly beats the champion {champion.version} ({label} "  # type: ignore[union-attr]
                f"{champion_error:.4g}; best {best.version} {best_error:.4g}, p = {p:.2g}; a former champion must be "
                f"{model.retrain.pool_min_gain:.0%} lower and significantly so) on the {len(since):,} rows since the "
                "change"), lineage=lineage)
        results = run_gates(model.task, [best_set], gate_config(model, champion_measured=True))
        passed, summary = verdict(results)
        why = (f"model pool: former champion {best.version} ({label} {best_error:.4g}) beats the champion "
               f"({label} {champion_error:.4g}) on the {len(since):,} rows since the change")
        if not passed:
            return self._record(trigger, "unchanged", f"{why}, but {summary}", lineage=lineage)
        return self._propose_again(trigger, model, best, results, lineage, why)

    def _freeze(self, cur: Any) -> None:
        """Store the held-out set this retrain froze, in its outcome's transaction."""
        if self.frozen is not None:
            holdout.save(cur, self.frozen)
            self.frozen = None

    def _step(self, trigger: TriggerEvent, step: str, detail: str) -> None:
        """Report a long step: in the log and in ``retrain_progress`` (read by `pitstop models show`)."""
        self.progress(f"{trigger.model_name}: {detail}")
        with self.store.pool.connection() as conn:
            conn.execute(_PROGRESS, (trigger.trigger_id, trigger.model_name, WORKER, step, detail))

    def _eval_set(self, model: ModelConfig, dataset: Dataset, test: pd.DataFrame, challenger: Any,
                  champion: Any | None, *, name: str = "recent", measure_latency: bool = True) -> EvalSet:
        X = test[list(dataset.features)]
        predicted = challenger.predict(X)
        classes = _classes(test, challenger, champion) if model.multiclass else None
        proba = _class_proba(model, challenger, X, classes) if model.task == "classification" else None
        latency, champion_latency = (_latencies_ms_per_row(model, [challenger, champion], X) if measure_latency
                                     else (0.0, None))
        if champion is not None:
            champion_pred = champion.predict(X)
            champion_proba = _class_proba(model, champion, X, classes) if model.task == "classification" else None
        else:  # the model in production, as it served these very requests
            champion_pred = test["served_prediction"].to_numpy()
            champion_proba = ((_served_matrix(test, classes) if classes is not None else _served_positive(model, test))
                              if model.task == "classification" else None)
        y = test["label"].to_numpy()
        if model.task == "regression":
            y, predicted, champion_pred = (np.asarray(a, dtype=np.float64) for a in (y, predicted, champion_pred))
        else:
            y, predicted, champion_pred = (np.array([category_key(v) for v in np.asarray(a).tolist()])
                                           for a in (y, predicted, champion_pred))
        segments = {c[len(SEGMENT_PREFIX):]: test[c].astype(str).to_numpy() for c in test.columns
                    if c.startswith(SEGMENT_PREFIX) and c[len(SEGMENT_PREFIX):] in model.segments}
        return EvalSet(name=name, y_true=y, challenger=predicted, champion=champion_pred,
                       challenger_proba=proba, champion_proba=champion_proba,
                       positive_class=category_key(model.positive_class) if model.task == "classification"
                       and not model.multiclass else 1, classes=classes,
                       segments=segments, challenger_latency_ms_per_row=latency,
                       champion_latency_ms_per_row=champion_latency)

    def _record(self, trigger: TriggerEvent, result: Result, sentence: str, *, version: str | None = None,
                gates: list[GateResult] | tuple[GateResult, ...] = (), lineage: Mapping[str, Any] | None = None,
                model_object: Any = None, stage: str | None = None, profile: ReferenceProfile | None = None) -> Outcome:
        """The outcome, the version with its artifact and gates, and the candidate event: one transaction."""
        model_name = trigger.model_name
        outcome = Outcome(trigger_id=trigger.trigger_id, model_name=model_name, result=result, sentence=sentence,
                          version=version, gates=tuple(gates), lineage=lineage or {})
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if version is not None and stage is not None and self.registry.get(cur, model_name, version) is None:
                records = [GateRecord(name=g.name if not g.segment else f"{g.name} {g.segment}", set_name=g.set_name,
                                      passed=g.passed, observed=g.observed, threshold=g.threshold,
                                      sample_size=g.sample_size, sentence=g.sentence) for g in gates]
                registered_stage = "champion" if stage == "champion" else ("rejected" if stage == "rejected"
                                                                            else "candidate")
                entry = ModelVersion(model_name=model_name, version=version, stage="candidate",
                                     trigger_id=trigger.trigger_id, trainer=(lineage or {}).get("trainer"),
                                     lineage=lineage or {}, metrics=_metrics(gates))
                ref = self.registry.register(cur, entry, serialise(model_object, _format(model_object)),
                                             reason=f"trained for trigger {trigger.trigger_id}", gates=records)
                if registered_stage != "candidate":
                    self.registry.move(cur, model_name, version, registered_stage, reason=sentence)  # type: ignore[arg-type]
                if result == "candidate":
                    enqueue(cur, f"{model_name}/{version}", topics.CANDIDATES, model_name,
                            candidate_event(ref, registered_stage, gates, lineage or {}))
            cur.execute(_RECORD, (trigger.trigger_id, model_name, result, sentence))
            cur.execute(_PROGRESS, (trigger.trigger_id, model_name, WORKER, "done", f"{result}: {sentence}"))
            if result != "failed":
                self._freeze(cur)
            if profile is not None:  # monitoring of the new version starts from its training data
                install_profile(conn, WindowUpdater(self.config), profile)
        log.info("trigger %s: %s: %s", trigger.trigger_id, result, sentence)
        return outcome


def training_profile(model: ModelConfig, version: str, dataset: Dataset, fitted: Any, *, source: str,
                     rows: pd.DataFrame | None = None) -> ReferenceProfile:
    """The new version's reference profile from its training rows (``rows``, default the dataset's training
    rows): its features, its own predictions and scores on them, and their labels, binned as monitoring bins
    every version."""
    train = dataset.train if rows is None else rows
    X = train[list(dataset.features)]
    features = {name: [None if _missing(v) else v for v in train[name].tolist()] for name in dataset.features}
    scores = _score_series(model, fitted, X).tolist() if model.task == "classification" and model.score != "none" \
        else None
    columns = reference_columns(model, features=features, predictions=np.asarray(fitted.predict(X)).tolist(),
                                scores=scores, labels=train["label"].tolist())
    return build_profile(model.name, version, columns, series_kinds(model), source=source)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


#: at most this many stretches of the history are scored for production's best level
BEST_LEVEL_BLOCKS = 50


def production_best(model: ModelConfig, history: pd.DataFrame, block: int) -> tuple[float | None, float | None]:
    """Production's best level in ``history``: the lowest main error (log loss, MAE) the served predictions
    reached on a stretch of ``block`` consecutive rows (at most BEST_LEVEL_BLOCKS stretches, evenly spread),
    with that stretch's accuracy for classification; (None, None) when no stretch can be scored.

    The leakage gate measures a challenger against the lower of this and the champion's error: a retrain that
    recovers production's former level after a drift is no leak, one far beyond any level production ever
    reached is suspicious.
    """
    return _best_level(model, [history.iloc[s:s + block] for s in best_level_starts(len(history), block)], block)


def stored_production_best(conn: psycopg.Connection[Any], model: ModelConfig, *, cutoff: datetime,
                           since: datetime | None, until: datetime, block: int) -> tuple[float | None, float | None]:
    """:func:`production_best` of the point-in-time rows of ``model`` made in [since, until) as they stood at
    ``cutoff``, read from the store: only the rows of the stretches it scores (at most BEST_LEVEL_BLOCKS x
    ``block``) and only their served predictions and labels, never the features. The same result as
    production_best over load_dataset's frame of those rows, without loading the history."""
    stretches = load_stretches(conn, model.name, cutoff=cutoff, since=since, until=until, block=block,
                               starts=lambda rows: best_level_starts(rows, block))
    return _best_level(model, stretches, block)


def best_level_starts(rows: int, block: int) -> range:
    """Where the stretches production_best scores begin in a history of ``rows`` rows: at most BEST_LEVEL_BLOCKS
    stretches of ``block`` consecutive rows, evenly spread from the first row, never overlapping; none when the
    history is shorter than a stretch.

    >>> best_level_starts(1000, 300), best_level_starts(100_000, 300), best_level_starts(299, 300)
    (range(0, 701, 300), range(0, 99701, 1995), range(0, 0))
    """
    if block <= 0 or rows < block:
        return range(0)
    return range(0, rows - block + 1, max(block, (rows - block) // BEST_LEVEL_BLOCKS + 1))


def _best_level(model: ModelConfig, stretches: list[pd.DataFrame], block: int) -> tuple[float | None, float | None]:
    """The lowest main error of the served predictions on one of ``stretches`` (each ``block`` rows), with its
    accuracy for classification; (None, None) when none can be scored."""
    best: tuple[float, float | None] | None = None
    for rows in stretches:
        y = rows["label"].to_numpy()
        if model.task == "regression":
            served = pd.to_numeric(rows["served_prediction"], errors="coerce").to_numpy(dtype=np.float64)
            ok = np.isfinite(served)
            if ok.sum() < block // 2:
                continue
            level: tuple[float, float | None] = (float(np.mean(np.abs(y[ok].astype(np.float64) - served[ok]))), None)
        elif model.multiclass:
            labels = [category_key(v) for v in y.tolist()]
            if len(set(labels)) < 2:
                continue
            served = rows["served_probabilities"].tolist()
            if any(p is None for p in served):
                continue
            true_p = np.array([float(p.get(t, 0.0)) for p, t in zip(served, labels, strict=True)])
            loss = float(-np.mean(np.log(np.clip(true_p, 1e-15, 1 - 1e-15))))
            hits = [category_key(p) == t for p, t in zip(rows["served_prediction"].tolist(), labels, strict=True)]
            level = (loss, float(np.mean(hits)))
        else:
            positive = category_key(model.positive_class)
            truth = np.array([category_key(v) == positive for v in y.tolist()], dtype=np.int64)
            proba = np.clip(_served_positive(model, rows), 1e-15, 1 - 1e-15)
            if truth.min() == truth.max() or not np.all(np.isfinite(proba)):
                continue
            loss = float(-np.mean(truth * np.log(proba) + (1 - truth) * np.log(1 - proba)))
            hits = [category_key(p) == category_key(t) for p, t in zip(rows["served_prediction"].tolist(), y.tolist(),
                                                                       strict=True)]
            level = (loss, float(np.mean(hits)))
        if best is None or level[0] < best[0]:
            best = level
    return (None, None) if best is None else best


def _trained_until(champion: ModelVersion | None) -> datetime | None:
    """The champion's training cutoff (its lineage's), if it was trained here: no row after it was learnt."""
    cutoff = champion.lineage.get("cutoff") if champion is not None else None
    return datetime.fromisoformat(cutoff) if isinstance(cutoff, str) else None


def _refresh_kept(model: ModelConfig, s: EvalSet, passed: bool, summary: str) -> str | None:
    """Why a refresh candidate does not replace the champion (one clause), or None when it does: it must pass
    every gate and be significantly better on the recent window, by a one-sided paired t-test of the per-row
    main errors (log loss, or absolute error) at ``refresh_alpha``.

    >>> from feedback.config import parse_config
    >>> m = parse_config("[models.eta]" + chr(10) + 'task = "regression"').models["eta"]
    >>> y = np.arange(400.0)
    >>> s = EvalSet(name="recent", y_true=y, challenger=y + 1.0 + np.sin(y), champion=y + 1.5 + np.sin(y),
    ...             challenger_latency_ms_per_row=0.01)
    >>> _refresh_kept(m, s, True, "every gate passed") is None  # 0.5 better on every row
    True
    >>> _refresh_kept(m, replace(s, champion=s.challenger + 0.01 * np.cos(y)), True, "every gate passed")
    "challenger MAE 1.005 not significantly below the champion's 1.005 on 400 recent rows (p = 0.5 >= 0.05)"
    >>> _refresh_kept(m, s, False, "failed 1 of 9 checks: mae_vs_champion (recent)")
    'failed 1 of 9 checks: mae_vs_champion (recent)'
    """
    if not passed:
        return summary
    challenger, champion = (_eval_row_errors(model.task, s, which) for which in ("challenger", "champion"))
    label = "log loss" if model.task == "classification" and s.challenger_proba is not None else (
        "error rate" if model.task == "classification" else "MAE")
    n, p = len(challenger), one_sided_p(challenger, champion)
    alpha = model.triggers.refresh_alpha
    if p < alpha:
        return None
    return (f"challenger {label} {challenger.mean():.4g} not significantly below the champion's "
            f"{champion.mean():.4g} on {n:,} recent rows (p = {p:.2g} >= {alpha:g})")


def one_sided_p(errors: np.ndarray, others: np.ndarray) -> float:
    """The p-value that ``errors`` are lower than ``others`` on the same rows (one-sided paired t-test); a constant
    difference is certain either way.

    >>> round(one_sided_p(np.array([0.0, 0.1, 0.0, 0.2]), np.array([1.0, 1.2, 0.9, 1.1])), 5)
    0.00013
    >>> one_sided_p(np.zeros(3), np.ones(3)), one_sided_p(np.ones(3), np.ones(3))
    (0.0, 1.0)
    """
    from scipy.stats import ttest_rel

    diff = errors - others
    if len(diff) < 2 or np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        return 0.0 if len(diff) >= 2 and diff.mean() < 0 else 1.0
    return float(ttest_rel(errors, others, alternative="less").pvalue)


def _eval_row_errors(task: str, s: EvalSet, which: str) -> np.ndarray:
    """Per-row main error of ``which`` model on an evaluation set: log loss of the positive-class probability, or
    of the true class's on a multiclass set (classification with probabilities), the 0/1 error (without), or the
    absolute error (regression)."""
    predicted = np.asarray(getattr(s, which))
    if task == "regression":
        return np.abs(np.asarray(s.y_true, dtype=np.float64) - predicted.astype(np.float64))
    proba = getattr(s, f"{which}_proba")
    if proba is None:
        return (predicted != s.y_true).astype(np.float64)
    if s.classes is not None:  # a multiclass set: -log p(true class), as multiclass_log_loss averages it
        matrix = np.asarray(proba, dtype=np.float64)
        column = class_columns(s.y_true, s.classes)
        true_p = np.where(column >= 0, matrix[np.arange(len(matrix)), np.maximum(column, 0)], 0.0)
        return -np.log(np.clip(true_p, 1e-15, 1 - 1e-15))
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-15, 1 - 1e-15)
    positive = s.y_true == s.positive_class
    return -np.where(positive, np.log(p), np.log(1 - p))


def _main_row_errors(model: ModelConfig, fitted: Any, X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """``fitted``'s main error on each row: log loss of the positive class (binary) or of the true class
    (multiclass) for a classifier with probabilities, else the 0/1 error; absolute error (regression)."""
    if model.task == "classification" and model.positive_class is None and hasattr(fitted, "predict_proba"):
        classes = tuple(category_key(c) for c in np.asarray(fitted.classes_).tolist())
        column = class_columns(np.array([category_key(v) for v in np.asarray(y).tolist()]), classes)
        matrix = np.asarray(fitted.predict_proba(X), dtype=np.float64)
        true_p = np.where(column >= 0, matrix[np.arange(len(matrix)), np.maximum(column, 0)], 0.0)
        return -np.log(np.clip(true_p, 1e-15, 1 - 1e-15))
    if model.task == "classification" and hasattr(fitted, "predict_proba"):
        classes = [category_key(c) for c in np.asarray(fitted.classes_).tolist()]
        key = category_key(model.positive_class)
        proba = np.asarray(fitted.predict_proba(X))[:, classes.index(key)] if key in classes else np.zeros(len(X))
        p = np.clip(proba, 1e-15, 1 - 1e-15)
        positive = np.array([category_key(v) == key for v in np.asarray(y).tolist()])
        return -np.where(positive, np.log(p), np.log(1 - p))
    return _row_errors(model, fitted, X, y)


def _row_errors(model: ModelConfig, fitted: Any, X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """``fitted``'s error on each row: 0/1 (classification) or absolute (regression)."""
    predicted = np.asarray(fitted.predict(X))
    if model.task == "regression":
        return np.abs(np.asarray(y, dtype=np.float64) - predicted.astype(np.float64))
    return np.array([category_key(p) != category_key(t) for p, t in zip(predicted.tolist(), y.tolist(), strict=True)],
                    dtype=np.float64)


def _worse_refit(gated: np.ndarray, final: np.ndarray, max_ratio: float) -> str | None:
    """Why a final fit is refused, or None: on the recent window, which the refit learnt and the gated model never
    saw, the refit's mean error exceeds ``max_ratio`` x the gated model's by more than two standard errors of the
    paired difference (a refit does better on rows it learnt, unless the fit is broken).

    >>> _worse_refit(np.array([0.0, 1, 0, 0]), np.array([0.0, 0, 0, 0]), 1.05) is None
    True
    >>> _worse_refit(np.zeros(400), np.ones(400), 1.05)
    "the refit's error on the recent window 1 > 1.05 x the gated model's 0 (400 rows)"
    """
    if not len(gated):
        return None
    diff = final - gated
    margin = (max_ratio - 1) * float(gated.mean()) + 2 * float(diff.std(ddof=1) if len(diff) > 1 else 0.0) / np.sqrt(
        len(diff))
    if float(diff.mean()) <= margin:
        return None
    return (f"the refit's error on the recent window {final.mean():.4g} > {max_ratio} x the gated model's "
            f"{gated.mean():.4g} ({len(gated):,} rows)")


def main_error(task: str, s: EvalSet, which: str) -> float | None:
    """A model's main error on an evaluation set: log loss (classification; of the true class's probability for a
    multiclass set) or MAE (regression)."""
    from sklearn.metrics import log_loss, mean_absolute_error

    predicted = getattr(s, which)
    if predicted is None:
        return None
    if task == "regression":
        return float(mean_absolute_error(s.y_true, predicted))
    proba = getattr(s, f"{which}_proba")
    if s.classes is not None:
        return None if proba is None or not len(s) else multiclass_log_loss(s.y_true, proba, s.classes)
    y = (s.y_true == s.positive_class).astype(int)
    if proba is None or len(set(y.tolist())) < 2:
        return None
    return float(log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]))


def candidate_event(version: ModelVersion, stage: str, gates: Any, lineage: Mapping[str, Any], *,
                    trigger_id: str | None = None) -> dict[str, Any]:
    """The event on `pitstop.candidates` (schemas/candidate.schema.json); a former champion proposed again for
    another trigger gets an id of its own."""
    assert version.artifact is not None
    again = trigger_id is not None and trigger_id != version.trigger_id
    return {
        "schema_version": 1,
        "candidate_id": f"{version.model_name}/{version.version}" + (f"@{trigger_id}" if again else ""),
        "model_name": version.model_name, "version": version.version, "trigger_id": trigger_id or version.trigger_id,
        "artifact_sha256": version.artifact.hexdigest, "stage": stage, "trainer": version.trainer or "",
        "metrics": dict(version.metrics),
        "gates": [{"name": g.name, "set_name": g.set_name, "passed": g.passed, "observed": _finite(g.observed),
                   "threshold": _finite(g.threshold), "sentence": g.sentence} for g in gates],
        "lineage": dict(lineage), "created_at": datetime.now(UTC).isoformat(),
    }


def _metrics(gates: Any) -> dict[str, Any]:
    return {f"{g.set_name}:{g.name}{(' ' + g.segment) if g.segment else ''}": _finite(g.observed) for g in gates}


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _format(model: Any) -> Literal["skops", "pickle"]:
    """skops for the sklearn defaults (only their recorded types are trusted at load); pickle, the library's own
    format, for anything else (river's models, a user's trainer), read only from the registry after its digest."""
    return "skops" if isinstance(model, TabularModel) else "pickle"


LATENCY_REPEATS = 5
LATENCY_ROWS = 1_000


def _latencies_ms_per_row(model: ModelConfig, fitted: list[Any], X: pd.DataFrame) -> tuple[float, float | None]:
    """The challenger's and the champion's (``fitted[1]``, or None) prediction time per row on ``X`` (repeated
    to at least LATENCY_ROWS rows: a call's fixed cost must not dominate a small window): each the best of a few
    repeats, taken in turns, so that a busy moment of the machine hits both alike and decides no latency gate.
    """
    if len(X) and len(X) < LATENCY_ROWS:
        X = pd.concat([X] * -(-LATENCY_ROWS // len(X)), ignore_index=True)
    best = [float("inf")] * len(fitted)
    for _ in range(LATENCY_REPEATS):
        for i, f in enumerate(fitted):
            if f is None:
                continue
            started = time.perf_counter()
            f.predict(X)
            if model.task == "classification":
                f.predict_proba(X)
            best[i] = min(best[i], time.perf_counter() - started)
    per_row = [b * 1000 / max(len(X), 1) if b != float("inf") else None for b in best]
    return per_row[0] or 0.0, per_row[1] if len(per_row) > 1 else None


def _positive(model: ModelConfig, fitted: Any, X: pd.DataFrame) -> np.ndarray:
    """The probability of the positive class from a fitted classifier (0 when it never saw that class)."""
    proba = np.asarray(fitted.predict_proba(X))
    classes = [category_key(c) for c in np.asarray(fitted.classes_).tolist()]
    key = category_key(model.positive_class)
    return proba[:, classes.index(key)] if key in classes else np.zeros(len(X))


def _tested_level(model: ModelConfig, s: EvalSet) -> dict[str, Any] | None:
    """The monitoring's main metric of the gated model on the recent test window (rows it never learnt), with its
    interval, from the aggregates a production window would hold of the same predictions: the level the new
    version's windows are judged against at the least (``baseline_of`` in feedback/monitoring/evaluate.py).
    None when there are no rows or the metric cannot be computed from them."""
    if len(s) == 0:
        return None
    truth, guess = s.y_true.tolist(), s.challenger.tolist()
    try:
        if model.task == "regression":
            found = performance.regression_contributions(truth, guess)
        elif s.classes is not None:
            proba = (s.challenger_proba.tolist() if s.challenger_proba is not None else None)
            found = performance.multiclass_contributions(
                truth, guess, [dict(zip(s.classes, row, strict=True)) for row in proba] if proba else [None] * len(s))
        else:
            p = s.challenger_proba.tolist() if s.challenger_proba is not None else [None] * len(s)
            found = performance.classification_contributions(truth, guess, p, positive=s.positive_class)
    except ValueError:  # a value the monitoring could not count either
        return None
    acc: dict[str, int] = {}
    for c in found:
        performance.add(acc, c)
    return tested_level(model, acc)


def _classes(test: pd.DataFrame, *fitted: Any) -> tuple[str, ...]:
    """A multiclass evaluation's classes: every class the models know, the served probabilities name, or the rows'
    labels and served predictions hold (as category keys, sorted)."""
    found = {category_key(v) for v in test["label"].tolist()}
    found |= {category_key(v) for v in test["served_prediction"].tolist() if v is not None}
    for served in test["served_probabilities"].tolist():
        found |= set(served or ())
    for model in fitted:
        if model is not None:
            found |= {category_key(c) for c in np.asarray(model.classes_).tolist()}
    return tuple(sorted(found))


def _beside(past: EvalSet, fresh: EvalSet) -> EvalSet:
    """A former champion's set with the fresh set's champion beside it; a multiclass set's probabilities over the
    classes of both sets (a former champion may know classes the fresh model never saw, or the reverse)."""
    champion = {"champion": fresh.champion, "champion_proba": fresh.champion_proba,
                "champion_latency_ms_per_row": fresh.champion_latency_ms_per_row,
                "champion_reference_error": fresh.champion_reference_error,
                "champion_reference_accuracy": fresh.champion_reference_accuracy}
    if past.classes is None or fresh.classes is None:
        return replace(past, **champion)
    classes = tuple(sorted(set(past.classes) | set(fresh.classes)))
    champion["champion_proba"] = _widen(fresh.champion_proba, fresh.classes, classes)
    return replace(past, **champion, classes=classes,
                   challenger_proba=_widen(past.challenger_proba, past.classes, classes))


def _widen(proba: np.ndarray | None, have: tuple[str, ...], classes: tuple[str, ...]) -> np.ndarray | None:
    """Probability columns over ``have`` as columns over ``classes`` (a superset; the others 0).

    >>> _widen(np.array([[0.4, 0.6]]), ("a", "c"), ("a", "b", "c")).tolist()
    [[0.4, 0.0, 0.6]]
    """
    if proba is None:
        return None
    out = np.zeros((len(proba), len(classes)))
    out[:, [classes.index(c) for c in have]] = proba
    return out


def _class_proba(model: ModelConfig, fitted: Any, X: pd.DataFrame, classes: tuple[str, ...] | None) -> np.ndarray:
    """The positive-class probability (binary), or the probability matrix over ``classes`` (a class the model
    never saw: 0)."""
    if classes is None:
        return _positive(model, fitted, X)
    proba = np.asarray(fitted.predict_proba(X), dtype=np.float64)
    out = np.zeros((len(X), len(classes)))
    index = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(np.asarray(fitted.classes_).tolist()):
        out[:, index[category_key(c)]] = proba[:, j]
    return out


def _served_matrix(test: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    """The class probabilities production served, over ``classes``; a request served without them is uniform (as
    a binary one's missing probability is 0.5)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(test), len(classes)))
    for i, served in enumerate(test["served_probabilities"].tolist()):
        if not served:
            out[i] = 1.0 / len(classes)
            continue
        for c, p in served.items():
            out[i, index[c]] = float(p)
    return out


def _score_series(model: ModelConfig, fitted: Any, X: pd.DataFrame) -> np.ndarray:
    """The monitoring's score series for a fitted model: the positive-class probability, or a multiclass model's
    probability of its own prediction (feedback/monitoring/windows.py's)."""
    if not model.multiclass:
        return _positive(model, fitted, X)
    proba = np.asarray(fitted.predict_proba(X), dtype=np.float64)
    classes = [category_key(c) for c in np.asarray(fitted.classes_).tolist()]
    return top_label_confidence(np.array([category_key(v) for v in np.asarray(fitted.predict(X)).tolist()]),
                                proba, classes)


def _served_positive(model: ModelConfig, test: pd.DataFrame) -> np.ndarray:
    """The positive-class probability the production model served with each prediction."""
    key = category_key(model.positive_class)
    if model.score == "score":
        return test["served_score"].astype(float).fillna(0.5).to_numpy()
    return np.array([float((p or {}).get(key, 0.5)) for p in test["served_probabilities"]])
