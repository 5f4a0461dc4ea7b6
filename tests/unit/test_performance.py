"""Performance metrics from summed integer aggregates agree with scikit-learn on the raw rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, norm
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from feedback.monitoring.performance import (
    ECE_BINS,
    SCORE_BINS,
    MetricValue,
    add,
    auc_max_error,
    classification_contributions,
    classification_metrics,
    regression_contributions,
    regression_metrics,
)

CLASS_NAMES: dict[str, tuple[object, object]] = {"int": (1, 0), "str": ("churn", "stay"), "bool": (True, False)}


def _sum(contributions: Sequence[dict[str, int]]) -> dict[str, int]:
    acc: dict[str, int] = {}
    for c in contributions:
        add(acc, c)
    return acc


def _binary_rows(seed: int, n: int, *, calibrated: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (y in {0, 1}, p, predicted class in {0, 1}); p stays inside [1e-3, 1 - 1e-3]."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.01, 0.99, n)
    y = (rng.uniform(size=n) < truth).astype(int)
    # An overconfident model: right ranking, probabilities pushed towards 0 and 1.
    p = truth if calibrated else 1.0 / (1.0 + np.exp(-4.0 * np.log(truth / (1.0 - truth))))
    p = np.clip(p, 1e-3, 1 - 1e-3)
    # Predictions mostly follow p, with some flips so the confusion matrix is not determined by p.
    y_hat = np.where(rng.uniform(size=n) < 0.1, 1 - (p >= 0.5), p >= 0.5).astype(int)
    return y, p, y_hat


def _labels(values: np.ndarray, kind: str) -> list[object]:
    pos, neg = CLASS_NAMES[kind]
    return [pos if v else neg for v in values.tolist()]


def _numpy_ece(y: np.ndarray, p: np.ndarray) -> float:
    """ECE straight from the raw rows, with 10 equal-width bins and the last bin closed at 1."""
    bins = np.minimum(np.floor(p * ECE_BINS).astype(int), ECE_BINS - 1)
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


@pytest.mark.parametrize("kind", ["int", "str", "bool"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_classification_matches_sklearn(kind: str, calibrated: bool) -> None:
    """Every classification metric of the summed aggregates equals its sklearn or numpy value on the raw rows."""
    y, p, y_hat = _binary_rows(seed=11 if calibrated else 12, n=3000, calibrated=calibrated)
    y_true, y_pred, positive = _labels(y, kind), _labels(y_hat, kind), CLASS_NAMES[kind][0]
    contributions = classification_contributions(y_true, y_pred, p.tolist(), positive=positive)
    acc = _sum(contributions)
    order = np.random.default_rng(5).permutation(len(contributions))
    assert _sum([contributions[i] for i in order]) == acc
    m = classification_metrics(acc)

    assert m["accuracy"].value == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["precision"].value == pytest.approx(precision_score(y_true, y_pred, pos_label=positive), abs=1e-12)
    assert m["recall"].value == pytest.approx(recall_score(y_true, y_pred, pos_label=positive), abs=1e-12)
    assert m["f1"].value == pytest.approx(f1_score(y_true, y_pred, pos_label=positive), abs=1e-12)
    # p is kept away from 0 and 1, so neither our clip at 1e-15 nor sklearn's at float eps acts;
    # what remains is the 1e-9 per-event quantisation.
    assert m["log_loss"].value == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=1e-6)
    # On the bin indices the histogram AUC is exact; sklearn's trapezoid sum rounds at ~1e-16.
    bins = np.minimum(np.floor(p * SCORE_BINS).astype(int), SCORE_BINS - 1)
    assert m["roc_auc"].value == pytest.approx(roc_auc_score(y, bins), abs=1e-12)
    assert abs(m["roc_auc"].value - roc_auc_score(y, p)) <= auc_max_error(acc) + 1e-12
    assert m["ece"].value == pytest.approx(_numpy_ece(y, p), abs=1e-9)
    assert m["log_loss"].n == m["roc_auc"].n == m["ece"].n == m["accuracy"].n == len(y)


def test_ece_separates_calibrated_from_overconfident() -> None:
    """The overconfident model has a clearly larger ECE than the calibrated one, outside both intervals."""
    good = classification_metrics(_sum(classification_contributions(*_rows_as_lists(21, True), positive=1)))["ece"]
    bad = classification_metrics(_sum(classification_contributions(*_rows_as_lists(21, False), positive=1)))["ece"]
    assert good.ci_high < bad.ci_low
    assert not good.higher_is_better and good.method == "normal"


def _rows_as_lists(seed: int, calibrated: bool) -> tuple[list[int], list[int], list[float]]:
    y, p, y_hat = _binary_rows(seed, 3000, calibrated=calibrated)
    return y.tolist(), y_hat.tolist(), p.tolist()


def test_multiclass_accuracy_and_one_vs_rest() -> None:
    """With three classes accuracy counts exact matches and precision/recall are one-vs-rest for the positive class."""
    rng = np.random.default_rng(3)
    classes = np.array(["a", "b", "c"])
    y_true = classes[rng.integers(0, 3, 500)].tolist()
    y_pred = [t if rng.uniform() < 0.7 else str(classes[rng.integers(0, 3)]) for t in y_true]
    m = classification_metrics(_sum(classification_contributions(y_true, y_pred, [None] * 500, positive="b")))
    assert m["accuracy"].value == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    expected_precision = precision_score(y_true, y_pred, labels=["b"], average=None)[0]
    expected_recall = recall_score(y_true, y_pred, labels=["b"], average=None)[0]
    assert m["precision"].value == pytest.approx(expected_precision, abs=1e-12)
    assert m["recall"].value == pytest.approx(expected_recall, abs=1e-12)
    assert {"roc_auc", "log_loss", "ece"}.isdisjoint(m)


def test_missing_probabilities_are_not_scored() -> None:
    """Events without a probability count for the confusion matrix but not for log loss, AUC or ECE."""
    y, p, y_hat = _binary_rows(seed=4, n=400, calibrated=True)
    p_or_none: list[float | None] = [None if i % 3 == 0 else v for i, v in enumerate(p.tolist())]
    acc = _sum(classification_contributions(y.tolist(), y_hat.tolist(), p_or_none, positive=1))
    scored = np.array([v is not None for v in p_or_none])
    m = classification_metrics(acc)
    assert acc["n"] == 400 and acc["n_scored"] == scored.sum()
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, y_hat), abs=1e-12)
    assert m["log_loss"].value == pytest.approx(log_loss(y[scored], p[scored], labels=[0, 1]), abs=1e-6)
    assert m["roc_auc"].n == m["ece"].n == scored.sum()


def test_bool_labels_do_not_equal_numbers() -> None:
    """A boolean label and the number 1 are different classes, as they are in JSON."""
    (c,) = classification_contributions([1], [True], [None], positive=True)
    assert c == {"n": 1, "fp": 1}
    (c,) = classification_contributions([1.0], [1], [None], positive=1)
    assert c == {"n": 1, "correct": 1, "tp": 1}


def test_log_loss_clips_extreme_probabilities() -> None:
    """A probability of exactly 0 for the true class costs -log(1e-15), not infinity."""
    m = classification_metrics(_sum(classification_contributions([1, 0], [0, 0], [0.0, 0.0], positive=1)))
    assert m["log_loss"].value == pytest.approx(-math.log(1e-15) / 2, abs=1e-8)
    assert m["log_loss"].ci_low <= m["log_loss"].value <= m["log_loss"].ci_high


def test_regression_matches_sklearn() -> None:
    """MAE, RMSE and R² of the summed aggregates equal sklearn's on the raw rows, in any order of summing."""
    rng = np.random.default_rng(8)
    y = rng.normal(1000.0, 10.0, 5000)  # a large mean next to a small spread: SST must not cancel
    y_hat = y + rng.normal(0.5, 3.0, y.size)
    contributions = regression_contributions(y.tolist(), y_hat.tolist())
    acc = _sum(contributions)
    assert _sum([contributions[i] for i in rng.permutation(len(contributions))]) == acc
    m = regression_metrics(acc)
    assert m["mae"].value == pytest.approx(mean_absolute_error(y, y_hat), abs=1e-6)
    assert m["rmse"].value == pytest.approx(math.sqrt(mean_squared_error(y, y_hat)), abs=1e-6)
    assert m["r2"].value == pytest.approx(r2_score(y, y_hat), abs=1e-6)
    assert [m[k].method for k in ("mae", "rmse", "r2")] == ["normal", "delta", "normal"]


def test_regression_intervals_match_direct_formulas() -> None:
    """The MAE and RMSE intervals equal the normal and delta-method formulas computed on the raw errors."""
    rng = np.random.default_rng(9)
    y = rng.normal(0.0, 1.0, 800)
    e = rng.standard_t(5, y.size)
    m = regression_metrics(_sum(regression_contributions(y.tolist(), (y + e).tolist())))
    z = norm.ppf(0.975)
    mae_half = z * np.abs(e).std(ddof=1) / math.sqrt(e.size)
    assert m["mae"].ci_high - m["mae"].value == pytest.approx(mae_half, rel=1e-6)
    rmse = math.sqrt(np.mean(e**2))
    rmse_half = z * (e**2).std(ddof=1) / math.sqrt(e.size) / (2 * rmse)
    assert m["rmse"].ci_high - m["rmse"].value == pytest.approx(rmse_half, rel=1e-6)


def test_label_correction_equals_recomputation() -> None:
    """Subtracting old contributions and adding corrected ones gives the dict computed from the corrected rows."""
    y, p, y_hat = _binary_rows(seed=6, n=500, calibrated=False)
    acc = _sum(classification_contributions(y.tolist(), y_hat.tolist(), p.tolist(), positive=1))
    fixed = y.copy()
    for i in (0, 7, 123, 499):
        fixed[i] = 1 - y[i]
        (old,) = classification_contributions([int(y[i])], [int(y_hat[i])], [float(p[i])], positive=1)
        (new,) = classification_contributions([int(fixed[i])], [int(y_hat[i])], [float(p[i])], positive=1)
        add(acc, old, sign=-1)
        add(acc, new)
    assert acc == _sum(classification_contributions(fixed.tolist(), y_hat.tolist(), p.tolist(), positive=1))

    rng = np.random.default_rng(6)
    y_reg, y_reg_hat = rng.normal(5.0, 2.0, 300), rng.normal(5.0, 2.0, 300)
    acc = _sum(regression_contributions(y_reg.tolist(), y_reg_hat.tolist()))
    fixed_reg = y_reg.copy()
    fixed_reg[[3, 50]] = [-1.25, 17.0]
    for i in (3, 50):
        add(acc, regression_contributions([y_reg[i]], [y_reg_hat[i]])[0], sign=-1)
        add(acc, regression_contributions([fixed_reg[i]], [y_reg_hat[i]])[0])
    assert acc == _sum(regression_contributions(fixed_reg.tolist(), y_reg_hat.tolist()))


def _all_metrics(seed: int, n: int) -> list[MetricValue]:
    y, p, y_hat = _binary_rows(seed, n, calibrated=seed % 2 == 0)
    cls = classification_metrics(_sum(classification_contributions(y.tolist(), y_hat.tolist(), p.tolist(), positive=1)))
    reg = regression_metrics(_sum(regression_contributions(y.tolist(), p.tolist())))
    return [*cls.values(), *reg.values()]


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 2), (2, 5), (3, 40), (4, 2000)])
def test_every_interval_contains_its_estimate(seed: int, n: int) -> None:
    """For every metric, small windows and large, ci_low <= value <= ci_high."""
    metrics = _all_metrics(seed, n)
    assert {m.name for m in metrics} >= {"accuracy", "mae", "rmse"}
    for m in metrics:
        assert m.ci_low <= m.value <= m.ci_high, m


def test_degenerate_windows_keep_the_estimate_inside() -> None:
    """A perfect classifier and an all-wrong one still have intervals around their estimates."""
    for y_pred in ([1, 1, 0, 0], [0, 0, 1, 1]):
        acc = _sum(classification_contributions([1, 1, 0, 0], y_pred, [0.9, 0.8, 0.2, 0.1], positive=1))
        for m in classification_metrics(acc).values():
            assert m.ci_low <= m.value <= m.ci_high, m
    perfect = classification_metrics(_sum(classification_contributions([1, 0], [1, 0], [None, None], positive=1)))
    assert perfect["f1"].value == perfect["f1"].ci_high == 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (7, 10), (10, 10), (412, 500), (1, 1)])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    """Accuracy's interval is scipy's Wilson score interval without continuity correction."""
    m = classification_metrics({"n": n, "correct": k}, confidence=confidence)["accuracy"]
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert (m.ci_low, m.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert m.method == "wilson" and m.n == n


def test_accuracy_interval_covers_the_truth() -> None:
    """Over 300 seeded windows of 500 events with true accuracy 0.8, the 95% interval covers 0.8 90-99% of the time."""
    rng = np.random.default_rng(2026)
    covered = 0
    for correct in rng.binomial(500, 0.8, 300).tolist():
        m = classification_metrics({"n": 500, "correct": correct})["accuracy"]
        covered += m.ci_low <= 0.8 <= m.ci_high
    assert 0.90 <= covered / 300 <= 0.99


def _dirichlet_f1_interval(tp: int, fp: int, fn: int, tn: int, seed: int) -> tuple[float, float]:
    """The interval the monitor reported before (2,000 draws of a Dirichlet posterior, +0.5 prior): the reference
    the analytic one must cover as well as."""
    theta = np.random.default_rng(seed).dirichlet(np.array([tp, fp, fn, tn], dtype=float) + 0.5, size=2000)
    draws = 2 * theta[:, 0] / (2 * theta[:, 0] + theta[:, 1] + theta[:, 2])
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


@pytest.mark.parametrize(("probs", "n"), [
    ((0.2, 0.05, 0.1, 0.65), 400),
    ((0.2, 0.05, 0.1, 0.65), 60),
    ((0.02, 0.01, 0.02, 0.95), 1000),  # a rare positive class: few events that matter
    ((0.45, 0.05, 0.05, 0.45), 200),  # a high F1, near its bound
])
def test_f1_interval_covers_the_truth_as_well_as_the_dirichlet_draws(probs: tuple[float, ...], n: int) -> None:
    """Over 400 windows drawn from a known confusion distribution, the f1 interval covers the true f1 at about its
    nominal 95%, and no less often than the 2,000-draw Dirichlet interval it replaced (within 2 points)."""
    rng = np.random.default_rng(7)
    p = np.array(probs)
    truth = 2 * p[0] / (2 * p[0] + p[1] + p[2])
    covered = reference = windows = 0
    for seed, counts in enumerate(rng.multinomial(n, p, 400).tolist()):
        tp, fp, fn, tn = counts
        if tp + fp + fn == 0:
            continue
        windows += 1
        m = classification_metrics(dict(zip(("tp", "fp", "fn", "tn"), counts, strict=True)) | {"n": n})["f1"]
        covered += m.ci_low <= truth <= m.ci_high
        low, high = _dirichlet_f1_interval(tp, fp, fn, tn, seed)
        reference += low <= truth <= high
    assert 0.92 <= covered / windows <= 0.985, (covered / windows, reference / windows)
    assert covered >= reference - 0.02 * windows, (covered / windows, reference / windows)


def test_f1_interval_is_the_wilson_interval_of_the_jaccard_index() -> None:
    """F1 = 2J / (1 + J) with J = tp / (tp + fp + fn): its interval is scipy's Wilson interval of J, mapped."""
    acc = {"n": 100, "tp": 30, "fp": 10, "fn": 5, "tn": 55}
    m = classification_metrics(acc)["f1"]
    ci = binomtest(30, 45).proportion_ci(0.95, method="wilson")
    assert m.value == pytest.approx(f1_score([1] * 35 + [0] * 10, [1] * 30 + [0] * 5 + [1] * 10), abs=1e-12)
    assert (m.ci_low, m.ci_high) == pytest.approx((2 * ci.low / (1 + ci.low), 2 * ci.high / (1 + ci.high)), abs=1e-12)
    assert m.method == "wilson-jaccard"


def test_auc_interval_is_hanley_mcneil() -> None:
    """The AUC interval is A ± z·SE with Hanley and McNeil's (1982) standard error."""
    acc = {"n": 50, "n_scored": 50, "score_pos:150": 15, "score_pos:60": 5, "score_neg:40": 25, "score_neg:150": 5}
    m = classification_metrics(acc)["roc_auc"]
    a, n_pos, n_neg = m.value, 20, 30
    assert a == pytest.approx((15 * 27.5 + 5 * 25) / 600)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))
    assert (m.ci_low, m.ci_high) == pytest.approx((a - norm.ppf(0.975) * se, min(1.0, a + norm.ppf(0.975) * se)))


def test_undefined_metrics_are_omitted() -> None:
    """A zero denominator leaves its metric out instead of reporting nan."""
    assert classification_metrics({}) == {} and regression_metrics({}) == {}
    only_negatives = _sum(classification_contributions([0, 0], [0, 0], [0.1, 0.2], positive=1))
    assert set(classification_metrics(only_negatives)) == {"accuracy", "log_loss", "ece"}
    assert math.isnan(auc_max_error(only_negatives))
    constant_y = regression_metrics(_sum(regression_contributions([3.0, 3.0], [2.0, 4.0])))
    assert set(constant_y) == {"mae", "rmse"}


def test_bad_inputs_are_rejected_with_the_value() -> None:
    """Out-of-range probabilities, non-finite values, unequal lengths, odd signs and negative counts are rejected."""
    with pytest.raises(ValueError, match="1.5"):
        classification_contributions([1], [1], [1.5], positive=1)
    with pytest.raises(ValueError, match="nan"):
        classification_contributions([1], [1], [math.nan], positive=1)
    with pytest.raises(ValueError, match="inf"):
        regression_contributions([1.0], [math.inf])
    with pytest.raises(ValueError, match="lengths"):
        regression_contributions([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="sign"):
        add({}, {"n": 1}, sign=2)
    with pytest.raises(ValueError, match="'tp'"):
        classification_metrics({"n": 1, "tp": -1})
    with pytest.raises(ValueError, match="confidence"):
        classification_metrics({"n": 1}, confidence=1.0)


_rows = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.integers(0, 1),
        st.one_of(st.none(), st.floats(0.0, 1.0)),
        st.floats(-1e6, 1e6),
        st.floats(-1e6, 1e6),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(rows=_rows, data=st.data())
def test_any_order_gives_identical_sums(
    rows: list[tuple[int, int, float | None, float, float]], data: st.DataObject
) -> None:
    """Summing the same contributions in any order, or removing them all again, gives identical dicts."""
    y, y_hat, p, r_true, r_pred = (list(col) for col in zip(*rows, strict=True)) if rows else ([], [], [], [], [])
    contributions = [
        *classification_contributions(y, y_hat, p, positive=1),
        *regression_contributions(r_true, r_pred),
    ]
    acc = _sum(contributions)
    assert _sum(data.draw(st.permutations(contributions))) == acc
    for c in data.draw(st.permutations(contributions)):
        add(acc, c, sign=-1)
    assert acc == {}
