"""The shadow gate on fixed data, checked against independent numpy and scipy computations: the error ratio, the
failure rate and its binomial test, the p99 of the disagreement, agreement; waiting, expiry, the early fail and
the disagreement tail."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from feedback.config import RolloutConfig
from feedback.rollout.shadow_gate import ShadowRows, shadow_verdict

DAY = 86_400
CONFIG = RolloutConfig()


def _classification(n: int = 1500, *, served_flip: float = 0.20, shadow_fixes: float = 0.15, failures: int = 5,
                    seed: int = 0) -> ShadowRows:
    """Labelled rows where the shadow repeats the served class but gets ``shadow_fixes`` of its mistakes right."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    p_served = np.clip(truth * 0.7 + 0.15 + rng.normal(0, 0.1, n), 0, 1)
    p_shadow = np.clip(p_served + rng.normal(0, 0.05, n), 0, 1)
    served = np.where(rng.random(n) < served_flip, 1 - truth, truth)
    shadow = np.where((served != truth) & (rng.random(n) < shadow_fixes), truth, served)
    failed = np.zeros(n, dtype=bool)
    failed[rng.choice(n, failures, replace=False)] = True
    key = np.vectorize(str, otypes=[object])
    return ShadowRows(labels=key(truth), served=key(served), shadow=key(shadow), failed=failed,
                      served_proba=p_served, shadow_proba=np.where(failed, np.nan, p_shadow))


def _checks(verdict) -> dict:
    return {c.name: c for c in verdict.checks}


def test_classification_figures_match_independent_computations() -> None:
    """Error ratio, failure rate and its one-sided binomial p-value, the p99 probability gap and agreement are
    the figures numpy and scipy give on the same rows; the candidate passes."""
    rows = _classification()
    rows = ShadowRows(labels=rows.labels, served=rows.served, shadow=rows.shadow, failed=rows.failed,
                      served_proba=rows.served_proba, shadow_proba=rows.shadow_proba, scored=2000, failures=7)
    v = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=2 * DAY)
    ok = ~rows.failed
    champion = np.mean(rows.served != rows.labels)
    challenger = np.mean(np.where(ok, rows.shadow != rows.labels, True))
    gaps = np.abs(rows.shadow_proba - rows.served_proba)[ok]
    assert v.status == "passed", v.sentence
    f = v.figures
    assert f["champion_error"] == pytest.approx(champion) and f["challenger_error"] == pytest.approx(challenger)
    assert f["error_threshold"] == pytest.approx(1.10 * champion)
    assert f["failure_rate"] == pytest.approx(7 / 2000)
    assert f["binomial_p"] == pytest.approx(binomtest(7, 2000, 0.01, alternative="greater").pvalue)
    assert f["gap_p99"] == pytest.approx(np.percentile(gaps, 99))
    assert f["agreement"] == pytest.approx(np.mean(ok & (rows.shadow == rows.served)))
    checks = _checks(v)
    assert checks["error_ratio"].sentence == (
        f"challenger error {challenger:.3g} <= 1.10 x champion {champion:.3g} = {1.1 * champion:.3g} on 1,500 "
        "labelled requests: passed")
    assert checks["failure_rate"].sentence == "failures 7 of 2,000 scored requests = 0.35% <= 1.00%: passed"
    assert checks["gap_tail"].sentence.startswith("p99 of the p(1) gap ") and checks["gap_tail"].passed
    assert v.sentence.startswith("passed: challenger error ") and not v.escalate


def test_regression_failures_count_as_the_shadows_largest_error() -> None:
    """A failed regression row counts as the largest absolute error the shadow made on the labelled rows; the
    gap tail is bounded by the champion's p99 absolute error; agreement is |gap| <= the champion's MAE."""
    rng = np.random.default_rng(1)
    n = 1200
    y = rng.normal(20, 5, n)
    served = y + rng.normal(0, 1.0, n)
    shadow = y + rng.normal(0, 0.9, n)
    failed = np.zeros(n, dtype=bool)
    failed[:6] = True
    v = shadow_verdict(ShadowRows(labels=y, served=served, shadow=shadow, failed=failed), CONFIG, task="regression",
                       duration_s=DAY)
    ok = ~failed
    worst = np.max(np.abs(shadow - y)[ok])
    challenger = np.mean(np.where(ok, np.abs(shadow - y), worst))
    champion_abs = np.abs(served - y)
    assert v.figures["challenger_error"] == pytest.approx(challenger)
    assert v.figures["champion_error"] == pytest.approx(champion_abs.mean())
    assert v.figures["gap_p99"] == pytest.approx(np.percentile(np.abs(shadow - served)[ok], 99))
    assert v.figures["gap_threshold"] == pytest.approx(3.0 * np.percentile(champion_abs, 99))
    assert v.figures["agreement"] == pytest.approx(np.mean(ok & (np.abs(shadow - served) <= champion_abs.mean())))
    assert v.status == "passed", v.sentence


def test_waiting_until_both_labels_and_duration() -> None:
    """Too few labelled rows, or too little event time, is waiting, never passed, whatever the errors."""
    rows = _classification(n=999, failures=0)
    few = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=5 * DAY)
    assert few.status == "waiting"
    assert few.sentence == "waiting: 999 of 1,000 labelled requests, 5 days of 24.0 h"
    enough = _classification(n=1000, failures=0)
    short = shadow_verdict(enough, CONFIG, task="classification", positive_class=1, duration_s=DAY - 1)
    assert short.status == "waiting" and _checks(short)["duration"].passed is False
    assert shadow_verdict(enough, CONFIG, task="classification", positive_class=1, duration_s=DAY).status == "passed"


def test_a_shadow_without_its_labels_expires_with_the_reason() -> None:
    """At the maximum duration without enough labels, the shadow expires and says how far it got."""
    v = shadow_verdict(_classification(n=412, failures=0), CONFIG, task="classification", positive_class=1,
                       duration_s=14 * DAY)
    assert v.status == "expired"
    assert v.sentence == "expired: 412 of 1,000 labelled requests after 14 days"


@pytest.mark.parametrize("scored", [30, 200, 5000])
def test_a_model_failing_half_its_rows_never_passes(scored: int) -> None:
    """Half the rows failing fails the shadow as soon as min_requests rows are scored, labelled or not, on a
    binomial p-value that is scipy's; with every label and all the time it still fails."""
    failures = scored // 2
    none = np.array([], dtype=object)
    early = shadow_verdict(ShadowRows(labels=none, served=none, shadow=none, failed=np.array([], dtype=bool),
                                      scored=scored, failures=failures), CONFIG, task="classification",
                           positive_class=1, duration_s=60)
    assert early.status == "failed"
    p = binomtest(failures, scored, 0.01, alternative="greater").pvalue
    assert early.figures["binomial_p"] == pytest.approx(p) and p < 0.01
    assert "failed at once" in early.sentence and "= 50.00% > 1.00%, significantly" in early.sentence
    rows = _classification(n=2000, failures=1000, shadow_fixes=1.0)  # right on every row it answers
    late = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=3 * DAY)
    assert late.status == "failed"


def test_failures_below_min_requests_wait_and_a_slight_excess_fails_at_the_verdict() -> None:
    """Fewer than min_requests scored rows are not failed early; a failure rate a little above the limit, not
    significantly, fails only at the verdict."""
    none = np.array([], dtype=object)
    few = shadow_verdict(ShadowRows(labels=none, served=none, shadow=none, failed=np.array([], dtype=bool),
                                    scored=29, failures=29), CONFIG, task="classification", positive_class=1,
                         duration_s=60)
    assert few.status == "waiting"
    rows = _classification(n=1500, failures=18, shadow_fixes=0.5)  # 1.2%
    assert binomtest(18, 1500, 0.01, alternative="greater").pvalue > 0.01
    v = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=2 * DAY)
    assert v.status == "failed" and v.sentence == "failed: failures 18 of 1,500 scored requests = 1.20% > 1.00%: failed"


def test_a_catastrophic_regression_tail_fails_though_the_mean_error_passes() -> None:
    """A candidate that agrees with the champion on 95% of requests and is off by 50 x the champion's p99 error on
    the other 5% passes the mean error ratio (rare huge label outliers dominate both means) and fails on the tail."""
    rng = np.random.default_rng(2)
    n = 4000
    y = rng.normal(30, 3, n)
    outliers = np.zeros(n, dtype=bool)
    outliers[rng.choice(n, 20, replace=False)] = True  # 0.5%: the world's rare huge delays, no model foresees them
    y[outliers] += 20_000
    served = y - np.where(outliers, 20_000, 0) + rng.normal(0, 1, n)
    champion_p99 = np.percentile(np.abs(served - y), 99)
    shadow = served.copy()
    off = rng.random(n) < 0.05
    shadow[off] += 50 * champion_p99
    v = shadow_verdict(ShadowRows(labels=y, served=served, shadow=shadow, failed=np.zeros(n, dtype=bool)), CONFIG,
                       task="regression", duration_s=2 * DAY)
    checks = _checks(v)
    assert checks["error_ratio"].passed, checks["error_ratio"].sentence
    assert checks["gap_tail"].passed is False
    assert v.figures["gap_p99"] == pytest.approx(np.percentile(np.abs(shadow - served), 99))
    assert v.figures["gap_threshold"] == pytest.approx(3.0 * champion_p99)
    assert v.status == "failed" and v.sentence.startswith("failed: p99 |gap| ")


def test_without_probabilities_the_tail_is_not_bounded_and_says_so() -> None:
    """Classification without probabilities on both sides passes on its errors, saying the tail is not bounded."""
    rows = _classification()
    rows = ShadowRows(labels=rows.labels, served=rows.served, shadow=rows.shadow, failed=rows.failed)
    v = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=2 * DAY)
    assert v.status == "passed"
    assert "no class probabilities on both sides: the disagreement tail is not bounded" in v.sentence


def test_low_agreement_escalates_and_fails_nothing() -> None:
    """Two equally good models that disagree on half the requests: passed, and escalated to a person."""
    rng = np.random.default_rng(3)
    n = 3000
    truth = rng.integers(0, 2, n)
    served = np.where(rng.random(n) < 0.3, 1 - truth, truth)
    shadow = np.where(rng.random(n) < 0.3, 1 - truth, truth)
    key = np.vectorize(str, otypes=[object])
    v = shadow_verdict(ShadowRows(labels=key(truth), served=key(served), shadow=key(shadow),
                                  failed=np.zeros(n, dtype=bool)), CONFIG, task="classification", positive_class=1,
                       duration_s=2 * DAY)
    assert v.status == "passed" and v.escalate
    assert v.figures["agreement"] == pytest.approx(np.mean(served == shadow))
    assert _checks(v)["agreement"].sentence.endswith("< 80%: escalated to a person (it fails nothing)")


@pytest.mark.parametrize(("right_in_the_tail", "passes"), [(True, True), (False, False)])
def test_a_confident_classification_tail_passes_only_when_the_challenger_is_right_there(right_in_the_tail: bool,
                                                                                         passes: bool) -> None:
    """A sharp model retrained after drift flips, confidently, the 19% of requests the stale champion gets wrong:
    its p99 gap is ~1 and that tail is its gain (passed). The mirror image, confidently flipping 5% of requests
    the champion gets right, has the same gap tail and fails on it (seed 003's catastrophic disagreement)."""
    rng = np.random.default_rng(4)
    n = 3000
    truth = rng.integers(0, 2, n)
    flipped = rng.random(n) < (0.19 if right_in_the_tail else 0.05)
    served = np.where(flipped, 1 - truth, truth) if right_in_the_tail else truth.copy()
    shadow = truth.copy() if right_in_the_tail else np.where(flipped, 1 - truth, truth)
    p_served = np.where(served == 1, 0.97, 0.03)
    p_shadow = np.where(shadow == 1, 0.99, 0.01)
    key = np.vectorize(str, otypes=[object])
    rows = ShadowRows(labels=key(truth), served=key(served), shadow=key(shadow), failed=np.zeros(n, dtype=bool),
                      served_proba=p_served, shadow_proba=p_shadow)
    config = RolloutConfig(shadow_max_ratio=2.0)  # the error ratio alone would pass both
    verdict = shadow_verdict(rows, config, task="classification", positive_class=1, duration_s=2 * DAY)
    tail = _checks(verdict)["gap_tail"]
    past = np.abs(p_shadow - p_served) > 0.9
    assert tail.observed == pytest.approx(np.percentile(np.abs(p_shadow - p_served), 99))
    assert (float((shadow[past] != truth[past]).mean()) <= float((served[past] != truth[past]).mean())) == passes
    assert tail.passed is passes, tail.sentence
    assert f"on the {int(past.sum()):,} labelled requests past it" in tail.sentence


@pytest.mark.parametrize(("right_in_the_tail", "passes"), [(True, True), (False, False)])
def test_a_3_class_tail_is_bounded_by_the_class_probability_distance(right_in_the_tail: bool, passes: bool) -> None:
    """A 3-class model (no positive class): its 0/1 errors judge the mean, and the total variation distance between
    the two sides' class probabilities bounds the tail; a confident flip the champion gets wrong passes, one it
    gets right fails. The distances are computed here with numpy."""
    from feedback.rollout.shadow_gate import probability_gap

    rng = np.random.default_rng(5)
    n, classes = 3000, np.array(["bike", "bus", "car"])
    truth = rng.integers(0, 3, n)
    flipped = rng.random(n) < (0.19 if right_in_the_tail else 0.05)
    other = (truth + rng.integers(1, 3, n)) % 3
    served = np.where(flipped, other, truth) if right_in_the_tail else truth.copy()
    shadow = truth.copy() if right_in_the_tail else np.where(flipped, other, truth)

    def sure(k: np.ndarray, p: float) -> np.ndarray:
        return np.where(np.eye(3, dtype=bool)[k], p, (1 - p) / 2)

    p_served, p_shadow = sure(served, 0.96), sure(shadow, 0.98)
    tv = 0.5 * np.abs(p_served - p_shadow).sum(axis=1)
    gap = np.array([probability_gap(dict(zip(classes, a, strict=True)), dict(zip(classes, b, strict=True)))
                    for a, b in zip(p_served, p_shadow, strict=True)])
    np.testing.assert_allclose(gap, tv, atol=1e-12)
    rows = ShadowRows(labels=classes[truth], served=classes[served], shadow=classes[shadow],
                      failed=np.zeros(n, dtype=bool), proba_gap=gap)
    verdict = shadow_verdict(rows, RolloutConfig(shadow_max_ratio=2.0), task="classification", duration_s=2 * DAY)
    tail = _checks(verdict)["gap_tail"]
    assert tail.observed == pytest.approx(np.percentile(tv, 99))
    assert tail.passed is passes, tail.sentence
    assert "class-probability distance (total variation)" in tail.sentence
    assert verdict.figures["champion_error"] == pytest.approx(np.mean(served != truth))


def test_a_3_class_challenger_much_worse_than_the_champion_fails_its_shadow() -> None:
    """Wrong on 45% of 1,500 labelled 3-class requests where the champion is wrong on 20%: the error ratio fails."""
    rng = np.random.default_rng(6)
    n, classes = 1500, np.array(["bike", "bus", "car"])
    truth = rng.integers(0, 3, n)
    other = (truth + rng.integers(1, 3, n)) % 3
    served = np.where(rng.random(n) < 0.2, other, truth)
    shadow = np.where(rng.random(n) < 0.45, other, truth)
    v = shadow_verdict(ShadowRows(labels=classes[truth], served=classes[served], shadow=classes[shadow],
                                  failed=np.zeros(n, dtype=bool)), CONFIG, task="classification", duration_s=2 * DAY)
    assert v.status == "failed" and _checks(v)["error_ratio"].passed is False
    assert v.figures["challenger_error"] == pytest.approx(np.mean(shadow != truth))


URGENT = "champion v1 degraded since 2026-03-01 00:00 UTC (performance decision)"


@pytest.mark.parametrize(("urgent", "n", "shadow_fixes", "failures", "status"), [
    (URGENT, 400, 0.60, 0, "passed"),     # degraded champion, a clear gain on 400 labelled rows: passes early
    (None, 400, 0.60, 0, "waiting"),      # a healthy champion: the cautious gate (1,000 labels, a day)
    (URGENT, 150, 0.60, 0, "waiting"),    # below the 200-label floor
    (URGENT, 400, 0.02, 0, "waiting"),    # no significant gain on the same requests
    (URGENT, 400, 0.60, 7, "waiting"),    # 1.75% failed: above the 1% limit, no early pass (not yet significant)
    (URGENT, 400, 0.60, 12, "failed"),    # 3% failed, significantly: failed at once, as ever
])
def test_a_degraded_champion_lets_a_conclusive_shadow_pass_early(urgent: str | None, n: int, shadow_fixes: float,
                                                                 failures: int, status: str) -> None:
    """With the champion confirmed degraded, the shadow passes before its 1,000 labels and its day once the paired
    test (each user's rows averaged, scipy's paired t-test) shows the challenger better at p < 0.01 on at least
    200 labelled rows, and every judged check passes; otherwise it waits as ever."""
    from scipy.stats import ttest_rel
    rows = _classification(n, served_flip=0.30, shadow_fixes=shadow_fixes, failures=failures, seed=4)
    units = np.array([f"u{i % 150}" for i in range(n)], dtype=object)
    rows = ShadowRows(labels=rows.labels, served=rows.served, shadow=rows.shadow, failed=rows.failed,
                      served_proba=rows.served_proba, shadow_proba=rows.shadow_proba, units=units)
    v = shadow_verdict(rows, CONFIG, task="classification", positive_class=1, duration_s=3_600, urgent=urgent)
    assert v.status == status, v.sentence
    if urgent is not None and n >= 200:
        ok = ~rows.failed
        b = np.where(ok, rows.shadow != rows.labels, True).astype(float)
        a = (rows.served != rows.labels).astype(float)
        frame = {u: ([], []) for u in units}
        for u, x, y in zip(units, b, a, strict=True):
            frame[u][0].append(x)
            frame[u][1].append(y)
        per_b, per_a = zip(*((np.mean(x), np.mean(y)) for x, y in frame.values()), strict=True)
        assert v.figures["gain_p"] == pytest.approx(ttest_rel(per_b, per_a, alternative="less").pvalue)
    if status == "passed":
        assert v.sentence.startswith(f"passed early: {URGENT}; the challenger's error is below the champion's"), \
            v.sentence
