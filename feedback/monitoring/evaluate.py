"""Judging windows: drift of every series and performance of the labelled predictions, from the accumulators.

Drift. Each series of each window is compared with the version's reference: PSI and the
Jensen-Shannon distance on the decile bins (categories for a categorical series), the KS
statistic on the fine grid for a numeric series, the chi-square test of homogeneity for a
categorical one. A series is flagged ``drift`` when the change is both

* significant: its KS or chi-square p-value, adjusted with Holm's method over every test of
  the evaluation (all series, windows and segments of the version), is below ``alpha``; Holm
  controls the chance of any false alarm in the whole table under any dependence between the
  tests (the windows share one reference), and
* large enough to matter: the lower end of the ``confidence`` interval (the level of every
  interval the monitor reports, 0.95 by default) of the KS statistic, PSI, Jensen-Shannon
  distance or, for a categorical series, Cohen's w reaches its floor.
  Significance alone flags trivial shifts once windows hold tens of thousands of rows; the
  effect floor alone misses real shifts in small windows or cries wolf in them. The floor is
  judged on the bound, not on the sample value, because the sample value of every one of these
  statistics is biased up by noise that shrinks with the window: compared raw, a 0.1 sd shift
  (population KS 0.040, floor 0.05) read as drift in a quarter of the windows of 1,000-2,000
  rows and in none of 20,000. The bounds (feedback/monitoring/stats.py) count both samples,
  the reference's and the window's, so a floor suppresses the same population effects at every
  window size. Significance and the floor stay separate conditions: Holm corrects the p-values
  only.

A window with fewer than ``min_rows`` rows (``min_labels`` for the label) is ``unjudged``.

Performance. Each window's metrics come from its aggregates (feedback/monitoring/performance.py) with
confidence intervals. A window is judged once it has ``min_labels`` labels and
``min_label_coverage``; the version's baseline is its earliest ``performance.baseline_windows``
judged windows pooled,
and a later window is ``degraded`` when its whole confidence interval is worse than the
baseline by ``max_drop`` (or than the absolute ``performance.threshold``).

A version the retrain worker trained carries its tested level: the main metric on the recent test window, rows
the recipe never learnt, with its interval (``lineage.expected``). Its baseline is never worse than that level's
unfavourable bound: when its first windows fall short of it, the concept it was tested on has already gone (a
refit trained on the stale concept just as an old one returned), and taking those windows as the level would
hide the change. The first windows are then judged like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from feedback.config import ModelConfig
from feedback.monitoring import performance, stats
from feedback.monitoring.profile import LABEL, ROWS, ReferenceProfile, SeriesProfile

SIGNIFICANCE = {"numeric": "ks", "categorical": "chi2"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftResult:
    """One metric of one series in one window, or (metric ``drift``) the series' verdict."""

    segment: str
    window_start: datetime
    window_end: datetime
    feature: str
    metric: str
    value: float | None
    threshold: float | None
    p_value: float | None
    status: str
    sample_size: int
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceResult:
    """One performance metric of one window, with its confidence interval and verdict."""

    segment: str
    window_start: datetime
    window_end: datetime
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float | None
    status: str
    sample_size: int
    label_coverage: float | None
    sentence: str


@dataclass(slots=True, kw_only=True)
class Evaluation:
    """Everything one evaluation of a model version found."""

    model_name: str
    model_version: str
    evaluated_at: datetime
    drift: list[DriftResult] = field(default_factory=list)
    performance: list[PerformanceResult] = field(default_factory=list)
    tests: int = 0
    #: the main metric's baseline (the version's earliest judged windows pooled, or its tested level), if any
    baseline: float | None = None
    #: the level the version's earliest judged windows show, pooled (None before its first judged window): what
    #: it reached in production, for "recovered after a change?" (the tested level would answer before any window)
    observed: float | None = None


@dataclass(frozen=True, slots=True)
class Baseline:
    """The level a version's windows are judged against: its earliest judged windows pooled (``starts``), or
    the unfavourable bound of its tested level when that is better (``starts`` empty)."""

    value: float
    starts: tuple[datetime, ...]
    source: str
    observed: float | None = None  # the earliest judged windows' pooled level, whichever is the baseline


@dataclass(frozen=True, slots=True)
class WindowData:
    """The accumulators of the evaluated windows of one segment: counts per series, (W, bins)."""

    starts: tuple[datetime, ...]
    counts: Mapping[str, np.ndarray]
    rows: np.ndarray  # (W,)
    perf: tuple[Mapping[str, int], ...]  # per window


def evaluate_drift(
    config: ModelConfig, profile: ReferenceProfile, segments: Mapping[str, WindowData]
) -> tuple[list[DriftResult], int]:
    """Drift results for every series, window and segment; returns them and the number of tests corrected for."""
    arrays = drift_arrays(config, profile, segments)
    tests = int(np.count_nonzero(arrays.judged))
    out: list[DriftResult] = []
    window = timedelta(seconds=config.window_s)
    for j, (segment, name) in enumerate(arrays.rows):
        series = profile.series[name]
        for i, start in enumerate(segments[segment].starts):
            out.extend(drift_cell_rows(config, segment, start, window, series, arrays.cell(j, i), tests))
    return out, tests


@dataclass(frozen=True, slots=True)
class DriftArrays:
    """Every drift number of an evaluation: row j is (segment, series) ``rows[j]``, column i window i."""

    rows: tuple[tuple[str, str], ...]
    n: np.ndarray
    psi: np.ndarray
    js: np.ndarray
    stat: np.ndarray  # KS statistic or chi-square statistic
    effect: np.ndarray  # KS statistic or Cohen's w
    psi_low: np.ndarray  # lower confidence bounds of psi, js and effect: what the floors are compared with
    js_low: np.ndarray
    effect_low: np.ndarray
    p_adj: np.ndarray  # after Holm over every judged test
    judged: np.ndarray
    drift: np.ndarray  # significant and past an effect floor

    def cell(self, j: int, i: int) -> dict[str, Any]:
        """What :func:`drift_cell_rows` reads of row ``j``, window ``i``."""
        return {k: getattr(self, k)[j, i] for k in _CELL}


_CELL = ("n", "psi", "js", "stat", "effect", "psi_low", "js_low", "effect_low", "p_adj", "judged")


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A profile's series stacked for vectorised evaluation (numeric and categorical apart)."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    num_ref_fine: np.ndarray  # (F, B) value bins, padded
    num_valid_fine: np.ndarray
    num_to_coarse: np.ndarray  # (F, B + 1, C): fine bins (with the missing bin last) to PSI bins
    num_ref_coarse: np.ndarray  # (F, C)
    num_valid_coarse: np.ndarray
    num_fine_width: int
    cat_ref: np.ndarray  # (F, K) padded
    cat_valid: np.ndarray


#: prepared profiles by identity, oldest first; a round over more versions than this rebuilds them all
_PREPARED: dict[int, tuple[ReferenceProfile, _Prepared]] = {}
_PREPARED_MAX = 1024


def _prepare(profile: ReferenceProfile) -> _Prepared:
    hit = _PREPARED.get(id(profile))
    if hit is not None and hit[0] is profile:
        return hit[1]
    numeric = tuple(n for n, s in profile.series.items() if s.kind == "numeric")
    categorical = tuple(n for n, s in profile.series.items() if s.kind == "categorical")
    width = max((profile.series[n].n_bins - 1 for n in numeric), default=1)
    coarse_width = max((int(profile.series[n].fine_to_coarse().max()) + 1 for n in numeric), default=1)
    ref_fine = np.zeros((len(numeric), width))
    valid_fine = np.zeros((len(numeric), width), dtype=bool)
    to_coarse = np.zeros((len(numeric), width + 1, coarse_width))
    valid_coarse = np.zeros((len(numeric), coarse_width), dtype=bool)
    for f, name in enumerate(numeric):
        s = profile.series[name]
        values = s.n_bins - 1
        ref_fine[f, :values] = s.counts[:-1]
        valid_fine[f, :values] = True
        mapping = s.fine_to_coarse()
        to_coarse[f, np.arange(values), mapping[:-1]] = 1.0
        to_coarse[f, width, mapping[-1]] = 1.0  # the missing bin sits in the last row
        valid_coarse[f, : int(mapping.max()) + 1] = True
    ref_all = np.concatenate((ref_fine, np.array(
        [[profile.series[n].counts[-1]] for n in numeric]).reshape(len(numeric), 1)), axis=1)
    ref_coarse = np.einsum("fb,fbc->fc", ref_all, to_coarse)
    cat_width = max((profile.series[n].n_bins for n in categorical), default=1)
    cat_ref = np.zeros((len(categorical), cat_width))
    cat_valid = np.zeros((len(categorical), cat_width), dtype=bool)
    for f, name in enumerate(categorical):
        s = profile.series[name]
        cat_ref[f, : s.n_bins] = s.counts
        cat_valid[f, : s.n_bins] = True
    prepared = _Prepared(numeric, categorical, ref_fine, valid_fine, to_coarse, ref_coarse, valid_coarse, width,
                         cat_ref, cat_valid)
    if len(_PREPARED) >= _PREPARED_MAX:
        del _PREPARED[next(iter(_PREPARED))]  # the oldest: the round goes through the versions in one order
    _PREPARED[id(profile)] = (profile, prepared)
    return prepared


#: the raw statistics of one cell (one series of one window of one segment), in this order: what a round keeps of
#: a cell between rounds (feedback/monitoring/incremental.py), and all it needs to judge the cell again
RAW = ("n", "psi", "js", "stat", "effect", "psi_low", "js_low", "effect_low", "p")


def cell_widths(profile: ReferenceProfile) -> tuple[int, int]:
    """The padded widths :func:`numeric_statistics` and :func:`categorical_statistics` expect of a cell's counts."""
    prep = _prepare(profile)
    return prep.num_fine_width + 1, prep.cat_ref.shape[1]


def series_order(profile: ReferenceProfile) -> tuple[str, ...]:
    """The profile's series in the order of a segment's rows in :class:`DriftArrays`: numeric, then categorical."""
    prep = _prepare(profile)
    return prep.numeric + prep.categorical


def drift_arrays(
    config: ModelConfig, profile: ReferenceProfile, segments: Mapping[str, WindowData]
) -> DriftArrays:
    """Every drift statistic, Holm-adjusted p-value and verdict, computed on whole arrays at once."""
    raw = {segment: segment_statistics(config, profile, data) for segment, data in segments.items()}
    return judge_drift(config, profile, raw)


def segment_statistics(config: ModelConfig, profile: ReferenceProfile, data: WindowData) -> np.ndarray:
    """The raw statistics (:data:`RAW`) of every series of one segment's windows: an array (RAW, series, windows)
    with the series in :func:`series_order`."""
    prep = _prepare(profile)
    w = len(data.starts)
    out = np.empty((len(RAW), len(prep.numeric) + len(prep.categorical), w))
    if prep.numeric:
        cur = np.zeros((len(prep.numeric), w, prep.num_fine_width + 1))
        for f, name in enumerate(prep.numeric):
            c = data.counts.get(name)
            if c is not None:
                cur[f, :, : c.shape[1] - 1] = c[:, :-1]
                cur[f, :, -1] = c[:, -1]
        index = np.repeat(np.arange(len(prep.numeric)), w)
        out[:, : len(prep.numeric)] = numeric_statistics(config, profile, index, cur.reshape(-1, cur.shape[-1])
                                                         ).reshape(len(RAW), len(prep.numeric), w)
    if prep.categorical:
        cur = np.zeros((len(prep.categorical), w, prep.cat_ref.shape[1]))
        for f, name in enumerate(prep.categorical):
            c = data.counts.get(name)
            if c is not None:
                cur[f, :, : c.shape[1]] = c
        index = np.repeat(np.arange(len(prep.categorical)), w)
        out[:, len(prep.numeric):] = categorical_statistics(config, profile, index, cur.reshape(-1, cur.shape[-1])
                                                            ).reshape(len(RAW), len(prep.categorical), w)
    return out


def numeric_statistics(config: ModelConfig, profile: ReferenceProfile, index: np.ndarray, cur: np.ndarray
                       ) -> np.ndarray:
    """The raw statistics (RAW, K) of K numeric cells: ``cur`` (K, fine bins + 1) holds each cell's counts on the
    padded fine grid with the missing values last, ``index`` (K,) its series' place among the numeric ones.

    Every operation works along the bins of one cell, so a cell's statistics do not depend on which other cells
    are computed with it: a round that computes only the changed cells gets the numbers of a whole evaluation."""
    prep = _prepare(profile)
    _check_counts(cur, profile)
    fine_ref, fine_valid, values = prep.num_ref_fine[index], prep.num_valid_fine[index], cur[:, :-1]
    ks = stats.ks_from_grid(fine_ref, values, method="stephens", bound=False, valid=fine_valid, trusted=True)
    coarse = np.empty((cur.shape[0], prep.num_ref_coarse.shape[1]))
    for f in np.unique(index):  # integer counts: every order of summing them gives the same exact sums
        rows = index == f
        coarse[rows] = cur[rows] @ prep.num_to_coarse[f]
    psi, js, psi_low, js_low = _divergences(prep.num_ref_coarse[index], coarse, prep.num_valid_coarse[index],
                                            config.confidence)
    effect_low = stats.ks_lower_bound(ks.statistic, fine_ref, values, valid=fine_valid, confidence=config.confidence)
    return np.stack((cur.sum(axis=-1), psi, js, ks.statistic, ks.statistic, psi_low, js_low, effect_low, ks.pvalue))


def categorical_statistics(config: ModelConfig, profile: ReferenceProfile, index: np.ndarray, cur: np.ndarray
                           ) -> np.ndarray:
    """The raw statistics (RAW, K) of K categorical cells: ``cur`` (K, categories) padded, ``index`` (K,) each
    cell's series' place among the categorical ones (as :func:`numeric_statistics`)."""
    prep = _prepare(profile)
    _check_counts(cur, profile)
    ref, valid = prep.cat_ref[index], prep.cat_valid[index]
    chi = stats.chi_square(ref, cur, valid=valid, trusted=True)
    psi, js, psi_low, js_low = _divergences(ref, cur, valid, config.confidence)
    w = cohens_w(ref, cur, valid=valid)
    effect_low = stats.cohens_w_lower_bound(w, ref, cur, valid=valid, confidence=config.confidence)
    return np.stack((cur.sum(axis=-1), psi, js, chi.statistic, w, psi_low, js_low, effect_low, chi.pvalue))


def judge_drift(config: ModelConfig, profile: ReferenceProfile, raw: Mapping[str, np.ndarray]) -> DriftArrays:
    """Holm over every judged test and the verdicts, from each segment's raw statistics (RAW, series, windows)."""
    order = series_order(profile)
    rows = tuple((segment, name) for segment in raw for name in order)
    if not rows or not next(iter(raw.values())).shape[-1]:
        empty = np.zeros((0, 0))
        return DriftArrays((), empty, empty, empty, empty, empty, empty, empty, empty, empty, empty.astype(bool),
                           empty.astype(bool))
    got = dict(zip(RAW, np.concatenate(list(raw.values()), axis=1), strict=True))
    minimum = np.array([config.min_labels if name == LABEL else config.min_rows for _, name in rows])[:, None]
    judged = got["n"] >= minimum
    p_adj = stats.holm(np.where(judged, got["p"], np.nan))
    th = [config.thresholds_for(name) for _, name in rows]
    kinds = [profile.series[name].kind for _, name in rows]
    psi_th = np.array([t.psi for t in th])[:, None]
    js_th = np.array([t.js for t in th])[:, None]
    effect_th = np.array([t.ks if k == "numeric" else t.chi2_effect for t, k in zip(th, kinds, strict=True)])[:, None]
    with np.errstate(invalid="ignore"):
        large = (got["psi_low"] >= psi_th) | (got["js_low"] >= js_th) | (got["effect_low"] >= effect_th)
        drift = judged & (p_adj < config.alpha) & large
    return DriftArrays(rows, got["n"], got["psi"], got["js"], got["stat"], got["effect"], got["psi_low"],
                       got["js_low"], got["effect_low"], p_adj, judged, drift)


def _divergences(ref: np.ndarray, cur: np.ndarray, valid: np.ndarray, confidence: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PSI and the Jensen-Shannon distance of a block of cells, with the lower ends of their intervals."""
    psi = stats.psi(ref, cur, valid=valid, trusted=True)
    js = stats.js_distance(ref, cur, valid=valid, trusted=True)
    return (psi, js, stats.psi_lower_bound(psi, ref, cur, valid=valid, confidence=confidence),
            stats.js_lower_bound(js, ref, cur, valid=valid, confidence=confidence))


def _check_counts(counts: np.ndarray, profile: ReferenceProfile) -> None:
    # once per round instead of in every statistic: a negative count means the accumulators are broken
    if counts.size and counts.min() < 0:
        msg = (f"window counts of {profile.model_name} {profile.model_version} hold a negative count; "
               "reinstall the profile (pitstop reference import) to recount them")
        raise ValueError(msg)


def cohens_w(ref_counts: np.ndarray, cur_counts: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Cohen's w of the current proportions against the reference's (smoothed, no floor), per window.

    An effect size for the chi-square test that does not grow with the sample: 0.1 is "small".

    >>> round(float(cohens_w(np.array([50, 50]), np.array([[60, 40]]))[0]), 6)
    0.2
    """
    p = stats.smoothed_proportions(ref_counts, floor=0.0, valid=valid)
    n = cur_counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = cur_counts / n
        terms = np.where(p > 0, (q - p) ** 2 / np.where(p > 0, p, 1.0), 0.0)
        return np.sqrt(np.sum(terms, axis=-1))


def drift_cell_rows(
    config: ModelConfig, segment: str, start: datetime, window: timedelta, series: SeriesProfile,
    m: Mapping[str, Any], tests: int, *, end: datetime | None = None,
) -> list[DriftResult]:
    """The result rows of one series in one window of one segment: its verdict (metric ``drift``) and the metrics
    behind it, from its statistics ``m`` (:meth:`DriftArrays.cell`) and the number of tests Holm corrected for."""
    th = config.thresholds_for(series.name)
    sig_name = SIGNIFICANCE[series.kind]
    effect_name, effect_th = ("ks", th.ks) if series.kind == "numeric" else ("cohens_w", th.chi2_effect)
    n = int(m["n"])
    base = {"segment": segment, "window_start": start, "window_end": end or start + window, "feature": series.name,
            "sample_size": n}
    if not m["judged"]:
        minimum = config.min_labels if series.name == LABEL else config.min_rows
        return [DriftResult(
            **base, metric="drift", value=None, threshold=None, p_value=None, status="unjudged",
            sentence=f"{series.name}: not judged, {n} rows < minimum {minimum}",
        )]
    psi, js, eff, p_adj = (float(m[k]) for k in ("psi", "js", "effect", "p_adj"))
    floors = {  # metric: (sample value, lower bound, floor)
        "psi": (psi, float(m["psi_low"]), th.psi),
        "js": (js, float(m["js_low"]), th.js),
        effect_name: (eff, float(m["effect_low"]), effect_th),
    }
    said = {k: stats.floor_sentence(k, *v) for k, v in floors.items()}
    significant = p_adj < config.alpha
    large = {k: low >= floor for k, (_, low, floor) in floors.items()}
    drifted = significant and any(large.values())
    if drifted:
        why = ", ".join(said[k] for k in floors if large[k])
        sentence = (f"{series.name}: drift, {why}; {sig_name} p-value {p_adj:.3g} < {config.alpha} "
                    f"after Holm over {tests} tests")
    elif significant:
        sentence = (f"{series.name}: stable, significant ({sig_name} p-value {p_adj:.3g}) but below every "
                    f"effect floor ({'; '.join(said.values())})")
    else:
        sentence = (f"{series.name}: stable, {sig_name} p-value {p_adj:.3g} >= {config.alpha} "
                    f"after Holm over {tests} tests")
    rows = [
        DriftResult(**base, metric="drift", value=psi, threshold=th.psi, p_value=p_adj,
                    status="drift" if drifted else "stable", sentence=sentence),
        DriftResult(**base, metric="psi", value=psi, threshold=th.psi, p_value=None,
                    status=stats.psi_band(psi), sentence=said["psi"]),
        DriftResult(**base, metric="js", value=js, threshold=th.js, p_value=None,
                    status="drift" if large["js"] else "stable", sentence=said["js"]),
        DriftResult(**base, metric=effect_name, value=eff, threshold=effect_th, p_value=p_adj,
                    status="drift" if large[effect_name] and significant else "stable", sentence=said[effect_name]),
    ]
    if sig_name == "chi2":
        stat = float(m["stat"])
        rows.append(DriftResult(**base, metric="chi2", value=stat, threshold=None, p_value=p_adj,
                                status="drift" if significant else "stable",
                                sentence=f"chi-square {stat:.1f}, p-value {p_adj:.3g} after Holm"))
    return rows


# --- performance ------------------------------------------------------------------------------------


def metrics_of(config: ModelConfig, acc: Mapping[str, int]) -> dict[str, performance.MetricValue]:
    if config.multiclass:
        return performance.multiclass_metrics(acc, confidence=config.confidence)
    if config.task == "classification":
        return performance.classification_metrics(acc, confidence=config.confidence)
    return performance.regression_metrics(acc, confidence=config.confidence)


def judged_performance(config: ModelConfig, acc: Mapping[str, int], rows: int) -> bool:
    n = int(acc.get("n", 0))
    return n >= config.min_labels and rows > 0 and n / rows >= config.min_label_coverage


def evaluate_performance(
    config: ModelConfig, segment: str, data: WindowData, baseline: Baseline | None,
) -> list[PerformanceResult]:
    """Performance results for every window of one segment against the version's baseline."""
    window = timedelta(seconds=config.window_s)
    limit = performance_limit(config, baseline)
    out: list[PerformanceResult] = []
    for i, start in enumerate(data.starts):
        acc, rows = data.perf[i], int(data.rows[i])
        metrics = metrics_of(config, acc) if judged_performance(config, acc, rows) else {}
        out.extend(performance_window_rows(config, segment, start, window, acc, rows, baseline, limit, metrics))
    return out


@dataclass(frozen=True, slots=True)
class Limit:
    """The level below (above, for an error) which a window's main metric is degraded, and how to say it."""

    value: float | None
    text: str


def performance_limit(config: ModelConfig, baseline: Baseline | None) -> Limit:
    if config.performance.threshold is not None:
        return Limit(config.performance.threshold, f"the limit {config.performance.threshold:.4g}")
    if baseline is not None:
        factor = (1 - config.performance.max_drop) if config.higher_is_better else (1 + config.performance.max_drop)
        limit = baseline.value * factor
        return Limit(limit, f"{factor:.2f} x baseline {baseline.value:.4g} ({baseline.source}) = {limit:.4g}")
    return Limit(None, "no baseline yet")


def performance_window_rows(
    config: ModelConfig, segment: str, start: datetime, window: timedelta, acc: Mapping[str, int], rows: int,
    baseline: Baseline | None, limit: Limit, metrics: Mapping[str, performance.MetricValue],
) -> list[PerformanceResult]:
    """The performance rows of one window of one segment: its metrics (``metrics``, :func:`metrics_of` its
    aggregates ``acc``) with their intervals, the main one judged against ``limit``."""
    n = int(acc.get("n", 0))
    coverage = n / rows if rows else None
    common = {"segment": segment, "window_start": start, "window_end": start + window, "sample_size": n,
              "label_coverage": coverage}
    if not judged_performance(config, acc, rows):
        cov = "n/a" if coverage is None else f"{coverage:.0%}"
        return [PerformanceResult(
            **common, metric=config.metric, value=None, ci_low=None, ci_high=None, threshold=limit.value,
            status="unjudged",
            sentence=(f"{config.metric}: not judged, {n} labels (minimum {config.min_labels}), coverage {cov} "
                      f"(minimum {config.min_label_coverage:.0%})"),
        )]
    out: list[PerformanceResult] = []
    in_baseline = baseline is not None and start in baseline.starts
    for name, mv in metrics.items():
        is_main = name == config.metric
        status, sentence = "ok", f"{name} {mv.value:.4g} [{mv.ci_low:.4g}, {mv.ci_high:.4g}]"
        if is_main and in_baseline:
            status, sentence = "baseline", f"{sentence}: part of the baseline"
        elif is_main and limit.value is not None:
            worse = mv.ci_high < limit.value if config.higher_is_better else mv.ci_low > limit.value
            op = "<" if config.higher_is_better else ">"
            bound = mv.ci_high if config.higher_is_better else mv.ci_low
            if worse:
                status = "degraded"
                sentence = f"{sentence}: degraded, CI bound {bound:.4g} {op} {limit.text}"
            else:
                sentence = f"{sentence}: ok against {limit.text}"
        out.append(PerformanceResult(
            **common, metric=name, value=mv.value, ci_low=mv.ci_low, ci_high=mv.ci_high,
            threshold=limit.value if is_main else None, status=status, sentence=sentence,
        ))
    return out


def baseline_of(
    config: ModelConfig, windows: Sequence[tuple[datetime, Mapping[str, int], int]],
    expected: Mapping[str, Any] | None = None,
) -> Baseline | None:
    """The version's baseline: its earliest ``performance.baseline_windows`` judged windows pooled, unless its
    tested level (``expected``, as :func:`tested_level` records it) has an unfavourable bound better than
    theirs, or there are none yet: then that bound."""
    acc: dict[str, int] = {}
    starts: list[datetime] = []
    for start, stats_, rows in sorted(windows, key=lambda w: w[0]):
        if judged_performance(config, stats_, rows):
            performance.add(acc, stats_)
            starts.append(start)
            if len(starts) == config.performance.baseline_windows:
                break
    found = metrics_of(config, acc).get(config.metric) if acc else None
    observed = None if found is None else found.value
    pooled = None if observed is None else Baseline(observed, tuple(starts), "its first windows", observed)
    floor = _tested_floor(config, expected)
    if floor is None:
        return pooled
    if pooled is None or (pooled.value < floor if config.higher_is_better else pooled.value > floor):
        n = int(expected.get("n", 0)) if expected else 0
        return Baseline(floor, (), f"tested on {n:,} recent labels", observed)
    return pooled


def _tested_floor(config: ModelConfig, expected: Mapping[str, Any] | None) -> float | None:
    """The unfavourable bound of a tested level of the model's main metric, or None (none, another metric)."""
    if not expected or expected.get("metric") != config.metric:
        return None
    bound = expected.get("ci_low" if config.higher_is_better else "ci_high")
    return float(bound) if isinstance(bound, int | float) and np.isfinite(bound) else None


def tested_level(config: ModelConfig, acc: Mapping[str, int]) -> dict[str, Any] | None:
    """The main metric of a tested model's aggregates with its interval, as the registry keeps it in
    ``lineage.expected`` (None when the metric cannot be computed from them)."""
    found = metrics_of(config, acc).get(config.metric) if acc else None
    if found is None or not all(np.isfinite([found.value, found.ci_low, found.ci_high])):
        return None
    return {"metric": config.metric, "value": found.value, "ci_low": found.ci_low, "ci_high": found.ci_high,
            "n": found.n}


def to_window_data(
    starts: Sequence[datetime], counts: Mapping[tuple[datetime, str], Sequence[int]],
    perf: Mapping[datetime, Mapping[str, int]], profile: ReferenceProfile,
) -> WindowData:
    """Arrange one segment's stored rows as arrays over the windows ``starts``."""
    index = {s: i for i, s in enumerate(starts)}
    arrays: dict[str, np.ndarray] = {}
    for name, series in profile.series.items():
        arrays[name] = np.zeros((len(starts), series.n_bins), dtype=np.int64)
    rows = np.zeros(len(starts), dtype=np.int64)
    for (start, name), c in counts.items():
        i = index.get(start)
        if i is None:
            continue
        if name == ROWS:
            rows[i] = c[0]
        elif name in arrays and len(c) == arrays[name].shape[1]:
            arrays[name][i] = c
    return WindowData(tuple(starts), arrays, rows, tuple(perf.get(s, {}) for s in starts))


def summary(evaluation: Evaluation, config: ModelConfig) -> dict[str, Any]:
    """The compact event published on the monitoring topic (schemas/monitoring.schema.json)."""
    all_drift = [r for r in evaluation.drift if r.segment == "*" and r.metric == "drift"]
    latest = max((r.window_start for r in all_drift if r.status != "unjudged"), default=None)
    in_latest = [r for r in all_drift if r.window_start == latest]
    flagged = sorted(r.feature for r in in_latest if r.status == "drift")
    perf = [r for r in evaluation.performance if r.segment == "*" and r.metric == config.metric]
    judged = [r for r in perf if r.status != "unjudged"]
    last_perf = max(judged, key=lambda r: r.window_start) if judged else None
    return {
        "schema_version": 1,
        "model_name": evaluation.model_name,
        "model_version": evaluation.model_version,
        "evaluated_at": evaluation.evaluated_at.isoformat(),
        "drift": {
            "window_start": latest.isoformat() if latest else None,
            "status": "unjudged" if latest is None else ("drift" if flagged else "stable"),
            "flagged": flagged,
            "tests": evaluation.tests,
            "windows_flagged": len({(r.segment, r.window_start) for r in evaluation.drift
                                    if r.metric == "drift" and r.status == "drift"}),
        },
        "performance": None if last_perf is None else {
            "window_start": last_perf.window_start.isoformat(),
            "metric": last_perf.metric,
            "value": last_perf.value,
            "ci_low": last_perf.ci_low,
            "ci_high": last_perf.ci_high,
            "status": last_perf.status,
            "sample_size": last_perf.sample_size,
            "label_coverage": last_perf.label_coverage,
        },
        "degraded_windows": sum(1 for r in perf if r.status == "degraded"),
    }
