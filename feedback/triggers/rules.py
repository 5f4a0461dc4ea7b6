"""The retrain decision rules: pure functions over a version's judged windows, tested without a database.

The rule is seed 003's prose (not its code, which divides by a zero baseline, ignores the metric's
direction and never retrains on a drop without drift):

* a **critical** performance drop retrains at once (urgency ``critical``);
* drift confirmed by an **elevated** drop retrains (``elevated``);
* an elevated drop **without** feature drift that persists ``persist`` windows retrains (``elevated``:
  concept drift shows in the labels, not in the features);
* drift with stable performance is ``watch``: logged, no retraining;
* drift that persists while labels are too few to judge performance is ``unjudged``: an alert, not silence.

Many drifting features make one decision. A drift or performance decision carries its **change point**, the
start of the first window of the episode, and the labels since then; the retrain worker trains on the new
concept, so a decision whose post-change labels are still too few is ``pending`` until they suffice (a critical
drop fires at once unless ``critical_waits``). Levels are judged on each window's confidence interval, so a
window is "critical" only when even its favourable CI bound is 10% worse than the baseline.

Storm control (:func:`suppression`) then decides whether a retrain that should fire may: cooldown, daily cap,
a training already running, and the circuit breaker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from scipy.special import ndtri

from feedback.config import ModelConfig, TriggerConfig

Kind = Literal["calendar", "drift", "performance", "volume", "manual", "detector", "refit", "pool", "refresh"]
#: kinds whose decision carries a change point: an episode of change, trained from its change point
CHANGE_KINDS: frozenset[str] = frozenset({"drift", "performance", "detector", "refit"})
Urgency = Literal["routine", "elevated", "critical"]
#: fired: an event was published; pending: waits for labels since the change; watch: drift, performance
#: stable; unjudged: drift, labels too few to judge; suppressed: storm control held it back
Status = Literal["fired", "pending", "watch", "unjudged", "suppressed"]
LevelName = Literal["ok", "elevated", "critical"]

_RANK: Mapping[str, int] = {"ok": 0, "elevated": 1, "critical": 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftedSeries:
    """One feature flagged as drifting in a window (after Holm's correction)."""

    feature: str
    psi: float | None
    p_value: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PerfPoint:
    """A judged window's main metric with its confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    labels: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSignal:
    """What the rules need of one window of the version (segment ``*``)."""

    start: datetime
    drift_judged: bool
    series: int  # features judged for drift
    drifted: tuple[DriftedSeries, ...] = ()
    perf: PerfPoint | None = None  # None: not judged (too few labels or coverage)
    labels: int = 0  # labelled predictions in the window


@dataclass(frozen=True, slots=True, kw_only=True)
class Level:
    """A window's performance against the baseline and the floor, as a level and a sentence."""

    name: LevelName
    drop: float | None  # relative change of the point value in the bad direction (None: baseline 0)
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What the windows say about retraining a version, before storm control."""

    kind: Kind
    urgency: Urgency
    status: Status
    change_point: datetime | None
    labels_since_change: int
    labels_needed: int
    sentence: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def wants_retrain(self) -> bool:
        return self.status in ("fired", "pending")


def relative_drop(value: float, baseline: float, *, higher_is_better: bool) -> float | None:
    """How much worse ``value`` is than ``baseline``, as a share of it, in the metric's direction.

    Positive is worse: a falling accuracy and a rising MAE are both drops. None when the baseline is 0
    (nothing to divide by: only the absolute floor can judge such a version).

    >>> accuracy = relative_drop(0.72, 0.80, higher_is_better=True)
    >>> mae = relative_drop(4.61, 4.02, higher_is_better=False)
    >>> round(accuracy, 6), round(mae, 6)
    (0.1, 0.146766)
    >>> relative_drop(0.5, 0.0, higher_is_better=False) is None
    True
    """
    if baseline == 0:
        return None
    change = (baseline - value) if higher_is_better else (value - baseline)
    return change / abs(baseline)


def performance_level(
    point: PerfPoint, baseline: float | None, *, metric: str, higher_is_better: bool, config: TriggerConfig
) -> Level:
    """The level of one judged window: the favourable end of its CI against the baseline's drop limits and the floor.

    >>> from feedback.config import TriggerConfig
    >>> mae = PerfPoint(value=4.61, ci_low=4.50, ci_high=4.72, labels=900)
    >>> level = performance_level(mae, 4.02, metric="mae", higher_is_better=False, config=TriggerConfig())
    >>> level.name, level.sentence
    ('critical', 'mae 4.61 rose 14.7% above baseline 4.02 (critical >= 10%; CI [4.5, 4.72])')
    """
    perf = config.performance
    bound = point.ci_high if higher_is_better else point.ci_low  # the end most favourable to the model
    worse_word = "fell" if higher_is_better else "rose"
    side = "below" if higher_is_better else "above"
    ci = f"CI [{point.ci_low:.4g}, {point.ci_high:.4g}]"
    if perf.floor is not None and (bound < perf.floor if higher_is_better else bound > perf.floor):
        return Level(name="critical", drop=_drop(point.value, baseline, higher_is_better),
                     sentence=f"{metric} {point.value:.4g} is {side} the floor {perf.floor:.4g} ({ci})")
    if baseline is None:
        return Level(name="ok", drop=None, sentence=f"{metric} {point.value:.4g}: no baseline yet ({ci})")
    drop = relative_drop(point.value, baseline, higher_is_better=higher_is_better)
    bound_drop = relative_drop(bound, baseline, higher_is_better=higher_is_better)
    if drop is None or bound_drop is None:
        return Level(name="ok", drop=None, sentence=(
            f"{metric} {point.value:.4g} against baseline 0: a relative drop is undefined, only the floor judges"))
    name: LevelName = "ok"
    for level, limit in (("critical", perf.critical), ("elevated", perf.elevated)):
        if bound_drop >= limit:
            name = level  # type: ignore[assignment]
            break
    if name == "ok":
        how = f"{abs(drop):.1%} {'worse' if drop > 0 else 'better'} than"
        if drop >= perf.elevated:  # the point is past the limit, the interval is not
            verdict = (f"not yet a drop, the CI's better end is {max(bound_drop, 0.0):.1%} worse "
                       f"(elevated >= {perf.elevated:.0%})")
        else:
            verdict = f"within {perf.elevated:.0%}"
        return Level(name="ok", drop=drop, sentence=(
            f"{metric} {point.value:.4g} is {how} baseline {baseline:.4g}: {verdict} ({ci})"))
    limit = perf.critical if name == "critical" else perf.elevated
    return Level(name=name, drop=drop, sentence=(
        f"{metric} {point.value:.4g} {worse_word} {drop:.1%} {side} baseline {baseline:.4g} "
        f"({name} >= {limit:.0%}; {ci})"))


def _drop(value: float, baseline: float | None, higher_is_better: bool) -> float | None:
    return None if baseline is None else relative_drop(value, baseline, higher_is_better=higher_is_better)


def decide(
    signals: Sequence[WindowSignal], baseline: float | None, model: ModelConfig, *, window_s: int | None = None,
    wait: bool = True,
) -> Verdict | None:
    """The retrain verdict on a version's windows (oldest first), or None when nothing is worth a record.

    With ``wait``, labels since the change are counted over ``signals`` and too few make it pending; the engine
    passes ``wait=False`` and applies :func:`wait_for_labels` itself with the labels counted in the store, since
    an episode may have begun before the evaluated span.

    The newest window is usually still filling: runs are counted over judged windows only, so an unjudged
    tail neither breaks nor extends them.
    """
    config = model.triggers
    step = timedelta(seconds=window_s or model.window_s)
    drift_run = _drift_run(signals, config.drift.min_series)
    levels = {
        s.start: performance_level(s.perf, baseline, metric=model.metric, higher_is_better=model.higher_is_better,
                                   config=config)
        for s in signals if s.perf is not None
    }
    perf_run = _perf_run(signals, levels)
    newest_level = _newest_level(signals, levels)
    trend = pooled_drop(signals, baseline, model)
    drift_confirmed = len(drift_run) >= config.drift.windows
    drift_text = _drift_sentence(drift_run) if drift_run else ""

    kind: Kind
    urgency: Urgency
    run_start: datetime
    if newest_level is not None and newest_level.name == "critical":
        kind, urgency, status = "performance", "critical", "fired"
        run_start = _earliest(perf_run, drift_run if drift_confirmed else [])
        sentence = newest_level.sentence + (f"; {drift_text}" if drift_confirmed else "")
    elif drift_confirmed and newest_level is not None and newest_level.name == "elevated":
        kind, urgency, status = "drift", "elevated", "fired"
        run_start = _earliest(perf_run, drift_run)
        sentence = f"{newest_level.sentence}; {drift_text}"
    elif drift_confirmed and trend is not None:
        kind, urgency, status = "drift", "elevated", "fired"
        run_start = _earliest(trend[1], drift_run)
        sentence = f"{trend[0].sentence}; {drift_text}"
    elif len(perf_run) >= config.performance.persist and newest_level is not None:
        kind, urgency, status = "performance", "elevated", "fired"
        run_start = perf_run[0].start
        sentence = (f"{newest_level.sentence}, for {len(perf_run)} windows in a row "
                    f"(persist >= {config.performance.persist}) without feature drift")
    elif trend is not None:
        kind, urgency, status = "performance", "elevated", "fired"
        run_start = trend[1][0].start
        sentence = f"{trend[0].sentence}, without feature drift"
    elif drift_confirmed and not any(s.perf is not None for s in drift_run):
        if len(drift_run) < config.drift.unjudged_windows:
            return None
        kind, urgency, status = "drift", "elevated", "unjudged"
        run_start = drift_run[0].start
        sentence = (f"{drift_text}, for {len(drift_run)} windows, and no window since has enough labels to judge "
                    f"{model.metric} (minimum {model.min_labels} labels, {model.min_label_coverage:.0%} coverage)")
    elif drift_confirmed:
        kind, urgency, status = "drift", "routine", "watch"
        run_start = drift_run[0].start
        perf_text = newest_level.sentence if newest_level is not None else f"{model.metric} not judged"
        sentence = f"{drift_text}; performance stable: {perf_text}"
    else:
        return None

    evidence = {
        "windows": [_window_evidence(s, levels.get(s.start)) for s in signals if s.start >= run_start],
        "baseline": baseline,
        "metric": model.metric,
        "window_s": int(step.total_seconds()),
    }
    verdict = Verdict(kind=kind, urgency=urgency, status=status, change_point=run_start, labels_since_change=0,
                      labels_needed=config.min_labels_since_change, sentence=sentence, evidence=evidence)
    if not wait:
        return verdict
    return wait_for_labels(verdict, sum(s.labels for s in signals if s.start >= run_start), config)


def wait_for_labels(verdict: Verdict, labels_since_change: int, config: TriggerConfig) -> Verdict:
    """A retrain whose post-change labels are still too few becomes ``pending`` (a critical one fires at once
    unless ``critical_waits``): the worker trains on the new concept, and needs enough of it.

    >>> from datetime import UTC
    >>> from feedback.config import TriggerConfig
    >>> v = Verdict(kind="drift", urgency="elevated", status="fired", change_point=datetime(2026, 3, 2, 14, tzinfo=UTC),
    ...             labels_since_change=0, labels_needed=1000, sentence="drift on 3 of 20 features")
    >>> print(wait_for_labels(v, 312, TriggerConfig()).sentence)
    drift on 3 of 20 features; 312 of 1,000 labels since the change (2026-03-02 14:00 UTC): waiting for them
    """
    needed = config.min_labels_since_change
    status, sentence = verdict.status, verdict.sentence
    if (status == "fired" and labels_since_change < needed and verdict.change_point is not None
            and (verdict.urgency != "critical" or config.critical_waits)):
        status = "pending"
        sentence += (f"; {labels_since_change:,} of {needed:,} labels since the change "
                     f"({verdict.change_point:%Y-%m-%d %H:%M} UTC): waiting for them")
    return replace(verdict, status=status, sentence=sentence, labels_since_change=labels_since_change,
                   labels_needed=needed)


#: metrics whose window value is a mean over events, so that windows pool by their label counts
POOLABLE = frozenset({"accuracy", "mae", "log_loss"})


def pooled_drop(signals: Sequence[WindowSignal], baseline: float | None, model: ModelConfig
                ) -> tuple[Level, list[WindowSignal]] | None:
    """A slow fall no single window shows: the newest ``persist`` (at least 2), then twice, four times as many
    ... judged windows (up to ``pool_windows``) pooled, weighted by their labels, with the interval of the pooled
    mean (each window's standard error from its interval); the first pool whose favourable end is an elevated
    drop or worse, with its windows (oldest first), or None. Only metrics that are means of events pool.

    >>> from datetime import UTC
    >>> from feedback.config import parse_config
    >>> m = parse_config("[models.m]" + chr(10) + 'task = "regression"').models["m"]
    >>> t = datetime(2026, 3, 2, tzinfo=UTC)
    >>> def w(i, mae):  # 250 labels a window, standard error 0.05
    ...     return WindowSignal(start=t + timedelta(hours=i), drift_judged=False, series=0, drifted=(), labels=250,
    ...                         perf=PerfPoint(value=mae, ci_low=mae - 0.098, ci_high=mae + 0.098, labels=250))
    >>> one_by_one = [w(i, 1.09) for i in range(12)]  # 9% worse than 1.0: no window's interval shows 5%
    >>> [performance_level(s.perf, 1.0, metric="mae", higher_is_better=False, config=m.triggers).name
    ...  for s in one_by_one[:1]]
    ['ok']
    >>> level, run = pooled_drop(one_by_one, 1.0, m)
    >>> len(run)
    12
    >>> level.sentence
    'mae 1.09 over the last 12 windows (3,000 labels) rose 9.0% above baseline 1 (elevated >= 5%; CI [1.062, 1.118])'
    >>> pooled_drop([w(i, 1.03) for i in range(16)], 1.0, m) is None  # 3%: under the elevated level
    True
    """
    perf = model.triggers.performance
    if baseline is None or model.metric not in POOLABLE or perf.pool_windows < 2:
        return None
    judged = [s for s in signals if s.perf is not None]
    z = float(ndtri(0.5 + model.confidence / 2))  # the normal quantile: scipy.stats.norm.ppf's own formula
    m = max(2, perf.persist)  # a pool is a persistent drop: never fewer windows than ``persist`` asks in a row
    while m <= min(perf.pool_windows, len(judged)):
        run = judged[-m:]
        n = sum(s.perf.labels for s in run)  # type: ignore[union-attr]
        if n > 0:
            value = sum(s.perf.value * s.perf.labels for s in run) / n  # type: ignore[union-attr]
            se = math.sqrt(sum((s.perf.labels * (s.perf.ci_high - s.perf.ci_low) / (2 * z)) ** 2  # type: ignore[union-attr]
                               for s in run)) / n
            point = PerfPoint(value=value, ci_low=value - z * se, ci_high=value + z * se, labels=n)
            level = performance_level(point, baseline, metric=model.metric, higher_is_better=model.higher_is_better,
                                      config=model.triggers)
            if level.name != "ok":  # elevated or worse: a trend retrains as elevated, the windows judge critical
                words = level.sentence.split(" ", 2)  # "<metric> <value> <the rest>"
                sentence = f"{words[0]} {words[1]} over the last {m} windows ({n:,} labels) {words[2]}"
                return Level(name=level.name, drop=level.drop, sentence=sentence), run
        m *= 2
    return None


def _drift_run(signals: Sequence[WindowSignal], min_series: int) -> list[WindowSignal]:
    """The newest judged windows in a row with drift (oldest first); empty if the newest judged one is stable."""
    run: list[WindowSignal] = []
    for s in reversed(signals):
        if not s.drift_judged:
            continue
        if len(s.drifted) < min_series:
            break
        run.append(s)
    return run[::-1]


def _perf_run(signals: Sequence[WindowSignal], levels: Mapping[datetime, Level]) -> list[WindowSignal]:
    """The newest judged performance windows in a row at elevated or worse (oldest first)."""
    run: list[WindowSignal] = []
    for s in reversed(signals):
        level = levels.get(s.start)
        if level is None:
            continue
        if _RANK[level.name] < _RANK["elevated"]:
            break
        run.append(s)
    return run[::-1]


def _newest_level(signals: Sequence[WindowSignal], levels: Mapping[datetime, Level]) -> Level | None:
    for s in reversed(signals):
        if s.start in levels:
            return levels[s.start]
    return None


def _earliest(*runs: Sequence[WindowSignal]) -> datetime:
    return min(run[0].start for run in runs if run)


def _drift_sentence(run: Sequence[WindowSignal]) -> str:
    """'drift on 3 of 20 features (PSI 0.31 income, 0.27 age, 0.18 plan)' for the newest window of a run."""
    newest = run[-1]
    top = sorted(newest.drifted, key=lambda d: -(d.psi or 0.0))
    shown = ", ".join(f"{d.psi:.2f} {d.feature}" if d.psi is not None else d.feature for d in top[:5])
    more = f", +{len(top) - 5} more" if len(top) > 5 else ""
    since = f" since {run[0].start:%Y-%m-%d %H:%M} UTC" if len(run) > 1 else ""
    return f"drift on {len(newest.drifted)} of {newest.series} features{since} (PSI {shown}{more})"


def _window_evidence(s: WindowSignal, level: Level | None) -> dict[str, Any]:
    return {
        "window_start": s.start.isoformat(),
        "drifted": [{"feature": d.feature, "psi": d.psi, "p_value": d.p_value} for d in s.drifted],
        "features_judged": s.series if s.drift_judged else 0,
        "performance": None if s.perf is None else {
            "value": s.perf.value, "ci_low": s.perf.ci_low, "ci_high": s.perf.ci_high, "labels": s.perf.labels,
            "level": level.name if level else None,
        },
        "labels": s.labels,
    }


# --- the early-warning detectors as a trigger ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """A river detector fired on the version's error stream (a row of detector_events)."""

    detector: str  # "adwin" or "page_hinkley"
    label_index: int  # the n-th label of the version, in arrival order
    predicted_at: datetime  # of the prediction whose label made it fire
    mean_before: float | None = None
    mean_after: float | None = None


def confirmed(detections: Sequence[Detection], confirm_labels: int) -> tuple[Detection, Detection] | None:
    """The newest pair of an ADWIN detection of a rising error and a Page-Hinkley detection within
    ``confirm_labels`` labels of each other (either first), or None.

    One detector alone is not enough: Page-Hinkley fired once on a stable model in 3 of 4 runs of about 27,000
    labels, and ADWIN also reacts to a falling error.

    >>> from datetime import UTC
    >>> t = datetime(2026, 3, 2, 13, tzinfo=UTC)
    >>> adwin = Detection(detector="adwin", label_index=5200, predicted_at=t, mean_before=0.1, mean_after=0.3)
    >>> ph = Detection(detector="page_hinkley", label_index=5080, predicted_at=t)
    >>> confirmed([ph, adwin], 1000) == (adwin, ph), confirmed([ph], 1000)
    (True, None)
    """
    rising = [d for d in detections if d.detector == "adwin"
              and (d.mean_before is None or d.mean_after is None or d.mean_after > d.mean_before)]
    ph = [d for d in detections if d.detector == "page_hinkley"]
    for a in sorted(rising, key=lambda d: -d.label_index):
        near = [p for p in ph if abs(p.label_index - a.label_index) <= confirm_labels]
        if near:
            return a, max(near, key=lambda p: p.label_index)
    return None


def decide_detectors(
    signals: Sequence[WindowSignal], baseline: float | None, model: ModelConfig, detections: Sequence[Detection],
    *, wait: bool = True,
) -> Verdict | None:
    """A retrain on the detectors' early warning, when both agree, placed by the windows.

    The detectors place a change in label arrival order, and ADWIN's first firing has put an abrupt change hours
    early; the windows place it in prediction time. So the change point is the start of the run of windows, up to
    the detection, that drift or whose metric is already an elevated drop by its point estimate (before its CI can
    say so); without such a window, the window of the detection itself.
    """
    config = model.triggers
    if not config.detectors.enabled:
        return None
    pair = confirmed(detections, config.detectors.confirm_labels)
    if pair is None:
        return None
    adwin, ph = pair
    detected_at = max(adwin.predicted_at, ph.predicted_at)
    bad = []
    for s in signals:
        if s.start > detected_at:
            break
        point = None if s.perf is None else replace(s.perf, ci_low=s.perf.value, ci_high=s.perf.value)
        level = None if point is None else performance_level(
            point, baseline, metric=model.metric, higher_is_better=model.higher_is_better, config=config)
        drifting = s.drift_judged and len(s.drifted) >= config.drift.min_series
        if drifting or (level is not None and level.name != "ok"):
            bad.append(s)
        elif s.drift_judged or s.perf is not None:
            bad = []  # a judged, healthy window ends any run before it
    step = timedelta(seconds=model.window_s)
    change_point = bad[0].start if bad else _window_of(detected_at, step)
    sentence = (f"error stream: ADWIN (label {adwin.label_index:,}, mean "
                f"{_num(adwin.mean_before)} -> {_num(adwin.mean_after)}) confirmed by Page-Hinkley (label "
                f"{ph.label_index:,}, within {config.detectors.confirm_labels:,} labels); the windows place the change "
                f"at {change_point:%Y-%m-%d %H:%M} UTC")
    evidence = {
        "detections": [{"detector": d.detector, "label_index": d.label_index,
                        "predicted_at": d.predicted_at.isoformat(), "mean_before": d.mean_before,
                        "mean_after": d.mean_after} for d in pair],
        "windows": [_window_evidence(s, None) for s in signals if s.start >= change_point],
        "baseline": baseline, "metric": model.metric,
    }
    verdict = Verdict(kind="detector", urgency="elevated", status="fired", change_point=change_point,
                      labels_since_change=0, labels_needed=config.min_labels_since_change, sentence=sentence,
                      evidence=evidence)
    if not wait:
        return verdict
    return wait_for_labels(verdict, sum(s.labels for s in signals if s.start >= change_point), config)


def _window_of(at: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=at.tzinfo)
    return at - (at - epoch) % step


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


# --- storm control ------------------------------------------------------------------------------------------


#: the decisions that answer a change of the world (a pool look at a returning concept among them)
EPISODE_KINDS: frozenset[str] = frozenset({"drift", "performance", "detector", "pool"})


def new_episode(kind: str, change_point: datetime | None, version: str | None, history: History) -> bool:
    """Whether a decision answers a change found after the one the ramp answers: a drift, performance, detector or
    pool decision on the windows of a version trained for the ramp's episode or a later one, with a change point
    after the one that version was trained to answer.

    Those versions are the ramp's challenger (``history.rollout_challenger``, answering
    ``history.rollout_change``; None: it answers none, so any change point is later) and every version whose
    training answered the ramp's change or a later one (``history.answered``: a refit ramping against the
    episode's first candidate, now champion, leaves that champion trained for the same world). Their windows
    degrading are news: the world changed again since they were trained.

    On a stale champion's windows (trained before the ramp's change) a decision during the ramp is the degradation
    the ramp answers, seen again: a gradual change moves its change point window by window, and taking each move
    for a new change restarted the ramp again and again."""
    if kind not in EPISODE_KINDS or change_point is None or version is None:
        return False
    if version == history.rollout_challenger:
        return history.rollout_change is None or change_point > history.rollout_change
    answered = history.answered.get(version)
    return (answered is not None and change_point > answered
            and (history.rollout_change is None or answered >= history.rollout_change))


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What storm control needs to know of a model's past retrains, at the decision's event time."""

    last_fired_at: datetime | None = None  # the last retrain that starts a cooldown (not a pool look or refresh)
    fired_last_day: int = 0  # retrains that count toward the daily cap (the same kinds)
    last_trained_at: datetime | None = None  # the last training of any kind (a refresh too): the refresh's clock
    running: str | None = None  # the trigger id of a training without an outcome yet
    rejected_in_row: int = 0  # since a person last reset the breaker
    rollout: str | None = None  # a ramp under way ("v3 at 25%"): a retrain of its episode waits for it to end
    rollout_challenger: str | None = None  # the ramp's challenger
    rollout_holding: bool = False  # the ramp's challenger serves 100% in its hold
    rollout_change: datetime | None = None  # the change point the ramp's challenger answers (None: none)
    # during a ramp, the change point each version was trained to answer, of the versions trained for the ramp's
    # episode or a later one (:func:`new_episode`)
    answered: Mapping[str, datetime] = field(default_factory=dict)


def suppression(kind: Kind, at: datetime, history: History, config: TriggerConfig,
                change_point: datetime | None = None, version: str | None = None) -> str | None:
    """Why a retrain that should fire may not (one sentence), or None when it may.

    A manual request passes cooldown, cap and breaker (a person decided) but not a running training; a refit
    of an episode already fired passes cooldown and cap. A ramp under way holds every retrain of its own episode
    (its refits, a refresh, the calendar: one episode, one ramp), but not a change found after the one its
    challenger answers (:func:`new_episode`): the world changed again, and the challenger was trained for the
    world before. In the hold (the challenger serves everyone) a refit of the episode may train and shadow against
    it, and takes over only if its shadow shows it better on the same requests.

    >>> from datetime import UTC
    >>> from feedback.config import TriggerConfig
    >>> t = datetime(2026, 3, 2, 14, tzinfo=UTC)
    >>> suppression("drift", t, History(last_fired_at=t - timedelta(hours=2)), TriggerConfig())
    'cooldown: the last retrain fired 2.0 h ago, cooldown 6.0 h (until 2026-03-02 18:00 UTC)'
    >>> suppression("manual", t, History(last_fired_at=t - timedelta(hours=2)), TriggerConfig()) is None
    True
    >>> suppression("manual", t, History(rollout="v3 at 25%"), TriggerConfig())
    'a rollout is under way (v3 at 25%): the retrain waits until it ends'
    >>> ramp = History(rollout="v3 at 25%", rollout_challenger="v3", rollout_change=t - timedelta(days=2))
    >>> suppression("drift", t, ramp, TriggerConfig(), change_point=t - timedelta(hours=5), version="v3") is None
    True
    """
    if (history.rollout is not None and not new_episode(kind, change_point, version, history)
            and not (kind == "refit" and history.rollout_holding)):
        return f"a rollout is under way ({history.rollout}): the retrain waits until it ends"
    if history.running is not None:
        return f"a training for this model is already running (trigger {history.running})"
    if kind == "manual":
        return None
    if history.rejected_in_row >= config.circuit_breaker:
        return (f"circuit breaker: {history.rejected_in_row} rejected candidates in a row "
                f"(limit {config.circuit_breaker}); reset it with `pitstop triggers reset --model M`")
    if kind in ("refit", "pool", "refresh"):
        return None  # a planned step (bounded by the ladder and recovery_tries; one pool look; one refresh a period)
    if history.last_fired_at is not None:
        since = at - history.last_fired_at
        cooldown = timedelta(seconds=config.cooldown_s)
        if since < cooldown:
            return (f"cooldown: the last retrain fired {since.total_seconds() / 3600:.1f} h ago, cooldown "
                    f"{cooldown.total_seconds() / 3600:.1f} h (until {history.last_fired_at + cooldown:%Y-%m-%d %H:%M} "
                    "UTC)")
    if history.fired_last_day >= config.daily_cap:
        return f"daily cap: {history.fired_last_day} retrains fired in the last 24 h (cap {config.daily_cap})"
    return None
