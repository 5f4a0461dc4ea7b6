"""The ramp's sequential test: its false-positive rate under repeated looks on simulated A/A traffic stays within
alpha (where a fixed-horizon t-test peeked at as often does not), it finds a real difference, and the sample
size follows the z-test formula (checked by simulating the test's power)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_ind

from feedback.rollout.sequential import SequentialTest, msprt_lambda, required_per_arm

LOOKS = np.arange(100, 5_001, 100)  # 50 looks, 100 more units per arm each


def _running(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running means and (unbiased) variances along the last axis, at the look sizes."""
    n = np.arange(1, x.shape[-1] + 1)
    s1, s2 = np.cumsum(x, axis=-1), np.cumsum(x * x, axis=-1)
    mean = s1 / n
    var = (s2 - n * mean * mean) / np.maximum(n - 1, 1)
    return mean[..., LOOKS - 1], var[..., LOOKS - 1]


def _rejections(a: np.ndarray, b: np.ndarray, tau2: float, alpha: float = 0.05) -> np.ndarray:
    """Per experiment: whether the mSPRT's always-valid p-value fell to alpha at any of the 50 looks."""
    (ma, va), (mb, vb) = _running(a), _running(b)
    lam = msprt_lambda(mb - ma, va / LOOKS + vb / LOOKS, tau2)
    return (lam >= 1 / alpha).any(axis=-1)


def test_the_false_positive_rate_holds_under_repeated_looks() -> None:
    """2,000 A/A experiments (errors exponential, a skewed metric like absolute error), 50 looks each up to
    5,000 units per arm: the mSPRT rejects in at most 5% (plus Monte Carlo error); a t-test at each look
    rejects several times as often."""
    rng = np.random.default_rng(20261130)
    a, b = rng.exponential(1.0, (2_000, 5_000)), rng.exponential(1.0, (2_000, 5_000))
    fpr = _rejections(a, b, tau2=0.05 ** 2).mean()
    assert fpr <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2_000), fpr
    peeking = np.zeros(2_000, dtype=bool)
    for n in LOOKS[::5]:  # 10 looks are enough to show it
        peeking |= ttest_ind(a[:, :n], b[:, :n], axis=1).pvalue <= 0.05
    assert peeking.mean() > 2 * max(fpr, 0.05), (peeking.mean(), fpr)


def test_a_real_difference_is_found() -> None:
    """A challenger whose mean error is 10% lower (exponential errors, sd 1) is found in nearly every
    experiment within 5,000 units per arm."""
    rng = np.random.default_rng(7)
    a, b = rng.exponential(1.0, (500, 5_000)), rng.exponential(0.9, (500, 5_000))
    assert _rejections(a, b, tau2=0.05 ** 2).mean() > 0.9


def test_the_object_matches_the_vectorised_statistic_and_never_rises() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 3_000), rng.normal(0.92, 1.0, 3_000)
    test = SequentialTest(tau2=0.01)
    seen = []
    for n in range(100, 3_001, 100):
        seen.append(test.look(n, a[:n].mean(), a[:n].var(ddof=1), n, b[:n].mean(), b[:n].var(ddof=1)))
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:], strict=False))
    v = a.var(ddof=1) / 3_000 + b.var(ddof=1) / 3_000
    assert seen[-1] <= min(1.0, 1 / float(msprt_lambda(b.mean() - a.mean(), v, 0.01)))
    assert test.looks == 30 and test.significant == (test.p_value <= 0.05)
    assert SequentialTest(tau2=0.01).look(1, 0.0, 0.0, 5, 1.0, 1.0) == 1.0  # too few units: no evidence


def test_required_per_arm_gives_the_nominal_power() -> None:
    """393 per arm for 0.2 sd (not seed 004's table); simulated two-sided t-tests at that size find a 0.2 sd
    difference in about 80% of 4,000 experiments."""
    n = required_per_arm(0.2)
    assert n == 393 and required_per_arm(0.5) == 63 and required_per_arm(0.2, power=0.9) == 526
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.0, 1.0, (4_000, n)), rng.normal(0.2, 1.0, (4_000, n))
    power = (ttest_ind(a, b, axis=1).pvalue <= 0.05).mean()
    assert power == pytest.approx(0.80, abs=0.025)
    with pytest.raises(ValueError, match="effect_sd must be > 0"):
        required_per_arm(0.0)
