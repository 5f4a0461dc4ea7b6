"""Multiclass monitoring: window aggregates of any number of classes against scikit-learn on the same events."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from feedback.config import parse_config
from feedback.errors import ModelConfigError
from feedback.monitoring.performance import (
    add,
    class_value,
    confusion_counts,
    multiclass_contributions,
    multiclass_metrics,
)

CLASSES = ("bike", "bus", "car", "walk")


def _events(n: int, seed: int, classes=CLASSES) -> tuple[list, list, list[dict[str, float]]]:
    """Labels, predictions (the argmax) and class probabilities keyed by class, as events carry them."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(0.0, 1.0, size=(n, k))
    logits[np.arange(n), y] += 1.2  # informative, far from perfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    labels = [classes[i] for i in y]
    predictions = [classes[i] for i in pred]
    probabilities = [{str(c): float(p) for c, p in zip(classes, row, strict=True)} for row in proba]
    return labels, predictions, probabilities


def _sum(contributions) -> dict[str, int]:
    acc: dict[str, int] = {}
    for c in contributions:
        add(acc, c)
    return acc


def _top_label_ece(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float:
    b = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(confidence[b == i].sum() - correct[b == i].sum()) for i in range(bins)) / len(b))


@pytest.mark.parametrize("classes", [CLASSES, (0, 1, 2), ("a", "b")], ids=["strings", "ints", "two-strings"])
def test_metrics_equal_sklearn_on_the_same_events(classes) -> None:
    """Accuracy, macro and weighted F1, per-class recall, log loss, the confusion and top-label ECE from the window
    aggregates equal scikit-learn's (and a direct numpy ECE) on the events they were summed from."""
    y, yhat, proba = _events(1500, seed=3, classes=classes)
    m = multiclass_metrics(_sum(multiclass_contributions(y, yhat, proba)))
    assert m["accuracy"].value == pytest.approx(skm.accuracy_score(y, yhat), abs=1e-12)
    assert m["macro_f1"].value == pytest.approx(skm.f1_score(y, yhat, average="macro"), abs=1e-12)
    assert m["weighted_f1"].value == pytest.approx(skm.f1_score(y, yhat, average="weighted"), abs=1e-12)
    recalls = skm.recall_score(y, yhat, average=None, labels=list(classes))
    for c, r in zip(classes, recalls, strict=True):
        assert m[f"recall[{str(c)}]"].value == pytest.approx(r, abs=1e-12)
    matrix = skm.confusion_matrix(y, yhat, labels=list(classes))
    got_classes, counts = confusion_counts(_sum(multiclass_contributions(y, yhat, proba)))
    assert got_classes == sorted(classes)
    np.testing.assert_array_equal(counts, matrix)
    for i, t in enumerate(classes):
        for j, p in enumerate(classes):
            if i != j and matrix[i, j]:
                assert m[f"confusion[{t}->{p}]"].value == pytest.approx(matrix[i, j] / matrix[i].sum(), abs=1e-12)
    columns = np.array([[row[str(c)] for c in classes] for row in proba])
    assert m["log_loss"].value == pytest.approx(skm.log_loss(y, columns, labels=list(classes)), abs=1e-6)
    confidence = columns.max(axis=1)
    correct = np.array(y) == np.array(yhat)
    assert m["ece"].value == pytest.approx(_top_label_ece(correct, confidence), abs=1e-6)
    for metric in m.values():
        assert metric.ci_low <= metric.value <= metric.ci_high, metric


def test_events_without_probabilities_have_no_log_loss_and_a_missing_class_costs_the_clip() -> None:
    """Events without probabilities count in the confusion only; a true class the probabilities leave out has
    probability 0, clipped to 1e-15 (log loss 34.5), as scikit-learn's log loss with that column 0."""
    m = multiclass_metrics(_sum(multiclass_contributions(["a", "b"], ["a", "a"], [None, None])))
    assert "log_loss" not in m and "ece" not in m
    assert m["accuracy"].value == 0.5
    m = multiclass_metrics(_sum(multiclass_contributions(["c"], ["a"], [{"a": 0.6, "b": 0.4}])))
    assert m["log_loss"].value == pytest.approx(-math.log(1e-15), rel=1e-9)


def test_aggregates_are_order_free_and_a_label_correction_moves_one_cell() -> None:
    """Adding every event, then moving one from its old label to a corrected one, equals summing the corrected
    events afresh; labels keep their JSON types (True is not 1, "1" is not 1, 2.0 is 2)."""
    y, yhat, proba = _events(300, seed=8)
    acc = _sum(multiclass_contributions(y, yhat, proba))
    fixed = list(y)
    fixed[17] = "walk" if y[17] != "walk" else "bus"
    (old,) = multiclass_contributions([y[17]], [yhat[17]], [proba[17]])
    (new,) = multiclass_contributions([fixed[17]], [yhat[17]], [proba[17]])
    add(acc, old, -1)
    add(acc, new)
    assert acc == _sum(multiclass_contributions(fixed[::-1], yhat[::-1], proba[::-1]))
    classes, counts = confusion_counts(_sum(multiclass_contributions([True, 1, "1", 2.0], [1, 1, 1, 2], [None] * 4)))
    assert classes == [True, 1, 2, "1"]
    assert counts.trace() == 2  # 1 -> 1 and 2.0 -> 2; True -> 1 and "1" -> 1 are errors
    assert class_value(2.0) == 2 and type(class_value(2.0)) is int


def _population_f1(pi: np.ndarray) -> tuple[float, float]:
    tp, rows, cols = np.diag(pi), pi.sum(axis=1), pi.sum(axis=0)
    f1 = 2 * tp / (rows + cols)
    return float(f1.mean()), float((f1 * rows).sum())


def test_macro_and_weighted_f1_intervals_cover_the_population_value() -> None:
    """Over 300 windows of 400 events drawn from one 3-class confusion distribution, the 95% Dirichlet intervals of
    macro and weighted F1 hold the population's value about 95% of the time (binomial slack: 90-99%)."""
    pi = np.array([[0.30, 0.04, 0.02], [0.05, 0.20, 0.05], [0.02, 0.07, 0.25]])
    truth = _population_f1(pi)
    rng = np.random.default_rng(11)
    hits = np.zeros(2)
    reps = 300
    for r in range(reps):
        cells = rng.multinomial(400, pi.ravel()).reshape(3, 3)
        acc = {"n": 400, "correct": int(np.trace(cells))}
        for i in range(3):
            for j in range(3):
                if cells[i, j]:
                    acc[f"cm:[{i},{j}]"] = int(cells[i, j])
        m = multiclass_metrics(acc, seed=r, confusion=False)
        for k, name in enumerate(("macro_f1", "weighted_f1")):
            hits[k] += m[name].ci_low <= truth[k] <= m[name].ci_high
    coverage = hits / reps
    assert np.all((coverage >= 0.90) & (coverage <= 0.99)), coverage


def test_macro_f1_interval_agrees_with_a_bootstrap() -> None:
    """On one window, the Dirichlet interval of macro F1 is within 25% of the width of a 4000-resample percentile
    bootstrap over the events, and the two centres are within a quarter of that width."""
    y, yhat, proba = _events(600, seed=5)
    m = multiclass_metrics(_sum(multiclass_contributions(y, yhat, proba)))["macro_f1"]
    matrix = skm.confusion_matrix(y, yhat, labels=list(CLASSES))
    # resampling the events with replacement draws their confusion cells from a multinomial
    rng = np.random.default_rng(2)
    cells = rng.multinomial(len(y), matrix.ravel() / len(y), size=4000).reshape(-1, 4, 4)
    tp, rows, cols = np.diagonal(cells, axis1=1, axis2=2), cells.sum(axis=2), cells.sum(axis=1)
    draws = np.where(rows + cols > 0, 2 * tp / np.maximum(rows + cols, 1), 0.0).mean(axis=1)
    assert _population_f1(matrix / len(y))[0] == pytest.approx(skm.f1_score(y, yhat, average="macro"), abs=1e-12)
    low, high = np.quantile(draws, [0.025, 0.975])
    width = m.ci_high - m.ci_low
    assert width == pytest.approx(high - low, rel=0.25)
    assert abs((m.ci_low + m.ci_high) / 2 - (low + high) / 2) < 0.25 * width


def test_a_classification_model_without_positive_class_is_multiclass() -> None:
    """positive_class is optional: without it a classification model takes the multiclass metrics (accuracy by
    default, macro_f1 and weighted_f1 allowed); with it, the binary model reads as before."""
    m = parse_config('[models.mode]\ntask = "classification"\nmetric = "macro_f1"\n').models["mode"]
    assert (m.multiclass, m.positive_class, m.metric, m.higher_is_better, m.score) == (
        True, None, "macro_f1", True, "probabilities")
    assert parse_config('[models.mode]\ntask = "classification"\n').models["mode"].metric == "accuracy"
    binary = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\n').models["churn"]
    assert not binary.multiclass and binary.metric == "accuracy"
    with pytest.raises(ModelConfigError, match="positive_class"):
        parse_config('[models.mode]\ntask = "classification"\nmetric = "roc_auc"\n')


def test_a_window_of_many_classes_reports_its_20_largest_confusions() -> None:
    """With 12 classes (132 possible confusions) a window reports the 20 cells holding the most events, each the
    share numpy gives, and every class's recall."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, 12, 5000)
    yhat = np.where(rng.random(5000) < 0.4, rng.integers(0, 12, 5000), y)
    m = multiclass_metrics(_sum(multiclass_contributions(y.tolist(), yhat.tolist(), [None] * 5000)))
    matrix = skm.confusion_matrix(y, yhat)
    off = [(matrix[i, j], i, j) for i in range(12) for j in range(12) if i != j]
    reported = {k for k in m if k.startswith("confusion[")}
    assert len(reported) == 20 and sum(k.startswith("recall[") for k in m) == 12
    smallest = min(m[k].value * matrix[int(k[10:].split("->")[0])].sum() for k in reported)
    assert smallest >= sorted(off, reverse=True)[19][0] - 1e-9
    for k in reported:
        i, j = (int(v) for v in k[len("confusion["):-1].split("->"))
        assert m[k].value == pytest.approx(matrix[i, j] / matrix[i].sum(), abs=1e-12)


def _dirichlet_interval(cells: np.ndarray, seed: int) -> list[tuple[float, float]]:
    """The macro and weighted F1 intervals the monitor reported before (2,000 Dirichlet draws, +0.5 a cell): the
    reference the delta method must cover as well as."""
    k = cells.shape[0]
    theta = np.random.default_rng(seed).dirichlet(cells.ravel() + 0.5, size=2000).reshape(2000, k, k)
    tp, rows, cols = np.diagonal(theta, axis1=1, axis2=2), theta.sum(axis=2), theta.sum(axis=1)
    f1 = 2 * tp / (rows + cols)
    return [tuple(np.quantile(x, [0.025, 0.975])) for x in (f1.mean(axis=1), (f1 * rows).sum(axis=1))]


def _acc(cells: np.ndarray) -> dict[str, int]:
    acc = {"n": int(cells.sum()), "correct": int(np.trace(cells))}
    acc |= {f"cm:[{i},{j}]": int(c) for (i, j), c in np.ndenumerate(cells) if c}
    return acc


@pytest.mark.parametrize(("pi", "n"), [
    ([[0.30, 0.04, 0.02], [0.05, 0.20, 0.05], [0.02, 0.07, 0.25]], 80),
    ([[0.60, 0.02, 0.01, 0.01], [0.02, 0.20, 0.01, 0.01], [0.01, 0.01, 0.05, 0.01], [0.01, 0.0, 0.01, 0.02]], 300),
    ([[0.45, 0.02], [0.03, 0.50]], 200),  # F1 near its bound
])
def test_f1_intervals_cover_as_well_as_the_dirichlet_draws(pi: list[list[float]], n: int) -> None:
    """Over 400 windows, the delta-method intervals of macro and weighted F1 hold the population's value about 95% of
    the time, and no less often than the 2,000-draw Dirichlet intervals they replaced (within 2 points)."""
    p = np.array(pi)
    truth = _population_f1(p)
    rng = np.random.default_rng(5)
    hits, reference = np.zeros(2), np.zeros(2)
    for seed in range(400):
        cells = rng.multinomial(n, p.ravel()).reshape(p.shape)
        m = multiclass_metrics(_acc(cells), confusion=False)
        before = _dirichlet_interval(cells, seed)
        for k, name in enumerate(("macro_f1", "weighted_f1")):
            hits[k] += m[name].ci_low <= truth[k] <= m[name].ci_high
            reference[k] += before[k][0] <= truth[k] <= before[k][1]
    assert np.all((hits / 400 >= 0.92) & (hits / 400 <= 0.99)), (hits / 400, reference / 400)
    assert np.all(hits >= reference - 8), (hits / 400, reference / 400)


def test_the_delta_method_variance_is_the_spread_of_f1_over_many_windows() -> None:
    """At 5,000 events a window the delta method's standard error (from the interval's width on the logit scale)
    matches the standard deviation of macro F1 over 2,000 simulated windows within 5%."""
    from scipy.special import logit

    p = np.array([[0.30, 0.04, 0.02], [0.05, 0.20, 0.05], [0.02, 0.07, 0.25]])
    rng = np.random.default_rng(2)
    values = [_population_f1(rng.multinomial(5000, p.ravel()).reshape(3, 3) / 5000)[0] for _ in range(2000)]
    m = multiclass_metrics(_acc(np.round(p * 5000).astype(int)), confusion=False)["macro_f1"]
    z = 1.959963984540054
    se = (logit(m.ci_high) - logit(m.ci_low)) / (2 * z) * m.value * (1 - m.value)
    assert se == pytest.approx(float(np.std(values)), rel=0.05)


def test_a_perfect_window_has_an_interval_below_one() -> None:
    """Every event right: F1 is 1 and the logit has no slope there; the interval is the mean of the per-class
    Wilson-Jaccard intervals, below 1, not the point."""
    m = multiclass_metrics(_acc(np.diag([40, 30, 30])), confusion=False)
    for name in ("macro_f1", "weighted_f1"):
        assert m[name].value == 1.0 and 0.9 < m[name].ci_low < 1.0 and m[name].ci_high == 1.0
