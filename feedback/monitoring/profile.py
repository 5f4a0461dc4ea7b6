"""Reference profiles: the bins each monitored series is counted in, and the reference's counts.

A model version's profile holds, for every feature (and for the prediction, the score and the
label), the bins that both the reference and every production window are counted in:

* a numeric series gets a fine grid of reference quantile edges (percentiles, tied edges
  merged) for the KS statistic, and the PSI's ten decile bins as a subset of those edges, so
  one count per fine bin serves both (a decile bin is a run of fine bins). The first and last
  bins are open-ended.
* a categorical series gets one bin per reference category (the most frequent
  ``max_categories``) and one bin, ``OTHER``, for every other or unseen category.
* every series ends with a bin for missing values (absent, null, or of the wrong type), so a
  change in missingness shows up as drift too.

Bins are numbered in that order; :meth:`SeriesProfile.bin_values` maps raw values to them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

FeatureKind = Literal["numeric", "categorical"]

#: The series names Pitstop adds to a model's features.
PREDICTION = "__prediction__"
SCORE = "__score__"
LABEL = "__label__"
#: The row count of a window, one bin.
ROWS = "__rows__"

OTHER = "__other__"
MISSING = "__missing__"

FINE_QUANTILES = 100  # percentiles: a fine bin holds about 1% of the reference
COARSE_EVERY = 10  # every tenth percentile edge is a decile edge, for PSI
MAX_CATEGORIES = 50

PROFILE_VERSION = 1


def category_key(value: Any) -> str:
    """The category a raw value is counted as: strings as they are, anything else as JSON.

    >>> [category_key(v) for v in ("eu", True, 3, 2.5)]
    ['eu', 'true', '3', '2.5']
    """
    if type(value) is str:
        return value
    return orjson.dumps(value).decode()


def infer_kind(values: Iterable[Any]) -> FeatureKind:
    """Numeric when every present value is a number (bools are not), categorical otherwise.

    >>> infer_kind([1, 2.5, None]), infer_kind([1, "a"]), infer_kind([True, False])
    ('numeric', 'categorical', 'categorical')
    """
    seen = False
    for v in values:
        if v is None:
            continue
        seen = True
        if type(v) not in (int, float):
            return "categorical"
    return "numeric" if seen else "categorical"


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesProfile:
    """The bins of one series and the reference's count in each."""

    name: str
    kind: FeatureKind
    edges: tuple[float, ...] = ()  # numeric: fine-grid inner edges, sorted, unique
    coarse_edges: tuple[float, ...] = ()  # numeric: the decile edges, a subset of ``edges``
    categories: tuple[str, ...] = ()  # categorical: one bin each, then OTHER
    counts: tuple[int, ...] = ()  # reference counts per bin, the missing bin last

    @property
    def n_bins(self) -> int:
        """Bins including the missing bin (and OTHER for a categorical series)."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        return len(self.categories) + 2

    @property
    def missing_bin(self) -> int:
        return self.n_bins - 1

    def bin_values(self, values: Sequence[Any]) -> np.ndarray:
        """The bin of each raw value.

        >>> s = profile_series("x", "numeric", [1.0, 2.0, 3.0, 4.0])
        >>> s.bin_values([0.5, 2.0, 9.0, None, "a"]).tolist()[-2:] == [s.missing_bin] * 2
        True
        """
        if self.kind == "numeric":
            try:  # the common case, every value a number: one C loop (a bool counts as 0 or 1)
                x = np.fromiter(values, dtype=np.float64, count=len(values))
            except (TypeError, ValueError):
                x = np.fromiter(
                    (v if type(v) in (int, float) else math.nan for v in values), dtype=np.float64, count=len(values)
                )
            bins = np.searchsorted(np.asarray(self.edges), x, side="right")
            bins[np.isnan(x)] = self.missing_bin
            return bins
        index = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        # raw value -> bin, keyed by type too (True and 1 are different categories); most
        # batches repeat a handful of values, so category_key runs once per distinct value
        memo: dict[tuple[type, Any], int] = {}
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            key = (v.__class__, v)
            found = memo.get(key)
            if found is None:
                found = memo[key] = self.missing_bin if v is None else index.get(category_key(v), other)
            out[i] = found
        return out

    def fine_to_coarse(self) -> np.ndarray:
        """For a numeric series, the PSI bin of each fine bin (the missing bin stays last).

        >>> s = profile_series("x", "numeric", list(range(1000)))
        >>> len(set(s.fine_to_coarse().tolist())), s.n_bins
        (11, 101)
        """
        if self.kind != "numeric":
            return np.arange(self.n_bins)
        lower = np.concatenate(([-np.inf], np.asarray(self.edges)))
        coarse = np.searchsorted(np.asarray(self.coarse_edges), lower, side="right")
        return np.concatenate((coarse, [len(self.coarse_edges) + 1]))

    def bin_labels(self) -> list[str]:
        """A readable name for each bin."""
        if self.kind == "numeric":
            e = [f"{v:.4g}" for v in self.edges]
            inner = [f"[{a}, {b})" for a, b in zip(e, e[1:], strict=False)]
            first = [f"< {e[0]}"] if e else ["all"]
            last = [f">= {e[-1]}"] if e else []
            return [*first, *inner, *last, MISSING]
        return [*self.categories, OTHER, MISSING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": list(self.edges),
            "coarse_edges": list(self.coarse_edges),
            "categories": list(self.categories),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeriesProfile:
        return cls(
            name=d["name"],
            kind=d["kind"],
            edges=tuple(float(x) for x in d["edges"]),
            coarse_edges=tuple(float(x) for x in d["coarse_edges"]),
            categories=tuple(d["categories"]),
            counts=tuple(int(x) for x in d["counts"]),
        )


def profile_series(
    name: str, kind: FeatureKind, values: Sequence[Any], *, max_categories: int = MAX_CATEGORIES
) -> SeriesProfile:
    """Bins for one series from its reference values, and the reference counted in them.

    Ties merge edges instead of leaving empty bins: a feature that is 0 in half the rows gets
    fewer than ten decile bins.

    >>> s = profile_series("x", "numeric", [0] * 50 + list(range(1, 51)))
    >>> len(s.coarse_edges) < 9, sum(s.counts)
    (True, 100)
    >>> c = profile_series("plan", "categorical", ["a", "a", "b", None])
    >>> c.categories, c.counts
    (('a', 'b'), (2, 1, 0, 1))
    """
    if kind == "numeric":
        x = np.array([v for v in values if type(v) in (int, float) and not math.isnan(v)], dtype=np.float64)
        if len(x):
            q = np.quantile(x, np.arange(1, FINE_QUANTILES) / FINE_QUANTILES)
            edges = np.unique(q)
            coarse = np.unique(q[COARSE_EVERY - 1 :: COARSE_EVERY])
        else:
            edges = coarse = np.array([], dtype=np.float64)
        series = SeriesProfile(
            name=name, kind=kind, edges=tuple(edges.tolist()), coarse_edges=tuple(coarse.tolist())
        )
    else:
        freq = Counter(category_key(v) for v in values if v is not None)
        # most frequent first, ties by name, so the same data always gives the same bins
        top = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
        series = SeriesProfile(name=name, kind=kind, categories=tuple(sorted(c for c, _ in top)))
    counts = np.bincount(series.bin_values(values), minlength=series.n_bins)
    return SeriesProfile(
        name=series.name,
        kind=series.kind,
        edges=series.edges,
        coarse_edges=series.coarse_edges,
        categories=series.categories,
        counts=tuple(int(c) for c in counts),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceProfile:
    """A model version's reference: one :class:`SeriesProfile` per monitored series."""

    model_name: str
    model_version: str
    source: str  # "import:<file name>" or "first <N> predictions"
    n_rows: int
    series: Mapping[str, SeriesProfile]

    def to_json(self) -> bytes:
        return orjson.dumps({
            "profile_version": PROFILE_VERSION,
            "series": [s.to_dict() for s in self.series.values()],
        })

    @classmethod
    def from_row(cls, model_name: str, model_version: str, source: str, n_rows: int, doc: Mapping[str, Any]):
        series = {d["name"]: SeriesProfile.from_dict(d) for d in doc["series"]}
        return cls(model_name=model_name, model_version=model_version, source=source, n_rows=n_rows, series=series)


def build_profile(
    model_name: str,
    model_version: str,
    columns: Mapping[str, Sequence[Any]],
    kinds: Mapping[str, FeatureKind],
    *,
    source: str,
) -> ReferenceProfile:
    """Profile every column; a column's kind comes from ``kinds`` or is inferred from its values.

    >>> p = build_profile("churn", "v1", {"age": [30, 40, 50], "plan": ["a", "b", "a"]}, {}, source="test")
    >>> {n: s.kind for n, s in p.series.items()}
    {'age': 'numeric', 'plan': 'categorical'}
    """
    n_rows = max((len(v) for v in columns.values()), default=0)
    series = {
        name: profile_series(name, kinds.get(name) or infer_kind(values), values)
        for name, values in sorted(columns.items())
    }
    return ReferenceProfile(
        model_name=model_name, model_version=model_version, source=source, n_rows=n_rows, series=series
    )
