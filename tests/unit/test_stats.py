"""Drift statistics from bin counts agree with scipy and with direct computations on the raw values."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

from feedback.monitoring.stats import (
    DRIFT_TESTS,
    PSI_BANDS,
    ChiSquareResult,
    KsResult,
    _kstwo_sf,
    chi_square,
    cohens_w_lower_bound,
    floor_sentence,
    holm,
    js_distance,
    js_lower_bound,
    ks_from_grid,
    ks_lower_bound,
    noncentrality_lower_bound,
    psi,
    psi_band,
    psi_lower_bound,
    smoothed_proportions,
    threshold_sentence,
)


def _binned(ref: np.ndarray, cur: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.histogram(ref, edges)[0], np.histogram(cur, edges)[0]


def _per_value(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts over one bin per distinct raw value of either sample, so no bin mixes two values."""
    values = np.unique(np.concatenate([ref, cur]))
    return _count_in(values, ref), _count_in(values, cur)


def _count_in(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(values, sample), minlength=values.size)


def _scenario(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts on shared bins, from raw samples."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "same":
        return _binned(rng.normal(size=5000), rng.normal(size=800), np.linspace(-5, 5, 21))
    if name == "shifted":
        return _binned(rng.normal(size=5000), rng.normal(0.4, 1.3, size=800), np.linspace(-5, 5, 21))
    if name == "ties":
        return _per_value(rng.poisson(3.0, size=3000), rng.poisson(3.4, size=700))
    # categorical, the current window has a category the reference never saw and one bin is empty in both
    categories = np.array(["a", "b", "c", "d", "e", "new"])
    ref = rng.choice(categories[:4], size=4000, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(categories[[0, 1, 2, 3, 5]], size=600, p=[0.35, 0.3, 0.2, 0.1, 0.05])
    return _count_in(categories, ref), _count_in(categories, cur)


SCENARIOS = ["same", "shifted", "ties", "categorical"]


def _psi_by_hand(ref: np.ndarray, cur: np.ndarray, alpha: float = 0.5, floor: float = 1e-3) -> float:
    def smooth(counts: list[int]) -> list[float]:
        n, k = sum(counts), len(counts)
        raised = [max((c + alpha) / (n + alpha * k), floor) for c in counts]
        return [r / sum(raised) for r in raised]

    p, q = smooth(ref.tolist()), smooth(cur.tolist())
    return sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


@pytest.mark.parametrize("name", SCENARIOS)
def test_psi_matches_a_direct_computation(name: str) -> None:
    """PSI equals the documented smoothing and sum written out with plain loops."""
    ref, cur = _scenario(name)
    assert float(psi(ref, cur)) == pytest.approx(_psi_by_hand(ref, cur), abs=1e-12)


def test_a_new_category_is_damped_not_explosive() -> None:
    """A new category with 1% of traffic adds about 0.021 PSI, where the seed's 1e-10 epsilon added 0.184."""
    ref, cur = np.append(np.full(10, 1000), 0), np.append(np.full(10, 990), 100)
    assert (0.01 - 1e-10) * math.log(0.01 / 1e-10) == pytest.approx(0.184, abs=1e-3)
    p, q = smoothed_proportions(ref)[-1], smoothed_proportions(cur)[-1]
    assert (q - p) * math.log(q / p) == pytest.approx(0.021, abs=1e-3)
    assert float(psi(ref, cur)) == pytest.approx(0.021, abs=2e-3)


def test_smoothed_proportions_give_padding_no_mass() -> None:
    """Padded bins stay at 0 and the valid bins equal the unpadded result."""
    counts = np.array([7, 0, 2, 1])
    padded = smoothed_proportions(np.append(counts, [0, 0]), valid=np.arange(6) < 4)
    np.testing.assert_allclose(padded[:4], smoothed_proportions(counts), rtol=1e-15)
    assert padded[4:].tolist() == [0.0, 0.0] and padded.sum() == pytest.approx(1.0)
    assert smoothed_proportions(counts, alpha=0.0, floor=0.0) == pytest.approx([0.7, 0.0, 0.2, 0.1], abs=1e-15)


@pytest.mark.parametrize("name", SCENARIOS)
def test_js_distance_matches_scipy(name: str) -> None:
    """The JS distance equals scipy's jensenshannon in base 2."""
    ref, cur = _scenario(name)
    assert float(js_distance(ref, cur)) == pytest.approx(jensenshannon(ref, cur, base=2), abs=1e-12)


def test_js_distance_is_one_for_disjoint_supports() -> None:
    """Samples with no bin in common are at the maximal distance 1."""
    assert float(js_distance(np.array([5, 3, 0, 0]), np.array([0, 0, 1, 9]))) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("name", SCENARIOS)
def test_chi_square_matches_scipy(name: str) -> None:
    """Statistic, p-value and dof equal chi2_contingency on the table without the bins empty in both rows."""
    ref, cur = _scenario(name)
    table = np.stack([ref, cur])
    expected = stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
    got = chi_square(ref, cur)
    assert float(got.statistic) == pytest.approx(expected.statistic, rel=1e-12)
    assert float(got.pvalue) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert int(got.dof) == expected.dof


def test_chi_square_with_one_nonempty_bin_has_no_dof() -> None:
    """Like scipy, a single non-empty bin gives statistic 0, p-value 1 and dof 0."""
    got = chi_square(np.array([0, 4, 0]), np.array([0, 9, 0]))
    assert (float(got.statistic), float(got.pvalue), int(got.dof)) == (0.0, 1.0, 0)


@pytest.mark.parametrize(
    ("seed", "shift", "sizes"), [(1, 0.0, (5000, 1500)), (2, 0.3, (3000, 900)), (3, 0.5, (80, 50))]
)
def test_ks_grid_statistic_brackets_the_raw_statistic(seed: int, shift: float, sizes: tuple[int, int]) -> None:
    """On a coarse grid, grid statistic <= KS of the raw values <= grid statistic + max_error."""
    rng = np.random.default_rng(seed)
    ref_values, cur_values = rng.normal(size=sizes[0]), rng.normal(shift, 1.0, size=sizes[1])
    got = ks_from_grid(*_binned(ref_values, cur_values, np.linspace(-6, 6, 25)))
    raw = stats.ks_2samp(ref_values, cur_values, method="asymp").statistic
    assert float(got.statistic) <= raw + 1e-12
    assert raw <= float(got.statistic + got.max_error) + 1e-12
    assert float(got.max_error) > 0


@pytest.mark.parametrize(
    ("kind", "shift", "sizes"),
    [
        ("normal", 0.0, (4000, 1500)),  # small statistic: Pelz-Good or Durbin branch
        ("normal", 0.15, (4000, 1500)),  # drift: Smirnov branch
        ("normal", 0.3, (70, 45)),  # effective size <= 140: Pomeranz/Durbin branches
        ("poisson", 0.3, (3000, 700)),  # ties
        ("poisson", 0.0, (300, 200)),
    ],
)
def test_ks_equals_scipy_when_no_bin_mixes_values(kind: str, shift: float, sizes: tuple[int, int]) -> None:
    """With one bin per distinct raw value, statistic and p-value equal ks_2samp(method="asymp")."""
    rng = np.random.default_rng(sizes[0] + int(shift * 100))
    if kind == "normal":
        ref_values, cur_values = rng.normal(size=sizes[0]), rng.normal(shift, 1.0, size=sizes[1])
    else:
        ref_values, cur_values = rng.poisson(3.0, size=sizes[0]), rng.poisson(3.0 + shift, size=sizes[1])
    got = ks_from_grid(*_per_value(ref_values, cur_values))
    expected = stats.ks_2samp(ref_values, cur_values, method="asymp")
    assert float(got.statistic) == pytest.approx(expected.statistic, abs=1e-9)
    assert float(got.pvalue) == pytest.approx(expected.pvalue, abs=1e-9)


def test_kstwo_sf_matches_scipy_on_every_branch() -> None:
    """The vectorised Kolmogorov survival function equals scipy.stats.kstwo.sf for small to huge n."""
    rng = np.random.default_rng(7)
    for n in [1, 2, 5, 30, 140, 141, 1000, 100_000, 100_001, 400_000]:
        # scipy's Smirnov branch (n d^2 >= 2.2, or d >= 0.5) costs O(n) per value: only small n go there
        top = 2.5 if n <= 1000 else 1.45
        edges = [0.0, 0.5 / n, 1 / n, 1 - 1 / n, 1.0, 20 / math.sqrt(n)]
        d = np.concatenate([edges, rng.uniform(0, top, 12) / math.sqrt(n)])
        if n <= 1000:
            d = np.concatenate([d, [0.5], rng.uniform(0, 1, 6)])
        got = _kstwo_sf(d, np.full(d.shape, float(n)))
        np.testing.assert_allclose(got, stats.kstwo.sf(d, n), rtol=1e-12, atol=1e-15)


def test_ks_stephens_is_close_to_asymp() -> None:
    """The fast Stephens p-value stays within 3% of the asymp one for p-values from 1e-4 up."""
    for n, m in [(10_000, 60), (5000, 500), (20_000, 20_000)]:
        d = np.linspace(0.5, 3.7, 30) / math.sqrt(n * m / (n + m))
        # one bin holding all of each sample, then one step of size d between the two CDFs
        ref = np.stack([np.zeros_like(d), np.full_like(d, n), np.zeros_like(d)], axis=-1)
        ref[:, 0] = np.round(d * n)
        ref[:, 1] -= ref[:, 0]
        cur = np.stack([np.zeros_like(d), np.full_like(d, m), np.zeros_like(d)], axis=-1)
        asymp = ks_from_grid(ref, cur)
        fast = ks_from_grid(ref, cur, method="stephens")
        np.testing.assert_array_equal(fast.statistic, asymp.statistic)
        keep = asymp.pvalue > 1e-4
        np.testing.assert_allclose(fast.pvalue[keep], asymp.pvalue[keep], rtol=0.03)


def test_vectorised_results_equal_per_row_results() -> None:
    """(F, W, B) arrays with padding give, row by row, the results of unpadded 1-D calls."""
    rng = np.random.default_rng(11)
    widths, windows, width = [3, 8, 12], 4, 12
    ref = np.zeros((3, 1, width))
    cur = np.full((3, windows, width), 7.0)  # non-zero padding: must be ignored entirely
    for f, b in enumerate(widths):
        ref[f, 0, :b] = rng.integers(0, 300, b)
        cur[f, :, :b] = rng.poisson(ref[f, 0, :b] / 5 + rng.uniform(0, 3, (windows, b)))
    cur[1, 2, :8] = 0  # an empty window
    valid = np.arange(width) < np.array(widths)[:, None, None]
    results = {
        "psi": psi(ref, cur, valid=valid),
        "js": js_distance(ref, cur, valid=valid),
        "ks": ks_from_grid(ref, cur, valid=valid),
        "chi2": chi_square(ref, cur, valid=valid),
    }
    for f, b in enumerate(widths):
        for w in range(windows):
            r, c = ref[f, 0, :b], cur[f, w, :b]
            one = {"psi": psi(r, c), "js": js_distance(r, c), "ks": ks_from_grid(r, c), "chi2": chi_square(r, c)}
            for name, value in results.items():
                if name in ("ks", "chi2"):
                    for field in ("statistic", "pvalue"):
                        np.testing.assert_allclose(getattr(value, field)[f, w], getattr(one[name], field), rtol=1e-12)
                else:
                    np.testing.assert_allclose(value[f, w], one[name], rtol=1e-12)
            np.testing.assert_allclose(results["ks"].max_error[f, w], one["ks"].max_error, rtol=1e-12)
            assert results["chi2"].dof[f, w] == one["chi2"].dof


def _fields_of(result: KsResult | ChiSquareResult) -> list[np.ndarray]:
    return [getattr(result, field.name) for field in dataclasses.fields(result)]


def test_empty_windows_are_nan_without_warnings() -> None:
    """An all-zero current window yields nan statistics and no RuntimeWarning, next to a normal window."""
    ref = np.array([[10, 20, 30]])
    cur = np.array([[0, 0, 0], [5, 5, 5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [psi(ref, cur), js_distance(ref, cur), *_fields_of(ks_from_grid(ref, cur))]
        values += _fields_of(chi_square(ref, cur))
        for v in values[:-1]:
            assert np.isnan(v[0]) and not np.isnan(v[1])
        assert np.isnan(smoothed_proportions(cur[0])).all()


def _holm_by_loop(p: list[float]) -> list[float]:
    tested = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    out, running = [math.nan] * len(p), 0.0
    for rank, (v, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * v))
        out[i] = running
    return out


def test_holm_matches_an_explicit_loop() -> None:
    """Holm-adjusted p-values equal a step-down loop, keep the shape, and leave nan out of the count."""
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 0.2, (4, 6))
    p[0, 0] = p[1, 1] = np.nan
    p[2, 2] = p[2, 3]  # a tie
    got = holm(p)
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got.ravel(), _holm_by_loop(p.ravel().tolist()), rtol=1e-15)
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 1])
    assert holm(np.array([0.01, np.nan])).tolist()[0] == 0.01
    with pytest.raises(ValueError, match="1.5"):
        holm(np.array([0.2, 1.5]))


counts_of = st.integers(2, 15).flatmap(
    lambda k: st.tuples(*[hnp.arrays(np.int64, k, elements=st.integers(0, 400)).filter(lambda a: a.sum() > 0)] * 2)
)


@settings(max_examples=150, deadline=None, database=None)
@given(counts_of)
def test_statistics_stay_in_their_ranges(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """For any count vectors PSI >= 0, JS in [0, 1], p-values in [0, 1], and a window equal to its reference is 0."""
    ref, cur = pair
    assert float(psi(ref, cur)) >= 0 and float(psi(ref, ref)) == 0.0
    assert 0.0 <= float(js_distance(ref, cur)) <= 1.0 + 1e-12 and float(js_distance(ref, ref)) == 0.0
    assert 0.0 <= float(chi_square(ref, cur).pvalue) <= 1.0
    ks = ks_from_grid(ref, cur, method="stephens")
    assert 0.0 <= float(ks.statistic) <= 1.0 and 0.0 <= float(ks.pvalue) <= 1.0


def test_bad_counts_are_rejected_by_name() -> None:
    """Negative or nan counts fail with a message naming the argument."""
    with pytest.raises(ValueError, match="cur_counts"):
        psi(np.array([1, 2]), np.array([1, -1]))
    with pytest.raises(ValueError, match="ref_counts"):
        js_distance(np.array([1, np.nan]), np.array([1, 1]))


def test_registry_bands_and_sentences() -> None:
    """The registry holds the four tests, PSI bands split at 0.1 and 0.25, and sentences show the comparison."""
    assert set(DRIFT_TESTS) == {"psi", "ks", "js", "chi2"}
    assert DRIFT_TESTS["psi"].default_threshold == 0.15 and DRIFT_TESTS["ks"].pvalue_threshold == 0.01
    assert not DRIFT_TESTS["chi2"].higher_is_drift and DRIFT_TESTS["chi2"].kinds == frozenset({"categorical"})
    assert PSI_BANDS == (0.1, 0.25)
    bands = [psi_band(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)]
    assert bands == ["stable", "stable", "watch", "watch", "drift", "drift"]
    with pytest.raises(ValueError, match="nan"):
        psi_band(math.nan)
    assert threshold_sentence("psi", 0.2123, 0.15) == "psi 0.212 >= 0.150"
    assert threshold_sentence("chi2 p-value", 0.0312, 0.01, higher_is_drift=False) == "chi2 p-value 0.031 >= 0.01"
    assert threshold_sentence("ks p-value", 2.134e-5, 0.01, higher_is_drift=False) == "ks p-value 2.13e-05 < 0.01"
    assert threshold_sentence("psi", 0.14996, 0.15) == "psi 0.14996 < 0.15"


def test_ks_of_one_row_against_one_row_is_defined() -> None:
    """A window of one row against a reference of one row (n*m/(n+m) rounds to 0) gives a p-value, no division
    by zero (hypothesis found it)."""
    ks = ks_from_grid(np.array([0, 1]), np.array([0, 1]), method="stephens")
    assert float(ks.statistic) == 0.0 and 0.0 <= float(ks.pvalue) <= 1.0
    ks = ks_from_grid(np.array([1, 0]), np.array([0, 1]), method="asymp")
    assert float(ks.statistic) == 1.0 and 0.0 <= float(ks.pvalue) <= 1.0


# --- lower confidence bounds of the effects ---------------------------------------------------------


def test_ks_lower_bound_is_the_two_sample_dkw_band() -> None:
    """The bound is max(0, D - sqrt(ln(2 / alpha) / 2 * (1 / n + 1 / m))), n and m the counts' totals."""
    ref, cur = np.array([[4000, 1000], [100, 0]]), np.array([[300, 200], [0, 0]])
    got = ks_lower_bound(np.array([0.3, 0.3]), ref, cur, confidence=0.9)
    assert got[0] == pytest.approx(0.3 - math.sqrt(math.log(2 / 0.1) / 2 * (1 / 5000 + 1 / 500)))
    assert math.isnan(got[1])  # an empty window has no bound


@pytest.mark.parametrize(("sizes", "mean", "sd"), [
    ((2000, 500), 0.0, 1.0), ((500, 500), 0.0, 1.0), ((2000, 500), 0.1, 1.0), ((500, 2000), 0.5, 1.0),
    ((2000, 500), 0.0, 1.3),
])
def test_ks_lower_bound_covers_the_population_distance(sizes: tuple[int, int], mean: float, sd: float) -> None:
    """Over 400 draws the bound from scipy's ks_2samp on raw values exceeds the population KS in at most 5%."""
    rng = np.random.default_rng(sizes[0] + sizes[1])
    n, m = sizes
    statistic = stats.ks_2samp(rng.normal(size=(400, n)), rng.normal(mean, sd, (400, m)), axis=1).statistic
    grid = np.linspace(-8, 8, 160_001)
    population = np.max(np.abs(stats.norm.cdf(grid) - stats.norm.cdf(grid, mean, sd)))
    low = ks_lower_bound(statistic, np.array([n]), np.array([m]), confidence=0.95)
    assert np.mean(low > population) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_noncentrality_bound_never_exceeds_the_exact_inversion() -> None:
    """Fisher's square root is below scipy's chndtrinc, and within 1.3 sqrt(dof) + 0.1 of it."""
    for confidence in (0.9, 0.95, 0.99):
        tail = (1 + confidence) / 2
        for dof in (1, 2, 9, 19, 50):
            x = np.linspace(0.1, 40 * dof + 100, 2000)
            exact = np.where(special.chdtrc(dof, x) < 1 - tail, special.chndtrinc(x, dof, tail), 0.0)
            got = noncentrality_lower_bound(x, dof, confidence=confidence)
            assert np.all(got <= exact + 1e-6)
            assert np.all(got >= exact - 1.3 * math.sqrt(dof) - 0.1)


def _decile_law(shift: float) -> np.ndarray:
    """The decile proportions of N(shift, 1) over the deciles of N(0, 1)."""
    edges = np.concatenate(([-np.inf], stats.norm.ppf(np.arange(1, 10) / 10), [np.inf]))
    return np.diff(stats.norm.cdf(edges - shift))


ZIPF = (1.0 / np.arange(1, 21)) / np.sum(1.0 / np.arange(1, 21))


def _zipf_law(w: float) -> np.ndarray:
    """ZIPF moved to Cohen's w = ``w`` (alternate levels up and down)."""
    direction = np.where(np.arange(20) % 2 == 0, 1.0, -1.0) * ZIPF
    direction -= ZIPF * direction.sum()
    return ZIPF + w / np.sqrt(np.sum(direction**2 / ZIPF)) * direction


LAWS = [("deciles", np.full(10, 0.1), _decile_law(d)) for d in (0.0, 0.1, 0.3, 0.4, 0.5)]
LAWS += [("zipf", ZIPF, _zipf_law(w)) for w in (0.0, 0.05, 0.1, 0.2)]


@pytest.mark.parametrize(("kind", "p", "q"), LAWS)
@pytest.mark.parametrize("sizes", [(5000, 1000), (50_000, 2000), (5000, 100_000), (1000, 1000)])
def test_divergence_lower_bounds_cover_their_population_values(kind: str, p: np.ndarray, q: np.ndarray,
                                                                sizes: tuple[int, int]) -> None:
    """Over 2,000 multinomial draws each 95% bound exceeds the population PSI, JS or w in at most 2.5% (+3 SE)."""
    rng = np.random.default_rng([len(p), *sizes, int(q[0] * 1e6)])
    ref, cur = rng.multinomial(sizes[0], p, size=2000), rng.multinomial(sizes[1], q, size=2000)
    limit = 0.025 + 3 * math.sqrt(0.025 * 0.975 / 2000)
    population_psi = float(np.sum((q - p) * np.log(q / p)))
    assert np.mean(psi_lower_bound(psi(ref, cur), ref, cur) > population_psi) <= limit
    population_js = float(jensenshannon(p, q, base=2))
    assert np.mean(js_lower_bound(js_distance(ref, cur), ref, cur) > population_js) <= limit
    population_w = float(np.sqrt(np.sum((q - p) ** 2 / p)))
    if population_w <= 0.2:  # near the default floor 0.1, where the bound decides (see its docstring)
        sample_w = np.sqrt(np.sum((cur / sizes[1] - smoothed_proportions(ref, floor=0.0)) ** 2
                                  / smoothed_proportions(ref, floor=0.0), axis=-1))
        assert np.mean(cohens_w_lower_bound(sample_w, ref, cur) > population_w) <= limit


def test_lower_bounds_are_below_their_values_and_nan_without_counts() -> None:
    """Every bound lies in [0, value]; an empty window gives nan, without warnings."""
    ref, cur = np.array([[500, 300, 200], [500, 300, 200]]), np.array([[300, 300, 400], [0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bound, value in ((psi_lower_bound, psi(ref, cur)), (js_lower_bound, js_distance(ref, cur)),
                             (ks_lower_bound, ks_from_grid(ref, cur).statistic),
                             (cohens_w_lower_bound, np.array([0.5, np.nan]))):
            got = bound(value, ref, cur)
            assert 0 <= got[0] <= value[0] and math.isnan(got[1]), bound.__name__


def test_floor_sentence_quotes_the_bound_it_compared() -> None:
    """The sentence gives the value, the bound and the floor; rounding never makes it read 0.050 < 0.050."""
    assert floor_sentence("ks", 0.0532, 0.0214, 0.05) == "ks 0.053 (lower bound 0.021) < floor 0.050"
    assert floor_sentence("js", 0.2, 0.11, 0.1) == "js 0.200 (lower bound 0.110) >= floor 0.100"
    assert floor_sentence("ks", 0.09, 0.04996, 0.05) == "ks 0.090 (lower bound 0.04996) < floor 0.05"
