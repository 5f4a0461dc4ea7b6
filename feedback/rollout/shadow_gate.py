"""The shadow gate, pure: a candidate's verdict from its labelled shadow rows (numpy arrays), with a sentence for
every check. feedback/rollout/shadow.py loads the rows, applies the verdict and records it; this module reads
no database and keeps no state, and is tested on arrays (tests/unit/test_shadow_gate.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest

from feedback.config import RolloutConfig
from feedback.monitoring.profile import category_key
from feedback.rollout.rules import paired_gain

#: the early fail: a failure rate above the limit with a one-sided exact binomial p-value below this
EARLY_FAIL_P = 0.01


# --- the gate --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowRows:
    """The labelled shadow rows a verdict is computed on, one element per request, and the scoring counts.

    ``labels``, ``served`` and ``shadow`` hold category keys (classification) or numbers (regression); a failed
    shadow row has ``failed`` set and any ``shadow`` value. ``served_proba`` / ``shadow_proba`` are the
    positive-class probabilities (NaN where missing), or None when a side has none. ``scored`` and
    ``failures`` count every scored row, labelled or not (failures need no label): they default to the
    labelled rows'. ``latency`` holds reported figures only (``shadow_p99_ms``, ``served_p99_ms``, ``timed``).
    """

    labels: np.ndarray
    served: np.ndarray
    shadow: np.ndarray
    failed: np.ndarray
    served_proba: np.ndarray | None = None
    shadow_proba: np.ndarray | None = None
    #: a multiclass model's rows: the total variation distance between the two sides' class probabilities
    #: (:func:`probability_gap`; NaN where a side has none), which bounds the disagreement tail instead
    proba_gap: np.ndarray | None = None
    scored: int | None = None
    failures: int | None = None
    latency: Mapping[str, Any] = field(default_factory=dict)
    #: each labelled row's user (the router's key, else the request): the paired test averages a user's rows first
    units: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        arrays = {"served": self.served, "shadow": self.shadow, "failed": self.failed,
                  "served_proba": self.served_proba, "shadow_proba": self.shadow_proba, "proba_gap": self.proba_gap,
                  "units": self.units}
        for name, a in arrays.items():
            if a is not None and len(a) != n:
                msg = f"{name} has {len(a)} rows, labels {n}"
                raise ValueError(msg)
        object.__setattr__(self, "failed", np.asarray(self.failed, dtype=bool))
        if self.scored is None:
            object.__setattr__(self, "scored", n)
        if self.failures is None:
            object.__setattr__(self, "failures", int(self.failed.sum()))


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowCheck:
    """One criterion of the gate: passed, failed, or None when it is reported and not judged."""

    name: str
    passed: bool | None
    observed: float | None
    threshold: float | None
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowVerdict:
    """The gate's verdict with every figure (``figures`` is JSON-able: the ``shadows.verdict`` column and the
    event's evidence), each criterion's sentence, and whether agreement is low enough to tell a person."""

    status: Literal["waiting", "passed", "failed", "expired"]
    sentence: str
    checks: tuple[ShadowCheck, ...]
    figures: Mapping[str, Any]
    escalate: bool = False


def shadow_verdict(rows: ShadowRows, config: RolloutConfig, *, task: str, positive_class: Any = None,
                   duration_s: float, urgent: str | None = None) -> ShadowVerdict:
    """The shadow gate on labelled rows (``duration_s``: event time since the shadow started).

    Error per row: misclassified (0/1) for classification, the absolute error for regression. A failed shadow
    row counts as an error: wrong for classification; for regression, the largest absolute error the shadow made
    on the labelled rows it answered (infinite when it answered none). Regression rows whose label or served
    prediction is not a finite number are left out.

    ``waiting`` until ``shadow_min_labels`` labelled rows and ``shadow_min_duration_s`` of event time; then
    ``passed`` iff challenger error <= ``shadow_max_ratio`` x champion error, the failure rate (of every scored
    row) <= ``shadow_max_failure_rate``, and the disagreement tail is bounded: classification with probabilities on
    both sides, p99 |shadow p(positive) - served p(positive)| <= ``gap_p99_proba`` (a multiclass model, no positive
    class: the p99 of ``rows.proba_gap``, the total variation distance between the class probabilities, which is
    that same gap for two classes); regression, p99 |shadow -
    served| <= ``gap_p99_ratio`` x the champion's p99 absolute error (classification without probabilities: not
    bounded, and said so); else ``failed``. Once ``min_requests`` rows are scored, a failure rate significantly
    above the limit (one-sided exact binomial test, p < 0.01) fails at once. ``expired`` when
    ``shadow_max_duration_s`` passes without the labels. Agreement (classification: the same class; regression:
    |gap| <= the champion's MAE) is reported; below ``agreement_alert`` on at least ``shadow_min_labels`` rows it
    asks for a person (``escalate``), and fails nothing.

    ``urgent`` (the sentence of the champion confirmed degraded in the episode the candidate answers): waiting costs
    the champion's error on every request, so the shadow passes before its labels and duration once it has
    ``shadow_urgent_min_labels`` labelled rows, the judged checks pass, and the paired test shows the challenger's
    error below the champion's on the same requests (one-sided, each user one unit, p < ``EARLY_FAIL_P``; the
    ramp's always-valid test and rollback rules still follow).

    >>> from feedback.config import RolloutConfig
    >>> y = np.array(["1", "0"] * 600)
    >>> served = y.copy(); served[:120] = "0"
    >>> shadow = y.copy(); shadow[:100] = "0"
    >>> v = shadow_verdict(ShadowRows(labels=y, served=served, shadow=shadow, failed=np.zeros(1200, bool)),
    ...                    RolloutConfig(), task="classification", positive_class=1, duration_s=90_000)
    >>> v.status, v.checks[2].sentence
    ('passed', 'challenger error 0.0417 <= 1.10 x champion 0.05 = 0.055 on 1,200 labelled requests: passed')
    """
    labels, served, shadow, failed, units = rows.labels, rows.served, rows.shadow, rows.failed, rows.units
    if task == "regression":
        y, s, c = (np.asarray(a, dtype=np.float64) for a in (labels, served, np.where(failed, np.nan, shadow)))
        usable = np.isfinite(y) & np.isfinite(s)
        y, s, c, failed = y[usable], s[usable], c[usable], failed[usable]
        units = units[usable] if units is not None else None
        ok = ~failed & np.isfinite(c)
        failed = ~ok
        champion_abs = np.abs(s - y)
        shadow_abs = np.abs(c - y)
        worst = float(shadow_abs[ok].max()) if ok.any() else np.inf
        challenger_errors = np.where(ok, shadow_abs, worst)
        champion_errors = champion_abs
        gaps = np.abs(c - s)[ok]
        tail_errors = (shadow_abs[ok], champion_abs[ok])
        champion_mae = float(champion_abs.mean()) if len(y) else np.nan
        agree = ok & (np.abs(c - s) <= champion_mae)
        n = len(y)
    else:
        ok = ~failed
        champion_errors = (served != labels).astype(np.float64)
        challenger_errors = np.where(ok, shadow != labels, True).astype(np.float64)
        agree = ok & (shadow == served)
        gaps = None
        tail_errors = (np.empty(0), np.empty(0))
        if rows.proba_gap is not None:
            both = ok & np.isfinite(rows.proba_gap)
            if both.any():
                gaps = np.asarray(rows.proba_gap, dtype=np.float64)[both]
                tail_errors = (challenger_errors[both], champion_errors[both])
        elif rows.served_proba is not None and rows.shadow_proba is not None:
            both = ok & np.isfinite(rows.served_proba) & np.isfinite(rows.shadow_proba)
            if both.any():
                gaps = np.abs(rows.shadow_proba[both] - rows.served_proba[both])
                tail_errors = (challenger_errors[both], champion_errors[both])
        n = len(labels)
    scored, failures = int(rows.scored or 0), int(rows.failures or 0)
    figures: dict[str, Any] = {"n_labelled": n, "duration_s": float(duration_s), "scored": scored,
                               "failures": failures, "task": task}
    checks: list[ShadowCheck] = []

    enough_labels = n >= config.shadow_min_labels
    long_enough = duration_s >= config.shadow_min_duration_s
    checks.append(ShadowCheck(name="labels", passed=enough_labels, observed=n, threshold=config.shadow_min_labels,
                              sentence=f"{n:,} labelled requests {'>=' if enough_labels else '<'} "
                                       f"{config.shadow_min_labels:,}"))
    checks.append(ShadowCheck(name="duration", passed=long_enough, observed=duration_s,
                              threshold=config.shadow_min_duration_s,
                              sentence=f"{span(duration_s)} of event time {'>=' if long_enough else '<'} "
                                       f"{span(config.shadow_min_duration_s)}"))

    champion_error = float(champion_errors.mean()) if n else np.nan
    challenger_error = float(challenger_errors.mean()) if n else np.nan
    limit = config.shadow_max_ratio * champion_error
    error_ok = bool(n) and challenger_error <= limit
    checks.append(ShadowCheck(
        name="error_ratio", passed=error_ok if n else None, observed=finite(challenger_error),
        threshold=finite(limit),
        sentence=(f"challenger error {_num(challenger_error)} {'<=' if error_ok else '>'} "
                  f"{config.shadow_max_ratio:.2f} x champion {_num(champion_error)} = {_num(limit)} on {n:,} "
                  f"labelled requests: {'passed' if error_ok else 'failed'}") if n else "no labelled request yet"))
    figures.update(champion_error=finite(champion_error), challenger_error=finite(challenger_error),
                   error_threshold=finite(limit), max_ratio=config.shadow_max_ratio)

    rate = failures / scored if scored else 0.0
    rate_ok = rate <= config.shadow_max_failure_rate
    p_value = (float(binomtest(failures, scored, config.shadow_max_failure_rate, alternative="greater").pvalue)
               if scored and failures else 1.0)
    early = scored >= config.min_requests and not rate_ok and p_value < EARLY_FAIL_P
    sentence = (f"failures {failures:,} of {scored:,} scored requests = {rate:.2%} {'<=' if rate_ok else '>'} "
                f"{config.shadow_max_failure_rate:.2%}")
    if early:
        sentence += f", significantly (one-sided binomial p = {p_value:.2g} < {EARLY_FAIL_P}): failed at once"
    else:
        sentence += f": {'passed' if rate_ok else 'failed'}"
    checks.append(ShadowCheck(name="failure_rate", passed=rate_ok, observed=rate,
                              threshold=config.shadow_max_failure_rate, sentence=sentence))
    figures.update(failure_rate=rate, max_failure_rate=config.shadow_max_failure_rate, binomial_p=p_value,
                   early_fail=early)

    checks.append(_tail_check(task, gaps, champion_errors, config, positive_class, tail_errors,
                              multiclass=rows.proba_gap is not None))
    figures.update(gap_p99=checks[-1].observed, gap_threshold=checks[-1].threshold)

    agreement = float(agree.mean()) if n else None
    escalate = agreement is not None and enough_labels and agreement < config.agreement_alert
    if agreement is None:
        agreement_sentence = "agreement not measured yet"
    else:
        agreement_sentence = (f"agreement {agreement:.1%} {'<' if agreement < config.agreement_alert else '>='} "
                              f"{config.agreement_alert:.0%}")
        if escalate:
            agreement_sentence += ": escalated to a person (it fails nothing)"
    checks.append(ShadowCheck(name="agreement", passed=None, observed=agreement, threshold=config.agreement_alert,
                              sentence=agreement_sentence))
    figures.update(agreement=agreement, agreement_alert=config.agreement_alert, escalate=escalate)
    latency = dict(rows.latency)
    if latency.get("shadow_p99_ms") is not None:
        served_p99 = latency.get("served_p99_ms")
        served_text = f", served p99 {_num(served_p99)} ms" if served_p99 is not None else ""
        checks.append(ShadowCheck(
            name="latency", passed=None, observed=latency["shadow_p99_ms"], threshold=None,
            sentence=(f"shadow p99 latency {_num(latency['shadow_p99_ms'])} ms on {latency.get('timed', 0):,} "
                      f"requests timed alone{served_text}: reported, not judged")))
    figures["latency"] = latency

    judged = (checks[2], checks[3], checks[4])
    gain_p, gain_users = (paired_gain(challenger_errors, champion_errors, units if units is not None else range(n))
                          if urgent is not None and n >= config.shadow_urgent_min_labels else (None, 0))
    figures.update(urgent=urgent, gain_p=gain_p, gain_users=gain_users)
    if early:
        status, headline = "failed", f"failed: {checks[3].sentence}"
    elif (gain_p is not None and gain_p < EARLY_FAIL_P and not (enough_labels and long_enough)
          and all(c.passed is not False for c in judged)):
        status = "passed"
        headline = (f"passed early: {urgent}; the challenger's error is below the champion's on the same requests "
                    f"(paired p = {gain_p:.2g} on {gain_users:,} users, {n:,} labelled requests); "
                    f"{'; '.join(c.sentence for c in judged)}")
    elif enough_labels and long_enough:
        failing = [c for c in judged if c.passed is False]
        status = "failed" if failing else "passed"
        shown = failing if failing else [c for c in judged]
        headline = f"{status}: {'; '.join(c.sentence for c in shown)}"
    elif duration_s >= config.shadow_max_duration_s:
        status = "expired"
        headline = (f"expired: {n:,} of {config.shadow_min_labels:,} labelled requests after "
                    f"{span(duration_s)}")
    else:
        status = "waiting"
        headline = (f"waiting: {n:,} of {config.shadow_min_labels:,} labelled requests, {span(duration_s)} of "
                    f"{span(config.shadow_min_duration_s)}")
    figures.update(status=status, sentence=headline, checks=[
        {"name": c.name, "passed": c.passed, "observed": finite(c.observed), "threshold": finite(c.threshold),
         "sentence": c.sentence} for c in checks])
    return ShadowVerdict(status=status, sentence=headline, checks=tuple(checks), figures=figures,  # type: ignore[arg-type]
                         escalate=escalate)


def _tail_check(task: str, gaps: np.ndarray | None, champion_errors: np.ndarray, config: RolloutConfig,
                positive_class: Any, tail_errors: tuple[np.ndarray, np.ndarray], *,
                multiclass: bool = False) -> ShadowCheck:
    """The disagreement tail: the p99 of the prediction gap against its bound, and who is right out there.

    A gap past the bound fails only when the requests past it resolve against the challenger (its mean error on
    them above the champion's): a model retrained after drift disagrees most, and confidently, exactly where the
    stale champion is wrong, and that tail is its gain; a model that agrees on 95% and is confidently wrong on the
    rest (seed 003) has the same tail, resolved the other way. ``tail_errors``: the challenger's and the
    champion's errors on the rows of ``gaps``, in the same order.
    """
    if task == "regression":
        if gaps is None or not len(gaps) or not len(champion_errors):
            return ShadowCheck(name="gap_tail", passed=None, observed=None, threshold=None,
                               sentence="no answered labelled request yet: the disagreement tail is not measured")
        champion_p99 = float(np.percentile(champion_errors, 99))
        bound = config.gap_p99_ratio * champion_p99
        what = (f"p99 |gap| {{}} {{}} {config.gap_p99_ratio:.1f} x champion p99 absolute error {_num(champion_p99)} "
                f"= {_num(bound)}")
    else:
        if gaps is None:
            return ShadowCheck(name="gap_tail", passed=None, observed=None, threshold=None,
                               sentence="no class probabilities on both sides: the disagreement tail is not bounded")
        bound = config.gap_p99_proba
        if multiclass:
            what = f"p99 of the class-probability distance (total variation) {{}} {{}} {bound:.2f}"
        else:
            label = f"p({category_key(positive_class)})" if positive_class is not None else "p(positive)"
            what = f"p99 of the {label} gap {{}} {{}} {bound:.2f}"
    p99 = float(np.percentile(gaps, 99))
    if p99 <= bound:
        return ShadowCheck(name="gap_tail", passed=True, observed=p99, threshold=bound,
                           sentence=f"{what.format(_num(p99), '<=')}: passed")
    past = gaps > bound
    challenger, champion = (float(e[past].mean()) if past.any() else 0.0 for e in tail_errors)
    ok = challenger <= champion
    return ShadowCheck(name="gap_tail", passed=ok, observed=p99, threshold=bound, sentence=(
        f"{what.format(_num(p99), '>')}; on the {int(past.sum()):,} labelled requests past it the challenger's "
        f"error {_num(challenger)} {'<=' if ok else '>'} the champion's {_num(champion)}: "
        f"{'passed, the disagreement is its gain' if ok else 'failed, it disagrees and is wrong'}"))



def probability_gap(served: Mapping[str, float] | None, shadow: Mapping[str, float] | None) -> float:
    """How far apart two class-probability answers are: the total variation distance, half the summed absolute
    differences over every class either names (a class one leaves out has 0 there); NaN when a side has none.
    For two classes it is the binary gate's |p(positive) - p'(positive)|.

    >>> probability_gap({"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 0.1, "b": 0.2, "c": 0.7})
    0.6
    >>> probability_gap({"0": 0.3, "1": 0.7}, {"0": 0.6, "1": 0.4}), probability_gap(None, {"a": 1.0})
    (0.3, nan)
    """
    if not served or not shadow:
        return float("nan")
    keys = set(served) | set(shadow)
    total = sum(abs(float(served.get(k, 0.0)) - float(shadow.get(k, 0.0))) for k in keys)
    return round(total / 2, 12)



def finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _num(x: Any) -> str:
    """A figure for a sentence: three significant digits, thousands grouped.

    >>> _num(0.24123), _num(4.0), _num(1234.5), _num(float("inf"))
    ('0.241', '4', '1,234', 'inf')
    """
    if x is None:
        return "n/a"
    x = float(x)
    if not np.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def span(seconds: float) -> str:
    """An event-time duration in words.

    >>> span(14 * 86_400), span(90_000), span(10_800), span(600)
    ('14 days', '25.0 h', '3.0 h', '10 min')
    """
    if seconds >= 2 * 86_400:
        days = seconds / 86_400
        return f"{days:.0f} days" if days == round(days) else f"{days:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min"
