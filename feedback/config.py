"""The per-model monitoring configuration file, `pitstop.toml`, read once into frozen objects."""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from cronsim import CronSim, CronSimError

from feedback.errors import ModelConfigError

FeatureKind = Literal["numeric", "categorical"]
Task = Literal["classification", "regression"]
ScoreSource = Literal["probabilities", "score", "none"]

DAY_S = 86_400
#: the store keeps a model's rows this long unless told otherwise: the retraining history's default (365 days) and
#: room for the labels of its oldest rows
DEFAULT_RETENTION_S = 400 * DAY_S
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
#: a classification model without ``positive_class`` (any number of classes): its metrics
MULTICLASS_METRICS = ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece")
REGRESSION_METRICS = ("mae", "rmse", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "mae", "rmse"})
# metrics computed from the class probabilities, so a model with score = "none" cannot have them
NEEDS_SCORE = frozenset({"roc_auc", "log_loss", "ece"})
# metrics of one class against the rest: they need positive_class
NEEDS_POSITIVE = frozenset({"precision", "recall", "f1", "roc_auc"})

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": DAY_S}
_DURATION_EXPECTED = "a duration such as '30m', '1h', '1d' or a number of seconds"
_WINDOW_EXPECTED = "a window that divides 1 day evenly, such as '1m', '5m', '15m', '30m', '1h', '6h' or '1d'"
_TASKS = ("classification", "regression")
_KINDS = ("numeric", "categorical")
_SCORES = ("probabilities", "score", "none")
_MODEL_KEYS = ("task", "positive_class", "metric", "direction", "segments", "score", "features")


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Drift thresholds per metric: PSI, and the effect floors of the KS, Jensen-Shannon and chi-square tests
    (the last as Cohen's w)."""

    psi: float = 0.15
    ks: float = 0.05
    js: float = 0.1
    chi2_effect: float = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceConfig:
    """When a window's metric counts as degraded: a relative drop from the baseline, or an absolute limit instead."""

    max_drop: float = 0.05
    #: the version's earliest judged windows, pooled, are its baseline
    baseline_windows: int = 4
    threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """Parameters of the streaming detectors (river's ADWIN and Page-Hinkley)."""

    adwin_delta: float = 0.002
    # in standard deviations of the version's first errors (feedback/monitoring/detectors.py); measured on
    # 0/1 and absolute errors: about one false alarm per 25,000 stable labels, and a rise of half
    # a standard deviation found within 70-160 labels (river's 50 / 0.005 on raw regression
    # errors fired every 1-2k labels)
    page_hinkley_threshold: float = 40.0
    page_hinkley_delta: float = 0.25
    page_hinkley_alpha: float = 0.9999
    page_hinkley_min_instances: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftTrigger:
    """When drift counts for a retrain decision: ``windows`` judged windows in a row, each with at least
    ``min_series`` features flagged after Holm's correction; drift that persists ``unjudged_windows`` windows
    while labels are too few to judge performance raises an "unjudged drift" alert."""

    windows: int = 2
    min_series: int = 1
    unjudged_windows: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceTrigger:
    """Performance levels, judged on each window's confidence interval against the version's baseline: a relative
    drop of ``elevated`` / ``critical`` (in the metric's direction: a rising MAE is a drop), or past the absolute
    ``floor`` (an SLA: critical). An elevated drop without drift retrains after ``persist`` windows in a row."""

    elevated: float = 0.05
    critical: float = 0.10
    floor: float | None = None
    persist: int = 3
    #: a slow fall no single window's interval can show: the newest ``persist``, then 2x, 4x ... judged windows
    #: (up to this many) pooled, an elevated drop judged on the pooled interval retrains too (metrics that are
    #: means of events: accuracy, MAE, log loss). 0 or 1: single windows only
    pool_windows: int = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorTrigger:
    """The early-warning detectors as a trigger (off by default): a detection counts only when ADWIN and
    Page-Hinkley both fire within ``confirm_labels`` labels of each other."""

    enabled: bool = False
    confirm_labels: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerConfig:
    """When a model is retrained (`[models.M.triggers]`), and what stops a retraining storm."""

    enabled: bool = True
    #: a cron expression in UTC, evaluated in event time (feedback/triggers/calendar.py)
    calendar: str | None = None
    #: retrain after this many new labelled predictions since the last training
    volume: int | None = None
    #: a scheduled refresh this long (event time) after the last training: a candidate trained on the current
    #: concept's rows (since the episode's change point) that replaces the champion only when it is significantly
    #: better on the newest labels, else the outcome is "unchanged". The calendar as a safety net for slow drift
    #: no window judges in time, never a blind replace; it starts no cooldown and counts toward no cap. None
    #: (`refresh = false`): off
    refresh_s: int | None = DAY_S
    #: the refresh's one-sided significance level (a paired test of the per-row errors on the recent window)
    refresh_alpha: float = 0.05
    #: a drift or performance decision waits for this many labels since the change point
    min_labels_since_change: int = 1000
    #: a critical drop waits for them too (its alert goes out at once either way). Measured
    #: (bench/loop_quality.py): a retrain fired at the critical window has a few hundred post-change rows,
    #: fails the data checks, and leaves the model degraded
    critical_waits: bool = True
    #: after a drift or performance retrain, refit again as the labels since its change point reach these
    #: multiples of ``min_labels_since_change`` (the first training had fewer: the new concept is learnt on more)
    refit_ladder: tuple[int, ...] = (1, 4, 16)
    #: a version trained after a change whose baseline stays worse than the level before the change (by
    #: ``performance.elevated``) is refitted, at most this many times an episode; then an alert asks a person
    recovery_tries: int = 2
    #: a drift or performance decision still waiting for its labels asks the model pool once this many labels
    #: since the change exist: a former champion that beats the champion on them is proposed at once (a
    #: concept that returns needs no training); 0: never before the retrain
    pool_labels: int = 200
    cooldown_s: int = 6 * 3_600
    daily_cap: int = 2
    #: automatic retraining stops after this many rejected candidates in a row, until a person resets it
    circuit_breaker: int = 3
    #: a fired trigger without an outcome counts as a training still running for this long (event time)
    max_training_s: int = DAY_S
    drift: DriftTrigger = field(default_factory=DriftTrigger)
    performance: PerformanceTrigger = field(default_factory=PerformanceTrigger)
    detectors: DetectorTrigger = field(default_factory=DetectorTrigger)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainGates:
    """The offline gates a candidate must pass against the champion (retrain_worker/gates.py)."""

    max_ratio: float = 1.05  # challenger error <= this x champion's (MAE, RMSE; log loss, 1 - AUC)
    min_improvement: float | None = None  # optional: the main error at least this much (relative) lower
    floor: float | None = None  # an absolute floor: AUC for classification, R^2 for regression
    leakage_ratio: float = 0.5  # an error below this x champion's fails as likely leakage ...
    leakage_min_gain: float = 0.02  # ... when (classification) accuracy gains more than this too
    segment_epsilon: float = 0.01  # no declared segment's main metric may regress by more ...
    segment_alpha: float = 0.05  # ... significantly (a one-sided paired test at this level)
    calibration_tolerance: float = 0.02  # classification: ECE no worse than the champion's + this
    latency_budget_ms: float | None = 5.0  # prediction latency per row


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainConfig:
    """How the retrain worker trains a model (`[models.M.retrain]`)."""

    trainer: str = "retrain_worker.trainers:gradient_boosting"
    budget_s: int = 30 * 60
    weighting: Literal["exponential", "step"] = "exponential"
    half_life_s: int = 50 * DAY_S
    window_s: int = 90 * DAY_S  # the step weighting's window
    before_change: Literal["exclude", "downweight", "keep"] = "exclude"
    before_change_factor: float = 0.1
    history_s: int = 365 * DAY_S  # how far back before the cutoff rows are loaded
    test_share: float = 0.2
    min_train_rows: int = 500
    min_test_rows: int = 200
    #: the model pool: this many of the most recent former champions are scored before a fresh model is
    #: registered, and when a change is seen early (0: no pool). A refit ladder makes several champions an
    #: episode, so the pool must reach past them to the concept before (bench S5: with 3, the returning
    #: concept's model had dropped out)
    pool_size: int = 8
    #: a pool look brings a former champion back only when significantly better than the champion (one-sided
    #: paired t-test of the per-row errors at this level) ...
    pool_alpha: float = 0.05
    #: ... and its error this much lower (relative): a swap on a shade made a new champion whose baseline was the
    #: degraded stretch after a change, and hid it (S2: two models of the old concept at log loss 5.401 and 5.408
    #: on the new one differed significantly; 1.1 points lost). In a retrain a new champion comes either way, so
    #: the lower error of the fresh model and the former champions is the candidate (S6: requiring significance
    #: there rejected its second drift's retrain, 1.475 against 1.286 whole-stream MAE)
    pool_min_gain: float = 0.1
    #: the frozen held-out set (retrain_worker/holdout.py): its size (0: none), refresh and maximum age
    holdout_rows: int = 500
    holdout_refresh_s: int = 7 * DAY_S
    holdout_max_age_s: int = 30 * DAY_S
    #: "shadow": a passing candidate waits for shadow evaluation, then ramps; "approval": the same, but it ramps only
    #: once a person approved it (`pitstop approve`); "after-gates": it becomes champion at once
    promotion: Literal["shadow", "approval", "after-gates"] = "shadow"
    #: recency counted in labels: candidate half-lives as fractions of the training rows, each trained beside the
    #: configured weights; the one whose model predicts the recent test window best is the recipe (its weights
    #: multiply the configured ones). Slow drift wants short memories, a stable concept long ones; no fixed
    #: half-life in days knows which it is. [] : the configured weights only
    recency_search: tuple[float, ...] = (0.5, 0.25, 0.125)
    #: "all": the recipe the gates passed (trainer, weights) is fitted again on the training rows and the recent
    #: test window, and that model is registered: the newest labels are the ones the gates judged on, and a
    #: model that never learns them lags a drift by a fifth of its rows. "train": the gated model as it is
    final_fit: Literal["all", "train"] = "all"
    gates: RetrainGates = field(default_factory=RetrainGates)

    @property
    def shadowed(self) -> bool:
        """Whether a candidate goes through shadow evaluation and the ramp (``shadow`` and ``approval``)."""
        return self.promotion in ("shadow", "approval")


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutConfig:
    """How a candidate goes live (`[models.M.rollout]`): the shadow gate, the ramp, the promotion test, the
    hold period and the rollback rules (feedback/rollout/). Durations are event time."""

    #: shadow: the candidate scores every live prediction beside the champion; judged on labelled rows only
    shadow_min_labels: int = 1_000
    shadow_min_duration_s: int = DAY_S  # one business cycle (seed 000)
    shadow_urgent_min_labels: int = 200  # with the champion confirmed degraded: a conclusive paired test from this
    shadow_max_duration_s: int = 14 * DAY_S  # a shadow that never gathers its labels ends, with the reason
    shadow_max_ratio: float = 1.10  # challenger error <= this x champion's on the same requests (seed 000)
    shadow_max_failure_rate: float = 0.01  # failures also count as errors; past this share the shadow fails
    shadow_backfill_s: int = 30 * DAY_S  # predictions made before the shadow, unlabelled at its cutoff, score it
    agreement_alert: float = 0.8  # agreement below this is escalated to a person (it fails nothing)
    shadow_latency_rows: int = 20  # rows of each scored chunk predicted alone and timed (reported, not judged)
    gap_p99_ratio: float = 3.0  # regression: p99 |gap| <= this x the champion's p99 absolute error
    gap_p99_proba: float = 0.9  # classification: p99 of the positive-class probability gap (multiclass: the class
    # probabilities' total variation distance) <= this
    #: the ramp: the challenger's share steps through these (none skipped), each held for its dwell
    steps: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 1.0)
    dwell_s: tuple[int, ...] = (2 * 3_600, 2 * 3_600, 6 * 3_600, DAY_S)  # one per step below 100% (seed 004)
    #: each arm's requests at a step before it may advance (a floor; the statistical minimum, the failure rule's
    #: power over the challenger's whole ramp, is rules.step_minimum)
    step_min_requests: int = 30
    promote_ratio: float = 0.98  # promote only if the challenger's error is <= this x the champion's ...
    alpha: float = 0.05  # ... significantly so (always-valid mSPRT p-value), segments not significantly worse
    segment_max_ratio: float = 1.10  # ... and each declared segment value shown below this x the champion's error
    max_duration_s: int = 28 * DAY_S  # a ramp that proves nothing by then keeps the champion
    hold_s: int = 2 * DAY_S  # after 100%, the new champion is judged against the frozen pre-ramp baseline
    #: rollback, at any step and during the hold, each arm on its own traffic
    failure_ratio: float = 2.0  # failure rate > this x the champion's + failure_margin ...
    failure_margin: float = 0.01
    failure_max: float = 0.05  # ... or > this outright
    latency_p95_ratio: float = 1.5  # p95 > this x the champion's (and more than latency_margin_ms above it) ...
    latency_p99_max_ms: float = 500.0  # ... or p99 above this, each judged from min_latency_samples requests an arm
    latency_margin_ms: float = 5.0  # a p95 within this of the champion's is never a rollback (timer noise)
    #: a p95 from 30 requests is their second slowest, a p99 their slowest: one pause of the process would roll
    #: back (measured: a test under load rolled back at p95 20.6 ms against 6.0 ms, two identical models)
    min_latency_samples: int = 200
    error_ratio: float = 1.15  # labelled error > this x the champion's ...
    min_labelled: int = 50  # ... with at least this many labelled rows per arm
    min_requests: int = 30  # an arm's failures and latency are judged from this many requests
    keep_champions: int = 3  # the last N champions stay loadable
    latch: str = "episode"  # an automatic rollback holds its episode's candidates ("model": every candidate)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """How one model is monitored, with `[defaults]` and the built-in defaults already applied.

    Mappings are read-only views; plain dicts given to the constructor are copied into them.

    >>> m = ModelConfig(name="churn", task="classification", positive_class=1, metric="accuracy",
    ...                 higher_is_better=True, score="probabilities",
    ...                 feature_thresholds={"tenure": Thresholds(psi=0.2)})
    >>> m.thresholds_for("tenure").psi, m.thresholds_for("plan").psi, m.window_s
    (0.2, 0.15, 3600)
    """

    name: str
    task: Task
    positive_class: str | int | bool | None = None
    metric: str
    higher_is_better: bool
    segments: tuple[str, ...] = ()
    score: ScoreSource
    window_s: int = 3_600
    span: int = 24
    min_rows: int = 1_000
    min_labels: int = 200
    min_label_coverage: float = 0.5
    reference_rows: int = 5_000
    max_segment_values: int = 20
    confidence: float = 0.95
    alpha: float = 0.01
    #: how long the store keeps the model's predictions and outcomes (`pitstop db prune`): at least the retraining
    #: history, with room for the labels of its oldest rows
    retention_s: int = DEFAULT_RETENTION_S
    thresholds: Thresholds = field(default_factory=Thresholds)
    feature_thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: MappingProxyType({}))
    features: Mapping[str, FeatureKind] = field(default_factory=lambda: MappingProxyType({}))
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "feature_thresholds", MappingProxyType(dict(self.feature_thresholds)))
        object.__setattr__(self, "features", MappingProxyType(dict(self.features)))

    def thresholds_for(self, feature: str) -> Thresholds:
        """The thresholds of one feature: its own override if it has one, else the model's."""
        return self.feature_thresholds.get(feature, self.thresholds)

    @property
    def multiclass(self) -> bool:
        """A classification model without ``positive_class``: any number of classes, multiclass metrics (accuracy,
        macro and weighted F1, per-class recall, log loss and top-label ECE from the class probabilities)."""
        return self.task == "classification" and self.positive_class is None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringConfig:
    """Every configured model by name, the file they came from ("" when there is none), and the retention of the
    models it does not name (`[defaults] retention`).

    >>> EMPTY.model("churn") is None
    True
    """

    path: str
    models: Mapping[str, ModelConfig]
    retention_s: int = DEFAULT_RETENTION_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def model(self, name: str) -> ModelConfig | None:
        """The configuration of one model, or None when the file does not name it."""
        return self.models.get(name)

    @property
    def longest_retention_s(self) -> int:
        """How long the store keeps a week of rows: a weekly partition holds every model's rows, so it goes when the
        longest retention, a model's or the default's, is past it."""
        return max([self.retention_s, *(m.retention_s for m in self.models.values())])


EMPTY = MonitoringConfig(path="", models={})


def duration_text(seconds: int) -> str:
    """A number of seconds as :func:`parse_duration_s` reads it, in the largest unit that divides it.

    >>> duration_text(400 * 86_400), duration_text(5_400), duration_text(61)
    ('400d', '90m', '61s')
    """
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"


def parse_duration_s(value: object) -> int:
    """Seconds in a duration: a string of digits and one unit (s, m, h, d) or a positive integer.

    >>> parse_duration_s("30m"), parse_duration_s("1h"), parse_duration_s("1d"), parse_duration_s("45s")
    (1800, 3600, 86400, 45)
    >>> parse_duration_s(600)
    600
    >>> parse_duration_s("1x")
    Traceback (most recent call last):
    ...
    ValueError: not a duration: '1x'
    """
    seconds = 0
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds <= 0:
        msg = f"not a duration: {value!r}"
        raise ValueError(msg)
    return seconds


def load_config(path: str | os.PathLike[str]) -> MonitoringConfig:
    """Read and validate a monitoring configuration file; any fault is one ModelConfigError line.

    >>> load_config("/nonexistent/pitstop.toml")
    Traceback (most recent call last):
    ...
    feedback.errors.ModelConfigError: /nonexistent/pitstop.toml: cannot read it (No such file or directory); \
expected a readable TOML file
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            # utf-8-sig: a byte order mark left by an editor is not worth an error
            text = file.read().decode("utf-8-sig")
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror})"
        raise ModelConfigError(name, "", None, "a readable TOML file", problem=problem) from None
    except UnicodeDecodeError as exc:
        raise ModelConfigError(name, "", None, "UTF-8 text", problem=f"byte {exc.start} is not UTF-8") from None
    return parse_config(text, path=name)


def parse_config(text: str, *, path: str = "pitstop.toml") -> MonitoringConfig:
    """Validate the text of a monitoring configuration file; ``path`` only names it in errors.

    >>> config = parse_config('''
    ... [defaults]
    ... window = "30m"
    ... [models.churn]
    ... task = "classification"
    ... positive_class = 1
    ... metric = "log_loss"
    ... ''')
    >>> m = config.model("churn")
    >>> m.window_s, m.span, m.metric, m.higher_is_better, m.score
    (1800, 24, 'log_loss', False, 'probabilities')
    >>> parse_config('[models.churn]\\ntask = "classification"\\npositive_class = 1\\nwindow = "1x"')
    Traceback (most recent call last):
    ...
    feedback.errors.ModelConfigError: pitstop.toml: models.churn.window = '1x': expected a duration such as \
'30m', '1h', '1d' or a number of seconds
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(path, "", None, "", problem=f"invalid TOML: {exc}") from None
    return _Parser(path).config(document)


class _Expected(Exception):
    """A value is invalid; carries the "expected ..." phrase to the parser, which names the key."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


_Convert = Callable[[Any], Any]


def _integer(low: int, high: int | None = None) -> _Convert:
    expected = f"an integer >= {low}" if high is None else f"an integer between {low} and {high}"

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise _Expected(expected)
        return value

    return convert


def _number(expected: str, valid: Callable[[float], bool] = math.isfinite) -> _Convert:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Expected(expected)
        try:
            number = float(value)
        except OverflowError:
            raise _Expected(expected) from None
        if not math.isfinite(number) or not valid(number):
            raise _Expected(expected)
        return number

    return convert


def _window(value: Any) -> int:
    try:
        seconds = parse_duration_s(value)
    except ValueError:
        raise _Expected(_DURATION_EXPECTED) from None
    if DAY_S % seconds:
        # windows are aligned to UTC midnight, so every day must hold a whole number of them
        raise _Expected(_WINDOW_EXPECTED)
    return seconds


_UNIT_INTERVAL = "a number between 0 and 1"
_POSITIVE_EXPECTED = "the positive label as it appears in events (a non-empty string, an integer or a boolean)"
_THRESHOLDS: Mapping[str, _Convert] = {
    "psi": _number("a number >= 0", lambda x: x >= 0),
    "ks": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "js": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "chi2_effect": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
}
_PERFORMANCE: Mapping[str, _Convert] = {
    "max_drop": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "threshold": _number("a finite number"),
    "baseline_windows": _integer(1),
}
_DETECTORS: Mapping[str, _Convert] = {
    "adwin_delta": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
    "page_hinkley_threshold": _number("a number > 0", lambda x: x > 0),
    "page_hinkley_delta": _number("a number >= 0", lambda x: x >= 0),
    "page_hinkley_alpha": _number("a number greater than 0 and at most 1", lambda x: 0 < x <= 1),
    "page_hinkley_min_instances": _integer(1),
}
def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        msg = "true or false"
        raise _Expected(msg)
    return value


def _duration(value: Any) -> int:
    try:
        return parse_duration_s(value)
    except ValueError:
        raise _Expected(_DURATION_EXPECTED) from None


_KNOBS: Mapping[str, _Convert] = {
    "window": _window,
    "span": _integer(1, 10_000),
    "min_rows": _integer(1),
    "min_labels": _integer(1),
    "min_label_coverage": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "reference_rows": _integer(100),
    "max_segment_values": _integer(1),
    "confidence": _number("a number between 0.5 and 0.999", lambda x: 0.5 <= x <= 0.999),
    "alpha": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
    "retention": _duration,
}


def _optional_duration(value: Any) -> int | None:
    """A duration, or false for none."""
    if value is False:
        return None
    try:
        return parse_duration_s(value)
    except ValueError:
        msg = f"{_DURATION_EXPECTED}, or false for none"
        raise _Expected(msg) from None


def _fractions(value: Any) -> tuple[float, ...]:
    expected = "a list of numbers greater than 0 and at most 1, such as [0.5, 0.25, 0.125] (or [] for none)"
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                              and 0 < v <= 1 for v in value):
        raise _Expected(expected)
    return tuple(float(v) for v in value)


def _cron(value: Any) -> str:
    expected = "a cron expression in UTC such as '0 3 * * 1' (Mondays 03:00)"
    if not isinstance(value, str):
        raise _Expected(expected)
    fields = len(value.split())
    if fields != 5:  # cronsim would read a sixth field as seconds (feedback/triggers/calendar.py refuses it)
        msg = f"{expected}; 5 fields (minute hour day-of-month month day-of-week), got {fields}"
        raise _Expected(msg)
    try:
        CronSim(value, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        msg = f"{expected}; {str(exc).lower() or 'invalid'}"
        raise _Expected(msg) from None
    return value


def _multiples(value: Any) -> tuple[int, ...]:
    expected = "a list of increasing whole numbers >= 1, such as [1, 4, 16] (or [] for none)"
    if (not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in value) or sorted(set(value)) != value):
        raise _Expected(expected)
    return tuple(value)


_TRIGGERS: Mapping[str, _Convert] = {
    "enabled": _boolean,
    "calendar": _cron,
    "volume": _integer(1),
    "refresh": _optional_duration,
    "refresh_alpha": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
    "min_labels_since_change": _integer(0),
    "critical_waits": _boolean,
    "refit_ladder": _multiples,
    "recovery_tries": _integer(0),
    "pool_labels": _integer(0),
    "cooldown": _duration,
    "daily_cap": _integer(1),
    "circuit_breaker": _integer(1),
    "max_training": _duration,
}


def _choice(*options: str) -> _Convert:
    def convert(value: Any) -> str:
        if value not in options:
            raise _Expected(_one_of(options))
        return value

    return convert


def _callable_spec(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        msg = "a trainer as 'module:callable', such as 'retrain_worker.trainers:gradient_boosting'"
        raise _Expected(msg)
    return value


_UNIT_OPEN = "a number greater than 0 and less than 1"
_RETRAIN: Mapping[str, _Convert] = {
    "trainer": _callable_spec,
    "budget": _duration,
    "weighting": _choice("exponential", "step"),
    "half_life": _duration,
    "window": _duration,
    "before_change": _choice("exclude", "downweight", "keep"),
    "before_change_factor": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "history": _duration,
    "test_share": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "min_train_rows": _integer(1),
    "min_test_rows": _integer(1),
    "pool_size": _integer(0),
    "pool_alpha": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
    "pool_min_gain": _number("a number >= 0 and less than 1", lambda x: 0 <= x < 1),
    "holdout_rows": _integer(0),
    "holdout_refresh": _duration,
    "holdout_max_age": _duration,
    "promotion": _choice("shadow", "approval", "after-gates"),
    "final_fit": _choice("all", "train"),
    "recency_search": _fractions,
}
_RETRAIN_GATES: Mapping[str, _Convert] = {
    "max_ratio": _number("a number >= 1", lambda x: x >= 1),
    "min_improvement": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "floor": _number("a finite number"),
    "leakage_ratio": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "leakage_min_gain": _number("a number >= 0 and less than 1", lambda x: 0 <= x < 1),
    "segment_epsilon": _number("a number >= 0", lambda x: x >= 0),
    "segment_alpha": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "calibration_tolerance": _number("a number >= 0", lambda x: x >= 0),
    "latency_budget_ms": _number("a number > 0", lambda x: x > 0),
}
def _shares(value: Any) -> tuple[float, ...]:
    expected = "a list of increasing shares in (0, 1] ending at 1.0, such as [0.05, 0.10, 0.25, 0.50, 1.0]"
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1 for v in value)
            or any(b <= a for a, b in zip(value, value[1:], strict=False)) or value[-1] != 1):
        raise _Expected(expected)
    return tuple(float(v) for v in value)


def _durations(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        msg = f"a list of durations, one per step below 100% ({_DURATION_EXPECTED})"
        raise _Expected(msg)
    return tuple(_duration(v) for v in value)


_POSITIVE = "a number > 0"
_ROLLOUT: Mapping[str, _Convert] = {
    "shadow_min_labels": _integer(1),
    "shadow_min_duration": _duration,
    "shadow_urgent_min_labels": _integer(1),
    "shadow_max_duration": _duration,
    "shadow_max_ratio": _number("a number >= 1", lambda x: x >= 1),
    "segment_max_ratio": _number("a number >= 1", lambda x: x >= 1),
    "shadow_max_failure_rate": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "shadow_backfill": _duration,
    "agreement_alert": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "shadow_latency_rows": _integer(0),
    "gap_p99_ratio": _number(_POSITIVE, lambda x: x > 0),
    "gap_p99_proba": _number("a number greater than 0 and at most 1", lambda x: 0 < x <= 1),
    "steps": _shares,
    "dwell": _durations,
    "step_min_requests": _integer(1),
    "promote_ratio": _number("a number greater than 0 and at most 1", lambda x: 0 < x <= 1),
    "alpha": _number(_UNIT_OPEN, lambda x: 0 < x < 1),
    "max_duration": _duration,
    "hold": _duration,
    "failure_ratio": _number("a number >= 1", lambda x: x >= 1),
    "failure_margin": _number(_UNIT_INTERVAL, lambda x: 0 <= x <= 1),
    "failure_max": _number(_UNIT_INTERVAL, lambda x: 0 < x <= 1),
    "latency_p95_ratio": _number("a number >= 1", lambda x: x >= 1),
    "latency_p99_max_ms": _number(_POSITIVE, lambda x: x > 0),
    "latency_margin_ms": _number("a number >= 0", lambda x: x >= 0),
    "min_latency_samples": _integer(1),
    "error_ratio": _number("a number >= 1", lambda x: x >= 1),
    "min_labelled": _integer(1),
    "min_requests": _integer(1),
    "keep_champions": _integer(1),
    "latch": _choice("episode", "model"),
}
_ROLLOUT_RENAMES = {k: f"{k}_s" for k in ("shadow_min_duration", "shadow_max_duration", "shadow_backfill", "dwell",
                                          "max_duration", "hold")}

_RETRAIN_RENAMES = {"budget": "budget_s", "half_life": "half_life_s", "window": "window_s", "history": "history_s",
                    "holdout_refresh": "holdout_refresh_s", "holdout_max_age": "holdout_max_age_s"}

_TRIGGER_SECTIONS: Mapping[str, Mapping[str, _Convert]] = {
    "drift": {"windows": _integer(1, 1000), "min_series": _integer(1), "unjudged_windows": _integer(1, 1000)},
    "performance": {
        "elevated": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
        "critical": _number("a number greater than 0 and less than 1", lambda x: 0 < x < 1),
        "floor": _number("a finite number"),
        "persist": _integer(1, 1000),
        "pool_windows": _integer(0, 1000),
    },
    "detectors": {"enabled": _boolean, "confirm_labels": _integer(1)},
}

_SECTIONS: Mapping[str, Mapping[str, _Convert]] = {
    "thresholds": _THRESHOLDS, "performance": _PERFORMANCE, "detectors": _DETECTORS,
}
# the range an absolute performance limit can take, by metric
_METRIC_RANGE: Mapping[str, tuple[float, float, str]] = {
    **{m: (0.0, 1.0, _UNIT_INTERVAL) for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece", "macro_f1",
                                                "weighted_f1")},
    **{m: (0.0, math.inf, "a number >= 0") for m in ("log_loss", "mae", "rmse")},
    "r2": (-math.inf, 1.0, "a number <= 1"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layer:
    """The validated keys one table sets: `[defaults]` or one model's table."""

    at: tuple[str, ...]
    knobs: Mapping[str, Any]
    sections: Mapping[str, Mapping[str, Any]]
    triggers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    retrain: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rollout: Mapping[str, Any] = field(default_factory=dict)


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path

    def config(self, document: Mapping[str, Any]) -> MonitoringConfig:
        self.check_keys(document, (), ("defaults", "models"))
        defaults = self.layer(self.table(document.get("defaults", {}), ("defaults",)), ("defaults",), ())
        models = self.table(document.get("models", {}), ("models",), "a table of [models.<name>] tables")
        return MonitoringConfig(
            path=self.path,
            models={name: self.model(name, table, defaults) for name, table in models.items()},
            retention_s=defaults.knobs.get("retention", DEFAULT_RETENTION_S),
        )

    def model(self, name: str, value: Any, defaults: _Layer) -> ModelConfig:
        at = ("models", name)
        if not name:
            self.fail(at, None, "a non-empty model name")
        table = self.table(value, at)
        own = self.layer(table, at, _MODEL_KEYS)
        task = self.task(table, at)
        classification = task == "classification"
        positive_class = self.positive_class(table, at, classification)
        metric = self.metric(table, at, task, positive_class)
        higher_is_better = self.direction(table, at, metric)
        segments = self.segments(table, at)
        score = self.score(table, at, classification, metric, positive_class)
        features = self.features(table, at)
        performance = PerformanceConfig(**{**defaults.sections["performance"], **own.sections["performance"]})
        if performance.threshold is not None:
            source = own if "threshold" in own.sections["performance"] else defaults
            low, high, expected = _METRIC_RANGE[metric]
            if not low <= performance.threshold <= high:
                self.fail((*source.at, "performance", "threshold"), performance.threshold,
                          f"{expected} for metric {metric!r} of model {name!r}")
        thresholds = Thresholds(**{**defaults.sections["thresholds"], **own.sections["thresholds"]})
        knobs = {**defaults.knobs, **own.knobs}
        if "window" in knobs:
            knobs["window_s"] = knobs.pop("window")
        retrain = self.retrain(table, at, defaults)
        if "retention" in knobs:
            knobs["retention_s"] = knobs.pop("retention")
        if knobs.get("retention_s", DEFAULT_RETENTION_S) < retrain.history_s:
            source = own if "retention" in own.knobs else defaults
            self.fail((*source.at, "retention"), duration_text(knobs.get("retention_s", DEFAULT_RETENTION_S)),
                      f"a duration at least retrain.history ({duration_text(retrain.history_s)}) of model {name!r}: "
                      "training reads its rows that far back")
        return ModelConfig(
            name=name,
            task=task,
            positive_class=positive_class,
            metric=metric,
            higher_is_better=higher_is_better,
            segments=segments,
            score=score,
            thresholds=thresholds,
            feature_thresholds=self.feature_thresholds(table, at, thresholds),
            features=features,
            performance=performance,
            detectors=DetectorConfig(**{**defaults.sections["detectors"], **own.sections["detectors"]}),
            triggers=self.triggers(table, at, metric, defaults),
            retrain=retrain,
            rollout=self.rollout(table, at, defaults),
            **knobs,
        )

    def triggers(self, table: Mapping[str, Any], at: tuple[str, ...], metric: str, defaults: _Layer) -> TriggerConfig:
        """`[models.M.triggers]` over `[defaults.triggers]`; the floor is checked against the model's metric."""
        own = self.trigger_layer(table, at)
        knobs = {**defaults.triggers["knobs"], **own["knobs"]}
        for key in ("cooldown", "max_training", "refresh"):
            if key in knobs:
                knobs[f"{key}_s"] = knobs.pop(key)
        sections = {
            name: {**defaults.triggers[name], **own[name]} for name in _TRIGGER_SECTIONS
        }
        performance = PerformanceTrigger(**sections["performance"])
        where = (*at, "triggers", "performance")
        if performance.critical < performance.elevated:
            self.fail((*where, "critical"), performance.critical,
                      f"a drop at least the elevated level {performance.elevated}")
        if performance.floor is not None:
            low, high, expected = _METRIC_RANGE[metric]
            if not low <= performance.floor <= high:
                self.fail((*where, "floor"), performance.floor, f"{expected} for metric {metric!r}")
        return TriggerConfig(
            drift=DriftTrigger(**sections["drift"]), performance=performance,
            detectors=DetectorTrigger(**sections["detectors"]), **knobs,
        )

    def retrain(self, table: Mapping[str, Any], at: tuple[str, ...], defaults: _Layer) -> RetrainConfig:
        """`[models.M.retrain]` over `[defaults.retrain]`."""
        own = self.retrain_layer(table, at)
        knobs = {_RETRAIN_RENAMES.get(k, k): v for k, v in {**defaults.retrain["knobs"], **own["knobs"]}.items()}
        gates = RetrainGates(**{**defaults.retrain["gates"], **own["gates"]})
        return RetrainConfig(gates=gates, **knobs)

    def rollout(self, table: Mapping[str, Any], at: tuple[str, ...], defaults: _Layer) -> RolloutConfig:
        """`[models.M.rollout]` over `[defaults.rollout]`; the dwell list must give one duration a step below 100%."""
        own = self.rollout_layer(table, at)
        merged = {**defaults.rollout, **own}
        config = RolloutConfig(**{_ROLLOUT_RENAMES.get(k, k): v for k, v in merged.items()})
        if len(config.dwell_s) != len(config.steps) - 1:
            source = at if "dwell" in own or "steps" in own else ("defaults",)
            raw = table.get("rollout", {}).get("dwell") if source == at else None
            self.fail((*source, "rollout", "dwell"), raw,
                      f"a list of {len(config.steps) - 1} durations, one for each step below 100% of "
                      f"steps = {list(config.steps)}")
        return config

    def rollout_layer(self, table: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, Any]:
        at = (*at, "rollout")
        return self.values(self.table(table.get("rollout", {}), at), at, _ROLLOUT, tuple(_ROLLOUT))

    def retrain_layer(self, table: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        at = (*at, "retrain")
        sub = self.table(table.get("retrain", {}), at)
        gates_at = (*at, "gates")
        return {
            "knobs": self.values(sub, at, _RETRAIN, (*_RETRAIN, "gates")),
            "gates": self.values(self.table(sub.get("gates", {}), gates_at), gates_at, _RETRAIN_GATES,
                                 tuple(_RETRAIN_GATES)),
        }

    def trigger_layer(self, table: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        at = (*at, "triggers")
        sub = self.table(table.get("triggers", {}), at)
        layer = {"knobs": self.values(sub, at, _TRIGGERS, (*_TRIGGERS, *_TRIGGER_SECTIONS))}
        for name, spec in _TRIGGER_SECTIONS.items():
            layer[name] = self.values(self.table(sub.get(name, {}), (*at, name)), (*at, name), spec, tuple(spec))
        return layer

    def layer(self, table: Mapping[str, Any], at: tuple[str, ...], own_keys: Sequence[str]) -> _Layer:
        knobs = self.values(table, at, _KNOBS, (*own_keys, *_KNOBS, *_SECTIONS, "triggers", "retrain", "rollout"))
        sections = {}
        for name, spec in _SECTIONS.items():
            sub = self.table(table.get(name, {}), (*at, name))
            # per-feature overrides name a model's features, so only a model's table has them
            extra = ("features",) if name == "thresholds" and at != ("defaults",) else ()
            sections[name] = self.values(sub, (*at, name), spec, (*spec, *extra))
        triggers = self.trigger_layer(table, at) if at == ("defaults",) else {}
        retrain = self.retrain_layer(table, at) if at == ("defaults",) else {}
        rollout = self.rollout_layer(table, at) if at == ("defaults",) else {}
        return _Layer(at=at, knobs=knobs, sections=sections, triggers=triggers, retrain=retrain, rollout=rollout)

    def values(
        self, table: Mapping[str, Any], at: tuple[str, ...], spec: Mapping[str, _Convert], allowed: Sequence[str]
    ) -> dict[str, Any]:
        """The converted values of the keys of ``spec`` that ``table`` sets; a key not ``allowed`` is an error."""
        self.check_keys(table, at, allowed)
        converted = {}
        for key, value in table.items():
            if key in spec:
                try:
                    converted[key] = spec[key](value)
                except _Expected as exc:
                    self.fail((*at, key), value, exc.expected)
        return converted

    def task(self, table: Mapping[str, Any], at: tuple[str, ...]) -> Task:
        expected = "'classification' or 'regression'"
        if "task" not in table:
            self.fail((*at, "task"), None, expected, problem="missing")
        task = table["task"]
        if task not in _TASKS:
            self.fail((*at, "task"), task, expected)
        return task

    def positive_class(
        self, table: Mapping[str, Any], at: tuple[str, ...], classification: bool
    ) -> str | int | bool | None:
        key = (*at, "positive_class")
        value = table.get("positive_class")
        if not classification:
            if value is not None:
                self.fail(key, value, "no positive_class, since task = 'regression'")
            return None
        if value is None:  # optional: a model of any number of classes, monitored with multiclass metrics
            return None
        if not isinstance(value, str | int) or value == "":
            self.fail(key, value, _POSITIVE_EXPECTED)
        return value

    def metric(self, table: Mapping[str, Any], at: tuple[str, ...], task: Task,
               positive_class: str | int | bool | None) -> str:
        if task == "regression":
            options: Sequence[str] = REGRESSION_METRICS
        else:
            options = CLASSIFICATION_METRICS if positive_class is not None else MULTICLASS_METRICS
        metric = table.get("metric", options[0])
        if task == "classification" and positive_class is None and isinstance(metric, str) and metric in NEEDS_POSITIVE:
            self.fail((*at, "positive_class"), None, f"{_POSITIVE_EXPECTED} for metric {metric!r} (precision, "
                      "recall, f1 and roc_auc are of one class against the rest)", problem="missing")
        if not isinstance(metric, str) or metric not in options:
            extra = (f" with positive_class {positive_class!r} ('macro_f1' and 'weighted_f1' are for a model "
                     "without one)" if metric in MULTICLASS_METRICS and positive_class is not None else "")
            self.fail((*at, "metric"), metric, f"{_one_of(options)} for task {task!r}{extra}")
        return metric

    def direction(self, table: Mapping[str, Any], at: tuple[str, ...], metric: str) -> bool:
        natural = "lower" if metric in LOWER_IS_BETTER else "higher"
        direction = table.get("direction", natural)
        if direction not in ("higher", "lower"):
            self.fail((*at, "direction"), direction, "'higher' or 'lower'")
        if direction != natural:
            self.fail((*at, "direction"), direction, f"{natural!r} for metric {metric!r} ({natural} is better)")
        return natural == "higher"

    def segments(self, table: Mapping[str, Any], at: tuple[str, ...]) -> tuple[str, ...]:
        segments = table.get("segments", [])
        if not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments):
            self.fail((*at, "segments"), segments, "a list of segment attribute names (non-empty strings)")
        repeated = next((s for i, s in enumerate(segments) if s in segments[:i]), None)
        if repeated is not None:
            self.fail((*at, "segments"), segments, f"unique segment attribute names ({repeated!r} repeats)")
        return tuple(segments)

    def score(self, table: Mapping[str, Any], at: tuple[str, ...], classification: bool, metric: str,
              positive_class: str | int | bool | None) -> ScoreSource:
        score = table.get("score", "probabilities" if classification else "none")
        if score not in _SCORES:
            self.fail((*at, "score"), score, _one_of(_SCORES))
        if not classification and score != "none":
            self.fail((*at, "score"), score, "'none' for a regression model (there is no positive-class probability)")
        if classification and positive_class is None and score == "score":
            self.fail((*at, "score"), score, "'probabilities' or 'none' for a model without positive_class (a "
                      "single score is the positive class's probability)")
        if score == "none" and metric in NEEDS_SCORE:
            options = CLASSIFICATION_METRICS if positive_class is not None else MULTICLASS_METRICS
            usable = [m for m in options if m not in NEEDS_SCORE]
            self.fail((*at, "metric"), metric, f"{_one_of(usable)}, since score = 'none' gives no probability")
        return score

    def features(self, table: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, FeatureKind]:
        at = (*at, "features")
        features = self.table(table.get("features", {}), at, "a table of feature name = 'numeric' or 'categorical'")
        for name, kind in features.items():
            if not name:
                self.fail((*at, name), kind, "a non-empty feature name")
            if kind not in _KINDS:
                self.fail((*at, name), kind, "'numeric' or 'categorical'")
        return dict(features)

    def feature_thresholds(
        self, table: Mapping[str, Any], at: tuple[str, ...], thresholds: Thresholds
    ) -> dict[str, Thresholds]:
        at = (*at, "thresholds", "features")
        overrides = self.table(table.get("thresholds", {}).get("features", {}), at,
                               "a table of [<feature>] tables of thresholds")
        resolved = {}
        for name, value in overrides.items():
            if not name:
                self.fail((*at, name), None, "a non-empty feature name")
            sub = self.table(value, (*at, name), f"a table of thresholds ({', '.join(_THRESHOLDS)})")
            resolved[name] = replace(thresholds, **self.values(sub, (*at, name), _THRESHOLDS, tuple(_THRESHOLDS)))
        return resolved

    def table(self, value: Any, at: tuple[str, ...], expected: str = "a table") -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(at, value, expected)
        return value

    def check_keys(self, table: Mapping[str, Any], at: tuple[str, ...], allowed: Sequence[str]) -> None:
        for key in table:
            if key not in allowed:
                expected = f"one of: {', '.join(allowed)}"
                guess = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
                if guess:
                    expected += f" (did you mean {guess[0]!r}?)"
                self.fail((*at, key), None, expected, problem="unknown key")

    def fail(self, at: tuple[str, ...], value: object, expected: str, *, problem: str = "") -> NoReturn:
        raise ModelConfigError(self.path, _dotted(at), value, expected, problem=problem)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(parts: Iterable[str]) -> str:
    """A TOML dotted key, quoting the parts that are not bare keys.

    >>> _dotted(["models", "churn v2", "window"])
    'models."churn v2".window'
    """
    return ".".join(p if _BARE_KEY.fullmatch(p) else '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for p in parts)


def _one_of(options: Sequence[str]) -> str:
    """Options as a phrase.

    >>> _one_of(["a", "b"]), _one_of(["a", "b", "c"])
    ("'a' or 'b'", "one of 'a', 'b', 'c'")
    """
    quoted = [repr(o) for o in options]
    return " or ".join(quoted) if len(quoted) == 2 else f"one of {', '.join(quoted)}"
