"""The ramp's rules, pure functions over each arm's figures: when to roll back, when a step may advance, when the
challenger is promoted, and whether a ramp is worth starting.

Each arm is judged on its own traffic (the requests the router sent to that version since the ramp began): one
monitor over both arms would hide a 5% canary failing every request inside a 5% overall failure rate.

Rollback (any step, the hold period included), each a :class:`Finding` with its sentence:

- failures: the challenger's failure rate above ``failure_ratio`` x the champion's + ``failure_margin``, or above
  ``failure_max`` outright, and significantly so (one-sided exact binomial test at ``FAILURE_ALPHA``: a few
  unlucky requests at the first look do not end a ramp; 30 of 30 failed requests do);
- latency: the challenger's p95 above ``latency_p95_ratio`` x the champion's (and ``latency_margin_ms`` above
  it), or its p99 above ``latency_p99_max_ms``, once each arm has ``min_latency_samples`` timed requests;
- error: its labelled error above ``error_ratio`` x the champion's, with at least ``min_labelled`` labelled
  requests in each arm, and significantly so on the users' mean errors (one-sided at ``FAILURE_ALPHA``: 50
  labelled requests an arm are a noisy figure, and a rollback latches).

Promotion: the challenger's mean error per routing key (a user's requests are correlated, so a user is one unit)
must be at most ``promote_ratio`` x the champion's, significantly so by the always-valid mSPRT p-value
(feedback/rollout/sequential.py), and no declared segment may be significantly worse. A test significant the other
way (the challenger's error above ``promote_ratio`` x the champion's) keeps the champion: the gain is not worth a
change; so does a declared segment significantly worse (found by bench/rollout_safety.py: blocking the promotion
alone left a model 15 points worse on a fifth of the users serving half of them until the ramp's 4 weeks ran out).
The users' errors are CUPED-adjusted with the champion's error on the same requests (:func:`cuped_units`): the
two versions err on mostly the same requests, and the variance they share is taken out of the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri
from scipy.stats import beta, binom, binomtest, ttest_1samp

from feedback.config import RolloutConfig
from feedback.rollout.sequential import SequentialTest, required_per_arm

#: the level at which a failure rate counts as above its limit
FAILURE_ALPHA = 0.01
#: the level at which a challenger's failure rate counts as shown low, before it serves everyone: the bound is
#: looked at again and again, so it is stricter (a challenger failing at three times the limit passed 3.9% of 2,000
#: simulated ramps looked at every 50 requests at 0.01)
SHOWN_LOW_ALPHA = 0.001


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitStats:
    """Per-unit (routing key) mean errors of one arm: how many units, the mean and the variance of their means."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    #: the variance before the CUPED adjustment (:func:`cuped_units`); None when the figures are not adjusted
    raw_var: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmStats:
    """What one arm served since the ramp began: requests, failures, latency, labelled errors."""

    version: str
    requests: int = 0
    failures: int = 0
    latency_n: int = 0
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    labelled: int = 0
    error: float | None = None  # mean error over labelled requests (misclassification rate, MAE)
    units: UnitStats = field(default_factory=UnitStats)
    segments: Mapping[str, UnitStats] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as evidence (the users' only when there are any: the whole ramp's have none)."""
        doc = {"version": self.version, "requests": self.requests, "failures": self.failures,
               "latency_n": self.latency_n, "latency_p95_ms": self.latency_p95_ms,
               "latency_p99_ms": self.latency_p99_ms, "labelled": self.labelled, "error": self.error}
        if self.units.n:
            doc |= {"units": self.units.n, "unit_mean": self.units.mean, "unit_var": self.units.var}
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One rule's verdict: what was observed against what limit, and the sentence that says so."""

    cause: str
    observed: float
    threshold: float
    sentence: str


def rollback_findings(challenger: ArmStats, champion: ArmStats, config: RolloutConfig,
                      strata: Sequence[tuple[ArmStats, ArmStats]] = ()) -> list[Finding]:
    """Every rollback rule the challenger breaks (empty: none). With ``strata`` (the arms per step of the ramp),
    the error rule compares the arms within each step (:func:`standardized_error`), not pooled over a ramp whose
    challenger share grows with time.

    >>> cfg = RolloutConfig()
    >>> champ = ArmStats(version="v1", requests=1000, failures=0)
    >>> canary = ArmStats(version="v2", requests=30, failures=30)  # a 5% canary failing every request
    >>> [f.sentence for f in rollback_findings(canary, champ, cfg)]
    ['v2 failed 30 of 30 requests (100.0%) > 1.0% (2 x the champion v1 0.0% + 1.0%, p = 1e-60): roll back']
    """
    by_step = standardized_error(strata) if strata else None
    units = combine_strata([(c.units, a.units) for c, a in strata] if strata else [(challenger.units, champion.units)],
                           config.error_ratio)
    error = _error(*(by_step or (challenger, champion)), config, units)
    return [f for f in (_failures(challenger, champion, config), *_latency(challenger, champion, config), error)
            if f is not None]


def _failures(challenger: ArmStats, champion: ArmStats, config: RolloutConfig) -> Finding | None:
    if challenger.requests < config.min_requests:
        return None
    relative = config.failure_ratio * champion.failure_rate + config.failure_margin
    limit, why = ((relative, f"{config.failure_ratio:g} x the champion {champion.version} "
                             f"{_pct(champion.failure_rate)} + {_pct(config.failure_margin)}")
                  if relative < config.failure_max else (config.failure_max, "the absolute limit"))
    if challenger.failure_rate <= limit:
        return None
    p = binomtest(challenger.failures, challenger.requests, limit, alternative="greater").pvalue
    if p >= FAILURE_ALPHA:
        return None
    return Finding(cause="failures", observed=challenger.failure_rate, threshold=limit, sentence=(
        f"{challenger.version} failed {challenger.failures:,} of {challenger.requests:,} requests "
        f"({_pct(challenger.failure_rate)}) > {_pct(limit)} ({why}, p = {p:.2g}): roll back"))


def _latency(challenger: ArmStats, champion: ArmStats, config: RolloutConfig) -> list[Finding]:
    found = []
    if challenger.latency_n < config.min_latency_samples or challenger.latency_p95_ms is None:
        return found
    if (champion.latency_n >= config.min_latency_samples and champion.latency_p95_ms is not None
            and challenger.latency_p95_ms > config.latency_p95_ratio * champion.latency_p95_ms
            and challenger.latency_p95_ms > champion.latency_p95_ms + config.latency_margin_ms):
        limit = max(config.latency_p95_ratio * champion.latency_p95_ms,
                    champion.latency_p95_ms + config.latency_margin_ms)
        found.append(Finding(cause="latency_p95", observed=challenger.latency_p95_ms, threshold=limit, sentence=(
            f"{challenger.version} latency p95 {challenger.latency_p95_ms:.1f} ms > {config.latency_p95_ratio:g} x "
            f"the champion's {champion.latency_p95_ms:.1f} ms (and {config.latency_margin_ms:g} ms above it) on "
            f"{challenger.latency_n:,} requests: roll back")))
    if challenger.latency_p99_ms is not None and challenger.latency_p99_ms > config.latency_p99_max_ms:
        found.append(Finding(cause="latency_p99", observed=challenger.latency_p99_ms,
                             threshold=config.latency_p99_max_ms, sentence=(
            f"{challenger.version} latency p99 {challenger.latency_p99_ms:.1f} ms > the ceiling "
            f"{config.latency_p99_max_ms:g} ms on {challenger.latency_n:,} requests: roll back")))
    return found


def _error(challenger: ArmStats, champion: ArmStats, config: RolloutConfig, units: Combined | None) -> Finding | None:
    """The error rule: above ``error_ratio`` x the champion's, and significantly so on the users' mean errors
    (``units``: ``mean_B - error_ratio x mean_A`` combined over the steps; one-sided z-test at ``FAILURE_ALPHA``).
    Without 20 users an arm to test on, the ratio alone decides, as a safety rule should."""
    if (min(challenger.labelled, champion.labelled) < config.min_labelled or challenger.error is None
            or champion.error is None):
        return None
    limit = config.error_ratio * champion.error
    if challenger.error <= limit:
        return None
    significance = ""
    if units is not None:
        p = float(ndtr(-units.d / math.sqrt(units.v))) if units.v > 0 else (0.0 if units.d > 0 else 1.0)
        if p >= FAILURE_ALPHA:
            return None
        significance = f", p = {p:.2g} on {units.n_b:,} and {units.n_a:,} users"
    return Finding(cause="error", observed=challenger.error, threshold=limit, sentence=(
        f"{challenger.version} error {challenger.error:.4g} > {config.error_ratio:g} x the champion "
        f"{champion.version} {champion.error:.4g} = {limit:.4g} on {challenger.labelled:,} and "
        f"{champion.labelled:,} labelled requests{significance}: roll back"))


@dataclass(slots=True, kw_only=True)
class PromotionTest:
    """The promotion test's state across looks: the overall mSPRT and, per declared segment value, two: harm
    (the challenger's error significantly above the champion's) and non-inferiority (significantly below
    ``segment_ratio`` x the champion's).

    A promotion needs both the overall gain and, for every segment value holding at least ``segment_min_share`` of
    the users, its non-inferiority shown: a challenger much better overall is significant long before a fifth of
    the users can show it 15 points worse, and "not significantly worse" then promoted it (issue 16). A smaller
    value is reported, not required (like the offline gate's small segments)."""

    tau2: float
    ratio: float
    alpha: float
    segment_ratio: float = 1.10
    segment_min_share: float = 0.05
    overall: SequentialTest = field(init=False)
    segments: dict[str, SequentialTest] = field(default_factory=dict)
    within: dict[str, SequentialTest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.overall = SequentialTest(tau2=self.tau2, alpha=self.alpha, ratio=self.ratio)

    def look(self, challenger: ArmStats, champion: ArmStats) -> Decision:
        """Update with both arms' figures over one stretch of time; the decision so far."""
        return self.look_strata([(challenger, champion)])

    def look_strata(self, strata: Sequence[tuple[ArmStats, ArmStats]]) -> Decision:
        """Update with (challenger, champion) figures per step of the ramp; the decision so far.

        Each step is compared within itself, and the steps' differences are combined, weighted by their users: the
        challenger's share grows with time, so over the whole ramp its requests are more recent than the
        champion's, and a pooled comparison would measure the drift of the world as much as the models (found by
        the staged loop benchmark: a ramp level at every step was rolled back on the pooled figures)."""
        combined = combine_strata([(c.units, a.units) for c, a in strata], self.ratio)
        p = self.overall.p_value if combined is None else self.overall.look_difference(combined.d, combined.v)
        self.overall.looks += 1
        worse, unshown = [], []
        names = sorted({k for c, a in strata for k in set(c.segments) & set(a.segments)})
        users = sum(c.units.n + a.units.n for c, a in strata)
        for name in names:
            pairs = [(c.segments[name], a.segments[name]) for c, a in strata
                     if name in c.segments and name in a.segments]
            test = self.segments.setdefault(name, SequentialTest(tau2=self.tau2, alpha=self.alpha))
            within = self.within.setdefault(name, SequentialTest(tau2=self.tau2, alpha=self.alpha,
                                                                 ratio=self.segment_ratio))
            seg, close = combine_strata(pairs, 1.0), combine_strata(pairs, self.segment_ratio)
            test.looks += 1
            within.looks += 1
            if seg is not None and close is not None:
                test.look_difference(seg.d, seg.v)
                within.look_difference(close.d, close.v)
            if test.significant and test.difference > 0:
                worse.append(f"{name} (p = {test.p_value:.2g})")
            elif (not (within.significant and within.difference < 0)
                  and sum(b.n + a.n for b, a in pairs) >= self.segment_min_share * users):
                unshown.append(f"{name} (p = {within.p_value:.2g})")
        if combined is None:
            return Decision(kind="continue", p_value=p, sentence="fewer than 2 users an arm at every step: not yet")
        figures = (f"challenger {combined.mean_b:.4g} against {self.ratio:g} x champion {combined.mean_a:.4g} = "
                   f"{self.ratio * combined.mean_a:.4g} per user ({combined.n_b:,} and {combined.n_a:,} users"
                   f"{f', {combined.strata} steps' if combined.strata > 1 else ''}"
                   f"{_adjusted(combined)}), mSPRT p = {p:.3g}")
        if self.overall.significant and self.overall.difference > 0:
            return Decision(kind="keep", p_value=p, sentence=(
                f"{figures}: the challenger's error is significantly above {self.ratio:g} x the champion's, "
                "no practical gain: keep the champion"))
        if worse:  # harm shown, not merely the gain unshown: half the users should not keep it for weeks
            return Decision(kind="keep", p_value=p, sentence=(
                f"{figures}; significantly worse in {', '.join(worse)}: keep the champion"))
        if self.overall.significant and unshown:
            return Decision(kind="continue", p_value=p, sentence=(
                f"{figures}; not yet shown within {self.segment_ratio:g} x the champion in {', '.join(unshown)}: "
                "not promoted"))
        if self.overall.significant:
            return Decision(kind="promote", p_value=p, sentence=f"{figures} <= alpha {self.alpha:g}: promote")
        return Decision(kind="continue", p_value=p, sentence=f"{figures} > alpha {self.alpha:g}: not yet")

    def to_json(self) -> dict[str, Any]:
        return {"tau2": self.tau2, "ratio": self.ratio, "alpha": self.alpha, "segment_ratio": self.segment_ratio,
                "segment_min_share": self.segment_min_share,
                "overall": [self.overall.p_value, self.overall.looks, self.overall.difference],
                "segments": {k: [t.p_value, t.looks, t.difference] for k, t in self.segments.items()},
                "within": {k: [t.p_value, t.looks, t.difference] for k, t in self.within.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PromotionTest:
        test = cls(tau2=doc["tau2"], ratio=doc["ratio"], alpha=doc["alpha"],
                   segment_ratio=doc.get("segment_ratio", 1.10), segment_min_share=doc.get("segment_min_share", 0.05))
        test.overall.p_value, test.overall.looks, test.overall.difference = doc["overall"]
        for name, (p, looks, d) in doc.get("segments", {}).items():
            test.segments[name] = SequentialTest(tau2=test.tau2, alpha=test.alpha, p_value=p, looks=looks,
                                                 difference=d)
        for name, (p, looks, d) in doc.get("within", {}).items():
            test.within[name] = SequentialTest(tau2=test.tau2, alpha=test.alpha, ratio=test.segment_ratio,
                                               p_value=p, looks=looks, difference=d)
        return test


@dataclass(frozen=True, slots=True, kw_only=True)
class Combined:
    """Steps' comparisons combined: the weighted ``mean_B - ratio x mean_A`` and its variance, the weighted means."""

    d: float
    v: float
    mean_b: float
    mean_a: float
    n_b: int
    n_a: int
    strata: int
    adjusted: int = 0  # steps whose users' errors are CUPED-adjusted (:func:`cuped_units`)


#: a step's comparison counts once each arm has this many users: below, the normal approximation the sequential test
#: rests on fails (2 users of a segment in a 5% arm, both without an error, read as "significantly better" at
#: p = 0.0002, and the always-valid p-value kept it for the rest of the ramp)
MIN_STRATUM_UNITS = 20


def combine_strata(strata: Sequence[tuple[UnitStats, UnitStats]], ratio: float) -> Combined | None:
    """Per stratum (challenger, champion) users; each stratum's ``mean_B - ratio x mean_A`` with its variance
    ``v = s**2 (1/n_B + ratio**2/n_A)``, ``s**2`` the larger of the two arms' variances (a small arm's variance is
    often near 0 by chance), combined with inverse-variance weights (``w ~ 1/v``, the least variance an unbiased
    combination can have; combined variance ``sum w**2 v``); strata with fewer than ``MIN_STRATUM_UNITS`` users an
    arm are left out (None when none is left). One stratum is the plain two-sample comparison.

    Weighted by their users instead (``n_B + n_A``), a ramp's early steps, 5% of 2,000 users with 100 in the
    challenger's arm, keep their noise in the combined variance for good, whatever the 50% step gathers: a
    challenger 15 points worse on one segment stayed at p = 0.24-0.28 and was promoted (issue 16). Weighted by
    ``n_B n_A / (n_B + n_A)`` they still do when users return: the 50% step's per-user means sharpen look after
    look while its users do not grow.

    >>> c = combine_strata([(UnitStats(n=100, mean=1.0, var=1.0), UnitStats(n=100, mean=2.0, var=1.0)),
    ...                     (UnitStats(n=300, mean=3.0, var=1.0), UnitStats(n=300, mean=3.0, var=1.0))], 1.0)
    >>> c.d, round(c.v, 6), c.mean_b, c.mean_a
    (-0.25, 0.005, 2.5, 2.75)
    >>> early = (UnitStats(n=20, mean=0.5, var=1.0), UnitStats(n=2000, mean=0.0, var=1.0))  # a 5% canary arm
    >>> late = (UnitStats(n=1000, mean=0.5, var=1.0), UnitStats(n=1000, mean=0.0, var=1.0))  # a 50% step
    >>> round(math.sqrt(combine_strata([early, late], 1.0).v), 4)  # the 50% step alone: 0.0447 (by users: 0.1151)
    0.0439
    """
    kept = [(b, a) for b, a in strata if b.n >= MIN_STRATUM_UNITS and a.n >= MIN_STRATUM_UNITS]
    if not kept:
        return None
    # each step's variance; a step without any (every user's mean alike) counts as the most precise one seen
    own = [max(b.var, a.var) * (1 / b.n + ratio * ratio / a.n) for b, a in kept]
    floor = min([v for v in own if v > 0], default=1.0)
    info = [1 / (v if v > 0 else floor) for v in own]
    w = [i / sum(info) for i in info]
    return Combined(
        d=sum(wi * (b.mean - ratio * a.mean) for wi, (b, a) in zip(w, kept, strict=True)),
        v=sum(wi * wi * v for wi, v in zip(w, own, strict=True)),
        mean_b=sum(wi * b.mean for wi, (b, _) in zip(w, kept, strict=True)),
        mean_a=sum(wi * a.mean for wi, (_, a) in zip(w, kept, strict=True)),
        n_b=sum(b.n for b, _ in kept), n_a=sum(a.n for _, a in kept), strata=len(kept),
        adjusted=sum(b.raw_var is not None for b, _ in kept))


#: a step's CUPED adjustment is left out when the champion's error on the requests it did not serve differs from its
#: error on those it did at this level (two-sided). The arms are randomised, so the two agree unless serving changed
#: the outcomes (a feedback loop): the covariate would then carry the treatment's effect and bias the estimate.
CUPED_BALANCE_ALPHA = 0.001
#: the adjusted variance is never taken below this share of the larger arm's variance before (at most a tenfold
#: reduction): a step's few users can share no request the two versions answer differently, by chance, and the
#: plug-in variance of 0 then read as certainty (bench/loop_quality.py S1: 52 challenger users, none with a
#: champion error, ended a good ramp "no practical gain" at p = 1e-305)
CUPED_MIN_VARIANCE_SHARE = 0.1


def cuped_units(challenger: pd.DataFrame, champion: pd.DataFrame) -> tuple[UnitStats, UnitStats] | None:
    """Both arms' per-user mean errors adjusted with the champion's own error on the same requests as covariate
    (CUPED: Deng, Xu, Kohavi and Walker, "Improving the sensitivity of online controlled experiments by utilizing
    pre-experiment data", 2013); None when it cannot be applied (fewer than ``MIN_STRATUM_UNITS`` users an arm, no
    spread in either arm's covariate, or the arms' covariates out of balance at ``CUPED_BALANCE_ALPHA``).

    Each frame holds one row per labelled request: ``unit`` (the user), ``error`` (the served version's) and
    ``covariate`` (the champion's error on that request: its served error on its own arm, its shadow-scored one
    on the challenger's). Per user, ``y`` and ``x`` are the means; ``theta`` is the within-arm regression slope
    of ``y`` on ``x``, and each user's ``y - theta (x - mean x)`` (mean over both arms) replaces ``y``. The
    adjusted means estimate the same errors; their difference keeps its expectation and loses the variance the
    two versions share (hard requests are hard for both), down to ``CUPED_MIN_VARIANCE_SHARE`` of the larger arm's
    variance before. ``raw_var`` keeps each arm's variance before.

    >>> rng = np.random.default_rng(1)
    >>> x = rng.binomial(1, 0.3, 400).astype(float)  # the champion's errors
    >>> y = np.where(rng.random(400) < 0.9, x, 1 - x)  # the challenger's: the same on 90% of requests
    >>> b = pd.DataFrame({"unit": range(200), "error": y[:200], "covariate": x[:200]})
    >>> a = pd.DataFrame({"unit": range(200, 400), "error": x[200:], "covariate": x[200:]})
    >>> ub, ua = cuped_units(b, a)
    >>> round(ub.raw_var, 3), round(ub.var, 3)  # the challenger's users' variance, before and after
    (0.213, 0.099)
    """
    return cuped_sums(*(UserSums.of(*_user_means(frame)) for frame in (challenger, champion)))


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSums:
    """One arm's users' mean errors ``y`` and mean covariates ``x`` as sums: what CUPED needs, kept as rows land
    (feedback/rollout/arms.py) or summed from the users' means."""

    n: int = 0
    sy: float = 0.0
    sx: float = 0.0
    syy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    @classmethod
    def of(cls, y: np.ndarray, x: np.ndarray) -> UserSums:
        return cls(n=len(y), sy=float(y.sum()), sx=float(x.sum()), syy=float((y * y).sum()),
                   sxx=float((x * x).sum()), sxy=float((x * y).sum()))

    def centred(self) -> tuple[float, float, float]:
        """The centred sums of squares and cross products: ``S_yy``, ``S_xx``, ``S_xy`` (never below 0 by rounding)."""
        n = self.n
        return (max(self.syy - self.sy * self.sy / n, 0.0), max(self.sxx - self.sx * self.sx / n, 0.0),
                self.sxy - self.sx * self.sy / n)


#: a covariate's spread counts as none below this share of its scale (sums kept as rows land carry rounding)
_NO_SPREAD = 1e-12


def cuped_sums(b: UserSums, a: UserSums) -> tuple[UnitStats, UnitStats] | None:
    """:func:`cuped_units` over the arms' sums (challenger ``b``, champion ``a``)."""
    if min(b.n, a.n) < MIN_STRATUM_UNITS:
        return None
    centred = [s.centred() for s in (b, a)]
    if not all(cxx > _NO_SPREAD * max(1.0, s.sxx) for s, (_, cxx, _) in zip((b, a), centred, strict=True)):
        return None
    theta = sum(cxy for _, _, cxy in centred) / sum(cxx for _, cxx, _ in centred)
    (_, cxx_b, _), (_, cxx_a, _) = centred
    se = math.sqrt(cxx_b / (b.n - 1) / b.n + cxx_a / (a.n - 1) / a.n)
    if se > 0 and abs(b.sx / b.n - a.sx / a.n) / se > -ndtri(CUPED_BALANCE_ALPHA / 2):
        return None
    x_bar = (b.sx + a.sx) / (b.n + a.n)
    var_y = [cyy / (s.n - 1) for s, (cyy, _, _) in zip((b, a), centred, strict=True)]
    floor = CUPED_MIN_VARIANCE_SHARE * max(var_y)
    out = []
    for s, (cyy, cxx, cxy), vy in zip((b, a), centred, var_y, strict=True):
        adjusted_var = max((cyy - 2 * theta * cxy + theta * theta * cxx) / (s.n - 1), 0.0)
        out.append(UnitStats(n=s.n, mean=s.sy / s.n - theta * (s.sx / s.n - x_bar), var=max(adjusted_var, floor),
                             raw_var=vy))
    return out[0], out[1]


def with_adjusted(stats: dict[str, ArmStats], challenger: str, champion: str,
                  adjusted: Mapping[str, tuple[UnitStats, UnitStats]]) -> None:
    """Put CUPED-adjusted users' figures (challenger's, champion's) into both arms' figures: part '' the overall
    ones, ``attribute=value`` a segment value's."""
    segments_b, segments_a = dict(stats[challenger].segments), dict(stats[champion].segments)
    for part, (b, a) in adjusted.items():
        if part:
            segments_b[part], segments_a[part] = b, a
    overall = adjusted.get("")
    stats[challenger] = replace(stats[challenger], segments=segments_b,
                                **({"units": overall[0]} if overall else {}))
    stats[champion] = replace(stats[champion], segments=segments_a, **({"units": overall[1]} if overall else {}))


def _user_means(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each user's mean error and mean covariate (users in order of first appearance; NaN rows left out)."""
    kept = frame[frame["error"].notna() & frame["covariate"].notna()]
    codes, uniques = pd.factorize(kept["unit"])
    count = np.bincount(codes, minlength=len(uniques))
    return (np.bincount(codes, kept["error"].to_numpy(float), len(uniques)) / count,
            np.bincount(codes, kept["covariate"].to_numpy(float), len(uniques)) / count)


def _adjusted(c: Combined) -> str:
    if not c.adjusted:
        return ""
    steps = "" if c.strata == 1 else f" in {c.adjusted} of {c.strata} steps"
    return f"; CUPED on the champion's error on the same requests{steps}"


def standardized_error(strata: Sequence[tuple[ArmStats, ArmStats]]) -> tuple[ArmStats, ArmStats] | None:
    """Both arms' labelled errors over the steps where both have labels, the champion's re-weighted to the
    challenger's labelled requests per step (same time mix); None when no step has labels in both arms.

    >>> a, b = ArmStats(version="v1", labelled=900, error=0.2), ArmStats(version="v2", labelled=100, error=0.3)
    >>> c, d = ArmStats(version="v1", labelled=100, error=0.4), ArmStats(version="v2", labelled=900, error=0.4)
    >>> ch, champ = standardized_error([(b, a), (d, c)])
    >>> round(ch.error, 3), round(champ.error, 3), ch.labelled, champ.labelled
    (0.39, 0.38, 1000, 1000)
    """
    both = [(c, a) for c, a in strata if c.labelled and a.labelled and c.error is not None and a.error is not None]
    if not both:
        return None
    n = sum(c.labelled for c, _ in both)
    challenger_error = sum(c.labelled * c.error for c, _ in both) / n  # type: ignore[operator]
    champion_error = sum(c.labelled * a.error for c, a in both) / n  # type: ignore[operator]
    challenger, champion = both[0]
    return (replace(challenger, labelled=n, error=challenger_error),
            replace(champion, labelled=sum(a.labelled for _, a in both), error=champion_error))


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The promotion test's answer at one look: ``promote``, ``continue`` or ``keep`` (the champion)."""

    kind: str
    p_value: float
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Latch:
    """A latched rollback: the version held back, why, its episode (the change point of the trigger it answered;
    None without one) and whether the controller set it (a rule broken) or a person did."""

    version: str
    reason: str
    change_point: datetime | None = None
    automatic: bool = False


def latch_holds(latch: Latch | None, candidate: str, candidate_change: datetime | None, scope: str) -> str | None:
    """Why a candidate that passed its shadow may not ramp because of a latched rollback (None: it may).

    An automatic rollback holds its own episode: the rolled-back version and any candidate of the same change (its
    refits, a refresh of it), and a candidate without a change point (which episode it answers is unknown). A
    candidate of a later episode (a change point after the latched one's) may shadow and ramp without a person:
    the world changed again, and holding every later candidate until someone clears the latch left a degraded
    champion serving (issue 16). A person's rollback, or ``scope = "model"``, holds every candidate.

    >>> from datetime import UTC
    >>> e1, e2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC)
    >>> auto = Latch(version="v2", reason="error 0.41 > 1.15 x 0.30", change_point=e1, automatic=True)
    >>> latch_holds(auto, "v3", e2, "episode") is None
    True
    >>> latch_holds(auto, "v3", e1, "episode")
    'the rollback of v2 is latched (error 0.41 > 1.15 x 0.30) and v3 answers the same change (2026-03-01 00:00 UTC)'
    """
    if latch is None:
        return None
    held = f"the rollback of {latch.version} is latched ({latch.reason})"
    if not latch.automatic:
        return f"{held} by a person"
    if scope == "model":
        return f"{held}; rollout.latch = \"model\" holds every candidate"
    if candidate_change is None or latch.change_point is None:
        return f"{held} and {candidate} answers no later change"
    if candidate_change <= latch.change_point:
        return f"{held} and {candidate} answers the same change ({latch.change_point:%Y-%m-%d %H:%M} UTC)"
    return None


def champion_degraded(champion: str, kind: str, evidence: Mapping[str, Any], change: datetime) -> str:
    """The sentence of a champion confirmed degraded, from its fired decision's evidence: the newest judged
    window's level against the baseline.

    >>> from datetime import UTC
    >>> ev = {"metric": "accuracy", "baseline": 0.83, "windows": [{"performance": {"value": 0.74}},
    ...                                                             {"performance": None}]}
    >>> champion_degraded("v1", "performance", ev, datetime(2026, 3, 1, 14, tzinfo=UTC))
    'champion v1 degraded since 2026-03-01 14:00 UTC (performance decision): accuracy 0.74 against its baseline 0.83'
    """
    since = f"champion {champion} degraded since {change:%Y-%m-%d %H:%M} UTC ({kind} decision)"
    levels = [w["performance"]["value"] for w in evidence.get("windows", ())
              if isinstance(w, Mapping) and isinstance(w.get("performance"), Mapping)]
    baseline = evidence.get("baseline")
    if not levels or not isinstance(baseline, int | float):
        return since
    return f"{since}: {evidence.get('metric', 'its metric')} {levels[-1]:.4g} against its baseline {baseline:.4g}"


def first_step(steps: Sequence[float], degraded: str | None, shadow_p: float | None, alpha: float
               ) -> tuple[int, str]:
    """The ramp's first step (an index into ``steps``) and, when it is not the first, why.

    Waiting has a cost when the champion is confirmed degraded (a fired drift or performance decision of the
    episode the candidate answers): if its shadow also showed the challenger significantly better on the same
    requests (one-sided paired p below ``alpha``), the ramp starts at the largest share below 50%, with every
    rollback rule active there; a challenger never serves most of the traffic before a canary share. A healthy
    champion, or a shadow that showed no significant gain, keeps the cautious path from the first share.

    >>> first_step((0.05, 0.10, 0.25, 0.50, 1.0), "champion v1 degraded", 0.001, 0.05)
    (2, 'champion v1 degraded; the shadow showed the challenger better (p = 0.001): starting the ramp at 25%')
    >>> first_step((0.05, 0.10, 0.25, 0.50, 1.0), None, 0.001, 0.05)
    (0, '')
    """
    if degraded is None:
        return 0, ""
    if shadow_p is None or not shadow_p < alpha:
        shown = "too few users" if shadow_p is None else f"p = {shadow_p:.2g}"
        return 0, f"{degraded}, but the shadow did not show the challenger significantly better ({shown})"
    below = [i for i, share in enumerate(steps) if share < 0.5]
    if not below or below[-1] == 0:
        return 0, f"{degraded}; the shadow showed the challenger better (p = {shadow_p:.2g})"
    i = below[-1]
    return i, (f"{degraded}; the shadow showed the challenger better (p = {shadow_p:.2g}): starting the ramp at "
               f"{steps[i]:.0%}")


def users_within(users: int, once: int, twice: int, seen_s: float, horizon_s: float) -> float:
    """The distinct users to expect over ``horizon_s``, having seen ``users`` in ``seen_s`` (``once`` of them with
    one request, ``twice`` with two): the rate so far carried over the horizon, but never more than the population
    the repeat visits show (Chao1's bias-corrected estimate, ``users + once (once - 1) / (2 (twice + 1))``).
    Returning users come back rather than adding to the count: scaled linearly, 2,000 returning users over a day
    counted as 18,640 in 28 days (issue 16).

    >>> users_within(2_000, 0, 0, 86_400, 28 * 86_400)  # 2,000 users, each seen again and again
    2000.0
    >>> users_within(1_000, 1_000, 0, 86_400, 28 * 86_400)  # every request a new user: the rate holds
    28000.0
    >>> round(users_within(1_000, 500, 500, 86_400, 28 * 86_400))  # half seen twice already
    1249
    """
    if users <= 0 or seen_s <= 0:
        return 0.0
    linear = users * max(1.0, horizon_s / seen_s)
    population = users + once * (once - 1) / (2 * (twice + 1))
    return float(min(linear, population))


def plan_test(champion: UnitStats, expected_ratio: float | None, units_available: float,
              config: RolloutConfig, *, adjusted_var: float | None = None) -> tuple[PromotionTest | None, str]:
    """The promotion test for a ramp about to start, or None with the reason to abandon it.

    ``champion``: the champion's per-user errors before the ramp; ``expected_ratio``: the challenger's error over
    the champion's as the shadow measured it; ``units_available``: the users each arm can expect within the ramp's
    maximum duration. The effect to find is the gain beyond ``promote_ratio`` the shadow measured; a fixed-horizon
    sample size for it (the mSPRT needs somewhat more) above what the ramp can gather means the ramp cannot decide.
    ``adjusted_var``: the per-user variance the CUPED-adjusted test will see (:func:`cuped_units`, measured on the
    shadow's rows); when smaller than the champion's it sizes the sample instead.

    >>> test, why = plan_test(UnitStats(n=5000, mean=0.30, var=0.04), 0.80, 20_000, RolloutConfig())
    >>> why
    'needs about 216 users an arm to find a 0.054 lower error per user (0.27 sd) at 80% power; 20,000 available'
    >>> plan_test(UnitStats(n=5000, mean=0.30, var=0.04), 0.80, 20_000, RolloutConfig(), adjusted_var=0.01)[1][:58]
    'needs about 54 users an arm to find a 0.054 lower error pe'
    >>> plan_test(UnitStats(n=5000, mean=0.30, var=0.04), 0.99, 20_000, RolloutConfig())[1]
    'the shadow measured the challenger at 0.99 x the champion: no gain beyond 0.98 x to find'
    """
    if expected_ratio is None or champion.n < 2 or not champion.mean > 0:
        tau2 = max((0.05 * champion.mean) ** 2, 1e-12)
        return (PromotionTest(tau2=tau2, ratio=config.promote_ratio, alpha=config.alpha,
                              segment_ratio=config.segment_max_ratio),
                "no shadow or champion figures to plan the sample with: the ramp runs to its maximum duration")
    effect = (config.promote_ratio - expected_ratio) * champion.mean
    if effect <= 0:
        return None, (f"the shadow measured the challenger at {expected_ratio:.2f} x the champion: no gain beyond "
                      f"{config.promote_ratio:g} x to find")
    sd = math.sqrt(champion.var) if champion.var > 0 else champion.mean
    adjusted = adjusted_var is not None and 0 < adjusted_var < sd * sd
    if adjusted:
        sd = math.sqrt(adjusted_var)  # type: ignore[arg-type]
    needed = required_per_arm(effect / sd, alpha=config.alpha)
    sentence = (f"needs about {needed:,} users an arm to find a {effect:.2g} lower error per user "
                f"({effect / sd:.2g} sd{' once CUPED-adjusted' if adjusted else ''}) at 80% power; "
                f"{units_available:,.0f} available")
    if needed > units_available:
        return None, f"{sentence}: impractical"
    return (PromotionTest(tau2=effect * effect, ratio=config.promote_ratio, alpha=config.alpha,
                          segment_ratio=config.segment_max_ratio), sentence)


def failure_sample(limit: float, harm: float, *, alpha: float = FAILURE_ALPHA, power: float = 0.8,
                   cap: int = 100_000) -> int:
    """The challenger requests the failure rule needs to find a failure rate of ``harm`` against its ``limit`` with
    ``power`` (one-sided exact binomial test at ``alpha``): the smallest n at which a challenger failing at ``harm``
    is rolled back with that probability. ``cap`` when even that many are not enough.

    >>> failure_sample(0.01, 0.05)  # a champion that never fails: its limit 1%, the absolute ceiling 5%
    157
    >>> failure_sample(0.05, 0.10)
    267
    """
    return _failure_sample(round(limit, 4), round(harm, 4), alpha, power, cap)


@lru_cache(maxsize=256)
def _failure_sample(limit: float, harm: float, alpha: float, power: float, cap: int) -> int:
    if not 0 <= limit < harm <= 1:
        return cap
    low = 1
    while low <= cap:  # in chunks growing tenfold: the answer is most often below a thousand
        n = np.arange(low, min(cap, 10 * low + 999) + 1)
        critical = binom.isf(alpha, n, limit)  # the rule fires at more than this many failures
        found = np.flatnonzero(binom.sf(critical, n, harm) >= power)
        if len(found):
            return int(n[found[0]])
        low = int(n[-1]) + 1
    return cap


def step_minimum(champion: ArmStats, config: RolloutConfig) -> tuple[int, float]:
    """The challenger's requests over the ramp before its first step may advance, and the failure rate they are
    sized to find with the failure rule's power (80%): a challenger failing at the absolute ceiling
    ``failure_max`` or at twice the rule's limit, whichever is higher (a champion that fails itself puts the limit
    near the ceiling).

    The error rule's harm was measured on the same requests by the shadow, a paired comparison far stronger than
    the ramp's first labels; the minimum guards against what the shadow cannot see, failed requests. Sized over
    the ramp, not per step: the rules judge the challenger's whole ramp, and a challenger failing at ``harm``
    fails as many requests before it is caught at 5% as at 25%, only faster. Into 100% the failures must be shown
    low instead (:func:`failures_shown_low`).

    >>> step_minimum(ArmStats(version="v1", requests=5_000, failures=0), RolloutConfig())
    (157, 0.05)
    """
    limit, harm = _failure_harm(champion, config)
    return failure_sample(limit, harm), harm


def _failure_harm(champion: ArmStats, config: RolloutConfig) -> tuple[float, float]:
    """The failure rule's limit against ``champion``, and the failure rate the first step's minimum is sized for."""
    limit = min(config.failure_ratio * champion.failure_rate + config.failure_margin, config.failure_max)
    return limit, min(1.0, max(config.failure_max, 2 * limit))


def failures_shown_low(challenger: ArmStats, champion: ArmStats, config: RolloutConfig) -> str | None:
    """Why the challenger may not serve everyone yet on its failures (None: it may): the exact one-sided upper
    bound (Clopper-Pearson, at ``1 - SHOWN_LOW_ALPHA``) of its failure rate over the ramp must be below three times
    the failure rule's limit (3% against a champion that never fails), capped at the first step's harm.

    Shown, not merely unrefuted: a fixed count of requests with 80% power let one challenger failing 3% of its
    requests in five reach 100% (bench/rollout_safety.py, S5 and S4 on the urgent path); a bound is reached by a
    healthy challenger in about 230 requests and by one failing at 3% with at most SHOWN_LOW_ALPHA's chance at any
    one look.

    >>> cfg, champ = RolloutConfig(), ArmStats(version="v1", requests=9_000)
    >>> failures_shown_low(ArmStats(version="v2", requests=230, failures=0), champ, cfg) is None
    True
    >>> failures_shown_low(ArmStats(version="v2", requests=600, failures=18), champ, cfg)
    'v2 failed 18 of 600 requests: not yet shown below 3.0% (upper bound 5.8%)'
    """
    limit, first = _failure_harm(champion, config)
    harm = min(first, 3 * limit)
    n, k = challenger.requests, challenger.failures
    upper = 1.0 if n == 0 else (1.0 if k >= n else float(beta.ppf(1 - SHOWN_LOW_ALPHA, k + 1, n - k)))
    if upper < harm:
        return None
    return (f"{challenger.version} failed {k:,} of {n:,} requests: not yet shown below {_pct(harm)} "
            f"(upper bound {_pct(upper)})")


def step_ready(*, dwell_s: float, dwell_needed_s: int, urgent: bool, step_requests: Mapping[str, int],
               challenger: ArmStats, champion: ArmStats, config: RolloutConfig, to_full: bool = False) -> str | None:
    """Why a step may not advance yet (None: it may).

    - its dwell in event time, waived when the champion is confirmed degraded (``urgent``): waiting then costs the
      degraded champion's error on most of the traffic, and the evidence below, not a clock, is what a step needs;
    - each arm's requests at the step: at least ``step_min_requests`` (a step is seen before it is left);
    - the challenger's requests over the ramp: the failure rule's :func:`step_minimum`; into 100% its failures
      shown low (:func:`failures_shown_low`);
    - into 100% (``to_full``), when the champion's requests are timed, each arm's ``min_latency_samples`` timed
      requests: the latency rules judge from that many, and a challenger must not serve everyone before they could
      (servers often time a sample of their requests only, so this is not asked of the early steps).

    >>> cfg = RolloutConfig()
    >>> champ = ArmStats(version="v1", requests=8_000, latency_n=8_000)
    >>> step_ready(dwell_s=3600, dwell_needed_s=7200, urgent=False, step_requests={"v2": 400, "v1": 8000},
    ...            challenger=ArmStats(version="v2", requests=400, latency_n=400), champion=champ, config=cfg)
    'dwell 1.0 h of 2.0 h'
    >>> step_ready(dwell_s=3600, dwell_needed_s=7200, urgent=True, step_requests={"v2": 120, "v1": 8000},
    ...            challenger=ArmStats(version="v2", requests=120, latency_n=120), champion=champ, config=cfg)
    'v2 120 of 157 requests over the ramp (the failure rule finds a 5.0% failure rate with 80% power)'
    >>> step_ready(dwell_s=0, dwell_needed_s=0, urgent=True, step_requests={"v2": 900, "v1": 900}, to_full=True,
    ...            challenger=ArmStats(version="v2", requests=900, latency_n=120), champion=champ, config=cfg)
    'v2 120 of 200 timed requests (the latency rules judge from 200)'
    """
    if not urgent and dwell_s < dwell_needed_s:
        return f"dwell {dwell_s / 3600:.1f} h of {dwell_needed_s / 3600:.1f} h"
    short = [f"{v} {n:,} of {config.step_min_requests:,} requests at this step" for v, n in step_requests.items()
             if n < config.step_min_requests]
    needed, harm = step_minimum(champion, config)
    if challenger.requests < needed:
        short.append(f"{challenger.version} {challenger.requests:,} of {needed:,} requests over the ramp (the failure "
                     f"rule finds a {_pct(harm)} failure rate with 80% power)")
    low = failures_shown_low(challenger, champion, config) if to_full else None
    if low is not None:
        short.append(low)
    if to_full and champion.latency_n and min(challenger.latency_n, champion.latency_n) < config.min_latency_samples:
        short += [f"{arm.version} {arm.latency_n:,} of {config.min_latency_samples:,} timed requests (the latency "
                  f"rules judge from {config.min_latency_samples:,})" for arm in (challenger, champion)
                  if arm.latency_n < config.min_latency_samples]
    return "; ".join(short) or None


def paired_gain(challenger: np.ndarray, champion: np.ndarray, units: Sequence[Any]) -> tuple[float | None, int]:
    """One-sided paired t-test of the challenger's error below the champion's on the same requests, each user's
    requests averaged first (a user's requests are correlated; a user is one unit): (p, users); p is None with
    fewer than ``MIN_STRATUM_UNITS`` users or no spread.

    >>> rng = np.random.default_rng(7)
    >>> champ = (rng.random(600) < 0.30).astype(float); chall = (rng.random(600) < 0.10).astype(float)
    >>> p, n = paired_gain(chall, champ, [f"u{i % 200}" for i in range(600)])
    >>> p < 1e-6, n
    (True, 200)
    """
    frame = pd.DataFrame({"unit": list(units), "b": challenger, "a": champion}).dropna()
    per_user = frame.groupby("unit")[["b", "a"]].mean()
    if len(per_user) < MIN_STRATUM_UNITS:
        return None, len(per_user)
    diff = (per_user["b"] - per_user["a"]).to_numpy()
    if not diff.std() > 0:
        return (0.0 if diff.mean() < 0 else 1.0) if diff.mean() != 0 else None, len(per_user)
    p = float(ttest_1samp(diff, 0.0, alternative="less").pvalue)
    return (p if math.isfinite(p) else None), len(per_user)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"
