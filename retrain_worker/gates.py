"""The offline gates: a challenger's predictions against the champion's, before anything is published.

Pure functions over predictions (no models, no database). Each evaluation set, the recent test window
(``"recent"``) and the frozen held-out set (``"holdout"``), either of which may be absent, is gated on its own:

- **ratio**: the challenger's errors are at most ``max_ratio`` x the champion's (MAE and RMSE for regression,
  log loss and 1 - AUC for classification);
- **min_improvement** (optional): the challenger's main error (MAE, log loss) is at least this fraction lower;
- **leakage**: a main error below ``leakage_ratio`` x the champion's (or production's best level, the lower) is
  too good to be true. Seed 000: a model fed future information shows "suspiciously better offline metrics
  (MAE 30-50% lower)". For classification the gain must show in accuracy too (more than
  ``leakage_min_gain``): log loss is unbounded near zero, and on a deterministic concept an honest model's
  2e-5 is far below half a good champion's 0.056 (bench/loop_quality.py, stream S2) with the same accuracy;
- **floors**: R^2 or AUC at least an absolute floor. The defaults are "better than trivial" (AUC 0.5 is chance,
  R^2 0 is predicting the mean);
- **segments** (seed 001, "no regression on subgroups by more than epsilon"): each declared segment value's
  accuracy (classification, an absolute drop) or MAE (regression, a relative rise) against the champion's on
  the same rows; a value with too few rows is reported, not gated;
- **calibration** (classification): the challenger's ECE at most the champion's + a tolerance;
- **latency**: an absolute budget per row, and a ratio to the champion's.

A classification model of any number of classes (no positive class: ``EvalSet.classes`` names the columns of its
probability matrices) is gated on the same rows: log loss of the true class's probability, 1 - the macro
one-vs-rest AUC (and its floor), top-label ECE, accuracy for the leakage check and the segments.

With no champion yet, the first model is gated on the floors and the latency budget alone, and a row says so.
A metric that cannot be computed (one class only, constant labels, no rows) is an informational row, never a
pass: a gate that no evaluation set could decide fails the run with its own row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from feedback.monitoring.performance import ECE_BINS

TASKS = ("classification", "regression")
#: rows that inform but never need deciding: a segment may be too small, a first model has no champion
_NEVER_REQUIRED = frozenset({"segment", "first_model"})
_LABELS = {"mae": "MAE", "rmse": "RMSE", "r2": "R^2", "log_loss": "log loss", "auc_error": "1 - AUC",
           "auc": "AUC", "ece": "ECE", "accuracy": "accuracy"}
_RATIO_METRICS = {"regression": ("mae", "rmse"), "classification": ("log_loss", "auc_error")}
_MAIN_ERROR = {"regression": "mae", "classification": "log_loss"}
Metric = float | str  # a metric's value, or why it cannot be computed


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EvalSet:
    """One evaluation set: the labels, both models' predictions on the same rows, segments and latency.

    ``champion`` (and ``champion_proba``) is None when there is no champion yet. For classification,
    ``challenger`` and ``champion`` are predicted labels and ``*_proba`` the probability of ``positive_class``;
    for a model of any number of classes (``classes`` given), ``*_proba`` are matrices, one column per class of
    ``classes`` in that order (the labels and predictions are those class names), and ``positive_class`` is unused.
    ``segments`` maps an attribute to each row's value, e.g. ``{"region": np.array(["eu", "us", ...])}``.

    Examples
    --------
    >>> s = EvalSet(name="recent", y_true=np.array([1.0, 2.0]), challenger=np.array([1.5, 2.0]),
    ...             champion=np.array([1.0, 3.0]), challenger_latency_ms_per_row=0.2)
    >>> len(s), s.has_champion
    (2, True)
    >>> EvalSet(name="recent", y_true=np.array([1.0, 2.0]), challenger=np.array([1.5]),
    ...         challenger_latency_ms_per_row=0.2)
    Traceback (most recent call last):
    ...
    ValueError: evaluation set 'recent': challenger has 1 rows, y_true has 2
    """

    name: str
    y_true: np.ndarray
    challenger: np.ndarray
    champion: np.ndarray | None = None
    challenger_proba: np.ndarray | None = None
    champion_proba: np.ndarray | None = None
    positive_class: object = 1
    #: a multiclass set: the class of each column of ``*_proba``
    classes: tuple[str, ...] | None = None
    segments: Mapping[str, np.ndarray] = field(default_factory=dict)
    challenger_latency_ms_per_row: float
    champion_latency_ms_per_row: float | None = None
    #: the best level production reached (the served predictions' main error on their best stretch of the
    #: model's history): after a concept change, or a slow slide, the champion's error on this set is degraded
    #: and an honest retrain beats it by far, so the leakage check measures against the smaller of the two
    champion_reference_error: float | None = None
    #: classification: that stretch's accuracy (a leak shows in accuracy, not only in confidence)
    champion_reference_accuracy: float | None = None

    def __post_init__(self) -> None:
        n = len(self.y_true)
        columns = {"challenger": self.challenger, "champion": self.champion,
                   "challenger_proba": self.challenger_proba, "champion_proba": self.champion_proba}
        columns.update({f"segments[{attr!r}]": labels for attr, labels in self.segments.items()})
        for column, values in columns.items():
            if values is not None and len(values) != n:
                msg = f"evaluation set {self.name!r}: {column} has {len(values)} rows, y_true has {n}"
                raise ValueError(msg)
        if self.classes is not None:
            for column, values in (("challenger_proba", self.challenger_proba),
                                   ("champion_proba", self.champion_proba)):
                if values is not None and np.shape(values) != (n, len(self.classes)):
                    msg = (f"evaluation set {self.name!r}: {column} has shape {np.shape(values)}, expected "
                           f"({n}, {len(self.classes)}): one column per class")
                    raise ValueError(msg)
        if self.champion is None and self.champion_proba is not None:
            msg = f"evaluation set {self.name!r}: champion_proba given without champion predictions"
            raise ValueError(msg)
        for column, ms in (("challenger_latency_ms_per_row", self.challenger_latency_ms_per_row),
                           ("champion_latency_ms_per_row", self.champion_latency_ms_per_row)):
            if ms is not None and not (math.isfinite(ms) and ms >= 0):
                msg = f"evaluation set {self.name!r}: {column} must be a finite number >= 0, got {ms!r}"
                raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.y_true)

    @property
    def has_champion(self) -> bool:
        """Whether a champion's predictions are there to compare with."""
        return self.champion is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """The limits of :func:`run_gates`; None switches an optional gate off.

    ``segment_epsilon`` is an absolute drop in accuracy for classification and a relative rise in MAE for
    regression (0.01: the challenger's MAE on a segment may be at most 1% above the champion's), because an
    absolute MAE epsilon would depend on the label's unit.

    Examples
    --------
    >>> GateConfig().max_ratio, GateConfig().leakage_ratio, GateConfig().floor_auc
    (1.05, 0.5, 0.5)
    >>> GateConfig(leakage_ratio=1.5)
    Traceback (most recent call last):
    ...
    ValueError: leakage_ratio must be in (0, 1), got 1.5
    """

    max_ratio: float = 1.05  # challenger error <= max_ratio x champion's, each ratio metric, every set
    min_improvement: float | None = None  # main error at least this fraction below the champion's
    floor_auc: float | None = 0.5  # classification: AUC >= floor (0.5: no better than chance fails)
    floor_r2: float | None = 0.0  # regression: R^2 >= floor (0: no better than the mean fails)
    leakage_ratio: float = 0.5  # main error below leakage_ratio x champion's: likely leakage ...
    leakage_min_gain: float = 0.02  # ... with (classification) an accuracy gain above this
    segment_epsilon: float = 0.01  # largest allowed regression of a segment value (see above)
    min_segment_rows: int = 30  # a segment value with fewer rows is reported, not gated
    #: a segment's regression beyond epsilon fails only when a one-sided paired test on its rows says the
    #: challenger is worse at this level (McNemar's exact test for accuracy, a paired t-test on absolute
    #: errors for MAE); None: the point estimate alone decides. The demo's live runs failed 2 of 4 good
    #: candidates on a segment of 108-167 rows by 1-2 points without it
    segment_alpha: float | None = 0.05
    calibration_tolerance: float = 0.02  # classification: ECE <= champion's ECE + tolerance
    latency_budget_ms_per_row: float | None = 5.0
    max_latency_ratio: float | None = 2.0  # challenger latency <= ratio x champion's ...
    #: ... when the challenger's latency is above this (ms/row): a ratio of tenths of a millisecond is no cost to a
    #: user, and measured noise (bench/loop_quality.py: a model on 4x the rows, 0.027 against 0.0097 ms/row; on a
    #: loaded machine, load average 6 on 2 cores, 0.110 against 0.0303 rejected a sound refit of the same trainer)
    latency_ratio_min_ms: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            ("max_ratio", self.max_ratio, self.max_ratio > 0, "> 0"),
            ("leakage_ratio", self.leakage_ratio, 0 < self.leakage_ratio < 1, "in (0, 1)"),
            ("leakage_min_gain", self.leakage_min_gain, 0 <= self.leakage_min_gain < 1, "in [0, 1)"),
            ("segment_epsilon", self.segment_epsilon, self.segment_epsilon >= 0, ">= 0"),
            ("min_segment_rows", self.min_segment_rows, self.min_segment_rows >= 1, ">= 1"),
            *([("segment_alpha", self.segment_alpha, 0 < self.segment_alpha < 1, "in (0, 1)")]
              if self.segment_alpha is not None else []),
            ("calibration_tolerance", self.calibration_tolerance, self.calibration_tolerance >= 0, ">= 0"),
        ]
        if self.min_improvement is not None:
            # a required improvement of 1 - leakage_ratio or more leaves no error that passes both gates
            top = 1 - self.leakage_ratio
            checks.append(("min_improvement", self.min_improvement, 0 <= self.min_improvement < top,
                           f"in [0, {top:g}) (1 - leakage_ratio)"))
        if self.floor_auc is not None:
            checks.append(("floor_auc", self.floor_auc, 0 <= self.floor_auc <= 1, "in [0, 1]"))
        if self.floor_r2 is not None:
            checks.append(("floor_r2", self.floor_r2, self.floor_r2 <= 1, "<= 1"))
        if self.latency_budget_ms_per_row is not None:
            checks.append(("latency_budget_ms_per_row", self.latency_budget_ms_per_row,
                           self.latency_budget_ms_per_row > 0, "> 0"))
        if self.max_latency_ratio is not None:
            checks.append(("max_latency_ratio", self.max_latency_ratio, self.max_latency_ratio > 0, "> 0"))
        for key, value, ok, expected in checks:
            if not (ok and math.isfinite(value)):
                msg = f"{key} must be {expected}, got {value!r}"
                raise ValueError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    """One gate on one evaluation set: what was observed, against what, and a sentence.

    ``passed`` is None for an informational row (a segment with too few rows, a metric that cannot be
    computed, the note that a first model has no champion). ``sample_size`` is the rows the metric rests on.

    Examples
    --------
    >>> r = GateResult(name="mae_vs_champion", set_name="holdout", passed=True, observed=4.21, threshold=4.22,
    ...                sentence="holdout: challenger MAE 4.21 <= 1.05 x champion MAE 4.02 = 4.22: passed",
    ...                sample_size=900)
    >>> r.passed, r.observed <= r.threshold
    (True, True)
    """

    name: str
    set_name: str
    passed: bool | None
    observed: float | None
    threshold: float | None
    sentence: str
    sample_size: int | None = None
    segment: str | None = None  # "attribute=value" for segment rows


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray) -> float:
    """``sum_b n_b/n |mean p_b - fraction positive_b|`` over equal-width bins, as the monitoring computes it.

    The bins are feedback.monitoring.performance's (``ECE_BINS`` of them, a probability of exactly 1 in the
    last), so a challenger's gate ECE and the champion's live ECE are the same quantity. ``y_true`` holds 0/1.

    >>> round(expected_calibration_error(np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.8, 0.2])), 6)
    0.3
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64)
    if len(p) == 0:
        msg = "expected_calibration_error needs at least one row"
        raise ValueError(msg)
    bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    p_b = np.bincount(bins, weights=p, minlength=ECE_BINS)
    y_b = np.bincount(bins, weights=y, minlength=ECE_BINS)
    return float(np.abs(p_b - y_b).sum() / len(p))  # n_b/n * |p_b/n_b - y_b/n_b| = |p_b - y_b| / n


def ece_noise(proba: np.ndarray) -> float:
    """The ECE a perfectly calibrated model with these probabilities shows on these rows by chance alone.

    ECE is biased upwards by sampling noise, the more so the more spread out the probabilities: a constant
    0.5 puts every row in one bin and its noise is ``0.399 / sqrt(n)``, a confident model's ten bins of a few
    dozen rows each show 0.03-0.05 on a few hundred rows even when perfectly calibrated. Per bin, the count of
    positives of a calibrated model has variance ``sum p(1 - p)``, and ``E|X - mu|`` of a normal is
    ``sigma sqrt(2 / pi)``; summed over the bins and divided by ``n`` (the ECE's weighting). The calibration
    gate allows a challenger the noise it has beyond the champion's, so that a sharper model is not failed
    for the noise of its bins.

    >>> round(ece_noise(np.full(400, 0.5)), 4)  # one bin: sqrt(2 / pi) x 0.5 / sqrt(400)
    0.0199
    >>> ece_noise(np.array([0.0, 1.0, 1.0]))  # certain predictions: no noise
    0.0
    """
    p = np.asarray(proba, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    variance = np.bincount(bins, weights=p * (1 - p), minlength=ECE_BINS)
    return float(np.sqrt(2 / np.pi) * np.sqrt(variance).sum() / len(p))


def run_gates(task: str, sets: Sequence[EvalSet], config: GateConfig) -> list[GateResult]:
    """Every offline gate on every present evaluation set; the candidate is published only if :func:`verdict`
    passes.

    >>> y = np.array([10.0, 12.0, 14.0, 16.0] * 10)
    >>> err = np.array([1.0, -1.0] * 20)
    >>> recent = EvalSet(name="recent", y_true=y, challenger=y + 0.9 * err, champion=y + err,
    ...                  challenger_latency_ms_per_row=0.4, champion_latency_ms_per_row=0.3)
    >>> results = run_gates("regression", [recent], GateConfig())
    >>> for r in results[:3]:
    ...     print(r.sentence)
    recent: 0 of the challenger's 40 predictions are not finite (allowed: 0): passed
    recent: challenger MAE 0.900 <= 1.05 x champion MAE 1.00 = 1.05: passed
    recent: challenger RMSE 0.900 <= 1.05 x champion RMSE 1.00 = 1.05: passed
    >>> verdict(results)
    (True, 'passed all 7 checks on recent')
    >>> leaky = EvalSet(name="holdout", y_true=y, challenger=y + 0.3 * err, champion=y + err,
    ...                 challenger_latency_ms_per_row=0.4, champion_latency_ms_per_row=0.3)
    >>> [r.sentence for r in run_gates("regression", [leaky], GateConfig()) if r.name == "leakage"]
    ['holdout: challenger MAE 0.300 is below 0.5 x champion 1.00 = 0.500: likely leakage, failed']
    """
    if task not in TASKS:
        msg = f"task must be one of {TASKS}, got {task!r}"
        raise ValueError(msg)
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        msg = f"evaluation set names must be unique, got {names}"
        raise ValueError(msg)
    if not sets:
        return [GateResult(name="evaluation_sets", set_name="all", passed=False, observed=0.0, threshold=1.0,
                           sentence="no evaluation set (recent window or holdout) to gate on: failed")]
    results: list[GateResult] = []
    for s in sets:
        results.extend(_gate_set(task, s, config))
    return results + _undecided(results, names)


def verdict(results: Sequence[GateResult]) -> tuple[bool, str]:
    """Passed when no gate failed and at least one decided; and one line naming the failed gates.

    >>> ok = GateResult(name="mae_vs_champion", set_name="recent", passed=True, observed=1.0, threshold=1.1,
    ...                 sentence="...")
    >>> bad = GateResult(name="leakage", set_name="holdout", passed=False, observed=0.3, threshold=0.5,
    ...                  sentence="...")
    >>> verdict([ok, bad])
    (False, 'failed 1 of 2 checks: leakage (holdout)')
    >>> verdict([ok])
    (True, 'passed the only check on recent')
    """
    decided = [r for r in results if r.passed is not None]
    if not decided:
        return False, "no gate could decide anything: failed"
    failed = [r for r in decided if r.passed is False]
    if failed:
        where: dict[str, list[str]] = {}
        for r in failed:
            where.setdefault(r.name if r.segment is None else f"{r.name} {r.segment}", []).append(r.set_name)
        named = "; ".join(f"{gate} ({', '.join(dict.fromkeys(sets))})" for gate, sets in where.items())
        return False, f"failed {len(failed)} of {_checks(len(decided))}: {named}"
    sets = ", ".join(dict.fromkeys(r.set_name for r in results))
    info = len(results) - len(decided)
    notes = [f"{info} informational"] if info else []
    if any(r.name == "first_model" for r in results):
        notes.append("no champion yet: gated on the floors and the latency budget alone")
    every = "the only check" if len(decided) == 1 else f"all {_checks(len(decided))}"
    return True, f"passed {every} on {sets}" + (f" ({'; '.join(notes)})" if notes else "")


def _checks(n: int) -> str:
    return f"{n:,} check" if n == 1 else f"{n:,} checks"


# ---------------------------------------------------------------------------------------------------------------
# one evaluation set


def _gate_set(task: str, s: EvalSet, config: GateConfig) -> list[GateResult]:
    _check_inputs(task, s)
    valid = _valid_predictions(task, s)
    rows = [valid]
    if valid.passed:  # metrics of non-finite predictions would only crash or mislead
        metric = _metrics(task, s)
        if s.has_champion:
            for key in _RATIO_METRICS[task]:
                rows.append(_ratio(s, key, metric("challenger", key), metric("champion", key), config.max_ratio))
            main = _MAIN_ERROR[task]
            if config.min_improvement is not None:
                rows.append(_improvement(s, main, metric("challenger", main), metric("champion", main),
                                         config.min_improvement))
            rows.append(_leakage(s, main, metric("challenger", main), metric("champion", main), config,
                                 accuracy=(metric("challenger", "accuracy"), metric("champion", "accuracy"))
                                 if task == "classification" else None))
        else:
            rows.append(_first_model(task, s, config))
        key, floor = ("auc", config.floor_auc) if task == "classification" else ("r2", config.floor_r2)
        if floor is not None:
            rows.append(_floor(s, key, metric("challenger", key), floor))
        if task == "classification" and s.has_champion:
            rows.append(_calibration(s, metric("challenger", "ece"), metric("champion", "ece"),
                                     config.calibration_tolerance))
            if s.challenger_proba is not None and s.champion_proba is not None and len(s):
                extra = ece_noise(_confidence(s, "challenger")) - ece_noise(_confidence(s, "champion"))
                if extra > 0 and rows[-1].threshold is not None:
                    rows[-1] = _calibration(s, metric("challenger", "ece"), metric("champion", "ece"),
                                            config.calibration_tolerance, noise=extra)
    rows.extend(_latency(s, config))
    if valid.passed:
        rows.extend(_segments(task, s, config))
    return rows


def _check_inputs(task: str, s: EvalSet) -> None:
    # Missing or broken inputs from our own worker are bugs, not a verdict on the challenger.
    if task == "classification":
        if s.challenger_proba is None:
            msg = f"evaluation set {s.name!r}: classification needs challenger_proba"
            raise ValueError(msg)
        if s.has_champion:
            if s.champion_proba is None:
                msg = f"evaluation set {s.name!r}: classification needs champion_proba beside champion"
                raise ValueError(msg)
            bad = _bad_probabilities(s.champion_proba)
            if bad:
                msg = f"evaluation set {s.name!r}: champion_proba has {bad:,} values outside [0, 1] or not finite"
                raise ValueError(msg)
        return
    for column, values in (("y_true", s.y_true), ("champion", s.champion)):
        if values is not None:
            bad = int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
            if bad:
                msg = f"evaluation set {s.name!r}: {column} has {bad:,} non-finite values"
                raise ValueError(msg)


def _bad_probabilities(p: np.ndarray) -> int:
    p = np.asarray(p, dtype=np.float64)
    return int((~(np.isfinite(p) & (p >= 0) & (p <= 1))).sum())


def _valid_predictions(task: str, s: EvalSet) -> GateResult:
    n = len(s)
    if task == "classification":
        assert s.challenger_proba is not None  # _check_inputs
        bad, what = _bad_probabilities(s.challenger_proba), "probabilities in [0, 1]"
    else:
        bad, what = int((~np.isfinite(np.asarray(s.challenger, dtype=np.float64))).sum()), "finite"
    ok = bad == 0
    return GateResult(name="valid_predictions", set_name=s.name, passed=ok, observed=float(bad), threshold=0.0,
                      sample_size=n, sentence=(f"{s.name}: {bad:,} of the challenger's {n:,} predictions are not "
                                               f"{what} (allowed: 0): {_verdict_word(ok)}"))


def _metrics(task: str, s: EvalSet) -> Callable[[str, str], Metric]:
    """A memoised ``metric(model, key)`` over one evaluation set."""
    cache: dict[tuple[str, str], Metric] = {}
    y_binary = (np.asarray(s.y_true == s.positive_class, dtype=np.int64)
                if task == "classification" and s.classes is None else None)

    def metric(model: str, key: str) -> Metric:
        if (model, key) not in cache:
            pred = s.challenger if model == "challenger" else s.champion
            proba = s.challenger_proba if model == "challenger" else s.champion_proba
            if s.classes is not None and key in ("log_loss", "ece", "auc", "auc_error"):
                cache[model, key] = _compute_multiclass(key, s.y_true, pred, proba, s.classes)
            else:
                cache[model, key] = _compute(key, s.y_true, pred, proba, y_binary)
        return cache[model, key]

    return metric


def class_columns(values: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """The column of each value's class in ``classes`` (-1: not one of them).

    >>> class_columns(np.array(["b", "z", "a"]), ("a", "b")).tolist()
    [1, -1, 0]
    """
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in np.asarray(values).tolist()], dtype=np.int64)


def multiclass_log_loss(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
    """Mean ``-log p(true class)``, clipped to ``[1e-15, 1 - 1e-15]`` as the monitoring's; a label that is not one
    of ``classes`` has probability 0 (scikit-learn's ``log_loss(y, proba, labels=classes)`` when every label is).

    >>> round(multiclass_log_loss(np.array(["a", "c"]), np.array([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]]),
    ...                           ("a", "b", "c")), 6)
    0.458145
    """
    p = np.asarray(proba, dtype=np.float64)
    column = class_columns(y_true, classes)
    true_p = np.where(column >= 0, p[np.arange(len(p)), np.maximum(column, 0)], 0.0)
    return float(-np.mean(np.log(np.clip(true_p, 1e-15, 1 - 1e-15))))


def top_label_confidence(predicted: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """The probability each row gave its own prediction (0 when the prediction is not one of ``classes``): the
    confidence top-label calibration bins, as the monitoring's.

    >>> top_label_confidence(np.array(["c", "a"]), np.array([[0.5, 0.2, 0.3], [0.6, 0.3, 0.1]]), ("a", "b", "c"))
    array([0.3, 0.6])
    """
    p = np.asarray(proba, dtype=np.float64)
    column = class_columns(predicted, classes)
    return np.where(column >= 0, p[np.arange(len(p)), np.maximum(column, 0)], 0.0)


def _confidence(s: EvalSet, which: str) -> np.ndarray:
    """What ECE bins for one model: the positive-class probability, or a multiclass model's top-label confidence."""
    proba = getattr(s, f"{which}_proba")
    if s.classes is None:
        return proba
    return top_label_confidence(getattr(s, which), proba, s.classes)


def _compute_multiclass(key: str, y: np.ndarray, pred: np.ndarray | None, proba: np.ndarray | None,
                        classes: Sequence[str]) -> Metric:
    """Log loss, top-label ECE and macro one-vs-rest AUC of a model of any number of classes."""
    n = len(y)
    if n == 0:
        return "no rows"
    assert proba is not None and pred is not None  # classification, checked by _check_inputs
    if key == "log_loss":
        return multiclass_log_loss(y, proba, classes)
    if key == "ece":
        right = (np.asarray(pred) == np.asarray(y)).astype(np.int64)
        return expected_calibration_error(right, top_label_confidence(pred, proba, classes))
    # macro one-vs-rest AUC over the classes with both their own rows and others' (chance is 0.5)
    p = np.asarray(proba, dtype=np.float64)
    column = class_columns(y, classes)
    aucs = [float(roc_auc_score(column == j, p[:, j])) for j in range(len(classes))
            if 0 < int((column == j).sum()) < n]
    if not aucs:
        return f"one class only ({len(set(np.asarray(y).tolist())):,} label value(s) in {n:,} rows)"
    auc = float(np.mean(aucs))
    return auc if key == "auc" else 1.0 - auc


def _compute(key: str, y: np.ndarray, pred: np.ndarray | None, proba: np.ndarray | None,
             y_binary: np.ndarray | None) -> Metric:
    n = len(y)
    if n == 0:
        return "no rows"
    if key in ("mae", "rmse", "r2"):
        yf, pf = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
        if key == "mae":
            return float(mean_absolute_error(yf, pf))
        if key == "rmse":
            return float(root_mean_squared_error(yf, pf))
        if n < 2 or np.ptp(yf) == 0:  # sklearn would warn, or call a constant label's R^2 0 or 1
            return f"every label is equal in {n:,} rows"
        return float(r2_score(yf, pf))
    if key == "accuracy":
        return float(np.mean(np.asarray(pred) == np.asarray(y)))
    assert y_binary is not None and proba is not None  # classification, checked by _check_inputs
    p = np.asarray(proba, dtype=np.float64)
    if key == "log_loss":
        return float(log_loss(y_binary, p, labels=[0, 1]))
    if key == "ece":
        return expected_calibration_error(y_binary, p)
    if key in ("auc", "auc_error"):
        positives = int(y_binary.sum())
        if positives in (0, n):
            return f"one class only ({positives:,} positive of {n:,} rows)"
        auc = float(roc_auc_score(y_binary, p))
        return auc if key == "auc" else 1.0 - auc
    msg = f"unknown metric {key!r}"
    raise ValueError(msg)


def _not_computable(name: str, s: EvalSet, what: str, *reasons: Metric) -> GateResult:
    why = "; ".join(dict.fromkeys(r for r in reasons if isinstance(r, str)))
    return GateResult(name=name, set_name=s.name, passed=None, observed=None, threshold=None,
                      sentence=f"{s.name}: {what} not computable: {why}", sample_size=len(s))


def _verdict_word(ok: bool) -> str:
    return "passed" if ok else "failed"


def _ratio(s: EvalSet, key: str, challenger: Metric, champion: Metric, ratio: float) -> GateResult:
    name, label = f"{key}_vs_champion", _LABELS[key]
    if isinstance(challenger, str) or isinstance(champion, str):
        return _not_computable(name, s, f"{label} vs champion", challenger, champion)
    threshold = ratio * champion
    ok = challenger <= threshold
    a, t = _pair(challenger, threshold)
    return GateResult(
        name=name, set_name=s.name, passed=ok, observed=challenger, threshold=threshold, sample_size=len(s),
        sentence=(f"{s.name}: challenger {label} {a} {'<=' if ok else '>'} {ratio:g} x champion {label} "
                  f"{_num(champion)} = {t}: {_verdict_word(ok)}"))


def _improvement(s: EvalSet, key: str, challenger: Metric, champion: Metric, fraction: float) -> GateResult:
    label = _LABELS[key]
    if isinstance(challenger, str) or isinstance(champion, str):
        return _not_computable("min_improvement", s, f"{label} improvement", challenger, champion)
    threshold = (1 - fraction) * champion
    ok = challenger <= threshold
    a, t = _pair(challenger, threshold)
    change = (champion - challenger) / champion if champion > 0 else 0.0
    gain = f"{change:.1%} lower" if change >= 0 else f"{-change:.1%} higher"
    return GateResult(
        name="min_improvement", set_name=s.name, passed=ok, observed=challenger, threshold=threshold,
        sample_size=len(s),
        sentence=(f"{s.name}: challenger {label} {a} is {gain} than champion {_num(champion)}, needs at least "
                  f"{fraction:.1%} lower (<= {t}): {_verdict_word(ok)}"))


def _leakage(s: EvalSet, key: str, challenger: Metric, champion: Metric, config: GateConfig, *,
             accuracy: tuple[Metric, Metric] | None) -> GateResult:
    label, ratio = _LABELS[key], config.leakage_ratio
    if isinstance(challenger, str) or isinstance(champion, str):
        return _not_computable("leakage", s, f"{label} leakage check", challenger, champion)
    base, whose = champion, "champion"
    base_accuracy = accuracy[1] if accuracy is not None else None
    reference = s.champion_reference_error
    if reference is not None and reference < champion:
        base, whose, base_accuracy = reference, "production's best level", s.champion_reference_accuracy
    threshold = ratio * base
    leaky = challenger < threshold
    a, t = _pair(challenger, threshold)
    tail = "likely leakage, failed" if leaky else "not suspiciously good, passed"
    if leaky and accuracy is not None and isinstance(accuracy[0], float) and isinstance(base_accuracy, float):
        gain = accuracy[0] - base_accuracy
        if gain <= config.leakage_min_gain:
            leaky = False
            tail = (f"but its accuracy {accuracy[0]:.3f} gains only {gain:+.3f} on {base_accuracy:.3f} (a leak gains "
                    f"more than {config.leakage_min_gain:g}): passed")
        else:
            tail = (f"and its accuracy {accuracy[0]:.3f} gains {gain:+.3f} on {base_accuracy:.3f}: likely leakage, "
                    "failed")
    return GateResult(
        name="leakage", set_name=s.name, passed=not leaky, observed=challenger, threshold=threshold,
        sample_size=len(s),
        sentence=(f"{s.name}: challenger {label} {a} is {'below' if challenger < threshold else 'not below'} {ratio:g} "
                  f"x {whose} {_num(base)} = {t}{',' if tail.startswith(('but', 'and')) else ':'} {tail}"))


def _floor(s: EvalSet, key: str, challenger: Metric, floor: float) -> GateResult:
    name, label = f"floor_{key}", _LABELS[key]
    if isinstance(challenger, str):
        return _not_computable(name, s, f"challenger {label}", challenger)
    ok = challenger >= floor
    a, t = _pair(challenger, floor)
    return GateResult(name=name, set_name=s.name, passed=ok, observed=challenger, threshold=floor,
                      sample_size=len(s),
                      sentence=f"{s.name}: challenger {label} {a} {'>=' if ok else '<'} floor {t}: {_verdict_word(ok)}")


def _calibration(s: EvalSet, challenger: Metric, champion: Metric, tolerance: float, *,
                 noise: float = 0.0) -> GateResult:
    if isinstance(challenger, str) or isinstance(champion, str):
        return _not_computable("calibration", s, "ECE vs champion", challenger, champion)
    threshold = champion + tolerance + noise
    ok = challenger <= threshold
    a, t = _pair(challenger, threshold)
    extra = f" + sampling noise {noise:.3f}" if noise > 0 else ""
    return GateResult(
        name="calibration", set_name=s.name, passed=ok, observed=challenger, threshold=threshold,
        sample_size=len(s),
        sentence=(f"{s.name}: challenger ECE {a} {'<=' if ok else '>'} champion ECE {_num(champion)} + "
                  f"{tolerance:g}{extra} = {t}: {_verdict_word(ok)}"))


def _first_model(task: str, s: EvalSet, config: GateConfig) -> GateResult:
    floor, label = (config.floor_auc, "AUC") if task == "classification" else (config.floor_r2, "R^2")
    budget = config.latency_budget_ms_per_row
    gates = ([f"the floor {label} >= {floor:g}"] if floor is not None else []) + (
        [f"the latency budget {budget:g} ms/row"] if budget is not None else [])
    if floor is None:  # nothing would check its quality
        return GateResult(name="first_model", set_name=s.name, passed=False, observed=None, threshold=None,
                          sample_size=len(s),
                          sentence=(f"{s.name}: no champion yet and no {label} floor configured: nothing checks "
                                    "the first model's quality: failed"))
    return GateResult(name="first_model", set_name=s.name, passed=None, observed=None, threshold=None,
                      sample_size=len(s),
                      sentence=f"{s.name}: no champion yet: the first model is gated on {' and '.join(gates)} alone")


def _latency(s: EvalSet, config: GateConfig) -> list[GateResult]:
    rows = []
    ms = s.challenger_latency_ms_per_row
    if (budget := config.latency_budget_ms_per_row) is not None:
        ok = ms <= budget
        a, t = _pair(ms, budget)
        rows.append(GateResult(
            name="latency_budget", set_name=s.name, passed=ok, observed=ms, threshold=budget,
            sentence=(f"{s.name}: challenger {a} ms/row {'<=' if ok else '>'} budget {t} ms/row: "
                      f"{_verdict_word(ok)}")))
    if (ratio := config.max_latency_ratio) is not None and s.has_champion:
        champion = s.champion_latency_ms_per_row
        if champion is None:
            rows.append(_not_computable("latency_ratio", s, "latency ratio", "champion latency not measured"))
        else:
            threshold = ratio * champion
            ok = ms <= threshold or ms <= config.latency_ratio_min_ms
            a, t = _pair(ms, threshold)
            small = (f" (at most {config.latency_ratio_min_ms:g} ms/row: too small to count)"
                     if ms > threshold and ok else "")
            rows.append(GateResult(
                name="latency_ratio", set_name=s.name, passed=ok, observed=ms, threshold=threshold,
                sentence=(f"{s.name}: challenger {a} ms/row {'<=' if ms <= threshold else '>'} {ratio:g} x champion "
                          f"{_num(champion)} ms/row = {t} ms/row{small}: {_verdict_word(ok)}")))
    return rows


def _segments(task: str, s: EvalSet, config: GateConfig) -> list[GateResult]:
    rows = []
    eps, label = config.segment_epsilon, _LABELS["accuracy" if task == "classification" else "mae"]
    for attr, labels in s.segments.items():
        values, inverse = np.unique(np.asarray(labels).astype(str), return_inverse=True)
        for i, value in enumerate(values):
            mask = inverse == i
            n, tag = int(mask.sum()), f"{attr}={value}"
            head = f"{s.name}: segment {tag}"
            row = partial(GateResult, name="segment", set_name=s.name, sample_size=n, segment=tag)
            if n < config.min_segment_rows:
                rows.append(row(passed=None, observed=float(n), threshold=float(config.min_segment_rows),
                                sentence=f"{head}: {n:,} rows < {config.min_segment_rows:,}: too few rows, not gated"))
                continue
            challenger = _segment_metric(task, s.y_true[mask], s.challenger[mask], n)
            if s.champion is None:
                rows.append(row(passed=None, observed=challenger, threshold=None,
                                sentence=f"{head}: challenger {label} {_num(challenger)} (n={n:,}), no champion yet"))
                continue
            champion = _segment_metric(task, s.y_true[mask], s.champion[mask], n)
            vs = f"{head}: challenger {label} {_num(challenger)} vs champion {_num(champion)} (n={n:,})"
            if task == "classification":  # accuracy: a drop is the regression, in accuracy points
                drop = round((champion - challenger) * n) / n  # whole rows: no float residue at epsilon
                ok = drop <= eps
                if drop >= 0:
                    change = f"regressed {_apart(drop, eps, 3)} {'<=' if ok else '>'} {eps:g}"
                else:
                    change = f"improved by {-drop:.3f}"
                if not ok:
                    ok, change = _significance(change, config.segment_alpha, "McNemar", _mcnemar_worse(
                        s.y_true[mask], s.challenger[mask], s.champion[mask]))
                rows.append(row(passed=ok, observed=drop, threshold=eps,
                                sentence=f"{vs}: {change}, {_verdict_word(ok)}"))
            else:  # MAE: a rise is the regression, relative to the champion's
                rise = (challenger / champion - 1) if champion > 0 else (math.inf if challenger > 0 else 0.0)
                ok = rise <= eps
                if rise >= 0:
                    change = f"rose {_apart(rise * 100, eps * 100, 1)}% {'<=' if ok else '>'} {eps:.1%}"
                else:
                    change = f"fell {-rise:.1%}"
                if not ok:
                    ok, change = _significance(change, config.segment_alpha, "paired t", _paired_worse(
                        s.y_true[mask], s.challenger[mask], s.champion[mask]))
                rows.append(row(passed=ok, observed=rise, threshold=eps,
                                sentence=f"{vs}: {change}, {_verdict_word(ok)}"))
    return rows


def _significance(change: str, alpha: float | None, test: str, p: float) -> tuple[bool, str]:
    """A regression past epsilon: failed when ``p`` (challenger worse, one-sided) is below ``alpha``."""
    if alpha is None:
        return False, change
    if p < alpha:
        return False, f"{change}, significantly ({test} p = {p:.2g} < {alpha:g})"
    return True, f"{change}, but not significantly ({test} p = {p:.2g} >= {alpha:g})"


def _mcnemar_worse(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> float:
    """One-sided exact McNemar: of the rows exactly one model gets right, does the champion win more than half?"""
    from scipy.stats import binomtest

    right_ch, right_champ = np.asarray(challenger) == np.asarray(y), np.asarray(champion) == np.asarray(y)
    champion_only = int(np.sum(right_champ & ~right_ch))
    discordant = champion_only + int(np.sum(right_ch & ~right_champ))
    if discordant == 0:
        return 1.0
    return float(binomtest(champion_only, discordant, 0.5, alternative="greater").pvalue)


def _paired_worse(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> float:
    """One-sided paired t-test: are the challenger's absolute errors larger than the champion's on these rows?"""
    from scipy.stats import ttest_rel

    yf = np.asarray(y, dtype=np.float64)
    a, b = np.abs(np.asarray(challenger, dtype=np.float64) - yf), np.abs(np.asarray(champion, dtype=np.float64) - yf)
    if np.allclose(a - b, (a - b)[0]):  # constant differences: no variance to test
        return 0.0 if (a - b)[0] > 0 else 1.0
    return float(ttest_rel(a, b, alternative="greater").pvalue)


def _segment_metric(task: str, y: np.ndarray, pred: np.ndarray, n: int) -> float:
    if task == "classification":
        # from the count, so a drop of k rows in n is k / n exactly and a drop of exactly epsilon passes
        return int(accuracy_score(y, pred, normalize=False)) / n
    return float(mean_absolute_error(np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)))


def _undecided(results: Sequence[GateResult], set_names: Sequence[str]) -> list[GateResult]:
    """A failed row for each gate that was due but no evaluation set could decide (never a silent pass)."""
    decided = {r.name for r in results if r.passed is not None}
    due = dict.fromkeys(r.name for r in results if r.name not in _NEVER_REQUIRED)
    return [GateResult(name=name, set_name="all", passed=False, observed=None, threshold=None,
                       sentence=f"{name} could not be checked on any evaluation set ({', '.join(set_names)}): failed")
            for name in due if name not in decided]


# ---------------------------------------------------------------------------------------------------------------
# numbers in sentences


def _num(x: float, significant: int = 3) -> str:
    """``x`` to ``significant`` digits without exponent notation: 4.21, 0.312, 0.700, 1,235."""
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return f"{0:.{significant - 1}f}"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _apart(x: float, limit: float, decimals: int) -> str:
    """``x`` with at least ``decimals`` decimals, more if it would otherwise print as ``limit``."""
    for d in range(decimals, 13):
        text = f"{x:.{d}f}"
        if x == limit or not math.isfinite(x) or float(text) != limit:
            return text
    return repr(x)


def _pair(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with enough digits that two different values never print the same."""
    for significant in range(3, 13):
        sa, sb = _num(a, significant), _num(b, significant)
        if a == b or float(sa.replace(",", "")) != float(sb.replace(",", "")):
            return sa, sb
    return repr(a), repr(b)
