"""Drift and performance verdicts from window counts: no false alarms on stable data, the shifted set exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from feedback.config import parse_config
from feedback.monitoring import performance
from feedback.monitoring.evaluate import WindowData, baseline_of, evaluate_drift, evaluate_performance
from feedback.monitoring.profile import build_profile

CONFIG = parse_config("""
[models.m]
task = "classification"
positive_class = 1
window = "1h"
span = 24
""").models["m"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NUMERIC = [f"n{i:02d}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
CATS = np.array(["a", "b", "c", "d"])
CAT_P = np.array([0.4, 0.3, 0.2, 0.1])


def sample(rng: np.random.Generator, n: int, shifted: frozenset[str] = frozenset()) -> dict[str, list]:
    out: dict[str, list] = {}
    for i, name in enumerate(NUMERIC):
        draw = [rng.normal, rng.lognormal, rng.exponential][i % 3]
        x = draw(size=n) if draw is not rng.exponential else draw(1.0, size=n)
        sd = {0: 1.0, 1: np.sqrt((np.e - 1) * np.e), 2: 1.0}[i % 3]
        if name in shifted:
            x = x + 0.2 * sd
        out[name] = (np.round(x, 1) if i == 14 else x).tolist()  # one with heavy ties
    for name in CATEGORICAL:
        p = np.array([0.35, 0.3, 0.2, 0.15]) if name in shifted else CAT_P
        out[name] = rng.choice(CATS, size=n, p=p).tolist()
    return out


def windows_of(profile, chunks: list[dict[str, list]]) -> WindowData:
    starts = tuple(T0 + timedelta(hours=i) for i in range(len(chunks)))
    counts = {
        name: np.stack([np.bincount(s.bin_values(c[name]), minlength=s.n_bins) for c in chunks])
        for name, s in profile.series.items()
    }
    rows = np.array([len(c[NUMERIC[0]]) for c in chunks])
    return WindowData(starts, counts, rows, tuple({} for _ in chunks))


def flagged(results) -> set[tuple[int, str]]:
    return {(r.window_start.hour + 24 * (r.window_start.day - 1), r.feature)
            for r in results if r.metric == "drift" and r.status == "drift"}


def test_stable_features_raise_no_alarm_over_many_windows() -> None:
    """20 stable features, 10 evaluations of 24 windows of 1,000 rows: not one drift verdict."""
    rng = np.random.default_rng(2026)
    profile = build_profile("m", "v1", sample(rng, 5000), {}, source="first 5000 predictions")
    alarms = []
    for _ in range(10):
        data = windows_of(profile, [sample(rng, 1000) for _ in range(24)])
        results, tests = evaluate_drift(CONFIG, profile, {"*": data})
        assert tests == 24 * 20
        alarms += [r.sentence for r in results if r.metric == "drift" and r.status == "drift"]
    assert alarms == []


def test_exactly_the_shifted_features_are_flagged() -> None:
    """0.2 SD shifts and a 5-point category move are flagged in every 5,000-row window; nothing else is."""
    rng = np.random.default_rng(7)
    shifted = frozenset({"n01", "n04", "n09", "n14", "c2"})
    profile = build_profile("m", "v1", sample(rng, 50_000), {}, source="import:test")
    chunks = [sample(rng, 5000) for _ in range(4)] + [sample(rng, 5000, shifted) for _ in range(4)]
    results, _ = evaluate_drift(CONFIG, profile, {"*": windows_of(profile, chunks)})
    assert flagged(results) == {(w, f) for w in range(4, 8) for f in shifted}


def test_small_windows_are_unjudged_not_healthy() -> None:
    """A window under the minimum says it was not judged, whatever its values."""
    rng = np.random.default_rng(1)
    profile = build_profile("m", "v1", sample(rng, 2000), {}, source="test")
    data = windows_of(profile, [sample(rng, 999, frozenset(NUMERIC))])
    results, tests = evaluate_drift(CONFIG, profile, {"*": data})
    verdicts = {r.status for r in results if r.metric == "drift"}
    assert verdicts == {"unjudged"} and tests == 0
    assert "999 rows < minimum 1000" in results[0].sentence


def _window(acc: float, n: int, rng: np.random.Generator) -> dict[str, int]:
    """The accuracy aggregates of ``n`` binary predictions right with probability ``acc``."""
    y = rng.integers(0, 2, n)
    yhat = np.where(rng.random(n) < acc, y, 1 - y)
    s: dict[str, int] = {}
    for c in performance.classification_contributions(y.tolist(), yhat.tolist(), [None] * n, positive=1):
        performance.add(s, c)
    return s


def test_performance_degrades_only_when_the_interval_clears_the_limit() -> None:
    """Accuracy 0.75 baseline; a 0.67 window of 2,000 labels is degraded, a 0.74 one is not."""
    rng = np.random.default_rng(3)
    early = [(T0 + timedelta(hours=i), _window(0.75, 2000, rng), 2000) for i in range(24)]
    baseline = baseline_of(CONFIG, early)
    assert baseline is not None and len(baseline.starts) == CONFIG.performance.baseline_windows
    later = [_window(0.67, 2000, rng), _window(0.74, 2000, rng), _window(0.5, 100, rng)]
    data = WindowData(tuple(T0 + timedelta(days=2, hours=i) for i in range(3)), {}, np.array([2000, 2000, 2000]),
                      tuple(later))
    results = [r for r in evaluate_performance(CONFIG, "*", data, baseline) if r.metric == "accuracy"]
    assert [r.status for r in results] == ["degraded", "ok", "unjudged"]


# --- effect floors judged on lower bounds, whatever the window's size ----------------------------------

SIZES = (1_000, 2_000, 5_000, 20_000, 100_000)
FLOOR_SEEDS = range(5)
KINDS = {f"x{i}": "numeric" for i in range(4)} | {f"k{i}": "categorical" for i in range(4)}
LEVELS = np.array([f"v{i:02d}" for i in range(20)])
LEVEL_P = (1.0 / np.arange(1, 21)) / np.sum(1.0 / np.arange(1, 21))


def moved_levels(w: float) -> np.ndarray:
    """The 20 level proportions moved to Cohen's w = ``w`` against LEVEL_P (alternate levels up and down)."""
    direction = np.where(np.arange(20) % 2 == 0, 1.0, -1.0) * LEVEL_P
    direction -= LEVEL_P * direction.sum()  # the moved proportions still sum to 1
    return LEVEL_P + w / np.sqrt(np.sum(direction**2 / LEVEL_P)) * direction


def floor_flags(reference_rows: int, sd_shift: float, w: float) -> dict[int, list[str]]:
    """Drift verdicts per window size: 4 normal features shifted by ``sd_shift`` sd and 4 categorical ones moved
    to Cohen's w, each window of each seed judged in an evaluation of its own (8 tests, Holm over them)."""
    rng = np.random.default_rng(reference_rows)
    columns = {name: (rng.normal(size=reference_rows) if kind == "numeric"
                      else rng.choice(LEVELS, size=reference_rows, p=LEVEL_P)).tolist() for name, kind in KINDS.items()}
    profile = build_profile("m", "v1", columns, KINDS, source="test")
    moved = moved_levels(w)
    out: dict[int, list[str]] = {}
    for m in SIZES:
        out[m] = []
        for seed in FLOOR_SEEDS:
            draw = np.random.default_rng([seed, m])
            counts = {}
            for name, s in profile.series.items():
                if s.kind == "numeric":
                    counts[name] = np.bincount(s.bin_values(draw.normal(sd_shift, 1.0, m)), minlength=s.n_bins)[None]
                else:  # the levels' counts directly, in the profile's bin order (all 20 levels are categories)
                    by_level = dict(zip(LEVELS, draw.multinomial(m, moved), strict=True))
                    counts[name] = np.array([[by_level[c] for c in s.categories] + [0, 0]])
            data = WindowData((T0,), counts, np.array([m]), ({},))
            results, _ = evaluate_drift(CONFIG, profile, {"*": data})
            out[m] += [r.sentence for r in results if r.metric == "drift" and r.status == "drift"]
    return out


def test_a_shift_below_every_floor_is_never_flagged_at_any_window_size() -> None:
    """0.1 sd (true KS 0.040, PSI 0.01, JS 0.04) and Cohen's w 0.05: never drift, from 1,000 to 100,000 rows."""
    for reference_rows in (5_000, 50_000):
        flags = floor_flags(reference_rows, sd_shift=0.1, w=0.05)
        assert {m: f for m, f in flags.items() if f} == {}, reference_rows


def test_a_shift_above_the_floors_is_flagged_at_every_window_size() -> None:
    """0.5 sd (true KS 0.197, PSI 0.25, JS 0.21) and Cohen's w 0.3: drift in every window from the minimum size up."""
    for reference_rows in (5_000, 50_000):
        flags = floor_flags(reference_rows, sd_shift=0.5, w=0.3)
        assert {m: len(f) for m, f in flags.items()} == {m: 8 * len(FLOOR_SEEDS) for m in SIZES}, reference_rows


def test_a_significant_shift_below_the_floors_says_which_bounds_it_compared() -> None:
    """0.1 sd at 100,000 rows: significant, and the sentence quotes each bound, the KS one the DKW band's."""
    rng = np.random.default_rng(11)
    profile = build_profile("m", "v1", {"x": rng.normal(size=50_000).tolist()}, {}, source="test")
    s = profile.series["x"]
    counts = {"x": np.bincount(s.bin_values(rng.normal(0.1, 1.0, 100_000)), minlength=s.n_bins)[None]}
    results, _ = evaluate_drift(CONFIG, profile, {"*": WindowData((T0,), counts, np.array([100_000]), ({},))})
    by_metric = {r.metric: r for r in results}
    ks = by_metric["ks"].value
    low = max(0.0, ks - np.sqrt(np.log(2 / 0.05) / 2 * (1 / 50_000 + 1 / 100_000)))
    assert by_metric["drift"].status == "stable"
    assert "but below every effect floor (psi " in by_metric["drift"].sentence
    assert f"ks {ks:.3f} (lower bound {low:.3f}) < floor 0.050" in by_metric["drift"].sentence
    assert by_metric["ks"].sentence == f"ks {ks:.3f} (lower bound {low:.3f}) < floor 0.050"


def test_a_drift_sentence_quotes_the_bound_that_passed_the_floor() -> None:
    """0.5 sd at 5,000 rows: drift, and its sentence gives the KS value, the bound and the floor."""
    rng = np.random.default_rng(12)
    profile = build_profile("m", "v1", {"x": rng.normal(size=5_000).tolist()}, {}, source="test")
    s = profile.series["x"]
    counts = {"x": np.bincount(s.bin_values(rng.normal(0.5, 1.0, 5_000)), minlength=s.n_bins)[None]}
    results, _ = evaluate_drift(CONFIG, profile, {"*": WindowData((T0,), counts, np.array([5_000]), ({},))})
    drift = next(r for r in results if r.metric == "drift")
    assert drift.status == "drift"
    assert "x: drift, psi " in drift.sentence and "(lower bound 0.1" in drift.sentence
    assert ">= floor 0.050; ks p-value" in drift.sentence


def test_the_baseline_is_never_worse_than_the_tested_levels_bound() -> None:
    """First windows at 0.67 after a test at 0.80 [0.78, 0.82]: the baseline is 0.78 and those windows are judged
    (degraded); first windows at 0.80 after a test at 0.74 [0.72, 0.76] stay the baseline; a tested level of
    another metric, or without a finite bound, is ignored."""
    rng = np.random.default_rng(5)

    def window(acc: float, n: int = 2000) -> dict[str, int]:
        return _window(acc, n, rng)

    tested = {"metric": "accuracy", "value": 0.80, "ci_low": 0.78, "ci_high": 0.82, "n": 3000}
    poor = [(T0 + timedelta(hours=i), window(0.67), 2000) for i in range(6)]
    baseline = baseline_of(CONFIG, poor, tested)
    assert baseline is not None and baseline.value == 0.78 and baseline.starts == ()
    data = WindowData(tuple(w[0] for w in poor), {}, np.array([2000] * 6), tuple(w[1] for w in poor))
    statuses = {r.status for r in evaluate_performance(CONFIG, "*", data, baseline) if r.metric == "accuracy"}
    assert statuses == {"degraded"}
    assert baseline_of(CONFIG, [], tested).value == 0.78  # no judged window yet: the tested level alone

    good = [(T0 + timedelta(hours=i), window(0.80), 2000) for i in range(6)]
    kept = baseline_of(CONFIG, good, {**tested, "value": 0.74, "ci_low": 0.72, "ci_high": 0.76})
    assert kept is not None and len(kept.starts) == CONFIG.performance.baseline_windows and kept.value > 0.78
    for ignored in ({**tested, "metric": "f1"}, {**tested, "ci_low": None}, {**tested, "ci_low": float("nan")}):
        assert baseline_of(CONFIG, poor, ignored).starts != ()


def test_a_cells_statistics_do_not_depend_on_the_cells_computed_with_it() -> None:
    """Every statistic of a cell (one series in one window) works along its own bins only: computed alone, or with
    any other cells, it is the same to the bit as in a whole evaluation of 24 windows. A round that computes only
    the changed cells (feedback/monitoring/incremental.py) relies on it."""
    from feedback.monitoring.evaluate import (
        _prepare,
        categorical_statistics,
        numeric_statistics,
        segment_statistics,
        series_order,
    )

    rng = np.random.default_rng(11)
    profile = build_profile("m", "v1", sample(rng, 5000), {}, source="first 5000 predictions")
    data = windows_of(profile, [sample(rng, int(rng.integers(50, 2000)), frozenset({"n03", "c1"}) if i % 5 else
                                       frozenset()) for i in range(24)])
    whole = segment_statistics(CONFIG, profile, data)
    prep = _prepare(profile)
    order = series_order(profile)
    for _ in range(20):
        cells = [(int(j), int(i)) for j, i in zip(rng.integers(0, len(order), 7), rng.integers(0, 24, 7),
                                                  strict=True)]
        for kind, compute in (("numeric", numeric_statistics), ("categorical", categorical_statistics)):
            mine = [(j, i) for j, i in cells if profile.series[order[j]].kind == kind]
            if not mine:
                continue
            offset = 0 if kind == "numeric" else len(prep.numeric)
            width = prep.num_fine_width + 1 if kind == "numeric" else prep.cat_ref.shape[1]
            cur = np.zeros((len(mine), width))
            for row, (j, i) in enumerate(mine):
                c = data.counts[order[j]][i]
                if kind == "numeric":
                    cur[row, : len(c) - 1], cur[row, -1] = c[:-1], c[-1]
                else:
                    cur[row, : len(c)] = c
            got = compute(CONFIG, profile, np.array([j - offset for j, _ in mine]), cur)
            want = np.stack([whole[:, j, i] for j, i in mine], axis=1)
            assert np.array_equal(got, want, equal_nan=True), (kind, mine)
