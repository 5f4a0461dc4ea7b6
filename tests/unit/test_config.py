"""The monitoring configuration file: inheritance of defaults, and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.config import (
    EMPTY,
    DetectorConfig,
    ModelConfig,
    MonitoringConfig,
    PerformanceConfig,
    Thresholds,
    load_config,
    parse_config,
    parse_duration_s,
)
from feedback.errors import ModelConfigError

FULL = """
[defaults]
window = "1h"
span = 48
min_rows = 500
min_labels = 100
min_label_coverage = 0.25
reference_rows = 2000
max_segment_values = 10
confidence = 0.9
alpha = 0.05

[defaults.thresholds]
psi = 0.2
ks = 0.1

[defaults.performance]
max_drop = 0.1

[defaults.detectors]
adwin_delta = 0.01
page_hinkley_min_instances = 50

[models.churn]
task = "classification"
positive_class = "yes"
metric = "f1"
segments = ["region", "plan"]
window = "30m"
span = 12

[models.churn.features]
tenure_months = "numeric"
plan = "categorical"

[models.churn.thresholds]
js = 0.2

[models.churn.thresholds.features.tenure_months]
psi = 0.3

[models.churn.thresholds.features.undeclared]
ks = 0.5

[models.churn.detectors]
page_hinkley_threshold = 25

[models.price]
task = "regression"
metric = "rmse"
window = 900

[models.price.performance]
threshold = 12.5
"""

HEAD = '[models.churn]\ntask = "classification"\npositive_class = 1\n'


def test_full_file_resolves_defaults_then_model_overrides() -> None:
    """A model takes the built-in defaults, then `[defaults]`, then its own keys, merged key by key in each section."""
    config = parse_config(FULL)
    shared = {
        "min_rows": 500, "min_labels": 100, "min_label_coverage": 0.25, "reference_rows": 2000,
        "max_segment_values": 10, "confidence": 0.9, "alpha": 0.05,
    }
    churn_thresholds = Thresholds(psi=0.2, ks=0.1, js=0.2, chi2_effect=0.1)
    churn = ModelConfig(
        name="churn", task="classification", positive_class="yes", metric="f1", higher_is_better=True,
        segments=("region", "plan"), score="probabilities", window_s=1800, span=12, **shared,
        thresholds=churn_thresholds,
        feature_thresholds={
            "tenure_months": Thresholds(psi=0.3, ks=0.1, js=0.2, chi2_effect=0.1),
            "undeclared": Thresholds(psi=0.2, ks=0.5, js=0.2, chi2_effect=0.1),
        },
        features={"tenure_months": "numeric", "plan": "categorical"},
        performance=PerformanceConfig(max_drop=0.1),
        detectors=DetectorConfig(adwin_delta=0.01, page_hinkley_threshold=25.0, page_hinkley_min_instances=50),
    )
    price = ModelConfig(
        name="price", task="regression", positive_class=None, metric="rmse", higher_is_better=False,
        score="none", window_s=900, span=48, **shared,
        thresholds=Thresholds(psi=0.2, ks=0.1),
        performance=PerformanceConfig(max_drop=0.1, threshold=12.5),
        detectors=DetectorConfig(adwin_delta=0.01, page_hinkley_min_instances=50),
    )
    assert config == MonitoringConfig(path="pitstop.toml", models={"churn": churn, "price": price})
    assert list(config.models) == ["churn", "price"]
    assert config.model("churn").thresholds_for("tenure_months").psi == 0.3  # type: ignore[union-attr]
    assert config.model("churn").thresholds_for("plan") == churn_thresholds  # type: ignore[union-attr]
    assert config.model("fraud") is None
    assert isinstance(churn.performance.max_drop, float) and isinstance(price.detectors.page_hinkley_threshold, float)


def test_minimal_models_take_the_defaults_of_their_task() -> None:
    """Without metric, direction or score a classifier judges accuracy from probabilities and a regressor MAE."""
    config = parse_config(HEAD + '[models.price]\ntask = "regression"\n')
    churn, price = config.models["churn"], config.models["price"]
    assert (churn.metric, churn.higher_is_better, churn.score) == ("accuracy", True, "probabilities")
    assert (price.metric, price.higher_is_better, price.score, price.positive_class) == ("mae", False, "none", None)
    assert (churn.window_s, churn.span, churn.min_rows, churn.alpha) == (3600, 24, 1000, 0.01)
    assert (churn.thresholds, churn.performance, churn.detectors) == (Thresholds(), PerformanceConfig(),
                                                                      DetectorConfig())


def test_empty_file_has_no_models_and_configs_are_read_only() -> None:
    """An empty file configures no model, and neither it nor a model's mappings can be changed after loading."""
    assert parse_config("").models == EMPTY.models == {}
    churn = parse_config(HEAD + "[models.churn.features]\nx = 'numeric'\n").models["churn"]
    with pytest.raises(TypeError):
        churn.features["x"] = "categorical"  # type: ignore[index]
    with pytest.raises(AttributeError):
        churn.span = 3  # type: ignore[misc]


def test_matching_direction_and_quoted_model_names_are_accepted() -> None:
    """A direction that agrees with the metric is fine, and a model name may be any TOML key."""
    config = parse_config('[models."churn v2.1"]\ntask = "classification"\npositive_class = true\n'
                          'metric = "ece"\ndirection = "lower"\nscore = "score"\n')
    model = config.models["churn v2.1"]
    assert (model.positive_class, model.higher_is_better, model.score) == (True, False, "score")


BAD = [
    pytest.param(HEAD + 'window = "1x"\n', "models.churn.window", "1x",
                 "expected a duration such as '30m', '1h', '1d' or a number of seconds", id="bad-duration"),
    pytest.param(HEAD + 'window = "7m"\n', "models.churn.window", "7m", "divides 1 day evenly", id="window-not-day"),
    pytest.param(HEAD + "window = 0\n", "models.churn.window", 0, "a duration such as", id="window-zero"),
    pytest.param("[defaults.thresholds]\npsi = -0.1\n", "defaults.thresholds.psi", -0.1, "expected a number >= 0",
                 id="negative-threshold"),
    pytest.param(HEAD + 'span = "24"\n', "models.churn.span", "24", "expected an integer between 1 and 10000",
                 id="wrong-type"),
    pytest.param("[defaults]\nmin_rows = true\n", "defaults.min_rows", True, "expected an integer >= 1",
                 id="bool-for-int"),
    pytest.param("[defaults]\nconfidence = true\n", "defaults.confidence", True, "between 0.5 and 0.999",
                 id="bool-for-float"),
    pytest.param("[defaults.detectors]\npage_hinkley_alpha = nan\n", "defaults.detectors.page_hinkley_alpha",
                 None, "greater than 0 and at most 1", id="nan"),
    pytest.param("[default]\nspan = 3\n", "default", None, "unknown key; expected one of: defaults, models",
                 id="unknown-top-level"),
    pytest.param(HEAD + "treshold = 0.2\n", "models.churn.treshold", None, "unknown key; expected one of: task,",
                 id="unknown-model-key"),
    pytest.param(HEAD + "[models.churn.thresholds]\npsii = 0.2\n", "models.churn.thresholds.psii", None,
                 "unknown key; expected one of: psi, ks, js, chi2_effect, features (did you mean 'psi'?)",
                 id="unknown-thresholds-key"),
    pytest.param("[defaults.thresholds.features.x]\npsi = 0.2\n", "defaults.thresholds.features", None,
                 "unknown key; expected one of: psi, ks, js, chi2_effect", id="feature-thresholds-in-defaults"),
    pytest.param(HEAD + "[models.churn.thresholds.features.age]\nkss = 0.2\n",
                 "models.churn.thresholds.features.age.kss", None, "unknown key", id="unknown-feature-threshold-key"),
    pytest.param("[models.churn]\npositive_class = 1\n", "models.churn.task", None,
                 "missing; expected 'classification' or 'regression'", id="missing-task"),
    pytest.param('[models.churn]\ntask = "ranking"\n', "models.churn.task", "ranking",
                 "expected 'classification' or 'regression'", id="bad-task"),
    pytest.param('[models.churn]\ntask = "classification"\nmetric = "f1"\n', "models.churn.positive_class", None,
                 "missing; expected the positive label as it appears in events (a non-empty string, an integer or a "
                 "boolean) for metric 'f1'", id="one-class-metric-without-positive-class"),
    pytest.param(HEAD + 'metric = "macro_f1"\n', "models.churn.metric", "macro_f1",
                 "with positive_class 1 ('macro_f1' and 'weighted_f1' are for a model without one)",
                 id="multiclass-metric-with-positive-class"),
    pytest.param('[models.m]\ntask = "classification"\nscore = "score"\n', "models.m.score", "score",
                 "expected 'probabilities' or 'none' for a model without positive_class", id="multiclass-score"),
    pytest.param('[models.m]\ntask = "classification"\nscore = "none"\nmetric = "log_loss"\n', "models.m.metric",
                 "log_loss", "expected one of 'accuracy', 'macro_f1', 'weighted_f1', since score = 'none'",
                 id="multiclass-metric-needs-score"),
    pytest.param(HEAD.replace("= 1", "= 1.0"), "models.churn.positive_class", 1.0, "a non-empty string, an integer",
                 id="float-positive-class"),
    pytest.param('[models.p]\ntask = "regression"\npositive_class = 1\n', "models.p.positive_class", 1,
                 "expected no positive_class, since task = 'regression'", id="regression-with-positive-class"),
    pytest.param(HEAD + 'metric = "mae"\n', "models.churn.metric", "mae",
                 "expected one of 'accuracy', 'precision', 'recall', 'f1', 'roc_auc', 'log_loss', 'ece' for task "
                 "'classification'", id="metric-not-for-task"),
    pytest.param(HEAD + 'metric = "log_loss"\ndirection = "higher"\n', "models.churn.direction", "higher",
                 "expected 'lower' for metric 'log_loss' (lower is better)", id="direction-contradicts-metric"),
    pytest.param(HEAD + 'score = "none"\nmetric = "roc_auc"\n', "models.churn.metric", "roc_auc",
                 "since score = 'none' gives no probability", id="metric-needs-score"),
    pytest.param('[models.p]\ntask = "regression"\nscore = "probabilities"\n', "models.p.score", "probabilities",
                 "expected 'none' for a regression model", id="regression-with-score"),
    pytest.param(HEAD + '[models.churn.features]\nplan = "text"\n', "models.churn.features.plan", "text",
                 "expected 'numeric' or 'categorical'", id="bad-feature-kind"),
    pytest.param(HEAD + 'segments = ["region", "plan", "region"]\n', "models.churn.segments",
                 ["region", "plan", "region"], "unique segment attribute names ('region' repeats)",
                 id="duplicate-segment"),
    pytest.param(HEAD + 'segments = ["region", ""]\n', "models.churn.segments", ["region", ""],
                 "non-empty strings", id="empty-segment"),
    pytest.param("[defaults.performance]\nthreshold = 70\n" + HEAD, "defaults.performance.threshold", 70.0,
                 "expected a number between 0 and 1 for metric 'accuracy' of model 'churn'",
                 id="inherited-threshold-out-of-range"),
    pytest.param("models = 3\n", "models", 3, "expected a table of [models.<name>] tables", id="models-not-table"),
    pytest.param('[models."a b"]\ntask = "regression"\nspan = 0\n', 'models."a b".span', 0,
                 "expected an integer between 1 and 10000", id="quoted-model-name"),
]


@pytest.mark.parametrize(("text", "key", "value", "expected"), BAD)
def test_bad_file_fails_with_one_line_naming_key_and_value(text: str, key: str, value: object, expected: str) -> None:
    """Each kind of mistake fails at load with one line: the file, the dotted key, the value and what was expected."""
    with pytest.raises(ModelConfigError) as info:
        parse_config(text)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert (error.path, error.key) == ("pitstop.toml", key)
    if value is not None:
        assert error.value == value
        assert message.startswith(f"pitstop.toml: {key} = {value!r}: ")
    else:
        assert message.startswith(f"pitstop.toml: {key}")
    assert expected in message


def test_toml_syntax_error_is_one_line_with_position() -> None:
    """A TOML syntax error names the file and tomllib's line and column on one line."""
    with pytest.raises(ModelConfigError) as info:
        parse_config('[models.churn]\ntask "classification"\n', path="conf/pitstop.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("conf/pitstop.toml: invalid TOML: ")
    assert "(at line 2, column 6)" in message
    assert (info.value.key, info.value.value) == ("", None)


def test_load_config_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    """load_config parses the file at the path it is given and names that path when the file is bad or missing."""
    good = tmp_path / "pitstop.toml"
    good.write_text(FULL, encoding="utf-8")
    config = load_config(good)
    assert (config.path, sorted(config.models)) == (str(good), ["churn", "price"])
    assert config == parse_config(FULL, path=str(good))
    bad = tmp_path / "bad.toml"
    bad.write_text(HEAD + "span = 0\n", encoding="utf-8")
    with pytest.raises(ModelConfigError, match=r"bad\.toml: models\.churn\.span = 0: expected an integer"):
        load_config(str(bad))
    with pytest.raises(ModelConfigError, match=r"missing\.toml: cannot read it"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ModelConfigError, match="is not UTF-8"):
        load_config(binary)


@pytest.mark.parametrize("value", ["1x", "", "1H", "1.5h", "-1h", "0m", "h", " 1h", 0, -60, 1.5, 3600.0, True, None])
def test_parse_duration_rejects_anything_but_positive_whole_durations(value: object) -> None:
    """Only a positive integer, or digits followed by one of s, m, h, d, is a duration."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(value)


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("15m", 900), ("6h", 21_600), ("2d", 172_800), (1, 1)])
def test_parse_duration_multiplies_by_the_unit(value: object, seconds: int) -> None:
    """A duration string is its number times the seconds in its unit."""
    assert parse_duration_s(value) == seconds


def test_trigger_settings_merge_defaults_and_convert_durations() -> None:
    """[defaults.triggers] applies to every model, a model's own [models.M.triggers] wins, durations are seconds."""
    config = parse_config("""
[defaults.triggers]
cooldown = "2h"
daily_cap = 5
[models.a]
task = "regression"
[models.a.triggers]
calendar = "0 3 * * 1"
daily_cap = 1
[models.a.triggers.performance]
floor = 4.5
[models.b]
task = "classification"
positive_class = 1
""")
    a, b = config.models["a"].triggers, config.models["b"].triggers
    assert (a.cooldown_s, a.daily_cap, a.calendar, a.performance.floor) == (7200, 1, "0 3 * * 1", 4.5)
    assert (b.cooldown_s, b.daily_cap, b.calendar, b.performance.elevated) == (7200, 5, None, 0.05)


@pytest.mark.parametrize(("table", "message"), [
    ('[models.m.triggers]\ncalendar = "61 * * * *"', "models.m.triggers.calendar = '61 * * * *': expected a cron"),
    ('[models.m.triggers]\ncalendar = "0 3 * *"', "models.m.triggers.calendar = '0 3 * *'"),
    ('[models.m.triggers]\ncalendar = "0 0 3 * * 1"', "5 fields (minute hour day-of-month month day-of-week), got 6"),
    ('[models.m.triggers]\ncooldown = "soon"', "models.m.triggers.cooldown = 'soon': expected a duration"),
    ('[models.m.triggers]\ncalendr = "0 3 * * 1"', "unknown key; expected one of: enabled, calendar"),
    ("[models.m.triggers.performance]\nfloor = 1.5", "floor = 1.5: expected a number between 0 and 1"),
    ("[models.m.triggers.performance]\nelevated = 0.2\ncritical = 0.1", "critical = 0.1: expected a drop at least"),
    ("[models.m.triggers.drift]\nwindows = 0", "models.m.triggers.drift.windows = 0: expected an integer between"),
])
def test_bad_trigger_settings_fail_naming_the_key(table: str, message: str) -> None:
    """An invalid cron expression or threshold fails at start, naming the key and what was expected."""
    text = f'[models.m]\ntask = "classification"\npositive_class = 1\n{table}\n'
    with pytest.raises(ModelConfigError) as raised:
        parse_config(text)
    assert message in str(raised.value)


def test_retrain_settings_merge_defaults_and_fail_naming_the_key() -> None:
    """[models.M.retrain] over [defaults.retrain], durations in seconds, gates nested; a bad value names its key."""
    config = parse_config("""
[defaults.retrain]
budget = "5m"
[models.m]
task = "regression"
[models.m.retrain]
promotion = "after-gates"
half_life = "30d"
[models.m.retrain.gates]
floor = 0.5
""")
    retrain = config.models["m"].retrain
    assert (retrain.budget_s, retrain.half_life_s, retrain.promotion, retrain.gates.floor) == (300, 30 * 86400,
                                                                                                "after-gates", 0.5)
    assert retrain.trainer == "retrain_worker.trainers:gradient_boosting" and retrain.gates.max_ratio == 1.05
    for table, message in [('trainer = "nope"', "models.m.retrain.trainer = 'nope': expected a trainer as"),
                           ('promotion = "now"', "expected one of 'shadow', 'approval', 'after-gates'"),
                           ("[models.m.retrain.gates]\nmax_ratio = 0.9", "retrain.gates.max_ratio = 0.9")]:
        with pytest.raises(ModelConfigError) as raised:
            parse_config(f'[models.m]\ntask = "regression"\n[models.m.retrain]\n{table}\n')
        assert message in str(raised.value)


def test_rollout_settings_merge_defaults_and_fail_naming_the_key() -> None:
    """[models.M.rollout] over [defaults.rollout], durations in seconds; steps must increase to 1.0 and the dwell
    list must give one duration for each step below 100%."""
    config = parse_config("""
[defaults.rollout]
hold = "12h"
[models.m]
task = "regression"
[models.m.rollout]
steps = [0.1, 0.5, 1.0]
dwell = ["30m", "1h"]
""")
    rollout = config.models["m"].rollout
    assert (rollout.steps, rollout.dwell_s, rollout.hold_s) == ((0.1, 0.5, 1.0), (1800, 3600), 43200)
    assert (rollout.promote_ratio, rollout.shadow_max_ratio, rollout.shadow_min_labels) == (0.98, 1.10, 1000)
    default = parse_config('[models.m]\ntask = "regression"\n').models["m"].rollout
    assert default.steps == (0.05, 0.10, 0.25, 0.50, 1.0) and default.dwell_s == (7200, 7200, 21600, 86400)
    for table, message in [
        ("steps = [0.1, 0.05, 1.0]", "models.m.rollout.steps = [0.1, 0.05, 1.0]: expected a list of increasing"),
        ("steps = [0.1, 0.5]", "ending at 1.0"),
        ("steps = [0.1, 1.0]", "models.m.rollout.dwell: expected a list of 1 durations"),
        ('dwell = ["1h"]', "models.m.rollout.dwell = ['1h']: expected a list of 4 durations"),
        ("promote_ratio = 1.5", "models.m.rollout.promote_ratio = 1.5"),
        ("shadow_max_ratio = 0.9", "expected a number >= 1"),
        ("hold = \"soon\"", "models.m.rollout.hold = 'soon': expected a duration"),
        ("nope = 1", "models.m.rollout.nope"),
    ]:
        with pytest.raises(ModelConfigError) as raised:
            parse_config(f'[models.m]\ntask = "regression"\n[models.m.rollout]\n{table}\n')
        assert message in str(raised.value)
