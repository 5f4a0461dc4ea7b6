"""Synthetic reference/current frames with known, subtle drift for the drift-tool comparison.

``bench/monitor.py`` evaluates Pitstop's drift check and the existing tools
(``bench/_drift_tools.py``: alibi-detect and Evidently, each in its own virtualenv) on the
frames made here, so this module is plain numpy/pandas and imports under the project's
numpy 2 / pandas 3 as well as under the tools' older pins (numpy 1.x, pandas 1.x/2.x).

Design
------
20 features: 15 numeric (``n00``..``n14``) and 5 categorical (``c0``..``c4``, string
categories). The numeric ones mix distributions on purpose - normal, lognormal (skewed,
heavy right tail), exponential (skewed, hard lower bound), uniform (flat, bounded) and
Poisson (integer-valued, many ties) - because binning, ranking and moment-based statistics
each fail differently on one of these shapes.

Exactly 7 features drift (``SHIFTED``):

* 5 numeric, one of each shape, by a **mean shift of 0.2 standard deviations** of that
  feature (the theoretical SD of its generating distribution). For the Poisson(3) feature the
  shift is made of ties: 1 is added to a random 34.64 % of the values (= 0.2 * sqrt(3)), which
  moves the mean by exactly 0.2 SD while keeping the values integers.
* 2 categorical, where **5 percentage points** of probability mass move from the most
  frequent category to a less frequent one, e.g. ``[.40, .30, .20, .10] -> [.35, .30, .20, .15]``.

The other 13 features have identical generating distributions in both frames; reference and
current are independent draws, so any difference there is sampling noise only.

Why 0.2 SD and 5 points: this is the size of shift a model owner wants to hear about and
the size where the common recipes disagree. Earlier measurements showed that PSI or
Jensen-Shannon with a 0.1 threshold on decile bins misses most such shifts (a 0.2 SD mean
shift gives a PSI of roughly 0.04), while a significance test alone (KS, chi-square) at
n in the 10^5 range flags shifts far smaller than this - and, with enough rows, shifts nobody
cares about - so a p-value says "the sample is big", not "the drift matters". A benchmark
with one clearly-relevant-but-subtle shift size separates effect-size thresholds that are
too coarse from tests that are too eager, and the 13 untouched features measure false alarms.

Determinism: every column of every frame comes from its own ``numpy.random.RandomState``
seeded with ``[seed, frame, column]``. ``RandomState`` is numpy's frozen legacy generator, whose
streams are guaranteed identical across numpy versions (``Generator``'s are not), so the
project venv and the tool venvs see the same numbers for the same seed. A column does not
depend on the other columns, and an unshifted column is the same whichever columns are
shifted. Frames of different sizes are not, in general, prefixes of one another: compare
tools at equal ``n`` and ``seed``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["CATEGORICAL", "COLUMNS", "NUMERIC", "SHIFTED", "describe", "make_frames"]

SHIFT_SD = 0.2  # numeric shifts, in standard deviations of the feature
SHIFT_PP = 0.05  # categorical shifts, probability mass moved

# name -> (distribution, parameters, shifted?)
_NUMERIC_SPEC: dict[str, tuple[str, tuple[float, ...], bool]] = {
    "n00": ("normal", (0.0, 1.0), False),
    "n01": ("normal", (50.0, 10.0), True),
    "n02": ("uniform", (0.0, 1.0), False),
    "n03": ("lognormal", (0.0, 0.5), False),
    "n04": ("lognormal", (0.0, 1.0), True),
    "n05": ("exponential", (1.0,), False),
    "n06": ("poisson", (3.0,), False),
    "n07": ("exponential", (2.0,), True),
    "n08": ("normal", (-3.0, 2.0), False),
    "n09": ("uniform", (-5.0, 5.0), False),
    "n10": ("uniform", (10.0, 20.0), True),
    "n11": ("lognormal", (1.0, 0.75), False),
    "n12": ("normal", (100.0, 15.0), False),
    "n13": ("poisson", (3.0,), True),
    "n14": ("exponential", (0.5,), False),
}

# name -> (categories, reference probabilities, current probabilities or None if unshifted)
_CATEGORICAL_SPEC: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...] | None]] = {
    "c0": (("red", "green", "blue", "grey"), (0.40, 0.30, 0.20, 0.10), (0.35, 0.30, 0.20, 0.15)),
    "c1": (("web", "ios", "android"), (0.50, 0.30, 0.20), None),
    "c2": (("DE", "FR", "IT", "ES", "NL", "PL"), (0.30, 0.25, 0.15, 0.15, 0.10, 0.05), None),
    "c3": (
        ("basic", "plus", "pro", "team", "enterprise"),
        (0.35, 0.25, 0.20, 0.12, 0.08),
        (0.30, 0.25, 0.20, 0.12, 0.13),
    ),
    "c4": (("no", "yes"), (0.70, 0.30), None),
}

NUMERIC: list[str] = list(_NUMERIC_SPEC)
CATEGORICAL: list[str] = list(_CATEGORICAL_SPEC)
COLUMNS: list[str] = NUMERIC + CATEGORICAL
SHIFTED: list[str] = sorted(
    [c for c, (_, _, s) in _NUMERIC_SPEC.items() if s] + [c for c, (_, _, cur) in _CATEGORICAL_SPEC.items() if cur]
)


def _mean_sd(dist: str, params: tuple[float, ...]) -> tuple[float, float]:
    """Theoretical mean and standard deviation of a numeric feature's distribution."""
    if dist == "normal":
        mu, sigma = params
        return mu, sigma
    if dist == "lognormal":
        mu, s = params
        return math.exp(mu + s * s / 2), math.sqrt((math.exp(s * s) - 1) * math.exp(2 * mu + s * s))
    if dist == "exponential":
        (scale,) = params
        return scale, scale
    if dist == "uniform":
        lo, hi = params
        return (lo + hi) / 2, (hi - lo) / math.sqrt(12)
    if dist == "poisson":
        (lam,) = params
        return lam, math.sqrt(lam)
    msg = f"unknown distribution {dist!r}"
    raise ValueError(msg)


def _draw_numeric(rng: np.random.RandomState, dist: str, params: tuple[float, ...], n: int) -> np.ndarray:
    if dist == "normal":
        return rng.normal(params[0], params[1], n)
    if dist == "lognormal":
        return rng.lognormal(params[0], params[1], n)
    if dist == "exponential":
        return rng.exponential(params[0], n)
    if dist == "uniform":
        return rng.uniform(params[0], params[1], n)
    if dist == "poisson":
        return rng.poisson(params[0], n).astype(np.int64)
    msg = f"unknown distribution {dist!r}"
    raise ValueError(msg)


def _shift_numeric(rng: np.random.RandomState, dist: str, params: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    _, sd = _mean_sd(dist, params)
    if dist == "poisson":
        # +1 on a random fraction p of the rows moves the mean by p; p = 0.2 SD keeps it integer
        frac = SHIFT_SD * sd
        return x + (rng.random_sample(x.shape[0]) < frac).astype(np.int64)
    return x + SHIFT_SD * sd


def _draw_categorical(
    rng: np.random.RandomState, categories: tuple[str, ...], probs: tuple[float, ...], n: int
) -> np.ndarray:
    # inverse CDF on uniforms: transparent and identical across numpy versions
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, rng.random_sample(n), side="right")
    return np.asarray(categories, dtype=object)[np.minimum(idx, len(categories) - 1)]


def _rng(seed: int, frame: int, column: int) -> np.random.RandomState:
    return np.random.RandomState([seed, frame, column])


def make_frames(n_ref: int, n_cur: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reference frame, current frame, and the sorted names of the truly shifted columns.

    Columns ``n00``..``n14`` (float64, or int64 for the Poisson ones) then ``c0``..``c4``
    (strings). Deterministic for a given ``(n_ref, n_cur, seed)``.

    >>> ref, cur, shifted = make_frames(1000, 500)
    >>> ref.shape, cur.shape, shifted
    ((1000, 20), (500, 20), ['c0', 'c3', 'n01', 'n04', 'n07', 'n10', 'n13'])
    """
    if n_ref <= 0 or n_cur <= 0:
        msg = "n_ref and n_cur must be positive"
        raise ValueError(msg)
    frames = []
    for frame, n in ((0, n_ref), (1, n_cur)):
        data: dict[str, np.ndarray] = {}
        for j, (col, (dist, params, shifted)) in enumerate(_NUMERIC_SPEC.items()):
            rng = _rng(seed, frame, j)
            x = _draw_numeric(rng, dist, params, n)
            if frame == 1 and shifted:
                x = _shift_numeric(rng, dist, params, x)
            data[col] = x
        for j, (col, (cats, p_ref, p_cur)) in enumerate(_CATEGORICAL_SPEC.items(), start=len(_NUMERIC_SPEC)):
            probs = p_cur if (frame == 1 and p_cur is not None) else p_ref
            data[col] = _draw_categorical(_rng(seed, frame, j), cats, probs, n)
        frames.append(pd.DataFrame(data, columns=COLUMNS))
    return frames[0], frames[1], list(SHIFTED)


def describe() -> dict[str, dict[str, object]]:
    """Each column's kind, distribution and shift, as text for the report.

    >>> d = describe()
    >>> d["n13"]["kind"], d["c1"]["shift"]
    ('numeric', 'none')
    """
    out: dict[str, dict[str, object]] = {}
    for col, (dist, params, shifted) in _NUMERIC_SPEC.items():
        mean, sd = _mean_sd(dist, params)
        if dist == "normal":
            text = f"normal(mean={params[0]:g}, sd={params[1]:g})"
        elif dist == "lognormal":
            text = f"lognormal(mu={params[0]:g}, sigma={params[1]:g}) [mean {mean:.3g}, sd {sd:.3g}]"
        elif dist == "exponential":
            text = f"exponential(scale={params[0]:g}) [mean {mean:.3g}, sd {sd:.3g}]"
        elif dist == "uniform":
            text = f"uniform({params[0]:g}, {params[1]:g}) [sd {sd:.3g}]"
        else:
            text = f"poisson(lambda={params[0]:g}), integer [sd {sd:.3g}]"
        if not shifted:
            shift = "none"
        elif dist == "poisson":
            shift = (
                f"+1 on a random {SHIFT_SD * sd:.2%} of rows: mean +{SHIFT_SD * sd:.3g} "
                f"(= {SHIFT_SD:g} SD), still integer"
            )
        else:
            shift = f"mean shift +{SHIFT_SD * sd:.4g} (= {SHIFT_SD:g} SD), shape unchanged"
        out[col] = {"kind": "numeric", "distribution": text, "shift": shift, "shifted": shifted}
    for col, (cats, p_ref, p_cur) in _CATEGORICAL_SPEC.items():
        text = "categorical " + ", ".join(f"{c}={p:.2f}" for c, p in zip(cats, p_ref, strict=True))
        if p_cur is None:
            shift = "none"
        else:
            moved = [(c, a, b) for c, a, b in zip(cats, p_ref, p_cur, strict=True) if abs(a - b) > 1e-12]
            (src, a0, b0), (dst, a1, b1) = sorted(moved, key=lambda t: t[2] - t[1])
            shift = (
                f"{abs(b0 - a0) * 100:.0f} points of mass from {src} ({a0:.2f} -> {b0:.2f}) "
                f"to {dst} ({a1:.2f} -> {b1:.2f})"
            )
        out[col] = {"kind": "categorical", "distribution": text, "shift": shift, "shifted": p_cur is not None}
    return out


if __name__ == "__main__":  # pragma: no cover - a look at the data by hand
    import json

    print(json.dumps(describe(), indent=1))
    r, c, s = make_frames(200_000, 200_000)
    print("shifted:", s)
    num = r.columns[: len(NUMERIC)]
    print(((c[num].mean() - r[num].mean()) / r[num].std()).round(3).to_string())
