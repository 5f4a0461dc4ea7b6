"""The offline gates and the retrain pipeline's errors on a 3-class model trained by the default trainer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_classification
from threadpoolctl import threadpool_limits

from feedback.config import parse_config
from feedback.monitoring.profile import category_key
from retrain_worker.gates import EvalSet, GateConfig, multiclass_log_loss, run_gates, verdict
from retrain_worker.pipeline import main_error, production_best
from retrain_worker.trainers import gradient_boosting

NAMES = np.array(["bike", "bus", "car"])
MODE = parse_config('[models.mode]\ntask = "classification"\n').models["mode"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = make_classification(n_samples=6000, n_features=8, n_informative=5, n_classes=3, n_clusters_per_class=1,
                               class_sep=1.0, flip_y=0.05, random_state=4)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]), NAMES[y]


@pytest.fixture(scope="module")
def good(data):
    """The default trainer's model on 4,000 clean rows."""
    X, y = data
    return _fit(X.iloc[:4000], y[:4000])


def _fit(X: pd.DataFrame, y: np.ndarray):
    with threadpool_limits(1):
        return gradient_boosting("classification").fit(X, pd.Series(y), np.ones(len(y)))


def _set(model_a, model_b, X: pd.DataFrame, y: np.ndarray) -> EvalSet:
    """Challenger ``model_a`` against champion ``model_b`` on ``X``, as the pipeline builds a multiclass set."""
    classes = tuple(sorted(NAMES))
    proba = {id(m): m.predict_proba(X) for m in (model_a, model_b)}
    for m in (model_a, model_b):
        assert [category_key(c) for c in m.classes_] == list(classes)
    return EvalSet(name="recent", y_true=y, challenger=model_a.predict(X), champion=model_b.predict(X),
                   challenger_proba=proba[id(model_a)], champion_proba=proba[id(model_b)], classes=classes,
                   challenger_latency_ms_per_row=0.01, champion_latency_ms_per_row=0.01)


def test_a_better_multiclass_candidate_passes_and_a_worse_one_is_rejected(data, good) -> None:
    """The default trainer fits 3 classes; a challenger trained on 4,000 clean rows passes every gate against one
    trained on 250, and the swap (the worse as challenger) fails on the log loss and AUC ratios; the gates' log
    loss is scikit-learn's."""
    X, y = data
    test_X, test_y = X.iloc[5000:], y[5000:]
    weak = _fit(X.iloc[4000:4250], y[4000:4250])
    better = _set(good, weak, test_X, test_y)
    results = run_gates("classification", [better], GateConfig())
    passed, summary = verdict(results)
    assert passed, [r.sentence for r in results if r.passed is False]
    ratio = next(r for r in results if r.name == "log_loss_vs_champion")
    assert ratio.observed == pytest.approx(skm.log_loss(test_y, good.predict_proba(test_X), labels=list(NAMES)),
                                           rel=1e-9)
    worse = _set(weak, good, test_X, test_y)
    results = run_gates("classification", [worse], GateConfig())
    passed, summary = verdict(results)
    assert not passed
    failed = {r.name for r in results if r.passed is False}
    assert {"log_loss_vs_champion", "auc_error_vs_champion"} <= failed, summary
    auc = next(r for r in results if r.name == "floor_auc")
    macro_auc = skm.roc_auc_score(test_y, weak.predict_proba(test_X), multi_class="ovr", labels=list(NAMES))
    assert auc.observed == pytest.approx(macro_auc, rel=1e-9)


def test_a_miscalibrated_multiclass_candidate_fails_calibration(data, good) -> None:
    """The same predictions given only 0.5 on their class (right about 94% of the time: a top-label ECE far above
    the champion's) fail the calibration gate; the gate's ECE is |0.5 - accuracy|, all rows in one bin."""
    X, y = data
    test_X, test_y = X.iloc[5000:], y[5000:]
    s = _set(good, good, test_X, test_y)
    unsure = 0.25 + 0.25 * np.eye(3)[s.challenger_proba.argmax(axis=1)]
    results = run_gates("classification", [replace(s, challenger_proba=unsure)], GateConfig())
    calibration = next(r for r in results if r.name == "calibration")
    assert calibration.passed is False, calibration.sentence
    right = (s.challenger == test_y).mean()
    assert calibration.observed == pytest.approx(abs(0.5 - right), abs=1e-9)


def test_main_error_and_production_best_of_a_multiclass_model() -> None:
    """main_error is the multiclass log loss of the set's matrix; production's best level is the served
    probabilities' log loss of the true class on its best stretch, with that stretch's accuracy."""
    y = np.array(["a", "b", "c", "a"])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    s = EvalSet(name="recent", y_true=y, challenger=np.array(["a", "b", "c", "b"]), challenger_proba=proba,
                classes=("a", "b", "c"), challenger_latency_ms_per_row=0.1)
    assert main_error("classification", s, "challenger") == pytest.approx(skm.log_loss(y, proba), rel=1e-12)
    assert multiclass_log_loss(y, proba, ("a", "b", "c")) == pytest.approx(skm.log_loss(y, proba), rel=1e-12)
    good = [{"a": 0.8, "b": 0.1, "c": 0.1}, {"a": 0.1, "b": 0.8, "c": 0.1}]
    poor = [{"a": 0.4, "b": 0.3, "c": 0.3}, {"a": 0.3, "b": 0.3, "c": 0.4}]
    history = pd.DataFrame({"label": ["a", "b"] * 2, "served_prediction": ["b", "a", "a", "b"],
                            "served_probabilities": poor + good})
    error, accuracy = production_best(MODE, history, 2)
    assert error == pytest.approx(-np.log(0.8), rel=1e-12) and accuracy == 1.0


def test_a_former_champion_knowing_other_classes_is_set_beside_the_fresh_champion() -> None:
    """The model pool scores a former champion against the fresh set's champion: a multiclass set's probability
    columns are widened to both sets' classes (the columns each lacks are 0), every row still summing to 1."""
    from retrain_worker.pipeline import _beside

    y = np.array(["a", "b"])
    past = EvalSet(name="recent", y_true=y, challenger=np.array(["a", "c"]), challenger_proba=np.array(
        [[0.6, 0.4], [0.3, 0.7]]), classes=("a", "c"), challenger_latency_ms_per_row=0.1)
    fresh = EvalSet(name="recent", y_true=y, challenger=y, challenger_proba=np.array([[0.9, 0.1], [0.2, 0.8]]),
                    champion=np.array(["b", "b"]), champion_proba=np.array([[0.5, 0.5], [0.1, 0.9]]),
                    classes=("a", "b"), challenger_latency_ms_per_row=0.1, champion_latency_ms_per_row=0.2)
    s = _beside(past, fresh)
    assert s.classes == ("a", "b", "c") and s.champion_latency_ms_per_row == 0.2
    np.testing.assert_array_equal(s.challenger_proba, [[0.6, 0.0, 0.4], [0.3, 0.0, 0.7]])
    np.testing.assert_array_equal(s.champion_proba, [[0.5, 0.5, 0.0], [0.1, 0.9, 0.0]])
    assert main_error("classification", s, "challenger") == pytest.approx(-(np.log(0.6) + np.log(1e-15)) / 2)
