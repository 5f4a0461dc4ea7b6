"""Offline gates: each gate's pass and fail, checked against numpy formulas written here, and a real leaky model."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from feedback.monitoring import performance
from retrain_worker.gates import (
    EvalSet,
    GateConfig,
    GateResult,
    ece_noise,
    expected_calibration_error,
    run_gates,
    verdict,
)

N = 400
IDX = np.arange(N)
Y_REG = 20.0 + 5.0 * np.sin(IDX)
SIGNS = np.where(IDX % 2 == 0, 1.0, -1.0)
UNIT = SIGNS  # every error 1: MAE 1, RMSE 1
SPREAD = SIGNS * np.where(IDX % 4 < 2, 0.5, 1.5)  # MAE 1, RMSE sqrt(1.25)
Y_CLF = (IDX % 2).astype(np.int64)
NOISE = np.random.default_rng(7).normal(size=N)


# --- independent computations -----------------------------------------------------------------------------------

def np_mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y - p)))


def np_rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))


def np_r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def np_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def np_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def np_ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / len(p) * abs(p[inside].mean() - y[inside].mean())
    return float(total)


# --- builders ---------------------------------------------------------------------------------------------------

def reg_set(name: str, champion_err: np.ndarray | None, challenger_err: np.ndarray, **kw: object) -> EvalSet:
    y = kw.pop("y_true", Y_REG)
    return EvalSet(name=name, y_true=y, challenger=y + challenger_err,
                   champion=None if champion_err is None else y + champion_err,
                   challenger_latency_ms_per_row=kw.pop("challenger_latency_ms_per_row", 1.0),
                   champion_latency_ms_per_row=kw.pop("champion_latency_ms_per_row", 1.0), **kw)


def scores(strength: float, scale: float = 1.0, y: np.ndarray = Y_CLF, noise: np.ndarray = NOISE) -> np.ndarray:
    """Probability of class 1 from a logit ``scale * (strength * (+-1) + noise)``."""
    return 1.0 / (1.0 + np.exp(-scale * (strength * (2 * y - 1) + noise)))


def clf_set(name: str, champion_p: np.ndarray | None, challenger_p: np.ndarray, y: np.ndarray = Y_CLF,
            **kw: object) -> EvalSet:
    return EvalSet(name=name, y_true=y, positive_class=1,
                   challenger=(challenger_p >= 0.5).astype(np.int64), challenger_proba=challenger_p,
                   champion=None if champion_p is None else (champion_p >= 0.5).astype(np.int64),
                   champion_proba=champion_p,
                   challenger_latency_ms_per_row=kw.pop("challenger_latency_ms_per_row", 1.0),
                   champion_latency_ms_per_row=kw.pop("champion_latency_ms_per_row", 1.0), **kw)


def rows(results: Sequence[GateResult], name: str, set_name: str | None = None) -> list[GateResult]:
    return [r for r in results if r.name == name and (set_name is None or r.set_name == set_name)]


def one(results: Sequence[GateResult], name: str, set_name: str) -> GateResult:
    (row,) = rows(results, name, set_name)
    return row


def numbers_in(sentence: str) -> list[float]:
    out = []
    for text in re.findall(r"\d[\d,]*(?:\.\d+)?%?", sentence):
        value = float(text.rstrip("%").replace(",", ""))
        out.append(value / 100 if text.endswith("%") else value)
    return out


def quotes(sentence: str, value: float) -> bool:
    return any(math.isclose(abs(value), v, rel_tol=6e-3, abs_tol=5e-4) for v in numbers_in(sentence))


# --- ratio gates ----------------------------------------------------------------------------------------------

REGRESSION_RATIO_CASES = [
    # id, champion errors, challenger errors, MAE passes, RMSE passes
    ("4% worse on both", UNIT, 1.04 * UNIT, True, True),
    ("10% worse on both", UNIT, 1.10 * UNIT, False, False),
    ("same MAE, wider spread", UNIT, SPREAD, True, False),
    ("even errors 8% above a spread champion's MAE", SPREAD, 1.08 * UNIT, False, True),
]


@pytest.mark.parametrize("set_name", ["recent", "holdout"])
@pytest.mark.parametrize(("case", "champion_err", "challenger_err", "mae_ok", "rmse_ok"), REGRESSION_RATIO_CASES,
                         ids=[c[0] for c in REGRESSION_RATIO_CASES])
def test_regression_ratio_gates(set_name: str, case: str, champion_err: np.ndarray, challenger_err: np.ndarray,
                                mae_ok: bool, rmse_ok: bool) -> None:
    """Challenger MAE and RMSE pass at <= 1.05 x the champion's on the set where they differ, and fail above."""
    other = "holdout" if set_name == "recent" else "recent"
    sets = [reg_set(set_name, champion_err, challenger_err), reg_set(other, UNIT, UNIT)]
    results = run_gates("regression", sets, GateConfig())
    champion, challenger = Y_REG + champion_err, Y_REG + challenger_err
    for key, fn, ok in (("mae", np_mae, mae_ok), ("rmse", np_rmse, rmse_ok)):
        row = one(results, f"{key}_vs_champion", set_name)
        assert row.observed == pytest.approx(fn(Y_REG, challenger))
        assert row.threshold == pytest.approx(1.05 * fn(Y_REG, champion))
        assert row.passed is ok, row.sentence
        assert row.sentence.endswith("passed" if ok else "failed")
        assert row.sample_size == N
        assert one(results, f"{key}_vs_champion", other).passed is True


CLASSIFICATION_RATIO_CASES = [
    # id, challenger probabilities (champion: scores(1.0)), log loss passes, 1 - AUC passes
    ("the same model", scores(1.0), True, True),
    ("a weaker signal", scores(0.6), False, False),
    ("a slightly weaker ranking", scores(0.95), True, False),
    ("the same ranking, hedged", scores(1.0, scale=0.4), False, True),
    ("a stronger signal", scores(1.3), True, True),
]


@pytest.mark.parametrize("set_name", ["recent", "holdout"])
@pytest.mark.parametrize(("case", "challenger_p", "log_loss_ok", "auc_ok"), CLASSIFICATION_RATIO_CASES,
                         ids=[c[0] for c in CLASSIFICATION_RATIO_CASES])
def test_classification_ratio_gates(set_name: str, case: str, challenger_p: np.ndarray, log_loss_ok: bool,
                                    auc_ok: bool) -> None:
    """Challenger log loss and 1 - AUC pass at <= 1.05 x the champion's on the set where they differ, and fail above."""
    other = "holdout" if set_name == "recent" else "recent"
    champion_p = scores(1.0)
    sets = [clf_set(set_name, champion_p, challenger_p), clf_set(other, champion_p, champion_p)]
    results = run_gates("classification", sets, GateConfig())
    ll = one(results, "log_loss_vs_champion", set_name)
    assert ll.observed == pytest.approx(np_log_loss(Y_CLF, challenger_p))
    assert ll.threshold == pytest.approx(1.05 * np_log_loss(Y_CLF, champion_p))
    assert ll.passed is log_loss_ok, ll.sentence
    auc = one(results, "auc_error_vs_champion", set_name)
    assert auc.observed == pytest.approx(1 - np_auc(Y_CLF, challenger_p))
    assert auc.threshold == pytest.approx(1.05 * (1 - np_auc(Y_CLF, champion_p)))
    assert auc.passed is auc_ok, auc.sentence
    assert one(results, "log_loss_vs_champion", other).passed is True
    assert one(results, "auc_error_vs_champion", other).passed is True


# --- min improvement, floors, leakage --------------------------------------------------------------------------

@pytest.mark.parametrize(("min_improvement", "factor", "ok"), [
    (0.05, 0.90, True),
    (0.05, 0.97, False),
    (0.10, 0.85, True),
    (0.10, 0.92, False),
])
def test_min_improvement(min_improvement: float, factor: float, ok: bool) -> None:
    """The challenger's MAE must be at least min_improvement lower than the champion's, relative to it."""
    results = run_gates("regression", [reg_set("holdout", SPREAD, factor * SPREAD)],
                        GateConfig(min_improvement=min_improvement))
    row = one(results, "min_improvement", "holdout")
    assert row.observed == pytest.approx(np_mae(Y_REG, Y_REG + factor * SPREAD))
    assert row.threshold == pytest.approx((1 - min_improvement) * np_mae(Y_REG, Y_REG + SPREAD))
    assert row.passed is ok, row.sentence
    assert not rows(run_gates("regression", [reg_set("holdout", SPREAD, SPREAD)], GateConfig()), "min_improvement")


FLOOR_CASES = [
    # id, task, set, config, floor row, independent value, passes
    ("R^2 above its floor", "regression", reg_set("recent", UNIT, UNIT), GateConfig(floor_r2=0.8), "floor_r2",
     np_r2(Y_REG, Y_REG + UNIT), True),
    ("R^2 below its floor", "regression", reg_set("recent", UNIT, UNIT), GateConfig(floor_r2=0.95), "floor_r2",
     np_r2(Y_REG, Y_REG + UNIT), False),
    ("AUC above its floor", "classification", clf_set("recent", scores(1.0), scores(1.0)),
     GateConfig(floor_auc=0.9), "floor_auc", np_auc(Y_CLF, scores(1.0)), True),
    ("AUC below its floor", "classification", clf_set("recent", scores(1.0), scores(1.0)),
     GateConfig(floor_auc=0.96), "floor_auc", np_auc(Y_CLF, scores(1.0)), False),
]


@pytest.mark.parametrize(("case", "task", "eval_set", "config", "name", "value", "ok"), FLOOR_CASES,
                         ids=[c[0] for c in FLOOR_CASES])
def test_floors(case: str, task: str, eval_set: EvalSet, config: GateConfig, name: str, value: float,
                ok: bool) -> None:
    """R^2 (regression) and AUC (classification) must reach their absolute floors."""
    row = one(run_gates(task, [eval_set], config), name, "recent")
    assert row.observed == pytest.approx(value)
    assert row.threshold == (config.floor_r2 if task == "regression" else config.floor_auc)
    assert row.passed is ok, row.sentence


def constant_confidence(p_true: float) -> np.ndarray:
    return np.where(Y_CLF == 1, p_true, 1 - p_true)


LEAKAGE_CASES = [
    # id, task, set, passes
    ("MAE a third of the champion's", "regression", reg_set("holdout", UNIT, UNIT / 3), False),
    ("MAE 0.6 of the champion's", "regression", reg_set("holdout", UNIT, 0.6 * UNIT), True),
    ("log loss a third of the champion's, the same accuracy", "classification",
     clf_set("holdout", constant_confidence(0.6), constant_confidence(0.6 ** (1 / 3))), True),
    ("log loss an eighth of the champion's, accuracy 0 -> 1", "classification",
     clf_set("holdout", constant_confidence(0.45), constant_confidence(0.45 ** (1 / 8))), False),
    ("log loss 0.6 of the champion's", "classification",
     clf_set("holdout", constant_confidence(0.6), constant_confidence(0.6 ** 0.6)), True),
]


@pytest.mark.parametrize(("case", "task", "eval_set", "ok"), LEAKAGE_CASES, ids=[c[0] for c in LEAKAGE_CASES])
def test_leakage(case: str, task: str, eval_set: EvalSet, ok: bool) -> None:
    """A main error below 0.5 x the champion's fails as likely leakage, for classification when accuracy gains
    more than 0.02 too (more confidence alone is no leak); a merely better one passes."""
    row = one(run_gates(task, [eval_set], GateConfig()), "leakage", "holdout")
    if task == "regression":
        challenger, champion = np_mae(Y_REG, eval_set.challenger), np_mae(Y_REG, eval_set.champion)
    else:
        challenger = np_log_loss(Y_CLF, eval_set.challenger_proba)
        champion = np_log_loss(Y_CLF, eval_set.champion_proba)
    assert row.observed == pytest.approx(challenger)
    assert row.threshold == pytest.approx(0.5 * champion)
    assert row.passed is ok, row.sentence
    assert ("likely leakage, failed" in row.sentence) is not ok
    if "same accuracy" in case:
        assert row.sentence.endswith("but its accuracy 1.000 gains only +0.000 on 1.000 (a leak gains more than "
                                     "0.02): passed")


def test_leakage_measures_against_productions_best_level() -> None:
    """After a drift the champion's log loss here is 1.2; production once reached 0.10 at accuracy 0.97: a
    challenger at 0.04 and accuracy 1.0 is within reach of that level (gain 0.03 > 0.02 fails; 0.99 passes)."""
    base = clf_set("recent", constant_confidence(0.3), constant_confidence(0.96))
    leaky = replace(base, champion_reference_error=0.10, champion_reference_accuracy=0.97)
    row = one(run_gates("classification", [leaky], GateConfig()), "leakage", "recent")
    assert row.threshold == pytest.approx(0.05) and row.passed is False
    assert "0.5 x production's best level 0.100 = 0.0500" in row.sentence and "gains +0.030 on 0.970" in row.sentence
    fine = replace(base, champion_reference_error=0.10, champion_reference_accuracy=0.99)
    assert one(run_gates("classification", [fine], GateConfig()), "leakage", "recent").passed is True
    far = replace(base, champion_reference_error=2.0, champion_reference_accuracy=0.2)  # worse than the champion
    row = one(run_gates("classification", [far], GateConfig()), "leakage", "recent")
    assert "x champion" in row.sentence


def test_leaky_feature_is_caught() -> None:
    """A gradient-boosted model given the label plus small noise as a feature fails the leakage gate."""
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=4, flip_y=0.05, class_sep=0.8,
                               random_state=0)
    leak = y + np.random.default_rng(0).normal(0.0, 0.1, len(y))
    X_leaky = np.column_stack([X, leak])
    fit = slice(0, 3000)
    with threadpool_limits(limits=1):  # OpenMP threads on a busy machine took 25 s instead of 0.3 s
        champion = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X[fit], y[fit])
        challenger = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X_leaky[fit], y[fit])
    sets = []
    for name, part in (("recent", slice(3000, 3500)), ("holdout", slice(3500, 4000))):
        champion_p, challenger_p = champion.predict_proba(X[part])[:, 1], challenger.predict_proba(X_leaky[part])[:, 1]
        sets.append(clf_set(name, champion_p, challenger_p, y=y[part], challenger_latency_ms_per_row=0.05,
                            champion_latency_ms_per_row=0.05))
    results = run_gates("classification", sets, GateConfig())
    for s in sets:
        row = one(results, "leakage", s.name)
        honest, leaky = np_log_loss(s.y_true, s.champion_proba), np_log_loss(s.y_true, s.challenger_proba)
        assert leaky < 0.2 * honest  # far below, not at the margin
        assert row.observed == pytest.approx(leaky)
        assert row.passed is False
        assert "likely leakage, failed" in row.sentence
        assert one(results, "log_loss_vs_champion", s.name).passed is True  # every ratio gate is fooled
    passed, summary = verdict(results)
    assert not passed
    assert "leakage (recent, holdout)" in summary


# --- segments, calibration, latency ----------------------------------------------------------------------------

SEG_Y = (np.arange(812) % 2).astype(np.int64)
REGION = np.array(["eu"] * 400 + ["us"] * 400 + ["mt"] * 12)


def flipped(y: np.ndarray, where: np.ndarray) -> np.ndarray:
    out = y.copy()
    out[where] = 1 - out[where]
    return out


def segment_clf_set(eu_wrong: int) -> EvalSet:
    champion = flipped(SEG_Y, np.r_[0:40, 400:440])
    challenger = flipped(SEG_Y, np.r_[0:eu_wrong, 400:440])
    proba = np.where(challenger == 1, 0.8, 0.2)
    return EvalSet(name="recent", y_true=SEG_Y, challenger=challenger, champion=champion, challenger_proba=proba,
                   champion_proba=np.where(champion == 1, 0.8, 0.2), segments={"region": REGION},
                   challenger_latency_ms_per_row=1.0, champion_latency_ms_per_row=1.0)


def segment_reg_set(eu_rise: float) -> EvalSet:
    y = 20.0 + 5.0 * np.sin(np.arange(812))
    err = np.where(np.arange(812) % 2 == 0, 1.0, -1.0)
    return EvalSet(name="recent", y_true=y, champion=y + err, challenger=y + err * np.where(REGION == "eu",
                                                                                          1 + eu_rise, 1.0),
                   segments={"region": REGION}, challenger_latency_ms_per_row=1.0, champion_latency_ms_per_row=1.0)


SEGMENT_CASES = [
    # id, task, set, eu passes
    ("accuracy 0.02 lower", "classification", segment_clf_set(48), False),
    ("accuracy 0.005 lower", "classification", segment_clf_set(42), True),
    ("accuracy 0.025 higher", "classification", segment_clf_set(30), True),
    ("MAE 3% higher", "regression", segment_reg_set(0.03), False),
    ("MAE 0.5% higher", "regression", segment_reg_set(0.005), True),
    ("MAE 2% lower", "regression", segment_reg_set(-0.02), True),
]


@pytest.mark.parametrize(("case", "task", "eval_set", "ok"), SEGMENT_CASES, ids=[c[0] for c in SEGMENT_CASES])
def test_segment_regression(case: str, task: str, eval_set: EvalSet, ok: bool) -> None:
    """A segment value regressing beyond epsilon fails, within it passes, and a 12-row value is only reported."""
    results = run_gates(task, [eval_set], GateConfig())
    by_segment = {r.segment: r for r in rows(results, "segment", "recent")}
    assert set(by_segment) == {"region=eu", "region=us", "region=mt"}
    eu, eu_mask = by_segment["region=eu"], REGION == "eu"
    y = eval_set.y_true[eu_mask]
    if task == "classification":
        expected = np.mean(eval_set.champion[eu_mask] == y) - np.mean(eval_set.challenger[eu_mask] == y)
    else:
        expected = np_mae(y, eval_set.challenger[eu_mask]) / np_mae(y, eval_set.champion[eu_mask]) - 1
    assert eu.observed == pytest.approx(expected)
    assert eu.threshold == 0.01
    assert eu.sample_size == 400
    assert eu.passed is ok, eu.sentence
    assert "(n=400)" in eu.sentence
    assert by_segment["region=us"].passed is True
    mt = by_segment["region=mt"]
    assert mt.passed is None and mt.sample_size == 12
    assert "too few rows" in mt.sentence
    passed, summary = verdict(results)
    assert passed is ok
    assert ("segment region=eu (recent)" in summary) is not ok


def test_segment_sentence_reads_as_specified() -> None:
    """A failing accuracy segment reads "challenger accuracy X vs champion Y (n=...): regressed D > 0.01, failed"."""
    eu = next(r for r in run_gates("classification", [segment_clf_set(48)], GateConfig()) if r.segment == "region=eu")
    assert eu.sentence == ("recent: segment region=eu: challenger accuracy 0.880 vs champion 0.900 (n=400): "
                           "regressed 0.020 > 0.01, significantly (McNemar p = 0.0039 < 0.05), failed")


def test_a_segment_regression_must_be_significant_to_fail() -> None:
    """2 points worse on 108 rows (3 rows the champion alone gets right, 1 the challenger alone): McNemar's
    one-sided p is the binomial tail P(X >= 3 | 4, 1/2) = 5/16, so it passes and says so; with segment_alpha
    None it fails. An MAE 3% higher on every row of 406 is significant (constant differences)."""
    from math import comb

    y = np.zeros(108, dtype=np.int64)
    champion = y.copy()
    champion[:10] = 1  # wrong on 10 rows
    challenger = champion.copy()
    challenger[10:13] = 1  # wrong on 3 more the champion gets right ...
    challenger[0] = 0  # ... and right on 1 the champion gets wrong
    s = EvalSet(name="recent", y_true=y, challenger=challenger, champion=champion,
                challenger_proba=challenger.astype(float), champion_proba=champion.astype(float),
                segments={"region": np.array(["west"] * 108)}, challenger_latency_ms_per_row=1.0,
                champion_latency_ms_per_row=1.0)
    tail = sum(comb(4, k) for k in (3, 4)) / 2 ** 4
    row = next(r for r in run_gates("classification", [s], GateConfig()) if r.segment == "region=west")
    assert row.passed is True and row.observed == pytest.approx(2 / 108)
    assert row.sentence.endswith(f"but not significantly (McNemar p = {tail:.2g} >= 0.05), passed")
    strict = next(r for r in run_gates("classification", [s], GateConfig(segment_alpha=None))
                  if r.segment == "region=west")
    assert strict.passed is False
    mae = next(r for r in run_gates("regression", [segment_reg_set(0.03)], GateConfig()) if r.segment == "region=eu")
    assert mae.passed is False and "significantly (paired t p = 0 < 0.05)" in mae.sentence


CAL_RNG = np.random.default_rng(11)
CAL_P = CAL_RNG.uniform(0.02, 0.98, 2000)
CAL_Y = (CAL_RNG.random(2000) < CAL_P).astype(np.int64)


@pytest.mark.parametrize(("case", "challenger_p", "ok"), [
    ("as calibrated as the champion", CAL_P, True),
    ("slightly shifted", np.clip(CAL_P + 0.01, 0, 1), True),
    ("shifted by 0.08", np.clip(CAL_P + 0.08, 0, 1), False),
])
def test_calibration(case: str, challenger_p: np.ndarray, ok: bool) -> None:
    """The challenger's ECE may exceed the champion's by the tolerance 0.02 (and its extra sampling noise), not
    more."""
    results = run_gates("classification", [clf_set("holdout", CAL_P, challenger_p, y=CAL_Y)], GateConfig())
    row = one(results, "calibration", "holdout")
    assert row.observed == pytest.approx(np_ece(CAL_Y, challenger_p))
    noise = max(0.0, ece_noise(challenger_p) - ece_noise(CAL_P))  # the challenger's extra sampling noise
    assert row.threshold == pytest.approx(np_ece(CAL_Y, CAL_P) + 0.02 + noise)
    assert row.passed is ok, row.sentence


def test_ece_noise_is_the_ece_of_a_calibrated_model_by_chance() -> None:
    """ece_noise matches the mean ECE of a perfectly calibrated model simulated on the same probabilities
    (labels drawn from them), for spread and for constant probabilities."""
    rng = np.random.default_rng(5)
    for p in (rng.beta(0.7, 0.7, 500), np.full(500, 0.5), rng.uniform(0.6, 0.9, 300)):
        simulated = np.mean([np_ece((rng.random(len(p)) < p).astype(np.int64), p) for _ in range(3000)])
        assert ece_noise(p) == pytest.approx(simulated, rel=0.05)


def test_a_sharper_model_is_allowed_its_sampling_noise_not_miscalibration() -> None:
    """Against a constant 0.5 champion (one bin, almost no noise) on 720 rows, a calibrated sharp challenger's
    ECE of about 0.035 is noise, and passes; the same challenger shifted by 0.08 still fails."""
    rng = np.random.default_rng(8)
    p = rng.beta(0.7, 0.7, 720)
    y = (rng.random(720) < p).astype(np.int64)
    flat = np.full(720, 0.5)
    fair = one(run_gates("classification", [clf_set("recent", flat, p, y=y)], GateConfig()), "calibration", "recent")
    noise = ece_noise(p) - ece_noise(flat)
    assert fair.threshold == pytest.approx(np_ece(y, flat) + 0.02 + noise)
    assert fair.passed and np_ece(y, p) > np_ece(y, flat) + 0.02, fair.sentence  # failed without the noise term
    assert f"+ sampling noise {noise:.3f}" in fair.sentence
    shifted = one(run_gates("classification", [clf_set("recent", flat, np.clip(p + 0.08, 0, 1), y=y)], GateConfig()),
                  "calibration", "recent")
    assert shifted.passed is False


def test_ece_is_the_monitoring_ece() -> None:
    """The gate's ECE equals the live monitoring's ECE from its aggregates, so both mean the same quantity."""
    acc: dict[str, int] = {}
    for c in performance.classification_contributions(CAL_Y[:500].tolist(), CAL_Y[:500].tolist(),
                                                       CAL_P[:500].tolist(), positive=1):
        performance.add(acc, c)
    live = performance.classification_metrics(acc)["ece"].value
    assert expected_calibration_error(CAL_Y[:500], CAL_P[:500]) == pytest.approx(live, abs=1e-8)


LATENCY_CASES = [
    # budget, max ratio, challenger ms, champion ms, budget row passes, ratio row passes (None: no row)
    (5.0, 2.0, 4.0, 3.0, True, True),
    (5.0, 2.0, 6.0, 4.0, False, True),
    (5.0, 2.0, 2.5, 1.0, True, False),
    (None, 2.0, 9.0, 5.0, None, True),
    (5.0, None, 3.0, 1.0, True, None),
    (5.0, 2.0, 0.11, 0.03, True, True),  # 3.7x, but under latency_ratio_min_ms (0.5 ms/row): timer noise
    (5.0, 2.0, 0.6, 0.2, True, False),  # 3x and above it
]


@pytest.mark.parametrize(("budget", "ratio", "challenger_ms", "champion_ms", "budget_ok", "ratio_ok"), LATENCY_CASES)
def test_latency(budget: float | None, ratio: float | None, challenger_ms: float, champion_ms: float,
                 budget_ok: bool | None, ratio_ok: bool | None) -> None:
    """Challenger latency per row must fit the absolute budget and max_latency_ratio x the champion's."""
    s = reg_set("recent", UNIT, UNIT, challenger_latency_ms_per_row=challenger_ms,
                champion_latency_ms_per_row=champion_ms)
    results = run_gates("regression", [s], GateConfig(latency_budget_ms_per_row=budget, max_latency_ratio=ratio))
    for name, ok, threshold in (("latency_budget", budget_ok, budget),
                                ("latency_ratio", ratio_ok, None if ratio is None else ratio * champion_ms)):
        if ok is None:
            assert not rows(results, name)
            continue
        row = one(results, name, "recent")
        assert (row.passed, row.observed, row.threshold) == (ok, challenger_ms, pytest.approx(threshold))


def test_unmeasured_champion_latency_fails_the_ratio_gate() -> None:
    """A champion without a latency measurement makes the ratio gate undecidable, which fails the run."""
    results = run_gates("regression", [reg_set("recent", UNIT, UNIT, champion_latency_ms_per_row=None)], GateConfig())
    assert one(results, "latency_ratio", "recent").passed is None
    assert one(results, "latency_ratio", "all").passed is False
    assert verdict(results) == (False, "failed 1 of 7 checks: latency_ratio (all)")


# --- first model, uncomputable metrics, bad inputs -------------------------------------------------------------

FIRST_MODEL_CASES = [
    # id, task, set, config, floor row, independent value, passes
    ("R^2 above the floor", "regression", reg_set("holdout", None, UNIT), GateConfig(floor_r2=0.5), "floor_r2",
     np_r2(Y_REG, Y_REG + UNIT), True),
    ("R^2 below the floor", "regression", reg_set("holdout", None, 4 * UNIT), GateConfig(floor_r2=0.5), "floor_r2",
     np_r2(Y_REG, Y_REG + 4 * UNIT), False),
    ("AUC above the floor", "classification", clf_set("holdout", None, scores(1.0)), GateConfig(floor_auc=0.9),
     "floor_auc", np_auc(Y_CLF, scores(1.0)), True),
    ("AUC below the floor", "classification", clf_set("holdout", None, scores(0.6)), GateConfig(floor_auc=0.9),
     "floor_auc", np_auc(Y_CLF, scores(0.6)), False),
]


@pytest.mark.parametrize(("case", "task", "eval_set", "config", "name", "value", "ok"), FIRST_MODEL_CASES,
                         ids=[c[0] for c in FIRST_MODEL_CASES])
def test_first_model_is_gated_on_the_floor_alone(case: str, task: str, eval_set: EvalSet, config: GateConfig,
                                                 name: str, value: float, ok: bool) -> None:
    """With no champion yet only the floor and the latency budget decide, and a row says so."""
    results = run_gates(task, [eval_set], config)
    assert {r.name for r in results} == {"valid_predictions", "first_model", name, "latency_budget"}
    note = one(results, "first_model", "holdout")
    assert note.passed is None
    assert "no champion yet: the first model is gated on the floor" in note.sentence
    floor = one(results, name, "holdout")
    assert floor.observed == pytest.approx(value)
    assert floor.passed is ok
    passed, summary = verdict(results)
    assert passed is ok
    assert ("no champion yet" in summary) is ok
    assert (f"{name} (holdout)" in summary) is not ok


def test_first_model_without_a_floor_fails() -> None:
    """With no champion and the floor switched off nothing checks quality, so the first model fails."""
    results = run_gates("regression", [reg_set("holdout", None, UNIT)], GateConfig(floor_r2=None))
    assert one(results, "first_model", "holdout").passed is False
    assert verdict(results)[0] is False


def test_single_class_set_is_not_computable_and_never_passes() -> None:
    """A one-class set reports AUC as not computable instead of crashing; a gate no set could decide fails."""
    y = np.ones(50, dtype=np.int64)
    p = np.linspace(0.55, 0.95, 50)
    alone = run_gates("classification", [clf_set("recent", p, p, y=y)], GateConfig())
    auc = one(alone, "auc_error_vs_champion", "recent")
    assert auc.passed is None and auc.observed is None
    assert auc.sentence == "recent: 1 - AUC vs champion not computable: one class only (50 positive of 50 rows)"
    assert one(alone, "log_loss_vs_champion", "recent").passed is True
    assert one(alone, "auc_error_vs_champion", "all").passed is False
    assert one(alone, "floor_auc", "all").passed is False
    with_holdout = run_gates("classification", [clf_set("recent", p, p, y=y), clf_set("holdout", scores(1.0),
                                                                                       scores(1.0))], GateConfig())
    assert not rows(with_holdout, "auc_error_vs_champion", "all")
    assert verdict(with_holdout)[0] is True


@pytest.mark.parametrize(("task", "eval_set"), [
    ("regression", reg_set("recent", UNIT, np.where(IDX == 3, np.nan, UNIT))),
    ("classification", clf_set("recent", scores(1.0), np.where(IDX == 3, 1.2, scores(1.0)))),
])
def test_invalid_challenger_predictions_fail(task: str, eval_set: EvalSet) -> None:
    """A non-finite prediction or a probability outside [0, 1] fails the set instead of crashing a metric."""
    results = run_gates(task, [eval_set], GateConfig())
    row = one(results, "valid_predictions", "recent")
    assert (row.passed, row.observed) == (False, 1.0)
    assert verdict(results)[0] is False


def test_no_evaluation_set_fails() -> None:
    """Gating with neither a recent window nor a holdout fails with a row that says why."""
    results = run_gates("regression", [], GateConfig())
    assert verdict(results) == (False, "failed 1 of 1 check: evaluation_sets (all)")


BAD_INPUTS = [
    ("length", lambda: EvalSet(name="recent", y_true=np.zeros(3), challenger=np.zeros(2),
                               challenger_latency_ms_per_row=1.0), "challenger has 2 rows, y_true has 3"),
    ("segment length", lambda: EvalSet(name="recent", y_true=np.zeros(3), challenger=np.zeros(3),
                                       segments={"region": np.array(["eu"])}, challenger_latency_ms_per_row=1.0),
     r"segments\['region'\] has 1 rows"),
    ("champion_proba alone", lambda: EvalSet(name="recent", y_true=np.zeros(3), challenger=np.zeros(3),
                                             champion_proba=np.zeros(3), challenger_latency_ms_per_row=1.0),
     "champion_proba given without champion"),
    ("negative latency", lambda: reg_set("recent", UNIT, UNIT, challenger_latency_ms_per_row=-1.0),
     "challenger_latency_ms_per_row must be a finite number >= 0"),
    ("task", lambda: run_gates("ranking", [reg_set("recent", UNIT, UNIT)], GateConfig()), "task must be one of"),
    ("duplicate sets", lambda: run_gates("regression", [reg_set("recent", UNIT, UNIT)] * 2, GateConfig()),
     "names must be unique"),
    ("classification without proba", lambda: run_gates("classification", [
        EvalSet(name="recent", y_true=Y_CLF, challenger=Y_CLF, challenger_latency_ms_per_row=1.0)], GateConfig()),
     "classification needs challenger_proba"),
    ("champion without proba", lambda: run_gates("classification", [
        EvalSet(name="recent", y_true=Y_CLF, challenger=Y_CLF, champion=Y_CLF, challenger_proba=scores(1.0),
                challenger_latency_ms_per_row=1.0)], GateConfig()), "needs champion_proba beside champion"),
    ("non-finite champion", lambda: run_gates("regression", [reg_set("recent", np.full(N, np.nan), UNIT)],
                                              GateConfig()), "champion has 400 non-finite values"),
    ("max_ratio", lambda: GateConfig(max_ratio=0.0), "max_ratio must be > 0, got 0.0"),
    ("min_improvement", lambda: GateConfig(min_improvement=0.6), r"min_improvement must be in \[0, 0.5\)"),
    ("floor_auc", lambda: GateConfig(floor_auc=1.5), r"floor_auc must be in \[0, 1\], got 1.5"),
    ("min_segment_rows", lambda: GateConfig(min_segment_rows=0), "min_segment_rows must be >= 1, got 0"),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_naming_the_value(case: str, make, message: str) -> None:
    """Malformed sets, tasks and limits raise ValueError naming the offending field and value."""
    with pytest.raises(ValueError, match=message):
        make()


# --- sentences and verdict ------------------------------------------------------------------------------------

def test_sentences_quote_observed_and_threshold() -> None:
    """Every decided row's sentence contains its observed value and its threshold."""
    results = [
        *run_gates("classification", [segment_clf_set(48), clf_set("holdout", CAL_P, CAL_P + 0.01, y=CAL_Y)],
                   GateConfig(min_improvement=0.01)),
        *run_gates("regression", [segment_reg_set(0.03), reg_set("holdout", UNIT, UNIT / 3)],
                   GateConfig(min_improvement=0.05)),
        *run_gates("regression", [reg_set("holdout", None, UNIT)], GateConfig()),
    ]
    decided = [r for r in results if r.passed is not None and r.observed is not None and r.threshold is not None]
    assert len(decided) > 30
    assert {r.name for r in decided} >= {"mae_vs_champion", "rmse_vs_champion", "log_loss_vs_champion",
                                         "auc_error_vs_champion", "min_improvement", "leakage", "floor_r2",
                                         "floor_auc", "calibration", "latency_budget", "latency_ratio", "segment"}
    for r in decided:
        assert quotes(r.sentence, r.observed), (r.observed, r.sentence)
        assert quotes(r.sentence, r.threshold), (r.threshold, r.sentence)
        assert r.sentence.startswith(f"{r.set_name}: ")
        assert r.sentence.endswith("passed" if r.passed else "failed")


def test_ratio_sentence_reads_as_specified() -> None:
    """The MAE ratio sentence reads "challenger MAE X <= 1.05 x champion MAE Y = T: passed"."""
    row = one(run_gates("regression", [reg_set("holdout", SPREAD, 1.03 * SPREAD)], GateConfig()),
              "mae_vs_champion", "holdout")
    assert row.sentence == "holdout: challenger MAE 1.03 <= 1.05 x champion MAE 1.00 = 1.05: passed"


def test_close_values_print_apart() -> None:
    """An observed value just above its threshold prints with enough digits to show it is above."""
    row = one(run_gates("regression", [reg_set("recent", UNIT, 1.0501 * UNIT)], GateConfig()),
              "mae_vs_champion", "recent")
    assert row.passed is False
    assert row.sentence == "recent: challenger MAE 1.0501 > 1.05 x champion MAE 1.00 = 1.0500: failed"


@pytest.mark.parametrize(("task", "eval_set", "epsilon", "ok", "ending"), [
    ("classification", segment_clf_set(44), 0.01, True, "regressed 0.010 <= 0.01, passed"),
    ("classification", segment_clf_set(44), 0.0099, False, "regressed 0.010 > 0.0099, failed"),
    ("regression", segment_reg_set(0.0102), 0.01, False, "rose 1.02% > 1.0%, failed"),
])
def test_segment_at_the_epsilon_boundary(task: str, eval_set: EvalSet, epsilon: float, ok: bool, ending: str) -> None:
    """A drop of exactly epsilon passes, and one a hair beyond prints enough digits to show it is beyond (the
    point estimate alone: segment_alpha None)."""
    results = run_gates(task, [eval_set], GateConfig(segment_epsilon=epsilon, segment_alpha=None))
    eu = next(r for r in results if r.segment == "region=eu")
    assert eu.passed is ok
    assert eu.sentence.endswith(ending)


def result(name: str, set_name: str, passed: bool | None, segment: str | None = None) -> GateResult:
    return GateResult(name=name, set_name=set_name, passed=passed, observed=1.0, threshold=1.0, sentence="s",
                      segment=segment)


VERDICT_CASES = [
    ("all passed", [result("mae_vs_champion", "recent", True), result("mae_vs_champion", "holdout", True)],
     (True, "passed all 2 checks on recent, holdout")),
    ("informational rows counted", [result("leakage", "recent", True), result("segment", "recent", None, "r=x")],
     (True, "passed the only check on recent (1 informational)")),
    ("failures named with their sets", [
        result("mae_vs_champion", "recent", False), result("mae_vs_champion", "holdout", False),
        result("leakage", "holdout", False), result("rmse_vs_champion", "recent", True),
        result("segment", "recent", False, "region=eu")],
     (False, "failed 4 of 5 checks: mae_vs_champion (recent, holdout); leakage (holdout); "
             "segment region=eu (recent)")),
    ("nothing decided", [result("segment", "recent", None)], (False, "no gate could decide anything: failed")),
    ("no results", [], (False, "no gate could decide anything: failed")),
]


@pytest.mark.parametrize(("case", "results", "expected"), VERDICT_CASES, ids=[c[0] for c in VERDICT_CASES])
def test_verdict_summary(case: str, results: list[GateResult], expected: tuple[bool, str]) -> None:
    """verdict passes only with no failure and something decided, in one line naming each failed gate and set."""
    passed, summary = verdict(results)
    assert (passed, summary) == expected
    assert "\n" not in summary


@pytest.mark.parametrize(("reference", "passed", "whose"), [
    (None, False, "x champion 1.00"),  # a third of the degraded champion's error: suspicious
    (0.35, True, "x production's best level 0.350"),  # but production once did 0.35
    (0.9, False, "x production's best level 0.900"),
])
def test_leakage_measures_against_the_champion_before_a_change(reference: float | None, passed: bool,
                                                               whose: str) -> None:
    """After a concept change the leakage check uses production's best level when it is lower."""
    s = reg_set("recent", np.full(len(Y_REG), 1.0), np.full(len(Y_REG), 0.3), champion_reference_error=reference)
    [row] = [r for r in run_gates("regression", [s], GateConfig()) if r.name == "leakage"]
    assert row.passed is passed and whose in row.sentence, row.sentence
