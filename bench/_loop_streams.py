"""Drifting streams, the delayed-label protocol, the baseline retraining strategies and their scores.

Used by ``bench/loop_quality.py`` (which documents what is measured) and by strategy (d),
``bench/_pitstop_loop.py``, which builds on :class:`Stream`, :data:`PROTOCOL`, :func:`initial_model`,
:func:`to_frame` and returns a :class:`StrategyRun` that :func:`score` judges like the baselines.

The six streams and the strategies are those of the measured anchors (river 0.26.1, scikit-learn 1.9;
``/work/shared/LOOP-ANCHORS.md``):

* S1 SEA variant 0 -> 3 at 20,000 (abrupt); S2 Agrawal function 0 -> 2 at 15,000 -> 0 again at 30,000
  (abrupt, recurring); S3 Hyperplane, a slow rotation everywhere (no drift point); S4 STAGGER 0 -> 2 at 20,000
  (abrupt); S5 FriedmanDrift "gra" (regression; abrupt at 14,000, the first concept returns at 28,000); S6
  FriedmanDrift "gsg" (regression; gradual, two transitions of 1,000 samples from 14,000 and 28,000); S7
  RandomRBF, 4 classes around 10 centroids in 8 features, new centroids at 20,000 (abrupt; multiclass, no anchor);
  S8 SEA 0 -> 3 at 12,000 -> 0 at 28,000 (recurring; the return meets the refit ladder's last rung); S9 Agrawal
  0 -> 2, gradual over 17,000-27,000, no feature drift (S8 and S9: no anchor).
* Protocol: label delay ``delay``; at step t the labels of samples 0..t-delay are known and the deployed
  model predicts x_t. Every batch strategy starts from one HistGradientBoosting model fitted on the first
  5,000 labels, deployed at t0 = 5,000 + delay - 1 (the step at which the 5,000th label arrives); every
  strategy is scored on t >= t0.

``ConceptDriftStream(width=1)`` computes ``math.exp(-4 (t - p) / width)``, which overflows for t far before the
drift point in river 0.26.1; :class:`_ClippedConceptDriftStream` clips the exponent to [-700, 700] (the
probability is 0 or 1 to double precision there either way), so the random draws and the stream are those of
river's class.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from river.datasets import synth
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

__all__ = [
    "BASELINES",
    "PROTOCOL",
    "STREAMS",
    "Stream",
    "StrategyRun",
    "errors",
    "initial_model",
    "load_stream",
    "plot_errors",
    "run_baseline",
    "score",
    "significant_rise",
    "to_frame",
]


@dataclass(frozen=True)
class Protocol:
    initial: int = 5_000  # labels the first model is trained on
    calendar_every: int = 5_000  # (b), (c): a refit every this many new labels
    half_life: float = 3_000.0  # (c): recency weight 0.5 ** (age / half_life), age in labelled samples
    oracle_labels: int = 1_000  # (f): a refit on this many labels after each true drift
    after_drift: int = 5_000  # scored stretch after each drift point
    last: int = 10_000  # scored stretch at the end
    stable_gap: int = 5_000  # a stretch is stable from this many steps after a drift's end
    rolling: int = 1_000  # the plot's rolling mean

    def t0(self, delay: int) -> int:
        """The first deployment: the step at which the ``initial``-th label is known."""
        return self.initial + delay - 1


PROTOCOL = Protocol()

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class Stream:
    name: str  # "S1" .. or the callable's name
    samples: list[tuple[dict, Any]]  # (x, y) in stream order, x a dict of feature name -> number/str
    task: str  # "classification" | "regression"
    drift_points: tuple[int, ...]  # true drift positions (sample index); for gradual drifts the start
    drift_ends: tuple[int, ...]  # end of each drift's transition (== drift_points for abrupt)
    drifts_everywhere: bool = False  # S3: gradual drift everywhere: no stable stretch, no drift point


@dataclass
class StrategyRun:
    name: str  # "a" .. "f"
    label: str  # e.g. "(a) never retrain"
    predictions: list  # len(stream.samples); None before the first deployment (t < t0)
    deployed_at: list[int]  # t from which each new model served (retrains), initial deployment excluded
    triggered_at: list[int]  # t at which a retrain was decided (== deployed_at for in-memory strategies)
    seconds: float
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- streams


class _ClippedConceptDriftStream(synth.ConceptDriftStream):
    """river's ConceptDriftStream with the sigmoid's exponent clipped (no OverflowError for width=1).

    The same code as river 0.26.1's ``__iter__`` otherwise: one ``rng.random()`` per sample, compared with the
    same probability (exp(700) is already infinite for the comparison's purposes: the probability is 0.0).
    """

    def __iter__(self):
        rng = random.Random(self.seed)
        stream_generator = iter(self.stream)
        drift_stream_generator = iter(self.drift_stream)
        sample_idx = 0
        while True:
            sample_idx += 1
            v = -4.0 * float(sample_idx - self.position) / float(self.width)
            v = min(700.0, max(-700.0, v))
            probability_drift = 1.0 / (1.0 + math.exp(v))
            try:
                if rng.random() > probability_drift:
                    x, y = next(stream_generator)
                else:
                    x, y = next(drift_stream_generator)
            except StopIteration:
                break
            yield x, y


def _s1():
    return _ClippedConceptDriftStream(
        synth.SEA(variant=0, seed=1), synth.SEA(variant=3, seed=1), position=20_000, width=1, seed=1
    )


def _s2():
    first = _ClippedConceptDriftStream(
        synth.Agrawal(classification_function=0, seed=2),
        synth.Agrawal(classification_function=2, seed=2),
        position=15_000,
        width=1,
        seed=2,
    )
    return _ClippedConceptDriftStream(
        first, synth.Agrawal(classification_function=0, seed=2), position=30_000, width=1, seed=2
    )


def _s3():
    return synth.Hyperplane(
        seed=7, n_features=10, n_drift_features=5, mag_change=0.001, sigma=0.1, noise_percentage=0.05
    )


def _s4():
    return _ClippedConceptDriftStream(
        synth.STAGGER(classification_function=0, seed=3),
        synth.STAGGER(classification_function=2, seed=3),
        position=20_000,
        width=1,
        seed=3,
    )


def _s5():
    return synth.FriedmanDrift(drift_type="gra", position=(14_000, 28_000), seed=11)


def _s6():
    return synth.FriedmanDrift(drift_type="gsg", position=(14_000, 28_000), transition_window=1_000, seed=12)


def _s7():
    # four classes around 10 random centroids in 8 features; at 20,000 the centroids (and so the features'
    # distribution and the classes' regions) are drawn afresh: abrupt, and the new concept is as learnable
    return _ClippedConceptDriftStream(
        synth.RandomRBF(seed_model=7, seed_sample=7, n_classes=4, n_features=8, n_centroids=10),
        synth.RandomRBF(seed_model=8, seed_sample=8, n_classes=4, n_features=8, n_centroids=10),
        position=20_000,
        width=1,
        seed=7,
    )


def _s8():
    # SEA 0 -> 3 at 12,000, back to 0 at 28,000: the old concept returns as the refit ladder's last rung (16 x
    # 1,000 labels since the change, known at 28,000 + the delay) trains on the concept that is just leaving.
    # SEA's concepts share the features' distribution: only the labels show the change.
    first = _ClippedConceptDriftStream(
        synth.SEA(variant=0, seed=8), synth.SEA(variant=3, seed=8), position=12_000, width=1, seed=8
    )
    return _ClippedConceptDriftStream(first, synth.SEA(variant=0, seed=9), position=28_000, width=1, seed=9)


def _s9():
    # Agrawal function 0 -> 2, a slow gradual change (river's sigmoid over a width of 10,000 centred on 22,000:
    # 12% of the samples drawn from the new concept at 17,000, 88% at 27,000); the features' distribution is the
    # same under both functions: no feature drift, only a slow fall in performance
    return _ClippedConceptDriftStream(
        synth.Agrawal(classification_function=0, seed=21),
        synth.Agrawal(classification_function=2, seed=21),
        position=22_000,
        width=10_000,
        seed=21,
    )


# name -> (river dataset factory, task, drift points, drift ends, drifts everywhere)
STREAMS: dict[str, tuple[Callable[[], Any], str, tuple[int, ...], tuple[int, ...], bool]] = {
    "S1": (_s1, CLASSIFICATION, (20_000,), (20_000,), False),
    "S2": (_s2, CLASSIFICATION, (15_000, 30_000), (15_000, 30_000), False),
    "S3": (_s3, CLASSIFICATION, (), (), True),
    "S4": (_s4, CLASSIFICATION, (20_000,), (20_000,), False),
    "S5": (_s5, REGRESSION, (14_000, 28_000), (14_000, 28_000), False),
    "S6": (_s6, REGRESSION, (14_000, 28_000), (15_000, 29_000), False),
    "S7": (_s7, CLASSIFICATION, (20_000,), (20_000,), False),
    "S8": (_s8, CLASSIFICATION, (12_000, 28_000), (12_000, 28_000), False),
    "S9": (_s9, CLASSIFICATION, (17_000,), (27_000,), False),
}


def _take(dataset, n: int) -> list[tuple[dict, Any]]:
    # feature names as strings (Pitstop's events require string names); values and order unchanged
    return [({str(k): v for k, v in x.items()}, y) for x, y in dataset.take(n)]


def _load_callable(spec: str, n: int) -> Stream:
    path, _, attr = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        msg = f"stream {spec!r}: no file {path!r}"
        raise ValueError(msg)
    module_name = f"_loop_stream_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    if module_spec is None or module_spec.loader is None:
        msg = f"stream {spec!r}: cannot import {path!r}"
        raise ValueError(msg)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    fn = getattr(module, attr, None)
    if not callable(fn):
        msg = f"stream {spec!r}: {path} has no callable {attr!r}"
        raise ValueError(msg)
    params = inspect.signature(fn).parameters
    result = fn(n=n) if "n" in params else fn()
    if isinstance(result, Stream):
        return result
    samples, task, drift_points, *rest = result
    drift_points = tuple(int(p) for p in drift_points)
    drift_ends = tuple(int(p) for p in rest[0]) if rest else drift_points
    if task not in (CLASSIFICATION, REGRESSION):
        msg = f"stream {spec!r}: task must be {CLASSIFICATION!r} or {REGRESSION!r}, not {task!r}"
        raise ValueError(msg)
    samples = [({str(k): v for k, v in x.items()}, y) for x, y in list(samples)[:n]]
    return Stream(attr, samples, task, drift_points, drift_ends)


def _within(stream: Stream) -> Stream:
    """Drop the drifts that start at or after the stream's end (a shortened stream)."""
    if len(stream.drift_ends) != len(stream.drift_points):
        msg = f"stream {stream.name}: {len(stream.drift_points)} drift points but {len(stream.drift_ends)} ends"
        raise ValueError(msg)
    kept = [(p, e) for p, e in zip(stream.drift_points, stream.drift_ends, strict=True) if p < len(stream.samples)]
    if len(kept) == len(stream.drift_points):
        return stream
    return replace(stream, drift_points=tuple(p for p, _ in kept), drift_ends=tuple(e for _, e in kept))


def load_stream(spec: str, n: int = 40_000) -> Stream:
    """``"S1"``..``"S9"``, or ``"path/to/file.py:callable"``.

    The callable is called with ``n=n`` if it takes a parameter ``n``, else with no argument, and returns a
    :class:`Stream` or a tuple ``(samples, task, drift_points)`` (optionally a fourth item, the drift ends;
    abrupt drifts by default); at most ``n`` samples are kept.
    """
    key = spec.strip()
    if key.upper() in STREAMS:
        factory, task, points, ends, everywhere = STREAMS[key.upper()]
        return _within(Stream(key.upper(), _take(factory(), n), task, points, ends, everywhere))
    if ":" in key:
        return _within(_load_callable(key, n))
    msg = f"unknown stream {spec!r}: S1..S9 or path/to/file.py:callable"
    raise ValueError(msg)


# ---------------------------------------------------------------------------------------------------- models


def to_frame(xs: Sequence[dict]) -> pd.DataFrame:
    """Feature dicts as a frame: columns in order of first appearance, str features as pandas ``category``."""
    columns: dict[str, None] = {}
    for x in xs:
        for k in x:
            if k not in columns:
                columns[k] = None
    frame = pd.DataFrame.from_records(list(xs), columns=list(columns))
    frame.columns = [str(c) for c in frame.columns]
    for c in frame.columns:
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c]):
            frame[c] = frame[c].astype("category")
    return frame


def _new_model(task: str):
    if task == CLASSIFICATION:
        return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0)
    return HistGradientBoostingRegressor(max_iter=100, early_stopping=False, random_state=0)


def _fit(task: str, frame: pd.DataFrame, y: Sequence, weights: np.ndarray | None = None):
    model = _new_model(task)
    model.fit(frame, np.asarray(y), sample_weight=weights)
    return model


def initial_model(stream: Stream, task: str | None = None, *, frame: pd.DataFrame | None = None):
    """The model every batch strategy starts from: HGB fitted on ``samples[:PROTOCOL.initial]``."""
    task = task or stream.task
    n = PROTOCOL.initial
    x = frame.iloc[:n] if frame is not None else to_frame([s[0] for s in stream.samples[:n]])
    return _fit(task, x, [s[1] for s in stream.samples[:n]])


def recency_weights(n_labels: int, half_life: float = PROTOCOL.half_life) -> np.ndarray:
    """Weights of samples 0..n_labels-1 when n_labels labels are known: 0.5 ** (age / half_life), newest age 0."""
    age = np.arange(n_labels - 1, -1, -1, dtype=float)
    return 0.5 ** (age / half_life)


class _BlockPredictor:
    """Predictions of a sequence of fixed models, one block of steps per model (never one row at a time)."""

    def __init__(self, frame: pd.DataFrame, n: int, t0: int):
        self.frame = frame
        self.predictions: list = [None] * n
        self.t0 = t0

    def serve(self, model, start: int, end: int) -> None:
        """``model`` predicts the steps start..end-1."""
        start = max(start, self.t0)
        if end <= start:
            return
        self.predictions[start:end] = model.predict(self.frame.iloc[start:end]).tolist()


def _batch_run(
    stream: Stream,
    name: str,
    label: str,
    delay: int,
    schedule: list[tuple[int, int, int]],
    weighted: bool,
    notes: dict,
) -> StrategyRun:
    """A batch strategy: the initial model, then a refit per ``(t, lo, hi)``: at step t, on samples lo..hi-1."""
    started = time.perf_counter()
    n = len(stream.samples)
    t0 = PROTOCOL.t0(delay)
    frame = to_frame([s[0] for s in stream.samples])
    ys = [s[1] for s in stream.samples]
    predictor = _BlockPredictor(frame, n, t0)
    model = initial_model(stream, frame=frame)
    deployed: list[int] = []
    current = t0
    for t, lo, hi in schedule:
        if t >= n:
            break
        predictor.serve(model, current, t)
        weights = recency_weights(hi - lo) if weighted else None
        model = _fit(stream.task, frame.iloc[lo:hi], ys[lo:hi], weights)
        deployed.append(t)
        current = t
    predictor.serve(model, current, n)
    return StrategyRun(
        name, label, predictor.predictions, deployed, list(deployed), time.perf_counter() - started, notes
    )


def _calendar_schedule(n: int, delay: int) -> list[tuple[int, int, int]]:
    """(b), (c): when k * 5,000 labels are known (k >= 2), refit on all of them, serving from that step."""
    out = []
    k = 2
    while True:
        labels = k * PROTOCOL.calendar_every
        t = labels + delay - 1
        if t >= n:
            return out
        out.append((t, 0, labels))
        k += 1


def _oracle_schedule(stream: Stream, delay: int) -> list[tuple[int, int, int]]:
    """(f): after each true drift's end, once its first 1,000 labels are known, a refit on those alone."""
    out = []
    for end in stream.drift_ends:
        hi = end + PROTOCOL.oracle_labels
        out.append((hi - 1 + delay, end, hi))
    return out


def _arf_run(stream: Stream, delay: int) -> StrategyRun:
    """(e): river ARF, online, test then train: at step t predict x_t, then learn sample t - delay."""
    from river import forest

    started = time.perf_counter()
    model = forest.ARFClassifier(seed=1) if stream.task == CLASSIFICATION else forest.ARFRegressor(seed=1)
    n = len(stream.samples)
    t0 = PROTOCOL.t0(delay)
    samples = stream.samples
    predictions: list = [None] * n
    for t in range(n):
        if t >= t0:
            predictions[t] = model.predict_one(samples[t][0])
        if t >= delay:
            x, y = samples[t - delay]
            model.learn_one(x, y)
    return StrategyRun("e", BASELINES["e"], predictions, [], [], time.perf_counter() - started, {"model": repr(model)})


BASELINES = {
    "a": "(a) never retrain",
    "b": "(b) calendar",
    "c": "(c) calendar + recency",
    "d": "(d) Pitstop loop",
    "d1": "(d1) Pitstop, no refit ladder",
    "e": "(e) ARF online",
    "f": "(f) oracle",
}


def run_baseline(stream: Stream, strategy: str, *, delay: int) -> StrategyRun:
    """Strategies "a", "b", "c", "e", "f" on ``stream`` with label delay ``delay``."""
    n = len(stream.samples)
    if n < PROTOCOL.t0(delay) + 1:
        msg = f"stream {stream.name}: {n} samples, the first deployment is at {PROTOCOL.t0(delay)}"
        raise ValueError(msg)
    if strategy == "a":
        return _batch_run(stream, "a", BASELINES["a"], delay, [], False, {})
    if strategy in ("b", "c"):
        weighted = strategy == "c"
        notes = {"every_labels": PROTOCOL.calendar_every}
        if weighted:
            notes["half_life"] = PROTOCOL.half_life
        return _batch_run(stream, strategy, BASELINES[strategy], delay, _calendar_schedule(n, delay), weighted, notes)
    if strategy == "e":
        return _arf_run(stream, delay)
    if strategy == "f":
        if stream.drifts_everywhere:
            msg = f"stream {stream.name}: drift everywhere, no drift point for the oracle"
            raise ValueError(msg)
        schedule = _oracle_schedule(stream, delay)
        return _batch_run(stream, "f", BASELINES["f"], delay, schedule, False, {"refits_on": [s[1:] for s in schedule]})
    msg = f"unknown baseline strategy {strategy!r} (a, b, c, e, f)"
    raise ValueError(msg)


# ---------------------------------------------------------------------------------------------------- scores


def significant_rise(stream: Stream, *, window: int = 1_000, step: int = 50, alpha: float = 0.01,
                     train: int = 5_000) -> list[int | None]:
    """For each drift point p, the first step t >= p at which the error rise is significant: a model of the
    concept before (HGB on the ``train`` samples before the ``window`` before p) errs more on the samples of
    [max(p, t - window), t) than on the ``window`` before p (one-sided Welch t-test on the 0/1 or absolute errors,
    p < ``alpha``, checked every ``step`` samples up to the drift's end + 5,000); None if it never is. An
    independent reference for "detected within 1,000 labels of the point where the error rise is significant"
    on a gradual drift (for an abrupt one it is a few dozen samples after p)."""
    from scipy import stats

    out: list[int | None] = []
    for p, end in zip(stream.drift_points, stream.drift_ends, strict=True):
        lo = max(0, p - window - train)
        if p - window - lo < 1_000:
            out.append(None)
            continue
        xs = to_frame([x for x, _ in stream.samples[lo:min(len(stream.samples), end + PROTOCOL.stable_gap)]])
        ys = [y for _, y in stream.samples[lo:lo + len(xs)]]
        model = _fit(stream.task, xs.iloc[:p - window - lo], ys[:p - window - lo])
        guess = model.predict(xs.iloc[p - window - lo:])
        truth = ys[p - window - lo:]
        if stream.task == CLASSIFICATION:
            err = np.array([0.0 if g == y else 1.0 for g, y in zip(guess, truth, strict=True)])
        else:
            err = np.abs(np.asarray(guess, dtype=float) - np.asarray(truth, dtype=float))
        before, after = err[:window], err[window:]
        found = None
        for t in range(step, len(after) + 1, step):
            recent = after[max(0, t - window):t]
            if stats.ttest_ind(recent, before, equal_var=False, alternative="greater").pvalue < alpha:
                found = p + t
                break
        out.append(found)
    return out


def errors(stream: Stream, run: StrategyRun) -> np.ndarray:
    """Per-step error (0/1 for classification, absolute for regression); NaN where there is no prediction."""
    out = np.full(len(stream.samples), np.nan)
    for t, ((_, y), p) in enumerate(zip(stream.samples, run.predictions, strict=True)):
        if p is None:
            continue
        if stream.task == CLASSIFICATION:
            out[t] = 0.0 if p == y else 1.0
        else:
            out[t] = abs(float(p) - float(y))
    return out


def _figure(task: str, errs: np.ndarray) -> float | None:
    """Accuracy % (classification) or MAE (regression) of a stretch of errors; missing predictions count wrong."""
    if len(errs) == 0:
        return None
    if task == CLASSIFICATION:
        return float(100.0 * (1.0 - np.mean(np.nan_to_num(errs, nan=1.0))))
    if np.isnan(errs).any():
        return None
    return float(np.mean(errs))


def stable_stretches(stream: Stream, n: int) -> list[tuple[int, int]]:
    """[start, end) stretches without drift: before the first drift, and from 5,000 steps after a drift's end."""
    if stream.drifts_everywhere:
        return []
    points = list(stream.drift_points)
    out = [(0, points[0] if points else n)]
    for i, end in enumerate(stream.drift_ends):
        lo = end + PROTOCOL.stable_gap
        hi = points[i + 1] if i + 1 < len(points) else n
        if lo < hi:
            out.append((lo, hi))
    return out


def score(stream: Stream, run: StrategyRun, *, delay: int) -> dict:
    """Every figure of one strategy on one stream.

    * ``whole``: accuracy % / MAE over t >= t0; ``after_drift``: the same over [p, p + 5,000) for each drift
      point p; ``last``: the last 10,000 steps. A missing prediction (None) at a scored step counts as wrong
      (classification) or makes the figure None (regression).
    * ``retrains``: len(deployed_at).
    * ``labels_to_trigger``: per drift point p, for the first trigger t with p <= t - delay < next drift point
      (its labelled data include the drift's first sample): t - delay - p + 1 labels after the drift; None if
      there is none.
    * ``labels_to_detection``: the same for ``run.notes["detected_at"]`` (when the strategy's decision was first
      recorded, before it waited for labels), None when the strategy does not report it.
    * ``false_triggers``: triggers on stable stretches (before the first drift point, or from 5,000 steps after
      a drift's end to the next drift point); None when the stream drifts everywhere.
    """
    n = len(stream.samples)
    t0 = PROTOCOL.t0(delay)
    errs = errors(stream, run)
    points = list(stream.drift_points)
    after = [_figure(stream.task, errs[max(p, t0) : min(p + PROTOCOL.after_drift, n)]) for p in points]
    def labels_to(times: Sequence[int]) -> list[int | None]:
        out: list[int | None] = []
        for i, p in enumerate(points):
            nxt = points[i + 1] if i + 1 < len(points) else math.inf
            hits = [t for t in times if p <= t - delay < nxt]
            out.append(min(hits) - delay - p + 1 if hits else None)
        return out

    labels_to_trigger = labels_to(run.triggered_at)
    # a strategy that detects before it retrains (Pitstop waits for labels since the change) reports when
    detected = run.notes.get("detected_at") if isinstance(run.notes, dict) else None
    if stream.drifts_everywhere:
        false_triggers = None
    else:
        stretches = stable_stretches(stream, n)
        false_triggers = sum(1 for t in run.triggered_at if any(lo <= t < hi for lo, hi in stretches))
    return {
        "metric": "accuracy %" if stream.task == CLASSIFICATION else "MAE",
        "whole": _figure(stream.task, errs[t0:]),
        "after_drift": after,
        "last": _figure(stream.task, errs[max(t0, n - PROTOCOL.last) :]),
        "retrains": len(run.deployed_at),
        "labels_to_trigger": labels_to_trigger,
        "labels_to_detection": labels_to(detected) if detected is not None else None,
        "false_triggers": false_triggers,
        "deployed_at": list(run.deployed_at),
        "triggered_at": list(run.triggered_at),
        "seconds": run.seconds,
    }


# ---------------------------------------------------------------------------------------------------- plot


def plot_errors(results: list[tuple[Stream, list[StrategyRun]]], path: str | Path, *, delay: int) -> None:
    """Rolling mean error (1,000 steps) over time per strategy, one subplot per stream, drift points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 3.0 * rows), squeeze=False)
    t0 = PROTOCOL.t0(delay)
    for ax, (stream, runs) in zip(axes[:, 0], results, strict=True):
        for run in runs:
            errs = pd.Series(errors(stream, run))
            rolled = errs.rolling(PROTOCOL.rolling, min_periods=PROTOCOL.rolling).mean()
            ax.plot(np.arange(len(rolled)), rolled.to_numpy(), label=run.label, linewidth=1.0)
        for p, e in zip(stream.drift_points, stream.drift_ends, strict=True):
            ax.axvline(p, color="black", linestyle="--", linewidth=0.8)
            if e > p:
                ax.axvspan(p, e, color="grey", alpha=0.2)
        ax.set_xlim(t0, len(stream.samples))
        what = "error rate" if stream.task == CLASSIFICATION else "absolute error"
        extra = " (drift everywhere)" if stream.drifts_everywhere else ""
        ax.set_title(f"{stream.name}{extra}: rolling mean {what} over {PROTOCOL.rolling:,} steps, delay {delay}")
        ax.set_ylabel(what)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("step t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
