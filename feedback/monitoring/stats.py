"""Drift statistics computed from bin counts, vectorised over features and windows, and their registry.

Every statistic takes a reference and a current array of counts of shape ``(..., B)`` that broadcast
against each other (typically ``(F, 1, B)`` and ``(F, W, B)``) and returns arrays of the broadcast
leading shape (0-d for 1-D input; use ``float()``). Features have different numbers of bins, so the
bin axis is padded: ``valid`` (boolean, broadcastable against the counts) marks the real bins, and
padded bins are ignored entirely. A window with no counts has no distribution: its statistics are nan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

__all__ = [
    "DRIFT_TESTS",
    "PSI_BANDS",
    "ChiSquareResult",
    "DriftTest",
    "KsResult",
    "chi_square",
    "cohens_w_lower_bound",
    "floor_sentence",
    "holm",
    "js_distance",
    "js_lower_bound",
    "ks_from_grid",
    "ks_lower_bound",
    "noncentrality_lower_bound",
    "psi",
    "psi_lower_bound",
    "psi_band",
    "smoothed_proportions",
    "threshold_sentence",
]

FloatArray = npt.NDArray[np.float64]

PSI_BANDS = (0.1, 0.25)
"""PSI below the first edge is stable, below the second worth watching, at or above it drift."""


@dataclass(frozen=True, slots=True)
class KsResult:
    """Two-sample Kolmogorov-Smirnov test on binned values (see `ks_from_grid`)."""

    statistic: FloatArray
    pvalue: FloatArray
    max_error: FloatArray


@dataclass(frozen=True, slots=True)
class ChiSquareResult:
    """Chi-square test of homogeneity of two count vectors (see `chi_square`)."""

    statistic: FloatArray
    pvalue: FloatArray
    dof: npt.NDArray[np.int64]


def _counts(counts: npt.ArrayLike, valid: npt.ArrayLike | None, name: str, trusted: bool = False) -> FloatArray:
    """The counts as floats with padded bins zeroed; bad counts fail here, naming the argument.

    ``trusted``: the caller has checked them (the monitor checks a whole round's counts at once).
    """
    arr = np.asarray(counts, dtype=np.float64)
    if trusted:
        return arr if valid is None else arr * np.asarray(valid, dtype=bool)
    if arr.ndim == 0:
        msg = f"{name} must have a bin axis, got the scalar {arr!r}"
        raise ValueError(msg)
    # two reductions instead of an elementwise isfinite: nan fails "lowest >= 0", inf fails "highest < inf"
    if not (np.min(arr, initial=np.inf) >= 0 and np.max(arr, initial=0.0) < np.inf):
        bad = arr[~(np.isfinite(arr) & (arr >= 0))][:5]
        msg = f"{name} must be finite and non-negative, got {bad!r}"
        raise ValueError(msg)
    return arr if valid is None else arr * np.asarray(valid, dtype=bool)


def _totals(arr: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Row totals (keepdims) and the same with nan for empty rows, so everything divided by it is nan there."""
    total = arr.sum(axis=-1, keepdims=True)
    return total, np.where(total > 0, total, np.nan)


def smoothed_proportions(
    counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    alpha: float = 0.5,
    floor: float = 1e-3,
) -> FloatArray:
    """Proportions of the valid bins with additive smoothing and a floor, summing to 1 along the last axis.

    ``p_i = (c_i + alpha) / (n + alpha * k)`` over the ``k`` valid bins (alpha=0.5 is the Jeffreys
    prior), then every proportion is raised to at least ``floor`` and the valid bins renormalised.
    Padded bins get no mass and stay 0; a row with no counts has no distribution and is all nan.

    Why: PSI divides by proportions, so an empty bin must not count as (near) zero. With the seed
    code's 1e-10 epsilon, one brand-new category holding 1% of the current traffic contributes
    0.01 * ln(0.01 / 1e-10) = 0.184 to PSI on its own, over the 0.15 alert threshold. Smoothed and
    floored (10 000 reference rows), the same bin contributes about 0.021: visible, not an alarm.

    >>> smoothed_proportions(np.array([3, 1, 0])).round(3)
    array([0.636, 0.273, 0.091])
    >>> smoothed_proportions(np.array([3, 1, 0, 0]), valid=np.array([True, True, True, False])).round(3)
    array([0.636, 0.273, 0.091, 0.   ])
    """
    return _smooth(_counts(counts, valid, "counts"), valid, alpha, floor)


def _smooth(arr: FloatArray, valid: npt.ArrayLike | None, alpha: float, floor: float) -> FloatArray:
    if not (alpha >= 0 and floor >= 0):
        msg = f"alpha and floor must be non-negative, got alpha={alpha!r}, floor={floor!r}"
        raise ValueError(msg)
    if valid is None:
        mask: npt.NDArray[np.bool_] | float = 1.0
        k: FloatArray | int = arr.shape[-1]
    else:
        mask = np.asarray(valid, dtype=bool)
        k = np.count_nonzero(mask, axis=-1, keepdims=True)
    n = arr.sum(axis=-1, keepdims=True)
    denominator = np.where(n > 0, n + alpha * k, np.nan)
    # multiplying by the mask keeps padded bins at exactly 0 through the floor
    p = np.maximum((arr + alpha) / denominator, floor) * mask
    return np.asarray(p / p.sum(axis=-1, keepdims=True), dtype=np.float64)


def psi(
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    trusted: bool = False,
    alpha: float = 0.5,
    floor: float = 1e-3,
) -> FloatArray:
    """Population Stability Index ``sum((q - p) * ln(q / p))`` of the smoothed proportions.

    ``p`` is the reference and ``q`` the current distribution, both from `smoothed_proportions`
    with the same ``alpha`` and ``floor``. nan where either side has no counts; inf only if
    ``alpha`` and ``floor`` are both 0 and a bin is empty on one side.

    >>> ref = np.array([500, 300, 200])
    >>> float(psi(ref, ref))
    0.0
    >>> round(float(psi(ref, np.array([300, 300, 400]))), 3)
    0.24
    """
    p = _smooth(_counts(ref_counts, valid, "ref_counts", trusted), valid, alpha, floor)
    q = _smooth(_counts(cur_counts, valid, "cur_counts", trusted), valid, alpha, floor)
    # padded bins are 0/0 and equal bins contribute exactly 0; both are dropped by the p == q test
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (q - p) * np.log(q / p)
    return np.asarray(np.sum(np.where(p == q, 0.0, terms), axis=-1), dtype=np.float64)


def _xlogx_over(x: FloatArray, y: FloatArray) -> FloatArray:
    """``x * log(x / y)`` with ``0 * log(0 / y) = 0``: scipy.special.rel_entr's formula, at numpy speed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x / y), 0.0)


def js_distance(
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    trusted: bool = False,
) -> FloatArray:
    """Jensen-Shannon distance in base 2 (in [0, 1]) of the raw proportions, as scipy's ``jensenshannon``.

    No smoothing: ``0 * log(0) = 0``, so disjoint supports give exactly 1. nan where either side has
    no counts.

    >>> round(float(js_distance(np.array([1, 1, 0]), np.array([0, 1, 1]))), 4)
    0.7071
    >>> float(js_distance(np.array([1, 0]), np.array([0, 1])))
    1.0
    """
    ref = _counts(ref_counts, valid, "ref_counts", trusted)
    cur = _counts(cur_counts, valid, "cur_counts", trusted)
    per_n, per_m = _totals(ref)[1], _totals(cur)[1]
    p, q = ref / per_n, cur / per_m
    mid = (p + q) / 2.0
    # the order of operations of scipy.spatial.distance.jensenshannon, so results agree to rounding
    js = np.sum(_xlogx_over(p, mid), axis=-1) + np.sum(_xlogx_over(q, mid), axis=-1)
    js = js / np.log(2.0)
    # _xlogx_over turns the nan proportions of an empty window into zeros; put the nan back
    undefined = np.isnan(per_n * per_m)[..., 0]
    return np.asarray(np.where(undefined, np.nan, np.sqrt(js / 2.0)), dtype=np.float64)


def ks_from_grid(
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    trusted: bool = False,
    method: Literal["asymp", "stephens"] = "asymp",
    bound: bool = True,
) -> KsResult:
    """Two-sample Kolmogorov-Smirnov test from counts over a fine grid of ordered value bins.

    The bins must be ordered value intervals only: no "missing" or "other" bin (leave those out).
    ``statistic`` is ``max |F_ref - F_cur|`` over the bin edges. With ``method="asymp"``
    ``pvalue`` is ``kstwo.sf(statistic, round(n * m / (n + m)))``, exactly what
    ``scipy.stats.ks_2samp(..., method="asymp")`` computes; when no bin mixes two distinct raw
    values, statistic and p-value both equal scipy's on the raw values.

    Cost: scipy's kstwo is exact for the effective size ``en = round(n * m / (n + m))``. Each window
    with p below ~0.03 costs about 1 microsecond per unit of en, and each window with en <= 140 or
    a tiny statistic (p near 1) about 0.5-3 ms; the rest are vectorised. ``method="stephens"`` is
    the Kolmogorov limit at ``(sqrt(en) + 0.12 + 0.11 / sqrt(en)) * statistic``: one ufunc call,
    within 3% (relative) of the asymp p-value for p from 1e-4 up and en from 50 up.

    ``max_error`` bounds how far the KS statistic of the raw values can lie above the grid one:
    ``0 <= true - statistic <= max_k min(p_ref_k, p_cur_k)``. Proof: inside bin k both CDFs are
    monotone, so D = F_ref - F_cur can rise at most p_ref_k above its value at the left edge and
    at most p_cur_k above its value at the right edge, hence at most min(p_ref_k, p_cur_k) above
    the grid maximum; the same holds for -D.

    All three fields are nan where either side has no counts; ``bound=False`` skips ``max_error``
    (nan) for callers that do not use it. ``trusted=True`` (every function here) skips the check
    that counts are finite and non-negative, for a caller that has checked them already.

    >>> r = ks_from_grid(np.array([40, 30, 20, 10]), np.array([10, 20, 30, 40]))
    >>> round(float(r.statistic), 3), round(float(r.max_error), 3)
    (0.4, 0.2)
    >>> float(r.pvalue) < 1e-3
    True
    """
    if method not in ("asymp", "stephens"):
        msg = f"method must be 'asymp' or 'stephens', got {method!r}"
        raise ValueError(msg)
    ref = _counts(ref_counts, valid, "ref_counts", trusted)
    cur = _counts(cur_counts, valid, "cur_counts", trusted)
    n, per_n = _totals(ref)
    m, per_m = _totals(cur)
    # integer cumulative counts over n, like ks_2samp's searchsorted(...) / n, so ties agree exactly
    cdf_gap = np.abs(np.cumsum(ref, axis=-1) / per_n - np.cumsum(cur, axis=-1) / per_m)
    statistic = np.max(cdf_gap, axis=-1, initial=0.0)
    max_error = np.max(np.minimum(ref / per_n, cur / per_m), axis=-1, initial=0.0) if bound else np.nan
    # the nan totals of an empty window make all three fields nan there; a single row on each side rounds
    # n*m/(n+m) = 0.5 down to 0, which Stephens' 0.11 / sqrt(en) cannot take: the effective size is at least 1
    en = np.maximum(np.round(per_n * per_m / (per_n + per_m)), 1.0)[..., 0]
    if method == "asymp":
        pvalue = _kstwo_sf(statistic, en)
    else:
        root = np.sqrt(en)
        pvalue = np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic), 0.0, 1.0)
    return KsResult(
        statistic=np.asarray(statistic), pvalue=np.asarray(pvalue), max_error=np.asarray(max_error, dtype=np.float64)
    )


def _kstwo_sf(d: FloatArray, n: FloatArray) -> FloatArray:
    """``scipy.stats.kstwo.sf(d, n)``, with scipy's own branches vectorised.

    scipy evaluates kstwo one element at a time in Python (0.3-3 ms each), too slow for 480 windows.
    The branches that are closed forms or short series run here on whole arrays. Three stay costly:
    the Durbin-matrix and Pomeranz branches (n <= 140, or a tiny statistic with p near 1) go through
    scipy element by element, and ``special.smirnov`` (p below ~0.03) is a ufunc but costs O(n) per
    element. Mirrors scipy.stats._ksstats._kolmogn (scipy 1.14-1.17); the tests pin it to scipy.
    """
    d, n = np.broadcast_arrays(np.asarray(d, dtype=np.float64), np.asarray(n, dtype=np.float64))
    out = np.full(d.shape, np.nan)
    ok = (n >= 1) & (n == np.round(n)) & ~np.isnan(d)
    out[ok & (d >= 1.0)] = 0.0
    t = n * d
    out[ok & (d < 1.0) & (t <= 0.5)] = 1.0
    todo = ok & (d < 1.0) & (t > 0.5)
    # n * d**2 is the shape of the Kolmogorov limit; scipy switches algorithm on it
    nx2 = t * d
    small = n <= 140
    rubin_low = todo & (t <= 1.0)  # n!/n^n (2t-1)^n: tiny statistic, p ~ 1
    rest = todo & ~rubin_low
    rubin_high = rest & (t >= n - 1)
    rest &= ~rubin_high
    with np.errstate(over="ignore", under="ignore"):
        out[rubin_high] = 2.0 * (1.0 - d[rubin_high]) ** n[rubin_high]
    smirnov = rest & ((d >= 0.5) | (small & (nx2 > 4.0)) | (~small & (nx2 >= 2.2) & (nx2 < 370.0)))
    out[rest & ~small & (d < 0.5) & (nx2 >= 370.0)] = 0.0
    out[smirnov] = 2.0 * special.smirnov(n[smirnov].astype(np.int64), d[smirnov])
    series = rest & (d < 0.5) & ~small & (nx2 < 2.2)
    dmtw = series & (n <= 100_000) & (n * d**1.5 <= 1.4)
    pelz_good = series & ~dmtw
    out[pelz_good] = 1.0 - _pelz_good_cdf(n[pelz_good], d[pelz_good])
    slow = rubin_low | dmtw | (rest & small & (d < 0.5) & (nx2 <= 4.0))
    if slow.any():
        from scipy.stats import kstwo  # here: scipy.stats costs a process 1.3 s to import, and few p-values come here

        out[slow] = kstwo.sf(d[slow], n[slow])
    return np.clip(out, 0.0, 1.0)


_PI2, _PI4, _PI6 = math.pi**2, math.pi**4, math.pi**6
_SQRT2PI = math.sqrt(2 * math.pi)


def _pelz_good_cdf(n: FloatArray, x: FloatArray) -> FloatArray:
    """Pelz-Good approximation of the Kolmogorov CDF, scipy's ``_kolmogn_PelzGood`` on arrays."""
    with np.errstate(all="ignore"):  # a z so small that q underflows is answered by the last line
        return _pelz_good_terms(n, x)


def _pelz_good_terms(n: FloatArray, x: FloatArray) -> FloatArray:
    z = np.sqrt(n) * x
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    qlog = -_PI2 / 8 / z2
    q = np.exp(qlog)
    k1a, k1b = -z2, _PI2 / 4
    k2a, k2b, k2c = 6 * z6 + 2 * z4, (2 * z4 - 5 * z2) * _PI2 / 4, _PI4 * (1 - 2 * z2) / 16
    k3d = _PI6 * (5 - 30 * z2) / 64
    k3c = _PI4 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    maxk = np.ceil(16 * z / np.pi).astype(np.int64)
    terms = np.zeros((4, z.size))
    # Horner over k from each element's own maxk down, as scipy does; k above an element's maxk adds nothing
    for k in range(int(maxk.max(initial=0)), 0, -1):
        m2 = (2 * k - 1) ** 2
        active = k <= maxk
        coeffs = np.stack(
            [np.ones_like(z), k1a + k1b * m2, k2a + k2b * m2 + k2c * m2**2, k3a + k3b * m2 + k3c * m2**2 + k3d * m2**3]
        )
        terms = terms * q ** (8 * k) + np.where(active, coeffs, 0.0)
    terms *= q * _SQRT2PI
    terms /= np.stack([z, 6 * z4, 72 * z**7, 6480 * z**10])
    q = np.exp(-_PI2 / 2 / z2)
    ks = np.arange(1, int(maxk.max(initial=0)) + 1)[:, None]
    weights = np.where(ks <= maxk, ks**2 * q ** (ks**2), 0.0)
    terms[2] += weights.sum(axis=0) * _PI2 * _SQRT2PI / (-36 * z3)
    root3z = math.sqrt(3) * z
    terms[3] += ((root3z + np.pi * ks) * (root3z - np.pi * ks) * weights).sum(axis=0) * _PI2 * _SQRT2PI / (216 * z6)
    terms /= n ** (np.arange(4)[:, None] / 2.0)
    # scipy returns cdf 0 when q underflows (z below ~0.042)
    return np.where(qlog < -708, 0.0, terms.sum(axis=0))


def chi_square(
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    trusted: bool = False,
) -> ChiSquareResult:
    """Chi-square test of homogeneity of the 2 x k table [ref; cur], without continuity correction.

    Bins empty in both rows are left out, so ``dof = k_nonempty - 1``; this equals
    ``scipy.stats.chi2_contingency(table[:, nonempty], correction=False)``, including its
    statistic 0 and p-value 1 when only one bin is non-empty. Statistic and p-value are nan where
    either side has no counts (scipy raises there); ``dof`` is still the count above, at least 0.

    >>> r = chi_square(np.array([30, 20, 0]), np.array([20, 30, 0]))
    >>> float(r.statistic), int(r.dof), round(float(r.pvalue), 4)
    (4.0, 1, 0.0455)
    """
    ref = _counts(ref_counts, valid, "ref_counts", trusted)
    cur = _counts(cur_counts, valid, "cur_counts", trusted)
    n, per_n = _totals(ref)
    m, per_m = _totals(cur)
    column = ref + cur
    empty_column = column == 0
    dof = np.maximum(np.sum(~empty_column, axis=-1) - 1, 0)
    # for two rows, sum (O - E)^2 / E over both cells of bin j is (m a_j - n b_j)^2 / (n m c_j);
    # an empty column has a zero numerator, and dividing it by 1 instead of 0 drops it from the sum
    statistic = np.sum((m * ref - n * cur) ** 2 / (column + empty_column), axis=-1) / (per_n * per_m)[..., 0]
    # one non-empty bin leaves no degree of freedom: scipy reports statistic 0 and p-value 1
    one_bin = (dof == 0) & ~np.isnan(statistic)
    statistic = np.where(one_bin, 0.0, statistic)
    pvalue = np.where(one_bin, 1.0, special.chdtrc(np.maximum(dof, 1), statistic))
    return ChiSquareResult(
        statistic=np.asarray(statistic), pvalue=np.asarray(pvalue), dof=np.asarray(dof, dtype=np.int64)
    )


def holm(pvalues: npt.ArrayLike) -> FloatArray:
    """Holm-Bonferroni adjusted p-values of any shape; nan entries stay nan and are not counted as tests.

    Why Holm: it controls the family-wise error rate under any dependence between the tests. The
    windows of one model version share one reference profile, so their tests are positively
    dependent, and the assumptions behind Benjamini-Hochberg are not guaranteed. Holm is also
    uniformly more powerful than plain Bonferroni.

    >>> holm(np.array([0.01, 0.04, np.nan, 0.03]))
    array([0.03, 0.06,  nan, 0.06])
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    tested = ~np.isnan(flat)
    if not np.all((flat[tested] >= 0) & (flat[tested] <= 1)):
        msg = f"p-values must lie in [0, 1], got {flat[tested][(flat[tested] < 0) | (flat[tested] > 1)][:5]!r}"
        raise ValueError(msg)
    index = np.flatnonzero(tested)
    order = index[np.argsort(flat[index], kind="stable")]
    count = order.size
    # step-down: the i-th smallest is multiplied by the number of hypotheses not yet rejected
    stepped = np.maximum.accumulate((count - np.arange(count)) * flat[order])
    adjusted = np.full(flat.shape, np.nan)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.reshape(p.shape)


# --- lower confidence bounds of the effects, for the effect floors ------------------------------------
#
# A sample statistic overstates its population value by noise that shrinks with the sample: at 2,000 rows
# the KS statistic of a 0.1 sd shift (population KS 0.040) reads 0.05-0.09. A floor compared with the raw
# statistic therefore suppresses less in small windows than in large ones. Each floor is compared with the
# lower end of a confidence interval of the population value instead; both the reference and the window are
# samples, so both sizes enter.


def _confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        msg = f"confidence must lie in (0, 1), got {confidence!r}"
        raise ValueError(msg)
    return confidence


def _sizes(ref: FloatArray, cur: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``1 / n + 1 / m`` and the number of bins non-empty on either side minus 1, shaped like a statistic.

    nan where either side has no counts.
    """
    n, m = _totals(ref)[1][..., 0], _totals(cur)[1][..., 0]
    dof = np.maximum(np.count_nonzero((ref + cur) > 0, axis=-1) - 1, 0)
    return 1.0 / n + 1.0 / m, dof


def ks_lower_bound(
    statistic: npt.ArrayLike,
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    confidence: float = 0.95,
) -> FloatArray:
    """The lower end of a ``confidence`` interval of the KS distance ``sup |F - G|`` of the two populations.

    ``max(0, statistic - eps)`` with the DKW band of the two-sample difference process,
    ``eps = sqrt(ln(2 / alpha) / 2 * (1 / n + 1 / m))`` and ``alpha = 1 - confidence``:
    ``|statistic - sup |F - G||`` is at most ``sup |(F_n - F) - (G_m - G)|``, a process whose variance is
    at most ``(1 / n + 1 / m) / 4``, and ``2 exp(-2 t^2)`` bounds the Kolmogorov tail. ``n`` and ``m`` are
    the totals of the counts the statistic came from; a statistic on a grid of bins is at most the
    raw-value one, so the bound holds for it too. tests/unit/test_stats.py checks the coverage by
    simulation against ``scipy.stats.ks_2samp`` on raw values.

    >>> ref, cur = np.array([500, 300, 200]), np.array([300, 300, 400])  # 1,000 rows each
    >>> round(float(ks_lower_bound(0.2, ref, cur)), 3)  # eps = sqrt(ln(40) / 2 * 0.002) = 0.061
    0.139
    >>> float(ks_lower_bound(0.05, ref, cur))
    0.0
    """
    alpha = 1.0 - _confidence(confidence)
    ref = _counts(ref_counts, valid, "ref_counts", trusted=True)
    cur = _counts(cur_counts, valid, "cur_counts", trusted=True)
    eps = np.sqrt(math.log(2.0 / alpha) / 2.0 * _sizes(ref, cur)[0])
    return np.asarray(np.maximum(np.asarray(statistic, dtype=np.float64) - eps, 0.0), dtype=np.float64)


def noncentrality_lower_bound(x: npt.ArrayLike, dof: npt.ArrayLike, *, confidence: float = 0.95) -> FloatArray:
    """The lower end of a ``confidence`` interval of the noncentrality of a chi-square variable observed at ``x``.

    Fisher's square root: ``sqrt(X)`` is about normal with mean ``sqrt(dof + lambda)`` and a standard
    deviation below 1, so ``lambda >= (sqrt(x) - z)^2 - dof`` with ``z`` the normal quantile at
    ``(1 + confidence) / 2``. Closed form and cheap (a monitor round bounds thousands of windows); it is
    never above the exact inversion (``scipy.special.chndtrinc``) and at most about ``1.25 sqrt(dof)``
    below it (tests/unit/test_stats.py).

    >>> float(noncentrality_lower_bound(20.0, 9)), round(float(noncentrality_lower_bound(100.0, 9)), 2)
    (0.0, 55.64)
    """
    z = special.ndtri((1.0 + _confidence(confidence)) / 2.0)
    root = np.maximum(np.sqrt(np.asarray(x, dtype=np.float64)) - z, 0.0)
    return np.asarray(np.maximum(root**2 - np.asarray(dof, dtype=np.float64), 0.0), dtype=np.float64)


def _chi_square_scale_bound(
    scaled: FloatArray, ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike, valid: npt.ArrayLike | None,
    confidence: float,
) -> FloatArray:
    """The bound of a divergence whose ``scaled`` value times ``n m / (n + m)`` is about noncentral chi-square."""
    ref = _counts(ref_counts, valid, "ref_counts", trusted=True)
    cur = _counts(cur_counts, valid, "cur_counts", trusted=True)
    inverse_sizes, dof = _sizes(ref, cur)
    return noncentrality_lower_bound(scaled / inverse_sizes, dof, confidence=confidence) * inverse_sizes


def psi_lower_bound(
    value: npt.ArrayLike,
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    confidence: float = 0.95,
) -> FloatArray:
    """The lower end of a ``confidence`` interval of the PSI of the two populations' bin proportions.

    Near no change PSI is Pearson's divergence ``sum (q - p)^2 / p`` to second order, so
    ``n m / (n + m) * PSI`` is about noncentral chi-square with ``k - 1`` degrees of freedom (``k``
    bins non-empty on either side) and noncentrality ``n m / (n + m)`` times the population PSI:
    the sample PSI is biased up by about ``(k - 1) (1 / n + 1 / m)``. The bound inverts that
    (`noncentrality_lower_bound`); tests/unit/test_stats.py checks the coverage by simulation.

    >>> ref, cur = np.array([500, 300, 200]), np.array([300, 300, 400])
    >>> round(float(psi(ref, cur)), 3), round(float(psi_lower_bound(psi(ref, cur), ref, cur)), 3)
    (0.24, 0.158)
    """
    return _chi_square_scale_bound(np.asarray(value, dtype=np.float64), ref_counts, cur_counts, valid, confidence)


def js_lower_bound(
    value: npt.ArrayLike,
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    confidence: float = 0.95,
) -> FloatArray:
    """The lower end of a ``confidence`` interval of the Jensen-Shannon distance (base 2) of the two populations.

    Near no change the Jensen-Shannon divergence in nats is ``sum (p - q)^2 / (8 (p + q) / 2)``, so
    ``8 ln(2) n m / (n + m) * distance^2`` is about noncentral chi-square as in `psi_lower_bound`.

    >>> ref, cur = np.array([500, 300, 200]), np.array([300, 300, 400])
    >>> d = js_distance(ref, cur)
    >>> round(float(d), 3), round(float(js_lower_bound(d, ref, cur)), 3)
    (0.207, 0.167)
    """
    scale = 8.0 * math.log(2.0)
    squared = scale * np.asarray(value, dtype=np.float64) ** 2
    return np.sqrt(_chi_square_scale_bound(squared, ref_counts, cur_counts, valid, confidence) / scale)


def cohens_w_lower_bound(
    value: npt.ArrayLike,
    ref_counts: npt.ArrayLike,
    cur_counts: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    confidence: float = 0.95,
) -> FloatArray:
    """The lower end of a ``confidence`` interval of Cohen's w ``sqrt(sum (q - p)^2 / p)`` of the two populations.

    ``n m / (n + m) * w^2`` is about noncentral chi-square as in `psi_lower_bound`: the usual
    noncentrality interval of w, with ``1 / n + 1 / m`` in place of ``1 / n`` because the reference
    proportions are a sample too. Far above a floor (w 0.5 over ten bins) the approximation's
    variance is too small and the bound can exceed the population w in up to 1 draw in 10; near
    the floors, where it decides, it holds (tests/unit/test_stats.py).

    >>> ref, cur = np.array([500, 300, 200]), np.array([300, 300, 400])
    >>> round(float(cohens_w_lower_bound(0.5, ref, cur)), 3)
    0.407
    """
    squared = np.asarray(value, dtype=np.float64) ** 2
    return np.sqrt(_chi_square_scale_bound(squared, ref_counts, cur_counts, valid, confidence))


def floor_sentence(metric: str, value: float, lower: float, floor: float) -> str:
    """The comparison of an effect's lower bound with its floor, quoting the raw value too.

    >>> floor_sentence("ks", 0.0532, 0.0214, 0.05)
    'ks 0.053 (lower bound 0.021) < floor 0.050'
    >>> floor_sentence("psi", 0.31, 0.2, 0.15)
    'psi 0.310 (lower bound 0.200) >= floor 0.150'
    """
    if math.isnan(lower):
        return f"{metric} undefined (nan), floor {floor:.3f}"
    # threshold_sentence's rounding rule, so a bound never reads "0.050 < floor 0.050"
    _, shown, relation, limit = threshold_sentence("bound", lower, floor).split(" ")
    return f"{metric} {value:.3f} (lower bound {shown}) {relation} floor {limit}"


@dataclass(frozen=True, slots=True)
class DriftTest:
    """A drift statistic and what is needed to read it: threshold, feature kinds, direction."""

    name: str
    func: Callable[..., object]
    default_threshold: float
    kinds: frozenset[str]
    higher_is_drift: bool
    description: str
    pvalue_threshold: float | None = None


NUMERIC, CATEGORICAL = "numeric", "categorical"

DRIFT_TESTS: dict[str, DriftTest] = {
    "psi": DriftTest(
        name="psi",
        func=psi,
        default_threshold=0.15,
        kinds=frozenset({NUMERIC, CATEGORICAL}),
        higher_is_drift=True,
        description="Population Stability Index of smoothed bin proportions; < 0.1 stable, 0.1-0.25 watch, "
        ">= 0.25 drift",
    ),
    "ks": DriftTest(
        name="ks",
        func=ks_from_grid,
        default_threshold=0.05,
        kinds=frozenset({NUMERIC}),
        higher_is_drift=True,
        description="Kolmogorov-Smirnov statistic on a fine value grid; drift needs its lower confidence bound "
        "(ks_lower_bound) >= the effect floor and the p-value < pvalue_threshold",
        pvalue_threshold=0.01,
    ),
    "js": DriftTest(
        name="js",
        func=js_distance,
        default_threshold=0.1,
        kinds=frozenset({NUMERIC, CATEGORICAL}),
        higher_is_drift=True,
        description="Jensen-Shannon distance (base 2, in [0, 1]) of raw bin proportions",
    ),
    "chi2": DriftTest(
        name="chi2",
        func=chi_square,
        default_threshold=0.01,
        kinds=frozenset({CATEGORICAL}),
        higher_is_drift=False,
        description="chi-square test of homogeneity of category counts; the threshold is on the p-value",
        pvalue_threshold=0.01,
    ),
}


def psi_band(value: float) -> str:
    """The PSI band of a value: "stable" below 0.1, "watch" below 0.25, "drift" from 0.25 up.

    >>> psi_band(0.03), psi_band(0.1), psi_band(0.25)
    ('stable', 'watch', 'drift')
    """
    if math.isnan(value):
        msg = f"psi is undefined (nan), so it has no band; got {value!r}"
        raise ValueError(msg)
    if value < PSI_BANDS[0]:
        return "stable"
    return "watch" if value < PSI_BANDS[1] else "drift"


def _format_pvalue(value: float) -> str:
    if value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    return f"{value:.3f}"


def threshold_sentence(metric: str, value: float, threshold: float, *, higher_is_drift: bool = True) -> str:
    """The comparison a drift decision made, as a sentence, e.g. "psi 0.212 >= 0.150".

    Drift is ``value >= threshold`` when ``higher_is_drift`` and ``value < threshold`` otherwise
    (p-values), so the relation printed is always ">=" or "<". Values are written with 3 decimals;
    p-values (``higher_is_drift=False`` or a metric named "... p-value") with 3 significant digits in
    scientific notation below 0.001, and their threshold as given.

    >>> threshold_sentence("psi", 0.2123, 0.15)
    'psi 0.212 >= 0.150'
    >>> threshold_sentence("psi", 0.031, 0.15)
    'psi 0.031 < 0.150'
    >>> threshold_sentence("ks p-value", 2.1e-05, 0.01, higher_is_drift=False)
    'ks p-value 2.1e-05 < 0.01'
    """
    if math.isnan(value):
        return f"{metric} undefined (nan), threshold {threshold:g}"
    relation = ">=" if value >= threshold else "<"
    if not higher_is_drift or metric.endswith("p-value"):
        shown, limit = _format_pvalue(value), f"{threshold:g}"
    else:
        shown, limit = f"{value:.3f}", f"{threshold:.3f}"
    if shown == limit and value != threshold:
        # rounding must not make a sentence read "0.150 < 0.150"
        shown, limit = f"{value:.6g}", f"{threshold:.6g}"
    return f"{metric} {shown} {relation} {limit}"
