"""Drift evaluation benchmark: Pitstop from its window accumulators, against scipy from raw rows and two tools.

What it measures, for each size N in ``--rows`` (default 50,000 and 200,000), on
``bench/_drift_data.make_frames(N, N, seed)``: a reference frame and a current frame of N rows,
20 features (15 numeric, 5 categorical), 7 of them shifted by a subtle amount (0.2 SD, or 5
points of category mass); the other 13 are independent draws of the same distribution.

* Pitstop from the accumulators. The reference profile is built from the reference frame (the
  columns as Python lists, kinds as the generator declares them); the current frame is counted
  into one window, and split into 24 windows of N/24 rows (``np.array_split``: sizes differ by at
  most one row) counted one window at a time. Counting is timed separately: in production it
  happens at ingest, row by row into Postgres, and is not part of evaluation. Then
  ``feedback.monitoring.evaluate.drift_arrays`` (every statistic, Holm over every test, the verdicts) is
  timed on the 1-window and on the 24-window accumulators, and ``evaluate_drift`` (the same plus
  one result row with its sentence per metric) on the 24 windows: ``timeit`` with one call per
  sample, the median (and min / p90) of ``--samples`` samples after ``--warmup`` untimed calls
  (timeit switches the garbage collector off while it times; the 24-window case is timed with it
  on as well). The raw rows are dropped before evaluation is timed, as the monitor holds only
  counts. The first call on a new profile object (``_prepare`` stacks the profile into arrays,
  cached per profile object; the monitor keeps its profile objects between rounds) is one call,
  reported apart. Flagged = the series whose ``drift[row, window]`` is True; for 24
  windows, in how many windows each feature was flagged.
* scipy from raw rows, the same statistics and rule, computed independently: per numeric feature
  ``scipy.stats.ks_2samp(method="asymp")`` plus PSI and Jensen-Shannon (``jensenshannon``, base
  2) on the reference deciles (``np.quantile``, tied edges merged, ``np.histogram``); per
  categorical ``scipy.stats.chi2_contingency(correction=False)`` plus Cohen's w, PSI and JS on the
  reference categories. PSI and Cohen's w use Pitstop's smoothing (``(c + 0.5) / (n + 0.5 k)``,
  PSI floored at 1e-3; with a missing/other bin of zero counts on both sides, as Pitstop has) so
  the numbers are comparable; Holm over the tests. Each effect floor is compared with the lower end
  of the effect's ``confidence`` interval (config.confidence, 0.95), written out here from the
  formulas documented in feedback/monitoring/stats.py and not imported from it (alpha = 1 -
  confidence, n and m the reference's and the window's row counts, k the bins non-empty on either
  side, z the normal quantile at 1 - alpha / 2): KS ``max(0, D - sqrt(ln(2 / alpha) / 2 (1/n +
  1/m)))`` (two-sample DKW band) with D from ``ks_2samp``; PSI, JS and Cohen's w by Fisher's
  square root for a noncentral chi-square ``x = n m / (n + m) * v`` with k - 1 dof, ``lambda_low =
  max(0, max(0, sqrt(x) - z)^2 - (k - 1))``, ``v_low = lambda_low (1/n + 1/m)``, where v is PSI,
  ``8 ln(2) JS^2`` or ``w^2``. Flag = Holm-adjusted p < 0.01 and (KS_low >= 0.05 or PSI_low >=
  0.15 or JS_low >= 0.1) for a numeric feature, (w_low >= 0.1 or PSI_low >= 0.15 or JS_low >= 0.1)
  for a categorical one. One window (the whole current frame): median of ``--raw-repeat`` runs
  (default 5). 24 windows (Holm over 480 tests, as Pitstop): one run, as a point of comparison for
  the 24-window figure. Times start from the DataFrames' columns. The verdicts are compared with
  Pitstop's feature by feature in every window ("verdicts per window" line; disagreements listed
  with both sides' numbers), and the 1-window statistics and lower bounds by their largest
  difference.
* The tools (skipped with ``--no-tools``): ``bench/_drift_tools.py`` in its own virtualenv
  (``.bench-venvs/alibi``, ``.bench-venvs/evidently``; made by ``bash bench/setup_drift_tools.sh``),
  ``--repeat 3``, one JSON line each; their own settings and verdict rules (see that file), on the
  whole current frame as one window.

Target: "all 20 features over 24 windows evaluated in under 1 ms from the accumulators, exactly the
shifted features flagged". When ``drift_arrays`` on 24 windows takes over 1 ms (median), it is run
under cProfile (``--profile-calls`` calls) and the functions with the most own time are printed,
in ms per call (cProfile's own overhead inflates them; the wall median is the figure).

The machine is shared: the load average is printed at the start and the end of each size; a
second benchmark running at the same time shows up there and in the min-to-p90 spread.

Run from the repository root::

    .venv/bin/python bench/monitor.py                          # N = 50,000 and 200,000, tools included
    .venv/bin/python bench/monitor.py --rows 50000 --no-tools  # Pitstop and scipy only, a quick check
    .venv/bin/python bench/monitor.py --json /tmp/monitor.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _drift_data  # noqa: E402

from feedback.config import ModelConfig, parse_config  # noqa: E402
from feedback.monitoring.evaluate import WindowData, drift_arrays, evaluate_drift  # noqa: E402
from feedback.monitoring.profile import ReferenceProfile, build_profile  # noqa: E402

CONFIG_TOML = """
[models.m]
task = "classification"
positive_class = 1
window = "1h"
span = 24
min_rows = 1000
"""
WINDOWS = 24
TARGET_MS = 1.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOOLS = {"alibi": "alibi-detect", "evidently": "evidently"}


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn: Callable[[], object], samples: int, warmup: int, *, gc_on: bool = False) -> dict[str, float]:
    """Wall time of one call in ms: median, min and p90 of ``samples`` after ``warmup`` untimed calls.

    timeit switches the garbage collector off while it times; ``gc_on`` keeps it on.
    """
    for _ in range(warmup):
        fn()
    timer = timeit.Timer(fn, setup="import gc; gc.enable()" if gc_on else "pass")
    times = np.array(timer.repeat(repeat=samples, number=1)) * 1e3
    return {
        "median_ms": float(np.median(times)),
        "min_ms": float(times.min()),
        "p90_ms": float(np.percentile(times, 90)),
        "samples": samples,
    }


def verdict(flagged: Sequence[str], shifted: Sequence[str]) -> dict[str, list[str]]:
    return {
        "flagged": sorted(flagged),
        "missed": sorted(set(shifted) - set(flagged)),
        "false": sorted(set(flagged) - set(shifted)),
    }


def per_window_verdict(counts: dict[str, int], windows: int, shifted: Sequence[str]) -> dict[str, Any]:
    """Flag counts per feature over the windows: a shifted feature is missed in the windows it is not flagged."""
    return {
        "windows_flagging": {f: c for f, c in sorted(counts.items()) if c},
        "missed": {f: windows - counts.get(f, 0) for f in sorted(shifted) if counts.get(f, 0) < windows},
        "false": {f: c for f, c in sorted(counts.items()) if f not in shifted and c},
    }


# --- Pitstop -------------------------------------------------------------------------------------


def window_data(profile: ReferenceProfile, chunks: Sequence[dict[str, list[Any]]]) -> WindowData:
    """Count raw values into window accumulators, as tests/unit/test_evaluate.py's ``windows_of``."""
    starts = tuple(T0 + timedelta(hours=i) for i in range(len(chunks)))
    counts = {
        name: np.stack([np.bincount(s.bin_values(c[name]), minlength=s.n_bins) for c in chunks])
        for name, s in profile.series.items()
    }
    rows = np.array([len(next(iter(c.values()))) for c in chunks], dtype=np.int64)
    return WindowData(starts, counts, rows, tuple({} for _ in chunks))


def flag_counts(config: ModelConfig, profile: ReferenceProfile, data: WindowData) -> dict[str, int]:
    arrays = drift_arrays(config, profile, {"*": data})
    return {name: int(arrays.drift[j].sum()) for j, (_, name) in enumerate(arrays.rows)}


def profile_and_count(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[ReferenceProfile, WindowData, WindowData,
                                                                      dict[str, Any]]:
    """The profile and the 1- and 24-window accumulators, with the time each took; the raw lists die here."""
    n = len(cur)
    kinds = {c: "numeric" for c in _drift_data.NUMERIC} | {c: "categorical" for c in _drift_data.CATEGORICAL}
    ref_cols = {c: ref[c].tolist() for c in _drift_data.COLUMNS}
    cur_cols = {c: cur[c].tolist() for c in _drift_data.COLUMNS}
    bounds = np.array_split(np.arange(n), WINDOWS)
    chunks = [{c: v[b[0] : b[-1] + 1] for c, v in cur_cols.items()} for b in bounds]
    out: dict[str, Any] = {"window_rows": [int(len(b)) for b in bounds]}

    t0 = time.perf_counter()
    profile = build_profile("m", "v1", ref_cols, kinds, source=f"import:make_frames({n})")
    out["build_profile_ms"] = (time.perf_counter() - t0) * 1e3
    out["series"] = sorted(profile.series)
    out["count_1"] = timed(lambda: window_data(profile, [cur_cols]), samples=3, warmup=0)
    out["count_24"] = timed(lambda: window_data(profile, chunks), samples=3, warmup=0)
    one, many = window_data(profile, [cur_cols]), window_data(profile, chunks)
    assert int(one.counts["n00"].sum()) == n and int(many.counts["c0"].sum()) == n
    return profile, one, many, out


def run_pitstop(
    config: ModelConfig, ref: pd.DataFrame, cur: pd.DataFrame, shifted: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    profile, one, many, out = profile_and_count(ref, cur)
    # the monitor holds counts, not raw rows: the 20 x 2N Python values are gone before evaluation is timed
    gc.collect()

    s1, s24 = {"*": one}, {"*": many}
    # the first call on the profile also pays _prepare and, for the first size, numpy/scipy first-use
    # costs (JSON only); a call on another new profile object then pays _prepare alone (table)
    t0 = time.perf_counter()
    drift_arrays(config, profile, s24)
    out["drift_arrays_24_first_call_ms"] = (time.perf_counter() - t0) * 1e3
    fresh = ReferenceProfile(model_name=profile.model_name, model_version=profile.model_version,
                             source=profile.source, n_rows=profile.n_rows, series=dict(profile.series))
    t0 = time.perf_counter()
    drift_arrays(config, fresh, s24)
    out["drift_arrays_24_new_profile_ms"] = (time.perf_counter() - t0) * 1e3

    out["drift_arrays_1"] = timed(lambda: drift_arrays(config, profile, s1), args.samples, args.warmup)
    out["drift_arrays_24"] = timed(lambda: drift_arrays(config, profile, s24), args.samples, args.warmup)
    out["drift_arrays_24_gc_on"] = timed(lambda: drift_arrays(config, profile, s24), args.samples, args.warmup,
                                         gc_on=True)
    out["evaluate_drift_24"] = timed(lambda: evaluate_drift(config, profile, s24), max(5, args.samples // 5),
                                     max(1, args.warmup // 2))

    arrays1 = drift_arrays(config, profile, s1)
    flagged1 = [name for j, (_, name) in enumerate(arrays1.rows) if arrays1.drift[j, 0]]
    out["flagged_1"] = verdict(flagged1, shifted)
    out["stats_1"] = {
        name: {k: float(getattr(arrays1, k)[j, 0])
               for k in ("psi", "js", "stat", "effect", "psi_low", "js_low", "effect_low", "p_adj")}
        for j, (_, name) in enumerate(arrays1.rows)
    }
    counts24 = flag_counts(config, profile, many)
    arrays24 = drift_arrays(config, profile, s24)
    out["flagged_by_window_24"] = [sorted(name for j, (_, name) in enumerate(arrays24.rows) if arrays24.drift[j, i])
                                   for i in range(WINDOWS)]
    out["stats_by_window_24"] = [
        {name: {k: float(getattr(arrays24, k)[j, i])
                for k in ("psi", "js", "effect", "psi_low", "js_low", "effect_low", "p_adj")}
         for j, (_, name) in enumerate(arrays24.rows)}
        for i in range(WINDOWS)
    ]
    out["flagged_24"] = per_window_verdict(counts24, WINDOWS, shifted)
    results, tests = evaluate_drift(config, profile, s24)
    from_results: dict[str, int] = {}
    for r in results:
        if r.metric == "drift" and r.status == "drift":
            from_results[r.feature] = from_results.get(r.feature, 0) + 1
    out["evaluate_drift_24_rows"] = len(results)
    out["evaluate_drift_24_tests"] = tests
    out["evaluate_drift_agrees"] = from_results == {f: c for f, c in counts24.items() if c}

    if out["drift_arrays_24"]["median_ms"] > TARGET_MS and args.profile_calls:
        out["profile_24"] = profile_drift_arrays(lambda: drift_arrays(config, profile, s24), args.profile_calls)
    return out


def profile_drift_arrays(fn: Callable[[], object], calls: int, top: int = 18) -> dict[str, Any]:
    """cProfile over ``calls`` calls: the functions with the most own time, in ms per call."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} {func}"
        rows.append({"function": where, "calls_per_call": nc / calls, "own_ms": tt * 1e3 / calls,
                     "cum_ms": ct * 1e3 / calls})
    rows.sort(key=lambda r: -r["own_ms"])
    total = sum(r["own_ms"] for r in rows)
    return {"calls": calls, "total_ms_per_call_under_profiler": total, "top_own": rows[:top],
            "top_cum": sorted(rows, key=lambda r: -r["cum_ms"])[:top]}


# --- scipy from raw rows -------------------------------------------------------------------------


def smoothed(counts: np.ndarray, floor: float) -> np.ndarray:
    p = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    p = np.maximum(p, floor)
    return p / p.sum()


def psi_of(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p, q = smoothed(ref_counts, 1e-3), smoothed(cur_counts, 1e-3)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_low(d: float, n: int, m: int, confidence: float) -> float:
    """Two-sample DKW band: ``max(0, D - sqrt(ln(2 / alpha) / 2 * (1 / n + 1 / m)))``, alpha = 1 - confidence."""
    alpha = 1.0 - confidence
    return max(0.0, d - float(np.sqrt(np.log(2.0 / alpha) / 2.0 * (1.0 / n + 1.0 / m))))


def chi2_scale_low(v: float, a: np.ndarray, b: np.ndarray, confidence: float) -> float:
    """Lower bound of a divergence ``v`` whose ``n m / (n + m)`` multiple is about noncentral chi-square, k - 1 dof.

    Fisher's square root: ``sqrt(X) ~ N(sqrt(dof + lambda), <= 1)``, so ``lambda >= (sqrt(x) - z)^2 - dof``;
    ``k`` counts the bins non-empty in ``a`` or ``b``, ``n`` and ``m`` their totals.
    """
    inv = 1.0 / a.sum() + 1.0 / b.sum()
    dof = max(int(np.count_nonzero((a + b) > 0)) - 1, 0)
    z = float(sps.norm.ppf((1.0 + confidence) / 2.0))
    root = max(float(np.sqrt(v / inv)) - z, 0.0)
    return max(root**2 - dof, 0.0) * inv


def js_low(d: float, a: np.ndarray, b: np.ndarray, confidence: float) -> float:
    """JS distance (base 2): ``8 ln(2) d^2`` is the divergence that scales to chi-square."""
    scale = 8.0 * np.log(2.0)
    return float(np.sqrt(chi2_scale_low(scale * d**2, a, b, confidence) / scale))


def holm_adjust(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    out = np.empty(m)
    out[order] = stepped
    return out


def raw_stats(ref: pd.DataFrame, cur: pd.DataFrame, confidence: float) -> dict[str, dict[str, float]]:
    """Every statistic of every feature of one window, and the lower bounds of the effects, from the raw values."""
    out: dict[str, dict[str, float]] = {}
    for c in _drift_data.NUMERIC:
        x, y = ref[c].to_numpy(dtype=np.float64), cur[c].to_numpy(dtype=np.float64)
        ks = sps.ks_2samp(x, y, method="asymp")
        edges = np.concatenate(([-np.inf], np.unique(np.quantile(x, np.arange(1, 10) / 10)), [np.inf]))
        # a missing-value bin (empty here) as Pitstop keeps one; it only changes the smoothing's k
        a = np.append(np.histogram(x, edges)[0], np.count_nonzero(np.isnan(x)))
        b = np.append(np.histogram(y, edges)[0], np.count_nonzero(np.isnan(y)))
        psi, js = psi_of(a, b), float(jensenshannon(a, b, base=2))
        n_x, n_y = int(np.count_nonzero(~np.isnan(x))), int(np.count_nonzero(~np.isnan(y)))
        out[c] = {"ks": float(ks.statistic), "p": float(ks.pvalue), "psi": psi, "js": js,
                  "ks_low": ks_low(float(ks.statistic), n_x, n_y, confidence),
                  "psi_low": chi2_scale_low(psi, a, b, confidence), "js_low": js_low(js, a, b, confidence)}
    for c in _drift_data.CATEGORICAL:
        x, y = ref[c].to_numpy(), cur[c].to_numpy()
        cats, a = np.unique(x, return_counts=True)
        pos = np.searchsorted(cats, y)
        pos = np.minimum(pos, len(cats) - 1)
        known = cats[pos] == y
        b = np.bincount(pos[known], minlength=len(cats))
        # OTHER (unseen in the reference) and MISSING bins, as Pitstop's profile has
        a = np.concatenate((a, [0, 0]))
        b = np.concatenate((b, [np.count_nonzero(~known), 0]))
        table = np.vstack((a, b))
        chi2, p, _dof, _exp = sps.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
        pr = smoothed(a, 0.0)
        q = b / b.sum()
        w = float(np.sqrt(np.sum((q - pr) ** 2 / pr)))
        psi, js = psi_of(a, b), float(jensenshannon(a, b, base=2))
        out[c] = {"chi2": float(chi2), "p": float(p), "w": w, "psi": psi, "js": js,
                  "w_low": float(np.sqrt(chi2_scale_low(w**2, a, b, confidence))),
                  "psi_low": chi2_scale_low(psi, a, b, confidence), "js_low": js_low(js, a, b, confidence)}
    return out


def raw_flags(per_window: list[dict[str, dict[str, float]]], config: ModelConfig) -> list[list[str]]:
    """Holm over every test of every window, then Pitstop's rule (floors on the lower bounds); flagged per window."""
    names = list(per_window[0])
    p = np.array([[w[c]["p"] for c in names] for w in per_window])
    p_adj = holm_adjust(p.ravel()).reshape(p.shape)
    th = config.thresholds
    flagged = []
    for i, w in enumerate(per_window):
        out = []
        for j, c in enumerate(names):
            s = w[c]
            s["p_adj"] = float(p_adj[i, j])
            effect = s["ks_low"] >= th.ks if "ks" in s else s["w_low"] >= th.chi2_effect
            if p_adj[i, j] < config.alpha and (effect or s["psi_low"] >= th.psi or s["js_low"] >= th.js):
                out.append(c)
        flagged.append(out)
    return flagged


def run_raw(config: ModelConfig, ref: pd.DataFrame, cur: pd.DataFrame, shifted: list[str],
            args: argparse.Namespace) -> dict[str, Any]:
    def one() -> tuple[list[dict[str, dict[str, float]]], list[list[str]]]:
        per = [raw_stats(ref, cur, config.confidence)]
        return per, raw_flags(per, config)

    times = []
    for _ in range(args.raw_repeat):
        t0 = time.perf_counter()
        per, flags = one()
        times.append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {"one_ms": statistics.median(times), "one_runs_ms": times,
                           "flagged_1": verdict(flags[0], shifted), "stats_1": per[0]}
    bounds = np.array_split(np.arange(len(cur)), WINDOWS)
    t0 = time.perf_counter()
    per24 = [raw_stats(ref, cur.iloc[b[0] : b[-1] + 1], config.confidence) for b in bounds]
    flags24 = raw_flags(per24, config)
    out["windows_24_ms"] = (time.perf_counter() - t0) * 1e3
    counts: dict[str, int] = {}
    for fl in flags24:
        for f in fl:
            counts[f] = counts.get(f, 0) + 1
    out["flagged_24"] = per_window_verdict(counts, WINDOWS, shifted)
    out["flagged_by_window_24"] = [sorted(fl) for fl in flags24]
    out["stats_by_window_24"] = per24
    return out


def window_agreement(pit: dict[str, Any], raw: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    """Pitstop's verdicts against scipy's, feature by feature in each of the 24 windows; both sides' numbers where
    they differ. Also the single floor comparisons (a lower bound against its floor) that land on different sides,
    whether or not the verdict changes: Pitstop's KS is on a fine value grid, at most the raw-value one."""
    th = config.thresholds
    floors_differ = []
    for i, (wp, wr) in enumerate(zip(pit["stats_by_window_24"], raw["stats_by_window_24"], strict=True)):
        for f, r in wr.items():
            effect, floor = ("ks_low", th.ks) if "ks_low" in r else ("w_low", th.chi2_effect)
            for name, mine, theirs, limit in ((effect, wp[f]["effect_low"], r[effect], floor),
                                              ("psi_low", wp[f]["psi_low"], r["psi_low"], th.psi),
                                              ("js_low", wp[f]["js_low"], r["js_low"], th.js)):
                if (mine >= limit) != (theirs >= limit):
                    floors_differ.append({"window": i, "feature": f, "bound": name, "pitstop": mine, "scipy": theirs,
                                          "floor": limit})
    disagreements = []
    for i, (fp, fr) in enumerate(zip(pit["flagged_by_window_24"], raw["flagged_by_window_24"], strict=True)):
        for f in sorted(set(fp) ^ set(fr)):
            disagreements.append({"window": i, "feature": f, "pitstop": f in fp, "scipy": f in fr,
                                  "pitstop_stats": pit["stats_by_window_24"][i][f],
                                  "scipy_stats": raw["stats_by_window_24"][i][f]})
    windows_agree = sum(fp == fr for fp, fr in zip(pit["flagged_by_window_24"], raw["flagged_by_window_24"],
                                                   strict=True))
    verdicts = WINDOWS * len(pit["stats_by_window_24"][0])
    return {"windows_agree": windows_agree, "windows": WINDOWS, "verdicts": verdicts,
            "verdicts_agree": verdicts - len(disagreements), "disagreements": disagreements,
            "floor_comparisons": 3 * verdicts, "floor_comparisons_differ": floors_differ}


def agreement(pit: dict[str, dict[str, float]], raw: dict[str, dict[str, float]]) -> dict[str, float]:
    """Largest differences between Pitstop's 1-window numbers (from bins) and scipy's (from raw values)."""
    diff: dict[str, list[float]] = {"psi": [], "js": [], "ks": [], "chi2": [], "cohens_w": [], "psi_low": [],
                                    "js_low": [], "ks_low": [], "cohens_w_low": []}
    for name, r in raw.items():
        p = pit[name]
        for k in ("psi", "js", "psi_low", "js_low"):
            diff[k].append(abs(p[k] - r[k]))
        if "ks" in r:
            diff["ks"].append(abs(p["stat"] - r["ks"]))
            diff["ks_low"].append(abs(p["effect_low"] - r["ks_low"]))
        else:
            diff["chi2"].append(abs(p["stat"] - r["chi2"]) / max(r["chi2"], 1e-12))
            diff["cohens_w"].append(abs(p["effect"] - r["w"]))
            diff["cohens_w_low"].append(abs(p["effect_low"] - r["w_low"]))
    return {("max_rel_" if k == "chi2" else "max_abs_") + k: max(v) for k, v in diff.items()}


# --- tools ---------------------------------------------------------------------------------------


def run_tool(tool: str, rows: int, seed: int) -> dict[str, Any]:
    py = ROOT / ".bench-venvs" / tool / "bin" / "python"
    if not py.exists():
        msg = f"{tool}: skipped, no venv at {py}; create it with: bash bench/setup_drift_tools.sh {tool}"
        _log(msg)
        return {"tool": tool, "skipped": msg}
    cmd = [str(py), str(ROOT / "bench" / "_drift_tools.py"), "--tool", tool, "--rows", str(rows), "--repeat", "3",
           "--seed", str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        msg = f"{tool}: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        _log(msg)
        return {"tool": tool, "skipped": msg}
    rec = json.loads(lines[-1])
    rec["process_wall_s"] = round(wall, 1)
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    if warnings:
        rec["stderr_warnings"] = warnings[:5]
    return rec


# --- report --------------------------------------------------------------------------------------


def fmt_ms(ms: float) -> str:
    if ms < 10:
        return f"{ms:.3f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def fmt_timed(t: dict[str, float]) -> str:
    return f"{fmt_ms(t['median_ms'])} (min {fmt_ms(t['min_ms'])}, p90 {fmt_ms(t['p90_ms'])}, n={t['samples']})"


def fmt_set(v: dict[str, list[str]]) -> tuple[str, str, str]:
    return (" ".join(v["flagged"]) or "-", " ".join(v["missed"]) or "-", " ".join(v["false"]) or "-")


def fmt_windows(v: dict[str, Any]) -> tuple[str, str, str]:
    per = v["windows_flagging"]
    values = set(per.values())
    if len(values) == 1:
        flagged = f"{' '.join(per)} (each {values.pop()}/{WINDOWS})"
    else:
        flagged = " ".join(f"{f}:{c}" for f, c in per.items())
    missed = " ".join(f"{f}:{c}" for f, c in v["missed"].items()) or "-"
    false = " ".join(f"{f}:{c}" for f, c in v["false"].items()) or "-"
    return flagged or "-", missed, false


def table_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    n = res["rows"]
    p = res["pitstop"]
    w = p["window_rows"]
    wr = f"24 x {min(w):,}" + ("" if min(w) == max(w) else f"-{max(w):,}")
    dash = ("-", "-", "-")
    rows: list[tuple[str, ...]] = [
        ("pitstop: build profile (once per version)", f"{n:,}", fmt_ms(p["build_profile_ms"]), *dash),
        ("pitstop: counting, 1 window (done at ingest in production)", f"{n:,}", fmt_timed(p["count_1"]), *dash),
        ("pitstop: counting, 24 windows (done at ingest in production)", wr, fmt_timed(p["count_24"]), *dash),
        ("pitstop: drift_arrays, 1 window", f"{n:,}", fmt_timed(p["drift_arrays_1"]), *fmt_set(p["flagged_1"])),
        ("pitstop: drift_arrays, 24 windows", wr, fmt_timed(p["drift_arrays_24"]), *fmt_windows(p["flagged_24"])),
        ("pitstop: drift_arrays, 24 windows, garbage collector on", wr, fmt_timed(p["drift_arrays_24_gc_on"]), *dash),
        ("pitstop: drift_arrays, 24 windows, 1st call on a new profile object", wr,
         fmt_ms(p["drift_arrays_24_new_profile_ms"]), *dash),
        (f"pitstop: evaluate_drift, 24 windows ({p['evaluate_drift_24_rows']} result rows)", wr,
         fmt_timed(p["evaluate_drift_24"]),
         "same as drift_arrays" if p["evaluate_drift_agrees"] else "DIFFERS from drift_arrays", "", ""),
    ]
    r = res["raw"]
    runs = ", ".join(f"{t:.0f}" for t in r["one_runs_ms"])
    rows += [
        ("scipy from raw rows, 1 window", f"{n:,}", f"{fmt_ms(r['one_ms'])} (median of {runs} ms)",
         *fmt_set(r["flagged_1"])),
        ("scipy from raw rows, 24 windows (1 run)", wr, fmt_ms(r["windows_24_ms"]), *fmt_windows(r["flagged_24"])),
    ]
    for t in res.get("tools", []):
        if "skipped" in t:
            rows.append((t["tool"], f"{n:,}", t["skipped"], "", "", ""))
            continue
        fit = "" if t["fit_s"] is None else f"fit {t['fit_s'] * 1e3:.0f} + detect {t['detect_s'] * 1e3:.0f} ms = "
        v = verdict(t["flagged"], res["shifted"])
        rows.append((f"{TOOLS[t['tool']]} {t['version']}, 1 window", f"{n:,}",
                     f"{fit}{fmt_ms(t['total_s'] * 1e3)} (median of 3)", *fmt_set(v)))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    head = ("method", "rows", "time", "flagged", "missed (shifted not flagged)", "false (flagged not shifted)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(line)


def print_profile(prof: dict[str, Any]) -> None:
    print(f"  cProfile of drift_arrays, 24 windows, {prof['calls']} calls: "
          f"{prof['total_ms_per_call_under_profiler']:.3f} ms/call under the profiler; most own time:")
    for r in prof["top_own"]:
        print(f"    {r['own_ms']:7.3f} ms own  {r['cum_ms']:7.3f} ms cum  {r['calls_per_call']:5.0f}x  {r['function']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000],
                        help="sizes N (rows in each of the reference and current frames)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples", type=int, default=50, help="timed calls of drift_arrays per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before them")
    parser.add_argument("--raw-repeat", type=int, default=5, help="runs of the scipy 1-window recompute")
    parser.add_argument("--profile-calls", type=int, default=200,
                        help="calls of drift_arrays under cProfile when it misses the target (0 = never)")
    parser.add_argument("--no-tools", action="store_true", help="skip alibi-detect and Evidently")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)

    config = parse_config(CONFIG_TOML).models["m"]
    results: dict[str, Any] = {"machine": machine(), "target": f"all 20 features over {WINDOWS} windows "
                               f"evaluated in under {TARGET_MS:g} ms from the accumulators, exactly the shifted "
                               "features flagged", "sizes": []}
    for n in args.rows:
        res: dict[str, Any] = {"rows": n, "load_start": load()}
        _log(f"N={n:,}: generating frames (load {res['load_start']})")
        ref, cur, shifted = _drift_data.make_frames(n, n, seed=args.seed)
        res["shifted"] = shifted
        _log(f"N={n:,}: pitstop")
        res["pitstop"] = run_pitstop(config, ref, cur, shifted, args)
        _log(f"N={n:,}: scipy from raw rows")
        res["raw"] = run_raw(config, ref, cur, shifted, args)
        res["agreement_1_window"] = agreement(res["pitstop"]["stats_1"], res["raw"]["stats_1"])
        res["agreement_24_windows"] = window_agreement(res["pitstop"], res["raw"], config)
        if not args.no_tools:
            res["tools"] = []
            for tool in TOOLS:
                _log(f"N={n:,}: {tool}")
                res["tools"].append(run_tool(tool, n, args.seed))
        res["load_end"] = load()
        d24 = res["pitstop"]["drift_arrays_24"]["median_ms"]
        exact = not res["pitstop"]["flagged_24"]["missed"] and not res["pitstop"]["flagged_24"]["false"]
        res["target_met"] = {"time": d24 < TARGET_MS, "flags": exact}
        results["sizes"].append(res)

    m = results["machine"]
    print(f"\nmachine: {m['platform']}, {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, "
          f"scipy {m['scipy']}, pandas {m['pandas']}; {m['date']}")
    print(f"target: {results['target']}")
    for res in results["sizes"]:
        print(f"\nN = {res['rows']:,} reference + {res['rows']:,} current rows, seed {args.seed}, shifted: "
              f"{' '.join(res['shifted'])}; load avg {res['load_start']} at start, {res['load_end']} at end")
        print_table(table_rows(res))
        a = res["agreement_1_window"]
        print("  pitstop (bins) vs scipy (raw), 1 window, largest difference: "
              + ", ".join(f"{k} {v:.2g}" for k, v in a.items()))
        g = res["agreement_24_windows"]
        one_same = res["pitstop"]["flagged_1"]["flagged"] == res["raw"]["flagged_1"]["flagged"]
        print(f"  pitstop vs scipy verdicts per window (floors on the lower bounds): 1 window "
              f"{'agrees' if one_same else 'DIFFERS'}; 24 windows: {g['windows_agree']}/{g['windows']} windows "
              f"and {g['verdicts_agree']}/{g['verdicts']} feature verdicts agree")
        for d in g["disagreements"]:
            ps, rs = d["pitstop_stats"], d["scipy_stats"]
            eff = "ks_low" if "ks_low" in rs else "w_low"
            print(f"    window {d['window']} {d['feature']}: pitstop {'drift' if d['pitstop'] else 'stable'} "
                  f"(p_adj {ps['p_adj']:.3g}, effect_low {ps['effect_low']:.4f}, psi_low {ps['psi_low']:.4f}, "
                  f"js_low {ps['js_low']:.4f}), scipy {'drift' if d['scipy'] else 'stable'} (p_adj {rs['p_adj']:.3g}, "
                  f"{eff} {rs[eff]:.4f}, psi_low {rs['psi_low']:.4f}, js_low {rs['js_low']:.4f})")
        fd = g["floor_comparisons_differ"]
        print(f"  single floor comparisons (bound vs floor) on different sides: {len(fd)}/{g['floor_comparisons']}"
              + "".join(f"; window {d['window']} {d['feature']} {d['bound']} pitstop {d['pitstop']:.4f} vs scipy "
                        f"{d['scipy']:.4f} (floor {d['floor']:g})" for d in fd))
        tm = res["target_met"]
        print(f"  target: drift_arrays 24 windows {res['pitstop']['drift_arrays_24']['median_ms']:.3f} ms "
              f"-> {'MET' if tm['time'] else 'NOT MET'} (< {TARGET_MS:g} ms); exactly the shifted features in "
              f"every window -> {'MET' if tm['flags'] else 'NOT MET'}")
        if "profile_24" in res["pitstop"]:
            print_profile(res["pitstop"]["profile_24"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
