"""A ramp's figures as the store keeps them: each arm's requests, failures, latency and labelled errors per period of
the ramp, read in a few rows at every look, whatever the ramp's size.

Triggers on ``predictions``, ``current_labels`` and ``shadow_predictions`` (migration 019) keep them in the writer's
transaction as routed requests, their labels (and corrections) and the champion's shadow scores land, through a
ledger (``ramp_rows``) that says what the figures hold for each request, so every change counts once. A look turns
them into the :class:`~feedback.rollout.rules.ArmStats` the rules judge; :func:`feedback.rollout.controller.arm_stats`
computes the same from the raw rows (the side-by-side test holds them equal).

A ramp's periods: its start, each later step, a resume and the hold each begin one; a request belongs to the period
its ``predicted_at`` falls after. The controller begins a period only under the model's counting lock held
exclusively (:func:`cut`): every ingest batch holds it shared, so a batch counts its requests either wholly before
the new period exists or wholly after, and the period begins at the watermark read under the lock.

Latency percentiles come from buckets 2% wide (logarithmic): within 1% of ``percentile_cont``'s.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import psycopg

from feedback.monitoring.windows import PROFILE_LOCK_CLASS
from feedback.rollout.rules import ArmStats, UnitStats, UserSums, cuped_sums, with_adjusted
from feedback.store.database import lock_key

WHOLE = -1  # the whole ramp: its periods' counts summed (its users' figures are kept per period only)
#: a step's CUPED adjustment needs the champion's shadow-scored prediction on at least this share of the
#: challenger's labelled requests (the rollout worker scores them within seconds; labels come later)
CUPED_MIN_COVERAGE = 0.9
#: the latency buckets' growth: a bucket holds (GAMMA^(i-1), GAMMA^i] ms
GAMMA = 1.02
#: the top bucket holds every latency past this (migration 019's ``ramp_bucket``): a percentile reads it as this
LATENCY_CEILING_MS = 1e300
#: placeholders (labels stored before their prediction) older than this are dropped: they only have to outlive the
#: transactions that could meet them
PLACEHOLDER_S = 600

_ARMS = """
SELECT period, version, part, requests, failures, labelled, error_sum, users, sum_m, sum_m2, c_labelled, c_users,
       c_sy, c_sx, c_syy, c_sxx, c_sxy
FROM ramp_arms WHERE rollout_id = %s
"""
_LATENCY = """
SELECT period, version, bucket, n FROM ramp_latency
WHERE rollout_id = %(rollout)s AND (%(periods)s::int[] IS NULL OR period = ANY(%(periods)s::int[]))
ORDER BY bucket
"""
_LOCK_EXCLUSIVE = f"SELECT pg_advisory_xact_lock(%s, {lock_key()})"


@dataclass(frozen=True, slots=True)
class Sums:
    """One ``ramp_arms`` row: a period's figures for one arm and one part ('' or ``attribute=value``)."""

    requests: int = 0
    failures: int = 0
    labelled: int = 0
    error_sum: float = 0.0
    users: int = 0
    sum_m: float = 0.0
    sum_m2: float = 0.0
    c_labelled: int = 0
    c_users: int = 0
    c_sy: float = 0.0
    c_sx: float = 0.0
    c_syy: float = 0.0
    c_sxx: float = 0.0
    c_sxy: float = 0.0

    def units(self) -> UnitStats:
        """The users' mean errors: count, mean and (unbiased) variance, as ``controller.unit_stats`` gives them."""
        n = self.users
        if n <= 0:
            return UnitStats()
        mean = self.sum_m / n
        var = max(self.sum_m2 - self.sum_m * self.sum_m / n, 0.0) / (n - 1) if n > 1 else 0.0
        return UnitStats(n=n, mean=mean, var=var)

    def with_covariate(self) -> UserSums:
        return UserSums(n=self.c_users, sy=self.c_sy, sx=self.c_sx, syy=self.c_syy, sxx=self.c_sxx, sxy=self.c_sxy)


_SUMS = tuple(f.name for f in fields(Sums))


class Figures:
    """The figures of one ramp as stored: ``arms(period, versions)`` gives each arm's :class:`ArmStats`."""

    def __init__(self, sums: Mapping[tuple[int, str, str], Sums], latency: Mapping[tuple[int, str], Sequence[Any]]):
        self.sums = sums
        self.latency = latency

    def arms(self, period: int, versions: Sequence[str], *,
             covariate: tuple[str, str] | None = None) -> dict[str, ArmStats]:
        """Each version's figures in ``period`` (:data:`WHOLE`: the ramp); ``covariate`` (challenger, champion):
        both arms' users' figures CUPED-adjusted where the rule applies (as ``controller.arm_stats`` does)."""
        stats = {v: self.arm(period, v) for v in versions}
        if covariate is not None:
            self.adjust(stats, period, *covariate)
        return stats

    def arm(self, period: int, version: str) -> ArmStats:
        """One version's figures in ``period``; over the whole ramp (:data:`WHOLE`) its requests, failures, latency
        and labelled error, without the users' figures (a user's mean error over the ramp is not the sum of the
        periods', and the rules compare users within each period)."""
        if period == WHOLE:
            return self._whole(version)
        whole = self.sums.get((period, version, ""), Sums())
        n, p95, p99 = _percentiles(self.latency.get((period, version), ()))
        stats = ArmStats(version=version, requests=whole.requests, failures=whole.failures, latency_n=n,
                         latency_p95_ms=p95, latency_p99_ms=p99)
        if whole.labelled <= 0:
            return stats
        segments = {part: s.units() for (p, v, part), s in self.sums.items()
                    if p == period and v == version and part and s.users > 0}
        return replace(stats, labelled=whole.labelled, error=whole.error_sum / whole.labelled, units=whole.units(),
                       segments=dict(sorted(segments.items())))

    def _whole(self, version: str) -> ArmStats:
        parts = [s for (_, v, part), s in self.sums.items() if v == version and part == ""]
        buckets: dict[int, int] = defaultdict(int)
        for (_, v), rows in self.latency.items():
            if v == version:
                for bucket, count in rows:
                    buckets[bucket] += count
        n, p95, p99 = _percentiles(sorted(buckets.items()))
        labelled, error_sum = sum(s.labelled for s in parts), sum(s.error_sum for s in parts)
        return ArmStats(version=version, requests=sum(s.requests for s in parts),
                        failures=sum(s.failures for s in parts), latency_n=n, latency_p95_ms=p95, latency_p99_ms=p99,
                        labelled=labelled, error=error_sum / labelled if labelled > 0 else None)

    def requests(self, period: int, versions: Sequence[str]) -> dict[str, int]:
        return {v: self.sums.get((period, v, ""), Sums()).requests for v in versions}

    def adjust(self, stats: dict[str, ArmStats], period: int, challenger: str, champion: str) -> None:
        """Both arms' users' figures, overall and per segment value, CUPED-adjusted with the champion's error on each
        request as covariate, where at least ``CUPED_MIN_COVERAGE`` of the challenger's labelled requests have it and
        the rule applies (:func:`~feedback.rollout.rules.cuped_sums`)."""
        b, a = self.sums.get((period, challenger, "")), self.sums.get((period, champion, ""))
        if b is None or a is None or min(b.labelled, a.labelled) <= 0:
            return
        if b.c_labelled < CUPED_MIN_COVERAGE * b.labelled:
            return
        adjusted = {}
        for (p, v, part), pb in sorted(self.sums.items()):
            pa = self.sums.get((period, champion, part))
            if p != period or v != challenger or pb.c_users <= 0 or pa is None or pa.labelled <= 0:
                continue
            if (pair := cuped_sums(pb.with_covariate(), pa.with_covariate())) is not None:
                adjusted[part] = pair
        with_adjusted(stats, challenger, champion, adjusted)


def read(cur: psycopg.Cursor[Any], rollout_id: str, latency_periods: Sequence[int] | None = None) -> Figures:
    """The stored figures of a ramp, with the latency buckets of ``latency_periods`` (None: every period's, which
    the whole ramp's percentiles need): a few hundred rows."""
    sums = {}
    for row in cur.execute(_ARMS, (rollout_id,)).fetchall():
        values = tuple(row.values()) if isinstance(row, dict) else tuple(row)
        period, version, part, *rest = values
        sums[(period, version, part)] = Sums(**dict(zip(_SUMS, rest, strict=True)))
    latency: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    periods = None if latency_periods is None else list(latency_periods)
    for row in cur.execute(_LATENCY, {"rollout": rollout_id, "periods": periods}).fetchall():
        period, version, bucket, n = tuple(row.values()) if isinstance(row, dict) else tuple(row)
        latency[(period, version)].append((bucket, n))
    return Figures(sums, latency)


def _percentiles(buckets: Sequence[tuple[int, int]]) -> tuple[int, float | None, float | None]:
    """How many timed requests, and their p95 and p99 as ``percentile_cont`` interpolates them (each order
    statistic read as its bucket's middle: within 1% of the exact value)."""
    n = sum(c for _, c in buckets)
    if n == 0:
        return 0, None, None
    return n, _quantile(buckets, n, 0.95), _quantile(buckets, n, 0.99)


def _quantile(buckets: Sequence[tuple[int, int]], n: int, q: float) -> float:
    position = q * (n - 1)
    lower, upper = math.floor(position), math.ceil(position)
    low = high = None
    seen = 0
    for bucket, count in buckets:  # in bucket order
        if low is None and lower < seen + count:
            low = _middle(bucket)
        if upper < seen + count:
            high = _middle(bucket)
            break
        seen += count
    assert low is not None and high is not None
    return low + (high - low) * (position - lower)


def _middle(bucket: int) -> float:
    return 2 * GAMMA ** bucket / (GAMMA + 1)


# -- the controller's writes ---------------------------------------------------------------------------------------

def cut(cur: psycopg.Cursor[Any], model: str) -> None:
    """Hold ``model``'s counting lock exclusively until the transaction ends: no ingest batch of it is under way
    meanwhile, so a watermark read after this is the last request any period holds so far."""
    cur.execute(_LOCK_EXCLUSIVE, (PROFILE_LOCK_CLASS, model))


def begin(cur: psycopg.Cursor[Any], rollout_id: str, at: datetime) -> None:
    """A new period of the ramp begins after ``at`` (the caller holds :func:`cut`)."""
    cur.execute("UPDATE rollouts SET period_starts = period_starts || %s::timestamptz WHERE rollout_id = %s",
                (at, rollout_id))


def build(cur: psycopg.Cursor[Any], rollout_id: str, starts: Sequence[datetime], task: str,
          segments: Sequence[str]) -> None:
    """Build a ramp's figures from the rows stored (a ramp under way before its figures were kept, or rows loaded
    around the triggers): O(its rows), once; the caller holds :func:`cut`."""
    cur.execute("UPDATE rollouts SET period_starts = %s, task = %s, segments = %s WHERE rollout_id = %s",
                (list(starts), task, list(segments), rollout_id))
    cur.execute("SELECT ramp_rebuild(%s)", (rollout_id,))


def forget(cur: psycopg.Cursor[Any], rollout_id: str) -> None:
    """A ramp ended: its ledger and per-user rows go (the per-arm figures stay, a few rows); so do placeholders once no
    ramp is under way, and those older than ``PLACEHOLDER_S`` anyway."""
    cur.execute("DELETE FROM ramp_rows WHERE rollout_id = %s", (rollout_id,))
    cur.execute("DELETE FROM ramp_units WHERE rollout_id = %s", (rollout_id,))
    tidy(cur)


def tidy(cur: psycopg.Cursor[Any]) -> None:
    """Drop the placeholders no transaction can meet any more (at every look of a ramp: labels of other models'
    predictions, stored first, would pile up over a ramp's weeks). One the prediction comes for later is not needed:
    its writer finds the label committed."""
    cur.execute("DELETE FROM ramp_rows WHERE rollout_id IS NULL AND (placed_at < now() - make_interval(secs => %s)"
                " OR NOT EXISTS (SELECT 1 FROM active_rollouts))",
                (PLACEHOLDER_S,))
