"""Model performance from additive per-window integer aggregates, with confidence intervals."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

# Every non-count quantity is stored as round(x * SCALE): integer sums are exact, so a window
# holds the same aggregates whatever order its events (and label corrections) arrived in.
SCALE: int = 10**9
SCORE_BINS: int = 200
ECE_BINS: int = 10

_P_CLIP = 1e-15
# Regression aggregates that count events or sum non-negative terms (err_sum and y_sum may be negative).
_REGRESSION_NON_NEGATIVE = ("n", "abs_err_sum", "sq_err_sum", "sq_err_sq_sum", "y_sq_sum")


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricValue:
    """One metric of one window: the estimate, its confidence interval and how it was made.

    ``n`` is the number of events the estimate rests on (for precision the predicted positives,
    for recall the actual positives, for f1 ``tp + fp + fn``, for scored metrics ``n_scored``).

    Examples
    --------
    >>> m = MetricValue(name="accuracy", value=0.9, ci_low=0.82, ci_high=0.95, n=100,
    ...                 higher_is_better=True, method="wilson")
    >>> m.ci_low <= m.value <= m.ci_high
    True
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool
    method: str


# the bin keys, made once (an f-string per event was a measurable share of the label path)
_SCORE_POS = tuple(f"score_pos:{b}" for b in range(SCORE_BINS))
_SCORE_NEG = tuple(f"score_neg:{b}" for b in range(SCORE_BINS))
_ECE_N = tuple(f"ece_n:{b}" for b in range(ECE_BINS))
_ECE_P = tuple(f"ece_p:{b}" for b in range(ECE_BINS))
_ECE_Y = tuple(f"ece_y:{b}" for b in range(ECE_BINS))


def _q(x: float) -> int:
    return round(x * SCALE)


def _is_bool(x: object) -> bool:
    # exact type tests: isinstance against a union was a measurable share of the ingest's label path
    t = type(x)
    return t is bool or t is np.bool_


def same_label(a: object, b: object) -> bool:
    """Labels compared as JSON values.

    >>> same_label(1, 1.0), same_label(True, 1), same_label(True, True)
    (True, False, True)
    """
    # Labels compare as JSON values: Python's True == 1 must not make a boolean label match a number.
    if _is_bool(a) or _is_bool(b):
        return _is_bool(a) and _is_bool(b) and bool(a) == bool(b)
    return bool(a == b)


def _check_probability(p: float) -> float:
    value = float(p)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        msg = f"probability of the positive class must be in [0, 1], got {p!r}"
        raise ValueError(msg)
    return value


def _check_lengths(**columns: Sequence[object]) -> None:
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        msg = f"columns must have equal lengths, got {lengths}"
        raise ValueError(msg)


def _put(out: dict[str, int], key: str, value: int) -> None:
    # Contributions hold no zero entries, so summing them keeps the canonical (zero-free) form.
    if value:
        out[key] = value


def classification_contributions(
    y_true: Sequence[object], y_pred: Sequence[object], p_pos: Sequence[float | None], *, positive: object
) -> list[dict[str, int]]:
    """One aggregate contribution per labelled classification event.

    Counts ``n``, ``correct`` (``y_true == y_pred`` over all classes) and the one-vs-rest
    confusion ``tp, fp, fn, tn`` for ``positive``. When the model gave a probability ``p`` of
    the positive class it also adds ``n_scored``, the per-event log loss and its square (with
    ``p`` clipped to ``[1e-15, 1 - 1e-15]``), one count in the ROC histogram
    (``score_pos:<b>``/``score_neg:<b>``) and the calibration bin sums
    (``ece_n:<b>``, ``ece_p:<b>``, ``ece_y:<b>``). Labels are equal when equal as JSON
    values, so ``True`` is not ``1``. Zero entries are left out.

    Examples
    --------
    >>> classification_contributions([1, 0], [1, 1], [0.9, None], positive=1)[1]
    {'n': 1, 'fp': 1}
    >>> sorted(classification_contributions([True], [1], [0.25], positive=True)[0])
    ['ece_n:2', 'ece_p:2', 'ece_y:2', 'fn', 'logloss_sq_sum', 'logloss_sum', 'n', 'n_scored', 'score_pos:50']
    """
    _check_lengths(y_true=y_true, y_pred=y_pred, p_pos=p_pos)
    out: list[dict[str, int]] = []
    for truth, guess, p in zip(y_true, y_pred, p_pos, strict=True):
        actual, predicted = same_label(truth, positive), same_label(guess, positive)
        c: dict[str, int] = {"n": 1}
        _put(c, "correct", int(same_label(truth, guess)))
        cell = ("tp" if predicted else "fn") if actual else ("fp" if predicted else "tn")
        c[cell] = 1
        if p is not None:
            prob = _check_probability(p)
            clipped = min(max(prob, _P_CLIP), 1.0 - _P_CLIP)
            loss = -math.log(clipped if actual else 1.0 - clipped)
            c["n_scored"] = 1
            _put(c, "logloss_sum", _q(loss))
            _put(c, "logloss_sq_sum", _q(loss * loss))
            score_bin = min(int(prob * SCORE_BINS), SCORE_BINS - 1)
            c[(_SCORE_POS if actual else _SCORE_NEG)[score_bin]] = 1
            ece_bin = min(int(prob * ECE_BINS), ECE_BINS - 1)
            c[_ECE_N[ece_bin]] = 1
            _put(c, _ECE_P[ece_bin], _q(prob))
            _put(c, _ECE_Y[ece_bin], int(actual))
        out.append(c)
    return out


CONFUSION_PREFIX = "cm:"
#: a multiclass window reports at most this many confusion cells (its largest)
CONFUSION_CELLS = 20


def class_value(label: object) -> object:
    """A label as one class of the multiclass confusion: a whole float is its integer (JSON's ``1.0`` is ``1``,
    as :func:`same_label` has it), booleans and strings stay what they are (``True`` is not ``1``, ``"1"`` is
    not ``1``).

    >>> class_value(2.0), class_value(True), class_value("2"), class_value(np.int64(3))
    (2, True, '2', 3)
    """
    if _is_bool(label):
        return bool(label)
    if isinstance(label, np.generic):
        label = label.item()
    if type(label) is float and label.is_integer():
        return int(label)
    return label


def confusion_key(truth: object, predicted: object) -> str:
    """The aggregate key of one confusion cell: the pair of classes as a JSON array, so that the types survive.

    >>> confusion_key("a", "b"), confusion_key(1.0, True)
    ('cm:["a","b"]', 'cm:[1,true]')
    """
    return CONFUSION_PREFIX + json.dumps([class_value(truth), class_value(predicted)], separators=(",", ":"))


def multiclass_contributions(
    y_true: Sequence[object], y_pred: Sequence[object], probabilities: Sequence[Mapping[str, float] | None]
) -> list[dict[str, int]]:
    """One aggregate contribution per labelled event of a model of any number of classes (no positive class).

    Counts ``n``, ``correct`` and one confusion cell ``cm:[<true>,<predicted>]`` (:func:`confusion_key`). When
    the event carries class probabilities (keyed by the class as ``category_key`` writes it: ``"a"``, ``"1"``,
    ``"true"``), it adds ``n_scored``, the log loss of the true class's probability and its square (clipped to
    ``[1e-15, 1 - 1e-15]``; a class the probabilities leave out has probability 0), and the top-label calibration
    bins (``ece_n:<b>``, ``ece_p:<b>``, ``ece_y:<b>``): the probability the event gave its own prediction
    against whether that prediction was right. Zero entries are left out.

    Examples
    --------
    >>> multiclass_contributions(["a"], ["b"], [None])[0]
    {'n': 1, 'cm:["a","b"]': 1}
    >>> c = multiclass_contributions([2], [2], [{"1": 0.1, "2": 0.7, "3": 0.2}])[0]
    >>> sorted(c), c["logloss_sum"] == round(-math.log(0.7) * SCALE)
    (['cm:[2,2]', 'correct', 'ece_n:7', 'ece_p:7', 'ece_y:7', 'logloss_sq_sum', 'logloss_sum', 'n', 'n_scored'], True)
    """
    from feedback.monitoring.profile import category_key  # profile imports nothing of ours; no cycle

    _check_lengths(y_true=y_true, y_pred=y_pred, probabilities=probabilities)
    out: list[dict[str, int]] = []
    # a batch repeats a few pairs of classes: each pair's key is made once (keyed by type too: True is not 1)
    keys: dict[tuple[type, object, type, object], str] = {}
    for truth, guess, proba in zip(y_true, y_pred, probabilities, strict=True):
        right = same_label(truth, guess)
        c: dict[str, int] = {"n": 1}
        _put(c, "correct", int(right))
        pair = (type(truth), truth, type(guess), guess)
        key = keys.get(pair)
        if key is None:
            key = keys[pair] = confusion_key(truth, guess)
        c[key] = 1
        if proba is not None:
            p_true = _check_probability(proba.get(category_key(class_value(truth)), 0.0))
            clipped = min(max(p_true, _P_CLIP), 1.0 - _P_CLIP)
            loss = -math.log(clipped)
            c["n_scored"] = 1
            _put(c, "logloss_sum", _q(loss))
            _put(c, "logloss_sq_sum", _q(loss * loss))
            confidence = _check_probability(proba.get(category_key(class_value(guess)), 0.0))
            ece_bin = min(int(confidence * ECE_BINS), ECE_BINS - 1)
            c[_ECE_N[ece_bin]] = 1
            _put(c, _ECE_P[ece_bin], _q(confidence))
            _put(c, _ECE_Y[ece_bin], int(right))
        out.append(c)
    return out


def regression_contributions(y_true: Sequence[float], y_pred: Sequence[float]) -> list[dict[str, int]]:
    """One aggregate contribution per labelled regression event, with error ``e = y_pred - y_true``.

    Keys: ``n``, ``err_sum``, ``abs_err_sum``, ``sq_err_sum``, ``sq_err_sq_sum`` (``e**4``),
    ``y_sum``, ``y_sq_sum``; all but ``n`` quantised to ``round(x * SCALE)``. Zero entries are
    left out. A non-finite value raises ``ValueError``.

    Examples
    --------
    >>> c = regression_contributions([2.0], [1.5])[0]
    >>> c["n"], c["err_sum"], c["abs_err_sum"], c["sq_err_sum"], c["sq_err_sq_sum"], c["y_sum"] == 2 * SCALE
    (1, -500000000, 500000000, 250000000, 62500000, True)
    """
    _check_lengths(y_true=y_true, y_pred=y_pred)
    out: list[dict[str, int]] = []
    for truth, guess in zip(y_true, y_pred, strict=True):
        y, e = float(truth), float(guess) - float(truth)
        if not (math.isfinite(y) and math.isfinite(e)):
            msg = f"regression values must be finite, got y_true={truth!r}, y_pred={guess!r}"
            raise ValueError(msg)
        c: dict[str, int] = {"n": 1}
        for key, value in (
            ("err_sum", e),
            ("abs_err_sum", abs(e)),
            ("sq_err_sum", e * e),
            ("sq_err_sq_sum", (e * e) ** 2),
            ("y_sum", y),
            ("y_sq_sum", y * y),
        ):
            _put(c, key, _q(value))
        out.append(c)
    return out


def add(acc: dict[str, int], contribution: Mapping[str, int], sign: int = 1) -> None:
    """Add (``sign=1``) or subtract (``sign=-1``) one contribution into ``acc`` in place.

    Keys that reach zero are removed, so the same multiset of events always gives the same dict.

    Examples
    --------
    >>> acc: dict[str, int] = {}
    >>> add(acc, {"n": 1, "tp": 1})
    >>> add(acc, {"n": 1, "fp": 1})
    >>> add(acc, {"n": 1, "tp": 1}, sign=-1)
    >>> acc
    {'n': 1, 'fp': 1}
    """
    if sign not in (1, -1):
        msg = f"sign must be 1 or -1, got {sign!r}"
        raise ValueError(msg)
    for key, value in contribution.items():
        total = acc.get(key, 0) + sign * value
        if total:
            acc[key] = total
        else:
            acc.pop(key, None)


@functools.cache
def _z(confidence: float) -> float:
    """The normal quantile of a two-sided ``confidence`` interval: computed once per confidence level."""
    if not 0.0 < confidence < 1.0:
        msg = f"confidence must be in (0, 1), got {confidence!r}"
        raise ValueError(msg)
    from scipy.special import ndtri  # here, not at import: the ingest workers import this module and never need it

    return float(ndtri(0.5 + confidence / 2.0))  # the normal quantile: scipy.stats.norm.ppf's own formula


def _check_non_negative(acc: Mapping[str, int], keys: Sequence[str] | None = None) -> None:
    # A negative count means a correction subtracted something that was never added.
    if keys is None and (not acc or min(acc.values()) >= 0):
        return
    for key in acc if keys is None else keys:
        if acc.get(key, 0) < 0:
            msg = f"aggregate {key!r} is negative ({acc[key]}): a subtraction without its addition"
            raise ValueError(msg)


def _metric(
    name: str, value: float, low: float, high: float, *, n: int, higher_is_better: bool, method: str
) -> MetricValue:
    # Rounding (and the f1 prior) can leave the estimate a hair outside its interval; the
    # interval is widened to hold it, never the estimate moved.
    return MetricValue(
        name=name,
        value=value,
        ci_low=min(low, value),
        ci_high=max(high, value),
        n=n,
        higher_is_better=higher_is_better,
        method=method,
    )


def _wilson(name: str, k: int, n: int, z: float) -> MetricValue:
    # Newcombe's form without continuity correction, as scipy's binomtest(...).proportion_ci("wilson").
    p = k / n
    denom = 2.0 * (n + z * z)
    center = (2.0 * n * p + z * z) / denom
    delta = z / denom * math.sqrt(4.0 * n * p * (1.0 - p) + z * z)
    low = 0.0 if k == 0 else max(0.0, center - delta)
    high = 1.0 if k == n else min(1.0, center + delta)
    return _metric(name, p, low, high, n=n, higher_is_better=True, method="wilson")


def _sample_variance(total: int, total_sq: int, n: int) -> float:
    """Unbiased variance of x from n, sum(round(x*SCALE)) and sum(round(x**2*SCALE)); nan below n=2."""
    if n < 2:
        return math.nan
    # Integer numerator: no cancellation error, only the per-event quantisation (clamped at 0).
    numerator = max(0, n * total_sq * SCALE - total * total)
    return numerator / (SCALE * SCALE * n * (n - 1))


def _normal_mean(
    name: str,
    total: int,
    total_sq: int,
    n: int,
    z: float,
    *,
    bounds: tuple[float, float],
    higher_is_better: bool,
) -> MetricValue:
    mean = total / (SCALE * n)
    variance = _sample_variance(total, total_sq, n)
    if math.isnan(variance):  # one event: the spread is unknown, the interval is the whole range
        low, high = bounds
    else:
        half = z * math.sqrt(variance / n)
        low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return _metric(name, mean, low, high, n=n, higher_is_better=higher_is_better, method="normal")


def _f1(tp: int, fp: int, fn: int, z: float) -> MetricValue:
    """F1 with an interval from its Jaccard index: F1 = 2J / (1 + J) with J = tp / (tp + fp + fn), a proportion of
    the tp + fp + fn events that matter, so Wilson's interval of J, mapped through that increasing function, is
    F1's (no draws: the same figures every time, in microseconds).

    >>> m = _f1(30, 10, 5, 1.959963984540054)
    >>> round(m.value, 4), round(m.ci_low, 4), round(m.ci_high, 4), m.method
    (0.8, 0.6848, 0.8804, 'wilson-jaccard')
    """
    jaccard = _wilson("f1", tp, tp + fp + fn, z)
    value = 2 * tp / (2 * tp + fp + fn)
    low, high = (2 * j / (1 + j) for j in (jaccard.ci_low, jaccard.ci_high))
    return _metric("f1", value, low, high, n=tp + fp + fn, higher_is_better=True, method="wilson-jaccard")


@functools.cache
def _bin_keys(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}:{b}" for b in range(count))


def _bins(acc: Mapping[str, int], prefix: str, count: int) -> list[int]:
    get = acc.get
    return [get(key, 0) for key in _bin_keys(prefix, count)]


def _roc_auc(acc: Mapping[str, int], z: float) -> MetricValue | None:
    pos, neg = _bins(acc, "score_pos", SCORE_BINS), _bins(acc, "score_neg", SCORE_BINS)
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney in integers: a positive beats every negative in a lower bin and ties (1/2) its own bin.
    twice_wins, below = 0, 0
    for p_b, n_b in zip(pos, neg, strict=True):
        twice_wins += p_b * (2 * below + n_b)
        below += n_b
    auc = twice_wins / (2 * n_pos * n_neg)
    # Hanley & McNeil (1982), with Q1 - A^2 and Q2 - A^2 in factored form so the variance is never negative.
    q1_excess = auc * (1.0 - auc) ** 2 / (2.0 - auc)
    q2_excess = auc * auc * (1.0 - auc) / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (n_pos - 1) * q1_excess + (n_neg - 1) * q2_excess) / (n_pos * n_neg)
    half = z * math.sqrt(variance)
    return _metric(
        "roc_auc",
        auc,
        max(0.0, auc - half),
        min(1.0, auc + half),
        n=n_pos + n_neg,
        higher_is_better=True,
        method="hanley-mcneil",
    )


def _ece(acc: Mapping[str, int], n_scored: int, z: float) -> MetricValue:
    ece, variance = 0.0, 0.0
    for b in range(ECE_BINS):
        n_b = acc.get(f"ece_n:{b}", 0)
        if n_b == 0:
            continue
        frac_pos = acc.get(f"ece_y:{b}", 0) / n_b
        mean_p = acc.get(f"ece_p:{b}", 0) / (SCALE * n_b)
        ece += n_b / n_scored * abs(mean_p - frac_pos)
        # Var of (n_b/n) * frac_pos with frac_pos ~ Binomial(n_b, observed)/n_b and mean_p held fixed.
        variance += n_b * frac_pos * (1.0 - frac_pos) / (n_scored * n_scored)
    half = z * math.sqrt(variance)
    return _metric(
        "ece", ece, max(0.0, ece - half), min(1.0, ece + half), n=n_scored, higher_is_better=False, method="normal"
    )


def classification_metrics(
    acc: Mapping[str, int], *, confidence: float = 0.95, seed: int = 0
) -> dict[str, MetricValue]:
    """Accuracy, precision, recall, f1, ROC AUC, log loss and ECE of one classification window.

    A metric whose denominator is zero is omitted rather than reported as nan (no events: ``{}``;
    no predicted positives: no precision; one class only among scored events: no ``roc_auc``).

    Intervals at ``confidence``: accuracy, precision and recall use Wilson's score interval
    (no continuity correction); f1 is ``2J / (1 + J)`` of the Wilson interval of its Jaccard index
    ``J = tp / (tp + fp + fn)`` (:func:`_f1`); ``seed`` is not used (no metric draws any more; kept
    for callers); ``roc_auc`` is the Mann-Whitney statistic of the two score histograms
    (pairs within one bin count one half, see :func:`auc_max_error`) with the Hanley-McNeil
    (1982) standard error; ``log_loss`` is the mean per-event loss with a normal interval from
    the sum of squares (the whole range ``[0, inf]`` with one scored event); ``ece`` is
    ``sum_b n_b/n |mean p_b - fraction positive_b|`` over ``ECE_BINS`` bins with a normal
    interval from each bin's binomial variance of the observed fraction, holding ``mean p_b``
    fixed and ignoring the upward bias the absolute value adds (an ECE near 0 is biased up and
    its interval is too narrow there). Any interval is widened to contain its estimate.

    Examples
    --------
    >>> acc: dict[str, int] = {}
    >>> for c in classification_contributions([1, 1, 0, 0], [1, 0, 0, 0], [0.9, 0.4, 0.3, 0.1], positive=1):
    ...     add(acc, c)
    >>> m = classification_metrics(acc)
    >>> m["accuracy"].value, m["precision"].value, m["recall"].value, m["roc_auc"].value
    (0.75, 1.0, 0.5, 1.0)
    >>> round(m["accuracy"].ci_low, 3), round(m["accuracy"].ci_high, 3), m["accuracy"].method
    (0.301, 0.954, 'wilson')
    >>> classification_metrics({})
    {}
    """
    z = _z(confidence)
    _check_non_negative(acc)
    n = acc.get("n", 0)
    out: dict[str, MetricValue] = {}
    if n == 0:
        return out
    tp, fp, fn, tn = (acc.get(k, 0) for k in ("tp", "fp", "fn", "tn"))
    out["accuracy"] = _wilson("accuracy", acc.get("correct", 0), n, z)
    if tp + fp:
        out["precision"] = _wilson("precision", tp, tp + fp, z)
    if tp + fn:
        out["recall"] = _wilson("recall", tp, tp + fn, z)
    if tp + fp + fn:
        out["f1"] = _f1(tp, fp, fn, z)
    if (auc := _roc_auc(acc, z)) is not None:
        out["roc_auc"] = auc
    n_scored = acc.get("n_scored", 0)
    if n_scored:
        out["log_loss"] = _normal_mean(
            "log_loss",
            acc.get("logloss_sum", 0),
            acc.get("logloss_sq_sum", 0),
            n_scored,
            z,
            bounds=(0.0, math.inf),
            higher_is_better=False,
        )
        out["ece"] = _ece(acc, n_scored, z)
    return out


def confusion_counts(acc: Mapping[str, int]) -> tuple[list[object], np.ndarray]:
    """The classes of a multiclass window (every label and prediction it holds, in a stable order) and its
    confusion matrix, ``counts[i, j]``: events of true class ``i`` predicted as ``j``.

    >>> confusion_counts({"n": 3, 'cm:["b","a"]': 2, 'cm:["a","a"]': 1})
    (['a', 'b'], array([[1, 0],
           [2, 0]]))
    """
    cells = [(json.loads(k[len(CONFUSION_PREFIX):]), v) for k, v in acc.items() if k.startswith(CONFUSION_PREFIX)]
    # sorted by type, then value: labels of one type compare, and a mixed set still has one order
    # keyed by type too: a set would merge True and 1
    distinct = {(type(c).__name__, c): c for (t, p), _ in cells for c in (t, p)}
    classes = [distinct[k] for k in sorted(distinct)]
    index = {(type(c), c): i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for (t, p), v in cells:
        counts[index[(type(t), t)], index[(type(p), p)]] += v
    return classes, counts


def class_name(label: object) -> str:
    """A class as metric names show it: ``recall[a]``, ``recall[1]``, ``recall[true]``.

    >>> class_name("churned"), class_name(1), class_name(True)
    ('churned', '1', 'true')
    """
    return label if isinstance(label, str) else json.dumps(label)


def _f1_scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class F1 ``2 tp / (2 tp + fp + fn)`` and support, along the last two axes (0 where undefined)."""
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    support = counts.sum(axis=-1)
    predicted = counts.sum(axis=-2)
    den = support + predicted
    f1 = np.divide(2.0 * tp, den, out=np.zeros(den.shape), where=den > 0)
    return f1, support


def _multiclass_f1(counts: np.ndarray, z: float) -> tuple[MetricValue, MetricValue]:
    """Macro and weighted F1 with intervals by the delta method on the logit scale: the variance of each, as a
    function of the confusion's cell proportions, from the multinomial's covariance (no draws). An estimate at 0 or
    1, where the logit has no slope, takes the mean of the per-class F1 intervals (:func:`_f1`), plain or weighted.

    >>> macro, weighted = _multiclass_f1(np.array([[30, 5, 0], [4, 25, 6], [1, 4, 25]]), 1.959963984540054)
    >>> round(macro.value, 4), round(macro.ci_low, 4), round(macro.ci_high, 4), macro.method
    (0.8005, 0.712, 0.8669, 'delta-logit')
    """
    n = int(counts.sum())
    k = counts.shape[0]
    p = counts / n
    f1, support = _f1_scores(p)
    predicted = p.sum(axis=0)
    den = support + predicted
    # d F1_c / d p_ij for every class c: 2 / den_c on the diagonal cell (c, c), minus 2 p_cc / den_c^2 on row c and
    # on column c (the cell (c, c) is in both)
    grad = np.zeros((k, k, k))
    for c in np.flatnonzero(den > 0):
        slope = 2 * p[c, c] / den[c] ** 2
        grad[c, c, :] -= slope
        grad[c, :, c] -= slope
        grad[c, c, c] += 2 / den[c]
    macro, weighted = float(f1.mean()), float((f1 * support).sum())
    # weighted F1 = sum_c support_c F1_c, and d support_c / d p_ij = 1 on row c
    weighted_grad = np.einsum("c,cij->ij", support, grad) + f1[:, None]
    out = []
    for name, value, g in (("macro_f1", macro, grad.mean(axis=0)), ("weighted_f1", weighted, weighted_grad)):
        variance = max(0.0, float((g * g * p).sum() - (g * p).sum() ** 2)) / n
        if 0.0 < value < 1.0 and variance > 0.0:
            logit, spread = math.log(value / (1 - value)), z * math.sqrt(variance) / (value * (1 - value))
            low, high = (1 / (1 + math.exp(-x)) for x in (logit - spread, logit + spread))
        else:
            per_class = [_f1(int(counts[c, c]), int(counts[:, c].sum() - counts[c, c]),
                             int(counts[c].sum() - counts[c, c]), z) for c in range(k)]
            weights = np.full(k, 1 / k) if name == "macro_f1" else support
            low = float(sum(w * m.ci_low for w, m in zip(weights, per_class, strict=True)))
            high = float(sum(w * m.ci_high for w, m in zip(weights, per_class, strict=True)))
        out.append(_metric(name, value, low, high, n=n, higher_is_better=True, method="delta-logit"))
    return out[0], out[1]


def multiclass_metrics(
    acc: Mapping[str, int], *, confidence: float = 0.95, seed: int = 0, confusion: bool = True
) -> dict[str, MetricValue]:
    """The metrics of a window of a model of any number of classes (aggregates of
    :func:`multiclass_contributions`); a metric whose denominator is zero is omitted (no events: ``{}``).

    * ``accuracy``, Wilson's interval;
    * ``macro_f1`` and ``weighted_f1``: the mean of the per-class F1 ``2 tp / (2 tp + fp + fn)`` over the classes
      the window holds (as labels or predictions), plain or weighted by each class's support (scikit-learn's
      ``f1_score(average="macro" | "weighted")``); the interval by the delta method on the logit scale
      (:func:`_multiclass_f1`; ``seed`` is not used);
    * ``recall[<class>]`` for each class with support: its share of the class's events predicted right, Wilson;
    * with ``confusion``, ``confusion[<true>-><predicted>]`` for the ``CONFUSION_CELLS`` off-diagonal cells that
      hold the most events: the share of the true class's events predicted as the other class, Wilson (the
      diagonal is the recall; :func:`confusion_counts` gives the whole matrix);
    * ``log_loss``: the mean loss of the true class's probability, normal interval from the sum of squares;
    * ``ece``: top-label calibration, ``sum_b n_b/n |mean confidence_b - accuracy_b|`` with the confidence the
      probability each event gave its own prediction, its interval as the binary ECE's.

    Examples
    --------
    >>> acc: dict[str, int] = {}
    >>> for c in multiclass_contributions(["a", "a", "b", "c"], ["a", "b", "b", "c"], [None] * 4):
    ...     add(acc, c)
    >>> m = multiclass_metrics(acc)
    >>> m["accuracy"].value, round(m["macro_f1"].value, 4), m["recall[a]"].value, m["confusion[a->b]"].value
    (0.75, 0.7778, 0.5, 0.5)
    >>> list(m)
    ['accuracy', 'macro_f1', 'weighted_f1', 'recall[a]', 'recall[b]', 'recall[c]', 'confusion[a->b]']
    >>> multiclass_metrics({})
    {}
    """
    z = _z(confidence)
    _check_non_negative(acc)
    n = acc.get("n", 0)
    out: dict[str, MetricValue] = {}
    if n == 0:
        return out
    out["accuracy"] = _wilson("accuracy", acc.get("correct", 0), n, z)
    classes, counts = confusion_counts(acc)
    if counts.sum():
        out["macro_f1"], out["weighted_f1"] = _multiclass_f1(counts, z)
        support = counts.sum(axis=1)
        for i, label in enumerate(classes):
            if support[i]:
                name = f"recall[{class_name(label)}]"
                out[name] = _wilson(name, int(counts[i, i]), int(support[i]), z)
        if confusion:
            # the largest cells only: a window of k classes has up to k * (k - 1), and each is a stored row
            cells = sorted((-int(counts[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes))
                           if i != j and counts[i, j])[:CONFUSION_CELLS]
            for _, i, j in sorted(cells, key=lambda c: (c[1], c[2])):
                name = f"confusion[{class_name(classes[i])}->{class_name(classes[j])}]"
                # a confusion is an error: less is better
                found = _wilson(name, int(counts[i, j]), int(support[i]), z)
                out[name] = replace(found, higher_is_better=False)
    n_scored = acc.get("n_scored", 0)
    if n_scored:
        out["log_loss"] = _normal_mean("log_loss", acc.get("logloss_sum", 0), acc.get("logloss_sq_sum", 0),
                                       n_scored, z, bounds=(0.0, math.inf), higher_is_better=False)
        out["ece"] = _ece(acc, n_scored, z)
    return out


def regression_metrics(acc: Mapping[str, int], *, confidence: float = 0.95) -> dict[str, MetricValue]:
    """MAE, RMSE and R² of one regression window; a metric with a zero denominator is omitted.

    ``mae`` has a normal interval from ``abs_err_sum`` and ``sq_err_sum``; ``rmse`` uses the
    delta method on the MSE, ``SE(RMSE) = SE(MSE) / (2 RMSE)``, with ``SE(MSE)`` from
    ``sq_err_sq_sum``; with one event both intervals are ``[0, inf]``. ``r2 = 1 - SSE/SST`` with
    ``SST = y_sq_sum - y_sum**2/n`` needs ``n >= 2`` and ``SST > 0``; its interval is approximate:
    it treats SST as fixed, ``R² ± z SE(MSE) / (SST/n)``, so it understates the width when the
    window's label variance is itself uncertain.

    Examples
    --------
    >>> acc: dict[str, int] = {}
    >>> for c in regression_contributions([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 4.0]):
    ...     add(acc, c)
    >>> m = regression_metrics(acc)
    >>> m["mae"].value, m["rmse"].value, m["r2"].value
    (0.25, 0.3535533905932738, 0.9)
    >>> m["rmse"].method, m["r2"].higher_is_better
    ('delta', True)
    """
    z = _z(confidence)
    _check_non_negative(acc, _REGRESSION_NON_NEGATIVE)
    n = acc.get("n", 0)
    out: dict[str, MetricValue] = {}
    if n == 0:
        return out
    sq_sum, sq_sq_sum = acc.get("sq_err_sum", 0), acc.get("sq_err_sq_sum", 0)
    out["mae"] = _normal_mean(
        "mae", acc.get("abs_err_sum", 0), sq_sum, n, z, bounds=(0.0, math.inf), higher_is_better=False
    )
    mse = sq_sum / (SCALE * n)
    rmse = math.sqrt(mse)
    mse_var = _sample_variance(sq_sum, sq_sq_sum, n)
    se_mse = math.nan if math.isnan(mse_var) else math.sqrt(mse_var / n)
    if math.isnan(se_mse):
        low, high = 0.0, math.inf
    else:
        half = 0.0 if rmse == 0.0 else z * se_mse / (2.0 * rmse)
        low, high = max(0.0, rmse - half), rmse + half
    out["rmse"] = _metric("rmse", rmse, low, high, n=n, higher_is_better=False, method="delta")
    y_sum, y_sq_sum = acc.get("y_sum", 0), acc.get("y_sq_sum", 0)
    # SST * n * SCALE**2 as an exact integer: no cancellation when the labels' mean dwarfs their spread.
    sst_scaled = n * y_sq_sum * SCALE - y_sum * y_sum
    if n >= 2 and sst_scaled > 0:
        sst = sst_scaled / (n * SCALE * SCALE)
        r2 = 1.0 - (sq_sum / SCALE) / sst
        half = z * se_mse / (sst / n)
        out["r2"] = _metric("r2", r2, r2 - half, min(1.0, r2 + half), n=n, higher_is_better=True, method="normal")
    return out


def auc_max_error(acc: Mapping[str, int]) -> float:
    """Bound on |histogram ROC AUC - exact ROC AUC|: ``0.5 * sum_b pos_b * neg_b / (P * N)``.

    Only pairs of a positive and a negative in the same score bin can be ordered differently
    by the raw scores, and each is already counted one half. nan when either class is absent
    (``roc_auc`` is then omitted).

    Examples
    --------
    >>> auc_max_error({"score_pos:10": 2, "score_neg:10": 1, "score_neg:3": 3})
    0.125
    >>> auc_max_error({"score_pos:10": 2})
    nan
    """
    pos, neg = _bins(acc, "score_pos", SCORE_BINS), _bins(acc, "score_neg", SCORE_BINS)
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return sum(p * q for p, q in zip(pos, neg, strict=True)) / (2 * n_pos * n_neg)
